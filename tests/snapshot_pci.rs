//! Save and restore of a whole virtio-pci function under a real guest (issue #13, for the PCI
//! transport of issue #14): the `virtio-drivers` blk driver, through its own transport logic
//! over configuration-space and BAR accesses (`pci_driver`), with MSI-X and with INTx,
//! EVENT_IDX on and off. After *every* access, the function is saved, thrown away, and replaced
//! by a fresh function over a fresh device (with a copy of the disk) restored from the bytes
//! and resumed. Every request completes with the right data, interrupts keep arriving (MSI-X
//! messages to the programmed vector, or the INTx line), and the restored function saves to
//! exactly the bytes it was restored from. A corrupted function state is refused without
//! change.

mod pci_driver;

use std::cell::{Cell, RefCell};

use pci_driver::{GuestPci, PciBus, msi_for};
use virtq::Features;
use virtq::snapshot::{HEADER_LEN, StateError, StateField};
use virtq::transport::pci::{MsiMessage, PciOutcome, PciTransport};
use virtq_testkit::devices::BlkDevice;
use virtq_testkit::guest::virtio_drivers::device::blk::VirtIOBlk;
use virtq_testkit::guest::{Arena, GuestHal, GuestRam};

type Func = PciTransport<BlkDevice, GuestRam, 1, 2>;

struct Restoring {
    t: RefCell<Func>,
    ram: GuestRam,
    extra: Features,
    msi: RefCell<Vec<MsiMessage>>,
    intx: Cell<bool>,
    restores: Cell<u64>,
}

fn saved(t: &Func) -> Vec<u8> {
    let mut b = vec![0u8; t.state_len()];
    let n = t.save_into(&mut b).unwrap();
    b.truncate(n);
    b
}

impl Restoring {
    fn deliver(&self, t: &Func, out: &PciOutcome) {
        self.msi.borrow_mut().extend(t.msix_messages(out.msix));
        self.intx.set(out.intx);
    }

    fn cycle(&self) {
        let mut old = self.t.borrow_mut();
        let state = saved(&old);
        let mut device = BlkDevice::new(64, self.extra, 16);
        device.disk_mut().copy_from_slice(old.device().disk());
        let mut fresh = PciTransport::new(device, self.ram.clone());
        fresh
            .restore(&state)
            .unwrap_or_else(|e| panic!("restore {}: {e:?}", self.restores.get()));
        assert_eq!(saved(&fresh), state, "restore is exact");
        let out = fresh.resume();
        self.deliver(&fresh, &out);
        *old = fresh;
        self.restores.set(self.restores.get() + 1);
    }

    fn access(&self, f: impl FnOnce(&mut Func) -> Option<PciOutcome>, width: u8) -> u64 {
        let out = f(&mut self.t.borrow_mut());
        let v = match out {
            Some(out) => {
                self.deliver(&self.t.borrow(), &out);
                out.value
            }
            None => u64::MAX >> (64 - 8 * u32::from(width.clamp(1, 8))),
        };
        self.cycle();
        v
    }
}

impl PciBus for &Restoring {
    fn cfg_read(&self, off: u16, width: u8) -> u64 {
        self.access(|t| Some(t.config_read(off, width)), width)
    }
    fn cfg_write(&self, off: u16, width: u8, value: u64) {
        self.access(|t| Some(t.config_write(off, width, value)), width);
    }
    fn mem_read(&self, addr: u64, width: u8) -> u64 {
        self.access(|t| t.memory_read(addr, width), width)
    }
    fn mem_write(&self, addr: u64, width: u8, value: u64) {
        self.access(|t| t.memory_write(addr, width, value), width);
    }
}

fn pattern(block: usize, len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29) ^ (block as u8) ^ salt)
        .collect()
}

#[test]
fn blk_guest_survives_a_restore_after_every_access() {
    for msix in [true, false] {
        for extra in [Features::EVENT_IDX, Features::empty()] {
            let what = format!("msix {msix} {extra:?}");
            let arena = Arena::new(1 << 20);
            let _g = arena.install();
            let r = Restoring {
                t: RefCell::new(PciTransport::new(
                    BlkDevice::new(64, extra, 16),
                    arena.guest_ram(),
                )),
                ram: arena.guest_ram(),
                extra,
                msi: RefCell::new(Vec::new()),
                intx: Cell::new(false),
                restores: Cell::new(0),
            };
            let mut blk =
                VirtIOBlk::<GuestHal, _>::new(GuestPci::new(&r, pci_driver::BAR_BASE, msix))
                    .unwrap();
            assert_eq!(blk.capacity(), 64, "{what}");
            r.msi.borrow_mut().clear();
            let mut interrupts = 0;
            for k in 0..12usize {
                let block = (k * 5) % 60;
                let data = pattern(block, 512 * (1 + k % 2), k as u8);
                blk.write_blocks(block, &data).unwrap();
                let mut back = vec![0u8; data.len()];
                blk.read_blocks(block, &mut back).unwrap();
                assert_eq!(back, data, "{what}: request {k}");
                if msix {
                    let msgs = std::mem::take(&mut *r.msi.borrow_mut());
                    assert!(msgs.iter().all(|m| *m == msi_for(1)), "{what}");
                    interrupts += msgs.len();
                } else if r.intx.get() {
                    interrupts += 1;
                }
                blk.ack_interrupt();
            }
            assert!(interrupts >= 12, "{what}: {interrupts} interrupts");
            assert!(r.restores.get() > 100, "{what}: {}", r.restores.get());
            println!(
                "{what}: {} restores, {interrupts} interrupts",
                r.restores.get()
            );
        }
    }
}

#[test]
fn corrupted_function_states_are_refused_without_change() {
    use StateField as F;
    let arena = Arena::new(1 << 20);
    let _g = arena.install();
    let f = pci_driver::attach::<_, _, 1, 2>(
        BlkDevice::new(64, Features::EVENT_IDX, 16),
        arena.guest_ram(),
    );
    let mut blk =
        VirtIOBlk::<GuestHal, _>::new(GuestPci::new(f.clone(), pci_driver::BAR_BASE, true))
            .unwrap();
    let mut buf = [0u8; 512];
    blk.read_blocks(0, &mut buf).unwrap();
    let state = saved(&f.t.borrow());
    let fresh = || {
        PciTransport::<_, _, 1, 2>::new(
            BlkDevice::new(64, Features::EVENT_IDX, 16),
            arena.guest_ram(),
        )
    };
    let mut t = fresh();
    t.restore(&state).unwrap();
    assert_eq!(saved(&t), state);
    // (offset in the register block, bytes, accepted fields)
    let cases: Vec<(usize, Vec<u8>, &[StateField])> = vec![
        (0, 0x0008u16.to_le_bytes().to_vec(), &[F::Command]),
        (5, vec![4], &[F::InterruptStatus]),
        (6, vec![2], &[F::Msix]),
        (7, vec![2], &[F::Msix]),
        (8, 0x1_0000_0100u64.to_le_bytes().to_vec(), &[F::Bar]),
        (37, vec![1], &[F::Reserved]),
        (40, 7u16.to_le_bytes().to_vec(), &[F::Msix]),
        (42, 3u16.to_le_bytes().to_vec(), &[F::Msix]),
        (44, 2u16.to_le_bytes().to_vec(), &[F::Msix]),
        (48, 0x80u64.to_le_bytes().to_vec(), &[F::Msix]),
        // The first MSI-X entry's mask byte, and queue 0's vector (after both entries).
        (56 + 12, vec![3], &[F::Msix]),
        (56 + 32, 9u16.to_le_bytes().to_vec(), &[F::Msix]),
        // Bus Master cleared while the core says DMA is allowed.
        (0, 0x0002u16.to_le_bytes().to_vec(), &[F::Command]),
    ];
    for (off, value, fields) in cases {
        let mut b = state.clone();
        b[HEADER_LEN + off..HEADER_LEN + off + value.len()].copy_from_slice(&value);
        let mut t = fresh();
        let before = saved(&t);
        let e = t.restore(&b).expect_err("corrupted");
        let named = match e {
            StateError::Invalid { field } | StateError::Memory { field, .. } => Some(field),
            _ => None,
        };
        assert!(
            named.is_some_and(|f| fields.contains(&f)),
            "offset {off} = {value:x?}: {e:?}, expected one of {fields:?}"
        );
        assert_eq!(saved(&t), before, "a refused restore changed the function");
    }
    // Every single-bit flip: refused without change, or a state that saves and restores.
    let step = if cfg!(miri) { 41 } else { 1 };
    for i in (0..state.len()).step_by(step) {
        for bit in 0..8 {
            let mut b = state.clone();
            b[i] ^= 1 << bit;
            let mut t = fresh();
            let before = saved(&t);
            match t.restore(&b) {
                Err(_) => assert_eq!(saved(&t), before, "byte {i} bit {bit}"),
                Ok(()) => {
                    let again = saved(&t);
                    let mut u = fresh();
                    u.restore(&again)
                        .unwrap_or_else(|e| panic!("byte {i} bit {bit}: {e:?}"));
                }
            }
        }
    }
    std::mem::forget(blk);
}
