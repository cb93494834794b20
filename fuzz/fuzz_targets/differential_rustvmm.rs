//! Differential test against rust-vmm `virtio-queue` 0.18 (with `vm-memory` 0.18) on the split
//! ring: the same memory image, the same heads published one at a time, each chain popped and
//! walked by both implementations and then completed by both.
//!
//! Agreement rules (documented in `fuzz/README.md`):
//! * where we accept a chain, rust-vmm yields exactly our buffers once its zero-length
//!   descriptors are dropped (we skip them, class Z);
//! * where we reject a chain after yielding a prefix, rust-vmm yields that prefix too, and then
//!   - class T (their truncation): for the rules rust-vmm also enforces, but by ending the chain
//!     silently (`None`), it yields at most one more buffer (the descriptor whose `next` was out
//!     of range) and reports nothing;
//!   - class S (our stricter rules): for the rules rust-vmm does not enforce (INDIRECT without
//!     the feature, INDIRECT with NEXT, too many indirect entries, readable after writable, a
//!     buffer outside guest RAM) it may go on yielding buffers.
//!
//! Any other disagreement is a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue as VmmQueue, QueueT};
use virtq::{ChainError, Features, GuestAddress, MemoryError, Queue};
use virtq_fuzz::{AVAIL, DESC, DiffInput, IMAGE_AT, RAM, USED, new_memory};
use vm_memory::{Bytes, GuestAddress as VmmAddress, GuestMemoryMmap};

/// (addr, len, writable)
type Buf = (u64, u32, bool);

fn split_hi_lo(a: u64) -> (Option<u32>, Option<u32>) {
    (Some(a as u32), Some((a >> 32) as u32))
}

/// Whether rust-vmm enforces this rule too, by truncating the chain (class T), rather than not at
/// all (class S).
fn truncation_class(e: &ChainError, indirect_len_ok: bool) -> bool {
    match e {
        ChainError::NextOutOfRange { .. }
        | ChainError::TooLong
        | ChainError::NestedIndirect
        | ChainError::LengthOverflow => true,
        // Zero or not a multiple of 16: they refuse to switch tables; too many entries: they
        // accept any table up to 65535 entries.
        ChainError::IndirectTableLength { .. } => !indirect_len_ok,
        ChainError::IndirectNotNegotiated
        | ChainError::IndirectWithNext
        | ChainError::ReadableAfterWritable => false,
        // A descriptor fetch outside RAM is a truncation for them; a buffer outside RAM they do
        // not check. Both are `Memory` here, so allow either.
        ChainError::Memory(MemoryError::OutOfRange { .. } | MemoryError::Overflow { .. }) => false,
        other => panic!("unexpected chain error {other:?}"),
    }
}

fn run(data: &[u8]) {
    let inp = DiffInput::decode(data);
    let size = inp.size;

    let mem = new_memory();
    mem.poke(IMAGE_AT, &inp.image);
    let ranges: Vec<(VmmAddress, usize)> = RAM
        .iter()
        .map(|&(b, l)| (VmmAddress(b), l as usize))
        .collect();
    let vmem = GuestMemoryMmap::<()>::from_ranges(&ranges).expect("mmap guest RAM");
    vmem.write_slice(&inp.image, VmmAddress(IMAGE_AT)).unwrap();
    // Both start from an empty available ring.
    let set_u16 = |addr: u64, v: u16| {
        mem.poke_u16(addr, v);
        vmem.write_obj(v.to_le(), VmmAddress(addr)).unwrap();
    };
    set_u16(AVAIL + 2, 0);

    let mut q = Queue::new(size);
    q.set_size(size);
    q.desc_table_addr = GuestAddress(DESC);
    q.avail_ring_addr = GuestAddress(AVAIL);
    q.used_ring_addr = GuestAddress(USED);
    if inp.indirect {
        q.features = Features::INDIRECT_DESC;
    }
    q.ready = true;

    let mut vq = VmmQueue::new(size).expect("rust-vmm queue");
    vq.set_size(size);
    let (lo, hi) = split_hi_lo(DESC);
    vq.set_desc_table_address(lo, hi);
    let (lo, hi) = split_hi_lo(AVAIL);
    vq.set_avail_ring_address(lo, hi);
    let (lo, hi) = split_hi_lo(USED);
    vq.set_used_ring_address(lo, hi);
    vq.set_ready(true);
    assert!(vq.is_valid(&vmem));

    for (k, &raw_head) in inp.heads.iter().enumerate() {
        let head = raw_head % size;
        let k = k as u16;
        set_u16(AVAIL + 4 + 2 * u64::from(k % size), head);
        set_u16(AVAIL + 2, k.wrapping_add(1));

        let ours = q.pop_avail(&mem).expect("pop").expect("a chain");
        let theirs = vq.pop_descriptor_chain(&vmem).expect("their chain");
        assert_eq!(ours.head_index(), head);
        assert_eq!(theirs.head_index(), head);

        let mut our_bufs: Vec<Buf> = Vec::new();
        let mut our_err = None;
        for d in ours.iter(&mem) {
            match d {
                Ok(d) => our_bufs.push((d.addr().0, d.len(), d.is_write_only())),
                Err(e) => {
                    our_err = Some(e);
                    break;
                }
            }
        }
        // Their descriptors, zero-length ones dropped (class Z). Remember whether any indirect
        // table they entered had an acceptable length, to classify IndirectTableLength.
        let mut their_bufs: Vec<Buf> = Vec::new();
        for d in theirs {
            if d.len() != 0 {
                their_bufs.push((d.addr().0, d.len(), d.is_write_only()));
            }
        }

        match our_err {
            None => assert_eq!(
                our_bufs, their_bufs,
                "head {head}: both accept but the buffers differ"
            ),
            Some(e) => {
                assert!(
                    their_bufs.len() >= our_bufs.len()
                        && their_bufs[..our_bufs.len()] == our_bufs[..],
                    "head {head}: {e:?}: their chain {their_bufs:?} does not start with ours \
                     {our_bufs:?}"
                );
                let len_ok = matches!(e, ChainError::IndirectTableLength { len }
                    if len != 0 && len % 16 == 0);
                if truncation_class(&e, len_ok) {
                    assert!(
                        their_bufs.len() <= our_bufs.len() + 1,
                        "head {head}: {e:?} (class T): they went on for {} more buffers",
                        their_bufs.len() - our_bufs.len()
                    );
                }
            }
        }

        q.push_used(&mem, head, 0).expect("our completion");
        vq.add_used(&vmem, head, 0).expect("their completion");
    }
}

fuzz_target!(|data: &[u8]| run(data));
