//! Writes the seed corpus of every fuzz target: well-formed rings built with the testkit's
//! `SplitDriver`, and one seed per hostile class of `shared/spec/hostile-inputs.md` that applies
//! to the split ring (loops, out-of-range indices, bad indirect tables, buffers in the MMIO hole,
//! length overflow, TOCTOU flips, avail.idx overrun, duplicate heads, ...).
//!
//! Also the `memory` target's layouts and edge steps.
//!
//! Run from `fuzz/`: `cargo run --example gen_corpus` (writes `corpus/<target>/seed-*`).

use std::fs;
use std::path::Path;

use virtq_fuzz::{
    AVAIL, BUFS, Config, DESC, DiffInput, IMAGE_AT, IoInput, IoOp, MemAddr, MemGap, MemInput,
    MemLen, MemOp, MemPlacement, MemRegion, MemTarget, MmioInput, MmioOp, Op, RawDesc, Scenario,
    USED, new_memory,
};
use virtq_testkit::desc_flags::{I, N, W};
use virtq_testkit::{SplitDriver, TestMemory};

/// A data buffer address in RAM0 (above the indirect-table area).
const DATA: u64 = 0x6000;
/// An address in the MMIO hole.
const HOLE: u64 = 0x9000;

/// The image of `mem` from [`IMAGE_AT`] up to the end of the indirect-table area, trailing
/// zeros trimmed.
fn image(mem: &TestMemory) -> Vec<u8> {
    let mut v = mem.peek(IMAGE_AT, (BUFS + 0x1000 - IMAGE_AT) as usize);
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

/// Seeds of the `restore` target: valid states of split and packed queues in several
/// conditions (chains in flight, unpublished completions, kicks off, cursors near the wrap),
/// with the guest memory they were saved over and a few operations to run after.
fn restore_seeds() -> Vec<(String, Vec<u8>)> {
    use virtq::packed::PackedChain;
    use virtq::{Features, PackedQueue, Queue};
    use virtq_testkit::PackedDriver;
    let mut out = Vec::new();
    let mut seed = |name: String,
                    packed: bool,
                    max: u16,
                    state: &[u8],
                    chains: &[Vec<u8>],
                    mem: &TestMemory| {
        let mut e = Vec::new();
        e.push(u8::from(packed) | (max.trailing_zeros() as u8) << 2);
        e.extend((state.len() as u16).to_le_bytes());
        e.extend(state);
        let img = image(mem);
        e.extend((img.len() as u16).to_le_bytes());
        e.extend(&img);
        if packed {
            e.push(chains.len() as u8);
            for c in chains {
                e.push(c.len() as u8);
                e.extend(c);
            }
        }
        // pop, pop, complete, publish, notify, resume, drain, pop, complete.
        e.extend([0, 0, 2, 0, 3, 4, 8, 7, 2, 0, 2, 0]);
        out.push((name, e));
    };
    for (i, (start, features)) in [
        (0u16, Features::empty()),
        (0xFFFE, Features::EVENT_IDX),
        (0x7FFF, Features::EVENT_IDX | Features::INDIRECT_DESC),
    ]
    .into_iter()
    .enumerate()
    {
        let mem = new_memory();
        let mut drv = SplitDriver::new(&mem, 8, DESC, AVAIL, USED);
        let mut q: Queue = drv.queue(8, features);
        drv.avail_idx = start;
        drv.last_used = start;
        mem.poke_u16(AVAIL + 2, start);
        mem.poke_u16(USED + 2, start);
        q.next_avail_idx = start;
        q.next_used_idx = start;
        for k in 0..5 {
            drv.add_chain(&[(DATA + 0x100 * k, 16, k % 2 == 0)]);
        }
        let c: Vec<_> = (0..3)
            .map(|_| q.pop_avail(&mem).unwrap().unwrap())
            .collect();
        q.push_used(&mem, c[0].head_index(), 4).unwrap();
        q.add_used(&mem, c[2].head_index(), 4).unwrap();
        if i == 2 {
            q.disable_notification(&mem).unwrap();
        }
        seed(
            format!("split-{i}"),
            false,
            8,
            q.save().as_bytes(),
            &[],
            &mem,
        );
    }
    for (i, (size, start, features)) in [
        (8u16, (0u16, true), Features::empty()),
        (6, (4, false), Features::EVENT_IDX),
        (5, (2, true), Features::EVENT_IDX | Features::INDIRECT_DESC),
    ]
    .into_iter()
    .enumerate()
    {
        let mem = new_memory();
        let ring = DESC;
        let mut drv = PackedDriver::new(&mem, size, ring, AVAIL, AVAIL + 0x100);
        let mut q: PackedQueue = drv.queue(size, features);
        if !start.1 {
            for slot in 0..size {
                drv.set_flags(slot, virtq_testkit::pflags::A | virtq_testkit::pflags::U);
            }
        }
        drv.next_avail = start.0;
        drv.avail_wrap = start.1;
        drv.next_used = start.0;
        drv.used_wrap = start.1;
        q.next_avail_idx = start.0;
        q.avail_wrap_counter = start.1;
        q.next_used_idx = start.0;
        q.used_wrap_counter = start.1;
        for k in 0..3u64 {
            drv.add_chain(&[
                (DATA + 0x100 * k, 16, false),
                (DATA + 0x80 + 0x100 * k, 8, true),
            ]);
        }
        let mut c = [PackedChain::<4>::EMPTY; 3];
        for slot in &mut c {
            q.pop_avail_into(&mem, slot).unwrap();
        }
        q.push_used(&mem, &c[1], 8).unwrap();
        let chains: Vec<Vec<u8>> = [c[0], c[2]]
            .iter()
            .map(|c| {
                let mut b = vec![0; c.saved_len()];
                c.save_into(&mut b).unwrap();
                b
            })
            .collect();
        seed(
            format!("packed-{i}"),
            true,
            8,
            q.save().as_bytes(),
            &chains,
            &mem,
        );
    }
    out
}

/// Seeds of the `restore` target's transport mode: a live virtio-blk device over virtio-mmio
/// (version 2 and legacy) with a chain served, saved.
fn restore_mmio_seeds() -> Vec<(String, Vec<u8>)> {
    use virtq::Features;
    use virtq::transport::MmioTransport;
    use virtq::transport::mmio::{MmioVersion, regs};
    use virtq_testkit::devices::blk::BlkDevice;
    let mut out = Vec::new();
    for (name, version, sel) in [
        ("mmio-v2", MmioVersion::V2, 2u8),
        ("mmio-legacy", MmioVersion::Legacy, 3),
    ] {
        let mem = new_memory();
        let dev = BlkDevice::new(8, Features::EVENT_IDX | Features::INDIRECT_DESC, 16);
        let mut t = MmioTransport::<_, _, 1>::new(dev, &mem, version);
        let w = |t: &mut MmioTransport<BlkDevice, &TestMemory, 1>, off: u64, v: u64| {
            let _ = t.write(off, 4, v);
        };
        w(&mut t, regs::STATUS, 1);
        w(&mut t, regs::STATUS, 3);
        let want = if version == MmioVersion::V2 {
            (1u64 << 32) | (1 << 29)
        } else {
            1 << 29
        };
        w(&mut t, regs::DRIVER_FEATURES_SEL, 0);
        w(&mut t, regs::DRIVER_FEATURES, want & 0xFFFF_FFFF);
        w(&mut t, regs::DRIVER_FEATURES_SEL, 1);
        w(&mut t, regs::DRIVER_FEATURES, want >> 32);
        w(&mut t, regs::QUEUE_SEL, 0);
        w(&mut t, regs::QUEUE_NUM, 16);
        if version == MmioVersion::V2 {
            w(&mut t, regs::STATUS, 0xB);
            for (lo, v) in [
                (regs::QUEUE_DESC_LOW, DESC),
                (regs::QUEUE_DRIVER_LOW, AVAIL),
                (regs::QUEUE_DEVICE_LOW, USED),
            ] {
                w(&mut t, lo, v);
                w(&mut t, lo + 4, 0);
            }
            w(&mut t, regs::QUEUE_READY, 1);
            w(&mut t, regs::STATUS, 0xF);
        } else {
            w(&mut t, regs::GUEST_PAGE_SIZE, 0x1000);
            w(&mut t, regs::QUEUE_ALIGN, 0x1000);
            w(&mut t, regs::QUEUE_PFN, DESC / 0x1000);
            w(&mut t, regs::STATUS, 7);
        }
        let mut state = vec![0u8; t.state_len()];
        let n = t.save_into(&mut state).unwrap();
        state.truncate(n);
        let mut e = vec![sel];
        e.extend((state.len() as u16).to_le_bytes());
        e.extend(&state);
        let img = image(&mem);
        e.extend((img.len() as u16).to_le_bytes());
        e.extend(&img);
        // Register reads and writes: status, queue notify, interrupt ack.
        e.extend([
            0, 0x1C, 1, 0x14, 0, 0, 0, 0, 0, 0x18, 1, 0x19, 3, 0, 0, 0, 2,
        ]);
        out.push((name.to_owned(), e));
    }
    out
}

fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDesc {
    RawDesc {
        addr,
        len,
        flags,
        next,
    }
}

/// Device ops that serve `n` chains: pop, walk, copy, complete, then the notification calls.
fn serve(n: usize) -> Vec<Op> {
    let mut ops = Vec::new();
    for _ in 0..n {
        ops.push(Op::Pop);
    }
    for i in 0..n as u8 {
        ops.push(Op::Walk(i));
        ops.push(Op::CopyInto(i, i % 2 == 0));
    }
    ops.push(Op::NeedsNotification);
    for _ in 0..n {
        ops.push(Op::PushUsed(0, u32::MAX));
    }
    ops.push(Op::NeedsNotification);
    ops.push(Op::SetNotification(false));
    ops.push(Op::SetNotification(true));
    ops.push(Op::Pop);
    ops
}

struct Seeds {
    split: Vec<(String, Vec<u8>)>,
    diff: Vec<(String, Vec<u8>)>,
    io: Vec<(String, Vec<u8>)>,
}

/// Reader/writer steps for `chain_io` seeds: header read, payload, status byte.
fn io_ops() -> Vec<IoOp> {
    vec![
        IoOp::ReadExact(16),
        IoOp::Read(3),
        IoOp::Skip(5),
        IoOp::Read(0x1000),
        IoOp::ReadExact(1),
        IoOp::ToWriter,
        IoOp::WriteAll(8, 0xAA),
        IoOp::Write(0x800, 0x55),
        IoOp::WriteAll(1, 0),
    ]
}

impl Seeds {
    /// A seed built by `build` on a fresh ring of `size`; served with `ops`.
    fn add(
        &mut self,
        name: &str,
        size: u16,
        indirect: bool,
        build: impl FnOnce(&mut SplitDriver<'_>),
        ops: Vec<Op>,
    ) {
        let mem = new_memory();
        let mut drv = SplitDriver::new(&mem, size, DESC, AVAIL, USED);
        build(&mut drv);
        let heads: Vec<u16> = (0..drv.avail_idx)
            .map(|i| mem.peek_u16(AVAIL + 4 + 2 * u64::from(i % size)))
            .collect();
        let img = image(&mem);
        let mut c = Config::standard(size, indirect);
        c.event_idx = name.contains("event");
        self.split
            .push((name.to_owned(), Scenario::encode(&c, &img, &ops)));
        // The differential target publishes the heads itself: drop the avail ring from the image.
        let mut dimg = img.clone();
        let (a, end) = ((AVAIL - IMAGE_AT) as usize, (USED - IMAGE_AT) as usize);
        if dimg.len() > a {
            let stop = end.min(dimg.len());
            dimg[a..stop].fill(0);
        }
        let diff = DiffInput {
            size,
            indirect,
            image: dimg,
            heads: if heads.is_empty() { vec![0] } else { heads },
        };
        self.io.push((
            name.to_owned(),
            IoInput {
                size,
                indirect,
                image: diff.image.clone(),
                head: diff.heads[0],
                ops: io_ops(),
            }
            .encode(),
        ));
        self.diff.push((name.to_owned(), diff.encode()));
    }
}

fn main() {
    let mut s = Seeds {
        split: Vec::new(),
        diff: Vec::new(),
        io: Vec::new(),
    };

    // Well-formed.
    s.add(
        "ok-blk-like",
        8,
        false,
        |drv| {
            drv.add_chain(&[
                (DATA, 16, false),
                (DATA + 0x100, 512, true),
                (DATA + 0x400, 1, true),
            ]);
            drv.add_chain(&[(DATA + 0x800, 64, false)]);
            drv.add_chain(&[(0x10000, 0x1000, true)]);
        },
        serve(3),
    );
    s.add(
        "ok-indirect",
        16,
        true,
        |drv| {
            drv.add_indirect_chain(
                BUFS,
                &[
                    (DATA, 16, false),
                    (DATA + 0x10, 8, true),
                    (DATA + 0x20, 4, true),
                ],
            );
            drv.add_chain(&[(DATA + 0x100, 32, false), (DATA + 0x200, 32, true)]);
        },
        serve(2),
    );
    s.add(
        "ok-direct-then-indirect",
        8,
        true,
        |drv| {
            drv.write_table(BUFS, &[(DATA, 8, W | N, 1), (DATA + 8, 8, W, 0)]);
            drv.set_desc(0, DATA + 0x100, 16, N, 1);
            drv.set_desc(1, BUFS, 32, I | W, 0);
            drv.publish(0);
        },
        serve(1),
    );
    s.add(
        "ok-size1",
        1,
        false,
        |drv| {
            drv.add_chain(&[(DATA, 100, true)]);
        },
        serve(1),
    );
    s.add(
        "ok-event-idx",
        4,
        false,
        |drv| {
            for k in 0..3 {
                drv.add_chain(&[(DATA + 0x100 * k, 8, true)]);
            }
            drv.set_used_event(1);
        },
        {
            let mut o = vec![
                Op::Drain(3, 2),
                Op::NeedsNotification,
                Op::SetSuppression(0, 5),
            ];
            o.extend(serve(1));
            o
        },
    );
    s.add(
        "ok-wrap-and-reset",
        2,
        false,
        |drv| {
            drv.add_chain(&[(DATA, 8, true)]);
        },
        {
            let mut o = Vec::new();
            for _ in 0..6 {
                o.extend([
                    Op::Pop,
                    Op::Walk(0),
                    Op::PushUsed(0, 8),
                    Op::WriteDesc(0, d(DATA, 8, W, 0)),
                    Op::PublishHead(0),
                ]);
            }
            o.extend([
                Op::Pop,
                Op::Reset,
                Op::Pop,
                Op::PushBogus(0, 1),
                Op::SetAvailIdx(0),
            ]);
            o.extend(serve(1));
            o
        },
    );

    // Hostile (ids from hostile-inputs.md Part B).
    let chain_seed = |s: &mut Seeds,
                      name: &str,
                      size: u16,
                      indirect: bool,
                      descs: &[RawDesc],
                      table: &[RawDesc]| {
        let descs = descs.to_vec();
        let table = table.to_vec();
        s.add(
            name,
            size,
            indirect,
            move |drv| {
                for (i, x) in descs.iter().enumerate() {
                    drv.set_desc(i as u16, x.addr, x.len, x.flags, x.next);
                }
                let t: Vec<_> = table
                    .iter()
                    .map(|x| (x.addr, x.len, x.flags, x.next))
                    .collect();
                drv.write_table(BUFS, &t);
                drv.publish(0);
            },
            serve(1),
        );
    };
    chain_seed(
        &mut s,
        "h4-loop",
        4,
        false,
        &[d(DATA, 8, N, 1), d(DATA, 8, N, 0)],
        &[],
    );
    chain_seed(&mut s, "h4-self-loop", 8, false, &[d(DATA, 8, N, 0)], &[]);
    chain_seed(
        &mut s,
        "h4-zero-len-loop",
        8,
        false,
        &[d(DATA, 0, N, 0)],
        &[],
    );
    chain_seed(
        &mut s,
        "h3-next-out-of-range",
        4,
        false,
        &[d(DATA, 8, N, 4)],
        &[],
    );
    chain_seed(
        &mut s,
        "h6-zero-length",
        4,
        false,
        &[d(DATA, 0, N, 1), d(DATA, 8, W, 0)],
        &[],
    );
    chain_seed(
        &mut s,
        "h10-readable-after-writable",
        4,
        false,
        &[d(DATA, 8, W | N, 1), d(DATA, 8, 0, 0)],
        &[],
    );
    chain_seed(
        &mut s,
        "h7-buffer-in-hole",
        4,
        false,
        &[d(HOLE, 8, 0, 0)],
        &[],
    );
    chain_seed(
        &mut s,
        "h7-buffer-straddles-hole",
        4,
        false,
        &[d(0x7FF0, 0x20, W, 0)],
        &[],
    );
    chain_seed(
        &mut s,
        "h7-buffer-at-ram-end",
        4,
        false,
        &[d(0x11FF0, 0x10, W, 0)],
        &[],
    );
    chain_seed(
        &mut s,
        "h8-addr-overflow",
        4,
        false,
        &[d(u64::MAX - 3, 8, 0, 0)],
        &[],
    );
    chain_seed(
        &mut s,
        "h7f-length-overflow",
        4,
        false,
        &[d(0, u32::MAX, N, 1), d(0x10000, 1, W, 0)],
        &[],
    );
    chain_seed(
        &mut s,
        "h5m-indirect-not-negotiated",
        4,
        false,
        &[d(BUFS, 16, I, 0)],
        &[d(DATA, 8, 0, 0)],
    );
    chain_seed(
        &mut s,
        "h5h-indirect-with-next",
        4,
        true,
        &[d(BUFS, 16, I | N, 1), d(DATA, 8, W, 0)],
        &[d(DATA, 8, 0, 0)],
    );
    chain_seed(
        &mut s,
        "h5f-nested-indirect",
        4,
        true,
        &[d(BUFS, 32, I, 0)],
        &[d(DATA, 8, N, 1), d(BUFS, 16, I, 0)],
    );
    chain_seed(
        &mut s,
        "h5a-indirect-len-zero",
        4,
        true,
        &[d(BUFS, 0, I, 0)],
        &[],
    );
    chain_seed(
        &mut s,
        "h5c-indirect-len-unaligned",
        4,
        true,
        &[d(BUFS, 24, I, 0)],
        &[d(DATA, 8, 0, 0)],
    );
    chain_seed(
        &mut s,
        "h5d-indirect-too-many",
        4,
        true,
        &[d(DATA, 8, N, 1), d(BUFS, 64, I, 0)],
        &[
            d(DATA, 8, N, 1),
            d(DATA, 8, N, 2),
            d(DATA, 8, N, 3),
            d(DATA, 8, 0, 0),
        ],
    );
    chain_seed(
        &mut s,
        "h5-indirect-table-in-hole",
        4,
        true,
        &[d(HOLE, 32, I, 0)],
        &[],
    );
    chain_seed(
        &mut s,
        "h5-indirect-loop",
        8,
        true,
        &[d(BUFS, 32, I, 0)],
        &[d(DATA, 8, N, 1), d(DATA, 8, N, 0)],
    );
    chain_seed(
        &mut s,
        "h5-indirect-next-out",
        8,
        true,
        &[d(BUFS, 32, I | W, 0)],
        &[d(DATA, 8, N, 2), d(DATA, 8, 0, 0)],
    );
    chain_seed(
        &mut s,
        "h5-indirect-unaligned-table",
        8,
        true,
        &[d(BUFS + 4, 16, I, 0)],
        &[],
    );
    chain_seed(
        &mut s,
        "h4-max-chain",
        8,
        false,
        &(0..8u16)
            .map(|i| {
                d(
                    DATA + 16 * u64::from(i),
                    16,
                    if i < 7 { N | W } else { W },
                    i + 1,
                )
            })
            .collect::<Vec<_>>(),
        &[],
    );

    // Ring-level classes: H1 overrun, H2 head out of range, H13 duplicate head.
    s.add(
        "h1-avail-idx-overrun",
        4,
        false,
        |drv| drv.set_avail_idx(5),
        serve(1),
    );
    s.add(
        "h2-head-out-of-range",
        4,
        false,
        |drv| {
            drv.set_desc(0, DATA, 8, 0, 0);
            drv.publish(7);
        },
        serve(1),
    );
    s.add(
        "h13-duplicate-head",
        4,
        false,
        |drv| {
            drv.set_desc(0, DATA, 8, W, 0);
            drv.publish(0);
            drv.publish(0);
        },
        serve(2),
    );
    // H12: TOCTOU, the guest changes a descriptor / ring entry / avail.idx after the first read.
    s.add(
        "h12-toctou-desc",
        4,
        false,
        |drv| {
            drv.set_desc(0, DATA, 8, W, 0);
            drv.publish(0);
        },
        {
            let mut o = vec![Op::FlipDesc(0, d(HOLE, 0xFFFF_FFFF, N | I, 9)), Op::Pop];
            o.extend([
                Op::Walk(0),
                Op::Walk(0),
                Op::CopyInto(0, true),
                Op::PushUsed(0, 8),
            ]);
            o
        },
    );
    s.add(
        "h12-toctou-ring",
        4,
        false,
        |drv| {
            drv.set_desc(0, DATA, 8, W, 0);
            drv.publish(0);
        },
        vec![
            Op::FlipRing(0, 3),
            Op::FlipAvailIdx(40),
            Op::Pop,
            Op::Pop,
            Op::Pop,
            Op::Walk(0),
        ],
    );
    // Hostile placement: descriptor table in the hole, used ring straddling the hole.
    {
        let mut c = Config::standard(4, false);
        c.desc = HOLE;
        c.used = 0x7FFC;
        let ops = vec![
            Op::PublishHead(0),
            Op::Pop,
            Op::Walk(0),
            Op::PushUsed(0, 0),
            Op::PushBogus(1, 0),
            Op::MarkBroken,
            Op::Pop,
            Op::Reset,
            Op::Pop,
        ];
        s.split.push((
            "h9-rings-outside-ram".into(),
            Scenario::encode(&c, &[], &ops),
        ));
    }
    s.add(
        "h17-drain-deferred-and-broken",
        8,
        true,
        |drv| {
            drv.add_chain(&[(DATA, 8, true)]);
            drv.set_desc(7, DATA, 8, N, 7);
            drv.publish(7);
            drv.add_chain(&[(DATA, 8, false)]);
        },
        vec![
            Op::Drain(7, 0),
            Op::Drain(7, 1),
            Op::Walk(0),
            Op::PushUsed(0, 8),
            Op::Drain(1, 3),
        ],
    );

    // MMIO: a driver that initialises the device and submits blk requests (read, write,
    // flush, get-id, a bogus type, a malformed chain), v2 and legacy, inline and deferred.
    let mut mmio = Vec::new();
    {
        let mem = new_memory();
        let mut drv = SplitDriver::new(&mem, 8, DESC, AVAIL, USED);
        let hdr = |ty: u32, sector: u64| {
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&ty.to_le_bytes());
            h[8..16].copy_from_slice(&sector.to_le_bytes());
            h
        };
        for (k, ty) in [(0u64, 0u32), (1, 1), (2, 4), (3, 8), (4, 77)] {
            let at = DATA + 0x400 * k;
            mem.poke(at, &hdr(ty, k));
            drv.add_chain(&[
                (at, 16, false),
                (at + 0x20, 512, ty == 0 || ty == 8),
                (at + 0x300, 1, true),
            ]);
        }
        drv.set_desc(7, DATA, 16, N, 7);
        let img = image(&mem);
        // The chains are published by the ops, after the device is initialised.
        let mut img = img;
        let a = (AVAIL - IMAGE_AT) as usize;
        img[a..a + 4].fill(0);
        for (name, legacy, deferred) in [
            ("v2-inline", false, false),
            ("v2-deferred", false, true),
            ("legacy", true, false),
        ] {
            let mut ops = vec![
                MmioOp::Read(0, 4),
                MmioOp::Read(4, 4),
                MmioOp::Read(0x10, 4),
                MmioOp::Init(1 << 28),
            ];
            for head in 0..5 {
                ops.push(MmioOp::Publish(head));
            }
            ops.extend([
                MmioOp::Write(0x50, 4, 0),
                MmioOp::TakeKicks,
                MmioOp::Read(0x60, 4),
                MmioOp::Write(0x64, 4, 1),
                MmioOp::Publish(7),
                MmioOp::Poll,
                MmioOp::Read(0x70, 4),
                MmioOp::Write(0x70, 4, 0),
                MmioOp::Read(0x100, 4),
                MmioOp::Read(0x114, 1),
            ]);
            let inp = MmioInput {
                legacy,
                deferred,
                image: img.clone(),
                ops,
            };
            mmio.push((format!("blk-{name}"), inp.encode()));
        }
    }

    // Packed ring: chains published by the target's driver model (shape from the head value).
    let mut packed = Vec::new();
    for (name, size, indirect, event_idx, odd) in [
        ("p8-indirect", 8u16, true, false, false),
        ("p7-wrap", 8, true, true, true),
        ("p1", 1, false, false, false),
        ("p16-event", 16, false, true, false),
    ] {
        let mut c = Config::standard(size, indirect);
        c.event_idx = event_idx;
        let mut ops = Vec::new();
        for round in 0..3u16 {
            for h in [0x0100u16, 0x0205 | (round << 12), 0x0306, 0x040A, 0x0512] {
                ops.push(Op::PublishHead(h));
            }
            ops.extend([
                Op::Pop,
                Op::Pop,
                Op::Walk(0),
                Op::CopyInto(1, true),
                Op::PushUsed(0, 64),
            ]);
            ops.extend([
                Op::NeedsNotification,
                Op::Drain(4, round as u8),
                Op::PushBogus(0, 1),
            ]);
            ops.extend([
                Op::SetNotification(false),
                Op::SetNotification(true),
                Op::AddUsed(0, 0),
            ]);
            ops.extend([
                Op::Publish,
                Op::FlipDesc(2, d(DATA, 8, 0x80, 3)),
                Op::Pop,
                Op::Walk(1),
            ]);
        }
        ops.extend([
            Op::Reset,
            Op::PublishHead(7),
            Op::Pop,
            Op::MarkBroken,
            Op::Pop,
        ]);
        let mut bytes = Scenario::encode(&c, &[], &ops);
        if odd {
            bytes[0] |= 0x80;
        }
        packed.push((name.to_owned(), bytes));
    }
    // Packed ring, long direct chains (the target reads `FlipAvailIdx(v)` as "publish a chain
    // of `(v & 0x7f) + 1` descriptors, shape from `v`") popped into each chain storage `N` the
    // target selects: the default 16, or with a non-standard placement (bit 4) the first
    // "address" modulo 4 picks 1, 2, 17 or 128.
    let long = |n: u16, at: u16, mode: u16, indirect_last: bool| {
        Op::FlipAvailIdx((n - 1) | (at << 7) | (mode << 13) | (u16::from(indirect_last) << 15))
    };
    for (name, storage) in [
        ("p-long-n16", None),
        ("p-long-n1", Some(0u64)),
        ("p-long-n2", Some(1)),
        ("p-long-n17", Some(2)),
        ("p-long-n128", Some(3)),
    ] {
        let mut c = Config::standard(128, true);
        if let Some(sel) = storage {
            c.desc = sel;
        }
        let mut ops = Vec::new();
        for chain in [
            long(20, 0, 0, false),  // 20 readable buffers
            long(17, 10, 0, false), // 17 buffers, writable from the 11th
            long(18, 16, 2, false), // the 17th buffer is outside RAM
            long(18, 17, 2, false), // the 18th buffer is outside RAM
            long(19, 16, 3, false), // readable after writable at the 17th
            long(24, 30, 1, false), // 16 non-empty buffers among 24 descriptors
            long(26, 5, 1, false),  // 17 non-empty buffers among 26 descriptors
            long(18, 0, 0, true),   // INDIRECT on the 18th descriptor
            long(3, 1, 0, false),   // 3 buffers
            long(1, 0, 0, false),   // 1 buffer
        ] {
            ops.extend([chain, Op::Pop, Op::Walk(0), Op::CopyInto(0, false)]);
            ops.push(Op::PushUsed(0, 16));
        }
        ops.extend([
            long(128, 64, 0, false), // the whole ring
            Op::Pop,
            Op::Walk(0),
            Op::PushUsed(0, 0),
            long(40, 20, 0, false),
            long(2, 0, 0, false),
            Op::Drain(4, 2),
            Op::Walk(0),
            Op::Reset,
            long(33, 40, 0, false),
            Op::Pop,
            Op::PushBogus(0, 0),
        ]);
        packed.push((name.to_owned(), Scenario::encode(&c, &[], &ops)));
    }

    // Guest memory accessors: layouts with seams, holes, tiny, empty, overlapping and
    // overflowing regions, low and at the top of the address space, and steps at every edge.
    let mut memory = Vec::new();
    let r = |len: u16, gap: MemGap, host_off: u8| MemRegion { len, gap, host_off };
    for (name, placement, regions) in [
        (
            "seam-hole-low",
            MemPlacement::Low,
            vec![
                r(256, MemGap::Seam, 0),
                r(64, MemGap::Seam, 3),
                r(32, MemGap::Hole(15), 1),
                r(8, MemGap::Far(0x1000), 5),
            ],
        ),
        (
            "top-seam",
            MemPlacement::Top(0),
            vec![r(128, MemGap::Seam, 0), r(128, MemGap::Seam, 7)],
        ),
        (
            "top-tiny",
            MemPlacement::Top(2),
            vec![
                r(1, MemGap::Seam, 1),
                r(2, MemGap::Seam, 2),
                r(3, MemGap::Hole(0), 4),
                r(0, MemGap::Seam, 6),
            ],
        ),
        (
            "zero-overlap",
            MemPlacement::Zero,
            vec![
                r(96, MemGap::Seam, 2),
                r(40, MemGap::Far(u64::MAX - 10), 0),
                r(17, MemGap::Hole(1), 6),
            ],
        ),
        (
            "overflowing",
            MemPlacement::At(u64::MAX - 50),
            vec![r(40, MemGap::Seam, 0), r(100, MemGap::Seam, 1)],
        ),
        (
            "single",
            MemPlacement::Low,
            vec![r(200, MemGap::Hole(7), 3)],
        ),
    ] {
        let n = regions.len() as u8;
        let mut ops = Vec::new();
        for i in 0..n {
            let (t, s) = (MemTarget::Table, MemTarget::Solo(i));
            ops.extend([
                MemOp::Read(t, MemAddr::Start(i, -4), MemLen::Small(8)),
                MemOp::Write(t, MemAddr::End(i, -3), MemLen::Small(6), i),
                MemOp::Check(t, MemAddr::End(i, 0), MemLen::Small(0)),
                MemOp::Check(t, MemAddr::Start(i, -1), MemLen::ToEnd(i, 0)),
                MemOp::Load(t, MemAddr::End(i, -1)),
                MemOp::Store(t, MemAddr::End(i, -2), 0xBEEF),
                MemOp::Load(t, MemAddr::Start(i, 2)),
                MemOp::ReadObj(t, MemAddr::End(i, -8), 3),
                MemOp::WriteObj(t, MemAddr::Start(i, -2), 4, 7),
                MemOp::Write(t, MemAddr::Start(i, 1), MemLen::ToEnd(i, 0), 0x40 + i),
                MemOp::Read(s, MemAddr::End(i, -16), MemLen::Small(17)),
                MemOp::Check(s, MemAddr::End(i, 5), MemLen::Small(0)),
                MemOp::Store(s, MemAddr::Start(i, 4), 0x1234),
                MemOp::WriteObj(s, MemAddr::End(i, -12), 5, 3),
                MemOp::ReadObj(s, MemAddr::End(i, -12), 5),
            ]);
        }
        ops.extend([
            MemOp::Write(
                MemTarget::Table,
                MemAddr::Start(0, 0),
                MemLen::ToEnd(n - 1, 0),
                9,
            ),
            MemOp::Read(
                MemTarget::Table,
                MemAddr::Start(0, 0),
                MemLen::ToEnd(n - 1, 0),
            ),
            MemOp::Check(MemTarget::Table, MemAddr::Raw(u64::MAX), MemLen::Raw(1)),
            MemOp::Check(MemTarget::Table, MemAddr::Top(0), MemLen::Small(0)),
            MemOp::Read(MemTarget::Table, MemAddr::Top(3), MemLen::Small(8)),
            MemOp::Load(MemTarget::Table, MemAddr::Top(1)),
            MemOp::Check(
                MemTarget::Table,
                MemAddr::Raw(0x1000),
                MemLen::Raw(u64::MAX),
            ),
        ]);
        let inp = MemInput {
            placement,
            regions,
            ops,
        };
        let bytes = inp.encode();
        assert_eq!(
            MemInput::decode(&bytes),
            inp,
            "memory seed {name} round trip"
        );
        memory.push((name.to_owned(), bytes));
    }

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, seeds) in [
        ("split_queue", &s.split),
        ("model", &s.split),
        ("differential_rustvmm", &s.diff),
        ("chain_io", &s.io),
        ("mmio", &mmio),
        ("packed_queue", &packed),
        ("memory", &memory),
        ("restore", &[restore_seeds(), restore_mmio_seeds()].concat()),
    ] {
        let dir = root.join(target);
        fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds {
            fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
        }
        println!("{}: {} seeds", dir.display(), seeds.len());
    }
}
