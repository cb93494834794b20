//! Interrupts of the virtio-pci function (VIRTIO 1.4 §4.1.4.5, §4.1.5.1.2, §4.1.5.4, §4.1.5.5;
//! PCI Local Bus 3.0 §6.8.2): MSI-X per-queue and configuration vectors, NO_VECTOR, the
//! function mask and per-vector masks with pending bits sent on unmask, Bus Master, and INTx
//! with the ISR and the command register's Interrupt Disable. The transport raises nothing:
//! every test reads what the outcomes told the hypervisor (`pci_driver::Function`).

mod pci_driver;

use pci_driver::{BAR_BASE, PciBus, PciDriver, Shared, attach, msi_for};
use virtq::Features;
use virtq::transport::pci::{NO_VECTOR, PciEvents, layout};
use virtq_testkit::devices::ConsoleDevice;
use virtq_testkit::devices::console::{RX, TX};
use virtq_testkit::{SplitDriver, TestMemory};

use layout::common as cc;

/// A console (queues 0 receive, 1 transmit) with 4 MSI-X vectors.
type F<'m> = Shared<ConsoleDevice, &'m TestMemory, 2, 4>;
const V1: u64 = Features::VERSION_1.bits();

struct Rig<'m> {
    f: F<'m>,
    d: PciDriver<F<'m>>,
    rx: SplitDriver<'m>,
    tx: SplitDriver<'m>,
}

/// A live console with queue `RX` on vector `vrx`, `TX` on `vtx`, configuration changes on
/// `vcfg`; MSI-X programmed and enabled when `msix`.
fn rig(mem: &TestMemory, msix: bool, vrx: u16, vtx: u16, vcfg: u16) -> Rig<'_> {
    let f: F<'_> = attach(ConsoleDevice::new(Features::empty(), 16), mem);
    let d = PciDriver::probe(f.clone(), BAR_BASE).unwrap();
    assert_eq!(d.msix.table_size, 4);
    if msix {
        d.enable_msix(4);
    }
    d.negotiate(V1).unwrap();
    let rx = SplitDriver::new(mem, 16, 0x1000, 0x2000, 0x3000);
    let tx = SplitDriver::new(mem, 16, 0x5000, 0x6000, 0x7000);
    assert_eq!(
        d.setup_queue(RX, 16, (rx.desc, rx.avail, rx.used), vrx),
        vrx
    );
    assert_eq!(
        d.setup_queue(TX, 16, (tx.desc, tx.avail, tx.used), vtx),
        vtx
    );
    assert_eq!(d.set_config_vector(vcfg), vcfg);
    d.driver_ok();
    f.irq.borrow_mut().take_msi();
    Rig { f, d, rx, tx }
}

impl Rig<'_> {
    /// Post a receive buffer and transmit `msg` (the console echoes it into the buffer).
    fn echo(&mut self, msg: &[u8]) {
        self.rx.add_chain(&[(0x9000, 64, true)]);
        self.d.notify(RX);
        self.f.t.borrow().memory().poke(0x8000, msg);
        self.tx.add_chain(&[(0x8000, msg.len() as u32, false)]);
        self.d.notify(TX);
        assert!(self.tx.pop_used().is_some());
        assert_eq!(self.rx.pop_used().map(|u| u.1), Some(msg.len() as u32));
    }

    fn msi(&self) -> Vec<virtq::transport::pci::MsiMessage> {
        self.f.irq.borrow_mut().take_msi()
    }
}

/// PCI-14, PCI-15: each queue's completions go to its own vector, configuration changes to
/// theirs, and an event mapped to NO_VECTOR sends nothing (§4.1.5.4.1, §4.1.5.5.1). With
/// MSI-X on, INTx stays low and the ISR gets no queue bit.
#[test]
fn per_queue_and_config_vectors_pci14_pci15() {
    let mem = TestMemory::m0();
    let mut r = rig(&mem, true, 2, 3, 1);
    r.echo(b"ping");
    // A transmit kick completes on both queues: one message each, on their vectors.
    let msi = r.msi();
    assert!(
        msi.contains(&msi_for(2)) && msi.contains(&msi_for(3)),
        "{msi:?}"
    );
    assert!(!msi.contains(&msi_for(1)));
    assert_eq!(
        r.f.t.borrow().isr().bits(),
        0,
        "no ISR queue bit with MSI-X"
    );
    assert_eq!(r.f.irq.borrow().intx_edges, 0, "PCI-17: no INTx with MSI-X");
    // A configuration change: its vector, and ISR bit 1 (§4.1.4.5).
    r.f.with(|t| t.signal_config_change());
    assert_eq!(r.msi(), vec![msi_for(1)]);
    assert_eq!(r.d.read_isr(), 2);
    // Unmapped: NO_VECTOR for the receive queue and the configuration.
    r.d.select(RX);
    r.d.cw(cc::QUEUE_MSIX_VECTOR, 2, u64::from(NO_VECTOR));
    assert_eq!(r.d.set_config_vector(NO_VECTOR), NO_VECTOR);
    r.echo(b"pong");
    assert_eq!(
        r.msi(),
        vec![msi_for(3)],
        "only the transmit queue's vector"
    );
    r.f.with(|t| t.signal_config_change());
    assert!(
        r.msi().is_empty(),
        "PCI-15: no configuration message on NO_VECTOR"
    );
    // A vector the table does not have reads back NO_VECTOR (a refused mapping, PCI-14).
    assert_eq!(r.d.set_config_vector(4), NO_VECTOR);
    assert_eq!(r.d.set_config_vector(0x7FF), NO_VECTOR);
    r.d.select(TX);
    r.d.cw(cc::QUEUE_MSIX_VECTOR, 2, 4);
    assert_eq!(r.d.cr(cc::QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    assert_eq!(r.f.t.borrow().queue_vector(TX), Some(NO_VECTOR));
    assert_eq!(r.f.t.borrow().queue_vector(2), None);
    // A device reset unmaps every event (§4.1.5.1.2.1) and drops pending messages.
    r.d.reset();
    assert_eq!(r.d.cr(cc::CONFIG_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    r.d.select(TX);
    assert_eq!(r.d.cr(cc::QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    assert!(
        r.f.t.borrow().msix_enabled(),
        "MSI-X itself is PCI state and stays"
    );
}

/// PCI-16: a masked vector's message waits in the pending bit array and is sent on unmask;
/// the function mask holds every vector; Bus Master off holds them too (a message is a DMA
/// write).
#[test]
fn masks_and_pending_bits_pci16() {
    let mem = TestMemory::m0();
    let mut r = rig(&mem, true, 2, 3, 1);
    // Per-vector mask.
    r.d.mask_vector(2, true);
    r.echo(b"a");
    assert_eq!(r.msi(), vec![msi_for(3)]);
    assert_eq!(r.d.pba(), 1 << 2);
    assert_eq!(r.f.t.borrow().msix_pending(), 1 << 2);
    // A second event on the masked vector: still one pending bit, one message on unmask.
    r.echo(b"b");
    assert_eq!(r.msi(), vec![msi_for(3)]);
    r.d.mask_vector(2, false);
    assert_eq!(r.msi(), vec![msi_for(2)], "sent on unmask");
    assert_eq!(r.d.pba(), 0);
    // Function mask: everything pends, then goes out together.
    r.d.set_msix_control(true, true);
    r.echo(b"c");
    r.f.with(|t| t.signal_config_change());
    assert!(r.msi().is_empty());
    assert_eq!(r.d.pba(), 0b1110);
    // The outcome of the unmasking write carries the messages.
    let cap = r.d.msix.cap;
    let out = r.f.t.borrow_mut().config_write(cap + 2, 2, 1 << 15);
    assert_eq!(out.msix.iter().collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(out.msix.bits(), 0b1110);
    r.f.deliver(out);
    assert_eq!(r.d.pba(), 0);
    r.msi();
    // Bus Master off: messages wait; on again: sent.
    let command = r.d.bus.cfg_read(layout::COMMAND, 2);
    r.d.bus.cfg_write(
        layout::COMMAND,
        2,
        command & !u64::from(layout::COMMAND_BUS_MASTER),
    );
    r.f.with(|t| t.signal_config_change());
    assert!(r.msi().is_empty());
    assert_eq!(r.d.pba(), 1 << 1);
    r.d.bus.cfg_write(layout::COMMAND, 2, command);
    assert_eq!(r.msi(), vec![msi_for(1)]);
}

/// The MSI-X table (PCI 3.0 §6.8.2): entries masked at power-on, address dword aligned,
/// Vector Control only its mask bit; accesses outside the table or of other widths do
/// nothing; the PBA is read-only.
#[test]
fn msix_table_and_pba_registers() {
    let mem = TestMemory::m0();
    let f: F<'_> = attach(ConsoleDevice::new(Features::empty(), 16), &mem);
    let d = PciDriver::probe(f.clone(), BAR_BASE).unwrap();
    let table = d.bar + d.msix.table;
    for v in 0..4u64 {
        assert_eq!(
            d.bus.mem_read(table + v * 16 + 12, 4),
            1,
            "masked at power-on"
        );
    }
    d.bus.mem_write(table + 16, 8, 0xFFFF_FFFF_FEE0_1003);
    d.bus.mem_write(table + 24, 8, 0xFFFF_FFFF_0000_4021);
    assert_eq!(
        d.bus.mem_read(table + 16, 4),
        0xFEE0_1000,
        "bits 1:0 read 0"
    );
    assert_eq!(d.bus.mem_read(table + 20, 4), 0xFFFF_FFFF);
    assert_eq!(d.bus.mem_read(table + 24, 4), 0x4021);
    assert_eq!(d.bus.mem_read(table + 28, 4), 1, "only the mask bit");
    assert_eq!(
        f.t.borrow().msix_message(1).map(|m| (m.address, m.data)),
        Some((0xFFFF_FFFF_FEE0_1000, 0x4021))
    );
    assert_eq!(f.t.borrow().msix_message(4), None);
    // Out of range: entries 4.. of a 4-entry table, the rest of the page; other widths and
    // misaligned accesses; the PBA.
    let snapshot = |d: &PciDriver<F<'_>>| -> Vec<u64> {
        (0..64).map(|i| d.bus.mem_read(table + i * 8, 8)).collect()
    };
    let before = snapshot(&d);
    for off in (64..0x1000u64).step_by(4) {
        d.bus.mem_write(table + off, 4, u64::MAX);
        d.bus.mem_write(table + off, 8, u64::MAX);
    }
    for (off, w) in [(0u64, 1u8), (0, 2), (2, 4), (4, 8), (12, 2), (13, 1)] {
        d.bus.mem_write(table + off, w, u64::MAX);
    }
    assert_eq!(snapshot(&d), before);
    for off in [64u64, 0x3F8, 0xFFC] {
        assert_eq!(d.bus.mem_read(table + off, 4), 0);
    }
    d.bus.mem_write(d.bar + d.msix.pba, 8, u64::MAX);
    assert_eq!(d.pba(), 0);
}

/// PCI-12, PCI-17: without MSI-X, completions set ISR bit 0 and raise INTA# (a level); a read
/// of the ISR returns and clears it and drops the line; Interrupt Disable keeps the line low
/// while the status register still shows the interrupt; clearing it raises the line again.
#[test]
fn intx_isr_and_interrupt_disable_pci12_pci17() {
    let mem = TestMemory::m0();
    let mut r = rig(&mem, false, NO_VECTOR, NO_VECTOR, NO_VECTOR);
    r.echo(b"x");
    assert!(r.msi().is_empty());
    assert!(r.f.irq.borrow().intx);
    let status = r.d.bus.cfg_read(layout::STATUS, 2);
    assert_ne!(status & u64::from(layout::STATUS_INTERRUPT), 0);
    // Wrong widths neither read nor clear the ISR.
    assert_eq!(r.d.bus.mem_read(r.d.bar + r.d.isr.offset, 4), 0);
    assert_eq!(r.f.t.borrow().isr().bits(), 1);
    assert_eq!(r.d.read_isr(), 1);
    assert!(!r.f.irq.borrow().intx, "INTA# dropped by the read");
    assert_eq!(r.d.read_isr(), 0);
    assert_eq!(
        r.d.bus.cfg_read(layout::STATUS, 2) & u64::from(layout::STATUS_INTERRUPT),
        0
    );
    // Interrupt Disable.
    let command = r.d.bus.cfg_read(layout::COMMAND, 2);
    r.d.bus.cfg_write(
        layout::COMMAND,
        2,
        command | u64::from(layout::COMMAND_INTX_DISABLE),
    );
    r.echo(b"y");
    assert!(!r.f.irq.borrow().intx, "disabled");
    assert_ne!(
        r.d.bus.cfg_read(layout::STATUS, 2) & u64::from(layout::STATUS_INTERRUPT),
        0,
        "still pending"
    );
    r.d.bus.cfg_write(layout::COMMAND, 2, command);
    assert!(r.f.irq.borrow().intx, "raised when enabled again");
    // A configuration change sets bit 1 too; one read clears both.
    r.f.with(|t| t.signal_config_change());
    assert_eq!(r.d.read_isr(), 3);
    // Enabling MSI-X takes INTx away even with the ISR set.
    r.echo(b"z");
    assert!(r.f.irq.borrow().intx);
    r.d.enable_msix(4);
    assert!(!r.f.irq.borrow().intx);
    let edges = r.f.irq.borrow().intx_edges;
    assert!(edges >= 3);
}

/// INIT-11 / STAT-09 on PCI: a queue refused after DRIVER_OK raises DEVICE_NEEDS_RESET with a
/// configuration interrupt (MSI-X: the configuration vector), and the outcome says so.
#[test]
fn needs_reset_raises_config_interrupt() {
    let mem = TestMemory::m0();
    for msix in [true, false] {
        let r = rig(&mem, msix, 2, 3, 1);
        // The receive queue is reset (RING_RESET not offered: not possible), so refuse a
        // queue by raising NEEDS_RESET from the device side.
        let out = r.f.t.borrow_mut().raise_needs_reset();
        assert!(out.events.contains(PciEvents::NEEDS_RESET));
        r.f.deliver(out);
        assert_ne!(r.d.status() & 64, 0);
        if msix {
            assert_eq!(r.msi(), vec![msi_for(1)]);
        } else {
            assert!(r.f.irq.borrow().intx);
            assert_eq!(r.d.read_isr(), 2);
        }
        // Only once until reset.
        let out = r.f.t.borrow_mut().raise_needs_reset();
        assert!(out.msix.is_empty() && !out.events.contains(PciEvents::NEEDS_RESET));
    }
}
