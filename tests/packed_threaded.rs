//! A driver thread and a device thread on one packed ring, each sleeping until the other
//! notifies it (§2.8.10, §2.8.21, §2.8.22; PACKED-43..50). A lost notification leaves both
//! sides asleep: every wait has a timeout that fails the test.
//!
//! * The driver follows the Linux packed-ring protocol (`virtqueue_kick_prepare_packed`,
//!   `virtqueue_enable_cb_prepare_packed`): it makes chains available (head flags last, after a
//!   write barrier), issues a full fence, reads the device event structure and kicks unless it
//!   says DISABLE, or, under DESC, unless the event position lies outside the descriptors it
//!   just added (`vring_need_event` with the "subtract the ring size when the wrap bit differs"
//!   rule). Before sleeping it re-arms interrupts (ENABLE, or DESC at its next used position),
//!   full fence, and re-checks its next used slot; while busy it leaves them disabled.
//! * The device runs [`PackedQueue::drain`] with a budget on every kick (and again at once
//!   while the report says `more`) and raises the interrupt when the report says `notify`.
//!
//! Q = 13 (not a power of two) with chains of 2 and 3 descriptors, so chains cross the end of
//! the ring at every offset. Each request carries its sequence number in a readable buffer; the
//! device copies it to the writable buffer; the driver checks every completion. 100 000
//! requests (200 under Miri; `VIRTQ_STRESS_REQUESTS` overrides), with and without EVENT_IDX.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use virtq::notify::need_event;
use virtq::{Completion, Descriptor, Features, GuestMemory, PackedQueue};
use virtq_testkit::{PackedDriver, TestMemory};

const TIMEOUT: Duration = Duration::from_secs(10);
const Q: u16 = 13;
const BUDGET: usize = 3;
const BUFS: u64 = 0x4_0000;
const DISABLE: u16 = 1;
const DESC: u16 = 2;

fn requests() -> u64 {
    std::env::var("VIRTQ_STRESS_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg!(miri) { 200 } else { 100_000 })
}

/// A monotonic event counter one side raises and the other waits on (no lost wake-ups).
struct Signal {
    count: Mutex<u64>,
    cv: Condvar,
}

impl Signal {
    fn new() -> Self {
        Self {
            count: Mutex::new(0),
            cv: Condvar::new(),
        }
    }
    fn raise(&self) {
        *self.count.lock().unwrap() += 1;
        self.cv.notify_all();
    }
    /// Wait until the count passes `seen`; returns the new count. Panics on timeout.
    fn wait_past(&self, seen: u64, what: &str) -> u64 {
        let g = self.count.lock().unwrap();
        let (g, t) = self
            .cv
            .wait_timeout_while(g, TIMEOUT, |c| *c <= seen)
            .unwrap();
        assert!(!t.timed_out(), "lost {what}");
        *g
    }
    fn get(&self) -> u64 {
        *self.count.lock().unwrap()
    }
}

/// The device's handler: copy the 8-byte sequence number from the readable buffer into the
/// writable one, complete with 8 bytes.
fn handle(mem: &TestMemory, chain: &virtq::packed::PackedChain) -> Completion {
    let mut descs: heapless::Vec<Descriptor, 4> = heapless::Vec::new();
    if let Err(e) = chain.copy_into(mem, &mut descs) {
        return Completion::Broken(e);
    }
    let (Some(r), Some(w)) = (
        descs.iter().find(|d| !d.is_write_only()),
        descs.iter().find(|d| d.is_write_only()),
    ) else {
        return Completion::Used(0);
    };
    let mut b = [0u8; 8];
    mem.read(r.addr(), &mut b).unwrap();
    mem.write(w.addr(), &b).unwrap();
    Completion::Used(8)
}

fn run(features: Features) {
    let total = requests();
    // Small RAM (ring, event structures, request buffers): cheap to build under Miri.
    let mem = TestMemory::new(&[(0, 0x6_0000)]);
    let mut drv = PackedDriver::standard(&mem, Q);
    let mut q: PackedQueue = drv.queue(Q, features);
    q.check_rings(&mem).unwrap();
    let event_idx = features.contains(Features::EVENT_IDX);
    let kicks = Signal::new();
    let irqs = Signal::new();
    let stop = AtomicBool::new(false);

    std::thread::scope(|s| {
        // ---- device ----
        s.spawn(|| {
            let mut seen = 0;
            loop {
                seen = kicks.wait_past(seen, "kick");
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                loop {
                    let r = q.drain(&mem, BUDGET, |c| handle(&mem, c)).unwrap();
                    if r.notify {
                        irqs.raise();
                    }
                    if !r.more {
                        break;
                    }
                }
            }
        });

        // ---- driver ----
        // Interrupts disabled while busy.
        drv.set_driver_event(0, DISABLE);
        let mut outstanding: HashMap<u16, u64> = HashMap::new();
        let (mut next, mut done, mut sent_kicks) = (0u64, 0u64, 0u64);
        while done < total {
            // Add as many requests as fit.
            let mut added: u16 = 0;
            while next < total {
                let len3 = next % 3 == 0;
                let need = if len3 { 3 } else { 2 };
                if drv.num_free < need || outstanding.len() >= usize::from(Q) {
                    break;
                }
                // Buffers are indexed by sequence modulo Q: at most Q requests in flight.
                let base = BUFS + (next % u64::from(Q)) * 0x100;
                mem.poke(base, &next.to_le_bytes());
                mem.fill(base + 0x80, 8, 0xEE);
                let mut bufs = vec![(base, 8u32, false)];
                if len3 {
                    bufs.push((base + 0x40, 16, false));
                }
                bufs.push((base + 0x80, 8, true));
                let id = drv.add_chain(&bufs).unwrap();
                assert!(outstanding.insert(id, next).is_none());
                next += 1;
                added += need;
            }
            if added > 0 {
                // Full fence: the new flags are visible before the suppression check.
                fence(Ordering::SeqCst);
                let (off_wrap, flags) = drv.device_event();
                let kick = if flags & 3 == DESC && event_idx {
                    // Linux: event index, minus the ring size when its wrap bit differs.
                    let mut event = off_wrap & 0x7FFF;
                    if (off_wrap & 0x8000 != 0) != drv.avail_wrap {
                        event = event.wrapping_sub(Q);
                    }
                    let new = drv.next_avail;
                    let old = new.wrapping_sub(added);
                    need_event(event, new, old)
                } else {
                    flags & 3 != DISABLE
                };
                if kick {
                    sent_kicks += 1;
                    kicks.raise();
                }
            }
            // Consume completions.
            let mut got = false;
            while let Some(u) = drv.pop_used() {
                let seq = outstanding
                    .remove(&u.id)
                    .expect("completion for an outstanding id");
                assert_eq!(u.len, 8);
                let base = BUFS + (seq % u64::from(Q)) * 0x100;
                assert_eq!(mem.peek(base + 0x80, 8), seq.to_le_bytes(), "request {seq}");
                done += 1;
                got = true;
            }
            if got || (next < total && drv.num_free >= 3) {
                continue;
            }
            // Nothing to do: re-arm interrupts, full fence, re-check, then sleep.
            let seen = irqs.get();
            if event_idx {
                drv.set_driver_event(drv.used_off_wrap(), DESC);
            } else {
                drv.set_driver_event(0, 0);
            }
            fence(Ordering::SeqCst);
            if drv.peek_used().is_none() {
                irqs.wait_past(seen, "interrupt");
            }
            drv.set_driver_event(0, DISABLE);
        }
        stop.store(true, Ordering::SeqCst);
        kicks.raise();
        println!(
            "{features:?}: {total} requests, {sent_kicks} kicks, {} interrupts",
            irqs.get()
        );
    });
    assert_eq!(q.in_flight(), 0);
    assert_eq!(
        (q.next_used_idx, q.used_wrap_counter),
        (drv.next_used, drv.used_wrap)
    );
}

#[test]
fn threaded_without_event_idx() {
    run(Features::empty());
}

#[test]
fn threaded_with_event_idx() {
    run(Features::EVENT_IDX);
}
