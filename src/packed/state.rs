//! Save and restore of a packed queue and of the chains a device holds (see
//! [`crate::snapshot`] for the format).
//!
//! A packed chain's descriptors do not stay in the ring while it is in flight: a used
//! descriptor of a chain completed out of order may overwrite them (§2.8.6). So the queue's
//! state holds the chains' tokens and descriptor count, and a device that holds chains saves
//! each one itself with [`PackedChain::save_into`] (its Buffer ID, ring position, descriptor
//! count and the validated buffers copied at pop). After a restore,
//! [`PackedQueue::readopt_into`] checks the saved chain against the restored queue and
//! re-validates every buffer against guest memory before the device may walk or complete it.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::PackedQueue;
use super::chain::{ChainHead, PackedBody, PackedChain, PackedTail};
use super::event::linear;
use super::layout::{self, Pos};
use crate::chain::{ChainBudget, ChainError, Descriptor};
use crate::error::{QueueError, Sticky};
use crate::in_flight::InFlight;
use crate::memory::{GuestAddress, GuestMemory};
use crate::snapshot::{
    ErrorCode, HEADER_LEN, Snapshot, StateError, StateField, StateKind, bitmap_words, flag, open,
    state_len, write_queue_state,
};
use crate::wire::{DescFlags, Features, MAX_QUEUE_SIZE, RingEventFlags};

/// The field block of a packed queue's state, after the
/// [`Header`](crate::snapshot::Header) and before the in-flight token bitmap
/// (`8 * ceil(max_size / 64)` bytes).
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PackedFields {
    /// `max_size` of the saved queue (sizes the token bitmap).
    pub max_size: U16,
    /// `size`.
    pub size: U16,
    /// `ready` (0 or 1).
    pub ready: u8,
    /// Whether the device asked for kicks (0 or 1).
    pub kicks_enabled: u8,
    /// `avail_wrap_counter` (0 or 1).
    pub avail_wrap_counter: u8,
    /// `used_wrap_counter` (0 or 1).
    pub used_wrap_counter: u8,
    /// `desc_ring_addr`.
    pub desc_ring_addr: U64,
    /// `driver_event_addr`.
    pub driver_event_addr: U64,
    /// `device_event_addr`.
    pub device_event_addr: U64,
    /// `features` (INDIRECT_DESC, EVENT_IDX, IN_ORDER bits only).
    pub features: U64,
    /// `next_avail_idx`.
    pub next_avail_idx: U16,
    /// `next_used_idx`.
    pub next_used_idx: U16,
    /// Ring descriptors in flight.
    pub in_flight_descs: U16,
    /// Chains in flight (the token bitmap's population).
    pub in_flight_chains: U16,
    /// Slot of the held (added, unpublished) first used descriptor.
    pub held_slot: U16,
    /// Its flags word, stored at publication.
    pub held_flags: U16,
    /// Whether a used descriptor is held (0 or 1).
    pub has_held: u8,
    /// The device event flags last stored: 0 none since reset, 1 ENABLE, 2 DISABLE, 3 DESC.
    pub device_event_flags: u8,
    /// Whether an interrupt decision was made since reset (0 or 1).
    pub has_signalled: u8,
    /// Wrap counter of the position at that decision (0 or 1).
    pub signalled_wrap: u8,
    /// Slot of the position at that decision.
    pub signalled_slot: U16,
    /// Slot of the used position last published.
    pub published_slot: U16,
    /// Its wrap counter (0 or 1).
    pub published_wrap: u8,
    /// Zero.
    pub reserved: u8,
    /// Used descriptors added since the last publication.
    pub unpublished: U16,
    /// Used-cursor positions those cover.
    pub unpublished_moved: U32,
    /// Used-cursor positions published since the last interrupt decision.
    pub unsignalled_moved: U32,
    /// The sticky error.
    pub error: ErrorCode,
}

debug_fields!(PackedFields {
    max_size,
    size,
    ready,
    kicks_enabled,
    avail_wrap_counter,
    used_wrap_counter,
    desc_ring_addr,
    driver_event_addr,
    device_event_addr,
    features,
    next_avail_idx,
    next_used_idx,
    in_flight_descs,
    in_flight_chains,
    held_slot,
    held_flags,
    has_held,
    device_event_flags,
    has_signalled,
    signalled_wrap,
    signalled_slot,
    published_slot,
    published_wrap,
    reserved,
    unpublished,
    unpublished_moved,
    unsignalled_moved,
    error
});

const FIELDS_LEN: usize = core::mem::size_of::<PackedFields>();

/// The largest packed queue state: a queue of 32768.
pub const PACKED_STATE_MAX: usize = HEADER_LEN + FIELDS_LEN + 8 * bitmap_words(MAX_QUEUE_SIZE);

/// A packed queue's saved state in a fixed buffer ([`PackedQueue::save`]).
pub type PackedQueueSnapshot = Snapshot<PACKED_STATE_MAX>;

const QUEUE_FEATURES: Features = Features::INDIRECT_DESC
    .union(Features::EVENT_IDX)
    .union(Features::IN_ORDER);

fn event_code(f: Option<RingEventFlags>) -> u8 {
    match f {
        None => 0,
        Some(RingEventFlags::Enable) => 1,
        Some(RingEventFlags::Disable) => 2,
        Some(RingEventFlags::Desc) => 3,
        Some(RingEventFlags::Reserved) => 4,
    }
}

fn event_decode(v: u8) -> Result<Option<RingEventFlags>, StateError> {
    Ok(match v {
        0 => None,
        1 => Some(RingEventFlags::Enable),
        2 => Some(RingEventFlags::Disable),
        3 => Some(RingEventFlags::Desc),
        _ => return Err(StateError::invalid(StateField::Kicks)),
    })
}

/// Distance from `from` to `to` on the cycle of `2 * size` positions.
fn distance(from: Pos, to: Pos, size: u16) -> u32 {
    let cycle = u32::from(size).saturating_mul(2);
    linear(to, size)
        .saturating_add(cycle)
        .saturating_sub(linear(from, size))
        .checked_rem(cycle)
        .unwrap_or(0)
}

impl PackedQueue {
    /// Bytes [`save_into`](Self::save_into) writes for this queue: 16 + 96 plus one bit per
    /// possible chain token (`max_size`), rounded up to 8 bytes.
    pub const fn state_len(&self) -> usize {
        state_len(FIELDS_LEN, self.max_size)
    }

    /// Save the queue's whole state into `out`: configuration, cursors and wrap counters, the
    /// chains in flight (tokens and descriptor count), the publication and interrupt
    /// bookkeeping, the device event shadow and the sticky error. Returns the length written.
    /// The chains themselves are saved by the device that holds them
    /// ([`PackedChain::save_into`]).
    pub fn save_into(&self, out: &mut [u8]) -> Result<usize, StateError> {
        if (self.next_used_idx, self.used_wrap_counter) != self.used_cursor {
            // The owner moved the used cursor since the last call: save what the next call
            // would see.
            let mut q = self.clone();
            q.follow_used_cursor();
            return q.save_into(out);
        }
        let (held_slot, held_flags) = self.held.unwrap_or((0, 0));
        let (signalled_slot, signalled_wrap) = self.signalled.unwrap_or((0, false));
        let fields = PackedFields {
            max_size: U16::new(self.max_size),
            size: U16::new(self.size),
            ready: u8::from(self.ready),
            kicks_enabled: u8::from(self.kicks_enabled),
            avail_wrap_counter: u8::from(self.avail_wrap_counter),
            used_wrap_counter: u8::from(self.used_wrap_counter),
            desc_ring_addr: U64::new(self.desc_ring_addr.0),
            driver_event_addr: U64::new(self.driver_event_addr.0),
            device_event_addr: U64::new(self.device_event_addr.0),
            features: U64::new(self.features.bits()),
            next_avail_idx: U16::new(self.next_avail_idx),
            next_used_idx: U16::new(self.next_used_idx),
            in_flight_descs: U16::new(self.in_flight_descs),
            in_flight_chains: U16::new(self.in_flight.count()),
            held_slot: U16::new(held_slot),
            held_flags: U16::new(held_flags),
            has_held: u8::from(self.held.is_some()),
            device_event_flags: event_code(self.device_event_flags),
            has_signalled: u8::from(self.signalled.is_some()),
            signalled_wrap: u8::from(signalled_wrap),
            signalled_slot: U16::new(signalled_slot),
            published_slot: U16::new(self.published.0),
            published_wrap: u8::from(self.published.1),
            reserved: 0,
            unpublished: U16::new(self.unpublished),
            unpublished_moved: U32::new(self.unpublished_moved),
            unsignalled_moved: U32::new(self.unsignalled_moved),
            error: ErrorCode::encode(self.error.get()),
        };
        write_queue_state(out, StateKind::Packed, &fields, self.max_size, |w| {
            self.in_flight.write_words(w);
        })
    }

    /// [`save_into`](Self::save_into) a fixed buffer large enough for any packed queue.
    pub fn save(&self) -> PackedQueueSnapshot {
        Snapshot::fill(|b| self.save_into(b))
    }

    /// Restore a state [`save_into`](Self::save_into) wrote, after checking every field
    /// against this queue's `max_size` and against guest memory; on any error nothing changes.
    ///
    /// Checked: the header; `size` at most this queue's `max_size` (any value, PACKED-02; 0
    /// only on a queue that is not ready); flag bytes 0 or 1; only INDIRECT_DESC, EVENT_IDX and
    /// IN_ORDER among the features; cursors below `size`; for a ready queue, the areas aligned
    /// and in guest RAM; chain tokens below `size`, their count as stated, at least one and at
    /// most `size` descriptors per chain in flight, and the read cursor exactly that many
    /// positions past the used cursor (both wrap counters included); the held used descriptor,
    /// publication and interrupt bookkeeping consistent with the cursors; the sticky error one a
    /// queue can stop with. In guest memory (ready, unbroken queues): the slot the device reads
    /// next does not hold a used descriptor of the lap it is about to read (which would put the
    /// used cursor ahead of the read cursor).
    ///
    /// Chains popped before the save are re-obtained with
    /// [`readopt_into`](Self::readopt_into); chains of this queue from before the restore
    /// cannot be completed on it. Call [`resume`](Self::resume) before serving the queue.
    pub fn restore<M: GuestMemory + ?Sized>(
        &mut self,
        state: &[u8],
        mem: &M,
    ) -> Result<(), StateError> {
        self.restore_checked(state, mem, true)
    }

    /// [`restore`](Self::restore); `contents: false` skips the check against what guest
    /// memory holds (a transport's second, applying pass over a state it validated in full).
    pub(crate) fn restore_checked<M: GuestMemory + ?Sized>(
        &mut self,
        state: &[u8],
        mem: &M,
        contents: bool,
    ) -> Result<(), StateError> {
        let invalid = StateError::invalid;
        let body = open(state, StateKind::Packed)?;
        let Ok((f, bitmap)) = PackedFields::ref_from_prefix(body) else {
            return Err(StateError::Truncated {
                needed: HEADER_LEN.saturating_add(FIELDS_LEN),
                got: state.len(),
            });
        };
        let saved_max = f.max_size.get();
        // Maximum 0 (a queue that does not exist) restores into such a queue only.
        if (saved_max == 0 && self.max_size != 0) || saved_max > MAX_QUEUE_SIZE {
            return Err(invalid(StateField::MaxSize));
        }
        let expected = state_len(FIELDS_LEN, saved_max);
        if body.len().saturating_add(HEADER_LEN) != expected {
            return Err(StateError::Length {
                stated: u32::try_from(body.len().saturating_add(HEADER_LEN)).unwrap_or(u32::MAX),
                expected: u32::try_from(expected).unwrap_or(u32::MAX),
            });
        }
        if f.reserved != 0 {
            return Err(invalid(StateField::Reserved));
        }

        // A fresh incarnation: chains popped from this queue object before cannot be
        // completed on the restored one.
        let generation = self.generation.wrapping_add(1);
        let mut q = PackedQueue::new(self.max_size);
        q.generation = generation;
        q.ready = flag(f.ready, StateField::Ready)?;
        let size = f.size.get();
        if size > self.max_size || (q.ready && size == 0) {
            return Err(invalid(StateField::Size));
        }
        q.size = size;
        q.desc_ring_addr = GuestAddress(f.desc_ring_addr.get());
        q.driver_event_addr = GuestAddress(f.driver_event_addr.get());
        q.device_event_addr = GuestAddress(f.device_event_addr.get());
        q.features = Features::from_bits(f.features.get())
            .filter(|v| QUEUE_FEATURES.contains(*v))
            .ok_or(invalid(StateField::Features))?;
        q.kicks_enabled = flag(f.kicks_enabled, StateField::Kicks)?;
        q.device_event_flags = event_decode(f.device_event_flags)?;
        q.error = Sticky::from(f.error.decode()?);
        q.avail_wrap_counter = flag(f.avail_wrap_counter, StateField::WrapCounter)?;
        q.used_wrap_counter = flag(f.used_wrap_counter, StateField::WrapCounter)?;
        let in_range = |v: u16| v < size || (size == 0 && v == 0);
        let next_avail = f.next_avail_idx.get();
        let next_used = f.next_used_idx.get();
        if !in_range(next_avail) {
            return Err(invalid(StateField::NextAvail));
        }
        if !in_range(next_used) {
            return Err(invalid(StateField::NextUsed));
        }
        q.next_avail_idx = next_avail;
        q.next_used_idx = next_used;
        let avail = (next_avail, q.avail_wrap_counter);
        let used = (next_used, q.used_wrap_counter);
        q.used_cursor = used;

        // Tokens below `size`, as many as stated.
        q.in_flight =
            InFlight::from_words(bitmap, u32::from(size)).ok_or(invalid(StateField::InFlight))?;
        let chains = u32::from(q.in_flight.count());
        let descs = f.in_flight_descs.get();
        if chains != u32::from(f.in_flight_chains.get())
            || u32::from(descs) < chains
            || descs > size
        {
            return Err(invalid(StateField::InFlightCount));
        }
        q.in_flight_descs = descs;
        q.unclaimed_chains = f.in_flight_chains.get();
        q.unclaimed_descs = descs;
        // Every descriptor popped is in flight or was skipped over by a used descriptor.
        if size != 0 && distance(used, avail, size) != u32::from(descs) {
            return Err(invalid(StateField::NextUsed));
        }

        // Publication: the held descriptor sits at the published position, and the added
        // descriptors cover the positions from there to the used cursor.
        let published = (
            f.published_slot.get(),
            flag(f.published_wrap, StateField::Published)?,
        );
        if !in_range(published.0) {
            return Err(invalid(StateField::Published));
        }
        let unpublished = f.unpublished.get();
        let unpublished_moved = f.unpublished_moved.get();
        let has_held = flag(f.has_held, StateField::Held)?;
        if size != 0 && distance(published, used, size) != unpublished_moved {
            return Err(invalid(StateField::Published));
        }
        if has_held {
            let flags = f.held_flags.get();
            let both = DescFlags::AVAIL | DescFlags::USED;
            let a_u = DescFlags::from_bits_retain(flags) & both;
            if f.held_slot.get() != published.0
                || unpublished == 0
                || u32::from(unpublished) > unpublished_moved
                || flags & !(both | DescFlags::WRITE).bits() != 0
                || (a_u != both && !a_u.is_empty())
                || (a_u == both) != published.1
            {
                return Err(invalid(StateField::Held));
            }
            q.held = Some((published.0, flags));
        } else if unpublished != 0
            || unpublished_moved != 0
            || f.held_slot.get() != 0
            || f.held_flags.get() != 0
        {
            return Err(invalid(StateField::Held));
        }
        q.published = published;
        q.unpublished = unpublished;
        q.unpublished_moved = unpublished_moved;

        // Interrupt bookkeeping: the positions published since the last decision.
        let unsignalled = f.unsignalled_moved.get();
        if flag(f.has_signalled, StateField::Notification)? {
            let at = (
                f.signalled_slot.get(),
                flag(f.signalled_wrap, StateField::Notification)?,
            );
            if !in_range(at.0)
                || (size != 0
                    && unsignalled < u32::from(size).saturating_mul(2)
                    && distance(at, published, size) != unsignalled)
            {
                return Err(invalid(StateField::Notification));
            }
            q.signalled = Some(at);
        } else if f.signalled_slot.get() != 0 || f.signalled_wrap != 0 {
            return Err(invalid(StateField::Notification));
        }
        q.unsignalled_moved = unsignalled;

        if q.ready {
            q.check_rings(mem).map_err(|e| ring_error(&q, e, mem))?;
            if contents && q.error.get().is_none() {
                let at = q
                    .desc_addr(next_avail, layout::FLAGS_OFFSET)
                    .map_err(|_| invalid(StateField::DescAddr))?;
                let flags = mem.load_u16(at).map_err(|error| StateError::Memory {
                    field: StateField::DescAddr,
                    error,
                })?;
                // The slot the device reads next holds a descriptor of the previous lap (made
                // available and consumed, or overwritten by a used descriptor then), one made
                // available in this lap, or the zeroed ring. A used descriptor of *this* lap
                // (A = U = the read wrap counter) would mean the used cursor ran ahead of the
                // read cursor: the wrap counter or the cursors are not this ring's.
                let a = flags & DescFlags::AVAIL.bits() != 0;
                let u = flags & DescFlags::USED.bits() != 0;
                if a == u && a == q.avail_wrap_counter {
                    return Err(invalid(StateField::Ring));
                }
            }
        }
        *self = q;
        Ok(())
    }

    /// After a restore, put the queue's notification state back in guest memory and re-check
    /// the next slot once (kicks sent while the device was stopped were lost). Returns `true`
    /// if a chain is available: serve the queue now, as after a kick. A queue that is not
    /// ready returns `Ok(false)`.
    pub fn resume<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<bool, QueueError> {
        if !self.ready {
            return Ok(false);
        }
        self.usable()?;
        // Restate the device event structure whatever the shadow says.
        self.device_event_flags = None;
        if self.kicks_enabled {
            return self.enable_notification(mem);
        }
        self.write_device_event(mem, None, RingEventFlags::Disable)?;
        self.has_pending(mem)
    }

    /// Re-obtain a chain the device held when the queue was saved, from the bytes
    /// [`PackedChain::save_into`] wrote, into `chain`.
    ///
    /// The saved chain is untrusted input: its token must be one the restored queue has in
    /// flight and not yet readopted, its position must fit the queue, its descriptor count
    /// must leave at least one descriptor for every restored chain not readopted yet (so the
    /// counts readopted never add up to more than the restored queue had in flight), its
    /// buffers must number at most `N`, and every buffer is admitted again as at pop (inside guest RAM without
    /// overflow, no readable buffer after a writable one, total length at most `u32::MAX`,
    /// at most `size` buffers; an indirect table's length and range checked again). A buffer
    /// that no longer passes makes the chain malformed exactly as at pop (the walk yields
    /// the buffers before it, then the [`ChainError`]); a chain that was malformed at pop stays
    /// so. Errors ([`StateError`]) leave `chain` empty.
    pub fn readopt_into<M: GuestMemory + ?Sized, const N: usize>(
        &mut self,
        mem: &M,
        saved: &[u8],
        chain: &mut PackedChain<N>,
    ) -> Result<(), StateError> {
        *chain = PackedChain::EMPTY;
        let bad = StateError::invalid(StateField::Chain);
        self.error
            .check()
            .map_err(|_| StateError::invalid(StateField::Error))?;
        if !self.is_valid() {
            return Err(StateError::invalid(StateField::Ready));
        }
        let Ok((h, rest)) = SavedChainHeader::ref_from_prefix(saved) else {
            return Err(StateError::Truncated {
                needed: SAVED_CHAIN_HEADER_LEN,
                got: saved.len(),
            });
        };
        let nbufs = usize::from(h.bufs.get());
        let Ok((bufs, _)) = <[SavedBuffer]>::ref_from_prefix_with_elems(rest, nbufs) else {
            return Err(StateError::Truncated {
                needed: SAVED_CHAIN_HEADER_LEN.saturating_add(nbufs.saturating_mul(16)),
                got: saved.len(),
            });
        };
        let size = self.size;
        let token = h.token.get();
        let count = h.count.get();
        if h.magic != SAVED_CHAIN_MAGIC
            || h.reserved != [0; 3]
            || token >= size
            || !self.in_flight.contains(u32::from(token))
            || h.slot.get() >= size
            || count == 0
            || self.unclaimed_chains == 0
            // Every restored chain not claimed yet keeps at least one descriptor.
            || u32::from(count).saturating_add(u32::from(self.unclaimed_chains)).saturating_sub(1)
                > u32::from(self.unclaimed_descs)
            || nbufs > N
        {
            return Err(bad);
        }
        let wrap = flag(h.wrap, StateField::Chain)?;
        let head = ChainHead {
            id: h.id.get(),
            slot: h.slot.get(),
            wrap,
            count,
            token,
            generation: self.generation,
            ring: self.desc_ring_addr,
            size,
        };
        let mut body = PackedBody::<[Descriptor; N]>::EMPTY;
        let b: &mut PackedBody = &mut body;
        let mut budget = ChainBudget::new(u32::from(size));
        for d in bufs {
            if d.reserved != [0; 3] || d.writable > 1 || d.len.get() == 0 {
                return Err(bad);
            }
            if b.is_malformed() {
                continue;
            }
            match budget.admit(mem, d.addr.get(), d.len.get(), d.writable == 1) {
                Ok(Some(desc)) => {
                    if let Err(e) = b.push(desc) {
                        b.fail(e);
                    }
                }
                Ok(None) => {}
                Err(e) => b.fail(e),
            }
        }
        let code = ErrorCode {
            queue: u8::from(h.tail == TAIL_ERROR).saturating_mul(7),
            chain: h.error_chain,
            memory: h.error_memory,
            reserved: [0; 5],
            a: h.error_a,
            b: h.error_b,
        };
        match h.tail {
            TAIL_END if h.table.get() == 0 && h.entries.get() == 0 => {}
            TAIL_INDIRECT => {
                let entries = h.entries.get();
                let table = GuestAddress(h.table.get());
                let len = u64::from(entries).saturating_mul(16);
                if !self.features.contains(Features::INDIRECT_DESC) {
                    b.fail(ChainError::IndirectNotNegotiated);
                } else if entries == 0 || entries > size || !bufs.is_empty() || count != 1 {
                    return Err(bad);
                } else if let Err(e) = mem.check_range(table, len) {
                    b.fail(ChainError::Memory(e));
                } else if !b.is_malformed() {
                    b.tail = PackedTail::Indirect { table, entries };
                }
            }
            TAIL_ERROR => match code.decode() {
                Ok(Some(QueueError::Chain(e))) => b.fail(e),
                _ => return Err(bad),
            },
            _ => return Err(bad),
        }
        if h.tail != TAIL_ERROR && (h.error_chain != 0 || h.error_memory != 0) {
            return Err(bad);
        }
        // Claimed: the restored chain's descriptors are accounted to this copy, and it moves to
        // a fresh token so the same saved bytes cannot be readopted twice (with every token in
        // use, each chain holds one descriptor and the claim counters bound what is left).
        self.unclaimed_chains = self.unclaimed_chains.saturating_sub(1);
        self.unclaimed_descs = self.unclaimed_descs.saturating_sub(count);
        let mut head = head;
        if let Some(t) = self
            .in_flight
            .insert_near(u32::from(head.slot), u32::from(size))
            .and_then(|t| u16::try_from(t).ok())
        {
            self.in_flight.remove(u32::from(token));
            head.token = t;
        }
        chain.head = head;
        chain.body = body;
        Ok(())
    }
}

/// Magic of a saved packed chain.
const SAVED_CHAIN_MAGIC: [u8; 2] = *b"VC";
const TAIL_END: u8 = 0;
const TAIL_INDIRECT: u8 = 1;
const TAIL_ERROR: u8 = 2;

/// The fixed part of a saved [`PackedChain`] ([`PackedChain::save_into`]), followed by its
/// buffers ([`SavedBuffer`], 16 bytes each).
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SavedChainHeader {
    /// `VC`.
    pub magic: [u8; 2],
    /// The chain's in-flight token.
    pub token: U16,
    /// Buffer ID.
    pub id: U16,
    /// Ring slot of its first descriptor.
    pub slot: U16,
    /// Ring descriptors it occupies.
    pub count: U16,
    /// Number of saved direct buffers.
    pub bufs: U16,
    /// The driver wrap counter it was read with (0 or 1).
    pub wrap: u8,
    /// What follows the buffers: 0 nothing, 1 an indirect table, 2 a chain error.
    pub tail: u8,
    /// The error's [`ChainError`] variant (as in [`ErrorCode::chain`]).
    pub error_chain: u8,
    /// The error's [`MemoryError`](crate::MemoryError) variant.
    pub error_memory: u8,
    /// Zero.
    pub reserved: [u8; 3],
    /// Indirect table address.
    pub table: U64,
    /// Indirect table entries.
    pub entries: U16,
    /// First error payload.
    pub error_a: U64,
    /// Second error payload.
    pub error_b: U64,
}

debug_fields!(SavedChainHeader {
    magic,
    token,
    id,
    slot,
    count,
    bufs,
    wrap,
    tail,
    error_chain,
    error_memory,
    reserved,
    table,
    entries,
    error_a,
    error_b
});

const SAVED_CHAIN_HEADER_LEN: usize = core::mem::size_of::<SavedChainHeader>();

/// One saved direct buffer of a packed chain.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SavedBuffer {
    /// Guest address.
    pub addr: U64,
    /// Length (non-zero).
    pub len: U32,
    /// Device-writable (0 or 1).
    pub writable: u8,
    /// Zero.
    pub reserved: [u8; 3],
}

impl<const N: usize> PackedChain<N> {
    /// Bytes [`save_into`](Self::save_into) writes for this chain: 48 plus 16 per buffer.
    pub fn saved_len(&self) -> usize {
        SAVED_CHAIN_HEADER_LEN.saturating_add(self.body().bufs().len().saturating_mul(16))
    }

    /// Save the chain (Buffer ID, ring position, descriptor count, its validated buffers and
    /// what follows them) for [`PackedQueue::readopt_into`] after a restore. Returns the
    /// length written.
    pub fn save_into(&self, out: &mut [u8]) -> Result<usize, StateError> {
        let len = self.saved_len();
        let Some(buf) = out.get_mut(..len) else {
            return Err(StateError::BufferTooSmall { needed: len });
        };
        let body = self.body();
        let (tail, table, entries, err) = match body.tail {
            PackedTail::End => (TAIL_END, 0, 0, ErrorCode::encode(None)),
            PackedTail::Indirect { table, entries } => {
                (TAIL_INDIRECT, table.0, entries, ErrorCode::encode(None))
            }
            PackedTail::Error(e) => (
                TAIL_ERROR,
                0,
                0,
                ErrorCode::encode(Some(QueueError::Chain(e))),
            ),
        };
        let h = SavedChainHeader {
            magic: SAVED_CHAIN_MAGIC,
            token: U16::new(self.head.token),
            id: U16::new(self.head.id),
            slot: U16::new(self.head.slot),
            count: U16::new(self.head.count),
            bufs: U16::new(u16::try_from(body.bufs().len()).unwrap_or(u16::MAX)),
            wrap: u8::from(self.head.wrap),
            tail,
            error_chain: err.chain,
            error_memory: err.memory,
            reserved: [0; 3],
            table: U64::new(table),
            entries: U16::new(entries),
            error_a: err.a,
            error_b: err.b,
        };
        h.write_to_prefix(buf)
            .map_err(|_| StateError::BufferTooSmall { needed: len })?;
        let rest = buf.get_mut(SAVED_CHAIN_HEADER_LEN..).unwrap_or(&mut []);
        for (d, out) in body.bufs().iter().zip(rest.chunks_exact_mut(16)) {
            let b = SavedBuffer {
                addr: U64::new(d.addr().0),
                len: U32::new(d.len()),
                writable: u8::from(d.is_write_only()),
                reserved: [0; 3],
            };
            out.copy_from_slice(b.as_bytes());
        }
        Ok(len)
    }
}

/// The field a `check_rings` failure names.
fn ring_error<M: GuestMemory + ?Sized>(q: &PackedQueue, e: QueueError, mem: &M) -> StateError {
    let areas = [
        (
            StateField::DescAddr,
            q.desc_ring_addr,
            layout::desc_ring_bytes(q.size),
        ),
        (
            StateField::DriverAddr,
            q.driver_event_addr,
            layout::EVENT_SIZE,
        ),
        (
            StateField::DeviceAddr,
            q.device_event_addr,
            layout::EVENT_SIZE,
        ),
    ];
    for (field, addr, len) in areas {
        if let Err(error) = mem.check_range(addr, len) {
            return StateError::Memory { field, error };
        }
    }
    match e {
        QueueError::Memory(error) => StateError::Memory {
            field: StateField::DescAddr,
            error,
        },
        _ => {
            let ok = |a: GuestAddress, al: u64| a.0 != 0 && a.is_aligned(al);
            let field = if !ok(q.desc_ring_addr, layout::DESC_ALIGN) {
                StateField::DescAddr
            } else if !ok(q.driver_event_addr, layout::EVENT_ALIGN) {
                StateField::DriverAddr
            } else if !ok(q.device_event_addr, layout::EVENT_ALIGN) {
                StateField::DeviceAddr
            } else {
                StateField::Size
            };
            StateError::invalid(field)
        }
    }
}

// `advance` is how the cursors move; the consistency checks above use `distance`, its
// inverse. Keep the two in step.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::packed::layout::advance;

    #[test]
    fn distance_inverts_advance() {
        for size in 1..=9u16 {
            for slot in 0..size {
                for wrap in [false, true] {
                    for n in 0..=size {
                        let to = advance((slot, wrap), n, size);
                        assert_eq!(
                            distance((slot, wrap), to, size),
                            u32::from(n) % (2 * u32::from(size))
                        );
                    }
                }
            }
        }
    }
}
