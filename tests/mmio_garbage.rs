//! A hostile guest writes garbage (values up to 48 bits) to every register offset (0..0x200,
//! step 1) at every access width (1, 2, 4, 8), on both transport versions. The device must stay consistent (no panic,
//! sane status and queues) and a normal driver must then be able to reset and use it.

use virtq::Features;
use virtq::transport::mmio::MmioVersion;
use virtq::wire::DeviceStatus;
use virtq_testkit::devices::BlkDevice;
use virtq_testkit::guest::virtio_drivers::device::blk::VirtIOBlk;
use virtq_testkit::guest::{Arena, GUEST_RAM_BASE, GuestHal, GuestMmio, SharedDevice, attach};

type Dev = SharedDevice<BlkDevice, 2>;

/// xorshift64: deterministic garbage.
fn next(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// Returns how many checks saw (a ready queue, DEVICE_NEEDS_RESET, a non-zero status).
fn sweep(dev: &Dev, seed: u64) -> (u32, u32, u32) {
    let mut seen = (0, 0, 0);
    let mut s = seed;
    // Values that matter to a register file, plus addresses inside guest RAM and random words.
    let specials = [
        0u64,
        1,
        2,
        0xF,
        0xFF,
        0x8000,
        0x1_0000,
        0x7FFF_FFFF,
        0xFFFF_FFFF,
        GUEST_RAM_BASE,
        GUEST_RAM_BASE + 0x1000,
    ];
    // Miri sweeps the registers twice per pass (48 sweeps take it hours).
    let rounds = if cfg!(miri) { 2 } else { 48 };
    for _round in 0..rounds {
        for off in 0..0x200u64 {
            for width in [1u8, 2, 4, 8] {
                let r = next(&mut s);
                let v = if r & 1 == 0 {
                    specials[(r >> 8) as usize % specials.len()]
                } else {
                    // 48 random bits: the upper bytes reach 8-byte accesses.
                    r >> 16
                };
                let mut t = dev.lock().unwrap();
                let _ = t.write(off, width, v);
                let _ = t.read(off, width);
            }
        }
        check(dev);
        let t = dev.lock().unwrap();
        seen.0 += u32::from(t.queue(0).unwrap().ready || t.queue(1).unwrap().ready);
        seen.1 += u32::from(t.status().contains(DeviceStatus::DEVICE_NEEDS_RESET));
        seen.2 += u32::from(!t.status().is_empty());
    }
    seen
}

/// Invariants that must hold whatever the guest wrote.
fn check(dev: &Dev) {
    let t = dev.lock().unwrap();
    let status = t.status();
    assert!(!status.contains(DeviceStatus::SUSPEND));
    assert_eq!(status.bits() & 0x20, 0, "reserved status bit");
    if t.version() == MmioVersion::V2 && status.contains(DeviceStatus::DRIVER_OK) {
        assert!(
            status.contains(DeviceStatus::FEATURES_OK),
            "live without FEATURES_OK"
        );
    }
    assert_eq!(
        t.negotiated_features().bits() & !t.offered_features().bits(),
        0
    );
    assert_eq!(u32::from(t.interrupt_status().bits()) & !3, 0);
    for i in 0..2 {
        let q = t.queue(i).unwrap();
        if q.ready {
            assert!(q.is_valid(), "ready queue {i} with invalid geometry: {q:?}");
            assert!(
                q.check_rings(t.memory()).is_ok(),
                "ready queue {i} outside RAM"
            );
            assert!(q.size.is_power_of_two() && q.size <= q.max_size);
        }
    }
    assert!(t.queue(2).is_none());
}

fn reset_is_clean(dev: &Dev) {
    let mut t = dev.lock().unwrap();
    let _ = t.write(0x70, 4, 0);
    assert_eq!(t.read(0x70, 4), 0);
    assert_eq!(u32::from(t.interrupt_status().bits()), 0);
    assert_eq!(t.negotiated_features().bits(), 0);
    assert!(!t.queue(0).unwrap().ready);
}

type Blk = VirtIOBlk<GuestHal, GuestMmio<Dev>>;

fn round_trip(dev: &Dev, salt: u8) -> Blk {
    let mut blk = Blk::new(GuestMmio::new(dev.clone()).unwrap()).unwrap();
    let data: Vec<u8> = (0..4096).map(|i| (i as u8) ^ salt).collect();
    blk.write_blocks(8, &data).unwrap();
    let mut back = vec![0u8; 4096];
    blk.read_blocks(8, &mut back).unwrap();
    assert_eq!(back, data);
    blk
}

#[test]
fn garbage_in_every_register_leaves_device_usable() {
    for (version, seed) in [
        (MmioVersion::V2, 0x1234_5678_9ABC_DEF1),
        (MmioVersion::Legacy, 77),
    ] {
        let arena = Arena::new(1 << 20);
        let _g = arena.install();
        let dev: Dev = attach(
            BlkDevice::new(256, Features::INDIRECT_DESC | Features::EVENT_IDX, 16),
            &arena,
            version,
        );
        let seen = sweep(&dev, seed);
        eprintln!("{version:?}: {seen:?}");
        // The garbage reached the state machine (under Miri's two sweeps it may not get as
        // far as DEVICE_NEEDS_RESET).
        assert!(
            (seen.1 > 0 || cfg!(miri)) && seen.2 > 0,
            "the garbage reached the state machine"
        );
        reset_is_clean(&dev);
        let blk = round_trip(&dev, 1);
        // Again, on a live device whose queue 0 is ready with real rings in guest RAM.
        let seen = sweep(&dev, seed ^ 0xFFFF);
        eprintln!("{version:?} live: {seen:?}");
        assert!(seen.0 > 0, "the live queue was exercised");
        drop(blk);
        reset_is_clean(&dev);
        drop(round_trip(&dev, 2));
    }
}
