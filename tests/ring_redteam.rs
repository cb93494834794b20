//! Red-team tests against the rewritten hot path of both rings (register-resident walk,
//! `quick_valid` in place of the cached configuration, `Queue<W>` with a caller-sized in-flight
//! bitmap): every queue size, cursors at the 16-bit wrap, public fields changed on a live
//! queue, hostile saved states, and rings at the seams, holes and top of the memory map.
//! What each test requires is VIRTIO 1.4 §2.7 / §2.8 and `shared/spec/hostile-inputs.md`.

use std::ptr::NonNull;

use proptest::prelude::*;
use virtq::in_order::InOrder;
use virtq::memory::{HostRegion, RegionTable};
use virtq::snapshot::{StateError, StateField};
use virtq::split::in_flight_words;
use virtq::wire::split_layout as layout;
use virtq::{
    ChainError, Features, GuestAddress, GuestMemory, MemoryError, PackedQueue, Queue, QueueError,
};
use virtq_testkit::desc_flags::{I, N, W};
use virtq_testkit::pflags as pf;
use virtq_testkit::{PackedDriver, SplitDriver, TestMemory};

/// Buffers live in RAM1 of map M0.
const BUF: u64 = 0x20_0000;

// ---- every split size, both bitmap sizings --------------------------------------------------

/// Fill a split ring of `size` with `size` one-descriptor chains starting at cursor `start`,
/// pop them all, complete them in reverse order, and check the used ring; then an `avail.idx`
/// one past the limit is a typed fatal error (H1, §2.7.13.1: at most `size` entries ahead).
fn serve_full_ring<const WORDS: usize>(mut q: Queue<WORDS>, size: u16, start: u16) {
    let mem = TestMemory::m0();
    let mut drv = SplitDriver::standard(&mem, size);
    q.set_size(size);
    assert_eq!(q.size, size, "queue of {size} not configured");
    q.desc_table_addr = GuestAddress(drv.desc);
    q.avail_ring_addr = GuestAddress(drv.avail);
    q.used_ring_addr = GuestAddress(drv.used);
    q.ready = true;
    q.next_avail_idx = start;
    q.next_used_idx = start;
    drv.avail_idx = start;
    drv.last_used = start;
    mem.poke_u16(drv.used + layout::IDX_OFFSET, start);
    q.check_rings(&mem).expect("rings in RAM");
    for h in 0..size {
        drv.set_desc(h, BUF + u64::from(h) * 16, 16, W, 0);
        drv.set_ring_entry(drv.avail_idx.wrapping_add(h), size - 1 - h);
    }
    drv.set_avail_idx(start.wrapping_add(size));
    let mut heads = Vec::with_capacity(usize::from(size));
    while let Some(c) = q.pop_avail(&mem).expect("pop") {
        heads.push(c.head_index());
    }
    let expect: Vec<u16> = (0..size).map(|h| size - 1 - h).collect();
    assert_eq!(heads, expect, "size {size} start {start:#x}");
    assert_eq!(q.in_flight(), size);
    assert_eq!(q.next_avail_idx, start.wrapping_add(size));
    for &h in heads.iter().rev() {
        q.add_used(&mem, h, u32::from(h)).expect("add_used");
    }
    assert_eq!(q.publish_used(&mem), Ok(size));
    assert_eq!(drv.used_idx(), start.wrapping_add(size));
    for (i, &h) in heads.iter().rev().enumerate() {
        let i = u16::try_from(i).unwrap();
        assert_eq!(
            drv.used_elem(start.wrapping_add(i)),
            (u32::from(h), u32::from(h))
        );
    }
    assert_eq!(q.in_flight(), 0);
    // Completing a head twice is refused without a write.
    assert_eq!(
        q.push_used(&mem, heads[0], 0),
        Err(QueueError::HeadNotInFlight { head: heads[0] })
    );
    // One entry past the limit: fatal, typed, and sticky without touching memory.
    let next = q.next_avail_idx;
    drv.set_avail_idx(next.wrapping_add(size).wrapping_add(1));
    let overrun = QueueError::AvailIdxOverrun {
        avail_idx: next.wrapping_add(size).wrapping_add(1),
        next_avail: next,
    };
    assert_eq!(q.pop_avail(&mem).unwrap_err(), overrun, "size {size}");
    mem.start_recording();
    assert_eq!(q.pop_avail(&mem).unwrap_err(), overrun);
    assert_eq!(q.has_pending(&mem).unwrap_err(), overrun);
    assert!(
        mem.take_log().is_empty(),
        "a broken queue read guest memory"
    );
}

#[test]
fn split_every_power_of_two_size_serves_a_full_ring_and_refuses_overrun() {
    let sizes: Vec<u16> = (0..=15).map(|b| 1u16 << b).collect();
    for &size in &sizes {
        for start in [0u16, 0xFFFF - size / 2, 0x7FFF] {
            serve_full_ring(Queue::new(32768), size, start);
        }
    }
    // Bitmaps sized to the queue: exactly enough words, and the smallest (one word).
    macro_rules! sized {
        ($($s:literal),*) => {$(
            serve_full_ring(Queue::<{ in_flight_words($s) }>::with_capacity($s), $s, 0xFFFE);
        )*};
    }
    sized!(
        1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768
    );
    serve_full_ring(Queue::<1>::with_capacity(64), 64, 0xFFC0);
}

/// `with_capacity` clamps to the bitmap and to a power of two; a queue whose public `max_size`
/// and `size` are raised past the bitmap by hand is never valid, so no head at or above
/// `64 * W` is ever accepted or used as an index (the bitmap would be indexed out of range).
#[test]
fn split_bitmap_smaller_than_the_size_is_never_used_past_its_end() {
    for max in (0..=u16::MAX)
        .step_by(7)
        .chain([0, 1, 63, 64, 65, 127, 128, 192, 255, 256])
    {
        let q1 = Queue::<1>::with_capacity(max);
        assert!(q1.max_size <= 64 && (q1.max_size == 0 || q1.max_size.is_power_of_two()));
        let q3 = Queue::<3>::with_capacity(max);
        assert!(
            q3.max_size <= 128,
            "Queue<3> holds 192 heads: power of two 128"
        );
        assert!(q3.max_size == 0 || q3.max_size.is_power_of_two());
        let q = Queue::new(max);
        assert!(q.max_size <= 32768 && (q.max_size == 0 || q.max_size.is_power_of_two()));
    }
    assert_eq!(Queue::<3>::CAPACITY, 192);
    assert_eq!(Queue::<0>::CAPACITY, 0);
    assert_eq!(Queue::<0>::with_capacity(64).max_size, 0);

    let mem = TestMemory::m0();
    let mut drv = SplitDriver::standard(&mem, 128);
    for h in 0..128 {
        drv.set_desc(h, BUF, 16, 0, 0);
    }
    drv.publish(100);
    let mut q = Queue::<1>::with_capacity(128);
    assert_eq!(q.max_size, 64);
    // Raised by hand past the bitmap.
    q.max_size = 128;
    q.size = 128;
    q.desc_table_addr = GuestAddress(drv.desc);
    q.avail_ring_addr = GuestAddress(drv.avail);
    q.used_ring_addr = GuestAddress(drv.used);
    q.ready = true;
    assert!(!q.is_valid());
    assert_eq!(q.check_rings(&mem), Err(QueueError::NotReady));
    mem.start_recording();
    assert_eq!(q.pop_avail(&mem).unwrap_err(), QueueError::NotReady);
    assert_eq!(q.push_used(&mem, 100, 0), Err(QueueError::NotReady));
    assert_eq!(
        q.in_flight_chain(100).map(|_| ()),
        Err(QueueError::HeadNotInFlight { head: 100 })
    );
    assert!(mem.take_log().is_empty());
    // `try_set_size` and `set_size` cannot get there either.
    let mut q = Queue::<1>::with_capacity(128);
    assert!(q.try_set_size(128).is_err());
    q.set_size(128);
    assert_eq!(q.size, 64);
}

// ---- split cursors at the 16-bit wrap ---------------------------------------------------------

/// Chains published across the 16-bit wrap of `avail.idx` are taken in order, `used.idx` wraps
/// with them, and the EVENT_IDX `avail_event` follows (SPLIT-61), from every start near a wrap.
#[test]
fn split_cursors_across_the_wrap_keep_order_and_event() {
    for start in [0xFFFFu16, 0xFFFE, 0xFFF9, 0x7FFF, 0x8000, 0x0000] {
        let mem = TestMemory::m0();
        let mut drv = SplitDriver::standard(&mem, 8);
        let mut q = drv.queue(8, Features::EVENT_IDX);
        q.next_avail_idx = start;
        q.next_used_idx = start;
        drv.avail_idx = start;
        drv.last_used = start;
        mem.poke_u16(drv.used + layout::IDX_OFFSET, start);
        for round in 0..3u16 {
            for h in 0..5u16 {
                drv.set_desc(h, BUF + u64::from(h) * 64, 64, W, 0);
                drv.publish(h);
            }
            for h in 0..5u16 {
                let c = q.pop_avail(&mem).unwrap().expect("chain");
                assert_eq!(c.head_index(), h, "start {start:#x} round {round}");
                assert_eq!(drv.avail_event(), q.next_avail_idx);
            }
            assert!(q.pop_avail(&mem).unwrap().is_none());
            for h in 0..5u16 {
                q.push_used(&mem, h, 1).unwrap();
            }
            for h in 0..5u16 {
                assert_eq!(drv.pop_used(), Some((u32::from(h), 1)));
            }
            let done = start.wrapping_add(5 * (round + 1));
            assert_eq!(
                (drv.used_idx(), q.next_used_idx, q.next_avail_idx),
                (done, done, done)
            );
        }
        // Every 16-bit distance more than `size` ahead of the cursor is a typed fatal error.
        for ahead in [9u16, 0x7FFF, 0x8000, 0xFFFF] {
            let mut q2 = q.clone();
            let idx = q2.next_avail_idx.wrapping_add(ahead);
            drv.set_avail_idx(idx);
            assert_eq!(
                q2.pop_avail(&mem).unwrap_err(),
                QueueError::AvailIdxOverrun {
                    avail_idx: idx,
                    next_avail: q.next_avail_idx
                }
            );
            assert!(q2.is_broken());
        }
    }
}

// ---- packed sizes and wrap counters ---------------------------------------------------------

/// A packed ring of any size (no power-of-two rule, PACKED-02) serves laps of chains with the
/// cursors starting at every slot near the end of the ring, with either wrap counter; the wrap
/// counters flip exactly at the end of the ring (§2.8.1, PACKED-27).
#[test]
fn packed_every_size_and_start_serves_laps() {
    for size in [1u16, 2, 3, 5, 37, 255, 256, 32767, 32768] {
        let starts: Vec<u16> = if size > 8 {
            vec![0, size - 1, size - 2, size / 2]
        } else {
            (0..size).collect()
        };
        for &start in &starts {
            for wrap in [true, false] {
                packed_laps(size, start, wrap);
            }
        }
    }
}

fn packed_laps(size: u16, start: u16, wrap: bool) {
    let mem = TestMemory::m0();
    let mut drv = PackedDriver::standard(&mem, size);
    // Put both sides at (start, wrap): the driver's earlier laps left the ring in a state where
    // slots before `start` carry lap `wrap` used descriptors and slots from `start` on carry
    // used descriptors of the previous lap.
    for s in 0..size {
        let lap = if s < start { wrap } else { !wrap };
        let f = if lap { pf::A | pf::U } else { 0 };
        drv.set_desc(s, 0, 0, 0, f);
    }
    drv.next_avail = start;
    drv.avail_wrap = wrap;
    drv.next_used = start;
    drv.used_wrap = wrap;
    let mut q = drv.queue(size, Features::EVENT_IDX);
    q.next_avail_idx = start;
    q.avail_wrap_counter = wrap;
    q.next_used_idx = start;
    q.used_wrap_counter = wrap;
    q.check_rings(&mem).expect("rings in RAM");
    // Chains of 1 and (if it fits) 2 descriptors, a little over two laps' worth of slots.
    let laps = u32::from(size.min(40)) * 2 + 3;
    let mut slots = 0u32;
    let mut n = 0u32;
    while slots < laps {
        let len = if size >= 2 && n % 3 == 1 { 2 } else { 1 };
        let bufs: Vec<(u64, u32, bool)> =
            (0..len).map(|i| (BUF + 64 * i, 64, i == len - 1)).collect();
        let id = drv.add_chain(&bufs).expect("room for the chain");
        let c = q.pop_avail(&mem).unwrap().expect("chain");
        assert_eq!(c.head_index(), id, "size {size} start {start} wrap {wrap}");
        let got: Vec<_> = c.iter(&mem).collect::<Result<_, _>>().unwrap();
        assert_eq!(got.len(), usize::try_from(len).unwrap());
        assert!(q.pop_avail(&mem).unwrap().is_none());
        q.push_used(&mem, &c, 7).unwrap();
        let u = drv.pop_used().expect("used descriptor");
        assert_eq!((u.id, u.len), (id, 7));
        // Cursors agree with the driver's after every chain, wrap counters included.
        assert_eq!(
            (
                q.next_avail_idx,
                q.avail_wrap_counter,
                q.next_used_idx,
                q.used_wrap_counter
            ),
            (drv.next_avail, drv.avail_wrap, drv.next_used, drv.used_wrap),
            "size {size} start {start} wrap {wrap} chain {n}"
        );
        slots += u32::try_from(len).unwrap();
        n += 1;
    }
}

/// A NEXT list as long as the ring (`size` descriptors) is accepted; one that would continue
/// into a `size + 1`-th descriptor is fatal before that slot is read (H15c), for sizes where
/// the list crosses the end of the ring.
#[test]
fn packed_whole_ring_chain_accepted_and_one_more_refused() {
    for size in [1u16, 3, 37] {
        for start in [0, size - 1] {
            let mem = TestMemory::m0();
            let drv = PackedDriver::standard(&mem, size);
            let mut q = drv.queue(size, Features::empty());
            q.next_avail_idx = start;
            q.next_used_idx = start;
            let publish = |last_next: bool| {
                for i in 0..size {
                    let slot = (start + i) % size;
                    let lap = slot >= start; // the first lap's slots carry wrap 1
                    let mut f = if lap { pf::A } else { pf::U };
                    if i + 1 < size || last_next {
                        f |= pf::N;
                    }
                    drv.set_desc(slot, BUF, 16, 9, f);
                }
            };
            publish(false);
            let mut c = virtq::PackedChain::<64>::EMPTY;
            assert!(
                q.clone().pop_avail_into(&mem, &mut c).unwrap(),
                "whole-ring chain"
            );
            let got: Vec<_> = c.iter(&mem).collect::<Result<_, _>>().unwrap();
            assert_eq!(got.len(), usize::from(size));
            publish(true);
            mem.start_recording();
            assert_eq!(
                q.pop_avail(&mem).unwrap_err(),
                QueueError::Chain(ChainError::TooLong)
            );
            assert!(q.is_broken());
            let log = mem.take_log();
            // Each slot's flags read once, none a second time (the list does not wrap on).
            let flag_reads = log
                .iter()
                .filter(|a| a.kind == virtq_testkit::AccessKind::Load16)
                .count();
            assert!(
                flag_reads <= usize::from(size),
                "{flag_reads} flags loads for {size}"
            );
        }
    }
}

// ---- public fields changed on a live queue --------------------------------------------------

fn addr_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(2),
        Just(4),
        Just(8),
        Just(0x1000),
        Just(0x1002),
        Just(0x1004),
        Just(0x1008),
        Just(0x10_0000),
        Just(0xF_FFF0),
        Just(1 << 63),
        Just((1 << 63) + 16),
        Just(u64::MAX - 15),
        Just(u64::MAX - 0xFFFF),
        Just(u64::MAX),
        any::<u64>(),
        (0u64..0x40_0000),
    ]
}

fn size_strategy() -> impl Strategy<Value = u16> {
    prop_oneof![
        Just(0u16),
        Just(1),
        Just(3),
        Just(8),
        Just(16),
        Just(256),
        Just(32768),
        Just(u16::MAX),
        any::<u16>()
    ]
}

#[derive(Clone, Debug)]
enum Change {
    Size(u16),
    MaxSize(u16),
    Ready(bool),
    Desc(u64),
    Driver(u64),
    Device(u64),
    Features(u64),
    NextAvail(u16),
    NextUsed(u16),
    AvailWrap(bool),
    UsedWrap(bool),
}

fn change_strategy() -> impl Strategy<Value = Change> {
    prop_oneof![
        size_strategy().prop_map(Change::Size),
        size_strategy().prop_map(Change::MaxSize),
        any::<bool>().prop_map(Change::Ready),
        addr_strategy().prop_map(Change::Desc),
        addr_strategy().prop_map(Change::Driver),
        addr_strategy().prop_map(Change::Device),
        any::<u64>().prop_map(Change::Features),
        any::<u16>().prop_map(Change::NextAvail),
        (0u16..40).prop_map(Change::NextUsed),
        any::<bool>().prop_map(Change::AvailWrap),
        any::<bool>().prop_map(Change::UsedWrap),
    ]
}

fn apply_split<const WORDS: usize>(q: &mut Queue<WORDS>, c: &Change) {
    match *c {
        Change::Size(v) => q.size = v,
        Change::MaxSize(v) => q.max_size = v,
        Change::Ready(v) => q.ready = v,
        Change::Desc(v) => q.desc_table_addr = GuestAddress(v),
        Change::Driver(v) => q.avail_ring_addr = GuestAddress(v),
        Change::Device(v) => q.used_ring_addr = GuestAddress(v),
        Change::Features(v) => q.features = Features::from_bits_retain(v),
        Change::NextAvail(v) => q.next_avail_idx = v,
        Change::NextUsed(v) => q.next_used_idx = v,
        Change::AvailWrap(_) | Change::UsedWrap(_) => {}
    }
}

fn apply_packed(q: &mut PackedQueue, c: &Change) {
    match *c {
        Change::Size(v) => q.size = v,
        Change::MaxSize(v) => q.max_size = v,
        Change::Ready(v) => q.ready = v,
        Change::Desc(v) => q.desc_ring_addr = GuestAddress(v),
        Change::Driver(v) => q.driver_event_addr = GuestAddress(v),
        Change::Device(v) => q.device_event_addr = GuestAddress(v),
        Change::Features(v) => q.features = Features::from_bits_retain(v),
        Change::NextAvail(v) => q.next_avail_idx = v,
        Change::NextUsed(v) => q.next_used_idx = v,
        Change::AvailWrap(v) => q.avail_wrap_counter = v,
        Change::UsedWrap(v) => q.used_wrap_counter = v,
    }
}

/// Every entry point of a live queue refuses a configuration `is_valid` refuses, with
/// `NotReady` and before any guest access; and whatever it accepts, `is_valid` accepts.
fn split_entry_points_agree<const WORDS: usize>(q: &Queue<WORDS>, mem: &TestMemory) {
    let valid = q.is_valid();
    if q.check_rings(mem).is_ok() {
        assert!(valid, "check_rings accepted an invalid queue: {q:?}");
    }
    type Op<const WORDS: usize> = fn(&mut Queue<WORDS>, &TestMemory) -> Result<(), QueueError>;
    let ops: [(&str, Op<WORDS>); 7] = [
        ("pop_avail", |q, m| q.pop_avail(m).map(|_| ())),
        ("has_pending", |q, m| q.has_pending(m).map(|_| ())),
        ("publish_used", |q, m| q.publish_used(m).map(|_| ())),
        ("needs_notification", |q, m| {
            q.needs_notification(m).map(|_| ())
        }),
        ("enable_notification", |q, m| {
            q.enable_notification(m).map(|_| ())
        }),
        ("disable_notification", |q, m| q.disable_notification(m)),
        ("push_used", |q, m| q.push_used(m, 0, 0)),
    ];
    for (name, op) in ops {
        let mut c = q.clone();
        mem.start_recording();
        let r = op(&mut c, mem);
        let log = mem.take_log();
        if valid {
            assert_ne!(r, Err(QueueError::NotReady), "{name} refused a valid {q:?}");
        } else {
            assert_eq!(
                r,
                Err(QueueError::NotReady),
                "{name} accepted an invalid {q:?}"
            );
            assert!(log.is_empty(), "{name} touched memory for an invalid {q:?}");
            assert!(!c.is_broken(), "NotReady is not sticky");
        }
    }
}

fn packed_entry_points_agree(q: &PackedQueue, mem: &TestMemory) {
    let valid = q.is_valid();
    if q.check_rings(mem).is_ok() {
        assert!(valid, "check_rings accepted an invalid queue: {q:?}");
    }
    type Op = fn(&mut PackedQueue, &TestMemory) -> Result<(), QueueError>;
    let ops: [(&str, Op); 6] = [
        ("pop_avail", |q, m| q.pop_avail(m).map(|_| ())),
        ("has_pending", |q, m| q.has_pending(m).map(|_| ())),
        ("publish_used", |q, m| q.publish_used(m).map(|_| ())),
        ("needs_notification", |q, m| {
            q.needs_notification(m).map(|_| ())
        }),
        ("enable_notification", |q, m| {
            q.enable_notification(m).map(|_| ())
        }),
        ("disable_notification", |q, m| q.disable_notification(m)),
    ];
    for (name, op) in ops {
        let mut c = q.clone();
        mem.start_recording();
        let r = op(&mut c, mem);
        let log = mem.take_log();
        if valid {
            assert_ne!(r, Err(QueueError::NotReady), "{name} refused a valid {q:?}");
        } else {
            assert_eq!(
                r,
                Err(QueueError::NotReady),
                "{name} accepted an invalid {q:?}"
            );
            assert!(log.is_empty(), "{name} touched memory for an invalid {q:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 8 } else { 2000 }, ..ProptestConfig::default() })]

    /// Random changes to the public fields of a live split queue (one that has popped and
    /// completed chains): the hot path's `quick_valid` must refuse exactly what `is_valid`
    /// refuses (misaligned rings, zero or wrapping addresses, size 0 / not a power of two /
    /// above `max_size` or the bitmap, not ready), at every entry point.
    #[test]
    fn split_live_field_changes_agree_with_is_valid(
        changes in prop::collection::vec(change_strategy(), 1..6)
    ) {
        let mem = TestMemory::m0();
        let mut drv = SplitDriver::standard(&mem, 16);
        let mut q = drv.queue(16, Features::EVENT_IDX);
        let mut q4 = Queue::<{ in_flight_words(16) }>::with_capacity(16);
        (q4.desc_table_addr, q4.avail_ring_addr, q4.used_ring_addr) =
            (q.desc_table_addr, q.avail_ring_addr, q.used_ring_addr);
        (q4.ready, q4.features) = (true, q.features);
        drv.set_desc(0, BUF, 16, W, 0);
        drv.publish(0);
        let c = q.pop_avail(&mem).unwrap().unwrap();
        q.push_used(&mem, c.head_index(), 1).unwrap();
        let c = q4.pop_avail(&mem).unwrap().unwrap();
        q4.push_used(&mem, c.head_index(), 1).unwrap();
        for ch in &changes {
            apply_split(&mut q, ch);
            apply_split(&mut q4, ch);
        }
        split_entry_points_agree(&q, &mem);
        split_entry_points_agree(&q4, &mem);
    }

    /// The same for the packed ring (cursors and wrap counters included: `is_valid` refuses a
    /// cursor at or past `size`).
    #[test]
    fn packed_live_field_changes_agree_with_is_valid(
        changes in prop::collection::vec(change_strategy(), 1..6)
    ) {
        let mem = TestMemory::m0();
        let mut drv = PackedDriver::standard(&mem, 37);
        let mut q = drv.queue(37, Features::EVENT_IDX);
        drv.add_chain(&[(BUF, 16, true)]).unwrap();
        let c = q.pop_avail(&mem).unwrap().unwrap();
        q.push_used(&mem, &c, 1).unwrap();
        for ch in &changes {
            apply_packed(&mut q, ch);
        }
        packed_entry_points_agree(&q, &mem);
    }
}

/// The old cached check refused each of these classes on a live queue; the cheaper test must
/// too (H9 a, b, e, f, i; ready cleared), with a ring that was valid a moment before.
#[test]
fn live_invalidations_are_refused_at_the_next_call() {
    let mem = TestMemory::m0();
    let mut drv = SplitDriver::standard(&mem, 8);
    let base = drv.queue(8, Features::empty());
    drv.set_desc(0, BUF, 16, W, 0);
    drv.publish(0);
    type Edit = fn(&mut Queue);
    let cases: [(&str, Edit); 10] = [
        ("desc misaligned", |q| q.desc_table_addr.0 += 8),
        ("avail misaligned", |q| q.avail_ring_addr.0 += 1),
        ("used misaligned", |q| q.used_ring_addr.0 += 2),
        ("size 0", |q| q.size = 0),
        ("size 6", |q| q.size = 6),
        ("size > max_size", |q| q.size = 16),
        ("ready cleared", |q| q.ready = false),
        ("desc wraps", |q| q.desc_table_addr.0 = u64::MAX - 15),
        ("used zero", |q| q.used_ring_addr.0 = 0),
        ("max_size lowered", |q| q.max_size = 4),
    ];
    for (what, f) in cases {
        let mut q = base.clone();
        f(&mut q);
        assert!(!q.is_valid(), "{what}");
        assert_eq!(
            q.pop_avail(&mem).unwrap_err(),
            QueueError::NotReady,
            "{what}"
        );
        // Put back, it works again (NotReady is not sticky).
        let mut q2 = base.clone();
        assert!(q2.pop_avail(&mem).unwrap().is_some(), "{what}");
    }
    // Rings moved outside RAM but still well-formed: valid, and the access is a typed fatal
    // memory error (the hole of M0), never a panic.
    let mut q = base.clone();
    q.avail_ring_addr = GuestAddress(0x10_0000);
    assert!(q.is_valid());
    assert!(q.check_rings(&mem).is_err());
    assert!(matches!(q.pop_avail(&mem), Err(QueueError::Memory(_))));
    assert!(q.is_broken());
}

// ---- in-order completion on a queue that refuses the call ------------------------------------

/// An in-order batch completion that the queue refuses (here: the driver cleared `ready`)
/// changes nothing: the chains stay in flight and in order, and the same call succeeds once
/// the queue is usable again (H16; state from a refused call is never half-applied).
#[test]
fn in_order_refused_batch_is_not_half_applied() {
    let mem = TestMemory::m0();
    let mut drv = SplitDriver::standard(&mem, 8);
    let mut q = drv.queue(8, Features::IN_ORDER);
    let mut order = InOrder::<8>::new();
    for h in 0..3 {
        drv.set_desc(h, BUF, 16, W, 0);
        drv.publish(h);
    }
    for _ in 0..3 {
        order.pop_avail(&mut q, &mem).unwrap().unwrap();
    }
    q.ready = false;
    assert_eq!(
        order.complete_batch(&mut q, &mem, 2, 5),
        Err(QueueError::NotReady)
    );
    assert_eq!(
        (q.in_flight(), order.in_flight()),
        (3, 3),
        "refused batch consumed chains"
    );
    q.ready = true;
    assert_eq!(order.complete_batch(&mut q, &mem, 2, 5), Ok(3));
    assert_eq!((drv.used_idx(), drv.used_elem(0)), (3, (2, 5)));
    assert_eq!((q.in_flight(), order.in_flight()), (0, 0));

    // The single completion too: refused, then accepted on retry.
    for h in 3..5 {
        drv.set_desc(h, BUF, 16, W, 0);
        drv.publish(h);
    }
    for _ in 0..2 {
        order.pop_avail(&mut q, &mem).unwrap().unwrap();
    }
    q.ready = false;
    assert_eq!(
        order.complete(&mut q, &mem, 3, 1),
        Err(QueueError::NotReady)
    );
    q.ready = true;
    assert_eq!(order.complete(&mut q, &mem, 3, 1), Ok(1));
    assert_eq!(order.complete(&mut q, &mem, 4, 1), Ok(1));
    assert_eq!(drv.used_idx(), 5);
    assert_eq!((q.in_flight(), order.in_flight()), (0, 0));
}

// ---- hostile saved states --------------------------------------------------------------------

/// A queue of max 256 and `size`, with `in_flight` popped, and its saved state.
fn split_saved(mem: &TestMemory, size: u16, in_flight: &[u16]) -> (Queue, Vec<u8>) {
    let mut drv = SplitDriver::standard(mem, size);
    let mut q = drv.queue(256, Features::EVENT_IDX);
    for h in 0..size {
        drv.set_desc(h, BUF, 16, W, 0);
    }
    for &h in in_flight {
        drv.publish(h);
        q.pop_avail(mem).unwrap().unwrap();
    }
    let bytes = q.save().as_bytes().to_vec();
    (q, bytes)
}

/// A saved queue restored into a `Queue<W>` whose bitmap cannot hold its size is refused by
/// name (`Size`), and the target is unchanged; one whose size fits restores even if the saved
/// `max_size` was larger.
#[test]
fn split_restore_into_a_smaller_bitmap() {
    let mem = TestMemory::m0();
    let (_, bytes) = split_saved(&mem, 256, &[200, 3]);
    let mut small = Queue::<{ in_flight_words(128) }>::with_capacity(256);
    assert_eq!(small.max_size, 128);
    let before = small.clone();
    assert_eq!(
        small.restore(&bytes, &mem),
        Err(StateError::Invalid {
            field: StateField::Size
        })
    );
    assert_eq!(small, before, "a refused restore changed the queue");
    // Even with `max_size` raised by hand past the bitmap, the heads cannot land past it.
    small.max_size = 256;
    let r = small.restore(&bytes, &mem);
    assert!(
        matches!(
            r,
            Err(StateError::Invalid {
                field: StateField::InFlight | StateField::Size
            })
        ),
        "{r:?}"
    );
    assert!(!small.is_valid());

    // Size 64 of a queue whose max was 1024: fits a one-word bitmap.
    let mut drv = SplitDriver::standard(&mem, 64);
    let mut q = Queue::new(1024);
    q.set_size(64);
    (q.desc_table_addr, q.avail_ring_addr, q.used_ring_addr) = (
        GuestAddress(drv.desc),
        GuestAddress(drv.avail),
        GuestAddress(drv.used),
    );
    q.ready = true;
    drv.set_desc(63, BUF, 16, W, 0);
    drv.publish(63);
    q.pop_avail(&mem).unwrap().unwrap();
    let bytes = q.save().as_bytes().to_vec();
    let mut one = Queue::<1>::with_capacity(64);
    one.restore(&bytes, &mem).expect("fits");
    assert_eq!((one.size, one.in_flight()), (64, 1));
    one.push_used(&mem, 63, 0).unwrap();
    assert_eq!(drv.used_idx(), 1);
}

/// Field offsets in a split state: 16-byte header, then `SplitFields`.
const SPLIT_NEXT_AVAIL: usize = 16 + 40;
const SPLIT_NEXT_USED: usize = 16 + 42;
const SPLIT_IN_FLIGHT: usize = 16 + 52;
const SPLIT_BITMAP: usize = 16 + 80;

fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

/// Hostile in-flight sets: a head at `size` or above, a stated count that disagrees with the
/// bitmap, more heads than `size`, and cursors inconsistent with them; all refused by name
/// with the target unchanged (H20, SPLIT restore rules).
#[test]
fn split_restore_refuses_hostile_in_flight_sets() {
    let mem = TestMemory::m0();
    let (q, good) = split_saved(&mem, 8, &[1, 2]);
    assert_eq!(q.in_flight(), 2);
    let target = q.clone();
    let check = |bytes: &[u8], fields: &[StateField], what: &str| {
        let mut t = target.clone();
        t.reset();
        let before = t.clone();
        match t.restore(bytes, &mem) {
            Err(StateError::Invalid { field }) => {
                assert!(fields.contains(&field), "{what}: named {field:?}");
            }
            other => panic!("{what}: {other:?}"),
        }
        assert_eq!(t, before, "{what}: half-applied");
    };
    // Head 8 of a size-8 queue (bit 8 of the bitmap).
    let mut b = good.clone();
    b[SPLIT_BITMAP + 1] |= 1;
    check(&b, &[StateField::InFlight], "head = size");
    // Head 255 of a queue of max 256 but size 8.
    let mut b = good.clone();
    b[SPLIT_BITMAP + 31] |= 0x80;
    check(&b, &[StateField::InFlight], "head 255");
    // Count disagrees.
    let mut b = good.clone();
    put16(&mut b, SPLIT_IN_FLIGHT, 3);
    check(
        &b,
        &[StateField::InFlightCount, StateField::NextUsed],
        "count 3",
    );
    // Cursors disagree with the count.
    let mut b = good.clone();
    put16(&mut b, SPLIT_NEXT_USED, 1);
    check(&b, &[StateField::NextUsed], "next_used");
    // Nine heads in flight in a queue of 8 (impossible) with consistent count and cursors.
    let (_, full) = split_saved(&mem, 8, &[0, 1, 2, 3, 4, 5, 6, 7]);
    let mut b = full.clone();
    b[SPLIT_BITMAP + 1] |= 1;
    put16(&mut b, SPLIT_IN_FLIGHT, 9);
    put16(&mut b, SPLIT_NEXT_AVAIL, 9);
    check(
        &b,
        &[StateField::InFlight, StateField::InFlightCount],
        "nine in flight",
    );
    // `avail.idx` in guest memory more than `size` ahead of the saved cursor.
    let mut b = good.clone();
    put16(&mut b, SPLIT_NEXT_AVAIL, 0xFFF0);
    put16(&mut b, SPLIT_NEXT_USED, 0xFFEE);
    check(
        &b,
        &[
            StateField::AvailIdx,
            StateField::Published,
            StateField::Notification,
        ],
        "avail far ahead",
    );
}

/// Hostile packed states: cursors at or past `size`, descriptors in flight beyond `size`,
/// tokens at or past `size`; refused by name, nothing applied.
#[test]
fn packed_restore_refuses_hostile_cursors_and_tokens() {
    let mem = TestMemory::m0();
    let mut drv = PackedDriver::standard(&mem, 37);
    let mut q = drv.queue(37, Features::empty());
    for _ in 0..3 {
        drv.add_chain(&[(BUF, 16, true)]).unwrap();
        q.pop_avail(&mem).unwrap().unwrap();
    }
    let good = q.save().as_bytes().to_vec();
    let mut t = PackedQueue::new(37);
    t.restore(&good, &mem).expect("the saved state restores");
    // Offsets: header 16; max 0, size 2, ready 4, kicks 5, avail_wrap 6, used_wrap 7, three
    // addresses 8..32, features 32, next_avail 40, next_used 42, in_flight_descs 44,
    // in_flight_chains 46; bitmap at 16 + 96.
    let cases: [(usize, u16, &[StateField]); 5] = [
        (16 + 40, 37, &[StateField::NextAvail]),
        (16 + 42, 40, &[StateField::NextUsed]),
        (16 + 44, 38, &[StateField::InFlightCount]),
        (16 + 46, 2, &[StateField::InFlightCount]),
        (
            16 + 2,
            2,
            &[
                StateField::NextAvail,
                StateField::InFlight,
                StateField::NextUsed,
            ],
        ),
    ];
    for (off, v, fields) in cases {
        let mut b = good.clone();
        put16(&mut b, off, v);
        let mut t = PackedQueue::new(37);
        let before = t.clone();
        match t.restore(&b, &mem) {
            Err(StateError::Invalid { field }) => {
                assert!(fields.contains(&field), "{off}: {field:?}")
            }
            other => panic!("offset {off} = {v}: {other:?}"),
        }
        assert_eq!(t, before, "offset {off}: half-applied");
    }
    // A token at 37 (bit 37 of the bitmap).
    let mut b = good.clone();
    b[16 + 96 + 4] |= 1 << 5;
    let mut t = PackedQueue::new(37);
    assert_eq!(
        t.restore(&b, &mem),
        Err(StateError::Invalid {
            field: StateField::InFlight
        })
    );
    // Into a queue whose max_size is below the saved size.
    let mut t = PackedQueue::new(32);
    let before = t.clone();
    assert_eq!(
        t.restore(&good, &mem),
        Err(StateError::Invalid {
            field: StateField::Size
        })
    );
    assert_eq!(t, before);
}

// ---- memory maps: seams, holes, the top of the address space ---------------------------------

/// RAM that ends just below 2⁶⁴: rings at its very end work; a ring or indirect table that
/// would end at or past 2⁶⁴ is refused as invalid or as a typed memory error (H7a, H9i).
#[test]
fn rings_and_tables_at_the_top_of_the_address_space() {
    const TOP: u64 = u64::MAX - 1 - 0xF_FFFF; // region [TOP, u64::MAX - 1)
    let mem = TestMemory::new(&[(TOP & !0xF, 0x10_0000)]);
    let base = TOP & !0xF;
    let end = base + 0x10_0000; // = u64::MAX - 1 - (TOP & 0xF) ... exclusive end
    let size = 8u16;
    let desc = (end - layout::desc_table_bytes(size)) & !0xF;
    let avail = base + 0x1000;
    let used = (end - layout::used_ring_bytes(size)) & !0x3;
    let used = used.min(desc - 0x100) & !3;
    let mut drv = SplitDriver::new(&mem, size, desc, avail, used);
    let mut q = drv.queue(8, Features::INDIRECT_DESC);
    q.check_rings(&mem).expect("rings inside the top region");
    // Indirect table ending exactly at the region's end: accepted.
    let table = (end - 32) & !0xF;
    let table_end_ok = table + 32 <= end;
    assert!(table_end_ok);
    drv.write_table(
        table,
        &[(base + 0x2000, 16, N, 1), (base + 0x3000, 16, W, 0)],
    );
    drv.set_desc(0, table, 32, I, 0);
    drv.publish(0);
    let c = q.pop_avail(&mem).unwrap().unwrap();
    let got: Vec<_> = c.iter(&mem).collect::<Result<_, _>>().unwrap();
    assert_eq!(got.len(), 2);
    q.push_used(&mem, 0, 16).unwrap();
    // A table one entry longer runs off the end of RAM: typed memory error.
    drv.set_desc(0, table, 48, I, 0);
    drv.publish(0);
    let c = q.pop_avail(&mem).unwrap().unwrap();
    assert!(matches!(
        c.iter(&mem).next(),
        Some(Err(ChainError::Memory(_)))
    ));
    q.push_used(&mem, 0, 0).unwrap();
    // A buffer whose end overflows u64.
    drv.set_desc(0, u64::MAX - 7, 16, 0, 0);
    drv.publish(0);
    let c = q.pop_avail(&mem).unwrap().unwrap();
    assert!(matches!(
        c.iter(&mem).next(),
        Some(Err(ChainError::Memory(
            MemoryError::Overflow { .. } | MemoryError::OutOfRange { .. }
        )))
    ));
    q.push_used(&mem, 0, 0).unwrap();

    // Rings whose end would be 2⁶⁴ or past: not valid at all.
    for (d, a, u) in [
        (u64::MAX - 127, avail, used),
        (desc, u64::MAX - 1, used),
        (desc, avail, u64::MAX - 3),
        (u64::MAX - 15 - 0x70, avail, used),
    ] {
        let mut q = Queue::new(8);
        (q.desc_table_addr, q.avail_ring_addr, q.used_ring_addr) = (
            GuestAddress(d & !0xF),
            GuestAddress(a & !1),
            GuestAddress(u & !3),
        );
        q.ready = true;
        let end_d = u128::from(d & !0xF) + u128::from(layout::desc_table_bytes(8));
        let end_a = u128::from(a & !1) + u128::from(layout::avail_ring_bytes(8));
        let end_u = u128::from(u & !3) + u128::from(layout::used_ring_bytes(8));
        let wraps = [end_d, end_a, end_u].iter().any(|&e| e >= 1u128 << 64);
        assert_eq!(q.is_valid(), !wraps, "{q:?}");
        if wraps {
            assert_eq!(q.pop_avail(&mem).unwrap_err(), QueueError::NotReady);
        } else {
            assert!(q.check_rings(&mem).is_err());
        }
    }

    // Packed: a descriptor ring at the very end of RAM works; one slot further is refused.
    let pdesc = (end - 16 * 37) & !0xF;
    let mut pdrv = PackedDriver::new(&mem, 37, pdesc, base + 0x4000, base + 0x4100);
    let mut pq = pdrv.queue(37, Features::empty());
    pq.check_rings(&mem).expect("packed ring at the top");
    for _ in 0..40 {
        pdrv.add_chain(&[(base + 0x2000, 16, true)]).unwrap();
        let c = pq.pop_avail(&mem).unwrap().unwrap();
        pq.push_used(&mem, &c, 16).unwrap();
        assert!(pdrv.pop_used().is_some());
    }
    let mut pq2 = PackedQueue::new(38);
    pq2.desc_ring_addr = GuestAddress(pdesc);
    pq2.driver_event_addr = GuestAddress(base + 0x4000);
    pq2.device_event_addr = GuestAddress(base + 0x4100);
    pq2.ready = true;
    assert!(pq2.check_rings(&mem).is_err());
}

/// Rings and an indirect table laid across the seam of two adjacent regions work (a range
/// across a seam is split, never one host-contiguous slice, H7e); the same layout across a
/// hole is refused at `check_rings` or as a typed chain error.
#[test]
fn rings_and_tables_across_seams_and_holes() {
    // Adjacent regions meeting at even seams 0x8000, 0xA000, 0xC000 and 0xE000, then a hole
    // [0x10000, 0x20000).
    let mem = TestMemory::new(&[
        (0, 0x8000),
        (0x8000, 0x2000),
        (0xA000, 0x2000),
        (0xC000, 0x2000),
        (0xE000, 0x2000),
        (0x2_0000, 0x1_0000),
    ]);
    let size = 16u16;
    // Each ring straddles a seam: the descriptor table (entries 0..7 below it, 8..15 above),
    // the available ring (flags, idx and 7 entries below, the rest above) and the used ring.
    let desc = 0x8000 - 128;
    let avail = 0xA000 - 18;
    let used = 0xC000 - 64;
    let mut drv = SplitDriver::new(&mem, size, desc, avail, used);
    let mut q = drv.queue(size, Features::INDIRECT_DESC | Features::EVENT_IDX);
    q.check_rings(&mem).expect("rings across an even seam");
    for round in 0..3 {
        for h in 0..size {
            drv.set_desc(h, 0x2_0000 + u64::from(h) * 0x10, 0x10, W, 0);
            drv.publish(h);
        }
        for h in 0..size {
            let c = q.pop_avail(&mem).unwrap().unwrap();
            assert_eq!(c.head_index(), h, "round {round}");
            let d: Vec<_> = c.iter(&mem).collect::<Result<_, _>>().unwrap();
            assert_eq!(d.len(), 1);
        }
        for h in 0..size {
            q.push_used(&mem, h, 4).unwrap();
        }
    }
    // Indirect table across the seam.
    let table = 0xE000 - 16;
    drv.write_table(table, &[(0x7800, 0x100, N, 1), (0xE800, 0x100, W, 0)]);
    drv.set_desc(3, table, 32, I, 0);
    drv.publish(3);
    let c = q.pop_avail(&mem).unwrap().unwrap();
    let d: Vec<_> = c.iter(&mem).collect::<Result<_, _>>().unwrap();
    assert_eq!(d.len(), 2);
    q.push_used(&mem, 3, 0).unwrap();
    // A table running into the hole at 0x10000.
    drv.write_table(0x1_0000 - 16, &[(0x7800, 0x100, N, 1)]);
    drv.set_desc(3, 0x1_0000 - 16, 32, I, 0);
    drv.publish(3);
    let c = q.pop_avail(&mem).unwrap().unwrap();
    assert!(matches!(
        c.iter(&mem).next(),
        Some(Err(ChainError::Memory(_)))
    ));
    q.push_used(&mem, 3, 0).unwrap();
    // A buffer crossing into the hole.
    drv.set_desc(4, 0x1_0000 - 8, 16, 0, 0);
    drv.publish(4);
    let c = q.pop_avail(&mem).unwrap().unwrap();
    assert!(matches!(
        c.iter(&mem).next(),
        Some(Err(ChainError::Memory(_)))
    ));
    // Rings across the hole are refused when enabled.
    for (d, a, u) in [
        (0x1_0000 - 128, 0x3000, 0x4000),
        (0x1000, 0x1_0000 - 18, 0x4000),
        (0x1000, 0x3000, 0x1_0000 - 64),
    ] {
        let mut q = Queue::new(size);
        (q.desc_table_addr, q.avail_ring_addr, q.used_ring_addr) =
            (GuestAddress(d), GuestAddress(a), GuestAddress(u));
        q.ready = true;
        assert!(q.is_valid());
        assert!(q.check_rings(&mem).is_err(), "{d:#x} {a:#x} {u:#x}");
    }
}

// ---- the provided RegionTable: separate host buffers, seams, a hole, the top of the map ------

/// A `RegionTable` of regions each backed by its own host buffer (so a seam is also a break in
/// host memory): `(guest base, length)`.
fn region_table(backing: &mut [Vec<u64>], map: &[(u64, usize)]) -> RegionTable<4> {
    let mut t = RegionTable::new();
    for (b, &(guest, len)) in backing.iter_mut().zip(map) {
        assert!(b.len() * 8 >= len);
        let p = NonNull::new(b.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `len` bytes of `b`, which outlives the table and is accessed only through it.
        t.insert(unsafe { HostRegion::new(GuestAddress(guest), p, len) }.unwrap())
            .unwrap();
    }
    t
}

fn put_desc(mem: &impl GuestMemory, at: u64, addr: u64, len: u32, flags: u16, next: u16) {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..16].copy_from_slice(&next.to_le_bytes());
    mem.write(GuestAddress(at), &d).unwrap();
}

/// Split rings, an indirect table and buffers laid across seams of a `RegionTable` whose
/// regions are separate host buffers: everything works and data crosses each seam intact
/// (H7e: split at the seam, never one host-contiguous slice); a table or buffer running into
/// the hole is a typed chain error, rings across the hole are refused at enable.
#[test]
fn region_table_seams_holes_and_rings_across_them() {
    let map = [
        (0u64, 0x8000usize),
        (0x8000, 0x4000),
        (0xC000, 0x4000),
        (0x2_0000, 0x1_0000),
    ];
    let mut backing: Vec<Vec<u64>> = map.iter().map(|&(_, l)| vec![0u64; l / 8]).collect();
    let mem = region_table(&mut backing, &map);
    let size = 16u16;
    // The descriptor table straddles the first seam (entries 8..15 above it).
    let (desc, avail, used) = (0x8000 - 128, 0x7000 - 18, 0x7000 + 0x100);
    let mut q = Queue::new(size);
    (q.desc_table_addr, q.avail_ring_addr, q.used_ring_addr) =
        (GuestAddress(desc), GuestAddress(avail), GuestAddress(used));
    q.features = Features::INDIRECT_DESC;
    q.ready = true;
    q.check_rings(&mem).expect("rings in RAM");
    // Every head, the descriptors of 8..15 above the seam: each chain has one buffer that
    // itself crosses the seam, written by the device through a writer.
    let mut idx = 0u16;
    for h in 0..size {
        put_desc(&mem, desc + 16 * u64::from(h), 0x8000 - 8, 16, 2, 0);
        let slot = avail + layout::RING_OFFSET + 2 * u64::from(idx % size);
        mem.store_u16(GuestAddress(slot), h).unwrap();
        idx = idx.wrapping_add(1);
        mem.store_u16(GuestAddress(avail + layout::IDX_OFFSET), idx)
            .unwrap();
        let c = q.pop_avail(&mem).unwrap().unwrap();
        assert_eq!(c.head_index(), h);
        let mut w: virtq::ChainWriter<'_, _> = virtq::ChainWriter::new(&mem, &c);
        let data: Vec<u8> = (0..16).map(|i| i as u8 ^ h as u8).collect();
        w.write_all(&data).unwrap();
        let mut back = [0u8; 16];
        mem.read(GuestAddress(0x8000 - 8), &mut back).unwrap();
        assert_eq!(back.as_slice(), data.as_slice(), "head {h}");
        q.push_used(&mem, h, 16).unwrap();
        let mut e = [0u8; 8];
        let at = used + layout::RING_OFFSET + 8 * u64::from((idx - 1) % size);
        mem.read(GuestAddress(at), &mut e).unwrap();
        assert_eq!(&e[..4], &u32::from(h).to_le_bytes());
        assert_eq!(mem.load_u16(GuestAddress(used + 2)), Ok(idx));
    }
    // An indirect table across the second seam.
    let t = 0xC000 - 16;
    put_desc(&mem, t, 0x100, 8, 1, 1);
    put_desc(&mem, t + 16, 0x8100, 8, 2, 0);
    put_desc(&mem, desc, t, 32, 4, 0);
    let slot = avail + layout::RING_OFFSET + 2 * u64::from(idx % size);
    mem.store_u16(GuestAddress(slot), 0).unwrap();
    idx = idx.wrapping_add(1);
    mem.store_u16(GuestAddress(avail + layout::IDX_OFFSET), idx)
        .unwrap();
    let c = q.pop_avail(&mem).unwrap().unwrap();
    let d: Vec<_> = c.iter(&mem).collect::<Result<_, _>>().unwrap();
    assert_eq!(
        d.iter().map(|d| (d.addr().0, d.len())).collect::<Vec<_>>(),
        [(0x100, 8), (0x8100, 8)]
    );
    q.push_used(&mem, 0, 0).unwrap();
    // The table at the end of the second region runs into the hole: typed, not a panic.
    let hole_table = 0x1_0000 - 16;
    put_desc(&mem, hole_table, 0x100, 8, 1, 1);
    put_desc(&mem, desc, hole_table, 32, 4, 0);
    let slot = avail + layout::RING_OFFSET + 2 * u64::from(idx % size);
    mem.store_u16(GuestAddress(slot), 0).unwrap();
    idx = idx.wrapping_add(1);
    mem.store_u16(GuestAddress(avail + layout::IDX_OFFSET), idx)
        .unwrap();
    let c = q.pop_avail(&mem).unwrap().unwrap();
    assert!(matches!(
        c.iter(&mem).next(),
        Some(Err(ChainError::Memory(MemoryError::OutOfRange { .. })))
    ));
    q.push_used(&mem, 0, 0).unwrap();
    // Rings across the hole.
    for (d, a, u) in [
        (0x1_0000 - 128, avail, used),
        (desc, 0x1_0000 - 18, used),
        (desc, avail, 0x1_0000 - 64),
    ] {
        let mut r = q.clone();
        (r.desc_table_addr, r.avail_ring_addr, r.used_ring_addr) =
            (GuestAddress(d), GuestAddress(a), GuestAddress(u));
        assert!(r.is_valid());
        assert!(r.check_rings(&mem).is_err(), "{d:#x} {a:#x} {u:#x}");
    }
}

/// A region that ends 32 bytes below 2⁶⁴: a packed ring in its last bytes works across laps;
/// one descriptor more would end past RAM and is refused at enable, two more would end at 2⁶⁴
/// and are not a valid configuration; a descriptor whose buffer end overflows is a typed error.
#[test]
fn region_table_top_of_the_address_space() {
    const LEN: usize = 0x2000;
    let base = u64::MAX - 31 - LEN as u64;
    let map = [(base, LEN)];
    let mut backing = vec![vec![0u64; LEN / 8]];
    let mem = region_table(&mut backing, &map);
    let end = base + LEN as u64; // exclusive, = 2^64 - 32
    let size = 37u16;
    let ring = (end - 16 * u64::from(size)) & !0xF;
    let mut q = PackedQueue::new(size);
    (q.desc_ring_addr, q.driver_event_addr, q.device_event_addr) = (
        GuestAddress(ring),
        GuestAddress(base),
        GuestAddress(base + 4),
    );
    q.ready = true;
    assert!(q.is_valid(), "{q:?}");
    q.check_rings(&mem).expect("ring in the top region");
    let mut wrap = true;
    for n in 0..(2 * u32::from(size) + 5) {
        let slot = q.next_avail_idx;
        let at = ring + 16 * u64::from(slot);
        let buf = if n % 5 == 4 {
            u64::MAX - 7
        } else {
            base + 0x100
        };
        mem.write(GuestAddress(at), &buf.to_le_bytes()).unwrap();
        mem.write(GuestAddress(at + 8), &16u32.to_le_bytes())
            .unwrap();
        mem.store_u16(GuestAddress(at + 12), slot).unwrap();
        let f = if wrap { 1 << 7 } else { 1 << 15 };
        mem.store_u16(GuestAddress(at + 14), f | 2).unwrap();
        let c = q.pop_avail(&mem).unwrap().expect("chain");
        let walked: Result<Vec<_>, _> = c.iter(&mem).collect();
        if n % 5 == 4 {
            assert!(matches!(walked, Err(ChainError::Memory(_))), "{walked:?}");
        } else {
            assert_eq!(walked.unwrap().len(), 1);
        }
        q.push_used(&mem, &c, 0).unwrap();
        if slot == size - 1 {
            wrap = !wrap;
        }
        assert_eq!(q.avail_wrap_counter, wrap);
    }
    let mut q2 = PackedQueue::new(size + 1);
    (
        q2.desc_ring_addr,
        q2.driver_event_addr,
        q2.device_event_addr,
    ) = (
        GuestAddress(ring),
        GuestAddress(base),
        GuestAddress(base + 4),
    );
    q2.ready = true;
    assert!(q2.is_valid());
    assert!(matches!(q2.check_rings(&mem), Err(QueueError::Memory(_))));
    // Two more: the ring would end at 2^64, which no address can express.
    q2.max_size = size + 2;
    q2.size = size + 2;
    assert!(!q2.is_valid());
    assert_eq!(q2.check_rings(&mem), Err(QueueError::NotReady));
    assert_eq!(q2.pop_avail(&mem).unwrap_err(), QueueError::NotReady);
}

/// A saved state is a function of the queue alone: saving into a buffer that held other bytes
/// gives the same state as saving into a zeroed one, also for a `Queue<W>` whose public
/// `max_size` was raised past its bitmap (the state then has more bitmap words than the queue
/// keeps, and those must be zero, not whatever the buffer held), and that state restores.
#[test]
fn saved_state_does_not_depend_on_the_buffer_it_is_written_into() {
    let mem = TestMemory::m0();
    let mut drv = SplitDriver::standard(&mem, 64);
    let mut q = Queue::<1>::with_capacity(64);
    (q.desc_table_addr, q.avail_ring_addr, q.used_ring_addr) = (
        GuestAddress(drv.desc),
        GuestAddress(drv.avail),
        GuestAddress(drv.used),
    );
    q.ready = true;
    drv.set_desc(5, BUF, 16, W, 0);
    drv.publish(5);
    q.pop_avail(&mem).unwrap().unwrap();
    q.max_size = 256;
    let len = q.state_len();
    let mut zeroed = vec![0u8; len];
    let mut dirty = vec![0xFFu8; len];
    assert_eq!(q.save_into(&mut zeroed), Ok(len));
    assert_eq!(q.save_into(&mut dirty), Ok(len));
    assert_eq!(dirty, zeroed, "stale buffer bytes leaked into the state");
    let mut back = Queue::new(256);
    back.restore(&dirty, &mem)
        .expect("the saved state restores");
    assert_eq!((back.size, back.in_flight()), (64, 1));
    assert!(back.in_flight_chain(5).is_ok());

    // The packed queue: the same with its public `max_size` raised past what it tracks.
    let mut pdrv = PackedDriver::standard(&mem, 8);
    let mut p = pdrv.queue(8, Features::empty());
    pdrv.add_chain(&[(BUF, 16, true)]).unwrap();
    p.pop_avail(&mem).unwrap().unwrap();
    p.max_size = u16::MAX;
    let len = p.state_len();
    let mut zeroed = vec![0u8; len];
    let mut dirty = vec![0xA5u8; len];
    assert_eq!(p.save_into(&mut zeroed), Ok(len));
    assert_eq!(p.save_into(&mut dirty), Ok(len));
    assert_eq!(
        dirty, zeroed,
        "stale buffer bytes leaked into the packed state"
    );
}

#[derive(Clone, Debug)]
enum Step {
    /// Driver writes ring entry `avail_idx + k` = head and publishes up to it.
    Publish(u16, u16),
    /// Driver stores a raw `avail.idx` offset from the device cursor.
    AvailIdx(u16),
    Pop,
    Complete(u16, u32),
    Publish2,
    Notify,
    Kicks(bool),
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u16..3, prop_oneof![0u16..16, Just(16), Just(17), any::<u16>()]).prop_map(|(k, h)| Step::Publish(k, h)),
        1 => prop_oneof![0u16..20, any::<u16>()].prop_map(Step::AvailIdx),
        4 => Just(Step::Pop),
        3 => (prop_oneof![0u16..16, any::<u16>()], any::<u32>()).prop_map(|(h, l)| Step::Complete(h, l)),
        1 => Just(Step::Publish2),
        1 => Just(Step::Notify),
        1 => any::<bool>().prop_map(Step::Kicks),
    ]
}

/// Run `steps` against a split queue of 16 with bitmap `WORDS`; the observable trace: every
/// result, the cursors, and the used ring's bytes.
fn run_split<const WORDS: usize>(q: &mut Queue<WORDS>, steps: &[Step], start: u16) -> Vec<String> {
    let mem = TestMemory::m0();
    let mut drv = SplitDriver::standard(&mem, 16);
    (q.desc_table_addr, q.avail_ring_addr, q.used_ring_addr) = (
        GuestAddress(drv.desc),
        GuestAddress(drv.avail),
        GuestAddress(drv.used),
    );
    q.features = Features::EVENT_IDX;
    q.ready = true;
    q.next_avail_idx = start;
    q.next_used_idx = start;
    drv.avail_idx = start;
    mem.poke_u16(drv.used + layout::IDX_OFFSET, start);
    for h in 0..16 {
        drv.set_desc(h, BUF + 64 * u64::from(h), 64, W, 0);
    }
    let mut trace = Vec::new();
    for s in steps {
        let r = match *s {
            Step::Publish(k, h) => {
                drv.set_ring_entry(drv.avail_idx.wrapping_add(k), h);
                let idx = drv.avail_idx.wrapping_add(k + 1);
                drv.set_avail_idx(idx);
                String::new()
            }
            Step::AvailIdx(d) => {
                drv.set_avail_idx(q.next_avail_idx.wrapping_add(d));
                String::new()
            }
            Step::Pop => format!("{:?}", q.pop_avail(&mem).map(|c| c.map(|c| c.head_index()))),
            Step::Complete(h, l) => format!("{:?}", q.add_used(&mem, h, l)),
            Step::Publish2 => format!("{:?}", q.publish_used(&mem)),
            Step::Notify => format!("{:?}", q.needs_notification(&mem)),
            Step::Kicks(true) => format!("{:?}", q.enable_notification(&mem)),
            Step::Kicks(false) => format!("{:?}", q.disable_notification(&mem)),
        };
        trace.push(format!(
            "{s:?} -> {r} [{} {} {} {:?}]",
            q.next_avail_idx,
            q.next_used_idx,
            q.in_flight(),
            q.error()
        ));
    }
    trace.push(format!(
        "{:?}",
        mem.peek(drv.used, layout::used_ring_bytes(16) as usize)
    ));
    trace
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 4 } else { 1000 }, ..ProptestConfig::default() })]

    /// A `Queue<W>` with a bitmap sized to its queue behaves exactly like the default `Queue`
    /// on the same hostile sequence (heads out of range, duplicates, overruns, completions of
    /// heads not in flight), from cursors anywhere near the 16-bit wrap.
    #[test]
    fn split_sized_bitmap_behaves_like_the_default(
        steps in prop::collection::vec(step_strategy(), 1..40),
        start in prop_oneof![Just(0u16), Just(0xFFF8), Just(0xFFFF), Just(0x7FFC), any::<u16>()],
    ) {
        let a = run_split(&mut Queue::new(16), &steps, start);
        let b = run_split(&mut Queue::<{ in_flight_words(16) }>::with_capacity(16), &steps, start);
        prop_assert_eq!(a, b);
    }
}
