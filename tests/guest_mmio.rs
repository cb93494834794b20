//! The example devices driven by `virtio-drivers`' own, unmodified `MmioTransport` (virtio-mmio
//! v2 and legacy v1): every register access it makes is a real load or store to a trap window
//! (`virtq_testkit::trap`), decoded and forwarded to `virtq`'s `MmioTransport` the way a
//! hypervisor's trap handler forwards it.
//!
//! * blk with the device running inside the trap (`NotifyMode::Inline`), using the blocking
//!   driver API; and with deferred notifications and a guest interrupt loop (non-blocking API).
//! * net (raw, non-blocking API) with deferred notifications and a guest interrupt loop.
//! * console (blocking transmit) with the device on an I/O thread.
//!
//! Each over {no features, INDIRECT_DESC, EVENT_IDX, both} × {v2, legacy}. The devices also
//! offer `VIRTIO_F_RING_PACKED` in half the cases: `virtio-drivers` 0.13 has no packed ring
//! (its devices never accept bit 34), so the tests check that it is declined and the split ring
//! is used. A counting allocator checks that nothing allocates inside the trap handler.
//!
//! Needs x86-64 Linux and real signals: compiled only there, never under Miri.
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use virtq::Features;
use virtq::GuestMemory;
use virtq::transport::{MmioVersion, NotifyMode, VirtioDevice};
use virtq::wire::DeviceStatus;
use virtq_testkit::devices::{BlkDevice, ConsoleDevice, NetDevice};
use virtq_testkit::guest::virtio_drivers::device::blk::VirtIOBlk;
use virtq_testkit::guest::virtio_drivers::device::console::VirtIOConsole;
use virtq_testkit::guest::virtio_drivers::device::net::VirtIONetRaw;
use virtq_testkit::guest::virtio_drivers::transport::InterruptStatus;
use virtq_testkit::guest::{Arena, GuestHal};
use virtq_testkit::trap::mmio::{MmioTarget, MmioWindow, guest_transport, mmio_window};
use virtq_testkit::trap::runs::{self, CONSOLE_ECHO_BYTES, pattern};
use virtq_testkit::trap::{HandlerAllocations, handler_allocations};

/// Counts allocations (and frees) made inside the trap handler: there must be none.
#[global_allocator]
static ALLOC: HandlerAllocations = HandlerAllocations;

const BOTH: Features = Features::INDIRECT_DESC.union(Features::EVENT_IDX);

/// {v2, legacy} × {none, INDIRECT, EVENT_IDX, both}; RING_PACKED offered with EVENT_IDX.
fn matrix() -> Vec<(MmioVersion, Features)> {
    let feats = [
        Features::empty(),
        Features::INDIRECT_DESC,
        Features::EVENT_IDX | Features::RING_PACKED,
        BOTH | Features::RING_PACKED,
    ];
    [MmioVersion::V2, MmioVersion::Legacy]
        .into_iter()
        .flat_map(|v| feats.into_iter().map(move |f| (v, f)))
        .collect()
}

/// After initialisation: the negotiated ring features are what the device offered, the
/// packed ring (if offered) was declined, and the device is live.
fn check_negotiated<D: VirtioDevice, M: GuestMemory, const Q: usize>(
    t: &MmioTarget<D, M, Q>,
    version: MmioVersion,
    extra: Features,
) {
    let tr = t.transport();
    let neg = Features::from_bits_truncate(tr.negotiated_features().bits());
    let ctx = format!("{version:?} {extra:?}");
    assert_eq!(neg & BOTH, extra & BOTH, "{ctx}");
    assert_eq!(
        neg.contains(Features::VERSION_1),
        version == MmioVersion::V2,
        "{ctx}"
    );
    let offered = Features::from_bits_truncate(tr.offered_features().bits());
    assert_eq!(
        offered.contains(Features::RING_PACKED),
        version == MmioVersion::V2 && extra.contains(Features::RING_PACKED),
        "{ctx}"
    );
    assert!(
        !neg.contains(Features::RING_PACKED),
        "{ctx}: virtio-drivers took RING_PACKED"
    );
    assert!(!tr.is_packed(), "{ctx}");
    assert!(tr.status().contains(DeviceStatus::DRIVER_OK), "{ctx}");
}

/// What every test checks at the end: the trap carried the traffic, every access fitted the
/// transport, the driver's drop reset the device, and nothing allocated in the handler.
fn check_window<D: VirtioDevice + Send, const Q: usize>(w: &MmioWindow<D, Q>, ctx: &str) {
    let c = w.counts();
    assert!(c.reads > 10 && c.writes > 10, "{ctx}: {c:?}");
    assert_eq!(
        w.with(|t| t.refused()),
        (0, None),
        "{ctx}: accesses the transport refused"
    );
    assert_eq!(
        w.with(|t| t.transport().status()),
        DeviceStatus::empty(),
        "{ctx}: the driver's drop resets the device"
    );
    assert_eq!(
        handler_allocations(),
        0,
        "allocation inside the trap handler"
    );
}

const SECTORS: u64 = 2048;

/// blk with the device inside the trap: every notify runs the device in the signal handler
/// (INIT-01, FEAT-10, MMIO-04). Writes and reads of 1–8 sectors, flush, GET_ID and an
/// out-of-range read; the interrupt line rises and the guest acknowledges it.
#[test]
fn blk_device_inside_the_trap() {
    for (version, extra) in matrix() {
        let ctx = format!("{version:?} {extra:?}");
        let arena = Arena::new(1 << 20);
        let _g = arena.install();
        let w = mmio_window::<_, 1>(
            BlkDevice::new(SECTORS, extra, 16),
            &arena,
            version,
            NotifyMode::Inline,
        );
        let mut blk = VirtIOBlk::<GuestHal, _>::new(guest_transport(&w).unwrap()).unwrap();
        w.with(|t| check_negotiated(t, version, extra));
        let disk = |at: usize, len: usize| w.with(|t| t.device().disk()[at..][..len].to_vec());
        runs::blk_blocking(&mut blk, SECTORS, disk, &ctx);
        let stats = w.with(|t| t.device().stats);
        assert_eq!(
            (stats.requests, stats.ioerr, stats.flushes, stats.malformed),
            (15, 1, 1, 0)
        );
        // MMIO-03/04: the line went up (at least once) and is up now; the guest's
        // acknowledgement through the trap lowers it.
        let irq = w.with(|t| t.irq());
        assert!(irq.level && irq.raised >= 1, "{ctx}: {irq:?}");
        assert!(
            blk.ack_interrupt()
                .contains(InterruptStatus::QUEUE_INTERRUPT)
        );
        assert!(!w.with(|t| t.irq().level), "{ctx}");
        drop(blk);
        check_window(&w, &ctx);
        drop(_g);
        assert_eq!(
            arena.in_use(),
            0,
            "{ctx}: every DMA page and bounce buffer returned"
        );
    }
}

/// blk with deferred notifications: the guest submits requests (non-blocking API, each
/// notify only records a kick), the hypervisor runs the device afterwards, and the guest's
/// interrupt handler acknowledges the interrupt and completes what the used ring holds.
#[test]
fn blk_guest_interrupt_loop() {
    for (version, extra) in matrix() {
        let ctx = format!("{version:?} {extra:?}");
        let arena = Arena::new(1 << 20);
        let _g = arena.install();
        let w = mmio_window::<_, 1>(
            BlkDevice::new(SECTORS, extra, 16),
            &arena,
            version,
            NotifyMode::Deferred,
        );
        let mut blk = VirtIOBlk::<GuestHal, _>::new(guest_transport(&w).unwrap()).unwrap();
        w.with(|t| check_negotiated(t, version, extra));
        runs::blk_interrupt_loop(
            &mut blk,
            // Hypervisor: run the device on what was kicked.
            || w.with(|t| t.process_kicks()),
            // Guest interrupt handler.
            |blk| {
                let st = blk.ack_interrupt();
                assert!(st.contains(InterruptStatus::QUEUE_INTERRUPT), "{ctx}");
            },
            &ctx,
        );
        let irq = w.with(|t| t.irq());
        assert!(!irq.level && irq.raised >= 4, "{ctx}: {irq:?}");
        drop(blk);
        check_window(&w, &ctx);
    }
}

/// net loopback with deferred notifications and a guest interrupt loop over `VirtIONetRaw`:
/// receive buffers posted up front, frames transmitted a few at a time, the hypervisor runs
/// the device, the guest's interrupt handler completes transmissions and receptions, checks
/// each frame byte for byte and posts the buffer again.
#[test]
fn net_guest_interrupt_loop() {
    const QS: usize = 16;
    const FRAMES: usize = 24;
    for (version, extra) in matrix() {
        let ctx = format!("{version:?} {extra:?}");
        let arena = Arena::new(2 << 20);
        let _g = arena.install();
        let w = mmio_window::<_, 2>(
            NetDevice::new(extra, QS as u16),
            &arena,
            version,
            NotifyMode::Deferred,
        );
        let mut net = VirtIONetRaw::<GuestHal, _, QS>::new(guest_transport(&w).unwrap()).unwrap();
        w.with(|t| check_negotiated(t, version, extra));
        runs::net_loopback(
            &mut net,
            FRAMES,
            || w.with(|t| t.process_kicks()),
            // Guest interrupt handler.
            |net| {
                let st = net.ack_interrupt();
                assert!(st.contains(InterruptStatus::QUEUE_INTERRUPT), "{ctx}");
            },
            &ctx,
        );
        let (looped, dropped) = w.with(|t| (t.device().looped, t.device().dropped));
        assert_eq!((looped, dropped), (FRAMES as u64, 0), "{ctx}");
        assert!(w.with(|t| t.irq().raised) >= 2, "{ctx}");
        drop(net);
        check_window(&w, &ctx);
    }
}

/// console echo with the device on its own I/O thread (deferred notifications): the blocking
/// transmit waits on the used ring while that thread runs the device; the guest's interrupt
/// handler (`ack_interrupt`) completes receptions. Single bytes, a line, and a message longer
/// than the 4 KiB receive buffer.
#[test]
fn console_with_an_io_thread() {
    for (version, extra) in matrix() {
        let ctx = format!("{version:?} {extra:?}");
        let arena = Arena::new(1 << 20);
        let _g = arena.install();
        let w = mmio_window::<_, 2>(
            ConsoleDevice::new(extra, 16),
            &arena,
            version,
            NotifyMode::Deferred,
        );
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            // The hypervisor's I/O thread.
            s.spawn(|| {
                while !stop.load(Ordering::Acquire) {
                    w.with(|t| t.process_kicks());
                    std::thread::sleep(Duration::from_micros(20));
                }
            });
            let mut con = VirtIOConsole::<GuestHal, _>::new(guest_transport(&w).unwrap()).unwrap();
            w.with(|t| check_negotiated(t, version, extra));
            runs::console_echo(
                &mut con,
                |con| {
                    if w.with(|t| t.irq().level) {
                        // Guest interrupt handler: acknowledge, complete the reception.
                        con.ack_interrupt().unwrap();
                    }
                },
                &ctx,
            );
            let transmitted = w.with(|t| t.device().transmitted.len());
            assert_eq!(transmitted, CONSOLE_ECHO_BYTES, "{ctx}");
            assert!(w.with(|t| t.irq().raised) >= 2, "{ctx}");
            drop(con);
            stop.store(true, Ordering::Release);
        });
        check_window(&w, &ctx);
    }
}

/// SPLIT-*: more than 65 536 requests through the trap, so `avail.idx` and `used.idx` wrap,
/// with the device inside the trap and EVENT_IDX (v2) or INDIRECT_DESC (legacy).
#[test]
fn blk_indices_wrap_through_the_trap() {
    for (version, extra) in [
        (MmioVersion::V2, Features::EVENT_IDX),
        (MmioVersion::Legacy, Features::INDIRECT_DESC),
    ] {
        let ctx = format!("{version:?} {extra:?}");
        let arena = Arena::new(1 << 20);
        let _g = arena.install();
        let w = mmio_window::<_, 1>(
            BlkDevice::new(SECTORS, extra, 16),
            &arena,
            version,
            NotifyMode::Inline,
        );
        let mut blk = VirtIOBlk::<GuestHal, _>::new(guest_transport(&w).unwrap()).unwrap();
        let data = pattern(3, 512, 1);
        blk.write_blocks(3, &data).unwrap();
        let mut back = [0u8; 512];
        const N: usize = 65_536 + 300;
        let before = w.counts().writes;
        for i in 0..N {
            back.fill(0);
            blk.read_blocks(3, &mut back).unwrap();
            if i % 4096 == 0 || i > 65_500 {
                assert_eq!(&back[..], &data[..], "{ctx}: request {i}");
            }
        }
        let (requests, next_avail, next_used) = w.with(|t| {
            let q = t.transport().queue(0).unwrap();
            (t.device().stats.requests, q.next_avail_idx, q.next_used_idx)
        });
        assert_eq!(requests, N as u64 + 1, "{ctx}");
        assert_eq!(next_avail, ((N + 1) % 65_536) as u16, "{ctx}");
        assert_eq!(next_used, next_avail, "{ctx}");
        // Every request was a trapped QueueNotify (no suppression: one request in flight).
        assert!(w.counts().writes - before >= N as u64, "{ctx}");
        drop(blk);
        check_window(&w, &ctx);
    }
}
