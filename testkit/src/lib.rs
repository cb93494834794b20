//! Host-side test kit for `virtq`: guest RAM in a `Vec`, and a driver-side model of the split
//! ring that publishes well-formed and hostile chains and reads the used ring back.
//!
//! [`guest`] lets the real `virtio-drivers` guest drive a device through the virtio-mmio trap
//! path, and [`devices`] holds example device models (blk RAM disk, echo console, net
//! loopback) built only on `virtq`'s public API. [`trap`] runs `virtio-drivers`' own transport
//! code unmodified against a `virtq` transport: register windows that fault on every access,
//! decoded and forwarded like a hypervisor's trap handler does.
//!
//! [`conformance`] checks a `GuestMemory` implementation against the trait's contract.
//! [`model`] is a reference model of the split ring's rules, [`explore`] an exhaustive
//! explorer of device/driver protocols under a store-buffer memory model, and [`scripted`]
//! memories whose answers follow a fixed script (livelock tests).
//!
//! Device authors can use it for their own tests. It is `std` code and never part of a
//! hypervisor image.
//!
//! ```
//! use virtq::{Features, Queue};
//! use virtq_testkit::{SplitDriver, TestMemory};
//!
//! // Guest RAM with a hole (map M0), and the driver side of an 8-entry split ring in it.
//! let mem = TestMemory::m0();
//! let mut driver = SplitDriver::standard(&mem, 8);
//! let mut queue: Queue = driver.queue(8, Features::empty());
//! let head = driver.add_chain(&[(0x8_0000, 16, false), (0x8_1000, 512, true)]).unwrap();
//!
//! // The device under test pops the chain and completes it with 512 bytes written.
//! let chain = queue.pop_avail(&mem).unwrap().unwrap();
//! queue.push_used(&mem, chain.head_index(), 512).unwrap();
//!
//! // The driver sees the completion.
//! assert_eq!(driver.pop_used(), Some((u32::from(head), 512)));
//! ```

#![deny(missing_docs)]

pub mod conformance;
pub mod devices;
pub mod explore;
pub mod guest;
pub mod memory;
pub mod model;
pub mod packed;
pub mod scripted;
pub mod split;
pub mod trap;

pub use memory::{Access, AccessKind, TestMemory};
pub use packed::{PackedDriver, pflags};
pub use split::{SplitDriver, desc_flags};

/// The README's example, compiled and run by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
