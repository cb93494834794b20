//! # virtq — the device side of VIRTIO virtqueues for bare-metal hypervisors
//!
//! `virtq` serves the *device* side of virtio virtqueues (VIRTIO 1.4 §2.6–2.7) for a
//! hypervisor or firmware that has no operating system beneath it. The guest that drives the
//! queues is untrusted: every byte it wrote into a descriptor table, a ring or a transport
//! register may be hostile and may change while the device reads it. The library
//!
//! * reads guest memory only through the [`GuestMemory`] trait the hypervisor implements over
//!   its stage-2 mapping (two implementations are provided: [`memory::HostRegion`] and
//!   [`memory::RegionTable`]);
//! * copies every descriptor and ring entry out of guest memory exactly once and validates the
//!   copy (no double fetch);
//! * accesses index words (`avail.idx`, ring entries, `used.idx`) as single-copy-atomic 16-bit
//!   loads and stores, with explicit, commented memory barriers;
//! * never panics, never allocates, and bounds every loop by the queue size, whatever the guest
//!   writes; a malformed ring or chain is a typed error ([`QueueError`], [`ChainError`]).
//!
//! ## Layers
//!
//! | module | holds |
//! |---|---|
//! | [`transport`] | [`MmioTransport`](transport::MmioTransport) (virtio-mmio, §4.2, v2 and legacy) and [`PciTransport`](transport::PciTransport) (virtio-pci, §4.1: configuration space, BAR, MSI-X, INTx) on one transport core, which a trap handler forwards to, and the [`VirtioDevice`](transport::VirtioDevice) trait a device model implements |
//! | [`split`] | [`Queue`], the split virtqueue (§2.7) |
//! | [`packed`] | [`PackedQueue`], the packed virtqueue (§2.8), same shape of API |
//! | [`chain`] | [`DescriptorChain`], validated [`Descriptor`]s and the chain walk |
//! | [`drain`] | the drain loop both queues run on a kick ([`Queue::drain`], [`PackedQueue::drain`]) |
//! | [`notify`] | the EVENT_IDX window test both rings share |
//! | [`io`] | [`Reader`] / [`Writer`]: byte streams over a chain's buffers, exact used length |
//! | [`memory`] | [`GuestAddress`], [`GuestMemory`] and the provided accessors |
//! | [`wire`] | little-endian layouts of the ring structures, flag words, feature bits |
//!
//! ## Features
//!
//! No feature is on by default; the library is `no_std` and allocation-free with every
//! combination except `vm-memory`, which needs `std`.
//!
//! | feature | what it does |
//! |---|---|
//! | `defmt` | `defmt::Format` on every public type (the transports print their status, features and interrupt state), and the crate's log messages (a queue stopping on a fatal error, a malformed chain, a refused queue) go to [`defmt`](https://docs.rs/defmt) |
//! | `vm-memory` | [`memory::VmMemory`](crate::memory): [`GuestMemory`] over rust-vmm's `vm-memory` 0.18 (any `vm_memory::GuestMemory`, such as `GuestMemoryMmap`), so a rust-vmm VMM serves virtq from the memory map it has; writes go through vm-memory and its dirty-page bitmap, failed writes write nothing, backend failures are [`MemoryError::Backend`]. Needs `std` |
//! | `serde` | `serde::Serialize` / `Deserialize` for saved states ([`snapshot::Snapshot`]), as their bytes |
//! | `log` | the same messages go to the [`log`](https://docs.rs/log) crate (targets `virtq::…`; levels warn, debug, trace). With `defmt` on as well, defmt takes precedence and `log` receives nothing |
//!
//! ## A device loop in a few lines
//!
//! The loop below is safe to idle after by construction: when it finds the ring empty with
//! kicks enabled under EVENT_IDX, `pop_avail` re-arms (stores `avail_event`, full fence, reads
//! `avail.idx` again), so the device never sleeps on work the driver will not kick for. The
//! protocol is proved exhaustively under a store-buffer memory model in `tests/protocol_*.rs`.
//! [`Queue::drain`] is the same loop with a budget and one publication per batch.
//!
//! ```
//! use virtq::{GuestAddress, GuestMemory, Queue, QueueError};
//!
//! /// Serve every chain the driver made available; complete each with the bytes written.
//! fn serve<M: GuestMemory + ?Sized>(q: &mut Queue, mem: &M) -> Result<(), QueueError> {
//!     while let Some(chain) = q.pop_avail(mem)? {
//!         let mut written = 0u32;
//!         for desc in chain.iter(mem) {
//!             match desc {
//!                 // A real device reads or writes the buffer here.
//!                 Ok(d) if d.is_write_only() => written = written.saturating_add(d.len()),
//!                 Ok(_) => {}
//!                 // A malformed chain: complete it with length 0 (or mark the queue broken).
//!                 Err(_) => { written = 0; break; }
//!             }
//!         }
//!         q.push_used(mem, chain.head_index(), written)?;
//!     }
//!     Ok(())
//! }
//! # let _ = serve::<virtq::memory::RegionTable<1>>;
//! ```
#![no_std]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(unsafe_code)]
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![deny(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        clippy::cast_possible_truncation
    )
)]

// `unsafe` lives in the memory accessor alone (`memory::host`); every other module forbids it,
// so no `allow` further down can bring it back.
#[macro_use]
#[forbid(unsafe_code)]
mod log;
#[macro_use]
mod plant;
#[macro_use]
mod debug_fields;

#[forbid(unsafe_code)]
pub mod chain;
#[cfg(feature = "defmt")]
#[forbid(unsafe_code)]
mod defmt_format;
#[forbid(unsafe_code)]
pub mod drain;
#[forbid(unsafe_code)]
pub mod error;
mod fifo;
#[forbid(unsafe_code)]
mod in_flight;
#[forbid(unsafe_code)]
pub mod in_order;
#[forbid(unsafe_code)]
pub mod io;
pub mod memory;
#[forbid(unsafe_code)]
pub mod notify;
#[forbid(unsafe_code)]
pub mod packed;
#[forbid(unsafe_code)]
pub mod snapshot;
#[forbid(unsafe_code)]
pub mod split;
#[forbid(unsafe_code)]
pub mod transport;
#[forbid(unsafe_code)]
pub mod wire;

pub use chain::{ChainError, Descriptor, DescriptorChain, DescriptorIter};
pub use drain::{Completion, DrainReport};
pub use error::{QueueError, SizeError};
pub use io::{ChainReader, ChainWriter, IoError, Reader, Writer};
pub use memory::{Barrier, GuestAddress, GuestMemory, GuestMemoryExt, MemoryError};
pub use packed::{PackedChain, PackedQueue};
pub use split::Queue;
pub use transport::{AnyChain, AnyQueue, Queues};
pub use wire::Features;

/// The `zerocopy` crate, re-exported at the version `virtq` uses: its traits appear in public
/// signatures ([`GuestMemoryExt::read_obj`] and [`ChainReader::read_obj`] need `FromBytes +
/// IntoBytes`, the `write_obj` methods `IntoBytes + Immutable`, and the [`wire`] layouts have
/// `zerocopy::little_endian` fields). A device derives them on its own headers through this
/// re-export, without a `zerocopy` dependency of its own:
///
/// ```
/// use virtq::zerocopy::little_endian::{U32, U64};
/// use virtq::zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};
///
/// /// A virtio-blk request header (§5.2.6).
/// #[derive(FromBytes, IntoBytes, Immutable, KnownLayout)]
/// #[zerocopy(crate = "virtq::zerocopy")]
/// #[repr(C)]
/// struct BlkHeader {
///     type_: U32,
///     reserved: U32,
///     sector: U64,
/// }
/// # let h = BlkHeader::read_from_bytes(&[0u8; 16]).unwrap();
/// # assert_eq!(h.sector.get() + u64::from(h.type_.get() + h.reserved.get()), 0);
/// ```
pub use zerocopy;

/// The `heapless` crate, re-exported at the version `virtq` uses:
/// [`DescriptorChain::copy_into`] and [`PackedChain::copy_into`] fill a `heapless::Vec`.
pub use heapless;

/// The `vm-memory` crate (feature `vm-memory`), re-exported at the version
/// [`memory::VmMemory`] implements [`GuestMemory`] for.
#[cfg(feature = "vm-memory")]
pub use vm_memory;
