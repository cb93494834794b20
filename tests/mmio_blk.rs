//! virtio-blk through the virtio-mmio trap path, driven by the real `virtio-drivers` guest:
//! round trips over {no features, INDIRECT_DESC, EVENT_IDX, both} × {MMIO v2, legacy v1},
//! index wrap-around, many requests in flight, and a device polling on its own thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use virtq::Features;
use virtq::transport::NotifyMode;
use virtq::transport::mmio::MmioVersion;
use virtq::wire::DeviceStatus;
use virtq_testkit::devices::BlkDevice;
use virtq_testkit::guest::virtio_drivers::Error as DrvError;
use virtq_testkit::guest::virtio_drivers::device::blk::{BlkReq, BlkResp, RespStatus, VirtIOBlk};
use virtq_testkit::guest::{Arena, GuestHal, GuestMmio, POISON, SharedDevice, attach};

type Blk = VirtIOBlk<GuestHal, GuestMmio<SharedDevice<BlkDevice, 1>>>;

const SECTORS: u64 = 2048; // 1 MiB

fn matrix() -> Vec<(MmioVersion, Features)> {
    if cfg!(miri) {
        // Miri samples two corners: v2 with every optional feature, legacy with none.
        return vec![
            (
                MmioVersion::V2,
                Features::INDIRECT_DESC | Features::EVENT_IDX,
            ),
            (MmioVersion::Legacy, Features::empty()),
        ];
    }
    let feats = [
        Features::empty(),
        Features::INDIRECT_DESC,
        Features::EVENT_IDX,
        Features::INDIRECT_DESC | Features::EVENT_IDX,
    ];
    [MmioVersion::V2, MmioVersion::Legacy]
        .into_iter()
        .flat_map(|v| feats.into_iter().map(move |f| (v, f)))
        .collect()
}

fn boot(
    arena: &Arc<Arena>,
    version: MmioVersion,
    extra: Features,
) -> (SharedDevice<BlkDevice, 1>, Blk) {
    let dev = attach::<_, 1>(BlkDevice::new(SECTORS, extra, 16), arena, version);
    let blk = Blk::new(GuestMmio::new(dev.clone()).unwrap()).unwrap();
    (dev, blk)
}

fn pattern(block: usize, len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8) ^ (block as u8).wrapping_mul(31) ^ salt)
        .collect()
}

/// INIT-01, FEAT-10, MMIO-04: the full round trip for every feature set and both versions.
#[test]
fn round_trip_matrix() {
    for (version, extra) in matrix() {
        let arena = Arena::new(1 << 20);
        let _g = arena.install();
        let (dev, mut blk) = boot(&arena, version, extra);
        {
            let t = dev.lock().unwrap();
            let neg = Features::from_bits_truncate(t.negotiated_features().bits());
            assert_eq!(
                neg & (Features::INDIRECT_DESC | Features::EVENT_IDX),
                extra,
                "{version:?} {extra:?}"
            );
            assert_eq!(
                neg.contains(Features::VERSION_1),
                version == MmioVersion::V2
            );
            assert!(t.status().contains(DeviceStatus::DRIVER_OK));
            assert_eq!(t.queue(0).unwrap().features, extra);
        }
        assert_eq!(blk.capacity(), SECTORS);

        // Writes of 1..8 sectors at scattered places, then read everything back.
        let mut blocks = Vec::new();
        for (i, n) in [1usize, 2, 3, 8, 1, 4].into_iter().enumerate() {
            let block = i * 97 % (SECTORS as usize - 8);
            let data = pattern(block, n * 512, i as u8);
            blk.write_blocks(block, &data).unwrap();
            blocks.push((block, data));
        }
        for (block, data) in &blocks {
            let mut back = vec![0u8; data.len()];
            blk.read_blocks(*block, &mut back).unwrap();
            assert_eq!(&back, data, "{version:?} {extra:?} block {block}");
            let t = dev.lock().unwrap();
            assert_eq!(&t.device().disk()[block * 512..][..data.len()], &data[..]);
        }
        blk.flush().unwrap();
        let mut id = [0u8; 20];
        let n = blk.device_id(&mut id).unwrap();
        assert_eq!(&id[..n], b"virtq-ram0");
        // Out of range: IOERR, and the poisoned buffer never reaches the guest as data.
        let mut buf = [0u8; 1024];
        assert_eq!(
            blk.read_blocks(SECTORS as usize - 1, &mut buf),
            Err(DrvError::IoError)
        );
        assert!(
            buf.iter().all(|&b| b == 0),
            "error data is zero-filled, not poison"
        );
        let stats = dev.lock().unwrap().device().stats;
        assert_eq!(stats.ioerr, 1);
        assert_eq!(stats.flushes, 1);
        assert_eq!(stats.malformed, 0);
        // Interrupts: with notifications enabled each completion raised bit 0 (MMIO-04).
        assert!(
            dev.lock()
                .unwrap()
                .interrupt_status()
                .contains(virtq::transport::InterruptStatus::USED_BUFFER)
        );
        assert!(blk.ack_interrupt().bits() & 1 != 0);
        assert!(dev.lock().unwrap().interrupt_status().is_empty());
        drop(blk);
        // The driver's drop resets the device (STAT-02).
        assert_eq!(dev.lock().unwrap().status(), DeviceStatus::empty());
        drop(_g);
        assert_eq!(
            arena.in_use(),
            0,
            "every DMA page and bounce buffer returned"
        );
    }
}

/// The poison is real: a device-writable buffer the device never writes reads back as
/// POISON (checked through the Hal directly).
#[test]
fn unwritten_device_buffers_are_poisoned() {
    use virtq_testkit::guest::virtio_drivers::{BufferDirection, Hal};
    let arena = Arena::new(1 << 16);
    let _g = arena.install();
    let mut buf = [7u8; 100];
    let ptr = std::ptr::NonNull::from(&mut buf[..]);
    // SAFETY: `buf` is valid and not otherwise accessed in between.
    let paddr = unsafe { GuestHal::share(ptr, BufferDirection::DeviceToDriver) };
    assert!(paddr >= virtq_testkit::guest::GUEST_RAM_BASE);
    // SAFETY: as above.
    unsafe { GuestHal::unshare(paddr, ptr, BufferDirection::DeviceToDriver) };
    assert!(buf.iter().all(|&b| b == POISON));
}

/// SPLIT-*: more than 65 536 requests, so `avail.idx` and `used.idx` wrap, on both versions.
/// Miri runs 40 requests (no wrap: the wrap is index arithmetic, which it has nothing to add
/// to, and 65 536 requests would take it hours).
#[test]
fn indices_wrap() {
    for (version, extra) in [
        (MmioVersion::V2, Features::EVENT_IDX),
        (MmioVersion::Legacy, Features::INDIRECT_DESC),
    ] {
        let arena = Arena::new(1 << 20);
        let _g = arena.install();
        let (dev, mut blk) = boot(&arena, version, extra);
        let data = pattern(3, 512, 1);
        blk.write_blocks(3, &data).unwrap();
        let mut back = [0u8; 512];
        let n: usize = if cfg!(miri) { 40 } else { 65_536 + 300 };
        for i in 0..n {
            back.fill(0);
            blk.read_blocks(3, &mut back).unwrap();
            if i % 4096 == 0 || i + 36 >= n {
                assert_eq!(&back[..], &data[..], "request {i}");
            }
        }
        let t = dev.lock().unwrap();
        let q = t.queue(0).unwrap();
        assert_eq!(t.device().stats.requests, n as u64 + 1);
        // n + 1 requests: the free-running indices wrapped once (natively).
        assert_eq!(q.next_avail_idx, ((n + 1) % 65_536) as u16);
        assert_eq!(q.next_used_idx, q.next_avail_idx);
    }
}

/// 12 requests in flight at once (non-blocking API, INDIRECT_DESC so each takes one slot):
/// the device sees them all in one notification and completes every one.
#[test]
fn many_requests_in_flight() {
    for version in [MmioVersion::V2, MmioVersion::Legacy] {
        let arena = Arena::new(1 << 20);
        let _g = arena.install();
        let (dev, mut blk) = boot(
            &arena,
            version,
            Features::INDIRECT_DESC | Features::EVENT_IDX,
        );
        for b in 0..12 {
            blk.write_blocks(b * 2, &pattern(b, 1024, 9)).unwrap();
        }
        dev.lock().unwrap().set_notify_mode(NotifyMode::Deferred);
        const K: usize = 12;
        let mut reqs: Vec<BlkReq> = (0..K).map(|_| BlkReq::default()).collect();
        let mut resps: Vec<BlkResp> = (0..K).map(|_| BlkResp::default()).collect();
        let mut bufs = vec![[0u8; 1024]; K];
        let mut tokens = Vec::new();
        for i in 0..K {
            // SAFETY: the buffers are not touched until the matching complete call below.
            let t = unsafe { blk.read_blocks_nb(i * 2, &mut reqs[i], &mut bufs[i], &mut resps[i]) }
                .unwrap();
            tokens.push(t);
        }
        assert_eq!(
            blk.peek_used(),
            None,
            "nothing completes before the device runs"
        );
        let before = dev.lock().unwrap().device().stats.requests;
        let mut kicked = Vec::new();
        dev.lock().unwrap().take_kicks(|q| kicked.push(q));
        assert!(!kicked.is_empty(), "at least one kick was recorded");
        assert!(dev.lock().unwrap().queue(0).unwrap().in_flight() == 0);
        let _ = dev.lock().unwrap().process_queue(0);
        assert_eq!(
            dev.lock().unwrap().device().stats.requests - before,
            K as u64
        );
        for i in 0..K {
            assert_eq!(blk.peek_used(), Some(tokens[i]));
            // SAFETY: same buffers as passed to `read_blocks_nb`.
            unsafe {
                blk.complete_read_blocks(tokens[i], &reqs[i], &mut bufs[i], &mut resps[i])
                    .unwrap()
            };
            assert_eq!(resps[i].status(), RespStatus::OK);
            assert_eq!(&bufs[i][..], &pattern(i, 1024, 9)[..]);
        }
    }
}

/// The device runs on its own thread and polls the rings; the guest only kicks.
#[test]
fn device_polls_on_its_own_thread() {
    for version in [MmioVersion::V2, MmioVersion::Legacy] {
        let arena = Arena::new(1 << 20);
        let _g = arena.install();
        let dev = attach::<_, 1>(
            BlkDevice::new(SECTORS, Features::INDIRECT_DESC | Features::EVENT_IDX, 16),
            &arena,
            version,
        );
        dev.lock().unwrap().set_notify_mode(NotifyMode::Deferred);
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let (dev, stop) = (dev.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rounds = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let _ = dev.lock().unwrap().poll();
                    rounds += 1;
                    std::thread::yield_now();
                }
                rounds
            })
        };
        let mut blk = Blk::new(GuestMmio::new(dev.clone()).unwrap()).unwrap();
        let rounds = if cfg!(miri) { 3 } else { 300 };
        for round in 0..rounds {
            let block = round * 7 % (SECTORS as usize - 4);
            let data = pattern(block, 2048, round as u8);
            blk.write_blocks(block, &data).unwrap();
            let mut back = vec![0u8; 2048];
            blk.read_blocks(block, &mut back).unwrap();
            assert_eq!(back, data, "{version:?} round {round}");
        }
        drop(blk);
        stop.store(true, Ordering::Relaxed);
        assert!(worker.join().unwrap() > 0);
        assert_eq!(
            dev.lock().unwrap().device().stats.requests,
            2 * rounds as u64
        );
    }
}

/// A small round trip on both versions: quick enough for Miri
/// (`MIRIFLAGS=-Zmiri-tree-borrows cargo +nightly miri test --test mmio_blk small`), which
/// checks the arena, the bounce buffers and the driver/device sharing of guest RAM.
#[test]
fn small_round_trip_both_versions() {
    for version in [MmioVersion::V2, MmioVersion::Legacy] {
        let arena = Arena::new(64 << 10);
        let _g = arena.install();
        let dev = attach::<_, 1>(
            BlkDevice::new(16, Features::INDIRECT_DESC, 16),
            &arena,
            version,
        );
        let mut blk = Blk::new(GuestMmio::new(dev.clone()).unwrap()).unwrap();
        let data = pattern(2, 512, 5);
        blk.write_blocks(2, &data).unwrap();
        let mut back = [0u8; 512];
        blk.read_blocks(2, &mut back).unwrap();
        assert_eq!(&back[..], &data[..]);
        drop(blk);
        drop(_g);
        assert_eq!(arena.in_use(), 0);
    }
}

/// H21 and the status codes, with a hostile driver (our ring model) instead of virtio-drivers:
/// short headers, missing status bytes, unknown types, unaligned or out-of-range data.
#[test]
fn blk_device_rejects_bad_requests_h21() {
    /// name, header bytes, header length, data (len, writable), status length, expected
    /// status, expected used length.
    type Case = (
        &'static str,
        [u8; 16],
        u32,
        Option<(u32, bool)>,
        u32,
        Option<u8>,
        u32,
    );
    use virtq::transport::MmioTransport;
    use virtq::transport::mmio::regs;
    use virtq_testkit::{SplitDriver, TestMemory};

    let mem = TestMemory::m0();
    let mut d = MmioTransport::<_, _, 1>::new(
        BlkDevice::new(64, Features::empty(), 16),
        &mem,
        MmioVersion::V2,
    );
    let mut drv = SplitDriver::standard(&mem, 16);
    for (off, v) in [
        (regs::STATUS, 3),
        (regs::DRIVER_FEATURES_SEL, 1),
        (regs::DRIVER_FEATURES, 1),
        (regs::STATUS, 11),
        (regs::QUEUE_NUM, 16),
        (regs::QUEUE_DESC_LOW, drv.desc as u32),
        (regs::QUEUE_DRIVER_LOW, drv.avail as u32),
        (regs::QUEUE_DEVICE_LOW, drv.used as u32),
        (regs::QUEUE_READY, 1),
        (regs::STATUS, 15),
    ] {
        let _ = d.write(off, 4, v.into());
    }
    let header = |t: u32, sector: u64| {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&t.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        h
    };
    let (hdr, data, status) = (0x10_000u64, 0x20_000u64, 0x30_000u64);
    let cases: [Case; 7] = [
        (
            "unknown type",
            header(99, 0),
            16,
            Some((512, true)),
            1,
            Some(2),
            513,
        ),
        (
            "short header",
            header(0, 0),
            8,
            Some((512, true)),
            1,
            Some(1),
            513,
        ),
        (
            "read past end",
            header(0, 63),
            16,
            Some((1024, true)),
            1,
            Some(1),
            1025,
        ),
        (
            "sector overflow",
            header(0, u64::MAX),
            16,
            Some((512, true)),
            1,
            Some(1),
            513,
        ),
        (
            "unaligned write",
            header(1, 0),
            16,
            Some((100, false)),
            1,
            Some(1),
            1,
        ),
        ("get id", header(8, 0), 16, Some((20, true)), 1, Some(0), 21),
        ("no status byte", header(4, 0), 16, None, 0, None, 0),
    ];
    for (name, h, hlen, body, slen, want_status, want_len) in cases {
        mem.poke(hdr, &h);
        mem.fill(data, 1024, 0xEE);
        mem.fill(status, 1, 0xEE);
        let mut bufs = vec![(hdr, hlen, false)];
        if let Some((len, w)) = body {
            bufs.push((data, len, w));
        }
        if slen > 0 {
            bufs.push((status, slen, true));
        }
        drv.add_chain(&bufs).unwrap();
        let _ = d.write(regs::QUEUE_NOTIFY, 4, 0);
        let (_, len) = drv.pop_used().unwrap();
        assert_eq!(len, want_len, "{name}: used length");
        if let Some(s) = want_status {
            assert_eq!(mem.peek(status, 1)[0], s, "{name}: status");
        }
        if let Some((n, true)) = body {
            let got = mem.peek(data, n as usize);
            if name == "get id" {
                assert_eq!(&got[..10], b"virtq-ram0");
                assert!(got[10..].iter().all(|&b| b == 0));
            } else {
                assert!(got.iter().all(|&b| b == 0), "{name}: no stale data");
            }
        }
    }
    let stats = d.device().stats;
    assert_eq!((stats.unsupp, stats.ioerr, stats.malformed), (1, 4, 1));
    assert!(
        !d.queue(0).unwrap().is_broken(),
        "bad requests never stop the queue"
    );
}
