//! Completing packed chains (§2.8.6, §2.8.21.2; PACKED-26, PACKED-30): each popped chain may
//! be completed once. A second completion of the same chain is refused without writing
//! anything, also while other chains are in flight (issue #12 item 6; before the fix the
//! queue only compared counts, so with another chain in flight the second push was accepted
//! and published a used descriptor the driver never asked for).

use virtq::packed::PackedChain;
use virtq::{Features, QueueError};
use virtq_testkit::{PackedDriver, TestMemory};

fn ring_bytes(mem: &TestMemory, drv: &PackedDriver<'_>) -> Vec<u8> {
    let mut v = mem.peek(drv.desc, 16 * usize::from(drv.size));
    v.extend(mem.peek(drv.device_event, 4));
    v
}

#[test]
fn second_completion_of_a_chain_is_refused_while_another_is_in_flight() {
    let mem = TestMemory::m0();
    let mut drv = PackedDriver::standard(&mem, 8);
    let mut q = drv.queue(8, Features::empty());
    let a_id = drv.add_chain(&[(0x8000, 64, true)]).unwrap();
    let b_id = drv
        .add_chain(&[(0x9000, 64, true), (0x9100, 8, true)])
        .unwrap();
    let a = q.pop_avail(&mem).unwrap().unwrap();
    let b = q.pop_avail(&mem).unwrap().unwrap();
    assert_eq!((a.head_index(), b.head_index()), (a_id, b_id));
    q.push_used(&mem, &a, 4).unwrap();
    assert_eq!(q.in_flight(), 1);
    let before = ring_bytes(&mem, &drv);
    assert_eq!(
        q.push_used(&mem, &a, 4),
        Err(QueueError::HeadNotInFlight { head: a_id })
    );
    assert_eq!(
        q.add_used(&mem, &a, 4),
        Err(QueueError::HeadNotInFlight { head: a_id })
    );
    assert_eq!(ring_bytes(&mem, &drv), before, "nothing written");
    assert!(!q.is_broken(), "a device bug, not a fatal guest error");
    // The chain still in flight completes normally, and the driver sees exactly two.
    q.push_used(&mem, &b, 8).unwrap();
    assert_eq!(drv.pop_used().map(|u| u.id), Some(a_id));
    assert_eq!(drv.pop_used().map(|u| u.id), Some(b_id));
    assert_eq!(drv.pop_used(), None);
    assert_eq!(q.in_flight(), 0);
}

/// The same in an IN_ORDER batch: a chain listed twice, or completed before, is refused and
/// nothing is written.
#[test]
fn in_order_batch_with_a_completed_chain_is_refused() {
    let mem = TestMemory::m0();
    let mut drv = PackedDriver::standard(&mem, 8);
    let mut q = drv.queue(8, Features::IN_ORDER);
    for _ in 0..3 {
        drv.add_chain(&[(0x8000, 16, true)]).unwrap();
    }
    let c: Vec<PackedChain> = (0..3)
        .map(|_| q.pop_avail(&mem).unwrap().unwrap())
        .collect();
    q.add_used_in_order(&mem, &c[..1], 16).unwrap();
    q.publish_used(&mem).unwrap();
    let before = ring_bytes(&mem, &drv);
    assert!(q.add_used_in_order(&mem, &c[..2], 16).is_err());
    assert!(q.add_used_in_order(&mem, &[c[1], c[1]], 16).is_err());
    assert_eq!(ring_bytes(&mem, &drv), before);
    q.add_used_in_order(&mem, &c[1..3], 16).unwrap();
    assert_eq!(q.in_flight(), 0);
}

/// A chain held while the ring laps (a receive buffer waiting for a packet while others come
/// and go) keeps its completion, and the chains that reuse its slot get theirs: the in-flight
/// identity is a token, not the ring slot.
#[test]
fn chain_held_over_several_laps_completes_once() {
    let mem = TestMemory::m0();
    let mut drv = PackedDriver::standard(&mem, 4);
    let mut q = drv.queue(4, Features::empty());
    let held_id = drv.add_chain(&[(0x8000, 16, true)]).unwrap();
    let held = q.pop_avail(&mem).unwrap().unwrap();
    let mut completed_ids = Vec::new();
    for round in 0..20u64 {
        let id = drv
            .add_chain(&[(0x9000 + 0x100 * round, 16, true)])
            .unwrap();
        let c = q.pop_avail(&mem).unwrap().unwrap();
        assert_eq!(c.head_index(), id);
        q.push_used(&mem, &c, 1).unwrap();
        // A stale copy of an earlier chain is refused.
        assert!(q.push_used(&mem, &c, 1).is_err());
        let u = drv.pop_used().unwrap();
        completed_ids.push(u.id);
        assert_eq!(q.in_flight(), 1);
    }
    q.push_used(&mem, &held, 2).unwrap();
    assert_eq!(drv.pop_used().map(|u| u.id), Some(held_id));
    assert!(q.push_used(&mem, &held, 2).is_err());
    assert_eq!(completed_ids.len(), 20);
    assert_eq!(q.in_flight(), 0);
}
