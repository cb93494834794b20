//! The virtio-pci transport, modern interface, device side (VIRTIO 1.4 §4.1).
//!
//! One PCI function with a type-0 configuration header (vendor 0x1AF4, device 0x1040 + the
//! virtio device ID, revision 1), one 64-bit memory BAR holding every virtio structure, an
//! MSI-X capability with up to 64 vectors and INTx as the fallback. [`layout`] says where
//! everything is.
//!
//! # Wiring a PCI function into a hypervisor
//!
//! The hypervisor owns the PCI topology (a host bridge with ECAM or the x86 0xCF8/0xCFC
//! ports), its interrupt controller and the traps. Per function it forwards three things:
//!
//! 1. **Configuration space**: every trapped config access of this function (bus/device/
//!    function decoded by the hypervisor) goes to [`config_read`](PciTransport::config_read) /
//!    [`config_write`](PciTransport::config_write) with the register offset and width.
//! 2. **BAR accesses**: the driver places BAR 0 wherever it likes. After every config write
//!    whose outcome has [`Events::BAR_CHANGED`], read [`bar_address`](PciTransport::bar_address)
//!    and move the trap (unmap the old window, map the new one with no access rights). A
//!    trapped load or store in the window goes to [`bar_read`](PciTransport::bar_read) /
//!    [`bar_write`](PciTransport::bar_write) with the offset inside the BAR (or to
//!    [`memory_read`](PciTransport::memory_read) / [`memory_write`](PciTransport::memory_write)
//!    with the guest-physical address, which decode it).
//! 3. **Interrupts**: every access returns a [`PciOutcome`]. Send the MSI-X message of each
//!    vector in [`PciOutcome::msix`] ([`msix_messages`](PciTransport::msix_messages) gives the
//!    address and data) and set the function's INTA# line to [`PciOutcome::intx`] (a level: set
//!    it to that value after every access). The transport never raises anything itself.
//!
//! ```
//! # use virtq::transport::{DeviceId, NotifyReport, Queues, VirtioDevice};
//! # use virtq::{Features, GuestMemory};
//! use virtq::transport::pci::{PciOutcome, PciTransport, layout};
//! # struct Blk;
//! # impl VirtioDevice for Blk {
//! #     fn device_id(&self) -> DeviceId { DeviceId::BLOCK }
//! #     fn device_features(&self) -> Features { Features::empty() }
//! #     fn queue_max_size(&self, i: u16) -> u16 { if i == 0 { 64 } else { 0 } }
//! #     fn read_config(&self, _: u32, _: &mut [u8]) {}
//! #     fn queue_notify<M: GuestMemory + ?Sized>(&mut self, _: u16, _: Queues<'_>, _: &M) -> NotifyReport { NotifyReport::IDLE }
//! # }
//! # let mem = virtq::memory::RegionTable::<1>::new();
//! // One queue, two MSI-X vectors (queue and configuration changes).
//! let mut f = PciTransport::<_, _, 1, 2>::new(Blk, &mem);
//!
//! /// What the hypervisor does with an outcome.
//! fn deliver<D: VirtioDevice, M: GuestMemory>(f: &PciTransport<D, M, 1, 2>, out: PciOutcome) {
//!     for msg in f.msix_messages(out.msix) {
//!         let _ = (msg.address, msg.data); // e.g. KVM_SIGNAL_MSI
//!     }
//!     let _level = out.intx; // the INTA# line of this function
//! }
//!
//! // The guest's PCI enumeration: IDs, BAR sizing, placement, memory decoding.
//! assert_eq!(f.config_read(0x00, 4).value, 0x1042_1AF4);
//! let out = f.config_write(layout::BAR0, 4, 0xFFFF_FFFF);
//! deliver(&f, out);
//! assert_eq!(f.config_read(layout::BAR0, 4).value & !0xF, 0xFFFF_8000); // 32 KiB
//! let _ = f.config_write(layout::BAR0, 4, 0xE000_0000);
//! let _ = f.config_write(layout::BAR1, 4, 0);
//! let out = f.config_write(layout::COMMAND, 2, 0b110); // memory space, bus master
//! assert!(out.events.contains(virtq::transport::Events::BAR_CHANGED));
//! assert_eq!(f.bar_address(0), Some(0xE000_0000));
//! // A trapped 1-byte load of the device status in the common configuration.
//! let out = f.memory_read(0xE000_0000 + 0x14, 1).expect("inside BAR 0");
//! assert_eq!(out.value, 0);
//! deliver(&f, out);
//! ```
//!
//! Every handler runs to completion in bounded time, never allocates, never blocks and takes
//! no lock, so it may run directly in the hypervisor's trap (VM-exit) handler; the queue work
//! of a notification can be moved out of it with [`NotifyMode::Deferred`].
//!
//! # Access widths (§4.1.3, PCI 3.0 §6)
//!
//! Every access is 1, 2, 4 or 8 bytes, the value in the low bytes of a `u64`, little-endian.
//! What is not answered below reads 0 and ignores writes (never a fault, never a panic).
//!
//! * Configuration space: 1, 2 or 4 bytes, naturally aligned (a dword never straddles).
//! * Common configuration: each field at its own width and offset; the 64-bit queue address
//!   fields also as either 32-bit half.
//! * ISR: one byte. Device configuration: 1, 2, 4 or 8 bytes at any offset inside it.
//! * Notifications: 2 or 4 bytes at a queue's notify address.
//! * MSI-X table and PBA: aligned dwords and qwords.
//!
//! An access that straddles two structures, or a structure and a gap, addresses nothing.
//!
//! # Behaviour worth knowing
//!
//! * `queue_enable = 0` is ignored (the driver must not write it, §4.1.4.3.2); a queue stops
//!   with `queue_reset` (with `VIRTIO_F_RING_RESET`) or a device reset. Queue registers are
//!   frozen while the queue is enabled. A queue enabled before FEATURES_OK is refused
//!   ([`QueueSetupError::FeaturesNotAccepted`](super::QueueSetupError)); a queue that fails
//!   validation (size, alignment, rings outside RAM, overlap) is refused with
//!   DEVICE_NEEDS_RESET and never touched.
//! * The doorbell address names the queue: a write at `NOTIFY_OFFSET + 4 * i` notifies queue
//!   `i`, whatever value it carries (the index, or with `VIRTIO_F_NOTIFICATION_DATA` the
//!   32-bit notification data, §4.1.5.2).
//! * Without Bus Master Enable in the command register the function does no DMA: queues are
//!   not run and MSI-X messages wait in the pending bit array. Setting it again while the
//!   driver is live scans every ready queue, as DRIVER_OK does, for kicks and buffers that
//!   arrived meanwhile. Config-space access to BAR 0
//!   through `VIRTIO_PCI_CAP_PCI_CFG` works whatever the command register says; memory
//!   accesses ([`memory_read`](PciTransport::memory_read)) decode only with Memory Space set.
//! * `config_generation` is 8 bits; it changes at most once between two reads of the device
//!   configuration, so it cannot wrap back to a value the driver saw (§4.1.4.3.1).
//! * Not offered: SR_IOV, NOTIF_CONFIG_DATA, ADMIN_VQ, SUSPEND (no capability or mechanism
//!   behind them), and no shared-memory capability.

//!
//! # Requirements
//!
//! The shared device checklist has no rows for PCI; the tests cite these (paraphrased from
//! VIRTIO 1.4 §4.1 and PCI Local Bus 3.0; "TOLERATE": what the device does when a driver
//! breaks a driver rule).
//!
//! | ID | requirement | § |
//! |---|---|---|
//! | PCI-01 | Vendor ID 0x1AF4, device ID 0x1040 + virtio device ID | 4.1.2.1 |
//! | PCI-02 | Revision ID ≥ 1, subsystem ID ≥ 0x40 (non-transitional, SHOULD) | 4.1.2.1 |
//! | PCI-03 | Vendor capabilities for common, notify, ISR, device and PCI_CFG structures; `cap_len` covers each | 4.1.4, 4.1.4.1 |
//! | PCI-04 | Alignment: common and device offsets 4-aligned; notify offset and `notify_off_multiplier` fit NOTIFICATION_DATA; notify `length ≥ queue_notify_off * multiplier + 4` | 4.1.4.3.1, 4.1.4.4.1, 4.1.4.7.1 |
//! | PCI-05 | `device_feature` shows word `device_feature_select`, 0 beyond word 1 | 4.1.4.3.1 |
//! | PCI-06 | `driver_feature` presents the valid bits written | 4.1.4.3.1 |
//! | PCI-07 | `config_generation` changes after the driver read a changed configuration | 4.1.4.3.1 |
//! | PCI-08 | `device_status = 0` resets; it reads 0 once done | 4.1.4.3.1 |
//! | PCI-09 | `queue_enable` 0 at reset; `queue_reset` resets one queue, then both read 0 | 4.1.4.3.1 |
//! | PCI-10 | `queue_size` 0 for an unavailable queue; a power of two unless RING_PACKED | 4.1.4.3.1 |
//! | PCI-11 | TOLERATE writes to read-only fields, `queue_enable = 0`, a bad `queue_size` | 4.1.4.3.2 |
//! | PCI-12 | ISR: reading returns and clears it and deasserts INTx; bit 1 before a configuration interrupt; bit 0 without MSI-X | 4.1.4.5.1 |
//! | PCI-13 | `pci_cfg_data` accesses `cap.length` bytes at `cap.offset` of `cap.bar`; TOLERATE a window outside the BAR | 4.1.4.9.1, 4.1.4.9.2 |
//! | PCI-14 | MSI-X: Table Size reported; any event maps to any vector; a refused mapping reads NO_VECTOR; reset unmaps all | 4.1.5.1.2.1 |
//! | PCI-15 | With MSI-X, no interrupt for an event mapped to NO_VECTOR | 4.1.5.4.1, 4.1.5.5.1 |
//! | PCI-16 | Per-vector and function masks; a masked message sets its pending bit and is sent on unmask | PCI 3.0 6.8.2 |
//! | PCI-17 | INTx: asserted while the ISR is set without MSI-X, unless the command register disables it | 4.1.4.5.1; PCI 3.0 6.2.2 |
//! | PCI-18 | BAR sizing by all-ones writes; relocation | PCI 3.0 6.2.5.1 |
//! | PCI-19 | Field-width accesses; 64-bit fields also as independent 32-bit halves; TOLERATE other widths and straddling accesses | 4.1.3, 4.1.3.1 |
//! | PCI-20 | A notification is the 16-bit queue index (32-bit data with NOTIFICATION_DATA) at the queue's notify address | 4.1.5.2 |

mod common;
mod config;
pub mod layout;
mod msix;
pub mod state;

pub use msix::{MsiMessage, MsixVectors, NO_VECTOR};

use core::fmt;

use crate::memory::GuestMemory;
use crate::packed::PackedQueue;
use crate::split::Queue;
use crate::wire::{DeviceStatus, Features};

use super::core::{Core, DEVICE_SPECIFIC, Flavor, GENERIC_ALLOWED};
use super::{
    DeviceId, Events, InterruptStatus, NotifyMode, QueueSetupError, VirtioDevice, access_len,
};
use config::Window;
use msix::Interrupts;

/// The identity a function shows in its configuration header beyond vendor and device ID
/// (§4.1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PciIds {
    /// Subsystem Vendor ID (0x2C). Default 0x1AF4.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID (0x2E). Default 0x1100; a non-transitional device should show 0x40 or
    /// more (§4.1.2.1).
    pub subsystem_id: u16,
    /// Class code (0x09–0x0B) as `base class << 16 | subclass << 8 | programming
    /// interface`; only the low 24 bits count. Default per device type (network → 0x020000,
    /// block → 0x010000, console → 0x078000, ...; 0xFF0000 otherwise).
    pub class_code: u32,
    /// Revision ID (0x08). Default 1; a non-transitional device has 1 or more (§4.1.2.1), so 0
    /// is shown as 1.
    pub revision: u8,
}

impl PciIds {
    /// The defaults for virtio device type `device_id`.
    pub const fn for_device(device_id: DeviceId) -> Self {
        Self {
            subsystem_vendor_id: layout::VENDOR_ID,
            subsystem_id: 0x1100,
            class_code: config::default_class_code(device_id.0),
            revision: 1,
        }
    }
}

/// The events of a [`PciOutcome`]: the transports share one type ([`Events`]); this is its
/// former name.
pub use super::Events as PciEvents;

/// What one access (or [`process_queue`](PciTransport::process_queue), ...) did: the value
/// read, the interrupts to raise and the events to act on. The transport raises nothing
/// itself, so dropping an outcome drops interrupts.
#[must_use = "the outcome carries the interrupts the hypervisor must raise"]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PciOutcome {
    /// The value of a read (in the low bytes, little-endian); 0 for everything else.
    pub value: u64,
    /// The INTA# level after the access: asserted while the ISR is non-zero, MSI-X is
    /// disabled and the command register does not disable INTx (§4.1.4.5). A level, not an
    /// edge: set the line to it after every access.
    pub intx: bool,
    /// MSI-X vectors whose message must be sent now (§4.1.5.4, §4.1.5.5).
    pub msix: MsixVectors,
    /// Events besides interrupts.
    pub events: Events,
}

/// A virtio-pci function (modern interface, §4.1): device model `D` with `Q` queues (at most
/// [`layout::MAX_QUEUES`]) and `V` MSI-X vectors (1 to [`layout::MAX_VECTORS`]), over guest
/// memory `M`.
///
/// The status state machine, feature negotiation, queue validation and interrupt decisions
/// are the transport core's, shared with [`MmioTransport`](super::MmioTransport); this type
/// decodes configuration space and BAR 0 and routes interrupts to MSI-X vectors or INTx.
/// No allocation: everything lives in fixed arrays.
pub struct PciTransport<D, M, const Q: usize, const V: usize> {
    core: Core<D, M, Q>,
    irq: Interrupts<Q, V>,
    ids: PciIds,
    pci_device_id: u16,
    num_queues: u16,
    command: u16,
    bar: u64,
    interrupt_line: u8,
    window: Window,
    device_feature_select: u32,
    driver_feature_select: u32,
    queue_select: u16,
    /// Events of the access in progress.
    events: Events,
}

impl<D: fmt::Debug, M, const Q: usize, const V: usize> fmt::Debug for PciTransport<D, M, Q, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PciTransport")
            .field("command", &self.command)
            .field("bar", &self.bar)
            .field("irq", &self.irq)
            .field("core", &self.core)
            .finish()
    }
}

/// BAR 0 regions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Region {
    Common,
    Isr,
    Device,
    Notify,
    Table,
    Pba,
}

impl<D: VirtioDevice, M: GuestMemory, const Q: usize, const V: usize> PciTransport<D, M, Q, V> {
    /// `Q` and `V` within the limits of the BAR layout, checked when the type is used.
    const LIMITS: () = assert!(
        Q <= layout::MAX_QUEUES && V >= 1 && V <= layout::MAX_VECTORS,
        "PciTransport: Q ≤ 1024 queues and 1 ≤ V ≤ 64 MSI-X vectors"
    );

    /// A function for `device` over guest memory `mem`, with the default identity for its
    /// device type ([`PciIds::for_device`]). Queue `i < Q` gets `device.queue_max_size(i)`
    /// entries (0: no such queue). The function starts as after a PCI reset: command 0,
    /// BAR 0 at 0, MSI-X disabled with every vector masked.
    pub fn new(device: D, mem: M) -> Self {
        let ids = PciIds::for_device(device.device_id());
        Self::with_ids(device, mem, ids)
    }

    /// As [`new`](Self::new), with the given subsystem IDs, class code and revision.
    pub fn with_ids(device: D, mem: M, ids: PciIds) -> Self {
        let () = Self::LIMITS;
        let dev = device.device_features().bits();
        let mut offered = dev & (DEVICE_SPECIFIC | GENERIC_ALLOWED);
        offered |= Features::VERSION_1.bits()
            | (dev & (Features::RING_RESET | Features::NOTIFICATION_DATA).bits());
        if D::PACKED_RING {
            offered |= dev & Features::RING_PACKED.bits();
        }
        let pci_device_id = u32::from(layout::DEVICE_ID_BASE)
            .checked_add(device.device_id().0)
            .and_then(|id| u16::try_from(id).ok())
            .unwrap_or(u16::MAX);
        let mut core = Core::new(device, mem, Flavor::Modern, offered);
        core.set_lazy_generation();
        core.set_dma(false);
        let num_queues = (0..Q).rev().find(|&i| core.queue_exists(i)).map_or(0, |i| {
            u16::try_from(i.saturating_add(1)).unwrap_or(u16::MAX)
        });
        Self {
            core,
            irq: Interrupts::POWER_ON,
            ids: PciIds {
                revision: ids.revision.max(1),
                ..ids
            },
            pci_device_id,
            num_queues,
            command: 0,
            bar: 0,
            interrupt_line: 0,
            window: Window::default(),
            device_feature_select: 0,
            driver_feature_select: 0,
            queue_select: 0,
            events: Events::empty(),
        }
    }

    // ---- accessors ----------------------------------------------------------------------------

    /// Choose when a notification runs the device (default [`NotifyMode::Inline`]).
    pub fn set_notify_mode(&mut self, mode: NotifyMode) {
        self.core.set_notify_mode(mode);
    }

    /// The device model.
    pub const fn device(&self) -> &D {
        &self.core.device
    }

    /// The device model, mutably (for back-end events; call
    /// [`process_queue`](Self::process_queue) or [`poll`](Self::poll) afterwards if it has
    /// work for the guest).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.core.device
    }

    /// The guest memory the device uses.
    pub const fn memory(&self) -> &M {
        &self.core.mem
    }

    /// The identity shown in the configuration header.
    pub const fn ids(&self) -> PciIds {
        self.ids
    }

    /// Queue `index` in the split format, if it exists (unused while
    /// [`is_packed`](Self::is_packed)).
    pub fn queue(&self, index: u16) -> Option<&Queue> {
        self.core.queue(index)
    }

    /// Queue `index` in the packed format, if it exists (used only while
    /// [`is_packed`](Self::is_packed)).
    pub fn packed_queue(&self, index: u16) -> Option<&PackedQueue> {
        self.core.packed_queue(index)
    }

    /// Whether the driver negotiated `VIRTIO_F_RING_PACKED` (§2.8).
    pub const fn is_packed(&self) -> bool {
        self.core.is_packed()
    }

    /// Why queue `index` was refused at its last enable, if it was.
    pub fn queue_setup_error(&self, index: u16) -> Option<QueueSetupError> {
        self.core.queue_setup_error(index)
    }

    /// The device status as the driver reads it.
    pub const fn status(&self) -> DeviceStatus {
        self.core.status()
    }

    /// Whether the driver set DRIVER_OK (and not FAILED).
    pub fn is_live(&self) -> bool {
        self.core.is_live()
    }

    /// The features offered to the driver (after the transport's mask), device-specific bits
    /// included.
    pub const fn offered_features(&self) -> Features {
        Features::from_bits_retain(self.core.offered())
    }

    /// The negotiated features (empty until FEATURES_OK).
    pub const fn negotiated_features(&self) -> Features {
        Features::from_bits_retain(self.core.negotiated())
    }

    /// The command register.
    pub const fn command(&self) -> u16 {
        self.command
    }

    /// Where BAR `bar` is in guest-physical memory space: `Some` for BAR 0 while Memory Space
    /// decoding is on (the driver placed it; see [`layout::BAR_SIZE`]), `None` otherwise.
    pub const fn bar_address(&self, bar: u8) -> Option<u64> {
        if bar == layout::BAR && self.command & layout::COMMAND_MEMORY != 0 {
            Some(self.bar)
        } else {
            None
        }
    }

    /// The ISR status (§4.1.4.5), without clearing it.
    pub const fn isr(&self) -> InterruptStatus {
        InterruptStatus::from_bits_retain(self.irq.isr)
    }

    /// Whether MSI-X is enabled (Message Control).
    pub const fn msix_enabled(&self) -> bool {
        self.irq.msix_enabled()
    }

    /// MSI-X Message Control as the driver reads it: Table Size − 1, function mask (bit 14),
    /// enable (bit 15).
    pub fn msix_control(&self) -> u16 {
        self.irq.message_control()
    }

    /// The INTA# level now.
    pub const fn intx_level(&self) -> bool {
        self.irq.intx_level()
    }

    /// The MSI-X pending bit array (bit `v` = vector `v`).
    pub const fn msix_pending(&self) -> u64 {
        self.irq.pending()
    }

    /// MSI-X table entry `vector`'s message, if the table has that entry.
    pub fn msix_message(&self, vector: u16) -> Option<MsiMessage> {
        self.irq.message(vector)
    }

    /// The messages of `vectors` (an outcome's [`PciOutcome::msix`]), lowest vector first.
    pub fn msix_messages(&self, vectors: MsixVectors) -> impl Iterator<Item = MsiMessage> + '_ {
        vectors.iter().filter_map(|v| self.irq.message(v))
    }

    /// The vector configuration changes are mapped to (`config_msix_vector`).
    pub const fn config_vector(&self) -> u16 {
        self.irq.config_vector
    }

    /// The vector queue `index` is mapped to (`queue_msix_vector`), if the queue exists.
    pub fn queue_vector(&self, index: u16) -> Option<u16> {
        self.core
            .queue_exists(usize::from(index))
            .then(|| self.irq.queue_vectors.get(usize::from(index)).copied())
            .flatten()
    }

    // ---- accesses -----------------------------------------------------------------------------

    /// A guest read of `width` bytes at `offset` in this function's configuration space
    /// (1, 2 or 4 bytes, naturally aligned; offsets from 0x100, the PCI Express extended
    /// space, read 0). Reading `pci_cfg_data` of the `VIRTIO_PCI_CAP_PCI_CFG` window reads
    /// BAR 0 (and so may clear the ISR).
    pub fn config_read(&mut self, offset: u16, width: u8) -> PciOutcome {
        let start = self.begin();
        let value = match config_access(offset, width) {
            Some((dw, shift, mask)) => {
                let word = if dw == layout::PCI_CFG_DATA {
                    self.window_read()
                } else {
                    self.config_dword(dw)
                };
                u64::from(word >> shift & mask)
            }
            None => 0,
        };
        self.finish(value, start)
    }

    /// A guest write of `width` bytes at `offset` in configuration space (the value in the
    /// low bytes of `value`). Read-only registers, reserved space and other widths ignore it.
    pub fn config_write(&mut self, offset: u16, width: u8, value: u64) -> PciOutcome {
        let start = self.begin();
        if let Some((dw, shift, mask)) = config_access(offset, width) {
            let v = u32::try_from(value & u64::from(mask)).unwrap_or(0) << shift;
            self.config_dword_write(dw, v, mask << shift);
        }
        self.finish(0, start)
    }

    /// A guest read of `width` bytes at `offset` inside BAR `bar` (the hypervisor decoded the
    /// address). Only BAR 0 exists; see the access widths above.
    pub fn bar_read(&mut self, bar: u8, offset: u64, width: u8) -> PciOutcome {
        let start = self.begin();
        let value = match access_len(width) {
            Some(len) if bar == layout::BAR => self.bar0_read(offset, len),
            _ => 0,
        };
        self.finish(value, start)
    }

    /// A guest write of `width` bytes at `offset` inside BAR `bar`, the value in the low bytes
    /// of `value`.
    pub fn bar_write(&mut self, bar: u8, offset: u64, width: u8, value: u64) -> PciOutcome {
        let start = self.begin();
        if let Some(len) = access_len(width).filter(|_| bar == layout::BAR) {
            self.bar0_write(offset, len, value);
        }
        self.finish(0, start)
    }

    /// A guest load of `width` bytes at guest-physical `addr`: `None` if this function does
    /// not decode the address (outside BAR 0, or Memory Space off), otherwise
    /// [`bar_read`](Self::bar_read) at the offset inside the BAR.
    pub fn memory_read(&mut self, addr: u64, width: u8) -> Option<PciOutcome> {
        let offset = self.decode(addr)?;
        Some(self.bar_read(layout::BAR, offset, width))
    }

    /// A guest store of `width` bytes at guest-physical `addr`: `None` if this function does
    /// not decode the address, otherwise [`bar_write`](Self::bar_write).
    pub fn memory_write(&mut self, addr: u64, width: u8, value: u64) -> Option<PciOutcome> {
        let offset = self.decode(addr)?;
        Some(self.bar_write(layout::BAR, offset, width, value))
    }

    /// Queues with work waiting since the last call: kicks recorded in
    /// [`NotifyMode::Deferred`], and queues whose device used up its budget
    /// ([`NotifyReport::more`](super::NotifyReport::more)). Calls `f` with each queue index and
    /// clears the record; run [`process_queue`](Self::process_queue) for each (an outcome with
    /// [`Events::KICKS`] says there are some).
    pub fn take_kicks(&mut self, f: impl FnMut(u16)) {
        self.core.take_kicks(f);
    }

    /// Run the device on queue `index` now (as an inline notification would): one call of the
    /// device's handler, so at most one budget of work. Ignored for a queue that is not live.
    pub fn process_queue(&mut self, index: u16) -> PciOutcome {
        let start = self.begin();
        self.core.process_queue(index, &mut self.irq);
        self.finish(0, start)
    }

    /// Run the device on every live queue (a device that polls its rings).
    pub fn poll(&mut self) -> PciOutcome {
        let start = self.begin();
        self.core.poll(&mut self.irq);
        self.finish(0, start)
    }

    /// The device changed its configuration: a new `config_generation` and, once the driver
    /// is live, a configuration change interrupt (§4.1.5.5).
    pub fn signal_config_change(&mut self) -> PciOutcome {
        let start = self.begin();
        self.core.signal_config_change(&mut self.irq);
        self.finish(0, start)
    }

    /// Enter DEVICE_NEEDS_RESET (§2.1.2), with a configuration change interrupt if DRIVER_OK
    /// is set. Only the first call has an effect until reset.
    pub fn raise_needs_reset(&mut self) -> PciOutcome {
        let start = self.begin();
        self.core.raise_needs_reset(&mut self.irq);
        self.finish(0, start)
    }

    /// A PCI reset of the function (conventional reset or FLR, as the platform does it):
    /// the configuration header, the BAR, MSI-X and the access window back to power-on, and a
    /// virtio device reset.
    pub fn pci_reset(&mut self) -> PciOutcome {
        let start = self.begin();
        self.reset_device();
        self.irq = Interrupts::POWER_ON;
        self.core.set_dma(false);
        if self.command & layout::COMMAND_MEMORY != 0 || self.bar != 0 {
            self.events |= Events::BAR_CHANGED;
        }
        self.command = 0;
        self.bar = 0;
        self.interrupt_line = 0;
        self.window = Window::default();
        self.finish(0, start)
    }

    // ---- internals ----------------------------------------------------------------------------

    /// Start of an access: the status before it.
    fn begin(&mut self) -> DeviceStatus {
        self.events = Events::empty();
        self.core.status()
    }

    /// End of an access: collect its interrupts and events.
    fn finish(&mut self, value: u64, before: DeviceStatus) -> PciOutcome {
        self.events |= self.core.access_events(before);
        PciOutcome {
            value,
            intx: self.irq.intx_level(),
            msix: self.irq.take_fired(),
            events: core::mem::take(&mut self.events),
        }
    }

    /// The offset in BAR 0 of guest-physical `addr`, if the function decodes it.
    fn decode(&self, addr: u64) -> Option<u64> {
        let base = self.bar_address(layout::BAR)?;
        let offset = addr.checked_sub(base)?;
        (offset < layout::BAR_SIZE).then_some(offset)
    }

    /// The region of BAR 0 an access of `len` bytes at `offset` lies in entirely, and the
    /// offset inside it. Straddling accesses and gaps lie in none.
    fn region(&self, offset: u64, len: usize) -> Option<(Region, u64)> {
        let table_len = u64::try_from(V).ok()?.checked_mul(16)?;
        let end = offset.checked_add(u64::try_from(len).ok()?)?;
        [
            (Region::Common, layout::COMMON_OFFSET, layout::COMMON_LEN),
            (Region::Isr, layout::ISR_OFFSET, layout::ISR_LEN),
            (Region::Device, layout::DEVICE_OFFSET, layout::DEVICE_LEN),
            (Region::Notify, layout::NOTIFY_OFFSET, self.notify_len()),
            (Region::Table, layout::MSIX_TABLE_OFFSET, table_len),
            (Region::Pba, layout::MSIX_PBA_OFFSET, 8),
        ]
        .into_iter()
        .find(|&(_, start, rlen)| offset >= start && end <= start.saturating_add(rlen))
        .map(|(r, start, _)| (r, offset.wrapping_sub(start)))
    }

    /// A read of `len` (1, 2, 4 or 8) bytes at `offset` in BAR 0.
    fn bar0_read(&mut self, offset: u64, len: usize) -> u64 {
        match self.region(offset, len) {
            Some((Region::Common, at)) => self.common_read(at, len),
            // §4.1.4.5: reading the ISR returns it and clears it (INTA# drops).
            Some((Region::Isr, _)) if len == 1 => u64::from(core::mem::take(&mut self.irq.isr)),
            Some((Region::Device, at)) => {
                let mut buf = [0u8; 8];
                if let Some(data) = buf.get_mut(..len) {
                    self.core.read_config(at, data);
                    self.core.note_config_read();
                }
                u64::from_le_bytes(buf)
            }
            Some((Region::Table, at)) => self.irq.table_read(at, len),
            Some((Region::Pba, at)) => self.irq.pba_read(at, len),
            // The notification structure is write-only.
            _ => 0,
        }
    }

    /// A write of `len` bytes at `offset` in BAR 0.
    fn bar0_write(&mut self, offset: u64, len: usize, value: u64) {
        match self.region(offset, len) {
            Some((Region::Common, at)) => self.common_write(at, len, value),
            Some((Region::Device, at)) => {
                let buf = value.to_le_bytes();
                if let Some(data) = buf.get(..len) {
                    self.core.write_config(at, data);
                }
            }
            Some((Region::Notify, at)) if matches!(len, 2 | 4) => {
                // The address names the queue (§4.1.4.4); the value (the index, or the
                // NOTIFICATION_DATA word, §4.1.5.2) is not needed to find it.
                let mult = u64::from(layout::NOTIFY_OFF_MULTIPLIER);
                if at.is_multiple_of(mult)
                    && let Some(Ok(index)) = at.checked_div(mult).map(u16::try_from)
                {
                    self.core.notify(index, &mut self.irq);
                }
            }
            Some((Region::Table, at)) => self.irq.table_write(at, len, value),
            // ISR and PBA are read-only.
            _ => {}
        }
    }

    /// Device status write through the common configuration: 0 resets the device.
    fn write_status(&mut self, value: u8) {
        if value == 0 {
            self.reset_device();
        } else {
            self.core.write_status(value, &mut self.irq);
        }
    }

    /// Virtio device reset (§2.4, §4.1.4.3.1): queues, status, features, vectors, ISR and
    /// pending messages back to power-on before `device_status` reads 0. PCI state (command,
    /// BAR, MSI-X table and control) is not touched.
    fn reset_device(&mut self) {
        self.core.reset();
        self.irq.virtio_reset();
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
        self.events |= Events::DEVICE_RESET;
    }
}

/// The dword, bit shift and value mask of a configuration access of `width` bytes at
/// `offset`: 1, 2 or 4 bytes, naturally aligned, below 0x100.
fn config_access(offset: u16, width: u8) -> Option<(u16, u32, u32)> {
    let mask = match width {
        1 => 0xFF,
        2 => 0xFFFF,
        4 => 0xFFFF_FFFF,
        _ => return None,
    };
    if !offset.is_multiple_of(u16::from(width)) || offset >= 0x100 {
        return None;
    }
    Some((offset & !3, u32::from(offset & 3) * 8, mask))
}
