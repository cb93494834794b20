//! Save and restore of the queues (issue #13): a restored queue behaves exactly as if it had
//! never stopped.
//!
//! Each test runs a pseudo-random workload (driver adds chains and reaps completions and moves
//! its suppression state; the device pops, holds, completes out of order, batches, publishes,
//! decides interrupts and toggles kicks) once straight through, and once more for every step
//! `k`, replacing the queue at step `k` with a fresh one restored from the saved state (the
//! chains the device holds re-obtained from their saved form). Every answer the queue gives
//! after `k`, and the guest memory at the end, must be the same in both runs. Cursors start
//! around the 16-bit wrap (split) or at every slot and wrap counter (packed), with chains in
//! flight at most save points.

use virtq::packed::PackedChain;
use virtq::wire::split_layout;
use virtq::{Completion, DescriptorChain, Features, PackedQueue, Queue};
use virtq_testkit::{PackedDriver, SplitDriver, TestMemory};

/// Deterministic xorshift.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const STEPS: usize = 120;
const RAM: (u64, u64) = (0, 0x20000);

fn dump(mem: &TestMemory) -> Vec<u8> {
    mem.peek(RAM.0, RAM.1 as usize)
}

// ---------------------------------------------------------------- split

fn split_run(
    seed: u64,
    start: u16,
    features: Features,
    restore_at: Option<usize>,
) -> (Vec<String>, Vec<u8>) {
    let mem = TestMemory::new(&[RAM]);
    let mut rng = Rng(seed);
    let size = 8;
    let mut drv = SplitDriver::new(&mem, size, 0x1000, 0x2000, 0x3000);
    let mut q = drv.queue(size, features);
    // Start the indices near the wrap, as a restore by hand would.
    drv.avail_idx = start;
    drv.last_used = start;
    mem.poke_u16(drv.avail + split_layout::IDX_OFFSET, start);
    mem.poke_u16(drv.used + split_layout::IDX_OFFSET, start);
    q.next_avail_idx = start;
    q.next_used_idx = start;
    let mut held: Vec<DescriptorChain> = Vec::new();
    let mut out = Vec::new();
    for step in 0..STEPS {
        if Some(step) == restore_at {
            let saved = q.save();
            let heads: Vec<u16> = held.iter().map(|c| c.head_index()).collect();
            let mut r = Queue::new(size);
            r.restore(saved.as_bytes(), &mem)
                .expect("a saved state restores");
            assert_eq!(
                r.save(),
                saved,
                "the restored state saves to the same bytes"
            );
            q = r;
            held = heads
                .iter()
                .map(|&h| q.in_flight_chain(h).expect("held heads are in flight"))
                .collect();
        }
        // Both runs resume at the same points, so only the restore differs between them.
        if step % 17 == 0 {
            out.push(format!("resume {:?}", q.resume(&mem)));
        }
        match rng.below(12) {
            0..=2 => {
                let n = 1 + rng.below(3) as usize;
                let bufs: Vec<(u64, u32, bool)> = (0..n)
                    .map(|i| (0x8000 + 0x100 * rng.below(16), 16 + i as u32, i + 1 == n))
                    .collect();
                out.push(format!("add {:?}", drv.add_chain(&bufs)));
            }
            3 => out.push(format!("reap {:?}", drv.pop_used())),
            4 => {
                let ev = drv.last_used.wrapping_add(rng.below(3) as u16);
                drv.set_used_event(ev);
                drv.set_avail_flags(rng.below(2) as u16);
            }
            5 | 6 => {
                let r = q.pop_avail(&mem);
                if let Ok(Some(c)) = r {
                    let bufs: Vec<_> = c.iter(&mem).collect();
                    out.push(format!("walk {bufs:?}"));
                    held.push(c);
                }
                out.push(format!("pop {r:?}"));
            }
            7 if !held.is_empty() => {
                let c = held.remove(rng.below(held.len() as u64) as usize);
                let len = rng.below(20) as u32;
                let r = if rng.below(2) == 0 {
                    q.add_used(&mem, c.head_index(), len)
                } else {
                    q.push_used(&mem, c.head_index(), len)
                };
                out.push(format!("complete {} {r:?}", c.head_index()));
            }
            8 => out.push(format!("publish {:?}", q.publish_used(&mem))),
            9 => out.push(format!("notify {:?}", q.needs_notification(&mem))),
            10 => {
                if rng.below(2) == 0 {
                    out.push(format!("enable {:?}", q.enable_notification(&mem)));
                } else {
                    out.push(format!("disable {:?}", q.disable_notification(&mem)));
                }
            }
            _ => {
                let budget = rng.below(4) as usize;
                let defer = rng.below(2) == 0;
                let mut kept = Vec::new();
                let r = q.drain(&mem, budget, |c| {
                    if defer {
                        kept.push(c);
                        Completion::Deferred
                    } else {
                        Completion::Used(3)
                    }
                });
                held.extend(kept);
                out.push(format!("drain {r:?}"));
            }
        }
    }
    out.push(format!("final {:?} in flight {}", q.error(), q.in_flight()));
    (out, dump(&mem))
}

#[test]
fn split_restored_at_every_step_behaves_as_if_it_never_stopped() {
    let starts = [0u16, 0xFFF8, 0xFFFF, 0x7FFC];
    let feature_sets = [
        Features::empty(),
        Features::EVENT_IDX,
        Features::EVENT_IDX | Features::INDIRECT_DESC,
    ];
    let mut compared = 0;
    for (i, &start) in starts.iter().enumerate() {
        for (j, &f) in feature_sets.iter().enumerate() {
            let seed = 0x9E37_79B9_7F4A_7C15 ^ ((i * 3 + j) as u64 + 1);
            let reference = split_run(seed, start, f, None);
            let step = if cfg!(miri) { 29 } else { 1 };
            for k in (0..STEPS).step_by(step) {
                let got = split_run(seed, start, f, Some(k));
                assert_eq!(got.0, reference.0, "start {start:#x} {f:?} restored at {k}");
                assert!(
                    got.1 == reference.1,
                    "memory differs: start {start:#x} {f:?} at {k}"
                );
                compared += 1;
            }
        }
    }
    assert!(compared >= 12);
}

// ---------------------------------------------------------------- packed

fn packed_run(
    seed: u64,
    start: (u16, bool),
    features: Features,
    restore_at: Option<usize>,
) -> (Vec<String>, Vec<u8>) {
    let mem = TestMemory::new(&[RAM]);
    let mut rng = Rng(seed);
    let size = 6;
    let mut drv = PackedDriver::new(&mem, size, 0x1000, 0x2000, 0x2100);
    let mut q = drv.queue(size, features);
    // The history the cursors imply: the slots before the start were used in the current lap,
    // the others in the previous one (or never touched in the first lap).
    let used = virtq_testkit::pflags::A | virtq_testkit::pflags::U;
    for slot in 0..size {
        match (slot < start.0, start.1) {
            (true, true) => drv.set_flags(slot, used),
            (false, false) => drv.set_flags(slot, used),
            _ => drv.set_flags(slot, 0),
        }
    }
    drv.next_avail = start.0;
    drv.avail_wrap = start.1;
    drv.next_used = start.0;
    drv.used_wrap = start.1;
    q.next_avail_idx = start.0;
    q.avail_wrap_counter = start.1;
    q.next_used_idx = start.0;
    q.used_wrap_counter = start.1;
    let mut held: Vec<PackedChain<4>> = Vec::new();
    let mut out = Vec::new();
    for step in 0..STEPS {
        if Some(step) == restore_at {
            let saved = q.save();
            let chains: Vec<Vec<u8>> = held
                .iter()
                .map(|c| {
                    let mut b = vec![0u8; c.saved_len()];
                    assert_eq!(c.save_into(&mut b), Ok(b.len()));
                    b
                })
                .collect();
            let mut r = PackedQueue::new(size);
            if let Err(e) = r.restore(saved.as_bytes(), &mem) {
                let flags: Vec<u16> = (0..size).map(|s| drv.flags(s)).collect();
                panic!("restore at {step} from {start:?}: {e:?}; queue {q:?}; flags {flags:x?}");
            }
            assert_eq!(
                r.save(),
                saved,
                "the restored state saves to the same bytes"
            );
            q = r;
            held = chains
                .iter()
                .map(|b| {
                    let mut c = PackedChain::<4>::EMPTY;
                    q.readopt_into(&mem, b, &mut c)
                        .expect("held chains readopt");
                    c
                })
                .collect();
        }
        // Both runs resume at the same points, so only the restore differs between them.
        if step % 17 == 0 {
            out.push(format!("resume {:?}", q.resume(&mem)));
        }
        match rng.below(12) {
            0..=2 => {
                let n = 1 + rng.below(2) as usize;
                let bufs: Vec<(u64, u32, bool)> = (0..n)
                    .map(|i| (0x8000 + 0x100 * rng.below(16), 16 + i as u32, i + 1 == n))
                    .collect();
                out.push(format!("add {:?}", drv.add_chain(&bufs)));
            }
            3 => out.push(format!("reap {:?}", drv.pop_used())),
            4 => {
                let flags = rng.below(3) as u16;
                let off = drv.used_off_wrap();
                drv.set_driver_event(off, flags);
            }
            5 | 6 => {
                let mut c = PackedChain::<4>::EMPTY;
                let r = q.pop_avail_into(&mem, &mut c);
                if let Ok(true) = r {
                    let bufs: Vec<_> = c.iter(&mem).collect();
                    out.push(format!("walk {} {bufs:?}", c.head_index()));
                    held.push(c);
                }
                out.push(format!("pop {r:?}"));
            }
            7 if !held.is_empty() => {
                let c = held.remove(rng.below(held.len() as u64) as usize);
                let len = rng.below(20) as u32;
                let r = if rng.below(2) == 0 {
                    q.add_used(&mem, &c, len)
                } else {
                    q.push_used(&mem, &c, len)
                };
                out.push(format!("complete {} {r:?}", c.head_index()));
            }
            8 => out.push(format!("publish {:?}", q.publish_used(&mem))),
            9 => out.push(format!("notify {:?}", q.needs_notification(&mem))),
            10 => {
                if rng.below(2) == 0 {
                    out.push(format!("enable {:?}", q.enable_notification(&mem)));
                } else {
                    out.push(format!("disable {:?}", q.disable_notification(&mem)));
                }
            }
            _ => {
                let budget = rng.below(4) as usize;
                let defer = rng.below(2) == 0;
                let mut kept = Vec::new();
                let mut storage = PackedChain::<4>::EMPTY;
                let r = q.drain_into(&mem, budget, &mut storage, |c| {
                    if defer {
                        kept.push(*c);
                        Completion::Deferred
                    } else {
                        Completion::Used(3)
                    }
                });
                held.extend(kept);
                out.push(format!("drain {r:?}"));
            }
        }
    }
    out.push(format!("final {:?} in flight {}", q.error(), q.in_flight()));
    (out, dump(&mem))
}

#[test]
fn packed_restored_at_every_step_behaves_as_if_it_never_stopped() {
    let feature_sets = [Features::empty(), Features::EVENT_IDX];
    let mut compared = 0;
    for slot in [0u16, 3, 5] {
        for wrap in [true, false] {
            for (j, &f) in feature_sets.iter().enumerate() {
                let seed = 0xD1B5_4A32_D192_ED03
                    ^ (u64::from(slot) * 4 + u64::from(wrap) * 2 + j as u64 + 1);
                let reference = packed_run(seed, (slot, wrap), f, None);
                let step = if cfg!(miri) { 29 } else { 1 };
                for k in (0..STEPS).step_by(step) {
                    let got = packed_run(seed, (slot, wrap), f, Some(k));
                    assert_eq!(
                        got.0, reference.0,
                        "slot {slot} wrap {wrap} {f:?} restored at {k}"
                    );
                    assert!(
                        got.1 == reference.1,
                        "memory differs: slot {slot} {wrap} {f:?} at {k}"
                    );
                    compared += 1;
                }
            }
        }
    }
    assert!(compared >= 12);
}
