//! Tests of `virtq`'s `vm-memory` adapter (`virtq::memory::VmMemory`); no library code.
//!
//! ```sh
//! cargo test -p virtq-rust-vmm-tests
//! ```
