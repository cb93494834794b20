//! A hostile driver against the virtio-pci function (issue 14, "Hostile input"): queue enable
//! with rings outside RAM, queue_size changed after enable, MSI-X vectors out of range, the
//! BAR moved while queues are live, and garbage at every configuration and BAR offset and
//! width. Each gets the spec's behaviour or DEVICE_NEEDS_RESET, never a panic; a fresh driver
//! then uses the device normally. (Accesses across structure boundaries and every offset and
//! width: `pci_regs::every_offset_and_width_issue15_pci19`; FEATURES_OK with unsupported
//! bits: `pci_regs::features_ok_with_unsupported_bits_feat05_feat08`; MSI-X table writes out
//! of range: `pci_irq::msix_table_and_pba_registers`.)

mod pci_driver;

use pci_driver::{BAR_BASE, GuestPci, PciBus, PciDriver, Shared, attach};
use virtq::Features;
use virtq::transport::QueueSetupError;
use virtq::transport::pci::{NO_VECTOR, PciEvents, layout};
use virtq::wire::DeviceStatus;
use virtq_testkit::devices::BlkDevice;
use virtq_testkit::guest::virtio_drivers::device::blk::VirtIOBlk;
use virtq_testkit::guest::{Arena, GUEST_RAM_BASE, GuestHal, GuestRam};
use virtq_testkit::{SplitDriver, TestMemory};

use layout::common as cc;

type F<'m> = Shared<BlkDevice, &'m TestMemory, 2, 3>;
const V1: u64 = Features::VERSION_1.bits();

fn function(mem: &TestMemory) -> (F<'_>, PciDriver<F<'_>>) {
    let f: F<'_> = attach(BlkDevice::new(64, Features::empty(), 16), mem);
    let d = PciDriver::probe(f.clone(), BAR_BASE).unwrap();
    (f, d)
}

/// H9 over PCI: every bad geometry is refused at `queue_enable = 1`, raises
/// DEVICE_NEEDS_RESET (reported in the outcome, with a configuration interrupt once
/// DRIVER_OK is set), and the queue is never touched, even when notified.
#[test]
fn queue_enable_with_bad_rings_h9() {
    let mem = TestMemory::m0();
    let good = (0x1000u64, 0x2000u64, 0x3000u64);
    type Case = (&'static str, u16, (u64, u64, u64), QueueSetupError);
    let cases: [Case; 7] = [
        (
            "g crosses into the hole",
            16,
            (0xF_FF80, good.1, good.2),
            QueueSetupError::OutsideRam,
        ),
        (
            "h in the hole",
            16,
            (good.0, 0x15_0000, good.2),
            QueueSetupError::OutsideRam,
        ),
        (
            "past the end of RAM",
            16,
            (good.0, good.1, 0x30_0000),
            QueueSetupError::OutsideRam,
        ),
        (
            "i overflow",
            16,
            (u64::MAX - 0xFF, good.1, good.2),
            QueueSetupError::AddressOverflow,
        ),
        (
            "f misaligned",
            16,
            (0x1008, good.1, good.2),
            QueueSetupError::Misaligned,
        ),
        (
            "n overlap",
            16,
            (good.0, good.0 + 0x40, good.2),
            QueueSetupError::Overlap,
        ),
        (
            "b not a power of two",
            6,
            good,
            QueueSetupError::SizeNotPowerOfTwo { size: 6 },
        ),
    ];
    for after_driver_ok in [false, true] {
        for (name, size, areas, err) in cases {
            let (f, d) = function(&mem);
            d.enable_msix(3);
            d.negotiate(V1).unwrap();
            // After the reset in `negotiate`, which unmaps every event.
            assert_eq!(d.set_config_vector(0), 0);
            // Queue 1 is good, so DRIVER_OK can come first when wanted.
            d.setup_queue(1, 16, (0x5000, 0x6000, 0x7000), 2);
            if after_driver_ok {
                d.driver_ok();
            }
            f.irq.borrow_mut().events = PciEvents::empty();
            f.irq.borrow_mut().take_msi();
            mem.start_recording();
            d.setup_queue(0, size, areas, 1);
            assert_eq!(f.t.borrow().queue_setup_error(0), Some(err), "{name}");
            d.select(0);
            assert_eq!(
                d.cr(cc::QUEUE_ENABLE, 2),
                1,
                "{name}: reads back what was written"
            );
            assert!(!f.t.borrow().queue(0).unwrap().ready, "{name}");
            assert_ne!(d.status() & 64, 0, "{name}: DEVICE_NEEDS_RESET");
            assert!(
                f.irq.borrow().events.contains(PciEvents::NEEDS_RESET),
                "{name}"
            );
            let msi = f.irq.borrow_mut().take_msi();
            assert_eq!(
                msi.len(),
                usize::from(after_driver_ok),
                "{name}: config interrupt"
            );
            d.notify(0);
            assert!(
                mem.take_log().is_empty(),
                "{name}: refused queue touched memory"
            );
        }
    }
}

/// H9j, §4.1.4.3.2: queue fields written while the queue is enabled (a new size, new rings,
/// a size of 0) are ignored; the queue keeps running on what was validated.
#[test]
fn queue_size_changed_after_enable_h9j() {
    let mem = TestMemory::m0();
    let (f, d) = function(&mem);
    let mut drv = SplitDriver::standard(&mem, 16);
    d.negotiate(V1).unwrap();
    d.setup_queue(0, 16, (drv.desc, drv.avail, drv.used), NO_VECTOR);
    d.driver_ok();
    d.select(0);
    for (off, w, v) in [
        (cc::QUEUE_SIZE, 2u8, 0u64),
        (cc::QUEUE_SIZE, 2, 8),
        (cc::QUEUE_SIZE, 2, 0xFFFF),
        (cc::QUEUE_DESC, 8, 0x15_0000),
        (cc::QUEUE_DRIVER + 4, 4, 0xFFFF_FFFF),
        (cc::QUEUE_DEVICE, 4, 0),
    ] {
        d.cw(off, w, v);
    }
    d.cw(cc::QUEUE_ENABLE, 2, 1);
    assert_eq!(d.cr(cc::QUEUE_SIZE, 2), 16);
    assert_eq!(d.cr(cc::QUEUE_DESC, 8), drv.desc);
    let q = f.t.borrow().queue(0).unwrap().clone();
    assert_eq!(
        (q.size, q.desc_table_addr.0, q.used_ring_addr.0),
        (16, drv.desc, drv.used)
    );
    for _ in 0..20 {
        drv.add_chain(&[(0x8000, 16, false)]);
        d.notify(0);
        assert!(drv.pop_used().is_some());
    }
    assert_eq!(d.status() & 64, 0);
}

/// The guest moves BAR 0 while a queue is live (and switches decoding off and on): the
/// queues are in RAM and keep working; only the register window moves, the old address no
/// longer decodes, and every move is reported so the hypervisor can move its trap.
#[test]
fn bar_moved_while_queues_live() {
    let mem = TestMemory::m0();
    let (f, mut d) = function(&mem);
    let mut drv = SplitDriver::standard(&mem, 16);
    d.negotiate(V1).unwrap();
    d.setup_queue(0, 16, (drv.desc, drv.avail, drv.used), NO_VECTOR);
    d.driver_ok();
    let old = d.bar;
    for (k, new) in [0xC000_0000u64, 0x40_0000_0000, 0x8000]
        .into_iter()
        .enumerate()
    {
        f.irq.borrow_mut().events = PciEvents::empty();
        d.bus.cfg_write(layout::BAR0, 4, new & 0xFFFF_FFFF);
        d.bus.cfg_write(layout::BAR1, 4, new >> 32);
        assert!(f.irq.borrow().events.contains(PciEvents::BAR_CHANGED));
        assert_eq!(f.t.borrow().bar_address(0), Some(new));
        assert!(
            f.t.borrow_mut().memory_read(old + 0x14, 1).is_none(),
            "old window gone"
        );
        d.bar = new;
        assert_eq!(d.status(), 0xF, "still live");
        drv.add_chain(&[(0x8000 + k as u64 * 16, 16, false)]);
        d.notify(0);
        assert_eq!(
            drv.pop_used().map(|u| u.1),
            Some(0),
            "request after move {k}"
        );
        assert_eq!(d.read_isr(), 1);
    }
    // Decoding off: the window is gone, the queue still runs (work arrives, e.g. by polling).
    let command = d.bus.cfg_read(layout::COMMAND, 2);
    d.bus.cfg_write(
        layout::COMMAND,
        2,
        command & !u64::from(layout::COMMAND_MEMORY),
    );
    assert_eq!(f.t.borrow().bar_address(0), None);
    assert_eq!(d.bus.mem_read(d.bar + 0x14, 1), 0xFF, "master abort");
    drv.add_chain(&[(0x8000, 16, false)]);
    f.with(|t| t.poll());
    assert_eq!(drv.pop_used().map(|u| u.1), Some(0));
    d.bus.cfg_write(layout::COMMAND, 2, command);
    assert_eq!(d.status(), 0xF);
}

/// The hypervisor side's invariants, whatever the guest did.
fn check(f: &Shared<BlkDevice, GuestRam, 1, 2>) {
    let t = f.t.borrow();
    let s = t.status();
    assert_eq!(s.bits() & 0x30, 0, "reserved / SUSPEND");
    if s.contains(DeviceStatus::DRIVER_OK) {
        assert!(
            s.contains(DeviceStatus::FEATURES_OK),
            "live without FEATURES_OK"
        );
    }
    assert_eq!(
        t.negotiated_features().bits() & !t.offered_features().bits(),
        0
    );
    assert_eq!(t.isr().bits() & !3, 0);
    assert_eq!(
        t.msix_pending() & !0b11,
        0,
        "pending bits only for the 2 vectors"
    );
    for v in [t.config_vector(), t.queue_vector(0).unwrap()] {
        assert!(v < 2 || v == NO_VECTOR, "vector {v:#x}");
    }
    if let Some(q) = t.queue(0).filter(|q| q.ready) {
        assert!(q.is_valid() && q.check_rings(t.memory()).is_ok(), "{q:?}");
    }
    // The capability list is intact: the same six capabilities, ending.
    drop(t);
    let mut ptr = f.cfg_read(layout::CAPABILITIES, 1);
    let mut seen = Vec::new();
    while ptr != 0 {
        assert!(seen.len() < 6, "capability list grew");
        seen.push(ptr);
        ptr = (f.cfg_read(ptr as u16, 4) >> 8) & 0xFC;
    }
    assert_eq!(seen, [0x40, 0x50, 0x60, 0x74, 0x84, 0x94]);
}

/// xorshift64: deterministic garbage.
fn next(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// Garbage at every configuration offset and every BAR structure offset, at widths 1, 2, 4
/// and 8, on an idle and on a live device (virtio-drivers' blk over PCI, split ring); the
/// invariants hold after every round, and a fresh driver then uses the device.
#[test]
fn garbage_everywhere_leaves_function_usable() {
    let arena = Arena::new(1 << 20);
    let _g = arena.install();
    let f = attach::<_, _, 1, 2>(
        BlkDevice::new(256, Features::INDIRECT_DESC | Features::EVENT_IDX, 16),
        arena.guest_ram(),
    );
    let round_trip = |salt: u8| {
        let mut blk = VirtIOBlk::<GuestHal, _>::new(GuestPci::new(
            f.clone(),
            BAR_BASE,
            salt.is_multiple_of(2),
        ))
        .unwrap();
        let data: Vec<u8> = (0..2048).map(|i| (i as u8) ^ salt).collect();
        blk.write_blocks(4, &data).unwrap();
        let mut back = vec![0u8; 2048];
        blk.read_blocks(4, &mut back).unwrap();
        assert_eq!(back, data);
        blk
    };
    let specials = [
        0u64,
        1,
        0xF,
        0xFF,
        0xFFFF,
        0x8000,
        u64::from(u32::MAX),
        u64::MAX,
        GUEST_RAM_BASE,
        GUEST_RAM_BASE + 0x1000,
    ];
    let bar_offsets: Vec<u64> = (0..0x48)
        .chain(0x1000..0x1004)
        .chain(0x2000..0x2010)
        .chain(0x3000..0x300C)
        .chain(0x4000..0x4028)
        .chain(0x5000..0x500C)
        .collect();
    // A random word and a value: half the time a special one, else 48 random bits.
    let garbage = |s: &mut u64| {
        let r = next(s);
        let v = if r & 1 == 0 {
            specials[(r >> 8) as usize % specials.len()]
        } else {
            r >> 16
        };
        (r, v)
    };
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut sweep = |rounds: usize| {
        let mut saw = (0u32, 0u32, 0u32);
        for _ in 0..rounds {
            for off in 0..0x100u16 {
                for w in [1u8, 2, 4, 8] {
                    let (r, v) = garbage(&mut s);
                    // Keep the function decodable now and then, as a guest rewriting its
                    // BAR would.
                    if !r.is_multiple_of(5) {
                        f.cfg_write(off, w, v);
                    }
                    f.cfg_read(off, w);
                }
            }
            for &off in &bar_offsets {
                for w in [1u8, 2, 4, 8] {
                    let (_, v) = garbage(&mut s);
                    f.with(|t| t.bar_write(0, off, w, v));
                    f.with(|t| t.bar_read(0, off, w));
                }
            }
            check(&f);
            let t = f.t.borrow();
            saw.0 += u32::from(t.queue(0).unwrap().ready);
            saw.1 += u32::from(!t.status().is_empty());
            saw.2 += u32::from(t.status().contains(DeviceStatus::DEVICE_NEEDS_RESET));
        }
        saw
    };
    let saw = sweep(24);
    eprintln!("idle (ready, status set, needs reset): {saw:?}");
    assert!(saw.1 > 0, "the garbage reached the status machine");
    assert!(
        f.irq.borrow().events.contains(PciEvents::BAR_CHANGED),
        "and the BAR"
    );
    drop(round_trip(1));
    let blk = round_trip(2);
    let saw = sweep(24);
    eprintln!("live: {saw:?}");
    drop(blk);
    f.with(|t| t.pci_reset());
    drop(round_trip(3));
}
