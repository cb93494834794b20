//! The split ring agrees with the plain reference model in `virtq_testkit::model`: the same
//! chains accepted with the same buffers, the same error class (and the same valid prefix) on
//! rejection, and the same heads popped / ring errors raised.
//!
//! `every_size4_table_agrees` is exhaustive over every descriptor table of a size-4 queue built
//! from a small value set (flags × next × a per-slot address/length), every head, with and
//! without VIRTIO_F_INDIRECT_DESC; the proptests cover larger queues and arbitrary values.
//! Checklist: SPLIT-12, SPLIT-19, SPLIT-20, SPLIT-22 … SPLIT-29.

use proptest::prelude::*;
use virtq::{Descriptor, DescriptorChain, Features, GuestAddress, Queue};
use virtq_testkit::TestMemory;
use virtq_testkit::model::{
    ChainClass, ChainVerdict, ModelBuffer, ModelRing, RingClass, copy_verdict, walk_chain,
};
use virtq_testkit::split::write_desc;

const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const TABLE: u64 = 0x4000;
const DATA: u64 = 0x8000;
/// In the hole between the two RAM regions.
const HOLE: u64 = 0x18000;

const N: u16 = 1;
const W: u16 = 2;
const I: u16 = 4;

/// RAM `[0, 0x10000)` and `[0x20000, 0x21000)`, a hole between.
fn memory() -> TestMemory {
    TestMemory::new(&[(0, 0x1_0000), (0x2_0000, 0x1000)])
}

fn queue(size: u16, indirect: bool) -> Queue {
    let mut q = Queue::new(size);
    q.set_size(size);
    q.desc_table_addr = GuestAddress(DESC);
    q.avail_ring_addr = GuestAddress(AVAIL);
    q.used_ring_addr = GuestAddress(USED);
    if indirect {
        q.features = Features::INDIRECT_DESC;
    }
    q.ready = true;
    q
}

/// The queue's walk of `chain` as (buffers, error class).
fn library_walk(chain: &DescriptorChain, mem: &TestMemory) -> ChainVerdict {
    let mut buffers = Vec::new();
    for d in chain.iter(mem) {
        match d {
            Ok(d) => buffers.push(ModelBuffer::from(d)),
            Err(e) => {
                return ChainVerdict {
                    buffers,
                    error: Some(ChainClass::of(&e)),
                };
            }
        }
    }
    ChainVerdict {
        buffers,
        error: None,
    }
}

/// Pop `head` through a fresh queue and compare walk and `copy_into` with the model.
fn check_head(mem: &TestMemory, size: u16, head: u16, indirect: bool) -> ChainVerdict {
    // A fresh queue takes ring slot 0 once `avail.idx` is 1.
    mem.poke_u16(AVAIL + 4, head);
    mem.poke_u16(AVAIL + 2, 1);
    let mut q = queue(size, indirect);
    let chain = q.pop_avail(mem).unwrap().unwrap();
    assert_eq!(chain.head_index(), head);
    let want = walk_chain(mem, DESC, size, head, indirect);
    let got = library_walk(&chain, mem);
    assert_eq!(got, want, "size {size} head {head} indirect {indirect}");

    let mut out = heapless::Vec::<Descriptor, 4>::new();
    let copied = chain
        .copy_into(mem, &mut out)
        .map(|()| {
            out.iter()
                .map(|d| ModelBuffer::from(*d))
                .collect::<Vec<_>>()
        })
        .map_err(|e| ChainClass::of(&e));
    assert_eq!(copied, copy_verdict(&want, 4), "copy_into, head {head}");
    want
}

/// Descriptor "kinds" of the exhaustive domain: flags, and `next` only where NEXT is set.
fn kinds() -> Vec<(u16, u16)> {
    let mut k = vec![(0, 0), (W, 0), (I, 0)];
    for flags in [N, W | N, I | N] {
        for next in [0, 1, 2, 3, 5] {
            k.push((flags, next));
        }
    }
    k
}

/// Address and length of slot `i`: 0 a normal buffer / a valid 2-entry table, 1 empty / a
/// zero-length table, 2 in the hole, 3 `u32::MAX` bytes (overflows with anything else, and is
/// not a table length).
fn slot_buffer(i: u16, flags: u16) -> (u64, u32) {
    match (i, flags & I != 0) {
        (0, false) => (DATA, 8),
        (0, true) => (TABLE, 32),
        (1, _) => (DATA + 0x100, 0),
        (2, _) => (HOLE, 16),
        _ => (DATA + 0x200, u32::MAX),
    }
}

/// Indirect-table contents, picked per table so every variant meets every shape.
fn table_variant(v: usize) -> [(u64, u32, u16, u16); 2] {
    let e0 = [
        (DATA, 8, N, 1),
        (DATA, 8, W | N, 1),
        (DATA, 8, W, 0),
        (DATA, 0, N, 1),
        (TABLE, 16, I, 0),
    ][v % 5];
    let e1 = [
        (DATA + 8, 8, W, 0),
        (DATA + 8, 8, 0, 0),
        (DATA + 8, 8, W | N, 0),
        (DATA + 8, 8, N, 5),
        (HOLE, 8, W, 0),
    ][(v / 5) % 5];
    [e0, e1]
}

#[test]
fn every_size4_table_agrees() {
    let mem = memory();
    let k = kinds();
    let n = k.len();
    let total = n.pow(4);
    // Under Miri, a deterministic sample of the domain.
    let step = if cfg!(miri) { 26_249 } else { 1 };
    let mut seen = std::collections::HashMap::<Option<ChainClass>, usize>::new();
    for code in (0..total).step_by(step) {
        let mut c = code;
        for i in 0..4u16 {
            let (flags, next) = k[c % n];
            c /= n;
            let (addr, len) = slot_buffer(i, flags);
            write_desc(&mem, DESC + 16 * u64::from(i), addr, len, flags, next);
        }
        let t = table_variant(code);
        for (j, &(a, l, f, nx)) in t.iter().enumerate() {
            write_desc(&mem, TABLE + 16 * j as u64, a, l, f, nx);
        }
        for head in 0..4 {
            for indirect in [false, true] {
                let v = check_head(&mem, 4, head, indirect);
                *seen.entry(v.error).or_default() += 1;
            }
        }
    }
    // The domain reaches every rule (so agreement is not vacuous).
    if !cfg!(miri) {
        for class in [
            None,
            Some(ChainClass::NextOutOfRange),
            Some(ChainClass::TooLong),
            Some(ChainClass::IndirectNotNegotiated),
            Some(ChainClass::NestedIndirect),
            Some(ChainClass::IndirectWithNext),
            Some(ChainClass::IndirectTableLength),
            Some(ChainClass::ReadableAfterWritable),
            Some(ChainClass::LengthOverflow),
            Some(ChainClass::Memory),
        ] {
            assert!(seen.contains_key(&class), "domain never reached {class:?}");
        }
    }
}

fn arb_desc(size: u16) -> impl Strategy<Value = (u64, u32, u16, u16)> {
    let addr = prop_oneof![
        4 => 0u64..0x1_0000,
        1 => 0x1_0000u64..0x2_1100,
        1 => any::<u64>(),
        1 => Just(TABLE),
    ];
    let len = prop_oneof![4 => 0u32..0x200, 1 => Just(0u32), 1 => any::<u32>(), 1 => (1u32..8).prop_map(|k| k * 16)];
    let flags = prop_oneof![8 => 0u16..8, 1 => any::<u16>()];
    let next = prop_oneof![4 => 0..size, 1 => any::<u16>()];
    (addr, len, flags, next)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 512 },
        // Miri's isolation forbids the file system (failure persistence needs the cwd).
        failure_persistence: if cfg!(miri) { None } else { ProptestConfig::default().failure_persistence },
        ..ProptestConfig::default()
    })]

    /// Random tables of random power-of-two sizes, a random indirect table at `TABLE`.
    #[test]
    fn random_chains_agree(
        shift in 0u32..6,
        table in proptest::collection::vec(arb_desc(32), 32),
        indirect_table in proptest::collection::vec(arb_desc(8), 8),
        head in any::<u16>(),
        indirect in any::<bool>(),
    ) {
        let size = 1u16 << shift;
        let mem = memory();
        for (i, &(a, l, f, n)) in table.iter().take(usize::from(size)).enumerate() {
            write_desc(&mem, DESC + 16 * i as u64, a, l, f, n % (2 * size));
        }
        for (i, &(a, l, f, n)) in indirect_table.iter().enumerate() {
            write_desc(&mem, TABLE + 16 * i as u64, a, l, f, n % 16);
        }
        check_head(&mem, size, head % size, indirect);
    }

    /// Random available-ring traffic: pops and completions agree with the ring model,
    /// including overrun, out-of-range and duplicate heads.
    #[test]
    fn random_ring_traffic_agrees(
        shift in 0u32..4,
        steps in proptest::collection::vec((0u8..4, any::<u16>()), 1..40),
    ) {
        let size = 1u16 << shift;
        let mem = memory();
        for i in 0..size {
            write_desc(&mem, DESC + 16 * u64::from(i), DATA, 8, W, 0);
        }
        let mut q = queue(size, false);
        let mut ring = ModelRing::new(size, AVAIL);
        let mut avail_idx = 0u16;
        for (op, v) in steps {
            match op {
                0 => {
                    // The driver publishes `v % (size + 2)` (sometimes out of range).
                    let slot = u64::from(avail_idx % size);
                    mem.poke_u16(AVAIL + 4 + 2 * slot, v % (size + 2));
                    avail_idx = avail_idx.wrapping_add(1);
                    mem.poke_u16(AVAIL + 2, avail_idx);
                }
                1 => {
                    // A hostile `avail.idx` jump.
                    avail_idx = avail_idx.wrapping_add(v % (2 * size + 2));
                    mem.poke_u16(AVAIL + 2, avail_idx);
                }
                2 => {
                    let want = ring.pop(&mem);
                    let got = q.pop_avail(&mem);
                    let got = got.map(|c| c.map(|c| c.head_index())).map_err(|e| RingClass::of(&e));
                    prop_assert_eq!(want, got);
                }
                _ => {
                    let head = ring.in_flight.iter().nth(usize::from(v) % (ring.in_flight.len() + 1)).copied().unwrap_or(v % (size + 1));
                    let want = ring.complete(head);
                    let got = q.push_used(&mem, head, 0).map_err(|e| RingClass::of(&e));
                    prop_assert_eq!(want, got);
                }
            }
            prop_assert_eq!(usize::from(q.in_flight()), ring.in_flight.len());
            prop_assert_eq!(q.is_broken(), ring.broken.is_some());
            prop_assert_eq!(q.next_avail_idx, ring.next_avail);
        }
    }
}
