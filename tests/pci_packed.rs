//! Block requests through packed rings (VIRTIO 1.4 §2.8) over the virtio-pci function, set up
//! with the register-level driver and driven by the testkit's `PackedDriver` (virtio-drivers
//! has no packed ring), with and without INDIRECT_DESC and EVENT_IDX, over MSI-X and INTx,
//! and at ring sizes that are not powers of two (issue 15, PACKED-02, PCI-10).

mod pci_driver;

use pci_driver::{BAR_BASE, PciDriver, Shared, attach, msi_for};
use virtq::Features;
use virtq::transport::QueueSetupError;
use virtq::transport::pci::{NO_VECTOR, layout};
use virtq_testkit::devices::blk::{self, BlkDevice, BlkReqHeader};
use virtq_testkit::{PackedDriver, TestMemory};
use zerocopy::IntoBytes;
use zerocopy::little_endian::{U32, U64};

use layout::common as cc;

type F<'m> = Shared<BlkDevice, &'m TestMemory, 1, 2>;

const HDR: u64 = 0x30_0000;
const DATA: u64 = 0x30_1000;
const STATUS: u64 = 0x30_2000;
const READ_BUF: u64 = 0x30_3000;
const RING: (u64, u64, u64) = (0x10_0000, 0x11_0000, 0x11_0100);

fn ram() -> TestMemory {
    TestMemory::new(&[(0, 0x40_0000)])
}

fn header(mem: &TestMemory, type_: u32, sector: u64) {
    let h = BlkReqHeader {
        type_: U32::new(type_),
        reserved: U32::new(0),
        sector: U64::new(sector),
    };
    mem.poke(HDR, h.as_bytes());
}

/// Probe, negotiate VERSION_1 | RING_PACKED | `extra`, set up queue 0 with `size` entries on
/// vector 1 (MSI-X) or none (INTx), DRIVER_OK.
fn live<'m>(
    mem: &'m TestMemory,
    max: u16,
    extra: Features,
    size: u16,
    msix: bool,
) -> (F<'m>, PciDriver<F<'m>>, PackedDriver<'m>) {
    let f: F<'_> = attach(BlkDevice::new(64, extra | Features::RING_PACKED, max), mem);
    let d = PciDriver::probe(f.clone(), BAR_BASE).unwrap();
    if msix {
        d.enable_msix(2);
        assert_eq!(d.set_config_vector(0), 0);
    }
    let want = (extra | Features::VERSION_1 | Features::RING_PACKED).bits();
    assert_eq!(d.negotiate(want), Some(want));
    assert!(f.t.borrow().is_packed());
    let vector = if msix { 1 } else { NO_VECTOR };
    let drv = PackedDriver::new(mem, size, RING.0, RING.1, RING.2);
    assert_eq!(d.setup_queue(0, size, RING, vector), vector);
    assert_eq!(f.t.borrow().queue_setup_error(0), None);
    d.driver_ok();
    (f, d, drv)
}

#[test]
fn blk_packed_over_pci_matrix() {
    let feats = [
        Features::empty(),
        Features::INDIRECT_DESC,
        Features::EVENT_IDX,
        Features::INDIRECT_DESC | Features::EVENT_IDX,
    ];
    for msix in [true, false] {
        for extra in feats {
            for size in [16u16, 6] {
                let what = format!("msix {msix} {extra:?} size {size}");
                let mem = ram();
                let (f, d, mut drv) = live(&mem, 16, extra, size, msix);
                let indirect = extra.contains(Features::INDIRECT_DESC);
                let add = |drv: &mut PackedDriver<'_>, bufs: &[(u64, u32, bool)]| {
                    if indirect {
                        drv.add_indirect_chain(0x38_0000, bufs).unwrap()
                    } else {
                        drv.add_chain(bufs).unwrap()
                    }
                };
                for k in 0..3 * u64::from(size) {
                    let sector = (k * 5) % 64;
                    let pattern: Vec<u8> = (0..512u64).map(|i| (i ^ k) as u8).collect();
                    header(&mem, blk::T_OUT, sector);
                    mem.poke(DATA, &pattern);
                    let id = add(
                        &mut drv,
                        &[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)],
                    );
                    d.notify(0);
                    assert_eq!(
                        drv.pop_used().map(|u| (u.id, u.len)),
                        Some((id, 1)),
                        "{what}"
                    );
                    header(&mem, blk::T_IN, sector);
                    mem.fill(READ_BUF, 512, 0);
                    let id = add(
                        &mut drv,
                        &[(HDR, 16, false), (READ_BUF, 512, true), (STATUS, 1, true)],
                    );
                    d.notify(0);
                    assert_eq!(
                        drv.pop_used().map(|u| (u.id, u.len)),
                        Some((id, 513)),
                        "{what}"
                    );
                    assert_eq!(mem.peek(READ_BUF, 512), pattern, "{what} request {k}");
                    // The completion interrupt: vector 1, or INTA# until the ISR is read.
                    if msix {
                        let msi = f.irq.borrow_mut().take_msi();
                        assert!(!msi.is_empty(), "{what}");
                        assert!(msi.iter().all(|m| *m == msi_for(1)), "{what}");
                    } else {
                        assert!(f.irq.borrow().intx, "{what}");
                        assert_eq!(d.read_isr(), 1, "{what}");
                    }
                }
                assert_eq!(d.status() & 64, 0, "{what}: no DEVICE_NEEDS_RESET");
                assert_eq!(f.t.borrow().device().stats.malformed, 0);
            }
        }
    }
}

/// Issue 15 "Packed ring sizes" over PCI (§4.1.4.3.1: `queue_size` is a power of two unless
/// RING_PACKED is negotiated): a device offering 100 entries shows 64 before FEATURES_OK and
/// with split rings, 100 with packed rings; packed queues of 100 and 37 entries work; 101 is
/// refused.
#[test]
fn packed_queue_sizes_not_rounded_over_pci_issue15() {
    for size in [100u16, 37] {
        let mem = ram();
        let f: F<'_> = attach(BlkDevice::new(64, Features::RING_PACKED, 100), &mem);
        let d = PciDriver::probe(f.clone(), BAR_BASE).unwrap();
        assert_eq!(d.queue_size(0), 64, "power of two before FEATURES_OK");
        drop((f, d));
        let (f, d, mut drv) = live(&mem, 100, Features::empty(), size, true);
        d.select(0);
        assert_eq!(d.cr(cc::QUEUE_SIZE, 2), u64::from(size));
        assert_eq!(f.t.borrow().packed_queue(0).unwrap().max_size, 100);
        for k in 0..2 * u64::from(size) + 1 {
            header(&mem, blk::T_FLUSH, 0);
            let id = drv
                .add_chain(&[(HDR, 16, false), (STATUS, 1, true)])
                .unwrap();
            d.notify(0);
            assert_eq!(
                drv.pop_used().map(|u| u.id),
                Some(id),
                "size {size} request {k}"
            );
        }
    }
    let mem = ram();
    let f: F<'_> = attach(BlkDevice::new(64, Features::RING_PACKED, 100), &mem);
    let d = PciDriver::probe(f.clone(), BAR_BASE).unwrap();
    let packed = (Features::VERSION_1 | Features::RING_PACKED).bits();
    d.negotiate(packed).unwrap();
    assert_eq!(d.queue_size(0), 100);
    d.setup_queue(0, 101, RING, NO_VECTOR);
    assert_eq!(
        f.t.borrow().queue_setup_error(0),
        Some(QueueSetupError::SizeTooLarge { size: 101 })
    );
    // Split: 64 at most, and a power of two.
    d.negotiate(Features::VERSION_1.bits()).unwrap();
    assert_eq!(d.queue_size(0), 64);
    d.setup_queue(0, 37, (0x10_0000, 0x11_0000, 0x12_0000), NO_VECTOR);
    assert_eq!(
        f.t.borrow().queue_setup_error(0),
        Some(QueueSetupError::SizeNotPowerOfTwo { size: 37 })
    );
}
