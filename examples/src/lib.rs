//! The runnable examples of `virtq`; no library code.
//!
//! ```sh
//! cargo run --release --example blk_demo     # a virtio-blk RAM disk driven by the virtio-drivers guest
//! cargo run --release --example split_demo   # the driver model and a device loop side by side
//! ```
