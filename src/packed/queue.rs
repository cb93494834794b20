//! [`PackedQueue`]: the device side of one packed virtqueue (§2.8); see the
//! module documentation of [`packed`](super) for the guest reads it makes, its barriers and its error policy.

use super::chain::{ChainHead, PackedBody, PackedChain, PackedTail};
use super::event::desc_event_fires;
use super::layout::{self, DescBody, Pos, UsedBody, advance, is_available};
use crate::chain::{ChainBudget, ChainError};
use crate::drain::{Completion, DrainReport, DrainRing, drain_loop};
use crate::error::{QueueError, Sticky};
use crate::in_flight::{InFlight, SPLIT_WORDS};
use crate::memory::{Barrier, GuestAddress, GuestMemory, GuestMemoryExt};
use crate::wire::{DescFlags, Features, MAX_QUEUE_SIZE, RingEventFlags};

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
    pub(super) error: Sticky,
    /// Incarnation of the queue, bumped by every reset; stamped into popped chains.
    pub(super) generation: u32,
    /// Ring descriptors popped and not yet completed (≤ `size`).
    pub(super) in_flight_descs: u16,
    /// Tokens of the chains popped and not yet completed: a chain completed twice, or popped
    /// before a reset, is refused in O(1).
    pub(super) in_flight: InFlight<SPLIT_WORDS>,
    /// The first used descriptor added since the last publication: its position and the flags
    /// word [`publish_used`](Self::publish_used) stores last.
    pub(super) held: Option<(u16, u16)>,
    /// Used descriptors added since the last publication.
    pub(super) unpublished: u16,
    /// Used-cursor positions covered by the added-but-unpublished descriptors.
    pub(super) unpublished_moved: u32,
    /// Used cursor as last published.
    pub(super) published: Pos,
    /// Used-cursor positions published since the last notification decision.
    pub(super) unsignalled_moved: u32,
    /// Used cursor at the last notification decision; `None` until the first one.
    pub(super) signalled: Option<Pos>,
    /// Whether the device event structure currently asks for notifications (device shadow;
    /// the structure is never read back).
    pub(super) kicks_enabled: bool,
    /// The used cursor as the queue last left it: a different public value was moved by its
    /// owner (a restore by hand), and the bookkeeping derived from it follows.
    pub(super) used_cursor: Pos,
    /// Chains restored in flight that the device has not readopted yet, and the descriptors
    /// they may still claim (`readopt_into`).
    pub(super) unclaimed_chains: u16,
    pub(super) unclaimed_descs: u16,
    /// The flags last stored in the device event structure (`None`: not written since reset).
    pub(super) device_event_flags: Option<RingEventFlags>,
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
    device_event_flags
});

impl PackedQueue {
    /// A queue that accepts up to `max_size` descriptors (clamped to 32768;
    /// [`try_new`](Self::try_new) refuses such a value instead). `size` starts at `max_size`;
    /// everything else is zero, both wrap counters are 1 and the queue is not ready.
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
    /// To *refuse* an invalid size instead (§4.2.2.2), use
    /// [`try_set_size`](Self::try_set_size).
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
    pub(super) fn usable(&mut self) -> Result<(), QueueError> {
        // The used cursor where the queue left it, in the same branch as the quick test.
        let moved = (self.next_used_idx ^ self.used_cursor.0)
            | u16::from(self.used_wrap_counter ^ self.used_cursor.1);
        if moved == 0 && self.error.get().is_none() && self.quick_valid() {
            return Ok(());
        }
        self.usable_slow()
    }

    /// [`usable`](Self::usable) off the fast path: follow a moved cursor, then the full test.
    #[cold]
    #[inline(never)]
    fn usable_slow(&mut self) -> Result<(), QueueError> {
        self.follow_used_cursor();
        self.valid()
    }

    /// Not broken, and the configuration [`is_valid`](Self::is_valid): judged by
    /// [`quick_valid`](Self::quick_valid), and by `is_valid` itself only where that is not sure.
    #[inline]
    pub(super) fn valid(&self) -> Result<(), QueueError> {
        self.error.check()?;
        if self.quick_valid() {
            return Ok(());
        }
        self.revalidate()
    }

    /// A sufficient condition for [`is_valid`](Self::is_valid) in a few register operations:
    /// ready, `1 <= size <= max_size <= 32768`, both cursors below `size`, every area aligned
    /// (16, 4, 4) and at an address in `1..=2⁶³`, where no area of a queue of ≤ 32768
    /// descriptors (at most 2¹⁹ bytes) can wrap. A configuration it refuses is judged by
    /// `is_valid` (only areas above 2⁶³ get that far and pass).
    #[inline]
    pub(super) fn quick_valid(&self) -> bool {
        let (d, dr, dv) = (
            self.desc_ring_addr.0,
            self.driver_event_addr.0,
            self.device_event_addr.0,
        );
        // Bit 63 of `x - 1` is set for 0 and for addresses above 2^63 (PACKED-04 alignment in
        // the low bits).
        let out = (d.wrapping_sub(1) | dr.wrapping_sub(1) | dv.wrapping_sub(1)) >> 63;
        let misaligned = (d & (layout::DESC_ALIGN - 1))
            | (dr & (layout::EVENT_ALIGN - 1))
            | (dv & (layout::EVENT_ALIGN - 1));
        let s = self.size;
        let limit = if self.max_size < MAX_QUEUE_SIZE {
            self.max_size
        } else {
            MAX_QUEUE_SIZE
        };
        // `s - 1 < limit` (wrapping) is `1 <= s <= limit`.
        (out | misaligned) == 0
            && self.ready
            && s.wrapping_sub(1) < limit
            && self.next_avail_idx.max(self.next_used_idx) < s
    }

    #[cold]
    #[inline(never)]
    fn revalidate(&self) -> Result<(), QueueError> {
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
    pub(super) fn follow_used_cursor(&mut self) {
        if (self.next_used_idx, self.used_wrap_counter) != self.used_cursor {
            self.used_cursor_moved();
        }
    }

    #[cold]
    #[inline(never)]
    pub(super) fn used_cursor_moved(&mut self) {
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
    pub(super) fn desc_addr(&self, slot: u16, offset: u64) -> Result<GuestAddress, QueueError> {
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
    pub(super) fn load_flags<M: GuestMemory + ?Sized>(
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
    pub(super) fn rearm<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<Option<u16>, QueueError> {
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
    /// with the default storage ([`PACKED_DEFAULT_DIRECT`](super::PACKED_DEFAULT_DIRECT) direct buffers).
    ///
    /// `Ok(None)` means the next slot is not available (including a descriptor the device
    /// itself marked used, A = U, H15d). Otherwise the whole chain is read (each slot once, see
    /// the [module documentation](super)), its buffers validated and copied into the returned
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
    #[inline]
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
    #[inline(always)]
    pub(super) fn pop_into<M: GuestMemory + ?Sized>(
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
        // The one copy of the first descriptor's other 14 bytes.
        let desc = match self.read_body(mem, start.0) {
            Ok(b) => b,
            Err(e) => return Err(self.error.set(e.into())),
        };
        let f = DescFlags::from_bits_retain(flags);
        if !body.is_malformed() {
            self.check_desc(mem, body, &mut budget, &desc, f, 1);
        }
        // A chain of one descriptor (or one indirect descriptor) ends here; a NEXT list is
        // followed out of line, so the common case keeps its state in registers.
        let (id, hops) = if f.contains(DescFlags::NEXT) {
            self.pop_list(mem, body, &mut budget, start)?
        } else {
            (desc.id.get(), 1)
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

    /// The rest of a NEXT list whose first descriptor (at `start`) was checked: each later
    /// descriptor's flags (available, or the chain is incomplete), its one copy, its checks;
    /// returns the last descriptor's buffer ID and the chain's descriptor count.
    #[inline(never)]
    fn pop_list<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        body: &mut PackedBody,
        budget: &mut ChainBudget,
        start: Pos,
    ) -> Result<(u16, u16), QueueError> {
        let size = self.size;
        let mut pos = start;
        let mut hops: u16 = 1;
        loop {
            // Hop bound: a NEXT list of `size` descriptors cannot continue (H15c); the slot
            // it would continue into is not read.
            if hops >= size {
                return Err(self.error.set(QueueError::Chain(ChainError::TooLong)));
            }
            pos = advance(pos, 1, size);
            let flags = self.load_flags(mem, pos.0)?;
            if !is_available(flags, pos.1) {
                // Never a truncated chain (H15b, PACKED-38).
                return Err(self
                    .error
                    .set(QueueError::Chain(ChainError::Incomplete { slot: pos.0 })));
            }
            hops = hops.saturating_add(1);
            // The one copy of this descriptor's other 14 bytes.
            let desc = match self.read_body(mem, pos.0) {
                Ok(b) => b,
                Err(e) => return Err(self.error.set(e.into())),
            };
            let f = DescFlags::from_bits_retain(flags);
            if !body.is_malformed() {
                self.check_desc(mem, body, budget, &desc, f, hops);
            }
            if !f.contains(DescFlags::NEXT) {
                return Ok((desc.id.get(), hops));
            }
        }
    }

    /// Copy bytes 0..14 of descriptor `slot` (everything but the flags word, which was read
    /// first) in one access: `addr`, `len` and `id`, each byte once. A guest that changes them
    /// meanwhile gets a mix of its two values, which is just another value it could have
    /// written: it is validated like any other.
    #[inline]
    pub(super) fn read_body<M: GuestMemory + ?Sized>(
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
        mem.read_obj(base)
    }

    /// Validate one copied descriptor (the `hops`-th of its chain) into `out`.
    #[inline(always)]
    pub(super) fn check_desc<M: GuestMemory + ?Sized>(
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
    #[inline]
    pub(super) fn check_owned(&self, chain: &ChainHead) -> Result<(), QueueError> {
        self.valid()?;
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
    #[inline]
    pub(super) fn write_used<M: GuestMemory + ?Sized>(
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
    #[inline]
    pub fn add_used<M: GuestMemory + ?Sized, const N: usize>(
        &mut self,
        mem: &M,
        chain: &PackedChain<N>,
        bytes_written: u32,
    ) -> Result<(), QueueError> {
        self.add_used_head(mem, &chain.head, bytes_written)
    }

    /// [`add_used`](Self::add_used), not generic over the chain's storage size.
    #[inline]
    pub(super) fn add_used_head<M: GuestMemory + ?Sized>(
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
    #[inline]
    pub fn publish_used<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<u16, QueueError> {
        self.usable()?;
        self.publish_held(mem)
    }

    /// `publish_used` after the entry check, which the caller made.
    #[inline(always)]
    fn publish_held<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<u16, QueueError> {
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
    #[inline]
    pub fn push_used<M: GuestMemory + ?Sized, const N: usize>(
        &mut self,
        mem: &M,
        chain: &PackedChain<N>,
        bytes_written: u32,
    ) -> Result<(), QueueError> {
        // One entry check covers both steps (`add_used` makes it, and nothing between them
        // changes the configuration; a failed write records its error and returns first).
        self.add_used(mem, chain, bytes_written)?;
        self.publish_held(mem).map(|_| ())
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
    pub(super) const fn avail_off_wrap(&self) -> u16 {
        let wrap = if self.avail_wrap_counter { 0x8000 } else { 0 };
        self.next_avail_idx | wrap
    }

    /// Write the device event suppression structure (§2.8.10, PACKED-47). The flags word is
    /// stored only when it changes (the device keeps a shadow and never reads it back).
    pub(super) fn write_device_event<M: GuestMemory + ?Sized>(
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
    /// Chains are popped into default storage ([`PACKED_DEFAULT_DIRECT`](super::PACKED_DEFAULT_DIRECT) direct buffers); use
    /// [`drain_into`](Self::drain_into) to choose it.
    #[inline]
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
    #[inline]
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
    #[inline(always)]
    fn kicks_off(&mut self, mem: &M) -> Result<(), QueueError> {
        self.disable_notification(mem)
    }
    #[inline(always)]
    fn kicks_on(&mut self, mem: &M) -> Result<bool, QueueError> {
        self.enable_notification(mem)
    }
    #[inline(always)]
    fn pending(&mut self, mem: &M) -> Result<bool, QueueError> {
        self.has_pending(mem)
    }
    #[inline(always)]
    fn pop(&mut self, mem: &M, chain: &mut PackedChain<N>) -> Result<bool, QueueError> {
        self.pop_avail_into(mem, chain)
    }
    #[inline(always)]
    fn complete(&mut self, mem: &M, chain: &PackedChain<N>, len: u32) -> Result<(), QueueError> {
        self.add_used(mem, chain, len)
    }
    #[inline(always)]
    fn stop(&mut self, e: ChainError) {
        self.mark_broken(e);
    }
    #[inline(always)]
    fn publish(&mut self, mem: &M) -> Result<u16, QueueError> {
        self.publish_used(mem)
    }
    #[inline(always)]
    fn must_notify(&mut self, mem: &M) -> Result<bool, QueueError> {
        self.needs_notification(mem)
    }
}

/// Sizes that are refused instead of clamped.
impl PackedQueue {
    /// A queue that accepts up to `max_size` descriptors, refusing a maximum that
    /// [`new`](Self::new) would change: 0 or above 32768 (§2.8, PACKED-02, PACKED-03). Any
    /// other value is kept as is (no power-of-two rule).
    pub const fn try_new(max_size: u16) -> Result<Self, crate::error::SizeError> {
        match check_packed_size(max_size, MAX_QUEUE_SIZE) {
            Ok(()) => Ok(Self::new(max_size)),
            Err(e) => Err(e),
        }
    }

    /// Set the queue size as the driver requests it (`QueueNum`), refusing instead of clamping
    /// what [`set_size`](Self::set_size) would change: 0 or above `max_size` (§4.2.2.2,
    /// PACKED-02, PACKED-03). On error the size is unchanged.
    pub fn try_set_size(&mut self, requested: u16) -> Result<(), crate::error::SizeError> {
        check_packed_size(requested, self.max_size)?;
        self.size = requested;
        Ok(())
    }
}

/// A packed-ring size: 1 to `max`.
const fn check_packed_size(size: u16, max: u16) -> Result<(), crate::error::SizeError> {
    use crate::error::SizeError;
    if size == 0 {
        Err(SizeError::Zero)
    } else if size > max {
        Err(SizeError::TooLarge { size, max })
    } else {
        Ok(())
    }
}
