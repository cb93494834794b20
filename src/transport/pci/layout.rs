//! Where everything is: the configuration-space offsets of the type-0 header and of the
//! capabilities this transport presents, and the layout of its memory BAR (VIRTIO 1.4 §4.1.4,
//! PCI Local Bus 3.0 §6.1, §6.7, §6.8.2).
//!
//! Configuration space (256 bytes; the extended space of PCI Express reads 0):
//!
//! | offset | what |
//! |---|---|
//! | 0x00–0x3F | type-0 header: IDs, command/status, class code, BAR 0/1 (one 64-bit memory BAR), subsystem IDs, capability pointer, interrupt line/pin |
//! | [`CAP_MSIX`] 0x40 | MSI-X capability (table and PBA in BAR 0) |
//! | [`CAP_COMMON`] 0x50 | `VIRTIO_PCI_CAP_COMMON_CFG` |
//! | [`CAP_NOTIFY`] 0x60 | `VIRTIO_PCI_CAP_NOTIFY_CFG` with `notify_off_multiplier` |
//! | [`CAP_ISR`] 0x74 | `VIRTIO_PCI_CAP_ISR_CFG` |
//! | [`CAP_DEVICE`] 0x84 | `VIRTIO_PCI_CAP_DEVICE_CFG` |
//! | [`CAP_PCI_CFG`] 0x94 | `VIRTIO_PCI_CAP_PCI_CFG`, the access window into BAR 0 (last in the list) |
//!
//! BAR 0 ([`BAR_SIZE`] bytes, each structure on its own 4 KiB page):
//!
//! | offset | structure |
//! |---|---|
//! | [`COMMON_OFFSET`] 0x0000 | common configuration, [`COMMON_LEN`] bytes ([`common`] has the fields) |
//! | [`ISR_OFFSET`] 0x1000 | ISR status, 1 byte |
//! | [`DEVICE_OFFSET`] 0x2000 | device-specific configuration, [`DEVICE_LEN`] bytes |
//! | [`NOTIFY_OFFSET`] 0x3000 | notifications: queue `i` at `NOTIFY_OFFSET + i * NOTIFY_OFF_MULTIPLIER` |
//! | [`MSIX_TABLE_OFFSET`] 0x4000 | MSI-X table, 16 bytes per vector |
//! | [`MSIX_PBA_OFFSET`] 0x5000 | MSI-X pending bit array |

/// PCI vendor ID of every virtio function (§4.1.2).
pub const VENDOR_ID: u16 = 0x1AF4;
/// PCI device ID of a modern (non-transitional) virtio function: this plus the virtio device
/// ID (§4.1.2).
pub const DEVICE_ID_BASE: u16 = 0x1040;

/// Vendor ID (16 bits, read-only).
pub const VENDOR: u16 = 0x00;
/// Device ID (16 bits, read-only).
pub const DEVICE: u16 = 0x02;
/// Command register (16 bits).
pub const COMMAND: u16 = 0x04;
/// Status register (16 bits, read-only here).
pub const STATUS: u16 = 0x06;
/// Revision ID (8 bits, read-only), ≥ 1 for a non-transitional device (§4.1.2).
pub const REVISION: u16 = 0x08;
/// Class code (24 bits: programming interface, subclass, base class; read-only).
pub const CLASS_CODE: u16 = 0x09;
/// Header type (8 bits): 0, a single-function type-0 header.
pub const HEADER_TYPE: u16 = 0x0E;
/// BAR 0: the low half of the 64-bit memory BAR that holds every structure.
pub const BAR0: u16 = 0x10;
/// BAR 1: the high half of that BAR.
pub const BAR1: u16 = 0x14;
/// Subsystem vendor ID (16 bits, read-only).
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2C;
/// Subsystem ID (16 bits, read-only).
pub const SUBSYSTEM_ID: u16 = 0x2E;
/// Capabilities pointer (8 bits, read-only): [`CAP_MSIX`].
pub const CAPABILITIES: u16 = 0x34;
/// Interrupt line (8 bits, read-write scratch for system software).
pub const INTERRUPT_LINE: u16 = 0x3C;
/// Interrupt pin (8 bits, read-only): 1, INTA#.
pub const INTERRUPT_PIN: u16 = 0x3D;

/// Command: respond to memory accesses (BAR 0 decodes only with this set).
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command: bus master enable. Without it the function does no DMA: queues are not run and
/// MSI-X messages are held pending.
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command: INTx disable. The INTA# level stays low while it is set.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// The command bits this function implements; the others read 0 and ignore writes.
pub const COMMAND_WRITABLE: u16 = COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE;
/// Status: an INTx interrupt is pending (ISR non-zero while MSI-X is disabled, §4.1.4.5).
pub const STATUS_INTERRUPT: u16 = 1 << 3;
/// Status: the function has a capability list.
pub const STATUS_CAPABILITIES: u16 = 1 << 4;
/// BAR 0 flags in its low bits: memory space, 64-bit, not prefetchable (the ISR clears on
/// read).
pub const BAR0_FLAGS: u32 = 0b0100;

/// Capability ID of a vendor-specific capability (every virtio structure capability).
#[doc(alias = "PCI_CAP_ID_VNDR")]
pub const CAP_ID_VENDOR: u8 = 0x09;
/// Capability ID of MSI-X.
#[doc(alias = "PCI_CAP_ID_MSIX")]
pub const CAP_ID_MSIX: u8 = 0x11;

/// `cfg_type` of the common configuration structure.
#[doc(alias = "VIRTIO_PCI_CAP_COMMON_CFG")]
pub const COMMON_CFG: u8 = 1;
/// `cfg_type` of the notification structure.
#[doc(alias = "VIRTIO_PCI_CAP_NOTIFY_CFG")]
pub const NOTIFY_CFG: u8 = 2;
/// `cfg_type` of the ISR status.
#[doc(alias = "VIRTIO_PCI_CAP_ISR_CFG")]
pub const ISR_CFG: u8 = 3;
/// `cfg_type` of the device-specific configuration.
#[doc(alias = "VIRTIO_PCI_CAP_DEVICE_CFG")]
pub const DEVICE_CFG: u8 = 4;
/// `cfg_type` of the PCI configuration access capability.
#[doc(alias = "VIRTIO_PCI_CAP_PCI_CFG")]
pub const PCI_CFG: u8 = 5;

/// The MSI-X capability (12 bytes): ID, next, Message Control, Table and PBA offset/BIR.
pub const CAP_MSIX: u8 = 0x40;
/// The common configuration capability (`struct virtio_pci_cap`, 16 bytes).
pub const CAP_COMMON: u8 = 0x50;
/// The notification capability (`struct virtio_pci_notify_cap`, 20 bytes).
pub const CAP_NOTIFY: u8 = 0x60;
/// The ISR capability (16 bytes).
pub const CAP_ISR: u8 = 0x74;
/// The device configuration capability (16 bytes).
pub const CAP_DEVICE: u8 = 0x84;
/// The PCI configuration access capability (`struct virtio_pci_cfg_cap`, 20 bytes), the last
/// one in the list.
pub const CAP_PCI_CFG: u8 = 0x94;
/// `cap.bar` of the access window (8 bits, read-write).
pub const PCI_CFG_BAR: u16 = CAP_PCI_CFG as u16 + 4;
/// `cap.offset` of the access window (32 bits, read-write).
pub const PCI_CFG_OFFSET: u16 = CAP_PCI_CFG as u16 + 8;
/// `cap.length` of the access window (32 bits, read-write): 1, 2 or 4.
pub const PCI_CFG_LENGTH: u16 = CAP_PCI_CFG as u16 + 12;
/// `pci_cfg_data` (4 bytes, read-write): reading or writing it accesses BAR `cap.bar`.
pub const PCI_CFG_DATA: u16 = CAP_PCI_CFG as u16 + 16;
/// End of the capability list (first byte after the last capability).
pub const CAPS_END: u16 = CAP_PCI_CFG as u16 + 20;

/// The BAR that holds every structure: BAR 0 (with BAR 1 as its upper half).
pub const BAR: u8 = 0;
/// Size of BAR 0, a power of two.
pub const BAR_SIZE: u64 = 0x8000;
/// Offset of the common configuration structure in BAR 0.
pub const COMMON_OFFSET: u64 = 0x0000;
/// Length of the common configuration structure (`struct virtio_pci_common_cfg`).
pub const COMMON_LEN: u64 = 0x40;
/// Offset of the ISR status byte in BAR 0.
pub const ISR_OFFSET: u64 = 0x1000;
/// Length of the ISR structure.
pub const ISR_LEN: u64 = 1;
/// Offset of the device-specific configuration in BAR 0.
pub const DEVICE_OFFSET: u64 = 0x2000;
/// Length of the device-specific configuration window; bytes past the device's own
/// configuration read 0.
pub const DEVICE_LEN: u64 = 0x1000;
/// Offset of the notification structure in BAR 0.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// `notify_off_multiplier`: queue `i` (whose `queue_notify_off` is `i`) is notified at
/// `NOTIFY_OFFSET + 4 * i`. A multiple of 4 and a power of two, so the 32-bit
/// NOTIFICATION_DATA form fits (§4.1.4.4).
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
/// Queues the notification page has room for (and so the most queues a PCI transport has).
pub const MAX_QUEUES: usize = 1024;
/// Offset of the MSI-X table in BAR 0 (BIR 0).
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
/// Offset of the MSI-X pending bit array in BAR 0 (BIR 0).
pub const MSIX_PBA_OFFSET: u64 = 0x5000;
/// Most MSI-X vectors a PCI transport has (the pending bits of one access fit a `u64`).
pub const MAX_VECTORS: usize = 64;

/// Field offsets in the common configuration structure (`struct virtio_pci_common_cfg`,
/// §4.1.4.3), relative to [`COMMON_OFFSET`]. Each field answers only accesses of its own
/// width at its own offset; the 64-bit fields also answer 32-bit accesses to either half.
pub mod common {
    /// `device_feature_select` (32 bits, RW).
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    /// `device_feature` (32 bits, RO): offered features, word `device_feature_select`.
    pub const DEVICE_FEATURE: u64 = 0x04;
    /// `driver_feature_select` (32 bits, RW).
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    /// `driver_feature` (32 bits, RW): accepted features, word `driver_feature_select`.
    pub const DRIVER_FEATURE: u64 = 0x0C;
    /// `config_msix_vector` (16 bits, RW).
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    /// `num_queues` (16 bits, RO).
    pub const NUM_QUEUES: u64 = 0x12;
    /// `device_status` (8 bits, RW); writing 0 resets the device.
    pub const DEVICE_STATUS: u64 = 0x14;
    /// `config_generation` (8 bits, RO).
    pub const CONFIG_GENERATION: u64 = 0x15;
    /// `queue_select` (16 bits, RW).
    pub const QUEUE_SELECT: u64 = 0x16;
    /// `queue_size` (16 bits, RW).
    pub const QUEUE_SIZE: u64 = 0x18;
    /// `queue_msix_vector` (16 bits, RW).
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1A;
    /// `queue_enable` (16 bits, RW).
    pub const QUEUE_ENABLE: u64 = 0x1C;
    /// `queue_notify_off` (16 bits, RO).
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1E;
    /// `queue_desc` (64 bits, RW).
    pub const QUEUE_DESC: u64 = 0x20;
    /// `queue_driver` (64 bits, RW).
    pub const QUEUE_DRIVER: u64 = 0x28;
    /// `queue_device` (64 bits, RW).
    pub const QUEUE_DEVICE: u64 = 0x30;
    /// `queue_notify_data` (16 bits, RO).
    pub const QUEUE_NOTIFY_DATA: u64 = 0x38;
    /// `queue_reset` (16 bits, RW; with `VIRTIO_F_RING_RESET`).
    pub const QUEUE_RESET: u64 = 0x3A;
    /// `admin_queue_index` (16 bits, RO; 0, no administration queues).
    pub const ADMIN_QUEUE_INDEX: u64 = 0x3C;
    /// `admin_queue_num` (16 bits, RO; 0).
    pub const ADMIN_QUEUE_NUM: u64 = 0x3E;
}
