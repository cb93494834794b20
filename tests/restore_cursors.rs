//! Writing the public cursor fields of a stopped queue, as a restore by hand does, must leave
//! a queue that behaves as if it had never stopped (issue #13, "After a restore"): the queue's
//! private bookkeeping follows the cursors, as its configuration cache already follows the
//! configuration fields.
//!
//! `split_push_after_moving_next_used_publishes` failed before the fix: starting at 0xFFFF, the
//! first `push_used` wrote the used element but never stored `used.idx`, and returned `Ok`.

use virtq::{Features, QueueError};
use virtq_testkit::{PackedDriver, SplitDriver, TestMemory};

/// Cursor values around the 16-bit wrap, and a few ordinary ones.
const STARTS: [u16; 8] = [0, 1, 0x7FFF, 0x8000, 0xFFFD, 0xFFFE, 0xFFFF, 0x1234];

/// The starts a run covers: all natively, the ones at the wrap under Miri.
fn starts() -> &'static [u16] {
    if cfg!(miri) { &STARTS[4..7] } else { &STARTS }
}

#[test]
fn split_push_after_moving_next_used_publishes() {
    for &start in starts() {
        for event in [false, true] {
            let mem = TestMemory::m0();
            let mut drv = SplitDriver::standard(&mem, 8);
            let features = if event {
                Features::EVENT_IDX
            } else {
                Features::empty()
            };
            let mut q = drv.queue(8, features);
            // The guest's view at the restore point: both indices at `start`, nothing pending.
            drv.avail_idx = start;
            drv.last_used = start;
            mem.poke_u16(drv.avail + 2, start);
            mem.poke_u16(drv.used + 2, start);
            drv.set_used_event(start);
            q.next_avail_idx = start;
            q.next_used_idx = start;
            for round in 0..3u16 {
                let head = drv.add_chain(&[(0x8000, 16, true)]).unwrap();
                let c = q
                    .pop_avail(&mem)
                    .unwrap()
                    .expect("the chain just published");
                assert_eq!(c.head_index(), head);
                q.push_used(&mem, head, 7).unwrap();
                let expect = start.wrapping_add(round + 1);
                assert_eq!(drv.used_idx(), expect, "start {start:#x} round {round}");
                assert_eq!(drv.pop_used(), Some((u32::from(head), 7)));
                // The driver asked for the entry at `used_event` = its cursor: notify.
                assert!(
                    q.needs_notification(&mem).unwrap(),
                    "start {start:#x} round {round}"
                );
                drv.set_used_event(drv.last_used);
            }
            // Asked for the entry after next: the next completion is not signalled (under
            // EVENT_IDX), the one after is.
            drv.set_used_event(drv.last_used.wrapping_add(1));
            for round in 0..2 {
                let head = drv.add_chain(&[(0x8000, 16, true)]).unwrap();
                let c = q.pop_avail(&mem).unwrap().unwrap();
                q.push_used(&mem, c.head_index(), 0).unwrap();
                assert_eq!(drv.pop_used().map(|u| u.0), Some(u32::from(head)));
                let notify = q.needs_notification(&mem).unwrap();
                assert_eq!(
                    notify,
                    !event || round == 1,
                    "start {start:#x} round {round}"
                );
            }
        }
    }
}

#[test]
fn split_pop_after_moving_next_avail_reads_the_index_afresh() {
    for &start in starts() {
        let mem = TestMemory::m0();
        let mut drv = SplitDriver::standard(&mem, 8);
        let mut q = drv.queue(8, Features::empty());
        // The queue has seen work at 0, then is stopped and moved.
        let h0 = drv.add_chain(&[(0x8000, 16, true)]).unwrap();
        assert!(q.has_pending(&mem).unwrap());
        let c = q.pop_avail(&mem).unwrap().unwrap();
        q.push_used(&mem, c.head_index(), 0).unwrap();
        drv.pop_used();
        let _ = h0;
        drv.avail_idx = start;
        drv.last_used = start;
        mem.poke_u16(drv.avail + 2, start);
        mem.poke_u16(drv.used + 2, start);
        q.next_avail_idx = start;
        q.next_used_idx = start;
        assert_eq!(
            q.pop_avail(&mem).unwrap(),
            None,
            "start {start:#x}: nothing new"
        );
        let h = drv.add_chain(&[(0x8000, 16, true)]).unwrap();
        let c = q.pop_avail(&mem).unwrap().unwrap();
        assert_eq!(c.head_index(), h);
        q.push_used(&mem, h, 1).unwrap();
        assert_eq!(drv.used_idx(), start.wrapping_add(1));
    }
}

#[test]
fn packed_push_after_moving_cursors_publishes() {
    for size in [4u16, 5] {
        for slot in 0..size {
            for wrap in [false, true] {
                let mem = TestMemory::m0();
                let mut drv = PackedDriver::standard(&mem, size);
                let mut q = drv.queue(size, Features::empty());
                drv.next_avail = slot;
                drv.avail_wrap = wrap;
                drv.next_used = slot;
                drv.used_wrap = wrap;
                q.next_avail_idx = slot;
                q.avail_wrap_counter = wrap;
                q.next_used_idx = slot;
                q.used_wrap_counter = wrap;
                for round in 0..(2 * size) {
                    let id = drv.add_chain(&[(0x8000, 16, true)]).unwrap();
                    let c = q.pop_avail(&mem).unwrap().expect("published");
                    q.push_used(&mem, &c, 3).unwrap();
                    let u = drv.pop_used();
                    assert_eq!(
                        u.map(|u| (u.id, u.len)),
                        Some((id, 3)),
                        "size {size} slot {slot} wrap {wrap} round {round}"
                    );
                    assert!(q.needs_notification(&mem).unwrap());
                }
                assert_eq!(q.error(), None::<QueueError>);
            }
        }
    }
}

/// After activity, the owner moves the packed used cursor; under EVENT_IDX the driver asks for
/// an interrupt at the new position. The decision must cover the new position, not the
/// window from the old one (a stale base would miss the event).
#[test]
fn packed_interrupt_decision_follows_a_moved_used_cursor() {
    let size = 8;
    for (slot, wrap) in [(0u16, false), (5, true), (7, false), (3, true)] {
        let mem = TestMemory::m0();
        let mut drv = PackedDriver::standard(&mem, size);
        let mut q = drv.queue(size, Features::EVENT_IDX);
        // Activity from the start: two completions and a decision.
        for _ in 0..2 {
            drv.add_chain(&[(0x8000, 16, true)]).unwrap();
            let c = q.pop_avail(&mem).unwrap().unwrap();
            q.push_used(&mem, &c, 1).unwrap();
            drv.pop_used().unwrap();
        }
        let _ = q.needs_notification(&mem).unwrap();
        // Stop, move every cursor (driver and device) to (slot, wrap).
        drv.next_avail = slot;
        drv.avail_wrap = wrap;
        drv.next_used = slot;
        drv.used_wrap = wrap;
        q.next_avail_idx = slot;
        q.avail_wrap_counter = wrap;
        q.next_used_idx = slot;
        q.used_wrap_counter = wrap;
        drv.set_driver_event(drv.used_off_wrap(), 2);
        drv.add_chain(&[(0x8000, 16, true)]).unwrap();
        let c = q.pop_avail(&mem).unwrap().unwrap();
        q.push_used(&mem, &c, 1).unwrap();
        assert!(
            q.needs_notification(&mem).unwrap(),
            "slot {slot} wrap {wrap}: the driver asked for this one"
        );
        drv.pop_used().unwrap();
    }
}
