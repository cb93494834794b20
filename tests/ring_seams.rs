//! `check_rings` refuses a ring whose 16-bit index word the accessor cannot access (issue 12
//! item 6, SPLIT-07, PACKED-05, H9): a `RegionTable` seam at an odd address inside an area of
//! index words, or a `HostRegion` mapped at an odd host address, where every `load_u16` fails
//! as `Misaligned`. Before `GuestMemory::check_u16_range` both were accepted, and the first
//! pop (or push) then broke the queue. Seams that split no index word (inside a used element,
//! at an even address) are still accepted, and the queue works across them.

use std::ptr::NonNull;

use virtq::memory::{HostRegion, RegionTable};
use virtq::wire::split_layout as layout;
use virtq::{Features, GuestAddress, GuestMemory, MemoryError, PackedQueue, Queue, QueueError};

const RAM: u64 = 0x1000;
const RAM_LEN: usize = 0x3000;
const DESC: u64 = 0x2000;
const AVAIL: u64 = 0x1800;
const USED: u64 = 0x1900;
const SIZE: u16 = 16;

/// Guest RAM `[0x1000, 0x4000)` on one host buffer, cut into two adjacent regions at `seam`
/// (host-contiguous, so only the word around an odd seam belongs to neither).
fn split_at(backing: &mut [u64], seam: u64) -> RegionTable<2> {
    assert!(backing.len() * 8 >= RAM_LEN);
    let host = backing.as_mut_ptr().cast::<u8>();
    let at = usize::try_from(seam - RAM).unwrap();
    let mut t = RegionTable::new();
    for (guest, off, len) in [(RAM, 0, at), (seam, at, RAM_LEN - at)] {
        let p = NonNull::new(host.wrapping_add(off)).unwrap();
        // SAFETY: `off + len <= RAM_LEN` bytes of `backing`, which outlives the table and is
        // accessed only through it.
        t.insert(unsafe { HostRegion::new(GuestAddress(guest), p, len) }.unwrap())
            .unwrap();
    }
    t
}

/// All of guest RAM in one region whose host pointer is odd.
fn odd_host(backing: &mut [u64]) -> HostRegion {
    assert!(backing.len() * 8 > RAM_LEN);
    let p = NonNull::new(backing.as_mut_ptr().cast::<u8>().wrapping_add(1)).unwrap();
    // SAFETY: bytes 1..=RAM_LEN of `backing`, which outlives the region and is accessed only
    // through it.
    unsafe { HostRegion::new(GuestAddress(RAM), p, RAM_LEN) }.unwrap()
}

fn backing() -> Vec<u64> {
    vec![0u64; RAM_LEN / 8 + 1]
}

fn split_queue() -> Queue {
    let mut q = Queue::new(SIZE);
    q.desc_table_addr = GuestAddress(DESC);
    q.avail_ring_addr = GuestAddress(AVAIL);
    q.used_ring_addr = GuestAddress(USED);
    q.ready = true;
    q
}

fn out_of_range(word: u64) -> Result<(), QueueError> {
    Err(QueueError::Memory(MemoryError::OutOfRange {
        addr: word,
        len: 2,
    }))
}

/// Driver side: make `n` chains of descriptor 0 (one 64-byte writable buffer) available.
fn publish(mem: &impl GuestMemory, n: u16) {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&0x3000u64.to_le_bytes());
    d[8..12].copy_from_slice(&64u32.to_le_bytes());
    d[12..14].copy_from_slice(&2u16.to_le_bytes()); // VIRTQ_DESC_F_WRITE
    mem.write(GuestAddress(DESC), &d).unwrap();
    for i in 0..n {
        let slot = AVAIL + layout::RING_OFFSET + 2 * u64::from(i % SIZE);
        mem.write(GuestAddress(slot), &[0, 0]).unwrap();
    }
    mem.write(GuestAddress(AVAIL + layout::IDX_OFFSET), &n.to_le_bytes())
        .unwrap();
}

/// Pop and complete `n` chains.
fn serve(q: &mut Queue, mem: &impl GuestMemory, n: u16) -> Result<(), QueueError> {
    for _ in 0..n {
        let c = q.pop_avail(mem)?.expect("a chain is available");
        q.push_used(mem, c.head_index(), 0)?;
    }
    Ok(())
}

/// A seam at an odd address inside the available ring splits `avail.ring[3]`: refused.
/// Used anyway, the queue breaks when the device reaches that entry.
#[test]
fn split_seam_inside_avail_ring_is_refused() {
    let mut b = backing();
    let word = AVAIL + layout::RING_OFFSET + 2 * 3;
    let mem = split_at(&mut b, word + 1);
    let mut q = split_queue();
    assert_eq!(q.check_rings(&mem), out_of_range(word));

    publish(&mem, 4);
    serve(&mut q, &mem, 3).unwrap();
    assert_eq!(serve(&mut q, &mem, 1), out_of_range(word));
    assert!(q.is_broken());
}

/// Every other index word of the split ring, split by a seam: `avail.flags`, `avail.idx`,
/// `used_event`, `used.flags`, `used.idx`, `avail_event`.
#[test]
fn split_seam_inside_any_index_word_is_refused() {
    let words = [
        AVAIL,
        AVAIL + layout::IDX_OFFSET,
        AVAIL + layout::used_event_offset(SIZE),
        USED,
        USED + layout::IDX_OFFSET,
        USED + layout::avail_event_offset(SIZE),
    ];
    for word in words {
        let mut b = backing();
        let mem = split_at(&mut b, word + 1);
        assert_eq!(
            split_queue().check_rings(&mem),
            out_of_range(word),
            "{word:#x}"
        );
    }
}

/// Seams that split no index word are accepted and the queue works across them: inside a used
/// element (written with byte copies), at an even address inside the available ring, and at
/// an odd address inside the descriptor table.
#[test]
fn seams_between_index_words_are_accepted() {
    let seams = [
        USED + layout::RING_OFFSET + 8 + 5,
        AVAIL + layout::RING_OFFSET + 2 * 3,
        DESC + 16 + 7,
    ];
    for seam in seams {
        let mut b = backing();
        let mem = split_at(&mut b, seam);
        let mut q = split_queue();
        assert_eq!(q.check_rings(&mem), Ok(()), "{seam:#x}");
        publish(&mem, SIZE);
        serve(&mut q, &mem, SIZE).unwrap();
        assert_eq!(
            mem.load_u16(GuestAddress(USED + layout::IDX_OFFSET)),
            Ok(SIZE)
        );
    }
}

/// A `HostRegion` at an odd host pointer has no accessible index word: refused as
/// `Misaligned`. Used anyway, the first pop fails.
#[test]
fn split_ring_in_odd_host_region_is_refused() {
    let mut b = backing();
    let mem = odd_host(&mut b);
    let mut q = split_queue();
    assert_eq!(
        q.check_rings(&mem),
        Err(QueueError::Memory(MemoryError::Misaligned { addr: AVAIL }))
    );
    // The same memory in a table is refused the same way.
    let mut t: RegionTable<1> = RegionTable::new();
    t.insert(odd_host(&mut b)).unwrap();
    assert_eq!(
        q.check_rings(&t),
        Err(QueueError::Memory(MemoryError::Misaligned { addr: AVAIL }))
    );

    let mem = odd_host(&mut b);
    publish(&mem, 1);
    assert!(matches!(
        q.pop_avail(&mem),
        Err(QueueError::Memory(MemoryError::Misaligned { .. }))
    ));
}

const PACKED_SIZE: u16 = 8;
const DRIVER_EVENT: u64 = 0x1800;
const DEVICE_EVENT: u64 = 0x1900;

fn packed_queue() -> PackedQueue {
    let mut q = PackedQueue::new(PACKED_SIZE);
    q.desc_ring_addr = GuestAddress(DESC);
    q.driver_event_addr = GuestAddress(DRIVER_EVENT);
    q.device_event_addr = GuestAddress(DEVICE_EVENT);
    q.features = Features::RING_PACKED;
    q.ready = true;
    q
}

/// The packed ring's index words: every descriptor's flags word (and id), and both halves of
/// both event structures. A seam at an odd address inside any of them is refused.
#[test]
fn packed_seam_inside_any_index_word_is_refused() {
    let words = [
        DESC + 14,
        DESC + 16 * 5 + 12,
        DESC + 16 * u64::from(PACKED_SIZE - 1) + 14,
        DRIVER_EVENT,
        DRIVER_EVENT + 2,
        DEVICE_EVENT,
        DEVICE_EVENT + 2,
    ];
    for word in words {
        let mut b = backing();
        let mem = split_at(&mut b, word + 1);
        assert_eq!(
            packed_queue().check_rings(&mem),
            out_of_range(word),
            "{word:#x}"
        );
    }
    // Between words (an even seam in the ring, an odd one between the rings): accepted.
    for seam in [DESC + 16 * 3 + 8, DRIVER_EVENT + 0x81] {
        let mut b = backing();
        let mem = split_at(&mut b, seam);
        assert_eq!(packed_queue().check_rings(&mem), Ok(()), "{seam:#x}");
    }
}

#[test]
fn packed_ring_in_odd_host_region_is_refused() {
    let mut b = backing();
    let mem = odd_host(&mut b);
    assert_eq!(
        packed_queue().check_rings(&mem),
        Err(QueueError::Memory(MemoryError::Misaligned { addr: DESC }))
    );
}
