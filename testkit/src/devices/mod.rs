//! Example device models built only on `virtq`'s public API: a virtio-blk RAM disk, a
//! virtio-console that echoes, and a virtio-net loopback. Each implements
//! [`VirtioDevice`](virtq::transport::VirtioDevice), so it runs behind
//! [`MmioTransport`](virtq::transport::MmioTransport) and can be driven by the real guest in
//! [`crate::guest`].
//!
//! They are written the way a hypervisor's device would be: every chain is copied and
//! validated ([`collect`]), bytes move through [`virtq::io`]'s reader and writer, completions
//! go through [`Queue::drain`](virtq::Queue::drain), and a malformed chain is completed with
//! length 0 (escalation (a)) so one bad request does not stop the queue.
//!
//! Each serves both ring formats: created with `Features::RING_PACKED` among its extra
//! features, it is offered the packed ring and, if the driver takes it, runs the same handler
//! on [`PackedQueue::drain`](virtq::PackedQueue::drain) through the [`Ring`] trait. The
//! packed-ring driver is [`crate::PackedDriver`] (virtio-drivers has no packed ring).

pub mod blk;
pub mod console;
pub mod net;

pub use blk::BlkDevice;
pub use console::ConsoleDevice;
pub use net::NetDevice;

use std::collections::VecDeque;

use virtq::io::{Writer, split_descriptors};
use virtq::{
    ChainError, Completion, Descriptor, DescriptorChain, DescriptorIter, DrainReport, GuestMemory,
    PackedChain, PackedQueue, Queue, QueueError,
};

/// Walk `chain` once and copy its validated descriptors into `out` (cleared first).
pub fn collect<M: GuestMemory + ?Sized, C: RingChain>(
    chain: &C,
    mem: &M,
    out: &mut Vec<Descriptor>,
) -> Result<(), ChainError> {
    out.clear();
    for d in chain.walk(mem) {
        match d {
            Ok(d) => out.push(d),
            Err(e) => {
                out.clear();
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Direct buffers a packed chain may have on the example devices' queues (the `N` of
/// [`PackedChain<N>`], a device cap, PACKED-25): room for Linux virtio-net's 19-descriptor
/// transmit chains (`MAX_SKB_FRAGS + 2`) and virtio-blk requests of up to 62 data segments,
/// without `VIRTIO_F_INDIRECT_DESC`. A longer direct chain is completed with length 0.
pub const PACKED_DIRECT: usize = 64;

/// Chains one `queue_notify` call processes before it lets the transport look at interrupts
/// (the work budget of H17); the handler loops while the queue reports more.
pub const BUDGET: usize = 256;

/// A chain popped from either ring format: what the example devices need to serve it.
pub trait RingChain: Copy {
    /// Walk the chain's buffers (`DescriptorChain::iter` / `PackedChain::iter`).
    fn walk<'a, M: GuestMemory + ?Sized>(&'a self, mem: &'a M) -> DescriptorIter<'a, M>;
}

impl RingChain for DescriptorChain {
    fn walk<'a, M: GuestMemory + ?Sized>(&'a self, mem: &'a M) -> DescriptorIter<'a, M> {
        self.iter(mem)
    }
}

impl<const N: usize> RingChain for PackedChain<N> {
    fn walk<'a, M: GuestMemory + ?Sized>(&'a self, mem: &'a M) -> DescriptorIter<'a, M> {
        self.iter(mem)
    }
}

/// The device-side operations the example devices use, on either ring format (split
/// [`Queue`], §2.7, or [`PackedQueue`], §2.8), so one handler serves both.
pub trait Ring {
    /// The chain type the ring pops.
    type Chain: RingChain;

    /// `drain`: pop up to `budget` chains into `handle`, publish once, decide the interrupt.
    fn drain_with<M, F>(
        &mut self,
        mem: &M,
        budget: usize,
        handle: F,
    ) -> Result<DrainReport, QueueError>
    where
        M: GuestMemory + ?Sized,
        F: FnMut(&Self::Chain) -> Completion;

    /// Add a used entry for a kept chain (not yet published).
    fn complete<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        chain: &Self::Chain,
        len: u32,
    ) -> Result<(), QueueError>;

    /// Publish what was added; whether the driver must be interrupted.
    fn publish<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> bool;
}

impl Ring for Queue {
    type Chain = DescriptorChain;

    fn drain_with<M, F>(
        &mut self,
        mem: &M,
        budget: usize,
        mut handle: F,
    ) -> Result<DrainReport, QueueError>
    where
        M: GuestMemory + ?Sized,
        F: FnMut(&Self::Chain) -> Completion,
    {
        self.drain(mem, budget, |c| handle(&c))
    }

    fn complete<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        chain: &Self::Chain,
        len: u32,
    ) -> Result<(), QueueError> {
        self.add_used(mem, chain.head_index(), len)
    }

    fn publish<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> bool {
        self.publish_used(mem).is_ok() && self.needs_notification(mem) == Ok(true)
    }
}

impl Ring for PackedQueue {
    type Chain = PackedChain<PACKED_DIRECT>;

    fn drain_with<M, F>(
        &mut self,
        mem: &M,
        budget: usize,
        handle: F,
    ) -> Result<DrainReport, QueueError>
    where
        M: GuestMemory + ?Sized,
        F: FnMut(&Self::Chain) -> Completion,
    {
        let mut chain = PackedChain::<PACKED_DIRECT>::EMPTY;
        self.drain_into(mem, budget, &mut chain, handle)
    }

    fn complete<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        chain: &Self::Chain,
        len: u32,
    ) -> Result<(), QueueError> {
        self.add_used(mem, chain, len)
    }

    fn publish<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> bool {
        self.publish_used(mem).is_ok() && self.needs_notification(mem) == Ok(true)
    }
}

/// Drain `q` in rounds of [`BUDGET`] chains until it reports no more work, calling `handle`
/// for each chain; whether the driver must be interrupted.
pub fn drain_all<R: Ring, M: GuestMemory + ?Sized>(
    q: &mut R,
    mem: &M,
    mut handle: impl FnMut(&R::Chain) -> Completion,
) -> bool {
    let mut notify = false;
    loop {
        match q.drain_with(mem, BUDGET, &mut handle) {
            Ok(r) => {
                notify |= r.notify;
                if !r.more {
                    return notify;
                }
            }
            Err(_) => return notify,
        }
    }
}

/// Receive buffers a device keeps between notifications (posted by the driver, not filled yet),
/// for whichever ring format the driver chose.
#[derive(Debug, Default)]
pub struct Posted {
    split: VecDeque<DescriptorChain>,
    packed: VecDeque<PackedChain<PACKED_DIRECT>>,
}

impl Posted {
    /// Forget every kept buffer: they belong to a queue incarnation that was reset (H19).
    pub fn clear(&mut self) {
        self.split.clear();
        self.packed.clear();
    }
}

/// A [`Ring`] whose kept receive buffers live in [`Posted`].
pub trait RxRing: Ring {
    /// This ring format's kept buffers.
    fn posted(p: &mut Posted) -> &mut VecDeque<Self::Chain>;
}

impl RxRing for Queue {
    fn posted(p: &mut Posted) -> &mut VecDeque<DescriptorChain> {
        &mut p.split
    }
}

impl RxRing for PackedQueue {
    fn posted(p: &mut Posted) -> &mut VecDeque<PackedChain<PACKED_DIRECT>> {
        &mut p.packed
    }
}

/// A device with a receive queue (index 0) and a transmit queue (index 1) that delivers what
/// the driver transmits back on the receive queue in some form (console echo, net loopback).
pub trait Loopback {
    /// The bytes of one transmitted chain.
    fn transmitted(&mut self, data: Vec<u8>);
    /// Whether anything waits for a receive buffer.
    fn has_rx_data(&self) -> bool;
    /// Write waiting data into one receive buffer; the used length (bytes written).
    fn receive<M: GuestMemory + ?Sized>(&mut self, wr: &mut Writer<'_, M>) -> u32;
    /// The kept receive buffers and a scratch list for copied chains.
    fn buffers(&mut self) -> (&mut Posted, &mut Vec<Descriptor>);
}

/// A notification for `index` on a [`Loopback`] device: drain the transmit queue if it was
/// kicked, take newly posted receive buffers, and fill as many as there is data for. Whether
/// the driver must be interrupted.
pub fn serve_loopback<D: Loopback, R: RxRing, M: GuestMemory + ?Sized>(
    dev: &mut D,
    index: u16,
    queues: &mut [R],
    mem: &M,
) -> bool {
    let [rx, tx, ..] = queues else {
        return false;
    };
    let mut notify = false;
    if index == 1 {
        let mut scratch = std::mem::take(dev.buffers().1);
        notify |= drain_all(tx, mem, |chain| {
            if collect(chain, mem, &mut scratch).is_ok() {
                let (mut rd, _) = split_descriptors(mem, &scratch);
                let mut data = vec![0u8; rd.remaining() as usize];
                if rd.read_exact(&mut data).is_ok() {
                    dev.transmitted(data);
                }
            }
            Completion::Used(0)
        });
        *dev.buffers().1 = scratch;
    }
    let (posted, scratch) = dev.buffers();
    let mut posted = std::mem::take(R::posted(posted));
    let mut scratch = std::mem::take(scratch);
    let taken = rx.drain_with(mem, usize::MAX, |chain| {
        posted.push_back(*chain);
        Completion::Deferred
    });
    // A stopped receive queue takes nothing and completes nothing.
    let live = taken.is_ok();
    notify |= taken.is_ok_and(|r| r.notify);
    let mut any = false;
    while live && dev.has_rx_data() {
        let Some(chain) = posted.pop_front() else {
            break;
        };
        // A malformed receive chain is completed with length 0; the data waits for the next.
        let mut len = 0;
        if collect(&chain, mem, &mut scratch).is_ok() {
            let (_, mut wr) = split_descriptors(mem, &scratch);
            len = dev.receive(&mut wr);
        }
        any |= rx.complete(mem, &chain, len).is_ok();
    }
    if any {
        notify |= rx.publish(mem);
    }
    let (kept, kept_scratch) = dev.buffers();
    *R::posted(kept) = posted;
    *kept_scratch = scratch;
    notify
}
