//! A fixed-capacity first-in first-out queue of `Copy` values, for the crate's own bookkeeping
//! (the lazy reader's look-ahead window, the IN_ORDER completion list).
//!
//! `heapless::Deque` did this job before, but its index arithmetic (`i + 1 == N`, `front +
//! len`) cannot be proved in range by the optimiser, so a firmware built with
//! `overflow-checks = true` kept a panic path in every caller. Here every index is formed with
//! wrapping arithmetic from values the type keeps below `N`, and every element is reached
//! through `get`, so no path can panic whatever the build settings. The storage is initialised
//! with a placeholder value, which keeps the module free of `unsafe`.
#![forbid(unsafe_code)]

use core::fmt;

/// At most `N` values in insertion order. `N` must be non-zero (checked at compile time).
#[derive(Clone, Copy)]
pub(crate) struct Fifo<T: Copy, const N: usize> {
    slots: [T; N],
    /// Slot of the oldest value; `< N`.
    front: usize,
    /// Number of values held; `<= N`.
    len: usize,
}

impl<T: Copy, const N: usize> Fifo<T, N> {
    /// An empty queue; `fill` only initialises the unused storage and is never returned.
    pub(crate) const fn new(fill: T) -> Self {
        const { assert!(N > 0, "a Fifo needs room for at least one value") };
        Self {
            slots: [fill; N],
            front: 0,
            len: 0,
        }
    }

    #[inline]
    pub(crate) const fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub(crate) const fn is_full(&self) -> bool {
        self.len >= N
    }

    #[inline]
    pub(crate) fn clear(&mut self) {
        self.front = 0;
        self.len = 0;
    }

    /// Storage slot of the `i`-th value from the front. `front < N` and `i <= N`, so the sum
    /// is below `2 N` (no wrap of `usize`) and one conditional subtraction brings it into range.
    #[inline]
    fn slot(&self, i: usize) -> usize {
        let s = self.front.wrapping_add(i);
        if s >= N { s.wrapping_sub(N) } else { s }
    }

    /// Append `v`; hands it back if the queue is full.
    #[inline]
    pub(crate) fn push_back(&mut self, v: T) -> Result<(), T> {
        if self.is_full() {
            return Err(v);
        }
        let at = self.slot(self.len);
        match self.slots.get_mut(at) {
            Some(s) => {
                *s = v;
                self.len = self.len.wrapping_add(1);
                Ok(())
            }
            None => Err(v),
        }
    }

    /// The `i`-th value from the front.
    #[inline]
    pub(crate) fn get(&self, i: usize) -> Option<&T> {
        if i < self.len {
            self.slots.get(self.slot(i))
        } else {
            None
        }
    }

    /// Mutable access to the `i`-th value from the front.
    #[inline]
    pub(crate) fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        if i < self.len {
            let at = self.slot(i);
            self.slots.get_mut(at)
        } else {
            None
        }
    }

    #[inline]
    pub(crate) fn front(&self) -> Option<&T> {
        self.get(0)
    }

    /// Drop the `n` oldest values (all of them if fewer are held).
    #[inline]
    pub(crate) fn drop_front(&mut self, n: usize) {
        let n = n.min(self.len);
        self.front = self.slot(n);
        self.len = self.len.wrapping_sub(n);
    }

    /// Remove and return the oldest value.
    #[inline]
    pub(crate) fn pop_front(&mut self) -> Option<T> {
        let v = self.front().copied();
        self.drop_front(1);
        v
    }

    /// The values, oldest first: the two contiguous runs of the storage, chained.
    #[inline]
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        let first_len = self.len.min(N.wrapping_sub(self.front));
        let first = self
            .slots
            .get(self.front..)
            .and_then(|s| s.get(..first_len))
            .unwrap_or(&[]);
        let second = self
            .slots
            .get(..self.len.wrapping_sub(first_len))
            .unwrap_or(&[]);
        first.iter().chain(second)
    }

    /// Index (from the front) of the first value matching `pred`. A counted loop rather than
    /// `Iterator::position`, whose counter carries an overflow check the optimiser keeps.
    #[inline]
    pub(crate) fn position(&self, mut pred: impl FnMut(&T) -> bool) -> Option<usize> {
        let mut i = 0;
        while let Some(v) = self.get(i) {
            if pred(v) {
                return Some(i);
            }
            // `i < len <= N`: no wrap.
            i = i.wrapping_add(1);
        }
        None
    }
}

impl<T: Copy + fmt::Debug, const N: usize> fmt::Debug for Fifo<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::Fifo;

    /// The queue against a plain model over every sequence of pushes and pops that wraps the
    /// storage several times, for capacities 1 to 4.
    #[test]
    fn agrees_with_a_model_across_wraps() {
        fn run<const N: usize>() {
            let mut f = Fifo::<u32, N>::new(0);
            let mut model = std::collections::VecDeque::new();
            let mut next = 0u32;
            // Alternating phases: ten steps of pushes (filling past full), then ten steps with
            // three pops in four (draining past empty); the front wraps many times.
            for step in 0..400u32 {
                if (step / 10) % 2 == 0 || step % 4 == 0 {
                    let r = f.push_back(next);
                    if model.len() < N {
                        assert_eq!(r, Ok(()));
                        model.push_back(next);
                    } else {
                        assert_eq!(r, Err(next));
                    }
                    next += 1;
                } else {
                    assert_eq!(f.pop_front(), model.pop_front());
                }
                assert_eq!(f.len(), model.len());
                assert_eq!(f.is_full(), model.len() == N);
                assert!(f.iter().eq(model.iter()));
                for i in 0..=N {
                    assert_eq!(f.get(i), model.get(i));
                }
                if let Some(&v) = model.back() {
                    assert_eq!(f.position(|&x| x == v), Some(model.len() - 1));
                }
                assert_eq!(f.position(|&x| x == u32::MAX), None);
            }
        }
        run::<1>();
        run::<2>();
        run::<3>();
        run::<4>();
    }

    #[test]
    fn drop_front_and_get_mut() {
        let mut f = Fifo::<u8, 3>::new(0);
        for v in [1, 2, 3] {
            f.push_back(v).unwrap();
        }
        f.drop_front(2);
        f.push_back(4).unwrap();
        f.push_back(5).unwrap();
        assert_eq!(f.push_back(6), Err(6));
        *f.get_mut(1).unwrap() = 9;
        assert!(f.iter().copied().eq([3, 9, 5]));
        f.drop_front(10);
        assert_eq!(f.len(), 0);
        assert_eq!(f.front(), None);
        assert_eq!(f.get_mut(0), None);
        f.push_back(7).unwrap();
        assert!(f.iter().copied().eq([7]));
        f.clear();
        assert_eq!(f.pop_front(), None);
    }
}
