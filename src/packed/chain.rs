//! A chain popped from a packed ring: its place in the ring, its copied buffers and its walk
//! (§2.8.6, §2.8.7).

use crate::chain::{ChainError, Descriptor, DescriptorIter, collect_into};
use crate::memory::{GuestAddress, GuestMemory};

/// The default number of non-empty *direct* buffers a [`PackedChain`] holds (the `N` of
/// `PackedChain<N>` when it is not named): a device cap on chain length (PACKED-25, §2.8.5)
/// that the device chooses per queue.
///
/// A packed chain's direct descriptors sit in ring slots that the device's own used descriptors
/// overwrite as soon as another chain completes out of order (§2.8.6), so
/// [`PackedQueue::pop_avail_into`](super::PackedQueue::pop_avail_into) copies them into the chain when it pops it. A chain with
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
pub(crate) struct ChainHead {
    /// Buffer ID from the chain's last descriptor.
    pub(crate) id: u16,
    /// Ring slot of the chain's first descriptor.
    pub(crate) slot: u16,
    /// Driver wrap counter the first descriptor was read with.
    pub(crate) wrap: bool,
    /// Ring descriptors the chain occupies (1 for an indirect chain): the used-cursor skip.
    pub(crate) count: u16,
    /// The queue's in-flight token for this chain (see `in_flight`).
    pub(crate) token: u16,
    /// The popping queue's incarnation: a chain popped before a reset cannot be completed.
    pub(crate) generation: u32,
    /// The ring it was popped from: a chain cannot be completed on another queue.
    pub(crate) ring: GuestAddress,
    /// Queue size: the buffer limit of an indirect table walk.
    pub(crate) size: u16,
}

debug_fields!(ChainHead {
    id,
    slot,
    wrap,
    count,
    token,
    generation,
    ring,
    size
});

impl ChainHead {
    pub(crate) const EMPTY: Self = Self {
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
/// copied out of the ring (room for `N`, default [`PACKED_DEFAULT_DIRECT`](super::PACKED_DEFAULT_DIRECT)), and, for an
/// indirect chain, its validated table.
///
/// The packed counterpart of [`DescriptorChain`](crate::DescriptorChain), with the same
/// methods. A `Copy` value that borrows neither the queue nor the memory: a device can keep it
/// (posted receive buffers) and walk it later, since nothing in the ring is read again. It is
/// `16 * N` bytes and a little more: on hot paths pop into reused storage with
/// [`PackedQueue::pop_avail_into`](super::PackedQueue::pop_avail_into) and pass it by reference (measured on one-descriptor
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
    pub(crate) head: ChainHead,
    /// The copied, validated buffers and what follows them.
    pub(crate) body: PackedBody<[Descriptor; N]>,
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
    /// An empty chain with the default storage ([`PACKED_DEFAULT_DIRECT`](super::PACKED_DEFAULT_DIRECT) direct buffers); for
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
    /// An empty chain: storage for [`PackedQueue::pop_avail_into`](super::PackedQueue::pop_avail_into). It cannot be completed
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
    pub(crate) fn body(&self) -> &PackedBody {
        &self.body
    }

    /// Head and contents, for the queue to fill; neither is generic over `N`.
    #[inline]
    pub(crate) fn parts_mut(&mut self) -> (&mut ChainHead, &mut PackedBody) {
        (&mut self.head, &mut self.body)
    }
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

/// One step of a packed chain's walk over what its pop copied (§2.8.6, §2.8.7): the next
/// direct buffer, then what follows them.
pub(crate) enum PackedStep {
    /// A copied, validated, non-empty buffer.
    Buffer(Descriptor),
    /// The chain ends here.
    End,
    /// The chain is malformed here.
    Error(ChainError),
    /// The chain continues in this indirect table (validated at pop), read entry by entry, in
    /// order, by the shared walk.
    Table { table: GuestAddress, entries: u16 },
}

impl PackedBody {
    /// The walk's step at copied buffer `pos` (advanced past a buffer it returns). Inline:
    /// the iterator calling it stays in registers.
    #[inline(always)]
    pub(crate) fn step(&self, pos: &mut u16) -> PackedStep {
        if let Some(d) = self.bufs().get(usize::from(*pos)) {
            *pos = pos.saturating_add(1);
            return PackedStep::Buffer(*d);
        }
        match self.tail {
            PackedTail::End => PackedStep::End,
            PackedTail::Error(e) => PackedStep::Error(e),
            PackedTail::Indirect { table, entries } => PackedStep::Table { table, entries },
        }
    }
}

impl PartialEq for PackedBody {
    /// Equal contents: the stored buffers and the tail (stale storage is not compared).
    fn eq(&self, other: &Self) -> bool {
        self.bufs() == other.bufs() && self.tail == other.tail
    }
}
