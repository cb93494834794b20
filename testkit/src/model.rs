//! A reference model of the split ring's device-side rules (VIRTIO 1.4 §2.7), written to be
//! read, not to be fast.
//!
//! The model answers two questions for a guest memory image:
//!
//! * [`walk_chain`]: which buffers does the chain starting at `head` describe, or why is it
//!   malformed? (§2.7.4, §2.7.5, §2.7.5.3; checklist SPLIT-12, SPLIT-19 … SPLIT-29)
//! * [`ModelRing::pop`]: which head does the next `pop` take from the available ring, or which
//!   fatal ring error stops the queue? (§2.7.6; hostile classes H1, H2, H13)
//!
//! It uses plain `Vec`s, `usize`/`u64` arithmetic and a `BTreeSet`, and shares no code with
//! the library beyond the [`GuestMemory`] trait it reads through. The fuzz target `model` and
//! `tests/model_agreement.rs` check that the library agrees with it on every input: the same
//! chains accepted with the same buffers, the same error class on rejection.
//!
//! # Order of the checks
//!
//! When a chain breaks several rules at once, the first broken rule in *chain order* is the
//! answer; for one descriptor the rules are checked in the order they are listed in
//! [`walk_chain`]. The library documents the same order.

use std::collections::BTreeSet;

use virtq::{ChainError, GuestAddress, GuestMemory, QueueError};

/// `VIRTQ_DESC_F_NEXT`
const NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`
const WRITE: u16 = 2;
/// `VIRTQ_DESC_F_INDIRECT`
const INDIRECT: u16 = 4;

/// One buffer of a chain, as the model sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelBuffer {
    /// Guest address of the buffer.
    pub addr: u64,
    /// Length in bytes (never 0: empty buffers are skipped).
    pub len: u32,
    /// Device-writable.
    pub writable: bool,
}

impl From<virtq::Descriptor> for ModelBuffer {
    fn from(d: virtq::Descriptor) -> Self {
        Self {
            addr: d.addr().0,
            len: d.len(),
            writable: d.is_write_only(),
        }
    }
}

/// Why the model rejects a chain: one class per rule, without the details the library adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChainClass {
    /// A `next` names an entry outside its table.
    NextOutOfRange,
    /// More descriptors than allowed (a loop, or more than `size` buffers).
    TooLong,
    /// INDIRECT without VIRTIO_F_INDIRECT_DESC.
    IndirectNotNegotiated,
    /// INDIRECT inside an indirect table.
    NestedIndirect,
    /// INDIRECT together with NEXT.
    IndirectWithNext,
    /// Indirect table length 0, not a multiple of 16, or too many entries.
    IndirectTableLength,
    /// A device-readable buffer after a device-writable one.
    ReadableAfterWritable,
    /// Total length above `u32::MAX`.
    LengthOverflow,
    /// A descriptor, table or buffer is not guest RAM (or its range overflows).
    Memory,
    /// More buffers than the caller's storage (only from `copy_into`).
    TooManySegments,
}

impl ChainClass {
    /// The class of a library error. Panics on a variant the model does not know yet, so a
    /// new rule in the library cannot go unnoticed by the agreement tests.
    pub fn of(e: &ChainError) -> Self {
        match e {
            ChainError::NextOutOfRange { .. } => Self::NextOutOfRange,
            ChainError::TooLong => Self::TooLong,
            ChainError::IndirectNotNegotiated => Self::IndirectNotNegotiated,
            ChainError::NestedIndirect => Self::NestedIndirect,
            ChainError::IndirectWithNext => Self::IndirectWithNext,
            ChainError::IndirectTableLength { .. } => Self::IndirectTableLength,
            ChainError::ReadableAfterWritable => Self::ReadableAfterWritable,
            ChainError::LengthOverflow => Self::LengthOverflow,
            ChainError::Memory(_) => Self::Memory,
            ChainError::TooManySegments => Self::TooManySegments,
            other => panic!("model does not know chain error {other:?}"),
        }
    }
}

/// The model's answer for one chain: the buffers it describes up to the first broken rule,
/// and that rule (`None` if the chain is well formed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainVerdict {
    /// Non-empty buffers in chain order, up to (not including) the offending descriptor.
    pub buffers: Vec<ModelBuffer>,
    /// The first broken rule, if any.
    pub error: Option<ChainClass>,
}

/// A raw descriptor as the guest wrote it.
#[derive(Clone, Copy, Debug)]
struct RawDesc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// Read descriptor `index` of the table at `table`, or `None` if it is not guest RAM.
fn read_desc(mem: &dyn GuestMemory, table: u64, index: usize) -> Option<RawDesc> {
    let at = table.checked_add(16 * index as u64)?;
    let mut b = [0u8; 16];
    mem.read(GuestAddress(at), &mut b).ok()?;
    Some(RawDesc {
        addr: u64::from_le_bytes(b[0..8].try_into().unwrap()),
        len: u32::from_le_bytes(b[8..12].try_into().unwrap()),
        flags: u16::from_le_bytes(b[12..14].try_into().unwrap()),
        next: u16::from_le_bytes(b[14..16].try_into().unwrap()),
    })
}

/// Whether `[addr, addr + len)` is guest RAM, as the memory accessor defines it.
fn is_ram(mem: &dyn GuestMemory, addr: u64, len: u64) -> bool {
    mem.check_range(GuestAddress(addr), len).is_ok()
}

/// Walk the chain that starts at descriptor `head` of the `size`-entry table at `desc_table`.
///
/// The rules, in the order they are checked for each descriptor fetched:
///
/// 1. At most `size` descriptors are fetched from the descriptor table, and at most `n` from
///    an indirect table of `n` entries; one more is [`ChainClass::TooLong`] (a loop ends here).
/// 2. The descriptor itself must be guest RAM ([`ChainClass::Memory`]).
/// 3. If it has INDIRECT: not inside a table ([`NestedIndirect`](ChainClass::NestedIndirect)),
///    negotiated ([`IndirectNotNegotiated`](ChainClass::IndirectNotNegotiated)), without NEXT
///    ([`IndirectWithNext`](ChainClass::IndirectWithNext)), a length that is a non-zero
///    multiple of 16 with no more entries than buffers still allowed
///    ([`IndirectTableLength`](ChainClass::IndirectTableLength)), and the table in guest RAM
///    ([`Memory`](ChainClass::Memory)). WRITE on it is ignored. The walk continues at entry 0
///    of the table.
/// 4. Otherwise it is a buffer: at most `size` buffers per chain, counting empty ones
///    ([`TooLong`](ChainClass::TooLong)); no readable buffer after a writable one
///    ([`ReadableAfterWritable`](ChainClass::ReadableAfterWritable)); the total length at most
///    `u32::MAX` ([`LengthOverflow`](ChainClass::LengthOverflow)); the buffer in guest RAM
///    ([`Memory`](ChainClass::Memory)).
/// 5. With NEXT, `next` must name an entry of the current table
///    ([`NextOutOfRange`](ChainClass::NextOutOfRange)); without NEXT the chain ends.
///
/// A buffer is reported once it passed rules 4 and 5; empty buffers are never reported.
pub fn walk_chain(
    mem: &dyn GuestMemory,
    desc_table: u64,
    size: u16,
    head: u16,
    indirect_negotiated: bool,
) -> ChainVerdict {
    let max_buffers = usize::from(size);
    let mut buffers: Vec<ModelBuffer> = Vec::new();
    let mut buffer_count: usize = 0; // including empty buffers
    let mut total_len: u64 = 0;
    let mut seen_writable = false;

    let mut table = desc_table;
    let mut table_entries = usize::from(size);
    let mut inside_indirect = false;
    let mut fetched_from_table = 0usize;
    let mut index = usize::from(head);

    let fail = |buffers: Vec<ModelBuffer>, class| ChainVerdict {
        buffers,
        error: Some(class),
    };

    loop {
        // Rule 1.
        if fetched_from_table == table_entries {
            return fail(buffers, ChainClass::TooLong);
        }
        fetched_from_table += 1;
        // Rule 2.
        let Some(d) = read_desc(mem, table, index) else {
            return fail(buffers, ChainClass::Memory);
        };

        // Rule 3.
        if d.flags & INDIRECT != 0 {
            if inside_indirect {
                return fail(buffers, ChainClass::NestedIndirect);
            }
            if !indirect_negotiated {
                return fail(buffers, ChainClass::IndirectNotNegotiated);
            }
            if d.flags & NEXT != 0 {
                return fail(buffers, ChainClass::IndirectWithNext);
            }
            let entries = d.len as usize / 16;
            let buffers_left = max_buffers - buffer_count;
            if d.len == 0 || d.len % 16 != 0 || entries > buffers_left {
                return fail(buffers, ChainClass::IndirectTableLength);
            }
            if !is_ram(mem, d.addr, u64::from(d.len)) {
                return fail(buffers, ChainClass::Memory);
            }
            table = d.addr;
            table_entries = entries;
            inside_indirect = true;
            fetched_from_table = 0;
            index = 0;
            continue;
        }

        // Rule 4.
        if buffer_count == max_buffers {
            return fail(buffers, ChainClass::TooLong);
        }
        buffer_count += 1;
        let writable = d.flags & WRITE != 0;
        if !writable && seen_writable {
            return fail(buffers, ChainClass::ReadableAfterWritable);
        }
        seen_writable |= writable;
        total_len += u64::from(d.len);
        if total_len > u64::from(u32::MAX) {
            return fail(buffers, ChainClass::LengthOverflow);
        }
        if !is_ram(mem, d.addr, u64::from(d.len)) {
            return fail(buffers, ChainClass::Memory);
        }

        // Rule 5: a buffer whose `next` is out of range is part of the malformed tail, so it
        // is not reported either.
        let has_next = d.flags & NEXT != 0;
        if has_next && usize::from(d.next) >= table_entries {
            return fail(buffers, ChainClass::NextOutOfRange);
        }
        if d.len != 0 {
            buffers.push(ModelBuffer {
                addr: d.addr,
                len: d.len,
                writable,
            });
        }
        if !has_next {
            return ChainVerdict {
                buffers,
                error: None,
            };
        }
        index = usize::from(d.next);
    }
}

/// The answer of [`DescriptorChain::copy_into`](virtq::DescriptorChain::copy_into) with room
/// for `capacity` buffers, derived from [`walk_chain`]'s verdict: all buffers, or the error and
/// nothing. A chain that is otherwise fine but has more than `capacity` buffers is
/// [`ChainClass::TooManySegments`]; a malformed chain whose valid prefix already exceeds
/// `capacity` is too.
pub fn copy_verdict(v: &ChainVerdict, capacity: usize) -> Result<Vec<ModelBuffer>, ChainClass> {
    if v.buffers.len() > capacity {
        return Err(ChainClass::TooManySegments);
    }
    match v.error {
        Some(e) => Err(e),
        None => Ok(v.buffers.clone()),
    }
}

/// Class of a ring-level (queue) error, without details.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RingClass {
    /// Queue not configured or not ready.
    NotReady,
    /// `avail.idx` more than `size` ahead of the device's cursor.
    AvailIdxOverrun,
    /// A head `>= size` in the available ring.
    HeadOutOfRange,
    /// A head that is still in flight.
    DuplicateHead,
    /// `size` chains in flight and one more available.
    TooManyInFlight,
    /// A ring is not guest RAM.
    Memory,
    /// Stopped by the device with `mark_broken`.
    Chain,
    /// Completion of a head `>= size`.
    InvalidUsedHead,
    /// Completion of a head not in flight.
    HeadNotInFlight,
}

impl RingClass {
    /// The class of a library error. Panics on a variant the model does not know yet.
    pub fn of(e: &QueueError) -> Self {
        match e {
            QueueError::NotReady => Self::NotReady,
            QueueError::AvailIdxOverrun { .. } => Self::AvailIdxOverrun,
            QueueError::HeadOutOfRange { .. } => Self::HeadOutOfRange,
            QueueError::DuplicateHead { .. } => Self::DuplicateHead,
            QueueError::TooManyInFlight => Self::TooManyInFlight,
            QueueError::Memory(_) => Self::Memory,
            QueueError::Chain(_) => Self::Chain,
            QueueError::InvalidUsedHead { .. } => Self::InvalidUsedHead,
            QueueError::HeadNotInFlight { .. } => Self::HeadNotInFlight,
            other => panic!("model does not know queue error {other:?}"),
        }
    }
}

/// The device side of the available ring, modelled (§2.7.6): which head the next pop takes.
///
/// The ring is configured valid (the caller only builds a `ModelRing` for a queue that
/// `is_valid`). `avail.idx` is read only when every chain known from the previous read has been
/// taken, as the library documents ("one `avail.idx` read per batch").
#[derive(Clone, Debug)]
pub struct ModelRing {
    /// Queue size.
    pub size: u16,
    /// Available ring address.
    pub avail: u64,
    /// Device cursor (free-running).
    pub next_avail: u16,
    /// `avail.idx` as last read.
    pub known_avail_idx: u16,
    /// Heads popped and not yet completed.
    pub in_flight: BTreeSet<u16>,
    /// The fatal error that stopped the ring, if any.
    pub broken: Option<RingClass>,
}

impl ModelRing {
    /// A fresh ring (after reset and configuration).
    pub fn new(size: u16, avail: u64) -> Self {
        Self {
            size,
            avail,
            next_avail: 0,
            known_avail_idx: 0,
            in_flight: BTreeSet::new(),
            broken: None,
        }
    }

    fn load_u16(mem: &dyn GuestMemory, addr: u64) -> Option<u16> {
        mem.load_u16(GuestAddress(addr)).ok()
    }

    fn stop(&mut self, class: RingClass) -> Result<Option<u16>, RingClass> {
        self.broken = Some(class);
        Err(class)
    }

    /// Chains available beyond the cursor, by the model's own counting (in `u32`).
    fn distance(&self, idx: u16) -> u32 {
        (u32::from(idx) + 65536 - u32::from(self.next_avail)) % 65536
    }

    /// Take the next available head: `Ok(None)` if there is none, or the fatal error class.
    pub fn pop(&mut self, mem: &dyn GuestMemory) -> Result<Option<u16>, RingClass> {
        if let Some(c) = self.broken {
            return Err(c);
        }
        let size = u32::from(self.size);
        let known = self.distance(self.known_avail_idx);
        if known == 0 || known > size {
            let Some(idx) = Self::load_u16(mem, self.avail + 2) else {
                return self.stop(RingClass::Memory);
            };
            if self.distance(idx) > size {
                return self.stop(RingClass::AvailIdxOverrun);
            }
            self.known_avail_idx = idx;
        }
        if self.distance(self.known_avail_idx) == 0 {
            return Ok(None);
        }
        if self.in_flight.len() >= usize::from(self.size) {
            return self.stop(RingClass::TooManyInFlight);
        }
        let slot = u32::from(self.next_avail) % size;
        let Some(head) = Self::load_u16(mem, self.avail + 4 + 2 * u64::from(slot)) else {
            return self.stop(RingClass::Memory);
        };
        if head >= self.size {
            return self.stop(RingClass::HeadOutOfRange);
        }
        if self.in_flight.contains(&head) {
            return self.stop(RingClass::DuplicateHead);
        }
        self.in_flight.insert(head);
        self.next_avail = self.next_avail.wrapping_add(1);
        Ok(Some(head))
    }

    /// Complete `head` (`add_used`): the class of the refusal, if refused.
    pub fn complete(&mut self, head: u16) -> Result<(), RingClass> {
        if let Some(c) = self.broken {
            return Err(c);
        }
        if head >= self.size {
            return Err(RingClass::InvalidUsedHead);
        }
        if !self.in_flight.remove(&head) {
            return Err(RingClass::HeadNotInFlight);
        }
        Ok(())
    }
}
