//! Hostile-guest classes against the packed ring (`shared/spec/hostile-inputs.md`): H15 a–g,
//! H5 (b, n and the rest of the indirect rules as they apply to packed), H7/H10 through the
//! shared chain validation, H12 (single fetch, TOCTOU), H13 (in-flight overcommit), H18
//! (16-bit flags accesses), both sides of every limit. Memory map M0; ring at `0x1000`, driver
//! event structure at `0x2000`, device event structure at `0x2100`; Q = 8 unless stated.

use virtq::packed::PackedChain;
use virtq::{ChainError, Descriptor, Features, MemoryError, PackedQueue, QueueError};
use virtq_testkit::pflags::{A, I, N, U, W};
use virtq_testkit::{Access, AccessKind, PackedDriver, TestMemory};

const B: u64 = 0x1_0000;

fn setup(mem: &TestMemory, size: u16, features: Features) -> (PackedDriver<'_>, PackedQueue) {
    let drv = PackedDriver::standard(mem, size);
    let q = drv.queue(size, features);
    (drv, q)
}

type Walk = Result<Vec<(u64, u32, bool)>, ChainError>;

fn walk(c: &PackedChain, mem: &TestMemory) -> Walk {
    c.iter(mem)
        .map(|d| d.map(|d: Descriptor| (d.addr().0, d.len(), d.is_write_only())))
        .collect()
}

fn pop_walk(q: &mut PackedQueue, mem: &TestMemory) -> (PackedChain, Walk) {
    let c = q.pop_avail(mem).expect("ring-level ok").expect("a chain");
    let w = walk(&c, mem);
    (c, w)
}

/// A fatal error is sticky and O(1): the same error again, without touching guest memory.
fn assert_sticky(q: &mut PackedQueue, mem: &TestMemory, e: QueueError) {
    assert!(q.is_broken());
    mem.start_recording();
    assert_eq!(q.pop_avail(mem), Err(e));
    assert_eq!(q.has_pending(mem), Err(e));
    assert!(mem.take_log().is_empty(), "broken queue touched memory");
}

// ---- H15: packed-ring structure ------------------------------------------------------------

/// H15a: a chain across the end of the ring, its last descriptor in second-lap encoding.
#[test]
fn h15a_chain_across_the_end_flips_the_wrap_counter() {
    let mem = TestMemory::m0();
    let (drv, mut q) = setup(&mem, 8, Features::empty());
    q.next_avail_idx = 6;
    q.next_used_idx = 6;
    drv.set_desc(7, B + 0x100, 16, 9, N | A);
    drv.set_desc(0, B + 0x200, 16, 42, W | U);
    drv.set_desc(6, B, 16, 9, N | A);
    let (c, w) = pop_walk(&mut q, &mem);
    assert_eq!(c.head_index(), 42, "Buffer ID from the last descriptor");
    assert_eq!(
        w.unwrap(),
        vec![
            (B, 16, false),
            (B + 0x100, 16, false),
            (B + 0x200, 16, true)
        ]
    );
    assert_eq!((q.next_avail_idx, q.avail_wrap_counter), (1, false));
    q.push_used(&mem, &c, 16).unwrap();
    // The used descriptor went to slot 6 with the first-lap encoding; the cursor wrapped.
    assert_eq!(drv.flags(6), A | U | W);
    assert_eq!((q.next_used_idx, q.used_wrap_counter), (1, false));
}

/// H15b: the chain continues into a descriptor that is still first-lap encoded: fatal, nothing
/// consumed, never a truncated chain.
#[test]
fn h15b_chain_not_fully_available_is_fatal() {
    let mem = TestMemory::m0();
    let (drv, mut q) = setup(&mem, 8, Features::empty());
    q.next_avail_idx = 6;
    q.next_used_idx = 6;
    drv.set_desc(7, B, 16, 9, N | A);
    drv.set_desc(0, B, 16, 42, A); // first-lap encoding: not available in lap 2
    drv.set_desc(6, B, 16, 9, N | A);
    let e = QueueError::Chain(ChainError::Incomplete { slot: 0 });
    assert_eq!(q.pop_avail(&mem), Err(e));
    assert!(e.is_fatal());
    assert_eq!((q.next_avail_idx, q.avail_wrap_counter), (6, true));
    assert_eq!(q.in_flight(), 0);
    assert_sticky(&mut q, &mem, e);
    // Within one lap too: head available, second descriptor never made available.
    let mem = TestMemory::m0();
    let (drv, mut q) = setup(&mem, 8, Features::empty());
    drv.set_desc(1, B, 16, 1, 0);
    drv.set_desc(0, B, 16, 1, N | A);
    assert_eq!(
        q.pop_avail(&mem),
        Err(QueueError::Chain(ChainError::Incomplete { slot: 1 }))
    );
}

/// H15c: all Q descriptors N+A: rejected at hop Q+1 without reading slot 0 a second time.
/// Boundary: Q descriptors with the last one ending the chain is accepted.
#[test]
fn h15c_all_next_rejected_at_hop_q_plus_1_and_q_hops_accepted() {
    for size in [1u16, 3, 8] {
        let mem = TestMemory::m0();
        let (drv, mut q) = setup(&mem, size, Features::empty());
        for i in (0..size).rev() {
            drv.set_desc(i, B, 16, 0, N | A);
        }
        mem.start_recording();
        let e = QueueError::Chain(ChainError::TooLong);
        assert_eq!(q.pop_avail(&mem), Err(e), "size {size}");
        let log = mem.take_log();
        for i in 0..size {
            let flags_reads = log
                .iter()
                .filter(|a| a.overlaps(drv.slot_addr(i) + 14, 2))
                .count();
            assert_eq!(flags_reads, 1, "slot {i} flags read once");
        }
        assert_eq!(q.next_avail_idx, 0);
        assert_sticky(&mut q, &mem, e);

        // Accepted side: the last descriptor ends the chain.
        let mem = TestMemory::m0();
        let (drv, mut q) = setup(&mem, size, Features::empty());
        for i in (0..size).rev() {
            let f = if i + 1 == size { A } else { N | A };
            drv.set_desc(i, B + u64::from(i) * 0x10, 16, 7, f);
        }
        let (c, w) = pop_walk(&mut q, &mem);
        assert_eq!(w.unwrap().len(), usize::from(size));
        assert_eq!(c.head_index(), 7);
        assert_eq!((q.next_avail_idx, q.avail_wrap_counter), (0, false));
    }
}

/// H15d: a head with A+U (a used descriptor, or garbage) is not available: the queue is empty.
#[test]
fn h15d_head_with_a_and_u_is_empty() {
    let mem = TestMemory::m0();
    let (drv, mut q) = setup(&mem, 8, Features::empty());
    for flags in [A | U, A | U | N, 0, U, U | N | W | I] {
        drv.set_desc(0, B, 16, 0, flags);
        assert_eq!(q.pop_avail(&mem), Ok(None), "flags {flags:#x}");
        assert_eq!(q.has_pending(&mem), Ok(false));
    }
    // Second lap: A alone is the stale first-lap encoding, U alone is available.
    q.avail_wrap_counter = false;
    drv.set_desc(0, B, 16, 0, A);
    assert_eq!(q.pop_avail(&mem), Ok(None));
    drv.set_desc(0, B, 16, 0, A | U);
    assert_eq!(q.pop_avail(&mem), Ok(None));
    drv.set_desc(0, B, 16, 0, U);
    assert!(q.pop_avail(&mem).unwrap().is_some());
    assert!(!q.is_broken());
}

/// H15e: Buffer IDs >= Q and duplicates are echoed unchanged; only the last descriptor's ID
/// counts; nothing is indexed by them.
#[test]
fn h15e_ids_out_of_range_or_duplicate_are_echoed() {
    let mem = TestMemory::m0();
    let (mut drv, mut q) = setup(&mem, 8, Features::empty());
    drv.publish_raw(0xFFFF, &[(B, 8, W)]);
    drv.publish_raw(7, &[(B, 8, N), (B + 0x10, 8, W)]);
    drv.publish_raw(7, &[(B, 8, W)]);
    // Different IDs in the non-last descriptors do not matter.
    drv.set_body(1, B, 8, 1234);
    drv.publish_raw(8, &[(B, 8, W)]);
    let chains: Vec<_> = std::iter::from_fn(|| q.pop_avail(&mem).unwrap()).collect();
    let ids: Vec<u16> = chains.iter().map(|c| c.head_index()).collect();
    assert_eq!(ids, vec![0xFFFF, 7, 7, 8]);
    // Complete in reverse order; each used descriptor carries the ID as given.
    for c in chains.iter().rev() {
        q.push_used(&mem, c, 8).unwrap();
    }
    let skips = [1u16, 1, 2, 1];
    let mut seen = vec![];
    for s in skips {
        seen.push(drv.pop_used_skip(s).unwrap().id);
    }
    assert_eq!(seen, vec![8, 7, 7, 0xFFFF]);
    assert_eq!(q.in_flight_descriptors(), 0);
}

/// H15f, H5b: a packed INDIRECT head with len 0 (QEMU #3984 asserts here): the chain is
/// consumed and reports `IndirectTableLength`; completing it with 0 keeps the queue running.
#[test]
fn h15f_h5b_indirect_len_zero_is_rejected() {
    let mem = TestMemory::m0();
    let (drv, mut q) = setup(&mem, 8, Features::INDIRECT_DESC);
    drv.set_desc(0, 0x2_0000, 0, 3, I | A);
    let (c, w) = pop_walk(&mut q, &mem);
    assert_eq!(w, Err(ChainError::IndirectTableLength { len: 0 }));
    assert_eq!(c.head_index(), 3);
    q.push_used(&mem, &c, 0).unwrap();
    assert!(!q.is_broken());
    assert_eq!(drv.flags(0), A | U, "completed with WRITE clear (len 0)");
}

/// H15g: Q = 6 (not a power of two) works, see also `packed_roundtrip`.
#[test]
fn h15g_size_six_accepted() {
    let mem = TestMemory::m0();
    let (mut drv, mut q) = setup(&mem, 6, Features::empty());
    assert!(q.is_valid());
    for k in 0..20u64 {
        let id = drv
            .add_chain(&[(B, 4, false), (B + 0x10 + k, 4, true)])
            .unwrap();
        let (c, w) = pop_walk(&mut q, &mem);
        assert_eq!(c.head_index(), id);
        assert_eq!(w.unwrap()[1], (B + 0x10 + k, 4, true));
        q.push_used(&mem, &c, 4).unwrap();
        assert_eq!(drv.pop_used().unwrap().id, id);
    }
}

// ---- H5: indirect descriptors on the packed ring --------------------------------------------

/// H5n: a stale NEXT bit on the last table entry changes nothing: the chain ends at the table
/// end. Other flags inside the table (NEXT, INDIRECT) are ignored; only WRITE counts (PACKED-32,
/// PACKED-35). IDs in the table are ignored.
#[test]
fn h5n_table_is_sequential_and_only_write_counts() {
    let mem = TestMemory::m0();
    let (drv, mut q) = setup(&mem, 8, Features::INDIRECT_DESC);
    drv.write_table(
        0x2_0000,
        &[
            (B, 16, N),
            (B + 0x100, 32, N | W | I),
            (B + 0x200, 8, W | N),
        ],
    );
    // Garbage past the table end must not be read.
    drv.write_table(0x2_0030, &[(0xDEAD_0000, 1, 0)]);
    drv.set_desc(0, 0x2_0000, 48, 5, I | A);
    let c = q.pop_avail(&mem).unwrap().unwrap();
    mem.start_recording();
    let w = walk(&c, &mem);
    let log = mem.take_log();
    assert_eq!(
        w.unwrap(),
        vec![(B, 16, false), (B + 0x100, 32, true), (B + 0x200, 8, true)]
    );
    assert_eq!(log.len(), 3, "each table entry read once: {log:?}");
    assert!(
        log.iter()
            .all(|a| a.kind == AccessKind::Read && a.len == 16)
    );
    assert!(!log.iter().any(|a| a.overlaps(0x2_0030, 16)));
}

/// The other indirect rules on the packed ring: length multiple of 16, at most Q entries (both
/// sides), table in RAM, feature negotiated, not in a NEXT list, WRITE on the pointer ignored.
#[test]
fn h5_indirect_rules_on_packed() {
    let case = |features: Features, ring: &[(u64, u32, u16)]| -> Walk {
        let mem = TestMemory::m0();
        let (mut drv, mut q) = setup(&mem, 8, features);
        let entries: Vec<_> = (0..9).map(|i| (B + i * 0x10, 16, 0)).collect();
        drv.write_table(0x2_0000, &entries);
        drv.write_table(0xF_FFF0, &[(B, 16, 0)]);
        drv.publish_raw(1, ring);
        let (c, w) = pop_walk(&mut q, &mem);
        // Every malformed chain is still consumed as a whole and can be completed.
        q.push_used(&mem, &c, 0).unwrap();
        assert_eq!(q.in_flight_descriptors(), 0);
        w
    };
    let f = Features::INDIRECT_DESC;
    // H5c: not a multiple of 16.
    assert_eq!(
        case(f, &[(0x2_0000, 24, I)]),
        Err(ChainError::IndirectTableLength { len: 24 })
    );
    // H5d both sides: Q entries accepted, Q + 1 refused.
    assert_eq!(case(f, &[(0x2_0000, 16 * 8, I)]).unwrap().len(), 8);
    assert_eq!(
        case(f, &[(0x2_0000, 16 * 9, I)]),
        Err(ChainError::IndirectTableLength { len: 144 })
    );
    // H5e: table crossing into the hole.
    assert!(matches!(
        case(f, &[(0xF_FFF0, 32, I)]),
        Err(ChainError::Memory(MemoryError::OutOfRange { .. }))
    ));
    // Boundary: the same table ending at the last RAM byte is fine.
    assert_eq!(case(f, &[(0xF_FFF0, 16, I)]).unwrap(), vec![(B, 16, false)]);
    // H5m: feature not negotiated.
    assert_eq!(
        case(Features::empty(), &[(0x2_0000, 32, I)]),
        Err(ChainError::IndirectNotNegotiated)
    );
    // H5h: I+N; H5k/l: an indirect descriptor after a direct one (packed: never in a list).
    assert_eq!(
        case(f, &[(0x2_0000, 32, I | N), (B, 16, 0)]),
        Err(ChainError::IndirectInList)
    );
    assert_eq!(
        case(f, &[(B, 16, N), (0x2_0000, 32, I)]),
        Err(ChainError::IndirectInList)
    );
    // H5i: I+W: WRITE on the pointer is ignored.
    assert_eq!(
        case(f, &[(0x2_0000, 32, I | W)]).unwrap(),
        vec![(B, 16, false), (B + 0x10, 16, false)]
    );
    // H5j: an 8-aligned table is fine.
    let mem = TestMemory::m0();
    let (mut drv, mut q) = setup(&mem, 8, f);
    drv.write_table(0x2_0008, &[(B, 16, W)]);
    drv.publish_raw(1, &[(0x2_0008, 16, I)]);
    assert_eq!(pop_walk(&mut q, &mem).1.unwrap(), vec![(B, 16, true)]);
}

// ---- H7 / H10 / H6 through the shared chain validation --------------------------------------

#[test]
fn direct_chain_content_errors_are_consumed_and_reported() {
    let case = |ring: &[(u64, u32, u16)]| -> Walk {
        let mem = TestMemory::m0();
        let (mut drv, mut q) = setup(&mem, 8, Features::empty());
        drv.publish_raw(1, ring);
        let (c, w) = pop_walk(&mut q, &mem);
        assert_eq!(q.in_flight_descriptors(), ring.len() as u16);
        q.push_used(&mem, &c, 0).unwrap();
        w
    };
    // H10a: readable after writable.
    assert_eq!(
        case(&[(B, 64, W | N), (B + 0x1000, 64, 0)]),
        Err(ChainError::ReadableAfterWritable)
    );
    // H7a/b/d: overflow, into the hole, huge.
    assert!(matches!(
        case(&[(u64::MAX - 15, 0x20, 0)]),
        Err(ChainError::Memory(MemoryError::Overflow { .. }))
    ));
    assert!(matches!(
        case(&[(0xF_FF00, 0x200, 0)]),
        Err(ChainError::Memory(MemoryError::OutOfRange { .. }))
    ));
    // H7c: ends exactly at the last RAM byte: accepted.
    assert_eq!(
        case(&[(0xF_FF00, 0x100, 0)]).unwrap(),
        vec![(0xF_FF00, 0x100, false)]
    );
    // H6a/c: zero-length descriptors count as hops but are not yielded.
    assert_eq!(
        case(&[(B, 0, N), (B + 0x1000, 64, W)]).unwrap(),
        vec![(B + 0x1000, 64, true)]
    );
    // The buffers before the violation are yielded, then the error (like the split walk).
    let mem = TestMemory::m0();
    let (mut drv, mut q) = setup(&mem, 8, Features::empty());
    drv.publish_raw(1, &[(B, 8, N), (0x15_0000, 8, N), (B, 8, 0)]);
    let c = q.pop_avail(&mem).unwrap().unwrap();
    let items: Vec<_> = c.iter(&mem).collect();
    assert_eq!(items.len(), 2);
    assert!(items[0].is_ok());
    assert!(matches!(items[1], Err(ChainError::Memory(_))));
}

/// H7f through an indirect table: aliasing entries whose total passes u32::MAX
/// (`LengthOverflow`); exactly u32::MAX is accepted (both sides).
#[test]
fn h7f_total_length_overflow_via_indirect_table() {
    // `count` entries of `each` bytes sum to 2^32. Natively 8192 entries of 512 KiB in a ring
    // of 16384; under Miri, where every entry read and every byte of the ring zeroed is slow,
    // 256 entries of 16 MiB in a ring of 256 over a larger RAM (not larger still: dropping a
    // RAM of many pages is slow under tree borrows): the same boundary.
    let (count, each, size): (u32, u32, u16) = if cfg!(miri) {
        (256, 0x100_0000, 256)
    } else {
        (8192, 0x8_0000, 16384)
    };
    let run = |last_len: u32| -> Result<u32, ChainError> {
        let mem = if cfg!(miri) {
            TestMemory::new(&[(0, 0x110_0000)])
        } else {
            TestMemory::m0()
        };
        let (mut drv, mut q) = setup(&mem, size, Features::INDIRECT_DESC);
        let mut entries: Vec<_> = (1..count).map(|_| (B, each, W)).collect();
        entries.push((B, last_len, W));
        drv.write_table(0x5_0000, &entries);
        drv.publish_raw(1, &[(0x5_0000, 16 * count, I)]);
        let c = q.pop_avail(&mem).unwrap().unwrap();
        c.iter(&mem).try_fold(0, |n, d| d.map(|_| n + 1))
    };
    assert_eq!(run(each - 1), Ok(count), "exactly u32::MAX bytes");
    assert_eq!(run(each), Err(ChainError::LengthOverflow));
}

// ---- H13: in-flight overcommit ---------------------------------------------------------------

/// More descriptors in flight than Q is fatal (the used cursor would overtake the read
/// cursor); exactly Q is fine.
#[test]
fn h13_more_than_q_descriptors_in_flight_is_fatal() {
    let mem = TestMemory::m0();
    let (mut drv, mut q) = setup(&mem, 4, Features::empty());
    drv.publish_raw(0, &[(B, 8, N), (B, 8, 0)]);
    drv.publish_raw(1, &[(B, 8, 0)]);
    drv.publish_raw(2, &[(B, 8, 0)]);
    for _ in 0..3 {
        q.pop_avail(&mem).unwrap().unwrap();
    }
    assert_eq!(q.in_flight_descriptors(), 4, "exactly Q in flight");
    // The hostile driver publishes more without waiting for any completion.
    drv.publish_raw(3, &[(B, 8, 0)]);
    assert_eq!(q.pop_avail(&mem), Err(QueueError::TooManyInFlight));
    assert_eq!((q.next_avail_idx, q.avail_wrap_counter), (0, false));
    assert_sticky(&mut q, &mem, QueueError::TooManyInFlight);
}

// ---- H12 / H18: single fetch, 16-bit flags, TOCTOU -------------------------------------------

/// Each ring slot of a chain is read exactly once per pop: one 16-bit load of the flags, then
/// one 14-byte copy of addr/len/id, flags before body; the head's flags first. Walking a direct
/// chain reads nothing; completing it writes len+id (6 bytes) and then one 16-bit flags store.
#[test]
fn h12_h18_single_fetch_and_16_bit_flags() {
    let mem = TestMemory::m0();
    let (mut drv, mut q) = setup(&mem, 8, Features::empty());
    q.next_avail_idx = 6;
    q.next_used_idx = 6;
    drv.next_avail = 6;
    drv.next_used = 6;
    drv.publish_raw(3, &[(B, 8, N), (B + 0x10, 8, N), (B + 0x20, 8, W)]);
    mem.start_recording();
    let c = q.pop_avail(&mem).unwrap().unwrap();
    let log = mem.take_log();
    let slots = [6u16, 7, 0];
    let mut expect = vec![];
    for s in slots {
        let at = drv.slot_addr(s);
        let acc = |kind, addr, len| Access { kind, addr, len };
        // Flags first, then the rest (addr, len, id) as one 14-byte copy.
        expect.push(acc(AccessKind::Load16, at + 14, 2));
        expect.push(acc(AccessKind::Read, at, 14));
    }
    assert_eq!(log, expect, "exact access sequence of one pop");
    // Each byte of each slot read exactly once.
    for s in slots {
        for byte in drv.slot_addr(s)..drv.slot_addr(s) + 16 {
            assert_eq!(log.iter().filter(|a| a.overlaps(byte, 1)).count(), 1);
        }
    }

    mem.start_recording();
    assert_eq!(walk(&c, &mem).unwrap().len(), 3);
    assert!(mem.take_log().is_empty());

    mem.start_recording();
    q.push_used(&mem, &c, 8).unwrap();
    let log = mem.take_log();
    assert_eq!(
        log,
        vec![
            Access {
                kind: AccessKind::Write,
                addr: drv.slot_addr(6) + 8,
                len: 6
            },
            Access {
                kind: AccessKind::Store16,
                addr: drv.slot_addr(6) + 14,
                len: 2
            },
        ]
    );
    // Empty ring: exactly one 16-bit load.
    mem.start_recording();
    assert_eq!(q.pop_avail(&mem), Ok(None));
    assert_eq!(
        mem.take_log(),
        vec![Access {
            kind: AccessKind::Load16,
            addr: drv.slot_addr(1) + 14,
            len: 2
        }]
    );
}

/// H12: the guest flips the head's flags from A to A+U right after the availability check, and
/// rewrites a length after it was read: the pop result is the same as without the flips.
#[test]
fn h12_toctou_flips_have_no_effect() {
    let run = |flip: bool| -> (u16, Walk, u16) {
        let mem = TestMemory::m0();
        let (mut drv, mut q) = setup(&mem, 8, Features::empty());
        drv.publish_raw(4, &[(B, 64, N), (B + 0x100, 32, W)]);
        if flip {
            mem.flip_after_first_read(drv.slot_addr(0) + 14, &(A | U | N).to_le_bytes());
            mem.flip_after_first_read(drv.slot_addr(1) + 14, &(A | U).to_le_bytes());
            // `len` is read as two 16-bit halves: each half changes right after it was read.
            mem.flip_after_first_read(drv.slot_addr(0) + 8, &0xFFFFu16.to_le_bytes());
            mem.flip_after_first_read(drv.slot_addr(0) + 10, &0x1000u16.to_le_bytes());
            mem.flip_after_first_read(drv.slot_addr(1) + 12, &0xBEEFu16.to_le_bytes());
        }
        let (c, w) = pop_walk(&mut q, &mem);
        if flip {
            assert_eq!(drv.flags(0), A | U | N, "the flip did happen");
            assert_eq!(mem.peek_u32(drv.slot_addr(0) + 8), 0x1000_FFFF);
        }
        (c.head_index(), w, q.in_flight_descriptors())
    };
    assert_eq!(run(true), run(false));
    assert_eq!(
        run(false),
        (4, Ok(vec![(B, 64, false), (B + 0x100, 32, true)]), 2)
    );
}

/// The ring outside RAM is fatal at the first access (and `check_rings` refuses it first).
#[test]
fn ring_outside_ram_is_fatal() {
    let mem = TestMemory::m0();
    let (_drv, mut q) = setup(&mem, 8, Features::empty());
    q.desc_ring_addr = virtq::GuestAddress(0x10_0000);
    assert!(q.check_rings(&mem).is_err());
    let e = q.pop_avail(&mem).unwrap_err();
    assert!(matches!(
        e,
        QueueError::Memory(MemoryError::OutOfRange { .. })
    ));
    assert_sticky(&mut q, &mem, e);
}

/// `mark_broken` stops the queue with the chain error (escalation (b)).
#[test]
fn mark_broken_is_sticky_until_reset() {
    let mem = TestMemory::m0();
    let (mut drv, mut q) = setup(&mem, 8, Features::empty());
    drv.publish_raw(1, &[(B, 8, W | N), (B, 8, 0)]);
    let (c, w) = pop_walk(&mut q, &mem);
    let e = w.unwrap_err();
    q.mark_broken(e);
    assert_eq!(q.push_used(&mem, &c, 0), Err(QueueError::Chain(e)));
    assert_sticky(&mut q, &mem, QueueError::Chain(e));
    q.reset();
    assert!(!q.is_broken());
}
