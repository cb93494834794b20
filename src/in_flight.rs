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

    /// Write the bitmap's first `out.len() / 8` words into `out`, little-endian (a saved
    /// state's in-flight set).
    pub(crate) fn write_words(&self, out: &mut [u8]) {
        for (chunk, w) in out.chunks_exact_mut(8).zip(self.bits.iter()) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
    }

    /// The set whose words `bytes` holds (little-endian, a whole number of words), if every
    /// identity in it is below `limit` (and so, with `limit <= 64 * W`, in the first `W`
    /// words; words past those must be zero).
    pub(crate) fn from_words(bytes: &[u8], limit: u32) -> Option<Self> {
        let mut set = Self::new();
        if !bytes.len().is_multiple_of(8) {
            return None;
        }
        let mut slots = set.bits.iter_mut();
        // Indexed by a range, not `enumerate()`, whose counter keeps an overflow panic under
        // `overflow-checks = true`.
        for (i, chunk) in (0..bytes.len()).zip(bytes.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            let w = u64::from_le_bytes(b);
            // Identities of this word at or above `limit`.
            let first = u32::try_from(i).ok()?.checked_mul(64)?;
            let allowed = match limit.checked_sub(first) {
                Some(n) if n >= 64 => u64::MAX,
                Some(n) => (1u64 << n).wrapping_sub(1),
                None => 0,
            };
            if w & !allowed != 0 {
                return None;
            }
            match slots.next() {
                Some(slot) => *slot = w,
                None if w == 0 => {}
                None => return None,
            }
            set.count = set
                .count
                .saturating_add(u16::try_from(w.count_ones()).ok()?);
        }
        Some(set)
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

    /// Set a free identity below `limit`, preferring `hint` and then the next free one after
    /// it (wrapping): the packed ring's chain tokens. At most `W` words are looked at; `None`
    /// only if every identity below `limit` is set.
    #[inline]
    pub(crate) fn insert_near(&mut self, hint: u32, limit: u32) -> Option<u32> {
        // The usual case, inline: the hint is below the limit (and the capacity) and free.
        if hint < limit && self.insert(hint) {
            return Some(hint);
        }
        self.insert_near_slow(hint, limit)
    }

    /// [`insert_near`](Self::insert_near) when the hint is taken or out of range: the scan,
    /// out of line.
    #[inline(never)]
    fn insert_near_slow(&mut self, hint: u32, limit: u32) -> Option<u32> {
        let cap = u32::try_from(W).ok()?.checked_mul(64)?;
        let limit = limit.min(cap);
        if limit == 0 {
            return None;
        }
        let hint = if hint < limit { hint } else { 0 };
        if self.insert(hint) {
            return Some(hint);
        }
        let id = self
            .first_free(hint.saturating_add(1), limit)
            .or_else(|| self.first_free(0, hint))?;
        self.insert(id).then_some(id)
    }

    /// The first identity in `[from, to)` that is not set, word by word.
    fn first_free(&self, from: u32, to: u32) -> Option<u32> {
        let mut id = from;
        while id < to {
            let (w, _) = Self::slot(id);
            let word = *self.bits.get(w)?;
            // Free bits at and above `id`'s bit; the shift brings in zeros (not free) at the
            // top, which are past this word anyway.
            let free = !word >> (id % 64);
            if free != 0 {
                let found = id.checked_add(free.trailing_zeros())?;
                return (found < to).then_some(found);
            }
            id = (id / 64).checked_add(1)?.checked_mul(64)?;
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
    fn insert_near_prefers_the_hint_then_the_next_free_identity_below_the_limit() {
        let mut f = InFlight::<2>::new();
        assert_eq!(f.insert_near(5, 128), Some(5));
        assert_eq!(f.insert_near(5, 128), Some(6));
        for _ in 0..126 {
            assert!(f.insert_near(100, 128).is_some());
        }
        assert_eq!(f.count(), 128);
        assert_eq!(f.insert_near(7, 128), None);
        assert!(f.remove(3));
        assert_eq!(
            f.insert_near(127, 128),
            Some(3),
            "wraps around to the free one"
        );
        // Identities stay below the limit, also when the hint is past it.
        let mut g = InFlight::<2>::new();
        for i in 0..5 {
            assert_eq!(g.insert_near(4, 5), Some(if i == 0 { 4 } else { i - 1 }));
        }
        assert_eq!(g.insert_near(4, 5), None);
        assert_eq!(g.insert_near(200, 70), Some(5));
        // Every limit and hint over a small set: the identity found is the first free one at
        // or after the hint (cyclically), below the limit.
        // Under Miri (which interprets each step) a stride of limits and hints, both ends kept.
        let step = if cfg!(miri) { 9 } else { 1 };
        for limit in (1..=128u32).step_by(step).chain([127, 128]) {
            for hint in (0..130u32)
                .step_by(step)
                .chain([limit.saturating_sub(1), limit, 129])
            {
                let mut h = InFlight::<2>::new();
                for taken in (0..limit).filter(|i| i % 3 == 0) {
                    h.insert(taken);
                }
                let start = if hint < limit { hint } else { 0 };
                let expect = (0..limit)
                    .map(|k| (start + k) % limit)
                    .find(|&i| i % 3 != 0);
                assert_eq!(
                    h.insert_near(hint, limit),
                    expect,
                    "limit {limit} hint {hint}"
                );
            }
        }
    }
}
