//! The packed virtqueue, device side (VIRTIO 1.4 §2.8).
//!
//! One ring of 16-byte descriptors replaces the split ring's three areas. The driver makes a
//! descriptor available by setting its AVAIL bit to the driver's wrap counter and its USED bit
//! to the opposite; the device marks a chain used by overwriting one descriptor at its own used
//! cursor with AVAIL = USED = the device's wrap counter (§2.8.1). [`PackedQueue`] has the same
//! shape of API as the split [`Queue`](crate::Queue).
//!
//! # Guest reads per chain (single fetch, H12)
//!
//! [`PackedQueue::pop_avail`] reads each byte of each ring slot of a chain of `n` descriptors
//! exactly once: its flags word as one single-copy-atomic 16-bit load, then (after an acquire
//! fence that follows the first flags load) `addr` as one 8-byte copy and `len` (two halves)
//! and `id` as 16-bit loads. (A single 14-byte copy ends in byte accesses that defeat store
//! forwarding on x86: 69 against 51 ns per one-descriptor chain, measured.) Every
//! check applies to these copies: availability, chain extent, buffer ID (from the *last*
//! descriptor, §2.8.6), buffer ranges, direction order and total length. The validated direct
//! buffers are copied into the returned [`PackedChain<N>`] (at most `N` of them, a cap the
//! device chooses, default [`PACKED_DEFAULT_DIRECT`]), because a used descriptor of another
//! chain may overwrite their slots before the device walks this one (out-of-order completion,
//! §2.8.6). Walking the chain reads nothing from the ring;
//! a chain made of one indirect descriptor reads its table, one 16-byte entry per table entry,
//! once per walk (the table is not in the ring). An empty ring costs one 16-bit load. Under
//! EVENT_IDX with notifications enabled, each pop also stores the device event structure's
//! `off_wrap` (one 16-bit store; never read back).
//!
//! A buffer in a packed chain is checked exactly like one in a split chain (the shared
//! `ChainBudget`): `addr + len` in guest RAM without overflow, no readable buffer after a
//! writable one, at most `size` buffers, total length ≤ `u32::MAX`, zero-length buffers counted
//! but not yielded.
//!
//! # Memory ordering
//!
//! * `pop_avail`: flags load, *acquire* fence, then the rest of the chain (pairs with the
//!   driver's write barrier before it stores the head's flags, §2.8.21.1, PACKED-19).
//! * `add_used` / `publish_used`: the used descriptor's `len` and `id`, then a *release* fence,
//!   then its flags word (PACKED-20). In a batch, the flags of the batch's first used
//!   descriptor are stored last, so the driver (which polls only that slot) sees the batch at
//!   once (PACKED-41).
//! * `needs_notification`: a *full* fence between publishing used descriptors and reading the
//!   driver event suppression structure (PACKED-48).
//! * `enable_notification`: device event structure store, *full* fence, then a re-check of the
//!   next slot (PACKED-49).
//!
//! # Error policy
//!
//! As for the split ring, ring-level violations are *fatal* and sticky until
//! [`PackedQueue::reset`]: a chain whose NEXT list runs into a descriptor that is not available
//! ([`ChainError::Incomplete`], H15b), a NEXT list longer than the queue
//! ([`ChainError::TooLong`], H15c), more descriptors in flight than the queue size
//! ([`QueueError::TooManyInFlight`]) and a ring outside guest RAM. Nothing is consumed.
//!
//! A malformed chain whose extent and buffer ID are known (bad buffer address, readable after
//! writable, bad indirect table, INDIRECT in a list or without the feature) is consumed and
//! returned; walking it yields [`ChainError`] after the buffers before the violation, exactly
//! like a malformed split chain. The device completes it (typically with length 0) or calls
//! [`PackedQueue::mark_broken`].
//!
//! # Completion
//!
//! Buffer IDs are chosen by the driver and may repeat or exceed the queue size (H15e): they are
//! echoed unchanged and never used as an index. The queue therefore cannot find a chain by its
//! ID, and completion takes the chain itself: [`PackedQueue::push_used`]`(mem, &chain, len)`.
//! The chain knows how many ring slots it occupied, which is how far the used cursor skips.

pub mod state;

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::chain::{
    ChainBudget, ChainError, Descriptor, DescriptorIter, PackedBody, PackedTail, collect_into,
};
use crate::error::{QueueError, Sticky};
use crate::in_flight::{InFlight, SPLIT_WORDS};
use crate::memory::{Barrier, GuestAddress, GuestMemory, GuestMemoryExt};
use crate::notify::{Completion, DrainReport, DrainRing, drain_loop, need_event};
use crate::wire::{DescFlags, Features, MAX_QUEUE_SIZE, RingEventFlags};

/// The default number of non-empty *direct* buffers a [`PackedChain`] holds (the `N` of
/// `PackedChain<N>` when it is not named): a device cap on chain length (PACKED-25, §2.8.5)
/// that the device chooses per queue.
///
/// A packed chain's direct descriptors sit in ring slots that the device's own used descriptors
/// overwrite as soon as another chain completes out of order (§2.8.6), so
/// [`PackedQueue::pop_avail_into`] copies them into the chain when it pops it. A chain with
/// more direct buffers than its storage holds yields the first `N` and then
/// [`ChainError::TooManySegments`] (it is still consumed as a whole and can be completed).
///
/// Choose `N` from what the device advertises and what the driver may send without
/// `VIRTIO_F_INDIRECT_DESC` (indirect tables are read at walk time and are not capped by `N`):
/// Linux virtio-net transmits up to `MAX_SKB_FRAGS + 2` (19 by default) descriptors per packet,
/// virtio-blk up to `seg_max + 2`. `N` may be as large as the queue size (32768), in which case
/// no chain the ring can hold is refused; each buffer costs 16 bytes of chain storage.
pub const PACKED_DEFAULT_DIRECT: usize = 16;

/// Where a popped packed chain lives in the ring, and who may complete it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct ChainHead {
    /// Buffer ID from the chain's last descriptor.
    id: u16,
    /// Ring slot of the chain's first descriptor.
    slot: u16,
    /// Driver wrap counter the first descriptor was read with.
    wrap: bool,
    /// Ring descriptors the chain occupies (1 for an indirect chain): the used-cursor skip.
    count: u16,
    /// The queue's in-flight token for this chain (see `in_flight`).
    token: u16,
    /// The popping queue's incarnation: a chain popped before a reset cannot be completed.
    generation: u32,
    /// The ring it was popped from: a chain cannot be completed on another queue.
    ring: GuestAddress,
    /// Queue size: the buffer limit of an indirect table walk.
    size: u16,
}

debug_fields!(ChainHead {
    id,
    slot,
    wrap,
    count,
    token,
    generation,
    ring,
    size,
});

impl ChainHead {
    const EMPTY: Self = Self {
        id: 0,
        slot: 0,
        wrap: false,
        count: 0,
        token: 0,
        generation: 0,
        ring: GuestAddress(0),
        size: 0,
    };
}

/// A chain popped from a packed ring (§2.8.6): its Buffer ID, the validated direct buffers
/// copied out of the ring (room for `N`, default [`PACKED_DEFAULT_DIRECT`]), and, for an
/// indirect chain, its validated table.
///
/// The packed counterpart of [`DescriptorChain`](crate::DescriptorChain), with the same
/// methods. A `Copy` value that borrows neither the queue nor the memory: a device can keep it
/// (posted receive buffers) and walk it later, since nothing in the ring is read again. It is
/// `16 * N` bytes and a little more: on hot paths pop into reused storage with
/// [`PackedQueue::pop_avail_into`] and pass it by reference (measured on one-descriptor
/// chains, ring 256, `N` = 16: 35 ns per chain against 88 ns when popped by value).
///
/// ```
/// # use virtq::PackedChain;
/// // Room for a 19-descriptor virtio-net transmit chain sent without INDIRECT_DESC.
/// let mut tx = PackedChain::<19>::EMPTY;
/// assert_eq!(tx.capacity(), 19);
/// // The default holds 16.
/// let rx = PackedChain::new();
/// assert_eq!(rx.capacity(), virtq::packed::PACKED_DEFAULT_DIRECT);
/// # let _ = &mut tx;
/// ```
#[derive(Clone, Copy, Debug)]
pub struct PackedChain<const N: usize = PACKED_DEFAULT_DIRECT> {
    head: ChainHead,
    /// The copied, validated buffers and what follows them.
    body: PackedBody<[Descriptor; N]>,
}

impl<const N: usize> PartialEq for PackedChain<N> {
    /// The same chain: same ring position, Buffer ID and queue incarnation, and the same
    /// buffers (storage past the chain's buffers is not compared).
    fn eq(&self, other: &Self) -> bool {
        self.head == other.head && self.body() == other.body()
    }
}

impl<const N: usize> Eq for PackedChain<N> {}

#[cfg(feature = "defmt")]
impl<const N: usize> defmt::Format for PackedChain<N> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "PackedChain {{ id: {}, slot: {}, descriptors: {}, buffers: {} }}",
            self.head.id,
            self.head.slot,
            self.head.count,
            self.body().bufs().len()
        );
    }
}

impl PackedChain {
    /// An empty chain with the default storage ([`PACKED_DEFAULT_DIRECT`] direct buffers); for
    /// another `N`, use `PackedChain::<N>::EMPTY`.
    pub const fn new() -> Self {
        Self::EMPTY
    }
}

impl<const N: usize> Default for PackedChain<N> {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl<const N: usize> PackedChain<N> {
    /// An empty chain: storage for [`PackedQueue::pop_avail_into`]. It cannot be completed
    /// and walks as empty.
    pub const EMPTY: Self = Self {
        head: ChainHead::EMPTY,
        body: PackedBody::EMPTY,
    };

    /// How many direct buffers this chain type holds (`N`).
    #[inline]
    pub const fn capacity(&self) -> usize {
        N
    }

    /// The Buffer ID to complete the chain with: the `id` of its *last* descriptor (§2.8.6),
    /// whatever value the driver chose (echoed unchanged, never used as an index, H15e). Named
    /// like [`DescriptorChain::head_index`](crate::DescriptorChain::head_index) so device code
    /// reads the same on both rings.
    #[doc(alias = "buffer_id")]
    #[inline]
    pub const fn head_index(&self) -> u16 {
        self.head.id
    }

    /// Number of ring descriptors the chain occupied (1 for an indirect chain): how far the used
    /// cursor skips when it completes (PACKED-26).
    #[inline]
    pub const fn descriptor_count(&self) -> u16 {
        self.head.count
    }

    /// Walk the chain's validated, non-empty buffers in order, as
    /// [`DescriptorChain::iter`](crate::DescriptorChain::iter) does: on the first violation it
    /// yields `Some(Err(_))` and then `None` for ever.
    ///
    /// Direct buffers come from the copy made at pop (no guest read); an indirect table is read
    /// now, one 16-byte entry per table entry, in order. The iterator borrows the chain.
    #[inline]
    pub fn iter<'a, M: GuestMemory + ?Sized>(&'a self, mem: &'a M) -> DescriptorIter<'a, M> {
        DescriptorIter::packed(mem, self.body(), self.head.size)
    }

    /// Walk and validate the whole chain into `out` (cleared first; left empty on error), as
    /// [`DescriptorChain::copy_into`](crate::DescriptorChain::copy_into).
    pub fn copy_into<M: GuestMemory + ?Sized, const K: usize>(
        &self,
        mem: &M,
        out: &mut heapless::Vec<Descriptor, K>,
    ) -> Result<(), ChainError> {
        collect_into(self.iter(mem), out)
    }

    /// The contents, seen without their storage size.
    #[inline]
    fn body(&self) -> &PackedBody {
        &self.body
    }

    /// Head and contents, for the queue to fill; neither is generic over `N`.
    #[inline]
    fn parts_mut(&mut self) -> (&mut ChainHead, &mut PackedBody) {
        (&mut self.head, &mut self.body)
    }
}

/// Packed-ring layout (§2.8.10.1 "Structure Size and Alignment", §2.8.13, §2.8.14).
#[allow(clippy::arithmetic_side_effects)] // u16 inputs: every product fits in a u64.
pub mod layout {
    /// Size of one descriptor.
    pub const DESC_SIZE: u64 = 16;
    /// Alignment of the descriptor ring.
    pub const DESC_ALIGN: u64 = 16;
    /// Size of an event suppression structure.
    pub const EVENT_SIZE: u64 = 4;
    /// Alignment of an event suppression structure.
    pub const EVENT_ALIGN: u64 = 4;
    /// Offset of `len` in a descriptor (`id` follows at 12).
    pub const LEN_OFFSET: u64 = 8;
    /// Offset of the 16-bit `flags` word in a descriptor.
    pub const FLAGS_OFFSET: u64 = 14;
    /// Offset of `off_wrap` in an event suppression structure.
    pub const EVENT_OFF_WRAP_OFFSET: u64 = 0;
    /// Offset of `flags` in an event suppression structure.
    pub const EVENT_FLAGS_OFFSET: u64 = 2;

    /// Bytes of the descriptor ring for `size` descriptors.
    pub const fn desc_ring_bytes(size: u16) -> u64 {
        DESC_SIZE * size as u64
    }
}

/// The part of a packed descriptor read after its flags (bytes 0..14).
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct DescBody {
    addr: U64,
    len: U32,
    id: U16,
}

/// The part of a used descriptor written before its flags (bytes 8..14).
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct UsedBody {
    len: U32,
    id: U16,
}

/// A position in the ring: slot and the wrap counter of the lap it belongs to.
type Pos = (u16, bool);

/// Whether a descriptor with `flags` is available to a device expecting wrap counter `wrap`:
/// AVAIL equals it and USED differs (§2.8.1, PACKED-09). A+U (a used descriptor) never is.
#[inline]
const fn is_available(flags: u16, wrap: bool) -> bool {
    let avail = flags & DescFlags::AVAIL.bits() != 0;
    let used = flags & DescFlags::USED.bits() != 0;
    avail == wrap && used != wrap
}

/// Advance `pos` by `n <= size` slots, flipping the wrap counter when it reaches or passes the
/// end (PACKED-27, including a whole-ring skip that lands back on the same slot). No masking:
/// `size` need not be a power of two (PACKED-02).
#[inline]
fn advance(pos: Pos, n: u16, size: u16) -> Pos {
    let (slot, wrap) = pos;
    // `slot < size` and `n <= size <= 32768`, so the sum fits easily in a u32.
    let s = u32::from(slot).saturating_add(u32::from(n));
    if s >= u32::from(size) {
        let s = s.saturating_sub(u32::from(size));
        (u16::try_from(s).unwrap_or(0), !wrap)
    } else {
        (u16::try_from(s).unwrap_or(0), wrap)
    }
}

/// Position on the cycle of `2 * size` positions (two laps, distinguished by the wrap counter).
#[inline]
fn linear(pos: Pos, size: u16) -> u32 {
    let (slot, wrap) = pos;
    if wrap {
        u32::from(slot)
    } else {
        u32::from(slot).saturating_add(u32::from(size))
    }
}

/// The packed EVENT_IDX window test (§2.8.10, PACKED-46, H14f): must the driver be notified
/// when the used cursor moved `moved` positions from `old`, and it asked for an event at
/// `off_wrap`?
///
/// Positions are compared on the cycle of `2 * size` positions that the (slot, wrap counter)
/// pairs form, so an event whose wrap bit differs from the current used wrap counter is one lap
/// away (the "subtract the size" rule), and sizes that are not powers of two work (no masking).
/// The event fires if it lies in `[old, old + moved)`: any position the cursor passed, including
/// slots skipped over inside a multi-descriptor chain. An offset `>= size` names no slot; the
/// answer is then `true` (spurious interrupts are safe, missing ones are not). So is a move of
/// two laps or more.
#[inline]
fn desc_event_fires(off_wrap: u16, old: Pos, moved: u32, size: u16) -> bool {
    let off = off_wrap & 0x7FFF;
    let event_wrap = off_wrap & 0x8000 != 0;
    let cycle = u32::from(size).saturating_mul(2);
    if off >= size || moved >= cycle {
        return true;
    }
    let o = linear(old, size);
    let e = linear((off, event_wrap), size);
    // Both are `< cycle`, so `e + cycle - o` is in `(0, 2 * cycle)` and fits a u32.
    let dist = e
        .saturating_add(cycle)
        .saturating_sub(o)
        .checked_rem(cycle)
        .unwrap_or(0);
    // Rebased so that `old` is 0, both distances are `< cycle <= 65536` and fit a u16, where
    // the shared window test is exact: it fires iff `0 <= dist < moved`.
    match (u16::try_from(dist), u16::try_from(moved)) {
        (Ok(event), Ok(new)) => need_event(event, new, 0),
        _ => true,
    }
}

/// The device side of one packed virtqueue (§2.8).
///
/// The public fields are the queue's configuration as a transport programs it (§4.2.2
/// QueueNumMax, QueueNum, QueueReady, QueueDesc/Driver/Device) and the device's two cursors
/// with their wrap counters. Everything the guest controls is read through [`GuestMemory`] and
/// validated on every use; the cursors are checked (`< size`) before every use too.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PackedQueue {
    /// Largest size the device accepts (§4.2.2 `QueueNumMax`), ≤ 32768, any value.
    #[doc(alias = "QueueNumMax")]
    pub max_size: u16,
    /// Active descriptor count (§4.2.2 `QueueNum`): 1..=`max_size`, not necessarily a power of
    /// two (PACKED-02). 0 is never valid (PACKED-03).
    #[doc(alias = "QueueNum")]
    pub size: u16,
    /// The driver wrote `QueueReady = 1`.
    #[doc(alias = "QueueReady")]
    pub ready: bool,
    /// Guest-physical address of the descriptor ring (§2.8.13), 16-aligned.
    #[doc(alias = "QueueDesc")]
    pub desc_ring_addr: GuestAddress,
    /// Guest-physical address of the driver event suppression structure (Driver Area, §2.8.10),
    /// 4-aligned; read by the device.
    #[doc(alias = "QueueDriver")]
    pub driver_event_addr: GuestAddress,
    /// Guest-physical address of the device event suppression structure (Device Area, §2.8.10),
    /// 4-aligned; written by the device.
    #[doc(alias = "QueueDevice")]
    pub device_event_addr: GuestAddress,
    /// Ring slot the device reads next (`< size`).
    #[doc(alias = "last_avail_idx")]
    pub next_avail_idx: u16,
    /// The driver wrap counter the device expects at `next_avail_idx` (starts at 1, §2.8.1).
    pub avail_wrap_counter: bool,
    /// Ring slot of the next used descriptor (`< size`).
    pub next_used_idx: u16,
    /// The Device Ring Wrap Counter for the used cursor (starts at 1, §2.8.1).
    pub used_wrap_counter: bool,
    /// Negotiated device-independent features that change queue behaviour (INDIRECT_DESC,
    /// EVENT_IDX, IN_ORDER). Set by the transport after FEATURES_OK; cleared by
    /// [`reset`](Self::reset).
    pub features: Features,
    /// The fatal error that stopped the queue, if any (sticky until reset).
    error: Sticky,
    /// Incarnation of the queue, bumped by every reset; stamped into popped chains.
    generation: u32,
    /// Ring descriptors popped and not yet completed (≤ `size`).
    in_flight_descs: u16,
    /// Tokens of the chains popped and not yet completed: a chain completed twice, or popped
    /// before a reset, is refused in O(1).
    in_flight: InFlight<SPLIT_WORDS>,
    /// The first used descriptor added since the last publication: its position and the flags
    /// word [`publish_used`](Self::publish_used) stores last.
    held: Option<(u16, u16)>,
    /// Used descriptors added since the last publication.
    unpublished: u16,
    /// Used-cursor positions covered by the added-but-unpublished descriptors.
    unpublished_moved: u32,
    /// Used cursor as last published.
    published: Pos,
    /// Used-cursor positions published since the last notification decision.
    unsignalled_moved: u32,
    /// Used cursor at the last notification decision; `None` until the first one.
    signalled: Option<Pos>,
    /// Whether the device event structure currently asks for notifications (device shadow;
    /// the structure is never read back).
    kicks_enabled: bool,
    /// The used cursor as the queue last left it: a different public value was moved by its
    /// owner (a restore by hand), and the bookkeeping derived from it follows.
    used_cursor: Pos,
    /// Chains restored in flight that the device has not readopted yet, and the descriptors
    /// they may still claim (`readopt_into`).
    unclaimed_chains: u16,
    unclaimed_descs: u16,
    /// The flags last stored in the device event structure (`None`: not written since reset).
    device_event_flags: Option<RingEventFlags>,
}

debug_fields!(PackedQueue {
    max_size,
    size,
    ready,
    desc_ring_addr,
    driver_event_addr,
    device_event_addr,
    next_avail_idx,
    avail_wrap_counter,
    next_used_idx,
    used_wrap_counter,
    features,
    error,
    generation,
    in_flight_descs,
    in_flight,
    held,
    unpublished,
    unpublished_moved,
    published,
    unsignalled_moved,
    signalled,
    kicks_enabled,
    used_cursor,
    unclaimed_chains,
    unclaimed_descs,
    device_event_flags,
});

impl PackedQueue {
    /// A queue that accepts up to `max_size` descriptors (clamped to 32768). `size` starts at
    /// `max_size`; everything else is zero, both wrap counters are 1 and the queue is not ready.
    pub const fn new(max_size: u16) -> Self {
        let max = if max_size > MAX_QUEUE_SIZE {
            MAX_QUEUE_SIZE
        } else {
            max_size
        };
        Self {
            max_size: max,
            size: max,
            ready: false,
            desc_ring_addr: GuestAddress(0),
            driver_event_addr: GuestAddress(0),
            device_event_addr: GuestAddress(0),
            next_avail_idx: 0,
            avail_wrap_counter: true,
            next_used_idx: 0,
            used_wrap_counter: true,
            features: Features::empty(),
            error: Sticky::CLEAR,
            generation: 0,
            in_flight_descs: 0,
            in_flight: InFlight::new(),
            held: None,
            unpublished: 0,
            unpublished_moved: 0,
            published: (0, true),
            unsignalled_moved: 0,
            signalled: None,
            kicks_enabled: true,
            used_cursor: (0, true),
            unclaimed_chains: 0,
            unclaimed_descs: 0,
            device_event_flags: None,
        }
    }

    /// Set the queue size as the driver requests it (`QueueNum`), clamped to `max_size`. Any
    /// value is allowed (no power-of-two rule, PACKED-02); 0 stays 0 and is never valid.
    ///
    /// A transport that must *refuse* an invalid size instead (§4.2.2.2) checks the requested
    /// value itself before calling this.
    pub fn set_size(&mut self, requested: u16) {
        self.size = requested.min(self.max_size);
    }

    /// Whether the queue may be used: ready, `1 <= size <= max_size <= 32768`, every area
    /// address set (non-zero) and aligned (PACKED-04: ring 16, event structures 4), no area
    /// wrapping around the 64-bit address space, and both cursors `< size`. Whether the areas
    /// are guest RAM is checked by [`check_rings`](Self::check_rings).
    pub fn is_valid(&self) -> bool {
        let s = self.size;
        self.ready
            && s != 0
            && s <= self.max_size
            && s <= MAX_QUEUE_SIZE
            && self.next_avail_idx < s
            && self.next_used_idx < s
            && self.desc_ring_addr.0 != 0
            && self.driver_event_addr.0 != 0
            && self.device_event_addr.0 != 0
            && self.desc_ring_addr.is_aligned(layout::DESC_ALIGN)
            && self.driver_event_addr.is_aligned(layout::EVENT_ALIGN)
            && self.device_event_addr.is_aligned(layout::EVENT_ALIGN)
            && self
                .desc_ring_addr
                .checked_end(layout::desc_ring_bytes(s))
                .is_some()
            && self
                .driver_event_addr
                .checked_end(layout::EVENT_SIZE)
                .is_some()
            && self
                .device_event_addr
                .checked_end(layout::EVENT_SIZE)
                .is_some()
    }

    /// Check that the descriptor ring and both event structures lie entirely in guest RAM
    /// (PACKED-05), and that the accessor can load and store every 16-bit word in them
    /// ([`GuestMemory::check_u16_range`]: the descriptors' flags words, and both halves of
    /// each event structure). A transport calls this when the driver writes `QueueReady = 1`
    /// and refuses the queue on error (H9), so a ring with an index word across an odd seam
    /// between two mappings is refused there, not broken at the first pop.
    pub fn check_rings<M: GuestMemory + ?Sized>(&self, mem: &M) -> Result<(), QueueError> {
        if !self.is_valid() {
            return Err(QueueError::NotReady);
        }
        // Whole rings: every word of a 16-byte-aligned descriptor ring is naturally aligned,
        // and a seam inside any of them is no ring a driver lays out on purpose.
        mem.check_u16_range(self.desc_ring_addr, layout::desc_ring_bytes(self.size))?;
        mem.check_u16_range(self.driver_event_addr, layout::EVENT_SIZE)?;
        mem.check_u16_range(self.device_event_addr, layout::EVENT_SIZE)?;
        Ok(())
    }

    /// Return the queue to its power-on state (device reset, Status = 0, §2.4): not ready, size
    /// `max_size`, addresses and cursors zero, wrap counters 1, features, the sticky error and
    /// the notification state cleared, nothing in flight. Chains popped before the reset can no
    /// longer be completed ([`QueueError::HeadNotInFlight`]).
    pub fn reset(&mut self) {
        // Wrapping: the generation only has to differ from the previous one.
        let generation = self.generation.wrapping_add(1);
        *self = Self::new(self.max_size);
        self.generation = generation;
    }

    /// The fatal error that stopped this queue, if any.
    pub const fn error(&self) -> Option<QueueError> {
        self.error.get()
    }

    /// Whether a fatal error stopped this queue.
    pub const fn is_broken(&self) -> bool {
        self.error.get().is_some()
    }

    /// Stop the queue because of a malformed chain the device will not complete (escalation
    /// (b)); later calls return `QueueError::Chain(e)` until reset.
    pub fn mark_broken(&mut self, e: ChainError) {
        self.error.set(QueueError::Chain(e));
    }

    /// Number of chains popped and not yet completed.
    pub const fn in_flight(&self) -> u16 {
        self.in_flight.count()
    }

    /// Number of ring descriptors popped and not yet completed (never more than `size`).
    pub const fn in_flight_descriptors(&self) -> u16 {
        self.in_flight_descs
    }

    /// Common entry check: O(1) for a broken or unconfigured queue.
    #[inline]
    fn usable(&mut self) -> Result<(), QueueError> {
        self.error.check()?;
        self.follow_used_cursor();
        if self.is_valid() {
            Ok(())
        } else {
            Err(QueueError::NotReady)
        }
    }

    /// The owner moved the used cursor (a restore by hand): what was derived from the old
    /// position no longer holds. Nothing added before the move is published by the queue, and
    /// the next interrupt decision is the conservative first one.
    #[inline]
    fn follow_used_cursor(&mut self) {
        if (self.next_used_idx, self.used_wrap_counter) != self.used_cursor {
            self.used_cursor_moved();
        }
    }

    #[cold]
    #[inline(never)]
    fn used_cursor_moved(&mut self) {
        let pos = (self.next_used_idx, self.used_wrap_counter);
        self.used_cursor = pos;
        self.published = pos;
        self.signalled = None;
        self.held = None;
        self.unpublished = 0;
        self.unpublished_moved = 0;
        self.unsignalled_moved = 0;
    }

    /// Address of byte `offset` of descriptor `slot` (`slot < size`, checked by `usable`).
    #[inline]
    fn desc_addr(&self, slot: u16, offset: u64) -> Result<GuestAddress, QueueError> {
        // `slot < 2^16`, so the product and sum are far below u64::MAX.
        let off = u64::from(slot)
            .saturating_mul(layout::DESC_SIZE)
            .saturating_add(offset);
        self.desc_ring_addr
            .checked_add(off)
            .ok_or(QueueError::NotReady)
    }

    /// The one 16-bit load of a descriptor's flags word; fatal if the ring is not RAM.
    #[inline]
    fn load_flags<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        slot: u16,
    ) -> Result<u16, QueueError> {
        let addr = self.desc_addr(slot, layout::FLAGS_OFFSET)?;
        mem.load_u16(addr).map_err(|e| self.error.set(e.into()))
    }

    /// The next slot looked empty to `pop_avail`: make it safe for the device to idle (the
    /// packed counterpart of the split ring's re-arm, PACKED-49).
    ///
    /// With kicks enabled and EVENT_IDX, the device is about to sleep on the device event
    /// `off_wrap` its last pop stored, and that store may still sit in this CPU's store buffer
    /// while the flags load that found nothing was served from before the driver's latest
    /// publish. The driver (store the head's flags, full fence, read the device event
    /// structure) can then read the old position and skip the kick. So the empty pop stores
    /// the event position again, issues a full fence and re-reads the slot's flags: `Some`
    /// with them if a chain arrived. Chosen over writing the event only in
    /// [`enable_notification`](Self::enable_notification) because the seed loop never calls
    /// that; it costs one store, one fence and one load per idle transition of that loop and
    /// nothing in [`drain`](Self::drain). Without EVENT_IDX, enabled kicks leave the device
    /// event flags at ENABLE, which nothing here rewrites, so there is nothing to order.
    #[inline(never)]
    fn rearm<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<Option<u16>, QueueError> {
        if !self.kicks_enabled || !self.features.contains(Features::EVENT_IDX) {
            return Ok(None);
        }
        self.write_device_event(mem, Some(self.avail_off_wrap()), RingEventFlags::Desc)?;
        // Full fence (store→load): the event position is visible before the slot is re-read.
        mem.fence(Barrier::KickRecheck);
        let flags = self.load_flags(mem, self.next_avail_idx)?;
        Ok(is_available(flags, self.avail_wrap_counter).then_some(flags))
    }

    /// Whether the driver has made a chain available that `pop_avail` has not taken yet (one
    /// 16-bit load of the next slot's flags; `pop_avail` reads them again).
    pub fn has_pending<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<bool, QueueError> {
        self.usable()?;
        let flags = self.load_flags(mem, self.next_avail_idx)?;
        Ok(is_available(flags, self.avail_wrap_counter))
    }

    /// Take the next chain the driver made available (§2.8.21.1, device side), into a chain
    /// with the default storage ([`PACKED_DEFAULT_DIRECT`] direct buffers).
    ///
    /// `Ok(None)` means the next slot is not available (including a descriptor the device
    /// itself marked used, A = U, H15d). Otherwise the whole chain is read (each slot once, see
    /// the [module documentation](self)), its buffers validated and copied into the returned
    /// chain, and the read cursor skips the chain's descriptors, flipping the driver wrap
    /// counter at the end of the ring. [`PackedChain::head_index`] is the Buffer ID of the
    /// chain's last descriptor (§2.8.6).
    ///
    /// Fatal errors (an incomplete or over-long NEXT list, too many descriptors in flight, a
    /// ring outside RAM) consume nothing. A chain with malformed contents is consumed and
    /// reports its [`ChainError`] when walked.
    ///
    /// Returning the chain by value moves a few hundred bytes; hot paths, and devices that
    /// take longer direct chains, use [`pop_avail_into`](Self::pop_avail_into).
    pub fn pop_avail<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<Option<PackedChain>, QueueError> {
        let mut chain = PackedChain::EMPTY;
        Ok(self.pop_avail_into(mem, &mut chain)?.then_some(chain))
    }

    /// [`pop_avail`](Self::pop_avail) into caller storage: returns `Ok(true)` with the chain
    /// in `chain`, `Ok(false)` if nothing is available. On `Ok(false)` or an error, `chain` is
    /// left empty (it cannot be completed).
    ///
    /// The hot-path form (a [`PackedChain`] is `16 * N` bytes and more, and this neither zeroes
    /// nor moves one), and the one that chooses the chain-length cap: the chain holds `N`
    /// direct buffers; a longer direct chain is consumed whole and its walk reports
    /// [`ChainError::TooManySegments`] after the first `N` buffers (PACKED-25).
    pub fn pop_avail_into<M: GuestMemory + ?Sized, const N: usize>(
        &mut self,
        mem: &M,
        chain: &mut PackedChain<N>,
    ) -> Result<bool, QueueError> {
        plant_panic!("packed", self.next_avail_idx == 0x5eed);
        let (head, body) = chain.parts_mut();
        body.clear();
        head.count = 0;
        let popped = self.pop_into(mem, head, body);
        if !matches!(popped, Ok(true)) {
            // Nothing half-built survives an error or an empty ring.
            body.clear();
            head.count = 0;
        }
        popped
    }

    /// The pop itself, not generic over the chain's storage size.
    fn pop_into<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        head: &mut ChainHead,
        body: &mut PackedBody,
    ) -> Result<bool, QueueError> {
        self.usable()?;
        let size = self.size;
        let start = (self.next_avail_idx, self.avail_wrap_counter);
        let mut flags = self.load_flags(mem, start.0)?;
        if !is_available(flags, start.1) {
            match self.rearm(mem)? {
                Some(f) => flags = f,
                None => return Ok(false),
            }
        }
        // Acquire: the chain's descriptor bodies and the flags of its later descriptors were
        // written before the driver stored this first flags word (§2.8.21.1, PACKED-19).
        mem.fence(Barrier::AvailRead);

        head.slot = start.0;
        head.wrap = start.1;
        head.size = size;
        head.generation = self.generation;
        head.ring = self.desc_ring_addr;
        let mut budget = ChainBudget::new(u32::from(size));
        let mut pos = start;
        let mut hops: u16 = 1;
        let id = loop {
            // The one copy of this descriptor's other 14 bytes.
            let desc = match self.read_body(mem, pos.0) {
                Ok(b) => b,
                Err(e) => return Err(self.error.set(e.into())),
            };
            let f = DescFlags::from_bits_retain(flags);
            let next = f.contains(DescFlags::NEXT);
            if !body.is_malformed() {
                self.check_desc(mem, body, &mut budget, &desc, f, hops);
            }
            if !next {
                break desc.id.get();
            }
            // Hop bound: a NEXT list of `size` descriptors cannot continue (H15c); the slot
            // it would continue into is not read.
            if hops >= size {
                return Err(self.error.set(QueueError::Chain(ChainError::TooLong)));
            }
            pos = advance(pos, 1, size);
            flags = self.load_flags(mem, pos.0)?;
            if !is_available(flags, pos.1) {
                // Never a truncated chain (H15b, PACKED-38).
                return Err(self
                    .error
                    .set(QueueError::Chain(ChainError::Incomplete { slot: pos.0 })));
            }
            hops = hops.saturating_add(1);
        };

        // A driver never has more than `size` descriptors outstanding (§2.8.17); more would
        // let used descriptors land on slots the device has not read yet.
        let total = u32::from(self.in_flight_descs).saturating_add(u32::from(hops));
        if total > u32::from(size) {
            return Err(self.error.set(QueueError::TooManyInFlight));
        }
        // A free token exists: fewer than `size` chains are in flight (each holds a descriptor
        // and `total <= size` counts this one too).
        let Some(token) = self
            .in_flight
            .insert_near(u32::from(start.0), u32::from(size))
            .and_then(|t| u16::try_from(t).ok())
        else {
            return Err(self.error.set(QueueError::TooManyInFlight));
        };
        head.token = token;
        head.count = hops;
        head.id = id;
        let next = advance(start, hops, size);
        self.next_avail_idx = next.0;
        self.avail_wrap_counter = next.1;
        self.in_flight_descs = self.in_flight_descs.saturating_add(hops);
        if self.kicks_enabled && self.features.contains(Features::EVENT_IDX) {
            // Keep the event position current (the packed analogue of SPLIT-61): the driver
            // kicks again only once it makes available what the device has not taken yet.
            self.write_device_event(mem, Some(self.avail_off_wrap()), RingEventFlags::Desc)?;
        }
        trace!("virtq: packed popped id {} ({} descriptors)", id, hops);
        Ok(true)
    }

    /// Copy bytes 0..14 of descriptor `slot` (everything but the flags word, which was read
    /// first), each byte once: `addr` as one 8-byte copy, `len` and `id` as three 16-bit loads.
    /// A guest that changes `len` meanwhile gets a mix of its two values, which is just another
    /// value it could have written: it is validated like any other.
    #[inline]
    fn read_body<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        slot: u16,
    ) -> Result<DescBody, crate::memory::MemoryError> {
        let base = self
            .desc_addr(slot, 0)
            .map_err(|_| crate::memory::MemoryError::Overflow {
                addr: self.desc_ring_addr.0,
                len: layout::DESC_SIZE,
            })?;
        let at = |off: u64| {
            base.checked_add(off)
                .ok_or(crate::memory::MemoryError::Overflow {
                    addr: base.0,
                    len: off,
                })
        };
        let addr: U64 = mem.read_obj(base)?;
        let len_lo = mem.load_u16(at(8)?)?;
        let len_hi = mem.load_u16(at(10)?)?;
        let id = mem.load_u16(at(12)?)?;
        Ok(DescBody {
            addr,
            len: (u32::from(len_hi) << 16 | u32::from(len_lo)).into(),
            id: id.into(),
        })
    }

    /// Validate one copied descriptor (the `hops`-th of its chain) into `out`.
    #[inline]
    fn check_desc<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        out: &mut PackedBody,
        budget: &mut ChainBudget,
        body: &DescBody,
        f: DescFlags,
        hops: u16,
    ) {
        let len = body.len.get();
        if f.contains(DescFlags::INDIRECT) {
            // WRITE on the indirect descriptor itself is ignored (PACKED-33).
            if !self.features.contains(Features::INDIRECT_DESC) {
                out.fail(ChainError::IndirectNotNegotiated);
            } else if f.contains(DescFlags::NEXT) || hops > 1 {
                out.fail(ChainError::IndirectInList);
            } else {
                let entries = len / 16;
                if len == 0 || !len.is_multiple_of(16) || entries > u32::from(self.size) {
                    // H5b/H15f (QEMU #3984), H5c, H5d.
                    out.fail(ChainError::IndirectTableLength { len });
                } else {
                    let table = GuestAddress(body.addr.get());
                    match (
                        mem.check_range(table, u64::from(len)),
                        u16::try_from(entries),
                    ) {
                        (Ok(()), Ok(n)) => out.tail = PackedTail::Indirect { table, entries: n },
                        (Err(e), _) => out.fail(ChainError::Memory(e)),
                        (_, Err(_)) => out.fail(ChainError::IndirectTableLength { len }),
                    }
                }
            }
            return;
        }
        match budget.admit(mem, body.addr.get(), len, f.contains(DescFlags::WRITE)) {
            Ok(Some(d)) => {
                if let Err(e) = out.push(d) {
                    out.fail(e);
                }
            }
            Ok(None) => {}
            Err(e) => out.fail(e),
        }
    }

    /// Check that `chain` was popped from this queue (since the last reset) and is accounted
    /// in flight.
    fn check_owned(&self, chain: &ChainHead) -> Result<(), QueueError> {
        self.error.check()?;
        if !self.is_valid() {
            return Err(QueueError::NotReady);
        }
        if chain.generation != self.generation
            || chain.ring != self.desc_ring_addr
            || chain.count == 0
            || chain.count > self.in_flight_descs
            || !self.in_flight.contains(u32::from(chain.token))
        {
            return Err(QueueError::HeadNotInFlight { head: chain.id });
        }
        Ok(())
    }

    /// Write one used descriptor at the used cursor and skip `count` slots. The flags word of
    /// the first descriptor since the last publication is held back for `publish_used`.
    fn write_used<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        id: u16,
        bytes_written: u32,
        count: u16,
    ) -> Result<(), QueueError> {
        let slot = self.next_used_idx;
        let body = UsedBody {
            len: bytes_written.into(),
            id: id.into(),
        };
        let at = self.desc_addr(slot, layout::LEN_OFFSET)?;
        if let Err(e) = mem.write_obj(at, &body) {
            return Err(self.error.set(e.into()));
        }
        // AVAIL = USED = the device wrap counter (PACKED-11); WRITE iff data was written
        // (PACKED-28); NEXT and INDIRECT are 0 (PACKED-29).
        let mut flags = if self.used_wrap_counter {
            DescFlags::AVAIL | DescFlags::USED
        } else {
            DescFlags::empty()
        };
        if bytes_written != 0 {
            flags |= DescFlags::WRITE;
        }
        if self.held.is_none() {
            self.held = Some((slot, flags.bits()));
        } else {
            // Not the batch's first: the driver reads this slot only after it has seen the
            // first one's flags, which `publish_used` stores after a release fence.
            let at = self.desc_addr(slot, layout::FLAGS_OFFSET)?;
            if let Err(e) = mem.store_u16(at, flags.bits()) {
                return Err(self.error.set(e.into()));
            }
        }
        let next = advance((slot, self.used_wrap_counter), count, self.size);
        self.next_used_idx = next.0;
        self.used_wrap_counter = next.1;
        self.used_cursor = next;
        self.unpublished = self.unpublished.saturating_add(1);
        self.unpublished_moved = self.unpublished_moved.saturating_add(u32::from(count));
        Ok(())
    }

    /// Write one used descriptor for `chain` without publishing it: the driver sees it only
    /// after [`publish_used`](Self::publish_used). Use for batched completions (§2.8.21.2).
    ///
    /// `bytes_written` is the number of bytes the device wrote into the chain's writable part
    /// (never more, PACKED-30; 0 for a read-only chain, which leaves WRITE clear). The used
    /// cursor skips the chain's descriptors (1 for an indirect chain, PACKED-26).
    ///
    /// Errors without writing anything: [`QueueError::HeadNotInFlight`] for a chain popped
    /// before a reset or from another ring, or one already completed (each popped chain holds
    /// an in-flight token, checked and released here in O(1)). As with split heads, a stale
    /// copy of a chain whose token has since been handed to a newer chain cannot be told apart
    /// from that chain; tokens follow the ring slots, so that takes a copy kept for a lap.
    ///
    /// `bytes_written` is written as given: the queue does not walk the chain again at
    /// completion (that would read the descriptors a second time, and the guest may have
    /// changed them), so it cannot clamp it. Take it from
    /// [`ChainWriter::bytes_written`](crate::io::ChainWriter::bytes_written), which never exceeds
    /// the chain's writable bytes.
    pub fn add_used<M: GuestMemory + ?Sized, const N: usize>(
        &mut self,
        mem: &M,
        chain: &PackedChain<N>,
        bytes_written: u32,
    ) -> Result<(), QueueError> {
        self.add_used_head(mem, &chain.head, bytes_written)
    }

    /// [`add_used`](Self::add_used), not generic over the chain's storage size.
    fn add_used_head<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        chain: &ChainHead,
        bytes_written: u32,
    ) -> Result<(), QueueError> {
        self.follow_used_cursor();
        self.check_owned(chain)?;
        let count = chain.count;
        self.write_used(mem, chain.id, bytes_written, count)?;
        self.in_flight_descs = self.in_flight_descs.saturating_sub(count);
        self.in_flight.remove(u32::from(chain.token));
        Ok(())
    }

    /// Complete a batch of chains with one used descriptor (VIRTIO_F_IN_ORDER, §2.8.8,
    /// PACKED-40): it carries the Buffer ID of the batch's last chain and `bytes_written` for
    /// that chain, and the used cursor skips every descriptor of the batch. The driver treats
    /// the earlier chains as fully used. Not published until [`publish_used`](Self::publish_used).
    ///
    /// `batch` must be the oldest chains in flight, in the order they were popped. Errors
    /// without writing anything: [`QueueError::InvalidUsedHead`] (naming the first offending
    /// chain's ID) if IN_ORDER was not negotiated, the batch is empty, or it is not the oldest
    /// chains in pop order; [`QueueError::HeadNotInFlight`] as for [`add_used`](Self::add_used).
    pub fn add_used_in_order<M: GuestMemory + ?Sized, const N: usize>(
        &mut self,
        mem: &M,
        batch: &[PackedChain<N>],
        bytes_written: u32,
    ) -> Result<(), QueueError> {
        let Some(last) = batch.last() else {
            return Err(QueueError::InvalidUsedHead { head: 0 });
        };
        self.follow_used_cursor();
        let mut expect = (self.next_used_idx, self.used_wrap_counter);
        let mut total: u16 = 0;
        for c in batch {
            let c = &c.head;
            self.check_owned(c)?;
            if !self.features.contains(Features::IN_ORDER) || (c.slot, c.wrap) != expect {
                return Err(QueueError::InvalidUsedHead { head: c.id });
            }
            total = total.saturating_add(c.count);
            if total > self.in_flight_descs {
                return Err(QueueError::HeadNotInFlight { head: c.id });
            }
            expect = advance(expect, c.count, self.size);
        }
        self.write_used(mem, last.head_index(), bytes_written, total)?;
        self.in_flight_descs = self.in_flight_descs.saturating_sub(total);
        for c in batch {
            self.in_flight.remove(u32::from(c.head.token));
        }
        Ok(())
    }

    /// Publish every used descriptor added since the last publication: release fence, then
    /// the flags store of the first of them (PACKED-20, PACKED-41). Returns how many used
    /// descriptors were published.
    pub fn publish_used<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<u16, QueueError> {
        self.usable()?;
        let Some((slot, flags)) = self.held else {
            return Ok(0);
        };
        let at = self.desc_addr(slot, layout::FLAGS_OFFSET)?;
        // Release: the used descriptors' len/id, the later descriptors' flags and the buffer
        // data the device wrote become visible before this flags word publishes them.
        mem.fence(Barrier::UsedPublish);
        if let Err(e) = mem.store_u16(at, flags) {
            return Err(self.error.set(e.into()));
        }
        self.held = None;
        let count = self.unpublished;
        self.unpublished = 0;
        self.unsignalled_moved = self
            .unsignalled_moved
            .saturating_add(self.unpublished_moved);
        self.unpublished_moved = 0;
        self.published = (self.next_used_idx, self.used_wrap_counter);
        Ok(count)
    }

    /// Complete one chain: write its used descriptor, then publish it (§2.8.21.2).
    pub fn push_used<M: GuestMemory + ?Sized, const N: usize>(
        &mut self,
        mem: &M,
        chain: &PackedChain<N>,
        bytes_written: u32,
    ) -> Result<(), QueueError> {
        self.add_used(mem, chain, bytes_written)?;
        self.publish_used(mem).map(|_| ())
    }

    /// Whether the driver must be interrupted now for the used descriptors published since the
    /// last call (§2.8.10, PACKED-43..46, PACKED-48). Call after
    /// [`publish_used`](Self::publish_used) / [`push_used`](Self::push_used).
    ///
    /// `false` if nothing was published since the last call. Otherwise, after a full fence, it
    /// reads the driver event suppression structure once: DISABLE suppresses; DESC (only with
    /// EVENT_IDX) fires if its (offset, wrap) position was passed; ENABLE, the reserved value 3
    /// (H14d) and DESC without EVENT_IDX (H14e) mean "interrupt". The first decision after a
    /// reset is conservative: anything published interrupts unless DISABLE.
    pub fn needs_notification<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<bool, QueueError> {
        self.usable()?;
        // Full fence: the used flags stores must be visible before the driver's suppression
        // state is read, or both sides could miss each other's update (PACKED-48).
        mem.fence(Barrier::NotifyCheck);
        let moved = self.unsignalled_moved;
        if moved == 0 {
            return Ok(false);
        }
        let old = self.signalled.replace(self.published);
        self.unsignalled_moved = 0;
        let base = self.driver_event_addr;
        let flags_at = base
            .checked_add(layout::EVENT_FLAGS_OFFSET)
            .ok_or(QueueError::NotReady)?;
        let flags = mem
            .load_u16(flags_at)
            .map_err(|e| self.error.set(e.into()))?;
        let notify = match RingEventFlags::from_bits(flags) {
            RingEventFlags::Disable => false,
            RingEventFlags::Desc if self.features.contains(Features::EVENT_IDX) => {
                // Acquire: the driver writes `off_wrap` before the flags that select it.
                mem.fence(Barrier::EventRead);
                let at = base
                    .checked_add(layout::EVENT_OFF_WRAP_OFFSET)
                    .ok_or(QueueError::NotReady)?;
                let off_wrap = mem.load_u16(at).map_err(|e| self.error.set(e.into()))?;
                match old {
                    Some(old) => desc_event_fires(off_wrap, old, moved, self.size),
                    None => true,
                }
            }
            // ENABLE, DESC without EVENT_IDX, reserved 3: spurious interrupts are safe.
            _ => true,
        };
        Ok(notify)
    }

    /// The read cursor as an event suppression `off_wrap` value (§2.8.14).
    #[inline]
    const fn avail_off_wrap(&self) -> u16 {
        let wrap = if self.avail_wrap_counter { 0x8000 } else { 0 };
        self.next_avail_idx | wrap
    }

    /// Write the device event suppression structure (§2.8.10, PACKED-47). The flags word is
    /// stored only when it changes (the device keeps a shadow and never reads it back).
    fn write_device_event<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        off_wrap: Option<u16>,
        flags: RingEventFlags,
    ) -> Result<(), QueueError> {
        let base = self.device_event_addr;
        if let Some(v) = off_wrap {
            let at = base
                .checked_add(layout::EVENT_OFF_WRAP_OFFSET)
                .ok_or(QueueError::NotReady)?;
            mem.store_u16(at, v).map_err(|e| self.error.set(e.into()))?;
            // Release: `off_wrap` is visible before the flags that select it.
            mem.fence(Barrier::EventPublish);
        }
        if self.device_event_flags == Some(flags) {
            return Ok(());
        }
        let at = base
            .checked_add(layout::EVENT_FLAGS_OFFSET)
            .ok_or(QueueError::NotReady)?;
        // Reserved bits are written as 0 (PACKED-47).
        mem.store_u16(at, flags.bits())
            .map_err(|e| self.error.set(e.into()))?;
        self.device_event_flags = Some(flags);
        Ok(())
    }

    /// Ask the driver for available-buffer notifications again, then re-check the ring
    /// (PACKED-49). Returns `true` if a chain became available meanwhile: the device must keep
    /// draining, since the driver may not notify for it.
    ///
    /// With EVENT_IDX the device event structure is set to DESC at the next slot the device
    /// will read (so the driver notifies when that one is made available); otherwise ENABLE.
    pub fn enable_notification<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<bool, QueueError> {
        self.usable()?;
        self.kicks_enabled = true;
        if self.features.contains(Features::EVENT_IDX) {
            self.write_device_event(mem, Some(self.avail_off_wrap()), RingEventFlags::Desc)?;
        } else {
            self.write_device_event(mem, None, RingEventFlags::Enable)?;
        }
        // Full fence: the device event store is visible before the ring is re-checked, so a
        // driver that read the old DISABLE cannot skip a notification we also miss.
        mem.fence(Barrier::KickRecheck);
        let flags = self.load_flags(mem, self.next_avail_idx)?;
        Ok(is_available(flags, self.avail_wrap_counter))
    }

    /// Tell the driver not to send available-buffer notifications (DISABLE, §2.8.10). Only a
    /// hint: the driver may still notify, and spurious notifications are handled (PACKED-50).
    pub fn disable_notification<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<(), QueueError> {
        self.usable()?;
        if !self.kicks_enabled {
            return Ok(());
        }
        self.kicks_enabled = false;
        self.write_device_event(mem, None, RingEventFlags::Disable)
    }

    /// Whether the device currently asks for available-buffer notifications.
    pub const fn notifications_enabled(&self) -> bool {
        self.kicks_enabled
    }

    /// Process at most `budget` chains, then publish the completions once and decide the
    /// interrupt once: the drain loop a device runs on every kick, as
    /// [`Queue::drain`](crate::Queue::drain) for the split ring.
    ///
    /// Kicks are disabled while draining. When the ring runs dry they are re-enabled and the
    /// ring re-checked, so work that raced in is processed rather than slept on. When the
    /// budget runs out first, kicks stay disabled and the report says `more` (H17). A
    /// re-check that reports work costs one unit of `budget` like a chain (a guest toggling
    /// the next slot's flags cannot keep the loop turning). On a
    /// broken queue this returns the sticky error in O(1).
    ///
    /// Chains are popped into default storage ([`PACKED_DEFAULT_DIRECT`] direct buffers); use
    /// [`drain_into`](Self::drain_into) to choose it.
    pub fn drain<M, F>(
        &mut self,
        mem: &M,
        budget: usize,
        handle: F,
    ) -> Result<DrainReport, QueueError>
    where
        M: GuestMemory + ?Sized,
        F: FnMut(&PackedChain) -> Completion,
    {
        let mut chain = PackedChain::EMPTY;
        self.drain_into(mem, budget, &mut chain, handle)
    }

    /// [`drain`](Self::drain), popping each chain into `chain` (reused storage whose `N` is the
    /// device's cap on direct buffers per chain, see [`pop_avail_into`](Self::pop_avail_into)).
    /// A [`Completion::Deferred`] chain must be copied out of `chain` by the handler before it
    /// returns, since the next pop overwrites it.
    pub fn drain_into<M, F, const N: usize>(
        &mut self,
        mem: &M,
        budget: usize,
        chain: &mut PackedChain<N>,
        handle: F,
    ) -> Result<DrainReport, QueueError>
    where
        M: GuestMemory + ?Sized,
        F: FnMut(&PackedChain<N>) -> Completion,
    {
        drain_loop(self, mem, budget, chain, handle)
    }
}

impl<M: GuestMemory + ?Sized, const N: usize> DrainRing<M, PackedChain<N>> for PackedQueue {
    fn kicks_off(&mut self, mem: &M) -> Result<(), QueueError> {
        self.disable_notification(mem)
    }
    fn kicks_on(&mut self, mem: &M) -> Result<bool, QueueError> {
        self.enable_notification(mem)
    }
    fn pending(&mut self, mem: &M) -> Result<bool, QueueError> {
        self.has_pending(mem)
    }
    fn pop(&mut self, mem: &M, chain: &mut PackedChain<N>) -> Result<bool, QueueError> {
        self.pop_avail_into(mem, chain)
    }
    fn complete(&mut self, mem: &M, chain: &PackedChain<N>, len: u32) -> Result<(), QueueError> {
        self.add_used(mem, chain, len)
    }
    fn stop(&mut self, e: ChainError) {
        self.mark_broken(e);
    }
    fn publish(&mut self, mem: &M) -> Result<u16, QueueError> {
        self.publish_used(mem)
    }
    fn must_notify(&mut self, mem: &M) -> Result<bool, QueueError> {
        self.needs_notification(mem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn availability_truth_table() {
        let a = DescFlags::AVAIL.bits();
        let u = DescFlags::USED.bits();
        assert!(is_available(a, true));
        assert!(!is_available(a | u, true));
        assert!(!is_available(0, true));
        assert!(!is_available(u, true));
        assert!(is_available(u, false));
        assert!(!is_available(0, false));
        assert!(!is_available(a | u, false));
        assert!(!is_available(a, false));
        // Other flag bits do not matter.
        assert!(is_available(a | 0x7F, true));
    }

    #[test]
    fn advance_wraps_without_masking() {
        for size in 1..=40u16 {
            for slot in 0..size {
                for wrap in [false, true] {
                    for n in 0..=size {
                        let (s, w) = advance((slot, wrap), n, size);
                        let lin = u32::from(slot) + u32::from(n);
                        assert_eq!(u32::from(s), lin % u32::from(size));
                        assert_eq!(w, wrap ^ (lin >= u32::from(size)));
                    }
                }
            }
        }
        // The whole-ring skip lands on the same slot with the wrap flipped (PACKED-27).
        assert_eq!(advance((5, true), 6, 6), (5, false));
        assert_eq!(advance((32767, true), 32768, 32768), (32767, false));
    }

    /// Exhaustive over small sizes: the window test agrees with stepping the cursor one
    /// position at a time and checking whether it passes the event position.
    #[test]
    fn desc_event_window_matches_stepping() {
        for size in 1..=7u16 {
            let cycle = 2 * u32::from(size);
            for old_slot in 0..size {
                for old_wrap in [false, true] {
                    for moved in 0..cycle {
                        for off in 0..size + 2 {
                            for ew in [false, true] {
                                let off_wrap = off | if ew { 0x8000 } else { 0 };
                                let mut pos = (old_slot, old_wrap);
                                let mut hit = false;
                                for _ in 0..moved {
                                    hit |= pos == (off, ew);
                                    pos = advance(pos, 1, size);
                                }
                                let expect = hit || off >= size;
                                assert_eq!(
                                    desc_event_fires(off_wrap, (old_slot, old_wrap), moved, size),
                                    expect,
                                    "size {size} old ({old_slot},{old_wrap}) moved {moved} \
                                     event ({off},{ew})"
                                );
                            }
                        }
                    }
                }
            }
        }
        // Two laps or more: always.
        assert!(desc_event_fires(0, (1, true), 16, 8));
    }
}
