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
        let pos = self
            .regions
            .iter()
            .position(|r| r.guest_base().0 > start)
            .unwrap_or(self.regions.len());
        let overlaps = self.regions.iter().any(|r| {
            let (rs, re) = (r.guest_base().0, r.guest_base().0.saturating_add(r.len()));
            start < re && rs < end
        });
        if overlaps {
            return Err(MemoryError::BadRegion);
        }
        self.regions
            .insert(pos, region)
            .map_err(|_| MemoryError::BadRegion)
    }

    /// The regions, sorted by guest address.
    pub fn regions(&self) -> &[HostRegion] {
        &self.regions
    }

    /// The region holding `addr`.
    #[inline]
    fn find(&self, addr: GuestAddress) -> Option<&HostRegion> {
        // Regions are sorted: the candidate is the last one starting at or below `addr`.
        let idx = self.regions.partition_point(|r| r.guest_base().0 <= addr.0);
        self.regions
            .get(idx.checked_sub(1)?)
            .filter(|r| r.contains(addr))
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
}

impl<const N: usize> GuestMemory for RegionTable<N> {
    #[inline]
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError> {
        let len = buf.len() as u64;
        // Fast path: the whole range lies in one region (the region re-checks the bounds).
        if let Some(r) = self.find(addr).filter(|r| r.check_range(addr, len).is_ok()) {
            return r.read(addr, buf);
        }
        self.check_range(addr, len)?;
        self.for_each_part(addr, len, |r, a, done, part| {
            let dst = buf.get_mut(done..).and_then(|b| b.get_mut(..part));
            r.read(a, dst.ok_or(MemoryError::OutOfRange { addr: addr.0, len })?)
        })
    }

    #[inline]
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError> {
        let len = buf.len() as u64;
        if let Some(r) = self.find(addr).filter(|r| r.check_range(addr, len).is_ok()) {
            return r.write(addr, buf);
        }
        // Refuse before writing anything.
        self.check_range(addr, len)?;
        self.for_each_part(addr, len, |r, a, done, part| {
            let src = buf.get(done..).and_then(|b| b.get(..part));
            r.write(a, src.ok_or(MemoryError::OutOfRange { addr: addr.0, len })?)
        })
    }

    #[inline]
    fn load_u16(&self, addr: GuestAddress) -> Result<u16, MemoryError> {
        self.find(addr)
            .ok_or(MemoryError::OutOfRange {
                addr: addr.0,
                len: 2,
            })?
            .load_u16(addr)
    }

    #[inline]
    fn store_u16(&self, addr: GuestAddress, value: u16) -> Result<(), MemoryError> {
        self.find(addr)
            .ok_or(MemoryError::OutOfRange {
                addr: addr.0,
                len: 2,
            })?
            .store_u16(addr, value)
    }

    #[inline]
    fn check_range(&self, addr: GuestAddress, len: u64) -> Result<(), MemoryError> {
        if len == 0 {
            return range_end(addr, 0).map(|_| ());
        }
        if self
            .find(addr)
            .is_some_and(|r| r.check_range(addr, len).is_ok())
        {
            return Ok(());
        }
        self.for_each_part(addr, len, |_, _, _, _| Ok(()))
    }
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    extern crate std;
    use super::*;
    use core::ptr::NonNull;
    use std::vec;

    fn region(buf: &mut [u64], base: u64) -> HostRegion {
        let p = NonNull::new(buf.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: each backing buffer outlives the table in the test and is accessed only
        // through it.
        unsafe { HostRegion::new(GuestAddress(base), p, buf.len() * 8) }.unwrap()
    }

    #[test]
    fn holes_refuse_and_seams_split() {
        let (mut a, mut b, mut c) = (vec![0u64; 8], vec![0u64; 8], vec![0u64; 8]);
        let mut t: RegionTable<4> = RegionTable::new();
        t.insert(region(&mut c, 0x2000)).unwrap();
        t.insert(region(&mut a, 0x1000)).unwrap();
        t.insert(region(&mut b, 0x1040)).unwrap(); // adjacent to `a`: a seam at 0x1040
        assert_eq!(
            t.insert(region(&mut [0u64; 1], 0x1008)),
            Err(MemoryError::BadRegion)
        );

        // Seam: one write split across `a` and `b`, read back whole.
        let data: std::vec::Vec<u8> = (0..32).collect();
        t.write(GuestAddress(0x1030), &data).unwrap();
        let mut back = [0u8; 32];
        t.read(GuestAddress(0x1030), &mut back).unwrap();
        assert_eq!(&back[..], &data[..]);

        // Hole between 0x1080 and 0x2000: refused whole, nothing written.
        assert!(t.write(GuestAddress(0x1070), &[0xFF; 32]).is_err());
        let mut tail = [0u8; 16];
        t.read(GuestAddress(0x1070), &mut tail).unwrap();
        assert_eq!(tail, [0u8; 16]);
        assert!(t.check_range(GuestAddress(0x1080), 1).is_err());
        assert!(t.check_range(GuestAddress(0x2000), 64).is_ok());
        assert!(t.check_range(GuestAddress(0x2000), 65).is_err());
        assert!(t.load_u16(GuestAddress(0x1ffe)).is_err());
        t.store_u16(GuestAddress(0x2002), 7).unwrap();
        assert_eq!(t.load_u16(GuestAddress(0x2002)).unwrap(), 7);
    }
}
