//! An exhaustive explorer of device/driver protocols under a store-buffer memory model.
//!
//! Two threads, a device and a driver, share a small guest memory. Each runs *operations*
//! (a library call such as [`Queue::pop_avail`](virtq::Queue::pop_avail), or a step of a
//! driver written against the same memory), and every guest-memory access inside an
//! operation is a point where the other thread may run. The explorer visits every reachable
//! state and reports one in which both threads wait for ever although the driver's work is not
//! done: a lost notification.
//!
//! # Memory model
//!
//! Each thread has a store buffer. Its stores go there first and reach memory later, at any
//! moment the explorer chooses; its loads see its own buffered stores (newest first) and
//! otherwise memory. A buffered store may reach memory before an older one to a different
//! address unless a release fence lies between them (stores are delayed and reordered as on
//! Arm; on x86 only the delay exists); stores to overlapping bytes keep their order. A full
//! fence waits until the thread's buffer is empty; that is the only thing that stops a store
//! being delayed past a later load. Acquire fences and loads are not reordered (loads execute
//! in program order), which is what the acquire fences the library issues guarantee.
//!
//! # The library's own code runs in the model
//!
//! The device thread calls the real `virtq` queue methods over [`Access`], a [`GuestMemory`]
//! that applies the model and sees every barrier the queue issues through
//! [`GuestMemory::fence`]. To stop an operation between two accesses without threads or
//! coroutines, the explorer re-runs it from a snapshot of the thread's state taken when it
//! started: the accesses it already made are replayed (loads return the values they returned
//! the first time, stores and fences are not repeated), the next one is performed for real, and
//! the one after that ends the run with an error that is thrown away with the snapshot copy.
//! An operation is deterministic given its loads, so the replay is exact. A barrier can be
//! left out ([`Config::ignore`]) to show that the explorer then finds the lost notification.
//!
//! Visited states are remembered by a 128-bit hash of the whole state (memory, both store
//! buffers, both threads' state and their operation in progress, the signals).
//!
//! This is `std` test code for the protocol proofs in `tests/`.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::fmt::{self, Debug, Write as _};
use std::hash::{Hash, Hasher};

use virtq::{Barrier, GuestAddress, GuestMemory, MemoryError};

/// The out-of-band signals between the threads: the available-buffer notification (a kick,
/// an MMIO write) and the used-buffer notification (an interrupt). Each is a level: raising it
/// twice before the other side takes it is one notification.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Signals {
    /// The driver kicked the device and the device has not woken for it yet.
    pub kick: bool,
    /// The device interrupted the driver and the driver has not taken it yet.
    pub irq: bool,
}

/// A thread of the model: its state is the value, its operations are its steps.
///
/// `run` must be deterministic given what its loads return, and may only *write* `signals`
/// (the writes take effect when the operation ends); whether an operation may start is decided
/// by [`ops`](Self::ops), which sees the signals at that moment. An operation that must act on
/// a signal at once (take an interrupt) is one without memory accesses.
pub trait Program: Clone + Debug + Hash + Eq {
    /// The operations that may start now (none: the thread waits).
    fn ops(&self, signals: &Signals) -> Vec<u8>;
    /// Run operation `op` from start to end. An error from a memory access must be returned
    /// at once (`?`): it may be the explorer stopping the run.
    fn run(&mut self, op: u8, mem: &Access<'_>, signals: &mut Signals) -> Result<(), String>;
    /// A name for operation `op` in traces.
    fn op_name(&self, op: u8) -> &'static str;
    /// Whether the thread's work is complete (checked in states where nothing can run).
    fn done(&self) -> bool;
}

/// One entry of a store buffer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Pending {
    Store {
        addr: u32,
        bytes: Vec<u8>,
    },
    /// A release fence: nothing behind it reaches memory before everything ahead of it.
    Release,
}

/// Guest memory and the two store buffers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Memory {
    bytes: Vec<u8>,
    buffers: [Vec<Pending>; 2],
}

fn overlaps(a: u32, la: usize, b: u32, lb: usize) -> bool {
    let (a, b) = (a as usize, b as usize);
    a < b + lb && b < a + la
}

impl Memory {
    /// What thread `t` reads at `[addr, addr + len)`: per byte, its newest buffered store, else
    /// memory.
    fn load(&self, t: usize, addr: u32, len: usize) -> Vec<u8> {
        let mut out = self.bytes[addr as usize..addr as usize + len].to_vec();
        let mut known = vec![false; len];
        for p in self.buffers[t].iter().rev() {
            if let Pending::Store { addr: a, bytes } = p {
                for (i, b) in bytes.iter().enumerate() {
                    let at = *a as usize + i;
                    if at >= addr as usize && at < addr as usize + len {
                        let k = at - addr as usize;
                        if !known[k] {
                            known[k] = true;
                            out[k] = *b;
                        }
                    }
                }
            }
        }
        out
    }

    /// Entries of thread `t`'s buffer that may reach memory next.
    fn flushable(&self, t: usize) -> Vec<usize> {
        let buf = &self.buffers[t];
        let mut out = Vec::new();
        for (j, p) in buf.iter().enumerate() {
            match p {
                Pending::Release => break,
                Pending::Store { addr, bytes } => {
                    let blocked = buf[..j].iter().any(|q| match q {
                        Pending::Store {
                            addr: a2,
                            bytes: b2,
                        } => overlaps(*addr, bytes.len(), *a2, b2.len()),
                        Pending::Release => false,
                    });
                    if !blocked {
                        out.push(j);
                    }
                }
            }
        }
        out
    }

    fn flush(&mut self, t: usize, j: usize) -> String {
        let p = self.buffers[t].remove(j);
        let Pending::Store { addr, bytes } = p else {
            unreachable!("only stores are flushable")
        };
        self.bytes[addr as usize..addr as usize + bytes.len()].copy_from_slice(&bytes);
        self.normalize(t);
        format!("{addr:#x} <- {bytes:02x?}")
    }

    /// Drop release markers with nothing ahead of them, and repeated ones, so equal buffers
    /// compare equal.
    fn normalize(&mut self, t: usize) {
        let buf = &mut self.buffers[t];
        while matches!(buf.first(), Some(Pending::Release)) {
            buf.remove(0);
        }
        buf.dedup_by(|a, b| matches!((a, b), (Pending::Release, Pending::Release)));
        if matches!(buf.last(), Some(Pending::Release)) && buf.len() == 1 {
            buf.clear();
        }
    }
}

/// What an access did the first time, for replays.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Event {
    Load(Vec<u8>),
    Store,
    Fence,
}

/// The guest memory an operation runs against: replays the operation's earlier accesses,
/// performs the next one under the model, and stops the run at the one after.
pub struct Access<'a> {
    mem: &'a RefCell<Memory>,
    thread: usize,
    log: &'a [Event],
    pos: Cell<usize>,
    live: RefCell<Option<Event>>,
    label: RefCell<String>,
    stopped: Cell<bool>,
    blocked: Cell<bool>,
    ignore: &'a [Barrier],
}

enum Phase<'e> {
    Replay(&'e Event),
    Live,
    Stop,
}

/// The error an access returns once the explorer has stopped the run.
const STOPPED: MemoryError = MemoryError::BadRegion;

impl<'a> Access<'a> {
    fn phase(&self) -> Phase<'a> {
        if self.stopped.get() {
            return Phase::Stop;
        }
        let i = self.pos.get();
        self.pos.set(i + 1);
        match i.cmp(&self.log.len()) {
            std::cmp::Ordering::Less => Phase::Replay(&self.log[i]),
            std::cmp::Ordering::Equal => Phase::Live,
            std::cmp::Ordering::Greater => {
                self.stopped.set(true);
                Phase::Stop
            }
        }
    }

    fn in_ram(&self, addr: GuestAddress, len: usize) -> Result<u32, MemoryError> {
        let size = self.mem.borrow().bytes.len() as u64;
        match addr.0.checked_add(len as u64) {
            Some(end) if end <= size => Ok(addr.0 as u32),
            Some(_) => Err(MemoryError::OutOfRange {
                addr: addr.0,
                len: len as u64,
            }),
            None => Err(MemoryError::Overflow {
                addr: addr.0,
                len: len as u64,
            }),
        }
    }

    fn do_load(&self, addr: GuestAddress, len: usize) -> Result<Vec<u8>, MemoryError> {
        let at = self.in_ram(addr, len)?;
        match self.phase() {
            Phase::Replay(Event::Load(v)) => Ok(v.clone()),
            Phase::Replay(e) => panic!("replay diverged: expected a load, log has {e:?}"),
            Phase::Stop => Err(STOPPED),
            Phase::Live => {
                let v = self.mem.borrow().load(self.thread, at, len);
                *self.label.borrow_mut() = format!("load {at:#x} = {v:02x?}");
                *self.live.borrow_mut() = Some(Event::Load(v.clone()));
                Ok(v)
            }
        }
    }

    fn do_store(&self, addr: GuestAddress, bytes: &[u8]) -> Result<(), MemoryError> {
        let at = self.in_ram(addr, bytes.len())?;
        match self.phase() {
            Phase::Replay(Event::Store) => Ok(()),
            Phase::Replay(e) => panic!("replay diverged: expected a store, log has {e:?}"),
            Phase::Stop => Err(STOPPED),
            Phase::Live => {
                self.mem.borrow_mut().buffers[self.thread].push(Pending::Store {
                    addr: at,
                    bytes: bytes.to_vec(),
                });
                *self.label.borrow_mut() = format!("store {at:#x} <- {bytes:02x?} (buffered)");
                *self.live.borrow_mut() = Some(Event::Store);
                Ok(())
            }
        }
    }

    fn do_fence(&self, ordering: std::sync::atomic::Ordering, name: &str) {
        use std::sync::atomic::Ordering as O;
        match self.phase() {
            Phase::Replay(Event::Fence) | Phase::Stop => {}
            Phase::Replay(e) => panic!("replay diverged: expected a fence, log has {e:?}"),
            Phase::Live => {
                let mut mem = self.mem.borrow_mut();
                match ordering {
                    O::SeqCst | O::AcqRel if !mem.buffers[self.thread].is_empty() => {
                        // Not enabled until the buffer drains; the run is thrown away.
                        self.blocked.set(true);
                        self.stopped.set(true);
                        return;
                    }
                    O::Release | O::AcqRel if !mem.buffers[self.thread].is_empty() => {
                        mem.buffers[self.thread].push(Pending::Release);
                        mem.normalize(self.thread);
                    }
                    _ => {}
                }
                *self.label.borrow_mut() = format!("fence {name}");
                *self.live.borrow_mut() = Some(Event::Fence);
            }
        }
    }

    /// A driver-side 16-bit load.
    pub fn ld16(&self, addr: u64) -> Result<u16, MemoryError> {
        self.load_u16(GuestAddress(addr))
    }

    /// A driver-side 16-bit store.
    pub fn st16(&self, addr: u64, v: u16) -> Result<(), MemoryError> {
        self.store_u16(GuestAddress(addr), v)
    }

    /// A driver-side byte copy out of memory.
    pub fn rd(&self, addr: u64, len: usize) -> Result<Vec<u8>, MemoryError> {
        self.do_load(GuestAddress(addr), len)
    }

    /// A driver-side byte copy into memory.
    pub fn wr(&self, addr: u64, bytes: &[u8]) -> Result<(), MemoryError> {
        self.do_store(GuestAddress(addr), bytes)
    }

    /// The driver's full barrier (Linux `virtio_mb`).
    pub fn mb(&self) {
        self.do_fence(std::sync::atomic::Ordering::SeqCst, "mb");
    }

    /// The driver's write barrier (Linux `virtio_wmb`).
    pub fn wmb(&self) {
        self.do_fence(std::sync::atomic::Ordering::Release, "wmb");
    }

    /// The driver's read barrier (Linux `virtio_rmb`).
    pub fn rmb(&self) {
        self.do_fence(std::sync::atomic::Ordering::Acquire, "rmb");
    }
}

impl GuestMemory for Access<'_> {
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError> {
        let v = self.do_load(addr, buf.len())?;
        buf.copy_from_slice(&v);
        Ok(())
    }

    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError> {
        self.do_store(addr, buf)
    }

    fn load_u16(&self, addr: GuestAddress) -> Result<u16, MemoryError> {
        let v = self.do_load(addr, 2)?;
        Ok(u16::from_le_bytes([v[0], v[1]]))
    }

    fn store_u16(&self, addr: GuestAddress, value: u16) -> Result<(), MemoryError> {
        self.do_store(addr, &value.to_le_bytes())
    }

    fn check_range(&self, addr: GuestAddress, len: u64) -> Result<(), MemoryError> {
        let len =
            usize::try_from(len).map_err(|_| MemoryError::OutOfRange { addr: addr.0, len })?;
        self.in_ram(addr, len).map(|_| ())
    }

    fn fence(&self, barrier: Barrier) {
        if self.ignore.contains(&barrier) {
            // Left out on purpose: the access still counts, the barrier does nothing.
            self.do_fence(std::sync::atomic::Ordering::Relaxed, "(removed)");
        } else {
            self.do_fence(barrier.ordering(), &format!("{barrier:?}"));
        }
    }
}

/// One thread: its program state and the operation it is in the middle of.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Thread<P> {
    prog: P,
    /// The operation in progress and what its accesses did so far.
    op: Option<(u8, Vec<Event>)>,
}

/// The whole state of the model.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct World<D, R> {
    mem: Memory,
    device: Thread<D>,
    driver: Thread<R>,
    signals: Signals,
}

impl<D: Program, R: Program> World<D, R> {
    /// The initial state: `memory` (its length is the guest RAM size, addresses from 0), both
    /// threads between operations, no signal pending.
    pub fn new(memory: Vec<u8>, device: D, driver: R) -> Self {
        Self {
            mem: Memory {
                bytes: memory,
                buffers: [Vec::new(), Vec::new()],
            },
            device: Thread {
                prog: device,
                op: None,
            },
            driver: Thread {
                prog: driver,
                op: None,
            },
            signals: Signals::default(),
        }
    }

    /// The device thread's state.
    pub fn device(&self) -> &D {
        &self.device.prog
    }

    /// The driver thread's state.
    pub fn driver(&self) -> &R {
        &self.driver.prog
    }
}

/// Explorer settings.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Barriers the device's memory ignores: the fault injection that shows what each one is
    /// for.
    pub ignore: Vec<Barrier>,
    /// Give up (with an error) after this many states; 0 means 50 million.
    pub max_states: u64,
}

/// What an exhaustive run saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Distinct states visited.
    pub states: u64,
    /// Transitions taken (including those into states already visited).
    pub transitions: u64,
    /// States in which nothing could run (each one checked for completion).
    pub terminal: u64,
    /// The longest path from the initial state.
    pub max_depth: usize,
}

/// A reachable state that breaks the protocol, with the steps that lead to it.
#[derive(Clone)]
pub struct Failure {
    /// Why the state is wrong.
    pub reason: String,
    /// The steps from the initial state, one line each.
    pub trace: Vec<String>,
    /// The statistics up to the failure.
    pub stats: Stats,
}

impl Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} (after {} states)", self.reason, self.stats.states)?;
        for (i, s) in self.trace.iter().enumerate() {
            writeln!(f, "{i:4} {s}")?;
        }
        Ok(())
    }
}

/// Two independent 64-bit lanes of a multiply-xorshift hash over the state's bytes.
struct Hash128 {
    a: u64,
    b: u64,
}

impl Hasher for Hash128 {
    fn finish(&self) -> u64 {
        self.a ^ self.b
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            let v = u64::from_le_bytes(w);
            if v == 0 && chunk.len() == 8 {
                // Long runs of zero words (in-flight bitmaps) only move the lanes on.
                self.a = self.a.wrapping_add(0x9E37_79B9_7F4A_7C15).rotate_left(7);
                self.b = self.b.wrapping_add(0xC2B2_AE3D_27D4_EB4F).rotate_left(11);
            } else {
                self.write_u64(v ^ ((chunk.len() as u64) << 59));
            }
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.a = mix(self.a ^ v, 0x9E37_79B9_7F4A_7C15);
        self.b = mix(self.b.rotate_left(17) ^ v, 0xC2B2_AE3D_27D4_EB4F);
    }
    fn write_u8(&mut self, v: u8) {
        self.write_u64(u64::from(v) | 0x100);
    }
    fn write_u16(&mut self, v: u16) {
        self.write_u64(u64::from(v) | 0x1_0000);
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v) | 0x1_0000_0000);
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64 ^ 0x5555_0000_0000_0000);
    }
}

fn mix(mut x: u64, k: u64) -> u64 {
    x = x.wrapping_mul(k);
    x ^= x >> 32;
    x = x.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    x ^ (x >> 29)
}

fn digest<T: Hash>(t: &T) -> u128 {
    let mut h = Hash128 {
        a: 0x243F_6A88_85A3_08D3,
        b: 0x1319_8A2E_0370_7344,
    };
    t.hash(&mut h);
    (u128::from(h.a) << 64) | u128::from(h.b)
}

/// Prove the protocol from `init`: explore every state, panic with the trace if one loses a
/// notification, print the statistics under `name`, and return them.
pub fn prove<D: Program, R: Program>(name: &str, init: World<D, R>) -> Stats {
    let stats = explore(init, &Config::default()).unwrap_or_else(|f| panic!("{name}: {f:?}"));
    println!(
        "{name}: {} states, {} transitions, {} terminal, depth {}",
        stats.states, stats.transitions, stats.terminal, stats.max_depth
    );
    assert!(stats.terminal > 0, "{name}: no run of the protocol ends");
    stats
}

/// Show what `removed` is for: explore from `init` with that barrier left out of the device's
/// memory, panic unless a lost notification is found, print its trace under `name`, and return
/// it.
pub fn refute<D: Program, R: Program>(name: &str, init: World<D, R>, removed: Barrier) -> Failure {
    let cfg = Config {
        ignore: vec![removed],
        ..Config::default()
    };
    match explore(init, &cfg) {
        Ok(s) => panic!("{name}: without {removed:?} a notification should be lost ({s:?})"),
        Err(f) => {
            assert!(
                f.reason.contains("wait for ever with work left"),
                "{name}: unexpected failure: {f:?}"
            );
            println!(
                "{name} without {removed:?}: lost notification after {} states, trace of {} \
                 steps:\n{f:?}",
                f.stats.states,
                f.trace.len()
            );
            *f
        }
    }
}

/// Which thread, for store buffers and labels.
const DEVICE: usize = 0;
const DRIVER: usize = 1;

/// What one step of a thread leaves: memory, the thread, the signals and a trace line.
type Stepped<P> = (Memory, Thread<P>, Signals, String);

/// Run one step of thread `t`: continue its operation, or start `op`.
fn step_thread<P: Program>(
    mem: &Memory,
    signals: Signals,
    th: &Thread<P>,
    t: usize,
    start: Option<u8>,
    ignore: &[Barrier],
) -> Result<Option<Stepped<P>>, String> {
    let (op, log) = match (&th.op, start) {
        (Some((op, log)), None) => (*op, log.clone()),
        (None, Some(op)) => (op, Vec::new()),
        _ => unreachable!("a thread either continues or starts"),
    };
    let cell = RefCell::new(mem.clone());
    let access = Access {
        mem: &cell,
        thread: if t == DEVICE { 0 } else { 1 },
        log: &log,
        pos: Cell::new(0),
        live: RefCell::new(None),
        label: RefCell::new(String::new()),
        stopped: Cell::new(false),
        blocked: Cell::new(false),
        ignore: if t == DEVICE { ignore } else { &[] },
    };
    let mut prog = th.prog.clone();
    let mut sig = signals;
    let result = prog.run(op, &access, &mut sig);
    if access.blocked.get() {
        return Ok(None);
    }
    let who = if t == DEVICE { "device" } else { "driver" };
    let name = th.prog.op_name(op);
    let label = access.label.borrow().clone();
    let live = access.live.borrow_mut().take();
    let stopped = access.stopped.get();
    drop(access);
    let mem = cell.into_inner();
    if stopped {
        // Stopped after the live access: the operation goes on from here.
        let mut log = log;
        log.push(live.expect("a stopped run made its live access first"));
        let next = Thread {
            prog: th.prog.clone(),
            op: Some((op, log)),
        };
        return Ok(Some((mem, next, signals, format!("{who} {name}: {label}"))));
    }
    // The operation ended within this step.
    result.map_err(|e| format!("{who} {name} failed: {e}"))?;
    let next = Thread { prog, op: None };
    let label = if live.is_some() {
        format!("{who} {name}: {label} (ends)")
    } else {
        format!("{who} {name} (no access)")
    };
    Ok(Some((mem, next, sig, label)))
}

type Successors<D, R> = Vec<(World<D, R>, String)>;

/// Every step thread `t` can take: continue its operation, or start one of its operations.
fn thread_steps<D, R, P: Program>(
    w: &World<D, R>,
    th: &Thread<P>,
    t: usize,
    ignore: &[Barrier],
) -> Result<Vec<Stepped<P>>, String> {
    let starts: Vec<Option<u8>> = match &th.op {
        Some(_) => vec![None],
        None => th.prog.ops(&w.signals).into_iter().map(Some).collect(),
    };
    let mut out = Vec::new();
    for s in starts {
        out.extend(step_thread(&w.mem, w.signals, th, t, s, ignore)?);
    }
    Ok(out)
}

fn successors<D: Program, R: Program>(
    w: &World<D, R>,
    cfg: &Config,
) -> Result<Successors<D, R>, String> {
    let mut out = Vec::new();
    for (mem, device, signals, label) in thread_steps(w, &w.device, DEVICE, &cfg.ignore)? {
        let driver = w.driver.clone();
        out.push((
            World {
                mem,
                device,
                driver,
                signals,
            },
            label,
        ));
    }
    for (mem, driver, signals, label) in thread_steps(w, &w.driver, DRIVER, &[])? {
        let device = w.device.clone();
        out.push((
            World {
                mem,
                device,
                driver,
                signals,
            },
            label,
        ));
    }
    // Store buffers draining.
    for t in [DEVICE, DRIVER] {
        for j in w.mem.flushable(t) {
            let mut n = w.clone();
            let what = n.mem.flush(t, j);
            let who = if t == DEVICE { "device" } else { "driver" };
            out.push((n, format!("memory: {who}'s store {what} lands")));
        }
    }
    Ok(out)
}

/// Visit every state reachable from `init`. Fails with a trace at the first state in which
/// nothing can run and a thread is not [`done`](Program::done), or at an operation that
/// returned an error.
pub fn explore<D: Program, R: Program>(
    init: World<D, R>,
    cfg: &Config,
) -> Result<Stats, Box<Failure>> {
    let max_states = if cfg.max_states == 0 {
        50_000_000
    } else {
        cfg.max_states
    };
    let mut stats = Stats::default();
    let mut seen: HashSet<u128> = HashSet::new();
    struct Frame<D, R> {
        label: String,
        succ: Vec<Option<(World<D, R>, String)>>,
        next: usize,
    }
    let fail = |reason: String, stack: &[Frame<D, R>], extra: Option<String>, stats: Stats| {
        let mut trace: Vec<String> = stack.iter().skip(1).map(|f| f.label.clone()).collect();
        trace.extend(extra);
        Box::new(Failure {
            reason,
            trace,
            stats,
        })
    };
    seen.insert(digest(&init));
    stats.states = 1;
    let first = successors(&init, cfg).map_err(|e| fail(e, &[], None, stats))?;
    let mut stack: Vec<Frame<D, R>> = Vec::new();
    if first.is_empty() {
        return Err(fail(
            "nothing can run in the initial state".into(),
            &[],
            None,
            stats,
        ));
    }
    stack.push(Frame {
        label: String::new(),
        succ: first.into_iter().map(Some).collect(),
        next: 0,
    });
    while let Some(top) = stack.last_mut() {
        if top.next >= top.succ.len() {
            stack.pop();
            continue;
        }
        let i = top.next;
        top.next += 1;
        stats.transitions += 1;
        let Some((world, label)) = top.succ[i].take() else {
            continue;
        };
        if !seen.insert(digest(&world)) {
            continue;
        }
        stats.states += 1;
        if stats.states > max_states {
            return Err(fail(
                format!("gave up after {max_states} states"),
                &stack,
                Some(label),
                stats,
            ));
        }
        let succ =
            successors(&world, cfg).map_err(|e| fail(e, &stack, Some(label.clone()), stats))?;
        if succ.is_empty() {
            stats.terminal += 1;
            if !world.device.prog.done() || !world.driver.prog.done() {
                let mut reason = String::from("both threads wait for ever with work left: ");
                let _ = write!(
                    reason,
                    "device {:?}, driver {:?}",
                    world.device.prog, world.driver.prog
                );
                return Err(fail(reason, &stack, Some(label), stats));
            }
            continue;
        }
        stack.push(Frame {
            label,
            succ: succ.into_iter().map(Some).collect(),
            next: 0,
        });
        stats.max_depth = stats.max_depth.max(stack.len());
    }
    Ok(stats)
}
