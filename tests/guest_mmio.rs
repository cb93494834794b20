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

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use virtq::Features;
use virtq::GuestMemory;
use virtq::transport::{MmioVersion, NotifyMode, VirtioDevice};
use virtq::wire::DeviceStatus;
use virtq_testkit::devices::net::MAC;
use virtq_testkit::devices::{BlkDevice, ConsoleDevice, NetDevice};
use virtq_testkit::guest::virtio_drivers::Error as DrvError;
use virtq_testkit::guest::virtio_drivers::device::blk::{BlkReq, BlkResp, RespStatus, VirtIOBlk};
use virtq_testkit::guest::virtio_drivers::device::console::VirtIOConsole;
use virtq_testkit::guest::virtio_drivers::device::net::VirtIONetRaw;
use virtq_testkit::guest::virtio_drivers::transport::InterruptStatus;
use virtq_testkit::guest::{Arena, GuestHal};
use virtq_testkit::trap::in_handler;
use virtq_testkit::trap::mmio::{MmioTarget, MmioWindow, guest_transport, mmio_window};

/// Counts allocations (and frees) made inside the trap handler: there must be none.
struct Counting;
static IN_HANDLER: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if in_handler() {
            IN_HANDLER.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if in_handler() {
            IN_HANDLER.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

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
    let neg = Features::from_bits_truncate(tr.negotiated_features());
    let ctx = format!("{version:?} {extra:?}");
    assert_eq!(neg & BOTH, extra & BOTH, "{ctx}");
    assert_eq!(
        neg.contains(Features::VERSION_1),
        version == MmioVersion::V2,
        "{ctx}"
    );
    let offered = Features::from_bits_truncate(tr.offered_features());
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
        IN_HANDLER.load(Ordering::Relaxed),
        0,
        "allocation inside the trap handler"
    );
}

const SECTORS: u64 = 2048;

fn pattern(block: usize, len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8) ^ (block as u8).wrapping_mul(31) ^ salt.rotate_left(3))
        .collect()
}

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
        assert_eq!(blk.capacity(), SECTORS, "{ctx}: config space");

        let mut written = Vec::new();
        for (i, n) in [1usize, 2, 3, 8, 1, 4].into_iter().enumerate() {
            let block = i * 97 % (SECTORS as usize - 8);
            let data = pattern(block, n * 512, i as u8);
            blk.write_blocks(block, &data).unwrap();
            written.push((block, data));
        }
        for (block, data) in &written {
            let mut back = vec![0u8; data.len()];
            blk.read_blocks(*block, &mut back).unwrap();
            assert_eq!(&back, data, "{ctx}: block {block}");
            w.with(|t| assert_eq!(&t.device().disk()[block * 512..][..data.len()], &data[..]));
        }
        blk.flush().unwrap();
        let mut id = [0u8; 20];
        let n = blk.device_id(&mut id).unwrap();
        assert_eq!(&id[..n], b"virtq-ram0", "{ctx}");
        let mut buf = [0xEEu8; 1024];
        assert_eq!(
            blk.read_blocks(SECTORS as usize - 1, &mut buf),
            Err(DrvError::IoError),
            "{ctx}"
        );
        assert!(buf.iter().all(|&b| b == 0), "{ctx}: error data zero-filled");
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

/// Upper bound on rounds of a guest interrupt loop before a test declares a stall.
const MAX_ROUNDS: usize = 100;

/// blk with deferred notifications: the guest submits requests (non-blocking API, each
/// notify only records a kick), the hypervisor runs the device afterwards, and the guest's
/// interrupt handler acknowledges the interrupt and completes what the used ring holds.
#[test]
fn blk_guest_interrupt_loop() {
    const K: usize = 4;
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
        let mut reqs: Vec<BlkReq> = (0..K).map(|_| BlkReq::default()).collect();
        let mut resps: Vec<BlkResp> = (0..K).map(|_| BlkResp::default()).collect();
        for round in 0..4 {
            let writing = round % 2 == 0;
            let mut bufs: Vec<Vec<u8>> = (0..K)
                .map(|i| {
                    if writing {
                        pattern(i * 2, 1024, round)
                    } else {
                        vec![0u8; 1024]
                    }
                })
                .collect();
            let mut tokens = [None; K];
            for i in 0..K {
                // SAFETY: the request, buffer and response stay untouched until completed.
                let tok = unsafe {
                    if writing {
                        blk.write_blocks_nb(i * 2, &mut reqs[i], &bufs[i], &mut resps[i])
                    } else {
                        blk.read_blocks_nb(i * 2, &mut reqs[i], &mut bufs[i], &mut resps[i])
                    }
                }
                .unwrap();
                tokens[i] = Some(tok);
            }
            assert_eq!(
                blk.peek_used(),
                None,
                "{ctx}: nothing runs before the hypervisor"
            );
            let mut done = 0;
            for _ in 0..MAX_ROUNDS {
                if done == K {
                    break;
                }
                // Hypervisor: run the device on what was kicked.
                if !w.with(|t| t.process_kicks()) {
                    continue;
                }
                // Guest interrupt handler.
                let st = blk.ack_interrupt();
                assert!(st.contains(InterruptStatus::QUEUE_INTERRUPT), "{ctx}");
                while let Some(tok) = blk.peek_used() {
                    let i = tokens
                        .iter()
                        .position(|t| *t == Some(tok))
                        .expect("known token");
                    tokens[i] = None;
                    // SAFETY: the same request, buffer and response as at submission.
                    unsafe {
                        if writing {
                            blk.complete_write_blocks(tok, &reqs[i], &bufs[i], &mut resps[i])
                        } else {
                            blk.complete_read_blocks(tok, &reqs[i], &mut bufs[i], &mut resps[i])
                        }
                    }
                    .unwrap();
                    assert_eq!(resps[i].status(), RespStatus::OK, "{ctx}");
                    done += 1;
                }
            }
            assert_eq!(done, K, "{ctx}: round {round} stalled");
            if !writing {
                for (i, b) in bufs.iter().enumerate() {
                    assert_eq!(b, &pattern(i * 2, 1024, round - 1), "{ctx}: round {round}");
                }
            }
        }
        let irq = w.with(|t| t.irq());
        assert!(!irq.level && irq.raised >= 4, "{ctx}: {irq:?}");
        drop(blk);
        check_window(&w, &ctx);
    }
}

/// A test frame: destination our MAC, a per-frame source and payload.
fn frame(i: usize, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&MAC);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, i as u8]);
    f[12..14].copy_from_slice(&0x88B5u16.to_be_bytes());
    for (k, b) in f[14..].iter_mut().enumerate() {
        *b = (k as u8).wrapping_mul(7) ^ i as u8;
    }
    f
}

/// net loopback with deferred notifications and a guest interrupt loop over `VirtIONetRaw`:
/// receive buffers posted up front, frames transmitted a few at a time, the hypervisor runs
/// the device, the guest's interrupt handler completes transmissions and receptions, checks
/// each frame byte for byte and posts the buffer again.
#[test]
fn net_guest_interrupt_loop() {
    const QS: usize = 16;
    const RX: usize = 4;
    const BUF: usize = 2048;
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
        assert_eq!(net.mac_address(), MAC, "{ctx}: config space");

        let mut rx_bufs = vec![[0u8; BUF]; RX];
        let mut rx_tokens = [0u16; RX];
        for (i, b) in rx_bufs.iter_mut().enumerate() {
            // SAFETY: the buffer is not touched until its reception completes.
            rx_tokens[i] = unsafe { net.receive_begin(b) }.unwrap();
        }
        let mut tx: Vec<(u16, Vec<u8>)> = Vec::new();
        let (mut sent, mut received) = (0usize, 0usize);
        let mut rounds = 0;
        while received < FRAMES {
            rounds += 1;
            assert!(rounds < MAX_ROUNDS, "{ctx}: stalled at {received}/{FRAMES}");
            // Two frames per round, so the device sees batches.
            while sent < FRAMES && tx.len() < 2 {
                let f = frame(sent, 60 + sent * 53 % 1400);
                let mut buf = vec![0u8; 12 + f.len()];
                let hdr = net.fill_buffer_header(&mut buf).unwrap();
                buf.truncate(hdr + f.len());
                buf[hdr..].copy_from_slice(&f);
                // SAFETY: `buf` is kept in `tx` untouched until its transmission completes.
                let tok = unsafe { net.transmit_begin(&buf) }.unwrap();
                tx.push((tok, buf));
                sent += 1;
            }
            if !w.with(|t| t.process_kicks()) {
                continue;
            }
            // Guest interrupt handler.
            assert!(
                net.ack_interrupt()
                    .contains(InterruptStatus::QUEUE_INTERRUPT),
                "{ctx}"
            );
            while let Some(tok) = net.poll_transmit() {
                let i = tx.iter().position(|(t, _)| *t == tok).expect("known token");
                let (_, buf) = tx.remove(i);
                // SAFETY: the buffer passed to transmit_begin for this token.
                unsafe { net.transmit_complete(tok, &buf) }.unwrap();
            }
            while let Some(tok) = net.poll_receive() {
                let i = rx_tokens
                    .iter()
                    .position(|t| *t == tok)
                    .expect("known token");
                // SAFETY: the buffer passed to receive_begin for this token.
                let (hdr, len) = unsafe { net.receive_complete(tok, &mut rx_bufs[i]) }.unwrap();
                let want = frame(received, 60 + received * 53 % 1400);
                assert_eq!(
                    &rx_bufs[i][hdr..hdr + len],
                    &want[..],
                    "{ctx}: frame {received}"
                );
                received += 1;
                // SAFETY: as at the first post.
                rx_tokens[i] = unsafe { net.receive_begin(&mut rx_bufs[i]) }.unwrap();
            }
        }
        assert!(tx.is_empty(), "{ctx}: every transmission completed");
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
            let size = con.size().unwrap().unwrap();
            assert_eq!((size.columns, size.rows), (80, 25), "{ctx}: config space");
            let long: Vec<u8> = (0..6000u32).map(|i| b'a' + (i % 26) as u8).collect();
            let messages: [&[u8]; 3] = [b"x", b"hello, virtq\n", &long];
            let deadline = Instant::now() + Duration::from_secs(10);
            for msg in messages {
                if let [b] = msg {
                    con.send(*b).unwrap();
                } else {
                    con.send_bytes(msg).unwrap();
                }
                let mut echoed = Vec::new();
                while echoed.len() < msg.len() {
                    if w.with(|t| t.irq().level) {
                        // Guest interrupt handler: acknowledge, complete the reception.
                        con.ack_interrupt().unwrap();
                    }
                    match con.recv(true).unwrap() {
                        Some(b) => echoed.push(b),
                        None => {
                            assert!(Instant::now() < deadline, "{ctx}: echo stalled");
                            std::thread::yield_now();
                        }
                    }
                }
                assert_eq!(echoed, msg, "{ctx}");
            }
            assert_eq!(con.recv(true).unwrap(), None, "{ctx}: nothing extra echoed");
            let transmitted = w.with(|t| t.device().transmitted.len());
            assert_eq!(transmitted, 1 + 13 + 6000, "{ctx}");
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
