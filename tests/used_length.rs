//! The used length a device reports (§2.7.8.1, §2.8.21.2; SPLIT-40, PACKED-30): "the device
//! MUST NOT set `len` larger than the writable bytes" (issue #12 item 6).
//!
//! Decision: `push_used` / `add_used` write the length they are given. The queue knows a chain
//! only by its head (split) or its copy (packed) and does not walk it again at completion: that
//! would read the descriptors a second time (a double fetch, H12) of memory the guest may have
//! changed since. The exact figure comes from the walk the device already made:
//! `ChainWriter::bytes_written`, which never exceeds the writable bytes. These tests pin both
//! halves of that contract.

use virtq::Features;
use virtq::io::ChainWriter;
use virtq_testkit::{PackedDriver, SplitDriver, TestMemory};

#[test]
fn writer_never_reports_more_than_the_writable_bytes() {
    let mem = TestMemory::m0();
    let mut drv = SplitDriver::standard(&mem, 8);
    let mut q = drv.queue(8, Features::empty());
    drv.add_chain(&[(0x8000, 4, false), (0x9000, 10, true), (0xA000, 6, true)])
        .unwrap();
    let c = q.pop_avail(&mem).unwrap().unwrap();
    let mut w: ChainWriter<'_, _> = ChainWriter::new(&mem, &c);
    // Far more than fits: the writer stops at the writable total.
    let n = w.write(&[0x55; 64]).unwrap();
    assert_eq!(n, 16);
    assert!(w.write_all(&[1]).is_err());
    assert_eq!(w.bytes_written(), 16);
    q.push_used(&mem, c.head_index(), w.bytes_written())
        .unwrap();
    assert_eq!(drv.pop_used(), Some((u32::from(c.head_index()), 16)));
}

#[test]
fn push_used_writes_the_length_it_is_given_on_both_rings() {
    // Split: a readable-only chain completed with a length the device invented.
    let mem = TestMemory::m0();
    let mut drv = SplitDriver::standard(&mem, 8);
    let mut q = drv.queue(8, Features::empty());
    drv.add_chain(&[(0x8000, 4, false)]).unwrap();
    let c = q.pop_avail(&mem).unwrap().unwrap();
    q.push_used(&mem, c.head_index(), 4096).unwrap();
    assert_eq!(drv.pop_used(), Some((u32::from(c.head_index()), 4096)));

    // Packed: the same.
    let mem = TestMemory::m0();
    let mut drv = PackedDriver::standard(&mem, 8);
    let mut q = drv.queue(8, Features::empty());
    let id = drv.add_chain(&[(0x8000, 4, false)]).unwrap();
    let c = q.pop_avail(&mem).unwrap().unwrap();
    q.push_used(&mem, &c, 4096).unwrap();
    let u = drv.pop_used().unwrap();
    assert_eq!((u.id, u.len), (id, 4096));
}
