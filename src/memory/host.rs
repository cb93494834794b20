//! One RAM region over a host pointer: the crate's only `unsafe` code.
#![allow(unsafe_code)]

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU16, Ordering};

use volatile::VolatilePtr;

use super::{GuestAddress, GuestMemory, MemoryError, range_end};

/// A contiguous range of guest RAM mapped at a host pointer.
///
/// Byte copies use volatile accesses (the guest may change the memory at any time, so the
/// compiler must not invent, merge or elide accesses); index words use `AtomicU16` loads and
/// stores with `Relaxed` ordering, which the language guarantees are single-copy atomic. The
/// queues add the fences.
#[derive(Debug)]
pub struct HostRegion {
    guest_base: GuestAddress,
    host: NonNull<u8>,
    len: u64,
}

// SAFETY: a `HostRegion` is a description of memory that the constructor's contract says stays
// valid and is only ever accessed through volatile or atomic operations; it holds no
// thread-affine state, so moving it to or sharing it with another thread is sound.
unsafe impl Send for HostRegion {}
// SAFETY: see `Send`: every access through `&HostRegion` is a volatile or atomic access.
unsafe impl Sync for HostRegion {}

impl HostRegion {
    /// Describe `len` bytes of guest RAM starting at guest-physical `guest_base`, mapped at
    /// `host` in the hypervisor's address space.
    ///
    /// Fails with [`MemoryError::Overflow`] if the guest or host range wraps around.
    ///
    /// # Safety
    ///
    /// For as long as the returned value (or anything it is moved into) exists:
    /// * `host .. host + len` is valid for reads and writes, and stays mapped;
    /// * the hypervisor does not hold Rust references (`&[u8]`, `&mut [u8]`) into that memory
    ///   while the library may access it; other agents (guest vCPUs, other threads using this
    ///   type) may access it concurrently.
    pub unsafe fn new(
        guest_base: GuestAddress,
        host: NonNull<u8>,
        len: usize,
    ) -> Result<Self, MemoryError> {
        let len64 = len as u64;
        range_end(guest_base, len64)?;
        (host.as_ptr() as usize)
            .checked_add(len)
            .ok_or(MemoryError::Overflow {
                addr: guest_base.0,
                len: len64,
            })?;
        Ok(Self {
            guest_base,
            host,
            len: len64,
        })
    }

    /// First guest-physical address of the region.
    pub const fn guest_base(&self) -> GuestAddress {
        self.guest_base
    }

    /// Length of the region in bytes.
    pub const fn len(&self) -> u64 {
        self.len
    }

    /// Whether the region is empty.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `addr` lies inside the region.
    pub fn contains(&self, addr: GuestAddress) -> bool {
        addr.checked_offset_from(self.guest_base)
            .is_some_and(|off| off < self.len)
    }

    /// Offset of `[addr, addr + len)` inside the region, checked.
    ///
    /// The accepting path needs only `addr - base` and `off + len <= self.len` (both checked):
    /// the constructor proved `base + self.len` fits in a u64, so then `addr + len` does too.
    /// Anything else goes through [`outside`](Self::outside), which names the exact error.
    #[inline]
    fn offset_of(&self, addr: GuestAddress, len: u64) -> Result<usize, MemoryError> {
        if let Some(off) = addr.checked_offset_from(self.guest_base)
            && off.checked_add(len).is_some_and(|end| end <= self.len)
            && let Ok(off) = usize::try_from(off)
        {
            return Ok(off);
        }
        self.outside(addr, len)
    }

    /// `offset_of` for a range not inside the region: an overflowing range is refused first;
    /// a zero-length range names no byte and is accepted wherever it lies (the
    /// [`GuestMemory::check_range`] contract, as `RegionTable` does), at offset 0 where
    /// nothing is copied; any other range is out of range.
    #[cold]
    #[inline(never)]
    fn outside(&self, addr: GuestAddress, len: u64) -> Result<usize, MemoryError> {
        range_end(addr, len)?;
        if len == 0 {
            return Ok(0);
        }
        Err(MemoryError::OutOfRange { addr: addr.0, len })
    }

    #[inline]
    fn ptr_at(&self, off: usize) -> *mut u8 {
        // In bounds: `off + len <= self.len` was checked by `offset_of`, and the constructor
        // checked that `host + len` does not wrap.
        self.host.as_ptr().wrapping_add(off)
    }

    #[inline]
    fn word_ptr(&self, addr: GuestAddress) -> Result<NonNull<u16>, MemoryError> {
        let off = self.offset_of(addr, 2)?;
        // SAFETY: `offset_of` proved `off + 2 <= self.len`, so `host + off` stays inside the
        // mapping the constructor's contract describes (which it checked does not wrap).
        let p = unsafe { self.host.add(off) };
        if !p.addr().get().is_multiple_of(2) || !addr.0.is_multiple_of(2) {
            return Err(MemoryError::Misaligned { addr: addr.0 });
        }
        Ok(p.cast::<u16>())
    }
}

/// Copy out of `src` with volatile accesses: single bytes up to an 8-byte boundary, then
/// aligned 8-byte loads, then the tail. (A volatile `[u8; 8]` access would be split into eight
/// byte loads; an aligned `u64` is one load.)
///
/// A copy of whole aligned words (a descriptor: 16 bytes at a 16-byte boundary) takes a
/// straight-line path instead: with the length known at the call site it is just the loads.
///
/// # Safety
/// `src .. src + dst.len()` is valid for reads.
#[inline]
unsafe fn volatile_copy_out(src: *mut u8, dst: &mut [u8]) {
    if (src.addr() | dst.len()).is_multiple_of(8) {
        let mut p = src;
        for chunk in dst.chunks_exact_mut(8) {
            // SAFETY: `p .. p + 8` lies inside the caller's range (whole chunks of it) and `p`
            // is 8-aligned (`src` is, and it moves in steps of 8).
            let v = unsafe { VolatilePtr::new(NonNull::new_unchecked(p.cast::<u64>())) }.read();
            chunk.copy_from_slice(&v.to_ne_bytes());
            p = p.wrapping_add(8);
        }
        return;
    }
    // SAFETY: the caller's guarantee, passed on.
    unsafe { volatile_copy_out_bytes(src, dst) }
}

/// The general case of [`volatile_copy_out`], out of line: any alignment, any length.
///
/// # Safety
/// `src .. src + dst.len()` is valid for reads.
#[inline(never)]
unsafe fn volatile_copy_out_bytes(src: *mut u8, dst: &mut [u8]) {
    let head = src.align_offset(8).min(dst.len());
    let (head_bytes, rest) = dst.split_at_mut(head);
    let mut p = src;
    for byte in head_bytes {
        // SAFETY: `p` is inside the caller's range (one of the first `head` bytes).
        *byte = unsafe { VolatilePtr::new(NonNull::new_unchecked(p)) }.read();
        p = p.wrapping_add(1);
    }
    let mut chunks = rest.chunks_exact_mut(8);
    for chunk in &mut chunks {
        // SAFETY: `p .. p + 8` lies inside the caller's range and `p` is 8-aligned (it was
        // advanced to an 8-byte boundary above and moves in steps of 8).
        let v = unsafe { VolatilePtr::new(NonNull::new_unchecked(p.cast::<u64>())) }.read();
        chunk.copy_from_slice(&v.to_ne_bytes());
        p = p.wrapping_add(8);
    }
    for byte in chunks.into_remainder() {
        // SAFETY: `p` is inside the caller's range (one of the last `len % 8` bytes).
        *byte = unsafe { VolatilePtr::new(NonNull::new_unchecked(p)) }.read();
        p = p.wrapping_add(1);
    }
}

/// Copy into `dst` with volatile accesses, aligned 8 bytes at a time where possible.
///
/// A copy of whole aligned words takes a straight-line path instead: 8-byte stores, or 4-byte
/// stores for a used element (8 bytes at `used + 4 + 8 * slot`: when the used ring is 8-byte
/// aligned, no slot is).
///
/// # Safety
/// `dst .. dst + src.len()` is valid for writes.
#[inline]
unsafe fn volatile_copy_in(dst: *mut u8, src: &[u8]) {
    let words = dst.addr() | src.len();
    if words.is_multiple_of(8) {
        let mut p = dst;
        for chunk in src.chunks_exact(8) {
            let mut v = [0u8; 8];
            v.copy_from_slice(chunk);
            // SAFETY: `p .. p + 8` lies inside the caller's range (whole chunks of it) and `p`
            // is 8-aligned (`dst` is, and it moves in steps of 8).
            unsafe { VolatilePtr::new(NonNull::new_unchecked(p.cast::<u64>())) }
                .write(u64::from_ne_bytes(v));
            p = p.wrapping_add(8);
        }
        return;
    }
    if words.is_multiple_of(4) {
        let mut p = dst;
        for chunk in src.chunks_exact(4) {
            let mut v = [0u8; 4];
            v.copy_from_slice(chunk);
            // SAFETY: as above, in steps of 4 from a 4-aligned `dst`.
            unsafe { VolatilePtr::new(NonNull::new_unchecked(p.cast::<u32>())) }
                .write(u32::from_ne_bytes(v));
            p = p.wrapping_add(4);
        }
        return;
    }
    // SAFETY: the caller's guarantee, passed on.
    unsafe { volatile_copy_in_bytes(dst, src) }
}

/// The general case of [`volatile_copy_in`], out of line: any alignment, any length.
///
/// # Safety
/// `dst .. dst + src.len()` is valid for writes.
#[inline(never)]
unsafe fn volatile_copy_in_bytes(dst: *mut u8, src: &[u8]) {
    let head = dst.align_offset(8).min(src.len());
    let (head_bytes, rest) = src.split_at(head);
    let mut p = dst;
    for byte in head_bytes {
        // SAFETY: `p` is inside the caller's range (one of the first `head` bytes).
        unsafe { VolatilePtr::new(NonNull::new_unchecked(p)) }.write(*byte);
        p = p.wrapping_add(1);
    }
    let mut chunks = rest.chunks_exact(8);
    for chunk in &mut chunks {
        let mut v = [0u8; 8];
        v.copy_from_slice(chunk);
        // SAFETY: `p .. p + 8` lies inside the caller's range and `p` is 8-aligned.
        unsafe { VolatilePtr::new(NonNull::new_unchecked(p.cast::<u64>())) }
            .write(u64::from_ne_bytes(v));
        p = p.wrapping_add(8);
    }
    for byte in chunks.remainder() {
        // SAFETY: `p` is inside the caller's range (one of the last `len % 8` bytes).
        unsafe { VolatilePtr::new(NonNull::new_unchecked(p)) }.write(*byte);
        p = p.wrapping_add(1);
    }
}

impl GuestMemory for HostRegion {
    #[inline]
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError> {
        let off = self.offset_of(addr, buf.len() as u64)?;
        // SAFETY: `offset_of` proved `off + buf.len() <= len`, and the constructor's contract
        // makes `host .. host + len` valid for reads.
        unsafe { volatile_copy_out(self.ptr_at(off), buf) };
        Ok(())
    }

    #[inline]
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError> {
        let off = self.offset_of(addr, buf.len() as u64)?;
        // SAFETY: as in `read`, for writes.
        unsafe { volatile_copy_in(self.ptr_at(off), buf) };
        Ok(())
    }

    #[inline]
    fn load_u16(&self, addr: GuestAddress) -> Result<u16, MemoryError> {
        let p = self.word_ptr(addr)?;
        // SAFETY: `word_ptr` checked that the two bytes are inside the region and 2-aligned;
        // the constructor's contract allows concurrent atomic access to them.
        let word = unsafe { AtomicU16::from_ptr(p.as_ptr()) };
        Ok(u16::from_le(word.load(Ordering::Relaxed)))
    }

    #[inline]
    fn store_u16(&self, addr: GuestAddress, value: u16) -> Result<(), MemoryError> {
        let p = self.word_ptr(addr)?;
        // SAFETY: as in `load_u16`.
        let word = unsafe { AtomicU16::from_ptr(p.as_ptr()) };
        word.store(value.to_le(), Ordering::Relaxed);
        Ok(())
    }

    #[inline]
    fn check_range(&self, addr: GuestAddress, len: u64) -> Result<(), MemoryError> {
        self.offset_of(addr, len).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;

    fn region(buf: &mut [u64], base: u64) -> HostRegion {
        let len = buf.len() * 8;
        let p = NonNull::new(buf.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `buf` outlives the region in every test and is only accessed through it.
        unsafe { HostRegion::new(GuestAddress(base), p, len) }.unwrap()
    }

    #[test]
    fn copies_roundtrip_at_every_length_and_offset() {
        let mut backing = vec![0u64; 8];
        let r = region(&mut backing, 0x1000);
        for off in 0..16u64 {
            for len in 0..=40usize {
                let src: std::vec::Vec<u8> = (0..len).map(|i| (i as u8) ^ 0xA5).collect();
                r.write(GuestAddress(0x1000 + off), &src).unwrap();
                let mut dst = vec![0u8; len];
                r.read(GuestAddress(0x1000 + off), &mut dst).unwrap();
                assert_eq!(src, dst);
            }
        }
    }

    #[test]
    fn bounds_are_exact() {
        let mut backing = vec![0u64; 8];
        let r = region(&mut backing, 0x1000);
        assert!(r.check_range(GuestAddress(0x1000), 64).is_ok());
        assert!(r.check_range(GuestAddress(0x103f), 1).is_ok());
        assert!(r.check_range(GuestAddress(0x1040), 0).is_ok());
        assert!(matches!(
            r.check_range(GuestAddress(0x1040), 1),
            Err(MemoryError::OutOfRange { .. })
        ));
        assert!(matches!(
            r.check_range(GuestAddress(0xfff), 1),
            Err(MemoryError::OutOfRange { .. })
        ));
        assert!(matches!(
            r.check_range(GuestAddress(u64::MAX - 1), 4),
            Err(MemoryError::Overflow { .. })
        ));
        let mut big = [0u8; 65];
        assert!(r.read(GuestAddress(0x1000), &mut big).is_err());
    }

    /// A zero-length range is accepted anywhere its address does not overflow, inside the
    /// region or not, like `RegionTable` (found by the `memory` fuzz target: `HostRegion`
    /// refused it outside the region).
    #[test]
    fn zero_length_ranges_are_accepted_anywhere() {
        let mut backing = vec![0u64; 2];
        let r = region(&mut backing, 0x1000);
        for addr in [0, 0xfff, 0x1000, 0x1010, 0x1011, 0x9000, u64::MAX] {
            let a = GuestAddress(addr);
            assert_eq!(r.check_range(a, 0), Ok(()), "{addr:#x}");
            assert_eq!(r.read(a, &mut []), Ok(()), "{addr:#x}");
            assert_eq!(r.write(a, &[]), Ok(()), "{addr:#x}");
        }
        // Still refused: one byte past the end, and a range that overflows.
        assert!(r.check_range(GuestAddress(0x1010), 1).is_err());
        assert!(matches!(
            r.check_range(GuestAddress(u64::MAX), 2),
            Err(MemoryError::Overflow { .. })
        ));
        assert_eq!(backing, [0, 0], "nothing written");
    }

    #[test]
    fn index_words_are_little_endian_and_aligned() {
        let mut backing = vec![0u64; 2];
        let r = region(&mut backing, 0);
        r.store_u16(GuestAddress(2), 0x1234).unwrap();
        let mut b = [0u8; 2];
        r.read(GuestAddress(2), &mut b).unwrap();
        assert_eq!(b, [0x34, 0x12]);
        assert_eq!(r.load_u16(GuestAddress(2)).unwrap(), 0x1234);
        assert_eq!(
            r.load_u16(GuestAddress(3)),
            Err(MemoryError::Misaligned { addr: 3 })
        );
        assert!(r.load_u16(GuestAddress(15)).is_err());
        assert!(r.load_u16(GuestAddress(16)).is_err());
    }
}
