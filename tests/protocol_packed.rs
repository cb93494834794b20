//! Proof of the packed ring's notification protocol (§2.8.10, §2.8.21, §2.8.22; PACKED-19,
//! PACKED-20, PACKED-48, PACKED-49): every state reachable by a device running one of the
//! documented loops on the real [`PackedQueue`] and a driver following Linux's `virtio_ring`
//! packed protocol, under a store-buffer memory model (`virtq_testkit::explore`), ends with
//! every request completed and seen by the driver: no lost kick, no lost interrupt. Sizes 2
//! and 3 (packed rings need not be powers of two), with enough requests to flip both wrap
//! counters.
//!
//! The counter-tests remove one barrier from the device's memory and show the explorer finds
//! the lost notification (`KickRecheck` in the seed loop is the packed form of issue #12
//! item 1). The number of states each proof visits is printed (`--nocapture`).

use virtq::notify::need_event;
use virtq::packed::PackedChain;
use virtq::wire::DescFlags;
use virtq::{Barrier, Completion, Features, GuestAddress, PackedQueue};
use virtq_testkit::explore::{self, Access, Program, Signals, Stats, World};

const RING: u64 = 0x040;
const DRIVER_EVENT: u64 = 0x100;
const DEVICE_EVENT: u64 = 0x104;
const BUFFERS: u64 = 0x200;
const RAM: usize = 0x300;
const BUDGET: usize = 2;

const ENABLE: u16 = 0;
const DISABLE: u16 = 1;
const DESC: u16 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Loop {
    /// `while q.pop_avail_into(mem, &mut c)? { q.push_used(mem, &c, 0)? }`, then the
    /// transport's `needs_notification`, then sleep.
    Seed,
    /// `PackedQueue::drain_into` with a budget, again at once while it reports `more`.
    Drain,
    /// The README's loop by hand.
    ByHand,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Pc {
    Asleep,
    Running,
    Notify,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Device {
    q: PackedQueue,
    pc: Pc,
    lp: Loop,
}

const WAKE: u8 = 0;
const SERVE: u8 = 1;
const NOTIFY: u8 = 2;

impl Program for Device {
    fn ops(&self, s: &Signals) -> Vec<u8> {
        match self.pc {
            Pc::Asleep if s.kick => vec![WAKE],
            Pc::Asleep => vec![],
            Pc::Running => vec![SERVE],
            Pc::Notify => vec![NOTIFY],
        }
    }

    fn run(&mut self, op: u8, mem: &Access<'_>, s: &mut Signals) -> Result<(), String> {
        let q = &mut self.q;
        let e = |e: virtq::QueueError| e.to_string();
        let mut chain = PackedChain::<2>::EMPTY;
        match op {
            WAKE => {
                s.kick = false;
                self.pc = Pc::Running;
            }
            SERVE => match self.lp {
                Loop::Seed => {
                    if q.pop_avail_into(mem, &mut chain).map_err(e)? {
                        q.push_used(mem, &chain, 0).map_err(e)?;
                    } else {
                        self.pc = Pc::Notify;
                    }
                }
                Loop::Drain => {
                    let r = q
                        .drain_into(mem, BUDGET, &mut chain, |_| Completion::Used(0))
                        .map_err(e)?;
                    if r.notify {
                        s.irq = true;
                    }
                    self.pc = if r.more { Pc::Running } else { Pc::Asleep };
                }
                Loop::ByHand => {
                    q.disable_notification(mem).map_err(e)?;
                    loop {
                        while q.pop_avail_into(mem, &mut chain).map_err(e)? {
                            q.add_used(mem, &chain, 0).map_err(e)?;
                        }
                        if q.enable_notification(mem).map_err(e)? {
                            continue;
                        }
                        break;
                    }
                    q.publish_used(mem).map_err(e)?;
                    if q.needs_notification(mem).map_err(e)? {
                        s.irq = true;
                    }
                    self.pc = Pc::Asleep;
                }
            },
            NOTIFY => {
                if q.needs_notification(mem).map_err(e)? {
                    s.irq = true;
                }
                self.pc = Pc::Asleep;
            }
            _ => unreachable!(),
        }
        Ok(())
    }

    fn op_name(&self, op: u8) -> &'static str {
        ["wake", "serve", "needs_notification"][usize::from(op)]
    }

    fn done(&self) -> bool {
        true
    }
}

/// A driver following Linux's `drivers/virtio/virtio_ring.c` (packed ring) and the virtio-blk
/// completion loop, one descriptor per request.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Driver {
    size: u16,
    event: bool,
    total: u8,
    submitted: u8,
    completed: u8,
    next_avail: u16,
    avail_wrap: bool,
    num_added: u16,
    /// Free buffer IDs, one bit each.
    free: u8,
    last_used: u16,
    used_wrap: bool,
    /// `event_flags_shadow`.
    shadow: u16,
    in_irq: bool,
}

const ADD: u8 = 0;
const KICK: u8 = 1;
const TAKE_IRQ: u8 = 2;
const HANDLER: u8 = 3;

fn slot(i: u16) -> u64 {
    RING + 16 * u64::from(i)
}

/// `is_used_desc_packed`.
fn is_used(flags: u16, wrap: bool) -> bool {
    let avail = flags & DescFlags::AVAIL.bits() != 0;
    let used = flags & DescFlags::USED.bits() != 0;
    avail == used && used == wrap
}

impl Program for Driver {
    fn ops(&self, s: &Signals) -> Vec<u8> {
        if self.in_irq {
            return vec![HANDLER];
        }
        let mut v = Vec::new();
        if s.irq {
            v.push(TAKE_IRQ);
        }
        if self.submitted < self.total && self.free != 0 {
            v.push(ADD);
        }
        if self.num_added > 0 {
            v.push(KICK);
        }
        v
    }

    fn run(&mut self, op: u8, m: &Access<'_>, s: &mut Signals) -> Result<(), String> {
        let size = self.size;
        let err = |e: virtq::MemoryError| e.to_string();
        match op {
            // virtqueue_add_packed: the descriptor body, virtio_wmb, then its flags.
            ADD => {
                let id = self.free.trailing_zeros() as u16;
                self.free &= !(1 << id);
                let mut body = [0u8; 14];
                body[..8].copy_from_slice(&(BUFFERS + 8 * u64::from(id)).to_le_bytes());
                body[8..12].copy_from_slice(&8u32.to_le_bytes());
                body[12..].copy_from_slice(&id.to_le_bytes());
                m.wr(slot(self.next_avail), &body).map_err(err)?;
                m.wmb();
                let flags = if self.avail_wrap {
                    DescFlags::AVAIL
                } else {
                    DescFlags::USED
                };
                m.st16(slot(self.next_avail) + 14, flags.bits())
                    .map_err(err)?;
                self.next_avail += 1;
                if self.next_avail >= size {
                    self.next_avail -= size;
                    self.avail_wrap = !self.avail_wrap;
                }
                self.num_added += 1;
                self.submitted += 1;
            }
            // virtqueue_kick_prepare_packed, then virtqueue_notify.
            KICK => {
                m.mb();
                let new = self.next_avail;
                let old = new.wrapping_sub(self.num_added);
                self.num_added = 0;
                let snap = m.rd(DEVICE_EVENT, 4).map_err(err)?;
                let off_wrap = u16::from_le_bytes([snap[0], snap[1]]);
                let flags = u16::from_le_bytes([snap[2], snap[3]]);
                let needs_kick = if flags != DESC {
                    flags != DISABLE
                } else {
                    let wrap = off_wrap >> 15 != 0;
                    let mut event_idx = off_wrap & 0x7FFF;
                    if wrap != self.avail_wrap {
                        event_idx = event_idx.wrapping_sub(size);
                    }
                    need_event(event_idx, new, old)
                };
                if needs_kick {
                    s.kick = true;
                }
            }
            TAKE_IRQ => {
                s.irq = false;
                self.in_irq = true;
            }
            // virtblk_done over the packed ring.
            HANDLER => {
                loop {
                    if self.shadow != DISABLE {
                        self.shadow = DISABLE;
                        m.st16(DRIVER_EVENT + 2, DISABLE).map_err(err)?;
                    }
                    loop {
                        let flags = m.ld16(slot(self.last_used) + 14).map_err(err)?;
                        if !is_used(flags, self.used_wrap) {
                            break;
                        }
                        m.rmb();
                        let id = m.ld16(slot(self.last_used) + 12).map_err(err)?;
                        if id >= size || self.free & (1 << id) != 0 {
                            return Err(format!("used id {id} is not in flight"));
                        }
                        self.free |= 1 << id;
                        self.last_used += 1;
                        if self.last_used >= size {
                            self.last_used -= size;
                            self.used_wrap = !self.used_wrap;
                        }
                        self.completed += 1;
                    }
                    let off_wrap = self.last_used | if self.used_wrap { 0x8000 } else { 0 };
                    if self.event {
                        m.st16(DRIVER_EVENT, off_wrap).map_err(err)?;
                        m.wmb();
                    }
                    if self.shadow == DISABLE {
                        self.shadow = if self.event { DESC } else { ENABLE };
                        m.st16(DRIVER_EVENT + 2, self.shadow).map_err(err)?;
                    }
                    m.mb();
                    let flags = m.ld16(slot(self.last_used) + 14).map_err(err)?;
                    if !is_used(flags, self.used_wrap) {
                        break;
                    }
                }
                self.in_irq = false;
            }
            _ => unreachable!(),
        }
        Ok(())
    }

    fn op_name(&self, op: u8) -> &'static str {
        [
            "add",
            "kick_prepare+notify",
            "take interrupt",
            "interrupt handler",
        ][usize::from(op)]
    }

    fn done(&self) -> bool {
        self.completed == self.total
    }
}

fn world(size: u16, requests: u8, event: bool, lp: Loop) -> World<Device, Driver> {
    let mut q = PackedQueue::new(size);
    q.desc_ring_addr = GuestAddress(RING);
    q.driver_event_addr = GuestAddress(DRIVER_EVENT);
    q.device_event_addr = GuestAddress(DEVICE_EVENT);
    q.features = if event {
        Features::EVENT_IDX
    } else {
        Features::empty()
    };
    q.ready = true;
    let device = Device {
        q,
        pc: Pc::Asleep,
        lp,
    };
    let driver = Driver {
        size,
        event,
        total: requests,
        submitted: 0,
        completed: 0,
        next_avail: 0,
        avail_wrap: true,
        num_added: 0,
        free: ((1u16 << size) - 1) as u8,
        last_used: 0,
        used_wrap: true,
        shadow: ENABLE,
        in_irq: false,
    };
    World::new(vec![0; RAM], device, driver)
}

/// (queue size, requests) pairs each proof runs: small enough for the debug-build test run;
/// `VIRTQ_EXPLORE=large` adds larger ones (minutes in a release build).
fn configs() -> Vec<(u16, u8)> {
    let mut v = vec![(2, 3), (3, 3)];
    if std::env::var("VIRTQ_EXPLORE").is_ok_and(|v| v == "large") {
        v.extend([(3, 4), (4, 4)]);
    }
    v
}

fn prove(size: u16, requests: u8, event: bool, lp: Loop) -> Stats {
    let name = format!("packed {lp:?} size {size} requests {requests} EVENT_IDX {event}");
    explore::prove(&name, world(size, requests, event, lp))
}

fn refute(size: u16, requests: u8, event: bool, lp: Loop, removed: Barrier) {
    let name = format!("packed {lp:?} size {size} requests {requests} EVENT_IDX {event}");
    explore::refute(&name, world(size, requests, event, lp), removed);
}

#[test]
fn seed_loop_never_loses_a_notification() {
    for event in [true, false] {
        for (size, requests) in configs() {
            prove(size, requests, event, Loop::Seed);
        }
    }
}

#[test]
fn drain_never_loses_a_notification() {
    for event in [true, false] {
        for (size, requests) in configs() {
            prove(size, requests, event, Loop::Drain);
        }
    }
}

#[test]
fn by_hand_loop_never_loses_a_notification() {
    for event in [true, false] {
        for (size, requests) in configs() {
            prove(size, requests, event, Loop::ByHand);
        }
    }
}

/// Issue #12 item 1, packed form: without the empty pop's re-arm fence the seed loop stalls.
#[test]
fn seed_loop_without_the_rearm_fence_loses_a_kick() {
    refute(2, 3, true, Loop::Seed, Barrier::KickRecheck);
}

#[test]
fn enable_without_its_fence_loses_a_kick() {
    for event in [true, false] {
        refute(2, 3, event, Loop::Drain, Barrier::KickRecheck);
        refute(2, 3, event, Loop::ByHand, Barrier::KickRecheck);
    }
}

#[test]
fn needs_notification_without_its_fence_loses_an_interrupt() {
    for lp in [Loop::Drain, Loop::ByHand] {
        for event in [true, false] {
            refute(2, 3, event, lp, Barrier::NotifyCheck);
        }
    }
    refute(2, 3, false, Loop::Seed, Barrier::NotifyCheck);
}
