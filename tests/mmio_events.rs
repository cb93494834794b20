//! Issue 15, errors without polling: every `MmioTransport` write returns an outcome with the
//! interrupt line level, the notifications raised and the events of the access (a queue
//! refused at enable, DEVICE_NEEDS_RESET newly raised, a device reset, queue work waiting).
//! Also the typed surface (device IDs, interrupt status, features) and the edge-triggered
//! interrupt case the transport documentation describes.

use virtq::transport::mmio::{MmioVersion, regs};
use virtq::transport::{
    DeviceId, Events, InterruptStatus, MmioOutcome, MmioTransport, NotifyMode, QueueSetupError,
};
use virtq::wire::DeviceStatus;
use virtq::{Features, Queue};
use virtq_testkit::devices::{BlkDevice, ConsoleDevice, console};
use virtq_testkit::{SplitDriver, TestMemory};

type Blk<'m> = MmioTransport<BlkDevice, &'m TestMemory, 1>;

const ACK_DRV: u64 = 1 | 2;
const FEAT_OK: u64 = 8;
const DRV_OK: u64 = 4;
const NONE: Events = Events::empty();

fn blk(mem: &TestMemory, version: MmioVersion) -> Blk<'_> {
    MmioTransport::new(BlkDevice::new(8, Features::EVENT_IDX, 16), mem, version)
}

/// A write during set-up; it must raise nothing.
fn w(t: &mut Blk<'_>, reg: u64, v: u64) {
    let out = t.write(reg, 4, v);
    assert_eq!(
        (out.events, out.raised),
        (NONE, InterruptStatus::empty()),
        "{reg:#x}"
    );
}

fn features_ok(t: &mut Blk<'_>) {
    w(t, regs::STATUS, ACK_DRV);
    w(t, regs::DRIVER_FEATURES_SEL, 1);
    w(t, regs::DRIVER_FEATURES, 1); // VERSION_1
    w(t, regs::STATUS, ACK_DRV | FEAT_OK);
}

/// Program queue 0 at `drv`'s rings; the outcome of `QueueReady = 1`.
fn enable(t: &mut Blk<'_>, drv: &SplitDriver<'_>, size: u64) -> MmioOutcome {
    w(t, regs::QUEUE_SEL, 0);
    w(t, regs::QUEUE_NUM, size);
    w(t, regs::QUEUE_DESC_LOW, drv.desc);
    w(t, regs::QUEUE_DRIVER_LOW, drv.avail);
    w(t, regs::QUEUE_DEVICE_LOW, drv.used);
    t.write(regs::QUEUE_READY, 4, 1)
}

/// A live device with queue 0 at `drv`'s rings.
fn live<'m>(mem: &'m TestMemory, drv: &SplitDriver<'_>) -> Blk<'m> {
    let mut t = blk(mem, MmioVersion::V2);
    features_ok(&mut t);
    assert_eq!(enable(&mut t, drv, 16).events, NONE);
    w(&mut t, regs::STATUS, ACK_DRV | FEAT_OK | DRV_OK);
    t
}

/// H9, MMIO-16: a queue refused at enable is an event of that write, with DEVICE_NEEDS_RESET
/// the first time (the status is sticky, so a second refusal raises no new NEEDS_RESET).
#[test]
fn queue_refused_at_enable_is_reported_by_the_write() {
    let mem = TestMemory::m0();
    let drv = SplitDriver::standard(&mem, 16);
    let mut t = blk(&mem, MmioVersion::V2);
    // Before FEATURES_OK: refused (the ring format is not known yet).
    w(&mut t, regs::STATUS, ACK_DRV);
    let out = enable(&mut t, &drv, 16);
    assert_eq!(out.events, Events::QUEUE_REFUSED | Events::NEEDS_RESET);
    assert!(
        !out.irq,
        "no configuration interrupt before DRIVER_OK (STAT-09)"
    );
    assert_eq!(
        t.queue_setup_error(0),
        Some(QueueSetupError::FeaturesNotAccepted)
    );
    // After a reset and FEATURES_OK, a size that is not a power of two.
    let out = t.write(regs::STATUS, 4, 0);
    assert_eq!(out.events, Events::DEVICE_RESET);
    features_ok(&mut t);
    let out = enable(&mut t, &drv, 12);
    assert_eq!(out.events, Events::QUEUE_REFUSED | Events::NEEDS_RESET);
    assert_eq!(
        t.queue_setup_error(0),
        Some(QueueSetupError::SizeNotPowerOfTwo { size: 12 })
    );
    // Stopped and refused again: the refusal is reported, NEEDS_RESET was already set.
    w(&mut t, regs::QUEUE_READY, 0);
    let out = enable(&mut t, &drv, 12);
    assert_eq!(out.events, Events::QUEUE_REFUSED);
    // Legacy: a QueuePFN whose layout is not in RAM.
    let mut l = blk(&mem, MmioVersion::Legacy);
    w(&mut l, regs::STATUS, ACK_DRV);
    w(&mut l, regs::QUEUE_SEL, 0);
    w(&mut l, regs::QUEUE_NUM, 16);
    let out = l.write(regs::QUEUE_PFN, 4, 0x100); // 1 MiB: the hole of map M0
    assert_eq!(out.events, Events::QUEUE_REFUSED | Events::NEEDS_RESET);
    assert_eq!(l.queue_setup_error(0), Some(QueueSetupError::OutsideRam));
    // An accepted queue raises nothing.
    let mut t = blk(&mem, MmioVersion::V2);
    features_ok(&mut t);
    assert_eq!(enable(&mut t, &drv, 16).events, NONE);
}

/// STAT-09, MMIO-05: a queue that breaks during a notification raises DEVICE_NEEDS_RESET and
/// a configuration interrupt, reported by that write, once.
#[test]
fn needs_reset_newly_raised_is_reported_once() {
    let mem = TestMemory::m0();
    let mut drv = SplitDriver::standard(&mem, 16);
    let mut t = live(&mem, &drv);
    // H1: avail.idx more than the queue size ahead.
    drv.set_avail_idx(17);
    let out = t.write(regs::QUEUE_NOTIFY, 4, 0);
    assert_eq!(out.events, Events::NEEDS_RESET);
    assert!(out.irq);
    assert_eq!(out.raised, InterruptStatus::CONFIG_CHANGE);
    assert!(t.queue(0).unwrap().is_broken());
    assert!(t.status().contains(DeviceStatus::DEVICE_NEEDS_RESET));
    // Later notifications of the broken queue: ignored, nothing new.
    let out = t.write(regs::QUEUE_NOTIFY, 4, 0);
    assert_eq!((out.events, out.raised), (NONE, InterruptStatus::empty()));
    assert!(out.irq, "still pending until acknowledged");
    let out = t.write(regs::INTERRUPT_ACK, 4, 2);
    assert!(!out.irq);
    // The hypervisor's own request: an event only if it is new.
    assert_eq!(t.raise_needs_reset().events, NONE);
    let mut fresh = live(&mem, &SplitDriver::standard(&mem, 16));
    let out = fresh.raise_needs_reset();
    assert_eq!(out.events, Events::NEEDS_RESET);
    assert_eq!(out.raised, InterruptStatus::CONFIG_CHANGE);
}

/// §2.4: a status write of 0 is reported as a device reset (and only that write).
#[test]
fn device_reset_is_reported() {
    let mem = TestMemory::m0();
    let drv = SplitDriver::standard(&mem, 16);
    let mut t = live(&mem, &drv);
    let out = t.write(regs::STATUS, 4, 0);
    assert_eq!(out.events, Events::DEVICE_RESET);
    assert!(t.status().is_empty());
    // A non-zero status write is not a reset, nor is an 8-bit write of 0 (ignored, MMIO-21).
    assert_eq!(t.write(regs::STATUS, 4, 1).events, NONE);
    assert_eq!(t.write(regs::STATUS, 1, 0).events, NONE);
}

/// Deferred notifications: a kick is an event of the `QueueNotify` write; it stays reported
/// until taken, and running the queue clears it.
#[test]
fn deferred_kicks_are_reported_until_taken() {
    let mem = TestMemory::m0();
    let mut drv = SplitDriver::standard(&mem, 16);
    let mut t = live(&mem, &drv);
    t.set_notify_mode(NotifyMode::Deferred);
    drv.add_chain(&[(0x8_0000, 1, true)]).unwrap();
    let out = t.write(regs::QUEUE_NOTIFY, 4, 0);
    assert_eq!(out.events, Events::KICKS);
    assert!(!out.irq, "nothing ran");
    assert_eq!(t.device().stats.requests, 0);
    assert_eq!(t.write(regs::QUEUE_SEL, 4, 0).events, Events::KICKS);
    let mut kicked = Vec::new();
    t.take_kicks(|q| kicked.push(q));
    assert_eq!(kicked, [0]);
    assert_eq!(t.write(regs::QUEUE_SEL, 4, 0).events, NONE, "taken");
    let out = t.process_queue(0);
    assert_eq!(out.events, NONE);
    assert!(out.irq);
    assert_eq!(out.raised, InterruptStatus::USED_BUFFER);
    assert_eq!(drv.pop_used(), Some((0, 1)));
}

/// The edge-triggered case of the transport documentation. Two completions without an
/// acknowledgement between them change the line level once: a hypervisor that injects on
/// rising edges of the level injects once. A configuration change that arrives while the
/// used-buffer bit is set is no edge either, and survives the driver acknowledging only the
/// bit it saw: the line stays high with nothing left to trigger an edge. `raised` reports each
/// notification, which is what an edge-triggered line must follow.
#[test]
fn edge_triggered_lines_follow_raised_not_the_level() {
    let mem = TestMemory::m0();
    let mut drv = SplitDriver::standard(&mem, 16);
    let mut t = live(&mem, &drv);
    let mut level = false;
    let (mut level_edges, mut raised_edges) = (0, 0);
    let mut hypervisor = |out: MmioOutcome| {
        level_edges += u32::from(out.irq && !level);
        level = out.irq;
        raised_edges += u32::from(!out.raised.is_empty());
    };
    for _ in 0..2 {
        drv.add_chain(&[(0x8_0000, 1, true)]).unwrap();
        hypervisor(t.write(regs::QUEUE_NOTIFY, 4, 0));
    }
    assert_eq!(drv.used_idx(), 2);
    // The guest's handler reads InterruptStatus: the used-buffer bit.
    let seen = t.read(regs::INTERRUPT_STATUS, 4);
    assert_eq!(seen, 1);
    // A configuration change arrives before the handler acknowledges.
    hypervisor(t.signal_config_change());
    // The handler acknowledges what it saw and returns; the line stays high.
    hypervisor(t.write(regs::INTERRUPT_ACK, 4, seen));
    assert_eq!(t.interrupt_status(), InterruptStatus::CONFIG_CHANGE);
    assert!(level);
    assert_eq!(
        level_edges, 1,
        "the level rose once for three notifications"
    );
    assert_eq!(raised_edges, 3, "one edge per notification");
}

/// Issue 15, typed surface: device IDs are §5's, the interrupt status is a bit set, features
/// keep device-specific bits, and sizes can be refused instead of rounded.
#[test]
fn typed_ids_interrupt_status_features_and_sizes() {
    assert_eq!(DeviceId::NET.0, 1);
    assert_eq!(DeviceId::BLOCK.0, 2);
    assert_eq!(DeviceId::CONSOLE.0, 3);
    assert_eq!(DeviceId::ENTROPY.0, 4);
    assert_eq!(DeviceId::SOCKET.0, 19);
    assert_eq!(DeviceId::GPIO.0, 41);
    let mem = TestMemory::m0();
    let t = MmioTransport::<_, _, 2>::new(
        ConsoleDevice::new(Features::empty(), 16),
        &mem,
        MmioVersion::V2,
    );
    assert_eq!(t.read(regs::DEVICE_ID, 4), u64::from(console::DEVICE_ID.0));
    // VIRTIO_CONSOLE_F_SIZE (bit 0) is device-specific and survives the typed round trip.
    assert!(t.offered_features().contains(console::F_SIZE));
    assert_eq!(
        t.offered_features(),
        console::F_SIZE | Features::VERSION_1,
        "offered: device bits plus what the transport adds"
    );
    assert_eq!(InterruptStatus::USED_BUFFER.bits(), 1);
    assert_eq!(InterruptStatus::CONFIG_CHANGE.bits(), 2);
    // try_new / try_set_size refuse what new / set_size would round or clamp.
    use virtq::{PackedQueue, SizeError};
    assert_eq!(Queue::try_new(0).err(), Some(SizeError::Zero));
    assert_eq!(
        Queue::try_new(100).err(),
        Some(SizeError::NotPowerOfTwo { size: 100 })
    );
    assert_eq!(
        Queue::try_new(65535).err(),
        Some(SizeError::TooLarge {
            size: 65535,
            max: 32768
        })
    );
    assert_eq!(Queue::new(100).max_size, 64, "new rounds down");
    let mut q = Queue::try_new(256).unwrap();
    assert_eq!(
        q.try_set_size(48),
        Err(SizeError::NotPowerOfTwo { size: 48 })
    );
    assert_eq!(q.size, 256, "unchanged by a refusal");
    assert_eq!(
        q.try_set_size(512),
        Err(SizeError::TooLarge {
            size: 512,
            max: 256
        })
    );
    assert_eq!(q.try_set_size(0), Err(SizeError::Zero));
    assert_eq!(q.try_set_size(64), Ok(()));
    assert_eq!(q.size, 64);
    q.set_size(48);
    assert_eq!(q.size, 32, "set_size rounds down");
    assert_eq!(PackedQueue::try_new(0).err(), Some(SizeError::Zero));
    assert_eq!(
        PackedQueue::try_new(40000).err(),
        Some(SizeError::TooLarge {
            size: 40000,
            max: 32768
        })
    );
    let mut p = PackedQueue::try_new(100).unwrap();
    assert_eq!(p.max_size, 100, "any packed size");
    assert_eq!(p.try_set_size(6), Ok(()));
    assert_eq!(p.size, 6);
    assert_eq!(
        p.try_set_size(101),
        Err(SizeError::TooLarge {
            size: 101,
            max: 100
        })
    );
    assert_eq!(p.size, 6);
    p.set_size(101);
    assert_eq!(p.size, 100, "set_size clamps");
}
