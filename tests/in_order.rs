//! VIRTIO_F_IN_ORDER completion through `virtq::in_order::InOrder` (§2.7.9; SPLIT-43,
//! SPLIT-54..56; hostile class H16).

use proptest::prelude::*;
use virtq::in_order::InOrder;
use virtq::wire::split_layout as layout;
use virtq::{Features, Queue, QueueError};
use virtq_testkit::{AccessKind, SplitDriver, TestMemory};

const BUF: u64 = 0x4000;
const POISON: u8 = 0xCC;

fn ram() -> TestMemory {
    TestMemory::new(&[(0, 0x5000)])
}

/// A queue of `size` with IN_ORDER negotiated and its used ring poisoned, so a used element the
/// device did not write is visible.
fn setup(mem: &TestMemory, size: u16) -> (SplitDriver<'_>, Queue) {
    let drv = SplitDriver::standard(mem, size);
    mem.fill(
        drv.used + layout::RING_OFFSET,
        usize::from(size) * layout::USED_ELEM_SIZE as usize,
        POISON,
    );
    let q = drv.queue(size, Features::IN_ORDER | Features::EVENT_IDX);
    (drv, q)
}

const POISON_ELEM: (u32, u32) = (0xCCCC_CCCC, 0xCCCC_CCCC);

/// Number of `used.idx` stores in an access log.
fn idx_stores(log: &[virtq_testkit::Access], drv: &SplitDriver) -> usize {
    log.iter()
        .filter(|a| a.kind == AccessKind::Store16 && a.addr == drv.used + layout::IDX_OFFSET)
        .count()
}

/// H16: heads 0 (chain 0→1→2) and 3 (single); the device finishes 3 first, then 0. The used
/// ring gets 0 then 3, published with one `used.idx` store; a completion for head 5 (never
/// made available) is an error that touches no guest memory.
#[test]
fn h16_out_of_order_completions_are_published_in_order() {
    let mem = ram();
    let (mut drv, mut q) = setup(&mem, 8);
    let mut io = InOrder::<8>::new();
    let h0 = drv
        .add_chain(&[
            (BUF, 16, false),
            (BUF + 0x100, 16, true),
            (BUF + 0x200, 16, true),
        ])
        .unwrap();
    let h3 = drv.add_chain(&[(BUF + 0x300, 64, true)]).unwrap();
    assert_eq!((h0, h3), (0, 3));
    assert_eq!(io.pop_avail(&mut q, &mem).unwrap().unwrap().head_index(), 0);
    assert_eq!(io.pop_avail(&mut q, &mem).unwrap().unwrap().head_index(), 3);
    assert!(io.pop_avail(&mut q, &mem).unwrap().is_none());
    assert_eq!(io.in_flight(), 2);

    mem.start_recording();
    assert_eq!(
        io.complete(&mut q, &mem, 3, 64).unwrap(),
        0,
        "3 waits for 0"
    );
    assert!(mem.take_log().is_empty(), "nothing written while 3 is held");
    assert_eq!(drv.used_idx(), 0);

    mem.start_recording();
    assert_eq!(io.complete(&mut q, &mem, 0, 32).unwrap(), 2);
    assert_eq!(idx_stores(&mem.take_log(), &drv), 1);
    assert_eq!(drv.used_idx(), 2);
    assert_eq!(drv.used_elem(0), (0, 32));
    assert_eq!(drv.used_elem(1), (3, 64));
    assert!(
        q.needs_notification(&mem).unwrap(),
        "used_event 0 was written"
    );
    assert_eq!((io.in_flight(), q.in_flight()), (0, 0));

    // Head 5 is not in flight (and neither are 0 and 3 any more).
    mem.start_recording();
    for head in [5u16, 0, 3, 8, u16::MAX] {
        assert_eq!(
            io.complete(&mut q, &mem, head, 1),
            Err(QueueError::HeadNotInFlight { head })
        );
        assert_eq!(
            io.complete_batch(&mut q, &mem, head, 1),
            Err(QueueError::HeadNotInFlight { head })
        );
    }
    let log = mem.take_log();
    assert!(
        log.is_empty(),
        "bogus completion touched guest memory: {log:?}"
    );
    assert!(!q.is_broken(), "a device bug, not a fatal guest error");
    assert_eq!(drv.used_idx(), 2);
    assert_eq!(drv.used_elem(2), POISON_ELEM);
}

/// SPLIT-55: a batch completed with one used element carrying the last head, at the position
/// of the batch's first entry; `used.idx` advances by the batch size in one store.
#[test]
fn batch_with_only_the_last_element() {
    let mem = ram();
    let (mut drv, mut q) = setup(&mem, 8);
    let mut io = InOrder::<8>::new();
    let heads: Vec<u16> = (0..4)
        .map(|i| drv.add_chain(&[(BUF + 0x100 * i, 16, true)]).unwrap())
        .collect();
    for &h in &heads {
        assert_eq!(io.pop_avail(&mut q, &mem).unwrap().unwrap().head_index(), h);
    }
    mem.start_recording();
    assert_eq!(io.complete_batch(&mut q, &mem, heads[3], 16).unwrap(), 4);
    let log = mem.take_log();
    assert_eq!(idx_stores(&log, &drv), 1);
    let elem_writes: Vec<u64> = log
        .iter()
        .filter(|a| a.kind == AccessKind::Write)
        .map(|a| a.addr)
        .collect();
    assert_eq!(
        elem_writes,
        [drv.used + layout::RING_OFFSET],
        "one element, at slot 0"
    );
    assert_eq!(drv.used_idx(), 4);
    assert_eq!(drv.used_elem(0), (u32::from(heads[3]), 16));
    for i in 1..4 {
        assert_eq!(drv.used_elem(i), POISON_ELEM, "slot {i} untouched");
    }
    assert_eq!((io.in_flight(), q.in_flight()), (0, 0));
    assert_eq!(q.next_used_idx, 4);

    // Completions go on at position 4; a prefix batch covers only the prefix.
    let heads: Vec<u16> = (0..3)
        .map(|i| drv.add_chain(&[(BUF + 0x100 * i, 16, true)]).unwrap())
        .collect();
    for _ in 0..3 {
        io.pop_avail(&mut q, &mem).unwrap().unwrap();
    }
    assert_eq!(io.complete_batch(&mut q, &mem, heads[1], 16).unwrap(), 2);
    assert_eq!(drv.used_idx(), 6);
    assert_eq!(drv.used_elem(4), (u32::from(heads[1]), 16));
    assert_eq!(drv.used_elem(5), POISON_ELEM);
    assert_eq!(io.in_flight(), 1);
    // A partly written buffer gets its own element with its real length (SPLIT-56).
    assert_eq!(io.complete(&mut q, &mem, heads[2], 5).unwrap(), 1);
    assert_eq!(drv.used_idx(), 7);
    assert_eq!(drv.used_elem(6), (u32::from(heads[2]), 5));
    assert_eq!(
        io.complete(&mut q, &mem, heads[0], 1),
        Err(QueueError::HeadNotInFlight { head: heads[0] })
    );
}

/// A completion held for an earlier chain is absorbed by a batch that covers it: it is not
/// published a second time, and completing it again is an error.
#[test]
fn batch_absorbs_held_completions() {
    let mem = ram();
    let (mut drv, mut q) = setup(&mem, 8);
    let mut io = InOrder::<8>::new();
    let heads: Vec<u16> = (0..4)
        .map(|i| drv.add_chain(&[(BUF + 0x100 * i, 16, true)]).unwrap())
        .collect();
    for _ in 0..4 {
        io.pop_avail(&mut q, &mem).unwrap().unwrap();
    }
    assert_eq!(io.complete(&mut q, &mem, heads[1], 16).unwrap(), 0);
    assert_eq!(io.complete_batch(&mut q, &mem, heads[2], 16).unwrap(), 3);
    assert_eq!(drv.used_idx(), 3);
    assert_eq!(drv.used_elem(0), (u32::from(heads[2]), 16));
    assert_eq!(
        io.complete(&mut q, &mem, heads[1], 16),
        Err(QueueError::HeadNotInFlight { head: heads[1] })
    );
    assert_eq!(io.complete(&mut q, &mem, heads[3], 2).unwrap(), 1);
    assert_eq!(drv.used_idx(), 4);
    assert_eq!(drv.used_elem(3), (u32::from(heads[3]), 2));
    assert_eq!((io.in_flight(), q.in_flight()), (0, 0));
}

/// With `N` below the queue size, a full tracker refuses to pop (not fatal, nothing consumed)
/// and pops again once a chain is published.
#[test]
fn capacity_error_is_not_fatal_and_consumes_nothing() {
    let mem = ram();
    let (mut drv, mut q) = setup(&mem, 8);
    let mut io = InOrder::<2>::new();
    // Full with nothing more available: just empty.
    let a = drv.add_chain(&[(BUF, 16, true)]).unwrap();
    let b = drv.add_chain(&[(BUF + 0x100, 16, true)]).unwrap();
    io.pop_avail(&mut q, &mem).unwrap().unwrap();
    io.pop_avail(&mut q, &mem).unwrap().unwrap();
    assert_eq!(io.pop_avail(&mut q, &mem).unwrap(), None);

    let c = drv.add_chain(&[(BUF + 0x200, 16, true)]).unwrap();
    assert_eq!(
        io.pop_avail(&mut q, &mem)
            .map(|c| c.map(|c| c.head_index())),
        Err(QueueError::InOrderCapacity)
    );
    assert!(!q.is_broken());
    assert_eq!(q.next_avail_idx, 2, "nothing consumed");
    assert_eq!(drv.avail_event(), 2);
    assert_eq!(io.complete(&mut q, &mem, b, 1).unwrap(), 0);
    assert_eq!(
        io.pop_avail(&mut q, &mem)
            .map(|c| c.map(|c| c.head_index())),
        Err(QueueError::InOrderCapacity),
        "b is held, so still full"
    );
    assert_eq!(io.complete(&mut q, &mem, a, 1).unwrap(), 2);
    assert_eq!(io.pop_avail(&mut q, &mem).unwrap().unwrap().head_index(), c);
    assert_eq!(io.complete(&mut q, &mem, c, 1).unwrap(), 1);
    assert_eq!(drv.used_idx(), 3);
    let got: Vec<u32> = (0..3).map(|i| drv.used_elem(i).0).collect();
    assert_eq!(got, [a, b, c].map(u32::from));
}

/// `InOrderCapacity` is documented "Not fatal" and leaves the queue running, so `is_fatal`
/// must say so (a transport keys DEVICE_NEEDS_RESET on it).
#[test]
fn in_order_capacity_is_not_fatal() {
    assert!(!QueueError::InOrderCapacity.is_fatal());
}

/// A completion held behind the batch's last chain is first in line once the batch is
/// published, so it must be published with it (the driver waits for it; nothing else may ever
/// trigger its publication).
#[test]
fn batch_flushes_completions_held_behind_it() {
    let mem = ram();
    let (mut drv, mut q) = setup(&mem, 8);
    let mut io = InOrder::<8>::new();
    let a = drv.add_chain(&[(BUF, 16, true)]).unwrap();
    let b = drv.add_chain(&[(BUF + 0x100, 16, true)]).unwrap();
    io.pop_avail(&mut q, &mem).unwrap().unwrap();
    io.pop_avail(&mut q, &mem).unwrap().unwrap();
    assert_eq!(io.complete(&mut q, &mem, b, 7).unwrap(), 0, "b waits for a");
    io.complete_batch(&mut q, &mem, a, 16).unwrap();
    assert_eq!(drv.used_idx(), 2, "b was held behind a and must follow it");
    assert_eq!(drv.used_elem(0), (u32::from(a), 16));
    assert_eq!(drv.used_elem(1), (u32::from(b), 7));
    assert_eq!((io.in_flight(), q.in_flight()), (0, 0));
}

/// `reset` forgets everything in flight.
#[test]
fn reset_forgets_in_flight() {
    let mem = ram();
    let (mut drv, mut q) = setup(&mem, 8);
    let mut io = InOrder::<8>::default();
    let h = drv.add_chain(&[(BUF, 16, true)]).unwrap();
    io.pop_avail(&mut q, &mem).unwrap().unwrap();
    io.reset();
    assert_eq!(io.in_flight(), 0);
    assert_eq!(
        io.complete(&mut q, &mem, h, 1),
        Err(QueueError::HeadNotInFlight { head: h })
    );
}

/// How a round's chains are completed: each entry is (chain position, as a batch?).
fn completion_plan() -> impl Strategy<Value = Vec<(usize, bool)>> {
    (1usize..=8)
        .prop_flat_map(|n| {
            (
                Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
                proptest::collection::vec(any::<bool>(), n),
            )
        })
        .prop_map(|(order, batch)| order.into_iter().zip(batch).collect())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 3 } else { 512 },
        max_shrink_iters: if cfg!(miri) { 0 } else { 1024 },
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Any completion order (some completions as batches, which also cover every earlier chain
    /// still open), over several rounds so ring slots wrap: the used ring lists the chains in
    /// availability order, each covered exactly once; every used element is either a single
    /// completion with its own length or a batch element naming the batch's last head.
    #[test]
    fn any_order_publishes_in_availability_order(rounds in proptest::collection::vec(completion_plan(), 1..4)) {
        let mem = ram();
        let (mut drv, mut q) = setup(&mem, 8);
        let mut io = InOrder::<8>::new();
        let mut covered = 0u16;
        for plan in rounds {
            let n = plan.len();
            let heads: Vec<u16> = (0..n)
                .map(|i| drv.add_chain(&[(BUF + 0x100 * i as u64, 64, true)]).unwrap())
                .collect();
            for &h in &heads {
                prop_assert_eq!(io.pop_avail(&mut q, &mem).unwrap().unwrap().head_index(), h);
            }
            let mut done = vec![false; n];
            // The length a single completion reports: distinct per chain.
            let len = |k: usize| 10 + k as u32;
            for (k, batch) in plan {
                if done[k] {
                    // Already covered by a batch.
                    prop_assert_eq!(
                        io.complete(&mut q, &mem, heads[k], len(k)),
                        Err(QueueError::HeadNotInFlight { head: heads[k] })
                    );
                    continue;
                }
                if batch {
                    let first_open = done.iter().position(|d| !d).unwrap();
                    let batch = k + 1 - first_open;
                    // Completions held right behind the batch are published with it.
                    let held = done[k + 1..].iter().take_while(|&&d| d).count();
                    let before = drv.used_idx();
                    let size = io.complete_batch(&mut q, &mem, heads[k], 64).unwrap();
                    prop_assert!(usize::from(size) == batch || usize::from(size) == batch + held);
                    prop_assert_eq!(usize::from(drv.used_idx().wrapping_sub(before)), batch + held);
                    done[..=k].iter_mut().for_each(|d| *d = true);
                } else {
                    io.complete(&mut q, &mem, heads[k], len(k)).unwrap();
                    done[k] = true;
                }
            }
            prop_assert_eq!((io.in_flight(), q.in_flight()), (0, 0));
            prop_assert_eq!(drv.used_idx(), covered.wrapping_add(n as u16));
            // Walk the used ring the way an in-order driver does: an element names the last
            // chain it covers.
            let mut pos = 0usize;
            while pos < n {
                let (id, l) = drv.used_elem(covered.wrapping_add(pos as u16));
                let last = heads.iter().position(|&h| u32::from(h) == id);
                prop_assert!(last.is_some_and(|j| j >= pos), "id {} at {}", id, pos);
                let last = last.unwrap();
                if last == pos {
                    prop_assert!(l == len(pos) || l == 64);
                } else {
                    prop_assert_eq!(l, 64, "batch element");
                }
                pos = last + 1;
            }
            covered = covered.wrapping_add(n as u16);
            // Consume the round and return every chain's descriptors (a batch element names
            // only the batch's last chain, so `pop_used` would not).
            drv.last_used = covered;
            for &h in &heads {
                drv.recycle(h);
            }
        }
    }
}
