//! `RegionTable` over several `HostRegion`s: holes refuse whole, seams split copies, and the
//! one-region fast path refuses exactly what the full check refuses. (Here rather than in
//! `src/memory/regions.rs`, which forbids `unsafe`: these tests lend the regions host memory.)
#![allow(unsafe_code)]

use std::ptr::NonNull;

use virtq::memory::{HostRegion, RegionTable};
use virtq::{GuestAddress, GuestMemory, MemoryError};

/// A region over `buf` at guest address `base`.
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
    // Inserted out of order, kept sorted.
    let bases: std::vec::Vec<u64> = t.regions().iter().map(|r| r.guest_base().0).collect();
    assert_eq!(bases, [0x1000, 0x1040, 0x2000]);

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

/// Every range the one-region fast path refuses gets the error of a whole-range check.
#[test]
fn fast_path_refusals_match_the_full_check() {
    let (mut a, mut b, mut c) = (vec![0u64; 8], vec![0u64; 8], vec![0u64; 8]);
    let mut t: RegionTable<4> = RegionTable::new();
    t.insert(region(&mut b, 0x1040)).unwrap();
    t.insert(region(&mut c, u64::MAX - 65)).unwrap(); // ends two bytes below 2⁶⁴
    t.insert(region(&mut a, 0x1000)).unwrap();
    let out = |addr, len| MemoryError::OutOfRange { addr, len };

    // Starts in `b` (second in the table), runs into the hole: the whole range is named.
    assert_eq!(
        t.check_range(GuestAddress(0x1070), 17),
        Err(out(0x1070, 17))
    );
    assert_eq!(
        t.read(GuestAddress(0x1070), &mut [0; 17]),
        Err(out(0x1070, 17))
    );
    assert_eq!(
        t.write(GuestAddress(0x1070), &[1; 17]),
        Err(out(0x1070, 17))
    );
    // Starts in `a`, crosses the seam into `b`, then into the hole: nothing written.
    assert_eq!(
        t.write(GuestAddress(0x1038), &[1; 80]),
        Err(out(0x1038, 80))
    );
    let mut back = [0xFFu8; 72];
    t.read(GuestAddress(0x1038), &mut back).unwrap();
    assert_eq!(back, [0; 72]);
    // Starts in the hole below the table, or between regions.
    assert_eq!(t.check_range(GuestAddress(0xfff), 2), Err(out(0xfff, 2)));
    assert_eq!(t.load_u16(GuestAddress(0x2000)), Err(out(0x2000, 2)));
    // Starts in the last region and wraps: overflow, for the whole range.
    let (top, over) = (
        u64::MAX - 8,
        MemoryError::Overflow {
            addr: u64::MAX - 8,
            len: 16,
        },
    );
    assert_eq!(t.check_range(GuestAddress(top), 16), Err(over));
    assert_eq!(t.read(GuestAddress(top), &mut [0; 16]), Err(over));
    // An index word across the seam is one access, so it is refused, not split.
    assert_eq!(t.load_u16(GuestAddress(0x103f)), Err(out(0x103f, 2)));
    // Zero-length ranges are accepted anywhere their address does not overflow.
    assert_eq!(t.check_range(GuestAddress(0x3000), 0), Ok(()));
    assert_eq!(t.read(GuestAddress(0x3000), &mut []), Ok(()));
    // The last region is found by the scan too.
    t.store_u16(GuestAddress(u64::MAX - 5), 0xBEEF).unwrap();
    assert_eq!(t.load_u16(GuestAddress(u64::MAX - 5)), Ok(0xBEEF));
}
