//! H17 through the transport: one notification runs the device for at most its budget, then
//! returns with the queue recorded as pending (`Events::KICKS`, `take_kicks`); whatever the
//! guest writes, neither the device nor the transport loops. Guests that never run out of
//! work are played by a scripted memory (`virtq_testkit::scripted`), so the runs are the same
//! every time.

use virtq::Features;
use virtq::transport::mmio::{MmioVersion, regs};
use virtq::transport::{Events, MmioOutcome, MmioTransport};
use virtq_testkit::devices::{BUDGET, BlkDevice};
use virtq_testkit::scripted::Scripted;
use virtq_testkit::{PackedDriver, SplitDriver, TestMemory, desc_flags, pflags};

const LIVE: u64 = 1 | 2 | 8 | 4;

/// Negotiate VERSION_1 plus `extra`, program queue 0 of `size` at `(desc, driver, device)`,
/// set DRIVER_OK; the outcome of that last write (the device runs once at DRIVER_OK).
fn go_live<M: virtq::GuestMemory>(
    t: &mut MmioTransport<BlkDevice, M, 1>,
    extra: Features,
    size: u16,
    (desc, driver, device): (u64, u64, u64),
) -> MmioOutcome {
    let want = (Features::VERSION_1 | extra).bits();
    for (reg, v) in [
        (regs::STATUS, 1 | 2),
        (regs::DRIVER_FEATURES_SEL, 0),
        (regs::DRIVER_FEATURES, want & 0xFFFF_FFFF),
        (regs::DRIVER_FEATURES_SEL, 1),
        (regs::DRIVER_FEATURES, want >> 32),
        (regs::STATUS, 1 | 2 | 8),
        (regs::QUEUE_SEL, 0),
        (regs::QUEUE_NUM, size.into()),
        (regs::QUEUE_DESC_LOW, desc),
        (regs::QUEUE_DRIVER_LOW, driver),
        (regs::QUEUE_DEVICE_LOW, device),
        (regs::QUEUE_READY, 1),
    ] {
        assert_eq!(t.write(reg, 4, v).events, Events::empty(), "setup {reg:#x}");
    }
    let out = t.write(regs::STATUS, 4, LIVE);
    assert_eq!(t.read(regs::STATUS, 4), LIVE);
    out
}

/// The queues `take_kicks` names.
fn kicks<M: virtq::GuestMemory>(t: &mut MmioTransport<BlkDevice, M, 1>) -> Vec<u16> {
    let mut k = Vec::new();
    t.take_kicks(|q| k.push(q));
    k
}

/// H17a: more chains are available than the budget allows. One `QueueNotify` serves exactly
/// one budget and reports the queue as pending; each `process_queue` serves one more budget,
/// until the ring is dry. (Before the notify hook reported `more`, the device looped until the
/// ring was dry inside the one notification.)
#[test]
fn one_notify_serves_at_most_the_budget_h17() {
    for budget in [BUDGET, 8] {
        let mem = TestMemory::m0();
        let dev = BlkDevice::new(8, Features::empty(), 512).with_budget(budget);
        let mut t = MmioTransport::<_, _, 1>::new(dev, &mem, MmioVersion::V2);
        let mut drv = SplitDriver::standard(&mem, 512);
        let out = go_live(
            &mut t,
            Features::empty(),
            512,
            (drv.desc, drv.avail, drv.used),
        );
        assert_eq!(out.events, Events::empty());
        // More than the budget; for the small budget, several budgets' worth.
        let chains = if budget == BUDGET {
            budget + 44
        } else {
            2 * budget + 4
        };
        for _ in 0..chains {
            // A one-byte writable buffer: no header, so the request completes with IOERR.
            drv.add_chain(&[(0x8_0000, 1, true)]).unwrap();
        }
        let out = t.write(regs::QUEUE_NOTIFY, 4, 0);
        assert_eq!(
            t.device().stats.requests,
            budget as u64,
            "one notification, one budget"
        );
        assert!(out.irq, "what was served is signalled");
        assert!(
            out.events.contains(Events::KICKS),
            "the rest is reported: {out:?}"
        );
        // Nothing runs until the hypervisor asks; reads and unrelated writes keep reporting
        // the pending queue without running it.
        let out = t.write(regs::QUEUE_SEL, 4, 0);
        assert!(out.events.contains(Events::KICKS));
        assert_eq!(t.device().stats.requests, budget as u64);
        let mut rounds = 0;
        loop {
            let k = kicks(&mut t);
            if k.is_empty() {
                break;
            }
            assert_eq!(k, [0]);
            rounds += 1;
            let before = t.device().stats.requests;
            let out = t.process_queue(0);
            let served = t.device().stats.requests - before;
            assert!(served <= budget as u64, "{served} in one call");
            assert_eq!(
                out.events.contains(Events::KICKS),
                t.device().stats.requests < chains as u64,
                "pending exactly while work is left"
            );
        }
        assert_eq!(
            rounds,
            (chains - budget).div_ceil(budget),
            "budget {budget}"
        );
        assert_eq!(t.device().stats.requests, chains as u64);
        let mut used = 0;
        while drv.pop_used().is_some() {
            used += 1;
        }
        assert_eq!(used, chains);
    }
}

/// H17a with a guest that never runs out: every read of `avail.idx` shows one more chain. Each
/// transport entry point (DRIVER_OK, `QueueNotify`, `process_queue`) serves at most one budget
/// and makes a bounded number of guest accesses, and reports the queue as pending. (Before,
/// the device drained until the ring was dry, and this guest's ring never is: the scripted
/// memory stopped the run at its access limit.)
#[test]
fn scripted_endless_split_guest_cannot_hold_the_transport_h17() {
    const ROUNDS: u64 = 6;
    const PER_CALL: u64 = 12 * BUDGET as u64 + 64;
    let mem = Scripted::new(TestMemory::m0(), ROUNDS * PER_CALL);
    let drv = SplitDriver::standard(mem.inner(), 256);
    // Every ring slot names head 0: a one-byte writable buffer (completed before the next pop,
    // so it is never in flight twice).
    drv.set_desc(0, 0x8_0000, 1, desc_flags::W, 0);
    for i in 0..drv.size {
        drv.set_ring_entry(i, 0);
    }
    let idx: Vec<u16> = (1..=u16::MAX).chain([0]).collect();
    mem.script(drv.avail + 2, &idx);
    let dev = BlkDevice::new(8, Features::empty(), 256);
    let mut t = MmioTransport::<_, _, 1>::new(dev, &mem, MmioVersion::V2);
    let mut last = (0, 0);
    let mut check = |t: &MmioTransport<BlkDevice, &Scripted<TestMemory>, 1>, out: MmioOutcome| {
        let now = (t.device().stats.requests, mem.accesses());
        assert!(
            now.0 - last.0 <= BUDGET as u64,
            "{} chains in one call",
            now.0 - last.0
        );
        assert!(
            now.1 - last.1 <= PER_CALL,
            "{} accesses in one call",
            now.1 - last.1
        );
        assert!(out.events.contains(Events::KICKS), "more work reported");
        last = now;
    };
    let out = go_live(
        &mut t,
        Features::empty(),
        256,
        (drv.desc, drv.avail, drv.used),
    );
    check(&t, out);
    let out = t.write(regs::QUEUE_NOTIFY, 4, 0);
    check(&t, out);
    for _ in 0..ROUNDS - 2 {
        assert_eq!(kicks(&mut t), [0]);
        let out = t.process_queue(0);
        check(&t, out);
    }
    assert!(t.device().stats.requests >= BUDGET as u64, "work was done");
    assert!(!t.queue(0).unwrap().is_broken());
}

/// Issue 12 item 2 through the transport: a guest toggles the packed ring's next descriptor
/// flags so every re-check after re-enabling kicks sees a chain and every pop finds none. The
/// drain charges each such re-check to the budget and reports `more`; the transport records
/// the queue as pending and returns. (Before, the device called the drain again while it
/// reported `more`: the scripted memory stopped the run at its access limit.)
#[test]
fn scripted_toggling_packed_guest_cannot_hold_the_transport() {
    const BUDGET_HERE: usize = 8;
    const ROUNDS: u64 = 5;
    const PER_CALL: u64 = 12 * BUDGET_HERE as u64 + 64;
    let mem = Scripted::new(TestMemory::m0(), ROUNDS * PER_CALL);
    let drv = PackedDriver::standard(mem.inner(), 16);
    drv.set_body(0, 0x8_0000, 1, 0);
    // Pops read "not available", re-checks read "available" (driver wrap counter 1).
    mem.script(drv.slot_addr(0) + 14, &[0, pflags::avail(true) | pflags::W]);
    let extra = Features::RING_PACKED;
    let dev = BlkDevice::new(8, extra, 16).with_budget(BUDGET_HERE);
    let mut t = MmioTransport::<_, _, 1>::new(dev, &mem, MmioVersion::V2);
    let mut accesses = 0;
    let mut check = |out: MmioOutcome| {
        let now = mem.accesses();
        assert!(
            now - accesses <= PER_CALL,
            "{} accesses in one call",
            now - accesses
        );
        assert!(out.events.contains(Events::KICKS), "more work reported");
        accesses = now;
    };
    let out = go_live(
        &mut t,
        extra,
        16,
        (drv.desc, drv.driver_event, drv.device_event),
    );
    assert!(t.is_packed());
    check(out);
    check(t.write(regs::QUEUE_NOTIFY, 4, 0));
    for _ in 0..ROUNDS - 2 {
        assert_eq!(kicks(&mut t), [0]);
        check(t.process_queue(0));
    }
    assert_eq!(t.device().stats.requests, 0, "no chain was ever there");
    assert!(mem.reads_of(drv.slot_addr(0) + 14) >= 2 * BUDGET_HERE);
}
