//! Little-endian layouts of the ring structures, flag words, feature and status bits
//! (VIRTIO 1.4 §2.1, §2.7, §2.8, §6).
//!
//! Every type here is plain data: `zerocopy` layouts that are copied in and out of guest memory
//! by value, never referenced in place.

use bitflags::bitflags;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Largest queue size the split and packed rings allow (§2.7, §2.8: 2¹⁵ entries).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// A split-ring descriptor as the driver writes it (§2.7.5).
#[doc(alias = "virtq_desc")]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct SplitDesc {
    /// Guest-physical address of the buffer.
    pub addr: U64,
    /// Length of the buffer in bytes.
    pub len: U32,
    /// [`DescFlags`] bits.
    pub flags: U16,
    /// Index of the next descriptor when [`DescFlags::NEXT`] is set.
    pub next: U16,
}

/// One element of the split used ring (§2.7.8).
#[doc(alias = "virtq_used_elem")]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct UsedElem {
    /// Head index of the completed chain (a `u32` on the wire, always `< size`).
    pub id: U32,
    /// Bytes the device wrote into the chain's writable part.
    pub len: U32,
}

/// A packed-ring descriptor (§2.8.13).
#[doc(alias = "pvirtq_desc")]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct PackedDesc {
    /// Guest-physical address of the buffer.
    pub addr: U64,
    /// Length of the buffer in bytes.
    pub len: U32,
    /// Buffer ID.
    pub id: U16,
    /// [`DescFlags`] bits, including AVAIL and USED.
    pub flags: U16,
}

/// The packed-ring event suppression structure (§2.8.14).
#[doc(alias = "pvirtq_event_suppress")]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct EventSuppress {
    /// Descriptor ring change event offset (bits 0..15) and wrap counter (bit 15).
    pub off_wrap: U16,
    /// Descriptor ring change event flags (bits 0..2); see [`RingEventFlags`].
    pub flags: U16,
}

bitflags! {
    /// Descriptor flags (§2.7.5, §2.8.13).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct DescFlags: u16 {
        /// The buffer continues in the descriptor named by `next` (split) or the next slot
        /// (packed).
        #[doc(alias = "VIRTQ_DESC_F_NEXT")]
        const NEXT = 1;
        /// The buffer is device-writable (otherwise device-readable).
        #[doc(alias = "VIRTQ_DESC_F_WRITE")]
        const WRITE = 2;
        /// The buffer holds a table of indirect descriptors (§2.7.5.3, §2.8.7).
        #[doc(alias = "VIRTQ_DESC_F_INDIRECT")]
        const INDIRECT = 4;
        /// Packed ring: the driver's availability bit (§2.8.1).
        #[doc(alias = "VIRTQ_DESC_F_AVAIL")]
        const AVAIL = 1 << 7;
        /// Packed ring: the device's used bit (§2.8.1).
        #[doc(alias = "VIRTQ_DESC_F_USED")]
        const USED = 1 << 15;
    }
}

bitflags! {
    /// Available-ring flags (§2.7.6).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct AvailFlags: u16 {
        /// The driver does not want used-buffer notifications (ignored under EVENT_IDX).
        #[doc(alias = "VIRTQ_AVAIL_F_NO_INTERRUPT")]
        const NO_INTERRUPT = 1;
    }
}

bitflags! {
    /// Used-ring flags (§2.7.8).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct UsedFlags: u16 {
        /// The device does not want available-buffer notifications (not used under EVENT_IDX).
        #[doc(alias = "VIRTQ_USED_F_NO_NOTIFY")]
        const NO_NOTIFY = 1;
    }
}

/// Packed-ring event suppression flag values (§2.8.10, §2.8.14).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RingEventFlags {
    /// Notifications enabled.
    #[doc(alias = "RING_EVENT_FLAGS_ENABLE")]
    Enable,
    /// Notifications disabled.
    #[doc(alias = "RING_EVENT_FLAGS_DISABLE")]
    Disable,
    /// Notify only for the descriptor named by `off_wrap` (needs EVENT_IDX).
    #[doc(alias = "RING_EVENT_FLAGS_DESC")]
    Desc,
    /// The reserved value 3.
    Reserved,
}

impl RingEventFlags {
    /// Decode the two flag bits of an event suppression structure.
    pub const fn from_bits(bits: u16) -> Self {
        plant_panic!("wire", bits == 0x5eed);
        match bits & 3 {
            0 => Self::Enable,
            1 => Self::Disable,
            2 => Self::Desc,
            _ => Self::Reserved,
        }
    }

    /// The wire value.
    pub const fn bits(self) -> u16 {
        match self {
            Self::Enable => 0,
            Self::Disable => 1,
            Self::Desc => 2,
            Self::Reserved => 3,
        }
    }
}

bitflags! {
    /// Device-independent feature bits (§6) that change how the queues behave.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct Features: u64 {
        /// Indirect descriptors (§2.7.5.3, §2.8.7).
        #[doc(alias = "VIRTIO_F_INDIRECT_DESC")]
        const INDIRECT_DESC = 1 << 28;
        /// `used_event` / `avail_event` notification suppression (§2.7.7, §2.7.10).
        #[doc(alias = "VIRTIO_F_EVENT_IDX")]
        const EVENT_IDX = 1 << 29;
        /// Compliance with VIRTIO 1.0 and later.
        #[doc(alias = "VIRTIO_F_VERSION_1")]
        const VERSION_1 = 1 << 32;
        /// Device access to guest memory is restricted or translated by the platform.
        #[doc(alias = "VIRTIO_F_ACCESS_PLATFORM")]
        const ACCESS_PLATFORM = 1 << 33;
        /// The packed virtqueue layout (§2.8).
        #[doc(alias = "VIRTIO_F_RING_PACKED")]
        const RING_PACKED = 1 << 34;
        /// Buffers are used in the order they were made available (§2.7.9, §2.8.8).
        #[doc(alias = "VIRTIO_F_IN_ORDER")]
        const IN_ORDER = 1 << 35;
        /// Hardware-strength memory ordering is required.
        #[doc(alias = "VIRTIO_F_ORDER_PLATFORM")]
        const ORDER_PLATFORM = 1 << 36;
        /// PCI single-root I/O virtualisation (never offered on MMIO).
        #[doc(alias = "VIRTIO_F_SR_IOV")]
        const SR_IOV = 1 << 37;
        /// Driver notifications carry extra data (§2.9).
        #[doc(alias = "VIRTIO_F_NOTIFICATION_DATA")]
        const NOTIFICATION_DATA = 1 << 38;
        /// PCI-only notification configuration data (never offered on MMIO).
        #[doc(alias = "VIRTIO_F_NOTIF_CONFIG_DATA")]
        const NOTIF_CONFIG_DATA = 1 << 39;
        /// Individual virtqueue reset (§2.6.1).
        #[doc(alias = "VIRTIO_F_RING_RESET")]
        const RING_RESET = 1 << 40;
        /// Administration virtqueues (PCI only; reserved on MMIO).
        #[doc(alias = "VIRTIO_F_ADMIN_VQ")]
        const ADMIN_VQ = 1 << 41;
        /// Device suspend (§3.4).
        #[doc(alias = "VIRTIO_F_SUSPEND")]
        const SUSPEND = 1 << 43;
    }
}

bitflags! {
    /// Device status bits (§2.1).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct DeviceStatus: u8 {
        /// The guest has noticed the device.
        const ACKNOWLEDGE = 1;
        /// The guest knows how to drive the device.
        const DRIVER = 2;
        /// The driver is set up and ready to drive the device.
        const DRIVER_OK = 4;
        /// The driver has acknowledged the features it understands.
        const FEATURES_OK = 8;
        /// The device is suspended (needs `VIRTIO_F_SUSPEND`).
        const SUSPEND = 16;
        /// The device hit an error it can only leave through a reset.
        const DEVICE_NEEDS_RESET = 64;
        /// The guest gave up on the device.
        const FAILED = 128;
    }
}

/// Split-ring layout arithmetic (§2.7, "Virtqueue Part Sizes and Alignment").
#[allow(clippy::arithmetic_side_effects)] // u16 inputs: every product and sum fits in a u64.
pub mod split_layout {
    /// Alignment of the descriptor table.
    pub const DESC_ALIGN: u64 = 16;
    /// Alignment of the available ring.
    pub const AVAIL_ALIGN: u64 = 2;
    /// Alignment of the used ring.
    pub const USED_ALIGN: u64 = 4;
    /// Size of one descriptor.
    pub const DESC_SIZE: u64 = 16;
    /// Size of one used element.
    pub const USED_ELEM_SIZE: u64 = 8;
    /// Offset of `avail.idx` / `used.idx` in their rings.
    pub const IDX_OFFSET: u64 = 2;
    /// Offset of the first ring entry in the available and used rings.
    pub const RING_OFFSET: u64 = 4;

    /// Bytes of the descriptor table for `size` descriptors.
    pub const fn desc_table_bytes(size: u16) -> u64 {
        DESC_SIZE * size as u64
    }
    /// Bytes of the available ring, including `used_event`.
    pub const fn avail_ring_bytes(size: u16) -> u64 {
        6 + 2 * size as u64
    }
    /// Bytes of the used ring, including `avail_event`.
    pub const fn used_ring_bytes(size: u16) -> u64 {
        6 + USED_ELEM_SIZE * size as u64
    }
    /// Offset of `used_event` inside the available ring.
    pub const fn used_event_offset(size: u16) -> u64 {
        RING_OFFSET + 2 * size as u64
    }
    /// Offset of `avail_event` inside the used ring.
    pub const fn avail_event_offset(size: u16) -> u64 {
        RING_OFFSET + USED_ELEM_SIZE * size as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_spec_sizes() {
        assert_eq!(core::mem::size_of::<SplitDesc>(), 16);
        assert_eq!(core::mem::size_of::<UsedElem>(), 8);
        assert_eq!(core::mem::size_of::<PackedDesc>(), 16);
        assert_eq!(core::mem::size_of::<EventSuppress>(), 4);
        assert_eq!(split_layout::avail_ring_bytes(256), 518);
        assert_eq!(split_layout::used_ring_bytes(256), 2054);
    }

    #[test]
    fn ring_event_flags_roundtrip() {
        for b in 0..4u16 {
            assert_eq!(RingEventFlags::from_bits(b).bits(), b);
        }
        assert_eq!(RingEventFlags::from_bits(0xFFFF), RingEventFlags::Reserved);
    }
}
