//! The virtio-mmio transport, device side (VIRTIO 1.4 §4.2): version 2 and legacy version 1.
//!
//! A hypervisor exposes each device as a register window in guest-physical address space,
//! traps every guest access to it and forwards the access here:
//!
//! ```
//! # use virtq::transport::{DeviceId, MmioTransport, MmioVersion, NotifyReport, Queues, VirtioDevice};
//! # use virtq::{Features, GuestMemory};
//! # struct Null;
//! # impl VirtioDevice for Null {
//! #     fn device_id(&self) -> DeviceId { DeviceId::INVALID }
//! #     fn device_features(&self) -> Features { Features::empty() }
//! #     fn queue_max_size(&self, _: u16) -> u16 { 0 }
//! #     fn read_config(&self, _: u32, _: &mut [u8]) {}
//! #     fn queue_notify<M: GuestMemory + ?Sized>(&mut self, _: u16, _: Queues<'_>, _: &M) -> NotifyReport { NotifyReport::IDLE }
//! # }
//! # let mem = virtq::memory::RegionTable::<1>::new();
//! let mut dev = MmioTransport::<_, _, 1>::new(Null, &mem, MmioVersion::V2);
//! // In the trap handler: offset inside the window, access width in bytes, value.
//! let magic = dev.read(0x000, 4);
//! assert_eq!(magic, 0x7472_6976);
//! // Device configuration answers 1-, 2-, 4- and 8-byte accesses (here all zero).
//! assert_eq!(dev.read(0x100, 8), 0);
//! let out = dev.write(0x070, 4, 1); // Status = ACKNOWLEDGE
//! assert!(!out.irq); // the interrupt line level
//! assert!(out.events.is_empty()); // nothing else to act on
//! ```
//!
//! Every write (and every call that runs the device) returns an [`MmioOutcome`]: the level of
//! the device's interrupt line, asserted while `InterruptStatus` is non-zero (MMIO-03), the
//! notifications raised during the access (for edge-triggered lines, see
//! [the transport docs](super#interrupt-lines-levels-and-edges)), and [`Events`]: a queue
//! refused at enable, DEVICE_NEEDS_RESET newly raised, a device reset, queue work waiting. The
//! hypervisor forwards the level to its interrupt controller and acts on the events; it never
//! has to poll the device for them. Reads have no side effects and return only the value.
//!
//! # What the transport checks
//!
//! * Accesses are 1, 2, 4 or 8 bytes wide, as a trap delivers them, with the value in the low
//!   bytes of a `u64`, little-endian. Control registers accept only aligned 32-bit accesses;
//!   anything else reads as zero and is ignored on write (MMIO-21). The device configuration
//!   (from 0x100) accepts every one of those widths at any offset (MMIO-23, MMIO-24).
//!   Undefined offsets, writes to read-only registers and reads of write-only registers are
//!   read-as-zero / write-ignored (MMIO-22).
//! * The device status is a state machine (§2.1, §3.1.1): bits are sticky until reset,
//!   FEATURES_OK latches only for a valid feature subset, DRIVER_OK only after FEATURES_OK,
//!   DEVICE_NEEDS_RESET belongs to the device, FAILED stops everything until reset, and a
//!   Status write of 0 resets every queue, the interrupt status and the negotiated features
//!   before the write completes (H19).
//! * A queue is validated when it is enabled (`QueueReady = 1`, or a non-zero `QueuePFN` in
//!   legacy mode): size, alignment, address overflow, guest-RAM ranges and overlap (H9). A
//!   refused queue is never read; the device raises DEVICE_NEEDS_RESET.
//! * On version 2 a queue is set up after FEATURES_OK (§3.1.1): only then is the ring format
//!   known. `QueueReady = 1` before an accepted FEATURES_OK is refused
//!   ([`QueueSetupError::FeaturesNotAccepted`]): it does not take (`QueueReady` reads 0) and
//!   raises DEVICE_NEEDS_RESET, so a queue never reads as ready while it is dead.
//! * A legacy device is usable once the driver set ACKNOWLEDGE and DRIVER (no FEATURES_OK
//!   step, and use before DRIVER_OK is allowed, LEG-10); a status holding only the device's
//!   own DEVICE_NEEDS_RESET is not a live device.
//! * A queue that hits a fatal guest error ([`Queue::is_broken`]) raises DEVICE_NEEDS_RESET
//!   plus a configuration-change interrupt, once; the other queues keep running.
//! * Notifications for unknown, disabled, refused or broken queues, before DRIVER_OK or after
//!   FAILED are ignored in O(1).
//! * Features the transport cannot carry are never offered, whatever the device model says:
//!   ADMIN_VQ, SR_IOV, NOTIF_CONFIG_DATA (PCI only), reserved bits, and the features this
//!   transport does not implement (NOTIFICATION_DATA, SUSPEND). RING_RESET is passed through
//!   on version 2: `QueueReset` resets one queue inside the write.
//!
//! # Packed rings
//!
//! On version 2, `VIRTIO_F_RING_PACKED` (§2.8) is offered when the device model serves packed
//! rings ([`VirtioDevice::PACKED_RING`]) and lists the bit in
//! [`VirtioDevice::device_features`]. If the driver accepts it, every queue enabled after
//! FEATURES_OK is a [`PackedQueue`]: `QueueDesc` is the descriptor ring, `QueueDriver` the
//! driver event suppression structure and `QueueDevice` the device event suppression structure.
//! `QueueNumMax` then reads the device's own maximum, not rounded to a power of two (the
//! split-ring value before FEATURES_OK). Its size may be any value from 1 to `QueueNumMax`
//! (PACKED-02, PACKED-03); the ring must be
//! 16-aligned and the event structures 4-aligned (PACKED-04) and all three in guest RAM
//! (PACKED-05). [`VirtioDevice::queue_notify`] then receives
//! [`Queues::Packed`](super::Queues::Packed).
//!
//! # Used-buffer interrupts
//!
//! After the device's [`VirtioDevice::queue_notify`] returns, the transport asks every live
//! queue [`Queue::needs_notification`] (or [`PackedQueue::needs_notification`]; EVENT_IDX,
//! `VIRTQ_AVAIL_F_NO_INTERRUPT` or the driver event structure applied) and
//! sets `InterruptStatus` bit 0 if any queue, or the handler itself, says so (MMIO-04). A
//! handler that reports `more` (its budget ran out) leaves the queue pending:
//! [`Events::KICKS`] in the outcome and the queue in [`MmioTransport::take_kicks`]; the
//! transport never calls the handler twice for one access.

use core::fmt;

use crate::memory::GuestMemory;
use crate::packed::PackedQueue;
use crate::split::Queue;
use crate::wire::{DeviceStatus, Features, split_layout as layout};

pub mod state;

use super::core::{Area, Core, DEVICE_SPECIFIC, Flavor, GENERIC_ALLOWED, Signals};
use super::{Events, InterruptStatus, NotifyMode, QueueSetupError, VirtioDevice, access_len};

/// Register offsets of the virtio-mmio window (§4.2.2, legacy §4.2.4).
pub mod regs {
    /// `0x74726976` ("virt").
    #[doc(alias = "VIRTIO_MMIO_MAGIC_VALUE")]
    pub const MAGIC_VALUE: u64 = 0x000;
    /// Transport version: 2, or 1 for legacy.
    #[doc(alias = "VIRTIO_MMIO_VERSION")]
    pub const VERSION: u64 = 0x004;
    /// Virtio device type.
    #[doc(alias = "VIRTIO_MMIO_DEVICE_ID")]
    pub const DEVICE_ID: u64 = 0x008;
    /// Subsystem vendor ID.
    #[doc(alias = "VIRTIO_MMIO_VENDOR_ID")]
    pub const VENDOR_ID: u64 = 0x00c;
    /// Offered features, word `DeviceFeaturesSel` (legacy: `HostFeatures`).
    #[doc(alias = "VIRTIO_MMIO_DEVICE_FEATURES")]
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// Selects the word shown in `DeviceFeatures`.
    #[doc(alias = "VIRTIO_MMIO_DEVICE_FEATURES_SEL")]
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// Accepted features, word `DriverFeaturesSel` (legacy: `GuestFeatures`).
    #[doc(alias = "VIRTIO_MMIO_DRIVER_FEATURES")]
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// Selects the word `DriverFeatures` writes.
    #[doc(alias = "VIRTIO_MMIO_DRIVER_FEATURES_SEL")]
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// Legacy only: guest page size used to scale `QueuePFN`.
    #[doc(alias = "VIRTIO_MMIO_GUEST_PAGE_SIZE")]
    pub const GUEST_PAGE_SIZE: u64 = 0x028;
    /// Selects the queue the queue registers act on.
    #[doc(alias = "VIRTIO_MMIO_QUEUE_SEL")]
    pub const QUEUE_SEL: u64 = 0x030;
    /// Largest size of the selected queue; 0 if it does not exist.
    #[doc(alias = "VIRTIO_MMIO_QUEUE_NUM_MAX")]
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// Size of the selected queue.
    #[doc(alias = "VIRTIO_MMIO_QUEUE_NUM")]
    pub const QUEUE_NUM: u64 = 0x038;
    /// Legacy only: used-ring alignment of the selected queue.
    #[doc(alias = "VIRTIO_MMIO_QUEUE_ALIGN")]
    pub const QUEUE_ALIGN: u64 = 0x03c;
    /// Legacy only: page number of the selected queue (0 = not in use).
    #[doc(alias = "VIRTIO_MMIO_QUEUE_PFN")]
    pub const QUEUE_PFN: u64 = 0x040;
    /// Version 2: the selected queue is enabled.
    #[doc(alias = "VIRTIO_MMIO_QUEUE_READY")]
    pub const QUEUE_READY: u64 = 0x044;
    /// Available-buffer notification: the queue index.
    #[doc(alias = "VIRTIO_MMIO_QUEUE_NOTIFY")]
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// Bit 0: used buffer; bit 1: configuration change.
    #[doc(alias = "VIRTIO_MMIO_INTERRUPT_STATUS")]
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// Clears the written `InterruptStatus` bits.
    #[doc(alias = "VIRTIO_MMIO_INTERRUPT_ACK")]
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// Device status (§2.1); writing 0 resets the device.
    #[doc(alias = "VIRTIO_MMIO_STATUS")]
    pub const STATUS: u64 = 0x070;
    /// Descriptor area, low 32 bits.
    #[doc(alias = "VIRTIO_MMIO_QUEUE_DESC_LOW")]
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// Descriptor area, high 32 bits.
    #[doc(alias = "VIRTIO_MMIO_QUEUE_DESC_HIGH")]
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// Driver area (available ring), low 32 bits.
    #[doc(alias = "VIRTIO_MMIO_QUEUE_AVAIL_LOW")]
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    /// Driver area (available ring), high 32 bits.
    #[doc(alias = "VIRTIO_MMIO_QUEUE_AVAIL_HIGH")]
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    /// Device area (used ring), low 32 bits.
    #[doc(alias = "VIRTIO_MMIO_QUEUE_USED_LOW")]
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    /// Device area (used ring), high 32 bits.
    #[doc(alias = "VIRTIO_MMIO_QUEUE_USED_HIGH")]
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    /// Selects a shared-memory region.
    #[doc(alias = "VIRTIO_MMIO_SHM_SEL")]
    pub const SHM_SEL: u64 = 0x0ac;
    /// Shared-memory region length, low 32 bits.
    #[doc(alias = "VIRTIO_MMIO_SHM_LEN_LOW")]
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    /// Shared-memory region length, high 32 bits.
    #[doc(alias = "VIRTIO_MMIO_SHM_LEN_HIGH")]
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    /// Shared-memory region base, low 32 bits.
    #[doc(alias = "VIRTIO_MMIO_SHM_BASE_LOW")]
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    /// Shared-memory region base, high 32 bits.
    #[doc(alias = "VIRTIO_MMIO_SHM_BASE_HIGH")]
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    /// Per-queue reset (§2.6.1; only with `VIRTIO_F_RING_RESET`): writing 1 resets the
    /// selected queue. The reset completes inside the write, so it always reads 0.
    #[doc(alias = "VIRTIO_MMIO_QUEUE_RESET")]
    pub const QUEUE_RESET: u64 = 0x0c0;
    /// Configuration generation counter.
    #[doc(alias = "VIRTIO_MMIO_CONFIG_GENERATION")]
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// Start of the device-specific configuration space.
    #[doc(alias = "VIRTIO_MMIO_CONFIG")]
    pub const CONFIG: u64 = 0x100;
}

/// `MagicValue` (§4.2.2): "virt" in little-endian.
pub const MAGIC: u32 = 0x7472_6976;

/// `InterruptStatus` bit 0 as a register value: a used-buffer notification (§4.2.2,
/// [`InterruptStatus::USED_BUFFER`]).
#[doc(alias = "VIRTIO_MMIO_INT_VRING")]
pub const INT_VRING: u32 = InterruptStatus::USED_BUFFER.bits() as u32;
/// `InterruptStatus` bit 1 as a register value: a configuration change (§4.2.2,
/// [`InterruptStatus::CONFIG_CHANGE`]).
#[doc(alias = "VIRTIO_MMIO_INT_CONFIG")]
pub const INT_CONFIG: u32 = InterruptStatus::CONFIG_CHANGE.bits() as u32;

/// Which virtio-mmio register layout the device presents (§4.2.2, §4.2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MmioVersion {
    /// Legacy layout, `Version` = 1: `GuestPageSize`, `QueuePFN`, `QueueAlign`, one
    /// contiguous block per queue, no FEATURES_OK step, no `ConfigGeneration`. Rings and
    /// configuration are little-endian here, so legacy is for little-endian guests.
    Legacy,
    /// `Version` = 2 (VIRTIO 1.0 and later).
    V2,
}

/// Legacy-only device-independent bits: NOTIFY_ON_EMPTY (24) and ANY_LAYOUT (27) (LEG-11).
const LEGACY_ALLOWED: u64 = (1 << 24) | (1 << 27);
/// Default legacy `GuestPageSize` and `QueueAlign` before the driver writes them.
const LEGACY_DEFAULT_PAGE: u32 = 4096;

/// The legacy per-queue registers (§4.2.4): `QueuePFN` as written and `QueueAlign`.
#[derive(Clone, Copy, Debug)]
struct LegacyQueue {
    pfn: u32,
    align: u32,
}

impl LegacyQueue {
    const POWER_ON: Self = Self {
        pfn: 0,
        align: LEGACY_DEFAULT_PAGE,
    };
}

/// `InterruptStatus` (§4.2.2): where the transport core's interrupt decisions land. One bit
/// for every queue's used buffers, one for configuration changes; `raised` collects what the
/// access in progress raised, set already or not (for edge-triggered lines).
#[derive(Clone, Copy, Debug, Default)]
struct IrqState {
    status: InterruptStatus,
    raised: InterruptStatus,
}

impl Signals for IrqState {
    const PER_QUEUE: bool = false;
    fn used(&mut self, _queue: u16) {
        self.status |= InterruptStatus::USED_BUFFER;
        self.raised |= InterruptStatus::USED_BUFFER;
    }
    fn config(&mut self) {
        self.status |= InterruptStatus::CONFIG_CHANGE;
        self.raised |= InterruptStatus::CONFIG_CHANGE;
    }
}

/// What one write (or [`process_queue`](MmioTransport::process_queue), ...) did: the interrupt
/// line level, the notifications it raised and the events to act on. The transport raises
/// nothing itself and keeps no record of the events, so dropping an outcome drops them.
#[must_use = "the outcome carries the interrupt line level and events the hypervisor must act on"]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MmioOutcome {
    /// The interrupt line level after the access: asserted while `InterruptStatus` is
    /// non-zero (MMIO-03). A level, not an edge: set a level-triggered line to it after every
    /// access.
    pub irq: bool,
    /// The notifications the device raised during the access (`InterruptStatus` bits it set,
    /// including bits that were set already). An edge-triggered line needs an edge whenever
    /// this is not empty: a notification raised while the line is already high changes no
    /// level (see [the transport docs](super#interrupt-lines-levels-and-edges)).
    pub raised: InterruptStatus,
    /// Events besides interrupts ([`Events::BAR_CHANGED`] never happens on MMIO).
    pub events: Events,
}

/// A virtio-mmio device: the register file of one device model `D` with `Q` queues, over
/// guest memory `M` (§4.2).
///
/// The status state machine, feature negotiation, queue validation and interrupt decisions
/// are the transport core's, shared with the PCI transport; this type decodes the register
/// window. No allocation: the queues live in fixed arrays. `M` is whatever gives access to
/// guest RAM (`&RegionTable<N>`, a reference to the hypervisor's own accessor, ...).
pub struct MmioTransport<D, M, const Q: usize> {
    core: Core<D, M, Q>,
    version: MmioVersion,
    int: IrqState,
    /// Events of the access in progress.
    events: Events,
    legacy: [LegacyQueue; Q],
    device_features_sel: u32,
    driver_features_sel: u32,
    queue_sel: u32,
    guest_page_size: u32,
}

impl<D: fmt::Debug, M, const Q: usize> fmt::Debug for MmioTransport<D, M, Q> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MmioTransport")
            .field("version", &self.version)
            .field("interrupt_status", &self.int.status)
            .field("core", &self.core)
            .finish()
    }
}

impl<D: VirtioDevice, M: GuestMemory, const Q: usize> MmioTransport<D, M, Q> {
    /// Wrap `device` in a virtio-mmio register file of the given `version`, with guest memory
    /// `mem`. Queue `i < Q` gets `device.queue_max_size(i)` entries (0: no such queue).
    pub fn new(device: D, mem: M, version: MmioVersion) -> Self {
        // Offered: the generic bits plus, on version 2, VERSION_1, RING_RESET (the `QueueReset`
        // register) and RING_PACKED. Never on MMIO: SR_IOV, NOTIF_CONFIG_DATA, ADMIN_VQ
        // (PCI-only, RSV-12, RSV-14, MMIO-31); NOTIFICATION_DATA and SUSPEND are not
        // implemented here.
        let dev = device.device_features().bits();
        let (generic, flavor) = match version {
            MmioVersion::V2 => (GENERIC_ALLOWED, Flavor::Modern),
            MmioVersion::Legacy => (GENERIC_ALLOWED | LEGACY_ALLOWED, Flavor::Legacy),
        };
        let mut offered = dev & (DEVICE_SPECIFIC | generic);
        if version == MmioVersion::V2 {
            offered |= Features::VERSION_1.bits() | (dev & Features::RING_RESET.bits());
            if D::PACKED_RING {
                offered |= dev & Features::RING_PACKED.bits();
            }
        }
        Self {
            core: Core::new(device, mem, flavor, offered),
            version,
            int: IrqState::default(),
            events: Events::empty(),
            legacy: [LegacyQueue::POWER_ON; Q],
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            guest_page_size: LEGACY_DEFAULT_PAGE,
        }
    }

    /// Choose when `QueueNotify` runs the device (default [`NotifyMode::Inline`]).
    pub fn set_notify_mode(&mut self, mode: NotifyMode) {
        self.core.set_notify_mode(mode);
    }

    /// The register layout this device presents.
    pub const fn version(&self) -> MmioVersion {
        self.version
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

    /// Whether the driver negotiated `VIRTIO_F_RING_PACKED` (§2.8): queues enabled from now on
    /// are packed.
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

    /// The features offered to the driver (after the transport's mask), device-specific bits
    /// included.
    pub const fn offered_features(&self) -> Features {
        Features::from_bits_retain(self.core.offered())
    }

    /// The negotiated features (empty until FEATURES_OK, or DRIVER_OK in legacy mode).
    pub const fn negotiated_features(&self) -> Features {
        Features::from_bits_retain(self.core.negotiated())
    }

    /// `InterruptStatus` (§4.2.2).
    pub const fn interrupt_status(&self) -> InterruptStatus {
        self.int.status
    }

    /// The level of the device's interrupt line: asserted while `InterruptStatus` is non-zero
    /// (MMIO-03).
    pub const fn interrupt_asserted(&self) -> bool {
        !self.int.status.is_empty()
    }

    /// Whether the driver set DRIVER_OK (and not FAILED): the device may use its queues.
    pub fn is_live(&self) -> bool {
        self.core.is_live()
    }

    /// The device changed its configuration: bump `ConfigGeneration` and, once the driver is
    /// live, raise a configuration-change interrupt (§3.2.1, MMIO-05, MMIO-07).
    pub fn signal_config_change(&mut self) -> MmioOutcome {
        let start = self.begin();
        self.core.signal_config_change(&mut self.int);
        self.finish(start)
    }

    /// Enter DEVICE_NEEDS_RESET (§2.1.2), with a configuration-change interrupt if DRIVER_OK is
    /// set (STAT-09). Only the first call has an effect until reset.
    pub fn raise_needs_reset(&mut self) -> MmioOutcome {
        let start = self.begin();
        self.core.raise_needs_reset(&mut self.int);
        self.finish(start)
    }

    /// Guest read of `width` bytes at `offset` in the register window: the value in the low
    /// `width` bytes of the result, little-endian (a trap's 1-, 2-, 4- or 8-byte load).
    ///
    /// Control registers (below 0x100) answer only aligned 32-bit reads (MMIO-21). The device
    /// configuration (from 0x100, §4.2.2 `Config`) answers 1-, 2-, 4- and 8-byte reads at any
    /// offset, byte for byte (MMIO-23, MMIO-24); bytes past the device's configuration read
    /// 0. Every other access reads 0. Reads have no side effects (in particular
    /// `InterruptStatus` is not cleared, MMIO-R14).
    pub fn read(&self, offset: u64, width: u8) -> u64 {
        if offset >= regs::CONFIG {
            let mut buf = [0u8; 8];
            if let Some(data) = access_len(width).and_then(|n| buf.get_mut(..n)) {
                self.core
                    .read_config(offset.wrapping_sub(regs::CONFIG), data);
            }
            return u64::from_le_bytes(buf);
        }
        if width != 4 || !offset.is_multiple_of(4) {
            return 0;
        }
        u64::from(self.read_register(offset))
    }

    /// An aligned 32-bit read of control register `offset`.
    fn read_register(&self, offset: u64) -> u32 {
        let v2 = self.version == MmioVersion::V2;
        let q = self.selected();
        match offset {
            regs::MAGIC_VALUE => MAGIC,
            regs::VERSION => match self.version {
                MmioVersion::V2 => 2,
                MmioVersion::Legacy => 1,
            },
            regs::DEVICE_ID => self.core.device.device_id().0,
            regs::VENDOR_ID => self.core.device.vendor_id(),
            regs::DEVICE_FEATURES => self.core.device_feature_word(self.device_features_sel),
            regs::QUEUE_NUM_MAX => q.map_or(0, |i| u32::from(self.core.max_size(i))),
            regs::QUEUE_READY if v2 => q.map_or(0, |i| u32::from(self.core.queue_enabled(i))),
            regs::QUEUE_PFN if !v2 => q.and_then(|i| self.legacy.get(i)).map_or(0, |l| l.pfn),
            regs::INTERRUPT_STATUS => u32::from(self.int.status.bits()),
            regs::STATUS => u32::from(self.core.status().bits()),
            // No shared-memory regions: every region reads as absent (MMIO-29).
            regs::SHM_LEN_LOW | regs::SHM_LEN_HIGH | regs::SHM_BASE_LOW | regs::SHM_BASE_HIGH
                if v2 =>
            {
                u32::MAX
            }
            regs::CONFIG_GENERATION if v2 => self.core.config_generation(),
            // QueueReset: a queue reset completes inside the write, so it reads 0 (MMIO-09,
            // MMIO-10, MMIO-13). Write-only registers and gaps read as zero too.
            _ => 0,
        }
    }

    /// Guest write of `width` bytes at `offset`, the value in the low `width` bytes of
    /// `value`, little-endian (a trap's 1-, 2-, 4- or 8-byte store; higher bytes are ignored).
    /// Returns the interrupt line level afterwards, the notifications raised and the events of
    /// the access ([`MmioOutcome`]).
    ///
    /// The widths are [`read`](Self::read)'s: aligned 32-bit writes to control registers,
    /// 1, 2, 4 or 8 bytes anywhere in the device configuration (passed to
    /// [`VirtioDevice::write_config`] after FEATURES_OK, INIT-03). Accesses the register file
    /// does not define (another width, misaligned, read-only, unknown offset) are ignored
    /// (MMIO-21, MMIO-22).
    pub fn write(&mut self, offset: u64, width: u8, value: u64) -> MmioOutcome {
        plant_panic!("transport", value == 0x5eed);
        let start = self.begin();
        if offset >= regs::CONFIG {
            let buf = value.to_le_bytes();
            if let Some(data) = access_len(width).and_then(|n| buf.get(..n)) {
                self.core
                    .write_config(offset.wrapping_sub(regs::CONFIG), data);
            }
        } else if width == 4 && offset.is_multiple_of(4) {
            // The low four bytes are the register value.
            self.write_register(offset, u32::try_from(value & 0xFFFF_FFFF).unwrap_or(0));
        }
        self.finish(start)
    }

    /// An aligned 32-bit write of control register `offset`.
    fn write_register(&mut self, offset: u64, value: u32) {
        let v2 = self.version == MmioVersion::V2;
        let q = self.selected();
        match (offset, q) {
            (regs::DEVICE_FEATURES_SEL, _) => self.device_features_sel = value,
            (regs::DRIVER_FEATURES_SEL, _) => self.driver_features_sel = value,
            (regs::DRIVER_FEATURES, _) => self
                .core
                .write_driver_feature_word(self.driver_features_sel, value),
            // A page size that is 0 or not a power of two is ignored (H9k's sibling).
            (regs::GUEST_PAGE_SIZE, _) if !v2 && value.is_power_of_two() => {
                self.guest_page_size = value;
            }
            (regs::QUEUE_SEL, _) => self.queue_sel = value,
            (regs::QUEUE_NUM, Some(i)) => self.core.set_queue_num(i, value),
            // QueueAlign 0 or not a power of two: ignored (H9k, CVE-2017-17381); frozen while
            // the queue is in use.
            (regs::QUEUE_ALIGN, Some(i))
                if !v2 && value.is_power_of_two() && !self.core.queue_enabled(i) =>
            {
                if let Some(l) = self.legacy.get_mut(i) {
                    l.align = value;
                }
            }
            (regs::QUEUE_PFN, Some(i)) if !v2 => self.write_queue_pfn(i, value),
            (regs::QUEUE_READY, Some(i)) if v2 => {
                if value == 0 {
                    // Stop the queue (MMIO-R12, MMIO-18).
                    self.core.stop_queue(i);
                } else {
                    self.core.enable_queue(i, &mut self.int);
                }
            }
            (regs::QUEUE_NOTIFY, _) => {
                // Without NOTIFICATION_DATA only bits 0–15 name the queue (MMIO-27).
                let index = u16::try_from(value & 0xFFFF).unwrap_or(u16::MAX);
                self.core.notify(index, &mut self.int);
            }
            (regs::INTERRUPT_ACK, _) => {
                // Only the defined bits; the others are ignored (MMIO-26).
                let ack = u8::try_from(value & 0xFF).unwrap_or(0);
                self.int.status &= !InterruptStatus::from_bits_truncate(ack);
            }
            (regs::STATUS, _) => self.write_status(value),
            (regs::QUEUE_DESC_LOW, Some(i)) if v2 => self.write_addr(i, Area::Desc, value, 0),
            (regs::QUEUE_DESC_HIGH, Some(i)) if v2 => self.write_addr(i, Area::Desc, value, 32),
            (regs::QUEUE_DRIVER_LOW, Some(i)) if v2 => self.write_addr(i, Area::Driver, value, 0),
            (regs::QUEUE_DRIVER_HIGH, Some(i)) if v2 => {
                self.write_addr(i, Area::Driver, value, 32);
            }
            (regs::QUEUE_DEVICE_LOW, Some(i)) if v2 => self.write_addr(i, Area::Device, value, 0),
            (regs::QUEUE_DEVICE_HIGH, Some(i)) if v2 => {
                self.write_addr(i, Area::Device, value, 32);
            }
            (regs::QUEUE_RESET, Some(i)) if v2 && value == 1 => {
                self.core.reset_queue(i);
            }
            // Queue registers with no queue selected (MMIO-20), SHMSel (it selects among no
            // regions), read-only registers and gaps: ignored.
            _ => {}
        }
    }

    /// Queues with work waiting since the last call: kicks recorded in
    /// [`NotifyMode::Deferred`], and queues whose device used up its budget
    /// ([`NotifyReport::more`](super::NotifyReport::more)). Calls `f` with each queue index and
    /// clears the record; run [`process_queue`](Self::process_queue) for each (an outcome with
    /// [`Events::KICKS`] says there are some).
    pub fn take_kicks(&mut self, f: impl FnMut(u16)) {
        self.core.take_kicks(f);
    }

    /// Run the device on queue `index` now (as an inline `QueueNotify` would): one call of the
    /// device's handler, so at most one budget of work. Ignored for a queue that is not live.
    pub fn process_queue(&mut self, index: u16) -> MmioOutcome {
        let start = self.begin();
        self.core.process_queue(index, &mut self.int);
        self.finish(start)
    }

    /// Run the device once on every live queue (a device that polls its rings).
    pub fn poll(&mut self) -> MmioOutcome {
        let start = self.begin();
        self.core.poll(&mut self.int);
        self.finish(start)
    }

    // ---- internals -------------------------------------------------------------------------

    /// Start of an access: no events yet; the status before it.
    fn begin(&mut self) -> DeviceStatus {
        self.events = Events::empty();
        self.int.raised = InterruptStatus::empty();
        self.core.status()
    }

    /// End of an access: its level, notifications and events.
    fn finish(&mut self, before: DeviceStatus) -> MmioOutcome {
        self.events |= self.core.access_events(before);
        MmioOutcome {
            irq: self.interrupt_asserted(),
            raised: core::mem::take(&mut self.int.raised),
            events: core::mem::take(&mut self.events),
        }
    }

    /// The selected queue, if it exists (a queue with maximum size 0 does not, MMIO-20).
    fn selected(&self) -> Option<usize> {
        let i = usize::try_from(self.queue_sel).ok()?;
        self.core.queue_exists(i).then_some(i)
    }

    /// One 32-bit half (`shift` 0 or 32) of an area address register.
    fn write_addr(&mut self, i: usize, area: Area, value: u32, shift: u32) {
        let mask = 0xFFFF_FFFFu64 << shift;
        self.core
            .write_queue_addr(i, area, u64::from(value) << shift, mask);
    }

    /// Legacy `QueuePFN` (LEG-05, LEG-07): 0 stops the queue; otherwise the queue is enabled
    /// at the contiguous layout the page number, `GuestPageSize` and `QueueAlign` give.
    fn write_queue_pfn(&mut self, i: usize, value: u32) {
        let Some(l) = self.legacy.get_mut(i) else {
            return;
        };
        if value == 0 {
            l.pfn = 0;
            self.core.stop_queue(i);
            return;
        }
        if self.core.queue_enabled(i) {
            return;
        }
        l.pfn = value;
        let areas = legacy_layout(value, self.guest_page_size, self.core.queue_num(i), l.align);
        self.core.enable_legacy(i, areas, &mut self.int);
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // Only the low byte carries status; the upper bytes are ignored (and a write whose low
        // byte is 0 is not a reset).
        let low = u8::try_from(value & 0xFF).unwrap_or(0);
        self.core.write_status(low, &mut self.int);
    }

    /// Device reset (§2.4, STAT-06, MMIO-06, LEG-09): everything back to power-on before the
    /// status reads 0.
    fn reset(&mut self) {
        self.core.reset();
        self.int = IrqState::default();
        self.events |= Events::DEVICE_RESET;
        self.legacy = [LegacyQueue::POWER_ON; Q];
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.guest_page_size = LEGACY_DEFAULT_PAGE;
    }
}

/// Legacy contiguous layout (§2.7.2, LEG-07): descriptor table at `pfn * page`, available
/// ring right after it, used ring at the next multiple of `align`. `None` if it overflows.
fn legacy_layout(pfn: u32, page: u32, num: u32, align: u32) -> Option<(u64, u64, u64)> {
    let desc = u64::from(pfn).checked_mul(u64::from(page))?;
    let n = u64::from(num);
    let driver = desc.checked_add(n.checked_mul(layout::DESC_SIZE)?)?;
    let avail_end = driver.checked_add(n.checked_mul(2)?.checked_add(6)?)?;
    let a = u64::from(align);
    if !a.is_power_of_two() {
        return None;
    }
    let device = avail_end.checked_add(a.wrapping_sub(1))? & !a.wrapping_sub(1);
    Some((desc, driver, device))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_layout_matches_spec_formula() {
        // Q = 16, page 4096: desc 256 bytes, avail 38 bytes → used at the next page.
        assert_eq!(
            legacy_layout(1, 4096, 16, 4096),
            Some((4096, 4096 + 256, 8192))
        );
        // u32 × u32 always fits in a u64: the extreme layout is computed, then refused as
        // outside guest RAM by `check_rings`.
        let (d, a, u) = legacy_layout(u32::MAX, 1 << 31, 32768, 1 << 31).unwrap();
        assert_eq!(d, u64::from(u32::MAX) << 31);
        assert_eq!(a, d + 16 * 32768);
        assert!(u > a && u % (1 << 31) == 0);
        assert_eq!(legacy_layout(1, 4096, 16, 0), None);
        assert_eq!(legacy_layout(1, 4096, 16, 3), None);
    }
}
