//! virtio-mmio transport: arbitrary register access sequences (offset, width, value), both
//! layouts (v2 and legacy), inline and deferred notification, interleaved with guest memory
//! changes and queue processing, against the testkit's block device (which pops, reads,
//! writes and completes chains through `virtq::io`).
//!
//! Invariants (besides "no panic"):
//! * `MagicValue` and `Version` always read their fixed values; reads have no side effects;
//! * control-register accesses of a width other than 4 or misaligned are ignored and read 0;
//!   configuration reads of a width other than 1, 2, 4 or 8 read 0; no read is wider than
//!   its access (issue 15, access widths);
//! * `write` returns the interrupt line level, which is `InterruptStatus != 0`;
//! * every queue the transport accepted as ready lies in guest RAM (H9: checked at enable);
//! * after the device ran, a broken ready queue has raised DEVICE_NEEDS_RESET;
//! * writing 0 to `Status` resets: status 0 and no queue ready;
//! * the device writes guest memory only inside the used rings of ready queues or the
//!   device-writable buffers of chains made available on them (checked against the reference
//!   model's walk of every head published).
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtq::Features;
use virtq::transport::mmio::{MAGIC, regs};
use virtq::transport::{Events, MmioOutcome, MmioTransport, MmioVersion, NotifyMode};
use virtq::wire::DeviceStatus;
use virtq::wire::split_layout as layout;
use virtq_fuzz::{AVAIL, DESC, IMAGE_AT, MmioInput, MmioOp, USED, in_ram, new_memory};
use virtq_testkit::devices::BlkDevice;
use virtq_testkit::model::walk_chain;
use virtq_testkit::{Access, AccessKind, TestMemory};

type T<'m> = MmioTransport<BlkDevice, &'m TestMemory, 2>;

/// Everything a read or an ignored write must leave unchanged.
fn snapshot(t: &T<'_>) -> (DeviceStatus, u32, u64, [(bool, u16, u16); 2]) {
    let q = |i| {
        t.queue(i)
            .map_or((false, 0, 0), |q| (q.ready, q.size, q.next_avail_idx))
    };
    (
        t.status(),
        u32::from(t.interrupt_status().bits()),
        t.negotiated_features().bits(),
        [q(0), q(1)],
    )
}

fn init(t: &mut T<'_>, features: u32) {
    let w = |t: &mut T<'_>, off: u64, v: u32| {
        let _ = t.write(off, 4, v.into());
    };
    w(t, regs::STATUS, 0);
    w(t, regs::STATUS, 1);
    w(t, regs::STATUS, 3);
    w(t, regs::DRIVER_FEATURES_SEL, 0);
    w(t, regs::DRIVER_FEATURES, features);
    w(t, regs::DRIVER_FEATURES_SEL, 1);
    w(t, regs::DRIVER_FEATURES, 1); // VERSION_1
    w(t, regs::STATUS, 0xB);
    w(t, regs::QUEUE_SEL, 0);
    w(t, regs::QUEUE_NUM, 8);
    w(t, regs::QUEUE_DESC_LOW, DESC as u32);
    w(t, regs::QUEUE_DESC_HIGH, 0);
    w(t, regs::QUEUE_DRIVER_LOW, AVAIL as u32);
    w(t, regs::QUEUE_DRIVER_HIGH, 0);
    w(t, regs::QUEUE_DEVICE_LOW, USED as u32);
    w(t, regs::QUEUE_DEVICE_HIGH, 0);
    w(t, regs::QUEUE_READY, 1);
    w(t, regs::STATUS, 0xF);
}

/// Where the device may write: the used rings of ready queues and the writable buffers of the
/// chains on them (computed with the reference model before the device runs).
fn allowed_writes(t: &T<'_>, mem: &TestMemory) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for i in 0..2 {
        let Some(q) = t.queue(i) else { continue };
        if !q.ready || !q.is_valid() {
            continue;
        }
        let size = q.size;
        out.push((q.used_ring_addr.0, layout::used_ring_bytes(size)));
        let indirect = q.features.contains(Features::INDIRECT_DESC);
        for head in 0..size {
            let v = walk_chain(mem, q.desc_table_addr.0, size, head, indirect);
            for b in v.buffers.iter().filter(|b| b.writable) {
                out.push((b.addr, u64::from(b.len)));
            }
        }
    }
    out
}

fn check_writes(log: &[Access], allowed: &[(u64, u64)]) {
    for a in log {
        if matches!(a.kind, AccessKind::Write | AccessKind::Store16) {
            assert!(
                allowed
                    .iter()
                    .any(|&(s, l)| s <= a.addr && a.addr + a.len <= s + l),
                "device wrote {a:?} outside used rings and writable buffers"
            );
        }
    }
}

/// An outcome agrees with the transport's state (issue 15: events without polling).
fn check_outcome(t: &T<'_>, out: &MmioOutcome, status_before: DeviceStatus) {
    assert_eq!(out.irq, t.interrupt_asserted());
    assert!(t.interrupt_status().contains(out.raised), "raised bits are set");
    assert!(!out.events.contains(Events::BAR_CHANGED));
    let nr = DeviceStatus::DEVICE_NEEDS_RESET;
    assert_eq!(
        out.events.contains(Events::NEEDS_RESET),
        t.status().contains(nr) && !status_before.contains(nr),
        "NEEDS_RESET event iff newly raised"
    );
    if out.events.contains(Events::QUEUE_REFUSED) {
        assert!(
            (0..3).any(|i| t.queue_setup_error(i).is_some()),
            "a refused queue has a reason"
        );
    }
}

fn check_state(t: &T<'_>, mem: &TestMemory, ran_device: bool) {
    assert_eq!(t.interrupt_asserted(), !t.interrupt_status().is_empty());
    for i in 0..2 {
        let Some(q) = t.queue(i) else { continue };
        if q.ready {
            assert!(
                q.check_rings(mem).is_ok(),
                "ready queue {i} not in RAM: {q:?}"
            );
            if ran_device && q.is_broken() {
                assert!(
                    t.status().contains(DeviceStatus::DEVICE_NEEDS_RESET),
                    "queue {i} broken without DEVICE_NEEDS_RESET"
                );
            }
        }
    }
}

fn run(data: &[u8]) {
    let inp = MmioInput::decode(data);
    let mem = new_memory();
    mem.poke(IMAGE_AT, &inp.image);
    let version = if inp.legacy {
        MmioVersion::Legacy
    } else {
        MmioVersion::V2
    };
    let dev = BlkDevice::new(16, Features::INDIRECT_DESC | Features::EVENT_IDX, 8);
    let mut t: T<'_> = MmioTransport::new(dev, &mem, version);
    if inp.deferred {
        t.set_notify_mode(NotifyMode::Deferred);
    }
    for op in &inp.ops {
        // Computed before the op: the device may only write where the guest allowed it then.
        let allowed = allowed_writes(&t, &mem);
        let before = snapshot(&t);
        mem.start_recording();
        let mut ran = false;
        match op {
            MmioOp::Write(off, width, value) => {
                let (off, width) = (u64::from(*off % 0x200), *width);
                // The input carries 32 bits; the upper half (reached by 8-byte accesses) is
                // derived from them.
                let value = u64::from(*value) | (u64::from(value.rotate_left(13)) << 32);
                let out = t.write(off, width, value);
                check_outcome(&t, &out, before.0);
                if off < regs::CONFIG && (width != 4 || off % 4 != 0) {
                    assert_eq!(snapshot(&t), before, "ignored access changed state");
                }
                if off == regs::STATUS && width == 4 && value & 0xFFFF_FFFF == 0 {
                    assert!(t.status().is_empty(), "reset left status {:?}", t.status());
                    for i in 0..2 {
                        assert!(t.queue(i).is_none_or(|q| !q.ready && q.in_flight() == 0));
                    }
                }
                ran = off == regs::QUEUE_NOTIFY;
            }
            MmioOp::Read(off, width) => {
                let off = u64::from(*off % 0x200);
                let v = t.read(off, *width);
                if *width == 4 && off == regs::MAGIC_VALUE {
                    assert_eq!(v, u64::from(MAGIC));
                }
                if *width == 4 && off == regs::VERSION {
                    assert_eq!(v, if inp.legacy { 1 } else { 2 });
                }
                // Access widths (issue 15): control registers answer only aligned 4-byte
                // reads, configuration 1, 2, 4 or 8 bytes; a value never exceeds its width.
                let control_ok = *width == 4 && off % 4 == 0;
                let config_ok = matches!(*width, 1 | 2 | 4 | 8);
                if (off < regs::CONFIG && !control_ok) || (off >= regs::CONFIG && !config_ok) {
                    assert_eq!(v, 0, "read of width {width} at {off:#x}");
                }
                if *width < 8 {
                    assert_eq!(v >> (8 * u32::from(*width)), 0, "value wider than the access");
                }
                assert_eq!(snapshot(&t), before, "a read changed state");
            }
            MmioOp::Process(i) => {
                let out = t.process_queue(u16::from(*i % 3));
                check_outcome(&t, &out, before.0);
                ran = true;
            }
            MmioOp::Poll => {
                let out = t.poll();
                check_outcome(&t, &out, before.0);
                ran = true;
            }
            MmioOp::TakeKicks => {
                let mut kicked = Vec::new();
                t.take_kicks(|i| kicked.push(i));
                for i in kicked {
                    let status = t.status();
                    let out = t.process_queue(i);
                    check_outcome(&t, &out, status);
                }
                ran = true;
            }
            MmioOp::Poke(off, b) => {
                let off = u64::from(*off) % 0x8000;
                if in_ram(off, b.len() as u64) {
                    mem.poke(off, b);
                }
            }
            MmioOp::Init(f) => {
                mem.take_log();
                init(&mut t, *f);
                ran = true;
            }
            MmioOp::Publish(h) => {
                let idx = mem.peek_u16(AVAIL + 2);
                mem.poke_u16(AVAIL + 4 + 2 * u64::from(idx % 8), *h);
                mem.poke_u16(AVAIL + 2, idx.wrapping_add(1));
            }
        }
        let log = mem.take_log();
        if !matches!(op, MmioOp::Init(_)) {
            // A device write into a buffer that overlaps a descriptor may legitimately change a
            // later chain of the same batch: allow what the guest allows after the op too.
            let mut allowed = allowed;
            allowed.extend(allowed_writes(&t, &mem));
            check_writes(&log, &allowed);
        }
        check_state(&t, &mem, ran);
    }
}

fuzz_target!(|data: &[u8]| run(data));
