//! The packed ring's EVENT_IDX math (§2.8.10, §2.8.14): positions on the cycle of two laps and
//! the window test that decides a used-buffer notification.

use super::layout::Pos;
use crate::notify::need_event;

/// Position on the cycle of `2 * size` positions (two laps, distinguished by the wrap counter).
#[inline]
pub(crate) fn linear(pos: Pos, size: u16) -> u32 {
    let (slot, wrap) = pos;
    if wrap {
        u32::from(slot)
    } else {
        u32::from(slot).saturating_add(u32::from(size))
    }
}

/// The packed EVENT_IDX window test (§2.8.10, PACKED-46, H14f): must the driver be notified
/// when the used cursor moved `moved` positions from `old`, and it asked for an event at
/// `off_wrap`?
///
/// Positions are compared on the cycle of `2 * size` positions that the (slot, wrap counter)
/// pairs form, so an event whose wrap bit differs from the current used wrap counter is one lap
/// away (the "subtract the size" rule), and sizes that are not powers of two work (no masking).
/// The event fires if it lies in `[old, old + moved)`: any position the cursor passed, including
/// slots skipped over inside a multi-descriptor chain. An offset `>= size` names no slot; the
/// answer is then `true` (spurious interrupts are safe, missing ones are not). So is a move of
/// two laps or more.
#[inline]
pub(crate) fn desc_event_fires(off_wrap: u16, old: Pos, moved: u32, size: u16) -> bool {
    let off = off_wrap & 0x7FFF;
    let event_wrap = off_wrap & 0x8000 != 0;
    let cycle = u32::from(size).saturating_mul(2);
    if off >= size || moved >= cycle {
        return true;
    }
    let o = linear(old, size);
    let e = linear((off, event_wrap), size);
    // Both are `< cycle`, so `e + cycle - o` is in `(0, 2 * cycle)` and fits a u32.
    let dist = e
        .saturating_add(cycle)
        .saturating_sub(o)
        .checked_rem(cycle)
        .unwrap_or(0);
    // Rebased so that `old` is 0, both distances are `< cycle <= 65536` and fit a u16, where
    // the shared window test is exact: it fires iff `0 <= dist < moved`.
    match (u16::try_from(dist), u16::try_from(moved)) {
        (Ok(event), Ok(new)) => need_event(event, new, 0),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packed::layout::advance;

    /// Exhaustive over small sizes: the window test agrees with stepping the cursor one
    /// position at a time and checking whether it passes the event position.
    #[test]
    fn desc_event_window_matches_stepping() {
        for size in 1..=7u16 {
            let cycle = 2 * u32::from(size);
            for old_slot in 0..size {
                for old_wrap in [false, true] {
                    for moved in 0..cycle {
                        for off in 0..size + 2 {
                            for ew in [false, true] {
                                let off_wrap = off | if ew { 0x8000 } else { 0 };
                                let mut pos = (old_slot, old_wrap);
                                let mut hit = false;
                                for _ in 0..moved {
                                    hit |= pos == (off, ew);
                                    pos = advance(pos, 1, size);
                                }
                                let expect = hit || off >= size;
                                assert_eq!(
                                    desc_event_fires(off_wrap, (old_slot, old_wrap), moved, size),
                                    expect,
                                    "size {size} old ({old_slot},{old_wrap}) moved {moved} \
                                     event ({off},{ew})"
                                );
                            }
                        }
                    }
                }
            }
        }
        // Two laps or more: always.
        assert!(desc_event_fires(0, (1, true), 16, 8));
    }
}
