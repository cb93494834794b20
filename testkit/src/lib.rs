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
//!
//! Device authors can use it for their own tests. It is `std` code and never part of a
//! hypervisor image.

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
