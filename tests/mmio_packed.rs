//! The packed ring (VIRTIO 1.4 §2.8) through the virtio-mmio trap path (§4.2): feature
//! negotiation of `VIRTIO_F_RING_PACKED`, packed queue setup and validation through the
//! `QueueDesc` / `QueueDriver` / `QueueDevice` registers (H9c, PACKED-02..05), and the blk,
//! console and net example devices round-tripping on packed rings driven by the testkit's
//! `PackedDriver` (virtio-drivers has no packed ring), with and without INDIRECT_DESC and
//! EVENT_IDX.

use virtq::Features;
use virtq::transport::mmio::{INT_VRING, MmioVersion, regs};
use virtq::transport::{MmioTransport, QueueSetupError, VirtioDevice};
use virtq_testkit::devices::blk::{self, BlkDevice, BlkReqHeader};
use virtq_testkit::devices::{ConsoleDevice, NetDevice, console, net};
use virtq_testkit::{PackedDriver, TestMemory, pflags};
use zerocopy::IntoBytes;
use zerocopy::little_endian::{U32, U64};

const ACK: u64 = 1;
const DRIVER: u64 = 2;
const DRIVER_OK: u64 = 4;
const FEATURES_OK: u64 = 8;
const NEEDS_RESET: u64 = 64;
/// `RING_EVENT_FLAGS_DISABLE` in the driver event structure (§2.8.10).
const EVENT_DISABLE: u16 = 1;

type Mmio<'m, D, const Q: usize> = MmioTransport<D, &'m TestMemory, Q>;

fn ram() -> TestMemory {
    TestMemory::new(&[(0, 0x40_0000)])
}

/// A queue's areas: descriptor ring, driver event structure, device event structure.
type Areas = (u64, u64, u64);

/// Queue `q`'s areas.
fn areas(q: u16) -> Areas {
    let d = 0x10_0000 + u64::from(q) * 0x2_0000;
    (d, d + 0x1_0000, d + 0x1_0100)
}

fn offered<D: VirtioDevice, const Q: usize>(t: &mut Mmio<'_, D, Q>) -> u64 {
    let _ = t.write(regs::DEVICE_FEATURES_SEL, 4, 0);
    let lo = t.read(regs::DEVICE_FEATURES, 4);
    let _ = t.write(regs::DEVICE_FEATURES_SEL, 4, 1);
    let hi = t.read(regs::DEVICE_FEATURES, 4);
    lo | (hi << 32)
}

/// ACKNOWLEDGE, DRIVER, accept `offered & want`, FEATURES_OK (must latch). Returns the set.
fn negotiate<D: VirtioDevice, const Q: usize>(t: &mut Mmio<'_, D, Q>, want: u64) -> u64 {
    let _ = t.write(regs::STATUS, 4, ACK);
    let _ = t.write(regs::STATUS, 4, ACK | DRIVER);
    let accept = offered(t) & want;
    let _ = t.write(regs::DRIVER_FEATURES_SEL, 4, 0);
    let _ = t.write(regs::DRIVER_FEATURES, 4, accept & 0xFFFF_FFFF);
    let _ = t.write(regs::DRIVER_FEATURES_SEL, 4, 1);
    let _ = t.write(regs::DRIVER_FEATURES, 4, accept >> 32);
    let _ = t.write(regs::STATUS, 4, ACK | DRIVER | FEATURES_OK);
    assert_ne!(
        t.read(regs::STATUS, 4) & FEATURES_OK,
        0,
        "FEATURES_OK latched"
    );
    assert_eq!(t.negotiated_features().bits(), accept);
    accept
}

/// Program queue `q` through the registers and set `QueueReady`; the refusal, if any.
fn setup_queue<D: VirtioDevice, const Q: usize>(
    t: &mut Mmio<'_, D, Q>,
    q: u16,
    size: u32,
    (desc, driver, device): Areas,
) -> Option<QueueSetupError> {
    let _ = t.write(regs::QUEUE_SEL, 4, q.into());
    let _ = t.write(regs::QUEUE_NUM, 4, size.into());
    for (lo, hi, v) in [
        (regs::QUEUE_DESC_LOW, regs::QUEUE_DESC_HIGH, desc),
        (regs::QUEUE_DRIVER_LOW, regs::QUEUE_DRIVER_HIGH, driver),
        (regs::QUEUE_DEVICE_LOW, regs::QUEUE_DEVICE_HIGH, device),
    ] {
        let _ = t.write(lo, 4, v & 0xFFFF_FFFF);
        let _ = t.write(hi, 4, v >> 32);
    }
    let _ = t.write(regs::QUEUE_READY, 4, 1);
    t.queue_setup_error(q)
}

fn go_live<D: VirtioDevice, const Q: usize>(t: &mut Mmio<'_, D, Q>) {
    let _ = t.write(regs::STATUS, 4, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_eq!(
        t.read(regs::STATUS, 4),
        ACK | DRIVER | FEATURES_OK | DRIVER_OK
    );
}

/// `QueueNotify` for queue `q`; returns whether a used-buffer interrupt was raised, and
/// acknowledges it.
fn kick<D: VirtioDevice, const Q: usize>(t: &mut Mmio<'_, D, Q>, q: u16) -> bool {
    let _ = t.write(regs::QUEUE_NOTIFY, 4, q.into());
    let status = t.read(regs::INTERRUPT_STATUS, 4);
    let _ = t.write(regs::INTERRUPT_ACK, 4, status);
    status & u64::from(INT_VRING) != 0
}

/// A live device with `queues` packed queues of `size`, and one driver per queue.
fn packed_device<'m, D: VirtioDevice, const Q: usize>(
    mem: &'m TestMemory,
    dev: D,
    want: Features,
    size: u16,
) -> (Mmio<'m, D, Q>, Vec<PackedDriver<'m>>) {
    let mut t = MmioTransport::<_, _, Q>::new(dev, mem, MmioVersion::V2);
    let all = want | Features::VERSION_1 | Features::RING_PACKED;
    let got = negotiate(&mut t, all.bits());
    assert_eq!(got, all.bits(), "every requested feature offered");
    assert!(t.is_packed());
    let mut drivers = Vec::new();
    for q in 0..Q as u16 {
        let (d, a, u) = areas(q);
        drivers.push(PackedDriver::new(mem, size, d, a, u));
        assert_eq!(setup_queue(&mut t, q, u32::from(size), (d, a, u)), None);
        let pq = t.packed_queue(q).unwrap();
        assert!(pq.ready && pq.size == size);
        assert_eq!(pq.features, want & !Features::RING_PACKED);
        assert!(!t.queue(q).unwrap().ready, "the split queue stays unused");
    }
    go_live(&mut t);
    (t, drivers)
}

fn matrix() -> Vec<(Features, u16)> {
    if cfg!(miri) {
        // Miri samples two corners: every optional feature on a size that is not a power of
        // two, none on 16.
        return vec![
            (Features::INDIRECT_DESC | Features::EVENT_IDX, 6),
            (Features::empty(), 16),
        ];
    }
    let feats = [
        Features::empty(),
        Features::INDIRECT_DESC,
        Features::EVENT_IDX,
        Features::INDIRECT_DESC | Features::EVENT_IDX,
    ];
    // 16 (power of two) and 6 (not one: packed only, H9c).
    feats
        .into_iter()
        .flat_map(|f| [16u16, 6].into_iter().map(move |s| (f, s)))
        .collect()
}

/// Make `bufs` available, as one indirect descriptor when `indirect`.
fn add(drv: &mut PackedDriver<'_>, indirect: bool, bufs: &[(u64, u32, bool)]) -> u16 {
    if indirect {
        drv.add_indirect_chain(0x38_0000, bufs).unwrap()
    } else {
        drv.add_chain(bufs).unwrap()
    }
}

const HDR: u64 = 0x30_0000;
const DATA: u64 = 0x30_1000;
const STATUS: u64 = 0x30_2000;
const READ_BUF: u64 = 0x30_3000;

fn blk_header(mem: &TestMemory, type_: u32, sector: u64) {
    let h = BlkReqHeader {
        type_: U32::new(type_),
        reserved: U32::new(0),
        sector: U64::new(sector),
    };
    mem.poke(HDR, h.as_bytes());
}

#[test]
fn feature_offered_only_when_device_opts_in_and_on_v2() {
    let mem = ram();
    let t = Mmio::<_, 1>::new(
        BlkDevice::new(8, Features::EVENT_IDX, 16),
        &mem,
        MmioVersion::V2,
    );
    assert_eq!(
        t.offered_features().bits() & Features::RING_PACKED.bits(),
        0
    );
    let with = BlkDevice::new(8, Features::RING_PACKED, 16);
    let t = Mmio::<_, 1>::new(with, &mem, MmioVersion::V2);
    assert_ne!(
        t.offered_features().bits() & Features::RING_PACKED.bits(),
        0
    );
    // A device type without `PACKED_RING` is never offered the packed ring, even if its
    // feature list has the bit.
    struct SplitOnly;
    impl VirtioDevice for SplitOnly {
        fn device_id(&self) -> virtq::transport::DeviceId {
            virtq::transport::DeviceId::BLOCK
        }
        fn device_features(&self) -> Features {
            Features::RING_PACKED
        }
        fn queue_max_size(&self, _: u16) -> u16 {
            8
        }
        fn read_config(&self, _: u32, _: &mut [u8]) {}
        fn queue_notify<M: virtq::GuestMemory + ?Sized>(
            &mut self,
            _: u16,
            _: virtq::transport::Queues<'_>,
            _: &M,
        ) -> virtq::transport::NotifyReport {
            virtq::transport::NotifyReport::IDLE
        }
    }
    let t = Mmio::<_, 1>::new(SplitOnly, &mem, MmioVersion::V2);
    assert_eq!(
        t.offered_features().bits() & Features::RING_PACKED.bits(),
        0
    );
    // Legacy has no packed ring (it needs VERSION_1).
    let with = BlkDevice::new(8, Features::RING_PACKED, 16);
    let t = Mmio::<_, 1>::new(with, &mem, MmioVersion::Legacy);
    assert_eq!(
        t.offered_features().bits() & Features::RING_PACKED.bits(),
        0
    );
}

/// H9c: QueueNum 6 is refused for a split ring and accepted for a packed one; the other
/// packed setup checks (PACKED-03, PACKED-04, PACKED-05, H9) refuse with DEVICE_NEEDS_RESET.
#[test]
fn packed_queue_setup_validation_h9() {
    let mem = ram();
    let dev = || BlkDevice::new(8, Features::RING_PACKED, 16);
    let good = areas(0);

    // Split negotiated: 6 is not a power of two.
    let mut t = Mmio::<_, 1>::new(dev(), &mem, MmioVersion::V2);
    negotiate(&mut t, Features::VERSION_1.bits());
    assert!(!t.is_packed());
    assert_eq!(
        setup_queue(&mut t, 0, 6, (0x10_0000, 0x10_1000, 0x10_2000)),
        Some(QueueSetupError::SizeNotPowerOfTwo { size: 6 })
    );

    let cases: [(u32, Areas, Option<QueueSetupError>); 11] = [
        (6, good, None),
        (1, good, None),
        (16, good, None),
        (0, good, Some(QueueSetupError::SizeZero)),
        (17, good, Some(QueueSetupError::SizeTooLarge { size: 17 })),
        (
            0x1_0006,
            good,
            Some(QueueSetupError::SizeTooLarge { size: 0x1_0006 }),
        ),
        // Ring 16-aligned, event structures 4-aligned (PACKED-04): 8 and 2 are not.
        (
            6,
            (good.0 + 8, good.1, good.2),
            Some(QueueSetupError::Misaligned),
        ),
        (
            6,
            (good.0, good.1 + 2, good.2),
            Some(QueueSetupError::Misaligned),
        ),
        (6, (good.0, good.1, 0), Some(QueueSetupError::Misaligned)),
        // The driver event structure inside the ring.
        (
            6,
            (good.0, good.0 + 16, good.2),
            Some(QueueSetupError::Overlap),
        ),
        // The device event structure outside RAM (PACKED-05).
        (
            6,
            (good.0, good.1, 0x40_0000),
            Some(QueueSetupError::OutsideRam),
        ),
    ];
    for (num, at, want) in cases {
        let mut t = Mmio::<_, 1>::new(dev(), &mem, MmioVersion::V2);
        negotiate(&mut t, (Features::VERSION_1 | Features::RING_PACKED).bits());
        assert!(t.is_packed());
        assert_eq!(
            setup_queue(&mut t, 0, num, at),
            want,
            "num {num} at {at:x?}"
        );
        let ready = t.packed_queue(0).unwrap().ready;
        let needs_reset = t.read(regs::STATUS, 4) & NEEDS_RESET != 0;
        assert_eq!(ready, want.is_none(), "num {num}");
        assert_eq!(needs_reset, want.is_some(), "num {num}");
        if want.is_none() {
            assert_eq!(u32::from(t.packed_queue(0).unwrap().size), num);
        }
    }

    // Reset, then the same transport negotiates split again: the queue kind follows.
    let mut t = Mmio::<_, 1>::new(dev(), &mem, MmioVersion::V2);
    negotiate(&mut t, (Features::VERSION_1 | Features::RING_PACKED).bits());
    assert_eq!(setup_queue(&mut t, 0, 6, good), None);
    let _ = t.write(regs::STATUS, 4, 0);
    assert!(!t.is_packed());
    assert!(
        !t.packed_queue(0).unwrap().ready,
        "reset clears the packed queue"
    );
    negotiate(&mut t, Features::VERSION_1.bits());
    assert_eq!(
        setup_queue(&mut t, 0, 6, good),
        Some(QueueSetupError::SizeNotPowerOfTwo { size: 6 })
    );
}

#[test]
fn blk_round_trip_packed_matrix() {
    for (extra, size) in matrix() {
        let mem = ram();
        let indirect = extra.contains(Features::INDIRECT_DESC);
        let dev = BlkDevice::new(64, extra | Features::RING_PACKED, 16);
        let (mut t, mut drivers) = packed_device::<_, 1>(&mem, dev, extra, size);
        let drv = &mut drivers[0];
        let what = format!("{extra:?} size {size}");

        // Write then read back 40 sectors: several laps of the ring for both sizes. Miri
        // does 4; the requests after them still take both sizes past the end of the ring.
        let sectors = if cfg!(miri) { 4 } else { 40 };
        for k in 0..sectors {
            let sector = (k * 7) % 64;
            let pattern: Vec<u8> = (0..512u32).map(|i| (i as u64 + k) as u8).collect();
            blk_header(&mem, blk::T_OUT, sector);
            mem.poke(DATA, &pattern);
            mem.poke(STATUS, &[0xff]);
            let id = add(
                drv,
                indirect,
                &[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)],
            );
            assert!(kick(&mut t, 0), "{what}: interrupt for the write");
            let used = drv.pop_used().expect("write completed");
            assert_eq!((used.id, used.len), (id, 1), "{what}");
            assert_eq!(mem.peek(STATUS, 1), [blk::S_OK]);
            let off = sector as usize * blk::SECTOR;
            assert_eq!(&t.device().disk()[off..off + 512], &pattern[..], "{what}");

            blk_header(&mem, blk::T_IN, sector);
            mem.fill(READ_BUF, 512, 0);
            let id = add(
                drv,
                indirect,
                &[(HDR, 16, false), (READ_BUF, 512, true), (STATUS, 1, true)],
            );
            assert!(kick(&mut t, 0), "{what}: interrupt for the read");
            let used = drv.pop_used().expect("read completed");
            assert_eq!((used.id, used.len), (id, 513), "{what}");
            assert_eq!(mem.peek(READ_BUF, 512), pattern, "{what}");
            assert_eq!(mem.peek(STATUS, 1), [blk::S_OK]);
            assert!(drv.pop_used().is_none());
        }

        // GET_ID, FLUSH and an unsupported type.
        blk_header(&mem, blk::T_GET_ID, 0);
        let id = add(
            drv,
            indirect,
            &[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)],
        );
        kick(&mut t, 0);
        assert_eq!(drv.pop_used().unwrap().id, id);
        assert_eq!(&mem.peek(DATA, 10)[..], b"virtq-ram0");
        for (ty, status) in [(blk::T_FLUSH, blk::S_OK), (99, blk::S_UNSUPP)] {
            blk_header(&mem, ty, 0);
            add(drv, indirect, &[(HDR, 16, false), (STATUS, 1, true)]);
            kick(&mut t, 0);
            assert_eq!(drv.pop_used().unwrap().len, 1);
            assert_eq!(mem.peek(STATUS, 1), [status], "{what} type {ty}");
        }

        // A batch made available before one kick: all completed, one interrupt.
        let batch = if indirect { size.min(4) } else { size / 2 };
        let mut ids = Vec::new();
        for _ in 0..batch {
            blk_header(&mem, blk::T_FLUSH, 0);
            ids.push(add(drv, indirect, &[(HDR, 16, false), (STATUS, 1, true)]));
        }
        assert!(kick(&mut t, 0));
        let done: Vec<u16> = std::iter::from_fn(|| drv.pop_used().map(|u| u.id)).collect();
        assert_eq!(done, ids, "{what}");

        // The driver disables interrupts: the request completes, the line stays low.
        drv.set_driver_event(0, EVENT_DISABLE);
        blk_header(&mem, blk::T_FLUSH, 0);
        let id = add(drv, indirect, &[(HDR, 16, false), (STATUS, 1, true)]);
        assert!(!kick(&mut t, 0), "{what}: DISABLE suppresses the interrupt");
        assert_eq!(drv.pop_used().unwrap().id, id);

        let stats = t.device().stats;
        assert_eq!(stats.malformed, 0);
        assert_eq!(stats.requests, 2 * sectors + 3 + u64::from(batch) + 1);
        assert_eq!(t.read(regs::STATUS, 4) & NEEDS_RESET, 0);
    }
}

/// Post `n` receive buffers of `len` bytes at `base`, `base + 0x1000`, ...
fn post_rx(drv: &mut PackedDriver<'_>, indirect: bool, base: u64, len: u32, n: u64) -> Vec<u16> {
    (0..n)
        .map(|i| {
            let buf = [(base + i * 0x1000, len, true)];
            if indirect {
                drv.add_indirect_chain(0x39_0000 + i * 0x100, &buf).unwrap()
            } else {
                drv.add_chain(&buf).unwrap()
            }
        })
        .collect()
}

#[test]
fn console_echo_packed_matrix() {
    for (extra, size) in matrix() {
        let mem = ram();
        let indirect = extra.contains(Features::INDIRECT_DESC);
        let dev = ConsoleDevice::new(extra | Features::RING_PACKED, 16);
        let (mut t, mut drivers) = packed_device::<_, 2>(&mem, dev, extra, size);
        let (rx, tx) = drivers.split_at_mut(1);
        let (rx, tx) = (&mut rx[0], &mut tx[0]);
        let what = format!("{extra:?} size {size}");
        let rxbuf = 0x32_0000;
        // One 64-byte receive buffer posted at a time; messages of 1, 13 and 200 bytes (the
        // last spans 4 buffers).
        let mut posted = Some(post_rx(rx, indirect, rxbuf, 64, 1)[0]);
        assert!(!kick(&mut t, console::RX), "nothing to echo yet");
        let long: Vec<u8> = (0..200u32).map(|i| b'a' + (i % 26) as u8).collect();
        let messages: [&[u8]; 3] = [b"x", b"hello, virtq\n", &long];
        let mut sent = 0;
        for msg in messages {
            mem.poke(0x31_0000, msg);
            let id = tx
                .add_chain(&[(0x31_0000, msg.len() as u32, false)])
                .unwrap();
            assert!(kick(&mut t, console::TX), "{what}: interrupt");
            assert_eq!(tx.pop_used().unwrap().id, id, "{what}");
            sent += msg.len();
            let mut echoed = Vec::new();
            let mut spins = 0;
            while echoed.len() < msg.len() {
                match rx.pop_used() {
                    Some(u) => {
                        assert_eq!(Some(u.id), posted, "{what}");
                        assert!(u.len <= 64);
                        echoed.extend(mem.peek(rxbuf, u.len as usize));
                        posted = Some(post_rx(rx, indirect, rxbuf, 64, 1)[0]);
                        kick(&mut t, console::RX);
                    }
                    None => {
                        spins += 1;
                        assert!(spins < 10, "{what}: echo stalled");
                    }
                }
            }
            assert_eq!(echoed, msg, "{what}");
        }
        assert_eq!(t.device().transmitted.len(), sent);
        assert!(rx.pop_used().is_none(), "nothing extra echoed");
        assert_eq!(t.read(regs::STATUS, 4) & NEEDS_RESET, 0);
    }
}

#[test]
fn net_loopback_packed_matrix() {
    for (extra, size) in matrix() {
        let mem = ram();
        let indirect = extra.contains(Features::INDIRECT_DESC);
        let dev = NetDevice::new(extra | Features::RING_PACKED, 16);
        let (mut t, mut drivers) = packed_device::<_, 2>(&mem, dev, extra, size);
        let (rx, tx) = drivers.split_at_mut(1);
        let (rx, tx) = (&mut rx[0], &mut tx[0]);
        let what = format!("{extra:?} size {size}");
        let mac: Vec<u8> = (0..6).map(|i| t.read(regs::CONFIG + i, 1) as u8).collect();
        assert_eq!(mac, net::MAC);

        // 3 × size frames of growing length (12-byte header + payload), one receive buffer
        // posted per frame; size + 2 under Miri (past the end of both rings once).
        let frames = if cfg!(miri) {
            u32::from(size) + 2
        } else {
            3 * u32::from(size)
        };
        for k in 0..frames {
            let rxbuf = 0x33_0000;
            let rid = post_rx(rx, indirect, rxbuf, 1526, 1)[0];
            let hdr = [0u8; 12];
            let payload: Vec<u8> = (0..60 + k * 11).map(|i| (i ^ k) as u8).collect();
            mem.poke(0x31_0000, &hdr);
            mem.poke(0x31_1000, &payload);
            let bufs = [
                (0x31_0000, 12, false),
                (0x31_1000, payload.len() as u32, false),
            ];
            let tid = if indirect {
                tx.add_indirect_chain(0x38_0000, &bufs).unwrap()
            } else {
                tx.add_chain(&bufs).unwrap()
            };
            assert!(kick(&mut t, net::TX), "{what}: interrupt");
            assert_eq!(tx.pop_used().unwrap().id, tid);
            let u = rx.pop_used().expect("frame looped back");
            assert_eq!((u.id, u.len), (rid, 12 + payload.len() as u32), "{what}");
            assert_ne!(u.flags & pflags::W, 0, "PACKED-28: len is valid");
            let mut frame = hdr.to_vec();
            frame.extend(&payload);
            assert_eq!(mem.peek(rxbuf, frame.len()), frame, "{what} frame {k}");
        }
        assert_eq!(t.device().looped, u64::from(frames));
        assert_eq!(t.device().dropped, 0);
        assert_eq!(t.read(regs::STATUS, 4) & NEEDS_RESET, 0);
    }
}

/// Long direct transmit chains, as a virtio-net guest without INDIRECT_DESC sends them
/// (Linux: header + up to `MAX_SKB_FRAGS + 1` data descriptors, 19 in all): looped back whole.
/// A chain one buffer longer than the device's cap (`devices::PACKED_DIRECT`, PACKED-25) is
/// consumed and completed with length 0 without stopping the queue, and the next frame works.
#[test]
fn net_long_direct_tx_chains_up_to_the_device_cap() {
    let mem = ram();
    let size = 256;
    let dev = NetDevice::new(Features::RING_PACKED, size);
    let (mut t, mut drivers) = packed_device::<_, 2>(&mem, dev, Features::empty(), size);
    let (rx, tx) = drivers.split_at_mut(1);
    let (rx, tx) = (&mut rx[0], &mut tx[0]);
    let cap = virtq_testkit::devices::PACKED_DIRECT;
    let mut looped = 0;
    for n in [2usize, 19, cap, cap + 1, 19] {
        let rxbuf = 0x33_0000;
        let rid = (n <= cap).then(|| post_rx(rx, false, rxbuf, 4096, 1)[0]);
        // Header, then n - 1 fragments of 7 + j bytes each.
        let hdr = [0u8; 12];
        mem.poke(0x31_0000, &hdr);
        let mut bufs = vec![(0x31_0000u64, 12u32, false)];
        let mut frame = hdr.to_vec();
        for j in 1..n {
            let at = 0x34_0000 + j as u64 * 0x40;
            let frag: Vec<u8> = (0..7 + j % 20).map(|i| (i * 3 + j) as u8).collect();
            mem.poke(at, &frag);
            bufs.push((at, frag.len() as u32, false));
            frame.extend(&frag);
        }
        let tid = tx.add_chain(&bufs).unwrap();
        kick(&mut t, net::TX);
        let used = tx.pop_used().expect("transmit chain completed");
        assert_eq!((used.id, used.len), (tid, 0), "n = {n}");
        assert_eq!(t.read(regs::STATUS, 4) & NEEDS_RESET, 0, "n = {n}");
        if n <= cap {
            looped += 1;
            let u = rx.pop_used().expect("frame looped back");
            assert_eq!((Some(u.id), u.len as usize), (rid, frame.len()), "n = {n}");
            assert_eq!(mem.peek(rxbuf, frame.len()), frame, "n = {n}");
        } else {
            assert!(rx.pop_used().is_none(), "over-cap chain not transmitted");
            assert_eq!(
                t.device().frames_pending(),
                0,
                "nothing queued for later either"
            );
        }
    }
    assert_eq!(t.device().looped, looped);
}

/// H15c through the transport: a NEXT list as long as the ring is fatal for the packed queue;
/// the transport turns it into DEVICE_NEEDS_RESET with a configuration interrupt, once, and
/// later notifications are ignored.
#[test]
fn broken_packed_queue_raises_needs_reset() {
    let mem = ram();
    let dev = BlkDevice::new(8, Features::RING_PACKED, 16);
    let (mut t, mut drivers) = packed_device::<_, 1>(&mem, dev, Features::empty(), 6);
    let drv = &mut drivers[0];
    drv.publish_raw(0, &[(HDR, 16, pflags::N); 6]);
    let _ = t.write(regs::QUEUE_NOTIFY, 4, 0);
    assert!(t.packed_queue(0).unwrap().is_broken());
    assert_ne!(t.read(regs::STATUS, 4) & NEEDS_RESET, 0);
    let irq = t.read(regs::INTERRUPT_STATUS, 4);
    assert_ne!(irq & 2, 0, "configuration-change interrupt");
    let _ = t.write(regs::INTERRUPT_ACK, 4, irq);
    let _ = t.write(regs::QUEUE_NOTIFY, 4, 0);
    assert_eq!(
        t.read(regs::INTERRUPT_STATUS, 4),
        0,
        "reported once, then ignored"
    );
    assert!(drv.pop_used().is_none(), "nothing completed");
    assert_eq!(t.device().stats.requests, 0);
}

/// H19 on packed: the driver stops the console's receive queue while the device holds one of
/// its buffers, then enables it again at new addresses. The old buffer is never written or
/// completed; the new one gets the echo.
#[test]
fn stale_packed_receive_buffer_dropped_on_queue_stop_h19() {
    let mem = ram();
    let dev = ConsoleDevice::new(Features::RING_PACKED, 16);
    let (mut t, mut drivers) = packed_device::<_, 2>(&mem, dev, Features::empty(), 8);
    let old_buf = 0x32_0000;
    mem.fill(old_buf, 64, 0xee);
    post_rx(&mut drivers[0], false, old_buf, 64, 1);
    kick(&mut t, console::RX);
    // QueueReady = 0 on the receive queue.
    let _ = t.write(regs::QUEUE_SEL, 4, console::RX.into());
    let _ = t.write(regs::QUEUE_READY, 4, 0);
    assert!(!t.packed_queue(console::RX).unwrap().ready);
    // Re-enable at new addresses with a fresh driver.
    let (d, a, u) = (0x20_0000, 0x21_0000, 0x21_0100);
    let mut rx = PackedDriver::new(&mem, 8, d, a, u);
    assert_eq!(setup_queue(&mut t, console::RX, 8, (d, a, u)), None);
    let new_buf = 0x34_0000;
    let id = post_rx(&mut rx, false, new_buf, 64, 1)[0];
    mem.poke(0x31_0000, b"ping");
    drivers[1].add_chain(&[(0x31_0000, 4, false)]).unwrap();
    kick(&mut t, console::TX);
    let used = rx.pop_used().expect("echo on the new buffer");
    assert_eq!((used.id, used.len), (id, 4));
    assert_eq!(mem.peek(new_buf, 4), b"ping");
    assert_eq!(
        mem.peek(old_buf, 64),
        vec![0xee; 64],
        "stale buffer untouched"
    );
    assert!(drivers[0].peek_used().is_none(), "old ring never completed");
}

/// Issue 12 item 6 (§3.1.1, §4.2.3.2): a queue enabled before FEATURES_OK, then RING_PACKED
/// negotiated. The ring format is decided at FEATURES_OK, so an earlier enable cannot be
/// honoured: it is refused with `FeaturesNotAccepted`, `QueueReady` reads 0 (not a ready
/// queue that is dead) and DEVICE_NEEDS_RESET is raised. The driver sees both.
#[test]
fn queue_enabled_before_features_ok_then_packed_is_refused() {
    let mem = ram();
    let dev = BlkDevice::new(8, Features::RING_PACKED, 16);
    let mut t = Mmio::<_, 1>::new(dev, &mem, MmioVersion::V2);
    let _ = t.write(regs::STATUS, 4, ACK);
    let _ = t.write(regs::STATUS, 4, ACK | DRIVER);
    assert_eq!(
        setup_queue(&mut t, 0, 16, areas(0)),
        Some(QueueSetupError::FeaturesNotAccepted)
    );
    assert_eq!(t.read(regs::QUEUE_READY, 4), 0);
    assert_ne!(t.read(regs::STATUS, 4) & NEEDS_RESET, 0);
    negotiate(&mut t, (Features::VERSION_1 | Features::RING_PACKED).bits());
    assert!(t.is_packed());
    let _ = t.write(regs::QUEUE_SEL, 4, 0);
    assert_eq!(t.read(regs::QUEUE_READY, 4), 0, "no ready-but-dead queue");
    assert!(!t.packed_queue(0).unwrap().ready);
    assert!(!t.queue(0).unwrap().ready);
    // After a reset, the driver that follows §3.1.1 gets a working packed queue.
    let _ = t.write(regs::STATUS, 4, 0);
    let (mut t, mut drivers) = packed_device::<_, 1>(
        &mem,
        BlkDevice::new(8, Features::RING_PACKED, 16),
        Features::empty(),
        16,
    );
    blk_header(&mem, blk::T_FLUSH, 0);
    let id = drivers[0]
        .add_chain(&[(HDR, 16, false), (STATUS, 1, true)])
        .unwrap();
    assert!(kick(&mut t, 0));
    assert_eq!(drivers[0].pop_used().unwrap().id, id);
}

/// Issue 15 "Packed ring sizes" (§2.8, PACKED-02; §2.7, SPLIT-01; §4.2.2 `QueueNumMax`): a
/// device offering queues of 100 entries. A split ring must be a power of two, so before
/// FEATURES_OK and with split rings `QueueNumMax` reads 64; once RING_PACKED is negotiated it
/// reads the device's 100, and packed queues of 100 and of 37 entries carry block requests
/// end to end through several laps of the ring. 101 is refused.
#[test]
fn packed_queue_of_any_size_up_to_the_device_max_issue15() {
    let mem = ram();
    let dev = || BlkDevice::new(64, Features::RING_PACKED, 100);
    for size in [100u16, 37] {
        let mut t = Mmio::<_, 1>::new(dev(), &mem, MmioVersion::V2);
        let _ = t.write(regs::QUEUE_SEL, 4, 0);
        assert_eq!(t.read(regs::QUEUE_NUM_MAX, 4), 64, "split maximum first");
        negotiate(&mut t, (Features::VERSION_1 | Features::RING_PACKED).bits());
        assert_eq!(
            t.read(regs::QUEUE_NUM_MAX, 4),
            100,
            "not rounded for packed"
        );
        let (d, a, u) = areas(0);
        let mut drv = PackedDriver::new(&mem, size, d, a, u);
        assert_eq!(setup_queue(&mut t, 0, u32::from(size), (d, a, u)), None);
        assert_eq!(t.packed_queue(0).unwrap().size, size);
        go_live(&mut t);
        // Several laps natively. Miri (a request costs it seconds) goes once past the end of
        // the ring of 37 and sends one write and read at the maximum size.
        let rounds = match (cfg!(miri), size) {
            (false, _) => 2 * u64::from(size) + 3,
            (true, 37) => u64::from(size) / 6 + 2,
            (true, _) => 1,
        };
        for k in 0..rounds {
            let sector = k % 64;
            let pattern: Vec<u8> = (0..512u64).map(|i| (i * 3 + k) as u8).collect();
            blk_header(&mem, blk::T_OUT, sector);
            mem.poke(DATA, &pattern);
            let id = add(
                &mut drv,
                false,
                &[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)],
            );
            assert!(kick(&mut t, 0));
            assert_eq!(drv.pop_used().map(|u| (u.id, u.len)), Some((id, 1)));
            blk_header(&mem, blk::T_IN, sector);
            mem.fill(READ_BUF, 512, 0);
            let id = add(
                &mut drv,
                false,
                &[(HDR, 16, false), (READ_BUF, 512, true), (STATUS, 1, true)],
            );
            assert!(kick(&mut t, 0));
            assert_eq!(drv.pop_used().map(|u| (u.id, u.len)), Some((id, 513)));
            assert_eq!(mem.peek(READ_BUF, 512), pattern, "size {size} request {k}");
        }
        assert_eq!(t.read(regs::STATUS, 4) & NEEDS_RESET, 0);
    }
    // Above the device's maximum: refused.
    let mut t = Mmio::<_, 1>::new(dev(), &mem, MmioVersion::V2);
    negotiate(&mut t, (Features::VERSION_1 | Features::RING_PACKED).bits());
    assert_eq!(
        setup_queue(&mut t, 0, 101, areas(0)),
        Some(QueueSetupError::SizeTooLarge { size: 101 })
    );
    // Split negotiated: the maximum is 64, and 100 is refused.
    let mut t = Mmio::<_, 1>::new(dev(), &mem, MmioVersion::V2);
    negotiate(&mut t, Features::VERSION_1.bits());
    let _ = t.write(regs::QUEUE_SEL, 4, 0);
    assert_eq!(t.read(regs::QUEUE_NUM_MAX, 4), 64);
    assert_eq!(
        setup_queue(&mut t, 0, 100, areas(0)),
        Some(QueueSetupError::SizeTooLarge { size: 100 })
    );
    // The refused queue reads as enabled (MMIO-16) until the driver stops it.
    let _ = t.write(regs::QUEUE_READY, 4, 0);
    assert_eq!(setup_queue(&mut t, 0, 64, areas(0)), None);
}
