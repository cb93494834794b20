//! The testkit's `GuestMemory` conformance suite (issue 12 item 3; GUIDE §7) on the provided
//! accessors (`HostRegion`, `RegionTable` with holes and seams, one at an odd address, and the
//! testkit's `TestMemory`), and on deliberately broken accessors, each of which it must report.
//!
//! `*_passes_deterministic` tests run under Miri in CI; the full suite (with its writer and
//! reader threads) runs natively.

use std::ptr::NonNull;
use std::sync::atomic::AtomicU16;

use virtq::memory::{HostRegion, RegionTable};
use virtq::{GuestAddress, GuestMemory, MemoryError};
use virtq_testkit::TestMemory;
use virtq_testkit::conformance::{self, Check, Layout, Report};

/// Page-aligned host memory made of 16-bit atomics (the only way the region accesses it).
#[repr(C, align(4096))]
struct Ram([AtomicU16; 1024]);

fn ram() -> Box<Ram> {
    Box::new(Ram(std::array::from_fn(|_| AtomicU16::new(0))))
}

/// A region of `len` bytes at guest `base`, `skip` bytes into `ram`.
fn region(ram: &Ram, skip: usize, base: u64, len: usize) -> HostRegion {
    assert!(skip + len <= std::mem::size_of::<Ram>());
    let p = ram.0.as_ptr().cast::<u8>().cast_mut().wrapping_add(skip);
    // SAFETY: in bounds of `ram` (asserted), which outlives the region in every test and is
    // accessed only through regions that keep the same 16-bit grid.
    unsafe { HostRegion::new(GuestAddress(base), NonNull::new(p).unwrap(), len) }.unwrap()
}

fn assert_passes(report: &Report) {
    report.assert_ok();
    assert!(report.calls > 1000, "the suite probed: {report}");
}

const HOST_BASE: u64 = 0x1000;
const HOST_LEN: usize = 256;

#[test]
fn host_region_passes_deterministic() {
    let r = ram();
    let mem = region(&r, 0, HOST_BASE, HOST_LEN);
    let layout = Layout::new(&[(HOST_BASE, HOST_LEN as u64)]);
    assert_passes(&conformance::check_deterministic(&mem, &layout));
}

#[test]
fn host_region_passes() {
    let r = ram();
    let mem = region(&r, 0, HOST_BASE, HOST_LEN);
    let report = conformance::check(&mem, &Layout::new(&[(HOST_BASE, HOST_LEN as u64)]));
    assert_passes(&report);
    // The writer and reader threads ran (notes only say how much they overlapped).
    assert!(report.calls > 60_000, "atomicity was checked: {report}");
    println!("{report}");
}

/// At an odd host pointer no word is accessible; the suite checks that `check_u16_range` says
/// so and that copies still work, and notes that it could not race on an index word.
#[test]
fn odd_host_region_passes_deterministic() {
    let r = ram();
    let mem = region(&r, 1, HOST_BASE, HOST_LEN - 1);
    let layout = Layout::new(&[(HOST_BASE, HOST_LEN as u64 - 1)]);
    assert_passes(&conformance::check_deterministic(&mem, &layout));
    let atomic = conformance::check_index_atomicity(&mem, &layout, 10);
    assert!(atomic.is_ok() && atomic.notes.len() == 1, "{atomic}");
}

/// RAM at address 0, two regions with a seam at an odd address (host-contiguous), a hole, two
/// regions with an even seam (host-discontiguous), and a region ending at the top of the
/// address space.
const TABLE: [(u64, u64); 6] = [
    (0, 0x40),
    (0x1000, 0x41),
    (0x1041, 0xBF),
    (0x2000, 0x100),
    (0x2100, 0x80),
    (u64::MAX - 0x40, 0x40),
];

fn table(r: &Ram) -> RegionTable<6> {
    let mut t = RegionTable::new();
    let mut skip = 0usize;
    for (i, &(base, len)) in TABLE.iter().enumerate() {
        // The odd seam's two regions are host-contiguous; the others start on fresh words.
        if i != 2 {
            skip = skip.next_multiple_of(64);
        }
        let len = usize::try_from(len).unwrap();
        t.insert(region(r, skip, base, len)).unwrap();
        skip += len;
    }
    t
}

#[test]
fn region_table_passes_deterministic() {
    let r = ram();
    assert_passes(&conformance::check_deterministic(
        &table(&r),
        &Layout::new(&TABLE),
    ));
}

#[test]
fn region_table_passes() {
    let r = ram();
    let t = table(&r);
    assert_passes(&conformance::check(&t, &Layout::new(&TABLE)));
    // The odd seam really splits a word, and the suite saw `check_u16_range` refuse it.
    assert_eq!(
        t.check_u16_range(GuestAddress(0x1000), 0x100),
        Err(MemoryError::OutOfRange {
            addr: 0x1040,
            len: 2
        })
    );
}

const TEST_RAM: [(u64, u64); 3] = [(0x1000, 0x100), (0x1100, 0x100), (0x4000, 0x200)];

#[test]
fn test_memory_passes_deterministic() {
    let mem = TestMemory::new(&TEST_RAM);
    assert_passes(&conformance::check_deterministic(
        &mem,
        &Layout::new(&TEST_RAM),
    ));
}

#[test]
fn test_memory_passes() {
    let mem = TestMemory::new(&TEST_RAM);
    assert_passes(&conformance::check(&mem, &Layout::new(&TEST_RAM)));
}

/// A layout that does not match the memory is reported too (the suite is not vacuous): the
/// memory has a hole where the layout claims RAM.
#[test]
fn wrong_layout_is_reported() {
    let mem = TestMemory::new(&TEST_RAM[..2]);
    let report = conformance::check_deterministic(&mem, &Layout::new(&TEST_RAM));
    assert!(report.failed(Check::RangeCheck), "{report}");
}

/// Broken accessors, each over a correct `TestMemory`, each breaking one rule.
struct Broken {
    inner: TestMemory,
    flaw: Flaw,
}

#[derive(Clone, Copy, PartialEq)]
enum Flaw {
    /// `write` copies the bytes that are RAM, then reports the range out of range.
    PartialWrite,
    /// `load_u16` / `store_u16` as two byte accesses, the store yielding between them.
    Tearing,
    /// Range checks compute the end with wrapping arithmetic.
    WrappingEnd,
}

const BROKEN_RAM: [(u64, u64); 1] = [(0x1000, 0x100)];

impl Broken {
    fn new(flaw: Flaw) -> Self {
        Self {
            inner: TestMemory::new(&BROKEN_RAM),
            flaw,
        }
    }

    /// The naive check: start inside RAM, `start + len` (wrapping) not past its end.
    fn wrapping_check(addr: GuestAddress, len: u64) -> Result<(), MemoryError> {
        let (base, size) = BROKEN_RAM[0];
        let end = addr.0.wrapping_add(len);
        if len == 0 || (addr.0 >= base && end <= base + size) {
            Ok(())
        } else {
            Err(MemoryError::OutOfRange { addr: addr.0, len })
        }
    }
}

impl GuestMemory for Broken {
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.inner.read(addr, buf)
    }

    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError> {
        if self.flaw == Flaw::PartialWrite
            && self.inner.check_range(addr, buf.len() as u64).is_err()
        {
            for (i, b) in buf.iter().enumerate() {
                let _ = self
                    .inner
                    .write(GuestAddress(addr.0.wrapping_add(i as u64)), &[*b]);
            }
            return Err(MemoryError::OutOfRange {
                addr: addr.0,
                len: buf.len() as u64,
            });
        }
        self.inner.write(addr, buf)
    }

    fn load_u16(&self, addr: GuestAddress) -> Result<u16, MemoryError> {
        if self.flaw != Flaw::Tearing {
            return self.inner.load_u16(addr);
        }
        self.inner.check_u16_range(addr, 2)?;
        let (mut lo, mut hi) = ([0u8], [0u8]);
        self.inner.read(addr, &mut lo)?;
        self.inner.read(GuestAddress(addr.0 + 1), &mut hi)?;
        Ok(u16::from_le_bytes([lo[0], hi[0]]))
    }

    fn store_u16(&self, addr: GuestAddress, value: u16) -> Result<(), MemoryError> {
        if self.flaw != Flaw::Tearing {
            return self.inner.store_u16(addr, value);
        }
        self.inner.check_u16_range(addr, 2)?;
        let [lo, hi] = value.to_le_bytes();
        self.inner.write(addr, &[lo])?;
        std::thread::yield_now();
        self.inner.write(GuestAddress(addr.0 + 1), &[hi])
    }

    fn check_range(&self, addr: GuestAddress, len: u64) -> Result<(), MemoryError> {
        if self.flaw == Flaw::WrappingEnd {
            return Self::wrapping_check(addr, len);
        }
        self.inner.check_range(addr, len)
    }
}

#[test]
fn partial_write_is_reported() {
    let mem = Broken::new(Flaw::PartialWrite);
    let report = conformance::check_deterministic(&mem, &Layout::new(&BROKEN_RAM));
    assert!(report.failed(Check::PartialWrite), "{report}");
}

#[test]
fn range_overflowing_2_pow_64_is_reported() {
    let mem = Broken::new(Flaw::WrappingEnd);
    let report = conformance::check_deterministic(&mem, &Layout::new(&BROKEN_RAM));
    assert!(report.failed(Check::Overflow), "{report}");
    // The wrap it accepts: from inside RAM, a length that wraps to below its end.
    assert_eq!(mem.check_range(GuestAddress(0x1000), u64::MAX), Ok(()));
}

#[test]
fn torn_index_words_are_reported() {
    let mem = Broken::new(Flaw::Tearing);
    let layout = Layout::new(&BROKEN_RAM);
    // Its single-threaded behaviour is right: only the concurrent check can see it.
    assert_passes(&conformance::check_deterministic(&mem, &layout));
    let stores = if cfg!(miri) { 100 } else { 20_000 };
    let report = conformance::check_index_atomicity(&mem, &layout, stores);
    assert!(report.failed(Check::TornWord), "{report}");
}
/// A wrapper over the table that forwards everything but `check_u16_range`, so it gets the
/// provided one (range check and an even address), which cannot see the odd seam.
struct SeamBlind<'a>(&'a RegionTable<6>);

impl GuestMemory for SeamBlind<'_> {
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.0.read(addr, buf)
    }
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError> {
        self.0.write(addr, buf)
    }
    fn load_u16(&self, addr: GuestAddress) -> Result<u16, MemoryError> {
        self.0.load_u16(addr)
    }
    fn store_u16(&self, addr: GuestAddress, value: u16) -> Result<(), MemoryError> {
        self.0.store_u16(addr, value)
    }
    fn check_range(&self, addr: GuestAddress, len: u64) -> Result<(), MemoryError> {
        self.0.check_range(addr, len)
    }
}

#[test]
fn check_u16_range_blind_to_a_seam_is_reported() {
    let r = ram();
    let t = table(&r);
    let report = conformance::check_deterministic(&SeamBlind(&t), &Layout::new(&TABLE));
    assert!(report.failed(Check::U16Range), "{report}");
    assert_eq!(report.counts.len(), 1, "only that: {report}");
}
