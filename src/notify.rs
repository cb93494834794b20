//! Notification math shared by the split and packed rings (VIRTIO 1.4 §2.7.7, §2.7.10,
//! §2.8.10).
//!
//! The only arithmetic here is the EVENT_IDX window test. It is generic over the index width so
//! the same code that runs on 16-bit ring indices can be proved exhaustively on 8-bit ones.

// The drain loop's report and completion types lived here before `drain` had its own module.
pub use crate::drain::{Completion, DrainReport};
// And the loop itself, for the transport's callers of the old paths (src/transport is edited
// elsewhere; this keeps it building unchanged).
pub(crate) use crate::drain::{DrainRing, drain_loop};

/// An unsigned, free-running ring index (`u8` for proofs, `u16` on the wire).
pub trait RingIndex: Copy + Eq + Ord {
    /// The value 1.
    const ONE: Self;
    /// Subtraction modulo 2ⁿ.
    fn wrapping_sub(self, other: Self) -> Self;
}

impl RingIndex for u8 {
    const ONE: Self = 1;
    #[inline]
    fn wrapping_sub(self, other: Self) -> Self {
        u8::wrapping_sub(self, other)
    }
}

impl RingIndex for u16 {
    const ONE: Self = 1;
    #[inline]
    fn wrapping_sub(self, other: Self) -> Self {
        u16::wrapping_sub(self, other)
    }
}

/// The EVENT_IDX window test (§2.7.7.2, `vring_need_event` in the spec's `virtio_ring.h`).
///
/// The device has moved its index from `old` to `new` (publishing the entries at positions
/// `old, old + 1, …, new - 1`, modulo 2ⁿ) and the driver asked to be notified when the entry at
/// position `event` is written. Returns whether `event` is one of the positions just written:
/// `(new - event - 1) mod 2ⁿ < (new - old) mod 2ⁿ`. Wrap-safe for any batch of fewer than 2ⁿ
/// entries; `old == new` never notifies.
#[doc(alias = "vring_need_event")]
#[inline]
pub fn need_event<T: RingIndex>(event: T, new: T, old: T) -> bool {
    plant_panic!("notify", event == new && new == old);
    new.wrapping_sub(event).wrapping_sub(T::ONE) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    /// The spec's definition, literally: notify iff one of the positions written while moving
    /// from `old` to `new` equals `event`.
    fn written_positions(old: u8, new: u8) -> [bool; 256] {
        let mut set = [false; 256];
        let mut p = old;
        while p != new {
            set[usize::from(p)] = true;
            p = p.wrapping_add(1);
        }
        set
    }

    #[test]
    fn window_test_matches_definition_for_every_u8_triple() {
        // Every triple natively (2^24); under Miri, which interprets each step, a sample of
        // `new` for a start point just before the wrap, against every `event`.
        let (olds, new_step): (&[u8], usize) = if cfg!(miri) { (&[255], 5) } else { (&[], 1) };
        let all: std::vec::Vec<u8> = (0..=255u8).collect();
        let olds = if olds.is_empty() { &all[..] } else { olds };
        for &old in olds {
            for new in (0..=255u8).step_by(new_step) {
                let set = written_positions(old, new);
                for event in 0..=255u8 {
                    assert_eq!(
                        need_event(event, new, old),
                        set[usize::from(event)],
                        "event {event} new {new} old {old}"
                    );
                }
            }
        }
    }
}
