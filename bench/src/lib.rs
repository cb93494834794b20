//! Benchmarks of `virtq` (see `benches/queue.rs` and `.ci/bench-table.sh`); no library code.
//!
//! ```sh
//! cargo bench -p virtq-bench --bench queue
//! ```
