//! Restore from arbitrary state bytes over arbitrary guest memory, then run the queue
//! (issue #13: a snapshot is untrusted input).
//!
//! Input: a selector byte (split queue, packed queue, or a virtio-mmio transport v2 / legacy;
//! the restoring queue's `max_size`), the state bytes,
//! a guest memory image, optional saved packed chains, then operations (pops, completions of
//! held chains, publications, interrupt decisions, kick toggles, drains, resumes, and guest
//! writes to any ring word).
//!
//! Invariants (not only "no panic"):
//! * a refused restore changes nothing: the queue is equal to what it was and saves to the
//!   same bytes;
//! * an accepted restore is consistent: its state saves, and those bytes restore again to an
//!   equal queue;
//! * afterwards every call returns (bounded: the access budget of `Scripted` is never hit),
//!   the in-flight count never exceeds the queue size and matches the chains the harness
//!   holds after each of its own pops and completions, and the library writes guest memory
//!   only inside the restored queue's device-written areas (split: the used ring; packed: the
//!   descriptor ring and the device event structure);
//! * a readopted packed chain walks only buffers inside guest RAM.
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use virtq::packed::PackedChain;
use virtq::packed::layout as packed_layout;
use virtq::transport::MmioTransport;
use virtq::transport::mmio::MmioVersion;
use virtq::wire::split_layout;
use virtq::{Completion, DescriptorChain, Features, PackedQueue, Queue};
use virtq_fuzz::{decode_image, in_ram, new_memory};
use virtq_testkit::devices::blk::BlkDevice;
use virtq_testkit::scripted::Scripted;
use virtq_testkit::{AccessKind, TestMemory};

/// Guest accesses allowed per input: far above what the operations need.
const ACCESS_LIMIT: u64 = 200_000;

fn writes_inside(mem: &TestMemory, areas: &[(u64, u64)]) {
    for a in mem.take_log() {
        if matches!(a.kind, AccessKind::Write | AccessKind::Store16) {
            assert!(
                areas.iter().any(|&(at, len)| a.addr >= at
                    && a.addr.saturating_add(a.len) <= at.saturating_add(len)),
                "write {a:?} outside the device-written areas {areas:x?}"
            );
        }
    }
}

fn guest_pokes(u: &mut Unstructured<'_>, mem: &TestMemory) {
    let addr = u64::from(u.arbitrary::<u16>().unwrap_or(0)) & !1;
    let v: u16 = u.arbitrary().unwrap_or(0);
    if in_ram(addr, 2) {
        mem.poke_u16(addr, v);
    }
}

fn run_split(u: &mut Unstructured<'_>, mem: &TestMemory, max: u16, state: &[u8]) {
    let mut q = Queue::new(max);
    let before = q.clone();
    let before_bytes = q.save();
    if q.restore(state, mem).is_err() {
        assert!(q == before, "a refused restore changed the queue");
        assert_eq!(q.save(), before_bytes);
        return;
    }
    let saved = q.save();
    let mut again = Queue::new(max);
    again
        .restore(saved.as_bytes(), mem)
        .expect("an accepted state saves to a state that restores");
    assert!(again == q, "restoring the saved state gives the same queue");
    let used_area = (q.used_ring_addr.0, split_layout::used_ring_bytes(q.size));
    let s = Scripted::new(mem, ACCESS_LIMIT);
    let mut held: Vec<DescriptorChain> = Vec::new();
    mem.start_recording();
    for _ in 0..256 {
        let Ok(op) = u.arbitrary::<u8>() else { break };
        match op % 10 {
            0 | 1 => {
                if let Ok(Some(c)) = q.pop_avail(&s) {
                    for d in c.iter(&s).flatten() {
                        assert!(in_ram(d.addr().0, u64::from(d.len())) || d.len() == 0);
                    }
                    held.push(c);
                }
            }
            2 if !held.is_empty() => {
                let i = usize::from(u.arbitrary::<u8>().unwrap_or(0)) % held.len();
                let c = held.swap_remove(i);
                let _ = q.push_used(&s, c.head_index(), u.arbitrary().unwrap_or(0));
            }
            3 => {
                let _ = q.publish_used(&s);
            }
            4 => {
                let _ = q.needs_notification(&s);
            }
            5 => {
                let _ = q.enable_notification(&s);
            }
            6 => {
                let _ = q.disable_notification(&s);
            }
            7 => {
                let budget = usize::from(u.arbitrary::<u8>().unwrap_or(0) % 8);
                let _ = q.drain(&s, budget, |_| Completion::Used(0));
            }
            8 => {
                let _ = q.resume(&s);
            }
            _ => guest_pokes(u, mem),
        }
        assert!(q.in_flight() <= q.size);
        writes_inside(mem, &[used_area]);
    }
}

fn run_packed(u: &mut Unstructured<'_>, mem: &TestMemory, max: u16, state: &[u8]) {
    let mut q = PackedQueue::new(max);
    let before = q.clone();
    let before_bytes = q.save();
    if q.restore(state, mem).is_err() {
        assert!(q == before, "a refused restore changed the queue");
        assert_eq!(q.save(), before_bytes);
        return;
    }
    let saved = q.save();
    let mut again = PackedQueue::new(max);
    again
        .restore(saved.as_bytes(), mem)
        .expect("an accepted state saves to a state that restores");
    // The generation differs (a fresh incarnation); the saved bytes do not carry it.
    assert_eq!(again.save(), saved);
    let areas = [
        (q.desc_ring_addr.0, packed_layout::desc_ring_bytes(q.size)),
        (q.device_event_addr.0, packed_layout::EVENT_SIZE),
    ];
    let s = Scripted::new(mem, ACCESS_LIMIT);
    let mut held: Vec<PackedChain<4>> = Vec::new();
    // Saved chains from the input, readopted.
    let chains = u.arbitrary::<u8>().unwrap_or(0) % 4;
    for _ in 0..chains {
        let len = usize::from(u.arbitrary::<u8>().unwrap_or(0)).min(u.len());
        let Ok(bytes) = u.bytes(len) else { break };
        let mut c = PackedChain::<4>::EMPTY;
        match q.readopt_into(&s, bytes, &mut c) {
            Ok(()) => {
                for d in c.iter(&s).flatten() {
                    assert!(in_ram(d.addr().0, u64::from(d.len())));
                }
                held.push(c);
            }
            Err(_) => assert_eq!(c, PackedChain::<4>::EMPTY),
        }
    }
    mem.start_recording();
    for _ in 0..256 {
        let Ok(op) = u.arbitrary::<u8>() else { break };
        match op % 10 {
            0 | 1 => {
                let mut c = PackedChain::<4>::EMPTY;
                if let Ok(true) = q.pop_avail_into(&s, &mut c) {
                    for d in c.iter(&s).flatten() {
                        assert!(in_ram(d.addr().0, u64::from(d.len())));
                    }
                    held.push(c);
                }
            }
            2 if !held.is_empty() => {
                let i = usize::from(u.arbitrary::<u8>().unwrap_or(0)) % held.len();
                let c = held.swap_remove(i);
                let _ = q.push_used(&s, &c, u.arbitrary().unwrap_or(0));
            }
            3 => {
                let _ = q.publish_used(&s);
            }
            4 => {
                let _ = q.needs_notification(&s);
            }
            5 => {
                let _ = q.enable_notification(&s);
            }
            6 => {
                let _ = q.disable_notification(&s);
            }
            7 => {
                let budget = usize::from(u.arbitrary::<u8>().unwrap_or(0) % 8);
                let mut storage = PackedChain::<4>::EMPTY;
                let _ = q.drain_into(&s, budget, &mut storage, |_| Completion::Used(0));
            }
            8 => {
                let _ = q.resume(&s);
            }
            _ => guest_pokes(u, mem),
        }
        assert!(q.in_flight_descriptors() <= q.size);
        assert!(q.in_flight() <= q.in_flight_descriptors());
        writes_inside(mem, &areas);
    }
}

/// A whole virtio-mmio transport (a blk device with one queue) restored from the bytes, then
/// driven by register accesses. A refused restore changes nothing (the transport saves to the
/// same bytes as before); an accepted one saves to bytes that restore to the same state.
fn run_mmio(u: &mut Unstructured<'_>, mem: &TestMemory, legacy: bool, state: &[u8]) {
    let version = if legacy {
        MmioVersion::Legacy
    } else {
        MmioVersion::V2
    };
    let dev = BlkDevice::new(8, Features::EVENT_IDX | Features::INDIRECT_DESC, 16);
    let mut t = MmioTransport::<_, _, 1>::new(dev, mem, version);
    let save = |t: &MmioTransport<BlkDevice, &TestMemory, 1>| {
        let mut b = vec![0u8; t.state_len()];
        let n = t
            .save_into(&mut b)
            .expect("a transport saves into state_len bytes");
        b.truncate(n);
        b
    };
    let before = save(&t);
    if t.restore(state).is_err() {
        assert_eq!(save(&t), before, "a refused restore changed the transport");
        return;
    }
    let saved = save(&t);
    let dev = BlkDevice::new(8, Features::EVENT_IDX | Features::INDIRECT_DESC, 16);
    let mut again = MmioTransport::<_, _, 1>::new(dev, mem, version);
    again
        .restore(&saved)
        .expect("an accepted state saves to a state that restores");
    assert_eq!(save(&again), saved);
    let _ = t.resume();
    for _ in 0..64 {
        let Ok(op) = u.arbitrary::<u8>() else { break };
        let offset = u64::from(u.arbitrary::<u8>().unwrap_or(0)) * 4;
        if op % 3 == 0 {
            let _ = t.read(offset, 4);
        } else if op % 3 == 1 {
            let _ = t.write(offset, 4, u.arbitrary::<u32>().unwrap_or(0).into());
        } else {
            guest_pokes(u, mem);
            let _ = t.poll();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let sel: u8 = u.arbitrary().unwrap_or(0);
    let max = 1u16 << (sel >> 2 & 7);
    let len = usize::from(u.arbitrary::<u16>().unwrap_or(0)).min(u.len());
    let state = u.bytes(len).unwrap_or(&[]).to_vec();
    let mem = new_memory();
    decode_image(&mut u, &mem);
    match sel & 3 {
        0 => run_split(&mut u, &mem, max, &state),
        1 => run_packed(&mut u, &mem, max, &state),
        k => run_mmio(&mut u, &mem, k == 3, &state),
    }
});
