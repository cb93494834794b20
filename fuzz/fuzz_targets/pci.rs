//! virtio-pci transport: arbitrary configuration-space and BAR access sequences (offset,
//! width, value; also by guest-physical address through the BAR decode), interleaved with
//! guest memory changes, queue processing, polling, kicks, configuration changes and PCI
//! resets, against the testkit's block device (optionally offering RING_PACKED), inline or
//! deferred notification.
//!
//! Invariants (besides "no panic"):
//! * vendor/device ID and the capability list (MSI-X, common, notify, ISR, device, PCI_CFG,
//!   then the end) are fixed whatever the guest wrote: a walk always ends;
//! * a read returns no more bytes than its width; configuration accesses that are not 1, 2 or
//!   4 naturally aligned bytes read 0 and change nothing; reads other than of the ISR and of
//!   the PCI_CFG data change nothing;
//! * every outcome: `intx` is the INTA# level, which is high only with MSI-X off, INTx
//!   enabled and the ISR non-zero; MSI-X vectors sent exist in the table and go out only with
//!   MSI-X on, Bus Master on and the function unmasked; pending bits only for table entries;
//! * an ISR read returns the ISR and clears it; a device status write of 0 resets (status 0,
//!   no queue ready, ISR 0, nothing pending, every vector unmapped);
//! * the status state machine holds (DRIVER_OK only with FEATURES_OK, negotiated ⊆ offered,
//!   never SUSPEND or bit 5); vectors read back are in the table or NO_VECTOR;
//! * every ready queue lies in guest RAM; after the device ran, a broken ready queue has
//!   raised DEVICE_NEEDS_RESET;
//! * on split rings the device writes guest memory only inside the used rings of ready queues
//!   and the device-writable buffers of chains made available on them (per the reference
//!   model's walk of every head).
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use virtq::Features;
use virtq::transport::NotifyMode;
use virtq::transport::pci::{NO_VECTOR, PciOutcome, PciTransport, layout};
use virtq::wire::DeviceStatus;
use virtq::wire::split_layout as split;
use virtq_fuzz::{AVAIL, DESC, IMAGE_AT, IMAGE_MAX, MAX_OPS, USED, in_ram, new_memory};
use virtq_testkit::devices::BlkDevice;
use virtq_testkit::model::walk_chain;
use virtq_testkit::{Access, AccessKind, TestMemory};

/// Two queues of storage (queue 0 exists, queue 1 does not), 3 MSI-X vectors.
type T<'m> = PciTransport<BlkDevice, &'m TestMemory, 2, 3>;
const V: u64 = 3;
/// Where the shortcut initialisation places BAR 0 (in the fuzz map's hole).
const BAR: u64 = 0x8000_0000;

#[derive(Debug)]
enum Op {
    CfgWrite(u16, u8, u64),
    CfgRead(u16, u8),
    BarWrite(u64, u8, u64),
    BarRead(u64, u8),
    /// Through the address decode: `BAR + offset`, or anywhere.
    MemWrite(u64, u8, u64),
    MemRead(u64, u8),
    Process(u8),
    Poll,
    TakeKicks,
    Poke(u16, Vec<u8>),
    /// The standard driver initialisation: BAR at [`BAR`], Memory Space and Bus Master,
    /// MSI-X on (vectors 0..3) when bit 8 is set, features `f & 0xFF` in the low word plus
    /// VERSION_1 (and RING_PACKED with bit 9), queue 0 of 8 entries at the standard rings on
    /// vector 1, DRIVER_OK.
    Init(u16),
    Publish(u16),
    ConfigChange,
    NeedsReset,
    PciReset,
}

/// A BAR offset biased to the structures: a region (common, ISR, device, notify, table,
/// PBA, anywhere) and an offset inside it.
fn bar_offset(u: &mut Unstructured<'_>) -> u64 {
    let region: u8 = u.arbitrary().unwrap_or(0);
    let off: u16 = u.arbitrary().unwrap_or(0);
    let off = u64::from(off);
    match region % 7 {
        0 => layout::COMMON_OFFSET + off % 0x48,
        1 => layout::ISR_OFFSET + off % 8,
        2 => layout::DEVICE_OFFSET + off % 0x1010,
        3 => layout::NOTIFY_OFFSET + off % 0x10,
        4 => layout::MSIX_TABLE_OFFSET + off % 0x50,
        5 => layout::MSIX_PBA_OFFSET + off % 0x10,
        _ => off,
    }
}

fn decode(data: &[u8]) -> (u8, Vec<u8>, Vec<Op>) {
    let mut u = Unstructured::new(data);
    let cfg: u8 = u.arbitrary().unwrap_or(0);
    let n = usize::from(u.arbitrary::<u16>().unwrap_or(0))
        .min(IMAGE_MAX)
        .min(u.len());
    let image = u.bytes(n).unwrap_or(&[]).to_vec();
    let mut ops = Vec::new();
    while !u.is_empty() && ops.len() < MAX_OPS {
        let tag: u8 = u.arbitrary().unwrap_or(0);
        let w = |u: &mut Unstructured<'_>| u.arbitrary::<u8>().unwrap_or(0) % 10;
        let v = |u: &mut Unstructured<'_>| u.arbitrary::<u64>().unwrap_or(0);
        ops.push(match tag % 16 {
            0 => Op::CfgWrite(u.arbitrary::<u16>().unwrap_or(0) % 0x110, w(&mut u), v(&mut u)),
            1 => Op::CfgRead(u.arbitrary::<u16>().unwrap_or(0) % 0x110, w(&mut u)),
            2 | 3 => {
                let off = bar_offset(&mut u);
                Op::BarWrite(off, w(&mut u), v(&mut u))
            }
            4 => {
                let off = bar_offset(&mut u);
                Op::BarRead(off, w(&mut u))
            }
            5 => {
                let near: bool = u.arbitrary().unwrap_or(true);
                let addr = if near { BAR.wrapping_add(bar_offset(&mut u)) } else { v(&mut u) };
                Op::MemWrite(addr, w(&mut u), v(&mut u))
            }
            6 => Op::MemRead(BAR.wrapping_add(bar_offset(&mut u)), w(&mut u)),
            7 => Op::Process(u.arbitrary().unwrap_or(0)),
            8 => Op::Poll,
            9 => Op::TakeKicks,
            10 => {
                let off: u16 = u.arbitrary().unwrap_or(0);
                let n = usize::from(u.arbitrary::<u8>().unwrap_or(0) % 64).min(u.len());
                Op::Poke(off, u.bytes(n).unwrap_or(&[]).to_vec())
            }
            11 => Op::Init(u.arbitrary().unwrap_or(0)),
            12 => Op::Publish(u.arbitrary().unwrap_or(0)),
            13 => Op::ConfigChange,
            14 => Op::NeedsReset,
            _ => Op::PciReset,
        });
    }
    (cfg, image, ops)
}

/// Everything a side-effect-free access must leave unchanged.
#[derive(Debug, PartialEq)]
struct Snapshot {
    status: DeviceStatus,
    negotiated: u64,
    isr: u8,
    pending: u64,
    command: u16,
    bar: Option<u64>,
    vectors: (u16, Option<u16>),
    split: (bool, u16, u16),
    packed: (bool, u16),
}

fn snapshot(t: &T<'_>) -> Snapshot {
    Snapshot {
        status: t.status(),
        negotiated: t.negotiated_features().bits(),
        isr: t.isr().bits(),
        pending: t.msix_pending(),
        command: t.command(),
        bar: t.bar_address(0),
        vectors: (t.config_vector(), t.queue_vector(0)),
        split: t.queue(0).map_or((false, 0, 0), |q| (q.ready, q.size, q.next_avail_idx)),
        packed: t.packed_queue(0).map_or((false, 0), |q| (q.ready, q.next_avail_idx)),
    }
}

fn init(t: &mut T<'_>, f: u16) {
    let cfg = |t: &mut T<'_>, off: u16, w: u8, v: u64| {
        let _ = t.config_write(off, w, v);
    };
    let c = |t: &mut T<'_>, off: u64, w: u8, v: u64| {
        let _ = t.bar_write(0, layout::COMMON_OFFSET + off, w, v);
    };
    use layout::common as cc;
    cfg(t, layout::BAR0, 4, BAR);
    cfg(t, layout::BAR1, 4, 0);
    cfg(t, layout::COMMAND, 2, u64::from(layout::COMMAND_MEMORY | layout::COMMAND_BUS_MASTER));
    if f & 0x100 != 0 {
        for v in 0..V {
            let e = layout::MSIX_TABLE_OFFSET + v * 16;
            let _ = t.bar_write(0, e, 8, 0xFEE0_0000 + (v << 12));
            let _ = t.bar_write(0, e + 8, 8, 0x4000 + v);
        }
        cfg(t, u16::from(layout::CAP_MSIX) + 2, 2, 1 << 15);
    }
    c(t, cc::DEVICE_STATUS, 1, 0);
    c(t, cc::DEVICE_STATUS, 1, 1);
    c(t, cc::DEVICE_STATUS, 1, 3);
    let packed = if f & 0x200 != 0 { Features::RING_PACKED.bits() >> 32 } else { 0 };
    c(t, cc::DRIVER_FEATURE_SELECT, 4, 0);
    c(t, cc::DRIVER_FEATURE, 4, u64::from(f & 0xFF) << 24);
    c(t, cc::DRIVER_FEATURE_SELECT, 4, 1);
    c(t, cc::DRIVER_FEATURE, 4, 1 | packed);
    c(t, cc::DEVICE_STATUS, 1, 0xB);
    c(t, cc::CONFIG_MSIX_VECTOR, 2, 0);
    c(t, cc::QUEUE_SELECT, 2, 0);
    c(t, cc::QUEUE_SIZE, 2, 8);
    c(t, cc::QUEUE_MSIX_VECTOR, 2, 1);
    c(t, cc::QUEUE_DESC, 8, DESC);
    c(t, cc::QUEUE_DRIVER, 8, AVAIL);
    c(t, cc::QUEUE_DEVICE, 8, USED);
    c(t, cc::QUEUE_ENABLE, 2, 1);
    c(t, cc::DEVICE_STATUS, 1, 0xF);
}

/// Where the device may write: the used ring of a ready split queue 0 and the writable
/// buffers of its chains (computed with the reference model before the device runs).
fn allowed_writes(t: &T<'_>, mem: &TestMemory) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let Some(q) = t.queue(0).filter(|q| q.ready && q.is_valid()) else {
        return out;
    };
    out.push((q.used_ring_addr.0, split::used_ring_bytes(q.size)));
    let indirect = q.features.contains(Features::INDIRECT_DESC);
    for head in 0..q.size {
        let v = walk_chain(mem, q.desc_table_addr.0, q.size, head, indirect);
        out.extend(v.buffers.iter().filter(|b| b.writable).map(|b| (b.addr, u64::from(b.len))));
    }
    out
}

fn check_outcome(t: &T<'_>, out: &PciOutcome, width: u8) {
    assert_eq!(out.intx, t.intx_level());
    if width < 8 {
        assert_eq!(out.value >> (8 * u32::from(width)), 0, "value wider than the access");
    }
    assert_eq!(out.msix.bits() >> V, 0, "vector outside the table");
    if !out.msix.is_empty() {
        assert!(t.msix_enabled(), "MSI-X message with MSI-X off");
        assert_ne!(t.command() & layout::COMMAND_BUS_MASTER, 0, "message without Bus Master");
        assert_eq!(t.msix_control() & (1 << 14), 0, "message while the function is masked");
    }
}

fn check_state(t: &mut T<'_>, mem: &TestMemory, ran: bool) {
    // Identity and the capability list, whatever was written.
    assert_eq!(t.config_read(0, 4).value, 0x1042_1AF4);
    let mut ptr = t.config_read(layout::CAPABILITIES, 1).value;
    let mut caps = Vec::new();
    while ptr != 0 {
        assert!(caps.len() < 6, "capability list grew or loops");
        caps.push(ptr);
        ptr = (t.config_read(ptr as u16, 4).value >> 8) & 0xFC;
    }
    assert_eq!(caps, [0x40, 0x50, 0x60, 0x74, 0x84, 0x94]);
    assert_eq!(
        t.config_read(u16::from(layout::CAP_MSIX) + 2, 2).value,
        u64::from(t.msix_control())
    );
    // Status machine, features, interrupts.
    let s = t.status();
    assert!(!s.contains(DeviceStatus::SUSPEND) && s.bits() & 0x20 == 0);
    if s.contains(DeviceStatus::DRIVER_OK) {
        assert!(s.contains(DeviceStatus::FEATURES_OK), "live without FEATURES_OK");
    }
    assert_eq!(t.negotiated_features().bits() & !t.offered_features().bits(), 0);
    assert_eq!(t.isr().bits() & !3, 0);
    assert_eq!(t.msix_pending() >> V, 0);
    if t.intx_level() {
        assert!(!t.msix_enabled() && !t.isr().is_empty());
        assert_eq!(t.command() & layout::COMMAND_INTX_DISABLE, 0);
    }
    for v in [t.config_vector(), t.queue_vector(0).unwrap_or(NO_VECTOR)] {
        assert!(u64::from(v) < V || v == NO_VECTOR, "vector {v:#x}");
    }
    assert_eq!(t.queue_vector(1), None, "queue 1 does not exist");
    // Queues.
    if let Some(q) = t.queue(0).filter(|q| q.ready) {
        assert!(q.check_rings(mem).is_ok(), "ready split queue outside RAM: {q:?}");
        if ran && q.is_broken() {
            assert!(s.contains(DeviceStatus::DEVICE_NEEDS_RESET));
        }
    }
    if let Some(p) = t.packed_queue(0).filter(|p| p.ready) {
        assert!(p.check_rings(mem).is_ok(), "ready packed queue outside RAM");
        if ran && p.is_broken() {
            assert!(s.contains(DeviceStatus::DEVICE_NEEDS_RESET));
        }
    }
}

fn check_writes(log: &[Access], allowed: &[(u64, u64)]) {
    for a in log {
        if matches!(a.kind, AccessKind::Write | AccessKind::Store16) {
            assert!(
                allowed.iter().any(|&(s, l)| s <= a.addr && a.addr + a.len <= s + l),
                "device wrote {a:?} outside used rings and writable buffers"
            );
        }
    }
}

fn run(data: &[u8]) {
    let (cfg, image, ops) = decode(data);
    let mem = new_memory();
    mem.poke(IMAGE_AT, &image);
    let extra = if cfg & 2 != 0 { Features::RING_PACKED } else { Features::empty() };
    let dev = BlkDevice::new(16, Features::INDIRECT_DESC | Features::EVENT_IDX | extra, 8);
    let mut t: T<'_> = PciTransport::new(dev, &mem);
    if cfg & 1 != 0 {
        t.set_notify_mode(NotifyMode::Deferred);
    }
    for op in &ops {
        let allowed = allowed_writes(&t, &mem);
        let packed = t.is_packed();
        let before = snapshot(&t);
        let isr = t.isr().bits();
        mem.start_recording();
        let mut ran = false;
        match *op {
            Op::CfgWrite(off, w, v) => {
                let out = t.config_write(off, w, v);
                check_outcome(&t, &out, w);
                let valid = matches!(w, 1 | 2 | 4) && off % u16::from(w.max(1)) == 0 && off < 0x100;
                if !valid {
                    assert_eq!(snapshot(&t), before, "ignored config write changed state");
                }
                ran = true;
            }
            Op::CfgRead(off, w) => {
                let out = t.config_read(off, w);
                check_outcome(&t, &out, w);
                let valid = matches!(w, 1 | 2 | 4) && off % u16::from(w.max(1)) == 0 && off < 0x100;
                if !valid {
                    assert_eq!(out.value, 0);
                }
                // Only the PCI_CFG data dword reads the BAR.
                if !(layout::PCI_CFG_DATA..layout::PCI_CFG_DATA + 4).contains(&off) {
                    assert_eq!(snapshot(&t), before, "a config read changed state");
                }
            }
            Op::BarWrite(off, w, v) => {
                let out = t.bar_write(0, off, w, v);
                check_outcome(&t, &out, w);
                if off == layout::COMMON_OFFSET + layout::common::DEVICE_STATUS && w == 1 && v & 0xFF == 0 {
                    assert!(t.status().is_empty());
                    assert!(!t.queue(0).is_some_and(|q| q.ready));
                    assert!(!t.packed_queue(0).is_some_and(|q| q.ready));
                    assert_eq!((t.isr().bits(), t.msix_pending()), (0, 0));
                    assert_eq!(t.config_vector(), NO_VECTOR);
                }
                ran = true;
            }
            Op::BarRead(off, w) => {
                let out = t.bar_read(0, off, w);
                check_outcome(&t, &out, w);
                if (off, w) == (layout::ISR_OFFSET, 1) {
                    assert_eq!(out.value, u64::from(isr));
                    assert!(t.isr().is_empty(), "read-to-clear");
                } else {
                    assert_eq!(snapshot(&t), before, "a BAR read changed state");
                }
            }
            Op::MemWrite(addr, w, v) => {
                let decoded = t.bar_address(0).is_some_and(|b| addr.wrapping_sub(b) < layout::BAR_SIZE);
                let out = t.memory_write(addr, w, v);
                assert_eq!(out.is_some(), decoded);
                if let Some(out) = out {
                    check_outcome(&t, &out, w);
                }
                ran = true;
            }
            Op::MemRead(addr, w) => {
                if let Some(out) = t.memory_read(addr, w) {
                    check_outcome(&t, &out, w);
                }
            }
            Op::Process(i) => {
                let out = t.process_queue(u16::from(i % 3));
                check_outcome(&t, &out, 0);
                ran = true;
            }
            Op::Poll => {
                let out = t.poll();
                check_outcome(&t, &out, 0);
                ran = true;
            }
            Op::TakeKicks => {
                let mut kicked = Vec::new();
                t.take_kicks(|i| kicked.push(i));
                for i in kicked {
                    let out = t.process_queue(i);
                    check_outcome(&t, &out, 0);
                }
                ran = true;
            }
            Op::Poke(off, ref b) => {
                let off = u64::from(off) % 0x8000;
                if in_ram(off, b.len() as u64) {
                    mem.poke(off, b);
                }
            }
            Op::Init(f) => {
                mem.take_log();
                init(&mut t, f);
                ran = true;
            }
            Op::Publish(h) => {
                let idx = mem.peek_u16(AVAIL + 2);
                mem.poke_u16(AVAIL + 4 + 2 * u64::from(idx % 8), h);
                mem.poke_u16(AVAIL + 2, idx.wrapping_add(1));
            }
            Op::ConfigChange => {
                let out = t.signal_config_change();
                check_outcome(&t, &out, 0);
            }
            Op::NeedsReset => {
                let out = t.raise_needs_reset();
                check_outcome(&t, &out, 0);
                assert!(t.status().contains(DeviceStatus::DEVICE_NEEDS_RESET));
            }
            Op::PciReset => {
                let out = t.pci_reset();
                check_outcome(&t, &out, 0);
                assert!(!out.intx && out.msix.is_empty());
                assert_eq!((t.command(), t.status().bits()), (0, 0));
            }
        }
        let log = mem.take_log();
        if !matches!(op, Op::Init(_)) && !packed && !t.is_packed() {
            let mut allowed = allowed;
            allowed.extend(allowed_writes(&t, &mem));
            check_writes(&log, &allowed);
        }
        check_state(&mut t, &mem, ran);
    }
}

fuzz_target!(|data: &[u8]| run(data));
