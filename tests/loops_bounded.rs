//! Every loop in the library is bounded by counters the device owns, never by the guest's
//! timing (issue #12 item 2; hostile class H17). Each test runs a loop over a memory whose
//! answers follow a fixed script ([`Scripted`]): a word the guest flips between every two
//! device reads. The runs are deterministic; a loop that does not end trips the accessor's
//! access limit and fails the test with a message instead of hanging.
//!
//! `packed_drain_with_a_toggling_head_slot_ends` failed before the fix (the limit tripped:
//! `drain` re-enabled kicks, saw the slot available, popped, found nothing, and went round
//! again without charging the budget).

use virtq::in_order::InOrder;
use virtq::packed::PackedChain;
use virtq::wire::split_layout;
use virtq::{ChainError, Completion, Features, QueueError};
use virtq_testkit::scripted::Scripted;
use virtq_testkit::{PackedDriver, SplitDriver, TestMemory, pflags};

const LIMIT: u64 = 10_000;

/// Drain budgets: zero, one, a few and more than the ring; under Miri the middle two.
fn budgets() -> &'static [usize] {
    if cfg!(miri) { &[1, 4] } else { &[0, 1, 4, 64] }
}

fn features(event: bool) -> Features {
    if event {
        Features::EVENT_IDX
    } else {
        Features::empty()
    }
}

/// The guest toggles the flags word of the slot the device reads next between "available" and
/// "not available", in both phases.
#[test]
fn packed_drain_with_a_toggling_head_slot_ends() {
    for event in [false, true] {
        for phase in [0usize, 1] {
            for &budget in budgets() {
                let mem = TestMemory::m0();
                let drv = PackedDriver::standard(&mem, 8);
                let mut q = drv.queue(8, features(event));
                // A real chain body in slot 0 so an "available" read is a chain that can be
                // popped; the flags word is the script.
                drv.set_body(0, 0x8000, 16, 3);
                let flags_at = drv.slot_addr(0) + 14;
                let script = [0, pflags::avail(true)];
                let s = Scripted::new(&mem, LIMIT);
                s.script(flags_at, &[script[phase], script[1 - phase]]);
                let mut chain = PackedChain::<4>::EMPTY;
                let r = q
                    .drain_into(&s, budget, &mut chain, |_| Completion::Deferred)
                    .unwrap();
                assert!(r.processed <= budget.max(1), "{r:?}");
                assert!(
                    s.reads_of(flags_at) <= 2 * budget + 4,
                    "event {event} phase {phase} budget {budget}: {} reads of the flags word",
                    s.reads_of(flags_at)
                );
                if r.processed == 0 && budget > 0 {
                    assert!(r.more, "a budget used up by re-checks reports more: {r:?}");
                }
                // `drain` (default storage) runs the same loop.
                let s2 = Scripted::new(&mem, LIMIT);
                s2.script(flags_at, &[script[phase], script[1 - phase]]);
                let mut q2 = drv.queue(8, features(event));
                let r2 = q2.drain(&s2, budget, |_| Completion::Deferred).unwrap();
                assert!(r2.processed <= budget.max(1) && s2.reads_of(flags_at) <= 2 * budget + 4);
            }
        }
    }
}

/// The guest moves `avail.idx` back and forth by one: the split drain either takes the chain
/// the re-check saw (its shadow of `avail.idx` makes the re-check's answer the pop's) or stops
/// with a typed error when the index goes backwards; it never turns without progress.
#[test]
fn split_drain_with_a_toggling_avail_idx_ends() {
    for event in [false, true] {
        for phase in [0usize, 1] {
            for &budget in budgets() {
                let mem = TestMemory::m0();
                let mut drv = SplitDriver::standard(&mem, 8);
                let mut q = drv.queue(8, features(event));
                let head = drv.add_chain(&[(0x8000, 16, true)]).unwrap();
                let idx_at = drv.avail + split_layout::IDX_OFFSET;
                let s = Scripted::new(&mem, LIMIT);
                let values = [0u16, 1];
                s.script(idx_at, &[values[phase], values[1 - phase]]);
                let r = q.drain(&s, budget, |c| {
                    assert_eq!(c.head_index(), head);
                    Completion::Used(0)
                });
                match r {
                    Ok(r) => assert!(r.processed <= 1, "{r:?}"),
                    Err(QueueError::AvailIdxOverrun { .. }) => assert!(q.is_broken()),
                    Err(e) => panic!("unexpected {e:?}"),
                }
                assert!(
                    s.reads_of(idx_at) <= 2 * budget + 4,
                    "{}",
                    s.reads_of(idx_at)
                );
            }
        }
    }
}

/// The seed loop's pop on an empty ring (which re-arms under EVENT_IDX) reads the index a
/// bounded number of times, whatever it sees.
#[test]
fn empty_pops_are_bounded_whatever_the_index_does() {
    for event in [false, true] {
        let mem = TestMemory::m0();
        let mut drv = SplitDriver::standard(&mem, 8);
        let mut q = drv.queue(8, features(event));
        drv.add_chain(&[(0x8000, 16, true)]).unwrap();
        let idx_at = drv.avail + split_layout::IDX_OFFSET;
        let s = Scripted::new(&mem, LIMIT);
        s.script(idx_at, &[0, 0, 1]);
        let first = q.pop_avail(&s).unwrap();
        // Under EVENT_IDX the empty read is followed by the re-arm's second read (still 0);
        // without it the pop ends after one read.
        assert!(first.is_none());
        assert_eq!(s.reads_of(idx_at), if event { 2 } else { 1 });
        let mut pops = 1;
        while q.pop_avail(&s).unwrap().is_none() {
            pops += 1;
            assert!(pops < 3, "the third read shows the chain");
        }
        assert_eq!(s.reads_of(idx_at), 3);
    }
}

/// A packed NEXT list whose every slot reads "available, NEXT" for ever: the pop stops at the
/// queue size (H15c), reading each slot's flags once.
#[test]
fn packed_next_list_that_never_ends_is_cut_at_the_queue_size() {
    for size in [1u16, 2, 7, 8] {
        let mem = TestMemory::m0();
        let drv = PackedDriver::standard(&mem, size);
        let mut q = drv.queue(size, Features::empty());
        let s = Scripted::new(&mem, LIMIT);
        for i in 0..size {
            drv.set_body(i, 0x8000, 16, i);
            s.script(drv.slot_addr(i) + 14, &[pflags::avail(true) | pflags::N]);
        }
        let mut chain = PackedChain::<8>::EMPTY;
        let e = q.pop_avail_into(&s, &mut chain).unwrap_err();
        assert_eq!(e, QueueError::Chain(ChainError::TooLong));
        for i in 0..size {
            assert_eq!(s.reads_of(drv.slot_addr(i) + 14), 1, "slot {i}");
        }
    }
}

/// In-order bookkeeping with an index that flips: every call ends, errors are typed, and the
/// tracker never holds more than its capacity.
#[test]
fn in_order_pops_over_a_toggling_index_end() {
    let mem = TestMemory::m0();
    let mut drv = SplitDriver::standard(&mem, 4);
    let mut q = drv.queue(4, Features::IN_ORDER);
    for _ in 0..4 {
        drv.add_chain(&[(0x8000, 16, true)]).unwrap();
    }
    let idx_at = drv.avail + split_layout::IDX_OFFSET;
    let s = Scripted::new(&mem, LIMIT);
    s.script(idx_at, &[4, 2, 4, 0]);
    let mut io = InOrder::<2>::new();
    let mut outcomes = Vec::new();
    for _ in 0..8 {
        outcomes.push(io.pop_avail(&mut q, &s).map(|c| c.map(|c| c.head_index())));
        assert!(io.in_flight() <= 2);
    }
    assert!(
        outcomes
            .iter()
            .any(|o| matches!(o, Err(QueueError::InOrderCapacity))),
        "{outcomes:?}"
    );
    assert!(s.accesses() < 100, "{}", s.accesses());
}
