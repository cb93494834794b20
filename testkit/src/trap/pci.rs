//! A virtio-pci function behind a trap window, driven by `virtio-drivers`' own, unmodified
//! `PciTransport` (VIRTIO 1.4 §4.1).
//!
//! The pieces, in the order a machine boots:
//!
//! * **The hypervisor.** [`PciTarget`] is the [`TrapTarget`] of BAR 0: every trapped load or
//!   store goes to [`PciTransport::memory_read`] / [`memory_write`](PciTransport::memory_write)
//!   at its guest-physical address, whatever its width (8-byte accesses pass through whole, as
//!   they arrive). It acts on each [`PciOutcome`] as a hypervisor does: sets the INTA# level
//!   ([`PciTarget::intx`]) and delivers each MSI-X message, recorded with the address and data
//!   the guest programmed ([`PciTarget::msi_log`], [`PciTarget::take_msi`]). An access the
//!   function does not decode (Memory Space off, BAR elsewhere) completes as a master abort
//!   (all ones on a read) and is counted ([`PciTarget::unclaimed`]). [`pci_window`] puts a
//!   device behind such a target, in a window that claims its own guest-physical aperture.
//! * **The configuration mechanism.** [`PciCam`] is `virtio-drivers`' `ConfigurationAccess`:
//!   one function at [`FUNCTION`] on bus 0, answered by
//!   [`PciTransport::config_read`] / [`config_write`](PciTransport::config_write) through
//!   [`TrapWindow::with`]; every other function reads all ones (no device).
//! * **Firmware.** [`firmware`] enumerates bus 0 with `PciRoot`, sizes BAR 0, places it at the
//!   window's aperture and enables memory decoding and bus mastering.
//! * **The guest OS.** [`boot`] runs the firmware, builds `virtio-drivers`' `PciTransport`
//!   (which walks the capability list and maps each structure through
//!   [`TrapHal`]`::mmio_phys_to_virt`) and wraps it in [`GuestPci`], which
//!   forwards every call to it unchanged. `virtio-drivers` never programs MSI-X; with
//!   [`GuestIrq::Msix`] the wrapper does what a guest kernel's virtio-pci layer does: before
//!   the driver starts it enables MSI-X in configuration space and programs the table through
//!   the BAR trap ([`GuestMsix`], messages from [`msi_message`]); during initialisation it
//!   writes `config_msix_vector` after FEATURES_OK and each `queue_msix_vector` before the
//!   queue is enabled, reading each back (§4.1.5.1.2), all before DRIVER_OK.
//!
//! ```
//! # use virtq::Features;
//! # use virtq::transport::NotifyMode;
//! # use virtq_testkit::devices::BlkDevice;
//! # use virtq_testkit::guest::Arena;
//! # use virtq_testkit::trap::TrapHal;
//! # use virtq_testkit::trap::pci::{GuestIrq, boot, pci_window};
//! # use virtio_drivers::device::blk::VirtIOBlk;
//! let arena = Arena::new(1 << 20);
//! let _g = arena.install();
//! let dev = BlkDevice::new(2048, Features::EVENT_IDX, 16);
//! // One queue, two MSI-X vectors (configuration changes, the queue).
//! let window = pci_window::<_, 1, 2>(dev, &arena, NotifyMode::Inline);
//! let transport = boot(&window, GuestIrq::msix_per_queue(1)).unwrap();
//! let mut blk = VirtIOBlk::<TrapHal, _>::new(transport).unwrap();
//! blk.write_blocks(0, &[1u8; 512]).unwrap();
//! assert_eq!(window.with(|t| t.device().disk()[0]), 1);
//! // The completion went out as the MSI-X message of vector 1.
//! assert!(window.with(|t| t.msi_count(1)) >= 1);
//! ```

use std::fmt;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use virtio_drivers::transport::pci::bus::{
    BarInfo, Command, ConfigurationAccess, DeviceFunction, MemoryBarType, PciError, PciRoot,
};
use virtio_drivers::transport::pci::{PciTransport as DriverPci, VirtioPciError};
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{PhysAddr, Result as DrvResult};
use virtq::GuestMemory;
use virtq::transport::pci::{MsiMessage, NO_VECTOR, PciEvents, PciOutcome, layout};
use virtq::transport::{NotifyMode, PciTransport, VirtioDevice};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::mmio::{IrqLine, RefusedAccess};
use super::{TrapHal, TrapTarget, TrapWindow, window};
use crate::guest::{Arena, GuestRam};

/// Where the harness's function sits: bus 0, device 3, function 0 (not 0, so enumeration has
/// to find it).
pub const FUNCTION: DeviceFunction = DeviceFunction {
    bus: 0,
    device: 3,
    function: 0,
};

/// First guest-physical aperture for BAR 0 (above 4 GiB, so both halves of the 64-bit BAR
/// matter). Each [`pci_window`] gets its own [`layout::BAR_SIZE`]-aligned aperture, so windows
/// of tests running in parallel never claim the same address.
pub const APERTURE_BASE: u64 = 0x80_0000_0000;

static NEXT_APERTURE: AtomicU64 = AtomicU64::new(0);

/// MSI-X messages a [`PciTarget`] keeps in [`msi_log`](PciTarget::msi_log) (the most recent).
pub const MSI_LOG: usize = 64;

/// One MSI-X message the hypervisor delivered: the table entry it came from and the message
/// (address and data) the guest programmed there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    /// MSI-X table entry (the vector index the transport asked for).
    pub entry: u16,
    /// The message, as read from the table when it was sent.
    pub message: MsiMessage,
}

/// [`TrapTarget`] for BAR 0 of a virtio-pci function, and the hypervisor's interrupt delivery.
///
/// Runs inside the trap handler: no allocation, no lock (the message log is a fixed ring).
pub struct PciTarget<D, M, const Q: usize, const V: usize> {
    transport: PciTransport<D, M, Q, V>,
    gpa: u64,
    intx: IrqLine,
    log: [Delivered; MSI_LOG],
    msi_total: u64,
    per_entry: [u64; layout::MAX_VECTORS],
    latched: u64,
    unclaimed: u64,
    first_unclaimed: Option<RefusedAccess>,
    bar_changes: u64,
    needs_reset: u64,
    config_accesses: u64,
}

impl<D: fmt::Debug, M, const Q: usize, const V: usize> fmt::Debug for PciTarget<D, M, Q, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PciTarget")
            .field("gpa", &self.gpa)
            .field("intx", &self.intx)
            .field("msi_total", &self.msi_total)
            .field("unclaimed", &self.unclaimed)
            .field("transport", &self.transport)
            .finish()
    }
}

impl<D: VirtioDevice, M: GuestMemory, const Q: usize, const V: usize> PciTarget<D, M, Q, V> {
    /// Serve `transport`'s BAR 0 from a window at guest-physical `gpa`.
    pub fn new(transport: PciTransport<D, M, Q, V>, gpa: u64) -> Self {
        Self {
            transport,
            gpa,
            intx: IrqLine::default(),
            log: [Delivered::default(); MSI_LOG],
            msi_total: 0,
            per_entry: [0; layout::MAX_VECTORS],
            latched: 0,
            unclaimed: 0,
            first_unclaimed: None,
            bar_changes: 0,
            needs_reset: 0,
            config_accesses: 0,
        }
    }

    /// The transport.
    pub fn transport(&self) -> &PciTransport<D, M, Q, V> {
        &self.transport
    }

    /// The transport, mutably. Hand the outcome of anything you call on it to
    /// [`deliver`](Self::deliver), or its interrupts are lost.
    pub fn transport_mut(&mut self) -> &mut PciTransport<D, M, Q, V> {
        &mut self.transport
    }

    /// The device model.
    pub fn device(&self) -> &D {
        self.transport.device()
    }

    /// The guest-physical address of the window (where firmware places BAR 0).
    pub fn gpa(&self) -> u64 {
        self.gpa
    }

    /// The INTA# line: its level after the last access and its rising edges.
    pub fn intx(&self) -> IrqLine {
        self.intx
    }

    /// MSI-X messages delivered so far.
    pub fn msi_total(&self) -> u64 {
        self.msi_total
    }

    /// MSI-X messages delivered so far from table entry `entry`.
    pub fn msi_count(&self, entry: u16) -> u64 {
        self.per_entry.get(usize::from(entry)).copied().unwrap_or(0)
    }

    /// The last [`MSI_LOG`] messages delivered, oldest first.
    pub fn msi_log(&self) -> impl Iterator<Item = Delivered> + '_ {
        let n = usize::try_from(self.msi_total).map_or(MSI_LOG, |n| n.min(MSI_LOG));
        let start = usize::try_from(self.msi_total % MSI_LOG as u64).unwrap_or(0);
        (0..n).map(move |i| self.log[(start + MSI_LOG - n + i) % MSI_LOG])
    }

    /// The entries whose message arrived since the last call (bit `v` = entry `v`), as the
    /// guest's interrupt controller latches them (an entry that fired twice is latched once);
    /// clears the latch.
    pub fn take_msi(&mut self) -> u64 {
        std::mem::take(&mut self.latched)
    }

    /// Accesses to the window the function did not decode (answered as a master abort), and
    /// the first of them.
    pub fn unclaimed(&self) -> (u64, Option<RefusedAccess>) {
        (self.unclaimed, self.first_unclaimed)
    }

    /// How often an access moved BAR 0 or switched memory decoding (`PciEvents::BAR_CHANGED`).
    pub fn bar_changes(&self) -> u64 {
        self.bar_changes
    }

    /// How often the device entered DEVICE_NEEDS_RESET.
    pub fn needs_reset_events(&self) -> u64 {
        self.needs_reset
    }

    /// Configuration-space accesses served so far.
    pub fn config_accesses(&self) -> u64 {
        self.config_accesses
    }

    /// A configuration read of `width` bytes at `offset` (what [`PciCam`] calls).
    pub fn config_read(&mut self, offset: u16, width: u8) -> u64 {
        self.config_accesses += 1;
        let out = self.transport.config_read(offset, width);
        self.deliver(out)
    }

    /// A configuration write of `width` bytes at `offset`.
    pub fn config_write(&mut self, offset: u16, width: u8, value: u64) {
        self.config_accesses += 1;
        let out = self.transport.config_write(offset, width, value);
        self.deliver(out);
    }

    /// Act on an outcome as the hypervisor does: set the INTA# level, deliver each MSI-X
    /// message, note the events. Returns the value read.
    pub fn deliver(&mut self, out: PciOutcome) -> u64 {
        let level = out.intx;
        if level && !self.intx.level {
            self.intx.raised += 1;
        }
        self.intx.level = level;
        for entry in out.msix.iter() {
            let Some(message) = self.transport.msix_message(entry) else {
                continue;
            };
            let slot = usize::try_from(self.msi_total % MSI_LOG as u64).unwrap_or(0);
            self.log[slot] = Delivered { entry, message };
            self.msi_total += 1;
            if let Some(c) = self.per_entry.get_mut(usize::from(entry)) {
                *c += 1;
            }
            self.latched |= 1u64.checked_shl(u32::from(entry)).unwrap_or(0);
        }
        if out.events.contains(PciEvents::BAR_CHANGED) {
            self.bar_changes += 1;
        }
        if out.events.contains(PciEvents::NEEDS_RESET) {
            self.needs_reset += 1;
        }
        out.value
    }

    /// Run the device on every queue the guest kicked since the last call (for
    /// [`NotifyMode::Deferred`]), delivering the interrupts. Returns whether an interrupt
    /// reached the guest: a message went out, or INTA# is asserted afterwards.
    pub fn process_kicks(&mut self) -> bool {
        let mut kicked = [false; Q];
        self.transport.take_kicks(|i| {
            if let Some(k) = kicked.get_mut(usize::from(i)) {
                *k = true;
            }
        });
        let before = self.msi_total;
        for (i, _) in kicked.iter().enumerate().filter(|(_, k)| **k) {
            if let Ok(i) = u16::try_from(i) {
                let out = self.transport.process_queue(i);
                self.deliver(out);
            }
        }
        self.msi_total != before || self.intx.level
    }

    fn unclaimed_access(&mut self, offset: u64, width: u8, write: bool) {
        self.unclaimed += 1;
        self.first_unclaimed.get_or_insert(RefusedAccess {
            offset,
            width,
            write,
        });
    }
}

impl<D: VirtioDevice, M: GuestMemory, const Q: usize, const V: usize> TrapTarget
    for PciTarget<D, M, Q, V>
{
    fn read(&mut self, offset: u64, width: u8) -> u64 {
        match self
            .transport
            .memory_read(self.gpa.wrapping_add(offset), width)
        {
            Some(out) => self.deliver(out),
            None => {
                // Nobody decodes the address: the read completes with all ones.
                self.unclaimed_access(offset, width, false);
                u64::MAX
            }
        }
    }

    fn write(&mut self, offset: u64, width: u8, value: u64) {
        match self
            .transport
            .memory_write(self.gpa.wrapping_add(offset), width, value)
        {
            Some(out) => {
                self.deliver(out);
            }
            None => self.unclaimed_access(offset, width, true),
        }
    }
}

/// BAR 0 of a virtio-pci function in a trap window, over the guest RAM of an [`Arena`].
pub type PciWindow<D, const Q: usize, const V: usize> = TrapWindow<PciTarget<D, GuestRam, Q, V>>;

/// Put `device` behind a virtio-pci function with `Q` queues and `V` MSI-X vectors over
/// `arena`'s RAM, its BAR 0 served by a trap window that claims a fresh guest-physical
/// aperture (firmware places BAR 0 there), notifications handled per `mode`.
pub fn pci_window<D: VirtioDevice + Send, const Q: usize, const V: usize>(
    device: D,
    arena: &Arc<Arena>,
    mode: NotifyMode,
) -> PciWindow<D, Q, V> {
    let n = NEXT_APERTURE.fetch_add(1, Ordering::Relaxed);
    let gpa = APERTURE_BASE + n * layout::BAR_SIZE;
    let mut t = PciTransport::new(device, arena.guest_ram());
    t.set_notify_mode(mode);
    let len = usize::try_from(layout::BAR_SIZE).expect("BAR fits the host");
    TrapWindow::at_gpa(gpa, len, PciTarget::new(t, gpa))
}

// ---- configuration space ------------------------------------------------------------------

/// One function's configuration space as the platform's configuration mechanism reaches it
/// (dword accesses, as `virtio-drivers` makes them).
pub trait ConfigSpace: Sync {
    /// The dword at `offset` (a multiple of 4 below 0x100).
    fn read_dword(&self, offset: u8) -> u32;
    /// Write the dword at `offset`.
    fn write_dword(&self, offset: u8, value: u32);
}

impl<D, M, const Q: usize, const V: usize> ConfigSpace for TrapWindow<PciTarget<D, M, Q, V>>
where
    D: VirtioDevice + Send,
    M: GuestMemory + Send,
{
    fn read_dword(&self, offset: u8) -> u32 {
        let v = self.with(|t| t.config_read(u16::from(offset), 4));
        u32::try_from(v & 0xFFFF_FFFF).unwrap_or(u32::MAX)
    }

    fn write_dword(&self, offset: u8, value: u32) {
        self.with(|t| t.config_write(u16::from(offset), 4, value.into()));
    }
}

/// `virtio-drivers`' `ConfigurationAccess` for a bus with one function at [`FUNCTION`]:
/// its accesses go to the function's [`ConfigSpace`]; every other function reads all ones
/// (no device) and ignores writes.
#[derive(Clone, Copy)]
pub struct PciCam<'w> {
    space: &'w dyn ConfigSpace,
}

impl fmt::Debug for PciCam<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PciCam")
            .field("function", &FUNCTION)
            .finish()
    }
}

impl<'w> PciCam<'w> {
    /// The configuration mechanism of a bus holding `space` at [`FUNCTION`].
    pub fn new(space: &'w dyn ConfigSpace) -> Self {
        Self { space }
    }
}

impl ConfigurationAccess for PciCam<'_> {
    fn read_word(&self, df: DeviceFunction, register_offset: u8) -> u32 {
        if df == FUNCTION {
            self.space.read_dword(register_offset)
        } else {
            u32::MAX
        }
    }

    fn write_word(&mut self, df: DeviceFunction, register_offset: u8, data: u32) {
        if df == FUNCTION {
            self.space.write_dword(register_offset, data);
        }
    }

    unsafe fn unsafe_clone(&self) -> Self {
        *self
    }
}

/// Why [`firmware`] or [`boot`] could not bring the function up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootError {
    /// No virtio function on bus 0 (or the window claims no guest-physical address).
    NoFunction,
    /// BAR 0 is not a 64-bit memory BAR, is empty, or is larger than `window` bytes.
    Bar {
        /// What sizing found.
        found: Option<BarInfo>,
        /// The window's length.
        window: u64,
    },
    /// `virtio-drivers` rejected the BAR description.
    Pci(PciError),
    /// `virtio-drivers`' `PciTransport::new` failed.
    Virtio(VirtioPciError),
    /// MSI-X was asked for and the function has no MSI-X capability (or fewer entries than
    /// the plan uses).
    NoMsix,
    /// The common configuration capability is missing or points outside the window.
    NoCommonConfig,
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for BootError {}

impl From<PciError> for BootError {
    fn from(e: PciError) -> Self {
        Self::Pci(e)
    }
}

/// Firmware's part: enumerate bus 0, take the first virtio function, size BAR 0 (a 64-bit
/// memory BAR no larger than `window_len`), place it at `gpa` and enable memory decoding and
/// bus mastering. Returns the function.
pub fn firmware(
    root: &mut PciRoot<PciCam<'_>>,
    gpa: u64,
    window_len: u64,
) -> Result<DeviceFunction, BootError> {
    let (df, _) = root
        .enumerate_bus(0)
        .find(|(_, info)| virtio_drivers::transport::pci::virtio_device_type(info).is_some())
        .ok_or(BootError::NoFunction)?;
    let found = root.bar_info(df, 0)?;
    match found {
        Some(BarInfo::Memory {
            address_type: MemoryBarType::Width64,
            size,
            ..
        }) if size > 0 && size <= window_len && gpa.is_multiple_of(size) => {}
        found => {
            return Err(BootError::Bar {
                found,
                window: window_len,
            });
        }
    }
    root.set_bar_64(df, 0, gpa);
    root.set_command(df, Command::MEMORY_SPACE | Command::BUS_MASTER);
    Ok(df)
}

/// How the guest OS takes the function's interrupts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestIrq {
    /// INTx: MSI-X stays disabled; the driver reads the ISR to acknowledge.
    Intx,
    /// MSI-X with this vector plan.
    Msix(MsixPlan),
}

impl GuestIrq {
    /// MSI-X with configuration changes on entry 0 and queue `i` on entry `i + 1`, for
    /// `queues` queues.
    pub fn msix_per_queue(queues: u16) -> Self {
        Self::Msix(MsixPlan {
            config: 0,
            queues: (1..=queues).collect(),
        })
    }
}

/// Which MSI-X table entry each event is mapped to (§4.1.5.1.2). Any value may be
/// [`NO_VECTOR`]; queues past the end of `queues` get [`NO_VECTOR`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MsixPlan {
    /// `config_msix_vector`.
    pub config: u16,
    /// `queue_msix_vector` of queue `i`.
    pub queues: Vec<u16>,
}

impl MsixPlan {
    /// The entry queue `queue` is mapped to.
    pub fn queue(&self, queue: u16) -> u16 {
        self.queues
            .get(usize::from(queue))
            .copied()
            .unwrap_or(NO_VECTOR)
    }
}

/// The message the harness's guest programs into MSI-X table entry `entry`: an x86 local-APIC
/// message (address 0xFEE0_0000 with destination ID `entry % 4`, fixed delivery, edge; data
/// vector 0x40 + `entry`). Distinct per entry, so a message delivered from the wrong entry is
/// seen.
pub fn msi_message(entry: u16) -> MsiMessage {
    MsiMessage {
        address: 0xFEE0_0000 | (u64::from(entry % 4) << 12),
        data: 0x40 + u32::from(entry),
    }
}

/// MSI-X Message Control bit 15: enable.
const MSIX_ENABLE: u16 = 1 << 15;
/// MSI-X Message Control bit 14: function mask.
const MSIX_FUNCTION_MASK: u16 = 1 << 14;

/// The guest OS's handle on the function's MSI-X capability (PCI Local Bus 3.0 §6.8.2):
/// Message Control through configuration space, the table and the pending bit array through
/// the BAR trap.
#[derive(Clone, Copy)]
pub struct GuestMsix<'w> {
    cam: PciCam<'w>,
    cap: u8,
    table: NonNull<u8>,
    pba: NonNull<u8>,
    size: u16,
}

impl fmt::Debug for GuestMsix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestMsix")
            .field("cap", &self.cap)
            .field("size", &self.size)
            .finish()
    }
}

/// The host address of `len` bytes at `offset` in BAR `bar` of `df`, as the guest maps it.
fn map_bar(
    root: &mut PciRoot<PciCam<'_>>,
    df: DeviceFunction,
    bar: u8,
    offset: u64,
    len: u64,
) -> Option<NonNull<u8>> {
    let (base, size) = root.bar_info(df, bar).ok()??.memory_address_size()?;
    if offset.checked_add(len)? > size || base == 0 {
        return None;
    }
    window::gpa_to_host(base.checked_add(offset)?, usize::try_from(len).ok()?)
}

impl<'w> GuestMsix<'w> {
    /// Find the MSI-X capability of `df` and map its table and PBA.
    pub fn find(
        root: &mut PciRoot<PciCam<'w>>,
        cam: PciCam<'w>,
        df: DeviceFunction,
    ) -> Option<Self> {
        let cap = root
            .capabilities(df)
            .find(|c| c.id == layout::CAP_ID_MSIX)?;
        let size = (cap.private_header & 0x7FF) + 1;
        let table = cam.read_word(df, cap.offset + 4);
        let pba = cam.read_word(df, cap.offset + 8);
        let (tbir, toff) = (u8::try_from(table & 7).ok()?, u64::from(table & !7));
        let (pbir, poff) = (u8::try_from(pba & 7).ok()?, u64::from(pba & !7));
        Some(Self {
            cam,
            cap: cap.offset,
            table: map_bar(root, df, tbir, toff, u64::from(size) * 16)?,
            pba: map_bar(root, df, pbir, poff, 8)?,
            size,
        })
    }

    /// Table Size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Message Control as read from configuration space.
    pub fn control(&self) -> u16 {
        u16::try_from(self.cam.read_word(FUNCTION, self.cap) >> 16).unwrap_or(0)
    }

    /// Set the enable and function-mask bits of Message Control.
    pub fn set_control(&self, enable: bool, function_mask: bool) {
        let mut cam = self.cam;
        let old = cam.read_word(FUNCTION, self.cap);
        let mut mc = u16::try_from(old >> 16).unwrap_or(0) & !(MSIX_ENABLE | MSIX_FUNCTION_MASK);
        if enable {
            mc |= MSIX_ENABLE;
        }
        if function_mask {
            mc |= MSIX_FUNCTION_MASK;
        }
        cam.write_word(FUNCTION, self.cap, (old & 0xFFFF) | u32::from(mc) << 16);
    }

    fn entry_word(&self, entry: u16, word: usize) -> *mut u32 {
        assert!(entry < self.size, "MSI-X entry {entry} past the table");
        self.table
            .as_ptr()
            .wrapping_add(usize::from(entry) * 16 + word * 4)
            .cast()
    }

    /// Program table entry `entry` with `msg`, masked or not (four dword stores, each trapped).
    pub fn program(&self, entry: u16, msg: MsiMessage, masked: bool) {
        let words = [
            u32::try_from(msg.address & 0xFFFF_FFFF).unwrap_or(0),
            u32::try_from(msg.address >> 32).unwrap_or(0),
            msg.data,
            u32::from(masked),
        ];
        for (i, w) in words.into_iter().enumerate() {
            // SAFETY: inside the table, which lies in a live trap window (mapped by `find`);
            // every access to it traps.
            unsafe { std::ptr::write_volatile(self.entry_word(entry, i), w) };
        }
    }

    /// Set or clear the mask bit of entry `entry` (Vector Control, one trapped store).
    pub fn set_masked(&self, entry: u16, masked: bool) {
        // SAFETY: as in `program`.
        unsafe { std::ptr::write_volatile(self.entry_word(entry, 3), u32::from(masked)) };
    }

    /// Entry `entry` as the table holds it: the message and whether it is masked.
    pub fn entry(&self, entry: u16) -> (MsiMessage, bool) {
        // SAFETY: as in `program`.
        let w = |i| unsafe { std::ptr::read_volatile(self.entry_word(entry, i)) };
        let (lo, hi, data, ctrl) = (w(0), w(1), w(2), w(3));
        let message = MsiMessage {
            address: u64::from(lo) | u64::from(hi) << 32,
            data,
        };
        (message, ctrl & 1 != 0)
    }

    /// The pending bit array (one trapped 8-byte load).
    pub fn pending(&self) -> u64 {
        // SAFETY: the PBA's first qword, in a live trap window (mapped by `find`).
        unsafe { std::ptr::read_volatile(self.pba.as_ptr().cast::<u64>()) }
    }

    /// What a guest kernel does to turn MSI-X on: enable with the function masked, program
    /// every entry with [`msi_message`] unmasked, then lift the function mask.
    pub fn enable_all(&self) {
        self.set_control(true, true);
        for e in 0..self.size {
            self.program(e, msi_message(e), false);
        }
        self.set_control(true, false);
    }
}

/// `virtio-drivers`' own `PciTransport`, as the guest OS runs it: every `Transport` call is
/// forwarded to it unchanged, and with [`GuestIrq::Msix`] the vectors are programmed through
/// the BAR trap at the points a guest kernel's virtio-pci layer programs them
/// (`config_msix_vector` once FEATURES_OK is set, each `queue_msix_vector` just before the
/// queue is set up and enabled), each read back (§4.1.5.1.2: a refused mapping reads
/// [`NO_VECTOR`]; a guest fails the probe then, and so does this wrapper, by panicking).
///
/// Borrows the window: the transport's pointers into it stay valid while it lives.
pub struct GuestPci<'w> {
    inner: DriverPci,
    common: NonNull<u8>,
    plan: Option<MsixPlan>,
    msix: Option<GuestMsix<'w>>,
    function: DeviceFunction,
    _window: PhantomData<&'w dyn ConfigSpace>,
}

impl fmt::Debug for GuestPci<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestPci")
            .field("inner", &self.inner)
            .field("plan", &self.plan)
            .finish()
    }
}

// SAFETY: `common` points into a trap window, which any thread may access (each access traps
// and is served under the window's slot); `DriverPci` is `Send` itself.
unsafe impl Send for GuestPci<'_> {}

impl<'w> GuestPci<'w> {
    /// The MSI-X handle, when the guest enabled MSI-X.
    pub fn msix(&self) -> Option<GuestMsix<'w>> {
        self.msix
    }

    /// Where the function sits.
    pub fn function(&self) -> DeviceFunction {
        self.function
    }

    fn common_u16(&self, offset: u64) -> *mut u16 {
        let off = usize::try_from(offset).unwrap_or(usize::MAX);
        self.common.as_ptr().wrapping_add(off).cast()
    }

    /// Write a vector field (16 bits at `offset` in the common configuration) and read it
    /// back; panics when the device refuses the mapping.
    fn write_vector(&self, offset: u64, vector: u16, what: fmt::Arguments<'_>) {
        let p = self.common_u16(offset);
        // SAFETY: a 16-bit field inside the common configuration structure, which lies in a
        // live trap window (mapped in `boot`); every access traps.
        let back = unsafe {
            std::ptr::write_volatile(p, vector);
            std::ptr::read_volatile(p)
        };
        assert_eq!(
            back, vector,
            "the device refused MSI-X vector {vector:#x} for {what} (reads {back:#x})"
        );
    }
}

impl Transport for GuestPci<'_> {
    fn device_type(&self) -> DeviceType {
        self.inner.device_type()
    }
    fn read_device_features(&mut self) -> u64 {
        self.inner.read_device_features()
    }
    fn write_driver_features(&mut self, driver_features: u64) {
        self.inner.write_driver_features(driver_features);
    }
    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.inner.max_queue_size(queue)
    }
    fn notify(&mut self, queue: u16) {
        self.inner.notify(queue);
    }
    fn get_status(&self) -> DeviceStatus {
        self.inner.get_status()
    }
    fn set_status(&mut self, status: DeviceStatus) {
        self.inner.set_status(status);
        if let Some(plan) = &self.plan
            && status.contains(DeviceStatus::FEATURES_OK)
            && !status.contains(DeviceStatus::DRIVER_OK)
        {
            self.write_vector(
                layout::common::CONFIG_MSIX_VECTOR,
                plan.config,
                format_args!("configuration changes"),
            );
        }
    }
    fn set_guest_page_size(&mut self, guest_page_size: u32) {
        self.inner.set_guest_page_size(guest_page_size);
    }
    fn requires_legacy_layout(&self) -> bool {
        self.inner.requires_legacy_layout()
    }
    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        if let Some(plan) = &self.plan {
            let v = plan.queue(queue);
            // SAFETY: `queue_select`, a 16-bit field of the common configuration in a live
            // trap window.
            unsafe {
                std::ptr::write_volatile(self.common_u16(layout::common::QUEUE_SELECT), queue)
            };
            self.write_vector(
                layout::common::QUEUE_MSIX_VECTOR,
                v,
                format_args!("queue {queue}"),
            );
        }
        self.inner
            .queue_set(queue, size, descriptors, driver_area, device_area);
    }
    fn queue_unset(&mut self, queue: u16) {
        self.inner.queue_unset(queue);
    }
    fn queue_used(&mut self, queue: u16) -> bool {
        self.inner.queue_used(queue)
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        self.inner.ack_interrupt()
    }
    fn read_config_generation(&self) -> u32 {
        self.inner.read_config_generation()
    }
    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> DrvResult<T> {
        self.inner.read_config_space(offset)
    }
    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> DrvResult<()> {
        self.inner.write_config_space(offset, value)
    }
}

/// Bring up the function behind `window` as firmware and a guest OS do, and return
/// `virtio-drivers`' own `PciTransport` for it (in [`GuestPci`]), ready for a device driver:
///
/// 1. [`firmware`]: enumerate, size and place BAR 0 at the window's aperture, enable memory
///    decoding and bus mastering;
/// 2. `PciTransport::new::<TrapHal, _>`: the capability walk and BAR mapping of
///    `virtio-drivers` (each structure through `TrapHal::mmio_phys_to_virt`);
/// 3. with [`GuestIrq::Msix`]: [`GuestMsix::enable_all`], and the plan handed to the wrapper,
///    which programs the vectors during the driver's initialisation.
pub fn boot<'w, D, M, const Q: usize, const V: usize>(
    window: &'w TrapWindow<PciTarget<D, M, Q, V>>,
    irq: GuestIrq,
) -> Result<GuestPci<'w>, BootError>
where
    D: VirtioDevice + Send,
    M: GuestMemory + Send,
{
    let gpa = window.gpa().ok_or(BootError::NoFunction)?;
    let cam = PciCam::new(window);
    let mut root = PciRoot::new(cam);
    let len = u64::try_from(window.len()).unwrap_or(u64::MAX);
    let df = firmware(&mut root, gpa, len)?;
    let inner = DriverPci::new::<TrapHal, _>(&mut root, df).map_err(BootError::Virtio)?;
    let common = common_config(&mut root, cam, df).ok_or(BootError::NoCommonConfig)?;
    let (plan, msix) = match irq {
        GuestIrq::Intx => (None, None),
        GuestIrq::Msix(plan) => {
            let msix = GuestMsix::find(&mut root, cam, df).ok_or(BootError::NoMsix)?;
            let used = plan.queues.iter().chain([&plan.config]);
            if used.filter(|&&v| v != NO_VECTOR).any(|&v| v >= msix.size()) {
                return Err(BootError::NoMsix);
            }
            msix.enable_all();
            (Some(plan), Some(msix))
        }
    };
    Ok(GuestPci {
        inner,
        common,
        plan,
        msix,
        function: df,
        _window: PhantomData,
    })
}

/// The host address of the common configuration structure, from its capability.
fn common_config(
    root: &mut PciRoot<PciCam<'_>>,
    cam: PciCam<'_>,
    df: DeviceFunction,
) -> Option<NonNull<u8>> {
    let cap = root.capabilities(df).find(|c| {
        c.id == layout::CAP_ID_VENDOR && (c.private_header >> 8) as u8 == layout::COMMON_CFG
    })?;
    let bar = u8::try_from(cam.read_word(df, cap.offset + 4) & 0xFF).ok()?;
    let offset = u64::from(cam.read_word(df, cap.offset + 8));
    let len = u64::from(cam.read_word(df, cap.offset + 12));
    map_bar(root, df, bar, offset, len)
}
