//! An adversarial pass over the virtio-mmio transport (version 2 and legacy version 1) and the
//! transport core as MMIO reaches it, written as an outside red team would: every register at
//! every offset and width in every device status, read-only and write-only registers, queue
//! programming with hostile sizes and addresses (legacy page sizes and alignments included),
//! status writes out of order, resets with chains in flight, feature negotiation with unoffered
//! bits, per-queue reset, the configuration generation, save/restore after every access of a
//! session and fed hostile bytes, and a long random walk with invariants after each access.
//!
//! Requirement IDs are the shared checklist's (MMIO-, INIT-, FEAT-, STAT-, LEG-); H-numbers
//! are `hostile-inputs.md`'s. Guest RAM is map M0: `[0, 1 MiB)`, a hole, `[2 MiB, 3 MiB)`.

use virtq::snapshot::StateError;
use virtq::transport::mmio::{INT_CONFIG, INT_VRING, MAGIC, MmioOutcome, MmioVersion, regs};
use virtq::transport::{
    DeviceId, MmioTransport, NotifyReport, QueueSetupError, Queues, VirtioDevice, config_read,
};
use virtq::{Completion, Features, GuestMemory};
use virtq_testkit::{SplitDriver, TestMemory};

/// A device with queues 0 and 1 (16 entries each) in a transport with room for 4, an 8-byte
/// configuration, and a record of what the transport asked of it.
#[derive(Debug, Default)]
struct Probe {
    features: u64,
    notified: u64,
    config_writes: u64,
    resets: u64,
    queue_resets: Vec<u16>,
    activated: u64,
}

const CONFIG: [u8; 8] = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];
const QMAX: u16 = 16;

impl VirtioDevice for Probe {
    fn device_id(&self) -> DeviceId {
        DeviceId(42)
    }
    fn device_features(&self) -> Features {
        Features::from_bits_retain(self.features)
    }
    fn queue_max_size(&self, index: u16) -> u16 {
        if index < 2 { QMAX } else { 0 }
    }
    fn read_config(&self, offset: u32, data: &mut [u8]) {
        config_read(&CONFIG, offset, data);
    }
    fn write_config(&mut self, _offset: u32, _data: &[u8]) {
        self.config_writes += 1;
    }
    fn activate(&mut self, _negotiated: Features) {
        self.activated += 1;
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
        self.notified += 1;
        match queues.get(index) {
            Some(mut q) => q.drain(mem, 64, |_| Completion::Used(0)).into(),
            None => NotifyReport::IDLE,
        }
    }
}

type Dev<'m> = MmioTransport<Probe, &'m TestMemory, 4>;

const V1: u64 = Features::VERSION_1.bits();
const RESET_F: u64 = Features::RING_RESET.bits();
const EVENT_IDX: u64 = Features::EVENT_IDX.bits();
/// What the probe offers: a device bit, EVENT_IDX, RING_RESET (VERSION_1 comes from v2).
const OFFER: u64 = 1 | EVENT_IDX | RESET_F;
const ACK: u32 = 1;
const DRIVER: u32 = 2;
const DRV_OK: u32 = 4;
const FEAT_OK: u32 = 8;
const NEEDS_RESET: u32 = 64;
const FAILED: u32 = 128;
const WIDTHS: [u8; 8] = [0, 1, 2, 3, 4, 5, 8, 16];
const VALUES: [u64; 5] = [0, 1, 0x8000_0001, 0xFFFF_FFFF, u64::MAX];
const VERSIONS: [MmioVersion; 2] = [MmioVersion::V2, MmioVersion::Legacy];

/// Ring layout of queue 1 (queue 0 uses `SplitDriver::standard`): page-aligned in RAM1.
const Q1: (u64, u64, u64) = (0x20_0000, 0x20_1000, 0x20_2000);

fn dev(mem: &TestMemory, version: MmioVersion) -> Dev<'_> {
    let probe = Probe {
        features: OFFER,
        ..Probe::default()
    };
    MmioTransport::new(probe, mem, version)
}

fn rd(d: &Dev<'_>, off: u64) -> u32 {
    u32::try_from(d.read(off, 4)).expect("a 32-bit register")
}

fn wr(d: &mut Dev<'_>, off: u64, v: u32) -> MmioOutcome {
    d.write(off, 4, v.into())
}

fn status(d: &Dev<'_>) -> u32 {
    rd(d, regs::STATUS)
}

fn set_features(d: &mut Dev<'_>, f: u64) {
    let _ = wr(d, regs::DRIVER_FEATURES_SEL, 0);
    let _ = wr(d, regs::DRIVER_FEATURES, (f & 0xFFFF_FFFF) as u32);
    let _ = wr(d, regs::DRIVER_FEATURES_SEL, 1);
    let _ = wr(d, regs::DRIVER_FEATURES, (f >> 32) as u32);
}

/// Program queue `q` (v2 registers) without enabling it.
fn program(d: &mut Dev<'_>, q: u32, size: u32, (desc, avail, used): (u64, u64, u64)) {
    let _ = wr(d, regs::QUEUE_SEL, q);
    let _ = wr(d, regs::QUEUE_NUM, size);
    for (lo, v) in [
        (regs::QUEUE_DESC_LOW, desc),
        (regs::QUEUE_DRIVER_LOW, avail),
        (regs::QUEUE_DEVICE_LOW, used),
    ] {
        let _ = wr(d, lo, (v & 0xFFFF_FFFF) as u32);
        let _ = wr(d, lo + 4, (v >> 32) as u32);
    }
}

/// Enable queue `q` at `rings` in either version (legacy: `rings.0` must be a page number
/// times 4096 and the layout contiguous, so only `rings.0` is used).
fn enable(d: &mut Dev<'_>, q: u32, size: u32, rings: (u64, u64, u64)) {
    match d.version() {
        MmioVersion::V2 => {
            program(d, q, size, rings);
            let _ = wr(d, regs::QUEUE_READY, 1);
        }
        MmioVersion::Legacy => {
            let _ = wr(d, regs::QUEUE_SEL, q);
            let _ = wr(d, regs::QUEUE_NUM, size);
            let _ = wr(d, regs::QUEUE_PFN, u32::try_from(rings.0 / 4096).unwrap());
        }
    }
}

/// The device statuses the red team attacks from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    Reset,
    Ack,
    Driver,
    FeaturesOk,
    DriverOk,
    NeedsReset,
    Failed,
}

const ALL_AT: [At; 7] = [
    At::Reset,
    At::Ack,
    At::Driver,
    At::FeaturesOk,
    At::DriverOk,
    At::NeedsReset,
    At::Failed,
];

/// Queue 0's rings for a legacy device: one contiguous block at page 4 (16 entries: desc 256
/// bytes, avail 38, used at the next page).
const LEGACY_PFN: u32 = 4;

/// A transport of `version` brought to `at` by a well-behaved driver. From DRIVER_OK on, queue 0
/// is live at `drv`'s rings (legacy: at page [`LEGACY_PFN`]). NEEDS_RESET: queue 1 refused on
/// enable after DRIVER_OK. FAILED: set after DRIVER_OK.
fn at<'m>(mem: &'m TestMemory, version: MmioVersion, at: At, drv: &SplitDriver<'_>) -> Dev<'m> {
    let mut d = dev(mem, version);
    let legacy = version == MmioVersion::Legacy;
    if at == At::Reset {
        return d;
    }
    let _ = wr(&mut d, regs::STATUS, ACK);
    if at == At::Ack {
        return d;
    }
    let _ = wr(&mut d, regs::STATUS, ACK | DRIVER);
    if at == At::Driver {
        return d;
    }
    set_features(&mut d, OFFER | if legacy { 0 } else { V1 });
    if !legacy {
        let _ = wr(&mut d, regs::STATUS, ACK | DRIVER | FEAT_OK);
        assert_eq!(status(&d), ACK | DRIVER | FEAT_OK);
    }
    if at == At::FeaturesOk {
        return d;
    }
    if legacy {
        enable(&mut d, 0, 16, (u64::from(LEGACY_PFN) * 4096, 0, 0));
    } else {
        enable(&mut d, 0, 16, (drv.desc, drv.avail, drv.used));
    }
    assert_eq!(d.queue_setup_error(0), None);
    let s = status(&d);
    let _ = wr(&mut d, regs::STATUS, s | DRV_OK);
    assert!(d.is_live(), "{version:?}");
    match at {
        At::NeedsReset => {
            enable(&mut d, 1, 3, (0x20_0000, 0x20_1000, 0x20_2000));
            assert!(d.queue_setup_error(1).is_some());
            assert_ne!(status(&d) & NEEDS_RESET, 0);
            let _ = wr(&mut d, regs::INTERRUPT_ACK, INT_CONFIG);
        }
        At::Failed => {
            let s = status(&d);
            let _ = wr(&mut d, regs::STATUS, s | FAILED);
            assert!(!d.is_live());
        }
        _ => {}
    }
    d
}

/// The transport's saved state: everything the transport keeps.
fn save(d: &Dev<'_>) -> Vec<u8> {
    let mut s = vec![0u8; d.state_len()];
    let n = d.save_into(&mut s).expect("save");
    s.truncate(n);
    s
}

/// A legacy queue 0 layout's used-ring address (page [`LEGACY_PFN`], 16 entries, align 4096).
const LEGACY_USED: u64 = (LEGACY_PFN as u64 + 1) * 4096;

/// The invariants every access keeps (whatever the driver did): the line is the level of
/// `InterruptStatus` (MMIO-03) and only bits 0 and 1 are ever set (MMIO-02); the identity
/// registers are constant; the status is a combination the state machine allows; a refused or
/// broken queue means DEVICE_NEEDS_RESET (MMIO-16, INIT-10); the negotiated set is a subset
/// of the offered one.
fn invariants(d: &Dev<'_>, out: &MmioOutcome, ctx: &dyn std::fmt::Debug) {
    let int = rd(d, regs::INTERRUPT_STATUS);
    assert_eq!(out.irq, int != 0, "{ctx:?}: line vs InterruptStatus");
    assert_eq!(d.interrupt_asserted(), int != 0, "{ctx:?}");
    assert_eq!(int & !(INT_VRING | INT_CONFIG), 0, "{ctx:?}: MMIO-02");
    assert_eq!(rd(d, regs::MAGIC_VALUE), MAGIC, "{ctx:?}");
    assert_eq!(rd(d, regs::DEVICE_ID), 42, "{ctx:?}");
    let v = match d.version() {
        MmioVersion::V2 => 2,
        MmioVersion::Legacy => 1,
    };
    assert_eq!(rd(d, regs::VERSION), v, "{ctx:?}");
    let s = status(d);
    assert_eq!(s & 0x30, 0, "{ctx:?}: reserved / SUSPEND status bits");
    if s & FEAT_OK != 0 {
        assert_eq!(
            s & (ACK | DRIVER),
            ACK | DRIVER,
            "{ctx:?}: FEATURES_OK early"
        );
    }
    if s & DRV_OK != 0 {
        let needs = if v == 2 { FEAT_OK } else { ACK | DRIVER };
        assert_eq!(s & needs, needs, "{ctx:?}: DRIVER_OK early");
    }
    let offered = d.offered_features().bits();
    assert_eq!(d.negotiated_features().bits() & !offered, 0, "{ctx:?}");
    for q in 0..4u16 {
        let broken = d.queue(q).is_some_and(|q| q.ready && q.is_broken());
        if broken || d.queue_setup_error(q).is_some() {
            assert_ne!(
                s & NEEDS_RESET,
                0,
                "{ctx:?}: queue {q} dead without NEEDS_RESET"
            );
        }
    }
    // A config interrupt only once the driver went live (STAT-09 is the only source before a
    // device-side change, and both need DRIVER_OK); a used-buffer one only with a live device.
    if int & INT_CONFIG != 0 {
        assert_ne!(s & DRV_OK, 0, "{ctx:?}: config interrupt before DRIVER_OK");
    }
    if int & INT_VRING != 0 {
        let needs = if v == 2 { DRV_OK } else { ACK | DRIVER };
        assert_eq!(
            s & needs,
            needs,
            "{ctx:?}: used interrupt before the device was usable"
        );
    }
}

// ---- restore: states no session reaches ---------------------------------------------------

/// Offsets inside an MMIO state: the 16-byte header, the 28-byte register block, 8 bytes per
/// queue of legacy registers, then the core: 32 bytes of fields, then per queue 44 bytes of
/// registers and the queue's state.
const HDR: usize = 16;
const FIELDS: usize = 28;
const LEGACY: usize = HDR + FIELDS;
const CORE: usize = LEGACY + 8 * 4;
const CORE_STATUS: usize = CORE;
const CORE_DMA: usize = CORE + 3;
const QREGS0: usize = CORE + 32;
const INT_STATUS: usize = HDR + 4;

/// Restore `bytes` into a fresh transport; the error if refused (after checking nothing
/// changed), else the transport.
fn try_restore<'m>(
    mem: &'m TestMemory,
    version: MmioVersion,
    bytes: &[u8],
) -> Result<Dev<'m>, StateError> {
    let mut t = dev(mem, version);
    let before = save(&t);
    match t.restore(bytes) {
        Ok(()) => Ok(t),
        Err(e) => {
            assert_eq!(save(&t), before, "a refused restore changed the transport");
            Err(e)
        }
    }
}

/// MMIO has no bus mastering to turn off: its core always may do DMA. A state that says
/// otherwise comes from no MMIO session (it would silently stop every queue forever: notifies
/// ignored, DRIVER_OK scanning nothing), so restore refuses it, in both versions.
#[test]
fn restore_refuses_dma_off_on_mmio() {
    let mem = TestMemory::m0();
    for version in VERSIONS {
        let drv = SplitDriver::standard(&mem, 16);
        let d = at(&mem, version, At::DriverOk, &drv);
        let mut s = save(&d);
        assert_eq!(s[CORE_DMA], 1, "{version:?}: the field is where we think");
        s[CORE_DMA] = 0;
        assert!(
            try_restore(&mem, version, &s).is_err(),
            "{version:?}: dma off accepted"
        );
    }
}

/// `InterruptStatus` bits only exist once the driver went live (config changes and
/// NEEDS_RESET notify only with DRIVER_OK set; used buffers need a live device), and a reset
/// clears them (MMIO-06). A state with the line asserted on a device in reset is refused.
#[test]
fn restore_refuses_interrupt_status_before_the_device_is_usable() {
    let mem = TestMemory::m0();
    for version in VERSIONS {
        let drv = SplitDriver::standard(&mem, 16);
        for (start, int) in [
            (At::Reset, INT_VRING),
            (At::Reset, INT_CONFIG),
            (At::Ack, INT_VRING),
            (At::Driver, INT_CONFIG),
            (At::FeaturesOk, INT_CONFIG | INT_VRING),
        ] {
            let d = at(&mem, version, start, &drv);
            let mut s = save(&d);
            assert_eq!(s[INT_STATUS], 0);
            s[INT_STATUS] = u8::try_from(int).unwrap();
            let r = try_restore(&mem, version, &s);
            assert!(
                r.is_err(),
                "{version:?} {start:?}: InterruptStatus {int} accepted"
            );
        }
    }
}

/// A refused queue always raised DEVICE_NEEDS_RESET (MMIO-16), and a queue whose breakage was
/// reported did too: a state that records either without the status bit is refused (else a
/// later breakage would never be reported, since the queue counts as reported already).
#[test]
fn restore_refuses_refused_or_reported_queue_without_needs_reset() {
    let mem = TestMemory::m0();
    for version in VERSIONS {
        let drv = SplitDriver::standard(&mem, 16);
        let d = at(&mem, version, At::DriverOk, &drv);
        let s = save(&d);
        assert_eq!(s[CORE_STATUS] & 64, 0);
        // Queue 0's registers: has_num, enabled, reported, kicked, refused.
        let mut reported = s.clone();
        assert_eq!(reported[QREGS0 + 1], 1, "queue 0 enabled");
        reported[QREGS0 + 2] = 1;
        assert!(
            try_restore(&mem, version, &reported).is_err(),
            "{version:?}: reported without NEEDS_RESET"
        );
        // Queue 1 (not enabled) refused: the state's queue 1 registers follow queue 0's state.
        let q0_len = usize::from(u16::from_le_bytes([s[QREGS0 + 16], s[QREGS0 + 17]]));
        let q1 = QREGS0 + 44 + q0_len;
        assert_eq!(s[q1 + 1], 0, "queue 1 not enabled");
        let mut refused = s.clone();
        refused[q1 + 4] = 9; // FeaturesNotAccepted: needs no enable, no ring
        let r = try_restore(&mem, version, &refused);
        assert!(r.is_err(), "{version:?}: refused without NEEDS_RESET");
    }
}

/// A version 2 transport never writes the legacy registers: their power-on values are the
/// only ones a v2 state holds.
#[test]
fn restore_refuses_legacy_registers_in_a_v2_state() {
    let mem = TestMemory::m0();
    let drv = SplitDriver::standard(&mem, 16);
    let d = at(&mem, MmioVersion::V2, At::DriverOk, &drv);
    let s = save(&d);
    for (at, value) in [
        (HDR + 20, 0x20u8),     // GuestPageSize 4096 -> 8192 (byte 1 of the field)
        (LEGACY + 8, 7),        // queue 1's QueuePFN
        (LEGACY + 4 + 1, 0x20), // queue 0's QueueAlign 4096 -> 8192
    ] {
        let mut b = s.clone();
        if at == HDR + 20 {
            b[at + 1] = value;
        } else {
            b[at] = value;
        }
        assert_ne!(b, s);
        assert!(
            try_restore(&mem, MmioVersion::V2, &b).is_err(),
            "legacy field at {at} accepted in a v2 state"
        );
    }
}
