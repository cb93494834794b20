//! Example device models built only on `virtq`'s public API: a virtio-blk RAM disk, a
//! virtio-console that echoes, and a virtio-net loopback. Each implements
//! [`VirtioDevice`](virtq::transport::VirtioDevice), so it runs behind
//! [`MmioTransport`](virtq::transport::MmioTransport) or
//! [`PciTransport`](virtq::transport::PciTransport) and can be driven by the real guest in
//! [`crate::guest`].
//!
//! They are written the way a hypervisor's device would be:
//!
//! * one notification handler for both ring formats, on [`Queues`] / [`AnyQueue`] /
//!   [`AnyChain`]: created with `Features::RING_PACKED` among its extra features, a device is
//!   offered the packed ring and serves it with the same code (the packed-ring driver is
//!   [`crate::PackedDriver`]; virtio-drivers has no packed ring);
//! * every chain is copied and validated ([`AnyChain::copy_into`]) before its bytes move
//!   through [`virtq::io`]'s reader and writer, and a malformed chain is completed with length
//!   0 (escalation (a)) so one bad request does not stop the queue;
//! * each call does at most a budget of work ([`BUDGET`] unless the device was built with
//!   another) and reports [`NotifyReport::more`] when work is left, so the transport, not the
//!   device, decides when to come back (H17);
//! * nothing in the notification path allocates, frees or locks: storage is fixed-capacity
//!   (`heapless`) or preallocated at construction, as it must be in a trap handler.

pub mod blk;
pub mod console;
pub mod net;

pub use blk::BlkDevice;
pub use console::ConsoleDevice;
pub use net::NetDevice;

use virtq::io::{Reader, Writer, split_descriptors};
use virtq::transport::{AnyChain, AnyQueue, NotifyReport, Queues};
use virtq::{Completion, Descriptor, GuestMemory};

/// Direct buffers a packed chain may have on the example devices' queues (the `N` of
/// [`AnyChain<N>`], a device cap, PACKED-25): room for Linux virtio-net's 19-descriptor
/// transmit chains (`MAX_SKB_FRAGS + 2`) and virtio-blk requests of up to 62 data segments,
/// without `VIRTIO_F_INDIRECT_DESC`. A longer direct chain is completed with length 0.
pub const PACKED_DIRECT: usize = 64;

/// Buffers a chain may have on the example devices (direct, or through an indirect table).
/// A chain with more is completed with length 0 ([`virtq::ChainError::TooManySegments`]).
pub const MAX_SEGMENTS: usize = 256;

/// Units of work (chains, or re-checks that found work) one notification handler call does by
/// default before it returns with `more` (the work budget of H17).
pub const BUDGET: usize = 256;

/// A chain popped from either ring format, with the example devices' packed cap.
pub type Chain = AnyChain<PACKED_DIRECT>;

/// A chain's validated buffers, copied out of guest memory.
pub type Segments = virtq::heapless::Vec<Descriptor, MAX_SEGMENTS>;

/// What a device needs to serve chains without allocating: where chains are popped, where
/// their buffers are copied, and the budget of one call.
#[derive(Debug)]
pub struct Scratch {
    chain: Chain,
    segments: Segments,
    budget: usize,
}

impl Scratch {
    /// Empty storage; `budget` units of work per call (at least 1).
    pub fn new(budget: usize) -> Self {
        Self {
            chain: Chain::EMPTY,
            segments: Segments::new(),
            budget: budget.max(1),
        }
    }

    /// The budget of one call.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// The chain storage, the buffer storage and the budget, to use at once.
    pub fn parts(&mut self) -> (&mut Chain, &mut Segments, usize) {
        (&mut self.chain, &mut self.segments, self.budget)
    }
}

/// Copy `chain`'s validated buffers into `segments` and split them into the readable and the
/// writable part; `None` for a malformed chain (or one with more than [`MAX_SEGMENTS`]).
pub fn buffers<'a, M: GuestMemory + ?Sized>(
    chain: &AnyChain<PACKED_DIRECT>,
    mem: &'a M,
    segments: &'a mut Segments,
) -> Option<(Reader<'a, M>, Writer<'a, M>)> {
    chain.copy_into(mem, segments).ok()?;
    Some(split_descriptors(mem, segments))
}

/// A device with a receive queue (index 0) and a transmit queue (index 1) that delivers what
/// the driver transmits back on the receive queue in some form (console echo, net loopback).
/// Its storage is bounded: what does not fit is dropped and counted, like a full FIFO.
pub(crate) trait Loopback {
    /// Take the readable part of one transmitted chain.
    fn transmit<M: GuestMemory + ?Sized>(&mut self, rd: &mut Reader<'_, M>);
    /// Whether anything waits for a receive buffer.
    fn has_rx_data(&self) -> bool;
    /// Write waiting data into one receive buffer; the used length (bytes written).
    fn receive<M: GuestMemory + ?Sized>(&mut self, wr: &mut Writer<'_, M>) -> u32;
}

/// A notification for `index` on a [`Loopback`] device: drain the transmit queue if it was
/// kicked, then fill receive buffers while there is data, each within the budget.
///
/// Receive buffers are popped only when there is data for them, so the device never keeps a
/// chain between calls (nothing to forget at a queue reset, H19). When data waits and the
/// driver posted no buffer, the device asks for a kick on the receive queue and re-checks.
pub(crate) fn serve_loopback<L: Loopback, M: GuestMemory + ?Sized>(
    dev: &mut L,
    scratch: &mut Scratch,
    index: u16,
    mut queues: Queues<'_>,
    mem: &M,
) -> NotifyReport {
    let Some([mut rx, mut tx]) = queues.get_disjoint([0, 1]) else {
        return NotifyReport::IDLE;
    };
    let mut report = NotifyReport::IDLE;
    if index == 1 {
        let (chain, segments, budget) = scratch.parts();
        report |= tx
            .drain_into(mem, budget, chain, |c| {
                if let Some((mut rd, _)) = buffers(c, mem, segments) {
                    dev.transmit(&mut rd);
                }
                Completion::Used(0)
            })
            .into();
    }
    report | deliver(dev, scratch, &mut rx, mem)
}

/// Fill receive buffers from `dev` while it has data: at most the budget of buffers (and
/// re-checks that found one), one publication, one interrupt decision.
fn deliver<L: Loopback, M: GuestMemory + ?Sized>(
    dev: &mut L,
    scratch: &mut Scratch,
    rx: &mut AnyQueue<'_>,
    mem: &M,
) -> NotifyReport {
    let (chain, segments, budget) = scratch.parts();
    let mut spent = 0;
    let mut added = false;
    let mut more = false;
    while dev.has_rx_data() {
        if spent >= budget {
            more = true;
            break;
        }
        match rx.pop_avail_into(mem, chain) {
            Ok(true) => {
                spent += 1;
                // A malformed receive chain is completed with length 0; the data waits.
                let len =
                    buffers(chain, mem, segments).map_or(0, |(_, mut wr)| dev.receive(&mut wr));
                added |= rx.add_used(mem, chain, len).is_ok();
            }
            // No buffer: ask for a kick when the driver posts one. A buffer that raced in is
            // taken in the next round, the re-check charged like a buffer.
            Ok(false) => match rx.enable_notification(mem) {
                Ok(true) => spent += 1,
                _ => break,
            },
            // A receive queue that is stopped or broken takes nothing.
            Err(_) => break,
        }
    }
    let notify = added && rx.publish_used(mem).is_ok() && rx.needs_notification(mem) == Ok(true);
    NotifyReport { notify, more }
}
