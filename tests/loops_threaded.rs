//! Every documented device loop against a pipelined driver on another thread, both sides
//! waiting by spinning (issue #12 item 1; SPLIT-53, SPLIT-61, SPLIT-62, PACKED-48, PACKED-49).
//!
//! The driver follows Linux's `virtio_ring` protocol: it adds requests in bursts while earlier
//! ones are in flight (each publication a release fence plus the index or flags store), then
//! `kick_prepare` (full fence, read `avail_event` / used flags / the device event structure,
//! kick only if asked), and reaps completions only in its interrupt handler
//! (`disable_cb`, `get_buf` until empty, `enable_cb` = re-arm, full fence, poll). The device
//! runs one of the loops the crate documents: the seed loop (pop until `None`, push each, then
//! the transport's `needs_notification`), the README's loop by hand, `drain`, and (packed)
//! `drain_into`. Neither side ever sleeps on a mutex or condition variable: each waits by
//! spinning on an atomic doorbell, so nothing but the queue's own barriers orders the two
//! sides' accesses. A lost notification leaves both spinning; the wait times out and fails
//! the test.
//!
//! Each request carries its number in a device-readable buffer; the device writes back a
//! value derived from it and completes with that length. The driver checks every completion.
//! `VIRTQ_THREADED_REQUESTS` sets the count per loop (default 10⁶ natively, 24 under Miri).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::time::{Duration, Instant};

use virtq::notify::need_event;
use virtq::packed::PackedChain;
use virtq::{Completion, Features, GuestMemory, PackedQueue, Queue};
use virtq_testkit::{PackedDriver, SplitDriver, TestMemory};

const SIZE: u16 = 16;
const BUDGET: usize = 4;
const BUFFERS: u64 = 0x10_000;
const TIMEOUT: Duration = Duration::from_secs(30);

fn requests() -> u64 {
    if let Some(n) = std::env::var("VIRTQ_THREADED_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    if cfg!(miri) { 24 } else { 1_000_000 }
}

/// A doorbell or interrupt line: raising it counts; the other side spins until the count
/// moves.
#[derive(Default)]
struct Line(AtomicU64);

impl Line {
    fn raise(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    fn count(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    /// Spin until the count differs from `*seen` (then take it) or `stop`; panics after
    /// [`TIMEOUT`] with `what`.
    fn wait(&self, seen: &mut u64, stop: &AtomicBool, what: &str) -> bool {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let c = self.count();
            if c != *seen {
                *seen = c;
                return true;
            }
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) {
                // Two spinning threads may share a core; let the other one run. Not a
                // synchronisation point between the two sides' ring accesses.
                std::thread::yield_now();
                if start.elapsed() > TIMEOUT {
                    stop.store(true, Ordering::SeqCst);
                    panic!("lost notification: {what} waited {TIMEOUT:?}");
                }
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

#[derive(Default)]
struct Shared {
    kick: Line,
    irq: Line,
    stop: AtomicBool,
}

/// Whichever way a side ends, the other stops waiting.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loop {
    Seed,
    ByHand,
    Drain,
    DrainInto,
}

/// Request `n`'s buffers: readable id (8 bytes), writable reply (8 bytes).
fn buffers(n: u64) -> (u64, u64) {
    let slot = n % u64::from(SIZE);
    (BUFFERS + slot * 0x20, BUFFERS + slot * 0x20 + 0x10)
}

fn reply(n: u64) -> u64 {
    n.wrapping_mul(3).wrapping_add(1)
}

/// The device's work on one chain: read the request number, write the reply, report 8 bytes.
fn serve<M: GuestMemory + ?Sized>(
    mem: &M,
    bufs: &mut dyn Iterator<Item = virtq::Descriptor>,
) -> u32 {
    let (Some(rd), Some(wr)) = (bufs.next(), bufs.next()) else {
        panic!("a request has two buffers");
    };
    let mut b = [0u8; 8];
    mem.read(rd.addr(), &mut b).unwrap();
    let n = u64::from_le_bytes(b);
    mem.write(wr.addr(), &reply(n).to_le_bytes()).unwrap();
    8
}

fn features(event: bool) -> Features {
    if event {
        Features::EVENT_IDX
    } else {
        Features::empty()
    }
}

// ---------------------------------------------------------------- split

fn split_device(q: &mut Queue, mem: &TestMemory, sh: &Shared, lp: Loop) {
    let _stop = StopOnDrop(&sh.stop);
    let mut seen = 0;
    let handle = |c: &virtq::DescriptorChain| {
        let len = serve(mem, &mut c.iter(mem).map(Result::unwrap));
        Completion::Used(len)
    };
    loop {
        match lp {
            Loop::Seed => {
                while let Some(c) = q.pop_avail(mem).unwrap() {
                    let Completion::Used(len) = handle(&c) else {
                        unreachable!()
                    };
                    q.push_used(mem, c.head_index(), len).unwrap();
                }
                if q.needs_notification(mem).unwrap() {
                    sh.irq.raise();
                }
            }
            Loop::ByHand => {
                q.disable_notification(mem).unwrap();
                loop {
                    while let Some(c) = q.pop_avail(mem).unwrap() {
                        let Completion::Used(len) = handle(&c) else {
                            unreachable!()
                        };
                        q.add_used(mem, c.head_index(), len).unwrap();
                    }
                    if q.enable_notification(mem).unwrap() {
                        continue;
                    }
                    break;
                }
                q.publish_used(mem).unwrap();
                if q.needs_notification(mem).unwrap() {
                    sh.irq.raise();
                }
            }
            Loop::Drain | Loop::DrainInto => {
                let r = q.drain(mem, BUDGET, |c| handle(&c)).unwrap();
                if r.notify {
                    sh.irq.raise();
                }
                if r.more {
                    continue;
                }
            }
        }
        if !sh.kick.wait(&mut seen, &sh.stop, "the device for a kick") {
            return;
        }
    }
}

fn split_driver(drv: &mut SplitDriver<'_>, mem: &TestMemory, sh: &Shared, event: bool, total: u64) {
    let _stop = StopOnDrop(&sh.stop);
    let (mut next, mut completed, mut num_added, mut irq_seen) = (0u64, 0u64, 0u16, 0u64);
    let mut outstanding = vec![u64::MAX; usize::from(SIZE)];
    while completed < total {
        let mut progressed = false;
        // A burst of 1 to 3 adds, then kick_prepare.
        for _ in 0..1 + next % 3 {
            if next == total || drv.free_descriptors() < 2 {
                break;
            }
            let (rd, wr) = buffers(next);
            mem.poke(rd, &next.to_le_bytes());
            mem.poke(wr, &[0xEE; 8]);
            let head = drv.add_chain(&[(rd, 8, false), (wr, 8, true)]).unwrap();
            outstanding[usize::from(head)] = next;
            next += 1;
            num_added += 1;
            progressed = true;
        }
        if num_added > 0 {
            // virtqueue_kick_prepare_split.
            fence(Ordering::SeqCst);
            let new = drv.avail_idx;
            let old = new.wrapping_sub(num_added);
            num_added = 0;
            let kick = if event {
                need_event(drv.avail_event(), new, old)
            } else {
                drv.used_flags() & 1 == 0
            };
            if kick {
                sh.kick.raise();
            }
        }
        if sh.irq.count() != irq_seen {
            irq_seen = sh.irq.count();
            // virtblk_done: do { disable_cb; get_buf until empty } while (!enable_cb).
            loop {
                // virtqueue_disable_cb_split (callbacks are on outside the handler).
                if event {
                    drv.set_used_event(0);
                } else {
                    drv.set_avail_flags(1);
                }
                while let Some((id, len)) = drv.pop_used() {
                    let n = std::mem::replace(&mut outstanding[id as usize], u64::MAX);
                    assert_ne!(n, u64::MAX, "head {id} completed but not outstanding");
                    assert_eq!(len, 8);
                    let (_, wr) = buffers(n);
                    assert_eq!(mem.peek(wr, 8), reply(n).to_le_bytes());
                    completed += 1;
                }
                if !event {
                    drv.set_avail_flags(0);
                }
                drv.set_used_event(drv.last_used);
                fence(Ordering::SeqCst);
                if drv.used_idx() == drv.last_used {
                    break;
                }
            }
            progressed = true;
        }
        if !progressed && completed < total {
            let mut seen = irq_seen;
            if !sh
                .irq
                .wait(&mut seen, &sh.stop, "the driver for an interrupt")
            {
                panic!("device stopped");
            }
        }
    }
}

fn run_split(lp: Loop, event: bool) {
    let total = requests();
    let mem = TestMemory::m0();
    let mut drv = SplitDriver::standard(&mem, SIZE);
    let mut q = drv.queue(SIZE, features(event));
    let sh = Shared::default();
    let t = Instant::now();
    std::thread::scope(|s| {
        let device = s.spawn(|| split_device(&mut q, &mem, &sh, lp));
        split_driver(&mut drv, &mem, &sh, event, total);
        sh.stop.store(true, Ordering::SeqCst);
        device.join().unwrap();
    });
    println!(
        "split {lp:?} EVENT_IDX {event}: {total} requests, {} kicks, {} interrupts, {:?}",
        sh.kick.count(),
        sh.irq.count(),
        t.elapsed()
    );
    assert_eq!(q.in_flight(), 0);
}

// ---------------------------------------------------------------- packed

const ENABLE: u16 = 0;
const DISABLE: u16 = 1;
const DESC: u16 = 2;

fn packed_device(q: &mut PackedQueue, mem: &TestMemory, sh: &Shared, lp: Loop) {
    let _stop = StopOnDrop(&sh.stop);
    let mut seen = 0;
    let mut chain = PackedChain::<2>::EMPTY;
    let handle = |c: &PackedChain<2>| {
        let len = serve(mem, &mut c.iter(mem).map(Result::unwrap));
        Completion::Used(len)
    };
    loop {
        match lp {
            Loop::Seed => {
                while q.pop_avail_into(mem, &mut chain).unwrap() {
                    let Completion::Used(len) = handle(&chain) else {
                        unreachable!()
                    };
                    q.push_used(mem, &chain, len).unwrap();
                }
                if q.needs_notification(mem).unwrap() {
                    sh.irq.raise();
                }
            }
            Loop::ByHand => {
                q.disable_notification(mem).unwrap();
                loop {
                    while q.pop_avail_into(mem, &mut chain).unwrap() {
                        let Completion::Used(len) = handle(&chain) else {
                            unreachable!()
                        };
                        q.add_used(mem, &chain, len).unwrap();
                    }
                    if q.enable_notification(mem).unwrap() {
                        continue;
                    }
                    break;
                }
                q.publish_used(mem).unwrap();
                if q.needs_notification(mem).unwrap() {
                    sh.irq.raise();
                }
            }
            Loop::Drain | Loop::DrainInto => {
                let r = if lp == Loop::Drain {
                    q.drain(mem, BUDGET, |c| {
                        let len = serve(mem, &mut c.iter(mem).map(Result::unwrap));
                        Completion::Used(len)
                    })
                } else {
                    q.drain_into(mem, BUDGET, &mut chain, handle)
                }
                .unwrap();
                if r.notify {
                    sh.irq.raise();
                }
                if r.more {
                    continue;
                }
            }
        }
        if !sh.kick.wait(&mut seen, &sh.stop, "the device for a kick") {
            return;
        }
    }
}

fn packed_driver(
    drv: &mut PackedDriver<'_>,
    mem: &TestMemory,
    sh: &Shared,
    event: bool,
    total: u64,
) {
    let _stop = StopOnDrop(&sh.stop);
    let (mut next, mut completed, mut num_added, mut irq_seen) = (0u64, 0u64, 0u16, 0u64);
    let mut outstanding = vec![u64::MAX; usize::from(SIZE)];
    while completed < total {
        let mut progressed = false;
        for _ in 0..1 + next % 3 {
            if next == total || drv.num_free < 2 {
                break;
            }
            let (rd, wr) = buffers(next);
            mem.poke(rd, &next.to_le_bytes());
            mem.poke(wr, &[0xEE; 8]);
            let id = drv.add_chain(&[(rd, 8, false), (wr, 8, true)]).unwrap();
            outstanding[usize::from(id)] = next;
            next += 1;
            num_added += 2;
            progressed = true;
        }
        if num_added > 0 {
            // virtqueue_kick_prepare_packed.
            fence(Ordering::SeqCst);
            let new = drv.next_avail;
            let old = new.wrapping_sub(num_added);
            num_added = 0;
            let (off_wrap, flags) = drv.device_event();
            let kick = if flags != DESC {
                flags != DISABLE
            } else {
                let wrap = off_wrap >> 15 != 0;
                let mut event_idx = off_wrap & 0x7FFF;
                if wrap != drv.avail_wrap {
                    event_idx = event_idx.wrapping_sub(drv.size);
                }
                need_event(event_idx, new, old)
            };
            if kick {
                sh.kick.raise();
            }
        }
        if sh.irq.count() != irq_seen {
            irq_seen = sh.irq.count();
            loop {
                // virtqueue_disable_cb_packed (callbacks are on outside the handler).
                mem.poke_u16(drv.driver_event + 2, DISABLE);
                while let Some(u) = drv.pop_used() {
                    let n = std::mem::replace(&mut outstanding[usize::from(u.id)], u64::MAX);
                    assert_ne!(n, u64::MAX, "id {} completed but not outstanding", u.id);
                    assert_eq!(u.len, 8);
                    let (_, wr) = buffers(n);
                    assert_eq!(mem.peek(wr, 8), reply(n).to_le_bytes());
                    completed += 1;
                }
                // virtqueue_enable_cb_prepare_packed, then virtqueue_poll_packed.
                if event {
                    mem.poke_u16(drv.driver_event, drv.used_off_wrap());
                    fence(Ordering::Release);
                }
                mem.poke_u16(drv.driver_event + 2, if event { DESC } else { ENABLE });
                fence(Ordering::SeqCst);
                if drv.peek_used().is_none() {
                    break;
                }
            }
            progressed = true;
        }
        if !progressed && completed < total {
            let mut seen = irq_seen;
            if !sh
                .irq
                .wait(&mut seen, &sh.stop, "the driver for an interrupt")
            {
                panic!("device stopped");
            }
        }
    }
}

fn run_packed(lp: Loop, event: bool) {
    let total = requests();
    let mem = TestMemory::m0();
    let mut drv = PackedDriver::standard(&mem, SIZE);
    let mut q = drv.queue(SIZE, features(event));
    let sh = Shared::default();
    let t = Instant::now();
    std::thread::scope(|s| {
        let device = s.spawn(|| packed_device(&mut q, &mem, &sh, lp));
        packed_driver(&mut drv, &mem, &sh, event, total);
        sh.stop.store(true, Ordering::SeqCst);
        device.join().unwrap();
    });
    println!(
        "packed {lp:?} EVENT_IDX {event}: {total} requests, {} kicks, {} interrupts, {:?}",
        sh.kick.count(),
        sh.irq.count(),
        t.elapsed()
    );
    assert_eq!(q.in_flight(), 0);
}

// One test per ring format: the loops run one after another, so no two pairs of spinning
// threads compete for the two cores.

#[test]
fn split_loops_against_a_spinning_linux_driver() {
    for lp in [Loop::Seed, Loop::ByHand, Loop::Drain] {
        run_split(lp, true);
    }
    run_split(Loop::Seed, false);
}

#[test]
fn packed_loops_against_a_spinning_linux_driver() {
    for lp in [Loop::Seed, Loop::ByHand, Loop::Drain, Loop::DrainInto] {
        run_packed(lp, true);
    }
    run_packed(Loop::Seed, false);
}
