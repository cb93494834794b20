//! A driver thread and a device thread on one shared guest memory, each sleeping until the
//! other notifies it (§2.7.7, §2.7.10, §2.7.13, §2.7.14; SPLIT-49, SPLIT-53, SPLIT-61,
//! SPLIT-62). A lost notification leaves both sides asleep: each wait has a timeout that fails
//! the test.
//!
//! * The driver follows Linux's `virtio_ring` protocol: add chains (each publication a release
//!   fence plus the `avail.idx` store), full fence, then kick only if the device asks for it
//!   (`vring_need_event` on `avail_event`, or NO_NOTIFY clear). Before sleeping it re-arms
//!   interrupts (`used_event = last_used`, or NO_INTERRUPT cleared), full fence, and re-reads
//!   `used.idx`; while busy it leaves them disarmed.
//! * The device runs [`Queue::drain`] with a budget on every kick (and again at once while the
//!   report says `more`), raises the interrupt when the report says `notify`, and sleeps
//!   otherwise.
//!
//! Every request carries its id in a device-readable buffer; the device writes the id back and
//! a length that depends on it. The driver checks each completion (right head, right length,
//! right bytes, never twice) and that all requests complete. The default run makes 200 000
//! requests on a queue of 16, so both 16-bit indices wrap three times; `VIRTQ_STRESS_REQUESTS`
//! overrides the count (40 under Miri). The counts of kicks and interrupts sent are printed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use virtq::notify::need_event;
use virtq::wire::split_layout as layout;
use virtq::{ChainError, Completion, DescriptorChain, Features, GuestAddress, GuestMemory, Queue};
use virtq_testkit::{SplitDriver, TestMemory};

/// How long either side sleeps before declaring the notification lost.
const TIMEOUT: Duration = Duration::from_secs(10);
const QUEUE_SIZE: u16 = 16;
/// Chains per `drain` call: below the ring size, so `more` happens.
const BUDGET: usize = 4;
/// Request buffers, one per in-flight request (chains have two or three descriptors, so the
/// descriptor table runs out before the slots do).
const SLOTS: u64 = 16;
const BUFFERS: u64 = 0x4000;
const POISON: u8 = 0xEE;
const FILL: u8 = 0x5A;

fn requests() -> u64 {
    if let Some(n) = std::env::var("VIRTQ_STRESS_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    if cfg!(miri) { 40 } else { 200_000 }
}

/// Bytes the device writes for request `id` (and reports as the used length).
fn reply_len(id: u64) -> usize {
    8 + (id % 8) as usize
}

/// A wire that one side raises and the other sleeps on (an interrupt line, a doorbell).
#[derive(Default)]
struct Wire {
    pending: Mutex<u64>,
    cv: Condvar,
}

impl Wire {
    fn raise(&self) {
        *self.pending.lock().unwrap() += 1;
        self.cv.notify_one();
    }

    /// Sleep until raised (consuming every pending raise) or `stop`; `false` on timeout.
    fn wait(&self, stop: &AtomicBool) -> bool {
        let deadline = Instant::now() + TIMEOUT;
        let mut p = self.pending.lock().unwrap();
        loop {
            if *p > 0 {
                *p = 0;
                return true;
            }
            if stop.load(Ordering::SeqCst) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            p = self.cv.wait_timeout(p, deadline - now).unwrap().0;
        }
    }
}

#[derive(Default)]
struct Shared {
    /// Driver → device (available-buffer notification).
    kick: Wire,
    /// Device → driver (used-buffer notification).
    irq: Wire,
    /// Set when either side leaves (done or failed); wakes the other.
    stop: AtomicBool,
}

/// Whichever way a side's thread ends (return, error, panic), the other side wakes up.
struct StopOnDrop<'a>(&'a Shared);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::SeqCst);
        self.0.kick.raise();
        self.0.irq.raise();
    }
}

#[derive(Debug, Default)]
struct DriverStats {
    kicks: u64,
    kicks_suppressed: u64,
    sleeps: u64,
    rearm_races: u64,
    avail_wraps: u64,
}

#[derive(Debug, Default)]
struct DeviceStats {
    interrupts: u64,
    interrupts_suppressed: u64,
    drains: u64,
    budget_exhausted: u64,
    wakeups: u64,
    processed: u64,
}

/// Device-readable request id (8 bytes) and device-writable reply (64 bytes) of a slot.
fn slot_addrs(slot: u64) -> (u64, u64) {
    let base = BUFFERS + slot * 0x100;
    (base, base + 0x80)
}

fn driver(
    sh: &Shared,
    mem: &TestMemory,
    mut drv: SplitDriver<'_>,
    total: u64,
    event_idx: bool,
) -> Result<DriverStats, String> {
    let _wake_device = StopOnDrop(sh);
    let mut st = DriverStats::default();
    let mut completions = vec![0u8; usize::try_from(total).unwrap()];
    let mut in_flight: HashMap<u16, (u64, u64)> = HashMap::new();
    let mut free_slots: Vec<u64> = (0..SLOTS).collect();
    let (mut next_id, mut completed) = (0u64, 0u64);
    // Interrupts disarmed while busy: NO_INTERRUPT, or (EVENT_IDX) used_event left behind.
    if !event_idx {
        drv.set_avail_flags(1);
    }
    while completed < total {
        // Add as many requests as fit, checking whether to kick after every one to three
        // of them (a driver that batches a little, like Linux's `kick_prepare` after a few
        // `virtqueue_add`s).
        let mut old = drv.avail_idx;
        while next_id < total {
            let Some(&slot) = free_slots.last() else {
                break;
            };
            let (r, w) = slot_addrs(slot);
            mem.poke(r, &next_id.to_le_bytes());
            mem.fill(w, 16, POISON);
            let bufs: &[(u64, u32, bool)] = if next_id % 4 == 0 {
                &[(r, 8, false), (w, 32, true), (w + 32, 32, true)]
            } else {
                &[(r, 8, false), (w, 64, true)]
            };
            let Some(head) = drv.add_chain(bufs) else {
                break;
            };
            free_slots.pop();
            in_flight.insert(head, (next_id, slot));
            if drv.avail_idx == 0 {
                st.avail_wraps += 1;
            }
            if u64::from(drv.avail_idx.wrapping_sub(old)) > next_id % 3 {
                kick_if_needed(sh, &drv, &mut st, old, event_idx)?;
                old = drv.avail_idx;
            }
            next_id += 1;
        }
        if drv.avail_idx != old {
            kick_if_needed(sh, &drv, &mut st, old, event_idx)?;
        }

        // Reap.
        let mut got = 0u64;
        while let Some((id, len)) = drv.pop_used() {
            let head = u16::try_from(id).map_err(|_| format!("used id {id} out of range"))?;
            let (req, slot) = in_flight
                .remove(&head)
                .ok_or_else(|| format!("completion for head {head}, not in flight"))?;
            let want = reply_len(req);
            if len as usize != want {
                return Err(format!("request {req}: used len {len}, expected {want}"));
            }
            let (_, w) = slot_addrs(slot);
            let reply = mem.peek(w, 16);
            let mut expect = vec![POISON; 16];
            expect[..8].copy_from_slice(&req.to_le_bytes());
            expect[8..want].fill(FILL);
            if reply != expect {
                return Err(format!("request {req}: reply bytes {reply:x?}"));
            }
            completions[req as usize] += 1;
            free_slots.push(slot);
            completed += 1;
            got += 1;
        }
        if got > 0 || completed == total {
            continue;
        }

        // Nothing to reap: re-arm interrupts, full fence, re-check, then sleep.
        if event_idx {
            drv.set_used_event(drv.last_used);
        } else {
            drv.set_avail_flags(0);
        }
        // Full fence (virtio_mb): the re-arm is visible before we re-read used.idx (pairs
        // with the device's fence between publishing used.idx and reading our state).
        fence(Ordering::SeqCst);
        if drv.used_idx() == drv.last_used {
            st.sleeps += 1;
            if !sh.irq.wait(&sh.stop) {
                return Err(format!(
                    "lost interrupt: {completed}/{total} completed, used.idx {}, last_used {}",
                    drv.used_idx(),
                    drv.last_used
                ));
            }
            if sh.stop.load(Ordering::SeqCst) && drv.used_idx() == drv.last_used {
                return Err(format!("device stopped after {completed}/{total}"));
            }
        } else {
            st.rearm_races += 1;
        }
        if !event_idx {
            drv.set_avail_flags(1);
        }
    }
    if let Some(i) = completions.iter().position(|&c| c != 1) {
        return Err(format!("request {i} completed {} times", completions[i]));
    }
    if drv.free_descriptors() != usize::from(QUEUE_SIZE) || !in_flight.is_empty() {
        return Err("descriptors leaked".into());
    }
    Ok(st)
}

/// The driver's side of available-buffer notification suppression, after publishing the
/// chains from `old` to `drv.avail_idx`.
fn kick_if_needed(
    sh: &Shared,
    drv: &SplitDriver<'_>,
    st: &mut DriverStats,
    old: u16,
    event_idx: bool,
) -> Result<(), String> {
    // Full fence (virtio_mb): our avail.idx store is visible before we read the device's
    // suppression state (pairs with the fence in enable_notification).
    fence(Ordering::SeqCst);
    let kick = if event_idx {
        if drv.used_flags() != 0 {
            return Err(format!("used flags {} under EVENT_IDX", drv.used_flags()));
        }
        need_event(drv.avail_event(), drv.avail_idx, old)
    } else {
        drv.used_flags() & 1 == 0
    };
    if kick {
        st.kicks += 1;
        sh.kick.raise();
    } else {
        st.kicks_suppressed += 1;
    }
    Ok(())
}

/// The device's work on one request: read the id, write it back plus filler.
fn serve(mem: &TestMemory, chain: DescriptorChain) -> Completion {
    let mut id = None;
    let mut written = 0u32;
    for d in chain.iter(mem) {
        let d = match d {
            Ok(d) => d,
            Err(e) => return Completion::Broken(e),
        };
        if !d.is_write_only() {
            let mut b = [0u8; 8];
            if let Err(e) = mem.read(d.addr(), &mut b) {
                return Completion::Broken(ChainError::Memory(e));
            }
            id = Some(u64::from_le_bytes(b));
        } else if written == 0 {
            let Some(id) = id else {
                return Completion::Broken(ChainError::ReadableAfterWritable);
            };
            let n = reply_len(id);
            let mut reply = [FILL; 16];
            reply[..8].copy_from_slice(&id.to_le_bytes());
            if let Err(e) = mem.write(GuestAddress(d.addr().0), &reply[..n]) {
                return Completion::Broken(ChainError::Memory(e));
            }
            written = n as u32;
        }
    }
    Completion::Used(written)
}

fn device(sh: &Shared, mem: &TestMemory, mut q: Queue) -> Result<DeviceStats, String> {
    let _wake_driver = StopOnDrop(sh);
    let mut st = DeviceStats::default();
    loop {
        let r = q
            .drain(mem, BUDGET, |c| serve(mem, c))
            .map_err(|e| format!("device: {e}"))?;
        st.drains += 1;
        st.processed += r.processed as u64;
        if r.notify {
            st.interrupts += 1;
            sh.irq.raise();
        } else if r.completed > 0 {
            st.interrupts_suppressed += 1;
        }
        if r.more {
            st.budget_exhausted += 1;
            continue;
        }
        if sh.stop.load(Ordering::SeqCst) {
            if q.in_flight() != 0 {
                return Err(format!("device: {} chains still in flight", q.in_flight()));
            }
            return Ok(st);
        }
        if !sh.kick.wait(&sh.stop) {
            return Err(format!(
                "lost kick: device at avail {} used {}",
                q.next_avail_idx, q.next_used_idx
            ));
        }
        st.wakeups += 1;
    }
}

fn run(event_idx: bool) {
    let total = requests();
    let started = Instant::now();
    let mem = Arc::new(TestMemory::new(&[(0, 0x5000)]));
    let drv = SplitDriver::standard(&mem, QUEUE_SIZE);
    let features = if event_idx {
        Features::EVENT_IDX
    } else {
        Features::empty()
    };
    let q = drv.queue(QUEUE_SIZE, features);
    q.check_rings(&*mem).unwrap();
    let avail_event_at = drv.used + layout::avail_event_offset(QUEUE_SIZE);
    if !event_idx {
        // Never written without EVENT_IDX; a stray store would show.
        mem.poke_u16(avail_event_at, 0xA5A5);
    }
    let used_idx_at = drv.used + layout::IDX_OFFSET;
    let used_flags_at = drv.used;
    let sh = Shared::default();
    let (drv_res, dev_res) = std::thread::scope(|s| {
        let d = s.spawn(|| driver(&sh, &mem, drv, total, event_idx));
        let v = s.spawn(|| device(&sh, &mem, q));
        (d.join().unwrap(), v.join().unwrap())
    });
    let elapsed = started.elapsed();
    let (ds, vs) = match (drv_res, dev_res) {
        (Ok(d), Ok(v)) => (d, v),
        (d, v) => panic!("driver: {d:?}\ndevice: {v:?}"),
    };
    let mode = if event_idx { "EVENT_IDX" } else { "flags" };
    eprintln!(
        "[{mode}] {total} requests in {elapsed:.2?}: kicks sent {} (suppressed {}, {:.4}/request), \
         interrupts sent {} (suppressed {}, {:.4}/request); driver sleeps {}, re-arm races {}; \
         device drains {}, budget exhausted {}, wakeups {}",
        ds.kicks,
        ds.kicks_suppressed,
        ds.kicks as f64 / total as f64,
        vs.interrupts,
        vs.interrupts_suppressed,
        vs.interrupts as f64 / total as f64,
        ds.sleeps,
        ds.rearm_races,
        vs.drains,
        vs.budget_exhausted,
        vs.wakeups,
    );
    assert_eq!(vs.processed, total);
    assert_eq!(mem.peek_u16(used_idx_at), (total % 65_536) as u16);
    assert_eq!(ds.avail_wraps, total / 65_536);
    if total == 200_000 {
        assert!(total > 2 * 65_536 && ds.avail_wraps == 3, "indices wrapped");
    }
    if event_idx {
        assert_eq!(mem.peek_u16(used_flags_at), 0);
    } else {
        assert_eq!(mem.peek_u16(avail_event_at), 0xA5A5);
    }
    // The device starts idle with kicks enabled, so the first publication kicks. (Interrupts
    // may all be suppressed in a short run where the driver never has to sleep.)
    assert!(ds.kicks >= 1);
    assert!(vs.interrupts <= total && ds.kicks <= total);
}

#[test]
fn threaded_event_idx() {
    run(true);
}

#[test]
fn threaded_flags() {
    run(false);
}
