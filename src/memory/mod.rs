//! Guest memory: addresses, the accessor trait the hypervisor implements, and two provided
//! accessors.
//!
//! The library never forms a Rust reference into guest memory. Everything it needs goes through
//! [`GuestMemory`]: byte copies for descriptors, used elements and buffer data, and dedicated
//! single-copy-atomic 16-bit loads and stores for the index words (`avail.idx`, ring entries,
//! `used.idx`, `used_event`, `avail_event`, packed flags), which must never tear
//! (CVE-2020-13759).

use core::fmt;
use core::sync::atomic::{Ordering, fence};

use zerocopy::{FromBytes, IntoBytes};

mod host;
mod regions;

pub use host::HostRegion;
pub use regions::RegionTable;

/// A guest-physical address (§2.7.5 `addr`, §4.2.2 queue address registers).
///
/// A newtype over `u64` whose arithmetic is checked: nothing computed from a guest value can
/// wrap silently.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct GuestAddress(pub u64);

impl GuestAddress {
    /// The raw `u64`.
    #[inline]
    pub const fn raw_value(self) -> u64 {
        self.0
    }

    /// `self + offset`, or `None` on overflow.
    #[inline]
    pub const fn checked_add(self, offset: u64) -> Option<Self> {
        match self.0.checked_add(offset) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }

    /// `self - other` as a byte offset, or `None` if `other > self`.
    #[inline]
    pub const fn checked_offset_from(self, other: Self) -> Option<u64> {
        self.0.checked_sub(other.0)
    }

    /// Whether the address is a multiple of `align` (a power of two; `0` counts as `1`).
    #[inline]
    pub const fn is_aligned(self, align: u64) -> bool {
        align <= 1 || self.0 & align.wrapping_sub(1) == 0
    }

    /// The end of the range `[self, self + len)`, checked: `None` if it does not fit in `u64`.
    /// A range that ends exactly at 2⁶⁴ is representable only as a length, so it is refused too.
    #[inline]
    pub const fn checked_end(self, len: u64) -> Option<Self> {
        self.checked_add(len)
    }
}

impl fmt::Display for GuestAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Why a guest-memory access was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum MemoryError {
    /// Some byte of `[addr, addr + len)` is not guest RAM this device may access.
    OutOfRange {
        /// First address of the refused range.
        addr: u64,
        /// Length of the refused range.
        len: u64,
    },
    /// `addr + len` does not fit in 64 bits.
    Overflow {
        /// First address of the refused range.
        addr: u64,
        /// Length of the refused range.
        len: u64,
    },
    /// A 16-bit index access at an odd address (it could not be single-copy atomic).
    Misaligned {
        /// The refused address.
        addr: u64,
    },
    /// A region table was given a region that overlaps another, or is full.
    BadRegion,
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::OutOfRange { addr, len } => {
                write!(f, "guest range {addr:#x}+{len:#x} is outside guest RAM")
            }
            Self::Overflow { addr, len } => {
                write!(
                    f,
                    "guest range {addr:#x}+{len:#x} overflows the address space"
                )
            }
            Self::Misaligned { addr } => write!(f, "16-bit index access at odd address {addr:#x}"),
            Self::BadRegion => f.write_str("region overlaps another region or the table is full"),
        }
    }
}

impl core::error::Error for MemoryError {}

/// Access to the guest's RAM, implemented by the hypervisor over its stage-2 mapping.
///
/// The trait is object safe: `&dyn GuestMemory` works wherever `&M` does.
///
/// # Contract for implementors
///
/// * Every method checks the whole range `[addr, addr + len)` with overflow-safe arithmetic and
///   fails with a [`MemoryError`] if any byte is not RAM this device may access (MMIO windows,
///   holes, hypervisor or other guests' memory). A failed `write` must not have written anything.
/// * [`load_u16`](Self::load_u16) and [`store_u16`](Self::store_u16) are single-copy atomic:
///   one aligned 16-bit access that can never be observed half-done. They may refuse odd
///   addresses with [`MemoryError::Misaligned`].
/// * No method issues memory barriers on its own; the queues issue the barriers they need
///   through [`fence`](Self::fence), whose provided implementation is the Rust fence the
///   [`Barrier`] names. Override it only to *add* to that fence (a protocol model that needs to
///   see barriers, a trace, a guest on a non-coherent agent); a weaker fence loses
///   notifications.
/// * Byte copies may cross from one RAM region into an adjacent one; whether they do is the
///   implementation's policy (the provided [`RegionTable`] splits them).
pub trait GuestMemory {
    /// Copy `buf.len()` bytes starting at `addr` out of guest memory.
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError>;

    /// Copy `buf` into guest memory starting at `addr`.
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError>;

    /// Single-copy-atomic little-endian 16-bit load.
    fn load_u16(&self, addr: GuestAddress) -> Result<u16, MemoryError>;

    /// Single-copy-atomic little-endian 16-bit store.
    fn store_u16(&self, addr: GuestAddress, value: u16) -> Result<(), MemoryError>;

    /// Check that every byte of `[addr, addr + len)` is accessible guest RAM, without touching
    /// it. A zero-length range is accepted when `addr` itself does not overflow.
    fn check_range(&self, addr: GuestAddress, len: u64) -> Result<(), MemoryError>;

    /// Issue the memory barrier `barrier` between the accesses before and after it. The
    /// provided implementation is [`Barrier::issue`]; see the contract above before overriding
    /// it.
    #[inline]
    fn fence(&self, barrier: Barrier) {
        barrier.issue();
    }
}

/// A memory barrier a queue issues between its guest-memory accesses, named by what it orders
/// (VIRTIO 1.4 §2.7.13, §2.8.21; checklist SPLIT-53, SPLIT-62, SPLIT-64, SPLIT-65, PACKED-19,
/// PACKED-20, PACKED-48, PACKED-49).
///
/// The queues call [`GuestMemory::fence`] with one of these at every point where the order of
/// their accesses matters to the driver, so a protocol model can see (and remove) each barrier
/// by name. [`ordering`](Self::ordering) is the strength each one needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Barrier {
    /// Acquire, after reading `avail.idx` or a packed descriptor's flags word and before reading
    /// the ring entries, descriptors and buffers it publishes (SPLIT-64, PACKED-19).
    AvailRead,
    /// Release, after writing used elements and buffer data and before the `used.idx` store or
    /// packed used-flags store that publishes them (SPLIT-65, PACKED-20).
    UsedPublish,
    /// Release, between the packed device event structure's `off_wrap` and the flags word that
    /// selects it (§2.8.10).
    EventPublish,
    /// Acquire, between reading the packed driver event structure's flags and its `off_wrap`
    /// (§2.8.10).
    EventRead,
    /// Full (store→load), between publishing used elements and reading the driver's suppression
    /// state (`used_event`, avail flags, driver event structure): without it a driver that just
    /// re-enabled interrupts and the device can each miss the other's store (SPLIT-53,
    /// PACKED-48).
    NotifyCheck,
    /// Full (store→load), between asking for kicks (`avail_event`, used flags, device event
    /// structure) and re-reading the ring before the device idles: without it the driver can
    /// skip a kick for work the device then does not see (SPLIT-61, SPLIT-62, PACKED-49).
    KickRecheck,
}

impl Barrier {
    /// The ordering this barrier needs.
    #[inline]
    pub const fn ordering(self) -> Ordering {
        match self {
            Self::AvailRead | Self::EventRead => Ordering::Acquire,
            Self::UsedPublish | Self::EventPublish => Ordering::Release,
            Self::NotifyCheck | Self::KickRecheck => Ordering::SeqCst,
        }
    }

    /// Issue the barrier: `core::sync::atomic::fence(self.ordering())`.
    #[inline]
    pub fn issue(self) {
        fence(self.ordering());
    }
}

impl<T: GuestMemory + ?Sized> GuestMemory for &T {
    #[inline]
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError> {
        (**self).read(addr, buf)
    }
    #[inline]
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError> {
        (**self).write(addr, buf)
    }
    #[inline]
    fn load_u16(&self, addr: GuestAddress) -> Result<u16, MemoryError> {
        (**self).load_u16(addr)
    }
    #[inline]
    fn store_u16(&self, addr: GuestAddress, value: u16) -> Result<(), MemoryError> {
        (**self).store_u16(addr, value)
    }
    #[inline]
    fn check_range(&self, addr: GuestAddress, len: u64) -> Result<(), MemoryError> {
        (**self).check_range(addr, len)
    }
    #[inline]
    fn fence(&self, barrier: Barrier) {
        (**self).fence(barrier);
    }
}

/// Typed copies on top of [`GuestMemory`], for every implementation (including `dyn`).
pub trait GuestMemoryExt: GuestMemory {
    /// Copy a plain-data value of type `T` out of guest memory (one copy, by value).
    #[inline]
    fn read_obj<T: FromBytes + IntoBytes>(&self, addr: GuestAddress) -> Result<T, MemoryError> {
        let mut value = T::new_zeroed();
        self.read(addr, value.as_mut_bytes())?;
        Ok(value)
    }

    /// Copy a plain-data value into guest memory.
    #[inline]
    fn write_obj<T: IntoBytes + zerocopy::Immutable>(
        &self,
        addr: GuestAddress,
        value: &T,
    ) -> Result<(), MemoryError> {
        self.write(addr, value.as_bytes())
    }
}

impl<M: GuestMemory + ?Sized> GuestMemoryExt for M {}

/// Overflow-checked `[addr, addr + len)` → (start, end) in `u64`, the building block of every
/// range check in this crate.
#[inline]
pub(crate) fn range_end(addr: GuestAddress, len: u64) -> Result<u64, MemoryError> {
    addr.0
        .checked_add(len)
        .ok_or(MemoryError::Overflow { addr: addr.0, len })
}
