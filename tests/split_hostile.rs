//! Hostile-guest classes H1–H7, H10–H13 and H18 of `shared/spec/hostile-inputs.md` against the
//! split ring, both sides of every limit. Memory map M0 (RAM0 `[0, 1 MiB)`, hole, RAM1
//! `[2 MiB, 3 MiB)`); rings at desc `0x1000`, avail `0x2000`, used `0x3000`; Q = 8 unless
//! stated.

use virtq::{
    ChainError, Descriptor, DescriptorChain, Features, GuestAddress, MemoryError, Queue, QueueError,
};
use virtq_testkit::desc_flags::{I, N, W};
use virtq_testkit::{AccessKind, SplitDriver, TestMemory};

const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;

fn m0(size: u16) -> (TestMemory, u16) {
    (TestMemory::m0(), size)
}

fn driver(mem: &TestMemory, size: u16) -> SplitDriver<'_> {
    SplitDriver::new(mem, size, DESC, AVAIL, USED)
}

fn walk(c: &DescriptorChain, mem: &TestMemory) -> Result<Vec<Descriptor>, ChainError> {
    c.iter(mem).collect()
}

/// Pop one chain and walk it.
fn pop_walk(q: &mut Queue, mem: &TestMemory) -> Result<Vec<Descriptor>, ChainError> {
    let c = q.pop_avail(mem).expect("ring-level ok").expect("a chain");
    walk(&c, mem)
}

/// A walk as `(addr, len, writable)` tuples.
type Walk = Result<Vec<(u64, u32, bool)>, ChainError>;

fn tuples(ds: &[Descriptor]) -> Vec<(u64, u32, bool)> {
    ds.iter()
        .map(|d| (d.addr().0, d.len(), d.is_write_only()))
        .collect()
}

// ---- H1: avail index overrun -------------------------------------------------------------

#[test]
fn h1_avail_idx_overrun_is_fatal_before_any_ring_read() {
    for (start, idx) in [(0u16, 9u16), (0, 0x8000), (0xFFF8, 0x0001)] {
        let (mem, q_size) = m0(8);
        let mut drv = driver(&mem, q_size);
        let mut q = drv.queue(8, Features::empty());
        q.next_avail_idx = start;
        drv.set_desc(0, 0x1_0000, 64, 0, 0);
        for i in 0..8 {
            drv.set_ring_entry(i, 0);
        }
        drv.set_avail_idx(idx);
        mem.start_recording();
        let err = q.pop_avail(&mem).unwrap_err();
        assert_eq!(
            err,
            QueueError::AvailIdxOverrun {
                avail_idx: idx,
                next_avail: start
            }
        );
        let log = mem.take_log();
        assert_eq!(log.len(), 1, "only avail.idx was read: {log:?}");
        assert_eq!((log[0].kind, log[0].addr), (AccessKind::Load16, AVAIL + 2));
        // Sticky and O(1): no guest access on later calls.
        mem.start_recording();
        assert_eq!(q.pop_avail(&mem).unwrap_err(), err);
        assert_eq!(q.push_used(&mem, 0, 0).unwrap_err(), err);
        assert!(q.is_broken() && err.is_fatal());
        assert!(mem.take_log().is_empty());
        assert_eq!(q.next_avail_idx, start, "nothing consumed");
        // Reset clears it.
        q.reset();
        assert_eq!(q.error(), None);
    }
}

#[test]
fn h1_boundary_exactly_size_available_is_accepted() {
    let (mem, _) = m0(8);
    let mut drv = driver(&mem, 8);
    let mut q = drv.queue(8, Features::empty());
    for i in 0..8u16 {
        drv.set_desc(i, 0x1_0000 + u64::from(i) * 0x100, 16, 0, 0);
        drv.set_ring_entry(i, i);
    }
    drv.set_avail_idx(8);
    let heads: Vec<u16> = std::iter::from_fn(|| q.pop_avail(&mem).unwrap())
        .map(|c| c.head_index())
        .collect();
    assert_eq!(heads, (0..8).collect::<Vec<_>>());
    // Same across the u16 wrap: next_avail 0xFFF8, avail.idx 0 (delta exactly 8).
    let mut drv = driver(&mem, 8);
    let mut q = drv.queue(8, Features::empty());
    q.next_avail_idx = 0xFFF8;
    for i in 0..8u16 {
        drv.set_desc(i, 0x1_0000, 16, 0, 0);
        drv.set_ring_entry(0xFFF8u16.wrapping_add(i), i);
    }
    drv.set_avail_idx(0);
    assert_eq!(std::iter::from_fn(|| q.pop_avail(&mem).unwrap()).count(), 8);
    assert_eq!(q.next_avail_idx, 0);
}

// ---- H2: head out of range ----------------------------------------------------------------

#[test]
fn h2_head_out_of_range_is_fatal_and_never_indexes_the_table() {
    for head in [8u16, 0xFFFF] {
        let (mem, _) = m0(8);
        let mut drv = driver(&mem, 8);
        let mut q = drv.queue(8, Features::empty());
        drv.publish(head);
        mem.start_recording();
        assert_eq!(q.pop_avail(&mem), Err(QueueError::HeadOutOfRange { head }));
        let log = mem.take_log();
        assert!(
            log.iter().all(|a| a.kind == AccessKind::Load16),
            "no descriptor read: {log:?}"
        );
        assert_eq!(q.next_avail_idx, 0);
    }
    // Boundary: head 7 of 8 is fine.
    let (mem, _) = m0(8);
    let mut drv = driver(&mem, 8);
    let mut q = drv.queue(8, Features::empty());
    drv.set_desc(7, 0x1_0000, 4, 0, 0);
    drv.publish(7);
    assert_eq!(
        tuples(&pop_walk(&mut q, &mem).unwrap()),
        [(0x1_0000, 4, false)]
    );
}

// ---- H3: next out of range ----------------------------------------------------------------

#[test]
fn h3_next_out_of_range_is_a_chain_error() {
    let (mem, _) = m0(8);
    let mut drv = driver(&mem, 8);
    let mut q = drv.queue(8, Features::INDIRECT_DESC);
    drv.set_desc(0, 0x1_0000, 16, N, 8);
    drv.publish(0);
    let c = q.pop_avail(&mem).unwrap().unwrap();
    let mut it = c.iter(&mem);
    assert_eq!(it.next(), Some(Err(ChainError::NextOutOfRange { next: 8 })));
    assert_eq!(it.next(), None, "fused after the error");
    // next = 7 is fine.
    drv.set_desc(1, 0x1_0000, 16, N, 7);
    drv.set_desc(7, 0x1_1000, 16, 0, 0);
    drv.publish(1);
    assert_eq!(pop_walk(&mut q, &mem).unwrap().len(), 2);
    // Indirect variant: a 4-entry table whose entry 0 says next = 4.
    drv.write_table(
        0x2_0000,
        &[
            (0x1_0000, 8, N, 4),
            (0, 0, 0, 0),
            (0, 0, 0, 0),
            (0, 0, 0, 0),
        ],
    );
    drv.set_desc(2, 0x2_0000, 64, I, 0);
    drv.publish(2);
    assert_eq!(
        pop_walk(&mut q, &mem),
        Err(ChainError::NextOutOfRange { next: 4 })
    );
}

// ---- H4: loops and over-long chains ------------------------------------------------------

#[test]
fn h4_loops_and_chain_length_bounds() {
    let (mem, _) = m0(8);
    let mut drv = driver(&mem, 8);
    let mut q = drv.queue(8, Features::INDIRECT_DESC);
    // a. self-loop
    drv.set_desc(0, 0x1_0000, 16, N, 0);
    drv.publish(0);
    mem.start_recording();
    assert_eq!(pop_walk(&mut q, &mem), Err(ChainError::TooLong));
    let reads = mem
        .take_log()
        .iter()
        .filter(|a| a.kind == AccessKind::Read)
        .count();
    assert_eq!(
        reads, 8,
        "the walk stops at the (Q+1)th hop, after Q fetches"
    );
    q.push_used(&mem, 0, 0).unwrap();
    // b. 2-cycle
    drv.set_desc(0, 0x1_0000, 16, N, 1);
    drv.set_desc(1, 0x1_0000, 16, N, 0);
    drv.publish(0);
    assert_eq!(pop_walk(&mut q, &mem), Err(ChainError::TooLong));
    q.push_used(&mem, 0, 0).unwrap();
    // c. the longest legal chain: 8 hops
    for i in 0..7u16 {
        drv.set_desc(i, 0x1_0000 + u64::from(i) * 0x100, 0x100, N, i + 1);
    }
    drv.set_desc(7, 0x1_0700, 0x100, 0, 0);
    drv.publish(0);
    let ds = pop_walk(&mut q, &mem).unwrap();
    assert_eq!(ds.len(), 8);
    assert_eq!(ds[7].addr(), GuestAddress(0x1_0700));
    q.push_used(&mem, 0, 0).unwrap();
    // d. 9 hops: desc[7] loops back to 0
    drv.set_desc(7, 0x1_0700, 0x100, N, 0);
    drv.publish(0);
    assert_eq!(pop_walk(&mut q, &mem), Err(ChainError::TooLong));
    q.push_used(&mem, 0, 0).unwrap();
    // e. a 4-entry indirect table forming a cycle: rejected on the 5th hop inside the table
    drv.write_table(
        0x2_0000,
        &[
            (0x1_0000, 8, N, 1),
            (0x1_0000, 8, N, 2),
            (0x1_0000, 8, N, 3),
            (0x1_0000, 8, N, 0),
        ],
    );
    drv.set_desc(0, 0x2_0000, 64, I, 0);
    drv.publish(0);
    mem.start_recording();
    assert_eq!(pop_walk(&mut q, &mem), Err(ChainError::TooLong));
    let table_reads = mem
        .take_log()
        .iter()
        .filter(|a| a.kind == AccessKind::Read && a.addr >= 0x2_0000)
        .count();
    assert_eq!(table_reads, 4);
}

// ---- H5: malformed indirect descriptors ---------------------------------------------------

/// Run one H5 case: `desc` entries (index, addr, len, flags, next), a table at `table_at`,
/// head 0, returning the walk result.
fn h5(
    features: Features,
    descs: &[(u16, u64, u32, u16, u16)],
    table_at: u64,
    table: &[(u64, u32, u16, u16)],
) -> Result<Vec<(u64, u32, bool)>, ChainError> {
    let mem = TestMemory::m0();
    let mut drv = driver(&mem, 8);
    let mut q = drv.queue(8, features);
    for &(i, a, l, f, n) in descs {
        drv.set_desc(i, a, l, f, n);
    }
    drv.write_table(table_at, table);
    drv.publish(0);
    pop_walk(&mut q, &mem).map(|d| tuples(&d))
}

#[test]
fn h5_indirect_rules() {
    let f = Features::INDIRECT_DESC;
    let two = [(0x1_0000, 16, N, 1), (0x1_1000, 32, W, 0)];
    let want = Ok(vec![(0x1_0000, 16, false), (0x1_1000, 32, true)]);
    // a/c/d: table length 0, not a multiple of 16, more entries than the queue size
    for len in [0u32, 24, 16 * 65536, 16 * 9] {
        assert_eq!(
            h5(f, &[(0, 0x2_0000, len, I, 0)], 0x2_0000, &two),
            Err(ChainError::IndirectTableLength { len }),
            "len {len}"
        );
    }
    // boundary: 8 entries (= Q) is accepted
    let eight: Vec<_> = (0..8u16)
        .map(|i| (0x1_0000, 4, if i < 7 { N } else { 0 }, i + 1))
        .collect();
    assert_eq!(
        h5(f, &[(0, 0x2_0000, 128, I, 0)], 0x2_0000, &eight)
            .unwrap()
            .len(),
        8
    );
    // e: table crossing from RAM0 into the hole
    assert!(matches!(
        h5(f, &[(0, 0xF_FFF0, 32, I, 0)], 0x2_0000, &two),
        Err(ChainError::Memory(MemoryError::OutOfRange { .. }))
    ));
    // f: nested indirect
    assert_eq!(
        h5(
            f,
            &[(0, 0x2_0000, 32, I, 0)],
            0x2_0000,
            &[(0x1_0000, 16, N, 1), (0x3_0000, 16, I, 0)]
        ),
        Err(ChainError::NestedIndirect)
    );
    // g: next beyond a 2-entry table
    assert_eq!(
        h5(
            f,
            &[(0, 0x2_0000, 32, I, 0)],
            0x2_0000,
            &[(0x1_0000, 16, N, 2), (0x1_1000, 32, W, 0)]
        ),
        Err(ChainError::NextOutOfRange { next: 2 })
    );
    // h: INDIRECT together with NEXT on the head
    assert_eq!(
        h5(
            f,
            &[(0, 0x2_0000, 32, I | N, 1), (1, 0x1_0000, 8, 0, 0)],
            0x2_0000,
            &two
        ),
        Err(ChainError::IndirectWithNext)
    );
    // i: WRITE on the table descriptor is ignored
    assert_eq!(h5(f, &[(0, 0x2_0000, 32, I | W, 0)], 0x2_0000, &two), want);
    // j: table only 8-byte aligned is legal
    assert_eq!(h5(f, &[(0, 0x2_0008, 32, I, 0)], 0x2_0008, &two), want);
    // k: direct descriptors followed by one final indirect descriptor (2.7.5.3.2)
    assert_eq!(
        h5(
            f,
            &[(0, 0x1_5000, 16, N, 1), (1, 0x2_0000, 32, I, 0)],
            0x2_0000,
            &[(0x1_0000, 16, N, 1), (0x1_1000, 32, W, 0)]
        ),
        Ok(vec![
            (0x1_5000, 16, false),
            (0x1_0000, 16, false),
            (0x1_1000, 32, true)
        ])
    );
    // l: indirect in the middle of a chain
    assert_eq!(
        h5(
            f,
            &[
                (0, 0x1_5000, 16, N, 1),
                (1, 0x2_0000, 32, I | N, 2),
                (2, 0x1_0000, 8, 0, 0)
            ],
            0x2_0000,
            &two
        ),
        Err(ChainError::IndirectWithNext)
    );
    // m: INDIRECT without the feature
    assert_eq!(
        h5(
            Features::empty(),
            &[(0, 0x2_0000, 32, I, 0)],
            0x2_0000,
            &two
        ),
        Err(ChainError::IndirectNotNegotiated)
    );
    // the limit counts direct and indirect buffers together: 1 direct + 8 entries > Q = 8
    assert_eq!(
        h5(
            f,
            &[(0, 0x1_5000, 16, N, 1), (1, 0x2_0000, 128, I, 0)],
            0x2_0000,
            &eight
        ),
        Err(ChainError::IndirectTableLength { len: 128 })
    );
}

// ---- H6: zero-length descriptors -----------------------------------------------------------

#[test]
fn h6_zero_length_descriptors_count_as_hops_but_yield_nothing() {
    let (mem, _) = m0(8);
    let mut drv = driver(&mem, 8);
    let mut q = drv.queue(8, Features::empty());
    drv.set_desc(0, 0x1_0000, 0, N, 1);
    drv.set_desc(1, 0x1_1000, 64, W, 0);
    drv.publish(0);
    assert_eq!(
        tuples(&pop_walk(&mut q, &mem).unwrap()),
        [(0x1_1000, 64, true)]
    );
    q.push_used(&mem, 0, 0).unwrap();
    // b. all zero-length: an empty (but valid) chain
    drv.set_desc(0, 0x1_0000, 0, N, 1);
    drv.set_desc(1, 0x1_1000, 0, W, 0);
    drv.publish(0);
    assert_eq!(pop_walk(&mut q, &mem).unwrap(), []);
    q.push_used(&mem, 0, 0).unwrap();
    // a zero-length loop still ends
    drv.set_desc(0, 0x1_0000, 0, N, 0);
    drv.publish(0);
    assert_eq!(pop_walk(&mut q, &mem), Err(ChainError::TooLong));
}

// ---- H7/H8: address arithmetic, holes, seams, non-RAM -------------------------------------

fn single(mem: &TestMemory, addr: u64, len: u32) -> Result<Vec<(u64, u32, bool)>, ChainError> {
    let mut drv = driver(mem, 8);
    let mut q = drv.queue(8, Features::INDIRECT_DESC);
    drv.set_desc(0, addr, len, 0, 0);
    drv.publish(0);
    pop_walk(&mut q, mem).map(|d| tuples(&d))
}

#[test]
fn h7_address_and_length_arithmetic() {
    let mem = TestMemory::m0();
    assert!(matches!(
        single(&mem, 0xFFFF_FFFF_FFFF_FFF0, 0x20),
        Err(ChainError::Memory(MemoryError::Overflow { .. }))
    ));
    assert!(matches!(
        single(&mem, 0xF_FF00, 0x200),
        Err(ChainError::Memory(MemoryError::OutOfRange { .. }))
    ));
    assert_eq!(
        single(&mem, 0xF_FF00, 0x100),
        Ok(vec![(0xF_FF00, 0x100, false)])
    );
    assert!(matches!(
        single(&mem, 0x1_0000, 0xFFFF_FFFF),
        Err(ChainError::Memory(_))
    ));
    assert!(matches!(
        single(&mem, 0x20_0000 - 0x10, 0x10),
        Err(ChainError::Memory(_))
    ));
    assert_eq!(
        single(&mem, 0x20_0000, 0x10),
        Ok(vec![(0x20_0000, 0x10, false)])
    );
    assert_eq!(single(&mem, 0x2F_FFFF, 1), Ok(vec![(0x2F_FFFF, 1, false)]));
    assert!(single(&mem, 0x2F_FFFF, 2).is_err());
    // H8: the device's own MMIO window, and an indirect table placed on it
    assert!(matches!(
        single(&mem, 0x10_0000, 4),
        Err(ChainError::Memory(_))
    ));
    let mut drv = driver(&mem, 8);
    let mut q = drv.queue(8, Features::INDIRECT_DESC);
    drv.set_desc(0, 0x10_0000, 32, I, 0);
    drv.publish(0);
    assert!(matches!(pop_walk(&mut q, &mem), Err(ChainError::Memory(_))));
}

#[test]
fn h7e_buffer_across_adjacent_regions_is_one_descriptor_split_by_the_accessor() {
    let mem = TestMemory::new(&[(0, 0x8_0000), (0x8_0000, 0x8_0000)]);
    let mut drv = driver(&mem, 8);
    let mut q = drv.queue(8, Features::empty());
    let data: Vec<u8> = (0..64).collect();
    mem.poke(0x7_FFE0, &data);
    drv.set_desc(0, 0x7_FFE0, 64, 0, 0);
    drv.publish(0);
    let ds = pop_walk(&mut q, &mem).unwrap();
    assert_eq!(tuples(&ds), [(0x7_FFE0, 64, false)]);
    let mut back = [0u8; 64];
    virtq::GuestMemory::read(&mem, ds[0].addr(), &mut back).unwrap();
    assert_eq!(&back[..], &data[..]);
}

#[test]
fn h7f_total_length_above_u32_max_is_rejected() {
    if cfg!(miri) {
        // 8193 descriptors over 256 KiB of atomic test memory take hours under Miri; the
        // length accounting is the same code the other tests exercise there.
        return;
    }
    let mem = TestMemory::new(&[(0, 0x10_0000), (0x20_0000, 0x10_0000)]);
    let size = 16384;
    let mut drv = SplitDriver::standard(&mem, size);
    let mut q = drv.queue(size, Features::INDIRECT_DESC);
    let table: Vec<_> = (0..8193u16)
        .map(|i| {
            (
                0x1_0000u64,
                0x8_0000u32,
                W | if i < 8192 { N } else { 0 },
                i + 1,
            )
        })
        .collect();
    drv.write_table(0x20_0000, &table);
    drv.set_desc(0, 0x20_0000, 16 * 8193, I, 0);
    drv.publish(0);
    let c = q.pop_avail(&mem).unwrap().unwrap();
    let results: Vec<_> = c.iter(&mem).collect();
    // 8191 buffers of 512 KiB fit below 2^32; the 8192nd reaches 2^32 and fails.
    assert_eq!(results.len(), 8192);
    assert!(results[..8191].iter().all(Result::is_ok));
    assert_eq!(results[8191], Err(ChainError::LengthOverflow));
}

// ---- H10: direction -------------------------------------------------------------------------

#[test]
fn h10_readable_after_writable_is_rejected() {
    let (mem, _) = m0(8);
    let mut drv = driver(&mem, 8);
    let mut q = drv.queue(8, Features::empty());
    drv.set_desc(0, 0x1_0000, 64, W | N, 1);
    drv.set_desc(1, 0x1_1000, 64, 0, 0);
    drv.publish(0);
    let c = q.pop_avail(&mem).unwrap().unwrap();
    let r: Vec<_> = c.iter(&mem).collect();
    assert_eq!(
        r,
        [Ok(r[0].unwrap()), Err(ChainError::ReadableAfterWritable)]
    );
    assert!(r[0].unwrap().is_write_only());
    q.push_used(&mem, 0, 0).unwrap();
    // b: a blk-like chain whose status descriptor lacks WRITE is handed out read-only.
    drv.set_desc(0, 0x1_0000, 16, N, 1);
    drv.set_desc(1, 0x1_1000, 512, N, 2);
    drv.set_desc(2, 0x1_2000, 1, 0, 0);
    drv.publish(0);
    let ds = pop_walk(&mut q, &mem).unwrap();
    assert!(ds.iter().all(|d| !d.is_write_only()));
}

// ---- H11: caller capacity -------------------------------------------------------------------

#[test]
fn h11_copy_into_capacity_both_sides_and_rollback() {
    let mem = TestMemory::new(&[(0, 0x10_0000)]);
    for (n, ok) in [(64u16, true), (65, false)] {
        let mut drv = SplitDriver::standard(&mem, 256);
        let mut q = drv.queue(256, Features::empty());
        let bufs: Vec<_> = (0..n)
            .map(|i| (0x8_0000 + u64::from(i), 1u32, false))
            .collect();
        drv.add_chain(&bufs).unwrap();
        let c = q.pop_avail(&mem).unwrap().unwrap();
        let mut out: heapless::Vec<Descriptor, 64> = heapless::Vec::new();
        let r = c.copy_into(&mem, &mut out);
        if ok {
            assert_eq!(r, Ok(()));
            assert_eq!(out.len(), 64);
        } else {
            assert_eq!(r, Err(ChainError::TooManySegments));
            assert!(out.is_empty(), "partial state rolled back");
        }
    }
    // c: an indirect table of 1024 one-byte entries (Q = 1024)
    let mut drv = SplitDriver::standard(&mem, 1024);
    let mut q = drv.queue(1024, Features::INDIRECT_DESC);
    let bufs: Vec<_> = (0..1024u64).map(|i| (0x8_0000 + i, 1u32, false)).collect();
    drv.add_indirect_chain(0xA_0000, &bufs).unwrap();
    let c = q.pop_avail(&mem).unwrap().unwrap();
    assert_eq!(c.iter(&mem).filter(Result::is_ok).count(), 1024);
    let mut out: heapless::Vec<Descriptor, 64> = heapless::Vec::new();
    assert_eq!(
        c.copy_into(&mem, &mut out),
        Err(ChainError::TooManySegments)
    );
    // A chain error inside copy_into also leaves `out` empty.
    let mut drv = driver(&mem, 8);
    let mut q = drv.queue(8, Features::empty());
    drv.set_desc(0, 0x1_0000, 8, N, 9);
    drv.publish(0);
    let c = q.pop_avail(&mem).unwrap().unwrap();
    out.push(tuples_dummy()).unwrap();
    assert_eq!(
        c.copy_into(&mem, &mut out),
        Err(ChainError::NextOutOfRange { next: 9 })
    );
    assert!(out.is_empty());
}

/// A valid descriptor to pre-fill an output vector with.
fn tuples_dummy() -> Descriptor {
    let mem = TestMemory::new(&[(0, 0x10_000)]);
    let mut drv = driver(&mem, 8);
    let mut q = drv.queue(8, Features::empty());
    drv.set_desc(0, 0x8000, 8, 0, 0);
    drv.publish(0);
    pop_walk(&mut q, &mem).unwrap()[0]
}

// ---- H12: double fetch ----------------------------------------------------------------------

/// Build a chain, make the guest change `flip_at` to `flip` right after the device first reads
/// it, and return the walk plus the read count per address.
fn toctou(flip_at: u64, flip: &[u8]) -> (Walk, Vec<(u64, usize)>) {
    let mem = TestMemory::m0();
    let mut drv = driver(&mem, 8);
    let mut q = drv.queue(8, Features::INDIRECT_DESC);
    drv.set_desc(0, 0x1_0000, 64, N, 1);
    drv.set_desc(1, 0x2_0000, 32, I, 0);
    drv.write_table(0x2_0000, &[(0x1_1000, 16, N, 1), (0x1_2000, 8, W, 0)]);
    drv.publish(0);
    if !flip.is_empty() {
        mem.flip_after_first_read(flip_at, flip);
    }
    mem.start_recording();
    let r = pop_walk(&mut q, &mem).map(|d| tuples(&d));
    let log = mem.take_log();
    let mut counts: Vec<(u64, usize)> = Vec::new();
    for a in log
        .iter()
        .filter(|a| matches!(a.kind, AccessKind::Read | AccessKind::Load16))
    {
        match counts.iter_mut().find(|(addr, _)| *addr == a.addr) {
            Some((_, c)) => *c += 1,
            None => counts.push((a.addr, 1)),
        }
    }
    (r, counts)
}

#[test]
fn h12_every_structure_is_fetched_once_and_changes_after_the_fetch_do_not_matter() {
    let (reference, counts) = toctou(0, &[]);
    assert_eq!(
        reference,
        Ok(vec![
            (0x1_0000, 64, false),
            (0x1_1000, 16, false),
            (0x1_2000, 8, true)
        ])
    );
    assert!(counts.iter().all(|&(_, c)| c == 1), "{counts:x?}");
    // avail.idx, ring[0], desc0, desc1, table[0], table[1]
    assert_eq!(counts.len(), 6);
    let flips: [(u64, Vec<u8>); 5] = [
        (DESC + 8, 0x1000_0000u32.to_le_bytes().to_vec()), // len 64 -> 0x1000_0000
        (DESC + 14, 0xFFFFu16.to_le_bytes().to_vec()),     // next 1 -> 0xFFFF
        (DESC + 12, (N | I).to_le_bytes().to_vec()),       // flags N -> N+I
        (DESC + 16 + 8, 0x10_0000u32.to_le_bytes().to_vec()), // table len 32 -> 1 MiB
        (AVAIL + 4, 0xFFFFu16.to_le_bytes().to_vec()),     // ring entry 0 -> 0xFFFF
    ];
    for (at, bytes) in flips {
        let (r, counts) = toctou(at, &bytes);
        assert_eq!(r, reference, "flip at {at:#x}");
        assert!(
            counts.iter().all(|&(_, c)| c == 1),
            "flip at {at:#x}: {counts:x?}"
        );
    }
}

// ---- H13: reused heads and in-flight overcommit ---------------------------------------------

#[test]
fn h13_in_flight_overcommit_and_duplicate_heads_are_fatal() {
    let (mem, _) = m0(8);
    let mut drv = driver(&mem, 8);
    let mut q = drv.queue(8, Features::empty());
    for i in 0..8u16 {
        drv.set_desc(i, 0x1_0000, 8, 0, 0);
        drv.publish(i);
    }
    assert_eq!(std::iter::from_fn(|| q.pop_avail(&mem).unwrap()).count(), 8);
    for i in 0..8u16 {
        drv.publish(i);
    }
    assert_eq!(q.pop_avail(&mem), Err(QueueError::TooManyInFlight));
    assert_eq!(q.next_avail_idx, 8);

    let (mem, _) = m0(8);
    let mut drv = driver(&mem, 8);
    let mut q = drv.queue(8, Features::empty());
    drv.set_desc(3, 0x1_0000, 8, 0, 0);
    drv.publish(3);
    drv.publish(3);
    assert_eq!(q.pop_avail(&mem).unwrap().unwrap().head_index(), 3);
    assert_eq!(
        q.pop_avail(&mem),
        Err(QueueError::DuplicateHead { head: 3 })
    );
    // Completing it first makes a re-publication legal.
    let (mem, _) = m0(8);
    let mut drv = driver(&mem, 8);
    let mut q = drv.queue(8, Features::empty());
    drv.set_desc(3, 0x1_0000, 8, 0, 0);
    drv.publish(3);
    q.pop_avail(&mem).unwrap().unwrap();
    q.push_used(&mem, 3, 0).unwrap();
    drv.publish(3);
    assert_eq!(q.pop_avail(&mem).unwrap().unwrap().head_index(), 3);
}

#[test]
fn push_used_rejects_bad_heads_without_writing() {
    let (mem, _) = m0(8);
    let mut drv = driver(&mem, 8);
    let mut q = drv.queue(8, Features::empty());
    drv.set_desc(2, 0x1_0000, 8, W, 0);
    drv.publish(2);
    q.pop_avail(&mem).unwrap().unwrap();
    mem.start_recording();
    assert_eq!(
        q.push_used(&mem, 8, 0),
        Err(QueueError::InvalidUsedHead { head: 8 })
    );
    assert_eq!(
        q.push_used(&mem, 1, 0),
        Err(QueueError::HeadNotInFlight { head: 1 })
    );
    assert!(mem.take_log().is_empty());
    assert!(!q.is_broken(), "device bugs are not fatal");
    q.push_used(&mem, 2, 8).unwrap();
    assert_eq!(
        q.push_used(&mem, 2, 8),
        Err(QueueError::HeadNotInFlight { head: 2 }),
        "completed twice"
    );
    assert_eq!(drv.pop_used(), Some((2, 8)));
}

// ---- H18 and the read count per chain --------------------------------------------------------

#[test]
fn h18_index_words_are_single_aligned_16_bit_accesses_and_publication_is_ordered() {
    let (mem, _) = m0(8);
    let mut drv = driver(&mem, 8);
    let mut q = drv.queue(8, Features::empty());
    let h0 = drv
        .add_chain(&[
            (0x1_0000, 16, false),
            (0x1_1000, 512, false),
            (0x1_2000, 1, true),
        ])
        .unwrap();
    let h1 = drv.add_chain(&[(0x1_3000, 16, false)]).unwrap();
    mem.start_recording();
    let c0 = q.pop_avail(&mem).unwrap().unwrap();
    assert_eq!(c0.iter(&mem).count(), 3);
    let c1 = q.pop_avail(&mem).unwrap().unwrap();
    assert_eq!(c1.iter(&mem).count(), 1);
    q.push_used(&mem, h0, 1).unwrap();
    q.push_used(&mem, h1, 0).unwrap();
    let log = mem.take_log();
    // Reads: avail.idx once for both chains, one ring entry each, each descriptor once.
    let loads: Vec<u64> = log
        .iter()
        .filter(|a| a.kind == AccessKind::Load16)
        .map(|a| a.addr)
        .collect();
    assert_eq!(loads, [AVAIL + 2, AVAIL + 4, AVAIL + 6]);
    assert_eq!(log.iter().filter(|a| a.kind == AccessKind::Read).count(), 4);
    assert!(
        log.iter()
            .filter(|a| a.kind == AccessKind::Read)
            .all(|a| a.len == 16)
    );
    // Every index access is a 2-byte access at an even address.
    for a in log
        .iter()
        .filter(|a| matches!(a.kind, AccessKind::Load16 | AccessKind::Store16))
    {
        assert_eq!((a.len, a.addr % 2), (2, 0));
    }
    // Each used element (8 bytes) is written before the used.idx store that publishes it.
    let writes: Vec<(AccessKind, u64, u64)> = log
        .iter()
        .filter(|a| matches!(a.kind, AccessKind::Write | AccessKind::Store16))
        .map(|a| (a.kind, a.addr, a.len))
        .collect();
    assert_eq!(
        writes,
        [
            (AccessKind::Write, USED + 4, 8),
            (AccessKind::Store16, USED + 2, 2),
            (AccessKind::Write, USED + 12, 8),
            (AccessKind::Store16, USED + 2, 2)
        ]
    );
    assert_eq!(drv.pop_used(), Some((u32::from(h0), 1)));
    assert_eq!(drv.pop_used(), Some((u32::from(h1), 0)));
}

#[test]
fn rings_outside_ram_are_refused_by_check_rings_and_fatal_at_runtime() {
    let mem = TestMemory::m0();
    let drv = driver(&mem, 16);
    // H9g: a 16-entry table (256 bytes) at 0xF_FF80 crosses into the hole.
    let mut q = drv.queue(16, Features::empty());
    q.desc_table_addr = GuestAddress(0xF_FF80);
    assert!(q.is_valid());
    assert!(matches!(q.check_rings(&mem), Err(QueueError::Memory(_))));
    // H9h: avail ring inside the hole
    let mut q = drv.queue(16, Features::empty());
    q.avail_ring_addr = GuestAddress(0x15_0000);
    assert!(q.check_rings(&mem).is_err());
    // Used directly anyway, the first ring read is a fatal memory error, not a panic.
    assert!(matches!(q.pop_avail(&mem), Err(QueueError::Memory(_))));
    assert!(q.is_broken());
    assert!(drv.queue(16, Features::empty()).check_rings(&mem).is_ok());
}
