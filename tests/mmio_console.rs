//! virtio-console (echo) through the virtio-mmio trap path, driven by `virtio-drivers`, over
//! {no features, INDIRECT_DESC, EVENT_IDX, both} × {MMIO v2, legacy v1}.

use virtq::Features;
use virtq::transport::mmio::MmioVersion;
use virtq_testkit::devices::ConsoleDevice;
use virtq_testkit::guest::virtio_drivers::device::console::VirtIOConsole;
use virtq_testkit::guest::{Arena, GuestHal, GuestMmio, attach};

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

#[test]
fn echo_round_trip_matrix() {
    for (version, extra) in matrix() {
        let arena = Arena::new(1 << 20);
        let _g = arena.install();
        let dev = attach::<_, 2>(ConsoleDevice::new(extra, 16), &arena, version);
        let mut con =
            VirtIOConsole::<GuestHal, _>::new(GuestMmio::new(dev.clone()).unwrap()).unwrap();
        let size = con.size().unwrap().unwrap();
        assert_eq!(
            (size.columns, size.rows),
            (80, 25),
            "config space over MMIO"
        );
        assert_eq!(
            Features::from_bits_truncate(dev.lock().unwrap().negotiated_features().bits())
                & (Features::INDIRECT_DESC | Features::EVENT_IDX),
            extra
        );

        // Single bytes, a line, and a message longer than one receive buffer (4 KiB).
        let long: Vec<u8> = (0..6000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let messages: [&[u8]; 3] = [b"x", b"hello, virtq\n", &long];
        for msg in messages {
            if msg.len() == 1 {
                con.send(msg[0]).unwrap();
            } else {
                con.send_bytes(msg).unwrap();
            }
            let mut echoed = Vec::new();
            let mut spins = 0;
            while echoed.len() < msg.len() {
                match con.recv(true).unwrap() {
                    Some(b) => echoed.push(b),
                    None => {
                        spins += 1;
                        assert!(spins < 1000, "{version:?} {extra:?}: echo stalled");
                    }
                }
            }
            assert_eq!(echoed, msg, "{version:?} {extra:?}");
        }
        assert_eq!(con.recv(true).unwrap(), None, "nothing extra echoed");
        let transmitted = dev.lock().unwrap().device().transmitted.len();
        assert_eq!(transmitted, 1 + 13 + 6000);
        drop(con);
        // virtio-drivers' console never takes back its last posted receive buffer, so one
        // 4 KiB bounce buffer stays shared; everything else (rings, transmit buffers) is back.
        drop(_g);
        assert_eq!(arena.in_use(), 4096);
    }
}

/// H19: the driver stops the receive queue while the device holds one of its buffers, and
/// re-enables it with a new geometry. The old buffer must never be written or completed.
#[test]
fn stale_receive_buffer_dropped_on_queue_stop_h19() {
    use virtq::transport::MmioTransport;
    use virtq::transport::mmio::regs;
    use virtq_testkit::{SplitDriver, TestMemory};

    let mem = TestMemory::m0();
    let mut d = MmioTransport::<_, _, 2>::new(
        ConsoleDevice::new(Features::empty(), 64),
        &mem,
        MmioVersion::V2,
    );
    let w = |d: &mut MmioTransport<ConsoleDevice, &TestMemory, 2>, off: u64, v: u64| {
        let _ = d.write(off, 4, v);
    };
    let enable = |d: &mut MmioTransport<ConsoleDevice, &TestMemory, 2>, q: &SplitDriver, i| {
        w(d, regs::QUEUE_SEL, i);
        w(d, regs::QUEUE_NUM, u64::from(q.size));
        w(d, regs::QUEUE_DESC_LOW, q.desc);
        w(d, regs::QUEUE_DRIVER_LOW, q.avail);
        w(d, regs::QUEUE_DEVICE_LOW, q.used);
        w(d, regs::QUEUE_READY, 1);
    };
    let mut rx = SplitDriver::new(&mem, 16, 0x1000, 0x2000, 0x3000);
    let mut tx = SplitDriver::new(&mem, 16, 0x4000, 0x5000, 0x6000);
    w(&mut d, regs::STATUS, 3);
    w(&mut d, regs::DRIVER_FEATURES_SEL, 1);
    w(&mut d, regs::DRIVER_FEATURES, 1); // VERSION_1
    w(&mut d, regs::STATUS, 3 | 8);
    enable(&mut d, &rx, 0);
    enable(&mut d, &tx, 1);
    w(&mut d, regs::STATUS, 3 | 8 | 4);
    // The device keeps receive buffer head 0 (at 0x8000) while nothing is pending.
    rx.add_chain(&[(0x8000, 64, true)]);
    w(&mut d, regs::QUEUE_NOTIFY, 0);
    assert_eq!(rx.used_idx(), 0);
    // Stop the receive queue, re-enable it elsewhere with another size and a new head 0.
    w(&mut d, regs::QUEUE_SEL, 0);
    w(&mut d, regs::QUEUE_READY, 0);
    let mut rx2 = SplitDriver::new(&mem, 32, 0x9000, 0xA000, 0xB000);
    enable(&mut d, &rx2, 0);
    rx2.add_chain(&[(0xC000, 64, true)]);
    w(&mut d, regs::QUEUE_NOTIFY, 0);
    tx.add_chain(&[(0xD000, 2, false)]);
    mem.poke(0xD000, b"hi");
    w(&mut d, regs::QUEUE_NOTIFY, 1);
    assert_eq!(rx2.pop_used(), Some((0, 2)));
    assert_eq!(mem.peek(0xC000, 2), b"hi");
    assert_eq!(mem.peek(0x8000, 64), vec![0u8; 64], "stale buffer written");
    assert_eq!(rx.used_idx(), 0, "old used ring written");
}
