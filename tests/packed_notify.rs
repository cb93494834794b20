//! Packed-ring event suppression (VIRTIO 1.4 §2.8.10, PACKED-42..50) and hostile class H14
//! d–f: the driver event structure the device reads after publishing used descriptors, and the
//! device event structure it writes to ask for (or suppress) available-buffer notifications.

use virtq::{Features, PackedQueue};
use virtq_testkit::pflags::{A, U, W};
use virtq_testkit::{AccessKind, PackedDriver, TestMemory};

const ENABLE: u16 = 0;
const DISABLE: u16 = 1;
const DESC: u16 = 2;
const RESERVED: u16 = 3;

/// Make one single-descriptor chain available, pop it and complete it (publishing).
fn complete_one(drv: &mut PackedDriver<'_>, q: &mut PackedQueue, mem: &TestMemory) {
    drv.add_chain(&[(0x8_0000, 8, true)]).unwrap();
    let c = q.pop_avail(mem).unwrap().unwrap();
    q.push_used(mem, &c, 8).unwrap();
    drv.pop_used().unwrap();
}

/// ENABLE, DISABLE, and nothing published: the basic answers; the first decision after a reset
/// is conservative.
#[test]
fn enable_disable_and_nothing_new() {
    let mem = TestMemory::m0();
    let mut drv = PackedDriver::standard(&mem, 8);
    let mut q = drv.queue(8, Features::empty());
    assert_eq!(q.needs_notification(&mem), Ok(false), "nothing published");
    drv.set_driver_event(0, ENABLE);
    complete_one(&mut drv, &mut q, &mem);
    assert_eq!(q.needs_notification(&mem), Ok(true));
    assert_eq!(q.needs_notification(&mem), Ok(false), "already answered");
    drv.set_driver_event(0, DISABLE);
    complete_one(&mut drv, &mut q, &mem);
    assert_eq!(q.needs_notification(&mem), Ok(false));
    // Reserved bits above the two flag bits are ignored.
    drv.set_driver_event(0, 0xFFFC | DISABLE);
    complete_one(&mut drv, &mut q, &mem);
    assert_eq!(q.needs_notification(&mem), Ok(false));
}

/// The decision reads the driver event structure once, after publication (PACKED-48): the
/// flags word with a 16-bit load, and `off_wrap` only under DESC with EVENT_IDX.
#[test]
fn decision_reads_the_driver_event_structure_once() {
    let mem = TestMemory::m0();
    for (features, flags, loads) in [
        (Features::empty(), ENABLE, 1),
        (Features::empty(), DESC, 1),
        (Features::EVENT_IDX, DESC, 2),
        (Features::EVENT_IDX, DISABLE, 1),
    ] {
        let mut drv = PackedDriver::standard(&mem, 8);
        let mut q = drv.queue(8, features);
        drv.set_driver_event(0, flags);
        drv.add_chain(&[(0x8_0000, 8, true)]).unwrap();
        let c = q.pop_avail(&mem).unwrap().unwrap();
        mem.start_recording();
        q.push_used(&mem, &c, 8).unwrap();
        q.needs_notification(&mem).unwrap();
        let log = mem.take_log();
        let ev: Vec<_> = log
            .iter()
            .filter(|a| a.overlaps(drv.driver_event, 4))
            .collect();
        assert_eq!(ev.len(), loads, "{features:?} {flags}");
        assert!(ev.iter().all(|a| a.kind == AccessKind::Load16));
        assert_eq!(ev[0].addr, drv.driver_event + 2, "flags first");
        // Every driver-event read comes after the used flags store.
        let store = log
            .iter()
            .position(|a| a.kind == AccessKind::Store16)
            .unwrap();
        let first_read = log
            .iter()
            .position(|a| a.overlaps(drv.driver_event, 4))
            .unwrap();
        assert!(store < first_read);
    }
}

/// H14d: the reserved flag value 3 means ENABLE, with and without EVENT_IDX (PACKED-45).
#[test]
fn h14d_reserved_value_3_is_enable() {
    for features in [Features::empty(), Features::EVENT_IDX] {
        let mem = TestMemory::m0();
        let mut drv = PackedDriver::standard(&mem, 8);
        let mut q = drv.queue(8, features);
        complete_one(&mut drv, &mut q, &mem);
        q.needs_notification(&mem).unwrap();
        // An off_wrap that DESC would never hit.
        drv.set_driver_event(0x8000 | 7, RESERVED);
        complete_one(&mut drv, &mut q, &mem);
        assert_eq!(q.needs_notification(&mem), Ok(true), "{features:?}");
    }
}

/// H14e: DESC without EVENT_IDX means ENABLE (PACKED-44/45); with EVENT_IDX the same event
/// position suppresses.
#[test]
fn h14e_desc_without_event_idx_is_enable() {
    for (features, expect) in [(Features::empty(), true), (Features::EVENT_IDX, false)] {
        let mem = TestMemory::m0();
        let mut drv = PackedDriver::standard(&mem, 8);
        let mut q = drv.queue(8, features);
        complete_one(&mut drv, &mut q, &mem);
        q.needs_notification(&mem).unwrap();
        // Ask for an event at slot 5 of this lap; the next completion is at slot 1.
        drv.set_driver_event(0x8000 | 5, DESC);
        complete_one(&mut drv, &mut q, &mem);
        assert_eq!(q.needs_notification(&mem), Ok(expect), "{features:?}");
    }
}

/// DESC with EVENT_IDX (PACKED-46): notify exactly when the published range covers the event
/// position; a batch of 3 with the event on the middle one notifies once (H14b, packed).
#[test]
fn desc_event_fires_exactly_once_over_a_batch() {
    let mem = TestMemory::m0();
    let mut drv = PackedDriver::standard(&mem, 8);
    let mut q = drv.queue(8, Features::EVENT_IDX);
    complete_one(&mut drv, &mut q, &mem); // slot 0; first decision
    assert_eq!(q.needs_notification(&mem), Ok(true));
    // Event at slot 2: the batch covers slots 1, 2, 3.
    drv.set_driver_event(0x8000 | 2, DESC);
    for _ in 0..3 {
        drv.add_chain(&[(0x8_0000, 8, true)]).unwrap();
    }
    let chains: Vec<_> = std::iter::from_fn(|| q.pop_avail(&mem).unwrap()).collect();
    for c in &chains {
        q.add_used(&mem, c, 8).unwrap();
    }
    q.publish_used(&mem).unwrap();
    assert_eq!(q.needs_notification(&mem), Ok(true));
    for _ in 0..3 {
        drv.pop_used().unwrap();
    }
    // The event position was passed: the following completions do not notify.
    for _ in 0..3 {
        complete_one(&mut drv, &mut q, &mem);
        assert_eq!(q.needs_notification(&mem), Ok(false));
    }
    // The event at the driver's next used position (what Linux writes) notifies at once.
    drv.set_driver_event(drv.used_off_wrap(), DESC);
    complete_one(&mut drv, &mut q, &mem);
    assert_eq!(q.needs_notification(&mem), Ok(true));
}

/// An event position inside the slots a multi-descriptor chain skips over still fires.
#[test]
fn desc_event_inside_a_skipped_chain_fires() {
    let mem = TestMemory::m0();
    let mut drv = PackedDriver::standard(&mem, 8);
    let mut q = drv.queue(8, Features::EVENT_IDX);
    complete_one(&mut drv, &mut q, &mem);
    q.needs_notification(&mem).unwrap();
    drv.set_driver_event(0x8000 | 3, DESC); // slots 1..=3 are one chain
    drv.add_chain(&[
        (0x8_0000, 8, false),
        (0x8_0000, 8, false),
        (0x8_1000, 8, true),
    ])
    .unwrap();
    let c = q.pop_avail(&mem).unwrap().unwrap();
    q.push_used(&mem, &c, 8).unwrap();
    assert_eq!(q.needs_notification(&mem), Ok(true));
}

/// H14f: an off_wrap whose wrap bit differs from the used wrap counter names a slot one lap
/// away. Q = 6 (not a power of two): the used cursor runs through two laps one completion at a
/// time; for every event position, the notification comes exactly when the cursor passes it.
#[test]
fn h14f_event_wrap_bit_differs_from_used_wrap_counter() {
    let size = 6u16;
    for event_slot in 0..size {
        for event_wrap in [true, false] {
            let mem = TestMemory::m0();
            let mut drv = PackedDriver::standard(&mem, size);
            let mut q = drv.queue(size, Features::EVENT_IDX);
            // Leave the first (conservative) decision behind.
            drv.set_driver_event(0, DISABLE);
            complete_one(&mut drv, &mut q, &mem);
            q.needs_notification(&mem).unwrap();
            let off_wrap = event_slot | if event_wrap { 0x8000 } else { 0 };
            drv.set_driver_event(off_wrap, DESC);
            let mut fired = vec![];
            for _ in 0..(2 * size - 1) {
                let pos = (q.next_used_idx, q.used_wrap_counter);
                complete_one(&mut drv, &mut q, &mem);
                if q.needs_notification(&mem).unwrap() {
                    fired.push(pos);
                }
            }
            // The positions covered are (1, lap 1) .. (0, lap 2): every (slot, wrap) exactly
            // once, except (0, lap 1), which was used before the event was set.
            let expect = if (event_slot, event_wrap) == (0, true) {
                vec![]
            } else {
                vec![(event_slot, event_wrap)]
            };
            assert_eq!(fired, expect, "event ({event_slot}, {event_wrap})");
        }
    }
}

/// An event offset >= Q names no slot: treated as "notify" (spurious interrupts are safe).
#[test]
fn desc_event_offset_out_of_range_notifies() {
    let mem = TestMemory::m0();
    let mut drv = PackedDriver::standard(&mem, 6);
    let mut q = drv.queue(6, Features::EVENT_IDX);
    complete_one(&mut drv, &mut q, &mem);
    q.needs_notification(&mem).unwrap();
    for off in [6u16, 0x7FFF, 0xFFFF] {
        drv.set_driver_event(off, DESC);
        complete_one(&mut drv, &mut q, &mem);
        assert_eq!(q.needs_notification(&mem), Ok(true), "off_wrap {off:#x}");
    }
}

/// The device event structure (PACKED-47, PACKED-49): DISABLE, ENABLE, and DESC at the next
/// slot to read with EVENT_IDX; re-enabling re-checks the ring after the store and reports work
/// that raced in.
#[test]
fn device_event_structure_and_recheck() {
    for features in [Features::empty(), Features::EVENT_IDX] {
        let mem = TestMemory::m0();
        let mut drv = PackedDriver::standard(&mem, 6);
        let mut q = drv.queue(6, features);
        q.disable_notification(&mem).unwrap();
        assert_eq!(drv.device_event().1, DISABLE);
        assert!(!q.notifications_enabled());
        mem.start_recording();
        assert_eq!(q.enable_notification(&mem), Ok(false));
        let log = mem.take_log();
        // The stores, then the re-check (one 16-bit load of the next slot's flags).
        let last = log.last().unwrap();
        assert_eq!(
            (last.kind, last.addr),
            (AccessKind::Load16, drv.slot_addr(0) + 14)
        );
        assert!(
            log[..log.len() - 1]
                .iter()
                .all(|a| a.kind == AccessKind::Store16)
        );
        if features.contains(Features::EVENT_IDX) {
            assert_eq!(drv.device_event(), (0x8000, DESC));
        } else {
            assert_eq!(drv.device_event().1, ENABLE);
        }
        // Move the read cursor into the second lap and re-enable: DESC names (slot, wrap 0).
        for _ in 0..7 {
            complete_one(&mut drv, &mut q, &mem);
        }
        q.disable_notification(&mem).unwrap();
        drv.add_chain(&[(0x8_0000, 8, true)]).unwrap();
        assert_eq!(q.enable_notification(&mem), Ok(true), "work raced in");
        if features.contains(Features::EVENT_IDX) {
            assert_eq!(drv.device_event(), (1, DESC));
        }
        // A spurious kick with nothing new is harmless (PACKED-50).
        q.pop_avail(&mem).unwrap().unwrap();
        assert_eq!(q.pop_avail(&mem), Ok(None));
    }
}

/// The used flags words the device writes across laps: A = U = wrap, WRITE iff len > 0.
#[test]
fn used_flags_follow_the_device_wrap_counter() {
    let mem = TestMemory::m0();
    let mut drv = PackedDriver::standard(&mem, 3);
    let mut q = drv.queue(3, Features::empty());
    let mut seen = vec![];
    for k in 0..6u32 {
        drv.add_chain(&[(0x8_0000, 8, true)]).unwrap();
        let c = q.pop_avail(&mem).unwrap().unwrap();
        let slot = q.next_used_idx;
        q.push_used(&mem, &c, k % 2).unwrap();
        seen.push(drv.flags(slot));
        drv.pop_used().unwrap();
    }
    assert_eq!(seen, vec![A | U, A | U | W, A | U, W, 0, W]);
}

/// Under EVENT_IDX with notifications enabled, every pop moves the device's event position to
/// the next slot it will read (packed analogue of SPLIT-61), so the driver keeps kicking; with
/// notifications disabled the device event structure is left alone.
#[test]
fn pop_keeps_the_device_event_position_current() {
    let mem = TestMemory::m0();
    let mut drv = PackedDriver::standard(&mem, 5);
    let mut q = drv.queue(5, Features::EVENT_IDX);
    assert_eq!(q.enable_notification(&mem), Ok(false));
    assert_eq!(drv.device_event(), (0x8000, DESC));
    drv.add_chain(&[(0x8_0000, 8, false), (0x8_1000, 8, true)])
        .unwrap();
    drv.add_chain(&[(0x8_2000, 8, true)]).unwrap();
    q.pop_avail(&mem).unwrap().unwrap();
    assert_eq!(drv.device_event(), (0x8000 | 2, DESC));
    q.pop_avail(&mem).unwrap().unwrap();
    assert_eq!(drv.device_event(), (0x8000 | 3, DESC));
    q.disable_notification(&mem).unwrap();
    assert_eq!(drv.device_event(), (0x8000 | 3, DISABLE));
    drv.add_chain(&[(0x8_3000, 8, true)]).unwrap();
    drv.add_chain(&[(0x8_3000, 8, true)]).unwrap();
    mem.start_recording();
    q.pop_avail(&mem).unwrap().unwrap();
    assert!(
        !mem.take_log()
            .iter()
            .any(|a| a.overlaps(drv.device_event, 4)),
        "no device event writes while disabled"
    );
    assert_eq!(q.enable_notification(&mem), Ok(true), "slot 4 is waiting");
    assert_eq!(drv.device_event(), (0x8000 | 4, DESC));
    // Popping the ring's last slot moves the event position into the second lap (wrap 0).
    q.pop_avail(&mem).unwrap().unwrap();
    assert_eq!(drv.device_event(), (0, DESC));
}
