//! Round trips through the public API: every power-of-two size, index wrap-around, batching,
//! `set_size` / `is_valid` / `reset`.

use virtq::{Features, GuestAddress, GuestMemory, Queue, QueueError};
use virtq_testkit::{SplitDriver, TestMemory};

/// Serve everything available: each chain is completed with its writable length.
fn serve(q: &mut Queue, mem: &TestMemory) -> usize {
    let mut n = 0;
    while let Some(chain) = q.pop_avail(mem).unwrap() {
        let written: u32 = chain
            .iter(mem)
            .map(|d| d.unwrap())
            .filter(|d| d.is_write_only())
            .map(|d| d.len())
            .sum();
        q.push_used(mem, chain.head_index(), written).unwrap();
        n += 1;
    }
    n
}

#[test]
fn every_power_of_two_size_round_trips() {
    let mem = TestMemory::new(&[(0, 0x80_0000)]);
    // Miri interprets every atomic byte of the test memory: stop at 256 there.
    let max_shift = if cfg!(miri) { 8 } else { 15 };
    for shift in 0..=max_shift {
        let size = 1u16 << shift;
        let mut drv = SplitDriver::standard(&mem, size);
        let mut q = drv.queue(size, Features::empty());
        assert!(q.is_valid(), "size {size}");
        q.check_rings(&mem).unwrap();
        // Two rounds so the second uses ring slots after the first.
        for round in 0..2u32 {
            let bufs = [(0x70_0000, 16, false), (0x70_1000, 100 + round, true)];
            // A queue of size 1 holds a one-descriptor chain only.
            let bufs = if size >= 2 { &bufs[..] } else { &bufs[1..] };
            let head = drv.add_chain(bufs).unwrap();
            assert_eq!(serve(&mut q, &mem), 1);
            assert_eq!(drv.pop_used(), Some((u32::from(head), 100 + round)));
        }
    }
}

#[test]
fn indices_wrap_past_65535() {
    let mem = TestMemory::new(&[(0, 0x10_0000)]);
    let mut drv = SplitDriver::standard(&mem, 4);
    let mut q = drv.queue(4, Features::empty());
    // 70 000 rounds wrap the 16-bit indices; Miri checks the same path over fewer rounds.
    let rounds: u32 = if cfg!(miri) { 300 } else { 70_000 };
    for i in 0..rounds {
        drv.add_chain(&[(0x8_0000, 8, true)]).unwrap();
        if i % 3 == 0 {
            drv.add_chain(&[(0x8_1000, 4, false)]).unwrap();
        }
        serve(&mut q, &mem);
        while drv.pop_used().is_some() {}
    }
    assert_eq!(q.next_avail_idx, q.next_used_idx);
    assert_eq!(q.next_avail_idx, drv.avail_idx);
    assert_eq!(drv.used_idx(), drv.avail_idx);
    assert_eq!(
        u32::from(drv.avail_idx),
        (rounds + rounds.div_ceil(3)) % 65_536
    );
}

#[test]
fn batched_completion_publishes_once() {
    let mem = TestMemory::new(&[(0, 0x10_0000)]);
    let mut drv = SplitDriver::standard(&mem, 8);
    let mut q = drv.queue(8, Features::empty());
    let heads: Vec<u16> = (0..5)
        .map(|i| drv.add_chain(&[(0x8_0000 + i * 0x100, 32, true)]).unwrap())
        .collect();
    let chains: Vec<_> = std::iter::from_fn(|| q.pop_avail(&mem).unwrap()).collect();
    assert_eq!(chains.len(), 5);
    mem.start_recording();
    for c in chains.iter().rev() {
        q.add_used(&mem, c.head_index(), 7).unwrap();
    }
    assert_eq!(drv.used_idx(), 0, "nothing visible before publish");
    assert_eq!(q.publish_used(&mem).unwrap(), 5);
    let log = mem.take_log();
    let idx_stores = log
        .iter()
        .filter(|a| a.kind == virtq_testkit::AccessKind::Store16)
        .count();
    assert_eq!(idx_stores, 1);
    assert_eq!(drv.used_idx(), 5);
    let got: Vec<u32> = (0..5).map(|i| drv.used_elem(i).0).collect();
    let want: Vec<u32> = heads.iter().rev().map(|&h| u32::from(h)).collect();
    assert_eq!(got, want);
    assert_eq!(q.publish_used(&mem).unwrap(), 0);
}

#[test]
fn set_size_clamps_to_max_and_power_of_two() {
    let mut q = Queue::new(256);
    q.set_size(100);
    assert_eq!(q.size, 64);
    q.set_size(1000);
    assert_eq!(q.size, 256);
    q.set_size(0);
    assert_eq!(q.size, 0);
    q.set_size(1);
    assert_eq!(q.size, 1);
    assert_eq!(Queue::new(300).max_size, 256);
    assert_eq!(Queue::new(u16::MAX).max_size, 32768);
}

#[test]
fn is_valid_needs_ready_addresses_and_alignment() {
    let mem = TestMemory::new(&[(0, 0x10_0000)]);
    let drv = SplitDriver::standard(&mem, 16);
    let good = drv.queue(16, Features::empty());
    assert!(good.is_valid());
    let mut q = good.clone();
    q.ready = false;
    assert!(!q.is_valid());
    let mut q = good.clone();
    q.size = 0;
    assert!(!q.is_valid());
    let mut q = good.clone();
    q.size = 6;
    assert!(!q.is_valid());
    let mut q = good.clone();
    q.size = 32; // above max_size 16
    assert!(!q.is_valid());
    let mut q = good.clone();
    q.desc_table_addr = GuestAddress(0x1008); // H9f
    assert!(!q.is_valid());
    let mut q = good.clone();
    q.avail_ring_addr = GuestAddress(0x2001);
    assert!(!q.is_valid());
    let mut q = good.clone();
    q.used_ring_addr = GuestAddress(0x3002);
    assert!(!q.is_valid());
    let mut q = good.clone();
    q.used_ring_addr = GuestAddress(0);
    assert!(!q.is_valid());
    let mut q = good.clone();
    q.used_ring_addr = GuestAddress(u64::MAX - 3); // H9i: ring wraps the address space
    assert!(!q.is_valid());
    // A not-ready queue is never read.
    mem.start_recording();
    let mut q = good.clone();
    q.ready = false;
    assert_eq!(q.pop_avail(&mem), Err(QueueError::NotReady));
    assert!(mem.take_log().is_empty());
}

#[test]
fn reset_returns_to_power_on_state_and_drops_completions() {
    let mem = TestMemory::new(&[(0, 0x10_0000)]);
    let mut drv = SplitDriver::standard(&mem, 8);
    let mut q = drv.queue(8, Features::INDIRECT_DESC);
    let head = drv.add_chain(&[(0x8_0000, 8, true)]).unwrap();
    let chain = q.pop_avail(&mem).unwrap().unwrap();
    assert_eq!(chain.head_index(), head);
    q.reset();
    assert!(!q.ready && !q.is_valid());
    assert_eq!(
        (q.size, q.max_size, q.next_avail_idx, q.next_used_idx),
        (8, 8, 0, 0)
    );
    assert_eq!(q.desc_table_addr, GuestAddress(0));
    assert_eq!(q.features, Features::empty());
    assert_eq!(q.in_flight(), 0);
    // H19: a completion for a chain popped before the reset writes nothing.
    mem.start_recording();
    assert_eq!(q.push_used(&mem, head, 8), Err(QueueError::NotReady));
    let mut q2 = drv.queue(8, Features::empty());
    assert_eq!(
        q2.push_used(&mem, head, 8),
        Err(QueueError::HeadNotInFlight { head })
    );
    assert!(
        mem.take_log()
            .iter()
            .all(|a| a.kind != virtq_testkit::AccessKind::Write)
    );
    assert_eq!(drv.used_idx(), 0);
}

#[test]
fn dyn_guest_memory_works() {
    let mem = TestMemory::new(&[(0, 0x10_0000)]);
    let mut drv = SplitDriver::standard(&mem, 4);
    let mut q = drv.queue(4, Features::empty());
    let dynmem: &dyn GuestMemory = &mem;
    drv.add_chain(&[(0x8_0000, 8, false)]).unwrap();
    let c = q.pop_avail(dynmem).unwrap().unwrap();
    assert_eq!(c.iter(dynmem).count(), 1);
    q.push_used(dynmem, c.head_index(), 0).unwrap();
    assert_eq!(drv.pop_used(), Some((u32::from(c.head_index()), 0)));
}
