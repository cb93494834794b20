//! The virtio-pci function at register level (VIRTIO 1.4 §4.1): configuration header, BAR
//! sizing and relocation, the capability list, every common configuration field, access
//! widths at every offset (issue 15), ISR, device configuration and its generation,
//! notifications, the `VIRTIO_PCI_CAP_PCI_CFG` window and per-queue reset.
//!
//! Requirement IDs: PCI-xx are listed in `virtq::transport::pci` (the shared checklist has no
//! PCI rows); STAT/FEAT/VQ/H are the checklist's and hostile-inputs'.

mod pci_driver;

use pci_driver::{BAR_BASE, PciBus, PciDriver, Shared, attach};
use virtq::transport::pci::{NO_VECTOR, PciEvents, PciIds, PciTransport, layout};
use virtq::transport::{
    DeviceId, NotifyReport, QueueSetupError, Queues, VirtioDevice, config_read,
};
use virtq::{Completion, Features, GuestMemory};
use virtq_testkit::{SplitDriver, TestMemory};

use layout::common as cc;

/// A device of type 2 (block) with queues 0 and 1 of 256 entries in a transport with room for
/// 3, an 8-byte configuration, and a record of what it saw.
#[derive(Debug, Default)]
struct Probe {
    features: u64,
    notified: Vec<u16>,
    config_writes: Vec<(u32, Vec<u8>)>,
    queue_resets: Vec<u16>,
}

const CONFIG: [u8; 8] = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];

impl VirtioDevice for Probe {
    fn device_id(&self) -> DeviceId {
        DeviceId::BLOCK
    }
    fn device_features(&self) -> Features {
        Features::from_bits_retain(self.features)
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
        queues
            .get(index)
            .unwrap()
            .drain(mem, 64, |_| Completion::Used(0))
            .into()
    }
}

type F<'m> = Shared<Probe, &'m TestMemory, 3, 4>;
const V1: u64 = Features::VERSION_1.bits();

fn function(mem: &TestMemory, features: u64) -> F<'_> {
    attach(
        Probe {
            features,
            ..Probe::default()
        },
        mem,
    )
}

fn probe<'m>(f: &F<'m>) -> PciDriver<F<'m>> {
    PciDriver::probe(f.clone(), BAR_BASE).expect("probe")
}

/// A driver with features `want` negotiated, queue 0 at `drv`'s rings (vector `vector`),
/// DRIVER_OK.
fn live<'m>(f: &F<'m>, drv: &SplitDriver<'_>, want: u64, vector: u16) -> PciDriver<F<'m>> {
    let d = probe(f);
    assert_eq!(d.negotiate(want), Some(want & d.device_features()));
    d.setup_queue(0, drv.size, (drv.desc, drv.avail, drv.used), vector);
    assert_eq!(f.t.borrow().queue_setup_error(0), None);
    d.driver_ok();
    assert!(f.t.borrow().is_live());
    d
}

#[test]
fn identity_header_pci01_pci02() {
    let mem = TestMemory::m0();
    let f = function(&mem, V1);
    let c = |off, w| f.cfg_read(off, w);
    assert_eq!(c(layout::VENDOR, 2), 0x1AF4, "PCI-01");
    assert_eq!(c(layout::DEVICE, 2), 0x1042, "PCI-01: 0x1040 + 2");
    assert_eq!(c(layout::REVISION, 1), 1, "PCI-02");
    assert_eq!(c(layout::CLASS_CODE, 1), 0x00, "programming interface");
    assert_eq!(
        c(0x0A, 2),
        0x0100,
        "block: SCSI storage, as hypervisors show it"
    );
    assert_eq!(c(layout::HEADER_TYPE, 1), 0, "type 0, one function");
    assert_eq!(c(layout::SUBSYSTEM_VENDOR_ID, 2), 0x1AF4);
    assert!(c(layout::SUBSYSTEM_ID, 2) >= 0x40, "PCI-02");
    assert_eq!(c(layout::CAPABILITIES, 1), 0x40);
    assert_eq!(c(layout::INTERRUPT_PIN, 1), 1, "INTA#");
    assert_eq!(c(layout::STATUS, 2), u64::from(layout::STATUS_CAPABILITIES));
    assert_eq!(
        c(layout::COMMAND, 2),
        0,
        "power-on: no decoding, no bus master"
    );
    // Read-only registers ignore writes; the interrupt line is scratch for software.
    let header: Vec<u64> = (0..0x40).step_by(4).map(|o| c(o, 4)).collect();
    for off in [0x00, 0x02, 0x06, 0x08, 0x0A, 0x0E, 0x2C, 0x2E, 0x34, 0x3D] {
        f.cfg_write(off, 2, 0xFFFF);
    }
    for off in [0x18, 0x1C, 0x20, 0x24, 0x28, 0x30] {
        f.cfg_write(off, 4, 0xFFFF_FFFF);
    }
    f.cfg_write(layout::INTERRUPT_LINE, 1, 11);
    let after: Vec<u64> = (0..0x40).step_by(4).map(|o| c(o, 4)).collect();
    for (i, (a, b)) in header.iter().zip(&after).enumerate() {
        if i == 0x3C / 4 {
            assert_eq!(*b, a | 11, "interrupt line");
        } else {
            assert_eq!(a, b, "dword {:#x} changed", i * 4);
        }
    }
    // BARs 2–5 and the expansion ROM are not implemented: they size to 0.
    for off in [0x18u16, 0x1C, 0x20, 0x24, 0x30] {
        assert_eq!(c(off, 4), 0, "{off:#x}");
    }
    // Other device types and explicit identities.
    let net = PciTransport::<_, _, 2, 2>::new(
        virtq_testkit::devices::NetDevice::new(Features::empty(), 8),
        &mem,
    );
    assert_eq!(net.ids().class_code, 0x02_00_00);
    let ids = PciIds {
        subsystem_vendor_id: 0x1234,
        subsystem_id: 0x5678,
        class_code: 0x0C_03_30,
        revision: 0,
    };
    let mut t = PciTransport::<_, _, 3, 4>::with_ids(Probe::default(), &mem, ids);
    assert_eq!(
        t.config_read(layout::SUBSYSTEM_VENDOR_ID, 4).value,
        0x5678_1234
    );
    assert_eq!(
        t.config_read(layout::REVISION, 4).value,
        0x0C03_3001,
        "revision 0 shown as 1"
    );
}

/// PCI-03, PCI-04: the capability list, walked by offset; every structure in BAR 0, aligned
/// as §4.1.4 requires; the list cannot be changed by the driver, so no walk can loop.
#[test]
fn capability_list_pci03_pci04() {
    let mem = TestMemory::m0();
    let f = function(&mem, V1);
    let d = probe(&f);
    assert_eq!(
        d.walk,
        vec![
            (layout::CAP_ID_MSIX, 0x40),
            (layout::CAP_ID_VENDOR, 0x50),
            (layout::CAP_ID_VENDOR, 0x60),
            (layout::CAP_ID_VENDOR, 0x74),
            (layout::CAP_ID_VENDOR, 0x84),
            (layout::CAP_ID_VENDOR, 0x94),
        ]
    );
    assert_eq!(d.bar_size, layout::BAR_SIZE);
    assert_eq!((d.common.offset, d.common.length), (0, 0x40));
    assert_eq!(d.common.offset % 4, 0);
    assert_eq!(d.device.offset % 4, 0);
    assert_eq!(
        d.notify.offset % 4,
        0,
        "4-aligned: NOTIFICATION_DATA may be offered"
    );
    assert!(d.notify_mult.is_power_of_two() && d.notify_mult.is_multiple_of(4));
    let num_queues = d.cr(cc::NUM_QUEUES, 2);
    assert_eq!(num_queues, 2);
    for q in 0..num_queues as u16 {
        d.select(q);
        let off = d.cr(cc::QUEUE_NOTIFY_OFF, 2);
        assert!(
            d.notify.length >= off * u64::from(d.notify_mult) + 4,
            "PCI-04"
        );
    }
    assert!(d.isr.length >= 1);
    assert_eq!(d.msix.table_size, 4);
    assert_eq!((d.msix.table, d.msix.pba), (0x4000, 0x5000));
    // cap_len of each vendor capability covers its structure (16, notify and PCI_CFG 20).
    for (cap, len) in [
        (0x50u16, 16),
        (0x60, 20),
        (0x74, 16),
        (0x84, 16),
        (0x94, 20),
    ] {
        assert_eq!(f.cfg_read(cap + 2, 1), len);
    }
    // The driver writes garbage over every capability byte at every width: the list, the
    // structures and MSI-X's table location stay (only MSI-X control and the PCI_CFG window
    // are writable), so the walk ends the same way.
    let caps_before: Vec<u64> = (0x40..0x94).step_by(4).map(|o| f.cfg_read(o, 4)).collect();
    for off in 0x40..0x100u16 {
        for w in [1u8, 2, 4] {
            f.cfg_write(off, w, u64::MAX);
        }
    }
    f.cfg_write(0x42, 2, 0); // MSI-X control back to disabled, unmasked
    let caps_after: Vec<u64> = (0x40..0x94).step_by(4).map(|o| f.cfg_read(o, 4)).collect();
    assert_eq!(caps_before, caps_after);
    f.cfg_write(layout::COMMAND, 2, 0);
    let again = probe(&f);
    assert_eq!(again.walk, d.walk);
}

/// PCI-18: BAR sizing with all-ones writes, placement in two halves, relocation, decoding only
/// with Memory Space, and the outcome telling the hypervisor to move its trap.
#[test]
fn bar_sizing_and_relocation_pci18() {
    let mem = TestMemory::m0();
    let f = function(&mem, V1);
    let mut t = f.t.borrow_mut();
    assert_eq!(
        t.config_read(layout::BAR0, 4).value,
        0b0100,
        "64-bit memory, not prefetchable"
    );
    let out = t.config_write(layout::BAR0, 4, 0xFFFF_FFFF);
    assert!(out.events.contains(PciEvents::BAR_CHANGED));
    assert_eq!(t.config_read(layout::BAR0, 4).value, 0xFFFF_8004);
    let _ = t.config_write(layout::BAR1, 4, 0xFFFF_FFFF);
    assert_eq!(t.config_read(layout::BAR1, 4).value, 0xFFFF_FFFF);
    // Misaligned address bits are dropped (the size bits read 0).
    let _ = t.config_write(layout::BAR0, 4, 0x8000_1234);
    let _ = t.config_write(layout::BAR1, 4, 0x2);
    assert_eq!(t.config_read(layout::BAR0, 4).value, 0x8000_0004);
    assert_eq!(t.bar_address(0), None, "no Memory Space yet");
    assert!(t.memory_read(0x2_8000_0000, 4).is_none());
    let out = t.config_write(layout::COMMAND, 2, u64::from(layout::COMMAND_MEMORY));
    assert!(out.events.contains(PciEvents::BAR_CHANGED));
    assert_eq!(t.bar_address(0), Some(0x2_8000_0000));
    assert_eq!(t.bar_address(1), None);
    assert_eq!(
        t.memory_read(0x2_8000_0000 + 0x12, 2).map(|o| o.value),
        Some(2)
    );
    assert!(t.memory_read(0x2_8000_0000 + layout::BAR_SIZE, 1).is_none());
    assert!(t.memory_read(0x2_8000_0000 - 1, 1).is_none());
    // Byte writes to the BAR merge like any register.
    let _ = t.config_write(layout::BAR0 + 2, 1, 0x12);
    assert_eq!(t.bar_address(0), Some(0x2_8012_0000));
    // A BAR at the very top of the address space: no overflow in the decode.
    let _ = t.config_write(layout::BAR0, 4, 0xFFFF_8000);
    let _ = t.config_write(layout::BAR1, 4, 0xFFFF_FFFF);
    let top = 0xFFFF_FFFF_FFFF_8000;
    assert_eq!(t.bar_address(0), Some(top));
    assert_eq!(t.memory_read(u64::MAX, 1).map(|o| o.value), Some(0));
    assert_eq!(t.memory_read(top + 0x12, 2).map(|o| o.value), Some(2));
    // Unchanged values report no event; only the command bits this function has stick.
    let out = t.config_write(layout::BAR1, 4, 0xFFFF_FFFF);
    assert!(!out.events.contains(PciEvents::BAR_CHANGED));
    let _ = t.config_write(layout::COMMAND, 2, 0xFFFF);
    assert_eq!(
        u16::try_from(t.config_read(layout::COMMAND, 2).value).unwrap(),
        layout::COMMAND_WRITABLE
    );
    // A PCI reset puts the header back.
    let out = t.pci_reset();
    assert!(
        out.events
            .contains(PciEvents::BAR_CHANGED | PciEvents::DEVICE_RESET)
    );
    assert_eq!(t.config_read(layout::BAR0, 4).value, 0b0100);
    assert_eq!(t.command(), 0);
}

/// PCI-05 to PCI-11: every field of the common configuration (§4.1.4.3).
#[test]
fn common_cfg_every_field_pci05_to_pci11() {
    let mem = TestMemory::m0();
    let rr = Features::RING_RESET.bits();
    let offered_by_device = V1 | rr | 1 | (1 << 63) | Features::SR_IOV.bits();
    let f = function(&mem, offered_by_device);
    let d = probe(&f);
    // Features: word select, words ≥ 2 read 0 (PCI-05); SR_IOV not offered (no capability).
    assert_eq!(d.device_features(), V1 | rr | 1 | (1 << 63));
    d.cw(cc::DEVICE_FEATURE_SELECT, 4, 2);
    assert_eq!(d.cr(cc::DEVICE_FEATURE, 4), 0);
    assert_eq!(d.cr(cc::DEVICE_FEATURE_SELECT, 4), 2, "select reads back");
    // driver_feature presents what was written (PCI-06).
    d.write_features(V1 | 1);
    d.cw(cc::DRIVER_FEATURE_SELECT, 4, 0);
    assert_eq!(d.cr(cc::DRIVER_FEATURE, 4), 1);
    d.cw(cc::DRIVER_FEATURE_SELECT, 4, 1);
    assert_eq!(d.cr(cc::DRIVER_FEATURE, 4), 1);
    assert_eq!(d.cr(cc::DRIVER_FEATURE_SELECT, 4), 1);
    // Read-only fields ignore writes (PCI-11).
    for (off, w) in [
        (cc::DEVICE_FEATURE, 4),
        (cc::NUM_QUEUES, 2),
        (cc::CONFIG_GENERATION, 1),
        (cc::QUEUE_NOTIFY_OFF, 2),
        (cc::QUEUE_NOTIFY_DATA, 2),
        (cc::ADMIN_QUEUE_INDEX, 2),
        (cc::ADMIN_QUEUE_NUM, 2),
    ] {
        let before = d.cr(off, w);
        d.cw(off, w, 0x5A5A_5A5A);
        assert_eq!(d.cr(off, w), before, "{off:#x}");
    }
    assert_eq!(d.cr(cc::NUM_QUEUES, 2), 2);
    assert_eq!(
        (d.cr(cc::ADMIN_QUEUE_INDEX, 2), d.cr(cc::ADMIN_QUEUE_NUM, 2)),
        (0, 0)
    );
    // Queues: 0 and 1 exist, 2 (storage only) and 0xFFFF do not (PCI-10).
    for q in [0u16, 1] {
        d.select(q);
        assert_eq!(d.cr(cc::QUEUE_SELECT, 2), u64::from(q));
        assert_eq!(d.cr(cc::QUEUE_SIZE, 2), 256, "maximum at reset");
        assert_eq!(d.cr(cc::QUEUE_ENABLE, 2), 0, "PCI-09: 0 at reset");
        assert_eq!(d.cr(cc::QUEUE_NOTIFY_OFF, 2), u64::from(q));
        assert_eq!(d.cr(cc::QUEUE_NOTIFY_DATA, 2), u64::from(q));
        assert_eq!(d.cr(cc::QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
        assert_eq!(d.cr(cc::QUEUE_RESET, 2), 0);
    }
    for q in [2u16, 3, 0xFFFF] {
        d.select(q);
        assert_eq!(d.cr(cc::QUEUE_SIZE, 2), 0, "queue {q} unavailable");
        d.cw(cc::QUEUE_SIZE, 2, 8);
        d.cw(cc::QUEUE_MSIX_VECTOR, 2, 1);
        d.cw(cc::QUEUE_DESC, 8, 0x1000);
        d.cw(cc::QUEUE_ENABLE, 2, 1);
        assert_eq!(d.cr(cc::QUEUE_SIZE, 2), 0);
        assert_eq!(d.cr(cc::QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
        assert_eq!(d.cr(cc::QUEUE_DESC, 8), 0);
        assert_eq!(d.cr(cc::QUEUE_ENABLE, 2), 0);
    }
    // Queue fields read back what was written: 64-bit fields whole or as halves (PCI-19).
    d.select(1);
    d.cw(cc::QUEUE_SIZE, 2, 16);
    d.cw(cc::QUEUE_DESC, 8, 0x1122_3344_5566_7788);
    assert_eq!(d.cr(cc::QUEUE_DESC, 4), 0x5566_7788);
    assert_eq!(d.cr(cc::QUEUE_DESC + 4, 4), 0x1122_3344);
    d.cw(cc::QUEUE_DRIVER + 4, 4, 0xAABB_CCDD);
    d.cw(cc::QUEUE_DRIVER, 4, 0x2000);
    assert_eq!(d.cr(cc::QUEUE_DRIVER, 8), 0xAABB_CCDD_0000_2000);
    d.cw(cc::QUEUE_DEVICE, 8, 0x3000);
    assert_eq!(d.cr(cc::QUEUE_DEVICE, 8), 0x3000);
    assert_eq!(d.cr(cc::QUEUE_SIZE, 2), 16);
    // Status: a byte field; the reset clears every selector too (PCI-08).
    d.set_status(1);
    assert_eq!(d.status(), 1);
    d.set_status(0);
    assert_eq!(d.status(), 0);
    assert_eq!(d.cr(cc::DEVICE_FEATURE_SELECT, 4), 0);
    assert_eq!(d.cr(cc::QUEUE_SELECT, 2), 0);
    d.select(1);
    assert_eq!(
        d.cr(cc::QUEUE_SIZE, 2),
        256,
        "reset forgets the size written"
    );
    assert_eq!(d.cr(cc::QUEUE_DESC, 8), 0);
}

/// PCI-11, §4.1.4.3.2: `queue_enable = 0` is ignored (only queue_reset or a device reset stop
/// a PCI queue); queue registers are frozen while the queue is enabled; and queue_reset with
/// RING_RESET resets one queue inside the write (PCI-09, VQ-07, VQ-08).
#[test]
fn queue_enable_and_queue_reset_pci09_pci11() {
    let mem = TestMemory::m0();
    let rr = Features::RING_RESET.bits();
    let mut drv = SplitDriver::standard(&mem, 16);
    let f = function(&mem, V1 | rr);
    let d = live(&f, &drv, V1 | rr, NO_VECTOR);
    d.select(0);
    d.cw(cc::QUEUE_ENABLE, 2, 0);
    d.cw(cc::QUEUE_SIZE, 2, 64);
    d.cw(cc::QUEUE_DESC, 8, 0x9000);
    assert_eq!(d.cr(cc::QUEUE_ENABLE, 2), 1, "queue_enable = 0 ignored");
    assert_eq!(d.cr(cc::QUEUE_SIZE, 2), 16, "frozen while enabled");
    assert_eq!(d.cr(cc::QUEUE_DESC, 8), drv.desc);
    drv.add_chain(&[(0x8000, 16, false)]);
    d.notify(0);
    assert_eq!(drv.pop_used(), Some((0, 0)));
    // queue_reset = 1: done inside the write; both read 0 (§4.1.4.3.1).
    d.cw(cc::QUEUE_MSIX_VECTOR, 2, 1);
    d.cw(cc::QUEUE_RESET, 2, 1);
    assert_eq!(d.cr(cc::QUEUE_RESET, 2), 0);
    assert_eq!(d.cr(cc::QUEUE_ENABLE, 2), 0);
    assert_eq!(d.cr(cc::QUEUE_SIZE, 2), 256, "back to the maximum");
    assert_eq!(d.cr(cc::QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    assert_eq!(f.t.borrow().device().queue_resets, vec![0]);
    assert!(f.t.borrow().is_live(), "the device stays live");
    // Re-enable with a new geometry (VQ-08).
    let mut drv2 = SplitDriver::new(&mem, 32, 0x9000, 0xA000, 0xB000);
    d.setup_queue(0, 32, (drv2.desc, drv2.avail, drv2.used), NO_VECTOR);
    drv2.add_chain(&[(0x8000, 8, false)]);
    d.notify(0);
    assert_eq!(drv2.pop_used(), Some((0, 0)));
    // Without RING_RESET negotiated queue_reset is ignored.
    let f = function(&mem, V1 | rr);
    let d = live(&f, &drv, V1, NO_VECTOR);
    d.select(0);
    d.cw(cc::QUEUE_RESET, 2, 1);
    assert_eq!(d.cr(cc::QUEUE_ENABLE, 2), 1);
    assert!(f.t.borrow().device().queue_resets.is_empty());
}

/// Every field of the common configuration, (offset, width), the 64-bit ones also as halves.
const FIELDS: &[(u64, u8)] = &[
    (0x00, 4),
    (0x04, 4),
    (0x08, 4),
    (0x0C, 4),
    (0x10, 2),
    (0x12, 2),
    (0x14, 1),
    (0x15, 1),
    (0x16, 2),
    (0x18, 2),
    (0x1A, 2),
    (0x1C, 2),
    (0x1E, 2),
    (0x20, 8),
    (0x20, 4),
    (0x24, 4),
    (0x28, 8),
    (0x28, 4),
    (0x2C, 4),
    (0x30, 8),
    (0x30, 4),
    (0x34, 4),
    (0x38, 2),
    (0x3A, 2),
    (0x3C, 2),
    (0x3E, 2),
];

/// Everything a driver or the device model can observe, for "this access changed nothing".
fn observe(f: &F<'_>) -> Vec<u64> {
    let mut t = f.t.borrow_mut();
    let mut v: Vec<u64> = (0..0x100)
        .step_by(4)
        .map(|o| t.config_read(o, 4).value)
        .collect();
    // Common configuration fields (reads have no side effects there; the PCI_CFG data dword
    // and the ISR, which do, are left out).
    for &(off, w) in FIELDS {
        v.push(t.bar_read(0, off, w).value);
    }
    for off in (0x4000..0x4040).step_by(8) {
        v.push(t.bar_read(0, off, 8).value);
    }
    v.push(t.bar_read(0, 0x5000, 8).value);
    v.push(u64::from(t.isr().bits()));
    v.push(t.negotiated_features().bits());
    let p = t.device();
    v.extend(
        [
            p.notified.len(),
            p.config_writes.len(),
            p.queue_resets.len(),
        ]
        .map(|n| n as u64),
    );
    v
}

/// Issue 15 "Access widths" and PCI-19 (§4.1.3, PCI 3.0 §6): every offset of configuration
/// space and of BAR 0's structures at every width a trap delivers (1, 2, 4, 8) and at widths
/// none does (0, 3, 16). What the spec does not allow reads 0 and a write of it (all-ones or
/// zero) changes nothing observable; accesses that straddle two fields, a field and a gap or
/// the end of a structure address nothing.
#[test]
fn every_offset_and_width_issue15_pci19() {
    let mem = TestMemory::m0();
    let drv = SplitDriver::standard(&mem, 16);
    let f = function(&mem, V1);
    let d = live(&f, &drv, V1, 1);
    d.enable_msix(4);
    d.set_config_vector(0);
    let widths = [0u8, 1, 2, 3, 4, 8, 16];
    let before = observe(&f);
    let mut t = f.t.borrow_mut();
    // Configuration space: 1, 2, 4 bytes naturally aligned (a read equals the bytes of the
    // dword); everything else reads 0 and ignores writes.
    for off in 0..0x110u16 {
        for w in widths {
            let ok = matches!(w, 1 | 2 | 4) && off % u16::from(w) == 0 && off < 0x100;
            let v = t.config_read(off, w).value;
            if ok && !(layout::PCI_CFG_DATA..layout::PCI_CFG_DATA + 4).contains(&off) {
                let dw = t.config_read(off & !3, 4).value;
                let want = (dw >> (8 * (off & 3))) & (u64::MAX >> (64 - 8 * u32::from(w)));
                assert_eq!(v, want, "config {off:#x}/{w}");
            } else if !ok {
                assert_eq!(v, 0, "config {off:#x}/{w}");
                for value in [0, u64::MAX] {
                    let _ = t.config_write(off, w, value);
                }
            }
        }
    }
    // Common configuration: only each field's own width (64-bit fields also as halves).
    for off in 0..0x48u64 {
        for w in widths {
            if FIELDS.contains(&(off, w)) {
                continue;
            }
            assert_eq!(t.bar_read(0, off, w).value, 0, "common {off:#x}/{w}");
            for value in [0, u64::MAX] {
                let _ = t.bar_write(0, off, w, value);
            }
        }
    }
    // ISR: one byte at its offset; any other access neither reads nor clears it.
    for off in 0x1000..0x1010u64 {
        for w in widths {
            if (off, w) != (0x1000, 1) {
                assert_eq!(t.bar_read(0, off, w).value, 0, "isr {off:#x}/{w}");
                let _ = t.bar_write(0, off, w, u64::MAX);
            }
        }
    }
    // Notification page: reads 0; writes of widths other than 2 and 4, or off a queue's
    // address, notify nothing. MSI-X table: dwords and qwords, aligned; PBA read-only.
    for off in (0x3000..0x3010u64)
        .chain(0x4000..0x4048)
        .chain(0x5000..0x5010)
    {
        for w in widths {
            let table =
                (0x4000..0x4040).contains(&off) && matches!(w, 4 | 8) && off % u64::from(w) == 0;
            let pba =
                (off, w) == (0x5000, 8) || ((off, w) == (0x5000, 4) || (off, w) == (0x5004, 4));
            let notify = (0x3000..0x3008).contains(&off) && matches!(w, 2 | 4) && off % 4 == 0;
            if !(table || pba) {
                assert_eq!(t.bar_read(0, off, w).value, 0, "{off:#x}/{w}");
            }
            if !(table || notify) {
                let _ = t.bar_write(0, off, w, u64::MAX);
                let _ = t.bar_write(0, off, w, 0);
            }
        }
    }
    // Gaps between the structures and past the BAR.
    for off in [
        0x40u64,
        0x800,
        0xFFF,
        0x1001,
        0x1800,
        0x3008,
        0x3800,
        0x4040,
        0x4800,
        0x5008,
        0x6000,
        0x7FFF,
        0x8000,
        u64::MAX,
    ] {
        for w in widths {
            assert_eq!(t.bar_read(0, off, w).value, 0, "gap {off:#x}/{w}");
            let _ = t.bar_write(0, off, w, u64::MAX);
        }
    }
    // Other BARs do not exist.
    assert_eq!(t.bar_read(1, 0x14, 1).value, 0);
    let _ = t.bar_write(2, 0x14, 1, 0);
    drop(t);
    assert_eq!(
        observe(&f),
        before,
        "an access the spec does not define changed something"
    );

    // Device configuration: 1, 2, 4, 8 bytes at any offset inside it; straddling its end
    // addresses nothing.
    let image = |at: u64, n: u64| -> u64 {
        (0..n).fold(0, |acc, k| {
            acc | u64::from(CONFIG.get((at + k) as usize).copied().unwrap_or(0)) << (8 * k)
        })
    };
    let mut t = f.t.borrow_mut();
    for at in (0..16u64).chain(0xFF0..0x1008) {
        for w in widths {
            let inside = at + u64::from(w) <= 0x1000;
            let ok = matches!(w, 1 | 2 | 4 | 8) && inside;
            let want = if ok { image(at, w.into()) } else { 0 };
            assert_eq!(
                t.bar_read(0, 0x2000 + at, w).value,
                want,
                "device {at:#x}/{w}"
            );
            let n = t.device().config_writes.len();
            let _ = t.bar_write(0, 0x2000 + at, w, 0x0807_0605_0403_0201);
            let got = &t.device().config_writes[n..];
            if ok {
                let bytes: Vec<u8> = (1..=w).collect();
                assert_eq!(got, [(at as u32, bytes)], "device {at:#x}/{w}");
            } else {
                assert!(got.is_empty(), "device {at:#x}/{w}");
            }
        }
    }
}

/// PCI-07 (§4.1.4.3.1, §2.5): device configuration reads and the 8-bit generation. Writes
/// before FEATURES_OK are ignored (INIT-03). The generation changes once per change the
/// driver could see, and never wraps back to a value the driver saw between two reads.
#[test]
fn device_config_and_generation_pci07() {
    let mem = TestMemory::m0();
    let f = function(&mem, V1);
    let d = probe(&f);
    assert_eq!(d.device_cfg(0, 8), 0x8877_6655_4433_2211);
    assert_eq!(d.device_cfg(6, 4), 0x8877, "past the device's image: zero");
    d.bus.mem_write(d.bar + d.device.offset, 4, 0xAB);
    assert!(f.t.borrow().device().config_writes.is_empty(), "INIT-03");
    d.negotiate(V1).unwrap();
    d.bus.mem_write(d.bar + d.device.offset + 2, 2, 0xBEEF);
    assert_eq!(
        f.t.borrow().device().config_writes,
        vec![(2, vec![0xEF, 0xBE])]
    );
    let g0 = d.generation();
    f.with(|t| t.signal_config_change());
    let g1 = d.generation();
    assert_ne!(g1, g0);
    // Changes while the driver has not read the configuration: one new value, not 300.
    for _ in 0..300 {
        f.with(|t| t.signal_config_change());
    }
    assert_eq!(d.generation(), g1);
    // Each change after a read gives a new value; 300 of them wrap the 8-bit counter, but
    // each differs from the value read just before it.
    let mut last = g1;
    for _ in 0..300 {
        d.device_cfg(0, 1);
        f.with(|t| t.signal_config_change());
        let g = d.generation();
        assert_ne!(g, last);
        last = g;
    }
    // No configuration interrupt before DRIVER_OK.
    assert_eq!(f.t.borrow().isr().bits(), 0);
}

/// PCI-20 (§4.1.5.2, §4.1.4.4): a 16-bit write of the queue index at the queue's notify
/// address; with NOTIFICATION_DATA the 32-bit data form. Other widths, misaligned writes and
/// writes past the last queue notify nothing; before DRIVER_OK and without Bus Master nothing
/// runs.
#[test]
fn notifications_pci20() {
    let mem = TestMemory::m0();
    let nd = Features::NOTIFICATION_DATA.bits();
    let mut drv = SplitDriver::standard(&mem, 16);
    let f = function(&mem, V1 | nd);
    let d = probe(&f);
    assert_ne!(d.device_features() & nd, 0, "offered on PCI");
    d.negotiate(V1 | nd).unwrap();
    d.setup_queue(0, 16, (drv.desc, drv.avail, drv.used), NO_VECTOR);
    let at = d.notify_addr(0);
    drv.add_chain(&[(0x8000, 16, false)]);
    mem.start_recording();
    d.bus.mem_write(at, 2, 0);
    assert!(mem.take_log().is_empty(), "before DRIVER_OK: nothing read");
    d.driver_ok();
    assert_eq!(
        drv.pop_used(),
        Some((0, 0)),
        "DRIVER_OK ran what was queued (INIT-07)"
    );
    let served = |f: &F<'_>| f.t.borrow().device().notified.len();
    // Widths and offsets that are not a notification.
    for (addr, w) in [
        (at, 1u8),
        (at, 8),
        (at + 2, 2),
        (at + 1, 2),
        (at + 4 * 3, 2),
        (at + 0x100, 4),
    ] {
        drv.add_chain(&[(0x8000, 16, false)]);
        let n = served(&f);
        d.bus.mem_write(addr, w, 0);
        assert_eq!(served(&f), n, "{addr:#x}/{w}");
        // Picked up by the next real notification.
        d.bus.mem_write(at, 2, 0);
        assert_eq!(drv.pop_used().map(|u| u.1), Some(0));
    }
    // The NOTIFICATION_DATA form: vqn | next_idx << 16, 32 bits.
    drv.add_chain(&[(0x8000, 16, false)]);
    let next = u64::from(mem.peek_u16(drv.avail + 2));
    d.bus.mem_write(at, 4, next << 16);
    assert_eq!(drv.pop_used().map(|u| u.1), Some(0));
    // Without Bus Master the function does no DMA: the queue is not run.
    let command = d.bus.cfg_read(layout::COMMAND, 2);
    d.bus.cfg_write(
        layout::COMMAND,
        2,
        command & !u64::from(layout::COMMAND_BUS_MASTER),
    );
    drv.add_chain(&[(0x8000, 16, false)]);
    mem.start_recording();
    d.bus.mem_write(at, 2, 0);
    assert!(mem.take_log().is_empty(), "no DMA without Bus Master");
    d.bus.cfg_write(layout::COMMAND, 2, command);
    d.bus.mem_write(at, 2, 0);
    assert_eq!(drv.pop_used().map(|u| u.1), Some(0));
}

/// PCI-13 (§4.1.4.9): the `VIRTIO_PCI_CAP_PCI_CFG` window reaches BAR 0 through configuration
/// space, with Memory Space off; an invalid window reads 0 and writes nothing.
#[test]
fn pci_cfg_window_pci13() {
    let mem = TestMemory::m0();
    let mut drv = SplitDriver::standard(&mem, 16);
    let f = function(&mem, V1);
    let d = live(&f, &drv, V1, NO_VECTOR);
    let command = d.bus.cfg_read(layout::COMMAND, 2);
    d.bus
        .cfg_write(layout::COMMAND, 2, u64::from(layout::COMMAND_BUS_MASTER));
    assert_eq!(d.bus.mem_read(d.bar, 4), 0xFFFF_FFFF, "BAR not decoded");
    // Reads: num_queues, status, the device configuration.
    assert_eq!(d.window_read(cc::NUM_QUEUES, 2), 2);
    assert_eq!(d.window_read(cc::DEVICE_STATUS, 1), 0xF);
    assert_eq!(d.window_read(layout::DEVICE_OFFSET + 4, 4), 0x8877_6655);
    // A notification and the ISR read-to-clear through the window.
    drv.add_chain(&[(0x8000, 16, false)]);
    d.window_write(layout::NOTIFY_OFFSET, 2, 0);
    assert_eq!(drv.pop_used(), Some((0, 0)));
    assert_eq!(f.t.borrow().isr().bits(), 1);
    assert!(f.irq.borrow().intx);
    assert_eq!(d.window_read(layout::ISR_OFFSET, 1), 1);
    assert_eq!(f.t.borrow().isr().bits(), 0);
    assert!(!f.irq.borrow().intx, "INTA# dropped by the read");
    // Invalid windows: another BAR, a length that is not 1/2/4, misaligned, past the BAR.
    let cap = d.pci_cfg.cap;
    for (bar, len, off) in [
        (1u64, 4u64, 0u64),
        (0, 3, 0),
        (0, 8, 0),
        (0, 4, 2),
        (0, 2, 0x7FFF),
        (0, 4, 0x8000),
        (0, 1, u64::from(u32::MAX)),
    ] {
        d.bus.cfg_write(cap + 4, 1, bar);
        d.bus.cfg_write(cap + 12, 4, len);
        d.bus.cfg_write(cap + 8, 4, off);
        assert_eq!(
            d.bus.cfg_read(cap + 16, 4),
            0,
            "bar {bar} len {len} off {off:#x}"
        );
        d.bus.cfg_write(cap + 16, 4, 0);
    }
    assert!(
        f.t.borrow().is_live(),
        "no invalid window reached the status"
    );
    // The window fields read back.
    assert_eq!(d.bus.cfg_read(cap + 4, 1), 0);
    assert_eq!(d.bus.cfg_read(cap + 12, 4), 1);
    d.bus.cfg_write(layout::COMMAND, 2, command);
}

/// FEAT-05, FEAT-08 on PCI: FEATURES_OK with a bit not offered stays clear, and so does one
/// without VERSION_1; the features the transport cannot carry are never offered.
#[test]
fn features_ok_with_unsupported_bits_feat05_feat08() {
    let mem = TestMemory::m0();
    let f = function(&mem, u64::MAX);
    let d = probe(&f);
    let offered = d.device_features();
    for bit in [
        Features::SR_IOV,
        Features::NOTIF_CONFIG_DATA,
        Features::ADMIN_VQ,
        Features::SUSPEND,
        Features::RING_PACKED,
    ] {
        assert_eq!(offered & bit.bits(), 0, "{bit:?} never offered here");
    }
    assert_eq!(offered & (0x3F << 44), 0, "reserved bits");
    for want in [V1 | Features::SR_IOV.bits(), V1 | (1 << 45), 1] {
        d.reset();
        d.set_status(3);
        d.write_features(want);
        d.set_status(3 | 8);
        assert_eq!(d.status() & 8, 0, "{want:#x} accepted");
        // And no queue can be enabled (§3.1.1).
        d.select(0);
        d.cw(cc::QUEUE_ENABLE, 2, 1);
        assert_eq!(d.cr(cc::QUEUE_ENABLE, 2), 0);
        assert_eq!(
            f.t.borrow().queue_setup_error(0),
            Some(QueueSetupError::FeaturesNotAccepted)
        );
    }
    assert_eq!(d.negotiate(V1 | 1), Some(V1 | 1));
}
