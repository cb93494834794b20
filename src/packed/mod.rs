//! The packed virtqueue, device side (VIRTIO 1.4 §2.8).
//!
//! One ring of 16-byte descriptors replaces the split ring's three areas. The driver makes a
//! descriptor available by setting its AVAIL bit to the driver's wrap counter and its USED bit
//! to the opposite; the device marks a chain used by overwriting one descriptor at its own used
//! cursor with AVAIL = USED = the device's wrap counter (§2.8.1). [`PackedQueue`] has the same
//! shape of API as the split [`Queue`](crate::Queue).
//!
//! # Guest reads per chain (single fetch, H12)
//!
//! [`PackedQueue::pop_avail`] reads each byte of each ring slot of a chain of `n` descriptors
//! exactly once: its flags word as one single-copy-atomic 16-bit load, then (after an acquire
//! fence that follows the first flags load) `addr`, `len` and `id` as one 14-byte copy (one
//! range check; [`HostRegion`](crate::memory::HostRegion) moves it as seven 16-bit loads).
//! Every check applies to these copies: availability, chain extent, buffer ID (from the *last*
//! descriptor, §2.8.6), buffer ranges, direction order and total length. The validated direct
//! buffers are copied into the returned [`PackedChain<N>`] (at most `N` of them, a cap the
//! device chooses, default [`PACKED_DEFAULT_DIRECT`]), because a used descriptor of another
//! chain may overwrite their slots before the device walks this one (out-of-order completion,
//! §2.8.6). Walking the chain reads nothing from the ring;
//! a chain made of one indirect descriptor reads its table, one 16-byte entry per table entry,
//! once per walk (the table is not in the ring). An empty ring costs one 16-bit load. Under
//! EVENT_IDX with notifications enabled, each pop also stores the device event structure's
//! `off_wrap` (one 16-bit store; never read back).
//!
//! A buffer in a packed chain is checked exactly like one in a split chain (the shared
//! `ChainBudget`): `addr + len` in guest RAM without overflow, no readable buffer after a
//! writable one, at most `size` buffers, total length ≤ `u32::MAX`, zero-length buffers counted
//! but not yielded.
//!
//! # Memory ordering
//!
//! * `pop_avail`: flags load, *acquire* fence, then the rest of the chain (pairs with the
//!   driver's write barrier before it stores the head's flags, §2.8.21.1, PACKED-19).
//! * `add_used` / `publish_used`: the used descriptor's `len` and `id`, then a *release* fence,
//!   then its flags word (PACKED-20). In a batch, the flags of the batch's first used
//!   descriptor are stored last, so the driver (which polls only that slot) sees the batch at
//!   once (PACKED-41).
//! * `needs_notification`: a *full* fence between publishing used descriptors and reading the
//!   driver event suppression structure (PACKED-48).
//! * `enable_notification`: device event structure store, *full* fence, then a re-check of the
//!   next slot (PACKED-49).
//!
//! # Error policy
//!
//! As for the split ring, ring-level violations are *fatal* and sticky until
//! [`PackedQueue::reset`]: a chain whose NEXT list runs into a descriptor that is not available
//! ([`ChainError::Incomplete`](crate::ChainError::Incomplete), H15b), a NEXT list longer than the queue
//! ([`ChainError::TooLong`](crate::ChainError::TooLong), H15c), more descriptors in flight than the queue size
//! ([`QueueError::TooManyInFlight`](crate::QueueError::TooManyInFlight)) and a ring outside guest RAM. Nothing is consumed.
//!
//! A malformed chain whose extent and buffer ID are known (bad buffer address, readable after
//! writable, bad indirect table, INDIRECT in a list or without the feature) is consumed and
//! returned; walking it yields [`ChainError`](crate::ChainError) after the buffers before the violation, exactly
//! like a malformed split chain. The device completes it (typically with length 0) or calls
//! [`PackedQueue::mark_broken`].
//!
//! # Completion
//!
//! Buffer IDs are chosen by the driver and may repeat or exceed the queue size (H15e): they are
//! echoed unchanged and never used as an index. The queue therefore cannot find a chain by its
//! ID, and completion takes the chain itself: [`PackedQueue::push_used`]`(mem, &chain, len)`.
//! The chain knows how many ring slots it occupied, which is how far the used cursor skips.

mod chain;
mod event;
pub mod layout;
mod queue;
pub mod state;

pub use chain::{PACKED_DEFAULT_DIRECT, PackedChain};
pub(crate) use chain::{PackedBody, PackedStep};
pub use queue::PackedQueue;
