//! One device contract for both ring formats (VIRTIO 1.4 §2.7 split, §2.8 packed).
//!
//! A transport hands a device model its queues as [`Queues`]: the split queues, or the packed
//! ones once the driver negotiated `VIRTIO_F_RING_PACKED`. [`Queues::get`] gives one queue as
//! an [`AnyQueue`], whose methods are those of [`Queue`] and [`PackedQueue`] (pop, complete,
//! publish, the notification protocol and the drain loop); a popped chain is an [`AnyChain`],
//! walked and read the same way whichever ring it came from. A device model written against
//! these types serves both formats with one handler and no generic parameter of its own.
//!
//! The cost is a branch on the format per call; the drain loop is the queues' own
//! ([`Queue::drain`], [`PackedQueue::drain_into`]) with the same budget accounting.

use crate::chain::{ChainError, Descriptor, DescriptorChain, DescriptorIter};
use crate::error::QueueError;
use crate::io::{ChainReader, ChainWriter};
use crate::memory::GuestMemory;
use crate::notify::{Completion, DrainReport, DrainRing, drain_loop};
use crate::packed::{PACKED_DEFAULT_DIRECT, PackedChain, PackedQueue};
use crate::split::Queue;
use crate::wire::Features;

/// Every queue of a device, in the ring format the driver negotiated: what
/// [`VirtioDevice::queue_notify`](super::VirtioDevice::queue_notify) receives.
///
/// A device may complete chains on any of them (a network loopback receives on queue 0 what
/// was sent on queue 1); only ready, unbroken queues do anything, and every queue method
/// refuses the others in O(1).
#[derive(Debug)]
pub enum Queues<'a> {
    /// Split rings (§2.7): `VIRTIO_F_RING_PACKED` was not negotiated.
    Split(&'a mut [Queue]),
    /// Packed rings (§2.8).
    Packed(&'a mut [PackedQueue]),
}

impl Queues<'_> {
    /// How many queues the transport has (including ones the device does not offer).
    pub fn len(&self) -> usize {
        match self {
            Self::Split(q) => q.len(),
            Self::Packed(q) => q.len(),
        }
    }

    /// Whether there are no queues.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether these are packed rings.
    pub const fn is_packed(&self) -> bool {
        matches!(self, Self::Packed(_))
    }

    /// Queue `index`, if the transport has it.
    pub fn get(&mut self, index: u16) -> Option<AnyQueue<'_>> {
        let i = usize::from(index);
        match self {
            Self::Split(q) => q.get_mut(i).map(AnyQueue::Split),
            Self::Packed(q) => q.get_mut(i).map(AnyQueue::Packed),
        }
    }

    /// Several distinct queues at once (for example a receive and a transmit queue); `None`
    /// if an index is out of range or named twice.
    pub fn get_disjoint<const K: usize>(&mut self, indices: [u16; K]) -> Option<[AnyQueue<'_>; K]> {
        let indices = indices.map(usize::from);
        match self {
            Self::Split(q) => q
                .get_disjoint_mut(indices)
                .ok()
                .map(|qs| qs.map(AnyQueue::Split)),
            Self::Packed(q) => q
                .get_disjoint_mut(indices)
                .ok()
                .map(|qs| qs.map(AnyQueue::Packed)),
        }
    }

    /// The same queues for a shorter borrow (to pass them on and keep using them).
    pub fn reborrow(&mut self) -> Queues<'_> {
        match self {
            Self::Split(q) => Queues::Split(q),
            Self::Packed(q) => Queues::Packed(q),
        }
    }
}

/// One queue in either ring format, with the operations of [`Queue`] and [`PackedQueue`]:
/// pop a chain, complete it, publish, decide the interrupt, the notification protocol and the
/// drain loop.
#[derive(Debug)]
pub enum AnyQueue<'a> {
    /// A split ring (§2.7).
    Split(&'a mut Queue),
    /// A packed ring (§2.8).
    Packed(&'a mut PackedQueue),
}

/// Call `$body` with `$q` bound to the split or the packed queue.
macro_rules! either {
    ($self:expr, $q:ident => $body:expr) => {
        match $self {
            AnyQueue::Split($q) => $body,
            AnyQueue::Packed($q) => $body,
        }
    };
}

impl AnyQueue<'_> {
    /// Whether this is a packed ring.
    pub const fn is_packed(&self) -> bool {
        matches!(self, Self::Packed(_))
    }

    /// Whether the driver enabled the queue and the transport accepted it (`QueueReady`).
    pub fn is_ready(&self) -> bool {
        either!(self, q => q.ready)
    }

    /// Whether a fatal error stopped the queue (until reset).
    pub fn is_broken(&self) -> bool {
        either!(self, q => q.is_broken())
    }

    /// The fatal error that stopped the queue, if any.
    pub fn error(&self) -> Option<QueueError> {
        either!(self, q => q.error())
    }

    /// The queue size the driver chose (`QueueNum`).
    pub fn size(&self) -> u16 {
        either!(self, q => q.size)
    }

    /// The negotiated features the queue acts on (INDIRECT_DESC, EVENT_IDX, IN_ORDER).
    pub fn features(&self) -> Features {
        either!(self, q => q.features)
    }

    /// Chains popped and not yet completed.
    pub fn in_flight(&self) -> u16 {
        either!(self, q => q.in_flight())
    }

    /// Whether the driver made chains available that were not popped yet
    /// ([`Queue::has_pending`], [`PackedQueue::has_pending`]).
    pub fn has_pending<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<bool, QueueError> {
        either!(self, q => q.has_pending(mem))
    }

    /// Pop the next available chain into `chain` ([`Queue::pop_avail`],
    /// [`PackedQueue::pop_avail_into`]): `Ok(true)` with the chain there, `Ok(false)` if none
    /// is available. On `Ok(false)` or an error, `chain` is left empty. A packed chain holds
    /// up to `N` direct buffers (PACKED-25).
    pub fn pop_avail_into<M: GuestMemory + ?Sized, const N: usize>(
        &mut self,
        mem: &M,
        chain: &mut AnyChain<N>,
    ) -> Result<bool, QueueError> {
        match self {
            Self::Split(q) => {
                let popped = q.pop_avail(mem);
                chain.inner = match popped {
                    Ok(Some(c)) => Inner::Split(c),
                    _ => Inner::Empty,
                };
                popped.map(|c| c.is_some())
            }
            Self::Packed(q) => {
                // Reuse the packed storage when the chain already holds one (no copy of its
                // `16 * N` bytes per pop).
                if !matches!(chain.inner, Inner::Packed(_)) {
                    chain.inner = Inner::Packed(PackedChain::EMPTY);
                }
                match &mut chain.inner {
                    Inner::Packed(p) => q.pop_avail_into(mem, p),
                    _ => Ok(false),
                }
            }
        }
    }

    /// Add (without publishing) the used element for `chain` with `bytes_written` bytes
    /// written to its writable part ([`Queue::add_used`], [`PackedQueue::add_used`]).
    ///
    /// A chain of the other ring format, or an empty one, is refused with
    /// [`QueueError::HeadNotInFlight`] and nothing is written.
    pub fn add_used<M: GuestMemory + ?Sized, const N: usize>(
        &mut self,
        mem: &M,
        chain: &AnyChain<N>,
        bytes_written: u32,
    ) -> Result<(), QueueError> {
        match (self, &chain.inner) {
            (Self::Split(q), Inner::Split(c)) => q.add_used(mem, c.head_index(), bytes_written),
            (Self::Packed(q), Inner::Packed(c)) => q.add_used(mem, c, bytes_written),
            _ => Err(QueueError::HeadNotInFlight {
                head: chain.head_index(),
            }),
        }
    }

    /// Publish the used elements added since the last publication; how many
    /// ([`Queue::publish_used`], [`PackedQueue::publish_used`]).
    pub fn publish_used<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<u16, QueueError> {
        either!(self, q => q.publish_used(mem))
    }

    /// [`add_used`](Self::add_used), then [`publish_used`](Self::publish_used).
    pub fn push_used<M: GuestMemory + ?Sized, const N: usize>(
        &mut self,
        mem: &M,
        chain: &AnyChain<N>,
        bytes_written: u32,
    ) -> Result<(), QueueError> {
        self.add_used(mem, chain, bytes_written)?;
        self.publish_used(mem).map(|_| ())
    }

    /// Whether the driver must be interrupted for what was published since the last call,
    /// after the suppression rules ([`Queue::needs_notification`],
    /// [`PackedQueue::needs_notification`]).
    pub fn needs_notification<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<bool, QueueError> {
        either!(self, q => q.needs_notification(mem))
    }

    /// Ask for available-buffer notifications again and re-check the ring: `true` if work
    /// raced in, which the device must serve (or count against its budget) because no kick
    /// may come for it ([`Queue::enable_notification`],
    /// [`PackedQueue::enable_notification`]).
    pub fn enable_notification<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<bool, QueueError> {
        either!(self, q => q.enable_notification(mem))
    }

    /// Ask the driver not to send available-buffer notifications (a hint).
    pub fn disable_notification<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<(), QueueError> {
        either!(self, q => q.disable_notification(mem))
    }

    /// Stop the queue because of a malformed chain the device will not complete
    /// (escalation (b)); the transport raises DEVICE_NEEDS_RESET.
    pub fn mark_broken(&mut self, e: ChainError) {
        either!(self, q => q.mark_broken(e));
    }

    /// The drain loop ([`Queue::drain`], [`PackedQueue::drain`]): kicks off while working, at
    /// most `budget` units of work (a chain, or a re-check that reported work), one
    /// publication and one interrupt decision; `more` in the report when the budget ran out
    /// with work left (no kick will come for it: call again). Packed chains are popped into
    /// default storage ([`PACKED_DEFAULT_DIRECT`] direct buffers); use
    /// [`drain_into`](Self::drain_into) to choose it.
    pub fn drain<M, F>(
        &mut self,
        mem: &M,
        budget: usize,
        handle: F,
    ) -> Result<DrainReport, QueueError>
    where
        M: GuestMemory + ?Sized,
        F: FnMut(&AnyChain) -> Completion,
    {
        let mut chain = AnyChain::EMPTY;
        self.drain_into(mem, budget, &mut chain, handle)
    }

    /// [`drain`](Self::drain), popping each chain into `chain` (reused storage; `N` is the
    /// device's cap on direct buffers per packed chain). A [`Completion::Deferred`] chain must
    /// be copied out of `chain` by the handler, since the next pop overwrites it.
    pub fn drain_into<M, F, const N: usize>(
        &mut self,
        mem: &M,
        budget: usize,
        chain: &mut AnyChain<N>,
        handle: F,
    ) -> Result<DrainReport, QueueError>
    where
        M: GuestMemory + ?Sized,
        F: FnMut(&AnyChain<N>) -> Completion,
    {
        drain_loop(self, mem, budget, chain, handle)
    }

    /// The split queue, if this is one.
    pub fn as_split(&mut self) -> Option<&mut Queue> {
        match self {
            Self::Split(q) => Some(q),
            Self::Packed(_) => None,
        }
    }

    /// The packed queue, if this is one.
    pub fn as_packed(&mut self) -> Option<&mut PackedQueue> {
        match self {
            Self::Split(_) => None,
            Self::Packed(q) => Some(q),
        }
    }
}

impl<M: GuestMemory + ?Sized, const N: usize> DrainRing<M, AnyChain<N>> for AnyQueue<'_> {
    fn kicks_off(&mut self, mem: &M) -> Result<(), QueueError> {
        self.disable_notification(mem)
    }
    fn kicks_on(&mut self, mem: &M) -> Result<bool, QueueError> {
        self.enable_notification(mem)
    }
    fn pending(&mut self, mem: &M) -> Result<bool, QueueError> {
        self.has_pending(mem)
    }
    fn pop(&mut self, mem: &M, chain: &mut AnyChain<N>) -> Result<bool, QueueError> {
        self.pop_avail_into(mem, chain)
    }
    fn complete(&mut self, mem: &M, chain: &AnyChain<N>, len: u32) -> Result<(), QueueError> {
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

/// A chain popped from either ring format ([`DescriptorChain`] or [`PackedChain<N>`]), or
/// empty storage for [`AnyQueue::pop_avail_into`].
///
/// Walk it with [`iter`](Self::iter), read and write its buffers with
/// [`reader`](Self::reader) / [`writer`](Self::writer), complete it with
/// [`AnyQueue::add_used`]. Like the chains it wraps it borrows neither the queue nor the
/// memory, so a device may keep it (a posted receive buffer) and complete it later, before
/// the queue is reset. `N` is how many direct buffers a packed chain holds
/// ([`PackedQueue::pop_avail_into`]); the value is about `16 * N` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnyChain<const N: usize = PACKED_DEFAULT_DIRECT> {
    inner: Inner<N>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Inner<const N: usize> {
    Empty,
    Split(DescriptorChain),
    Packed(PackedChain<N>),
}

/// What an empty chain walks: a packed chain with no buffers.
static NO_BUFFERS: PackedChain<0> = PackedChain::EMPTY;

impl<const N: usize> Default for AnyChain<N> {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl<const N: usize> From<DescriptorChain> for AnyChain<N> {
    fn from(c: DescriptorChain) -> Self {
        Self {
            inner: Inner::Split(c),
        }
    }
}

impl<const N: usize> From<PackedChain<N>> for AnyChain<N> {
    fn from(c: PackedChain<N>) -> Self {
        Self {
            inner: Inner::Packed(c),
        }
    }
}

impl<const N: usize> AnyChain<N> {
    /// No chain: storage to pop into. It walks as empty and cannot be completed.
    pub const EMPTY: Self = Self {
        inner: Inner::Empty,
    };

    /// Whether this holds no chain (or a packed chain storage that was never filled).
    pub const fn is_empty(&self) -> bool {
        match &self.inner {
            Inner::Empty => true,
            Inner::Split(_) => false,
            Inner::Packed(p) => p.descriptor_count() == 0,
        }
    }

    /// The ID to complete the chain with: the head index of a split chain (§2.7.8), the
    /// Buffer ID of a packed one (§2.8.6); 0 for an empty chain.
    pub const fn head_index(&self) -> u16 {
        match &self.inner {
            Inner::Empty => 0,
            Inner::Split(c) => c.head_index(),
            Inner::Packed(p) => p.head_index(),
        }
    }

    /// Walk the chain's validated, non-empty buffers in order ([`DescriptorChain::iter`],
    /// [`PackedChain::iter`]): on the first violation the iterator yields `Some(Err(_))`,
    /// then `None` for ever.
    pub fn iter<'a, M: GuestMemory + ?Sized>(&'a self, mem: &'a M) -> DescriptorIter<'a, M> {
        match &self.inner {
            Inner::Empty => NO_BUFFERS.iter(mem),
            Inner::Split(c) => c.iter(mem),
            Inner::Packed(p) => p.iter(mem),
        }
    }

    /// Walk and validate the whole chain into `out` (cleared first; left empty on error; more
    /// than `K` buffers is [`ChainError::TooManySegments`]).
    pub fn copy_into<M: GuestMemory + ?Sized, const K: usize>(
        &self,
        mem: &M,
        out: &mut heapless::Vec<Descriptor, K>,
    ) -> Result<(), ChainError> {
        match &self.inner {
            Inner::Empty => {
                out.clear();
                Ok(())
            }
            Inner::Split(c) => c.copy_into(mem, out),
            Inner::Packed(p) => p.copy_into(mem, out),
        }
    }

    /// A reader over the chain's device-readable part, walking it lazily ([`ChainReader`]
    /// with its default window).
    pub fn reader<'a, M: GuestMemory + ?Sized>(&'a self, mem: &'a M) -> ChainReader<'a, M> {
        ChainReader::from_iter(mem, self.iter(mem))
    }

    /// A writer over the chain's device-writable part, walking it lazily ([`ChainWriter`]
    /// with its default window); its `bytes_written` is the used length.
    pub fn writer<'a, M: GuestMemory + ?Sized>(&'a self, mem: &'a M) -> ChainWriter<'a, M> {
        ChainWriter::from_iter(mem, self.iter(mem))
    }

    /// The split chain, if this is one.
    pub const fn as_split(&self) -> Option<&DescriptorChain> {
        match &self.inner {
            Inner::Split(c) => Some(c),
            _ => None,
        }
    }

    /// The packed chain, if this is one.
    pub const fn as_packed(&self) -> Option<&PackedChain<N>> {
        match &self.inner {
            Inner::Packed(p) => Some(p),
            _ => None,
        }
    }
}

#[cfg(feature = "defmt")]
impl<const N: usize> defmt::Format for AnyChain<N> {
    fn format(&self, f: defmt::Formatter<'_>) {
        match &self.inner {
            Inner::Empty => defmt::write!(f, "AnyChain(empty)"),
            Inner::Split(c) => defmt::write!(f, "AnyChain({})", c),
            Inner::Packed(p) => defmt::write!(f, "AnyChain({})", p),
        }
    }
}
