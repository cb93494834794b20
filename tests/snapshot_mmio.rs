//! Save and restore of a whole virtio-mmio device under a real guest (issue #13, "Round trip
//! at every point"): the `virtio-drivers` blk driver runs requests with several in flight,
//! EVENT_IDX on and off, version 2 and legacy. After *every* register access the guest makes
//! (each trap a hypervisor would take), the transport is saved, thrown away, and replaced by a
//! fresh transport over a fresh device (given a copy of the disk, the device's own state)
//! restored from those bytes and resumed. The guest never notices: every request completes
//! exactly once with the right data, and the guest's interrupt handler runs only when the
//! interrupt line is up (a lost interrupt stalls the run and fails it).

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use virtq::Features;
use virtq::transport::mmio::MmioVersion;
use virtq::transport::{MmioTransport, NotifyMode};
use virtq_testkit::devices::blk::BlkDevice;
use virtq_testkit::guest::virtio_drivers::device::blk::{BlkReq, BlkResp, RespStatus, VirtIOBlk};
use virtq_testkit::guest::{Arena, GuestHal, GuestMmio, GuestRam, MmioBus};

const SECTORS: u64 = 64;
const QUEUE: u16 = 16;

type Dev = MmioTransport<BlkDevice, GuestRam, 1>;

/// The register window: each access goes to the current transport, which is then saved and
/// replaced by a restored copy.
struct RestoringBus {
    t: RefCell<Dev>,
    arena: Arc<Arena>,
    extra: Features,
    version: MmioVersion,
    /// The interrupt line as the last access or hypervisor step left it.
    irq: Cell<bool>,
    restores: Cell<u64>,
    state_bytes: Cell<usize>,
}

impl RestoringBus {
    fn new(arena: &Arc<Arena>, version: MmioVersion, extra: Features) -> Self {
        let mut t = MmioTransport::new(
            BlkDevice::new(SECTORS, extra, QUEUE),
            arena.guest_ram(),
            version,
        );
        t.set_notify_mode(NotifyMode::Deferred);
        Self {
            t: RefCell::new(t),
            arena: arena.clone(),
            extra,
            version,
            irq: Cell::new(false),
            restores: Cell::new(0),
            state_bytes: Cell::new(0),
        }
    }

    /// Save, then swap in a fresh device and transport restored from the bytes.
    fn cycle(&self) {
        let mut old = self.t.borrow_mut();
        let mut state = vec![0u8; old.state_len()];
        let n = old.save_into(&mut state).expect("save");
        self.state_bytes.set(self.state_bytes.get().max(n));
        let mut device = BlkDevice::new(SECTORS, self.extra, QUEUE);
        device.disk_mut().copy_from_slice(old.device().disk());
        let mut fresh = MmioTransport::new(device, self.arena.guest_ram(), self.version);
        fresh.set_notify_mode(NotifyMode::Deferred);
        fresh
            .restore(&state[..n])
            .unwrap_or_else(|e| panic!("restore after {} restores: {e:?}", self.restores.get()));
        // The restored transport saves to the same bytes.
        let mut again = vec![0u8; fresh.state_len()];
        let m = fresh.save_into(&mut again).unwrap();
        assert_eq!(&again[..m], &state[..n], "restore is exact");
        let level = fresh.resume().irq;
        self.irq.set(level);
        *old = fresh;
        self.restores.set(self.restores.get() + 1);
    }

    /// The hypervisor runs the device on the queues the guest kicked; the line level after.
    fn run_kicks(&self) -> bool {
        let level = {
            let mut t = self.t.borrow_mut();
            let mut kicked = Vec::new();
            t.take_kicks(|q| kicked.push(q));
            let mut level = t.interrupt_asserted();
            for q in kicked {
                level = t.process_queue(q).irq;
            }
            level
        };
        self.irq.set(level);
        self.cycle();
        self.irq.get()
    }
}

impl MmioBus for RestoringBus {
    fn read(&self, offset: u64, width: u8) -> u32 {
        let v = self.t.borrow().read(offset, width) as u32;
        self.cycle();
        v
    }
    fn write(&self, offset: u64, width: u8, value: u32) {
        let level = self.t.borrow_mut().write(offset, width, value.into()).irq;
        self.irq.set(level);
        self.cycle();
    }
}

impl MmioBus for &RestoringBus {
    fn read(&self, offset: u64, width: u8) -> u32 {
        (**self).read(offset, width)
    }
    fn write(&self, offset: u64, width: u8, value: u32) {
        (**self).write(offset, width, value);
    }
}

fn pattern(block: usize, salt: u8) -> Vec<u8> {
    (0..1024)
        .map(|i| (block as u8).wrapping_mul(31) ^ salt ^ (i as u8))
        .collect()
}

#[test]
fn blk_guest_survives_a_restore_after_every_trap() {
    const K: usize = 3;
    for version in [MmioVersion::V2, MmioVersion::Legacy] {
        for extra in [Features::EVENT_IDX, Features::empty()] {
            let ctx = format!("{version:?} {extra:?}");
            let arena = Arena::new(1 << 20);
            let _g = arena.install();
            let bus = RestoringBus::new(&arena, version, extra);
            let mut blk = VirtIOBlk::<GuestHal, _>::new(GuestMmio::new(&bus).unwrap()).unwrap();
            let mut reqs: Vec<BlkReq> = (0..K).map(|_| BlkReq::default()).collect();
            let mut resps: Vec<BlkResp> = (0..K).map(|_| BlkResp::default()).collect();
            let mut interrupts = 0;
            for round in 0..10u8 {
                let writing = round % 2 == 0;
                let mut bufs: Vec<Vec<u8>> = (0..K)
                    .map(|i| {
                        if writing {
                            pattern(i * 2, round)
                        } else {
                            vec![0; 1024]
                        }
                    })
                    .collect();
                let mut tokens = [None; K];
                for i in 0..K {
                    // SAFETY: the request, buffer and response stay untouched until completed.
                    let tok = unsafe {
                        if writing {
                            blk.write_blocks_nb(i * 2, &mut reqs[i], &bufs[i], &mut resps[i])
                        } else {
                            blk.read_blocks_nb(i * 2, &mut reqs[i], &mut bufs[i], &mut resps[i])
                        }
                    }
                    .unwrap();
                    tokens[i] = Some(tok);
                }
                let mut done = 0;
                for _ in 0..50 {
                    if done == K {
                        break;
                    }
                    // The guest waits for its interrupt line; it never polls without one.
                    if !bus.run_kicks() && !bus.irq.get() {
                        continue;
                    }
                    interrupts += 1;
                    blk.ack_interrupt();
                    while let Some(tok) = blk.peek_used() {
                        let i = tokens.iter().position(|t| *t == Some(tok)).expect("once");
                        tokens[i] = None;
                        // SAFETY: the same request, buffer and response as at submission.
                        unsafe {
                            if writing {
                                blk.complete_write_blocks(tok, &reqs[i], &bufs[i], &mut resps[i])
                            } else {
                                blk.complete_read_blocks(tok, &reqs[i], &mut bufs[i], &mut resps[i])
                            }
                        }
                        .unwrap();
                        assert_eq!(resps[i].status(), RespStatus::OK, "{ctx}");
                        done += 1;
                    }
                }
                assert_eq!(done, K, "{ctx}: round {round} stalled (a lost interrupt?)");
                if !writing {
                    for (i, b) in bufs.iter().enumerate() {
                        assert_eq!(b, &pattern(i * 2, round - 1), "{ctx}: round {round}");
                    }
                }
            }
            let restores = bus.restores.get();
            println!(
                "{ctx}: {restores} restores, {interrupts} interrupts, state of {} bytes",
                bus.state_bytes.get()
            );
            assert!(restores > 80 && interrupts >= 10, "{ctx}");
        }
    }
}

// ---------------------------------------------------------------- packed over MMIO

mod packed {
    use std::cell::{Cell, RefCell};

    use virtq::Features;
    use virtq::transport::mmio::{INT_VRING, MmioVersion, regs};
    use virtq::transport::{MmioTransport, NotifyMode};
    use virtq_testkit::devices::blk::{self, BlkDevice};
    use virtq_testkit::{PackedDriver, TestMemory};
    use zerocopy::IntoBytes;
    use zerocopy::little_endian::{U32, U64};

    type Dev<'m> = MmioTransport<BlkDevice, &'m TestMemory, 1>;

    const RING: u64 = 0x1_0000;
    const DRIVER_EVENT: u64 = 0x2_0000;
    const DEVICE_EVENT: u64 = 0x2_0100;
    const SLOTS: u64 = 0x3_0000;
    const DESC_EVENT: u16 = 2;

    /// A register window whose transport is saved and replaced by a restored copy after every
    /// access (and after every hypervisor step).
    struct Restoring<'m> {
        t: RefCell<Dev<'m>>,
        mem: &'m TestMemory,
        extra: Features,
        restores: Cell<u64>,
        irq: Cell<bool>,
    }

    impl<'m> Restoring<'m> {
        fn cycle(&self) {
            let mut old = self.t.borrow_mut();
            let mut state = vec![0u8; old.state_len()];
            let n = old.save_into(&mut state).unwrap();
            let mut device = BlkDevice::new(64, self.extra, 16);
            device.disk_mut().copy_from_slice(old.device().disk());
            let mut fresh = MmioTransport::new(device, self.mem, MmioVersion::V2);
            fresh.set_notify_mode(NotifyMode::Deferred);
            fresh
                .restore(&state[..n])
                .unwrap_or_else(|e| panic!("restore {}: {e:?}", self.restores.get()));
            let level = fresh.resume().irq;
            self.irq.set(level);
            *old = fresh;
            self.restores.set(self.restores.get() + 1);
        }
        fn read(&self, off: u64) -> u64 {
            let v = self.t.borrow().read(off, 4);
            self.cycle();
            v
        }
        fn write(&self, off: u64, v: u64) {
            let level = self.t.borrow_mut().write(off, 4, v).irq;
            self.irq.set(level);
            self.cycle();
        }
        /// The hypervisor runs the kicked queues; the interrupt line after.
        fn run(&self) -> bool {
            {
                let mut t = self.t.borrow_mut();
                let mut kicked = Vec::new();
                t.take_kicks(|q| kicked.push(q));
                let mut level = t.interrupt_asserted();
                for q in kicked {
                    level = t.process_queue(q).irq;
                }
                self.irq.set(level);
            }
            self.cycle();
            self.irq.get()
        }
    }

    fn header(mem: &TestMemory, at: u64, type_: u32, sector: u64) {
        let h = blk::BlkReqHeader {
            type_: U32::new(type_),
            reserved: U32::new(0),
            sector: U64::new(sector),
        };
        mem.poke(at, h.as_bytes());
    }

    #[test]
    fn packed_blk_survives_a_restore_after_every_trap() {
        for extra in [Features::EVENT_IDX, Features::empty()] {
            for size in [8u16, 5] {
                let mem = TestMemory::new(&[(0, 0x10_0000)]);
                let extra_all = extra | Features::RING_PACKED;
                let mut t =
                    MmioTransport::new(BlkDevice::new(64, extra_all, 16), &mem, MmioVersion::V2);
                t.set_notify_mode(NotifyMode::Deferred);
                let w = Restoring {
                    t: RefCell::new(t),
                    mem: &mem,
                    extra: extra_all,
                    restores: Cell::new(0),
                    irq: Cell::new(false),
                };
                // Bring-up through the registers, a restore after each access.
                w.write(regs::STATUS, 1);
                w.write(regs::STATUS, 3);
                let want = (extra | Features::VERSION_1 | Features::RING_PACKED).bits();
                w.write(regs::DRIVER_FEATURES_SEL, 0);
                w.write(regs::DRIVER_FEATURES, want & 0xFFFF_FFFF);
                w.write(regs::DRIVER_FEATURES_SEL, 1);
                w.write(regs::DRIVER_FEATURES, want >> 32);
                w.write(regs::STATUS, 0xB);
                assert_eq!(w.read(regs::STATUS) & 8, 8);
                let mut drv = PackedDriver::new(&mem, size, RING, DRIVER_EVENT, DEVICE_EVENT);
                w.write(regs::QUEUE_SEL, 0);
                w.write(regs::QUEUE_NUM, size.into());
                for (lo, v) in [
                    (regs::QUEUE_DESC_LOW, RING),
                    (regs::QUEUE_DRIVER_LOW, DRIVER_EVENT),
                    (regs::QUEUE_DEVICE_LOW, DEVICE_EVENT),
                ] {
                    w.write(lo, v);
                    w.write(lo + 4, 0);
                }
                w.write(regs::QUEUE_READY, 1);
                w.write(regs::STATUS, 0xF);
                assert!(w.t.borrow().is_packed());
                let ctx = format!("{extra:?} size {size}");
                // Rounds of up to three requests in flight: write a pattern, read it back.
                let mut interrupts = 0;
                for round in 0..12u64 {
                    // A write round, then a read round of the same sectors.
                    let n = (1 + (round / 2 % 3)).min(u64::from(size) / 3);
                    let mut ids = Vec::new();
                    for k in 0..n {
                        let slot = SLOTS + k * 0x1000;
                        let sector = (round / 2 * 3 + k) % 64;
                        let writing = round % 2 == 0;
                        header(
                            &mem,
                            slot,
                            if writing { blk::T_OUT } else { blk::T_IN },
                            sector,
                        );
                        let data: Vec<u8> = (0..512).map(|i| (i as u64 ^ sector) as u8).collect();
                        if writing {
                            mem.poke(slot + 0x100, &data);
                        } else {
                            mem.fill(slot + 0x100, 512, 0);
                        }
                        mem.poke(slot + 0x400, &[0xff]);
                        let id = drv
                            .add_chain(&[
                                (slot, 16, false),
                                (slot + 0x100, 512, !writing),
                                (slot + 0x400, 1, true),
                            ])
                            .unwrap();
                        ids.push((id, slot, sector, writing, data));
                    }
                    if extra.contains(Features::EVENT_IDX) {
                        drv.set_driver_event(drv.used_off_wrap(), DESC_EVENT);
                    }
                    w.write(regs::QUEUE_NOTIFY, 0);
                    let mut done = 0;
                    for _ in 0..20 {
                        if done == ids.len() {
                            break;
                        }
                        if !w.run() && !w.irq.get() {
                            continue;
                        }
                        interrupts += 1;
                        let st = w.read(regs::INTERRUPT_STATUS);
                        assert_ne!(st & u64::from(INT_VRING), 0, "{ctx}");
                        w.write(regs::INTERRUPT_ACK, st);
                        while let Some(u) = drv.pop_used() {
                            let (_, slot, _, writing, data) = ids
                                .iter()
                                .find(|r| r.0 == u.id)
                                .expect("a request in flight, once")
                                .clone();
                            assert_eq!(mem.peek(slot + 0x400, 1), [blk::S_OK], "{ctx}");
                            if !writing {
                                assert_eq!(mem.peek(slot + 0x100, 512), data, "{ctx}");
                            }
                            done += 1;
                        }
                        if extra.contains(Features::EVENT_IDX) {
                            drv.set_driver_event(drv.used_off_wrap(), DESC_EVENT);
                        }
                    }
                    assert_eq!(done, ids.len(), "{ctx}: round {round} stalled");
                }
                assert!(
                    w.restores.get() > 60 && interrupts >= 12,
                    "{ctx}: {} restores, {interrupts} interrupts",
                    w.restores.get()
                );
                println!(
                    "packed {ctx}: {} restores, {interrupts} interrupts",
                    w.restores.get()
                );
            }
        }
    }
}
