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
//! (the shared `ChainBudget`) when it is popped, and walked through the same [`DescriptorIter`]
//! type; its walk lives next to its ring, in `packed::chain`, with the packed-specific rules
//! (sequential indirect tables, only WRITE meaningful inside them, INDIRECT never in a NEXT
//! list).

use core::fmt;

use crate::memory::{GuestAddress, GuestMemory, GuestMemoryExt, MemoryError};
use crate::packed::{PackedBody, PackedStep};
use crate::wire::{DescFlags, SplitDesc, split_layout::DESC_SIZE};

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
    /// Bytes of the buffers so far (never above `u32::MAX`).
    total: u32,
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
    #[inline(always)]
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
        self.total = match self.total.checked_add(len) {
            Some(t) => t,
            None => return Err(ChainError::LengthOverflow),
        };
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
        DescriptorIter {
            mem,
            packed: None,
            pos: 0,
            table: self.desc_table,
            table_len: self.size,
            next: self.head,
            hops: 0,
            mode: if self.indirect {
                WALKING | INDIRECT_ALLOWED
            } else {
                WALKING
            },
            budget: ChainBudget::new(u32::from(self.size)),
        }
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

/// Iterator over a chain's validated descriptors; see [`DescriptorChain::iter`] and
/// [`PackedChain::iter`](crate::packed::PackedChain::iter).
///
/// One plain struct for both ring formats: no enum to dispatch on, and no call on the walk of a
/// valid chain takes it by reference, so a device loop that walks a chain keeps the whole walk
/// in registers.
pub struct DescriptorIter<'m, M: ?Sized> {
    mem: &'m M,
    /// A packed chain's contents as its pop copied them: the buffers are yielded first, then
    /// the tail is followed (see [`PackedBody::step`]). `None` for a split chain, and once the
    /// copied part is done.
    packed: Option<&'m PackedBody>,
    /// Next copied buffer to yield.
    pos: u16,
    /// The table being walked: a split chain's descriptor table, then possibly one indirect
    /// table; a packed chain's indirect table.
    table: GuestAddress,
    /// Entries in `table`: the bound of every `next` in it and of the hops through it (`size`
    /// in the descriptor table, the entry count in an indirect table).
    table_len: u16,
    /// Next entry of `table` to fetch.
    next: u16,
    /// Entries fetched from `table`, at most `table_len`.
    hops: u16,
    /// [`WALKING`], [`IN_INDIRECT`], [`INDIRECT_ALLOWED`] and [`SEQUENTIAL`].
    mode: u8,
    budget: ChainBudget,
}

debug_fields!(['m, M: ?Sized + fmt::Debug] ['m, M] DescriptorIter {
    mem, packed, pos, table, table_len, next, hops, mode, budget
});

/// The walk continues in `table` at `next` (clear once the chain ended or failed).
const WALKING: u8 = 1;
/// `table` is an indirect table.
const IN_INDIRECT: u8 = 2;
/// VIRTIO_F_INDIRECT_DESC was negotiated (split chains; a packed chain's table was validated
/// at pop).
const INDIRECT_ALLOWED: u8 = 4;
/// `table` is a packed indirect table (§2.8.7): its entries are read in order, all of them,
/// and only WRITE counts among their flags (PACKED-32, PACKED-35, H5n).
const SEQUENTIAL: u8 = 8;

impl<'m, M: ?Sized> DescriptorIter<'m, M> {
    /// The walk of a packed chain's copied contents; an indirect table gets a budget of `size`
    /// buffers.
    #[inline]
    pub(crate) const fn packed(mem: &'m M, body: &'m PackedBody, size: u16) -> Self {
        Self {
            mem,
            packed: Some(body),
            pos: 0,
            table: GuestAddress(0),
            table_len: 0,
            next: 0,
            hops: 0,
            mode: 0,
            budget: ChainBudget::new(size as u32),
        }
    }

    /// End the walk with `e`. Inline, so the walk never leaves registers: no call takes it by
    /// reference (the logging is out of line in [`malformed`]).
    #[inline(always)]
    fn fail(&mut self, e: ChainError) -> Option<Result<Descriptor, ChainError>> {
        self.mode = 0;
        self.packed = None;
        Some(Err(malformed(e)))
    }
}

/// Log a malformed chain; cold, so its paths are laid out away from the walk of a valid one.
#[cold]
#[inline(never)]
fn malformed(e: ChainError) -> ChainError {
    debug!("virtq: malformed chain: {}", e);
    e
}

/// The indirect table that descriptor (`addr`, `len`, `flags`) points to, as (table, entries),
/// after checking the INDIRECT rules on that one copy (§2.7.5.3.1): the walk is not already in
/// a table, the feature was negotiated, NEXT is clear, the length is a non-zero multiple of 16
/// with at most `remaining` entries, and the table is guest RAM. Out of line and taking
/// nothing by reference, so the walk that calls it keeps its state in registers.
#[inline(never)]
fn indirect_table<M: GuestMemory + ?Sized>(
    mem: &M,
    mode: u8,
    remaining: u32,
    addr: u64,
    len: u32,
    flags: DescFlags,
) -> Result<(GuestAddress, u16), ChainError> {
    if mode & IN_INDIRECT != 0 {
        return Err(ChainError::NestedIndirect);
    }
    if mode & INDIRECT_ALLOWED == 0 {
        return Err(ChainError::IndirectNotNegotiated);
    }
    if flags.contains(DescFlags::NEXT) {
        return Err(ChainError::IndirectWithNext);
    }
    let entries = len / 16;
    if len == 0 || !len.is_multiple_of(16) || entries > remaining {
        return Err(ChainError::IndirectTableLength { len });
    }
    let table = GuestAddress(addr);
    mem.check_range(table, u64::from(len))?;
    // `entries <= remaining <= size <= 32768`, so it fits in a u16.
    let entries = u16::try_from(entries).map_err(|_| ChainError::IndirectTableLength { len })?;
    Ok((table, entries))
}

impl<M: GuestMemory + ?Sized> Iterator for DescriptorIter<'_, M> {
    type Item = Result<Descriptor, ChainError>;

    #[inline(always)]
    fn next(&mut self) -> Option<Self::Item> {
        if let Some(body) = self.packed {
            match body.step(&mut self.pos) {
                PackedStep::Buffer(d) => return Some(Ok(d)),
                PackedStep::End => {
                    self.packed = None;
                    return None;
                }
                PackedStep::Error(e) => return self.fail(e),
                PackedStep::Table { table, entries } => {
                    self.packed = None;
                    self.table = table;
                    self.table_len = entries;
                    self.mode = WALKING | IN_INDIRECT | SEQUENTIAL;
                }
            }
        }
        self.walk()
    }
}

impl<M: GuestMemory + ?Sized> DescriptorIter<'_, M> {
    /// The walk through `table`.
    #[inline(always)]
    fn walk(&mut self) -> Option<Result<Descriptor, ChainError>> {
        // Every turn either returns or fetches one more descriptor; fetches are bounded by
        // `size` in the descriptor table plus the entry count of at most one indirect table.
        loop {
            if self.mode & WALKING == 0 {
                return None;
            }
            let idx = self.next;
            plant_panic!("chain", idx == 0x5eed);
            // Hop bound of the current table. A loop ends here.
            if self.hops >= self.table_len {
                return self.fail(ChainError::TooLong);
            }
            self.hops = self.hops.saturating_add(1);
            // `idx < table_len <= 2^16`, so the offset fits easily in a u64; the table range
            // itself was checked (descriptor table at queue enable, indirect table on entry).
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
            let len = desc.len.get();
            let (flags, next) = if self.mode & SEQUENTIAL != 0 {
                // A packed indirect entry (§2.8.13): `id` (ignored), then `flags`, where the
                // split layout has `flags` and `next`. Only WRITE counts; the next entry is
                // the following one, up to the table's end.
                let flags = DescFlags::from_bits_retain(desc.next.get()) & DescFlags::WRITE;
                let next = idx.saturating_add(1);
                let more = if next < self.table_len {
                    DescFlags::NEXT
                } else {
                    DescFlags::empty()
                };
                (flags | more, next)
            } else {
                (
                    DescFlags::from_bits_retain(desc.flags.get()),
                    desc.next.get(),
                )
            };

            if flags.contains(DescFlags::INDIRECT) {
                match indirect_table(
                    self.mem,
                    self.mode,
                    self.budget.remaining(),
                    desc.addr.get(),
                    len,
                    flags,
                ) {
                    Ok((table, entries)) => {
                        self.table = table;
                        self.table_len = entries;
                        self.hops = 0;
                        self.next = 0;
                        self.mode |= IN_INDIRECT;
                        continue;
                    }
                    Err(e) => return self.fail(e),
                }
            }

            let admitted = match self.budget.admit(
                self.mem,
                desc.addr.get(),
                len,
                flags.contains(DescFlags::WRITE),
            ) {
                Ok(a) => a,
                Err(e) => return self.fail(e),
            };
            if flags.contains(DescFlags::NEXT) {
                if next >= self.table_len {
                    return self.fail(ChainError::NextOutOfRange { next });
                }
                self.next = next;
            } else {
                self.mode &= !WALKING;
            }
            if let Some(d) = admitted {
                return Some(Ok(d));
            }
        }
    }
}

impl<M: GuestMemory + ?Sized> core::iter::FusedIterator for DescriptorIter<'_, M> {}

/// Where the walk is (feature `defmt`): the table, next entry and hops of the table walk, and
/// for a packed chain the next copied buffer. Reads no guest memory.
#[cfg(feature = "defmt")]
impl<M: ?Sized> defmt::Format for DescriptorIter<'_, M> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "DescriptorIter {{ table: {}, next: {=u16}, hops: {=u16}, walking: {=bool}, indirect: {=bool}, packed_buffer: {} }}",
            self.table,
            self.next,
            self.hops,
            self.mode & WALKING != 0,
            self.mode & IN_INDIRECT != 0,
            self.packed.map(|_| self.pos)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::RegionTable;

    /// Both walks share one iterator, no larger than the split walk alone was (64 bytes on a
    /// 64-bit target), which a device loop keeps in registers.
    #[test]
    fn the_iterator_is_small() {
        let i = size_of::<DescriptorIter<'_, RegionTable<1>>>();
        assert!(i <= 64, "iter {i}");
    }
}
