//! Save and restore of a split queue (see [`crate::snapshot`] for the format).

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{Queue, layout};
use crate::chain::DescriptorChain;
use crate::error::{QueueError, Sticky};
use crate::in_flight::InFlight;
use crate::memory::{GuestAddress, GuestMemory};
use crate::snapshot::{
    ErrorCode, HEADER_LEN, Snapshot, StateError, StateField, StateKind, bitmap_words, flag, open,
    state_len, write_queue_state,
};
use crate::wire::{Features, MAX_QUEUE_SIZE};

/// The field block of a split queue's state, after the [`Header`](crate::snapshot::Header) and
/// before the in-flight bitmap (`8 * ceil(max_size / 64)` bytes, bit `h` set for each head
/// `h` in flight).
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SplitFields {
    /// `max_size` of the saved queue (sizes the in-flight bitmap).
    pub max_size: U16,
    /// `size`.
    pub size: U16,
    /// `ready` (0 or 1).
    pub ready: u8,
    /// Whether the device asked for kicks (0 or 1).
    pub kicks_enabled: u8,
    /// Zero.
    pub reserved: U16,
    /// `desc_table_addr`.
    pub desc_table_addr: U64,
    /// `avail_ring_addr`.
    pub avail_ring_addr: U64,
    /// `used_ring_addr`.
    pub used_ring_addr: U64,
    /// `features` (INDIRECT_DESC, EVENT_IDX, IN_ORDER bits only).
    pub features: U64,
    /// `next_avail_idx`.
    pub next_avail_idx: U16,
    /// `next_used_idx`.
    pub next_used_idx: U16,
    /// `used.idx` as last published.
    pub published_used_idx: U16,
    /// `used.idx` at the last interrupt decision.
    pub notify_base: U16,
    /// Used elements published since that decision.
    pub unsignalled: U32,
    /// Heads in flight (the bitmap's population).
    pub in_flight: U16,
    /// Zero.
    pub reserved2: U16,
    /// The sticky error.
    pub error: ErrorCode,
}

debug_fields!(SplitFields {
    max_size,
    size,
    ready,
    kicks_enabled,
    reserved,
    desc_table_addr,
    avail_ring_addr,
    used_ring_addr,
    features,
    next_avail_idx,
    next_used_idx,
    published_used_idx,
    notify_base,
    unsignalled,
    in_flight,
    reserved2,
    error
});

const FIELDS_LEN: usize = core::mem::size_of::<SplitFields>();

/// The largest split queue state: a queue of 32768.
pub const SPLIT_STATE_MAX: usize = HEADER_LEN + FIELDS_LEN + 8 * bitmap_words(MAX_QUEUE_SIZE);

/// A split queue's saved state in a fixed buffer ([`Queue::save`]).
pub type QueueSnapshot = Snapshot<SPLIT_STATE_MAX>;

/// The device-independent features a split queue acts on.
const QUEUE_FEATURES: Features = Features::INDIRECT_DESC
    .union(Features::EVENT_IDX)
    .union(Features::IN_ORDER);

impl<const W: usize> Queue<W> {
    /// Bytes [`save_into`](Self::save_into) writes for this queue: 16 + 80 plus one bit per
    /// possible head (`max_size`), rounded up to 8 bytes (128 bytes for a queue of 256).
    pub const fn state_len(&self) -> usize {
        state_len(FIELDS_LEN, self.max_size)
    }

    /// Save the queue's whole state into `out` (see [`crate::snapshot`]): configuration,
    /// cursors, the heads in flight, the notification bookkeeping and the sticky error.
    /// Returns the length written. Save a stopped queue (between calls); chains the device
    /// holds are saved by the device as their heads and re-obtained after a restore with
    /// [`in_flight_chain`](Self::in_flight_chain).
    pub fn save_into(&self, out: &mut [u8]) -> Result<usize, StateError> {
        if self.next_avail_idx != self.avail_cursor || self.next_used_idx != self.used_cursor {
            // The owner moved a cursor since the last call: save what the next call would see.
            let mut q = self.clone();
            q.cursors_moved();
            return q.save_into(out);
        }
        let fields = SplitFields {
            max_size: U16::new(self.max_size),
            size: U16::new(self.size),
            ready: u8::from(self.ready),
            kicks_enabled: u8::from(self.kicks_enabled),
            reserved: U16::new(0),
            desc_table_addr: U64::new(self.desc_table_addr.0),
            avail_ring_addr: U64::new(self.avail_ring_addr.0),
            used_ring_addr: U64::new(self.used_ring_addr.0),
            features: U64::new(self.features.bits()),
            next_avail_idx: U16::new(self.next_avail_idx),
            next_used_idx: U16::new(self.next_used_idx),
            published_used_idx: U16::new(self.published_used_idx),
            notify_base: U16::new(self.notify_base),
            unsignalled: U32::new(self.unsignalled),
            in_flight: U16::new(self.in_flight.count()),
            reserved2: U16::new(0),
            error: ErrorCode::encode(self.error.get()),
        };
        write_queue_state(out, StateKind::Split, &fields, self.max_size, |w| {
            self.in_flight.write_words(w);
        })
    }

    /// [`save_into`](Self::save_into) a fixed buffer large enough for any split queue.
    pub fn save(&self) -> QueueSnapshot {
        Snapshot::fill(|b| self.save_into(b))
    }

    /// Restore a state [`save_into`](Self::save_into) wrote, after checking every field
    /// against this queue's `max_size` and against guest memory; on any error nothing changes.
    ///
    /// Checked: the header (magic, version, kind, length); `size` a power of two (or 0 on a
    /// queue that is not ready) no larger than this queue's `max_size`; flag bytes 0 or 1;
    /// only INDIRECT_DESC, EVENT_IDX and IN_ORDER among the features; for a ready queue, the
    /// rings aligned and in guest RAM ([`check_rings`](Self::check_rings)); in-flight heads
    /// below `size`, their count as stated and at most `size`; `next_used_idx` equal to
    /// `next_avail_idx` minus the heads in flight (every popped chain is either in flight or
    /// completed); at most `size` used elements added and not published; the interrupt
    /// bookkeeping consistent; the sticky error one a queue can stop with. In guest memory
    /// (ready, unbroken queues): `avail.idx` at most `size` ahead of `next_avail_idx`, and
    /// `used.idx` equal to the published index.
    ///
    /// Afterwards the queue behaves as the saved one would have: the first completion is
    /// published, and the next interrupt decision covers exactly what was published and not
    /// yet signalled. Call [`resume`](Self::resume) before serving it, since kicks sent
    /// while it was stopped were lost.
    pub fn restore<M: GuestMemory + ?Sized>(
        &mut self,
        state: &[u8],
        mem: &M,
    ) -> Result<(), StateError> {
        self.restore_checked(state, mem, true)
    }

    /// [`restore`](Self::restore); `contents: false` skips the checks against what guest
    /// memory holds (a transport's second, applying pass over a state it validated in full).
    pub(crate) fn restore_checked<M: GuestMemory + ?Sized>(
        &mut self,
        state: &[u8],
        mem: &M,
        contents: bool,
    ) -> Result<(), StateError> {
        let body = open(state, StateKind::Split)?;
        let Ok((f, bitmap)) = SplitFields::ref_from_prefix(body) else {
            return Err(StateError::Truncated {
                needed: HEADER_LEN.saturating_add(FIELDS_LEN),
                got: state.len(),
            });
        };
        let invalid = StateError::invalid;
        let saved_max = f.max_size.get();
        // A queue that does not exist (maximum 0: a transport's queue slot the device leaves
        // empty) saves maximum 0, and that restores into such a queue only.
        let absent = saved_max == 0 && self.max_size == 0;
        if !absent && (saved_max == 0 || saved_max > MAX_QUEUE_SIZE || !saved_max.is_power_of_two())
        {
            return Err(invalid(StateField::MaxSize));
        }
        let expected = state_len(FIELDS_LEN, saved_max);
        if body.len().saturating_add(HEADER_LEN) != expected {
            return Err(StateError::Length {
                stated: u32::try_from(body.len().saturating_add(HEADER_LEN)).unwrap_or(u32::MAX),
                expected: u32::try_from(expected).unwrap_or(u32::MAX),
            });
        }
        if f.reserved.get() != 0 || f.reserved2.get() != 0 {
            return Err(invalid(StateField::Reserved));
        }

        let mut q = Self::with_capacity(self.max_size);
        q.ready = flag(f.ready, StateField::Ready)?;
        let size = f.size.get();
        if size > self.max_size || (size != 0 && !size.is_power_of_two()) || (q.ready && size == 0)
        {
            return Err(invalid(StateField::Size));
        }
        q.size = size;
        q.desc_table_addr = GuestAddress(f.desc_table_addr.get());
        q.avail_ring_addr = GuestAddress(f.avail_ring_addr.get());
        q.used_ring_addr = GuestAddress(f.used_ring_addr.get());
        let features = Features::from_bits(f.features.get())
            .filter(|v| QUEUE_FEATURES.contains(*v))
            .ok_or(invalid(StateField::Features))?;
        q.features = features;
        q.kicks_enabled = flag(f.kicks_enabled, StateField::Kicks)?;
        q.error = Sticky::from(f.error.decode()?);

        // The in-flight set: heads below `size` only, as many as stated.
        q.in_flight =
            InFlight::from_words(bitmap, u32::from(size)).ok_or(invalid(StateField::InFlight))?;
        let count = u32::from(q.in_flight.count());
        if count != u32::from(f.in_flight.get()) || count > u32::from(size) {
            return Err(invalid(StateField::InFlightCount));
        }

        let next_avail = f.next_avail_idx.get();
        let next_used = f.next_used_idx.get();
        // Every chain popped is in flight or completed, and each completion moved the used
        // cursor by one (an in-order batch by its chain count).
        if next_avail.wrapping_sub(next_used) != f.in_flight.get() {
            return Err(invalid(StateField::NextUsed));
        }
        let published = f.published_used_idx.get();
        if next_used.wrapping_sub(published) > size {
            return Err(invalid(StateField::Published));
        }
        let unsignalled = f.unsignalled.get();
        let base = f.notify_base.get();
        if unsignalled <= u32::from(u16::MAX)
            && u32::from(published.wrapping_sub(base)) != unsignalled
        {
            return Err(invalid(StateField::Notification));
        }
        q.next_avail_idx = next_avail;
        q.next_used_idx = next_used;
        q.avail_cursor = next_avail;
        q.used_cursor = next_used;
        q.shadow_avail_idx = next_avail;
        q.published_used_idx = published;
        q.notify_base = base;
        q.unsignalled = unsignalled;

        if q.ready {
            q.check_rings(mem).map_err(|e| ring_error(&q, e, mem))?;
            if contents && q.error.get().is_none() {
                let avail_idx = mem
                    .load_u16(
                        q.avail_ring_addr
                            .checked_add(layout::IDX_OFFSET)
                            .ok_or(invalid(StateField::DriverAddr))?,
                    )
                    .map_err(|error| StateError::Memory {
                        field: StateField::DriverAddr,
                        error,
                    })?;
                if avail_idx.wrapping_sub(next_avail) > size {
                    return Err(invalid(StateField::AvailIdx));
                }
                let used_idx = mem
                    .load_u16(
                        q.used_ring_addr
                            .checked_add(layout::IDX_OFFSET)
                            .ok_or(invalid(StateField::DeviceAddr))?,
                    )
                    .map_err(|error| StateError::Memory {
                        field: StateField::DeviceAddr,
                        error,
                    })?;
                if used_idx != published {
                    return Err(invalid(StateField::UsedIdx));
                }
            }
        }
        *self = q;
        Ok(())
    }

    /// The chain whose head `head` is in flight, to walk again after a restore (the device
    /// saved the heads it held). The walk re-reads and re-validates every descriptor, as the
    /// first one did. [`QueueError::HeadNotInFlight`] for a head that is not in flight.
    pub fn in_flight_chain(&self, head: u16) -> Result<DescriptorChain, QueueError> {
        self.error.check()?;
        if head >= self.size || !self.in_flight.contains(u32::from(head)) {
            return Err(QueueError::HeadNotInFlight { head });
        }
        Ok(DescriptorChain::new(
            head,
            self.size,
            self.features.contains(Features::INDIRECT_DESC),
            self.desc_table_addr,
        ))
    }

    /// After a restore (or any stop the driver did not see), put the queue's notification
    /// state back in guest memory and re-check the ring once: kicks the driver sent while the
    /// device was stopped were lost. Returns `true` if chains are available: serve them now,
    /// as after a kick.
    ///
    /// With kicks enabled this is [`enable_notification`](Self::enable_notification) (store,
    /// full fence, re-read); with kicks disabled (the device was stopped in the middle of a
    /// drain) it re-states the suppression and reads the ring. A queue that is not ready
    /// returns `Ok(false)`.
    pub fn resume<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<bool, QueueError> {
        if !self.ready {
            return Ok(false);
        }
        self.usable()?;
        if self.kicks_enabled {
            return self.enable_notification(mem);
        }
        if !self.features.contains(Features::EVENT_IDX) {
            self.store_used_flags(mem, crate::wire::UsedFlags::NO_NOTIFY)?;
        }
        self.has_pending(mem)
    }
}

/// The field a `check_rings` failure names.
fn ring_error<M: GuestMemory + ?Sized, const W: usize>(
    q: &Queue<W>,
    e: QueueError,
    mem: &M,
) -> StateError {
    let s = q.size;
    let areas = [
        (
            StateField::DescAddr,
            q.desc_table_addr,
            layout::desc_table_bytes(s),
        ),
        (
            StateField::DriverAddr,
            q.avail_ring_addr,
            layout::avail_ring_bytes(s),
        ),
        (
            StateField::DeviceAddr,
            q.used_ring_addr,
            layout::used_ring_bytes(s),
        ),
    ];
    for (field, addr, len) in areas {
        if let Err(error) = mem.check_range(addr, len) {
            return StateError::Memory { field, error };
        }
    }
    match e {
        QueueError::Memory(error) => StateError::Memory {
            field: StateField::DeviceAddr,
            error,
        },
        // Not valid before memory was asked: an address that is zero, misaligned or wraps.
        _ => {
            let aligned = |a: GuestAddress, al: u64| a.0 != 0 && a.is_aligned(al);
            let field = if !aligned(q.desc_table_addr, layout::DESC_ALIGN) {
                StateField::DescAddr
            } else if !aligned(q.avail_ring_addr, layout::AVAIL_ALIGN) {
                StateField::DriverAddr
            } else if !aligned(q.used_ring_addr, layout::USED_ALIGN) {
                StateField::DeviceAddr
            } else {
                StateField::Size
            };
            StateError::invalid(field)
        }
    }
}
