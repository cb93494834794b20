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

use virtq::snapshot::{StateError, StateField};
use virtq::transport::mmio::{INT_CONFIG, INT_VRING, MAGIC, MmioOutcome, MmioVersion, regs};
use virtq::transport::{
    DeviceId, MmioTransport, NotifyReport, QueueSetupError, Queues, VirtioDevice, config_read,
};
use virtq::{Completion, Features, GuestMemory};
use virtq_testkit::{SplitDriver, TestMemory};

/// A device with queues 0 and 1 (maximum 16 and 20 entries) in a transport with room for 4, an
/// 8-byte configuration, both ring formats, and a record of what the transport asked of it.
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
const QMAX1: u16 = 20;

impl VirtioDevice for Probe {
    // Serves both ring formats; RING_PACKED is offered only when `features` lists it.
    const PACKED_RING: bool = true;
    fn device_id(&self) -> DeviceId {
        DeviceId(42)
    }
    fn device_features(&self) -> Features {
        Features::from_bits_retain(self.features)
    }
    fn queue_max_size(&self, index: u16) -> u16 {
        // Queue 1's maximum is not a power of two: a split ring shows 16, a packed one 20.
        match index {
            0 => QMAX,
            1 => QMAX1,
            _ => 0,
        }
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
    dev_offering(mem, version, OFFER)
}

fn dev_offering(mem: &TestMemory, version: MmioVersion, features: u64) -> Dev<'_> {
    let probe = Probe {
        features,
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
        let broken = if d.is_packed() {
            d.packed_queue(q).is_some_and(|q| q.ready && q.is_broken())
        } else {
            d.queue(q).is_some_and(|q| q.ready && q.is_broken())
        };
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

/// A deferred kick is only ever recorded for a queue that is ready (a notify for any other
/// is ignored, MMIO-27; stopping or resetting a queue drops its kick): a state with a kick on
/// a queue that is not enabled is refused, one on the enabled queue is accepted.
#[test]
fn restore_refuses_a_kick_on_a_queue_that_is_not_ready() {
    let mem = TestMemory::m0();
    for version in VERSIONS {
        let drv = SplitDriver::standard(&mem, 16);
        let d = at(&mem, version, At::DriverOk, &drv);
        let s = save(&d);
        let mut on0 = s.clone();
        on0[QREGS0 + 3] = 1;
        assert!(
            try_restore(&mem, version, &on0).is_ok(),
            "{version:?}: queue 0"
        );
        let q0_len = usize::from(u16::from_le_bytes([s[QREGS0 + 16], s[QREGS0 + 17]]));
        let q1 = QREGS0 + 44 + q0_len;
        let mut on1 = s.clone();
        on1[q1 + 3] = 1;
        assert!(
            try_restore(&mem, version, &on1).is_err(),
            "{version:?}: kick on a disabled queue accepted"
        );
    }
}

/// A legacy queue in use sits where its `QueuePFN`, a page size (a power of two; the driver
/// may change `GuestPageSize` afterwards), its `QueueAlign` (frozen while in use) and its size
/// put it (LEG-07): a state whose page number or alignment does not give the queue's rings is
/// refused; one whose page number gives them with another page size is accepted.
#[test]
fn restore_refuses_a_legacy_queue_away_from_its_pfn() {
    let mem = TestMemory::m0();
    let drv = SplitDriver::standard(&mem, 16);
    let d = at(&mem, MmioVersion::Legacy, At::DriverOk, &drv);
    let s = save(&d);
    let pfn0 = LEGACY;
    assert_eq!(s[pfn0], LEGACY_PFN as u8, "queue 0's QueuePFN");
    let with = |at: usize, bytes: &[u8]| {
        let mut b = s.clone();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        b
    };
    // Page 8 of 2048 bytes is the same address: reachable (GuestPageSize 2048 at enable).
    assert!(try_restore(&mem, MmioVersion::Legacy, &with(pfn0, &[8])).is_ok());
    for (what, b) in [
        ("pfn 5", with(pfn0, &[5])),
        ("pfn 3", with(pfn0, &[3])),
        ("align 8192", with(pfn0 + 4, &[0, 0x20])),
        ("align 4", with(pfn0 + 4, &[4, 0])),
    ] {
        assert!(
            try_restore(&mem, MmioVersion::Legacy, &b).is_err(),
            "{what} accepted"
        );
    }
}

/// A queue that broke is reported (DEVICE_NEEDS_RESET) within the access that broke it, so a
/// saved broken queue is always marked reported. A state with a broken, unreported queue on a
/// device that `resume` will not run (FAILED) is refused: restored, it would hold a broken
/// queue without DEVICE_NEEDS_RESET.
#[test]
fn restore_refuses_a_broken_queue_not_reported() {
    let mem = TestMemory::m0();
    for version in VERSIONS {
        let drv = SplitDriver::standard(&mem, 16);
        let mut d = at(&mem, version, At::DriverOk, &drv);
        let avail = if version == MmioVersion::V2 {
            drv.avail
        } else {
            0x4100
        };
        mem.poke_u16(avail + 2, 100);
        let _ = wr(&mut d, regs::QUEUE_NOTIFY, 0);
        assert!(d.queue(0).unwrap().is_broken(), "{version:?}");
        let s = status(&d);
        assert_ne!(s & NEEDS_RESET, 0);
        let _ = wr(&mut d, regs::STATUS, s | FAILED);
        let mut b = save(&d);
        assert_eq!(b[QREGS0 + 2], 1, "reported");
        b[QREGS0 + 2] = 0;
        b[CORE_STATUS] &= !(NEEDS_RESET as u8);
        assert!(
            try_restore(&mem, version, &b).is_err(),
            "{version:?}: broken, unreported queue accepted"
        );
        mem.poke_u16(avail + 2, 0);
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

// ---- every register, every width, every status -------------------------------------------

/// Whether an aligned 32-bit read of `off` may return non-zero on `version` (the readable
/// registers of §4.2.2 / §4.2.4; everything else is write-only or undefined, MMIO-22).
fn readable(version: MmioVersion, off: u64) -> bool {
    let v2 = version == MmioVersion::V2;
    match off {
        regs::MAGIC_VALUE
        | regs::VERSION
        | regs::DEVICE_ID
        | regs::VENDOR_ID
        | regs::DEVICE_FEATURES
        | regs::QUEUE_NUM_MAX
        | regs::INTERRUPT_STATUS
        | regs::STATUS => true,
        regs::QUEUE_PFN => !v2,
        regs::QUEUE_READY
        | regs::SHM_LEN_LOW
        | regs::SHM_LEN_HIGH
        | regs::SHM_BASE_LOW
        | regs::SHM_BASE_HIGH
        | regs::QUEUE_RESET
        | regs::CONFIG_GENERATION => v2,
        _ => false,
    }
}

/// Whether an aligned 32-bit write of `off` may change the transport on `version`: the
/// writable registers (read-only and undefined offsets are ignored, MMIO-22).
fn writable(version: MmioVersion, off: u64) -> bool {
    let v2 = version == MmioVersion::V2;
    match off {
        regs::DEVICE_FEATURES_SEL
        | regs::DRIVER_FEATURES
        | regs::DRIVER_FEATURES_SEL
        | regs::QUEUE_SEL
        | regs::QUEUE_NUM
        | regs::QUEUE_NOTIFY
        | regs::INTERRUPT_ACK
        | regs::STATUS => true,
        regs::GUEST_PAGE_SIZE | regs::QUEUE_ALIGN | regs::QUEUE_PFN => !v2,
        regs::QUEUE_READY
        | regs::QUEUE_DESC_LOW
        | regs::QUEUE_DESC_HIGH
        | regs::QUEUE_DRIVER_LOW
        | regs::QUEUE_DRIVER_HIGH
        | regs::QUEUE_DEVICE_LOW
        | regs::QUEUE_DEVICE_HIGH
        | regs::QUEUE_RESET => v2,
        _ => false,
    }
}

/// The device configuration bytes `[o, o + w)` as the driver must read them: the device's,
/// then 0 past its end (MMIO-23, MMIO-24).
fn config_bytes(o: u64, w: u8) -> u64 {
    let mut b = [0u8; 8];
    for (i, x) in b.iter_mut().take(usize::from(w)).enumerate() {
        *x = usize::try_from(o)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|j| CONFIG.get(j).copied())
            .unwrap_or(0);
    }
    u64::from_le_bytes(b)
}

/// Every offset of the window (and far past it) at every width {0,1,2,3,4,5,8,16} with
/// several values, from every device status, in both versions, each on a fresh transport:
/// reads of write-only and undefined registers and of invalid widths return 0, configuration
/// reads return exactly the device's bytes (0 past its end, at any offset up to 2^64 - 1);
/// writes at invalid widths, to read-only or undefined registers and to the configuration
/// change nothing the transport saves; and the access invariants hold after every write
/// (MMIO-02, MMIO-03, MMIO-21..24, STAT-10..13).
#[test]
fn every_offset_width_value_in_every_status_both_versions() {
    let mem = TestMemory::m0();
    let far = [
        0x1000u64,
        regs::CONFIG + 0xFFFF_FFF8,
        regs::CONFIG + 0xFFFF_FFFF,
        regs::CONFIG + 0x1_0000_0000,
        u64::MAX - 7,
        u64::MAX,
    ];
    let step = if cfg!(miri) { 7 } else { 1 };
    let mut changed = 0u32;
    for version in VERSIONS {
        for start in ALL_AT {
            let drv = SplitDriver::standard(&mem, 16);
            let offsets = (0..regs::CONFIG + 0x20).step_by(step).chain(far);
            for off in offsets {
                for w in WIDTHS {
                    let mut d = at(&mem, version, start, &drv);
                    let ctx = (version, start, off, w);
                    let r = d.read(off, w);
                    if off >= regs::CONFIG {
                        let exp = if matches!(w, 1 | 2 | 4 | 8) {
                            config_bytes(off - regs::CONFIG, w)
                        } else {
                            0
                        };
                        assert_eq!(r, exp, "{ctx:?}: config read");
                    } else if w != 4 || off % 4 != 0 || !readable(version, off) {
                        assert_eq!(r, 0, "{ctx:?}: read of a non-register");
                    } else {
                        assert!(r <= u64::from(u32::MAX), "{ctx:?}");
                    }
                    let before = save(&d);
                    let inert =
                        off >= regs::CONFIG || w != 4 || off % 4 != 0 || !writable(version, off);
                    for value in VALUES {
                        let out = d.write(off, w, value);
                        invariants(&d, &out, &(ctx, value));
                        if inert {
                            assert_eq!(save(&d), before, "{ctx:?} value {value:#x} took effect");
                        }
                    }
                    changed += u32::from(save(&d) != before);
                }
            }
        }
    }
    // The writable registers did take writes (the comparison can fail).
    assert!(changed > 100, "{changed}");
}

// ---- the status state machine ------------------------------------------------------------

/// The status a write of `value` must leave, from `old`, by the spec's rules as this red team
/// reads them (§2.1, §3.1.1, STAT-10..13, INIT-08, LEG-10): 0 resets; after FAILED only reset;
/// bits are sticky; DEVICE_NEEDS_RESET, SUSPEND and bit 5 are not the driver's; FEATURES_OK
/// needs ACKNOWLEDGE and DRIVER and a valid feature set; DRIVER_OK needs an
/// accepted FEATURES_OK (legacy: ACKNOWLEDGE and DRIVER).
fn expected_status(version: MmioVersion, old: u32, value: u32, features_valid: bool) -> u32 {
    if value == 0 {
        return 0;
    }
    if old & FAILED != 0 {
        return old;
    }
    let req = value & 0xFF;
    let mut new = old | (req & (ACK | DRIVER));
    let acked = new & (ACK | DRIVER) == ACK | DRIVER;
    if req & FEAT_OK != 0 && acked && features_valid {
        new |= FEAT_OK;
    }
    if req & DRV_OK != 0 {
        let ok = match version {
            MmioVersion::V2 => new & FEAT_OK != 0,
            MmioVersion::Legacy => acked,
        };
        if ok {
            new |= DRV_OK;
        }
    }
    new | (req & FAILED)
}

/// Every status byte (and values with upper bytes set) written from every status, in both
/// versions: the result is the state machine's; a write of 0 is a full reset (InterruptStatus
/// 0, every queue disabled, MMIO-06, LEG-09) and only a write of exactly 0 is.
#[test]
fn status_writes_from_every_status_stat10_to_13() {
    let mem = TestMemory::m0();
    let values = (0..=0xFFu32).chain([0x100, 0x1_0000, 0x8000_0000, 0xFFFF_FF00, 0x1_0003]);
    let values: Vec<u32> = values.collect();
    let (mut live, mut resets) = (0, 0);
    for version in VERSIONS {
        for start in ALL_AT {
            let drv = SplitDriver::standard(&mem, 16);
            for &value in &values {
                let mut d = at(&mem, version, start, &drv);
                let old = status(&d);
                let was_live = d.is_live();
                let out = wr(&mut d, regs::STATUS, value);
                let ctx = (version, start, value);
                invariants(&d, &out, &ctx);
                // The driver wrote its features (OFFER | VERSION_1) from FEATURES_OK on; before,
                // none, which a v2 device refuses (no VERSION_1) and legacy accepts.
                let valid = version == MmioVersion::Legacy
                    || !matches!(start, At::Reset | At::Ack | At::Driver);
                let exp = expected_status(version, old, value, valid);
                assert_eq!(status(&d), exp, "{ctx:?} from {old:#x}");
                if value == 0 {
                    resets += 1;
                    assert_eq!(rd(&d, regs::INTERRUPT_STATUS), 0, "{ctx:?}");
                    assert!(!out.irq);
                    for q in 0..2 {
                        let _ = wr(&mut d, regs::QUEUE_SEL, q);
                        assert_eq!(rd(&d, regs::QUEUE_READY), 0, "{ctx:?}");
                        assert_eq!(rd(&d, regs::QUEUE_PFN), 0, "{ctx:?}");
                        assert!(!d.queue(q as u16).unwrap().ready, "{ctx:?}");
                    }
                    assert_eq!(d.negotiated_features().bits(), 0, "{ctx:?}");
                    assert!(out.events.contains(virtq::transport::Events::DEVICE_RESET));
                } else {
                    assert!(
                        !out.events.contains(virtq::transport::Events::DEVICE_RESET),
                        "{ctx:?}"
                    );
                }
                live += u32::from(!was_live && d.is_live());
                // The device model learns its features when DRIVER_OK is newly set, once.
                let activated = u64::from(old & DRV_OK == 0 && exp & DRV_OK != 0);
                let base = u64::from(old & DRV_OK != 0);
                assert_eq!(d.device().activated, base + activated, "{ctx:?}");
            }
        }
    }
    assert!(live > 10 && resets == 14, "{live} {resets}");
}

// ---- queue programming --------------------------------------------------------------------

/// `QueueSel` past the queues the device has (2, 3: slots without a queue; 4 and up: past the
/// transport's array; 2^32 - 1): QueueNumMax and QueueReady read 0, and no queue register
/// write, enable, PFN, align, reset or notify of that index changes anything (MMIO-20,
/// MMIO-27, H9l), in every status.
#[test]
fn queue_sel_beyond_the_queues_changes_nothing_mmio20() {
    let mem = TestMemory::m0();
    for version in VERSIONS {
        for start in ALL_AT {
            let drv = SplitDriver::standard(&mem, 16);
            for sel in [2u32, 3, 4, 0xFFFF, 0x1_0000, u32::MAX] {
                let mut d = at(&mem, version, start, &drv);
                let _ = wr(&mut d, regs::QUEUE_SEL, sel);
                let before = save(&d);
                assert_eq!(rd(&d, regs::QUEUE_NUM_MAX), 0);
                assert_eq!(rd(&d, regs::QUEUE_READY), 0);
                assert_eq!(rd(&d, regs::QUEUE_PFN), 0);
                mem.start_recording();
                for off in [
                    regs::QUEUE_NUM,
                    regs::QUEUE_ALIGN,
                    regs::QUEUE_DESC_LOW,
                    regs::QUEUE_DESC_HIGH,
                    regs::QUEUE_DRIVER_LOW,
                    regs::QUEUE_DEVICE_LOW,
                    regs::QUEUE_PFN,
                    regs::QUEUE_READY,
                    regs::QUEUE_RESET,
                ] {
                    for v in [1u32, 16, 0x1000, u32::MAX] {
                        let out = wr(&mut d, off, v);
                        invariants(&d, &out, &(version, start, sel, off, v));
                    }
                }
                // Only bits 0-15 name the queue (MMIO-27): 0x1_0000 is queue 0.
                let out = wr(&mut d, regs::QUEUE_NOTIFY, sel | 2);
                invariants(&d, &out, &(version, start, sel));
                assert!(mem.take_log().is_empty(), "{version:?} {start:?} {sel}");
                assert_eq!(save(&d), before, "{version:?} {start:?} {sel}");
                assert_eq!(out.events, virtq::transport::Events::empty());
            }
        }
    }
}

/// Once a queue is enabled, its size and ring addresses are frozen (MMIO-17, H9j): writes of
/// `QueueNum` (0, smaller, larger, huge), of every address half, and (legacy) `QueueAlign`
/// and a second non-zero `QueuePFN` are ignored, and the queue keeps running on its rings.
#[test]
fn queue_registers_frozen_after_enable_mmio17() {
    let mem = TestMemory::m0();
    for version in VERSIONS {
        let mut drv = SplitDriver::standard(&mem, 16);
        let mut d = at(&mem, version, At::DriverOk, &drv);
        if version == MmioVersion::Legacy {
            drv = SplitDriver::new(&mem, 16, LEGACY_PFN as u64 * 4096, 0x4100, LEGACY_USED);
        }
        let _ = wr(&mut d, regs::QUEUE_SEL, 0);
        let before = save(&d);
        for (off, v) in [
            (regs::QUEUE_NUM, 0u32),
            (regs::QUEUE_NUM, 8),
            (regs::QUEUE_NUM, 32),
            (regs::QUEUE_NUM, u32::MAX),
            (regs::QUEUE_DESC_LOW, 0x8000),
            (regs::QUEUE_DESC_HIGH, 1),
            (regs::QUEUE_DRIVER_LOW, 0x9000),
            (regs::QUEUE_DRIVER_HIGH, 1),
            (regs::QUEUE_DEVICE_LOW, 0xA000),
            (regs::QUEUE_DEVICE_HIGH, 1),
            (regs::QUEUE_ALIGN, 16),
            (regs::QUEUE_ALIGN, 8192),
            (regs::QUEUE_PFN, 9),
            (regs::QUEUE_READY, 1),
        ] {
            let out = wr(&mut d, off, v);
            invariants(&d, &out, &(version, off, v));
            assert_eq!(save(&d), before, "{version:?} {off:#x} = {v:#x}");
        }
        // Still the same rings: a request completes on them.
        drv.add_chain(&[(0x8000, 16, false)]).unwrap();
        let out = wr(&mut d, regs::QUEUE_NOTIFY, 0);
        assert_eq!(drv.used_idx(), 1, "{version:?}");
        assert!(
            out.irq
                && out
                    .raised
                    .contains(virtq::transport::InterruptStatus::USED_BUFFER)
        );
    }
}

/// `QueueReady = 1` with a hostile queue (H9a–i, H9n; MMIO-16): the enable is refused with the
/// right reason, `QueueReady` reads back 1, DEVICE_NEEDS_RESET is set (with a configuration
/// interrupt once DRIVER_OK is set, STAT-09), guest memory is never touched, by the enable or
/// by a later notify; the driver can then stop the queue and enable good rings.
#[test]
fn queue_ready_with_hostile_rings_is_refused_untouched_mmio16() {
    use QueueSetupError as E;
    let mem = TestMemory::m0();
    let (d0, a0, u0) = (0x1000u64, 0x2000u64, 0x3000u64);
    type Case = (u32, (u64, u64, u64), fn(QueueSetupError) -> bool);
    let cases: [Case; 14] = [
        (0, (d0, a0, u0), |e| e == E::SizeZero),
        (3, (d0, a0, u0), |e| {
            matches!(e, E::SizeNotPowerOfTwo { size: 3 })
        }),
        (32, (d0, a0, u0), |e| {
            matches!(e, E::SizeTooLarge { size: 32 })
        }),
        (0x1_0010, (d0, a0, u0), |e| {
            matches!(e, E::SizeTooLarge { .. })
        }),
        (u32::MAX, (d0, a0, u0), |e| {
            matches!(e, E::SizeTooLarge { .. })
        }),
        (16, (0x1008, a0, u0), |e| e == E::Misaligned),
        (16, (d0, 0x2001, u0), |e| e == E::Misaligned),
        (16, (d0, a0, 0x3002), |e| e == E::Misaligned),
        (16, (0, a0, u0), |e| e == E::Misaligned),
        (16, (0x10_0000, a0, u0), |e| e == E::OutsideRam), // the hole
        (16, (d0, a0, 0xF_FFC0), |e| e == E::OutsideRam),  // used ring runs off RAM0
        (16, (d0, a0, 0xFFFF_FFFF_FFFF_FFC0), |e| {
            e == E::AddressOverflow
        }),
        (16, (d0, d0 + 0x80, u0), |e| e == E::Overlap),
        (16, (d0, a0, a0 + 0x10), |e| e == E::Overlap),
    ];
    for start in [At::FeaturesOk, At::DriverOk] {
        for (i, &(size, rings, want)) in cases.iter().enumerate() {
            let drv = SplitDriver::standard(&mem, 16);
            let mut d = at(&mem, MmioVersion::V2, start, &drv);
            program(&mut d, 1, size, rings);
            mem.start_recording();
            let out = wr(&mut d, regs::QUEUE_READY, 1);
            invariants(&d, &out, &(start, i));
            let err = d
                .queue_setup_error(1)
                .unwrap_or_else(|| panic!("{start:?} case {i}: accepted"));
            assert!(want(err), "case {i}: {err:?}");
            assert_eq!(rd(&d, regs::QUEUE_READY), 1, "case {i}: reads back 1");
            assert_ne!(status(&d) & NEEDS_RESET, 0, "case {i}");
            assert!(out.events.contains(virtq::transport::Events::NEEDS_RESET));
            assert!(out.events.contains(virtq::transport::Events::QUEUE_REFUSED));
            let live = start == At::DriverOk;
            assert_eq!(
                rd(&d, regs::INTERRUPT_STATUS) & INT_CONFIG != 0,
                live,
                "case {i}"
            );
            let _ = wr(&mut d, regs::QUEUE_NOTIFY, 1);
            assert!(mem.take_log().is_empty(), "case {i}: refused queue touched");
            assert!(!d.queue(1).unwrap().ready);
            // Stop, reprogram at good rings, enable: accepted (NEEDS_RESET stays).
            let _ = wr(&mut d, regs::QUEUE_READY, 0);
            assert_eq!(rd(&d, regs::QUEUE_READY), 0);
            assert_eq!(d.queue_setup_error(1), None);
            program(&mut d, 1, 16, Q1);
            let _ = wr(&mut d, regs::QUEUE_READY, 1);
            assert_eq!(d.queue_setup_error(1), None, "case {i}");
            assert!(d.queue(1).unwrap().ready);
        }
    }
}

/// Legacy `GuestPageSize`, `QueueAlign` and `QueuePFN` with hostile values (LEG-03..07, H9k,
/// H9i): a page size of 0 or not a power of two and an alignment of 0 or not a power of two
/// are ignored (the earlier value stays); huge page sizes and page numbers put the rings past
/// guest RAM and are refused without overflow or any memory access; small power-of-two
/// alignments that misalign the used ring are refused; and the layout the driver meant is
/// accepted after every ignored write.
#[test]
fn legacy_page_size_align_and_pfn_hostile_values() {
    let mem = TestMemory::m0();
    let drv = SplitDriver::standard(&mem, 16);
    let enable_at = |page: Option<u32>, align: Option<u32>, pfn: u32| {
        let mut d = at(&mem, MmioVersion::Legacy, At::Driver, &drv);
        if let Some(p) = page {
            let _ = wr(&mut d, regs::GUEST_PAGE_SIZE, p);
        }
        let _ = wr(&mut d, regs::QUEUE_SEL, 0);
        let _ = wr(&mut d, regs::QUEUE_NUM, 16);
        if let Some(a) = align {
            let _ = wr(&mut d, regs::QUEUE_ALIGN, a);
        }
        mem.start_recording();
        let out = wr(&mut d, regs::QUEUE_PFN, pfn);
        invariants(&d, &out, &(page, align, pfn));
        assert!(mem.take_log().is_empty(), "enable reads no ring");
        d
    };
    // Ignored values: the default 4096 stays, so page 4 is at 0x4000.
    for page in [0u32, 3, 4095, 4097, 0xFFFF_FFFF, 0x8000_0001] {
        let d = enable_at(Some(page), None, LEGACY_PFN);
        assert_eq!(d.queue_setup_error(0), None, "page {page:#x}");
        assert_eq!(
            d.queue(0).unwrap().desc_table_addr.0,
            0x4000,
            "page {page:#x}"
        );
    }
    for align in [0u32, 3, 4095, 0x8000_0001, u32::MAX] {
        let d = enable_at(None, Some(align), LEGACY_PFN);
        assert_eq!(d.queue_setup_error(0), None, "align {align:#x}");
        assert_eq!(
            d.queue(0).unwrap().used_ring_addr.0,
            LEGACY_USED,
            "align {align:#x}"
        );
    }
    // Alignments that are powers of two: 4 and up give a 4-aligned used ring.
    for (align, ok) in [
        (1u32, false),
        (2, false),
        (4, true),
        (64, true),
        (1 << 31, false),
    ] {
        let d = enable_at(None, Some(align), LEGACY_PFN);
        assert_eq!(d.queue_setup_error(0).is_none(), ok, "align {align:#x}");
        assert_eq!(status(&d) & NEEDS_RESET != 0, !ok, "align {align:#x}");
        assert_eq!(
            rd(&d, regs::QUEUE_PFN),
            LEGACY_PFN,
            "PFN reads back (LEG-05)"
        );
    }
    // Huge page sizes and page numbers: far past RAM, refused (never an overflow panic).
    for (page, pfn) in [
        (1u32 << 31, 1u32),
        (1 << 31, u32::MAX),
        (4096, u32::MAX),
        (4096, 0x100), // the hole at 1 MiB
        (1, 0x4000),   // byte address 0x4000: fine
        (1, 0x4001),   // misaligned descriptor table
        (2, 0x7FFF_FFFF),
    ] {
        let d = enable_at(Some(page), None, pfn);
        let err = d.queue_setup_error(0);
        let expect_ok = page == 1 && pfn == 0x4000;
        assert_eq!(
            err.is_none(),
            expect_ok,
            "page {page:#x} pfn {pfn:#x}: {err:?}"
        );
    }
    // A size the queue cannot have, through the legacy path.
    for num in [0u32, 3, 32, u32::MAX] {
        let mut d = at(&mem, MmioVersion::Legacy, At::Driver, &drv);
        let _ = wr(&mut d, regs::QUEUE_NUM, num);
        let _ = wr(&mut d, regs::QUEUE_PFN, LEGACY_PFN);
        assert!(d.queue_setup_error(0).is_some(), "num {num}");
        assert!(!d.queue(0).unwrap().ready);
    }
}

// ---- reset, features, interrupts, per-queue reset, configuration --------------------------

/// A status write of 0 with chains in flight (H19, STAT-04..06, MMIO-06): in deferred mode
/// with a kick pending and in inline mode with buffers queued and not yet kicked, the reset
/// completes inside the write; from then on no kick is reported, processing and polling touch
/// no guest memory, no interrupt is raised, and the used ring is not written. The driver can
/// then initialize again on fresh rings.
#[test]
fn reset_with_chains_in_flight_touches_nothing_after_h19() {
    use virtq::transport::NotifyMode;
    let mem = TestMemory::m0();
    for version in VERSIONS {
        for deferred in [false, true] {
            let mut drv = SplitDriver::standard(&mem, 16);
            let mut d = at(&mem, version, At::DriverOk, &drv);
            if version == MmioVersion::Legacy {
                drv = SplitDriver::new(&mem, 16, u64::from(LEGACY_PFN) * 4096, 0x4100, LEGACY_USED);
            }
            if deferred {
                d.set_notify_mode(NotifyMode::Deferred);
            }
            for i in 0..3u64 {
                drv.add_chain(&[(0x8000 + i * 0x100, 16, false)]).unwrap();
            }
            if deferred {
                let out = wr(&mut d, regs::QUEUE_NOTIFY, 0);
                assert!(out.events.contains(virtq::transport::Events::KICKS));
            }
            let used_before = drv.used_idx();
            let out = wr(&mut d, regs::STATUS, 0);
            assert!(!out.irq && out.raised.is_empty(), "{version:?} {deferred}");
            assert!(!out.events.contains(virtq::transport::Events::KICKS));
            assert_eq!(status(&d), 0);
            mem.start_recording();
            let mut kicks = Vec::new();
            d.take_kicks(|q| kicks.push(q));
            assert!(
                kicks.is_empty(),
                "{version:?} {deferred}: kick survived reset"
            );
            for out in [
                d.process_queue(0),
                d.poll(),
                wr(&mut d, regs::QUEUE_NOTIFY, 0),
            ] {
                assert!(!out.irq && out.raised.is_empty());
            }
            assert!(
                mem.take_log().is_empty(),
                "{version:?} {deferred}: touched after reset"
            );
            assert_eq!(drv.used_idx(), used_before);
            // Initialize again: a fresh ring works.
            let drv2 = SplitDriver::standard(&mem, 16);
            let d2 = at(&mem, version, At::DriverOk, &drv2);
            assert!(d2.is_live());
            assert_eq!(d.device().resets, 1);
        }
    }
}

/// FEATURES_OK with each single bit the device does not offer added (FEAT-05, FEAT-08,
/// INIT-04): refused, nothing negotiated, DRIVER_OK then does not take (INIT-08). Each offered
/// bit is accepted. Without VERSION_1 a v2 device refuses. Words past 1 are dropped (FEAT-11).
/// Legacy: the negotiated set at DRIVER_OK is what the driver wrote that was offered.
#[test]
fn features_ok_with_unoffered_bits_feat08() {
    let mem = TestMemory::m0();
    let probe = dev(&mem, MmioVersion::V2);
    let offered = probe.offered_features().bits();
    assert_eq!(offered, OFFER | V1);
    for bit in 0..64 {
        let f = V1 | (1u64 << bit);
        let mut d = at(
            &mem,
            MmioVersion::V2,
            At::Driver,
            &SplitDriver::standard(&mem, 16),
        );
        set_features(&mut d, f);
        let _ = wr(&mut d, regs::DRIVER_FEATURES_SEL, 2);
        let _ = wr(&mut d, regs::DRIVER_FEATURES, u32::MAX);
        let _ = wr(&mut d, regs::STATUS, ACK | DRIVER | FEAT_OK);
        let ok = f & !offered == 0;
        assert_eq!(status(&d) & FEAT_OK != 0, ok, "bit {bit}");
        assert_eq!(
            d.negotiated_features().bits(),
            if ok { f } else { 0 },
            "bit {bit}"
        );
        let out = wr(&mut d, regs::STATUS, ACK | DRIVER | FEAT_OK | DRV_OK);
        assert_eq!(d.is_live(), ok, "bit {bit}");
        invariants(&d, &out, &bit);
    }
    // No VERSION_1 on v2: refused.
    let mut d = at(
        &mem,
        MmioVersion::V2,
        At::Driver,
        &SplitDriver::standard(&mem, 16),
    );
    set_features(&mut d, OFFER);
    let _ = wr(&mut d, regs::STATUS, ACK | DRIVER | FEAT_OK);
    assert_eq!(status(&d), ACK | DRIVER);
    // Legacy: every bit written, only the offered ones negotiated.
    let mut d = at(
        &mem,
        MmioVersion::Legacy,
        At::Driver,
        &SplitDriver::standard(&mem, 16),
    );
    set_features(&mut d, u64::MAX);
    let _ = wr(&mut d, regs::STATUS, ACK | DRIVER | DRV_OK);
    let lo = d.offered_features().bits();
    assert_eq!(d.negotiated_features().bits(), lo);
    assert_eq!(lo & V1, 0, "legacy never offers VERSION_1");
}

/// `DriverFeatures` written after FEATURES_OK, after DRIVER_OK, after FAILED and (legacy)
/// after DRIVER_OK is ignored (FEAT-09, INIT-05): the negotiated set and what the queues act
/// on do not change, and the saved state does not either.
#[test]
fn driver_features_after_features_ok_ignored_feat09() {
    let mem = TestMemory::m0();
    for version in VERSIONS {
        for start in [At::FeaturesOk, At::DriverOk, At::NeedsReset, At::Failed] {
            if version == MmioVersion::Legacy && start == At::FeaturesOk {
                continue; // legacy has no FEATURES_OK step
            }
            let drv = SplitDriver::standard(&mem, 16);
            let mut d = at(&mem, version, start, &drv);
            let neg = d.negotiated_features().bits();
            assert_ne!(neg, 0, "{version:?} {start:?}");
            let before = save(&d);
            for sel in [0u32, 1, 2, u32::MAX] {
                let _ = wr(&mut d, regs::DRIVER_FEATURES_SEL, sel);
                for v in [0u32, u32::MAX, 0x2000_0000] {
                    let _ = wr(&mut d, regs::DRIVER_FEATURES, v);
                }
            }
            let _ = wr(&mut d, regs::DRIVER_FEATURES_SEL, 0);
            assert_eq!(d.negotiated_features().bits(), neg);
            let mut b = before.clone();
            let now = save(&d);
            // Only DriverFeaturesSel (bytes 12..16 of the register block) may differ.
            b[HDR + 12..HDR + 16].copy_from_slice(&now[HDR + 12..HDR + 16]);
            assert_eq!(now, b, "{version:?} {start:?}");
        }
    }
}

/// `InterruptACK` of bits that are not set, of undefined bits, and of one bit while both are
/// set: only set, defined bits written are cleared, and the line follows (MMIO-01, MMIO-03,
/// MMIO-26); reads never clear (MMIO-R14).
#[test]
fn interrupt_ack_of_bits_not_set_mmio26() {
    let mem = TestMemory::m0();
    for version in VERSIONS {
        let drv = SplitDriver::standard(&mem, 16);
        let mut d = at(&mem, version, At::DriverOk, &drv);
        for v in [0u32, INT_VRING, INT_CONFIG, 0xFFFF_FFFC, u32::MAX] {
            let out = wr(&mut d, regs::INTERRUPT_ACK, v);
            assert!(!out.irq);
            assert_eq!(rd(&d, regs::INTERRUPT_STATUS), 0);
        }
        let out = d.signal_config_change();
        assert!(out.irq);
        for v in [INT_VRING, 0xFFFF_FFFC, 0x100 | INT_VRING] {
            let out = wr(&mut d, regs::INTERRUPT_ACK, v);
            assert!(out.irq, "{version:?} {v:#x}");
            assert_eq!(rd(&d, regs::INTERRUPT_STATUS), INT_CONFIG);
            assert_eq!(
                rd(&d, regs::INTERRUPT_STATUS),
                INT_CONFIG,
                "a read does not clear"
            );
        }
        let out = wr(&mut d, regs::INTERRUPT_ACK, u32::MAX);
        assert!(!out.irq);
        assert_eq!(rd(&d, regs::INTERRUPT_STATUS), 0);
    }
}

/// Per-queue reset (§2.6.1, MMIO-09..13, MMIO-28): without RING_RESET negotiated, for a queue
/// that is not enabled, for a value other than 1 and for a queue that does not exist it is
/// ignored; otherwise the queue stops inside the write (QueueReady and QueueReset read 0, the
/// device forgets the queue's chains, its memory is not touched on a later notify), its
/// registers return to their defaults, and it can be programmed again on other rings and
/// runs there.
#[test]
fn queue_reset_then_reprogram_mmio11_13() {
    let mem = TestMemory::m0();
    // Not negotiated: ignored.
    let drv = SplitDriver::standard(&mem, 16);
    let mut d = at(&mem, MmioVersion::V2, At::Driver, &drv);
    set_features(&mut d, V1);
    let _ = wr(&mut d, regs::STATUS, ACK | DRIVER | FEAT_OK);
    program(&mut d, 0, 16, (drv.desc, drv.avail, drv.used));
    let _ = wr(&mut d, regs::QUEUE_READY, 1);
    let before = save(&d);
    let _ = wr(&mut d, regs::QUEUE_RESET, 1);
    assert_eq!(save(&d), before, "QueueReset without RING_RESET");
    // Negotiated.
    let mut drv = SplitDriver::standard(&mem, 16);
    let mut d = at(&mem, MmioVersion::V2, At::DriverOk, &drv);
    assert_ne!(d.negotiated_features().bits() & RESET_F, 0);
    let before = save(&d);
    for (sel, v) in [
        (1u32, 1u32),
        (2, 1),
        (u32::MAX, 1),
        (0, 0),
        (0, 2),
        (0, u32::MAX),
    ] {
        let _ = wr(&mut d, regs::QUEUE_SEL, sel);
        let _ = wr(&mut d, regs::QUEUE_RESET, v);
    }
    let _ = wr(&mut d, regs::QUEUE_SEL, 0);
    assert_eq!(save(&d), before, "ignored QueueReset writes");
    drv.add_chain(&[(0x8000, 16, false)]).unwrap();
    let _ = wr(&mut d, regs::QUEUE_NOTIFY, 0);
    assert_eq!(drv.used_idx(), 1);
    let out = wr(&mut d, regs::QUEUE_RESET, 1);
    invariants(&d, &out, &"reset");
    assert_eq!(rd(&d, regs::QUEUE_RESET), 0);
    assert_eq!(rd(&d, regs::QUEUE_READY), 0);
    assert_eq!(d.device().queue_resets, [0]);
    assert!(!d.queue(0).unwrap().ready);
    assert_eq!(status(&d) & NEEDS_RESET, 0);
    drv.add_chain(&[(0x8000, 16, false)]).unwrap();
    mem.start_recording();
    let _ = wr(&mut d, regs::QUEUE_NOTIFY, 0);
    assert!(mem.take_log().is_empty(), "a reset queue is not read");
    // Reprogram at queue 1's area with a smaller size; it runs there.
    let mut drv2 = SplitDriver::new(&mem, 8, Q1.0, Q1.1, Q1.2);
    program(&mut d, 0, 8, Q1);
    let _ = wr(&mut d, regs::QUEUE_READY, 1);
    assert_eq!(d.queue_setup_error(0), None);
    assert_eq!(d.queue(0).unwrap().size, 8);
    drv2.add_chain(&[(0x8000, 16, false)]).unwrap();
    let out = wr(&mut d, regs::QUEUE_NOTIFY, 0);
    assert_eq!(drv2.used_idx(), 1);
    assert!(out.irq);
    assert_eq!(drv.used_idx(), 1, "the old rings are left alone");
}

/// ConfigGeneration (§2.5.1, MMIO-07, INIT-13, LEG-06): every device-side change gives a new
/// value, before and after DRIVER_OK; the change notification (InterruptStatus bit 1) only
/// once DRIVER_OK is set; legacy has no ConfigGeneration register (reads 0) but still
/// notifies. Configuration writes before FEATURES_OK are ignored on v2 (INIT-03) and passed
/// on in legacy (LEG-10).
#[test]
fn config_generation_across_changes_mmio07() {
    let mem = TestMemory::m0();
    for version in VERSIONS {
        let v2 = version == MmioVersion::V2;
        let drv = SplitDriver::standard(&mem, 16);
        let mut seen = Vec::new();
        for start in ALL_AT {
            let mut d = at(&mem, version, start, &drv);
            let mut last = rd(&d, regs::CONFIG_GENERATION);
            for _ in 0..3 {
                let out = d.signal_config_change();
                let g = rd(&d, regs::CONFIG_GENERATION);
                if v2 {
                    assert_ne!(g, last, "{start:?}: a change must change the generation");
                } else {
                    assert_eq!(g, 0, "legacy has no ConfigGeneration");
                }
                last = g;
                seen.push(g);
                let notify = status(&d) & DRV_OK != 0;
                assert_eq!(out.irq, notify, "{version:?} {start:?}");
                assert_eq!(rd(&d, regs::INTERRUPT_STATUS) & INT_CONFIG != 0, notify);
            }
            let writes = d.device().config_writes;
            let _ = d.write(regs::CONFIG, 1, 0xAA);
            let early = matches!(start, At::Reset | At::Ack | At::Driver);
            let taken = !v2 || !early;
            assert_eq!(
                d.device().config_writes,
                writes + u64::from(taken),
                "{start:?}"
            );
        }
        assert!(!seen.is_empty());
    }
}

// ---- save/restore after every access ------------------------------------------------------

/// One step of a scripted session: a register write, a driver-side ring action, or a
/// device-side event.
#[derive(Clone, Copy, Debug)]
enum Op {
    /// An aligned 32-bit register write.
    W(u64, u32),
    /// A read (no effect; the restored copy must answer the same).
    R(u64),
    /// The driver queues a one-buffer chain on queue 0 (not kicked).
    Post,
    /// The driver queues a one-buffer chain on queue 0 and kicks it (one step: no save
    /// between the two).
    Kick,
    /// The device changed its configuration.
    Change,
}

/// A session exercising most of the register file: setup, requests with EVENT_IDX, config
/// changes, acknowledgements, a refused queue, a queue reset and reprogramming, a full reset
/// and a second initialization.
fn script(version: MmioVersion) -> Vec<Op> {
    use Op::*;
    let mut s = vec![W(regs::STATUS, ACK), W(regs::STATUS, ACK | DRIVER)];
    let f = OFFER | if version == MmioVersion::V2 { V1 } else { 0 };
    s.extend([
        W(regs::DEVICE_FEATURES_SEL, 1),
        R(regs::DEVICE_FEATURES),
        W(regs::DRIVER_FEATURES_SEL, 0),
        W(regs::DRIVER_FEATURES, (f & 0xFFFF_FFFF) as u32),
        W(regs::DRIVER_FEATURES_SEL, 1),
        W(regs::DRIVER_FEATURES, (f >> 32) as u32),
    ]);
    let setup: Vec<Op> = match version {
        MmioVersion::V2 => vec![
            W(regs::STATUS, ACK | DRIVER | FEAT_OK),
            R(regs::STATUS),
            W(regs::QUEUE_SEL, 0),
            R(regs::QUEUE_NUM_MAX),
            W(regs::QUEUE_NUM, 16),
            W(regs::QUEUE_DESC_LOW, 0x1000),
            W(regs::QUEUE_DESC_HIGH, 0),
            W(regs::QUEUE_DRIVER_LOW, 0x2000),
            W(regs::QUEUE_DEVICE_LOW, 0x3000),
            W(regs::QUEUE_READY, 1),
            Post,
            W(regs::STATUS, ACK | DRIVER | FEAT_OK | DRV_OK),
        ],
        MmioVersion::Legacy => vec![
            W(regs::GUEST_PAGE_SIZE, 4096),
            W(regs::QUEUE_SEL, 0),
            R(regs::QUEUE_NUM_MAX),
            W(regs::QUEUE_NUM, 16),
            W(regs::QUEUE_ALIGN, 4096),
            W(regs::QUEUE_PFN, LEGACY_PFN),
            Kick,
            W(regs::STATUS, ACK | DRIVER | DRV_OK),
        ],
    };
    s.extend(setup);
    s.extend([
        R(regs::INTERRUPT_STATUS),
        W(regs::INTERRUPT_ACK, INT_VRING),
        Kick,
        Kick,
        Change,
        R(regs::CONFIG_GENERATION),
        W(regs::INTERRUPT_ACK, INT_CONFIG),
        Kick,
        W(regs::QUEUE_NOTIFY, 0),
        W(regs::INTERRUPT_ACK, 3),
        W(regs::QUEUE_SEL, 1),
        W(regs::QUEUE_NUM, 5),
        W(regs::QUEUE_PFN, 9),
        W(regs::QUEUE_READY, 1),
        W(regs::QUEUE_NOTIFY, 1),
        W(regs::QUEUE_SEL, 0),
        W(regs::QUEUE_RESET, 1),
        W(regs::QUEUE_READY, 0),
        W(regs::QUEUE_PFN, 0),
        W(regs::STATUS, 0),
        W(regs::STATUS, ACK),
        W(regs::QUEUE_SEL, 3),
        W(regs::DEVICE_FEATURES_SEL, 7),
    ]);
    s
}

/// The outcome of an access that raised nothing: the line level only.
fn level(d: &Dev<'_>) -> MmioOutcome {
    MmioOutcome {
        irq: d.interrupt_asserted(),
        ..MmioOutcome::default()
    }
}

/// Run `script` on a fresh transport over `mem`; after each step record the outcome, what
/// a read returned and the transport's saved state. With `swap`, after every step the
/// transport is saved, replaced by a fresh one restored from the bytes (which must save back
/// to the same bytes) and resumed.
fn run_session(mem: &TestMemory, version: MmioVersion, swap: bool) -> Vec<(u64, Vec<u8>)> {
    let mut drv = match version {
        MmioVersion::V2 => SplitDriver::standard(mem, 16),
        MmioVersion::Legacy => {
            SplitDriver::new(mem, 16, u64::from(LEGACY_PFN) * 4096, 0x4100, LEGACY_USED)
        }
    };
    let mut d = dev(mem, version);
    let mut trace = Vec::new();
    let mut at = 0x8000u64;
    for (i, op) in script(version).into_iter().enumerate() {
        let (out, value) = match op {
            Op::W(off, v) => (wr(&mut d, off, v), 0),
            Op::R(off) => (level(&d), d.read(off, 4)),
            Op::Post => {
                drv.add_chain(&[(at, 16, false)]).unwrap();
                at += 0x100;
                (level(&d), 0)
            }
            Op::Kick => {
                drv.add_chain(&[(at, 16, false)]).unwrap();
                at += 0x100;
                (wr(&mut d, regs::QUEUE_NOTIFY, 0), 0)
            }
            Op::Change => (d.signal_config_change(), 0),
        };
        invariants(&d, &out, &(version, i, op));
        let summary = value
            ^ (u64::from(out.irq) << 32)
            ^ (u64::from(out.raised.bits()) << 40)
            ^ (u64::from(out.events.bits()) << 48)
            ^ (u64::from(drv.used_idx()) << 56);
        let state = save(&d);
        trace.push((summary, state.clone()));
        if swap {
            let mut fresh = dev(mem, version);
            fresh
                .restore(&state)
                .unwrap_or_else(|e| panic!("{version:?} step {i} {op:?}: {e:?}"));
            assert_eq!(
                save(&fresh),
                state,
                "{version:?} step {i}: restore is exact"
            );
            let r = fresh.resume();
            assert_eq!(r.irq, d.interrupt_asserted(), "{version:?} step {i}");
            assert!(
                r.raised.is_empty(),
                "{version:?} step {i}: resume raised {r:?}"
            );
            d = fresh;
        }
    }
    trace
}

/// Save after every access of a real session (both versions), restore into a fresh
/// transport, resume, and carry on with the restored one: every later access has the same
/// outcome, read value, used-ring progress and saved state as in an uninterrupted run
/// (each run on its own copy of guest RAM). The driver kicks every buffer it queues once
/// the device is usable, in the same step: `resume` looks at the rings (kicks sent while the device was stopped are lost), so
/// a buffer queued and not yet kicked is served early after a restore, which the spec allows
/// (a notification is a hint) but which would make the two runs differ.
#[test]
fn save_after_every_access_restores_an_identical_transport() {
    for version in VERSIONS {
        let (m1, m2) = (TestMemory::m0(), TestMemory::m0());
        let reference = run_session(&m1, version, false);
        let swapped = run_session(&m2, version, true);
        assert_eq!(reference.len(), swapped.len());
        for (i, (a, b)) in reference.iter().zip(&swapped).enumerate() {
            assert_eq!(a.0, b.0, "{version:?} step {i}: outcome");
            assert_eq!(a.1, b.1, "{version:?} step {i}: state");
        }
        // The session reached what it tests: used buffers, a refusal, a reset.
        let used = reference.iter().filter(|t| t.0 >> 56 != 0).count();
        assert!(used > 5, "{version:?}");
        let events = reference.iter().fold(0, |e, t| e | (t.0 >> 48) as u8);
        let want = virtq::transport::Events::NEEDS_RESET | virtq::transport::Events::DEVICE_RESET;
        assert_eq!(
            events & want.bits(),
            want.bits(),
            "{version:?}: {events:#x}"
        );
        assert_eq!(
            m1.peek(0x1000, 0x5000),
            m2.peek(0x1000, 0x5000),
            "{version:?}: rings"
        );
    }
}

/// Hostile state bytes (H-snapshot): every truncation of states saved at several points of
/// a session is refused with nothing changed; random corruptions are refused with nothing
/// changed, or accepted as a state that passes the access invariants, saves back to bytes that
/// restore again to the same bytes, and survives accesses and `resume` without panicking.
#[test]
fn restore_hostile_bytes_refused_or_round_trip() {
    let mem = TestMemory::m0();
    let mut states = Vec::new();
    for version in VERSIONS {
        let drv = SplitDriver::standard(&mem, 16);
        for start in [At::FeaturesOk, At::DriverOk, At::NeedsReset, At::Failed] {
            let mut d = at(&mem, version, start, &drv);
            let _ = d.signal_config_change();
            states.push((version, save(&d)));
        }
    }
    for (version, s) in &states {
        for len in 0..s.len() {
            assert!(try_restore(&mem, *version, &s[..len]).is_err(), "len {len}");
        }
        // The header states the length: bytes after it (the rest of a caller's buffer) are
        // not part of the state.
        let mut longer = s.clone();
        longer.extend([0xA5; 9]);
        let t = try_restore(&mem, *version, &longer).expect("trailing buffer bytes");
        assert_eq!(&save(&t), s);
    }
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let rounds = if cfg!(miri) { 50 } else { 20_000 };
    let mut accepted = 0;
    for round in 0..rounds {
        let (version, s) = &states[round % states.len()];
        let mut b = s.clone();
        for _ in 0..=(next() % 3) {
            let i = usize::try_from(next() % b.len() as u64).unwrap();
            // Mostly small values: flags and enum codes are where the checks are.
            let v = next();
            b[i] = if v & 1 == 0 {
                (v >> 8) as u8 & 3
            } else {
                (v >> 8) as u8
            };
        }
        let Ok(mut t) = try_restore(&mem, *version, &b) else {
            continue;
        };
        accepted += 1;
        let again = save(&t);
        let u = try_restore(&mem, *version, &again)
            .unwrap_or_else(|e| panic!("round {round}: re-restore {e:?}"));
        assert_eq!(save(&u), again, "round {round}");
        let out = t.resume();
        invariants(&t, &out, &round);
        for (off, v) in [
            (regs::QUEUE_NOTIFY, 0u32),
            (regs::QUEUE_NOTIFY, 1),
            (regs::STATUS, 0),
        ] {
            let out = wr(&mut t, off, v);
            invariants(&t, &out, &(round, off));
        }
    }
    assert!(accepted > 100, "{accepted}");
}

// ---- the random walk -----------------------------------------------------------------------

/// What the walk reached (so that its passing is not vacuous).
#[derive(Debug, Default)]
struct Reached {
    live: u32,
    used: u32,
    irq: u32,
    config_irq: u32,
    refused: u32,
    broken: u32,
    resets: u32,
    queue_resets: u32,
    kicks: u32,
    restores: u32,
    refused_restores: u32,
}

/// The driver side of the walk: queue a one-descriptor chain on the ring at `(desc, avail)`
/// by writing guest memory directly (the walk's driver state is the memory itself), or with
/// `hostile`, move `avail.idx` far ahead (a fatal ring error, H-avail-idx).
fn walk_post(mem: &TestMemory, desc: u64, avail: u64, hostile: bool) {
    let idx = mem.peek_u16(avail + 2);
    if hostile {
        mem.poke_u16(avail + 2, idx.wrapping_add(100));
        return;
    }
    let slot = idx % 16;
    let d = desc + u64::from(slot) * 16;
    mem.poke(d, &0x8000u64.to_le_bytes());
    mem.poke(d + 8, &16u32.to_le_bytes());
    mem.poke(d + 12, &[0, 0, 0, 0]);
    mem.poke_u16(avail + 4 + u64::from(slot) * 2, slot);
    mem.poke_u16(avail + 2, idx.wrapping_add(1));
}

/// A random walk of register accesses (100k+ per version, biased to the registers and to
/// values that matter: statuses, feature words, ring addresses and halves, sizes, page
/// numbers) interleaved with driver-side ring updates (some hostile), device-side events,
/// hypervisor calls (poll, process, take_kicks, notify mode) and save/restore cycles. After
/// every step: the access invariants; the handler ran at most once per queue; bounded guest
/// memory traffic; guest memory written only inside the used ring of a queue that is ready
/// (a refused, reset or stopped queue is never written); the used ring moved only on a live
/// device. The walk must reach live devices, used buffers, interrupts of both kinds, refused
/// and broken queues, resets, queue resets, deferred kicks and restores.
#[test]
fn random_walk_keeps_invariants_both_versions() {
    use virtq::transport::NotifyMode;
    use virtq_testkit::memory::AccessKind;
    for version in VERSIONS {
        let mem = TestMemory::m0();
        let v2 = version == MmioVersion::V2;
        // Queue 0 and 1 rings: v2 at the standard layout and Q1; legacy at pages 4 and 0x200.
        let rings: [(u64, u64, u64); 2] = if v2 {
            [(0x1000, 0x2000, 0x3000), Q1]
        } else {
            [
                (0x4000, 0x4100, LEGACY_USED),
                (0x20_0000, 0x20_0100, 0x20_1000),
            ]
        };
        let mut d = dev(&mem, version);
        let mut seed = 0x2545_F491_4F6C_DD1Du64 ^ u64::from(v2);
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let hot = [
            regs::STATUS,
            regs::DRIVER_FEATURES,
            regs::DRIVER_FEATURES_SEL,
            regs::DEVICE_FEATURES_SEL,
            regs::QUEUE_SEL,
            regs::QUEUE_SEL,
            regs::QUEUE_NUM,
            regs::QUEUE_READY,
            regs::QUEUE_READY,
            regs::QUEUE_NOTIFY,
            regs::QUEUE_NOTIFY,
            regs::QUEUE_NOTIFY,
            regs::INTERRUPT_ACK,
            regs::QUEUE_DESC_LOW,
            regs::QUEUE_DESC_HIGH,
            regs::QUEUE_DRIVER_LOW,
            regs::QUEUE_DEVICE_LOW,
            regs::QUEUE_RESET,
            regs::GUEST_PAGE_SIZE,
            regs::QUEUE_ALIGN,
            regs::QUEUE_PFN,
            regs::QUEUE_PFN,
            regs::CONFIG,
            regs::CONFIG + 6,
            regs::INTERRUPT_STATUS,
            regs::SHM_SEL,
        ];
        // A well-behaved driver's initialization, replayed now and then one access per step
        // with random accesses interleaved, so the walk reaches live devices to attack.
        let mut init = vec![
            (regs::STATUS, 0u32),
            (regs::STATUS, ACK),
            (regs::STATUS, ACK | DRIVER),
        ];
        let f = OFFER | if v2 { V1 } else { 0 };
        init.extend([
            (regs::DRIVER_FEATURES_SEL, 0),
            (regs::DRIVER_FEATURES, (f & 0xFFFF_FFFF) as u32),
            (regs::DRIVER_FEATURES_SEL, 1),
            (regs::DRIVER_FEATURES, (f >> 32) as u32),
        ]);
        if v2 {
            init.push((regs::STATUS, ACK | DRIVER | FEAT_OK));
        }
        for (q, &(desc, avail, used)) in rings.iter().enumerate() {
            init.extend([
                (regs::QUEUE_SEL, u32::try_from(q).unwrap()),
                (regs::QUEUE_NUM, 16),
            ]);
            if v2 {
                init.extend([
                    (regs::QUEUE_DESC_LOW, desc as u32),
                    (regs::QUEUE_DESC_HIGH, 0),
                    (regs::QUEUE_DRIVER_LOW, avail as u32),
                    (regs::QUEUE_DRIVER_HIGH, 0),
                    (regs::QUEUE_DEVICE_LOW, used as u32),
                    (regs::QUEUE_DEVICE_HIGH, 0),
                    (regs::QUEUE_READY, 1),
                ]);
            } else {
                init.push((regs::QUEUE_PFN, u32::try_from(desc >> 12).unwrap()));
            }
        }
        init.push((
            regs::STATUS,
            ACK | DRIVER | DRV_OK | if v2 { FEAT_OK } else { 0 },
        ));
        let mut pending = std::collections::VecDeque::new();
        let steps = if cfg!(miri) { 3_000 } else { 120_000 };
        let mut r = Reached::default();
        let mut notified = d.device().notified;
        let mut queue_resets = 0;
        for step in 0..steps {
            let x = next();
            let used_before = [mem.peek_u16(rings[0].2 + 2), mem.peek_u16(rings[1].2 + 2)];
            if pending.is_empty() && (x >> 40) % 300 == 0 {
                for &(off, v) in &init {
                    mem.fill(rings[0].1, 38, 0);
                    mem.fill(rings[1].1, 38, 0);
                    pending.push_back((off, v));
                }
            }
            mem.start_recording();
            let scripted = if (x >> 44) % 4 != 0 {
                pending.pop_front()
            } else {
                None
            };
            let out = if let Some((off, v)) = scripted {
                wr(&mut d, off, v)
            } else {
                match x % 64 {
                    0 => d.signal_config_change(),
                    1 => d.poll(),
                    2 => d.process_queue(u16::try_from((x >> 8) % 3).unwrap()),
                    3 => {
                        let mut n = 0;
                        d.take_kicks(|_| n += 1);
                        r.kicks += n;
                        level(&d)
                    }
                    4 => {
                        let mode = if x & 0x100 != 0 {
                            NotifyMode::Deferred
                        } else {
                            NotifyMode::Inline
                        };
                        d.set_notify_mode(mode);
                        level(&d)
                    }
                    5..=9 => {
                        let q = usize::from(x & 0x100 != 0);
                        let hostile = (x >> 16) % 50 == 0;
                        walk_post(&mem, rings[q].0, rings[q].1, hostile);
                        level(&d)
                    }
                    10 => {
                        // A driver that re-initializes its rings.
                        let q = usize::from(x & 0x100 != 0);
                        mem.fill(rings[q].1, 38, 0);
                        mem.fill(rings[q].2, 134, 0);
                        level(&d)
                    }
                    11 => {
                        // Save, restore into a fresh transport, resume. A restore checks the
                        // ring indices guest memory holds against the state; a guest that
                        // scribbled them (the walk's hostile avail.idx, or its ring
                        // re-zeroing) gets a refusal, with nothing changed.
                        let s = save(&d);
                        let mut fresh = dev(&mem, version);
                        let blank = save(&fresh);
                        fresh.set_notify_mode(NotifyMode::Inline);
                        match fresh.restore(&s) {
                            Ok(()) => {
                                assert_eq!(save(&fresh), s, "step {step}");
                                r.restores += 1;
                                d = fresh;
                                notified = d.device().notified;
                                queue_resets = 0;
                                d.resume()
                            }
                            Err(e) => {
                                let guest = [StateField::AvailIdx, StateField::UsedIdx]
                                    .map(|field| StateError::Invalid { field });
                                assert!(guest.contains(&e), "step {step}: {e:?}");
                                assert_eq!(save(&fresh), blank, "step {step}");
                                r.refused_restores += 1;
                                level(&d)
                            }
                        }
                    }
                    _ => {
                        let off = hot[usize::try_from((x >> 8) % hot.len() as u64).unwrap()];
                        let w = if (x >> 16) % 8 == 0 {
                            WIDTHS[usize::try_from((x >> 20) % 8).unwrap()]
                        } else {
                            4
                        };
                        let q = usize::from((x >> 24) & 1 == 1);
                        let y = next();
                        let value: u64 = match (x >> 28) % 12 {
                            0 => y & 0xFF,
                            1 => {
                                u64::from([ACK, ACK | DRIVER, 11, 15, 7, 0, 0x80][(y % 7) as usize])
                            }
                            2 => y & 3,
                            3 => [OFFER | V1, V1 >> 32, OFFER, u64::MAX][(y % 4) as usize],
                            4 => [rings[q].0, rings[q].1, rings[q].2][(y % 3) as usize],
                            5 => [16, 8, 0, 3, 32, 1][(y % 6) as usize],
                            6 => [rings[q].0 >> 12, 4096, 1, 0, 0x8000_0000][(y % 5) as usize],
                            7 => y,
                            8 => [0, 1, 2, 0x1_0000][(y % 4) as usize],
                            _ => y % 4,
                        };
                        let off = if off == regs::QUEUE_DEVICE_LOW && (x >> 30) & 1 == 1 {
                            regs::QUEUE_DEVICE_HIGH
                        } else {
                            off
                        };
                        if (x >> 31) % 4 == 0 {
                            let _ = d.read(off, w);
                            level(&d)
                        } else {
                            d.write(off, w, value)
                        }
                    }
                }
            };
            let log = mem.take_log();
            invariants(&d, &out, &step);
            let qr = d.device().queue_resets.len();
            r.queue_resets += u32::try_from(qr.saturating_sub(queue_resets)).unwrap();
            queue_resets = qr;
            let now = d.device().notified;
            assert!(
                now - notified <= 2,
                "step {step}: handler ran {}x",
                now - notified
            );
            notified = now;
            assert!(
                log.len() <= 2_000,
                "step {step}: {} memory accesses",
                log.len()
            );
            for a in log
                .iter()
                .filter(|a| matches!(a.kind, AccessKind::Write | AccessKind::Store16))
            {
                let inside = (0..2u16).any(|q| {
                    d.queue(q).is_some_and(|q| {
                        let base = q.used_ring_addr.0;
                        let len = virtq::wire::split_layout::used_ring_bytes(q.size);
                        q.ready && a.addr >= base && a.addr + a.len <= base + len
                    })
                });
                assert!(inside, "step {step}: write {a:?} outside a ready used ring");
            }
            let used_after = [mem.peek_u16(rings[0].2 + 2), mem.peek_u16(rings[1].2 + 2)];
            if used_after != used_before && (scripted.is_some() || x % 64 != 10) {
                assert!(d.is_live(), "step {step}: used ring moved on a dead device");
                r.used += 1;
            }
            // What the walk reached.
            let s = status(&d);
            r.live += u32::from(d.is_live());
            r.irq += u32::from(out.irq);
            r.config_irq += u32::from(
                out.raised
                    .contains(virtq::transport::InterruptStatus::CONFIG_CHANGE),
            );
            r.refused += u32::from(out.events.contains(virtq::transport::Events::QUEUE_REFUSED));
            r.resets += u32::from(out.events.contains(virtq::transport::Events::DEVICE_RESET));
            r.broken += u32::from(
                (0..2).any(|q| d.queue(q).is_some_and(|q| q.is_broken())) && s & NEEDS_RESET != 0,
            );
        }
        let all = [
            r.queue_resets,
            r.refused_restores,
            r.live,
            r.used,
            r.irq,
            r.config_irq,
            r.refused,
            r.broken,
            r.resets,
            r.kicks,
            r.restores,
        ];
        assert!(all.iter().all(|&n| n > 0), "{version:?}: {r:?}");
        eprintln!("{version:?}: {r:?}");
    }
}

// ---- packed rings over MMIO ----------------------------------------------------------------

const PACKED: u64 = Features::RING_PACKED.bits();

/// A v2 transport offering RING_PACKED with the driver's features accepted (FEATURES_OK).
fn packed_at_features_ok(mem: &TestMemory) -> Dev<'_> {
    let mut d = dev_offering(mem, MmioVersion::V2, OFFER | PACKED);
    let _ = wr(&mut d, regs::STATUS, ACK | DRIVER);
    set_features(&mut d, V1 | PACKED | RESET_F);
    let _ = wr(&mut d, regs::STATUS, ACK | DRIVER | FEAT_OK);
    assert_eq!(status(&d), ACK | DRIVER | FEAT_OK);
    assert!(d.is_packed());
    d
}

/// Packed queues through the MMIO registers (§2.8, PACKED-02..05, H9c): `QueueNumMax` is the
/// device's own maximum once RING_PACKED is accepted (a power of two before); every size from
/// 1 to it is accepted and 0 or anything above refused; the descriptor ring must be 16-aligned
/// and the event structures 4-aligned, all in RAM and apart. Refused queues raise
/// DEVICE_NEEDS_RESET and are never touched.
#[test]
fn packed_queue_sizes_and_alignment_packed02_05() {
    let mem = TestMemory::m0();
    let mut d = dev_offering(&mem, MmioVersion::V2, OFFER | PACKED);
    let _ = wr(&mut d, regs::QUEUE_SEL, 1);
    assert_eq!(
        rd(&d, regs::QUEUE_NUM_MAX),
        16,
        "split maximum before FEATURES_OK"
    );
    let good = (0x20_0000u64, 0x20_1000u64, 0x20_1004u64);
    for size in [0u32, 1, 5, 16, 19, 20, 21, 32, 0x1_0005, u32::MAX] {
        let mut d = packed_at_features_ok(&mem);
        let _ = wr(&mut d, regs::QUEUE_SEL, 1);
        assert_eq!(rd(&d, regs::QUEUE_NUM_MAX), u32::from(QMAX1));
        program(&mut d, 1, size, good);
        mem.start_recording();
        let out = wr(&mut d, regs::QUEUE_READY, 1);
        invariants(&d, &out, &size);
        assert!(
            mem.take_log().is_empty(),
            "size {size}: enable reads nothing"
        );
        let ok = (1..=u32::from(QMAX1)).contains(&size);
        assert_eq!(d.queue_setup_error(1).is_none(), ok, "size {size}");
        let p = d.packed_queue(1).unwrap();
        assert_eq!(p.ready, ok, "size {size}");
        if ok {
            assert_eq!(u32::from(p.size), size);
        }
        assert!(!d.queue(1).unwrap().ready, "the split twin stays idle");
    }
    for (areas, want) in [
        (
            (0x20_0008, 0x20_1000, 0x20_1004),
            QueueSetupError::Misaligned,
        ),
        (
            (0x20_0000, 0x20_1002, 0x20_1004),
            QueueSetupError::Misaligned,
        ),
        (
            (0x20_0000, 0x20_1000, 0x20_1006),
            QueueSetupError::Misaligned,
        ),
        ((0x20_0000, 0x20_0010, 0x20_1004), QueueSetupError::Overlap),
        ((0x20_0000, 0x20_1000, 0x20_1000), QueueSetupError::Overlap),
        (
            (0x20_0000, 0x20_1000, 0x10_0000),
            QueueSetupError::OutsideRam,
        ),
        (
            (0xF_FF00, 0x20_1000, 0x20_1004),
            QueueSetupError::OutsideRam,
        ),
        (
            (0x20_0000, 0x20_1000, u64::MAX - 3),
            QueueSetupError::AddressOverflow,
        ),
    ] {
        let mut d = packed_at_features_ok(&mem);
        program(&mut d, 1, 20, areas);
        let _ = wr(&mut d, regs::QUEUE_READY, 1);
        assert_eq!(d.queue_setup_error(1), Some(want), "{areas:x?}");
        assert_ne!(status(&d) & NEEDS_RESET, 0);
    }
    // The last event structure word in RAM is fine.
    let mut d = packed_at_features_ok(&mem);
    program(&mut d, 1, 20, (0x20_0000, 0x20_1000, 0xF_FFFC));
    let _ = wr(&mut d, regs::QUEUE_READY, 1);
    assert_eq!(d.queue_setup_error(1), None);
}

/// A live packed queue over MMIO: requests complete; QueueReset then reprogramming with
/// another size on other areas works; the state saved after each of these restores into a
/// fresh transport exactly; and hostile corruptions of a packed state are refused with
/// nothing changed or accepted as a state that round-trips and keeps the invariants.
#[test]
fn packed_queue_reset_reprogram_and_restore() {
    use virtq_testkit::PackedDriver;
    let mem = TestMemory::m0();
    let mut d = packed_at_features_ok(&mem);
    let mut drv = PackedDriver::standard(&mem, 16);
    program(
        &mut d,
        0,
        16,
        (drv.desc, drv.driver_event, drv.device_event),
    );
    let _ = wr(&mut d, regs::QUEUE_READY, 1);
    let _ = wr(&mut d, regs::STATUS, ACK | DRIVER | FEAT_OK | DRV_OK);
    assert!(d.is_live());
    let mut states = Vec::new();
    for i in 0..20u64 {
        drv.add_chain(&[(0x8000 + i * 0x10, 16, false)]).unwrap();
        let out = wr(&mut d, regs::QUEUE_NOTIFY, 0);
        invariants(&d, &out, &i);
        assert!(drv.pop_used().is_some(), "request {i}");
        let _ = wr(&mut d, regs::INTERRUPT_ACK, INT_VRING);
        states.push(save(&d));
    }
    let _ = wr(&mut d, regs::QUEUE_SEL, 0);
    let _ = wr(&mut d, regs::QUEUE_RESET, 1);
    assert_eq!(rd(&d, regs::QUEUE_READY), 0);
    assert!(!d.packed_queue(0).unwrap().ready);
    let mut drv2 = PackedDriver::new(&mem, 5, 0x20_0000, 0x20_1000, 0x20_1004);
    program(&mut d, 0, 5, (0x20_0000, 0x20_1000, 0x20_1004));
    let _ = wr(&mut d, regs::QUEUE_READY, 1);
    assert_eq!(d.queue_setup_error(0), None);
    for i in 0..7u64 {
        drv2.add_chain(&[(0x9000 + i * 0x10, 16, false)]).unwrap();
        let _ = wr(&mut d, regs::QUEUE_NOTIFY, 0);
        assert!(
            drv2.pop_used().is_some(),
            "after reprogramming: request {i}"
        );
    }
    assert_eq!(status(&d) & NEEDS_RESET, 0);
    states.push(save(&d));
    let last = states.last().unwrap().clone();
    let mut seed = 0x1234_5678_9ABC_DEF1u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let fresh = || dev_offering(&mem, MmioVersion::V2, OFFER | PACKED);
    let mut accepted = 0;
    for round in 0..if cfg!(miri) { 20 } else { 5_000 } {
        let mut b = last.clone();
        for _ in 0..=(next() % 3) {
            let i = usize::try_from(next() % b.len() as u64).unwrap();
            let v = next();
            b[i] = if v & 1 == 0 {
                (v >> 8) as u8 & 3
            } else {
                (v >> 8) as u8
            };
        }
        let mut t = fresh();
        let blank = save(&t);
        if t.restore(&b).is_err() {
            assert_eq!(save(&t), blank, "round {round}");
            continue;
        }
        accepted += 1;
        let again = save(&t);
        let mut u = fresh();
        u.restore(&again)
            .unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        assert_eq!(save(&u), again);
        let out = t.resume();
        invariants(&t, &out, &round);
        let out = wr(&mut t, regs::QUEUE_NOTIFY, 0);
        invariants(&t, &out, &round);
    }
    assert!(accepted > 50, "{accepted}");
    // The states of the first queue's life restore exactly too (guest memory has moved on:
    // only the ones whose ring indices still match are accepted, the others are refused).
    let restored = states
        .iter()
        .filter(|s| {
            let mut t = fresh();
            t.restore(s).is_ok() && &save(&t) == *s
        })
        .count();
    assert!(restored >= 1, "{restored}");
}
