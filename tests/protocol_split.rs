//! Proof of the split ring's notification protocol (§2.7.7, §2.7.10, §2.7.13, §2.7.14;
//! SPLIT-53, SPLIT-61, SPLIT-62): every state reachable by a device running one of the
//! documented loops on the real [`Queue`] and a driver following Linux's `virtio_ring` split
//! protocol, under a store-buffer memory model (`virtq_testkit::explore`), ends with every
//! request completed and seen by the driver. No reachable state has the device asleep with
//! work pending and no kick coming, or the driver asleep with completions pending and no
//! interrupt coming.
//!
//! The counter-tests remove one barrier from the device's memory and show that the explorer
//! then finds the lost notification: `KickRecheck` in the seed loop is exactly the defect of
//! issue #12 item 1 (the seed loop's `pop_avail` stored `avail_event` and the next, empty,
//! `pop_avail` read `avail.idx` with no store→load fence in between).
//!
//! The number of states each proof visits is printed (`cargo test --test protocol_split --
//! --nocapture`).

use virtq::notify::need_event;
use virtq::{Barrier, Completion, Features, GuestAddress, Queue};
use virtq_testkit::explore::{self, Access, Config, Program, Signals, Stats, World, explore};

const DESC: u64 = 0x040;
const AVAIL: u64 = 0x100;
const USED: u64 = 0x200;
const RAM: usize = 0x300;
/// `drain` budget: below the number of requests, so `more` is exercised.
const BUDGET: usize = 2;

fn used_event(size: u16) -> u64 {
    AVAIL + 4 + 2 * u64::from(size)
}

fn avail_event(size: u16) -> u64 {
    USED + 4 + 8 * u64::from(size)
}

/// The device loops the crate documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Loop {
    /// `while let Some(c) = q.pop_avail(mem)? { q.push_used(..)? }`, then the transport's
    /// `needs_notification`, then sleep until a kick (the crate-level example).
    Seed,
    /// `Queue::drain` with a budget, again at once while it reports `more`.
    Drain,
    /// The README's loop by hand: disable, pop/add until empty, `enable_notification` and go
    /// on if it reports work, publish, `needs_notification`.
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
    q: Queue,
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
        match op {
            WAKE => {
                s.kick = false;
                self.pc = Pc::Running;
            }
            SERVE => match self.lp {
                Loop::Seed => match q.pop_avail(mem).map_err(e)? {
                    Some(c) => q.push_used(mem, c.head_index(), 0).map_err(e)?,
                    None => self.pc = Pc::Notify,
                },
                Loop::Drain => {
                    let r = q.drain(mem, BUDGET, |_| Completion::Used(0)).map_err(e)?;
                    if r.notify {
                        s.irq = true;
                    }
                    self.pc = if r.more { Pc::Running } else { Pc::Asleep };
                }
                Loop::ByHand => {
                    q.disable_notification(mem).map_err(e)?;
                    loop {
                        while let Some(c) = q.pop_avail(mem).map_err(e)? {
                            q.add_used(mem, c.head_index(), 0).map_err(e)?;
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

/// A driver following Linux's `drivers/virtio/virtio_ring.c` (split ring) and the
/// virtio-blk completion loop, with one request per chain.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Driver {
    size: u16,
    event: bool,
    total: u8,
    submitted: u8,
    completed: u8,
    /// `avail_idx_shadow` and `num_added`.
    shadow: u16,
    num_added: u16,
    /// Free heads, one bit each.
    free: u8,
    last_used: u16,
    /// `avail_flags_shadow & VRING_AVAIL_F_NO_INTERRUPT`.
    cb_off: bool,
    in_irq: bool,
}

const ADD: u8 = 0;
const KICK: u8 = 1;
const TAKE_IRQ: u8 = 2;
const HANDLER: u8 = 3;

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
            // virtqueue_add_split: ring entry, virtio_wmb, avail->idx.
            ADD => {
                let head = self.free.trailing_zeros() as u16;
                self.free &= !(1 << head);
                m.st16(AVAIL + 4 + 2 * u64::from(self.shadow % size), head)
                    .map_err(err)?;
                m.wmb();
                self.shadow = self.shadow.wrapping_add(1);
                m.st16(AVAIL + 2, self.shadow).map_err(err)?;
                self.num_added += 1;
                self.submitted += 1;
            }
            // virtqueue_kick_prepare_split, then virtqueue_notify.
            KICK => {
                m.mb();
                let new = self.shadow;
                let old = new.wrapping_sub(self.num_added);
                self.num_added = 0;
                let needs_kick = if self.event {
                    need_event(m.ld16(avail_event(size)).map_err(err)?, new, old)
                } else {
                    m.ld16(USED).map_err(err)? & 1 == 0
                };
                if needs_kick {
                    s.kick = true;
                }
            }
            TAKE_IRQ => {
                s.irq = false;
                self.in_irq = true;
            }
            // virtblk_done: do { disable_cb; while get_buf { .. } } while (!enable_cb).
            HANDLER => {
                loop {
                    if !self.cb_off {
                        self.cb_off = true;
                        if self.event {
                            m.st16(used_event(size), 0).map_err(err)?;
                        } else {
                            m.st16(AVAIL, 1).map_err(err)?;
                        }
                    }
                    loop {
                        let idx = m.ld16(USED + 2).map_err(err)?;
                        if idx == self.last_used {
                            break;
                        }
                        m.rmb();
                        let at = USED + 4 + 8 * u64::from(self.last_used % size);
                        let e = m.rd(at, 8).map_err(err)?;
                        let id = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
                        if id >= u32::from(size) || self.free & (1 << id) != 0 {
                            return Err(format!("used id {id} is not in flight"));
                        }
                        self.free |= 1 << id;
                        self.last_used = self.last_used.wrapping_add(1);
                        self.completed += 1;
                    }
                    if self.cb_off {
                        self.cb_off = false;
                        if !self.event {
                            m.st16(AVAIL, 0).map_err(err)?;
                        }
                    }
                    m.st16(used_event(size), self.last_used).map_err(err)?;
                    m.mb();
                    if m.ld16(USED + 2).map_err(err)? == self.last_used {
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
    let mut q = Queue::new(size);
    q.desc_table_addr = GuestAddress(DESC);
    q.avail_ring_addr = GuestAddress(AVAIL);
    q.used_ring_addr = GuestAddress(USED);
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
        shadow: 0,
        num_added: 0,
        free: ((1u16 << size) - 1) as u8,
        last_used: 0,
        cb_off: false,
        in_irq: false,
    };
    World::new(vec![0; RAM], device, driver)
}

/// (queue size, requests) pairs each proof runs: small enough for the debug-build test run;
/// `VIRTQ_EXPLORE=large` adds larger ones (minutes in a release build).
fn configs() -> Vec<(u16, u8)> {
    let mut v = vec![(2, 3), (4, 3)];
    if std::env::var("VIRTQ_EXPLORE").is_ok_and(|v| v == "large") {
        v.extend([(2, 5), (4, 4)]);
    }
    v
}

fn prove(size: u16, requests: u8, event: bool, lp: Loop) -> Stats {
    let name = format!("split {lp:?} size {size} requests {requests} EVENT_IDX {event}");
    explore::prove(&name, world(size, requests, event, lp))
}

fn refute(size: u16, requests: u8, event: bool, lp: Loop, removed: Barrier) {
    let name = format!("split {lp:?} size {size} requests {requests} EVENT_IDX {event}");
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

/// Issue #12 item 1: the seed loop with the empty pop's re-arm fence removed is the code
/// before the fix, and the explorer finds the stall.
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
    // In the seed loop under EVENT_IDX the empty pop's re-arm (a full fence after the last
    // `used.idx` store) also orders that store before the `used_event` read, so only the
    // loop without EVENT_IDX depends on this barrier alone.
    refute(2, 3, false, Loop::Seed, Barrier::NotifyCheck);
    let cfg = Config {
        ignore: vec![Barrier::NotifyCheck],
        ..Config::default()
    };
    let held = explore(world(2, 3, true, Loop::Seed), &cfg);
    assert!(held.is_ok(), "the re-arm fence covers it: {held:?}");
}
