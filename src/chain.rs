//! Descriptor chains: the validated walk over a chain's descriptors (§2.7.4, §2.7.5).
//!
//! [`Queue::pop_avail`](crate::Queue::pop_avail) reads only the available ring; the chain's
//! descriptors are fetched while the device walks the returned [`DescriptorChain`], each exactly
//! once per walk, and every check applies to that one copy (no double fetch, H12). A device that
//! must see the whole chain validated before it touches any data copies it first with
//! [`DescriptorChain::copy_into`].
//!
//! # Rules (each a typed [`ChainError`], never a panic, never a shortened chain)
//!
//! * every `next` is `< size` (or `<` the indirect table length inside a table);
//! * at most `size` buffer descriptors per chain, counting indirect table entries (§2.7.5.3.1);
//!   so loops end with [`ChainError::TooLong`];
//! * INDIRECT only if negotiated, never together with NEXT, never inside a table; a table length
//!   is a non-zero multiple of 16 and lies in guest RAM; WRITE on the pointer is ignored; direct
//!   descriptors followed by one final indirect descriptor are accepted (§2.7.5.3.2);
//! * no device-readable descriptor after a device-writable one (§2.7.4.2);
//! * every buffer's `addr + len` does not overflow and lies in guest RAM; the chain's total
//!   length is at most `u32::MAX` (§2.7.5.2).
//!
//! Zero-length descriptors count as hops but are not yielded: a device never sees an empty
//! buffer (CVE-2016-6490, CVE-2019-14835).
//!
//! # Guest reads per chain
//!
//! Walking a chain of `n` direct descriptors reads `n` descriptors of 16 bytes. A chain of `d`
//! direct descriptors ending in an indirect descriptor to a table of `t` entries reads `d + 1`
//! direct descriptors and `t` table entries. Together with the one available-ring entry read by
//! `pop_avail` (and one `avail.idx` read per batch of chains), that is every guest read the
//! split ring makes for a chain.
//!
//! # Packed chains
//!
//! A [`PackedChain`](crate::packed::PackedChain) is validated with the same per-buffer rules
//! (the shared `ChainBudget`) when it is popped, and walked with the same [`DescriptorIter`]
//! type; see [`packed`](crate::packed) for the packed-specific rules (sequential indirect
//! tables, only WRITE meaningful inside them, INDIRECT never in a NEXT list).

use core::fmt;

use crate::memory::{GuestAddress, GuestMemory, GuestMemoryExt, MemoryError};
use crate::wire::{DescFlags, PackedDesc, SplitDesc, split_layout::DESC_SIZE};

/// A validated buffer of a chain: guest address, length and direction (§2.7.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Descriptor {
    addr: GuestAddress,
    len: u32,
    writable: bool,
}

impl Descriptor {
    /// Guest-physical address of the buffer; `[addr, addr + len)` was checked to be guest RAM.
    #[inline]
    pub const fn addr(&self) -> GuestAddress {
        self.addr
    }

    /// Length in bytes (never 0).
    #[inline]
    pub const fn len(&self) -> u32 {
        self.len
    }

    /// Always `false`: zero-length descriptors are never yielded. Present for API symmetry.
    #[inline]
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the buffer is device-writable ([`DescFlags::WRITE`]); otherwise device-readable.
    #[doc(alias = "VIRTQ_DESC_F_WRITE")]
    #[inline]
    pub const fn is_write_only(&self) -> bool {
        self.writable
    }
}

impl Descriptor {
    /// Placeholder for fixed-size storage (never yielded).
    pub(crate) const EMPTY: Self = Self {
        addr: GuestAddress(0),
        len: 0,
        writable: false,
    };
}

/// Why a descriptor chain is malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ChainError {
    /// A `next` index is outside the descriptor table or the indirect table (H3, §2.7.5).
    NextOutOfRange {
        /// The offending index.
        next: u16,
    },
    /// More buffer descriptors than the queue size, or a loop (H4, §2.7.5.2).
    TooLong,
    /// INDIRECT used but VIRTIO_F_INDIRECT_DESC was not negotiated (H5m, §2.7.5.3.1).
    IndirectNotNegotiated,
    /// INDIRECT inside an indirect table (H5f, §2.7.5.3.1).
    NestedIndirect,
    /// INDIRECT together with NEXT (H5h/l, §2.7.5.3.1).
    IndirectWithNext,
    /// Indirect table length 0, not a multiple of 16, or more entries than allowed (H5a/c/d).
    IndirectTableLength {
        /// The table length in bytes.
        len: u32,
    },
    /// A device-readable descriptor after a device-writable one (H10, §2.7.4.2).
    ReadableAfterWritable,
    /// The chain's total length exceeds `u32::MAX` (H7f, §2.7.5.2).
    LengthOverflow,
    /// A buffer, indirect table or descriptor lies outside guest RAM or overflows (H7, H8).
    Memory(MemoryError),
    /// The chain has more buffers than the caller's storage holds (H11): a `heapless::Vec` given
    /// to `copy_into`, or the `N` direct buffers a [`PackedChain<N>`](crate::PackedChain)
    /// carries (a device-chosen cap, PACKED-25).
    TooManySegments,
    /// Packed ring: a descriptor the chain continues into (NEXT) is not available yet, so the
    /// chain has no end and no buffer ID (H15b, PACKED-38, §2.8.17). Never a truncated chain.
    Incomplete {
        /// Ring slot of the descriptor that is not available.
        slot: u16,
    },
    /// Packed ring: an INDIRECT descriptor that is not the only descriptor of its chain
    /// (PACKED-34, §2.8.19).
    IndirectInList,
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NextOutOfRange { next } => write!(f, "descriptor next index {next} out of range"),
            Self::TooLong => f.write_str("descriptor chain longer than the queue size (or looped)"),
            Self::IndirectNotNegotiated => f.write_str("indirect descriptor without INDIRECT_DESC"),
            Self::NestedIndirect => f.write_str("nested indirect descriptor"),
            Self::IndirectWithNext => f.write_str("indirect descriptor with NEXT set"),
            Self::IndirectTableLength { len } => write!(f, "invalid indirect table length {len}"),
            Self::ReadableAfterWritable => {
                f.write_str("device-readable descriptor after a writable one")
            }
            Self::LengthOverflow => f.write_str("descriptor chain longer than 2^32-1 bytes"),
            Self::Memory(e) => write!(f, "descriptor buffer: {e}"),
            Self::TooManySegments => f.write_str("descriptor chain exceeds the caller's capacity"),
            Self::Incomplete { slot } => {
                write!(f, "packed chain continues into unavailable slot {slot}")
            }
            Self::IndirectInList => f.write_str("packed indirect descriptor inside a NEXT list"),
        }
    }
}

impl core::error::Error for ChainError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Memory(e) => Some(e),
            _ => None,
        }
    }
}

impl From<MemoryError> for ChainError {
    fn from(e: MemoryError) -> Self {
        Self::Memory(e)
    }
}

/// Per-chain accounting shared by every ring format: buffer count, direction order, total
/// length and the guest-RAM check of each buffer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChainBudget {
    /// Buffer descriptors (direct or indirect entries) seen so far.
    count: u32,
    /// Most buffer descriptors the chain may have.
    limit: u32,
    seen_writable: bool,
    total: u64,
}

impl ChainBudget {
    pub(crate) const fn new(limit: u32) -> Self {
        Self {
            count: 0,
            limit,
            seen_writable: false,
            total: 0,
        }
    }

    /// Count one more buffer descriptor and validate it. Returns the descriptor to yield, or
    /// `None` for a zero-length one.
    #[inline]
    pub(crate) fn admit<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        addr: u64,
        len: u32,
        writable: bool,
    ) -> Result<Option<Descriptor>, ChainError> {
        if self.count >= self.limit {
            return Err(ChainError::TooLong);
        }
        self.count = self.count.saturating_add(1);
        if writable {
            self.seen_writable = true;
        } else if self.seen_writable {
            return Err(ChainError::ReadableAfterWritable);
        }
        // `total` is at most u32::MAX before the addition, so this cannot overflow a u64.
        self.total = self.total.saturating_add(u64::from(len));
        if self.total > u64::from(u32::MAX) {
            return Err(ChainError::LengthOverflow);
        }
        let addr = GuestAddress(addr);
        mem.check_range(addr, u64::from(len))?;
        Ok((len != 0).then_some(Descriptor {
            addr,
            len,
            writable,
        }))
    }

    /// Buffers still allowed.
    #[inline]
    pub(crate) const fn remaining(&self) -> u32 {
        self.limit.saturating_sub(self.count)
    }
}

/// A chain the driver made available: its head index plus what is needed to walk it.
///
/// A small `Copy` value that borrows neither the queue nor the memory, so a device can keep it
/// (for example, posted receive buffers) and walk it later. Walking reads the descriptors then,
/// so a kept chain must be completed before the queue is reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DescriptorChain {
    head: u16,
    size: u16,
    indirect: bool,
    desc_table: GuestAddress,
}

impl DescriptorChain {
    pub(crate) const fn new(
        head: u16,
        size: u16,
        indirect: bool,
        desc_table: GuestAddress,
    ) -> Self {
        Self {
            head,
            size,
            indirect,
            desc_table,
        }
    }

    /// Index of the chain's first descriptor: the `id` to complete it with (§2.7.8).
    #[inline]
    pub const fn head_index(&self) -> u16 {
        self.head
    }

    /// Walk the chain, fetching each descriptor from guest memory once.
    ///
    /// The iterator yields validated, non-empty [`Descriptor`]s in chain order; on the first
    /// violation it yields `Some(Err(_))` and then `None` for ever.
    #[inline]
    pub fn iter<'m, M: GuestMemory + ?Sized>(&self, mem: &'m M) -> DescriptorIter<'m, M> {
        DescriptorIter(Walk::Split(SplitWalk {
            mem,
            table: self.desc_table,
            table_len: self.size,
            next: Some(self.head),
            hops: 0,
            in_indirect: false,
            indirect_allowed: self.indirect,
            budget: ChainBudget::new(u32::from(self.size)),
        }))
    }

    /// Walk and validate the whole chain into `out` before the device touches any data.
    ///
    /// `out` is cleared first. On error it is left empty, so no partial chain survives
    /// (H11: a chain with more than `N` buffers is [`ChainError::TooManySegments`]).
    pub fn copy_into<M: GuestMemory + ?Sized, const N: usize>(
        &self,
        mem: &M,
        out: &mut heapless::Vec<Descriptor, N>,
    ) -> Result<(), ChainError> {
        collect_into(self.iter(mem), out)
    }
}

/// Collect a walk into `out`, all or nothing (shared by the split and packed chains).
pub(crate) fn collect_into<M: GuestMemory + ?Sized, const N: usize>(
    iter: DescriptorIter<'_, M>,
    out: &mut heapless::Vec<Descriptor, N>,
) -> Result<(), ChainError> {
    out.clear();
    for d in iter {
        let pushed = match d {
            Ok(d) => out.push(d).map_err(|_| ChainError::TooManySegments),
            Err(e) => Err(e),
        };
        if let Err(e) = pushed {
            out.clear();
            return Err(e);
        }
    }
    Ok(())
}

/// What follows a packed chain's copied direct buffers in its walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub(crate) enum PackedTail {
    /// Nothing: the chain ends after its direct buffers.
    End,
    /// One indirect table, validated at pop (0 < entries <= size, the table is guest RAM),
    /// whose entries are read in order when the chain is walked (§2.8.7).
    Indirect { table: GuestAddress, entries: u16 },
    /// The chain is malformed: the walk yields the buffers before the violation, then this.
    Error(ChainError),
}

/// Iterator over a chain's validated descriptors; see [`DescriptorChain::iter`] and
/// [`PackedChain::iter`](crate::packed::PackedChain::iter).
#[derive(Debug)]
pub struct DescriptorIter<'m, M: ?Sized>(Walk<'m, M>);

/// The two walks behind [`DescriptorIter`]; the split one is unaffected by the packed one.
#[derive(Debug)]
enum Walk<'m, M: ?Sized> {
    Split(SplitWalk<'m, M>),
    Packed(PackedWalk<'m, M>),
}

/// The split-ring walk: descriptor table, then possibly one indirect table (§2.7.5).
struct SplitWalk<'m, M: ?Sized> {
    mem: &'m M,
    /// Table being walked: the descriptor table, then possibly one indirect table.
    table: GuestAddress,
    /// Entries in `table`: the bound of every `next` in it and of the hops through it (`size`
    /// in the descriptor table, the entry count in an indirect table).
    table_len: u16,
    /// Next entry to fetch; `None` once the chain ended or failed.
    next: Option<u16>,
    /// Descriptors fetched from the current table, at most `table_len`.
    hops: u16,
    in_indirect: bool,
    indirect_allowed: bool,
    budget: ChainBudget,
}

debug_fields!(['m, M: ?Sized + fmt::Debug] ['m, M] SplitWalk {
    mem, table, table_len, next, hops, in_indirect, indirect_allowed, budget
});

impl<M: GuestMemory + ?Sized> SplitWalk<'_, M> {
    /// End the walk with `e`. Cold: a malformed chain is the rare case, so its paths are laid
    /// out away from the walk of a valid one.
    #[cold]
    fn fail(&mut self, e: ChainError) -> Option<Result<Descriptor, ChainError>> {
        self.next = None;
        debug!("virtq: malformed chain: {}", e);
        Some(Err(e))
    }

    /// Switch the walk to the indirect table that descriptor (`addr`, `len`, `flags`) points
    /// to, after checking the INDIRECT rules on that one copy.
    #[inline]
    fn enter_indirect(&mut self, addr: u64, len: u32, flags: DescFlags) -> Result<(), ChainError> {
        if self.in_indirect {
            return Err(ChainError::NestedIndirect);
        }
        if !self.indirect_allowed {
            return Err(ChainError::IndirectNotNegotiated);
        }
        if flags.contains(DescFlags::NEXT) {
            return Err(ChainError::IndirectWithNext);
        }
        let entries = len / 16;
        if len == 0 || !len.is_multiple_of(16) || entries > self.budget.remaining() {
            return Err(ChainError::IndirectTableLength { len });
        }
        let table = GuestAddress(addr);
        self.mem.check_range(table, u64::from(len))?;
        // `entries <= remaining <= size <= 32768`, so it fits in a u16.
        let entries =
            u16::try_from(entries).map_err(|_| ChainError::IndirectTableLength { len })?;
        self.table = table;
        self.table_len = entries;
        self.hops = 0;
        self.in_indirect = true;
        self.next = Some(0);
        Ok(())
    }
}

impl<M: GuestMemory + ?Sized> Iterator for DescriptorIter<'_, M> {
    type Item = Result<Descriptor, ChainError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            Walk::Split(w) => w.next(),
            Walk::Packed(w) => w.next(),
        }
    }
}

impl<M: GuestMemory + ?Sized> SplitWalk<'_, M> {
    #[inline]
    fn next(&mut self) -> Option<Result<Descriptor, ChainError>> {
        // Every turn either returns or fetches one more descriptor; fetches are bounded by
        // `size` in the descriptor table plus the entry count of at most one indirect table.
        loop {
            let idx = self.next?;
            plant_panic!("chain", idx == 0x5eed);
            // Hop bound of the current table. A loop ends here.
            if self.hops >= self.table_len {
                return self.fail(ChainError::TooLong);
            }
            self.hops = self.hops.saturating_add(1);
            // `idx < table_len <= 2^16`, so the offset fits easily in a u64; the table range
            // itself was checked (descriptor table at queue enable, indirect table below).
            let Some(addr) = self
                .table
                .checked_add(u64::from(idx).saturating_mul(DESC_SIZE))
            else {
                return self.fail(ChainError::Memory(MemoryError::Overflow {
                    addr: self.table.0,
                    len: DESC_SIZE,
                }));
            };
            // The one fetch of this descriptor; every check below uses this copy.
            let desc: SplitDesc = match self.mem.read_obj(addr) {
                Ok(d) => d,
                Err(e) => return self.fail(ChainError::Memory(e)),
            };
            let flags = DescFlags::from_bits_retain(desc.flags.get());
            let len = desc.len.get();

            if flags.contains(DescFlags::INDIRECT) {
                match self.enter_indirect(desc.addr.get(), len, flags) {
                    Ok(()) => continue,
                    Err(e) => return self.fail(e),
                }
            }

            let admitted = self.budget.admit(
                self.mem,
                desc.addr.get(),
                len,
                flags.contains(DescFlags::WRITE),
            );
            let admitted = match admitted {
                Ok(a) => a,
                Err(e) => return self.fail(e),
            };
            self.next = if flags.contains(DescFlags::NEXT) {
                let next = desc.next.get();
                if next >= self.table_len {
                    return self.fail(ChainError::NextOutOfRange { next });
                }
                Some(next)
            } else {
                None
            };
            if let Some(d) = admitted {
                return Some(Ok(d));
            }
        }
    }
}

impl<M: GuestMemory + ?Sized> core::iter::FusedIterator for DescriptorIter<'_, M> {}

/// A packed chain's contents as `PackedQueue::pop_avail` copied and validated them: the
/// non-empty direct buffers, then what follows them.
///
/// `B` is `[Descriptor; N]` inside a [`PackedChain<N>`](crate::PackedChain); the queue and
/// the walk see it unsized (`B = [Descriptor]`), so neither is generic over `N`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PackedBody<B: ?Sized = [Descriptor]> {
    /// Buffers stored in `bufs` (a prefix; the rest is stale and never read).
    len: u16,
    pub(crate) tail: PackedTail,
    bufs: B,
}

impl<const N: usize> PackedBody<[Descriptor; N]> {
    pub(crate) const EMPTY: Self = Self {
        len: 0,
        tail: PackedTail::End,
        bufs: [Descriptor::EMPTY; N],
    };
}

impl PackedBody {
    /// Forget the contents (the stale buffers past `len` are never read).
    #[inline]
    pub(crate) fn clear(&mut self) {
        self.len = 0;
        self.tail = PackedTail::End;
    }

    /// The stored buffers.
    #[inline]
    pub(crate) fn bufs(&self) -> &[Descriptor] {
        self.bufs.get(..usize::from(self.len)).unwrap_or(&[])
    }

    /// Store one validated, non-empty direct buffer; [`ChainError::TooManySegments`] once the
    /// storage is full.
    #[inline]
    pub(crate) fn push(&mut self, d: Descriptor) -> Result<(), ChainError> {
        let slot = self
            .bufs
            .get_mut(usize::from(self.len))
            .ok_or(ChainError::TooManySegments)?;
        *slot = d;
        // The `get_mut` above succeeded, so `len` < the storage length; a push that would take
        // `len` past u16::MAX cannot happen either, since a chain has at most `size` <= 32768
        // buffers (the budget refuses more before they are stored).
        self.len = self.len.saturating_add(1);
        Ok(())
    }

    /// Record the first violation; later ones are ignored.
    #[inline]
    pub(crate) fn fail(&mut self, e: ChainError) {
        if !self.is_malformed() {
            self.tail = PackedTail::Error(e);
        }
    }

    #[inline]
    pub(crate) const fn is_malformed(&self) -> bool {
        matches!(self.tail, PackedTail::Error(_))
    }
}

impl PartialEq for PackedBody {
    /// Equal contents: the stored buffers and the tail (stale storage is not compared).
    fn eq(&self, other: &Self) -> bool {
        self.bufs() == other.bufs() && self.tail == other.tail
    }
}

/// The packed-ring walk (§2.8.6, §2.8.7): the direct buffers copied at pop, then what follows
/// them: nothing, an error, or one indirect table read entry by entry, in order. It borrows
/// the chain, so it is no larger than the split walk.
struct PackedWalk<'m, M: ?Sized> {
    mem: &'m M,
    body: &'m PackedBody,
    /// Next copied buffer to yield.
    pos: u16,
    /// Next indirect table entry to read.
    idx: u16,
    done: bool,
    budget: ChainBudget,
}

debug_fields!(['m, M: ?Sized + fmt::Debug] ['m, M] PackedWalk {
    mem, body, pos, idx, done, budget
});

impl<'m, M: GuestMemory + ?Sized> DescriptorIter<'m, M> {
    /// The walk of a packed chain; an indirect table gets a budget of `size` buffers.
    pub(crate) fn packed(mem: &'m M, body: &'m PackedBody, size: u16) -> Self {
        DescriptorIter(Walk::Packed(PackedWalk {
            mem,
            body,
            pos: 0,
            idx: 0,
            done: false,
            budget: ChainBudget::new(u32::from(size)),
        }))
    }
}

impl<M: GuestMemory + ?Sized> PackedWalk<'_, M> {
    fn fail(&mut self, e: ChainError) -> Option<Result<Descriptor, ChainError>> {
        self.done = true;
        debug!("virtq: malformed packed chain: {}", e);
        Some(Err(e))
    }

    fn next(&mut self) -> Option<Result<Descriptor, ChainError>> {
        if self.done {
            return None;
        }
        if let Some(d) = self.body.bufs().get(usize::from(self.pos)) {
            self.pos = self.pos.saturating_add(1);
            return Some(Ok(*d));
        }
        let (table, entries) = match self.body.tail {
            PackedTail::End => {
                self.done = true;
                return None;
            }
            PackedTail::Error(e) => return self.fail(e),
            PackedTail::Indirect { table, entries } => (table, entries),
        };
        // Every turn reads one table entry; at most `entries` (<= size) turns in all.
        while self.idx < entries {
            let i = self.idx;
            self.idx = self.idx.saturating_add(1);
            // `i < entries <= 32768`: the offset is far below u64::MAX; the table range was
            // checked at pop.
            let Some(addr) = table.checked_add(u64::from(i).saturating_mul(DESC_SIZE)) else {
                return self.fail(ChainError::Memory(MemoryError::Overflow {
                    addr: table.0,
                    len: DESC_SIZE,
                }));
            };
            // The one fetch of this entry, a packed descriptor (§2.8.13): `id` (ignored), and
            // `flags`, of which only WRITE counts (PACKED-32). NEXT does not change the entry
            // count (PACKED-35, H5n).
            let desc: PackedDesc = match self.mem.read_obj(addr) {
                Ok(d) => d,
                Err(e) => return self.fail(ChainError::Memory(e)),
            };
            let writable = DescFlags::from_bits_retain(desc.flags.get()).contains(DescFlags::WRITE);
            match self
                .budget
                .admit(self.mem, desc.addr.get(), desc.len.get(), writable)
            {
                Ok(Some(d)) => return Some(Ok(d)),
                Ok(None) => {}
                Err(e) => return self.fail(e),
            }
        }
        self.done = true;
        None
    }
}

/// Where the walk is (feature `defmt`): the table and next entry of a split walk, the buffer
/// and indirect entry of a packed one. Reads no guest memory.
#[cfg(feature = "defmt")]
impl<M: ?Sized> defmt::Format for DescriptorIter<'_, M> {
    fn format(&self, f: defmt::Formatter<'_>) {
        match &self.0 {
            Walk::Split(w) => defmt::write!(
                f,
                "DescriptorIter::Split {{ table: {}, next: {}, hops: {=u16}, indirect: {=bool} }}",
                w.table,
                w.next,
                w.hops,
                w.in_indirect
            ),
            Walk::Packed(w) => defmt::write!(
                f,
                "DescriptorIter::Packed {{ buffer: {=u16}, indirect_entry: {=u16}, done: {=bool} }}",
                w.pos,
                w.idx,
                w.done
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::RegionTable;

    /// The packed walk shares `DescriptorIter` with the split walk and adds at most the enum
    /// tag to it (the split hot path moves this iterator around).
    #[test]
    fn packed_walk_does_not_enlarge_the_iterator() {
        type M = RegionTable<1>;
        let p = size_of::<PackedWalk<'_, M>>();
        let s = size_of::<SplitWalk<'_, M>>();
        let i = size_of::<DescriptorIter<'_, M>>();
        assert!(p <= s && i <= s + 8, "packed {p} split {s} iter {i}");
    }
}
