//! The real guest drivers of `virtio-drivers` (blk, console, net) over a virtio-pci function
//! (VIRTIO 1.4 §4.1), split rings, with {no features, INDIRECT_DESC, EVENT_IDX, both} × {MSI-X,
//! INTx}. The guest reaches the device only through configuration-space accesses and BAR
//! loads and stores (`pci_driver`), what a hypervisor traps; interrupts arrive as the outcome
//! of each access says (PCI-12, PCI-14, PCI-15, PCI-17).

mod pci_driver;

use pci_driver::{GuestPci, attach, msi_for};
use virtq::Features;
use virtq_testkit::devices::net::MAC;
use virtq_testkit::devices::{BlkDevice, ConsoleDevice, NetDevice};
use virtq_testkit::guest::virtio_drivers::device::blk::VirtIOBlk;
use virtq_testkit::guest::virtio_drivers::device::console::VirtIOConsole;
use virtq_testkit::guest::virtio_drivers::device::net::VirtIONet;
use virtq_testkit::guest::{Arena, GuestHal};

const BASE: u64 = pci_driver::BAR_BASE;

fn matrix() -> Vec<(bool, Features)> {
    let feats = [
        Features::empty(),
        Features::INDIRECT_DESC,
        Features::EVENT_IDX,
        Features::INDIRECT_DESC | Features::EVENT_IDX,
    ];
    [true, false]
        .into_iter()
        .flat_map(|m| feats.into_iter().map(move |f| (m, f)))
        .collect()
}

fn pattern(block: usize, len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ (block as u8) ^ salt)
        .collect()
}

#[test]
fn blk_over_pci_matrix() {
    for (msix, extra) in matrix() {
        let what = format!("msix {msix} {extra:?}");
        let arena = Arena::new(1 << 20);
        let _g = arena.install();
        let f = attach::<_, _, 1, 2>(BlkDevice::new(256, extra, 16), arena.guest_ram());
        let mut blk = VirtIOBlk::<GuestHal, _>::new(GuestPci::new(f.clone(), BASE, msix)).unwrap();
        assert_eq!(blk.capacity(), 256, "{what}: config space over PCI");
        let negotiated = Features::from_bits_truncate(f.t.borrow().negotiated_features().bits());
        assert_eq!(
            negotiated & (Features::INDIRECT_DESC | Features::EVENT_IDX),
            extra,
            "{what}"
        );
        assert!(negotiated.contains(Features::VERSION_1));
        f.irq.borrow_mut().take_msi();
        let edges = f.irq.borrow().intx_edges;
        // 40 writes of 1 to 3 blocks then read back: the 16-entry ring laps several times.
        for k in 0..40usize {
            let block = (k * 7) % 250;
            let n = 1 + k % 3;
            let data = pattern(block, 512 * n, k as u8);
            blk.write_blocks(block, &data).unwrap();
            let mut back = vec![0u8; data.len()];
            blk.read_blocks(block, &mut back).unwrap();
            assert_eq!(back, data, "{what}: request {k}");
            let isr = blk.ack_interrupt();
            assert_eq!(isr.bits() & !1, 0, "{what}: only the queue bit");
        }
        let irq = f.irq.borrow();
        if msix {
            // Every completion interrupt went to queue 0's vector 1 (PCI-14); INTx stayed low.
            assert!(!irq.msi.is_empty(), "{what}");
            assert!(irq.msi.iter().all(|m| *m == msi_for(1)), "{what}");
            assert_eq!(irq.intx_edges, edges, "{what}: no INTx with MSI-X (PCI-17)");
        } else {
            assert!(irq.msi.is_empty(), "{what}");
            assert!(irq.intx_edges > edges, "{what}: INTx raised (PCI-17)");
        }
        drop(irq);
        assert_eq!(f.t.borrow().device().stats.malformed, 0);
    }
}

#[test]
fn console_over_pci_matrix() {
    for (msix, extra) in matrix() {
        let what = format!("msix {msix} {extra:?}");
        let arena = Arena::new(1 << 20);
        let _g = arena.install();
        let f = attach::<_, _, 2, 3>(ConsoleDevice::new(extra, 16), arena.guest_ram());
        let mut con =
            VirtIOConsole::<GuestHal, _>::new(GuestPci::new(f.clone(), BASE, msix)).unwrap();
        let size = con.size().unwrap().unwrap();
        assert_eq!((size.columns, size.rows), (80, 25), "{what}");
        let long: Vec<u8> = (0..6000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let messages: [&[u8]; 3] = [b"x", b"hello, virtq over pci\n", &long];
        for msg in messages {
            con.send_bytes(msg).unwrap();
            let mut echoed = Vec::new();
            let mut spins = 0;
            while echoed.len() < msg.len() {
                match con.recv(true).unwrap() {
                    Some(b) => echoed.push(b),
                    None => {
                        spins += 1;
                        assert!(spins < 1000, "{what}: echo stalled");
                    }
                }
            }
            assert_eq!(echoed, msg, "{what}");
        }
        if msix {
            // The receive queue (0) got vector 1, the transmit queue (1) vector 2.
            let msi = f.irq.borrow_mut().take_msi();
            assert!(
                msi.contains(&msi_for(1)) && msi.contains(&msi_for(2)),
                "{what}"
            );
            assert!(
                !msi.contains(&msi_for(0)),
                "{what}: no configuration interrupt"
            );
        }
    }
}

#[test]
fn net_over_pci_matrix() {
    for (msix, extra) in matrix() {
        let what = format!("msix {msix} {extra:?}");
        let arena = Arena::new(2 << 20);
        let _g = arena.install();
        let f = attach::<_, _, 2, 3>(NetDevice::new(extra, 16), arena.guest_ram());
        let mut net =
            VirtIONet::<GuestHal, _, 16>::new(GuestPci::new(f.clone(), BASE, msix), 2048).unwrap();
        assert_eq!(net.mac_address(), MAC, "{what}");
        for i in 0..60usize {
            let len = 60 + (i * 37) % 1400;
            let sent: Vec<u8> = (0..len).map(|k| (k as u8) ^ (i as u8)).collect();
            let mut tx = net.new_tx_buffer(len);
            tx.packet_mut().copy_from_slice(&sent);
            net.send(tx).unwrap();
            assert!(net.can_recv(), "{what}: frame {i} not looped back");
            let rx = net.receive().unwrap();
            assert_eq!(rx.packet(), &sent[..], "{what}: frame {i}");
            net.recycle_rx_buffer(rx).unwrap();
        }
        let t = f.t.borrow();
        assert_eq!((t.device().looped, t.device().dropped), (60, 0), "{what}");
    }
}
