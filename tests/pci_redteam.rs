//! An adversarial pass over the virtio-pci function (issue 14, "Hostile input"), written as
//! an outside red team would: every register at every width with hostile values, read-only
//! and write-only registers, the MSI-X table past its end, queue_reset and re-programming,
//! notification data, the configuration generation, INTx with Interrupt Disable, pending bits
//! delivered on every kind of unmask, and save/restore fed hostile bytes.
//!
//! Requirement IDs: PCI-xx are listed in `virtq::transport::pci`; FEAT/STAT are the shared
//! checklist's.

mod pci_driver;

use pci_driver::{BAR_BASE, PciBus, PciDriver, Shared, attach, msi_for};
use virtq::Features;
use virtq::snapshot::{HEADER_LEN, StateError, StateField};
use virtq::transport::pci::{NO_VECTOR, PciTransport, layout};
use virtq_testkit::devices::BlkDevice;
use virtq_testkit::{SplitDriver, TestMemory};

use layout::common as cc;

type F<'m> = Shared<BlkDevice, &'m TestMemory, 2, 4>;
type T<'m> = PciTransport<BlkDevice, &'m TestMemory, 2, 4>;
const V1: u64 = Features::VERSION_1.bits();
const WIDTHS: [u8; 8] = [0, 1, 2, 3, 4, 5, 8, 16];
const VALUES: [u64; 4] = [0, 1, 0x8000_0001, u64::MAX];

fn function(mem: &TestMemory, extra: Features) -> F<'_> {
    attach(BlkDevice::new(64, extra, 16), mem)
}

fn probe<'m>(f: &F<'m>) -> PciDriver<F<'m>> {
    PciDriver::probe(f.clone(), BAR_BASE).expect("probe")
}

/// A driver with `want` negotiated, MSI-X on (entries 0..4 unmasked), the configuration
/// mapped to vector 0, queue 0 at `drv`'s rings mapped to vector 1, DRIVER_OK.
fn live<'m>(f: &F<'m>, drv: &SplitDriver<'_>, want: u64) -> PciDriver<F<'m>> {
    let d = probe(f);
    d.enable_msix(4);
    assert_eq!(d.negotiate(want), Some(want));
    assert_eq!(d.set_config_vector(0), 0);
    d.setup_queue(0, drv.size, (drv.desc, drv.avail, drv.used), 1);
    assert_eq!(f.t.borrow().queue_setup_error(0), None);
    d.driver_ok();
    assert!(f.t.borrow().is_live());
    f.irq.borrow_mut().take_msi();
    d
}

/// Queue one request on `drv` (a header the block device answers, a status byte) at `at`.
fn request(mem: &TestMemory, drv: &mut SplitDriver<'_>, at: u64) -> u16 {
    let mut header = [0u8; 16];
    header[0] = 8; // VIRTIO_BLK_T_GET_ID's neighbour: an unsupported type, answered UNSUPP
    mem.poke(at, &header);
    drv.add_chain(&[(at, 16, false), (at + 0x100, 1, true)])
        .expect("room")
}

/// Everything a driver can observe of the function without side effects: every
/// configuration dword but `pci_cfg_data`, every common field of every queue, the MSI-X table
/// and PBA, device configuration.
fn observe(t: &mut T<'_>) -> Vec<u64> {
    let mut v = Vec::new();
    for dw in (0..0x100u16).step_by(4) {
        if dw != layout::PCI_CFG_DATA {
            v.push(t.config_read(dw, 4).value);
        }
    }
    let sel = t.bar_read(0, cc::QUEUE_SELECT, 2).value;
    for q in 0..3u64 {
        let _ = t.bar_write(0, cc::QUEUE_SELECT, 2, q);
        for (off, w) in [
            (0x10, 2),
            (0x12, 2),
            (0x14, 1),
            (0x15, 1),
            (0x18, 2),
            (0x1A, 2),
            (0x1C, 2),
            (0x1E, 2),
            (0x20, 8),
            (0x28, 8),
            (0x30, 8),
            (0x38, 2),
            (0x3A, 2),
            (0x3C, 2),
            (0x3E, 2),
        ] {
            v.push(t.bar_read(0, off, w).value);
        }
    }
    let _ = t.bar_write(0, cc::QUEUE_SELECT, 2, sel);
    for sel in 0..3u64 {
        let _ = t.bar_write(0, cc::DEVICE_FEATURE_SELECT, 4, sel);
        v.push(t.bar_read(0, cc::DEVICE_FEATURE, 4).value);
    }
    for off in (0..0x40).step_by(8) {
        v.push(t.bar_read(0, layout::MSIX_TABLE_OFFSET + off, 8).value);
    }
    v.push(t.bar_read(0, layout::MSIX_PBA_OFFSET, 8).value);
    v.push(u64::from(t.status().bits()));
    v.push(t.negotiated_features().bits());
    v
}

/// No (offset, width, value) in configuration space or any BAR panics or hangs, and what is
/// not a register reads 0 (PCI-19). Run on a live function (queue enabled, MSI-X on) and
/// again on the wreck the first pass left.
#[test]
fn exhaustive_offsets_widths_values_never_panic_pci19() {
    let mem = TestMemory::m0();
    let drv = SplitDriver::standard(&mem, 16);
    let f = function(&mem, Features::empty());
    let _d = live(&f, &drv, V1);
    let mut t = f.t.borrow_mut();
    for pass in 0..2 {
        for off in 0..0x120u16 {
            for w in WIDTHS {
                let ok = matches!(w, 1 | 2 | 4) && off % u16::from(w) == 0 && off < 0x100;
                let r = t.config_read(off, w).value;
                if !ok {
                    assert_eq!(r, 0, "pass {pass}: config {off:#x}/{w}");
                }
                for value in VALUES {
                    let _ = t.config_write(off, w, value);
                }
            }
        }
        // Put BAR 0 back where it was and decoding on, so memory accesses reach it too.
        let _ = t.config_write(layout::BAR0, 4, BAR_BASE & 0xFFFF_FFFF);
        let _ = t.config_write(layout::BAR1, 4, BAR_BASE >> 32);
        let _ = t.config_write(layout::COMMAND, 2, 0b110);
        let table_end = layout::MSIX_TABLE_OFFSET + 4 * 16;
        for off in (0..layout::BAR_SIZE + 0x10).chain(u64::MAX - 16..=u64::MAX) {
            let gap = !(off < layout::COMMON_OFFSET + layout::COMMON_LEN
                || off == layout::ISR_OFFSET
                || (layout::DEVICE_OFFSET..layout::DEVICE_OFFSET + layout::DEVICE_LEN)
                    .contains(&off)
                || (layout::MSIX_TABLE_OFFSET..table_end).contains(&off)
                || (layout::MSIX_PBA_OFFSET..layout::MSIX_PBA_OFFSET + 8).contains(&off));
            for w in WIDTHS {
                for bar in [0u8, 1, 5, 255] {
                    let r = t.bar_read(bar, off, w).value;
                    if bar != 0 || gap || !matches!(w, 1 | 2 | 4 | 8) {
                        assert_eq!(r, 0, "pass {pass}: bar {bar} {off:#x}/{w}");
                    }
                }
                // Memory accesses: decoded only inside the BAR.
                let addr = BAR_BASE.wrapping_add(off);
                let inside = off < layout::BAR_SIZE;
                assert_eq!(t.memory_read(addr, w).is_some(), inside, "{addr:#x}");
                for value in VALUES {
                    let _ = t.bar_write(0, off, w, value);
                    let _ = t.bar_write(3, off, w, value);
                }
            }
        }
        let _ = t.config_write(layout::COMMAND, 2, 0b110);
        assert_eq!(t.config_read(0, 4).value, 0x1042_1AF4, "pass {pass}");
    }
}

/// Writes to read-only registers change nothing a driver can see, at every width and with
/// any value (PCI-11, §4.1.4.3.2; PCI 3.0 §6.1: read-only header fields). Writes that
/// address nothing (gaps, straddles, other widths) change nothing either.
#[test]
fn read_only_and_unaddressed_writes_change_nothing_pci11() {
    let mem = TestMemory::m0();
    let mut drv = SplitDriver::standard(&mem, 16);
    let f = function(&mem, Features::RING_RESET);
    let _d = live(&f, &drv, V1 | Features::RING_RESET.bits());
    request(&mem, &mut drv, 0x8000);
    let mut t = f.t.borrow_mut();
    let _ = t.signal_config_change();
    let before = observe(&mut t);
    // Common configuration: the read-only fields and everything that is not a field.
    let common_ro = [
        (cc::DEVICE_FEATURE, 4u8),
        (cc::NUM_QUEUES, 2),
        (cc::CONFIG_GENERATION, 1),
        (cc::QUEUE_NOTIFY_OFF, 2),
        (cc::QUEUE_NOTIFY_DATA, 2),
        (cc::ADMIN_QUEUE_INDEX, 2),
        (cc::ADMIN_QUEUE_NUM, 2),
    ];
    for q in 0..3 {
        let _ = t.bar_write(0, cc::QUEUE_SELECT, 2, q);
        for (off, w) in common_ro {
            for value in VALUES {
                let _ = t.bar_write(0, off, w, value);
            }
        }
    }
    let _ = t.bar_write(0, cc::QUEUE_SELECT, 2, 0);
    for off in 0..0x48u64 {
        for w in [3u8, 5, 16] {
            for value in VALUES {
                let _ = t.bar_write(0, off, w, value);
            }
        }
    }
    // ISR, PBA, the gaps between structures and past the end.
    for off in [
        0x40, 0x1000, 0x1001, 0x1FFF, 0x3FF0, 0x5000, 0x5004, 0x5008, 0x7FFC,
    ] {
        for w in WIDTHS {
            for value in VALUES {
                let _ = t.bar_write(0, off, w, value);
            }
        }
    }
    // Configuration header: every byte that is not command, BAR 0/1, interrupt line,
    // MSI-X Message Control's upper byte or the PCI_CFG window.
    let writable = |b: u16| {
        matches!(b, 0x04 | 0x05 | 0x10..=0x17 | 0x3C | 0x43)
            || (layout::PCI_CFG_BAR..layout::CAPS_END).contains(&b)
    };
    for b in 0..0x100u16 {
        if !writable(b) {
            for value in [0u64, 0xFF, 0xA5] {
                let _ = t.config_write(b, 1, value);
            }
        }
    }
    assert_eq!(observe(&mut t), before);
}

/// The MSI-X table has `V` entries: qword and dword writes at every entry past the end, and
/// every misaligned or narrow access inside it, change no entry, no pending bit and nothing
/// else (PCI 3.0 §6.8.2; issue 14, "MSI-X table writes out of range").
#[test]
fn msix_table_writes_out_of_range_change_nothing() {
    let mem = TestMemory::m0();
    let drv = SplitDriver::standard(&mem, 16);
    let f = function(&mem, Features::empty());
    let _d = live(&f, &drv, V1);
    let mut t = f.t.borrow_mut();
    let before = observe(&mut t);
    let table = layout::MSIX_TABLE_OFFSET;
    for off in (4 * 16..0x1000).step_by(4) {
        for w in [4u8, 8] {
            for value in VALUES {
                let out = t.bar_write(0, table + off, w, value);
                assert!(out.msix.is_empty(), "{off:#x}");
            }
        }
    }
    for off in 0..4 * 16u64 {
        for w in [1u8, 2, 3] {
            let _ = t.bar_write(0, table + off, w, u64::MAX);
        }
        if off % 4 != 0 {
            let _ = t.bar_write(0, table + off, 4, u64::MAX);
        }
        if off % 8 != 0 {
            let _ = t.bar_write(0, table + off, 8, u64::MAX);
        }
    }
    assert_eq!(observe(&mut t), before);
    for v in 0..8u16 {
        assert_eq!(t.msix_message(v), (v < 4).then(|| msi_for(v)), "entry {v}");
    }
}

/// Per-queue reset (§2.6.1, §4.1.4.3.2, PCI-09): with RING_RESET, `queue_reset = 1` on a
/// live queue completes at once: `queue_reset` and `queue_enable` read 0, the size reads the
/// maximum again, the vector is unmapped, and a notification does nothing. The driver may then
/// program the queue again with another size and rings, and it runs there. Without RING_RESET
/// the write is ignored.
#[test]
fn queue_reset_then_reprogram_pci09() {
    let mem = TestMemory::m0();
    for negotiated in [false, true] {
        let mut drv = SplitDriver::standard(&mem, 16);
        let f = function(&mem, Features::RING_RESET);
        let want = V1
            | if negotiated {
                Features::RING_RESET.bits()
            } else {
                0
            };
        let d = live(&f, &drv, want);
        request(&mem, &mut drv, 0x8000);
        d.notify(0);
        assert_eq!(drv.used_idx(), 1);
        d.select(0);
        d.cw(cc::QUEUE_RESET, 2, 1);
        assert_eq!(d.cr(cc::QUEUE_RESET, 2), 0);
        if !negotiated {
            assert_eq!(d.cr(cc::QUEUE_ENABLE, 2), 1, "ignored without RING_RESET");
            request(&mem, &mut drv, 0x8000);
            d.notify(0);
            assert_eq!(drv.used_idx(), 2);
            continue;
        }
        assert_eq!(d.cr(cc::QUEUE_ENABLE, 2), 0);
        assert_eq!(d.cr(cc::QUEUE_SIZE, 2), 16, "the maximum again");
        assert_eq!(d.cr(cc::QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
        assert_eq!(d.cr(cc::QUEUE_DESC, 8), 0);
        request(&mem, &mut drv, 0x8000);
        d.notify(0);
        assert_eq!(drv.used_idx(), 1, "a reset queue is not run");
        // Program it again: 8 entries at new rings.
        let mut drv2 = SplitDriver::new(&mem, 8, 0x40000, 0x41000, 0x42000);
        assert_eq!(d.setup_queue(0, 8, (0x40000, 0x41000, 0x42000), 2), 2);
        assert_eq!(f.t.borrow().queue_setup_error(0), None);
        assert_eq!(d.cr(cc::QUEUE_ENABLE, 2), 1);
        f.irq.borrow_mut().take_msi();
        request(&mem, &mut drv2, 0x9000);
        d.notify(0);
        assert_eq!(drv2.used_idx(), 1, "runs at the new rings");
        assert_eq!(f.irq.borrow_mut().take_msi(), [msi_for(2)]);
        assert_eq!(d.status() & 64, 0, "no DEVICE_NEEDS_RESET");
    }
}

/// `VIRTIO_F_NOTIFICATION_DATA` (§4.1.5.2, PCI-20): a 32-bit write of `vqn | next_off << 16
/// | next_wrap << 31` at the queue's notify address notifies it, whatever the data; a 16-bit
/// write still does. The address names the queue: data naming another queue does not
/// redirect it.
#[test]
fn notification_data_at_the_queue_address_pci20() {
    let mem = TestMemory::m0();
    let mut drv = SplitDriver::standard(&mem, 16);
    let f = function(&mem, Features::NOTIFICATION_DATA);
    let nd = Features::NOTIFICATION_DATA.bits();
    let d = live(&f, &drv, V1 | nd);
    let at = d.notify_addr(0);
    let mut n = 0;
    for (w, value) in [(4u8, 1u64 << 16), (4, 0xFFFF_0001), (2, 0), (4, u64::MAX)] {
        request(&mem, &mut drv, 0x8000);
        n += 1;
        f.mem_write(at, w, value);
        assert_eq!(drv.used_idx(), n, "{w}/{value:#x}");
        assert_eq!(f.irq.borrow_mut().take_msi(), [msi_for(1)]);
    }
    // Other widths, or an address inside the doorbell, are no notification.
    request(&mem, &mut drv, 0x8000);
    for (addr, w) in [(at, 1u8), (at, 8), (at + 1, 2), (at + 2, 2)] {
        f.mem_write(addr, w, 0);
    }
    assert_eq!(drv.used_idx(), n);
}

/// `config_generation` (§4.1.4.3.1, PCI-07): a change the driver could have seen in part
/// gives a new generation, whether it read the configuration directly or through the
/// `VIRTIO_PCI_CAP_PCI_CFG` window; and the 8-bit value is never one the driver saw since its
/// last configuration read.
#[test]
fn config_generation_after_reads_pci07() {
    let mem = TestMemory::m0();
    let drv = SplitDriver::standard(&mem, 16);
    let f = function(&mem, Features::empty());
    let d = live(&f, &drv, V1);
    let mut seen = d.generation();
    for round in 0..600u32 {
        // Read the configuration (directly or through the window), then the device changes
        // it, possibly several times.
        if round % 2 == 0 {
            d.device_cfg(0, 4);
        } else {
            d.window_read(layout::DEVICE_OFFSET, 4);
        }
        for _ in 0..=(round % 3) {
            f.with(|t| t.signal_config_change());
        }
        let g = d.generation();
        assert_ne!(g, seen, "round {round}: a change after a read must show");
        seen = g;
    }
    // Configuration interrupts: one per change, on the configuration vector.
    assert!(!f.irq.borrow_mut().take_msi().is_empty());
}

/// INTx (PCI-12, PCI-17): while Interrupt Disable is set the line stays low, the status
/// register's Interrupt Status still shows the pending interrupt, and clearing Interrupt
/// Disable raises the line for the interrupt still pending; reading the ISR clears both.
#[test]
fn intx_with_interrupt_disable_pci17() {
    let mem = TestMemory::m0();
    let mut drv = SplitDriver::standard(&mem, 16);
    let f = function(&mem, Features::empty());
    let d = probe(&f);
    assert_eq!(d.negotiate(V1), Some(V1));
    d.setup_queue(0, 16, (drv.desc, drv.avail, drv.used), NO_VECTOR);
    d.driver_ok();
    let cmd = f.cfg_read(layout::COMMAND, 2);
    f.cfg_write(
        layout::COMMAND,
        2,
        cmd | u64::from(layout::COMMAND_INTX_DISABLE),
    );
    request(&mem, &mut drv, 0x8000);
    d.notify(0);
    assert_eq!(drv.used_idx(), 1);
    assert!(!f.irq.borrow().intx, "disabled");
    let status = f.cfg_read(layout::STATUS, 2);
    assert_ne!(status & u64::from(layout::STATUS_INTERRUPT), 0);
    f.cfg_write(layout::COMMAND, 2, cmd);
    assert!(f.irq.borrow().intx, "enabled again: the pending interrupt");
    assert_eq!(d.read_isr(), 1);
    assert!(!f.irq.borrow().intx);
    let status = f.cfg_read(layout::STATUS, 2);
    assert_eq!(status & u64::from(layout::STATUS_INTERRUPT), 0);
    // A status-register write (its bits are not writable here) does not touch the command.
    f.cfg_write(layout::STATUS, 2, 0xFFFF);
    assert_eq!(f.cfg_read(layout::COMMAND, 2), cmd);
}

/// Pending bits (PCI-16, PCI 3.0 §6.8.2.9): a message due while its vector, the function or
/// bus mastering is masked sets the vector's pending bit and is sent exactly once on the
/// unmask, whichever of the three unmasks last.
#[test]
fn pending_bits_sent_once_on_each_unmask_pci16() {
    let mem = TestMemory::m0();
    for blocker in 0..3 {
        let mut drv = SplitDriver::standard(&mem, 16);
        let f = function(&mem, Features::empty());
        let d = live(&f, &drv, V1);
        let cmd = f.cfg_read(layout::COMMAND, 2);
        let block = |on: bool| match blocker {
            0 => d.mask_vector(1, on),
            1 => d.set_msix_control(true, on),
            _ => {
                // Without bus mastering nothing runs; block it after queueing the work.
                let bm = u64::from(layout::COMMAND_BUS_MASTER);
                f.cfg_write(layout::COMMAND, 2, if on { cmd & !bm } else { cmd });
            }
        };
        request(&mem, &mut drv, 0x8000);
        if blocker == 2 {
            d.notify(0);
            assert_eq!(drv.used_idx(), 1);
            // The interrupt was sent; now a config change with bus mastering off.
            assert_eq!(f.irq.borrow_mut().take_msi(), [msi_for(1)]);
            block(true);
            f.with(|t| t.signal_config_change());
            assert!(f.irq.borrow_mut().take_msi().is_empty(), "held");
            assert_eq!(d.pba(), 0b1, "config vector 0 pending");
            block(false);
            assert_eq!(f.irq.borrow_mut().take_msi(), [msi_for(0)]);
            assert_eq!(d.pba(), 0);
            block(false);
            assert!(f.irq.borrow_mut().take_msi().is_empty(), "sent once");
            continue;
        }
        block(true);
        d.notify(0);
        assert_eq!(drv.used_idx(), 1, "blocker {blocker}");
        assert!(
            f.irq.borrow_mut().take_msi().is_empty(),
            "blocker {blocker}"
        );
        assert_eq!(d.pba(), 0b10, "blocker {blocker}");
        block(false);
        assert_eq!(
            f.irq.borrow_mut().take_msi(),
            [msi_for(1)],
            "blocker {blocker}"
        );
        assert_eq!(d.pba(), 0, "blocker {blocker}");
        block(false);
        assert!(
            f.irq.borrow_mut().take_msi().is_empty(),
            "blocker {blocker}"
        );
    }
}

/// FEATURES_OK with any single bit the device does not offer, or without VERSION_1, is
/// refused (FEATURES_OK reads back clear, FEAT-05, FEAT-08); the driver may then retry with
/// an acceptable set, and queues refuse to enable until it has.
#[test]
fn features_ok_with_each_unoffered_bit_feat08() {
    let mem = TestMemory::m0();
    let f = function(&mem, Features::EVENT_IDX);
    let d = probe(&f);
    let offered = d.device_features();
    for bit in 0..64 {
        if offered & (1 << bit) != 0 {
            continue;
        }
        d.reset();
        d.set_status(1 | 2);
        d.write_features(V1 | (1 << bit));
        d.set_status(1 | 2 | 8);
        assert_eq!(d.status() & 8, 0, "bit {bit} accepted");
        assert_eq!(f.t.borrow().negotiated_features().bits(), 0, "bit {bit}");
        // Retry on the same status, with what the device offers.
        d.write_features(V1);
        d.set_status(1 | 2 | 8);
        assert_eq!(d.status() & 8, 8, "bit {bit}: retry");
    }
    d.reset();
    d.set_status(1 | 2);
    d.write_features(Features::EVENT_IDX.bits());
    d.set_status(1 | 2 | 8);
    assert_eq!(d.status() & 8, 0, "no VERSION_1");
    d.setup_queue(0, 16, (0x1000, 0x2000, 0x3000), NO_VECTOR);
    assert_eq!(d.cr(cc::QUEUE_ENABLE, 2), 0);
}

/// Save/restore with hostile bytes: an MSI-X Message Address with bits 1:0 set is a value
/// the table cannot hold (they read 0, PCI 3.0 §6.8.2.5), so a state carrying one is refused
/// and changes nothing.
#[test]
fn restore_refuses_unaligned_msix_address() {
    let mem = TestMemory::m0();
    let drv = SplitDriver::standard(&mem, 16);
    let f = function(&mem, Features::empty());
    let _d = live(&f, &drv, V1);
    let t = f.t.borrow();
    let mut state = vec![0u8; t.state_len()];
    let n = t.save_into(&mut state).unwrap();
    state.truncate(n);
    // The register block is 56 bytes; MSI-X entry 0's address follows it.
    let fields = 56;
    let mut u: T<'_> = PciTransport::new(BlkDevice::new(64, Features::empty(), 16), &mem);
    u.restore(&state).expect("the state as saved");
    for low in 1..4u8 {
        let mut b = state.clone();
        b[HEADER_LEN + fields] |= low;
        let mut u: T<'_> = PciTransport::new(BlkDevice::new(64, Features::empty(), 16), &mem);
        let mut before = vec![0u8; u.state_len()];
        let len = u.save_into(&mut before).unwrap();
        let e = u.restore(&b).expect_err("unaligned address accepted");
        assert_eq!(
            e,
            StateError::Invalid {
                field: StateField::Msix
            }
        );
        let mut after = vec![0u8; u.state_len()];
        assert_eq!(u.save_into(&mut after).unwrap(), len);
        assert_eq!(after, before, "a refused restore changed the function");
    }
}

/// Save/restore with hostile bytes: random multi-byte corruptions and every truncation of a
/// live function's state are refused without change, or accepted as a state that reads back
/// as registers the guest could have written (MSI-X addresses dword aligned, vectors in
/// range) and that saves and restores again. Nothing panics.
#[test]
fn restore_hostile_bytes_never_panic() {
    let mem = TestMemory::m0();
    let mut drv = SplitDriver::standard(&mem, 16);
    let f = function(&mem, Features::empty());
    let d = live(&f, &drv, V1);
    request(&mem, &mut drv, 0x8000);
    d.mask_vector(1, true);
    d.notify(0);
    let state = {
        let t = f.t.borrow();
        let mut s = vec![0u8; t.state_len()];
        let n = t.save_into(&mut s).unwrap();
        s.truncate(n);
        s
    };
    let fresh = || PciTransport::<_, _, 2, 4>::new(BlkDevice::new(64, Features::empty(), 16), &mem);
    let save = |t: &T<'_>| {
        let mut s = vec![0u8; t.state_len()];
        let n = t.save_into(&mut s).unwrap();
        s.truncate(n);
        s
    };
    for len in 0..state.len() {
        let mut t = fresh();
        let before = save(&t);
        assert!(t.restore(&state[..len]).is_err(), "truncated to {len}");
        assert_eq!(save(&t), before);
    }
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let rounds = if cfg!(miri) { 20 } else { 4000 };
    for round in 0..rounds {
        let mut b = state.clone();
        for _ in 0..=(next() % 4) {
            let i = usize::try_from(next() % b.len() as u64).unwrap();
            b[i] = u8::try_from(next() & 0xFF).unwrap();
        }
        let mut t = fresh();
        let before = save(&t);
        match t.restore(&b) {
            Err(_) => assert_eq!(save(&t), before, "round {round}"),
            Ok(()) => {
                for v in 0..4u16 {
                    let m = t.msix_message(v).unwrap();
                    assert_eq!(m.address & 3, 0, "round {round}: entry {v}");
                }
                let v = t.config_vector();
                assert!(v < 4 || v == NO_VECTOR, "round {round}");
                let again = save(&t);
                fresh().restore(&again).unwrap();
                let _ = t.resume();
                let _ = t.bar_read(0, layout::ISR_OFFSET, 1);
                let _ = t.bar_write(0, layout::NOTIFY_OFFSET, 2, 0);
            }
        }
    }
}

/// Save/restore of a function with more queue slots than its device has queues (`Q = 2`, a
/// block device with one): the empty slot saves as a queue of maximum 0, and the state
/// restores into an identical function and saves back byte for byte, in both ring formats.
/// (Before the fix every such state was refused with `MaxSize`.)
#[test]
fn restore_round_trip_with_an_empty_queue_slot() {
    let mem = TestMemory::m0();
    for packed in [false, true] {
        let drv = SplitDriver::standard(&mem, 16);
        let extra = if packed {
            Features::RING_PACKED
        } else {
            Features::empty()
        };
        let f = function(&mem, extra);
        let d = probe(&f);
        d.enable_msix(4);
        let want = V1 | extra.bits();
        assert_eq!(d.negotiate(want), Some(want));
        // Packed rings: 16-byte descriptors at `desc`, event structures 4-aligned.
        d.setup_queue(0, 16, (drv.desc, drv.avail, drv.used), 1);
        assert_eq!(f.t.borrow().queue_setup_error(0), None, "packed {packed}");
        d.driver_ok();
        let t = f.t.borrow();
        let mut state = vec![0u8; t.state_len()];
        let n = t.save_into(&mut state).unwrap();
        state.truncate(n);
        let mut u: T<'_> = PciTransport::new(BlkDevice::new(64, extra, 16), &mem);
        u.restore(&state)
            .unwrap_or_else(|e| panic!("packed {packed}: {e:?}"));
        let mut again = vec![0u8; u.state_len()];
        let m = u.save_into(&mut again).unwrap();
        again.truncate(m);
        assert_eq!(again, state, "packed {packed}");
        assert_eq!(u.is_packed(), packed);
        assert!(u.is_live());
    }
}

/// The queue-level rule behind the fix above: a queue of maximum 0 (no such queue) saves and
/// restores into another such queue, in both formats; its state does not restore into a real
/// queue, nor a real queue's into it.
#[test]
fn absent_queue_states_restore_only_into_absent_queues() {
    use virtq::packed::PackedQueue;
    use virtq::split::Queue;
    let mem = TestMemory::m0();
    let max_size = |e: StateError| {
        e == StateError::Invalid {
            field: StateField::MaxSize,
        }
    };
    let empty = Queue::new(0).save();
    let real = Queue::new(16).save();
    Queue::new(0).restore(empty.as_bytes(), &mem).unwrap();
    assert!(max_size(
        Queue::new(16).restore(empty.as_bytes(), &mem).unwrap_err()
    ));
    assert!(Queue::new(0).restore(real.as_bytes(), &mem).is_err());
    let empty = PackedQueue::new(0).save();
    let real = PackedQueue::new(16).save();
    PackedQueue::new(0).restore(empty.as_bytes(), &mem).unwrap();
    assert!(max_size(
        PackedQueue::new(16)
            .restore(empty.as_bytes(), &mem)
            .unwrap_err()
    ));
    assert!(PackedQueue::new(0).restore(real.as_bytes(), &mem).is_err());
}

/// Bus Master Enable off at DRIVER_OK (INIT-07, VQ-18): the function cannot scan the rings
/// for buffers queued during setup then, nor serve a kick while it cannot do DMA; once the
/// driver turns bus mastering on, those buffers are served (inline) or reported as kicks
/// (deferred), as a real function that latched the work would.
#[test]
fn work_queued_while_bus_mastering_off_is_served_when_it_turns_on_init07() {
    use virtq::transport::NotifyMode;
    let mem = TestMemory::m0();
    for deferred in [false, true] {
        let mut drv = SplitDriver::standard(&mem, 16);
        let f = function(&mem, Features::empty());
        if deferred {
            f.t.borrow_mut().set_notify_mode(NotifyMode::Deferred);
        }
        let d = probe(&f);
        d.enable_msix(4);
        let cmd = f.cfg_read(layout::COMMAND, 2);
        let bm = u64::from(layout::COMMAND_BUS_MASTER);
        f.cfg_write(layout::COMMAND, 2, cmd & !bm);
        assert_eq!(d.negotiate(V1), Some(V1));
        d.setup_queue(0, 16, (drv.desc, drv.avail, drv.used), 1);
        request(&mem, &mut drv, 0x8000);
        d.driver_ok();
        d.notify(0);
        assert_eq!(drv.used_idx(), 0, "no DMA without bus mastering");
        let out = f.t.borrow_mut().config_write(layout::COMMAND, 2, cmd);
        let mut kicks = Vec::new();
        if deferred {
            assert!(out.events.contains(virtq::transport::Events::KICKS));
            f.t.borrow_mut().take_kicks(|q| kicks.push(q));
            assert_eq!(kicks, [0]);
            f.with(|t| t.process_queue(0));
        } else {
            f.deliver(out);
        }
        assert_eq!(drv.used_idx(), 1, "deferred {deferred}");
        assert_eq!(f.irq.borrow_mut().take_msi(), [msi_for(1)]);
    }
}

/// A long random walk of configuration and BAR accesses, biased to register offsets, with
/// the invariants checked after every access: vectors fired exist and were deliverable
/// (enabled, unmasked, bus mastering on), INTA# only without MSI-X and without Interrupt
/// Disable and with the ISR set, pending bits only for existing entries, IDs constant, and an
/// enabled queue's size never changes until a reset.
#[test]
fn random_walk_keeps_interrupt_and_queue_invariants() {
    let mem = TestMemory::m0();
    let drv = SplitDriver::standard(&mem, 16);
    let f = function(&mem, Features::RING_RESET | Features::EVENT_IDX);
    let _d = live(&f, &drv, V1 | Features::RING_RESET.bits());
    let mut t = f.t.borrow_mut();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let hot_bar = [
        0x00u64, 0x04, 0x08, 0x0C, 0x10, 0x12, 0x14, 0x16, 0x18, 0x1A, 0x1C, 0x20, 0x24, 0x28,
        0x30, 0x3A, 0x1000, 0x2000, 0x3000, 0x3004, 0x4000, 0x4008, 0x400C, 0x401C, 0x402C, 0x403C,
        0x5000,
    ];
    let hot_cfg = [
        0x04u16, 0x06, 0x10, 0x14, 0x3C, 0x42, 0x43, 0x98, 0x9C, 0xA0, 0xA4,
    ];
    let steps = if cfg!(miri) { 2_000 } else { 200_000 };
    let mut enabled_size: Option<u64> = None;
    let (mut fired, mut asserted, mut enabled) = (0u32, 0u32, 0u32);
    for step in 0..steps {
        let r = next();
        let w = WIDTHS[usize::try_from(r % 8).unwrap()];
        let w = if r & 0x300 != 0 {
            [1, 2, 4, 2][usize::try_from((r >> 8) & 3).unwrap()]
        } else {
            w
        };
        let value = match (r >> 16) % 4 {
            0 => next() & 0xFF,
            1 => next() & 1,
            2 => next(),
            _ => u64::from(u16::try_from(next() % 5).unwrap()),
        };
        // Pre-state the checks need.
        let before_status = t.status();
        let out = if step % 61 == 0 {
            // The device side: a configuration change (a config interrupt once live).
            t.signal_config_change()
        } else if r & 0x10_0000 != 0 {
            let off = hot_cfg[usize::try_from((r >> 24) % hot_cfg.len() as u64).unwrap()];
            if r & 0x20_0000 != 0 {
                t.config_write(off, w, value)
            } else {
                t.config_read(off, w)
            }
        } else {
            let off = hot_bar[usize::try_from((r >> 24) % hot_bar.len() as u64).unwrap()];
            let off = if r & 0x40_0000 != 0 {
                off + (r >> 40) % 4
            } else {
                off
            };
            if r & 0x20_0000 != 0 {
                t.bar_write(0, off, w, value)
            } else {
                t.bar_read(0, off, w)
            }
        };
        fired += u32::from(!out.msix.is_empty());
        asserted += u32::from(out.intx);
        for v in out.msix.iter() {
            assert!(v < 4, "step {step}: vector {v}");
            assert!(t.msix_enabled(), "step {step}: fired with MSI-X off");
            assert_eq!(
                t.msix_control() & (1 << 14),
                0,
                "step {step}: function masked"
            );
            assert_ne!(t.command() & layout::COMMAND_BUS_MASTER, 0, "step {step}");
            let ctrl = t.bar_read(0, layout::MSIX_TABLE_OFFSET + u64::from(v) * 16 + 12, 4);
            assert_eq!(ctrl.value & 1, 0, "step {step}: vector {v} masked");
        }
        if out.intx {
            assert!(!t.msix_enabled(), "step {step}");
            assert_eq!(t.command() & layout::COMMAND_INTX_DISABLE, 0, "step {step}");
            assert_ne!(t.isr().bits(), 0, "step {step}");
        }
        assert_eq!(out.intx, t.intx_level(), "step {step}");
        assert_eq!(t.msix_pending() & !0xF, 0, "step {step}");
        assert_eq!(t.config_read(0, 4).value, 0x1042_1AF4, "step {step}");
        // Queue 0's size is frozen while it is enabled.
        let sel = t.bar_read(0, cc::QUEUE_SELECT, 2).value;
        let _ = t.bar_write(0, cc::QUEUE_SELECT, 2, 0);
        let en = t.bar_read(0, cc::QUEUE_ENABLE, 2).value == 1;
        let size = t.bar_read(0, cc::QUEUE_SIZE, 2).value;
        let _ = t.bar_write(0, cc::QUEUE_SELECT, 2, sel);
        let reset = t.status().is_empty() || before_status.is_empty();
        match (enabled_size, en) {
            (Some(s), true) if !reset => assert_eq!(size, s, "step {step}: size changed"),
            _ => {}
        }
        enabled += u32::from(en && enabled_size.is_none());
        enabled_size = en.then_some(size);
    }
    // The walk reached what it checks.
    assert!(
        fired > 0 && asserted > 0 && enabled > 1,
        "{fired} {asserted} {enabled}"
    );
}

/// ISR bits and MSI-X pending bits are raised only for a driver that set DRIVER_OK (used
/// buffers, configuration changes and NEEDS_RESET notify a live device only, STAT-09), and the
/// virtio reset that takes DRIVER_OK back clears them (§4.1.4.5). A saved state of a function
/// in reset with either set is one no guest can produce: restoring it would assert INTx, or
/// send a message, for a device the driver never brought up. The same state with DRIVER_OK
/// restores.
#[test]
fn restore_refuses_interrupts_of_a_device_in_reset() {
    let mem = TestMemory::m0();
    // The register block: ISR at byte 5, the Pending Bit Array at bytes 48..56.
    const ISR: usize = HEADER_LEN + 5;
    const PENDING: usize = HEADER_LEN + 48;
    let saved = |t: &T<'_>| {
        let mut s = vec![0u8; t.state_len()];
        let n = t.save_into(&mut s).unwrap();
        s.truncate(n);
        s
    };
    let fresh = || -> T<'_> { PciTransport::new(BlkDevice::new(64, Features::empty(), 16), &mem) };
    let reset_state = saved(&fresh());
    for (at, value, field) in [
        (ISR, 1u8, StateField::InterruptStatus),
        (ISR, 2, StateField::InterruptStatus),
        (ISR, 3, StateField::InterruptStatus),
        (PENDING, 1, StateField::Msix),
    ] {
        let mut b = reset_state.clone();
        b[at] = value;
        let mut u = fresh();
        let before = saved(&u);
        assert_eq!(
            u.restore(&b),
            Err(StateError::Invalid { field }),
            "byte {at} = {value} in reset"
        );
        assert_eq!(saved(&u), before, "a refused restore changed the function");
    }

    // The same bits on a live function restore.
    let drv = SplitDriver::standard(&mem, 16);
    let f = function(&mem, Features::empty());
    let _d = live(&f, &drv, V1);
    let live_state = saved(&f.t.borrow());
    for (at, value) in [(ISR, 1u8), (ISR, 3), (PENDING, 1)] {
        let mut b = live_state.clone();
        b[at] = value;
        let mut u = fresh();
        u.restore(&b)
            .unwrap_or_else(|e| panic!("live state with byte {at} = {value}: {e}"));
    }
}
