//! One RAM region over a host pointer: the crate's only `unsafe` code.
#![allow(unsafe_code)]

use core::ptr::NonNull;
use core::sync::atomic::Ordering::Relaxed;
use core::sync::atomic::{AtomicU8, AtomicU16};

use super::{GuestAddress, GuestMemory, MemoryError, range_end};

/// A contiguous range of guest RAM mapped at a host pointer.
///
/// `HostRegion` is `Send + Sync`: several host threads may use one region at the same time,
/// with the guest's vCPUs writing the same bytes, and nothing they do through it is undefined
/// behaviour. That is why every access is an atomic operation with `Relaxed` ordering (the
/// queues add the fences they need through [`GuestMemory::fence`]), and all of them use one
/// grid, the naturally aligned 16-bit words of host memory:
///
/// * an index word ([`load_u16`](GuestMemory::load_u16), [`store_u16`](GuestMemory::store_u16))
///   is one `AtomicU16` access, at an even guest address whose host address is even too
///   (otherwise [`MemoryError::Misaligned`]);
/// * a copy moves one `AtomicU16` per word. A copy that starts or ends in the middle of a word
///   reads that word and keeps the byte it wants, or writes its byte with a `fetch_and` that
///   clears it and a `fetch_or` that sets it: two read-modify-writes that leave the other byte
///   of the word alone and, unlike a compare-and-swap loop, cannot be made to spin by a guest
///   writing the word. (A reader racing with that write may see the byte cleared in between;
///   copies promise no atomicity, only index words do.)
/// * A byte at the edge of the region whose word is not wholly inside it (only when the host
///   pointer or the end of the region is odd) is one `AtomicU8` access: the region never
///   touches memory outside it.
///
/// Why one size: Rust (like C++) makes racing atomic accesses of *different sizes* to
/// overlapping bytes undefined unless both are reads, and Miri reports them. A hostile guest
/// can place any buffer over any index word, so a copy through 8-byte atomics (four loads
/// fewer per descriptor) would race with a 16-bit index store from another host thread on the
/// same bytes. Volatile accesses, which this type used before, are not atomic at all: two
/// racing volatile copies are a data race. With the 16-bit grid the hot path stays straight
/// line: a descriptor read (16 bytes at a 16-byte boundary) is eight 16-bit loads, a used
/// element (8 bytes at 4 mod 8) four 16-bit stores.
#[derive(Debug)]
pub struct HostRegion {
    guest_base: GuestAddress,
    host: NonNull<u8>,
    len: u64,
}

// SAFETY: a `HostRegion` is a description of memory that the constructor's contract says stays
// valid and may be shared between threads; it holds no thread-affine state, so moving it to
// another thread is sound.
unsafe impl Send for HostRegion {}
// SAFETY: every access through `&HostRegion` is an atomic access of the one size the region
// uses for that byte (see the type's documentation), and the constructor's contract requires
// every other Rust access to the memory to follow the same rule; so accesses from several
// threads at once are neither data races nor mixed-size atomic races.
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
    ///   while the library may access it;
    /// * any other Rust code that may access the memory while the region does (other threads,
    ///   other `HostRegion`s over the same bytes, a test's guest model) uses only atomic
    ///   accesses of the same size and place as the region: `AtomicU16` on each naturally
    ///   aligned host word wholly inside `host .. host + len`, and `AtomicU8` on an edge byte
    ///   whose word is not (see the type's documentation). Two regions over the same host
    ///   range keep this rule between them, and so do any whose host ranges start and end at
    ///   even addresses. The guest's own vCPUs are outside the Rust memory model and may access
    ///   the memory in any way.
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
    /// The accepting path is `len <= self.len` and `addr - base <= self.len - len` with a
    /// wrapping subtraction: an `addr` below the base wraps to more than `2⁶⁴ - base`, which
    /// the constructor's check (`base + self.len` fits in a u64) puts above `self.len`; and
    /// inside the region `addr + len` cannot overflow either. With `len` a constant (an index
    /// word, a descriptor) that is two compares. Anything else goes through
    /// [`outside`](Self::outside), which names the exact error.
    #[inline]
    fn offset_of(&self, addr: GuestAddress, len: u64) -> Result<usize, MemoryError> {
        let off = addr.0.wrapping_sub(self.guest_base.0);
        if len <= self.len
            && off <= self.len.wrapping_sub(len)
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

    /// The index word at `addr`: inside the region, and both the guest and the host address
    /// even.
    #[inline]
    fn word_ptr(&self, addr: GuestAddress) -> Result<*mut u8, MemoryError> {
        let p = self.ptr_at(self.offset_of(addr, 2)?);
        if !p.addr().is_multiple_of(2) || !addr.0.is_multiple_of(2) {
            return Err(MemoryError::Misaligned { addr: addr.0 });
        }
        Ok(p)
    }

    /// Whether the 16-bit host word holding the byte at `p` (a byte of the region) lies
    /// wholly inside the region. Only a byte at either end can fail this.
    #[inline]
    fn word_inside(&self, p: *mut u8) -> bool {
        let word = p.addr() & !1;
        word.checked_sub(self.host.as_ptr().addr())
            .and_then(|off| (off as u64).checked_add(2))
            .is_some_and(|end| end <= self.len)
    }

    /// Load the byte at `p`, a byte of the region.
    ///
    /// # Safety
    /// `p` lies inside the region.
    #[inline]
    unsafe fn load_byte(&self, p: *mut u8) -> u8 {
        let odd = p.addr() % 2;
        if self.word_inside(p) {
            // SAFETY: the word holding `p` is 2-aligned and wholly inside the region, which the
            // constructor's contract makes valid and accessed only atomically at this size.
            let w = unsafe { word(p.wrapping_sub(odd)) };
            let [first, second] = w.load(Relaxed).to_ne_bytes();
            return if odd == 0 { first } else { second };
        }
        // SAFETY: `p` is inside the region (the caller's guarantee) and, being an edge byte
        // without a word, is accessed only with 8-bit atomics (the constructor's contract).
        unsafe { AtomicU8::from_ptr(p) }.load(Relaxed)
    }

    /// Store `v` at `p`, a byte of the region, leaving the other byte of its word alone.
    ///
    /// # Safety
    /// `p` lies inside the region.
    #[inline]
    unsafe fn store_byte(&self, p: *mut u8, v: u8) {
        let odd = p.addr() % 2;
        if self.word_inside(p) {
            // SAFETY: as in `load_byte`.
            let w = unsafe { word(p.wrapping_sub(odd)) };
            let (keep, set) = if odd == 0 {
                ([0, 0xFF], [v, 0])
            } else {
                ([0xFF, 0], [0, v])
            };
            // Two read-modify-writes, never a compare-and-swap loop: a guest writing the other
            // byte cannot make this spin.
            w.fetch_and(u16::from_ne_bytes(keep), Relaxed);
            w.fetch_or(u16::from_ne_bytes(set), Relaxed);
            return;
        }
        // SAFETY: as in `load_byte`.
        unsafe { AtomicU8::from_ptr(p) }.store(v, Relaxed);
    }

    /// Copy out of the region starting at `src`, one 16-bit atomic load per word.
    ///
    /// A copy of whole words (even host address, even length: a descriptor, a used element)
    /// takes a straight-line path; with the length known at the call site it is just the loads.
    ///
    /// # Safety
    /// `src .. src + dst.len()` lies inside the region.
    #[inline]
    unsafe fn copy_out(&self, src: *mut u8, dst: &mut [u8]) {
        if (src.addr() | dst.len()).is_multiple_of(2) {
            // SAFETY: the caller's guarantee; `src` is even.
            unsafe { copy_out_words(src, dst) };
            return;
        }
        // SAFETY: the caller's guarantee, passed on.
        unsafe { self.copy_out_unaligned(src, dst) }
    }

    /// The general case of [`copy_out`](Self::copy_out), out of line: a byte at an odd start,
    /// the whole words, a byte at an odd end.
    ///
    /// # Safety
    /// `src .. src + dst.len()` lies inside the region.
    #[inline(never)]
    unsafe fn copy_out_unaligned(&self, src: *mut u8, dst: &mut [u8]) {
        let head = (src.addr() % 2).min(dst.len());
        let (head_byte, rest) = dst.split_at_mut(head);
        let (words, tail_byte) = rest.split_at_mut(rest.len() & !1);
        if let Some(b) = head_byte.first_mut() {
            // SAFETY: `src` is the first byte of the caller's range.
            *b = unsafe { self.load_byte(src) };
        }
        let p = src.wrapping_add(head);
        // SAFETY: `p .. p + words.len()` is inside the caller's range and `p` is even.
        unsafe { copy_out_words(p, words) };
        if let Some(b) = tail_byte.first_mut() {
            // SAFETY: the last byte of the caller's range.
            *b = unsafe { self.load_byte(p.wrapping_add(words.len())) };
        }
    }

    /// Copy into the region starting at `dst`, one 16-bit atomic store per word.
    ///
    /// # Safety
    /// `dst .. dst + src.len()` lies inside the region.
    #[inline]
    unsafe fn copy_in(&self, dst: *mut u8, src: &[u8]) {
        if (dst.addr() | src.len()).is_multiple_of(2) {
            // SAFETY: the caller's guarantee; `dst` is even.
            unsafe { copy_in_words(dst, src) };
            return;
        }
        // SAFETY: the caller's guarantee, passed on.
        unsafe { self.copy_in_unaligned(dst, src) }
    }

    /// The general case of [`copy_in`](Self::copy_in), out of line.
    ///
    /// # Safety
    /// `dst .. dst + src.len()` lies inside the region.
    #[inline(never)]
    unsafe fn copy_in_unaligned(&self, dst: *mut u8, src: &[u8]) {
        let head = (dst.addr() % 2).min(src.len());
        let (head_byte, rest) = src.split_at(head);
        let (words, tail_byte) = rest.split_at(rest.len() & !1);
        if let Some(&b) = head_byte.first() {
            // SAFETY: `dst` is the first byte of the caller's range.
            unsafe { self.store_byte(dst, b) };
        }
        let p = dst.wrapping_add(head);
        // SAFETY: `p .. p + words.len()` is inside the caller's range and `p` is even.
        unsafe { copy_in_words(p, words) };
        if let Some(&b) = tail_byte.first() {
            // SAFETY: the last byte of the caller's range.
            unsafe { self.store_byte(p.wrapping_add(words.len()), b) };
        }
    }
}

/// The 16-bit atomic at `p`, for one access.
///
/// # Safety
/// `p` is 2-aligned and `p .. p + 2` is a word wholly inside a region (so valid, and accessed
/// only atomically at 16 bits, by the constructor's contract).
#[inline]
unsafe fn word<'a>(p: *mut u8) -> &'a AtomicU16 {
    // SAFETY: the caller's guarantee; `AtomicU16` has the size and alignment of `u16`.
    unsafe { AtomicU16::from_ptr(p.cast::<u16>()) }
}

/// Copy whole words out of `src` (even) into `dst` (even length).
///
/// # Safety
/// `src` is 2-aligned and `src .. src + dst.len()` lies inside one region.
#[inline]
unsafe fn copy_out_words(src: *mut u8, dst: &mut [u8]) {
    let mut p = src;
    for pair in dst.as_chunks_mut::<2>().0 {
        // SAFETY: `p .. p + 2` lies inside the caller's range (whole pairs of it) and `p` is
        // even (`src` is, and it moves in steps of 2).
        *pair = unsafe { word(p) }.load(Relaxed).to_ne_bytes();
        p = p.wrapping_add(2);
    }
}

/// Copy `src` (even length) into whole words from `dst` (even).
///
/// # Safety
/// `dst` is 2-aligned and `dst .. dst + src.len()` lies inside one region.
#[inline]
unsafe fn copy_in_words(dst: *mut u8, src: &[u8]) {
    let mut p = dst;
    for &pair in src.as_chunks::<2>().0 {
        // SAFETY: as in `copy_out_words`.
        unsafe { word(p) }.store(u16::from_ne_bytes(pair), Relaxed);
        p = p.wrapping_add(2);
    }
}

impl GuestMemory for HostRegion {
    #[inline]
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError> {
        let off = self.offset_of(addr, buf.len() as u64)?;
        // SAFETY: `offset_of` proved `off + buf.len() <= len`.
        unsafe { self.copy_out(self.ptr_at(off), buf) };
        Ok(())
    }

    #[inline]
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError> {
        let off = self.offset_of(addr, buf.len() as u64)?;
        // SAFETY: as in `read`.
        unsafe { self.copy_in(self.ptr_at(off), buf) };
        Ok(())
    }

    #[inline]
    fn load_u16(&self, addr: GuestAddress) -> Result<u16, MemoryError> {
        plant_panic!("memory", addr.0 == 0x5eed);
        let p = self.word_ptr(addr)?;
        // SAFETY: `word_ptr` checked that the two bytes are inside the region and 2-aligned.
        Ok(u16::from_le(unsafe { word(p) }.load(Relaxed)))
    }

    #[inline]
    fn store_u16(&self, addr: GuestAddress, value: u16) -> Result<(), MemoryError> {
        let p = self.word_ptr(addr)?;
        // SAFETY: as in `load_u16`.
        unsafe { word(p) }.store(value.to_le(), Relaxed);
        Ok(())
    }

    #[inline]
    fn check_range(&self, addr: GuestAddress, len: u64) -> Result<(), MemoryError> {
        self.offset_of(addr, len).map(|_| ())
    }

    /// The range is inside the region, `addr` is even, and (for a non-empty range) so is its
    /// host address: then every word of the range is an aligned host word, which
    /// [`load_u16`](GuestMemory::load_u16) accepts. A region whose host pointer's parity
    /// differs from its guest base's has no accessible index word at all.
    #[inline]
    fn check_u16_range(&self, addr: GuestAddress, len: u64) -> Result<(), MemoryError> {
        let off = self.offset_of(addr, len)?;
        if !addr.0.is_multiple_of(2) || (len != 0 && !self.ptr_at(off).addr().is_multiple_of(2)) {
            return Err(MemoryError::Misaligned { addr: addr.0 });
        }
        Ok(())
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

    /// A region at an odd host pointer with an odd end: copies at every offset and length
    /// round-trip, and never touch the bytes just outside the region (its edge bytes have no
    /// whole word inside it, so they are accessed alone).
    #[test]
    fn odd_host_edges_stay_inside_the_region() {
        let mut backing = vec![!0u64; 4];
        let p = NonNull::new(backing.as_mut_ptr().cast::<u8>().wrapping_add(1)).unwrap();
        // SAFETY: bytes 1..30 of `backing` are in bounds; `backing` outlives the region and is
        // read directly only after the region's last use.
        let r = unsafe { HostRegion::new(GuestAddress(0x1000), p, 29) }.unwrap();
        for off in 0..29u64 {
            for len in 0..=(29 - off) as usize {
                let src: std::vec::Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(37)).collect();
                r.write(GuestAddress(0x1000 + off), &src).unwrap();
                let mut dst = vec![0u8; len];
                r.read(GuestAddress(0x1000 + off), &mut dst).unwrap();
                assert_eq!(src, dst, "off {off} len {len}");
            }
        }
        // Guest-even addresses are host-odd: no index word, and `check_u16_range` says so.
        assert_eq!(
            r.load_u16(GuestAddress(0x1002)),
            Err(MemoryError::Misaligned { addr: 0x1002 })
        );
        assert_eq!(
            r.check_u16_range(GuestAddress(0x1002), 4),
            Err(MemoryError::Misaligned { addr: 0x1002 })
        );
        assert_eq!(r.check_range(GuestAddress(0x1002), 4), Ok(()));
        let bytes: std::vec::Vec<u8> = backing.iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(
            (bytes[0], bytes[30], bytes[31]),
            (0xFF, 0xFF, 0xFF),
            "outside untouched"
        );
    }

    /// A one-byte write changes that byte only, whichever half of its word it is.
    #[test]
    fn byte_writes_leave_the_rest_of_the_word_alone() {
        let mut backing = vec![0u64; 1];
        let r = region(&mut backing, 0);
        r.store_u16(GuestAddress(2), 0xBBAA).unwrap();
        r.write(GuestAddress(3), &[0x11]).unwrap();
        assert_eq!(r.load_u16(GuestAddress(2)), Ok(0x11AA));
        r.write(GuestAddress(1), &[0x22, 0x33]).unwrap();
        assert_eq!(r.load_u16(GuestAddress(2)), Ok(0x1133));
        assert_eq!(r.load_u16(GuestAddress(0)), Ok(0x2200));
        assert_eq!(r.check_u16_range(GuestAddress(2), 6), Ok(()));
        assert_eq!(
            r.check_u16_range(GuestAddress(1), 2),
            Err(MemoryError::Misaligned { addr: 1 })
        );
    }
}
