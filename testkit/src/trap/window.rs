//! Trap windows: host pages with no access rights whose loads and stores are caught by a
//! `SIGSEGV` handler, decoded ([`super::x86`]), forwarded to a [`TrapTarget`] and completed.
//!
//! # How an access travels
//!
//! 1. The guest code (for example `virtio-drivers`' own `MmioTransport`) executes a volatile
//!    load or store to an address inside a window. The page is `PROT_NONE`, so the CPU faults
//!    and the kernel delivers `SIGSEGV` on the faulting thread.
//! 2. The handler looks the fault address up in a fixed table of windows (no allocation, no
//!    lock: each slot is claimed with one compare-and-swap that records the claiming thread).
//!    An address in no window goes to the handler that was installed before (Rust's stack
//!    overflow reporter, or the default action).
//! 3. It decodes the instruction at `rip`, checks that the effective address it computes from
//!    the saved registers is the fault address and that the access lies inside the window,
//!    and calls the target: [`TrapTarget::read`] for a load, [`TrapTarget::write`] for a store.
//!    Anything it cannot decode aborts the process with the instruction bytes.
//! 4. A load's value is written to the destination register in the saved context with the
//!    x86-64 rules (32-bit writes clear bits 32–63; 8- and 16-bit writes keep the rest;
//!    `MOVZX`/`MOVSX` widen); a `CMP`/`TEST` of the loaded value sets the status flags
//!    instead. `rip` moves past the instruction, and the handler returns: the guest code
//!    continues as if the device had answered on the bus.
//!
//! # Signal context
//!
//! The target runs inside the signal handler, on the faulting thread, in the middle of
//! whatever code made the access: the same place a hypervisor's trap handler runs. Code there
//! must not allocate or take a lock the interrupted code may hold. `virtq` itself never
//! allocates and never locks, so its transports can be called from here; a target built on
//! them must keep that property (the tests check it with a counting allocator and
//! [`in_handler`]). A nested fault inside the handler aborts with a message; so does a guest
//! access to a window whose target the same thread holds in [`TrapWindow::with`].
//!
//! Caveat: the handler runs on the thread's normal stack (no `SA_ONSTACK`, so a target has the
//! whole stack). A genuine stack overflow in the same process therefore dies with a plain
//! `SIGSEGV` instead of Rust's "has overflowed its stack" message.

use std::cell::{Cell, UnsafeCell};
use std::fmt::{self, Write as _};
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use libc::{c_int, c_void, siginfo_t};

use super::TrapTarget;
use super::x86::{self, DecodeError, Gpr};

/// Windows that can exist at once, in the whole process.
pub const MAX_WINDOWS: usize = 64;

/// Host page size the windows are mapped with.
const PAGE: usize = 4096;

/// Slot states. A claimed slot holds `claimed(tid)`.
const FREE: u64 = 0;
/// Being filled in or torn down: not visible to the handler.
const RESERVED: u64 = 1;
/// Registered and not in use.
const IDLE: u64 = 2;

const fn claimed(tid: u64) -> u64 {
    (tid << 2) | 3
}

const fn is_claimed(state: u64) -> bool {
    state & 3 == 3
}

/// `gpa` of a window that has none.
const NO_GPA: u64 = u64::MAX;

type Dispatch = unsafe fn(*mut (), u64, u8, Option<u64>) -> u64;

/// One registered window. Its range and target fields change only while the slot is
/// `RESERVED`; anyone who holds it `claimed` sees them stable.
struct Slot {
    state: AtomicU64,
    base: AtomicUsize,
    len: AtomicUsize,
    map_len: AtomicUsize,
    gpa: AtomicU64,
    ctx: AtomicPtr<()>,
    dispatch: AtomicUsize,
    reads: AtomicU64,
    writes: AtomicU64,
}

impl Slot {
    const fn new() -> Self {
        Self {
            state: AtomicU64::new(FREE),
            base: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            map_len: AtomicUsize::new(0),
            gpa: AtomicU64::new(NO_GPA),
            ctx: AtomicPtr::new(std::ptr::null_mut()),
            dispatch: AtomicUsize::new(0),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        }
    }

    fn contains(&self, addr: usize) -> bool {
        let base = self.base.load(Ordering::Relaxed);
        addr.wrapping_sub(base) < self.map_len.load(Ordering::Relaxed)
    }

    /// Claim for `tid`, waiting while another thread holds the slot. `Err(state)` if the slot
    /// is not registered, or is held by this very thread.
    fn claim(&self, tid: u64) -> Result<(), u64> {
        loop {
            match self.state.compare_exchange_weak(
                IDLE,
                claimed(tid),
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(s) if s == claimed(tid) || !is_claimed(s) && s != IDLE => return Err(s),
                // Held by another thread (which never waits for us), or a spurious failure.
                Err(_) => std::hint::spin_loop(),
            }
        }
    }

    fn release(&self) {
        self.state.store(IDLE, Ordering::Release);
    }
}

static SLOTS: [Slot; MAX_WINDOWS] = [const { Slot::new() }; MAX_WINDOWS];

thread_local! {
    /// Handler nesting depth on this thread.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// This thread's kernel id, 0 until asked.
    static TID: Cell<u64> = const { Cell::new(0) };
}

fn tid() -> u64 {
    TID.with(|t| {
        if t.get() == 0 {
            // SAFETY: gettid has no preconditions and is async-signal-safe.
            let id = unsafe { libc::gettid() };
            t.set(u64::try_from(id).unwrap_or(u64::MAX >> 2));
        }
        t.get()
    })
}

/// Whether the current thread is inside the trap handler (for allocation checks in tests).
pub fn in_handler() -> bool {
    DEPTH.with(|d| d.get() > 0)
}

/// Accesses a window has forwarded so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrapCounts {
    /// Loads forwarded to [`TrapTarget::read`].
    pub reads: u64,
    /// Stores forwarded to [`TrapTarget::write`].
    pub writes: u64,
}

/// A window of `len` bytes whose every load and store is forwarded to a target `T`.
///
/// The window is mapped at a page-aligned host address ([`base`](Self::base)) with no access
/// rights, for as many whole pages as `len` needs. Give that address to guest code as the
/// device's register window. An access past `len` (in the rest of the last page) aborts.
pub struct TrapWindow<T> {
    slot: usize,
    base: NonNull<u8>,
    len: usize,
    map_len: usize,
    target: NonNull<UnsafeCell<T>>,
    _owns: PhantomData<T>,
}

// SAFETY: the target is reached only by whoever holds the window's slot (the handler on a
// faulting thread, or `with`), one at a time; it moves between threads, so `T: Send` suffices.
unsafe impl<T: Send> Send for TrapWindow<T> {}
// SAFETY: as above: `&TrapWindow` gives no unsynchronised access to `T`.
unsafe impl<T: Send> Sync for TrapWindow<T> {}

impl<T> fmt::Debug for TrapWindow<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrapWindow")
            .field("base", &self.base)
            .field("len", &self.len)
            .field("gpa", &self.gpa())
            .field("counts", &self.counts())
            .finish()
    }
}

impl<T: TrapTarget + Send> TrapWindow<T> {
    /// A window of `len` bytes (at least 1) served by `target`.
    pub fn new(len: usize, target: T) -> Self {
        Self::register(len, NO_GPA, target)
    }

    /// A window that also claims guest-physical `[gpa, gpa + len)`, so that
    /// [`TrapHal`](super::TrapHal)`::mmio_phys_to_virt` maps that range to it (PCI BARs).
    pub fn at_gpa(gpa: u64, len: usize, target: T) -> Self {
        assert_ne!(gpa, NO_GPA, "gpa u64::MAX is reserved");
        Self::register(len, gpa, target)
    }

    fn register(len: usize, gpa: u64, target: T) -> Self {
        assert!(len > 0, "empty trap window");
        install_handler();
        let map_len = len.next_multiple_of(PAGE);
        // SAFETY: a fresh anonymous private mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(p != libc::MAP_FAILED, "mmap of a trap window failed");
        let base = NonNull::new(p.cast::<u8>()).expect("mmap returned null");
        let target = NonNull::from(Box::leak(Box::new(UnsafeCell::new(target))));
        let slot = SLOTS
            .iter()
            .position(|s| {
                s.state
                    .compare_exchange(FREE, RESERVED, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            })
            .unwrap_or_else(|| panic!("more than {MAX_WINDOWS} trap windows at once"));
        let s = &SLOTS[slot];
        s.base.store(base.as_ptr() as usize, Ordering::Relaxed);
        s.len.store(len, Ordering::Relaxed);
        s.map_len.store(map_len, Ordering::Relaxed);
        s.gpa.store(gpa, Ordering::Relaxed);
        s.ctx.store(target.as_ptr().cast(), Ordering::Relaxed);
        s.dispatch
            .store(dispatch::<T> as Dispatch as usize, Ordering::Relaxed);
        s.reads.store(0, Ordering::Relaxed);
        s.writes.store(0, Ordering::Relaxed);
        s.state.store(IDLE, Ordering::Release);
        Self {
            slot,
            base,
            len,
            map_len,
            target,
            _owns: PhantomData,
        }
    }

    /// Run `f` with exclusive access to the target, from ordinary (non-signal) code: to
    /// inspect the device, or to run deferred device work (the hypervisor's I/O context).
    ///
    /// Waits while a handler on another thread is using the target. `f` must not touch this
    /// window's memory (that access would need the target `f` already holds: it aborts).
    ///
    /// # Panics
    ///
    /// If called from inside `f` of this same window.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let s = &SLOTS[self.slot];
        if let Err(state) = s.claim(tid()) {
            panic!("TrapWindow::with: target not available (state {state:#x}), re-entrant call?");
        }
        struct Release<'a>(&'a Slot);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.release();
            }
        }
        let _release = Release(s);
        // SAFETY: the slot is claimed by this thread, so nothing else reaches the target until
        // `_release` drops; the box lives as long as `self`.
        f(unsafe { &mut *self.target.as_ref().get() })
    }
}

impl<T> TrapWindow<T> {
    /// First byte of the window (page-aligned). Every access to it traps.
    pub fn base(&self) -> NonNull<u8> {
        self.base
    }

    /// Window size in bytes, as given at creation.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: a window has at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The guest-physical address the window claims, if any.
    pub fn gpa(&self) -> Option<u64> {
        let g = SLOTS[self.slot].gpa.load(Ordering::Relaxed);
        (g != NO_GPA).then_some(g)
    }

    /// Accesses forwarded so far.
    pub fn counts(&self) -> TrapCounts {
        let s = &SLOTS[self.slot];
        TrapCounts {
            reads: s.reads.load(Ordering::Relaxed),
            writes: s.writes.load(Ordering::Relaxed),
        }
    }
}

impl<T> Drop for TrapWindow<T> {
    fn drop(&mut self) {
        let s = &SLOTS[self.slot];
        // Wait for a handler on another thread to finish, then take the slot out of service.
        loop {
            match s.state.compare_exchange_weak(
                IDLE,
                RESERVED,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(st) if st == claimed(tid()) => die(format_args!(
                    "trap window dropped while its target is in use"
                )),
                Err(_) => std::hint::spin_loop(),
            }
        }
        s.ctx.store(std::ptr::null_mut(), Ordering::Relaxed);
        s.state.store(FREE, Ordering::Release);
        // SAFETY: mapped in `register` with this length; no slot refers to it any more, so a
        // stray access after this point is an ordinary fault.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.map_len) };
        // SAFETY: leaked from a box in `register`; the slot no longer hands it out.
        drop(unsafe { Box::from_raw(self.target.as_ptr()) });
    }
}

/// Call the target of a slot; `ctx` is the window's `UnsafeCell<T>`.
///
/// # Safety
///
/// The caller holds the slot, whose `ctx` was registered for this `T`.
unsafe fn dispatch<T: TrapTarget>(ctx: *mut (), offset: u64, width: u8, store: Option<u64>) -> u64 {
    // SAFETY: the caller's claim on the slot makes this the only reference to the target.
    let t = unsafe { &mut *(*ctx.cast::<UnsafeCell<T>>()).get() };
    match store {
        Some(v) => {
            t.write(offset, width, v);
            0
        }
        None => t.read(offset, width),
    }
}

/// Map guest-physical `[gpa, gpa + size)` to the host address inside the window that claims it.
pub(super) fn gpa_to_host(gpa: u64, size: usize) -> Option<NonNull<u8>> {
    let me = tid();
    for s in &SLOTS {
        if s.claim(me).is_err() {
            continue;
        }
        let start = s.gpa.load(Ordering::Relaxed);
        let len = s.len.load(Ordering::Relaxed) as u64;
        let base = s.base.load(Ordering::Relaxed);
        s.release();
        let off = gpa.wrapping_sub(start);
        if start != NO_GPA && gpa >= start && off.checked_add(size as u64)? <= len {
            return NonNull::new((base as *mut u8).wrapping_add(off as usize));
        }
    }
    None
}

// ---- the handler ------------------------------------------------------------------------------

/// The disposition before ours, for faults outside every window.
#[derive(Clone, Copy)]
struct Previous {
    handler: usize,
    flags: c_int,
}

static PREVIOUS: OnceLock<Previous> = OnceLock::new();

fn install_handler() {
    PREVIOUS.get_or_init(|| {
        // SAFETY: an all-zero sigaction is a valid value (empty mask, no flags).
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = on_segv as extern "C" fn(c_int, *mut siginfo_t, *mut c_void) as usize;
        // SA_NODEFER: a fault inside the handler re-enters it and is reported (instead of
        // the kernel killing the process silently).
        act.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
        // SAFETY: as above.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers to initialised sigaction structures.
        let rc = unsafe {
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(libc::SIGSEGV, &act, &mut old)
        };
        assert_eq!(rc, 0, "sigaction(SIGSEGV) failed");
        Previous {
            handler: old.sa_sigaction,
            flags: old.sa_flags,
        }
    });
}

/// x86 register encoding number → index in `ucontext_t`'s `gregs`.
const GREG: [c_int; 16] = [
    libc::REG_RAX,
    libc::REG_RCX,
    libc::REG_RDX,
    libc::REG_RBX,
    libc::REG_RSP,
    libc::REG_RBP,
    libc::REG_RSI,
    libc::REG_RDI,
    libc::REG_R8,
    libc::REG_R9,
    libc::REG_R10,
    libc::REG_R11,
    libc::REG_R12,
    libc::REG_R13,
    libc::REG_R14,
    libc::REG_R15,
];

fn greg(n: Gpr) -> usize {
    GREG[usize::from(n & 15)] as usize
}

extern "C" fn on_segv(sig: c_int, info: *mut siginfo_t, ctx: *mut c_void) {
    // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo for this SIGSEGV.
    let addr = unsafe { (*info).si_addr() } as usize;
    if DEPTH.with(|d| d.get()) > 0 {
        die(format_args!(
            "fault at {addr:#x} inside the trap handler (a target touched unmapped memory or a \
             trap window)"
        ));
    }
    let Some(slot) = SLOTS.iter().find(|s| {
        let st = s.state.load(Ordering::Acquire);
        (st == IDLE || is_claimed(st)) && s.contains(addr)
    }) else {
        chain(sig, info, ctx);
        return;
    };
    DEPTH.with(|d| d.set(1));
    match slot.claim(tid()) {
        Ok(()) if slot.contains(addr) => {
            // SAFETY: `ctx` is the ucontext of the faulting thread, valid for this handler.
            let uc = unsafe { &mut *ctx.cast::<libc::ucontext_t>() };
            complete(slot, addr, &mut uc.uc_mcontext.gregs);
            slot.release();
        }
        Ok(()) => {
            // The window went away between the look-up and the claim.
            slot.release();
            DEPTH.with(|d| d.set(0));
            chain(sig, info, ctx);
            return;
        }
        Err(st) if st == claimed(tid()) => die(format_args!(
            "guest access at {addr:#x} to a trap window whose target this thread holds \
             (TrapWindow::with)"
        )),
        Err(_) => {
            DEPTH.with(|d| d.set(0));
            chain(sig, info, ctx);
            return;
        }
    }
    DEPTH.with(|d| d.set(0));
}

/// Decode, forward and complete the access that faulted at `addr` in `slot` (claimed).
fn complete(slot: &Slot, addr: usize, gregs: &mut [libc::greg_t; 23]) {
    let rip = gregs[libc::REG_RIP as usize] as u64;
    let mut code = [0u8; x86::MAX_LEN];
    // Read only as far as the instruction's page first: the next page may not exist. If the
    // instruction goes on, it was fetched from the next page, which therefore exists.
    let in_page = PAGE - (rip as usize % PAGE);
    let mut n = in_page.min(x86::MAX_LEN);
    let insn = loop {
        for (i, b) in code.iter_mut().enumerate().take(n) {
            // SAFETY: the bytes of the instruction that just executed are mapped and readable.
            *b = unsafe { std::ptr::read_volatile((rip as *const u8).wrapping_add(i)) };
        }
        match x86::decode(&code[..n]) {
            Err(DecodeError::Truncated) if n < x86::MAX_LEN => n = x86::MAX_LEN,
            Ok(insn) => break insn,
            Err(e) => die(format_args!(
                "unsupported instruction at rip {rip:#x} (access to {addr:#x}): {e}; bytes {}",
                Hex(&code[..n])
            )),
        }
    };
    let next = rip.wrapping_add(u64::from(insn.len));
    let reg = |g: Gpr| gregs[greg(g)] as u64;
    let ea = insn.mem.address(reg, next);
    let base = slot.base.load(Ordering::Relaxed);
    let len = slot.len.load(Ordering::Relaxed);
    if ea != addr as u64 {
        die(format_args!(
            "decoded address {ea:#x} is not the fault address {addr:#x} (rip {rip:#x}, bytes {})",
            Hex(&code[..usize::from(insn.len)])
        ));
    }
    let offset = ea.wrapping_sub(base as u64);
    if offset + u64::from(insn.width) > len as u64 {
        die(format_args!(
            "{}-byte access at offset {offset:#x} runs past the {len:#x}-byte trap window",
            insn.width
        ));
    }
    let store = insn.store_value(reg);
    let ctx = slot.ctx.load(Ordering::Relaxed);
    // SAFETY: stored from `dispatch::<T> as Dispatch` for the `T` behind `ctx`, which stays
    // valid while the slot is claimed.
    let f: Dispatch = unsafe { std::mem::transmute(slot.dispatch.load(Ordering::Relaxed)) };
    // SAFETY: the slot is claimed by this thread.
    let loaded = unsafe { f(ctx, offset, insn.width, store) };
    match insn.op {
        x86::Op::Load { dst, .. } => {
            slot.reads.fetch_add(1, Ordering::Relaxed);
            let value = insn.load_value(loaded).unwrap_or(0);
            let r = greg(dst.gpr);
            gregs[r] = dst.put(gregs[r] as u64, value) as libc::greg_t;
        }
        x86::Op::Flags { .. } => {
            slot.reads.fetch_add(1, Ordering::Relaxed);
            let efl = libc::REG_EFL as usize;
            let old = gregs[efl] as u64;
            let new = insn.flags(old, loaded, |g| gregs[greg(g)] as u64);
            gregs[efl] = new.unwrap_or(old) as libc::greg_t;
        }
        x86::Op::StoreReg { .. } | x86::Op::StoreImm { .. } => {
            slot.writes.fetch_add(1, Ordering::Relaxed);
        }
    }
    gregs[libc::REG_RIP as usize] = next as libc::greg_t;
}

/// A fault that is not ours: hand it to the previous disposition.
fn chain(sig: c_int, info: *mut siginfo_t, ctx: *mut c_void) {
    let prev = PREVIOUS.get().copied().unwrap_or(Previous {
        handler: libc::SIG_DFL,
        flags: 0,
    });
    match prev.handler {
        libc::SIG_DFL | libc::SIG_IGN => {
            // Back to the default action; returning re-executes the access, which then kills
            // the process with SIGSEGV as usual.
            // SAFETY: plain signal() call with a valid disposition.
            unsafe { libc::signal(libc::SIGSEGV, libc::SIG_DFL) };
        }
        h if prev.flags & libc::SA_SIGINFO != 0 => {
            // SAFETY: the previous handler was installed with SA_SIGINFO, so it has this type.
            let f: extern "C" fn(c_int, *mut siginfo_t, *mut c_void) =
                unsafe { std::mem::transmute(h) };
            f(sig, info, ctx);
        }
        h => {
            // SAFETY: a handler installed without SA_SIGINFO takes only the signal number.
            let f: extern "C" fn(c_int) = unsafe { std::mem::transmute(h) };
            f(sig);
        }
    }
}

/// Bytes as hex, for messages.
struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_char(' ')?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A message buffer on the stack (formatting into it allocates nothing).
struct StackBuf {
    buf: [u8; 512],
    len: usize,
}

impl fmt::Write for StackBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Print `msg` to stderr with async-signal-safe calls only, and abort.
fn die(msg: fmt::Arguments<'_>) -> ! {
    let mut b = StackBuf {
        buf: [0; 512],
        len: 0,
    };
    let _ = writeln!(b, "virtq-testkit trap: {msg}");
    // SAFETY: write(2) and abort(3) are async-signal-safe; the buffer is valid for `len`.
    unsafe {
        libc::write(2, b.buf.as_ptr().cast(), b.len);
        libc::abort()
    }
}
