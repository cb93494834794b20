//! The virtio-mmio transport, device side (VIRTIO 1.4 §4.2): version 2 and legacy version 1.
//!
//! A hypervisor exposes each device as a register window in guest-physical address space,
//! traps every guest access to it and forwards the access here:
//!
//! ```
//! # use virtq::transport::{MmioTransport, MmioVersion, VirtioDevice};
//! # use virtq::{GuestMemory, Queue};
//! # struct Null;
//! # impl VirtioDevice for Null {
//! #     fn device_id(&self) -> u32 { 0 }
//! #     fn device_features(&self) -> u64 { 0 }
//! #     fn queue_max_size(&self, _: u16) -> u16 { 0 }
//! #     fn read_config(&self, _: u32, _: &mut [u8]) {}
//! #     fn queue_notify<M: GuestMemory + ?Sized>(&mut self, _: u16, _: &mut [Queue], _: &M) -> bool { false }
//! # }
//! # let mem = virtq::memory::RegionTable::<1>::new();
//! let mut dev = MmioTransport::<_, _, 1>::new(Null, &mem, MmioVersion::V2);
//! // In the trap handler: offset inside the window, access width in bytes, value.
//! let magic = dev.read(0x000, 4);
//! assert_eq!(magic, 0x7472_6976);
//! let irq_line = dev.write(0x070, 4, 1); // Status = ACKNOWLEDGE
//! assert!(!irq_line);
//! ```
//!
//! Every access returns (or is followed by) the level of the device's interrupt line: asserted
//! while `InterruptStatus` is non-zero (MMIO-03). The hypervisor forwards that level to its
//! interrupt controller.
//!
//! # What the transport checks
//!
//! * Control registers accept only aligned 32-bit accesses; anything else reads as zero and
//!   is ignored on write (MMIO-21). Undefined offsets, writes to read-only registers and reads
//!   of write-only registers are likewise read-as-zero / write-ignored (MMIO-22).
//! * The device status is a state machine (§2.1, §3.1.1): bits are sticky until reset,
//!   FEATURES_OK latches only for a valid feature subset, DRIVER_OK only after FEATURES_OK,
//!   DEVICE_NEEDS_RESET belongs to the device, FAILED stops everything until reset, and a
//!   Status write of 0 resets every queue, the interrupt status and the negotiated features
//!   before the write completes (H19).
//! * A queue is validated when it is enabled (`QueueReady = 1`, or a non-zero `QueuePFN` in
//!   legacy mode): size, alignment, address overflow, guest-RAM ranges and overlap (H9). A
//!   refused queue is never read; the device raises DEVICE_NEEDS_RESET.
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
//! Its size may be any value from 1 to `QueueNumMax` (PACKED-02, PACKED-03); the ring must be
//! 16-aligned and the event structures 4-aligned (PACKED-04) and all three in guest RAM
//! (PACKED-05). Notifications then go to [`VirtioDevice::queue_notify_packed`].
//!
//! # Used-buffer interrupts
//!
//! After the device's [`VirtioDevice::queue_notify`] returns, the transport asks every live
//! queue [`Queue::needs_notification`] (or [`PackedQueue::needs_notification`]; EVENT_IDX,
//! `VIRTQ_AVAIL_F_NO_INTERRUPT` or the driver event structure applied) and
//! sets `InterruptStatus` bit 0 if any queue, or the handler itself, says so (MMIO-04).

use core::fmt;

use crate::memory::{GuestAddress, GuestMemory};
use crate::packed::{PackedQueue, layout as packed_layout};
use crate::split::Queue;
use crate::wire::{DeviceStatus, Features, split_layout as layout};

use super::VirtioDevice;

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

/// `InterruptStatus` bit 0: a used-buffer notification (§4.2.2).
#[doc(alias = "VIRTIO_MMIO_INT_VRING")]
pub const INT_VRING: u32 = 1;
/// `InterruptStatus` bit 1: a configuration change (§4.2.2).
#[doc(alias = "VIRTIO_MMIO_INT_CONFIG")]
pub const INT_CONFIG: u32 = 2;

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

/// When a `QueueNotify` write runs the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum NotifyMode {
    /// Inside the trap: the write calls [`VirtioDevice::queue_notify`] before it returns.
    #[default]
    Inline,
    /// Later: the write only records the kick ([`MmioTransport::take_kicks`]); the hypervisor
    /// runs [`MmioTransport::process_queue`] or [`MmioTransport::poll`] from its own context
    /// (an I/O thread, a deferred work item).
    Deferred,
}

/// Why a queue was refused when the driver enabled it (H9, MMIO-16).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum QueueSetupError {
    /// `QueueNum` was 0 (H9a).
    SizeZero,
    /// `QueueNum` above `QueueNumMax`, including values that do not fit 16 bits (H9d, H9e).
    SizeTooLarge {
        /// The value written.
        size: u32,
    },
    /// `QueueNum` is not a power of two, which the split ring requires (H9b, SPLIT-01).
    SizeNotPowerOfTwo {
        /// The value written.
        size: u32,
    },
    /// A ring address is zero or not aligned as §2.7 requires (H9f).
    Misaligned,
    /// A ring's end does not fit in 64 bits (H9i).
    AddressOverflow,
    /// A ring lies (partly) outside guest RAM (H9g, H9h, SPLIT-07).
    OutsideRam,
    /// Two rings overlap (H9n).
    Overlap,
    /// Legacy: the page size or alignment makes the layout impossible.
    BadLegacyLayout,
}

impl fmt::Display for QueueSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::SizeZero => f.write_str("queue size 0"),
            Self::SizeTooLarge { size } => write!(f, "queue size {size} above the maximum"),
            Self::SizeNotPowerOfTwo { size } => write!(f, "queue size {size} not a power of two"),
            Self::Misaligned => f.write_str("ring address zero or misaligned"),
            Self::AddressOverflow => f.write_str("ring address range overflows"),
            Self::OutsideRam => f.write_str("ring outside guest RAM"),
            Self::Overlap => f.write_str("rings overlap"),
            Self::BadLegacyLayout => f.write_str("invalid legacy page size or alignment"),
        }
    }
}

impl core::error::Error for QueueSetupError {}

/// Feature bits no virtio-mmio device offers here, whatever the device model says: SR_IOV,
/// NOTIF_CONFIG_DATA and ADMIN_VQ are PCI-only (RSV-12, RSV-14, MMIO-31); bits 44–49 are
/// reserved (FEAT-02); NOTIFICATION_DATA and SUSPEND are not implemented by this transport;
/// 25, 26, 30, 31 are unassigned or legacy-only. RING_RESET needs the v2 `QueueReset`
/// register and RING_PACKED needs VERSION_1 (both added on v2 only).
const GENERIC_ALLOWED: u64 = Features::INDIRECT_DESC.bits()
    | Features::EVENT_IDX.bits()
    | Features::ACCESS_PLATFORM.bits()
    | Features::IN_ORDER.bits()
    | Features::ORDER_PLATFORM.bits();
/// Legacy-only device-independent bits: NOTIFY_ON_EMPTY (24) and ANY_LAYOUT (27) (LEG-11).
const LEGACY_ALLOWED: u64 = (1 << 24) | (1 << 27);
/// Device-type bits (§2.2): 0–23, 42 and 50–63 (41 is ADMIN_VQ on MMIO, so it is withheld).
const DEVICE_SPECIFIC: u64 = 0x00FF_FFFF | (1 << 42) | !((1u64 << 50) - 1);
/// Negotiated bits a [`Queue`] acts on.
const QUEUE_FEATURES: Features = Features::INDIRECT_DESC
    .union(Features::EVENT_IDX)
    .union(Features::IN_ORDER);

/// Default legacy `GuestPageSize` and `QueueAlign` before the driver writes them.
const LEGACY_DEFAULT_PAGE: u32 = 4096;

/// The per-queue registers as the driver programmed them (raw, validated only at enable).
#[derive(Clone, Copy, Debug)]
struct QueueRegs {
    num: u32,
    desc: u64,
    driver: u64,
    device: u64,
    /// `QueueReady` as last written (v2), or `QueuePFN != 0` (legacy).
    enabled: bool,
    /// Legacy `QueuePFN` as written.
    pfn: u32,
    /// Legacy `QueueAlign`.
    align: u32,
    /// Why the last enable was refused.
    refused: Option<QueueSetupError>,
    /// The queue's fatal error has been turned into DEVICE_NEEDS_RESET.
    reported: bool,
    /// A `QueueNotify` arrived in [`NotifyMode::Deferred`] and was not taken yet.
    kicked: bool,
}

impl QueueRegs {
    const fn new(max: u16) -> Self {
        Self {
            num: max as u32,
            desc: 0,
            driver: 0,
            device: 0,
            enabled: false,
            pfn: 0,
            align: LEGACY_DEFAULT_PAGE,
            refused: None,
            reported: false,
            kicked: false,
        }
    }
}

/// A virtio-mmio device: the register file, status state machine and `Q` queues of one
/// device model `D`, over guest memory `M` (§4.2).
///
/// No allocation: the queues live in a fixed array. `M` is whatever gives access to guest RAM
/// (`&RegionTable<N>`, a reference to the hypervisor's own accessor, ...).
pub struct MmioTransport<D, M, const Q: usize> {
    device: D,
    mem: M,
    version: MmioVersion,
    mode: NotifyMode,
    queues: [Queue; Q],
    /// The same queues in the packed format, used instead of `queues` once RING_PACKED is
    /// negotiated.
    packed: [PackedQueue; Q],
    regs: [QueueRegs; Q],
    status: DeviceStatus,
    offered: u64,
    driver_features: u64,
    negotiated: u64,
    features_latched: bool,
    device_features_sel: u32,
    driver_features_sel: u32,
    queue_sel: u32,
    interrupt_status: u32,
    config_generation: u32,
    guest_page_size: u32,
}

impl<D: fmt::Debug, M, const Q: usize> fmt::Debug for MmioTransport<D, M, Q> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device", &self.device)
            .field("version", &self.version)
            .field("status", &self.status)
            .field("offered", &self.offered)
            .field("negotiated", &self.negotiated)
            .field("interrupt_status", &self.interrupt_status)
            .field("queues", &self.queues)
            .field("packed", &self.packed)
            .finish()
    }
}

/// Word `sel` (32 bits) of a 64-bit feature set; words ≥ 2 are 0.
fn feature_word(bits: u64, sel: u32) -> u32 {
    let word = match sel {
        0 => bits,
        1 => bits >> 32,
        _ => 0,
    };
    // Keep the low 32 bits: that is the word.
    u32::try_from(word & 0xFFFF_FFFF).unwrap_or(0)
}

/// Whether `[a, a + la)` and `[b, b + lb)` overlap; both ends were checked not to overflow.
fn overlaps(a: u64, la: u64, b: u64, lb: u64) -> bool {
    a < b.saturating_add(lb) && b < a.saturating_add(la)
}

impl<D: VirtioDevice, M: GuestMemory, const Q: usize> MmioTransport<D, M, Q> {
    /// Wrap `device` in a virtio-mmio register file of the given `version`, with guest memory
    /// `mem`. Queue `i < Q` gets `device.queue_max_size(i)` entries (0: no such queue).
    pub fn new(device: D, mem: M, version: MmioVersion) -> Self {
        let queues: [Queue; Q] = core::array::from_fn(|i| {
            Queue::new(u16::try_from(i).map_or(0, |i| device.queue_max_size(i)))
        });
        let regs =
            core::array::from_fn(|i| QueueRegs::new(queues.get(i).map_or(0, |q| q.max_size)));
        // Same `QueueNumMax` whichever ring format the driver picks.
        let packed =
            core::array::from_fn(|i| PackedQueue::new(queues.get(i).map_or(0, |q| q.max_size)));
        let dev = device.device_features();
        let generic = match version {
            MmioVersion::V2 => GENERIC_ALLOWED,
            MmioVersion::Legacy => GENERIC_ALLOWED | LEGACY_ALLOWED,
        };
        let mut offered = dev & (DEVICE_SPECIFIC | generic);
        if version == MmioVersion::V2 {
            offered |= Features::VERSION_1.bits() | (dev & Features::RING_RESET.bits());
            if D::PACKED_RING {
                offered |= dev & Features::RING_PACKED.bits();
            }
        }
        Self {
            device,
            mem,
            version,
            mode: NotifyMode::Inline,
            queues,
            packed,
            regs,
            status: DeviceStatus::empty(),
            offered,
            driver_features: 0,
            negotiated: 0,
            features_latched: false,
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            interrupt_status: 0,
            config_generation: 0,
            guest_page_size: LEGACY_DEFAULT_PAGE,
        }
    }

    /// Choose when `QueueNotify` runs the device (default [`NotifyMode::Inline`]).
    pub fn set_notify_mode(&mut self, mode: NotifyMode) {
        self.mode = mode;
    }

    /// The register layout this device presents.
    pub const fn version(&self) -> MmioVersion {
        self.version
    }

    /// The device model.
    pub const fn device(&self) -> &D {
        &self.device
    }

    /// The device model, mutably (for back-end events; call
    /// [`process_queue`](Self::process_queue) or [`poll`](Self::poll) afterwards if it has
    /// work for the guest).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The guest memory the device uses.
    pub const fn memory(&self) -> &M {
        &self.mem
    }

    /// Queue `index` in the split format, if it exists (unused while
    /// [`is_packed`](Self::is_packed)).
    pub fn queue(&self, index: u16) -> Option<&Queue> {
        self.queues.get(usize::from(index))
    }

    /// Queue `index` in the packed format, if it exists (used only while
    /// [`is_packed`](Self::is_packed)).
    pub fn packed_queue(&self, index: u16) -> Option<&PackedQueue> {
        self.packed.get(usize::from(index))
    }

    /// Whether the driver negotiated `VIRTIO_F_RING_PACKED` (§2.8): queues enabled from now on
    /// are packed.
    pub const fn is_packed(&self) -> bool {
        // `D::PACKED_RING` first: for a split-only device this folds to `false` at compile
        // time and the packed paths are not linked.
        D::PACKED_RING
            && self.features_latched
            && self.negotiated & Features::RING_PACKED.bits() != 0
    }

    /// Why queue `index` was refused at its last enable, if it was.
    pub fn queue_setup_error(&self, index: u16) -> Option<QueueSetupError> {
        self.regs.get(usize::from(index)).and_then(|r| r.refused)
    }

    /// The device status as the driver reads it.
    pub const fn status(&self) -> DeviceStatus {
        self.status
    }

    /// The features offered to the driver (after the transport's mask).
    pub const fn offered_features(&self) -> u64 {
        self.offered
    }

    /// The negotiated features (0 until FEATURES_OK, or DRIVER_OK in legacy mode).
    pub const fn negotiated_features(&self) -> u64 {
        self.negotiated
    }

    /// `InterruptStatus` (§4.2.2).
    pub const fn interrupt_status(&self) -> u32 {
        self.interrupt_status
    }

    /// The level of the device's interrupt line: asserted while `InterruptStatus` is non-zero
    /// (MMIO-03).
    pub const fn interrupt_asserted(&self) -> bool {
        self.interrupt_status != 0
    }

    /// Whether the driver set DRIVER_OK (and not FAILED): the device may use its queues.
    pub fn is_live(&self) -> bool {
        let s = self.status;
        !s.contains(DeviceStatus::FAILED)
            && match self.version {
                MmioVersion::V2 => s.contains(DeviceStatus::DRIVER_OK),
                // LEG-10: a legacy driver may use the device before DRIVER_OK.
                MmioVersion::Legacy => !s.is_empty(),
            }
    }

    /// The device changed its configuration: bump `ConfigGeneration` and, once the driver is
    /// live, raise a configuration-change interrupt (§3.2.1, MMIO-05, MMIO-07). Returns the
    /// interrupt line level.
    pub fn signal_config_change(&mut self) -> bool {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status.contains(DeviceStatus::DRIVER_OK) {
            self.interrupt_status |= INT_CONFIG;
        }
        self.interrupt_asserted()
    }

    /// Enter DEVICE_NEEDS_RESET (§2.1.2), with a configuration-change interrupt if DRIVER_OK is
    /// set (STAT-09). Only the first call has an effect until reset.
    pub fn raise_needs_reset(&mut self) -> bool {
        if !self.status.contains(DeviceStatus::DEVICE_NEEDS_RESET) {
            self.status |= DeviceStatus::DEVICE_NEEDS_RESET;
            if self.status.contains(DeviceStatus::DRIVER_OK) {
                self.interrupt_status |= INT_CONFIG;
            }
        }
        self.interrupt_asserted()
    }

    /// Guest read of `width` bytes (1, 2, 4 or 8) at `offset` in the register window.
    ///
    /// Control registers answer only aligned 32-bit reads; the configuration space (from
    /// 0x100) answers naturally aligned 1-, 2- and 4-byte reads. Everything else reads 0.
    /// Reads have no side effects (in particular `InterruptStatus` is not cleared, MMIO-R14).
    pub fn read(&self, offset: u64, width: u8) -> u32 {
        if offset >= regs::CONFIG {
            return self.read_config(offset.wrapping_sub(regs::CONFIG), width);
        }
        if width != 4 || !offset.is_multiple_of(4) {
            return 0;
        }
        let v2 = self.version == MmioVersion::V2;
        let q = self.selected();
        match offset {
            regs::MAGIC_VALUE => MAGIC,
            regs::VERSION => match self.version {
                MmioVersion::V2 => 2,
                MmioVersion::Legacy => 1,
            },
            regs::DEVICE_ID => self.device.device_id(),
            regs::VENDOR_ID => self.device.vendor_id(),
            regs::DEVICE_FEATURES => feature_word(self.offered, self.device_features_sel),
            regs::QUEUE_NUM_MAX => q.map_or(0, |(q, _)| u32::from(q.max_size)),
            regs::QUEUE_READY if v2 => q.map_or(0, |(_, r)| u32::from(r.enabled)),
            regs::QUEUE_PFN if !v2 => q.map_or(0, |(_, r)| r.pfn),
            regs::INTERRUPT_STATUS => self.interrupt_status,
            regs::STATUS => u32::from(self.status.bits()),
            // No shared-memory regions: every region reads as absent (MMIO-29).
            regs::SHM_LEN_LOW | regs::SHM_LEN_HIGH | regs::SHM_BASE_LOW | regs::SHM_BASE_HIGH
                if v2 =>
            {
                u32::MAX
            }
            regs::CONFIG_GENERATION if v2 => self.config_generation,
            // QueueReset: a queue reset completes inside the write, so it reads 0 (MMIO-09,
            // MMIO-10, MMIO-13). Write-only registers and gaps read as zero too.
            _ => 0,
        }
    }

    /// Guest write of `width` bytes at `offset`. Returns the interrupt line level afterwards.
    ///
    /// Accesses the register file does not define (wrong width, misaligned, read-only,
    /// unknown offset) are ignored (MMIO-21, MMIO-22).
    pub fn write(&mut self, offset: u64, width: u8, value: u32) -> bool {
        if offset >= regs::CONFIG {
            self.write_config(offset.wrapping_sub(regs::CONFIG), width, value);
            return self.interrupt_asserted();
        }
        if width != 4 || !offset.is_multiple_of(4) {
            return self.interrupt_asserted();
        }
        let v2 = self.version == MmioVersion::V2;
        match offset {
            regs::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            regs::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            regs::DRIVER_FEATURES => self.write_driver_features(value),
            // A page size that is 0 or not a power of two is ignored (H9k's sibling).
            regs::GUEST_PAGE_SIZE if !v2 && value.is_power_of_two() => {
                self.guest_page_size = value;
            }
            regs::QUEUE_SEL => self.queue_sel = value,
            regs::QUEUE_NUM => {
                if let Some(r) = self.selected_regs_unlocked() {
                    r.num = value;
                }
            }
            // QueueAlign 0 or not a power of two: ignored (H9k, CVE-2017-17381).
            regs::QUEUE_ALIGN if !v2 && value.is_power_of_two() => {
                if let Some(r) = self.selected_regs_unlocked() {
                    r.align = value;
                }
            }
            regs::QUEUE_PFN if !v2 => self.write_queue_pfn(value),
            regs::QUEUE_READY if v2 => self.write_queue_ready(value),
            regs::QUEUE_NOTIFY => self.notify(value),
            regs::INTERRUPT_ACK => {
                // Only the defined bits; the others are ignored (MMIO-26).
                self.interrupt_status &= !(value & (INT_VRING | INT_CONFIG));
            }
            regs::STATUS => self.write_status(value),
            regs::QUEUE_DESC_LOW if v2 => self.write_addr(|r| &mut r.desc, value, false),
            regs::QUEUE_DESC_HIGH if v2 => self.write_addr(|r| &mut r.desc, value, true),
            regs::QUEUE_DRIVER_LOW if v2 => self.write_addr(|r| &mut r.driver, value, false),
            regs::QUEUE_DRIVER_HIGH if v2 => self.write_addr(|r| &mut r.driver, value, true),
            regs::QUEUE_DEVICE_LOW if v2 => self.write_addr(|r| &mut r.device, value, false),
            regs::QUEUE_DEVICE_HIGH if v2 => self.write_addr(|r| &mut r.device, value, true),
            regs::QUEUE_RESET if v2 && value == 1 => self.write_queue_reset(),
            // SHMSel selects among no regions; read-only registers and gaps ignore writes.
            _ => {}
        }
        self.interrupt_asserted()
    }

    /// Kicks recorded in [`NotifyMode::Deferred`] since the last call: calls `f` with each
    /// kicked queue index and clears the record.
    pub fn take_kicks(&mut self, mut f: impl FnMut(u16)) {
        for (i, r) in self.regs.iter_mut().enumerate() {
            let kicked = core::mem::take(&mut r.kicked);
            match u16::try_from(i) {
                Ok(i) if kicked => f(i),
                _ => {}
            }
        }
    }

    /// Run the device on queue `index` now (as an inline `QueueNotify` would). Ignored for a
    /// queue that is not live. Returns the interrupt line level.
    pub fn process_queue(&mut self, index: u16) -> bool {
        if self.queue_live(index) {
            let signal = if self.is_packed() {
                self.device
                    .queue_notify_packed(index, &mut self.packed, &self.mem)
            } else {
                self.device.queue_notify(index, &mut self.queues, &self.mem)
            };
            self.after_device(signal);
        }
        self.interrupt_asserted()
    }

    /// Run the device on every live queue (a device that polls its rings). Returns the
    /// interrupt line level.
    pub fn poll(&mut self) -> bool {
        for i in 0..Q {
            if let Ok(i) = u16::try_from(i) {
                if let Some(r) = self.regs.get_mut(usize::from(i)) {
                    r.kicked = false;
                }
                self.process_queue(i);
            }
        }
        self.interrupt_asserted()
    }

    // ---- internals -------------------------------------------------------------------------

    fn selected(&self) -> Option<(&Queue, &QueueRegs)> {
        let i = usize::try_from(self.queue_sel).ok()?;
        let q = self.queues.get(i)?;
        // A queue with maximum size 0 does not exist (MMIO-20).
        if q.max_size == 0 {
            return None;
        }
        Some((q, self.regs.get(i)?))
    }

    /// The selected queue's registers if it exists and is not enabled: queue registers are
    /// frozen while the queue is enabled (MMIO-17, H9j).
    fn selected_regs_unlocked(&mut self) -> Option<&mut QueueRegs> {
        let i = usize::try_from(self.queue_sel).ok()?;
        if self.queues.get(i)?.max_size == 0 {
            return None;
        }
        let r = self.regs.get_mut(i)?;
        if r.enabled {
            debug!(
                "virtq: mmio: queue {} register write ignored while enabled",
                i
            );
            return None;
        }
        Some(r)
    }

    fn write_addr(&mut self, field: fn(&mut QueueRegs) -> &mut u64, value: u32, high: bool) {
        if let Some(r) = self.selected_regs_unlocked() {
            let f = field(r);
            *f = if high {
                (*f & 0xFFFF_FFFF) | (u64::from(value) << 32)
            } else {
                (*f & !0xFFFF_FFFF) | u64::from(value)
            };
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        // Frozen once latched (FEAT-09); words the device never offers are dropped (FEAT-11).
        if self.features_latched {
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xFFFF_FFFF) | u64::from(value),
            1 => {
                self.driver_features =
                    (self.driver_features & 0xFFFF_FFFF) | (u64::from(value) << 32);
            }
            _ => {}
        }
    }

    fn read_config(&self, offset: u64, width: u8) -> u32 {
        let mut buf = [0u8; 4];
        let Some(data) = Self::config_slice(&mut buf, offset, width) else {
            return 0;
        };
        let Ok(off) = u32::try_from(offset) else {
            return 0;
        };
        self.device.read_config(off, data);
        u32::from_le_bytes(buf)
    }

    fn write_config(&mut self, offset: u64, width: u8, value: u32) {
        // Before FEATURES_OK a (non-legacy) driver must not write config: ignore (INIT-03).
        if self.version == MmioVersion::V2 && !self.features_latched {
            return;
        }
        let mut buf = value.to_le_bytes();
        let Some(data) = Self::config_slice(&mut buf, offset, width) else {
            return;
        };
        let Ok(off) = u32::try_from(offset) else {
            return;
        };
        self.device.write_config(off, data);
    }

    /// The first `width` bytes of `buf` for a naturally aligned 1-, 2- or 4-byte config access.
    fn config_slice(buf: &mut [u8; 4], offset: u64, width: u8) -> Option<&mut [u8]> {
        let w = match width {
            1 | 2 | 4 => width,
            _ => return None,
        };
        if !offset.is_multiple_of(u64::from(w)) {
            return None;
        }
        buf.get_mut(..usize::from(w))
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // Only the low byte carries status; DEVICE_NEEDS_RESET belongs to the device, SUSPEND
        // is not offered and bit 5 is reserved: all ignored (STAT-10, STAT-13).
        let requested = DeviceStatus::from_bits_truncate(u8::try_from(value & 0xFF).unwrap_or(0))
            .difference(DeviceStatus::DEVICE_NEEDS_RESET | DeviceStatus::SUSPEND);
        // Sticky: bits already set stay set; a write that would clear one is ignored for that
        // bit (STAT-11). After FAILED only reset is accepted (STAT-12).
        if old.contains(DeviceStatus::FAILED) {
            return;
        }
        let added = requested.difference(old);
        let mut new = old | (added & (DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER));
        if added.contains(DeviceStatus::FEATURES_OK)
            && new.contains(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER)
            && self.latch_features()
        {
            new |= DeviceStatus::FEATURES_OK;
        }
        let mut go_live = false;
        if added.contains(DeviceStatus::DRIVER_OK) {
            let ok = match self.version {
                // Not live without an accepted FEATURES_OK (INIT-08).
                MmioVersion::V2 => new.contains(DeviceStatus::FEATURES_OK),
                MmioVersion::Legacy => true,
            };
            if ok {
                new |= DeviceStatus::DRIVER_OK;
                go_live = true;
            }
        }
        if added.contains(DeviceStatus::FAILED) {
            new |= DeviceStatus::FAILED;
        }
        self.status = new;
        if go_live {
            self.go_live();
        }
    }

    /// FEATURES_OK: validate and freeze the accepted set (FEAT-05, FEAT-08, INIT-04).
    fn latch_features(&mut self) -> bool {
        if self.features_latched {
            return true;
        }
        let accepted = match self.version {
            MmioVersion::V2 => {
                let a = self.driver_features;
                if a & !self.offered != 0
                    || a & Features::VERSION_1.bits() == 0
                    || !self.device.validate_features(a)
                {
                    return false;
                }
                a
            }
            // Legacy has no FEATURES_OK step: keep what both sides know.
            MmioVersion::Legacy => self.driver_features & self.offered,
        };
        self.negotiated = accepted;
        self.features_latched = true;
        let qf = self.queue_features();
        for q in &mut self.queues {
            q.features = qf;
        }
        if D::PACKED_RING {
            for q in &mut self.packed {
                q.features = qf;
            }
        }
        true
    }

    /// The negotiated bits a queue acts on. A legacy driver may use a queue before DRIVER_OK
    /// (LEG-10), so until features are latched legacy queues use what the driver wrote.
    fn queue_features(&self) -> Features {
        let bits = match (self.features_latched, self.version) {
            (true, _) => self.negotiated,
            (false, MmioVersion::Legacy) => self.driver_features & self.offered,
            (false, MmioVersion::V2) => 0,
        };
        Features::from_bits_truncate(bits) & QUEUE_FEATURES
    }

    fn go_live(&mut self) {
        if !self.features_latched {
            // Legacy: features are whatever the driver wrote by now.
            self.latch_features();
        }
        self.device.activate(self.negotiated);
        // Buffers queued during setup get processed now (INIT-07), or are reported as kicks.
        match self.mode {
            NotifyMode::Inline => {
                self.poll();
            }
            NotifyMode::Deferred => {
                let packed = self.is_packed();
                for ((q, p), r) in self.queues.iter().zip(&self.packed).zip(&mut self.regs) {
                    r.kicked = if packed { p.ready } else { q.ready };
                }
            }
        }
    }

    /// Device reset (§2.4, STAT-06, MMIO-06, LEG-09): everything back to power-on before the
    /// status reads 0.
    fn reset(&mut self) {
        self.device.reset();
        for ((q, p), r) in self
            .queues
            .iter_mut()
            .zip(&mut self.packed)
            .zip(&mut self.regs)
        {
            q.reset();
            // A split-only device never uses (or links) its packed queues.
            if D::PACKED_RING {
                p.reset();
            }
            *r = QueueRegs::new(q.max_size);
        }
        self.status = DeviceStatus::empty();
        self.interrupt_status = 0;
        self.driver_features = 0;
        self.negotiated = 0;
        self.features_latched = false;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.guest_page_size = LEGACY_DEFAULT_PAGE;
    }

    fn selected_index(&self) -> Option<usize> {
        let i = usize::try_from(self.queue_sel).ok()?;
        (self.queues.get(i)?.max_size != 0).then_some(i)
    }

    fn write_queue_ready(&mut self, value: u32) {
        let Some(i) = self.selected_index() else {
            return; // MMIO-20
        };
        let Some(r) = self.regs.get_mut(i) else {
            return;
        };
        if value == 0 {
            // Stop the queue (MMIO-R12): nothing is touched after this write returns;
            // chains still in flight can no longer be completed (H19).
            let was_enabled = core::mem::replace(&mut r.enabled, false);
            r.refused = None;
            r.reported = false;
            r.kicked = false;
            self.reset_queue(i);
            if was_enabled {
                self.queue_stopped(i);
            }
            return;
        }
        if r.enabled {
            return;
        }
        r.enabled = true;
        let (num, desc, driver, device) = (r.num, r.desc, r.driver, r.device);
        self.enable_queue(i, num, desc, driver, device);
    }

    /// `QueueReset = 1` (§2.6.1, MMIO-11): only with RING_RESET negotiated and for an enabled
    /// queue, otherwise ignored (MMIO-28). The device forgets the queue's chains, the queue
    /// and its registers return to their defaults, and QueueReady reads 0 (MMIO-13).
    fn write_queue_reset(&mut self) {
        if self.negotiated & Features::RING_RESET.bits() == 0 {
            return;
        }
        let Some(i) = self.selected_index() else {
            return;
        };
        let (Some(q), Some(r)) = (self.queues.get_mut(i), self.regs.get_mut(i)) else {
            return;
        };
        if !r.enabled {
            return;
        }
        *r = QueueRegs::new(q.max_size);
        self.reset_queue(i);
        self.queue_stopped(i);
    }

    /// Queue `i` was stopped or reset on its own: the device must forget chains it kept from
    /// it, or it could later complete a stale head that the driver has since reused (H19).
    fn queue_stopped(&mut self, i: usize) {
        if let Ok(index) = u16::try_from(i) {
            self.device.queue_reset(index);
        }
    }

    fn write_queue_pfn(&mut self, value: u32) {
        let Some(i) = self.selected_index() else {
            return;
        };
        let page = self.guest_page_size;
        let Some(r) = self.regs.get_mut(i) else {
            return;
        };
        if value == 0 {
            // LEG-05: writing 0 stops the queue.
            let was_enabled = r.enabled;
            *r = QueueRegs {
                enabled: false,
                pfn: 0,
                refused: None,
                reported: false,
                kicked: false,
                ..*r
            };
            if let Some(q) = self.queues.get_mut(i) {
                q.reset();
            }
            if was_enabled {
                self.queue_stopped(i);
            }
            return;
        }
        if r.enabled {
            return;
        }
        r.enabled = true;
        r.pfn = value;
        let (num, align) = (r.num, r.align);
        match legacy_layout(value, page, num, align) {
            Some((desc, driver, device)) => self.enable_queue(i, num, desc, driver, device),
            None => {
                let size_err = check_size(num, self.queues.get(i).map_or(0, |q| q.max_size));
                self.refuse(
                    i,
                    size_err.err().unwrap_or(QueueSetupError::BadLegacyLayout),
                );
            }
        }
    }

    /// Both formats of queue `i` back to their power-on state.
    fn reset_queue(&mut self, i: usize) {
        if let Some(q) = self.queues.get_mut(i) {
            q.reset();
        }
        if let Some(p) = self.packed.get_mut(i).filter(|_| D::PACKED_RING) {
            p.reset();
        }
    }

    /// Validate and program queue `i` (H9, MMIO-16) in the negotiated ring format; refuse it
    /// on any error.
    fn enable_queue(&mut self, i: usize, num: u32, desc: u64, driver: u64, device: u64) {
        let qf = self.queue_features();
        let result = if self.is_packed() {
            let Some(p) = self.packed.get_mut(i) else {
                return;
            };
            let r = program_packed(p, &self.mem, num, desc, driver, device);
            p.features = qf;
            r
        } else {
            let Some(q) = self.queues.get_mut(i) else {
                return;
            };
            let r = program_queue(q, &self.mem, num, desc, driver, device);
            q.features = qf;
            r
        };
        match result {
            Ok(()) => {
                if let Some(r) = self.regs.get_mut(i) {
                    r.refused = None;
                    r.reported = false;
                }
            }
            Err(e) => self.refuse(i, e),
        }
    }

    fn refuse(&mut self, i: usize, e: QueueSetupError) {
        warn!("virtq: mmio: queue {} refused: {}", i, e);
        self.reset_queue(i);
        if let Some(r) = self.regs.get_mut(i) {
            r.refused = Some(e);
        }
        self.raise_needs_reset();
    }

    fn queue_live(&self, index: u16) -> bool {
        let i = usize::from(index);
        self.is_live()
            && if self.is_packed() {
                self.packed
                    .get(i)
                    .is_some_and(|q| q.ready && !q.is_broken())
            } else {
                self.queues
                    .get(i)
                    .is_some_and(|q| q.ready && !q.is_broken())
            }
    }

    fn notify(&mut self, value: u32) {
        // Without NOTIFICATION_DATA only bits 0–15 name the queue (MMIO-27).
        let index = u16::try_from(value & 0xFFFF).unwrap_or(u16::MAX);
        if !self.queue_live(index) {
            return;
        }
        match self.mode {
            NotifyMode::Inline => {
                self.process_queue(index);
            }
            NotifyMode::Deferred => {
                if let Some(r) = self.regs.get_mut(usize::from(index)) {
                    r.kicked = true;
                }
            }
        }
    }

    /// After the device ran: interrupts for published completions, DEVICE_NEEDS_RESET for
    /// queues that broke.
    fn after_device(&mut self, signal: bool) {
        let mut used = signal;
        let mut broke = false;
        let packed = self.is_packed();
        for ((q, p), r) in self
            .queues
            .iter_mut()
            .zip(&mut self.packed)
            .zip(&mut self.regs)
        {
            // (ready, broken, interrupt due) for the queue in the negotiated format.
            let (ready, broken, due) = if packed {
                let due = p.ready && !p.is_broken() && p.needs_notification(&self.mem) == Ok(true);
                (p.ready, p.is_broken(), due)
            } else {
                let due = q.ready && !q.is_broken() && q.needs_notification(&self.mem) == Ok(true);
                (q.ready, q.is_broken(), due)
            };
            if !ready {
                continue;
            }
            used |= due;
            if broken && !r.reported {
                r.reported = true;
                broke = true;
            }
        }
        if used {
            self.interrupt_status |= INT_VRING;
        }
        if broke {
            self.raise_needs_reset();
        }
    }
}

/// `QueueNum` checks for the split ring (H9a, b, d, e).
fn check_size(num: u32, max: u16) -> Result<u16, QueueSetupError> {
    if num == 0 {
        return Err(QueueSetupError::SizeZero);
    }
    if num > u32::from(max) {
        return Err(QueueSetupError::SizeTooLarge { size: num });
    }
    if !num.is_power_of_two() {
        return Err(QueueSetupError::SizeNotPowerOfTwo { size: num });
    }
    u16::try_from(num).map_err(|_| QueueSetupError::SizeTooLarge { size: num })
}

/// `QueueNum` checks for the packed ring (§2.8.10.1, PACKED-02, PACKED-03): 1 to `max`, any
/// value (no power-of-two rule, H9c).
fn check_packed_size(num: u32, max: u16) -> Result<u16, QueueSetupError> {
    if num == 0 {
        return Err(QueueSetupError::SizeZero);
    }
    match u16::try_from(num) {
        Ok(size) if size <= max => Ok(size),
        _ => Err(QueueSetupError::SizeTooLarge { size: num }),
    }
}

/// The checks on a queue's three areas, each `(address, alignment, length)`, shared by both
/// ring formats (H9): non-zero and aligned (SPLIT-03..05, PACKED-04), not wrapping around the
/// address space, pairwise disjoint. Whether they are RAM is the queue's `check_rings`.
fn check_areas(areas: [(u64, u64, u64); 3]) -> Result<(), QueueSetupError> {
    if areas
        .iter()
        .any(|&(addr, align, _)| addr == 0 || !GuestAddress(addr).is_aligned(align))
    {
        return Err(QueueSetupError::Misaligned);
    }
    if areas
        .iter()
        .any(|&(addr, _, len)| GuestAddress(addr).checked_end(len).is_none())
    {
        return Err(QueueSetupError::AddressOverflow);
    }
    let [(a, _, la), (b, _, lb), (c, _, lc)] = areas;
    if overlaps(a, la, b, lb) || overlaps(a, la, c, lc) || overlaps(b, lb, c, lc) {
        return Err(QueueSetupError::Overlap);
    }
    Ok(())
}

/// Program packed queue `p` from raw register values and validate it (PACKED-02..05, H9); on
/// error `p` is left not ready. `desc` is the descriptor ring, `driver` and `device` the
/// driver and device event suppression structures.
fn program_packed<M: GuestMemory + ?Sized>(
    p: &mut PackedQueue,
    mem: &M,
    num: u32,
    desc: u64,
    driver: u64,
    device: u64,
) -> Result<(), QueueSetupError> {
    let size = check_packed_size(num, p.max_size)?;
    check_areas([
        (
            desc,
            packed_layout::DESC_ALIGN,
            packed_layout::desc_ring_bytes(size),
        ),
        (
            driver,
            packed_layout::EVENT_ALIGN,
            packed_layout::EVENT_SIZE,
        ),
        (
            device,
            packed_layout::EVENT_ALIGN,
            packed_layout::EVENT_SIZE,
        ),
    ])?;
    p.reset();
    p.set_size(size);
    p.desc_ring_addr = GuestAddress(desc);
    p.driver_event_addr = GuestAddress(driver);
    p.device_event_addr = GuestAddress(device);
    p.ready = true;
    if p.check_rings(mem).is_err() {
        p.reset();
        return Err(QueueSetupError::OutsideRam);
    }
    Ok(())
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

/// Program `q` from raw register values and validate it; on error `q` is left not ready.
fn program_queue<M: GuestMemory + ?Sized>(
    q: &mut Queue,
    mem: &M,
    num: u32,
    desc: u64,
    driver: u64,
    device: u64,
) -> Result<(), QueueSetupError> {
    let size = check_size(num, q.max_size)?;
    check_areas([
        (desc, layout::DESC_ALIGN, layout::desc_table_bytes(size)),
        (driver, layout::AVAIL_ALIGN, layout::avail_ring_bytes(size)),
        (device, layout::USED_ALIGN, layout::used_ring_bytes(size)),
    ])?;
    q.reset();
    q.set_size(size);
    q.desc_table_addr = GuestAddress(desc);
    q.avail_ring_addr = GuestAddress(driver);
    q.used_ring_addr = GuestAddress(device);
    q.ready = true;
    if q.check_rings(mem).is_err() {
        q.reset();
        return Err(QueueSetupError::OutsideRam);
    }
    Ok(())
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

    #[test]
    fn size_checks() {
        assert_eq!(check_size(0, 256), Err(QueueSetupError::SizeZero));
        assert_eq!(
            check_size(0x1_0000, 256),
            Err(QueueSetupError::SizeTooLarge { size: 0x1_0000 })
        );
        assert_eq!(
            check_size(6, 256),
            Err(QueueSetupError::SizeNotPowerOfTwo { size: 6 })
        );
        assert_eq!(check_size(256, 256), Ok(256));
        // Packed: any size from 1 to the maximum (H9c), 0 and above-maximum refused.
        assert_eq!(check_packed_size(0, 256), Err(QueueSetupError::SizeZero));
        assert_eq!(check_packed_size(6, 256), Ok(6));
        assert_eq!(check_packed_size(1, 256), Ok(1));
        assert_eq!(check_packed_size(256, 256), Ok(256));
        assert_eq!(
            check_packed_size(257, 256),
            Err(QueueSetupError::SizeTooLarge { size: 257 })
        );
        assert_eq!(
            check_packed_size(0x1_0006, 256),
            Err(QueueSetupError::SizeTooLarge { size: 0x1_0006 })
        );
    }

    #[test]
    fn offered_mask_keeps_device_bits() {
        assert_eq!(DEVICE_SPECIFIC & (1 << 41), 0);
        assert_ne!(DEVICE_SPECIFIC & (1 << 50), 0);
        assert_eq!(DEVICE_SPECIFIC & (0x3F << 44), 0);
    }
}
