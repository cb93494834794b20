//! Packed ring round trips through the public API (VIRTIO 1.4 §2.8): sizes 1, 2, 3, 6, 255,
//! 256 and 32768 over several laps, chains across the end of the ring, batching, out-of-order
//! completion, indirect chains, IN_ORDER batches, `set_size` / `is_valid` / `check_rings` /
//! `reset`.

use virtq::packed::{PACKED_DEFAULT_DIRECT, PackedChain};
use virtq::{ChainError, Descriptor, Features, GuestAddress, MemoryError, PackedQueue, QueueError};
use virtq_testkit::{AccessKind, PackedDriver, TestMemory, pflags};

fn tuples<const N: usize>(c: &PackedChain<N>, mem: &TestMemory) -> Vec<(u64, u32, bool)> {
    c.iter(mem)
        .map(|d| d.unwrap())
        .map(|d: Descriptor| (d.addr().0, d.len(), d.is_write_only()))
        .collect()
}

/// Serve everything available: each chain is completed with its writable length.
fn serve(q: &mut PackedQueue, mem: &TestMemory) -> usize {
    let mut n = 0;
    while let Some(chain) = q.pop_avail(mem).unwrap() {
        let written: u32 = tuples(&chain, mem)
            .iter()
            .filter(|d| d.2)
            .map(|d| d.1)
            .sum();
        q.push_used(mem, &chain, written).unwrap();
        n += 1;
    }
    n
}

/// PACKED-02, H15g: sizes that are and are not powers of two, including the extremes, each
/// over more than two laps with chains of 1..=3 descriptors that cross the end of the ring.
/// Miri runs the small sizes (a lap of 32768 takes it many minutes).
#[test]
fn sizes_1_2_3_6_255_256_32768_round_trip_over_laps() {
    let mem = TestMemory::new(&[(0, 0x90_0000)]);
    let sizes: &[u16] = if cfg!(miri) {
        &[1, 2, 3, 6]
    } else {
        &[1, 2, 3, 6, 255, 256, 32768]
    };
    for &size in sizes {
        let mut drv = PackedDriver::standard(&mem, size);
        let mut q = drv.queue(size, Features::empty());
        assert!(q.is_valid(), "size {size}");
        q.check_rings(&mem).unwrap();
        let laps = 2 * u32::from(size) + 5;
        let mut descs_done = 0u32;
        let mut k = 0u32;
        while descs_done < laps {
            let n = (k % 3 + 1).min(u32::from(size));
            let mut bufs = vec![(0x80_0000 + u64::from(k % 7) * 0x100, 16, false)];
            for j in 1..n {
                bufs.push((0x81_0000 + u64::from(j) * 0x100, 10 + k % 5, true));
            }
            let expect_len: u32 = bufs.iter().filter(|b| b.2).map(|b| b.1).sum();
            let id = drv.add_chain(&bufs).unwrap();
            let chain = q.pop_avail(&mem).unwrap().unwrap();
            assert_eq!(chain.head_index(), id);
            assert_eq!(tuples(&chain, &mem), bufs, "size {size} chain {k}");
            q.push_used(&mem, &chain, expect_len).unwrap();
            assert!(q.pop_avail(&mem).unwrap().is_none());
            let used = drv.pop_used().expect("used descriptor visible");
            assert_eq!((used.id, used.len), (id, expect_len));
            assert_eq!(used.flags & pflags::W != 0, expect_len > 0, "PACKED-28");
            assert_eq!(used.flags & (pflags::N | pflags::I), 0, "PACKED-29");
            descs_done += n;
            k += 1;
        }
        // Device and driver agree on both cursors and wrap counters.
        assert_eq!(
            (q.next_avail_idx, q.avail_wrap_counter),
            (drv.next_avail, drv.avail_wrap)
        );
        assert_eq!(
            (q.next_used_idx, q.used_wrap_counter),
            (drv.next_used, drv.used_wrap)
        );
        assert_eq!(q.in_flight(), 0);
        assert_eq!(q.in_flight_descriptors(), 0);
    }
}

/// A whole-ring chain (Q descriptors) is legal; the cursor lands back on its slot with the wrap
/// counter flipped (PACKED-27), on both the read and the used side.
#[test]
fn whole_ring_chain_flips_wrap_on_same_slot() {
    let mem = TestMemory::m0();
    for size in [1u16, 3, 8] {
        let mut drv = PackedDriver::standard(&mem, size);
        let mut q = drv.queue(size, Features::empty());
        for round in 0..3u64 {
            let bufs: Vec<_> = (0..size)
                .map(|i| (0x8_0000 + u64::from(i) * 0x10 + round, 4, i + 1 == size))
                .collect();
            drv.add_chain(&bufs).unwrap();
            let c = q.pop_avail(&mem).unwrap().unwrap();
            assert_eq!(tuples(&c, &mem), bufs);
            assert_eq!(q.next_avail_idx, 0);
            assert_eq!(q.avail_wrap_counter, round % 2 == 1);
            q.push_used(&mem, &c, 4).unwrap();
            assert_eq!(q.next_used_idx, 0);
            assert_eq!(q.used_wrap_counter, round % 2 == 1);
            assert!(drv.pop_used().is_some());
        }
    }
}

/// Batched completion: nothing is visible before `publish_used`; the first used descriptor's
/// flags are stored last, after every body and the later flags (PACKED-20, PACKED-41).
#[test]
fn batched_completion_publishes_first_flags_last() {
    let mem = TestMemory::m0();
    let mut drv = PackedDriver::standard(&mem, 8);
    let mut q = drv.queue(8, Features::empty());
    let ids: Vec<u16> = (0..5)
        .map(|i| drv.add_chain(&[(0x8_0000 + i * 0x100, 32, true)]).unwrap())
        .collect();
    let chains: Vec<_> = std::iter::from_fn(|| q.pop_avail(&mem).unwrap()).collect();
    assert_eq!(chains.len(), 5);
    mem.start_recording();
    for c in &chains {
        q.add_used(&mem, c, 7).unwrap();
    }
    assert!(drv.peek_used().is_none(), "nothing visible before publish");
    assert_eq!(q.publish_used(&mem).unwrap(), 5);
    let log = mem.take_log();
    let first_flags = drv.slot_addr(0) + 14;
    let last = log.last().unwrap();
    assert_eq!(
        (last.kind, last.addr),
        (AccessKind::Store16, first_flags),
        "first flags stored last"
    );
    assert_eq!(
        log.iter().filter(|a| a.addr == first_flags).count(),
        1,
        "one flags store per used descriptor"
    );
    for (slot, a) in (0..5u16).zip(log.iter().filter(|a| a.kind == AccessKind::Write)) {
        assert_eq!((a.addr, a.len), (drv.slot_addr(slot) + 8, 6), "id+len only");
    }
    assert!(
        !log.iter().any(|a| a.kind == AccessKind::Write && a.len > 6),
        "addr is never written"
    );
    for id in ids {
        assert_eq!(drv.pop_used().map(|u| (u.id, u.len)), Some((id, 7)));
    }
    assert_eq!(q.publish_used(&mem).unwrap(), 0);
}

/// Out-of-order completion writes a used descriptor over a slot of a chain still in flight;
/// the chain was copied at pop, so walking it afterwards still yields what the driver wrote.
#[test]
fn out_of_order_completion_does_not_corrupt_chains_in_flight() {
    let mem = TestMemory::m0();
    let mut drv = PackedDriver::standard(&mem, 8);
    let mut q = drv.queue(8, Features::empty());
    let a_bufs = [
        (0x8_0000, 16, false),
        (0x8_1000, 64, true),
        (0x8_2000, 64, true),
    ];
    let a = drv.add_chain(&a_bufs).unwrap();
    let b = drv.add_chain(&[(0x8_3000, 8, true)]).unwrap();
    let ca = q.pop_avail(&mem).unwrap().unwrap();
    let cb = q.pop_avail(&mem).unwrap().unwrap();
    q.push_used(&mem, &cb, 8).unwrap();
    // B's used descriptor sits in slot 0, A's first slot.
    assert_eq!(drv.peek_used().map(|u| u.id), Some(b));
    mem.start_recording();
    assert_eq!(tuples(&ca, &mem), a_bufs);
    assert!(
        mem.take_log().is_empty(),
        "walking a direct chain reads nothing"
    );
    q.push_used(&mem, &ca, 128).unwrap();
    assert_eq!(drv.pop_used().map(|u| u.id), Some(b));
    assert_eq!(drv.pop_used().map(|u| (u.id, u.len)), Some((a, 128)));
    // Used cursor: 1 (B) + 3 (A).
    assert_eq!(q.next_used_idx, 4);
    // The driver reuses slot 0.. for new chains after wrapping; everything keeps working.
    for _ in 0..20 {
        drv.add_chain(&[(0x8_4000, 4, false), (0x8_5000, 4, true)])
            .unwrap();
        assert_eq!(serve(&mut q, &mem), 1);
        assert!(drv.pop_used().is_some());
    }
}

/// Indirect chains (§2.8.7): one ring slot, the table walked in order, WRITE on the pointer
/// ignored (PACKED-33).
#[test]
fn indirect_chain_round_trip() {
    let mem = TestMemory::m0();
    let mut drv = PackedDriver::standard(&mem, 4);
    let mut q = drv.queue(4, Features::INDIRECT_DESC);
    for round in 0..10u64 {
        let bufs = [
            (0x8_0000, 16, false),
            (0x8_1000 + round, 100, true),
            (0x8_2000, 1, true),
        ];
        let id = drv.add_indirect_chain(0x9_0000, &bufs).unwrap();
        let c = q.pop_avail(&mem).unwrap().unwrap();
        assert_eq!(c.head_index(), id);
        assert_eq!(tuples(&c, &mem), bufs);
        q.push_used(&mem, &c, 101).unwrap();
        assert_eq!(q.in_flight_descriptors(), 0);
        assert_eq!(drv.pop_used().map(|u| (u.id, u.len)), Some((id, 101)));
    }
    // 10 one-slot chains on a ring of 4: two and a half laps.
    assert_eq!((q.next_avail_idx, q.avail_wrap_counter), (2, true));
}

/// A direct chain of exactly the storage's `N` buffers, and one of `N + 1` (PACKED-25: the cap
/// is the device's choice of `N`), on a queue of `size`: the first is walked whole; the second
/// is consumed whole, walks `N` buffers and then `TooManySegments`, and completes (the used
/// cursor skips all `N + 1` slots). Zero-length buffers take no storage.
fn direct_cap_both_sides<const N: usize>(size: u16) {
    assert!(N < usize::from(size));
    let mem = TestMemory::new(&[(0, 0x90_0000)]);
    let mut drv = PackedDriver::standard(&mem, size);
    let mut q = drv.queue(size, Features::empty());
    let mut c = PackedChain::<N>::EMPTY;
    assert_eq!(c.capacity(), N);
    let bufs: Vec<_> = (0..N as u64)
        .map(|i| (0x80_0000 + (i % 4096) * 0x100, 8, i + 1 == N as u64))
        .collect();
    let id = drv.add_chain(&bufs).unwrap();
    assert!(q.pop_avail_into(&mem, &mut c).unwrap());
    assert_eq!((c.head_index(), usize::from(c.descriptor_count())), (id, N));
    assert_eq!(tuples(&c, &mem), bufs, "N = {N}");
    q.push_used(&mem, &c, 8).unwrap();
    assert_eq!(drv.pop_used().map(|u| u.id), Some(id));

    let mut more = bufs.clone();
    if let Some(last) = more.last_mut() {
        last.2 = false;
    }
    more.push((0x8F_0000, 8, true));
    let id = drv.add_chain(&more).unwrap();
    let used_before = q.next_used_idx;
    assert!(q.pop_avail_into(&mem, &mut c).unwrap());
    assert_eq!(usize::from(c.descriptor_count()), N + 1);
    let got: Vec<_> = c.iter(&mem).collect();
    assert_eq!(got.len(), N + 1);
    assert!(got[..N].iter().all(|d| d.is_ok()));
    assert_eq!(got[N], Err(ChainError::TooManySegments));
    // Consumed as a whole: completing it skips all N + 1 slots.
    q.push_used(&mem, &c, 0).unwrap();
    // (A skip of the whole ring lands on the same slot.)
    let skipped = (u32::from(q.next_used_idx) + u32::from(size) - u32::from(used_before) - 1)
        % u32::from(size)
        + 1;
    assert_eq!(skipped as usize, N + 1);
    assert_eq!(drv.pop_used().map(|u| u.id), Some(id));
    assert_eq!(q.in_flight_descriptors(), 0);

    // Zero-length descriptors take no storage: N buffers plus empty ones (as many as the ring
    // has room for, at most two: one before and one after) fit.
    let mut with_empty = bufs.clone();
    with_empty.push((0x8F_0000, 0, true));
    if N + 2 <= usize::from(size) {
        with_empty.insert(0, (0x8F_0000, 0, false));
    }
    drv.add_chain(&with_empty).unwrap();
    assert!(q.pop_avail_into(&mem, &mut c).unwrap());
    assert_eq!(tuples(&c, &mem), bufs);
}

#[test]
fn direct_chain_cap_is_the_storage_size_both_sides() {
    // The default storage.
    assert_eq!(PackedChain::new().capacity(), PACKED_DEFAULT_DIRECT);
    direct_cap_both_sides::<PACKED_DEFAULT_DIRECT>(64);
    direct_cap_both_sides::<1>(4);
    direct_cap_both_sides::<2>(3);
    // A Linux virtio-net TX chain without INDIRECT_DESC: MAX_SKB_FRAGS + 2 = 19.
    direct_cap_both_sides::<19>(256);
    // Miri stops at 19 descriptors (254 takes it minutes).
    if !cfg!(miri) {
        direct_cap_both_sides::<254>(255);
    }
}

/// With `N` equal to the queue size the device refuses no direct chain the ring can hold: a
/// whole-ring chain of 32768 descriptors is popped and walked whole, over two laps.
#[test]
fn storage_of_queue_size_takes_whole_ring_chains_up_to_32768() {
    fn whole_ring<const N: usize>() {
        let size = u16::try_from(N).unwrap();
        let mem = TestMemory::new(&[(0, 0x90_0000)]);
        let mut drv = PackedDriver::standard(&mem, size);
        let mut q = drv.queue(size, Features::empty());
        let mut c = Box::new(PackedChain::<N>::EMPTY);
        for round in 0..2u64 {
            let bufs: Vec<_> = (0..N as u64)
                .map(|i| (0x80_0000 + (i % 4096) * 0x10 + round, 4, i + 1 == N as u64))
                .collect();
            let id = drv.add_chain(&bufs).unwrap();
            assert!(q.pop_avail_into(&mem, &mut c).unwrap());
            assert_eq!((c.head_index(), usize::from(c.descriptor_count())), (id, N));
            assert_eq!(tuples(&c, &mem), bufs);
            assert_eq!((q.next_avail_idx, q.avail_wrap_counter), (0, round == 1));
            q.push_used(&mem, &c, 4).unwrap();
            assert_eq!(drv.pop_used().map(|u| (u.id, u.len)), Some((id, 4)));
        }
    }
    // The chain storage is 512 KiB: give the thread room for it.
    std::thread::Builder::new()
        .stack_size(16 << 20)
        .spawn(|| {
            whole_ring::<256>();
            // Natively only: two whole-ring chains of 32768 take Miri far too long.
            if !cfg!(miri) {
                whole_ring::<32768>();
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn in_order_batch_writes_one_used_descriptor() {
    let mem = TestMemory::m0();
    let mut drv = PackedDriver::standard(&mem, 8);
    let mut q = drv.queue(8, Features::IN_ORDER);
    let ids = [
        drv.add_chain(&[(0x8_0000, 8, false), (0x8_1000, 8, true)]),
        drv.add_chain(&[(0x8_2000, 8, true)]),
        drv.add_chain(&[(0x8_3000, 8, false), (0x8_4000, 8, true)]),
    ]
    .map(Option::unwrap);
    let chains: Vec<_> = std::iter::from_fn(|| q.pop_avail(&mem).unwrap()).collect();
    assert_eq!(chains.len(), 3);

    // Not the oldest first: refused, nothing written.
    mem.start_recording();
    assert_eq!(
        q.add_used_in_order(&mem, &chains[1..], 8),
        Err(QueueError::InvalidUsedHead { head: ids[1] })
    );
    let rev: Vec<_> = chains.iter().rev().copied().collect();
    assert!(q.add_used_in_order(&mem, &rev, 8).is_err());
    assert!(q.add_used_in_order::<_, 16>(&mem, &[], 8).is_err());
    assert!(mem.take_log().is_empty());

    q.add_used_in_order(&mem, &chains, 8).unwrap();
    q.publish_used(&mem).unwrap();
    assert_eq!(q.in_flight(), 0);
    assert_eq!(q.in_flight_descriptors(), 0);
    assert_eq!((q.next_used_idx, q.used_wrap_counter), (5, true));
    let u = drv.peek_used().unwrap();
    assert_eq!((u.id, u.len), (ids[2], 8));
    assert_eq!(drv.retire_in_order(&ids), 5);
    assert!(drv.peek_used().is_none());

    // Without IN_ORDER the batch form is refused.
    let mut drv2 = PackedDriver::standard(&mem, 8);
    let mut q2 = drv2.queue(8, Features::empty());
    let id = drv2.add_chain(&[(0x8_0000, 8, true)]).unwrap();
    let c = q2.pop_avail(&mem).unwrap().unwrap();
    assert_eq!(
        q2.add_used_in_order(&mem, &[c], 8),
        Err(QueueError::InvalidUsedHead { head: id })
    );
}

/// PACKED-02/03/04/05, H9: configuration checks.
#[test]
fn set_size_is_valid_check_rings_reset() {
    let mem = TestMemory::m0();
    let drv = PackedDriver::standard(&mem, 6);
    let mut q = drv.queue(256, Features::empty());
    assert_eq!(q.size, 6);
    assert!(q.is_valid(), "non-power-of-two size");
    q.set_size(0);
    assert!(!q.is_valid(), "size 0 is never valid");
    assert_eq!(q.pop_avail(&mem), Err(QueueError::NotReady));
    q.set_size(300);
    assert_eq!(q.size, 256, "clamped to max_size");
    q.set_size(6);

    assert_eq!(PackedQueue::new(40000).max_size, 32768);
    let mut big = PackedQueue::new(32768);
    big.set_size(32768);
    assert_eq!(big.size, 32768);

    for (field, addr) in [(0, 0x1008u64), (1, 0x3002), (2, 0x3102)] {
        let mut bad = q.clone();
        match field {
            0 => bad.desc_ring_addr = GuestAddress(addr),
            1 => bad.driver_event_addr = GuestAddress(addr),
            _ => bad.device_event_addr = GuestAddress(addr),
        }
        assert!(!bad.is_valid(), "misaligned area {field}");
    }
    let mut bad = q.clone();
    bad.desc_ring_addr = GuestAddress(0);
    assert!(!bad.is_valid());
    let mut bad = q.clone();
    bad.desc_ring_addr = GuestAddress(u64::MAX - 15);
    assert!(!bad.is_valid(), "ring wraps the address space");
    let mut bad = q.clone();
    bad.next_avail_idx = 6;
    assert!(!bad.is_valid(), "cursor >= size");
    let mut bad = q.clone();
    bad.next_used_idx = 6;
    assert!(!bad.is_valid(), "used cursor >= size");
    let mut bad = q.clone();
    bad.ready = false;
    assert!(!bad.is_valid());

    q.check_rings(&mem).unwrap();
    // Ring in the hole (H9g/h): refused with the memory error.
    let mut bad = q.clone();
    bad.desc_ring_addr = GuestAddress(0xF_FFC0);
    assert!(matches!(
        bad.check_rings(&mem),
        Err(QueueError::Memory(MemoryError::OutOfRange { .. }))
    ));
    let mut bad = q.clone();
    bad.device_event_addr = GuestAddress(0x15_0000);
    assert!(bad.check_rings(&mem).is_err());

    q.features = Features::INDIRECT_DESC;
    q.next_avail_idx = 3;
    q.avail_wrap_counter = false;
    q.reset();
    assert!(!q.ready);
    assert_eq!(q.size, 256);
    assert_eq!((q.next_avail_idx, q.avail_wrap_counter), (0, true));
    assert_eq!((q.next_used_idx, q.used_wrap_counter), (0, true));
    assert_eq!(q.features, Features::empty());
}

/// Chains popped before a reset cannot be completed after it (H19), nor chains popped from
/// another queue.
#[test]
fn completions_after_reset_are_refused() {
    let mem = TestMemory::m0();
    let mut drv = PackedDriver::standard(&mem, 4);
    let mut q = drv.queue(4, Features::empty());
    let id = drv.add_chain(&[(0x8_0000, 8, true)]).unwrap();
    let c = q.pop_avail(&mem).unwrap().unwrap();
    q.reset();
    let mut drv = PackedDriver::standard(&mem, 4);
    let q2 = drv.queue(4, Features::empty());
    q.size = q2.size;
    q.desc_ring_addr = q2.desc_ring_addr;
    q.driver_event_addr = q2.driver_event_addr;
    q.device_event_addr = q2.device_event_addr;
    q.ready = true;
    drv.add_chain(&[(0x8_0000, 8, true)]).unwrap();
    let _fresh = q.pop_avail(&mem).unwrap().unwrap();
    mem.start_recording();
    assert_eq!(
        q.push_used(&mem, &c, 8),
        Err(QueueError::HeadNotInFlight { head: id })
    );
    assert!(mem.take_log().is_empty(), "nothing written");

    // A chain popped from another packed queue (another ring).
    let mut other = PackedDriver::new(&mem, 4, 0x4000, 0x5000, 0x5100);
    let mut oq = other.queue(4, Features::empty());
    let oid = other.add_chain(&[(0x8_0000, 8, true)]).unwrap();
    let oc = oq.pop_avail(&mem).unwrap().unwrap();
    assert_eq!(
        q.push_used(&mem, &oc, 8),
        Err(QueueError::HeadNotInFlight { head: oid })
    );
    assert!(!q.is_broken(), "device bugs are not fatal");
}

/// The drain loop (same contract as `Queue::drain`) on the packed ring.
#[test]
fn drain_serves_and_reports() {
    let mem = TestMemory::m0();
    let mut drv = PackedDriver::standard(&mem, 8);
    let mut q = drv.queue(8, Features::empty());
    for i in 0..5 {
        drv.add_chain(&[(0x8_0000 + i * 0x100, 16, true)]).unwrap();
    }
    let r = q.drain(&mem, 3, |_| virtq::Completion::Used(16)).unwrap();
    assert_eq!((r.processed, r.completed, r.more), (3, 3, true));
    assert!(!q.notifications_enabled());
    let r = q.drain(&mem, 10, |_| virtq::Completion::Used(16)).unwrap();
    assert_eq!((r.processed, r.completed, r.more), (2, 2, false));
    assert!(r.notify);
    assert!(q.notifications_enabled());
    for _ in 0..5 {
        assert_eq!(drv.pop_used().map(|u| u.len), Some(16));
    }
}

/// `pop_avail_into` reuses caller storage: a long chain followed by a short one leaves nothing
/// of the first behind; an empty ring or an error leaves the storage empty (not completable).
#[test]
fn pop_avail_into_reuses_storage() {
    let mem = TestMemory::m0();
    let mut drv = PackedDriver::standard(&mem, 8);
    let mut q = drv.queue(8, Features::empty());
    let mut c = PackedChain::new();
    assert_eq!(q.pop_avail_into(&mem, &mut c), Ok(false));
    let long = [
        (0x8_0000, 8, false),
        (0x8_1000, 8, false),
        (0x8_2000, 8, true),
    ];
    let id = drv.add_chain(&long).unwrap();
    assert_eq!(q.pop_avail_into(&mem, &mut c), Ok(true));
    assert_eq!((c.head_index(), c.descriptor_count()), (id, 3));
    assert_eq!(tuples(&c, &mem), long);
    q.push_used(&mem, &c, 8).unwrap();
    let id2 = drv.add_chain(&[(0x8_3000, 4, true)]).unwrap();
    assert_eq!(q.pop_avail_into(&mem, &mut c), Ok(true));
    assert_eq!((c.head_index(), c.descriptor_count()), (id2, 1));
    assert_eq!(tuples(&c, &mem), [(0x8_3000, 4, true)]);
    let kept = c;
    assert_eq!(q.pop_avail_into(&mem, &mut c), Ok(false));
    assert_eq!(tuples(&c, &mem), []);
    assert!(
        q.push_used(&mem, &c, 0).is_err(),
        "an empty chain cannot be completed"
    );
    q.push_used(&mem, &kept, 4).unwrap();
    // A fatal error also leaves the storage empty.
    drv.set_desc(
        drv.next_avail,
        0x8_0000,
        8,
        1,
        pflags::N | pflags::avail(drv.avail_wrap),
    );
    assert!(q.pop_avail_into(&mem, &mut c).is_err());
    assert_eq!(tuples(&c, &mem), []);
}
