//! The EVENT_IDX window test on 16-bit indices (SPLIT-49, SPLIT-50, SPLIT-51), checked against
//! the spec's definition written out as a walk: the device moved its index from `old` to `new`,
//! writing the entries at positions `old, old + 1, …, new - 1` (mod 2¹⁶), and must notify iff
//! one of those positions is `event`.
//!
//! The unit test in `src/notify.rs` enumerates every 8-bit triple; here the 16-bit instance is
//! checked by property tests (arbitrary start points, with extra weight near the wrap at
//! 65535) and by exhaustive sweeps over small batches around the wrap.

use proptest::prelude::*;
use virtq::notify::need_event;

/// The definition, independent of the modular formula: walk the written positions one by one.
fn written_by_walk(event: u16, old: u16, batch: u32) -> bool {
    let mut p = old;
    for _ in 0..batch {
        if p == event {
            return true;
        }
        p = p.wrapping_add(1);
    }
    false
}

/// `new` after publishing `batch` entries from `old`.
fn advance(old: u16, batch: u32) -> u16 {
    old.wrapping_add(u16::try_from(batch % 65_536).unwrap())
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: if cfg!(miri) { 8 } else { 20_000 },
        max_shrink_iters: if cfg!(miri) { 0 } else { 1024 },
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Start points: anywhere, or within 400 of the wrap point (either side).
fn start() -> impl Strategy<Value = u16> {
    prop_oneof![
        any::<u16>(),
        (0u16..400).prop_map(|d| 65_535u16.wrapping_sub(d)),
        (0u16..400),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary `event`: almost always outside the batch, so this mostly checks "no".
    #[test]
    fn matches_walk_for_any_event(old in start(), batch in 0u32..=300, event in any::<u16>()) {
        let new = advance(old, batch);
        prop_assert_eq!(need_event(event, new, old), written_by_walk(event, old, batch));
    }

    /// `event` within a few positions of the batch (both edges, inside and outside).
    #[test]
    fn matches_walk_near_the_batch(old in start(), batch in 0u32..=300, delta in -5i32..=305) {
        let event = old.wrapping_add_signed(i16::try_from(delta).unwrap());
        let new = advance(old, batch);
        prop_assert_eq!(need_event(event, new, old), written_by_walk(event, old, batch));
    }
}

/// Exhaustive over every batch of 0..=300 entries starting at each of a few points around the
/// wrap, and every `event` within 310 positions of the start.
#[test]
fn exhaustive_small_batches_around_the_wrap() {
    let starts: &[u16] = if cfg!(miri) {
        &[65_535, 0]
    } else {
        &[65_235, 65_434, 65_530, 65_534, 65_535, 0, 1, 32_767, 32_768]
    };
    let max_batch = if cfg!(miri) { 4 } else { 300 };
    for &old in starts {
        for batch in 0..=max_batch {
            let new = advance(old, batch);
            for delta in -10i16..=310 {
                let event = old.wrapping_add_signed(delta);
                assert_eq!(
                    need_event(event, new, old),
                    written_by_walk(event, old, batch),
                    "event {event} new {new} old {old}"
                );
            }
        }
    }
}

/// Edge cases named in the checklist: the last entry before the wrap, the entry at 0 after
/// it, an empty batch, and the largest batch the 16-bit test can see (2¹⁶ − 1 entries: every
/// position but `new` itself).
#[test]
fn named_edges() {
    // One entry written at 0xFFFF (used idx 0xFFFF -> 0).
    assert!(need_event::<u16>(0xFFFF, 0, 0xFFFF));
    assert!(!need_event::<u16>(0, 0, 0xFFFF));
    assert!(!need_event::<u16>(0xFFFE, 0, 0xFFFF));
    // One entry written at 0 (used idx 0 -> 1): 0xFFFF is not among the positions written.
    assert!(need_event::<u16>(0, 1, 0));
    assert!(!need_event::<u16>(0xFFFF, 1, 0));
    // Nothing written never notifies.
    for e in [0u16, 1, 0x7FFF, 0xFFFF] {
        assert!(!need_event::<u16>(e, 7, 7));
    }
    // 65535 entries from 5: every position except 4 (= new).
    let old = 5u16;
    let new = old.wrapping_add(u16::MAX);
    assert_eq!(new, 4);
    let step = if cfg!(miri) { 4099 } else { 1 };
    for e in (0..=u16::MAX).step_by(step) {
        assert_eq!(need_event::<u16>(e, new, old), e != new, "event {e}");
    }
    assert!(!need_event::<u16>(new, new, old));
}
