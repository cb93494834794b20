//! virtio-net loopback through the virtio-mmio trap path, driven by `virtio-drivers`, over
//! {no features, INDIRECT_DESC, EVENT_IDX, both} × {MMIO v2, legacy v1}.

use virtq::Features;
use virtq::transport::mmio::MmioVersion;
use virtq_testkit::devices::NetDevice;
use virtq_testkit::devices::net::MAC;
use virtq_testkit::guest::virtio_drivers::device::net::VirtIONet;
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

#[test]
fn loopback_round_trip_matrix() {
    for (version, extra) in matrix() {
        let arena = Arena::new(2 << 20);
        let _g = arena.install();
        let dev = attach::<_, 2>(NetDevice::new(extra, 16), &arena, version);
        let mut net =
            VirtIONet::<GuestHal, _, 16>::new(GuestMmio::new(dev.clone()).unwrap(), 2048).unwrap();
        assert_eq!(net.mac_address(), MAC, "config space over MMIO");
        assert_eq!(
            Features::from_bits_truncate(dev.lock().unwrap().negotiated_features().bits())
                & (Features::INDIRECT_DESC | Features::EVENT_IDX),
            extra
        );
        // More frames than receive buffers (16), so buffers are recycled and indices move on.
        let frames = if cfg!(miri) { 20 } else { 100 };
        for i in 0..frames {
            let len = 60 + (i * 37) % 1400;
            let sent = frame(i, len);
            let mut tx = net.new_tx_buffer(len);
            tx.packet_mut().copy_from_slice(&sent);
            net.send(tx).unwrap();
            assert!(
                net.can_recv(),
                "{version:?} {extra:?}: frame {i} not looped back"
            );
            let rx = net.receive().unwrap();
            assert_eq!(rx.packet(), &sent[..], "{version:?} {extra:?}: frame {i}");
            net.recycle_rx_buffer(rx).unwrap();
        }
        assert!(!net.can_recv());
        let d = dev.lock().unwrap();
        assert_eq!((d.device().looped, d.device().dropped), (frames as u64, 0));
    }
}
