//! In-order completion for VIRTIO_F_IN_ORDER (§2.7.9, §6.2 "buffers are used in the order
//! they were made available").
//!
//! A device whose back end finishes requests out of order (parallel disk I/O, say) still has to
//! publish them in availability order once IN_ORDER is negotiated. [`InOrder`] remembers the
//! order chains were popped in (fixed capacity `N`, no allocation), holds completions that
//! arrive early, and publishes them as soon as everything before them is done. A device that
//! knows a whole prefix is done may instead complete it with one used element carrying the last
//! head ([`InOrder::complete_batch`]).
//!
//! Every lookup scans at most the chains in flight (≤ `N`); a completion for a head that is not
//! in flight is an error, never an out-of-window read (H16).

use crate::chain::DescriptorChain;
use crate::error::QueueError;
use crate::fifo::Fifo;
use crate::memory::GuestMemory;
use crate::split::Queue;

#[derive(Clone, Copy, Debug)]
struct Entry {
    head: u16,
    done: Option<u32>,
}

impl Entry {
    /// Placeholder for the unused storage of the list.
    const UNUSED: Self = Self {
        head: 0,
        done: None,
    };
}

/// Availability-order bookkeeping for one IN_ORDER split queue; `N` must be at least the
/// queue size.
#[derive(Clone, Debug)]
pub struct InOrder<const N: usize> {
    pending: Fifo<Entry, N>,
}

impl<const N: usize> Default for InOrder<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> InOrder<N> {
    /// Empty bookkeeping.
    pub const fn new() -> Self {
        Self {
            pending: Fifo::new(Entry::UNUSED),
        }
    }

    /// Forget everything (call together with [`Queue::reset`]).
    pub fn reset(&mut self) {
        self.pending.clear();
    }

    /// Chains popped and not yet published.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// [`Queue::pop_avail`], remembering the chain's place in the order.
    ///
    /// Fails with [`QueueError::InOrderCapacity`] (not fatal; nothing consumed) if `N` chains
    /// are already in flight and another is available.
    pub fn pop_avail<M: GuestMemory + ?Sized, const W: usize>(
        &mut self,
        q: &mut Queue<W>,
        mem: &M,
    ) -> Result<Option<DescriptorChain>, QueueError> {
        if self.pending.is_full() {
            return if q.has_pending(mem)? {
                Err(QueueError::InOrderCapacity)
            } else {
                Ok(None)
            };
        }
        let chain = q.pop_avail(mem)?;
        if let Some(c) = chain {
            // Not full (checked above), so this cannot fail; a failure would only drop order
            // information, never memory safety.
            let _ = self.pending.push_back(Entry {
                head: c.head_index(),
                done: None,
            });
        }
        Ok(chain)
    }

    /// Position of the not-yet-completed entry for `head` (bounded scan).
    fn find(&self, head: u16) -> Result<usize, QueueError> {
        self.pending
            .position(|e| e.head == head && e.done.is_none())
            .ok_or(QueueError::HeadNotInFlight { head })
    }

    /// Record that `head` is done with `len` bytes written, then publish every completion that
    /// is now first in line (one `used.idx` store). Returns how many were published (0 if
    /// `head` waits for an earlier chain).
    pub fn complete<M: GuestMemory + ?Sized, const W: usize>(
        &mut self,
        q: &mut Queue<W>,
        mem: &M,
        head: u16,
        len: u32,
    ) -> Result<u16, QueueError> {
        plant_panic!("in_order", head == 0x5eed);
        let pos = self.find(head)?;
        // Refused before anything is recorded: a completion the queue cannot take now (not
        // ready, broken) leaves the chain waiting, so the same call can be made again.
        q.check_usable()?;
        if let Some(e) = self.pending.get_mut(pos) {
            e.done = Some(len);
        }
        let published = self.flush(q, mem)?;
        if published > 0 {
            q.publish_used(mem)?;
        }
        Ok(published)
    }

    /// Add a used element for every completion that is first in line (without publishing).
    fn flush<M: GuestMemory + ?Sized, const W: usize>(
        &mut self,
        q: &mut Queue<W>,
        mem: &M,
    ) -> Result<u16, QueueError> {
        let mut added = 0u16;
        while let Some(&Entry {
            head,
            done: Some(len),
        }) = self.pending.front()
        {
            q.add_used(mem, head, len)?;
            self.pending.pop_front();
            added = added.saturating_add(1);
        }
        Ok(added)
    }

    /// Complete every chain up to and including `last_head` with ONE used element (id
    /// `last_head`, length `len`) and advance `used.idx` by the batch size (§2.7.9). Only for
    /// batches whose earlier buffers were entirely written (SPLIT-56): the driver treats them
    /// as fully used. Completions that were waiting behind the batch are published with it.
    /// Returns the number of chains published (the batch plus those).
    pub fn complete_batch<M: GuestMemory + ?Sized, const W: usize>(
        &mut self,
        q: &mut Queue<W>,
        mem: &M,
        last_head: u16,
        len: u32,
    ) -> Result<u16, QueueError> {
        let pos = self.find(last_head)?;
        if !q.is_in_flight(last_head) {
            return Err(QueueError::HeadNotInFlight { head: last_head });
        }
        // Checked before the earlier heads are retired: a batch the queue refuses (not ready,
        // broken) changes nothing, and the same call can be made again.
        q.check_usable()?;
        let count =
            u16::try_from(pos.saturating_add(1)).map_err(|_| QueueError::InOrderCapacity)?;
        for e in self.pending.iter().take(pos) {
            q.retire(e.head);
        }
        self.pending.drop_front(pos.saturating_add(1));
        q.add_used_batch(mem, last_head, len, count)?;
        // Completions held behind the batch are now first in line: publish them with it.
        let held = self.flush(q, mem)?;
        q.publish_used(mem)?;
        Ok(count.saturating_add(held))
    }
}
