//! Saved states through serde (feature `serde`, issue #13 "Format"): a `Snapshot` serializes as
//! its bytes, in a real format (JSON here), and deserializes to the same bytes, which restore;
//! input longer than the snapshot type holds is refused by the deserializer.

use virtq::snapshot::Snapshot;
use virtq::split::state::QueueSnapshot;
use virtq::{Features, Queue};
use virtq_testkit::{SplitDriver, TestMemory};

#[test]
fn a_queue_snapshot_round_trips_through_json_and_restores() {
    let mem = TestMemory::m0();
    let mut drv = SplitDriver::standard(&mem, 8);
    let mut q = drv.queue(8, Features::EVENT_IDX);
    for _ in 0..3 {
        drv.add_chain(&[(0x8000, 16, true)]).unwrap();
    }
    let held = q.pop_avail(&mem).unwrap().unwrap();
    let c = q.pop_avail(&mem).unwrap().unwrap();
    q.push_used(&mem, c.head_index(), 4).unwrap();

    let saved = q.save();
    let json = serde_json::to_string(&saved).unwrap();
    let back: QueueSnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, saved);
    assert_eq!(back.as_bytes(), saved.as_bytes());

    let mut r = Queue::new(8);
    r.restore(back.as_bytes(), &mem).unwrap();
    assert_eq!(r.in_flight(), 1);
    assert!(r.in_flight_chain(held.head_index()).is_ok());

    // More bytes than a `Snapshot<8>` holds: refused, not truncated.
    let small: Result<Snapshot<8>, _> = serde_json::from_str(&json);
    assert!(small.is_err());
}
