//! The example devices run inside a hypervisor's trap handler (`NotifyMode::Inline`), where
//! allocating or freeing memory can deadlock on an allocator lock the interrupted code holds.
//! A counting global allocator shows that a `QueueNotify` through the transport allocates and
//! frees nothing, for blk, console and net on both ring formats.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use virtq::Features;
use virtq::transport::mmio::{MmioVersion, regs};
use virtq::transport::{Events, MmioTransport, VirtioDevice};
use virtq_testkit::devices::blk::{BlkDevice, BlkReqHeader, T_IN, T_OUT};
use virtq_testkit::devices::{ConsoleDevice, NetDevice};
use virtq_testkit::{PackedDriver, SplitDriver, TestMemory};
use zerocopy::IntoBytes;
use zerocopy::little_endian::{U32, U64};

/// Counts allocator calls made on this thread while armed.
struct Counting;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static CALLS: Cell<u64> = const { Cell::new(0) };
}

fn note() {
    let _ = ARMED.try_with(|a| {
        if a.get() {
            let _ = CALLS.try_with(|c| c.set(c.get() + 1));
        }
    });
}

// SAFETY: every call is forwarded to `System` unchanged; the counter is a thread-local `Cell`
// with a const initialiser (no allocation, no destructor).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's promises.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's promises.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note();
        // SAFETY: forwarded with the caller's promises.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's promises.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Allocator calls `f` makes on this thread.
fn allocations<R>(f: impl FnOnce() -> R) -> (R, u64) {
    CALLS.with(|c| c.set(0));
    ARMED.with(|a| a.set(true));
    let r = f();
    ARMED.with(|a| a.set(false));
    (r, CALLS.with(Cell::get))
}

type Mmio<'m, D, const Q: usize> = MmioTransport<D, &'m TestMemory, Q>;

/// Guest RAM with every page written once: `TestMemory` allocates a page at its first write,
/// which must not be counted against the device.
fn ram() -> TestMemory {
    let mem = TestMemory::new(&[(0, 0x40_0000)]);
    mem.fill(0, 0x40_0000, 0);
    mem
}

/// A queue's three areas.
fn areas(q: u16) -> (u64, u64, u64) {
    let d = 0x1_0000 + u64::from(q) * 0x1_0000;
    (d, d + 0x8000, d + 0xC000)
}

/// A register write during set-up, which must raise no event.
fn w<D: VirtioDevice, const Q: usize>(t: &mut Mmio<'_, D, Q>, reg: u64, v: u64) {
    assert_eq!(t.write(reg, 4, v).events, Events::empty(), "{reg:#x}");
}

/// Negotiate VERSION_1 plus `extra`, program every queue with `size`, go live.
fn live<D: VirtioDevice, const Q: usize>(t: &mut Mmio<'_, D, Q>, extra: Features, size: u16) {
    let want = (Features::VERSION_1 | extra).bits();
    w(t, regs::STATUS, 1 | 2);
    for sel in 0..2u64 {
        w(t, regs::DRIVER_FEATURES_SEL, sel);
        w(t, regs::DRIVER_FEATURES, (want >> (32 * sel)) & 0xFFFF_FFFF);
    }
    w(t, regs::STATUS, 1 | 2 | 8);
    for q in 0..Q as u16 {
        let (d, a, u) = areas(q);
        w(t, regs::QUEUE_SEL, q.into());
        w(t, regs::QUEUE_NUM, size.into());
        w(t, regs::QUEUE_DESC_LOW, d);
        w(t, regs::QUEUE_DRIVER_LOW, a);
        w(t, regs::QUEUE_DEVICE_LOW, u);
        w(t, regs::QUEUE_READY, 1);
    }
    w(t, regs::STATUS, 1 | 2 | 8 | 4);
    assert_eq!(t.read(regs::STATUS, 4), 1 | 2 | 8 | 4);
}

/// `QueueNotify` for `q`: allocator calls during it, and whether the interrupt line is high.
fn notify<D: VirtioDevice, const Q: usize>(t: &mut Mmio<'_, D, Q>, q: u16) -> (u64, bool) {
    let (out, n) = allocations(|| t.write(regs::QUEUE_NOTIFY, 4, q.into()));
    assert_eq!(out.events, Events::empty(), "work done within the budget");
    (n, out.irq)
}

/// The driver side of either ring format.
enum Driver<'m> {
    Split(SplitDriver<'m>),
    Packed(PackedDriver<'m>),
}

impl<'m> Driver<'m> {
    fn new(mem: &'m TestMemory, packed: bool, q: u16, size: u16) -> Self {
        let (d, a, u) = areas(q);
        if packed {
            Self::Packed(PackedDriver::new(mem, size, d, a, u))
        } else {
            Self::Split(SplitDriver::new(mem, size, d, a, u))
        }
    }
    fn add(&mut self, bufs: &[(u64, u32, bool)]) {
        match self {
            Self::Split(d) => d.add_chain(bufs).map(|_| ()),
            Self::Packed(d) => d.add_chain(bufs).map(|_| ()),
        }
        .expect("room in the ring");
    }
    /// The used length of the next completion.
    fn pop_used(&mut self) -> Option<u32> {
        match self {
            Self::Split(d) => d.pop_used().map(|(_, len)| len),
            Self::Packed(d) => d.pop_used().map(|u| u.len),
        }
    }
}

fn extra(packed: bool) -> Features {
    if packed {
        Features::RING_PACKED | Features::EVENT_IDX
    } else {
        Features::EVENT_IDX | Features::INDIRECT_DESC
    }
}

#[test]
fn blk_notify_allocates_nothing() {
    for packed in [false, true] {
        let mem = ram();
        let dev = BlkDevice::new(64, extra(packed), 16);
        let mut t = Mmio::<_, 1>::new(dev, &mem, MmioVersion::V2);
        live(&mut t, extra(packed), 16);
        let mut q = Driver::new(&mem, packed, 0, 16);
        let req = |type_: u32, sector: u64| BlkReqHeader {
            type_: U32::new(type_),
            reserved: U32::new(0),
            sector: U64::new(sector),
        };
        mem.poke(0x20_0000, req(T_OUT, 3).as_bytes());
        mem.fill(0x20_1000, 512, 0x5A);
        mem.poke(0x20_2000, req(T_IN, 3).as_bytes());
        q.add(&[
            (0x20_0000, 16, false),
            (0x20_1000, 512, false),
            (0x20_1F00, 1, true),
        ]);
        q.add(&[
            (0x20_2000, 16, false),
            (0x20_3000, 512, true),
            (0x20_3F00, 1, true),
        ]);
        assert_eq!(notify(&mut t, 0), (0, true), "packed: {packed}");
        assert_eq!((q.pop_used(), q.pop_used()), (Some(1), Some(513)));
        assert_eq!(mem.peek(0x20_3000, 512), vec![0x5A; 512]);
        assert_eq!(mem.peek(0x20_3F00, 1), [0], "S_OK");
    }
}

/// Console and net: receive buffers posted, then data transmitted and looped back.
fn loopback_allocates_nothing<D: VirtioDevice>(dev: impl Fn(Features) -> D) {
    for packed in [false, true] {
        let mem = ram();
        let mut t = Mmio::<_, 2>::new(dev(extra(packed)), &mem, MmioVersion::V2);
        live(&mut t, extra(packed), 16);
        let mut rx = Driver::new(&mem, packed, 0, 16);
        let mut tx = Driver::new(&mem, packed, 1, 16);
        for k in 0..4 {
            rx.add(&[(0x20_0000 + k * 0x1000, 2048, true)]);
        }
        // Nothing to echo yet: the buffers stay with the driver.
        assert_eq!(
            notify(&mut t, 0),
            (0, false),
            "receive buffers, packed: {packed}"
        );
        for k in 0..3u64 {
            let frame: Vec<u8> = (0..100 + k).map(|i| (i ^ k) as u8).collect();
            mem.poke(0x30_0000 + k * 0x1000, &frame);
            tx.add(&[(0x30_0000 + k * 0x1000, frame.len() as u32, false)]);
        }
        assert_eq!(notify(&mut t, 1), (0, true), "transmit, packed: {packed}");
        let mut echoed = 0;
        while let Some(len) = rx.pop_used() {
            echoed += len;
        }
        assert_eq!(echoed, 100 + 101 + 102, "packed: {packed}");
        assert_eq!(mem.peek(0x20_0000, 4), [0, 1, 2, 3]);
    }
}

#[test]
fn console_notify_allocates_nothing() {
    loopback_allocates_nothing(|f| ConsoleDevice::new(f, 16));
}

#[test]
fn net_notify_allocates_nothing() {
    loopback_allocates_nothing(|f| NetDevice::new(f, 16));
}
