//! The split virtqueue, device side (VIRTIO 1.4 §2.7).
//!
//! # Memory ordering
//!
//! * `pop_avail` reads `avail.idx` with a single-copy-atomic 16-bit load, then issues an
//!   *acquire* fence before reading ring entries and descriptors (pairs with the driver's write
//!   barrier before it publishes `avail.idx`, §2.7.13.3.1).
//! * `push_used` writes the used element, then a *release* fence, then stores `used.idx`
//!   (§2.7.8.2: the element and the buffer data are visible before the index).
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

use core::fmt;
use core::sync::atomic::{Ordering, fence};

use crate::chain::{ChainError, DescriptorChain};
use crate::error::QueueError;
use crate::memory::{GuestAddress, GuestMemory, GuestMemoryExt};
use crate::wire::{Features, MAX_QUEUE_SIZE, UsedElem, split_layout as layout};

const IN_FLIGHT_WORDS: usize = MAX_QUEUE_SIZE as usize / 64;

/// One bit per descriptor head: set from `pop_avail` until `push_used`.
#[derive(Clone)]
struct InFlight {
    bits: [u64; IN_FLIGHT_WORDS],
    count: u16,
}

impl InFlight {
    const fn new() -> Self {
        Self {
            bits: [0; IN_FLIGHT_WORDS],
            count: 0,
        }
    }

    /// (word, mask) of `head`; `head < 32768` keeps the word index in bounds.
    #[inline]
    fn slot(head: u16) -> (usize, u64) {
        (usize::from(head / 64), 1u64 << (head % 64))
    }

    #[inline]
    fn contains(&self, head: u16) -> bool {
        let (w, m) = Self::slot(head);
        self.bits.get(w).is_some_and(|b| b & m != 0)
    }

    /// Mark `head` in flight; `false` if it already was (or is out of range).
    #[inline]
    fn insert(&mut self, head: u16) -> bool {
        let (w, m) = Self::slot(head);
        match self.bits.get_mut(w) {
            Some(b) if *b & m == 0 => {
                *b |= m;
                self.count = self.count.saturating_add(1);
                true
            }
            _ => false,
        }
    }

    /// Clear `head`; `false` if it was not in flight.
    #[inline]
    fn remove(&mut self, head: u16) -> bool {
        let (w, m) = Self::slot(head);
        match self.bits.get_mut(w) {
            Some(b) if *b & m != 0 => {
                *b &= !m;
                self.count = self.count.saturating_sub(1);
                true
            }
            _ => false,
        }
    }
}

/// The device side of one split virtqueue (§2.7).
///
/// The public fields are the queue's configuration as a transport programs it (§4.2.2
/// QueueNumMax, QueueNum, QueueReady, QueueDesc/Driver/Device) and the device's two cursors.
/// Everything the guest controls is read through [`GuestMemory`] and validated on every use.
///
/// `Queue` tracks which heads are in flight (a 4 KiB bitmap), so a head made available twice,
/// or completed twice, is caught in O(1) without allocation.
#[derive(Clone)]
pub struct Queue {
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
    error: Option<QueueError>,
    /// `avail.idx` as last read: chains between `next_avail_idx` and this are known to be
    /// available without reading the index again.
    shadow_avail_idx: u16,
    /// `used.idx` as last published to the guest.
    published_used_idx: u16,
    in_flight: InFlight,
}

impl fmt::Debug for Queue {
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
            .field("error", &self.error)
            .field("in_flight", &self.in_flight.count)
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

impl Queue {
    /// A queue that accepts up to `max_size` descriptors (clamped to a power of two ≤ 32768).
    /// `size` starts at `max_size`; everything else is zero and the queue is not ready.
    pub const fn new(max_size: u16) -> Self {
        let max = floor_pow2(if max_size > MAX_QUEUE_SIZE {
            MAX_QUEUE_SIZE
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
            error: None,
            shadow_avail_idx: 0,
            published_used_idx: 0,
            in_flight: InFlight::new(),
        }
    }

    /// Set the queue size as the driver requests it (`QueueNum`), clamped to `max_size` and
    /// rounded down to a power of two (0 stays 0, and a queue of size 0 is never valid).
    ///
    /// A transport that must *refuse* an invalid size instead (§4.2.2.2) checks the requested
    /// value itself before calling this.
    pub fn set_size(&mut self, requested: u16) {
        self.size = floor_pow2(requested.min(self.max_size));
    }

    /// Whether the queue may be used: ready, a non-zero power-of-two size ≤ `max_size`, every
    /// ring address set (non-zero) and aligned (§2.7 alignment table), and no ring wrapping
    /// around the 64-bit address space. Whether the rings are guest RAM is checked by
    /// [`check_rings`](Self::check_rings), which needs the memory.
    pub fn is_valid(&self) -> bool {
        let s = self.size;
        self.ready
            && s != 0
            && s <= self.max_size
            && s <= MAX_QUEUE_SIZE
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

    /// Check that all three rings lie entirely in guest RAM (SPLIT-07). A transport calls this
    /// when the driver writes `QueueReady = 1` and refuses the queue on error (H9).
    pub fn check_rings<M: GuestMemory + ?Sized>(&self, mem: &M) -> Result<(), QueueError> {
        if !self.is_valid() {
            return Err(QueueError::NotReady);
        }
        let s = self.size;
        mem.check_range(self.desc_table_addr, layout::desc_table_bytes(s))?;
        mem.check_range(self.avail_ring_addr, layout::avail_ring_bytes(s))?;
        mem.check_range(self.used_ring_addr, layout::used_ring_bytes(s))?;
        Ok(())
    }

    /// Return the queue to its power-on state (device reset, Status = 0, §2.4): not ready, size
    /// `max_size`, addresses and cursors zero, features and the sticky error cleared, nothing
    /// in flight. Chains popped before the reset can no longer be completed.
    pub fn reset(&mut self) {
        *self = Self::new(self.max_size);
    }

    /// The fatal error that stopped this queue, if any.
    pub const fn error(&self) -> Option<QueueError> {
        self.error
    }

    /// Whether a fatal error stopped this queue.
    pub const fn is_broken(&self) -> bool {
        self.error.is_some()
    }

    /// Stop the queue because of a malformed chain the device will not complete (escalation
    /// (b)); later calls return `QueueError::Chain(e)` until reset.
    pub fn mark_broken(&mut self, e: ChainError) {
        self.fail(QueueError::Chain(e));
    }

    /// Number of chains popped and not yet completed.
    pub const fn in_flight(&self) -> u16 {
        self.in_flight.count
    }

    /// Record a fatal error and return it.
    #[cold]
    fn fail(&mut self, e: QueueError) -> QueueError {
        if self.error.is_none() {
            warn!("virtq: queue stopped: {}", e);
            self.error = Some(e);
        }
        e
    }

    /// Common entry check: O(1) for a broken or unconfigured queue.
    #[inline]
    fn usable(&self) -> Result<(), QueueError> {
        match self.error {
            Some(e) => Err(e),
            None if !self.is_valid() => Err(QueueError::NotReady),
            None => Ok(()),
        }
    }

    #[inline]
    fn avail_addr(&self, offset: u64) -> Result<GuestAddress, QueueError> {
        self.avail_ring_addr
            .checked_add(offset)
            .ok_or(QueueError::NotReady)
    }

    #[inline]
    fn used_addr(&self, offset: u64) -> Result<GuestAddress, QueueError> {
        self.used_ring_addr
            .checked_add(offset)
            .ok_or(QueueError::NotReady)
    }

    /// Number of chains the driver has made available beyond `next_avail_idx`, reading
    /// `avail.idx` only when the last value read is used up. Fatal if the index ran more than
    /// `size` ahead (H1).
    #[inline]
    fn pending<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<u16, QueueError> {
        let cached = self.shadow_avail_idx.wrapping_sub(self.next_avail_idx);
        if cached != 0 && cached <= self.size {
            return Ok(cached);
        }
        let idx = match mem.load_u16(self.avail_addr(layout::IDX_OFFSET)?) {
            Ok(v) => v,
            Err(e) => return Err(self.fail(e.into())),
        };
        // Acquire: the ring entries and descriptors published before `avail.idx` are read only
        // after it (pairs with the driver's write barrier before updating `avail.idx`).
        fence(Ordering::Acquire);
        let pending = idx.wrapping_sub(self.next_avail_idx);
        if pending > self.size {
            return Err(self.fail(QueueError::AvailIdxOverrun {
                avail_idx: idx,
                next_avail: self.next_avail_idx,
            }));
        }
        self.shadow_avail_idx = idx;
        Ok(pending)
    }

    /// Whether the driver has made chains available that `pop_avail` has not taken yet.
    pub fn has_pending<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<bool, QueueError> {
        self.usable()?;
        Ok(self.pending(mem)? != 0)
    }

    /// Take the next chain the driver made available (§2.7.13, device side).
    ///
    /// `Ok(None)` means nothing new. The returned chain's head is in flight until
    /// [`push_used`](Self::push_used). Reads `avail.idx` once per batch of available chains and
    /// one ring entry per chain; the descriptors are read when the chain is walked.
    ///
    /// Fatal errors (see [`QueueError`]) are raised before the offending entry is consumed.
    pub fn pop_avail<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<Option<DescriptorChain>, QueueError> {
        self.usable()?;
        if self.pending(mem)? == 0 {
            return Ok(None);
        }
        if self.in_flight.count >= self.size {
            return Err(self.fail(QueueError::TooManyInFlight));
        }
        // `size` is a non-zero power of two (`usable` checked), so masking is the modulo.
        let slot = self.next_avail_idx & self.size.wrapping_sub(1);
        let entry = self.avail_addr(ring_offset(slot, 2))?;
        let head = match mem.load_u16(entry) {
            Ok(h) => h,
            Err(e) => return Err(self.fail(e.into())),
        };
        if head >= self.size {
            return Err(self.fail(QueueError::HeadOutOfRange { head }));
        }
        if !self.in_flight.insert(head) {
            return Err(self.fail(QueueError::DuplicateHead { head }));
        }
        self.next_avail_idx = self.next_avail_idx.wrapping_add(1);
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
    /// (§2.7.8: never more than it wrote; 0 for a read-only chain).
    pub fn add_used<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        head_index: u16,
        bytes_written: u32,
    ) -> Result<(), QueueError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if !self.is_valid() {
            return Err(QueueError::NotReady);
        }
        if head_index >= self.size {
            return Err(QueueError::InvalidUsedHead { head: head_index });
        }
        if !self.in_flight.contains(head_index) {
            return Err(QueueError::HeadNotInFlight { head: head_index });
        }
        let slot = self.next_used_idx & self.size.wrapping_sub(1);
        let addr = self.used_addr(ring_offset(slot, layout::USED_ELEM_SIZE))?;
        let elem = UsedElem {
            id: u32::from(head_index).into(),
            len: bytes_written.into(),
        };
        if let Err(e) = mem.write_obj(addr, &elem) {
            return Err(self.fail(e.into()));
        }
        self.in_flight.remove(head_index);
        self.next_used_idx = self.next_used_idx.wrapping_add(1);
        Ok(())
    }

    /// Publish every used element added since the last publication: release fence, then one
    /// store of `used.idx` (§2.7.8.2). Returns how many elements were published.
    pub fn publish_used<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<u16, QueueError> {
        self.usable()?;
        let count = self.next_used_idx.wrapping_sub(self.published_used_idx);
        if count == 0 {
            return Ok(0);
        }
        // Release: the used elements and the buffer data the device wrote become visible
        // before the new `used.idx` (§2.7.8.2).
        fence(Ordering::Release);
        if let Err(e) = mem.store_u16(self.used_addr(layout::IDX_OFFSET)?, self.next_used_idx) {
            return Err(self.fail(e.into()));
        }
        self.published_used_idx = self.next_used_idx;
        Ok(count)
    }

    /// Complete one chain: write its used element, then publish `used.idx` (§2.7.8).
    ///
    /// Rejects `head_index >= size` and heads not in flight without writing anything.
    pub fn push_used<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        head_index: u16,
        bytes_written: u32,
    ) -> Result<(), QueueError> {
        self.add_used(mem, head_index, bytes_written)?;
        self.publish_used(mem).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_pow2_matches_definition() {
        assert_eq!(floor_pow2(0), 0);
        for v in 1..=u16::MAX {
            let p = floor_pow2(v);
            assert!(p.is_power_of_two() && p <= v && u32::from(p) * 2 > u32::from(v));
        }
    }

    #[test]
    fn in_flight_bitmap_counts() {
        let mut f = InFlight::new();
        assert!(f.insert(0) && f.insert(32767) && !f.insert(0));
        assert_eq!(f.count, 2);
        assert!(f.remove(0) && !f.remove(0) && !f.contains(0) && f.contains(32767));
        assert!(!f.insert(40000) && !f.remove(40000));
        assert_eq!(f.count, 1);
    }
}
