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

pub mod blk;
pub mod console;
pub mod net;

pub use blk::BlkDevice;
pub use console::ConsoleDevice;
pub use net::NetDevice;

use virtq::{ChainError, Descriptor, DescriptorChain, GuestMemory};

/// Walk `chain` once and copy its validated descriptors into `out` (cleared first).
pub fn collect<M: GuestMemory + ?Sized>(
    chain: &DescriptorChain,
    mem: &M,
    out: &mut Vec<Descriptor>,
) -> Result<(), ChainError> {
    out.clear();
    for d in chain.iter(mem) {
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

/// Chains one `queue_notify` call processes before it lets the transport look at interrupts
/// (the work budget of H17); the handler loops while the queue reports more.
pub const BUDGET: usize = 256;
