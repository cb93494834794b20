//! Packed ring, device side: an arbitrary memory image (descriptor ring, event structures,
//! indirect tables) plus an arbitrary sequence of `PackedQueue` operations and guest mutations
//! between them (raw descriptors, well-formed and hostile chains published by the testkit's
//! `PackedDriver`, TOCTOU flips of a descriptor right after the device's first read), with
//! chains popped into `PackedChain<N>` storage of an input-chosen `N` (the device's cap on
//! direct buffers per chain, PACKED-25).
//!
//! Uses the `split_queue` input format, reinterpreted: `WriteDesc(slot, d)` writes a packed
//! descriptor (`next` is the Buffer ID), `PublishHead(h)` publishes a 1–3 descriptor chain
//! whose shape comes from `h`, `FlipAvailIdx(v)` publishes a long chain whose shape comes from
//! `v` (see [`Harness::publish_long`]; the split meaning, a flags-word flip of slot `v`, is
//! `FlipRing(v, v)`), `SetAvailIdx(v)`/`FlipRing` rewrite or flip a flags word,
//! `SetSuppression` writes the driver event structure. Configuration byte: bit 7 makes the
//! size one less than a power of two (packed rings need not be powers of two); bit 4 (the
//! split "hostile placement", whose three `u16` addresses the packed target ignores) selects
//! the chain storage `N` from the first of those `u16`s: `[1, 2, 17, 128][desc % 4]`, and
//! without bit 4 `N` is the default 16. 128 is the largest queue size here, so with it no
//! chain is refused.
//!
//! Invariants (besides "no panic"):
//! * the library writes only inside the descriptor ring and the device event structure;
//! * a pop makes at most `6 * size + 4` accesses (per descriptor: the flags word and the body
//!   fields, at most 5; one indirect table of at most `size` entries; the device event
//!   structure) and a walk only 16-byte reads, at most `2 * size`;
//! * yielded buffers are non-empty, in guest RAM, readable before writable, at most `size`,
//!   total ≤ `u32::MAX`; a walk ends after its error; `copy_into` equals the walk or fails empty;
//! * chain storage `N`: `capacity()` is `N`; a walk of a direct chain (more than one ring
//!   descriptor, or a walk that reads no memory) yields at most `N` buffers; only an indirect
//!   chain's walk reads memory, and it occupies one ring descriptor; `TooManySegments` comes
//!   only after exactly `N` buffers of a chain of more than `N` ring descriptors;
//! * storage does not change what is consumed: without pending TOCTOU flips, every pop is
//!   repeated on clones of the queue taken just before it, into storage 128 (`pop_avail_into`)
//!   and the default 16 (`pop_avail`); all three return the same result and leave the same
//!   cursor, wrap counter, in-flight counts and error, and the chains have the same
//!   `descriptor_count()` and Buffer ID. Each walk equals the 128-storage walk `(bufs, err)`,
//!   except that a chain of more than one ring descriptor with `bufs.len() > K` (its first
//!   `K + 1` items are buffers, so no violation precedes the cap) walks as `bufs[..K]` then
//!   `TooManySegments`. A violation in the `(K + 1)`-th item itself therefore wins over the
//!   cap, as the chain is validated before it is stored;
//! * a pop that returns `Ok(false)` or an error leaves the (reused) storage empty: no
//!   descriptors, an empty walk, and completing it is refused;
//! * a broken or unconfigured queue touches no memory; completing a chain popped before a
//!   reset, or completing one again when nothing is in flight, is refused without any write;
//!   the in-flight count matches the chains handed out.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtq::packed::{PackedChain, PackedQueue, layout};
use virtq::{ChainError, Completion, Descriptor, Features, GuestAddress, GuestMemory, QueueError};
use virtq_fuzz::{AVAIL, BUFS, DESC, Op, Scenario, USED, in_ram, new_memory};
use virtq_testkit::pflags::{A, I, N as NEXT, U, W};
use virtq_testkit::{Access, AccessKind, PackedDriver, TestMemory};

const DATA: u64 = 0x6000;
/// The largest queue size of this target, and the storage of the reference pop: a direct chain
/// has at most `size` descriptors, so this storage never refuses one.
const BIG: usize = 128;
/// Storage sizes bit 4 of the configuration byte selects from.
const STORAGE: [usize; 4] = [1, 2, 17, BIG];

/// A walk: the buffers yielded, then the error that ended it (if any).
type Walked = (Vec<Descriptor>, Option<ChainError>);

struct Harness<'m, const N: usize> {
    mem: &'m TestMemory,
    size: u16,
    features: Features,
    q: PackedQueue,
    drv: PackedDriver<'m>,
    /// Reused pop storage: it keeps the previous chain's buffers past the new one's.
    scratch: PackedChain<N>,
    held: Vec<PackedChain<N>>,
    done: Vec<PackedChain<N>>,
    /// Chains popped before the last reset.
    stale: Vec<PackedChain<N>>,
    flips: bool,
}

fn configure(size: u16, features: Features) -> PackedQueue {
    let mut q = PackedQueue::new(BIG as u16);
    reconfigure(&mut q, size, features);
    q
}

/// Program a (reset) queue in place, as a transport does: a reset queue keeps its identity, so
/// chains popped before the reset stay recognisably stale.
fn reconfigure(q: &mut PackedQueue, size: u16, features: Features) {
    q.set_size(size);
    q.desc_ring_addr = GuestAddress(DESC);
    q.driver_event_addr = GuestAddress(AVAIL);
    q.device_event_addr = GuestAddress(USED);
    q.features = features;
    q.ready = true;
}

/// Walk `chain` (storage `K`) and check what every walk must satisfy.
fn walk<const K: usize>(mem: &TestMemory, size: u16, chain: &PackedChain<K>) -> Walked {
    assert_eq!(chain.capacity(), K);
    let mut it = chain.iter(mem);
    let (mut out, mut err) = (Vec::new(), None);
    let (mut seen_w, mut total) = (false, 0u64);
    for r in it.by_ref() {
        match r {
            Ok(d) => {
                assert!(d.len() > 0);
                assert!(mem.check_range(d.addr(), u64::from(d.len())).is_ok());
                assert!(!(seen_w && !d.is_write_only()), "readable after writable");
                seen_w |= d.is_write_only();
                total += u64::from(d.len());
                out.push(d);
            }
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    assert!(it.next().is_none(), "walk continued after its end or error");
    assert!(total <= u64::from(u32::MAX));
    assert!(out.len() <= usize::from(size));
    let count = usize::from(chain.descriptor_count());
    // More than one ring descriptor: a direct chain (an indirect descriptor in a list is an
    // error at pop and is never read), whose buffers all come from the storage.
    if count > 1 {
        assert!(
            out.len() <= K,
            "direct chain of {count} descriptors yielded {} buffers from storage {K}",
            out.len()
        );
    }
    if err == Some(ChainError::TooManySegments) {
        assert!(
            out.len() == K && count > K,
            "TooManySegments after {} buffers, storage {K}, {count} descriptors",
            out.len()
        );
    }
    (out, err)
}

/// What a chain popped into storage `K` must walk as, given the walk `big` of the same ring
/// contents popped into storage [`BIG`]: a direct chain whose first `K + 1` items are
/// buffers is cut after `K` of them; anything else (an indirect chain, a violation among the
/// first `K + 1` items, at most `K` buffers) is unchanged.
fn capped(big: &Walked, count: u16, k: usize) -> Walked {
    if count > 1 && big.0.len() > k {
        (big.0[..k].to_vec(), Some(ChainError::TooManySegments))
    } else {
        big.clone()
    }
}

/// The queue state a pop may change.
fn pop_state(q: &PackedQueue) -> (u16, bool, u16, u16, Option<QueueError>) {
    (
        q.next_avail_idx,
        q.avail_wrap_counter,
        q.in_flight(),
        q.in_flight_descriptors(),
        q.error(),
    )
}

impl<const N: usize> Harness<'_, N> {
    fn ring_len(&self) -> u64 {
        layout::desc_ring_bytes(self.size)
    }

    fn take(&self) -> Vec<Access> {
        let log = self.mem.take_log();
        for a in &log {
            if matches!(a.kind, AccessKind::Write | AccessKind::Store16) {
                let in_ring = a.addr >= DESC && a.addr + a.len <= DESC + self.ring_len();
                let in_event = a.addr >= USED && a.addr + a.len <= USED + 4;
                assert!(
                    in_ring || in_event,
                    "write outside ring and device event: {a:?}"
                );
            }
        }
        log
    }

    fn slot(&self, i: u16) -> u64 {
        DESC + 16 * u64::from(i % self.size)
    }

    fn walk<const K: usize>(&self, chain: &PackedChain<K>) -> Walked {
        walk(self.mem, self.size, chain)
    }

    /// Publish a chain of up to 128 descriptors (clamped to the queue size), Buffer ID `v`:
    /// `n = (v & 0x7f) + 1` descriptors of 16 bytes at `DATA + 16 k`; `at = (v >> 7) & 0x3f`;
    /// bits 13–14 the mode: 0 readable before `at`, writable from it; 1 the same with every
    /// third descriptor (k % 3 == 1) empty; 2 all readable, descriptor `at` in the MMIO hole;
    /// 3 writable before `at`, readable from it (readable after writable at `at`). Bit 15
    /// sets INDIRECT on the last descriptor (an indirect descriptor in a list).
    fn publish_long(&mut self, v: u16) {
        let n = (usize::from(v & 0x7f) + 1).min(usize::from(self.size));
        let at = usize::from((v >> 7) & 0x3f);
        let mode = (v >> 13) & 3;
        let descs: Vec<(u64, u32, u16)> = (0..n)
            .map(|k| {
                let (mut addr, mut len, mut f) = (DATA + 16 * k as u64, 16u32, 0u16);
                match mode {
                    0 | 1 => {
                        if k >= at {
                            f |= W;
                        }
                        if mode == 1 && k % 3 == 1 {
                            len = 0;
                        }
                    }
                    2 => {
                        if k == at {
                            addr = 0x9000;
                        }
                    }
                    _ => {
                        if k < at {
                            f |= W;
                        }
                    }
                }
                if k + 1 == n && v & 0x8000 != 0 {
                    f |= I;
                }
                if k + 1 < n {
                    f |= NEXT;
                }
                (addr, len, f)
            })
            .collect();
        self.drv.publish_raw(v, &descs);
    }

    fn guest(&mut self, op: &Op) -> bool {
        let poke = |mem: &TestMemory, at: u64, b: &[u8]| {
            if in_ram(at, b.len() as u64) {
                mem.poke(at, b);
            }
        };
        match op {
            Op::WriteDesc(i, d) => {
                let mut b = [0u8; 16];
                b[0..8].copy_from_slice(&d.addr.to_le_bytes());
                b[8..12].copy_from_slice(&d.len.to_le_bytes());
                b[12..14].copy_from_slice(&d.next.to_le_bytes());
                b[14..16].copy_from_slice(&d.flags.to_le_bytes());
                poke(self.mem, self.slot(*i), &b);
            }
            Op::WriteTableEntry(i, d) => poke(self.mem, BUFS + 16 * u64::from(*i), &d.bytes()),
            Op::WriteBytes(off, b) => poke(self.mem, u64::from(*off) % 0x8000, b),
            Op::PublishHead(h) => {
                let n = usize::from(*h % 3) + 1;
                let shapes = [
                    (DATA, 16, 0),
                    (DATA + 0x100, 64, W),
                    (BUFS, 32, I),
                    (DATA + 0x200, 0, NEXT),
                    (0x9000, 8, W),
                ];
                let descs: Vec<(u64, u32, u16)> = (0..n)
                    .map(|k| {
                        let (a, l, f) = shapes[usize::from((*h >> (3 * k + 2)) % 5)];
                        (a, l, if k + 1 < n { f | NEXT } else { f & !NEXT })
                    })
                    .collect();
                if descs.len() <= usize::from(self.size) {
                    self.drv.publish_raw(*h >> 8, &descs);
                }
            }
            Op::FlipAvailIdx(v) => self.publish_long(*v),
            Op::SetAvailIdx(v) => {
                let f = if v & 0x8000 != 0 { A } else { U } | (v & 7);
                poke(self.mem, self.slot(*v) + 14, &f.to_le_bytes());
            }
            Op::FlipDesc(i, d) => {
                let at = self.slot(*i);
                let mut b = d.bytes();
                b[14..16].copy_from_slice(&(d.flags ^ A ^ U).to_le_bytes());
                self.mem.flip_after_first_read(at, &b);
                self.flips = true;
            }
            Op::FlipRing(i, v) => {
                self.mem
                    .flip_after_first_read(self.slot(*i) + 14, &v.to_le_bytes());
                self.flips = true;
            }
            Op::SetSuppression(off_wrap, flags) => {
                poke(self.mem, AVAIL, &off_wrap.to_le_bytes());
                poke(self.mem, AVAIL + 2, &flags.to_le_bytes());
            }
            _ => return false,
        }
        true
    }

    /// The pop just made on `self.q` (result `r`, chain in `self.scratch` if `Ok(true)`),
    /// repeated from `twin`, the queue as it was before it, into storage [`BIG`] and the
    /// default storage: the same consumption, and walks that differ only by the cap.
    fn check_storage(&self, twin: PackedQueue, r: Result<bool, QueueError>) {
        let mem = self.mem;
        let mut q_big = twin.clone();
        let mut big = PackedChain::<BIG>::EMPTY;
        let r_big = q_big.pop_avail_into(mem, &mut big);
        let mut q_def = twin;
        let r_def = q_def.pop_avail(mem);
        assert_eq!(r, r_big, "storage {N} and {BIG} pops differ");
        assert_eq!(
            r_def.map(|c| c.is_some()),
            r_big,
            "default and {BIG} storage pops differ"
        );
        let state = pop_state(&self.q);
        assert_eq!(
            pop_state(&q_big),
            state,
            "storage {BIG} pop left another state"
        );
        assert_eq!(pop_state(&q_def), state, "default pop left another state");
        let Ok(Some(def)) = r_def else {
            assert_eq!(big.descriptor_count(), 0);
            return;
        };
        let count = big.descriptor_count();
        let want = self.walk(&big);
        for (k, id, c, got) in [
            (
                N,
                self.scratch.head_index(),
                self.scratch.descriptor_count(),
                self.walk(&self.scratch),
            ),
            (
                def.capacity(),
                def.head_index(),
                def.descriptor_count(),
                self.walk(&def),
            ),
        ] {
            assert_eq!(
                c, count,
                "storage {k} consumed another number of descriptors"
            );
            assert_eq!(id, big.head_index(), "storage {k} gave another Buffer ID");
            assert_eq!(
                got,
                capped(&want, count, k),
                "storage {k} walk against storage {BIG} walk {want:?}"
            );
        }
    }

    fn device(&mut self, op: &Op) {
        let before = self.q.error();
        let stopped = before.is_some() || !self.q.is_valid();
        let size = usize::from(self.size);
        self.mem.start_recording();
        match op {
            Op::Pop => {
                // Without pending flips, memory reads the same on a second pop.
                let twin = (!self.flips).then(|| self.q.clone());
                let r = self.q.pop_avail_into(self.mem, &mut self.scratch);
                let log = self.take();
                assert!(log.len() <= 6 * size + 4, "pop made {log:?}");
                if stopped {
                    assert!(log.is_empty());
                }
                if matches!(r, Ok(true)) {
                    // Equality is not identity: after out-of-order completions the driver may
                    // reuse a slot whose chain is still held, and a hostile driver may repeat
                    // the buffer id (H15e), so an equal chain can legitimately be in flight.
                    self.held.push(self.scratch);
                } else {
                    assert_eq!(self.scratch.descriptor_count(), 0, "{r:?} left a chain");
                    assert_eq!(self.walk(&self.scratch), (Vec::new(), None));
                    assert!(self.q.clone().add_used(self.mem, &self.scratch, 0).is_err());
                }
                if let Some(twin) = twin {
                    self.check_storage(twin, r);
                }
            }
            Op::Walk(i) | Op::CopyInto(i, _) => {
                if self.held.is_empty() {
                    return;
                }
                let chain = self.held[usize::from(*i) % self.held.len()];
                let (bufs, err) = self.walk(&chain);
                let log = self.take();
                for a in &log {
                    assert!(a.kind == AccessKind::Read && a.len == 16, "walk made {a:?}");
                }
                assert!(log.len() <= 2 * size, "walk read {} descriptors", log.len());
                if log.is_empty() {
                    assert!(bufs.len() <= N, "{} buffers from storage {N}", bufs.len());
                } else {
                    // Only an indirect table is read at walk time.
                    assert_eq!(
                        chain.descriptor_count(),
                        1,
                        "a direct chain's walk read {log:?}"
                    );
                }
                let mut v = heapless::Vec::<Descriptor, 8>::new();
                let r = chain.copy_into(self.mem, &mut v);
                self.take();
                if r.is_err() {
                    assert!(v.is_empty());
                } else if !self.flips {
                    assert!(err.is_none());
                    assert_eq!(&v[..], &bufs[..]);
                }
            }
            Op::PushUsed(i, len) | Op::AddUsed(i, len) => {
                if self.held.is_empty() {
                    return;
                }
                let k = usize::from(*i) % self.held.len();
                let chain = self.held[k];
                let r = if matches!(op, Op::PushUsed(..)) {
                    self.q.push_used(self.mem, &chain, *len)
                } else {
                    self.q.add_used(self.mem, &chain, *len)
                };
                let log = self.take();
                if stopped {
                    assert!(log.is_empty());
                }
                if r.is_ok() {
                    self.held.swap_remove(k);
                    self.done.push(chain);
                }
            }
            Op::PushBogus(i, len) => {
                // Completing a chain popped before a reset, or completing a chain again while
                // nothing is in flight: both must be refused without a write. (A second
                // completion while other chains are in flight is a device bug the packed ring
                // catches only when the counts no longer add up, as `add_used` documents.)
                let pool = if self.held.is_empty() && !self.done.is_empty() {
                    &self.done
                } else {
                    &self.stale
                };
                if pool.is_empty() {
                    return;
                }
                let chain = pool[usize::from(*i) % pool.len()];
                let r = self.q.push_used(self.mem, &chain, *len);
                let log = self.take();
                assert!(
                    r.is_err(),
                    "stale or repeated completion accepted: {chain:?}"
                );
                assert!(
                    log.iter()
                        .all(|a| a.kind == AccessKind::Read || a.kind == AccessKind::Load16),
                    "refused completion wrote: {log:?}"
                );
            }
            Op::Publish => {
                let _ = self.q.publish_used(self.mem);
                let log = self.take();
                if stopped {
                    assert!(log.is_empty());
                }
            }
            Op::Reset => {
                self.q.reset();
                reconfigure(&mut self.q, self.size, self.features);
                self.stale.append(&mut self.held);
                self.stale.append(&mut self.done);
                self.drv = PackedDriver::new(self.mem, self.size, DESC, AVAIL, USED);
                self.take();
            }
            Op::MarkBroken => {
                self.q.mark_broken(ChainError::TooLong);
                assert!(self.q.is_broken());
                assert!(self.q.pop_avail(self.mem).is_err());
                assert!(self.take().is_empty());
            }
            Op::HasPending => {
                let _ = self.q.has_pending(self.mem);
                let log = self.take();
                assert!(log.len() <= 1);
            }
            Op::NeedsNotification => {
                let _ = self.q.needs_notification(self.mem);
                let log = self.take();
                assert!(log.len() <= 3, "needs_notification made {log:?}");
            }
            Op::SetNotification(on) => {
                let _ = if *on {
                    self.q.enable_notification(self.mem).map(|_| ())
                } else {
                    self.q.disable_notification(self.mem)
                };
                let log = self.take();
                assert!(log.len() <= 3, "notification toggle made {log:?}");
            }
            Op::Drain(budget, mode) => {
                let budget = usize::from(*budget % 8);
                let mem = self.mem;
                let qsize = self.size;
                let mut seen: Vec<(PackedChain<N>, Completion)> = Vec::new();
                let r = self.q.drain_into(mem, budget, &mut self.scratch, |chain| {
                    let (bufs, bad) = walk(mem, qsize, chain);
                    let writable = bufs
                        .iter()
                        .filter(|d| d.is_write_only())
                        .fold(0u32, |a, d| a.saturating_add(d.len()));
                    let comp = match ((u32::from(*mode) + seen.len() as u32) % 4, bad) {
                        (0, Some(e)) => Completion::Broken(e),
                        (1, _) => Completion::Deferred,
                        (_, Some(_)) => Completion::Used(0),
                        _ => Completion::Used(writable),
                    };
                    seen.push((*chain, comp));
                    comp
                });
                self.take();
                assert!(seen.len() <= budget, "drain exceeded its budget");
                for (chain, comp) in seen {
                    // No check that `chain` is not already held: a packed slot is reused as soon
                    // as a used descriptor lands on it, and a hostile driver may repeat buffer
                    // ids (H15e), so two distinct chains in flight can be equal values.
                    match comp {
                        Completion::Used(_) if r.is_ok() => self.done.push(chain),
                        _ => self.held.push(chain),
                    }
                }
            }
            _ => unreachable!(),
        }
        self.take();
    }
}

fn run<const N: usize>(data: &[u8], mem: &TestMemory, sc: &Scenario) {
    let mut size = sc.config.size;
    if data.first().is_some_and(|c| c & 0x80 != 0) && size > 2 {
        size -= 1;
    }
    let mut features = Features::RING_PACKED;
    if sc.config.indirect {
        features |= Features::INDIRECT_DESC;
    }
    if sc.config.event_idx {
        features |= Features::EVENT_IDX;
    }
    // The driver model keeps its own cursor; the image stays as the input wrote it.
    let image = mem.peek(DESC, 0x3004 - DESC as usize);
    let drv = PackedDriver::new(mem, size, DESC, AVAIL, USED);
    mem.poke(DESC, &image);
    let mut h = Harness::<N> {
        mem,
        size,
        features,
        q: configure(size, features),
        drv,
        scratch: PackedChain::EMPTY,
        held: Vec::new(),
        done: Vec::new(),
        stale: Vec::new(),
        flips: false,
    };
    for op in &sc.ops {
        if h.guest(op) {
            continue;
        }
        h.device(op);
        if !h.q.is_broken() {
            assert_eq!(
                usize::from(h.q.in_flight()),
                h.held.len(),
                "in-flight count diverged after {op:?}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mem = new_memory();
    let sc = Scenario::decode(data, &mem);
    // Bit 4: the storage comes from the first "address" (the packed target ignores them).
    let storage = if data.first().is_some_and(|c| c & 0x10 != 0) {
        STORAGE[(sc.config.desc % 4) as usize]
    } else {
        virtq::packed::PACKED_DEFAULT_DIRECT
    };
    match storage {
        1 => run::<1>(data, &mem, &sc),
        2 => run::<2>(data, &mem, &sc),
        17 => run::<17>(data, &mem, &sc),
        BIG => run::<BIG>(data, &mem, &sc),
        _ => run::<{ virtq::packed::PACKED_DEFAULT_DIRECT }>(data, &mem, &sc),
    }
});
