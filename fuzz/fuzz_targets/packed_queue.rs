//! Packed ring, device side: an arbitrary memory image (descriptor ring, event structures,
//! indirect tables) plus an arbitrary sequence of `PackedQueue` operations and guest mutations
//! between them (raw descriptors, well-formed and hostile chains published by the testkit's
//! `PackedDriver`, TOCTOU flips of a descriptor right after the device's first read).
//!
//! Uses the `split_queue` input format, reinterpreted: `WriteDesc(slot, d)` writes a packed
//! descriptor (`next` is the Buffer ID), `PublishHead(h)` publishes a 1–3 descriptor chain
//! whose shape comes from `h`, `SetAvailIdx(v)`/`FlipRing`/`FlipAvailIdx` rewrite or flip a
//! flags word, `SetSuppression` writes the driver event structure. Bit 7 of the configuration
//! byte makes the size one less than a power of two (packed rings need not be powers of two).
//!
//! Invariants (besides "no panic"):
//! * the library writes only inside the descriptor ring and the device event structure;
//! * a pop makes at most `6 * size + 4` accesses (per descriptor: the flags word and the body
//!   fields, at most 5; one indirect table of at most `size` entries; the device event
//!   structure) and a walk only 16-byte reads, at most `2 * size`;
//! * yielded buffers are non-empty, in guest RAM, readable before writable, at most `size`,
//!   total ≤ `u32::MAX`; a walk ends after its error; `copy_into` equals the walk or fails empty;
//! * a broken or unconfigured queue touches no memory; completing a chain popped before a
//!   reset, or completing one again when nothing is in flight, is refused without any write;
//!   the in-flight count matches the chains handed out.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtq::packed::{PackedChain, PackedQueue, layout};
use virtq::{ChainError, Completion, Features, GuestAddress, GuestMemory};
use virtq_fuzz::{AVAIL, BUFS, DESC, Op, Scenario, USED, in_ram, new_memory};
use virtq_testkit::pflags::{A, I, N, U, W};
use virtq_testkit::{Access, AccessKind, PackedDriver, TestMemory};

const DATA: u64 = 0x6000;

struct Harness<'m> {
    mem: &'m TestMemory,
    size: u16,
    features: Features,
    q: PackedQueue,
    drv: PackedDriver<'m>,
    held: Vec<PackedChain>,
    done: Vec<PackedChain>,
    /// Chains popped before the last reset.
    stale: Vec<PackedChain>,
    flips: bool,
}

fn configure(size: u16, features: Features) -> PackedQueue {
    let mut q = PackedQueue::new(128);
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

impl Harness<'_> {
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

    fn walk(&self, chain: &PackedChain) -> (Vec<virtq::Descriptor>, Option<ChainError>) {
        let mut it = chain.iter(self.mem);
        let (mut out, mut err) = (Vec::new(), None);
        let (mut seen_w, mut total) = (false, 0u64);
        for r in it.by_ref() {
            match r {
                Ok(d) => {
                    assert!(d.len() > 0);
                    assert!(self.mem.check_range(d.addr(), u64::from(d.len())).is_ok());
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
        assert!(out.len() <= usize::from(self.size));
        (out, err)
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
                    (DATA + 0x200, 0, N),
                    (0x9000, 8, W),
                ];
                let descs: Vec<(u64, u32, u16)> = (0..n)
                    .map(|k| {
                        let (a, l, f) = shapes[usize::from((*h >> (3 * k + 2)) % 5)];
                        (a, l, if k + 1 < n { f | N } else { f & !N })
                    })
                    .collect();
                if descs.len() <= usize::from(self.size) {
                    self.drv.publish_raw(*h >> 8, &descs);
                }
            }
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
            Op::FlipAvailIdx(v) => {
                self.mem
                    .flip_after_first_read(self.slot(*v) + 14, &v.to_le_bytes());
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

    fn device(&mut self, op: &Op) {
        let before = self.q.error();
        let stopped = before.is_some() || !self.q.is_valid();
        let size = usize::from(self.size);
        self.mem.start_recording();
        match op {
            Op::Pop => {
                let r = self.q.pop_avail(self.mem);
                let log = self.take();
                assert!(log.len() <= 6 * size + 4, "pop made {log:?}");
                if let Ok(Some(chain)) = r {
                    // Equality is not identity: after out-of-order completions the driver may
                    // reuse a slot whose chain is still held, and a hostile driver may repeat
                    // the buffer id (H15e), so an equal chain can legitimately be in flight.
                    self.held.push(chain);
                }
                if stopped {
                    assert!(log.is_empty());
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
                let mut v = heapless::Vec::<virtq::Descriptor, 8>::new();
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
                let mut seen: Vec<(PackedChain, Completion)> = Vec::new();
                let r = self.q.drain(mem, budget, |chain| {
                    let mut writable = 0u32;
                    let mut bad = None;
                    for d in chain.iter(mem) {
                        match d {
                            Ok(d) if d.is_write_only() => {
                                writable = writable.saturating_add(d.len())
                            }
                            Ok(_) => {}
                            Err(e) => {
                                bad = Some(e);
                                break;
                            }
                        }
                    }
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

fn run(data: &[u8]) {
    let mem = new_memory();
    let sc = Scenario::decode(data, &mem);
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
    let drv = PackedDriver::new(&mem, size, DESC, AVAIL, USED);
    mem.poke(DESC, &image);
    let mut h = Harness {
        mem: &mem,
        size,
        features,
        q: configure(size, features),
        drv,
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

fuzz_target!(|data: &[u8]| run(data));
