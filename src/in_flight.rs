//! The set of chains a queue has handed to the device and not yet seen completed: one bit per
//! possible identity, so a chain made available twice or completed twice is caught in O(1)
//! without allocation.
//!
//! The split ring keys it by head index (`< 32768`). The packed ring has no such key: Buffer
//! IDs may repeat (H15e), and a ring slot can start a new chain while the chain popped from it
//! a lap earlier is still held by the device. So each popped packed chain gets a token: its
//! first slot if that is free (the usual case), else the next free identity; in-flight chains
//! never outnumber the queue size, so one is always free.

use crate::wire::MAX_QUEUE_SIZE;

/// Words for the split ring: one bit per head.
pub(crate) const SPLIT_WORDS: usize = MAX_QUEUE_SIZE as usize / 64;

/// One bit per identity below `64 * W`, and how many are set.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct InFlight<const W: usize> {
    bits: [u64; W],
    count: u16,
}

impl<const W: usize> InFlight<W> {
    pub(crate) const fn new() -> Self {
        Self {
            bits: [0; W],
            count: 0,
        }
    }

    /// How many identities are set.
    #[inline]
    pub(crate) const fn count(&self) -> u16 {
        self.count
    }

    /// (word, mask) of `id`; a word index past the end is refused by every caller's `get`.
    #[inline]
    fn slot(id: u32) -> (usize, u64) {
        (
            usize::try_from(id / 64).unwrap_or(usize::MAX),
            1u64 << (id % 64),
        )
    }

    /// Whether `id` is set.
    #[inline]
    pub(crate) fn contains(&self, id: u32) -> bool {
        let (w, m) = Self::slot(id);
        self.bits.get(w).is_some_and(|b| b & m != 0)
    }

    /// Set `id`; `false` if it already was (or is out of range).
    #[inline]
    pub(crate) fn insert(&mut self, id: u32) -> bool {
        let (w, m) = Self::slot(id);
        match self.bits.get_mut(w) {
            Some(b) if *b & m == 0 => {
                *b |= m;
                self.count = self.count.saturating_add(1);
                true
            }
            _ => false,
        }
    }

    /// Set a free identity, preferring `hint` and then the next free one after it (wrapping):
    /// the packed ring's chain tokens. At most `W` words are looked at; `None` only if all
    /// `64 * W` identities are set.
    pub(crate) fn insert_near(&mut self, hint: u32) -> Option<u32> {
        if self.insert(hint) {
            return Some(hint);
        }
        let (first, mask) = Self::slot(hint);
        let words = self.bits.len();
        // Bits at and below the hint in its own word count as taken on the first visit, so the
        // search goes forward from the hint; the last visit (`i == words`) takes them.
        let below = mask.wrapping_sub(1) | mask;
        for i in 0..=words {
            let w = first
                .checked_add(i)
                .map_or(0, |v| v.checked_rem(words).unwrap_or(0));
            let Some(&b) = self.bits.get(w) else { continue };
            let taken = if i == 0 { b | below } else { b };
            if taken != u64::MAX {
                let bit = taken.trailing_ones();
                let id = u32::try_from(w).ok()?.checked_mul(64)?.checked_add(bit)?;
                if self.insert(id) {
                    return Some(id);
                }
            }
        }
        None
    }

    /// Clear `id`; `false` if it was not set.
    #[inline]
    pub(crate) fn remove(&mut self, id: u32) -> bool {
        let (w, m) = Self::slot(id);
        match self.bits.get_mut(w) {
            Some(b) if *b & m != 0 => {
                *b &= !m;
                self.count = self.count.saturating_sub(1);
                true
            }
            _ => false,
        }
    }
}

impl<const W: usize> core::hash::Hash for InFlight<W> {
    /// The set bits only (with their word index): equal sets hash equal, and a mostly empty
    /// bitmap costs a scan, not a hash of every word.
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.count.hash(state);
        for (i, w) in self.bits.iter().enumerate() {
            if *w != 0 {
                i.hash(state);
                w.hash(state);
            }
        }
    }
}

impl<const W: usize> core::fmt::Debug for InFlight<W> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} in flight", self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_counts_and_refuses_out_of_range() {
        let mut f = InFlight::<SPLIT_WORDS>::new();
        assert!(f.insert(0) && f.insert(32767) && !f.insert(0));
        assert_eq!(f.count(), 2);
        assert!(f.remove(0) && !f.remove(0) && !f.contains(0) && f.contains(32767));
        assert!(!f.insert(40000) && !f.remove(40000) && !f.contains(u32::MAX));
        assert_eq!(f.count(), 1);
    }

    #[test]
    fn insert_near_prefers_the_hint_then_the_next_free_identity() {
        let mut f = InFlight::<2>::new();
        assert_eq!(f.insert_near(5), Some(5));
        assert_eq!(f.insert_near(5), Some(6));
        for _ in 0..126 {
            assert!(f.insert_near(100).is_some());
        }
        assert_eq!(f.count(), 128);
        assert_eq!(f.insert_near(7), None);
        assert!(f.remove(3));
        assert_eq!(f.insert_near(127), Some(3), "wraps around to the free one");
    }
}
