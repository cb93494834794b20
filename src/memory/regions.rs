//! A fixed-capacity table of RAM regions with holes between them.

use heapless::Vec;

use super::{GuestAddress, GuestMemory, HostRegion, MemoryError, range_end};

/// Up to `N` [`HostRegion`]s forming the guest's RAM map; addresses between them are holes.
///
/// Policy for a range that crosses from one region into an *adjacent* one (no hole between):
/// the copy is split at the seam and each part goes to its own region, so a buffer is never
/// treated as one host-contiguous slice (CVE-2013-0311). A range that touches a hole anywhere is
/// refused as a whole, before any byte is copied.
#[derive(Debug)]
pub struct RegionTable<const N: usize> {
    /// Sorted by guest base, non-overlapping.
    regions: Vec<HostRegion, N>,
}

impl<const N: usize> Default for RegionTable<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> RegionTable<N> {
    /// An empty table.
    pub const fn new() -> Self {
        Self {
            regions: Vec::new(),
        }
    }

    /// Add a region. Fails with [`MemoryError::BadRegion`] if it overlaps a region already in the
    /// table or the table is full. Empty regions are ignored.
    pub fn insert(&mut self, region: HostRegion) -> Result<(), MemoryError> {
        if region.is_empty() {
            return Ok(());
        }
        // `HostRegion::new` checked that `base + len` does not overflow.
        let start = region.guest_base().0;
        let end = range_end(region.guest_base(), region.len())?;
        let overlaps = self.regions.iter().any(|r| {
            let (rs, re) = (r.guest_base().0, r.guest_base().0.saturating_add(r.len()));
            start < re && rs < end
        });
        if overlaps {
            return Err(MemoryError::BadRegion);
        }
        self.regions
            .push(region)
            .map_err(|_| MemoryError::BadRegion)?;
        // Move it down to its place in address order: swaps over checked windows, not
        // `Vec::insert`, whose `len + 1` keeps a panic path under `overflow-checks = true`.
        let s = self.regions.as_mut_slice();
        let mut i = s.len();
        while let Some([lo, hi]) = i.checked_sub(2).and_then(|a| s.get_mut(a..i)) {
            if lo.guest_base() < hi.guest_base() {
                break;
            }
            core::mem::swap(lo, hi);
            i = i.wrapping_sub(1);
        }
        Ok(())
    }

    /// The regions, sorted by guest address.
    pub fn regions(&self) -> &[HostRegion] {
        &self.regions
    }

    /// The region holding `addr`.
    ///
    /// A linear scan: tables hold a handful of regions (RAM below and above an MMIO window, a
    /// few hot-plugged ranges), and for those one subtraction and two comparisons per region
    /// cost fewer instructions than a binary search.
    #[inline]
    fn find(&self, addr: GuestAddress) -> Option<&HostRegion> {
        self.regions.iter().find(|r| r.contains(addr))
    }

    /// Walk `[addr, addr + len)` region by region, calling `f(region, addr, offset, part_len)`
    /// where `offset` is the position in the overall range.
    fn for_each_part(
        &self,
        addr: GuestAddress,
        len: u64,
        mut f: impl FnMut(&HostRegion, GuestAddress, usize, usize) -> Result<(), MemoryError>,
    ) -> Result<(), MemoryError> {
        let end = range_end(addr, len)?;
        let out = MemoryError::OutOfRange { addr: addr.0, len };
        let mut cur = addr.0;
        // Each turn consumes at least one byte of a distinct region, so this ends after at most
        // `N` turns.
        while cur < end {
            let region = self.find(GuestAddress(cur)).ok_or(out)?;
            let region_end = region.guest_base().0.saturating_add(region.len());
            let part_end = end.min(region_end);
            let done = usize::try_from(cur.wrapping_sub(addr.0)).map_err(|_| out)?;
            let part = usize::try_from(part_end.wrapping_sub(cur)).map_err(|_| out)?;
            f(region, GuestAddress(cur), done, part)?;
            cur = part_end;
        }
        Ok(())
    }

    // The slow paths below take every range that is not inside the one region holding its
    // first byte: ranges across a seam, and every refusal. They are out of line and cold so
    // that the accessors' fast paths inline into the queue code as one region lookup plus the
    // region's own bounds check, and they redo the whole check from scratch, so which error a
    // refused range gets does not depend on the fast path.

    /// [`check_range`](GuestMemory::check_range) for a range not inside one region.
    #[cold]
    #[inline(never)]
    fn check_split(&self, addr: GuestAddress, len: u64) -> Result<(), MemoryError> {
        self.for_each_part(addr, len, |_, _, _, _| Ok(()))
    }

    /// [`check_u16_range`](GuestMemory::check_u16_range) for a range not inside one region:
    /// RAM, an even start, no seam inside a word, and each region accepting its part.
    #[cold]
    #[inline(never)]
    fn check_u16_split(&self, addr: GuestAddress, len: u64) -> Result<(), MemoryError> {
        self.check_split(addr, len)?;
        if !addr.is_aligned(2) {
            return Err(MemoryError::Misaligned { addr: addr.0 });
        }
        self.for_each_part(addr, len, |r, a, _, part| {
            if !a.is_aligned(2) {
                // A seam at an odd address splits the word before it between two regions;
                // `load_u16` refuses that word as out of range (it is no region's).
                return Err(MemoryError::OutOfRange {
                    addr: a.0 & !1,
                    len: 2,
                });
            }
            r.check_u16_range(a, part as u64)
        })
    }

    /// [`read`](GuestMemory::read) for a range not inside one region: checked whole, then
    /// copied part by part.
    #[cold]
    #[inline(never)]
    fn read_split(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError> {
        let len = buf.len() as u64;
        self.check_split(addr, len)?;
        self.for_each_part(addr, len, |r, a, done, part| {
            let dst = buf.get_mut(done..).and_then(|b| b.get_mut(..part));
            r.read(a, dst.ok_or(MemoryError::OutOfRange { addr: addr.0, len })?)
        })
    }

    /// [`write`](GuestMemory::write) for a range not inside one region: refused before any byte
    /// is written, else copied part by part.
    #[cold]
    #[inline(never)]
    fn write_split(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError> {
        let len = buf.len() as u64;
        self.check_split(addr, len)?;
        self.for_each_part(addr, len, |r, a, done, part| {
            let src = buf.get(done..).and_then(|b| b.get(..part));
            r.write(a, src.ok_or(MemoryError::OutOfRange { addr: addr.0, len })?)
        })
    }
}

// Each fast path hands the range to the region holding its first byte, which checks the whole
// range itself (and, for `write`, refuses before writing anything); only if it refuses does the
// slow path look at the range again.
impl<const N: usize> GuestMemory for RegionTable<N> {
    #[inline]
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError> {
        if let Some(r) = self.find(addr)
            && r.read(addr, buf).is_ok()
        {
            return Ok(());
        }
        self.read_split(addr, buf)
    }

    #[inline]
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError> {
        if let Some(r) = self.find(addr)
            && r.write(addr, buf).is_ok()
        {
            return Ok(());
        }
        self.write_split(addr, buf)
    }

    #[inline]
    fn load_u16(&self, addr: GuestAddress) -> Result<u16, MemoryError> {
        // A `match` rather than `.ok_or(..)?`: with `?` the queue code inlined worse, about 30
        // more instructions per chain in callgrind (benches/queue.rs, `virtq-regions/A`).
        match self.find(addr) {
            Some(r) => r.load_u16(addr),
            None => Err(MemoryError::OutOfRange {
                addr: addr.0,
                len: 2,
            }),
        }
    }

    #[inline]
    fn store_u16(&self, addr: GuestAddress, value: u16) -> Result<(), MemoryError> {
        match self.find(addr) {
            Some(r) => r.store_u16(addr, value),
            None => Err(MemoryError::OutOfRange {
                addr: addr.0,
                len: 2,
            }),
        }
    }

    #[inline]
    fn check_range(&self, addr: GuestAddress, len: u64) -> Result<(), MemoryError> {
        if let Some(r) = self.find(addr)
            && r.check_range(addr, len).is_ok()
        {
            return Ok(());
        }
        // Also the path of a zero-length range outside RAM, which the walk accepts.
        self.check_split(addr, len)
    }

    /// Every aligned word of the range lies wholly in one region that accepts it (its host
    /// address is even): a range across a seam at an odd address is refused, because the word
    /// around the seam belongs to no region and `load_u16` refuses it.
    #[inline]
    fn check_u16_range(&self, addr: GuestAddress, len: u64) -> Result<(), MemoryError> {
        if let Some(r) = self.find(addr)
            && r.check_u16_range(addr, len).is_ok()
        {
            return Ok(());
        }
        self.check_u16_split(addr, len)
    }
}
