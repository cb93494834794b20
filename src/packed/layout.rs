//! Packed-ring layout (§2.8.10.1 "Structure Size and Alignment", §2.8.13, §2.8.14): the
//! sizes and offsets a transport and the queue share, the parts of a descriptor the queue copies,
//! and positions on the ring (slot plus wrap counter) with the availability test.
#![allow(clippy::arithmetic_side_effects)] // u16 inputs: every product fits in a u64.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::wire::DescFlags;

/// Size of one descriptor.
pub const DESC_SIZE: u64 = 16;
/// Alignment of the descriptor ring.
pub const DESC_ALIGN: u64 = 16;
/// Size of an event suppression structure.
pub const EVENT_SIZE: u64 = 4;
/// Alignment of an event suppression structure.
pub const EVENT_ALIGN: u64 = 4;
/// Offset of `len` in a descriptor (`id` follows at 12).
pub const LEN_OFFSET: u64 = 8;
/// Offset of the 16-bit `flags` word in a descriptor.
pub const FLAGS_OFFSET: u64 = 14;
/// Offset of `off_wrap` in an event suppression structure.
pub const EVENT_OFF_WRAP_OFFSET: u64 = 0;
/// Offset of `flags` in an event suppression structure.
pub const EVENT_FLAGS_OFFSET: u64 = 2;

/// Bytes of the descriptor ring for `size` descriptors.
pub const fn desc_ring_bytes(size: u16) -> u64 {
    DESC_SIZE * size as u64
}

/// The part of a packed descriptor read after its flags (bytes 0..14).
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub(crate) struct DescBody {
    pub(crate) addr: U64,
    pub(crate) len: U32,
    pub(crate) id: U16,
}

/// The part of a used descriptor written before its flags (bytes 8..14).
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub(crate) struct UsedBody {
    pub(crate) len: U32,
    pub(crate) id: U16,
}

/// A position in the ring: slot and the wrap counter of the lap it belongs to.
pub(crate) type Pos = (u16, bool);

/// Whether a descriptor with `flags` is available to a device expecting wrap counter `wrap`:
/// AVAIL equals it and USED differs (§2.8.1, PACKED-09). A+U (a used descriptor) never is.
#[inline]
pub(crate) const fn is_available(flags: u16, wrap: bool) -> bool {
    let avail = flags & DescFlags::AVAIL.bits() != 0;
    let used = flags & DescFlags::USED.bits() != 0;
    avail == wrap && used != wrap
}

/// Advance `pos` by `n <= size` slots, flipping the wrap counter when it reaches or passes the
/// end (PACKED-27, including a whole-ring skip that lands back on the same slot). No masking:
/// `size` need not be a power of two (PACKED-02).
#[inline]
pub(crate) fn advance(pos: Pos, n: u16, size: u16) -> Pos {
    let (slot, wrap) = pos;
    // `slot < size` and `n <= size <= 32768`, so the sum fits easily in a u32.
    let s = u32::from(slot).saturating_add(u32::from(n));
    if s >= u32::from(size) {
        let s = s.saturating_sub(u32::from(size));
        (u16::try_from(s).unwrap_or(0), !wrap)
    } else {
        (u16::try_from(s).unwrap_or(0), wrap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn availability_truth_table() {
        let a = DescFlags::AVAIL.bits();
        let u = DescFlags::USED.bits();
        assert!(is_available(a, true));
        assert!(!is_available(a | u, true));
        assert!(!is_available(0, true));
        assert!(!is_available(u, true));
        assert!(is_available(u, false));
        assert!(!is_available(0, false));
        assert!(!is_available(a | u, false));
        assert!(!is_available(a, false));
        // Other flag bits do not matter.
        assert!(is_available(a | 0x7F, true));
    }

    #[test]
    fn advance_wraps_without_masking() {
        for size in 1..=40u16 {
            for slot in 0..size {
                for wrap in [false, true] {
                    for n in 0..=size {
                        let (s, w) = advance((slot, wrap), n, size);
                        let lin = u32::from(slot) + u32::from(n);
                        assert_eq!(u32::from(s), lin % u32::from(size));
                        assert_eq!(w, wrap ^ (lin >= u32::from(size)));
                    }
                }
            }
        }
        // The whole-ring skip lands on the same slot with the wrap flipped (PACKED-27).
        assert_eq!(advance((5, true), 6, 6), (5, false));
        assert_eq!(advance((32767, true), 32768, 32768), (32767, false));
    }
}
