//! Guest memory: addresses, the accessor trait the hypervisor implements, and two provided
//! accessors.
//!
//! The library never forms a Rust reference into guest memory. Everything it needs goes through
//! [`GuestMemory`]: byte copies for descriptors, used elements and buffer data, and dedicated
//! atomic 16-bit loads and stores for the index words (`avail.idx`, ring entries,
//! `used.idx`, `used_event`, `avail_event`, packed flags), which must never tear
//! (CVE-2020-13759).

use core::fmt;
use core::sync::atomic::{Ordering, fence};

use zerocopy::{FromBytes, IntoBytes};

// The one module with `unsafe` code (the host-pointer accessor); the table above it forbids it.
mod host;
#[forbid(unsafe_code)]
mod regions;
#[cfg(feature = "vm-memory")]
#[forbid(unsafe_code)]
mod rust_vmm;

pub use host::HostRegion;
pub use regions::RegionTable;
#[cfg(feature = "vm-memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "vm-memory")))]
pub use rust_vmm::VmMemory;

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
    /// A 16-bit index access that is not naturally aligned, so it could not be one atomic
    /// access: an odd guest address, or (in [`HostRegion`]) an even one mapped at an odd host
    /// address.
    Misaligned {
        /// The refused address.
        addr: u64,
    },
    /// A region table was given a region that overlaps another, or is full.
    BadRegion,
    /// The accessor's backend failed the access for a reason other than the range: an IOMMU
    /// fault, a region without a host mapping, an I/O error (for example in
    /// `VmMemory`, feature `vm-memory`). Nothing was written.
    Backend {
        /// First address of the failed range.
        addr: u64,
        /// Length of the failed range.
        len: u64,
    },
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
            Self::Misaligned { addr } => {
                write!(f, "16-bit index access at {addr:#x} is not 2-aligned")
            }
            Self::BadRegion => f.write_str("region overlaps another region or the table is full"),
            Self::Backend { addr, len } => {
                write!(f, "guest memory backend failed on {addr:#x}+{len:#x}")
            }
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
///   holes, hypervisor or other guests' memory): [`MemoryError::Overflow`] if `addr + len`
///   does not fit in 64 bits, else [`MemoryError::OutOfRange`] naming the whole range. A
///   zero-length range names no byte and is accepted wherever `addr` is. A failed `write` (or
///   `store_u16`) must not have written anything.
/// * [`load_u16`](Self::load_u16) and [`store_u16`](Self::store_u16) are *atomic operations*
///   in the Rust memory model (for example `AtomicU16` with `Relaxed` ordering): one aligned
///   16-bit access that can never be observed half-done (CVE-2020-13759). Volatile accesses
///   are not enough: they are not atomic, so they do not synchronise with the fences the
///   queues issue, and a volatile access racing with another agent's write is a data race.
///   An odd address is refused with [`MemoryError::Misaligned`].
/// * [`check_u16_range`](Self::check_u16_range) accepts a range only if every aligned 16-bit
///   word in it is accepted by `load_u16` and `store_u16`. Override it if some aligned word of
///   RAM is not (a seam between two mappings at an odd address, a mapping at an odd host
///   address); the queues check their index words with it when a ring is enabled.
/// * Copies may run concurrently with other agents: the guest's vCPUs, and other host threads
///   if the implementation is `Sync`. They promise no atomicity, but they must not be
///   undefined behaviour: in an implementation shared by several host threads every access
///   that can race with another is atomic, and of one *size* per location. Rust (like C++)
///   makes racing atomic accesses of different sizes to overlapping bytes undefined unless both
///   are reads, and a hostile guest can place a buffer over an index word, so a copy must not
///   use, say, 8-byte atomics over bytes that `store_u16` writes with 16-bit ones. The provided
///   [`HostRegion`] uses naturally aligned 16-bit atomics for everything.
/// * No method issues memory barriers on its own; the queues issue the barriers they need
///   through [`fence`](Self::fence), whose provided implementation is the Rust fence the
///   [`Barrier`] names. Override it only to *add* to that fence (a protocol model that needs to
///   see barriers, a trace, a guest on a non-coherent agent); a weaker fence loses
///   notifications.
/// * Byte copies may cross from one RAM region into an adjacent one; whether they do is the
///   implementation's policy (the provided [`RegionTable`] splits them).
///
/// `virtq_testkit::conformance` checks an implementation against this contract.
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

    /// Check that every naturally aligned 16-bit word inside `[addr, addr + len)` can be
    /// accessed by [`load_u16`](Self::load_u16) and [`store_u16`](Self::store_u16), without
    /// touching it. The queues call it for every area that holds index words when a ring is
    /// enabled (§2.7.2, §2.8.2), so a ring whose index word the accessor would refuse is
    /// refused then, not at the first pop.
    ///
    /// The provided implementation is [`check_range`](Self::check_range) plus an even `addr`
    /// (else [`MemoryError::Misaligned`]): right for memory whose aligned words are all
    /// accessible. [`RegionTable`] and [`HostRegion`] override it (a seam at an odd address, an
    /// odd host pointer). A refusal is the error `check_range` gives, or the error `load_u16`
    /// gives for the first word it would refuse.
    #[inline]
    fn check_u16_range(&self, addr: GuestAddress, len: u64) -> Result<(), MemoryError> {
        self.check_range(addr, len)?;
        if !addr.is_aligned(2) {
            return Err(MemoryError::Misaligned { addr: addr.0 });
        }
        Ok(())
    }

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
    fn check_u16_range(&self, addr: GuestAddress, len: u64) -> Result<(), MemoryError> {
        (**self).check_u16_range(addr, len)
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

/// Zero exactly when `addr` is in `1..=2⁶³` and a multiple of `align` (a power of two below
/// 2⁶³): the queues' quick test of a ring address. Rotating the alignment bits to the top puts
/// both conditions in one range, `1..=2⁶³ / align`, which one subtraction and one shift test:
/// a misaligned address rotates to at least `2⁶⁴ / align`, zero wraps to `u64::MAX`.
#[inline(always)]
pub(crate) const fn ring_addr_bad(addr: u64, align: u64) -> u64 {
    let k = align.trailing_zeros();
    addr.rotate_right(k)
        .wrapping_sub(1)
        .wrapping_shr(63u32.saturating_sub(k))
}

/// Overflow-checked `[addr, addr + len)` → (start, end) in `u64`, the building block of every
/// range check in this crate.
#[inline]
pub(crate) fn range_end(addr: GuestAddress, len: u64) -> Result<u64, MemoryError> {
    addr.0
        .checked_add(len)
        .ok_or(MemoryError::Overflow { addr: addr.0, len })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ring_addr_bad` is exactly "in `1..=2^63` and aligned" for every alignment the rings
    /// use, at the edges of both conditions.
    #[test]
    fn ring_addr_bad_is_range_and_alignment() {
        let edges = [
            0,
            1,
            2,
            3,
            4,
            8,
            15,
            16,
            17,
            32,
            0x1000,
            0x7FFF_FFFF_FFFF_FFF0,
        ];
        for align in [1u64, 2, 4, 16] {
            for base in [0u64, 1 << 62, 1 << 63, u64::MAX - 64] {
                for e in edges {
                    for a in [base.wrapping_add(e), base.wrapping_sub(e)] {
                        let good = (1..=1u64 << 63).contains(&a) && a % align == 0;
                        assert_eq!(ring_addr_bad(a, align) == 0, good, "{a:#x} align {align}");
                    }
                }
            }
        }
    }
}
