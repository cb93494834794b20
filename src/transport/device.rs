//! The contract between a transport and the device model it serves (VIRTIO 1.4 §2, §5).

use core::fmt;
use core::ops::{BitOr, BitOrAssign};

use super::ring::Queues;
use crate::error::QueueError;
use crate::memory::GuestMemory;
use crate::notify::DrainReport;
use crate::wire::Features;

/// A virtio device type (§5: the `DeviceID` register of virtio-mmio, PCI device ID 0x1040 +
/// this). Any value is representable; the constants are the types §5 assigns.
#[doc(alias = "DeviceID")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(transparent)]
pub struct DeviceId(pub u32);

impl DeviceId {
    /// 0: reserved, an empty slot that drivers ignore (§4.2.3.1.1).
    pub const INVALID: Self = Self(0);
    /// Network card (§5.1).
    #[doc(alias = "VIRTIO_ID_NET")]
    pub const NET: Self = Self(1);
    /// Block device (§5.2).
    #[doc(alias = "VIRTIO_ID_BLOCK")]
    pub const BLOCK: Self = Self(2);
    /// Console (§5.3).
    #[doc(alias = "VIRTIO_ID_CONSOLE")]
    pub const CONSOLE: Self = Self(3);
    /// Entropy source (§5.4).
    #[doc(alias = "VIRTIO_ID_RNG")]
    pub const ENTROPY: Self = Self(4);
    /// Traditional memory balloon (§5.5).
    #[doc(alias = "VIRTIO_ID_BALLOON")]
    pub const BALLOON: Self = Self(5);
    /// ioMemory.
    #[doc(alias = "VIRTIO_ID_IOMEM")]
    pub const IO_MEMORY: Self = Self(6);
    /// rpmsg.
    #[doc(alias = "VIRTIO_ID_RPMSG")]
    pub const RPMSG: Self = Self(7);
    /// SCSI host (§5.6).
    #[doc(alias = "VIRTIO_ID_SCSI")]
    pub const SCSI: Self = Self(8);
    /// 9P transport.
    #[doc(alias = "VIRTIO_ID_9P")]
    pub const NINE_P: Self = Self(9);
    /// mac80211 WLAN.
    #[doc(alias = "VIRTIO_ID_MAC80211_WLAN")]
    pub const MAC80211_WLAN: Self = Self(10);
    /// rproc serial.
    #[doc(alias = "VIRTIO_ID_RPROC_SERIAL")]
    pub const RPROC_SERIAL: Self = Self(11);
    /// virtio CAIF.
    #[doc(alias = "VIRTIO_ID_CAIF")]
    pub const CAIF: Self = Self(12);
    /// Memory balloon.
    #[doc(alias = "VIRTIO_ID_MEMORY_BALLOON")]
    pub const MEMORY_BALLOON: Self = Self(13);
    /// GPU device (§5.7).
    #[doc(alias = "VIRTIO_ID_GPU")]
    pub const GPU: Self = Self(16);
    /// Timer / clock device.
    #[doc(alias = "VIRTIO_ID_CLOCK")]
    pub const CLOCK: Self = Self(17);
    /// Input device (§5.8).
    #[doc(alias = "VIRTIO_ID_INPUT")]
    pub const INPUT: Self = Self(18);
    /// Socket device (§5.10).
    #[doc(alias = "VIRTIO_ID_VSOCK")]
    pub const SOCKET: Self = Self(19);
    /// Crypto device (§5.9).
    #[doc(alias = "VIRTIO_ID_CRYPTO")]
    pub const CRYPTO: Self = Self(20);
    /// Signal distribution module.
    #[doc(alias = "VIRTIO_ID_SIGNAL_DIST")]
    pub const SIGNAL_DIST: Self = Self(21);
    /// pstore device.
    #[doc(alias = "VIRTIO_ID_PSTORE")]
    pub const PSTORE: Self = Self(22);
    /// IOMMU device (§5.13).
    #[doc(alias = "VIRTIO_ID_IOMMU")]
    pub const IOMMU: Self = Self(23);
    /// Memory device (§5.15).
    #[doc(alias = "VIRTIO_ID_MEM")]
    pub const MEMORY: Self = Self(24);
    /// Sound device (§5.14).
    #[doc(alias = "VIRTIO_ID_SOUND")]
    pub const SOUND: Self = Self(25);
    /// File system device (§5.11).
    #[doc(alias = "VIRTIO_ID_FS")]
    pub const FS: Self = Self(26);
    /// PMEM device.
    #[doc(alias = "VIRTIO_ID_PMEM")]
    pub const PMEM: Self = Self(27);
    /// RPMB device (§5.12).
    #[doc(alias = "VIRTIO_ID_RPMB")]
    pub const RPMB: Self = Self(28);
    /// mac80211 hwsim wireless simulation device.
    #[doc(alias = "VIRTIO_ID_MAC80211_HWSIM")]
    pub const MAC80211_HWSIM: Self = Self(29);
    /// Video encoder device.
    #[doc(alias = "VIRTIO_ID_VIDEO_ENCODER")]
    pub const VIDEO_ENCODER: Self = Self(30);
    /// Video decoder device.
    #[doc(alias = "VIRTIO_ID_VIDEO_DECODER")]
    pub const VIDEO_DECODER: Self = Self(31);
    /// SCMI device.
    #[doc(alias = "VIRTIO_ID_SCMI")]
    pub const SCMI: Self = Self(32);
    /// NitroSecureModule.
    #[doc(alias = "VIRTIO_ID_NITRO_SEC_MOD")]
    pub const NITRO_SECURE_MODULE: Self = Self(33);
    /// I2C adapter.
    #[doc(alias = "VIRTIO_ID_I2C_ADAPTER")]
    pub const I2C_ADAPTER: Self = Self(34);
    /// Watchdog.
    #[doc(alias = "VIRTIO_ID_WATCHDOG")]
    pub const WATCHDOG: Self = Self(35);
    /// CAN device.
    #[doc(alias = "VIRTIO_ID_CAN")]
    pub const CAN: Self = Self(36);
    /// Parameter server.
    #[doc(alias = "VIRTIO_ID_PARAM_SERV")]
    pub const PARAMETER_SERVER: Self = Self(38);
    /// Audio policy device.
    #[doc(alias = "VIRTIO_ID_AUDIO_POLICY")]
    pub const AUDIO_POLICY: Self = Self(39);
    /// Bluetooth device.
    #[doc(alias = "VIRTIO_ID_BT")]
    pub const BLUETOOTH: Self = Self(40);
    /// GPIO device.
    #[doc(alias = "VIRTIO_ID_GPIO")]
    pub const GPIO: Self = Self(41);
    /// RDMA device.
    #[doc(alias = "VIRTIO_ID_RDMA")]
    pub const RDMA: Self = Self(42);
    /// Camera device.
    #[doc(alias = "VIRTIO_ID_CAMERA")]
    pub const CAMERA: Self = Self(43);
    /// ISM device.
    #[doc(alias = "VIRTIO_ID_ISM")]
    pub const ISM: Self = Self(44);
    /// SPI controller.
    #[doc(alias = "VIRTIO_ID_SPI")]
    pub const SPI: Self = Self(45);
}

impl From<DeviceId> for u32 {
    fn from(id: DeviceId) -> Self {
        id.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "virtio device type {}", self.0)
    }
}

/// What the device's notification handler did ([`VirtioDevice::queue_notify`]): whether the
/// driver must be interrupted, and whether work is left that the device's budget did not
/// cover (H17).
///
/// The transport never loops on `more`: it records the queue as pending and reports it
/// ([`Events::KICKS`](super::Events::KICKS) in the access outcome, the queue in
/// `take_kicks`), so the hypervisor runs `process_queue` again when it chooses, and the work
/// of one access stays bounded by the device's budget whatever the guest does.
#[must_use = "`notify` is an interrupt the driver waits for, `more` is work no kick will announce"]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct NotifyReport {
    /// A used-buffer notification is due (after the queue's suppression rules, §2.7.10,
    /// §2.8.10), typically [`DrainReport::notify`].
    pub notify: bool,
    /// The budget ran out with work left, typically [`DrainReport::more`]: call again soon
    /// (available-buffer notifications may be off, so no kick will come for it).
    pub more: bool,
}

impl NotifyReport {
    /// Nothing to signal, nothing left.
    pub const IDLE: Self = Self {
        notify: false,
        more: false,
    };

    /// Both answers of `self` and `other` (either asks to notify, either has more).
    pub const fn merge(self, other: Self) -> Self {
        Self {
            notify: self.notify || other.notify,
            more: self.more || other.more,
        }
    }
}

impl BitOr for NotifyReport {
    type Output = Self;
    fn bitor(self, other: Self) -> Self {
        self.merge(other)
    }
}

impl BitOrAssign for NotifyReport {
    fn bitor_assign(&mut self, other: Self) {
        *self = self.merge(other);
    }
}

impl From<DrainReport> for NotifyReport {
    fn from(r: DrainReport) -> Self {
        Self {
            notify: r.notify,
            more: r.more,
        }
    }
}

/// A drain that failed stopped on a queue error: nothing to signal from here. A fatal error
/// left the queue broken, which the transport turns into DEVICE_NEEDS_RESET itself.
impl From<Result<DrainReport, QueueError>> for NotifyReport {
    fn from(r: Result<DrainReport, QueueError>) -> Self {
        r.map_or(Self::IDLE, Self::from)
    }
}

/// A device model served by a transport (VIRTIO 1.4 §2, §5).
///
/// The transport handles everything device-independent (status, feature negotiation, queue
/// setup and validation, interrupts); the device supplies its identity, its features, its
/// configuration space and what to do when a queue is notified. One handler,
/// [`queue_notify`](Self::queue_notify), serves both ring formats through [`Queues`]. The
/// [module documentation](super) has a complete device.
pub trait VirtioDevice {
    /// The virtio device type (§5). [`DeviceId::INVALID`] (0) marks an empty slot that
    /// drivers ignore.
    #[doc(alias = "DeviceID")]
    fn device_id(&self) -> DeviceId;

    /// Subsystem vendor ID shown in the virtio-mmio `VendorID` register (§4.2.2). Any value.
    /// (A PCI function shows [`pci::PciIds`](super::pci::PciIds) instead.)
    #[doc(alias = "VendorID")]
    fn vendor_id(&self) -> u32 {
        0
    }

    /// Whether this device type serves packed rings (§2.8). Only then does the transport offer
    /// `VIRTIO_F_RING_PACKED`, and only when [`device_features`](Self::device_features) lists
    /// it too; [`queue_notify`](Self::queue_notify) then receives [`Queues::Packed`] once the
    /// driver accepted it. A constant, so that a split-only device's transport compiles
    /// without the packed ring's queue code.
    const PACKED_RING: bool = false;

    /// Feature bits the device supports: its device-specific bits (0–23, 50–63, §2.2; build
    /// them with [`Features::from_bits_retain`]) plus the device-independent ones it can
    /// honour (for example [`Features::INDIRECT_DESC`], `EVENT_IDX`, and `RING_PACKED` with
    /// [`PACKED_RING`](Self::PACKED_RING)). The transport adds `VERSION_1` where the transport
    /// requires it and removes every bit the transport cannot carry (§2.2.2, FEAT-06,
    /// MMIO-31).
    #[doc(alias = "DeviceFeatures")]
    fn device_features(&self) -> Features;

    /// Extra checks on the set the driver accepted, for example feature prerequisites
    /// (§2.2.2). Called at FEATURES_OK after the transport checked that `accepted` is a subset
    /// of what was offered. Returning `false` refuses FEATURES_OK (FEAT-05).
    fn validate_features(&self, accepted: Features) -> bool {
        let _ = accepted;
        true
    }

    /// Largest size of queue `index` (`QueueNumMax`, PCI `queue_size` at reset), or 0 if the
    /// queue does not exist. Asked once, when the transport is built, and clamped to 32768.
    /// A split ring's size must be a power of two (§2.7), so until the driver negotiates
    /// `VIRTIO_F_RING_PACKED` the transport shows this rounded down to a power of two; a
    /// packed ring may have any size up to it (§2.8), so with RING_PACKED it is shown as is.
    #[doc(alias = "QueueNumMax")]
    fn queue_max_size(&self, index: u16) -> u16;

    /// Read `data.len()` (1, 2, 4 or 8) bytes of device-specific configuration at `offset`
    /// (§2.5, little-endian), at any alignment. `data` arrives zeroed; leave bytes past the
    /// end of the configuration untouched (they read as zero).
    /// [`config_read`](super::config_read) does this for a byte image.
    fn read_config(&self, offset: u32, data: &mut [u8]);

    /// Write `data.len()` (1, 2, 4 or 8) bytes of device-specific configuration at `offset`
    /// (§2.5, little-endian), at any alignment. Ignore what is read-only or out of range.
    fn write_config(&mut self, offset: u32, data: &[u8]) {
        let _ = (offset, data);
    }

    /// The driver set DRIVER_OK: the device is live with `negotiated` features (§3.1.1).
    fn activate(&mut self, negotiated: Features) {
        let _ = negotiated;
    }

    /// Device reset (§2.4): drop all device state, including chains kept for later. The
    /// transport resets the queues itself.
    fn reset(&mut self) {}

    /// Queue `index` alone was stopped or reset: `QueueReset` (§2.6.1, RING_RESET),
    /// `QueueReady = 0`, or legacy `QueuePFN = 0`. Drop every chain kept from that queue: its
    /// heads may be reused by the driver after the queue is enabled again (H19).
    fn queue_reset(&mut self, index: u16) {
        let _ = index;
    }

    /// Queue `index` was notified (or is being polled): process what the driver made
    /// available, in whichever ring format the driver negotiated (`queues` is
    /// [`Queues::Split`] or, for a [`PACKED_RING`](Self::PACKED_RING) device, possibly
    /// [`Queues::Packed`]). `queues` is every queue of the device (a network loopback may
    /// complete chains on another queue); only ready, unbroken queues do anything, and every
    /// queue method refuses the others in O(1).
    ///
    /// Do a bounded amount of work, typically [`AnyQueue::drain`](super::AnyQueue::drain)
    /// with a budget, and report it: `notify` if a used-buffer notification is due (the
    /// drain's own decision), `more` if the budget ran out with work left. The transport does
    /// not loop on `more`; it tells the hypervisor, which calls `process_queue` again (see
    /// [`NotifyReport`]). After the handler returns, the transport also asks every live queue
    /// whether a notification is due and turns a queue that became broken into
    /// DEVICE_NEEDS_RESET. A transport with per-queue interrupts (PCI with MSI-X) sends a
    /// `notify` to every queue whose used ring the handler moved (to queue `index` if it
    /// moved none).
    ///
    /// With [`NotifyMode::Inline`](super::NotifyMode::Inline) this runs inside the
    /// hypervisor's trap handler: it must not block, lock or allocate.
    fn queue_notify<M: GuestMemory + ?Sized>(
        &mut self,
        index: u16,
        queues: Queues<'_>,
        mem: &M,
    ) -> NotifyReport;
}
