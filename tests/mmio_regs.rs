//! The virtio-mmio register file at register level: MMIO-R01..R26, MMIO-01..06, MMIO-20..28,
//! STAT-10/11/13, FEAT-05/06/08/09, H9 a–n, H19, LEG-01..09.
//!
//! Guest RAM is the hostile-inputs map M0: RAM0 `[0, 1 MiB)`, a hole `[1 MiB, 2 MiB)`, RAM1
//! `[2 MiB, 3 MiB)`.

use virtq::transport::mmio::{INT_CONFIG, INT_VRING, MAGIC, MmioVersion, regs};
use virtq::transport::{
    DeviceId, MmioTransport, NotifyReport, QueueSetupError, Queues, VirtioDevice, config_read,
};
use virtq::{Completion, Features, GuestMemory};
use virtq_testkit::{SplitDriver, TestMemory};

/// A device with queues 0 and 1 (256 entries) in a transport with room for 4.
#[derive(Debug, Default)]
struct Probe {
    features: u64,
    refuse_features: bool,
    notified: Vec<u16>,
    config_writes: Vec<(u32, Vec<u8>)>,
    activated: Option<u64>,
    resets: u32,
    queue_resets: Vec<u16>,
}

const CONFIG: [u8; 8] = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];

impl VirtioDevice for Probe {
    fn device_id(&self) -> DeviceId {
        DeviceId(42)
    }
    fn vendor_id(&self) -> u32 {
        0x5654_5100
    }
    fn device_features(&self) -> Features {
        Features::from_bits_retain(self.features)
    }
    fn validate_features(&self, _accepted: Features) -> bool {
        !self.refuse_features
    }
    fn queue_max_size(&self, index: u16) -> u16 {
        if index < 2 { 256 } else { 0 }
    }
    fn read_config(&self, offset: u32, data: &mut [u8]) {
        config_read(&CONFIG, offset, data);
    }
    fn write_config(&mut self, offset: u32, data: &[u8]) {
        self.config_writes.push((offset, data.to_vec()));
    }
    fn activate(&mut self, negotiated: Features) {
        self.activated = Some(negotiated.bits());
    }
    fn reset(&mut self) {
        self.resets += 1;
    }
    fn queue_reset(&mut self, index: u16) {
        self.queue_resets.push(index);
    }
    fn queue_notify<M: GuestMemory + ?Sized>(
        &mut self,
        index: u16,
        mut queues: Queues<'_>,
        mem: &M,
    ) -> NotifyReport {
        self.notified.push(index);
        let mut q = queues.get(index).unwrap();
        q.drain(mem, 64, |_| Completion::Used(0)).into()
    }
}

type Dev<'m> = MmioTransport<Probe, &'m TestMemory, 4>;

const V1: u64 = Features::VERSION_1.bits();
const ACK_DRV: u32 = 3;
const FEAT_OK: u32 = 8;
const DRV_OK: u32 = 4;

fn dev(mem: &TestMemory, features: u64, version: MmioVersion) -> Dev<'_> {
    MmioTransport::new(
        Probe {
            features,
            ..Probe::default()
        },
        mem,
        version,
    )
}

/// An aligned 32-bit register read (the value is in the low 32 bits).
fn rd(d: &Dev<'_>, off: u64) -> u32 {
    u32::try_from(d.read(off, 4)).expect("a 32-bit register")
}

/// An aligned 32-bit register write; the interrupt line level afterwards.
fn wr(d: &mut Dev<'_>, off: u64, v: u32) -> bool {
    d.write(off, 4, v.into()).irq
}

fn set_features(d: &mut Dev<'_>, f: u64) {
    wr(d, regs::DRIVER_FEATURES_SEL, 0);
    wr(d, regs::DRIVER_FEATURES, f as u32);
    wr(d, regs::DRIVER_FEATURES_SEL, 1);
    wr(d, regs::DRIVER_FEATURES, (f >> 32) as u32);
}

/// ACKNOWLEDGE | DRIVER, features `f`, FEATURES_OK; returns the status read back.
fn negotiate(d: &mut Dev<'_>, f: u64) -> u32 {
    wr(d, regs::STATUS, 0);
    wr(d, regs::STATUS, ACK_DRV);
    set_features(d, f);
    wr(d, regs::STATUS, ACK_DRV | FEAT_OK);
    rd(d, regs::STATUS)
}

fn program(d: &mut Dev<'_>, q: u32, size: u32, desc: u64, avail: u64, used: u64) {
    wr(d, regs::QUEUE_SEL, q);
    wr(d, regs::QUEUE_NUM, size);
    for (lo, v) in [
        (regs::QUEUE_DESC_LOW, desc),
        (regs::QUEUE_DRIVER_LOW, avail),
        (regs::QUEUE_DEVICE_LOW, used),
    ] {
        wr(d, lo, v as u32);
        wr(d, lo + 4, (v >> 32) as u32);
    }
}

fn enable(d: &mut Dev<'_>, q: u32, size: u32, desc: u64, avail: u64, used: u64) {
    program(d, q, size, desc, avail, used);
    wr(d, regs::QUEUE_READY, 1);
}

/// Negotiate VERSION_1, enable queue 0 at the standard layout of `drv`, DRIVER_OK.
fn live<'m>(d: &mut Dev<'m>, drv: &SplitDriver<'_>) {
    assert_eq!(negotiate(d, V1) & FEAT_OK, FEAT_OK);
    enable(d, 0, u32::from(drv.size), drv.desc, drv.avail, drv.used);
    assert!(d.queue_setup_error(0).is_none());
    wr(d, regs::STATUS, ACK_DRV | FEAT_OK | DRV_OK);
    assert!(d.is_live());
}

fn needs_reset(d: &Dev<'_>) -> bool {
    rd(d, regs::STATUS) & 64 != 0
}

#[test]
fn identity_registers_mmio_r01_to_r04() {
    let mem = TestMemory::m0();
    for (version, v) in [(MmioVersion::V2, 2), (MmioVersion::Legacy, 1)] {
        let mut d = dev(&mem, 0, version);
        assert_eq!(rd(&d, regs::MAGIC_VALUE), MAGIC); // MMIO-R01
        assert_eq!(rd(&d, regs::VERSION), v); // MMIO-R02, LEG-01
        assert_eq!(rd(&d, regs::DEVICE_ID), 42); // MMIO-R03
        assert_eq!(rd(&d, regs::VENDOR_ID), 0x5654_5100); // MMIO-R04
        // MMIO-22: writes to read-only registers are ignored.
        for r in [
            regs::MAGIC_VALUE,
            regs::VERSION,
            regs::DEVICE_ID,
            regs::VENDOR_ID,
        ] {
            wr(&mut d, r, 0xDEAD_BEEF);
        }
        assert_eq!(rd(&d, regs::MAGIC_VALUE), MAGIC);
        assert_eq!(rd(&d, regs::DEVICE_ID), 42);
    }
}

#[test]
fn feature_words_mmio_r05_r08_feat06() {
    let mem = TestMemory::m0();
    // A device claiming everything: the transport withholds what MMIO cannot carry.
    let mut d = dev(&mem, u64::MAX, MmioVersion::V2);
    wr(&mut d, regs::DEVICE_FEATURES_SEL, 0);
    let lo = u64::from(rd(&d, regs::DEVICE_FEATURES));
    wr(&mut d, regs::DEVICE_FEATURES_SEL, 1);
    let hi = u64::from(rd(&d, regs::DEVICE_FEATURES));
    let offered = lo | hi << 32;
    assert_eq!(offered, d.offered_features().bits());
    for f in [
        Features::ADMIN_VQ,          // MMIO-31
        Features::SR_IOV,            // RSV-12
        Features::NOTIF_CONFIG_DATA, // RSV-14
        Features::RING_PACKED,       // this device has no packed ring (PACKED_RING unset)
        Features::NOTIFICATION_DATA, // not implemented
        Features::SUSPEND,           // not implemented
    ] {
        assert_eq!(offered & f.bits(), 0, "{f:?} must not be offered on MMIO");
    }
    assert_eq!(offered & (0x3F << 44), 0, "reserved bits 44-49 (FEAT-02)");
    assert_eq!(offered & ((1 << 24) | (1 << 27) | (1 << 30)), 0, "LEG-12");
    assert_ne!(offered & V1, 0, "VERSION_1 on v2");
    assert_ne!(
        offered & Features::RING_RESET.bits(),
        0,
        "QueueReset exists on v2"
    );
    assert_ne!(offered & 0xFF_FFFF, 0, "device-specific bits pass through");
    // Words beyond 1 read as 0 (MMIO-R05).
    wr(&mut d, regs::DEVICE_FEATURES_SEL, 2);
    assert_eq!(rd(&d, regs::DEVICE_FEATURES), 0);
    wr(&mut d, regs::DEVICE_FEATURES_SEL, u32::MAX);
    assert_eq!(rd(&d, regs::DEVICE_FEATURES), 0);
    // Write-only selectors and DriverFeatures read as 0 (MMIO-22).
    assert_eq!(rd(&d, regs::DEVICE_FEATURES_SEL), 0);
    assert_eq!(rd(&d, regs::DRIVER_FEATURES), 0);
    // Legacy: no VERSION_1, legacy bits allowed.
    let l = dev(&mem, u64::MAX, MmioVersion::Legacy);
    assert_eq!(l.offered_features().bits() & V1, 0);
    assert_ne!(l.offered_features().bits() & (1 << 27), 0);
    assert_eq!(l.offered_features().bits() & Features::ADMIN_VQ.bits(), 0);
    assert_eq!(
        l.offered_features().bits() & Features::RING_RESET.bits(),
        0,
        "no QueueReset in v1"
    );
}

#[test]
fn features_ok_validation_feat05_feat08_feat09() {
    let mem = TestMemory::m0();
    let offered = V1 | Features::EVENT_IDX.bits() | 1;
    let mut d = dev(&mem, offered, MmioVersion::V2);
    // FEAT-08: a bit that was not offered → FEATURES_OK stays clear (FEAT-05).
    assert_eq!(negotiate(&mut d, V1 | 2) & FEAT_OK, 0);
    assert_eq!(d.negotiated_features().bits(), 0);
    // VERSION_1 not accepted on v2 → refused (RSV-04, INIT-04).
    assert_eq!(negotiate(&mut d, 1) & FEAT_OK, 0);
    // The device's own prerequisite check refuses too.
    d.device_mut().refuse_features = true;
    assert_eq!(negotiate(&mut d, V1) & FEAT_OK, 0);
    d.device_mut().refuse_features = false;
    // FEATURES_OK before DRIVER is not latched (STAT-13).
    wr(&mut d, regs::STATUS, 0);
    wr(&mut d, regs::STATUS, 1);
    set_features(&mut d, V1);
    wr(&mut d, regs::STATUS, 1 | FEAT_OK);
    assert_eq!(rd(&d, regs::STATUS), 1);
    // A valid subset latches.
    assert_eq!(negotiate(&mut d, V1 | 1), ACK_DRV | FEAT_OK);
    assert_eq!(d.negotiated_features().bits(), V1 | 1);
    // FEAT-09: DriverFeatures after FEATURES_OK is ignored.
    set_features(&mut d, offered);
    assert_eq!(d.negotiated_features().bits(), V1 | 1);
    // A retry of FEATURES_OK keeps the latched set.
    wr(&mut d, regs::STATUS, ACK_DRV | FEAT_OK);
    assert_eq!(d.negotiated_features().bits(), V1 | 1);
}

#[test]
fn status_state_machine_stat10_11_13() {
    let mem = TestMemory::m0();
    let mut drv = SplitDriver::standard(&mem, 16);
    let mut d = dev(&mem, V1, MmioVersion::V2);
    // DRIVER_OK without FEATURES_OK: not live (INIT-08).
    wr(&mut d, regs::STATUS, ACK_DRV);
    wr(&mut d, regs::STATUS, ACK_DRV | DRV_OK);
    assert_eq!(rd(&d, regs::STATUS), ACK_DRV);
    assert!(!d.is_live());
    // The driver cannot set DEVICE_NEEDS_RESET or reserved bit 5 (STAT-13).
    wr(&mut d, regs::STATUS, ACK_DRV | 64 | 32);
    assert_eq!(rd(&d, regs::STATUS), ACK_DRV);
    // Upper bytes of the 32-bit write are ignored, and do not count as a reset.
    wr(&mut d, regs::STATUS, 0x100);
    assert_eq!(rd(&d, regs::STATUS), ACK_DRV);
    // STAT-11: clearing a bit without reset is ignored.
    wr(&mut d, regs::STATUS, 1);
    assert_eq!(rd(&d, regs::STATUS), ACK_DRV);
    live(&mut d, &drv);
    assert_eq!(d.device().activated, Some(V1));
    // STAT-10: NEEDS_RESET raised by the device survives a status write without it.
    assert!(d.raise_needs_reset().irq);
    assert_eq!(
        u32::from(d.interrupt_status().bits()),
        INT_CONFIG,
        "STAT-09: config interrupt with DRIVER_OK"
    );
    wr(&mut d, regs::STATUS, ACK_DRV | FEAT_OK | DRV_OK);
    assert!(needs_reset(&d));
    // FAILED: everything stops until reset (STAT-12).
    wr(&mut d, regs::STATUS, 128);
    assert_ne!(rd(&d, regs::STATUS) & 128, 0);
    let before = d.device().notified.len();
    drv.add_chain(&[(0x8000, 16, false)]);
    wr(&mut d, regs::QUEUE_NOTIFY, 0);
    assert_eq!(
        d.device().notified.len(),
        before,
        "no processing after FAILED"
    );
    assert_eq!(drv.used_idx(), 0);
    // Reset from any state (STAT-14) clears everything (STAT-06, MMIO-06).
    wr(&mut d, regs::STATUS, 0);
    assert_eq!(rd(&d, regs::STATUS), 0);
    assert_eq!(u32::from(d.interrupt_status().bits()), 0);
    assert_eq!(d.negotiated_features().bits(), 0);
    wr(&mut d, regs::QUEUE_SEL, 0);
    assert_eq!(rd(&d, regs::QUEUE_READY), 0);
    assert!(!d.queue(0).unwrap().ready);
    assert_eq!(d.device().resets, 2, "one reset from live(), one now");
}

/// H9 a–i, n: every bad geometry is refused at QueueReady = 1, the refused queue reads back
/// ready (MMIO-16) but is never accessed, and the device asks for a reset.
#[test]
fn queue_enable_checks_h9() {
    let mem = TestMemory::m0();
    let (desc, avail, used) = (0x1000u64, 0x2000u64, 0x3000u64);
    let cases: [(&str, u32, u64, u64, u64, QueueSetupError); 11] = [
        ("a size 0", 0, desc, avail, used, QueueSetupError::SizeZero),
        (
            "b size 6",
            6,
            desc,
            avail,
            used,
            QueueSetupError::SizeNotPowerOfTwo { size: 6 },
        ),
        (
            "d 0x1_0000",
            0x1_0000,
            desc,
            avail,
            used,
            QueueSetupError::SizeTooLarge { size: 0x1_0000 },
        ),
        (
            "e > max",
            512,
            desc,
            avail,
            used,
            QueueSetupError::SizeTooLarge { size: 512 },
        ),
        (
            "f misaligned",
            16,
            0x1008,
            0x2001,
            0x3002,
            QueueSetupError::Misaligned,
        ),
        (
            "f zero address",
            16,
            0,
            avail,
            used,
            QueueSetupError::Misaligned,
        ),
        (
            "g crosses into hole",
            16,
            0xF_FF80,
            avail,
            used,
            QueueSetupError::OutsideRam,
        ),
        (
            "h in hole",
            16,
            desc,
            0x15_0000,
            used,
            QueueSetupError::OutsideRam,
        ),
        (
            "i overflow",
            16,
            u64::MAX - 0xFF,
            avail,
            used,
            QueueSetupError::AddressOverflow,
        ),
        (
            "n avail inside desc",
            16,
            desc,
            desc + 0x40,
            used,
            QueueSetupError::Overlap,
        ),
        (
            "n used on avail",
            16,
            desc,
            avail,
            avail,
            QueueSetupError::Overlap,
        ),
    ];
    for (name, size, de, av, us, err) in cases {
        let mut d = dev(&mem, V1, MmioVersion::V2);
        assert_eq!(negotiate(&mut d, V1) & FEAT_OK, FEAT_OK);
        wr(&mut d, regs::STATUS, ACK_DRV | FEAT_OK | DRV_OK);
        mem.start_recording();
        enable(&mut d, 0, size, de, av, us);
        assert_eq!(d.queue_setup_error(0), Some(err), "{name}");
        assert_eq!(
            rd(&d, regs::QUEUE_READY),
            1,
            "{name}: read-back is the value written"
        );
        assert!(!d.queue(0).unwrap().ready, "{name}");
        assert!(needs_reset(&d), "{name}: DEVICE_NEEDS_RESET");
        assert_eq!(
            u32::from(d.interrupt_status().bits()) & INT_CONFIG,
            INT_CONFIG,
            "{name}: config irq"
        );
        // A refused queue is never read, even when notified.
        wr(&mut d, regs::QUEUE_NOTIFY, 0);
        assert!(d.device().notified.is_empty(), "{name}");
        let log = mem.take_log();
        assert!(
            log.is_empty(),
            "{name}: refused queue touched memory: {log:?}"
        );
        // Reset clears the refusal; a good geometry is then accepted.
        wr(&mut d, regs::STATUS, 0);
        assert_eq!(d.queue_setup_error(0), None);
        assert_eq!(negotiate(&mut d, V1) & FEAT_OK, FEAT_OK);
        enable(&mut d, 0, 16, desc, avail, used);
        assert!(d.queue(0).unwrap().ready, "{name}: good queue after reset");
        assert!(!needs_reset(&d));
    }
    // c (size 6 accepted for packed) does not apply: only the split ring is offered.
}

/// H9j / MMIO-17: queue registers are frozen while the queue is enabled.
#[test]
fn queue_registers_frozen_while_ready_h9j() {
    let mem = TestMemory::m0();
    let drv = SplitDriver::standard(&mem, 16);
    let mut d = dev(&mem, V1, MmioVersion::V2);
    live(&mut d, &drv);
    program(&mut d, 0, 64, 0x9000, 0xA000, 0xB000);
    let q = d.queue(0).unwrap();
    assert_eq!((q.size, q.desc_table_addr.0), (16, drv.desc));
    // Disable (MMIO-R12): the queue stops and may be reprogrammed.
    wr(&mut d, regs::QUEUE_READY, 0);
    assert_eq!(rd(&d, regs::QUEUE_READY), 0);
    assert!(!d.queue(0).unwrap().ready);
    let drv2 = SplitDriver::new(&mem, 32, 0x9000, 0xA000, 0xB000);
    enable(&mut d, 0, 32, drv2.desc, drv2.avail, drv2.used);
    let q = d.queue(0).unwrap();
    assert!(q.ready);
    assert_eq!((q.size, q.desc_table_addr.0), (32, 0x9000));
}

/// H9l, H9m, MMIO-20, MMIO-27: notifications and selectors that name nothing are ignored.
#[test]
fn bogus_notifications_and_selectors_h9l_h9m_mmio20_27() {
    let mem = TestMemory::m0();
    let mut drv = SplitDriver::standard(&mem, 16);
    let mut d = dev(&mem, V1, MmioVersion::V2);
    // H9m: before DRIVER_OK, no ring read.
    assert_eq!(negotiate(&mut d, V1) & FEAT_OK, FEAT_OK);
    enable(&mut d, 0, 16, drv.desc, drv.avail, drv.used);
    drv.add_chain(&[(0x8000, 16, false)]);
    mem.start_recording();
    wr(&mut d, regs::QUEUE_NOTIFY, 0);
    assert!(
        mem.take_log().is_empty(),
        "notify before DRIVER_OK read memory"
    );
    assert!(d.device().notified.is_empty());
    // DRIVER_OK processes what was queued during setup (INIT-07).
    wr(&mut d, regs::STATUS, ACK_DRV | FEAT_OK | DRV_OK);
    assert_eq!(d.device().notified, vec![0]);
    assert_eq!(drv.pop_used(), Some((0, 0)));
    // H9l: unknown queues, 0xFFFF, a queue that exists but is not ready.
    mem.start_recording();
    for v in [1, 2, 3, 4, 0xFFFF, 0x7FFF_FFFF] {
        wr(&mut d, regs::QUEUE_NOTIFY, v);
    }
    assert!(mem.take_log().is_empty());
    assert_eq!(d.device().notified, vec![0]);
    // MMIO-20: selecting a queue that does not exist.
    wr(&mut d, regs::QUEUE_SEL, 3);
    assert_eq!(rd(&d, regs::QUEUE_NUM_MAX), 0);
    assert_eq!(rd(&d, regs::QUEUE_READY), 0);
    enable(&mut d, 3, 16, 0x9000, 0xA000, 0xB000);
    assert_eq!(rd(&d, regs::QUEUE_READY), 0);
    assert!(!needs_reset(&d));
    wr(&mut d, regs::QUEUE_SEL, u32::MAX);
    assert_eq!(rd(&d, regs::QUEUE_NUM_MAX), 0);
    wr(&mut d, regs::QUEUE_READY, 1);
    wr(&mut d, regs::QUEUE_SEL, 1);
    assert_eq!(rd(&d, regs::QUEUE_NUM_MAX), 256, "MMIO-R10");
    // H9m: after reset, nothing is read.
    wr(&mut d, regs::STATUS, 0);
    drv.add_chain(&[(0x8000, 16, false)]);
    mem.start_recording();
    wr(&mut d, regs::QUEUE_NOTIFY, 0);
    assert!(mem.take_log().is_empty(), "notify after reset read memory");
}

/// MMIO-01..06, MMIO-R14/R15, MMIO-26: interrupt status and the level-triggered line.
#[test]
fn interrupt_status_and_ack_mmio01_to_06() {
    let mem = TestMemory::m0();
    let mut drv = SplitDriver::standard(&mem, 16);
    let mut d = dev(&mem, V1, MmioVersion::V2);
    live(&mut d, &drv);
    assert_eq!(rd(&d, regs::INTERRUPT_STATUS), 0, "MMIO-02");
    drv.add_chain(&[(0x8000, 16, false)]);
    assert!(
        wr(&mut d, regs::QUEUE_NOTIFY, 0),
        "line asserted after a used buffer (MMIO-04)"
    );
    assert_eq!(rd(&d, regs::INTERRUPT_STATUS), INT_VRING);
    // MMIO-R14: reading does not clear.
    assert_eq!(rd(&d, regs::INTERRUPT_STATUS), INT_VRING);
    // Config change while the vring bit is pending (MMIO-05).
    assert!(d.signal_config_change().irq);
    assert_eq!(rd(&d, regs::INTERRUPT_STATUS), INT_VRING | INT_CONFIG);
    // MMIO-R15: ACK clears only the written bits; MMIO-26: undefined bits ignored.
    assert!(wr(&mut d, regs::INTERRUPT_ACK, INT_VRING | 0xFFFF_FFF0));
    assert_eq!(rd(&d, regs::INTERRUPT_STATUS), INT_CONFIG);
    assert!(
        !wr(&mut d, regs::INTERRUPT_ACK, INT_CONFIG),
        "line drops at 0 (MMIO-03)"
    );
    // With VIRTQ_AVAIL_F_NO_INTERRUPT the completion raises nothing (MMIO-04 after
    // suppression).
    drv.pop_used();
    drv.set_avail_flags(1);
    drv.add_chain(&[(0x8000, 16, false)]);
    assert!(!wr(&mut d, regs::QUEUE_NOTIFY, 0));
    assert_eq!(drv.pop_used(), Some((1, 0)));
    // An event during handling is not lost: re-raised bit stays until acked.
    drv.set_avail_flags(0);
    drv.add_chain(&[(0x8000, 16, false)]);
    wr(&mut d, regs::QUEUE_NOTIFY, 0);
    let seen = rd(&d, regs::INTERRUPT_STATUS);
    drv.add_chain(&[(0x8000, 16, false)]);
    wr(&mut d, regs::QUEUE_NOTIFY, 0);
    wr(&mut d, regs::INTERRUPT_ACK, seen);
    assert_eq!(rd(&d, regs::INTERRUPT_STATUS), 0);
    // MMIO-06: reset clears interrupt status and QueueReady.
    drv.add_chain(&[(0x8000, 16, false)]);
    wr(&mut d, regs::QUEUE_NOTIFY, 0);
    assert_ne!(u32::from(d.interrupt_status().bits()), 0);
    wr(&mut d, regs::STATUS, 0);
    assert_eq!(rd(&d, regs::INTERRUPT_STATUS), 0);
    assert!(!d.interrupt_asserted());
    assert_eq!(rd(&d, regs::QUEUE_READY), 0);
}

/// A queue that breaks raises DEVICE_NEEDS_RESET and one config interrupt; the other queue
/// keeps working; kicks to the broken queue cost nothing.
#[test]
fn broken_queue_needs_reset_once_others_unaffected() {
    let mem = TestMemory::m0();
    let mut drv0 = SplitDriver::new(&mem, 16, 0x1000, 0x2000, 0x3000);
    let mut drv1 = SplitDriver::new(&mem, 16, 0x5000, 0x6000, 0x7000);
    let mut d = dev(&mem, V1, MmioVersion::V2);
    live(&mut d, &drv0);
    enable(&mut d, 1, 16, drv1.desc, drv1.avail, drv1.used);
    // H2: a head out of range is fatal for queue 0.
    drv0.publish(99);
    assert!(wr(&mut d, regs::QUEUE_NOTIFY, 0));
    assert!(d.queue(0).unwrap().is_broken());
    assert!(needs_reset(&d));
    assert_eq!(u32::from(d.interrupt_status().bits()), INT_CONFIG);
    wr(&mut d, regs::INTERRUPT_ACK, INT_CONFIG);
    // Further kicks on the broken queue: no memory access, no new interrupt.
    mem.start_recording();
    wr(&mut d, regs::QUEUE_NOTIFY, 0);
    assert!(mem.take_log().is_empty());
    assert_eq!(u32::from(d.interrupt_status().bits()), 0);
    // Queue 1 is unaffected.
    drv1.add_chain(&[(0x8000, 8, false)]);
    wr(&mut d, regs::QUEUE_NOTIFY, 1);
    assert_eq!(drv1.pop_used(), Some((0, 0)));
    assert_eq!(u32::from(d.interrupt_status().bits()), INT_VRING);
}

/// H19: reset with chains in flight; completions after reset are dropped and nothing is
/// written to the old rings.
#[test]
fn reset_with_chains_in_flight_h19() {
    let mem = TestMemory::m0();
    let mut drv = SplitDriver::standard(&mem, 16);
    let mut d = dev(&mem, V1, MmioVersion::V2);
    live(&mut d, &drv);
    d.set_notify_mode(virtq::transport::NotifyMode::Deferred);
    drv.add_chain(&[(0x8000, 8, false)]);
    wr(&mut d, regs::QUEUE_NOTIFY, 0);
    let mut kicks = vec![];
    d.take_kicks(|q| kicks.push(q));
    assert_eq!(kicks, vec![0]);
    wr(&mut d, regs::STATUS, 0);
    assert_eq!(rd(&d, regs::STATUS), 0);
    mem.start_recording();
    assert!(!d.poll().irq);
    assert!(!d.process_queue(0).irq);
    assert!(mem.take_log().is_empty(), "no access after reset (STAT-04)");
    assert_eq!(drv.used_idx(), 0);
}

/// MMIO-R20..R24, R26, MMIO-21..25, MMIO-28/29: the rest of the register map.
#[test]
fn remaining_registers_and_widths() {
    let mem = TestMemory::m0();
    let mut d = dev(&mem, V1, MmioVersion::V2);
    // SHM: no regions (MMIO-29).
    for sel in [0, 1, 0xFFFF_FFFF] {
        wr(&mut d, regs::SHM_SEL, sel);
        for r in [
            regs::SHM_LEN_LOW,
            regs::SHM_LEN_HIGH,
            regs::SHM_BASE_LOW,
            regs::SHM_BASE_HIGH,
        ] {
            assert_eq!(rd(&d, r), u32::MAX);
        }
    }
    // QueueReset without RING_RESET: ignored, reads 0 (MMIO-28, MMIO-R23).
    wr(&mut d, regs::QUEUE_RESET, 1);
    assert_eq!(rd(&d, regs::QUEUE_RESET), 0);
    // ConfigGeneration changes with the config (MMIO-R24, MMIO-07).
    let g = rd(&d, regs::CONFIG_GENERATION);
    let out = d.signal_config_change();
    assert!(
        !out.irq && out.raised.is_empty(),
        "no interrupt before DRIVER_OK"
    );
    assert_ne!(rd(&d, regs::CONFIG_GENERATION), g);
    assert_eq!(
        u32::from(d.interrupt_status().bits()),
        0,
        "no config interrupt before DRIVER_OK"
    );
    // Gaps read zero and ignore writes (MMIO-R26).
    for gap in [
        0x018, 0x01c, 0x028, 0x02c, 0x03c, 0x040, 0x048, 0x04c, 0x054, 0x058, 0x05c, 0x068, 0x06c,
        0x074, 0x078, 0x07c, 0x088, 0x08c, 0x098, 0x09c, 0x0a8, 0x0c4, 0x0f8,
    ] {
        wr(&mut d, gap, 0xFFFF_FFFF);
        assert_eq!(rd(&d, gap), 0, "gap {gap:#x}");
    }
    // MMIO-21: control registers need aligned 32-bit accesses.
    assert_eq!(d.read(regs::MAGIC_VALUE, 2), 0);
    assert_eq!(d.read(regs::MAGIC_VALUE, 8), 0);
    assert_eq!(d.read(regs::MAGIC_VALUE + 1, 4), 0);
    let _ = d.write(regs::STATUS, 1, 1);
    let _ = d.write(regs::STATUS, 2, 1);
    let _ = d.write(regs::STATUS + 2, 4, 1);
    assert_eq!(rd(&d, regs::STATUS), 0);
    // Config space (MMIO-23/24): 1, 2, 4 and 8 bytes at any offset, byte for byte, zero
    // past the end (every offset and width: `every_offset_and_width_issue15`).
    assert_eq!(d.read(regs::CONFIG, 1), 0x11);
    assert_eq!(d.read(regs::CONFIG + 2, 2), 0x4433);
    assert_eq!(d.read(regs::CONFIG + 4, 4), 0x8877_6655);
    assert_eq!(
        d.read(regs::CONFIG + 6, 4),
        0x8877,
        "misaligned, half past the end"
    );
    assert_eq!(d.read(regs::CONFIG + 1, 2), 0x3322, "misaligned");
    assert_eq!(
        d.read(regs::CONFIG, 8),
        0x8877_6655_4433_2211,
        "one 64-bit load"
    );
    assert_eq!(d.read(regs::CONFIG + 6, 2), 0x8877);
    assert_eq!(d.read(regs::CONFIG + 8, 4), 0, "past the end");
    assert_eq!(d.read(u64::MAX - 3, 4), 0);
    assert_eq!(d.read(u64::MAX, 8), 0);
    // INIT-03: config writes before FEATURES_OK are ignored; after, passed through.
    let _ = d.write(regs::CONFIG, 1, 0xAB);
    assert!(d.device().config_writes.is_empty());
    assert_eq!(negotiate(&mut d, V1) & FEAT_OK, FEAT_OK);
    let _ = d.write(regs::CONFIG + 4, 4, 0xFFFF_FFFF_0102_0304); // bytes above the width ignored
    let _ = d.write(regs::CONFIG + 3, 8, 0x0807_0605_0403_0201);
    let _ = d.write(regs::CONFIG + 3, 3, 0x0102_0304); // no such width: ignored
    assert_eq!(
        d.device().config_writes,
        vec![(4, vec![4, 3, 2, 1]), (3, vec![1, 2, 3, 4, 5, 6, 7, 8])]
    );
    // MMIO-25: features read without a selector write use selector 0.
    wr(&mut d, regs::STATUS, 0);
    assert_eq!(rd(&d, regs::DEVICE_FEATURES), 0);
    wr(&mut d, regs::DEVICE_FEATURES_SEL, 1);
    assert_eq!(rd(&d, regs::DEVICE_FEATURES), 1);
}

/// LEG-01..09, H9k: the legacy register file.
#[test]
fn legacy_registers() {
    let mem = TestMemory::m0();
    let mut d = dev(&mem, 1, MmioVersion::Legacy);
    // No v2-only registers (LEG-06).
    for r in [
        regs::QUEUE_READY,
        regs::CONFIG_GENERATION,
        regs::SHM_LEN_LOW,
        regs::QUEUE_RESET,
    ] {
        assert_eq!(rd(&d, r), 0, "{r:#x}");
    }
    wr(&mut d, regs::STATUS, ACK_DRV);
    set_features(&mut d, 1 | 2); // bit 1 not offered: dropped, not refused
    wr(&mut d, regs::GUEST_PAGE_SIZE, 4096);
    wr(&mut d, regs::QUEUE_SEL, 0);
    assert_eq!(rd(&d, regs::QUEUE_NUM_MAX), 256);
    wr(&mut d, regs::QUEUE_NUM, 16);
    wr(&mut d, regs::QUEUE_ALIGN, 0); // H9k: ignored, alignment stays 4096
    wr(&mut d, regs::QUEUE_ALIGN, 3); // not a power of two: ignored
    wr(&mut d, regs::QUEUE_PFN, 4); // queue at 0x4000
    assert_eq!(rd(&d, regs::QUEUE_PFN), 4);
    let q = d.queue(0).unwrap();
    assert!(q.ready);
    // LEG-07: desc at PFN × page, avail right after, used at the next 4096 boundary.
    assert_eq!(q.desc_table_addr.0, 0x4000);
    assert_eq!(q.avail_ring_addr.0, 0x4000 + 256);
    assert_eq!(q.used_ring_addr.0, 0x5000);
    // Used before DRIVER_OK is allowed in legacy (LEG-10).
    let mut drv = SplitDriver::new(&mem, 16, 0x4000, 0x4100, 0x5000);
    drv.add_chain(&[(0x8000, 4, false)]);
    wr(&mut d, regs::QUEUE_NOTIFY, 0);
    assert_eq!(drv.pop_used(), Some((0, 0)));
    wr(&mut d, regs::STATUS, ACK_DRV | DRV_OK);
    assert_eq!(d.negotiated_features().bits(), 1);
    // A PFN in the hole is refused; writes while active are ignored.
    wr(&mut d, regs::QUEUE_SEL, 1);
    wr(&mut d, regs::QUEUE_NUM, 16);
    wr(&mut d, regs::QUEUE_PFN, 0x150);
    assert_eq!(d.queue_setup_error(1), Some(QueueSetupError::OutsideRam));
    assert!(needs_reset(&d));
    wr(&mut d, regs::QUEUE_SEL, 0);
    wr(&mut d, regs::QUEUE_PFN, 8);
    assert_eq!(d.queue(0).unwrap().desc_table_addr.0, 0x4000);
    // A page size that overflows the layout is refused, not wrapped.
    wr(&mut d, regs::STATUS, 0);
    wr(&mut d, regs::GUEST_PAGE_SIZE, 1 << 31);
    wr(&mut d, regs::QUEUE_NUM, 16);
    wr(&mut d, regs::QUEUE_PFN, u32::MAX);
    assert!(d.queue_setup_error(0).is_some());
    // LEG-09: Status 0 sets every PFN back to 0.
    wr(&mut d, regs::STATUS, 0);
    assert_eq!(rd(&d, regs::QUEUE_PFN), 0);
    assert!(!d.queue(0).unwrap().ready);
    // Writing PFN 0 stops a queue.
    wr(&mut d, regs::QUEUE_NUM, 16);
    wr(&mut d, regs::QUEUE_PFN, 4);
    assert!(d.queue(0).unwrap().ready);
    wr(&mut d, regs::QUEUE_PFN, 0);
    assert!(!d.queue(0).unwrap().ready);
    assert_eq!(rd(&d, regs::QUEUE_PFN), 0);
}

/// MMIO-09..13, MMIO-28, VQ-07/08: per-queue reset through QueueReset.
#[test]
fn queue_reset_mmio09_to_13() {
    let mem = TestMemory::m0();
    let rr = Features::RING_RESET.bits();
    // Without RING_RESET negotiated: ignored (MMIO-28).
    let mut drv = SplitDriver::standard(&mem, 16);
    let mut d = dev(&mem, V1 | rr, MmioVersion::V2);
    live(&mut d, &drv);
    wr(&mut d, regs::QUEUE_SEL, 0);
    wr(&mut d, regs::QUEUE_RESET, 1);
    assert!(d.queue(0).unwrap().ready);
    assert!(d.device().queue_resets.is_empty());
    // With it.
    assert_eq!(negotiate(&mut d, V1 | rr) & FEAT_OK, FEAT_OK);
    enable(&mut d, 0, 16, drv.desc, drv.avail, drv.used);
    enable(&mut d, 1, 16, 0x5000, 0x6000, 0x7000);
    wr(&mut d, regs::STATUS, ACK_DRV | FEAT_OK | DRV_OK);
    assert_eq!(rd(&d, regs::QUEUE_RESET), 0, "MMIO-10: 0 once enabled");
    drv.add_chain(&[(0x8000, 8, false)]);
    wr(&mut d, regs::QUEUE_NOTIFY, 0);
    assert_eq!(drv.pop_used(), Some((0, 0)));
    wr(&mut d, regs::QUEUE_SEL, 0);
    wr(&mut d, regs::QUEUE_RESET, 1);
    // MMIO-13: both read 0 once done (done inside the write).
    assert_eq!(rd(&d, regs::QUEUE_RESET), 0);
    assert_eq!(rd(&d, regs::QUEUE_READY), 0);
    assert_eq!(d.device().queue_resets, vec![0]);
    let q = d.queue(0).unwrap();
    assert!(!q.ready);
    assert_eq!((q.next_avail_idx, q.next_used_idx), (0, 0));
    // Queue 1 and the device are untouched.
    assert!(d.queue(1).unwrap().ready);
    assert!(d.is_live() && !needs_reset(&d));
    // A notify for the reset queue is ignored; a QueueReset for a disabled queue too.
    mem.start_recording();
    wr(&mut d, regs::QUEUE_NOTIFY, 0);
    wr(&mut d, regs::QUEUE_RESET, 1);
    assert!(mem.take_log().is_empty());
    assert_eq!(d.device().queue_resets, vec![0]);
    // VQ-08: re-enable with a new geometry; the ring starts from index 0 again.
    let mut drv2 = SplitDriver::new(&mem, 32, 0x9000, 0xA000, 0xB000);
    enable(&mut d, 0, 32, drv2.desc, drv2.avail, drv2.used);
    assert_eq!(d.queue(0).unwrap().size, 32);
    drv2.add_chain(&[(0x8000, 8, false)]);
    wr(&mut d, regs::QUEUE_NOTIFY, 0);
    assert_eq!(drv2.pop_used(), Some((0, 0)));
    // MMIO-09: 0 after a device reset.
    wr(&mut d, regs::STATUS, 0);
    assert_eq!(rd(&d, regs::QUEUE_RESET), 0);
}

/// INIT-07 in deferred mode: DRIVER_OK reports every ready queue as kicked, so buffers queued
/// during setup are not forgotten; nothing runs inside the trap.
#[test]
fn deferred_driver_ok_reports_ready_queues_init07() {
    let mem = TestMemory::m0();
    let mut drv = SplitDriver::standard(&mem, 16);
    let mut d = dev(&mem, V1, MmioVersion::V2);
    d.set_notify_mode(virtq::transport::NotifyMode::Deferred);
    assert_eq!(negotiate(&mut d, V1) & FEAT_OK, FEAT_OK);
    enable(&mut d, 0, 16, drv.desc, drv.avail, drv.used);
    drv.add_chain(&[(0x8000, 8, false)]);
    wr(&mut d, regs::STATUS, ACK_DRV | FEAT_OK | DRV_OK);
    assert!(
        d.device().notified.is_empty(),
        "deferred: nothing runs in the trap"
    );
    let mut kicks = vec![];
    d.take_kicks(|q| kicks.push(q));
    assert_eq!(kicks, vec![0]);
    assert!(d.process_queue(0).irq);
    assert_eq!(drv.pop_used(), Some((0, 0)));
    let mut again = vec![];
    d.take_kicks(|q| again.push(q));
    assert!(again.is_empty());
}

/// LEG-10 with a legacy driver that never writes FEATURES_OK (as Linux's legacy driver): the
/// features it wrote already apply to a queue it uses before DRIVER_OK.
#[test]
fn legacy_queue_uses_written_features_before_driver_ok() {
    let mem = TestMemory::m0();
    let mut d = dev(&mem, Features::INDIRECT_DESC.bits(), MmioVersion::Legacy);
    wr(&mut d, regs::STATUS, ACK_DRV);
    set_features(&mut d, Features::INDIRECT_DESC.bits());
    wr(&mut d, regs::QUEUE_SEL, 0);
    wr(&mut d, regs::QUEUE_NUM, 16);
    wr(&mut d, regs::QUEUE_PFN, 4);
    assert_eq!(d.queue(0).unwrap().features, Features::INDIRECT_DESC);
    let mut drv = SplitDriver::new(&mem, 16, 0x4000, 0x4100, 0x5000);
    drv.add_indirect_chain(0x9000, &[(0x8000, 4, false), (0x8100, 4, true)]);
    wr(&mut d, regs::QUEUE_NOTIFY, 0);
    assert_eq!(drv.pop_used(), Some((0, 0)));
    assert!(!d.queue(0).unwrap().is_broken());
    // Without the feature written, the queue does not accept indirect descriptors.
    let mut d = dev(&mem, Features::INDIRECT_DESC.bits(), MmioVersion::Legacy);
    wr(&mut d, regs::STATUS, ACK_DRV);
    wr(&mut d, regs::QUEUE_SEL, 0);
    wr(&mut d, regs::QUEUE_NUM, 16);
    wr(&mut d, regs::QUEUE_PFN, 4);
    assert_eq!(d.queue(0).unwrap().features, Features::empty());
}

/// Issue 12 item 6, legacy v1 (LEG-10, §3.1.1, §2.1.2): the device is usable only once the
/// driver has set ACKNOWLEDGE and DRIVER. A status that holds nothing but the device's own
/// DEVICE_NEEDS_RESET (or DRIVER_OK written alone) is not a live device, so a notification
/// for a queue the driver never acknowledged is ignored without touching memory.
#[test]
fn legacy_needs_reset_alone_is_not_live() {
    let mem = TestMemory::m0();
    let mut d = dev(&mem, 0, MmioVersion::Legacy);
    // Queue 0 at PFN 4 and queue 1 in the hole, with no status written at all.
    wr(&mut d, regs::QUEUE_SEL, 0);
    wr(&mut d, regs::QUEUE_NUM, 16);
    wr(&mut d, regs::QUEUE_PFN, 4);
    assert!(d.queue(0).unwrap().ready);
    wr(&mut d, regs::QUEUE_SEL, 1);
    wr(&mut d, regs::QUEUE_NUM, 16);
    wr(&mut d, regs::QUEUE_PFN, 0x150);
    assert_eq!(d.queue_setup_error(1), Some(QueueSetupError::OutsideRam));
    assert_eq!(rd(&d, regs::STATUS), 64, "only DEVICE_NEEDS_RESET");
    assert!(!d.is_live());
    let mut drv = SplitDriver::new(&mem, 16, 0x4000, 0x4100, 0x5000);
    drv.add_chain(&[(0x8000, 4, false)]);
    mem.start_recording();
    wr(&mut d, regs::QUEUE_NOTIFY, 0);
    assert!(
        d.device().notified.is_empty(),
        "served a queue never acknowledged"
    );
    assert!(mem.take_log().is_empty());
    // DRIVER_OK without ACKNOWLEDGE and DRIVER does not make it live either.
    wr(&mut d, regs::STATUS, DRV_OK);
    assert!(!d.is_live());
    wr(&mut d, regs::QUEUE_NOTIFY, 0);
    assert!(d.device().notified.is_empty());
    assert_eq!(d.device().activated, None);
    // ACKNOWLEDGE | DRIVER: a legacy driver may now use the queue before DRIVER_OK.
    wr(&mut d, regs::STATUS, ACK_DRV);
    assert!(d.is_live());
    wr(&mut d, regs::QUEUE_NOTIFY, 0);
    assert_eq!(d.device().notified, vec![0]);
    assert_eq!(drv.pop_used(), Some((0, 0)));
}

/// Issue 12 item 6 on the split ring (§3.1.1: queues are set up after FEATURES_OK): a
/// `QueueReady = 1` before FEATURES_OK is refused with a typed error, does not take (reads
/// back 0), raises DEVICE_NEEDS_RESET and never touches memory; after a reset the same
/// queue, enabled in the right order, works.
#[test]
fn queue_ready_before_features_ok_is_refused() {
    let mem = TestMemory::m0();
    let mut drv = SplitDriver::standard(&mem, 16);
    let mut d = dev(&mem, V1, MmioVersion::V2);
    wr(&mut d, regs::STATUS, ACK_DRV);
    mem.start_recording();
    enable(&mut d, 0, 16, drv.desc, drv.avail, drv.used);
    assert!(mem.take_log().is_empty());
    assert_eq!(
        d.queue_setup_error(0),
        Some(QueueSetupError::FeaturesNotAccepted)
    );
    assert_eq!(rd(&d, regs::QUEUE_READY), 0, "the enable did not take");
    assert!(!d.queue(0).unwrap().ready);
    assert!(needs_reset(&d));
    // A FEATURES_OK that is refused (VERSION_1 missing) does not unlock it either.
    set_features(&mut d, 0);
    wr(&mut d, regs::STATUS, ACK_DRV | FEAT_OK);
    wr(&mut d, regs::QUEUE_READY, 1);
    assert_eq!(rd(&d, regs::QUEUE_READY), 0);
    live(&mut d, &drv);
    assert!(!needs_reset(&d));
    drv.add_chain(&[(0x8000, 16, false)]);
    wr(&mut d, regs::QUEUE_NOTIFY, 0);
    assert_eq!(drv.pop_used(), Some((0, 0)));
}

/// Every readable control register of the window as aligned 32-bit reads, plus what the
/// device model saw: what an ignored access must leave unchanged.
fn observe(d: &Dev<'_>) -> (Vec<u32>, u64, usize, usize, u32, usize) {
    let regs = (0..regs::CONFIG).step_by(4).map(|o| rd(d, o)).collect();
    let p = d.device();
    (
        regs,
        d.negotiated_features().bits(),
        p.notified.len(),
        p.config_writes.len(),
        p.resets,
        p.queue_resets.len(),
    )
}

/// Issue 15 "Access widths" (MMIO-21, MMIO-22, MMIO-23, MMIO-24, §4.2.2): every offset of the
/// window at every width a trap delivers (1, 2, 4, 8 bytes, value in a `u64`) and at widths
/// none does (0, 3, 16), on a live device of each version.
///
/// * Control registers: only aligned 4-byte accesses. Every other width or alignment reads 0
///   and a write of it (all-zero or all-ones) changes nothing the driver or device can see.
/// * Device configuration: 1, 2, 4 and 8 bytes at any offset read exactly the device's bytes
///   (zero past its end) and write exactly `width` bytes (the low bytes of the value).
#[test]
fn every_offset_and_width_issue15() {
    let mem = TestMemory::m0();
    for version in [MmioVersion::V2, MmioVersion::Legacy] {
        let drv = SplitDriver::standard(&mem, 16);
        let mut d = dev(&mem, V1 | Features::RING_RESET.bits() | 1, version);
        match version {
            MmioVersion::V2 => {
                assert_eq!(
                    negotiate(&mut d, V1 | Features::RING_RESET.bits()) & FEAT_OK,
                    FEAT_OK
                );
                enable(&mut d, 0, 16, drv.desc, drv.avail, drv.used);
            }
            MmioVersion::Legacy => {
                wr(&mut d, regs::STATUS, ACK_DRV);
                wr(&mut d, regs::QUEUE_NUM, 16);
                wr(&mut d, regs::QUEUE_PFN, 4);
            }
        }
        wr(&mut d, regs::STATUS, ACK_DRV | FEAT_OK | DRV_OK);
        assert!(d.is_live() && d.queue(0).unwrap().ready, "{version:?}");
        let before = observe(&d);
        // Miri takes every fifth offset (every alignment, a fifth of the registers).
        for off in (0..regs::CONFIG).step_by(if cfg!(miri) { 5 } else { 1 }) {
            for width in [0u8, 1, 2, 3, 4, 8, 16] {
                let valid = width == 4 && off % 4 == 0;
                let v = d.read(off, width);
                if valid {
                    assert_eq!(v, u64::from(rd(&d, off)));
                    assert!(v <= u64::from(u32::MAX), "a 32-bit register at {off:#x}");
                    continue;
                }
                assert_eq!(v, 0, "{version:?} read {off:#x} width {width}");
                for value in [0, u64::MAX, 0xF, 1] {
                    let _ = d.write(off, width, value);
                }
                assert_eq!(
                    observe(&d),
                    before,
                    "{version:?} write {off:#x} width {width} took effect"
                );
            }
        }
        // The value's bytes above the width are ignored: the low 32 bits of this STATUS
        // write are 0, a reset (the upper half is not "a non-zero status").
        let _ = d.write(regs::STATUS, 4, 0xFFFF_FFFF_0000_0000);
        assert_eq!(rd(&d, regs::STATUS), 0, "{version:?}");
        // Device configuration: the image is CONFIG (8 bytes) followed by zeros.
        let image = |at: u64, n: u64| -> u64 {
            (0..n).fold(0, |acc, k| {
                let b = CONFIG.get((at + k) as usize).copied().unwrap_or(0);
                acc | u64::from(b) << (8 * k)
            })
        };
        if version == MmioVersion::V2 {
            assert_eq!(negotiate(&mut d, V1) & FEAT_OK, FEAT_OK);
        }
        for at in 0..16u64 {
            for width in [0u8, 1, 2, 3, 4, 8, 16] {
                let ok = matches!(width, 1 | 2 | 4 | 8);
                let want = if ok { image(at, u64::from(width)) } else { 0 };
                assert_eq!(
                    d.read(regs::CONFIG + at, width),
                    want,
                    "{version:?} config {at:#x} width {width}"
                );
                let writes = d.device().config_writes.len();
                let _ = d.write(regs::CONFIG + at, width, 0x0807_0605_0403_0201);
                let got = &d.device().config_writes[writes..];
                if ok {
                    let bytes: Vec<u8> = (1..=width).collect();
                    assert_eq!(got, [(at as u32, bytes)], "{version:?} {at:#x}/{width}");
                } else {
                    assert!(got.is_empty(), "{version:?} config width {width} written");
                }
            }
        }
    }
}
