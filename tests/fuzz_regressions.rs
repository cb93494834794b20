//! Regression tests for bugs found by the fuzz targets in `fuzz/` (one test per finding, named
//! after the target and the broken invariant).

use virtq::wire::split_layout as layout;
use virtq::{Features, GuestAddress, QueueError};
use virtq_testkit::{SplitDriver, TestMemory};

/// `split_queue`, "error consumed an entry": with EVENT_IDX, `pop_avail` advanced
/// `next_avail_idx` and marked the head in flight *before* storing `avail_event`; when that store
/// failed (a used ring whose tail lies in the MMIO hole: the queue is used without
/// `check_rings`), it returned a fatal error with the chain consumed but never handed to the
/// device, contradicting "fatal errors are raised before the offending entry is consumed" and
/// leaving a head in flight that nobody can complete.
#[test]
fn split_queue_pop_event_idx_store_failure_consumes_nothing() {
    // RAM [0, 32 KiB), then a hole (small, so the test is quick under Miri).
    let mem = TestMemory::new(&[(0, 0x8000)]);
    let size = 8;
    // Used ring: `used.idx` and the elements are RAM, `avail_event` is in the hole.
    let used = 0x8000 - layout::avail_event_offset(size);
    let mut drv = SplitDriver::new(&mem, size, 0x1000, 0x2000, 0x3000);
    drv.set_desc(0, 0x5000, 16, 0, 0);
    drv.publish(0);
    let mut q = drv.queue(size, Features::EVENT_IDX);
    q.used_ring_addr = GuestAddress(used);
    assert!(q.is_valid());

    let e = q.pop_avail(&mem).expect_err("avail_event is outside RAM");
    assert!(matches!(e, QueueError::Memory(_)) && q.is_broken());
    assert_eq!(q.next_avail_idx, 0, "the entry was consumed");
    assert_eq!(
        q.in_flight(),
        0,
        "a head is in flight that the device never received"
    );
}
