//! The split virtqueue, device side (VIRTIO 1.4 §2.7).
//!
//! # Memory ordering
//!
//! * `pop_avail` reads `avail.idx` with a single-copy-atomic 16-bit load, then issues an
//!   *acquire* fence before reading ring entries and descriptors (pairs with the driver's write
//!   barrier before it publishes `avail.idx`, §2.7.13.3.1).
//! * `push_used` writes the used element, then a *release* fence, then stores `used.idx`
//!   (§2.7.8.2: the element and the buffer data are visible before the index).
//! * `needs_notification`: a *full* fence between the `used.idx` store and the read of
//!   `used_event` / the avail flags (SPLIT-53).
//! * `enable_notification`, and a `pop_avail` that finds the ring empty with kicks enabled
//!   under EVENT_IDX: store `avail_event` (or clear NO_NOTIFY), *full* fence, read `avail.idx`
//!   again (SPLIT-61, SPLIT-62).
//!
//! Every barrier goes through [`GuestMemory::fence`] with a [`Barrier`] naming what it orders,
//! so the protocol explorer in the test kit can run this code under a store-buffer model and
//! show that each one is needed.
//!
//! # Error policy
//!
//! Ring-level violations (`avail.idx` overrun, a head out of range or already in flight, a ring
//! outside guest RAM) are *fatal*: nothing is consumed, the queue records the error and returns
//! it from every later call without touching guest memory, until [`Queue::reset`]. The
//! transport turns that into DEVICE_NEEDS_RESET.
//!
//! A malformed *chain* (bad `next`, loop, bad indirect table, direction violation, buffer
//! outside RAM) is reported by the chain walk ([`ChainError`]). By then `pop_avail` has
//! consumed the chain: its head is in flight, and the device chooses between
//! * completing it with `push_used(head, 0)` (escalation (a) of the checklist: the head is not
//!   leaked and the queue keeps running), or
//! * [`Queue::mark_broken`] (escalation (b): the transport raises DEVICE_NEEDS_RESET).

pub mod state;

use core::fmt;

use crate::chain::{ChainError, DescriptorChain};
use crate::drain::{Completion, DrainReport, DrainRing, drain_loop};
use crate::error::{QueueError, Sticky};
use crate::in_flight::{InFlight, SPLIT_WORDS};
use crate::memory::{Barrier, GuestAddress, GuestMemory, GuestMemoryExt, ring_addr_bad};
use crate::notify::need_event;
use crate::wire::{
    AvailFlags, Features, MAX_QUEUE_SIZE, UsedElem, UsedFlags, split_layout as layout,
};

/// The device side of one split virtqueue (§2.7).
///
/// The public fields are the queue's configuration as a transport programs it (§4.2.2
/// QueueNumMax, QueueNum, QueueReady, QueueDesc/Driver/Device) and the device's two cursors.
/// Everything the guest controls is read through [`GuestMemory`] and validated on every use.
///
/// `Queue` tracks which heads are in flight in a bitmap of `W` 64-bit words, so a head made
/// available twice, or completed twice, is caught in O(1) without allocation. The default
/// `W` = 512 (4 KiB) holds every head of the largest queue (32768), so `Queue::new(max_size)`
/// works for any size; firmware with many small queues sizes the bitmap to the queue with
/// [`with_capacity`](Self::with_capacity): `Queue<{ in_flight_words(256) }>` is 120 bytes
/// where `Queue` is 4184. Everything else the queue keeps is 88 bytes on a 64-bit target.
///
/// The cursors are public for inspection and for a restore by hand. Change them only on a
/// queue that is not running (between calls, with no chain of the old position still to
/// complete): the queue notices a moved cursor at its next call and resets what it derived
/// from it. A moved `next_avail_idx` makes it read `avail.idx` afresh; a moved `next_used_idx`
/// counts everything before it as published and signalled. [`save`](Self::save) and
/// [`restore`](Self::restore) carry the whole state, in-flight heads included, and validate it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Queue<const W: usize = SPLIT_WORDS> {
    /// Largest size the device accepts (§4.2.2 `QueueNumMax`), a power of two ≤ 32768.
    #[doc(alias = "QueueNumMax")]
    pub max_size: u16,
    /// Active descriptor count (§4.2.2 `QueueNum`), ≤ `max_size`, a power of two.
    #[doc(alias = "QueueNum")]
    pub size: u16,
    /// The driver wrote `QueueReady = 1`.
    #[doc(alias = "QueueReady")]
    pub ready: bool,
    /// Guest-physical address of the descriptor table (§2.7.5).
    #[doc(alias = "QueueDesc")]
    pub desc_table_addr: GuestAddress,
    /// Guest-physical address of the available ring (§2.7.6).
    #[doc(alias = "QueueDriver")]
    pub avail_ring_addr: GuestAddress,
    /// Guest-physical address of the used ring (§2.7.8).
    #[doc(alias = "QueueDevice")]
    pub used_ring_addr: GuestAddress,
    /// The device's cursor into the available ring (free-running, wraps at 2¹⁶).
    #[doc(alias = "last_avail_idx")]
    pub next_avail_idx: u16,
    /// The next used-ring slot to write (free-running, wraps at 2¹⁶).
    pub next_used_idx: u16,
    /// Negotiated device-independent features that change queue behaviour (INDIRECT_DESC,
    /// EVENT_IDX, IN_ORDER). Set by the transport after FEATURES_OK; cleared by
    /// [`reset`](Self::reset).
    pub features: Features,
    /// The fatal error that stopped the queue, if any (sticky until reset).
    error: Sticky,
    /// `avail.idx` as last read: entries between `next_avail_idx` and it are known to be
    /// available without reading the index again. The avail cursor only moves up to it (a pop
    /// takes an entry only when one is known), and a cursor moved by its owner resets it.
    shadow_avail_idx: u16,
    /// `used.idx` as last published to the guest.
    published_used_idx: u16,
    /// `used.idx` when [`needs_notification`](Self::needs_notification) last answered.
    notify_base: u16,
    /// Used elements published since that answer (saturating; ≥ 2¹⁶ forces a notification,
    /// because the 16-bit window test cannot see a batch that large).
    unsignalled: u32,
    /// The device wants available-buffer notifications (kicks).
    kicks_enabled: bool,
    /// The cursors as the queue last left them: a public cursor that differs was moved by its
    /// owner (a restore by hand), and the bookkeeping derived from it is reset to follow.
    avail_cursor: u16,
    used_cursor: u16,
    in_flight: InFlight<W>,
}

impl<const W: usize> fmt::Debug for Queue<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("max_size", &self.max_size)
            .field("size", &self.size)
            .field("ready", &self.ready)
            .field("desc_table_addr", &self.desc_table_addr)
            .field("avail_ring_addr", &self.avail_ring_addr)
            .field("used_ring_addr", &self.used_ring_addr)
            .field("next_avail_idx", &self.next_avail_idx)
            .field("next_used_idx", &self.next_used_idx)
            .field("features", &self.features)
            .field("error", &self.error.get())
            .field("in_flight", &self.in_flight.count())
            .finish()
    }
}

/// Offset of ring entry `slot` (entries of `entry_size` ≤ 8 bytes) in the available or used
/// ring. `slot < 2^16`, so the result is far below `u64::MAX`.
#[inline]
const fn ring_offset(slot: u16, entry_size: u64) -> u64 {
    layout::RING_OFFSET.wrapping_add((slot as u64).wrapping_mul(entry_size))
}

/// Largest power of two `<= v` (0 for 0).
const fn floor_pow2(v: u16) -> u16 {
    // `leading_zeros() <= 15` for a non-zero u16, so the shift is in range.
    if v == 0 {
        0
    } else {
        1 << 15u32.wrapping_sub(v.leading_zeros())
    }
}

/// Bitmap words a [`Queue`] needs for queues of up to `max_size` descriptors: the `W` of
/// `Queue<W>` (`ceil(max_size / 64)`, at least 1).
///
/// ```
/// use virtq::split::{Queue, in_flight_words};
/// let q = Queue::<{ in_flight_words(256) }>::with_capacity(256);
/// assert_eq!((q.max_size, size_of_val(&q.clone()) <= 128), (256, true));
/// ```
pub const fn in_flight_words(max_size: u16) -> usize {
    let words = (max_size as usize).div_ceil(64);
    if words == 0 { 1 } else { words }
}

impl Queue {
    /// A queue that accepts up to `max_size` descriptors (clamped to 32768 and rounded down to a
    /// power of two; [`try_new`](Self::try_new) refuses such a value instead). `size` starts at
    /// `max_size`; everything else is zero and the queue is not ready.
    ///
    /// Its in-flight bitmap holds every possible head (4 KiB); see
    /// [`with_capacity`](Self::with_capacity) for one sized to the queue.
    pub const fn new(max_size: u16) -> Self {
        Self::with_capacity(max_size)
    }
}

impl<const W: usize> Queue<W> {
    /// Heads the in-flight bitmap can hold: `64 * W`, at most 32768.
    pub const CAPACITY: u16 = {
        let bits = W.saturating_mul(64);
        if bits > MAX_QUEUE_SIZE as usize {
            MAX_QUEUE_SIZE
        } else {
            // `bits <= 32768` here, so it fits.
            #[allow(clippy::cast_possible_truncation)]
            let bits = bits as u16;
            bits
        }
    };

    /// A queue that accepts up to `max_size` descriptors (§4.2.2 `QueueNumMax`), clamped to a
    /// power of two no larger than [`CAPACITY`](Self::CAPACITY) (`64 * W`, at most 32768), with an in-flight bitmap of
    /// `W` words: `Queue::<W>::with_capacity(max_size)` is `Queue::new(max_size)` with storage
    /// sized by the caller. `size` starts at `max_size`; everything else is zero and the queue is
    /// not ready.
    pub const fn with_capacity(max_size: u16) -> Self {
        let max = floor_pow2(if max_size > Self::CAPACITY {
            Self::CAPACITY
        } else {
            max_size
        });
        Self {
            max_size: max,
            size: max,
            ready: false,
            desc_table_addr: GuestAddress(0),
            avail_ring_addr: GuestAddress(0),
            used_ring_addr: GuestAddress(0),
            next_avail_idx: 0,
            next_used_idx: 0,
            features: Features::empty(),
            error: Sticky::CLEAR,
            shadow_avail_idx: 0,
            published_used_idx: 0,
            notify_base: 0,
            unsignalled: 0,
            kicks_enabled: true,
            avail_cursor: 0,
            used_cursor: 0,
            in_flight: InFlight::new(),
        }
    }

    /// Set the queue size as the driver requests it (`QueueNum`), clamped to `max_size` and
    /// rounded down to a power of two (0 stays 0, and a queue of size 0 is never valid).
    ///
    /// To *refuse* an invalid size instead (§4.2.2.2), use
    /// [`try_set_size`](Self::try_set_size).
    pub fn set_size(&mut self, requested: u16) {
        self.size = floor_pow2(requested.min(self.max_size));
    }

    /// Whether the queue may be used: ready, a non-zero power-of-two size ≤ `max_size` (and ≤
    /// the in-flight bitmap's [`CAPACITY`](Self::CAPACITY)), every ring address set (non-zero)
    /// and aligned (§2.7 alignment table), and no ring wrapping around the 64-bit address
    /// space. Whether the rings are guest RAM is checked by
    /// [`check_rings`](Self::check_rings), which needs the memory.
    pub fn is_valid(&self) -> bool {
        let s = self.size;
        self.ready
            && s != 0
            && s <= self.max_size
            && s <= MAX_QUEUE_SIZE
            && s <= Self::CAPACITY
            && s.is_power_of_two()
            && self.desc_table_addr.0 != 0
            && self.avail_ring_addr.0 != 0
            && self.used_ring_addr.0 != 0
            && self.desc_table_addr.is_aligned(layout::DESC_ALIGN)
            && self.avail_ring_addr.is_aligned(layout::AVAIL_ALIGN)
            && self.used_ring_addr.is_aligned(layout::USED_ALIGN)
            && self
                .desc_table_addr
                .checked_end(layout::desc_table_bytes(s))
                .is_some()
            && self
                .avail_ring_addr
                .checked_end(layout::avail_ring_bytes(s))
                .is_some()
            && self
                .used_ring_addr
                .checked_end(layout::used_ring_bytes(s))
                .is_some()
    }

    /// Check that all three rings lie entirely in guest RAM (SPLIT-07), and that the accessor
    /// can load and store every 16-bit index word in them
    /// ([`GuestMemory::check_u16_range`]): the whole available ring (flags, idx, ring entries,
    /// `used_event`), and the used ring's flags, idx and `avail_event`. A transport calls this
    /// when the driver writes `QueueReady = 1` and refuses the queue on error (H9), so a ring
    /// with an index word across an odd seam between two mappings is refused there, not
    /// broken at the first pop.
    pub fn check_rings<M: GuestMemory + ?Sized>(&self, mem: &M) -> Result<(), QueueError> {
        if !self.is_valid() {
            return Err(QueueError::NotReady);
        }
        let s = self.size;
        mem.check_range(self.desc_table_addr, layout::desc_table_bytes(s))?;
        mem.check_u16_range(self.avail_ring_addr, layout::avail_ring_bytes(s))?;
        mem.check_range(self.used_ring_addr, layout::used_ring_bytes(s))?;
        // `is_valid` checked that the whole used ring does not wrap, so neither do these.
        let used = self.used_ring_addr;
        mem.check_u16_range(used, layout::RING_OFFSET)?;
        let avail_event = used.checked_add(layout::avail_event_offset(s));
        mem.check_u16_range(avail_event.ok_or(QueueError::NotReady)?, 2)?;
        Ok(())
    }

    /// Return the queue to its power-on state (device reset, Status = 0, §2.4): not ready, size
    /// `max_size`, addresses and cursors zero, features and the sticky error cleared, nothing
    /// in flight. Chains popped before the reset can no longer be completed.
    pub fn reset(&mut self) {
        *self = Self::with_capacity(self.max_size);
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

    /// Common entry check: O(1) for a broken or unconfigured queue, and a handful of
    /// register operations for a configured one ([`quick_valid`](Self::quick_valid), with the
    /// full [`is_valid`](Self::is_valid) only where that is not sure).
    #[inline]
    fn usable(&mut self) -> Result<(), QueueError> {
        self.error.check()?;
        // Both cursors where the queue left them, in one test.
        let moved =
            (self.next_avail_idx ^ self.avail_cursor) | (self.next_used_idx ^ self.used_cursor);
        if moved == 0 && self.quick_valid() {
            return Ok(());
        }
        self.usable_slow()
    }

    /// [`usable`](Self::usable) when a cursor moved or `quick_valid` is not sure: follow the
    /// cursors, then the full test.
    #[cold]
    #[inline(never)]
    fn usable_slow(&mut self) -> Result<(), QueueError> {
        self.cursors_moved();
        if self.quick_valid() {
            return Ok(());
        }
        self.revalidate()
    }

    /// A sufficient condition for [`is_valid`](Self::is_valid), checked on every call with few
    /// branches and no copy of the configuration kept to compare with: ready, a power of two no
    /// larger than `max_size` (and the capacity), every address aligned and in `1..=2⁶³`,
    /// where no ring of a queue of ≤ 32768 descriptors (at most 2¹⁹ bytes each) can wrap. A
    /// configuration it refuses is judged by `is_valid` (only rings above 2⁶³ get that far and
    /// pass).
    #[inline]
    fn quick_valid(&self) -> bool {
        let (d, a, u) = (
            self.desc_table_addr.0,
            self.avail_ring_addr.0,
            self.used_ring_addr.0,
        );
        // Each address aligned (§2.7 table: 16, 2, 4) and in `1..=2^63`.
        let bad = ring_addr_bad(d, layout::DESC_ALIGN)
            | ring_addr_bad(a, layout::AVAIL_ALIGN)
            | ring_addr_bad(u, layout::USED_ALIGN);
        let s = self.size;
        // `s - 1 < max_size` (wrapping) is `1 <= s <= max_size`; then `s & (s - 1) == 0` is a
        // power of two.
        let m = s.wrapping_sub(1);
        bad == 0
            && self.ready
            && m < self.max_size
            && s & m == 0
            // Folded away for the default bitmap, which holds every head.
            && (Self::CAPACITY == MAX_QUEUE_SIZE || s <= Self::CAPACITY)
    }

    /// The owner moved a public cursor (a restore by hand): what the queue derived from the old
    /// values no longer holds. A moved `next_avail_idx` drops what was known about `avail.idx`
    /// (it is read afresh); a moved `next_used_idx` counts everything before it as published
    /// and signalled, so the next completion publishes from there and the next interrupt
    /// decision covers exactly what is published after the move.
    #[cold]
    #[inline(never)]
    fn cursors_moved(&mut self) {
        if self.next_avail_idx != self.avail_cursor {
            self.avail_cursor = self.next_avail_idx;
            self.shadow_avail_idx = self.next_avail_idx;
        }
        if self.next_used_idx != self.used_cursor {
            self.used_cursor = self.next_used_idx;
            self.published_used_idx = self.next_used_idx;
            self.notify_base = self.next_used_idx;
            self.unsignalled = 0;
        }
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

    /// The address `offset` bytes into the available ring, for an `offset` inside it (at most
    /// [`avail_ring_bytes`](layout::avail_ring_bytes)`(size)`). Called only after
    /// [`usable`](Self::usable), which proved the whole ring does not wrap (`quick_valid`: an
    /// address of at most 2⁶³ and a ring of at most 2¹⁹ bytes; otherwise `is_valid`'s
    /// `checked_end`), so the sum cannot wrap and is not checked again on every access. (The
    /// accessor checks the range of every access it makes anyway.)
    #[inline]
    fn avail_addr(&self, offset: u64) -> GuestAddress {
        GuestAddress(self.avail_ring_addr.0.wrapping_add(offset))
    }

    /// [`avail_addr`](Self::avail_addr) for the used ring (`offset` at most
    /// [`used_ring_bytes`](layout::used_ring_bytes)`(size)`).
    #[inline]
    fn used_addr(&self, offset: u64) -> GuestAddress {
        GuestAddress(self.used_ring_addr.0.wrapping_add(offset))
    }

    /// Whether the driver has made chains available beyond `next_avail_idx`, reading
    /// `avail.idx` only when the last value read is used up. Fatal if the index ran more than
    /// `size` ahead (H1). (A `bool`, not the count: every caller only compares with 0, and one
    /// result type for `pending` and `rearm` lets an error pass through without a copy.)
    #[inline(always)]
    fn pending<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<bool, QueueError> {
        // Entries seen at the last read and not yet taken. The cursor never passes the shadow
        // (a pop takes an entry only when one is known), and `usable` reset the shadow if the
        // owner moved the cursor, so a difference is entries the driver published.
        let known = self.shadow_avail_idx.wrapping_sub(self.next_avail_idx);
        if known != 0 {
            return Ok(true);
        }
        let idx = match mem.load_u16(self.avail_addr(layout::IDX_OFFSET)) {
            Ok(v) => v,
            Err(e) => return Err(self.error.set(e.into())),
        };
        // Acquire: the ring entries and descriptors published before `avail.idx` are read only
        // after it (pairs with the driver's write barrier before updating `avail.idx`).
        mem.fence(Barrier::AvailRead);
        let pending = idx.wrapping_sub(self.next_avail_idx);
        if pending > self.size {
            return Err(self.error.set(QueueError::AvailIdxOverrun {
                avail_idx: idx,
                next_avail: self.next_avail_idx,
            }));
        }
        self.shadow_avail_idx = idx;
        Ok(pending != 0)
    }

    /// The ring looked empty to `pop_avail`: make it safe for the device to idle.
    ///
    /// With kicks enabled and EVENT_IDX, the device is about to sleep on the `avail_event` its
    /// last pop stored, and that store may still sit in this CPU's store buffer while the read
    /// of `avail.idx` that found nothing was served from before the driver's latest publish.
    /// The driver (store `avail.idx`, full fence, read `avail_event`, SPLIT-61) can then read
    /// the old `avail_event`, skip the kick, and the queue stalls for good. So the empty pop
    /// re-arms: store `avail_event = next_avail_idx`, full fence, read `avail.idx` again
    /// (SPLIT-62); `true` if work arrived.
    ///
    /// Chosen over writing `avail_event` only in
    /// [`enable_notification`](Self::enable_notification) because the seed loop (`while let
    /// Some(c) = q.pop_avail(mem)? { .. }`, then sleep) never calls that, and must still be
    /// safe by construction. The cost is one store, one fence and one load per idle transition
    /// of that loop, and nothing in [`drain`](Self::drain), which disables kicks while it works
    /// and re-arms through `enable_notification` instead. Without EVENT_IDX, enabled kicks leave
    /// the used flags at 0, a value the device never rewrites here, so there is no store to
    /// order and nothing to do.
    #[inline(never)]
    fn rearm<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<bool, QueueError> {
        if !self.kicks_enabled || !self.features.contains(Features::EVENT_IDX) {
            return Ok(false);
        }
        self.store_avail_event(mem, self.next_avail_idx)?;
        // Full fence (store→load): `avail_event` is visible before `avail.idx` is read again.
        mem.fence(Barrier::KickRecheck);
        self.pending(mem)
    }

    /// Whether the driver has made chains available that `pop_avail` has not taken yet.
    pub fn has_pending<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<bool, QueueError> {
        self.usable()?;
        self.pending(mem)
    }

    /// Take the next chain the driver made available (§2.7.13, device side).
    ///
    /// `Ok(None)` means nothing new. The returned chain's head is in flight until
    /// [`push_used`](Self::push_used). Reads `avail.idx` once per batch of available chains and
    /// one ring entry per chain; the descriptors are read when the chain is walked.
    ///
    /// Safe to idle on: when kicks are enabled under EVENT_IDX, an `Ok(None)` has stored
    /// `avail_event`, issued a full fence and read `avail.idx` again (SPLIT-61, SPLIT-62), so
    /// the loop `while let Some(c) = q.pop_avail(mem)? { .. }` followed by waiting for the next
    /// kick never sleeps on work the driver will not kick for.
    ///
    /// Fatal errors (see [`QueueError`]) are raised before the offending entry is consumed.
    #[inline(always)]
    pub fn pop_avail<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<Option<DescriptorChain>, QueueError> {
        plant_panic!("split", self.next_avail_idx == 0x5eed);
        self.usable()?;
        if !self.pending(mem)? && !self.rearm(mem)? {
            return Ok(None);
        }
        if self.in_flight.count() >= self.size {
            return Err(self.error.set(QueueError::TooManyInFlight));
        }
        // `size` is a non-zero power of two (`usable` checked), so masking is the modulo.
        let slot = self.next_avail_idx & self.size.wrapping_sub(1);
        let entry = self.avail_addr(ring_offset(slot, 2));
        let head = match mem.load_u16(entry) {
            Ok(h) => h,
            Err(e) => return Err(self.error.set(e.into())),
        };
        if head >= self.size {
            return Err(self.error.set(QueueError::HeadOutOfRange { head }));
        }
        // One bitmap access tests and sets the head (`head < size <= CAPACITY`, so `false` is
        // a head already in flight).
        if !self.in_flight.insert(u32::from(head)) {
            return Err(self.error.set(QueueError::DuplicateHead { head }));
        }
        let next = self.next_avail_idx.wrapping_add(1);
        if self.kicks_enabled && self.features.contains(Features::EVENT_IDX) {
            // Keep `avail_event` current (SPLIT-61): the driver kicks again only once it
            // publishes past what the device has taken. A failure takes the head back out of
            // the in-flight set, so nothing is consumed and the entry stays in the ring.
            if let Err(e) = self.store_avail_event(mem, next) {
                self.in_flight.remove(u32::from(head));
                return Err(e);
            }
        }
        self.next_avail_idx = next;
        self.avail_cursor = next;
        trace!("virtq: popped head {}", head);
        Ok(Some(DescriptorChain::new(
            head,
            self.size,
            self.features.contains(Features::INDIRECT_DESC),
            self.desc_table_addr,
        )))
    }

    /// Write one used element without publishing it: the driver sees it only after
    /// [`publish_used`](Self::publish_used). Use for batched completions.
    ///
    /// `bytes_written` is the number of bytes the device wrote into the chain's writable part
    /// (§2.7.8: never more than it wrote; 0 for a read-only chain). It is written as given: the
    /// queue knows a chain only by its head and does not walk it again at completion (that
    /// would read the descriptors a second time, and the guest may have changed them since),
    /// so it cannot clamp it. Take it from
    /// [`ChainWriter::bytes_written`](crate::io::ChainWriter::bytes_written), which never
    /// exceeds the chain's writable bytes.
    #[inline(always)]
    pub fn add_used<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        head_index: u16,
        bytes_written: u32,
    ) -> Result<(), QueueError> {
        self.usable()?;
        self.write_used(mem, head_index, bytes_written)
    }

    /// `add_used` after the entry check ([`usable`](Self::usable)), which the caller made.
    #[inline(always)]
    fn write_used<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        head_index: u16,
        bytes_written: u32,
    ) -> Result<(), QueueError> {
        if head_index >= self.size {
            return Err(QueueError::InvalidUsedHead { head: head_index });
        }
        // One bitmap access tests and clears the head; every failure below puts it back, so a
        // refused completion leaves it in flight.
        if !self.in_flight.remove(u32::from(head_index)) {
            return Err(QueueError::HeadNotInFlight { head: head_index });
        }
        let slot = self.next_used_idx & self.size.wrapping_sub(1);
        let addr = self.used_addr(ring_offset(slot, layout::USED_ELEM_SIZE));
        let elem = UsedElem {
            id: u32::from(head_index).into(),
            len: bytes_written.into(),
        };
        if let Err(e) = mem.write_obj(addr, &elem) {
            self.in_flight.insert(u32::from(head_index));
            return Err(self.error.set(e.into()));
        }
        self.next_used_idx = self.next_used_idx.wrapping_add(1);
        self.used_cursor = self.next_used_idx;
        Ok(())
    }

    /// Publish every used element added since the last publication: release fence, then one
    /// store of `used.idx` (§2.7.8.2). Returns how many elements were published.
    #[inline(always)]
    pub fn publish_used<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<u16, QueueError> {
        self.usable()?;
        self.store_used_idx(mem)
    }

    /// `publish_used` after the entry check ([`usable`](Self::usable)), which the caller made.
    #[inline(always)]
    fn store_used_idx<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<u16, QueueError> {
        let count = self.next_used_idx.wrapping_sub(self.published_used_idx);
        if count == 0 {
            return Ok(0);
        }
        // Release: the used elements and the buffer data the device wrote become visible
        // before the new `used.idx` (§2.7.8.2).
        mem.fence(Barrier::UsedPublish);
        if let Err(e) = mem.store_u16(self.used_addr(layout::IDX_OFFSET), self.next_used_idx) {
            return Err(self.error.set(e.into()));
        }
        self.published_used_idx = self.next_used_idx;
        self.unsignalled = self.unsignalled.saturating_add(u32::from(count));
        Ok(count)
    }

    /// Complete one chain: write its used element, then publish `used.idx` (§2.7.8).
    ///
    /// Rejects `head_index >= size` and heads not in flight without writing anything.
    #[inline(always)]
    pub fn push_used<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        head_index: u16,
        bytes_written: u32,
    ) -> Result<(), QueueError> {
        // One entry check covers both steps: nothing between them changes the configuration,
        // and a failed write records its error and returns before `used.idx` is touched.
        self.usable()?;
        self.write_used(mem, head_index, bytes_written)?;
        self.store_used_idx(mem).map(|_| ())
    }

    /// The common entry check ([`usable`](Self::usable)) for callers in the crate that must
    /// know the queue will accept a completion before they change their own bookkeeping.
    pub(crate) fn check_usable(&mut self) -> Result<(), QueueError> {
        self.usable()
    }

    /// Retire `head` from the in-flight set without writing a used element (its completion is
    /// covered by an in-order batch element).
    pub(crate) fn retire(&mut self, head: u16) -> bool {
        self.in_flight.remove(u32::from(head))
    }

    /// Whether `head` is in flight.
    pub(crate) fn is_in_flight(&self, head: u16) -> bool {
        self.in_flight.contains(u32::from(head))
    }

    /// Write one used element for a whole in-order batch (§2.7.9): id `last_head`, length
    /// `len`, at the next used slot, and advance the used cursor by `count`. The caller has
    /// retired the other heads of the batch.
    pub(crate) fn add_used_batch<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        last_head: u16,
        len: u32,
        count: u16,
    ) -> Result<(), QueueError> {
        self.add_used(mem, last_head, len)?;
        // `add_used` advanced the cursor by one; the batch covers `count` entries.
        self.next_used_idx = self.next_used_idx.wrapping_add(count.saturating_sub(1));
        self.used_cursor = self.next_used_idx;
        Ok(())
    }

    /// Store `avail_event` (§2.7.10): "kick me when you publish the entry at `value`".
    fn store_avail_event<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        value: u16,
    ) -> Result<(), QueueError> {
        let at = self.used_addr(layout::avail_event_offset(self.size));
        mem.store_u16(at, value)
            .map_err(|e| self.error.set(e.into()))
    }

    fn store_used_flags<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        flags: UsedFlags,
    ) -> Result<(), QueueError> {
        mem.store_u16(self.used_ring_addr, flags.bits())
            .map_err(|e| self.error.set(e.into()))
    }

    /// Must the driver be sent a used-buffer notification now (§2.7.7.2)?
    ///
    /// Call after publishing one or a batch of used elements; the answer covers everything
    /// published since the previous call. With EVENT_IDX: whether `used_event` lies in the
    /// window of indices published (wrap-safe, [`need_event`]); avail flags are ignored.
    /// Without: whether the driver left `VIRTQ_AVAIL_F_NO_INTERRUPT` clear. A full fence
    /// separates the `used.idx` store from the read of the driver's suppression state
    /// (SPLIT-53), so a driver that re-enables interrupts concurrently is never missed.
    #[doc(alias = "vring_need_event")]
    pub fn needs_notification<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<bool, QueueError> {
        self.usable()?;
        let (old, new) = (self.notify_base, self.published_used_idx);
        let unsignalled = self.unsignalled;
        if unsignalled == 0 {
            return Ok(false);
        }
        self.notify_base = new;
        self.unsignalled = 0;
        // Full fence (store→load): `used.idx` must be visible to the driver before we read
        // `used_event` / the avail flags, or a driver that just re-enabled interrupts and saw
        // the old `used.idx` would sleep while we suppress (SPLIT-53).
        mem.fence(Barrier::NotifyCheck);
        if self.features.contains(Features::EVENT_IDX) {
            let at = self.avail_addr(layout::used_event_offset(self.size));
            let event = mem.load_u16(at).map_err(|e| self.error.set(e.into()))?;
            // More than 2^16 - 1 entries since the last answer: the window test cannot tell,
            // so notify.
            Ok(unsignalled > u32::from(u16::MAX) || need_event(event, new, old))
        } else {
            let flags = mem
                .load_u16(self.avail_ring_addr)
                .map_err(|e| self.error.set(e.into()))?;
            // Only bit 0 has a meaning (SPLIT-52); any other bits are ignored.
            Ok(!AvailFlags::from_bits_retain(flags).contains(AvailFlags::NO_INTERRUPT))
        }
    }

    /// Ask the driver not to send available-buffer notifications (§2.7.10): without EVENT_IDX
    /// sets `VIRTQ_USED_F_NO_NOTIFY`; with EVENT_IDX stops advancing `avail_event` (used flags
    /// stay 0, SPLIT-59). Notifications are a hint: the driver may still send some.
    pub fn disable_notification<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<(), QueueError> {
        self.usable()?;
        if !self.kicks_enabled {
            return Ok(());
        }
        self.kicks_enabled = false;
        if !self.features.contains(Features::EVENT_IDX) {
            self.store_used_flags(mem, UsedFlags::NO_NOTIFY)?;
        }
        Ok(())
    }

    /// Ask the driver for available-buffer notifications again, then re-check the ring
    /// (SPLIT-62). Returns `true` if chains are available: the device must keep draining
    /// instead of going to sleep, because the driver may have published them before it saw
    /// the re-enable and so will not kick for them.
    ///
    /// Without EVENT_IDX clears `VIRTQ_USED_F_NO_NOTIFY`; with EVENT_IDX writes
    /// `avail_event = next_avail_idx`. A full fence orders that store before the re-read of
    /// `avail.idx`.
    pub fn enable_notification<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<bool, QueueError> {
        self.usable()?;
        self.kicks_enabled = true;
        if self.features.contains(Features::EVENT_IDX) {
            self.store_avail_event(mem, self.next_avail_idx)?;
        } else {
            self.store_used_flags(mem, UsedFlags::empty())?;
        }
        // Full fence (store→load): the driver must be able to see the re-enable before we
        // look at `avail.idx` again, or work published in between would get no kick and we
        // would not see it either.
        mem.fence(Barrier::KickRecheck);
        self.pending(mem)
    }

    /// Whether the device currently asks for available-buffer notifications.
    pub const fn notifications_enabled(&self) -> bool {
        self.kicks_enabled
    }

    /// Process at most `budget` chains, then publish the completions once and decide the
    /// interrupt once: the drain loop a device runs on every kick (§2.7.13, §2.7.10).
    ///
    /// Kicks are disabled while draining. When the ring runs dry they are re-enabled and the
    /// ring re-checked, so work that raced in is processed rather than slept on. When the
    /// budget runs out first, kicks stay disabled and the report says `more`: the caller must
    /// schedule another call (a guest refilling as fast as the device consumes cannot starve
    /// the hypervisor, H17). A re-check that reports work costs one unit of `budget` like a
    /// chain, so the loop ends after at most `budget` units whatever the guest does (a guest
    /// that shows work and takes it back gets `more`, not a spinning hypervisor). On a broken
    /// queue this returns the sticky error in O(1).
    ///
    /// `handle` gets each chain and says what to do with it ([`Completion`]).
    #[inline]
    pub fn drain<M, F>(
        &mut self,
        mem: &M,
        budget: usize,
        mut handle: F,
    ) -> Result<DrainReport, QueueError>
    where
        M: GuestMemory + ?Sized,
        F: FnMut(DescriptorChain) -> Completion,
    {
        let mut chain = DescriptorChain::new(0, 0, false, GuestAddress(0));
        drain_loop(self, mem, budget, &mut chain, |c: &DescriptorChain| {
            handle(*c)
        })
    }
}

impl<M: GuestMemory + ?Sized, const W: usize> DrainRing<M, DescriptorChain> for Queue<W> {
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
    fn pop(&mut self, mem: &M, chain: &mut DescriptorChain) -> Result<bool, QueueError> {
        Ok(self.pop_avail(mem)?.map(|c| *chain = c).is_some())
    }
    #[inline(always)]
    fn complete(&mut self, mem: &M, chain: &DescriptorChain, len: u32) -> Result<(), QueueError> {
        self.add_used(mem, chain.head_index(), len)
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

/// Sizes that are refused instead of rounded.
impl Queue {
    /// A queue that accepts up to `max_size` descriptors, refusing a maximum that
    /// [`new`](Self::new) would change: 0, above 32768, or not a power of two (§2.7, SPLIT-01).
    pub const fn try_new(max_size: u16) -> Result<Self, crate::error::SizeError> {
        match check_split_size(max_size, MAX_QUEUE_SIZE) {
            Ok(()) => Ok(Self::new(max_size)),
            Err(e) => Err(e),
        }
    }
}

impl<const W: usize> Queue<W> {
    /// Set the queue size as the driver requests it (`QueueNum`), refusing instead of rounding
    /// what [`set_size`](Self::set_size) would change: 0, above `max_size`, or not a power of
    /// two (§4.2.2.2, SPLIT-01). On error the size is unchanged.
    pub fn try_set_size(&mut self, requested: u16) -> Result<(), crate::error::SizeError> {
        check_split_size(requested, self.max_size)?;
        self.size = requested;
        Ok(())
    }
}

/// A split-ring size: 1 to `max`, a power of two.
const fn check_split_size(size: u16, max: u16) -> Result<(), crate::error::SizeError> {
    use crate::error::SizeError;
    if size == 0 {
        Err(SizeError::Zero)
    } else if size > max {
        Err(SizeError::TooLarge { size, max })
    } else if !size.is_power_of_two() {
        Err(SizeError::NotPowerOfTwo { size })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The queue's own state is a fixed 96 bytes on a 64-bit target (public configuration and
    /// cursors 41, the sticky error 32, bookkeeping and the in-flight count 23), and the
    /// in-flight bitmap is what the caller sized: one bit per head.
    #[test]
    fn footprint_is_the_core_plus_the_bitmap_the_caller_sized() {
        let core = size_of::<Queue<1>>() - 8;
        assert!(core <= 96, "core {core}");
        assert_eq!(size_of::<Queue<4>>(), core + 32);
        assert_eq!(size_of::<Queue>(), core + 4096);
        let q = Queue::<{ in_flight_words(256) }>::with_capacity(1024);
        assert_eq!(
            (
                q.max_size,
                Queue::<4>::CAPACITY,
                Queue::<SPLIT_WORDS>::CAPACITY
            ),
            (256, 256, 32768)
        );
        assert_eq!(in_flight_words(0), 1);
        assert_eq!(in_flight_words(65), 2);
    }

    /// `quick_valid` never accepts what `is_valid` refuses, and refuses a valid configuration
    /// only with a ring above 2⁶³.
    #[test]
    fn quick_validity_implies_validity() {
        let addrs = [
            0u64,
            1,
            2,
            4,
            8,
            16,
            0x1000,
            0x1002,
            0x1004,
            1 << 63,
            (1 << 63) + 16,
            u64::MAX - (1 << 20),
            u64::MAX - (1 << 20) + 16,
            u64::MAX - 15,
            u64::MAX,
        ];
        // Every triple natively; under Miri (which interprets each step) every fourth address
        // for the descriptor table.
        let step = if cfg!(miri) { 4 } else { 1 };
        // One queue, its public fields set for each case (nothing else takes part).
        let mut q = Queue::new(32768);
        for ready in [false, true] {
            for (size, max) in [
                (0u16, 256u16),
                (256, 256),
                (128, 256),
                (512, 256),
                (3, 256),
                (32768, 32768),
            ] {
                for &d in addrs.iter().step_by(step) {
                    for &a in &addrs {
                        for &u in &addrs {
                            q.max_size = max;
                            (q.ready, q.size) = (ready, size);
                            q.desc_table_addr = GuestAddress(d);
                            q.avail_ring_addr = GuestAddress(a);
                            q.used_ring_addr = GuestAddress(u);
                            if q.quick_valid() {
                                assert!(q.is_valid(), "{q:?}");
                            } else if q.is_valid() {
                                assert!([d, a, u].iter().any(|&x| x > 1 << 63), "{q:?}");
                            }
                        }
                    }
                }
            }
        }
        // A queue whose size outgrew its bitmap (the public `max_size` raised by hand) is not
        // valid.
        let mut q = Queue::<1>::with_capacity(64);
        q.max_size = 128;
        (q.ready, q.size) = (true, 128);
        (q.desc_table_addr, q.avail_ring_addr, q.used_ring_addr) = (
            GuestAddress(0x1000),
            GuestAddress(0x2000),
            GuestAddress(0x3000),
        );
        assert!(!q.quick_valid() && !q.is_valid());
        q.size = 64;
        assert!(q.quick_valid() && q.is_valid());
    }

    #[test]
    fn floor_pow2_matches_definition() {
        assert_eq!(floor_pow2(0), 0);
        // Every value natively; a stride under Miri (which interprets each step).
        let step = if cfg!(miri) { 61 } else { 1 };
        for v in (1..=u16::MAX).step_by(step).chain([u16::MAX, 32768, 32767]) {
            let p = floor_pow2(v);
            assert!(p.is_power_of_two() && p <= v && u32::from(p) * 2 > u32::from(v));
        }
    }
}
