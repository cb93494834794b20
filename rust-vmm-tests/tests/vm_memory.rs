//! `virtq::memory::VmMemory` against vm-memory's `GuestMemoryMmap`: the `GuestMemory` contract
//! (ranges, holes, seams, overflow, zero length, misalignment, no partial writes, atomic index
//! words under a concurrent writer, typed backend errors) and dirty-page tracking.
//!
//! The testkit's `GuestMemory` conformance suite runs on the adapter in
//! `vm_memory_conformance.rs`; these tests add what is specific to vm-memory (its partial
//! `Bytes::write`, odd seams, dirty bitmaps, backend errors), each naming the contract item it
//! checks.

use std::sync::atomic::{AtomicBool, Ordering};

use vm_memory::bitmap::{AtomicBitmap, BS, Bitmap};
use vm_memory::{
    Bytes, GuestAddress as Gpa, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap,
    GuestMemoryRegion, GuestMemoryRegionBytes, GuestRegionCollection, GuestRegionMmap,
    MemoryRegionAddress, VolatileSlice,
};

use virtq::io::{ChainReader, ChainWriter};
use virtq::memory::VmMemory;
use virtq::{Features, GuestAddress, GuestMemory, MemoryError, Queue};

/// RAM0 `[0, 64 KiB)` and RAM1 `[64 KiB, 128 KiB)` meet at a seam; a hole `[128 KiB, 192 KiB)`;
/// RAM2 `[192 KiB, 256 KiB)`.
const SEAM: u64 = 0x1_0000;
const HOLE: u64 = 0x2_0000;
const RAM2: u64 = 0x3_0000;

fn ram() -> GuestMemoryMmap<()> {
    GuestMemoryMmap::from_ranges(&[
        (Gpa(0), 0x1_0000),
        (Gpa(SEAM), 0x1_0000),
        (Gpa(RAM2), 0x1_0000),
    ])
    .unwrap()
}

fn bytes(ram: &impl Bytes<Gpa, E = GuestMemoryError>, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    ram.read_slice(&mut v, Gpa(addr)).unwrap();
    v
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(1))
        .collect()
}

#[test]
fn copies_cross_a_seam_and_land_in_vm_memory() {
    let ram = ram();
    let mem = VmMemory::new(&ram);
    let data = pattern(64);
    mem.write(GuestAddress(SEAM - 32), &data).unwrap();
    // Written through vm-memory: its own view has the bytes, on both sides of the seam.
    assert_eq!(bytes(&ram, SEAM - 32, 64), data);
    let mut back = vec![0; 64];
    mem.read(GuestAddress(SEAM - 32), &mut back).unwrap();
    assert_eq!(back, data);
    mem.check_range(GuestAddress(SEAM - 32), 64).unwrap();
}

#[test]
fn a_write_that_reaches_a_hole_writes_nothing() {
    // Contract: a failed write must not have written anything. vm-memory alone writes up to
    // the hole and reports a short count; the adapter refuses the whole range first.
    let ram = ram();
    let mem = VmMemory::new(&ram);
    let before = vec![0xaa; 16];
    ram.write_slice(&before, Gpa(HOLE - 16)).unwrap();
    let data = pattern(32);
    assert_eq!(
        mem.write(GuestAddress(HOLE - 16), &data),
        Err(MemoryError::OutOfRange {
            addr: HOLE - 16,
            len: 32
        })
    );
    assert_eq!(bytes(&ram, HOLE - 16, 16), before, "nothing written");
    // The same write through vm-memory's own `Bytes::write` does write the first 16 bytes:
    // the case the adapter exists to prevent.
    assert_eq!(ram.write(&data, Gpa(HOLE - 16)).unwrap(), 16);
    assert_eq!(bytes(&ram, HOLE - 16, 16), data[..16]);
}

#[test]
fn holes_overflow_and_zero_length_follow_the_contract() {
    let ram = ram();
    let mem = VmMemory::new(&ram);
    // Any byte in the hole refuses the whole range, naming it.
    let whole = MemoryError::OutOfRange {
        addr: HOLE - 1,
        len: 2,
    };
    assert_eq!(mem.check_range(GuestAddress(HOLE - 1), 2), Err(whole));
    let mut buf = [0u8; 2];
    assert_eq!(mem.read(GuestAddress(HOLE - 1), &mut buf), Err(whole));
    assert!(matches!(
        mem.check_range(GuestAddress(HOLE), 1),
        Err(MemoryError::OutOfRange { .. })
    ));
    // Past the end of RAM, and a range spanning the hole from RAM1 into RAM2.
    assert!(mem.check_range(GuestAddress(RAM2 + 0x1_0000), 1).is_err());
    assert!(
        mem.check_range(GuestAddress(SEAM), HOLE - SEAM + 0x10)
            .is_err()
    );
    // addr + len past 2^64.
    assert_eq!(
        mem.check_range(GuestAddress(u64::MAX), 2),
        Err(MemoryError::Overflow {
            addr: u64::MAX,
            len: 2
        })
    );
    assert_eq!(
        mem.write(GuestAddress(u64::MAX - 1), &[0; 4]),
        Err(MemoryError::Overflow {
            addr: u64::MAX - 1,
            len: 4
        })
    );
    // A zero-length range names no byte: accepted anywhere, even in the hole.
    mem.check_range(GuestAddress(HOLE + 8), 0).unwrap();
    mem.write(GuestAddress(HOLE + 8), &[]).unwrap();
    mem.read(GuestAddress(HOLE + 8), &mut []).unwrap();
}

#[test]
fn index_words_are_aligned_little_endian_and_in_one_region() {
    let ram = ram();
    let mem = VmMemory::new(&ram);
    mem.store_u16(GuestAddress(0x100), 0x1234).unwrap();
    assert_eq!(
        bytes(&ram, 0x100, 2),
        [0x34, 0x12],
        "little-endian in guest memory"
    );
    assert_eq!(mem.load_u16(GuestAddress(0x100)), Ok(0x1234));
    assert_eq!(
        mem.load_u16(GuestAddress(0x101)),
        Err(MemoryError::Misaligned { addr: 0x101 })
    );
    assert_eq!(
        mem.store_u16(GuestAddress(0x103), 1),
        Err(MemoryError::Misaligned { addr: 0x103 })
    );
    assert!(matches!(
        mem.load_u16(GuestAddress(HOLE)),
        Err(MemoryError::OutOfRange { .. })
    ));
    // Aligned words on both sides of the even seam are fine.
    mem.store_u16(GuestAddress(SEAM - 2), 7).unwrap();
    mem.store_u16(GuestAddress(SEAM), 8).unwrap();
    assert_eq!(bytes(&ram, SEAM - 2, 4), [7, 0, 8, 0]);
}

#[test]
fn an_index_word_across_an_odd_seam_is_refused_not_split() {
    // Two regions meeting at an odd address: the aligned word at 0x1000 has one byte in each.
    let ram =
        GuestMemoryMmap::<()>::from_ranges(&[(Gpa(0), 0x1001), (Gpa(0x1001), 0x1000)]).unwrap();
    let mem = VmMemory::new(&ram);
    ram.write_slice(&[0x11, 0x22], Gpa(0x1000)).unwrap();
    assert_eq!(
        mem.load_u16(GuestAddress(0x1000)),
        Err(MemoryError::Misaligned { addr: 0x1000 })
    );
    assert_eq!(
        mem.store_u16(GuestAddress(0x1000), 0),
        Err(MemoryError::Misaligned { addr: 0x1000 })
    );
    assert_eq!(bytes(&ram, 0x1000, 2), [0x11, 0x22], "nothing stored");
    // Byte copies may still cross that seam.
    mem.write(GuestAddress(0xfff), &[1, 2, 3]).unwrap();
    assert_eq!(bytes(&ram, 0xfff, 3), [1, 2, 3]);
    // A word whose second byte is beyond the end of RAM is out of range, not misaligned.
    let short = GuestMemoryMmap::<()>::from_ranges(&[(Gpa(0), 0x1001)]).unwrap();
    assert!(matches!(
        VmMemory::new(&short).load_u16(GuestAddress(0x1000)),
        Err(MemoryError::OutOfRange { .. })
    ));
}

#[test]
fn index_words_never_tear_under_a_concurrent_writer() {
    // Contract: load_u16 / store_u16 are single-copy atomic. A writer thread flips a word
    // between 0x0000 and 0xffff with vm-memory's atomic store; every load through the adapter
    // must see one of the two, never a mix of their bytes.
    let ram = ram();
    let stop = AtomicBool::new(false);
    let addr = 0x200u64;
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut v = 0u16;
            while !stop.load(Ordering::Relaxed) {
                v = !v;
                ram.store(v, Gpa(addr), Ordering::Relaxed).unwrap();
            }
        });
        let mem = VmMemory::new(&ram);
        for _ in 0..200_000 {
            let w = mem.load_u16(GuestAddress(addr)).unwrap();
            assert!(w == 0 || w == 0xffff, "torn read {w:#06x}");
            mem.store_u16(GuestAddress(addr + 2), w).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
}

// ---- Dirty-page tracking ---------------------------------------------------------------------

const PAGE: u64 = 0x1000;

fn dirty_ram() -> GuestMemoryMmap<AtomicBitmap> {
    GuestMemoryMmap::from_ranges(&[(Gpa(0), 0x10_0000)]).unwrap()
}

/// Pages (of the one region at 0) whose dirty bit is set.
fn dirty_pages(ram: &GuestMemoryMmap<AtomicBitmap>) -> Vec<u64> {
    let region = ram.find_region(Gpa(0)).unwrap();
    (0..region.len() / PAGE)
        .filter(|p| region.bitmap().dirty_at((p * PAGE) as usize))
        .collect()
}

fn clean(ram: &GuestMemoryMmap<AtomicBitmap>) {
    // The region's AtomicBitmap itself (MmapRegion::bitmap), not the slice view.
    let region: &GuestRegionMmap<AtomicBitmap> = ram.find_region(Gpa(0)).unwrap();
    std::ops::Deref::deref(region).bitmap().reset();
    assert!(dirty_pages(ram).is_empty());
}

#[test]
fn writes_and_index_stores_mark_exactly_their_pages_dirty() {
    let ram = dirty_ram();
    let mem = VmMemory::new(&ram);
    clean(&ram);
    // A copy crossing from page 4 into page 5, an index store in page 9.
    mem.write(GuestAddress(5 * PAGE - 8), &[1; 16]).unwrap();
    mem.store_u16(GuestAddress(9 * PAGE + 2), 1).unwrap();
    // Reads and loads leave the bitmap alone.
    let mut buf = [0u8; 64];
    mem.read(GuestAddress(12 * PAGE), &mut buf).unwrap();
    mem.load_u16(GuestAddress(13 * PAGE)).unwrap();
    assert_eq!(dirty_pages(&ram), [4, 5, 9]);
    // A refused write dirties nothing.
    clean(&ram);
    assert!(mem.write(GuestAddress(0x10_0000 - 4), &[0; 8]).is_err());
    assert!(dirty_pages(&ram).is_empty());
}

/// Split ring of 8 (§2.7): descriptor table in page 1, available ring in page 2, used ring
/// in page 3. A blk-like chain: readable header in page 16, writable data in page 32,
/// writable status byte in page 48.
const DESC: u64 = PAGE;
const AVAIL: u64 = 2 * PAGE;
const USED: u64 = 3 * PAGE;
const HDR: u64 = 16 * PAGE;
const DATA: u64 = 32 * PAGE;
const STATUS: u64 = 48 * PAGE;

fn put_desc(ram: &GuestMemoryMmap<AtomicBitmap>, i: u64, addr: u64, len: u32, flags: u16) {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..16].copy_from_slice(&((i + 1) as u16).to_le_bytes());
    ram.write_slice(&d, Gpa(DESC + 16 * i)).unwrap();
}

#[test]
fn a_queue_over_vm_memory_dirties_the_used_ring_and_the_data_it_wrote() {
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    let ram = dirty_ram();
    // The driver (writing through vm-memory directly) builds the chain and publishes head 0.
    put_desc(&ram, 0, HDR, 16, NEXT);
    put_desc(&ram, 1, DATA, 512, NEXT | WRITE);
    put_desc(&ram, 2, STATUS, 1, WRITE);
    ram.write_slice(&0u16.to_le_bytes(), Gpa(AVAIL + 4))
        .unwrap();
    ram.write_slice(&1u16.to_le_bytes(), Gpa(AVAIL + 2))
        .unwrap();
    ram.write_slice(&[0x5a; 16], Gpa(HDR)).unwrap();
    clean(&ram);

    // The device side, through the adapter.
    let mem = VmMemory::new(&ram);
    let mut q = Queue::new(8);
    q.desc_table_addr = GuestAddress(DESC);
    q.avail_ring_addr = GuestAddress(AVAIL);
    q.used_ring_addr = GuestAddress(USED);
    q.features = Features::VERSION_1;
    q.ready = true;
    q.check_rings(&mem).unwrap();
    let chain = q.pop_avail(&mem).unwrap().expect("one chain");
    let mut r: ChainReader<'_, _> = ChainReader::new(&mem, &chain);
    assert_eq!(r.read_obj::<[u8; 16]>().unwrap(), [0x5a; 16]);
    let mut w: ChainWriter<'_, _> = r.into_writer();
    w.write_all(&pattern(512)).unwrap();
    w.write_all(&[0]).unwrap();
    q.push_used(&mem, chain.head_index(), w.bytes_written())
        .unwrap();

    // Used element and used.idx (page 3), data (page 32) and status (page 48): dirty. The
    // descriptor table, available ring and header the device only read: clean.
    assert_eq!(dirty_pages(&ram), [3, 32, 48]);
    assert_eq!(bytes(&ram, USED + 2, 2), [1, 0], "used.idx");
    assert_eq!(
        bytes(&ram, USED + 4, 8),
        [0, 0, 0, 0, 1, 2, 0, 0],
        "used elem {{0, 513}}"
    );
    assert_eq!(bytes(&ram, DATA, 512), pattern(512));
}

// ---- Backend errors ----------------------------------------------------------------------------

/// A guest RAM region, or a region vm-memory knows but cannot map into the host (as for
/// memory of another process or a device BAR): every access to it fails with
/// `HostAddressNotAvailable`.
#[derive(Debug)]
enum Region {
    Ram(GuestRegionMmap<()>),
    Unmapped { start: Gpa, len: u64 },
}

impl GuestMemoryRegion for Region {
    type B = ();

    fn len(&self) -> u64 {
        match self {
            Region::Ram(r) => r.len(),
            Region::Unmapped { len, .. } => *len,
        }
    }

    fn start_addr(&self) -> Gpa {
        match self {
            Region::Ram(r) => r.start_addr(),
            Region::Unmapped { start, .. } => *start,
        }
    }

    fn bitmap(&self) -> BS<'_, ()> {}

    fn get_slice(
        &self,
        offset: MemoryRegionAddress,
        count: usize,
    ) -> vm_memory::GuestMemoryResult<VolatileSlice<'_, BS<'_, ()>>> {
        match self {
            Region::Ram(r) => r.get_slice(offset, count),
            Region::Unmapped { .. } => Err(GuestMemoryError::HostAddressNotAvailable),
        }
    }
}

impl GuestMemoryRegionBytes for Region {}

#[test]
fn backend_failures_are_backend_errors_and_write_nothing() {
    let ram = GuestRegionCollection::from_regions(vec![
        Region::Ram(GuestRegionMmap::from_range(Gpa(0), 0x1000, None).unwrap()),
        Region::Unmapped {
            start: Gpa(0x1000),
            len: 0x1000,
        },
    ])
    .unwrap();
    let mem = VmMemory::new(&ram);
    let before = vec![0xcc; 8];
    ram.write_slice(&before, Gpa(0x1000 - 8)).unwrap();
    // A write from RAM into the unmapped region: Backend (not OutOfRange: the address is the
    // guest's), and nothing written to the RAM part.
    let backend = MemoryError::Backend {
        addr: 0x1000 - 8,
        len: 16,
    };
    assert_eq!(mem.write(GuestAddress(0x1000 - 8), &[1; 16]), Err(backend));
    assert_eq!(bytes(&ram, 0x1000 - 8, 8), before);
    assert_eq!(mem.check_range(GuestAddress(0x1000 - 8), 16), Err(backend));
    assert_eq!(
        mem.load_u16(GuestAddress(0x1002)),
        Err(MemoryError::Backend {
            addr: 0x1002,
            len: 2
        })
    );
    // Past both regions it is a hole again.
    assert!(matches!(
        mem.check_range(GuestAddress(0x2000), 1),
        Err(MemoryError::OutOfRange { .. })
    ));
    // The Display names the failure.
    assert!(backend.to_string().contains("backend"));
}
