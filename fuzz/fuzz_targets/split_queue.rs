//! Split ring, device side: an arbitrary guest memory image plus an arbitrary sequence of queue
//! operations and guest mutations between them (including changing a descriptor, a ring entry
//! or `avail.idx` right after the device's first read of it).
//!
//! Invariants asserted on every step (not only "no panic"):
//! * guest reads per operation are bounded by the documented formula: `pop_avail` reads at most
//!   `avail.idx` once and one ring entry; a walk reads only 16-byte descriptors, at most `size`
//!   from the descriptor table plus one indirect table of at most `size` entries;
//! * the library writes only inside the used ring (`[used, used + 6 + 8 * size)`), and only
//!   from the completion and notification calls;
//! * `push_used`/`add_used` write exactly one used element `(head, len)` with the `len` the
//!   device passed, at the documented slot, and `used.idx` equals the device's cursor;
//! * every yielded buffer is non-empty and lies in guest RAM, readable buffers precede writable
//!   ones, at most `size` per chain, total ≤ `u32::MAX`; after an error the walk is over;
//! * a broken or unconfigured queue touches no guest memory; a completion the device gets wrong
//!   (head not in flight, head ≥ size) is refused without any access;
//! * the queue's in-flight count matches the heads the harness holds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtq::notify::need_event;
use virtq::wire::split_layout as layout;
use virtq::{
    ChainError, Completion, DescriptorChain, Features, GuestAddress, GuestMemory, Queue, QueueError,
};
use virtq_fuzz::{BUFS, Config, Op, Scenario, in_ram, new_memory};
use virtq_testkit::{Access, AccessKind, TestMemory};

/// A chain popped and not yet completed.
struct Held {
    chain: DescriptorChain,
    /// Writable bytes found by the last walk (0 for a malformed chain or before a walk).
    writable: u32,
}

struct Harness<'m> {
    mem: &'m TestMemory,
    c: Config,
    q: Queue,
    held: Vec<Held>,
    /// Any TOCTOU flip was installed (walk results may legitimately differ between walks).
    flips: bool,
    /// `used.idx` as the harness last saw the device publish it.
    published: u16,
    /// `published` at the last `needs_notification` call (or reset).
    notify_old: u16,
}

fn configure(c: &Config) -> Queue {
    let mut q = Queue::new(c.size);
    q.set_size(c.size);
    q.desc_table_addr = GuestAddress(c.desc);
    q.avail_ring_addr = GuestAddress(c.avail);
    q.used_ring_addr = GuestAddress(c.used);
    let mut f = Features::VERSION_1;
    if c.indirect {
        f |= Features::INDIRECT_DESC;
    }
    if c.event_idx {
        f |= Features::EVENT_IDX;
    }
    q.features = f;
    q.ready = true;
    q
}

fn within(a: &Access, base: u64, len: u64) -> bool {
    let (s, e) = (u128::from(a.addr), u128::from(a.addr) + u128::from(a.len));
    u128::from(base) <= s && e <= u128::from(base) + u128::from(len)
}

impl Harness<'_> {
    fn used_slot_addr(&self, idx: u16) -> u64 {
        self.c
            .used
            .wrapping_add(layout::RING_OFFSET + 8 * u64::from(idx % self.c.size))
    }

    fn guest_poke(&mut self, addr: u64, bytes: &[u8]) {
        if in_ram(addr, bytes.len() as u64) {
            self.mem.poke(addr, bytes);
        }
    }

    fn guest_flip(&mut self, addr: u64, bytes: &[u8]) {
        if in_ram(addr, bytes.len() as u64) {
            self.mem.flip_after_first_read(addr, bytes);
            self.flips = true;
        }
    }

    fn guest_avail_idx(&self) -> Option<u16> {
        let at = self.c.avail.checked_add(2)?;
        (at % 2 == 0 && in_ram(at, 2)).then(|| self.mem.peek_u16(at))
    }

    fn pick(&self, i: u8) -> Option<usize> {
        (!self.held.is_empty()).then(|| usize::from(i) % self.held.len())
    }

    /// Re-synchronise `held` after a call that may have retired a head and then failed.
    fn resync_retired(&mut self, at: usize) {
        if usize::from(self.q.in_flight()) + 1 == self.held.len() {
            self.held.swap_remove(at);
        }
    }

    fn guest(&mut self, op: &Op) -> bool {
        let c = self.c;
        let size = u64::from(c.size);
        match op {
            Op::WriteDesc(i, d) => {
                let at = c.desc.wrapping_add(16 * (u64::from(*i) % size));
                self.guest_poke(at, &d.bytes());
            }
            Op::WriteTableEntry(i, d) => self.guest_poke(BUFS + 16 * u64::from(*i), &d.bytes()),
            Op::WriteBytes(off, b) => self.guest_poke(u64::from(*off) % 0x8000, b),
            Op::PublishHead(h) => {
                if let Some(idx) = self.guest_avail_idx() {
                    let slot = c.avail.wrapping_add(4 + 2 * (u64::from(idx) % size));
                    self.guest_poke(slot, &h.to_le_bytes());
                    self.guest_poke(c.avail + 2, &idx.wrapping_add(1).to_le_bytes());
                }
            }
            Op::SetAvailIdx(v) => self.guest_poke(c.avail.wrapping_add(2), &v.to_le_bytes()),
            Op::FlipDesc(i, d) => {
                let at = c.desc.wrapping_add(16 * (u64::from(*i) % size));
                self.guest_flip(at, &d.bytes());
            }
            Op::FlipRing(i, v) => {
                let at = c.avail.wrapping_add(4 + 2 * (u64::from(*i) % size));
                self.guest_flip(at, &v.to_le_bytes());
            }
            Op::FlipAvailIdx(v) => self.guest_flip(c.avail.wrapping_add(2), &v.to_le_bytes()),
            Op::SetSuppression(flags, event) => {
                self.guest_poke(c.avail, &flags.to_le_bytes());
                let at = c.avail.wrapping_add(layout::used_event_offset(c.size));
                self.guest_poke(at, &event.to_le_bytes());
            }
            _ => return false,
        }
        true
    }

    /// Walk `chain`, checking every yielded buffer; returns (buffers, error, writable bytes).
    fn walk(&self, chain: &DescriptorChain) -> (Vec<virtq::Descriptor>, Option<ChainError>, u32) {
        let mut it = chain.iter(self.mem);
        let mut out = Vec::new();
        let mut err = None;
        let mut seen_w = false;
        let mut total = 0u64;
        let mut writable = 0u64;
        for r in it.by_ref() {
            match r {
                Ok(d) => {
                    assert!(d.len() > 0 && !d.is_empty(), "empty buffer yielded");
                    assert!(
                        self.mem.check_range(d.addr(), u64::from(d.len())).is_ok(),
                        "buffer outside guest RAM yielded: {d:?}"
                    );
                    assert!(!(seen_w && !d.is_write_only()), "readable after writable");
                    seen_w |= d.is_write_only();
                    total += u64::from(d.len());
                    if d.is_write_only() {
                        writable += u64::from(d.len());
                    }
                    out.push(d);
                }
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        assert!(it.next().is_none(), "walk continued after its end or error");
        assert!(total <= u64::from(u32::MAX), "chain longer than u32::MAX");
        assert!(
            out.len() <= usize::from(self.c.size),
            "more buffers than size"
        );
        let writable = if err.is_some() { 0 } else { writable as u32 };
        (out, err, writable)
    }

    /// Reads of one walk: only 16-byte descriptor reads, at most `2 * size`.
    fn check_walk_log(&self, log: &[Access]) {
        for a in log {
            assert!(
                a.kind == AccessKind::Read && a.len == 16,
                "walk made a non-descriptor access {a:?}"
            );
        }
        assert!(
            log.len() <= 2 * usize::from(self.c.size),
            "walk read {} descriptors, size {}",
            log.len(),
            self.c.size
        );
    }

    fn check_no_access_when_stopped(
        &self,
        before: Option<QueueError>,
        valid: bool,
        log: &[Access],
    ) {
        if before.is_some() || !valid {
            assert!(log.is_empty(), "stopped queue touched memory: {log:?}");
        }
    }

    /// Take the access log, asserting the universal rule: the library writes only inside the
    /// used ring.
    fn take(&self) -> Vec<Access> {
        let log = self.mem.take_log();
        for a in &log {
            if matches!(a.kind, AccessKind::Write | AccessKind::Store16) {
                assert!(
                    within(a, self.c.used, self.c.used_len()),
                    "write outside the used ring: {a:?}"
                );
            }
        }
        log
    }

    fn device(&mut self, op: &Op) {
        let c = self.c;
        let before = self.q.error();
        let valid = self.q.is_valid();
        let next_used = self.q.next_used_idx;
        self.mem.start_recording();
        // What the op is allowed to do besides the universal rules.
        match op {
            Op::Pop => {
                let next_avail = self.q.next_avail_idx;
                let r = self.q.pop_avail(self.mem);
                let log = self.take();
                self.check_no_access_when_stopped(before, valid, &log);
                let idx_at = c.avail.wrapping_add(2);
                let avail_event_at = c.used.wrapping_add(layout::avail_event_offset(c.size));
                let is_idx = |a: &&Access| a.kind == AccessKind::Load16 && a.addr == idx_at;
                let idx_reads = log.iter().filter(is_idx).count();
                // A pop that finds the ring empty with EVENT_IDX and kicks on re-arms (issue 12):
                // it stores `avail_event`, fences and reads `avail.idx` once more. That is the
                // only way to a second read, and the store sits between the two reads.
                let rearmed = idx_reads == 2 && {
                    let first = log.iter().position(|a| is_idx(&a)).unwrap_or(0);
                    let second = log.iter().rposition(|a| is_idx(&a)).unwrap_or(0);
                    c.event_idx
                        && log.get(first..second).is_some_and(|between| {
                            between
                                .iter()
                                .any(|a| a.kind == AccessKind::Store16 && a.addr == avail_event_at)
                        })
                };
                assert!(
                    idx_reads <= 1 || rearmed,
                    "avail.idx read {idx_reads} times in one pop: {log:?} (cfg {c:?})"
                );
                // With EVENT_IDX and kicks enabled, pop also keeps `avail_event` current.
                let extra = usize::from(rearmed);
                let loads = log.iter().filter(|a| a.kind == AccessKind::Load16).count();
                assert!(loads <= 2 + extra, "pop made {log:?} (cfg {c:?})");
                for a in &log {
                    match a.kind {
                        AccessKind::Load16 => {
                            assert!(within(a, c.avail, layout::avail_ring_bytes(c.size)))
                        }
                        AccessKind::Store16 if c.event_idx => {
                            assert_eq!(a.addr, avail_event_at, "pop stored {a:?}")
                        }
                        _ => panic!("pop made {a:?}"),
                    }
                }
                let stores = log.iter().filter(|a| a.kind == AccessKind::Store16).count();
                assert!(stores <= 1 + extra, "pop made {log:?}");
                match r {
                    Ok(Some(chain)) => {
                        let h = chain.head_index();
                        assert!(h < c.size, "head {h} out of range");
                        assert!(
                            self.held.iter().all(|x| x.chain.head_index() != h),
                            "head {h} popped twice while in flight"
                        );
                        assert_eq!(self.q.next_avail_idx, next_avail.wrapping_add(1));
                        self.held.push(Held { chain, writable: 0 });
                    }
                    Ok(None) => assert_eq!(self.q.next_avail_idx, next_avail),
                    Err(e) => {
                        // Regression: tests/fuzz_regressions.rs
                        // `split_queue_pop_event_idx_store_failure_consumes_nothing`.
                        assert_eq!(self.q.next_avail_idx, next_avail, "error consumed an entry");
                        if e.is_fatal() {
                            assert_eq!(self.q.error(), Some(before.unwrap_or(e)));
                        }
                    }
                }
            }
            Op::Walk(i) | Op::CopyInto(i, _) => {
                let Some(k) = self.pick(*i) else {
                    self.take();
                    return;
                };
                let chain = self.held[k].chain;
                let (bufs, err, writable) = self.walk(&chain);
                let log = self.take();
                self.check_walk_log(&log);
                self.held[k].writable = writable;
                if let Op::CopyInto(_, small) = op {
                    self.mem.start_recording();
                    let mut v4 = heapless::Vec::<virtq::Descriptor, 4>::new();
                    let mut v128 = heapless::Vec::<virtq::Descriptor, 128>::new();
                    let (r, got): (_, &[virtq::Descriptor]) = if *small {
                        let r = chain.copy_into(self.mem, &mut v4);
                        (r, &v4)
                    } else {
                        let r = chain.copy_into(self.mem, &mut v128);
                        (r, &v128)
                    };
                    let log = self.take();
                    self.check_walk_log(&log);
                    match r {
                        Ok(()) => {
                            if !self.flips {
                                assert!(err.is_none(), "copy_into accepted, walk said {err:?}");
                                assert_eq!(got, &bufs[..], "copy_into differs from the walk");
                            }
                        }
                        Err(e) => {
                            assert!(got.is_empty(), "copy_into left a partial chain");
                            if !self.flips {
                                let cap = if *small { 4 } else { 128 };
                                if e == ChainError::TooManySegments {
                                    assert!(bufs.len() > cap);
                                } else {
                                    assert_eq!(Some(e), err, "copy_into and walk disagree");
                                }
                            }
                        }
                    }
                }
            }
            Op::PushUsed(i, len) | Op::AddUsed(i, len) => {
                let Some(k) = self.pick(*i) else {
                    self.take();
                    return;
                };
                let head = self.held[k].chain.head_index();
                // A correct device never reports more than the writable bytes.
                let len = (*len).min(self.held[k].writable);
                let push = matches!(op, Op::PushUsed(..));
                let r = if push {
                    self.q.push_used(self.mem, head, len)
                } else {
                    self.q.add_used(self.mem, head, len)
                };
                let log = self.take();
                self.check_no_access_when_stopped(before, valid, &log);
                let slot = self.used_slot_addr(next_used);
                match r {
                    Ok(()) => {
                        let mut expect = vec![Access {
                            kind: AccessKind::Write,
                            addr: slot,
                            len: 8,
                        }];
                        if push {
                            expect.push(Access {
                                kind: AccessKind::Store16,
                                addr: c.used + 2,
                                len: 2,
                            });
                        }
                        assert_eq!(log, expect, "completion accesses");
                        assert_eq!(self.mem.peek_u32(slot), u32::from(head), "used id");
                        assert_eq!(self.mem.peek_u32(slot + 4), len, "used len");
                        if push {
                            assert_eq!(self.mem.peek_u16(c.used + 2), self.q.next_used_idx);
                            self.published = self.q.next_used_idx;
                        }
                        assert_eq!(self.q.next_used_idx, next_used.wrapping_add(1));
                        self.held.swap_remove(k);
                    }
                    Err(e) => {
                        if let Some(b) = before {
                            assert_eq!(e, b);
                        }
                        self.resync_retired(k);
                    }
                }
            }
            Op::Publish => {
                let r = self.q.publish_used(self.mem);
                let log = self.take();
                self.check_no_access_when_stopped(before, valid, &log);
                assert!(log.len() <= 1);
                if let Ok(n) = r {
                    if n == 0 {
                        assert!(log.is_empty());
                    } else {
                        assert_eq!(log[0].kind, AccessKind::Store16);
                        assert_eq!(log[0].addr, c.used + 2);
                        assert_eq!(self.mem.peek_u16(c.used + 2), self.q.next_used_idx);
                        self.published = self.q.next_used_idx;
                    }
                }
            }
            Op::PushBogus(head, len) => {
                if self.held.iter().any(|x| x.chain.head_index() == *head) {
                    self.take();
                    return;
                }
                let r = self.q.push_used(self.mem, *head, *len);
                let log = self.take();
                assert!(log.is_empty(), "refused completion touched memory: {log:?}");
                let e = r.expect_err("completion of a head not in flight accepted");
                match before {
                    Some(b) => assert_eq!(e, b),
                    None if !valid => assert_eq!(e, QueueError::NotReady),
                    None if *head >= c.size => {
                        assert_eq!(e, QueueError::InvalidUsedHead { head: *head })
                    }
                    None => assert_eq!(e, QueueError::HeadNotInFlight { head: *head }),
                }
                assert!(before.is_some() || !e.is_fatal(), "device error made fatal");
                assert_eq!(self.q.error(), before);
            }
            Op::Reset => {
                self.q.reset();
                assert!(!self.q.is_valid() && self.q.in_flight() == 0 && !self.q.is_broken());
                assert!(self.q.pop_avail(self.mem) == Err(QueueError::NotReady));
                self.q = configure(&c);
                self.held.clear();
                self.published = 0;
                self.notify_old = 0;
                assert!(self.take().is_empty());
            }
            Op::MarkBroken => {
                self.q.mark_broken(ChainError::TooLong);
                assert!(self.q.is_broken());
                assert!(self.take().is_empty());
                let e = self.q.pop_avail(self.mem).expect_err("broken queue popped");
                assert_eq!(Some(e), self.q.error());
                assert!(self.take().is_empty());
            }
            Op::HasPending => {
                let _ = self.q.has_pending(self.mem);
                let log = self.take();
                self.check_no_access_when_stopped(before, valid, &log);
                assert!(log.len() <= 1);
                for a in &log {
                    assert!(a.kind == AccessKind::Load16 && a.addr == c.avail.wrapping_add(2));
                }
            }
            Op::NeedsNotification => {
                let flags_at = c.avail;
                let event_at = c.avail.wrapping_add(layout::used_event_offset(c.size));
                let r = self.q.needs_notification(self.mem);
                let log = self.take();
                self.check_no_access_when_stopped(before, valid, &log);
                assert!(log.len() <= 1, "needs_notification made {log:?}");
                for a in &log {
                    assert_eq!(a.kind, AccessKind::Load16);
                    let want = if c.event_idx { event_at } else { flags_at };
                    assert_eq!(a.addr, want);
                }
                if let Ok(notify) = r {
                    let (old, new) = (self.notify_old, self.published);
                    let expect = if old == new {
                        false
                    } else if c.event_idx {
                        let ev = self.mem.peek_u16(event_at);
                        // The window test, written out: `ev` is one of old, old+1, …, new-1.
                        let window = u32::from(new.wrapping_sub(old));
                        (0..window).any(|k| old.wrapping_add(k as u16) == ev)
                    } else {
                        self.mem.peek_u16(flags_at) & 1 == 0
                    };
                    assert_eq!(notify, expect, "needs_notification old {old} new {new}");
                    if c.event_idx && old != new {
                        let ev = self.mem.peek_u16(event_at);
                        assert_eq!(notify, need_event(ev, new, old));
                    }
                    self.notify_old = new;
                } else if valid && before.is_none() {
                    // A failed load still consumed the window.
                    self.notify_old = self.published;
                }
            }
            Op::SetNotification(on) => {
                let avail_event_at = c.used.wrapping_add(layout::avail_event_offset(c.size));
                let r = if *on {
                    self.q.enable_notification(self.mem).map(|_| ())
                } else {
                    self.q.disable_notification(self.mem)
                };
                let log = self.take();
                self.check_no_access_when_stopped(before, valid, &log);
                assert!(log.len() <= 2, "notification toggle made {log:?}");
                for a in &log {
                    match a.kind {
                        AccessKind::Store16 => {
                            let want = if c.event_idx { avail_event_at } else { c.used };
                            assert_eq!(a.addr, want);
                        }
                        AccessKind::Load16 => {
                            assert!(*on);
                            assert_eq!(a.addr, c.avail.wrapping_add(2));
                        }
                        _ => panic!("notification toggle made {a:?}"),
                    }
                }
                if r.is_ok() {
                    assert_eq!(self.q.notifications_enabled(), *on);
                    if *on && c.event_idx {
                        assert_eq!(self.mem.peek_u16(avail_event_at), self.q.next_avail_idx);
                    }
                }
            }
            Op::Drain(budget, mode) => {
                let budget = usize::from(*budget % 8);
                let mem = self.mem;
                let mut popped: Vec<(DescriptorChain, Completion)> = Vec::new();
                let r = self.q.drain(mem, budget, |chain| {
                    let mut writable = 0u64;
                    let mut bad = None;
                    for d in chain.iter(mem) {
                        match d {
                            Ok(d) if d.is_write_only() => writable += u64::from(d.len()),
                            Ok(_) => {}
                            Err(e) => {
                                bad = Some(e);
                                break;
                            }
                        }
                    }
                    let writable = if bad.is_some() { 0 } else { writable as u32 };
                    let k = popped.len() as u32;
                    let comp = match ((*mode as u32 + k) % 4, bad) {
                        (0, Some(e)) => Completion::Broken(e),
                        (1, _) => Completion::Deferred,
                        _ => Completion::Used(writable),
                    };
                    popped.push((chain, comp));
                    comp
                });
                let log = self.take();
                self.check_no_access_when_stopped(before, valid, &log);
                assert!(popped.len() <= budget, "drain exceeded its budget");
                // Reads: per chain 1 ring entry + a walk; plus a few index/event words.
                let bound = popped.len() * (1 + 2 * usize::from(c.size)) + 2 * budget + 8;
                assert!(log.len() <= bound, "drain made {} accesses", log.len());
                let last = popped.last().map(|p| p.0);
                for (chain, comp) in popped {
                    let h = chain.head_index();
                    assert!(h < c.size);
                    assert!(self.held.iter().all(|x| x.chain.head_index() != h));
                    // Deferred chains stay in flight; so does the one that broke the queue.
                    if matches!(comp, Completion::Deferred | Completion::Broken(_)) {
                        self.held.push(Held { chain, writable: 0 });
                    }
                }
                // A failed `add_used` leaves the last chain in flight.
                if let Some(chain) = last {
                    if usize::from(self.q.in_flight()) == self.held.len() + 1 {
                        self.held.push(Held { chain, writable: 0 });
                    }
                }
                match r {
                    Ok(rep) => {
                        self.published = self.q.next_used_idx;
                        if rep.completed > 0 {
                            assert_eq!(self.mem.peek_u16(c.used + 2), self.q.next_used_idx);
                        }
                        self.notify_old = self.published;
                    }
                    Err(e) => {
                        if let Some(b) = before {
                            assert_eq!(e, b);
                        }
                    }
                }
            }
            _ => unreachable!(),
        }
        let _ = self.take();
    }
}

fn run(data: &[u8]) {
    let mem = new_memory();
    let sc = Scenario::decode(data, &mem);
    let c = sc.config;
    let mut h = Harness {
        mem: &mem,
        c,
        q: configure(&c),
        held: Vec::new(),
        flips: false,
        published: 0,
        notify_old: 0,
    };
    for op in &sc.ops {
        if h.guest(op) {
            continue;
        }
        h.device(op);
        assert_eq!(
            usize::from(h.q.in_flight()),
            h.held.len(),
            "in-flight count diverged after {op:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| run(data));
