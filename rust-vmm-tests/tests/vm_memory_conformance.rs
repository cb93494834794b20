//! The testkit's `GuestMemory` conformance suite (`virtq_testkit::conformance`) on
//! `virtq::memory::VmMemory` over vm-memory's `GuestMemoryMmap`: ranges, holes, seams (one at
//! an odd address), overflow, zero length, misalignment, no partial writes, `check_u16_range`
//! and atomic index words under concurrent writer and reader threads.

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestAddress as Gpa, GuestMemoryMmap};

use virtq::memory::VmMemory;
use virtq::{GuestAddress, GuestMemory, MemoryError};
use virtq_testkit::conformance::{self, Check, Layout};

fn mmap<B: vm_memory::bitmap::NewBitmap>(ram: &[(u64, u64)]) -> GuestMemoryMmap<B> {
    let ranges: Vec<(Gpa, usize)> = ram.iter().map(|&(b, l)| (Gpa(b), l as usize)).collect();
    GuestMemoryMmap::from_ranges(&ranges).unwrap()
}

/// RAM at 0, two regions meeting at a seam, a hole, and one more region.
const RAM: [(u64, u64); 4] = [
    (0, 0x100),
    (0x1000, 0x100),
    (0x1100, 0x100),
    (0x4000, 0x200),
];

#[test]
fn vm_memory_passes_the_conformance_suite() {
    let ram = mmap::<()>(&RAM);
    let report = conformance::check(&VmMemory::new(&ram), &Layout::new(&RAM));
    report.assert_ok();
    assert!(report.calls > 60_000, "the threads ran: {report}");
}

#[test]
fn vm_memory_with_a_dirty_bitmap_passes_the_conformance_suite() {
    let ram = mmap::<AtomicBitmap>(&RAM);
    conformance::check_deterministic(&VmMemory::new(&ram), &Layout::new(&RAM)).assert_ok();
}

#[test]
fn a_seam_at_an_odd_address_passes_and_check_u16_range_sees_it() {
    // Two regions meeting at 0x1101: the aligned word at 0x1100 has a byte in each.
    let odd = [(0x1000, 0x101), (0x1101, 0xff), (0x3000, 0x10)];
    let ram = mmap::<()>(&odd);
    let mem = VmMemory::new(&ram);
    let report = conformance::check_deterministic(&mem, &Layout::new(&odd));
    report.assert_ok();
    assert_eq!(
        mem.check_u16_range(GuestAddress(0x10f0), 0x20),
        Err(MemoryError::Misaligned { addr: 0x1100 })
    );
    // Up to the split word every word is fine; a range ending inside the split word does
    // not contain it.
    mem.check_u16_range(GuestAddress(0x1000), 0x100).unwrap();
    mem.check_u16_range(GuestAddress(0x10f0), 0x11).unwrap();
    // The second region is mapped at a page-aligned host address for guest 0x1101, so each
    // even guest address in it is odd on the host: no word there can be one atomic access,
    // and check_u16_range says so for the same word load_u16 refuses.
    assert_eq!(
        mem.check_u16_range(GuestAddress(0x1102), 0xfe),
        Err(MemoryError::Misaligned { addr: 0x1102 })
    );
    assert_eq!(
        mem.load_u16(GuestAddress(0x1102)),
        Err(MemoryError::Misaligned { addr: 0x1102 })
    );
}

#[test]
fn the_suite_reports_a_broken_vm_memory_adapter() {
    // The same memory through an adapter that forgets the no-partial-write rule: vm-memory's
    // own `Bytes::write`, which writes up to the first hole. The suite must say so.
    struct Naive<'a>(VmMemory<'a, GuestMemoryMmap>);
    impl GuestMemory for Naive<'_> {
        fn read(&self, a: GuestAddress, b: &mut [u8]) -> Result<(), MemoryError> {
            self.0.read(a, b)
        }
        fn write(&self, a: GuestAddress, b: &[u8]) -> Result<(), MemoryError> {
            use vm_memory::Bytes;
            match self.0.inner().write(b, Gpa(a.0)) {
                Ok(n) if n == b.len() => Ok(()),
                _ => self.0.check_range(a, b.len() as u64),
            }
        }
        fn load_u16(&self, a: GuestAddress) -> Result<u16, MemoryError> {
            self.0.load_u16(a)
        }
        fn store_u16(&self, a: GuestAddress, v: u16) -> Result<(), MemoryError> {
            self.0.store_u16(a, v)
        }
        fn check_range(&self, a: GuestAddress, l: u64) -> Result<(), MemoryError> {
            self.0.check_range(a, l)
        }
    }
    let ram = mmap::<()>(&RAM);
    let report = conformance::check_deterministic(&Naive(VmMemory::new(&ram)), &Layout::new(&RAM));
    assert!(!report.is_ok(), "{report}");
    assert!(report.failed(Check::PartialWrite), "{report}");
}
