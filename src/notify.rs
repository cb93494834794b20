//! Notification math shared by the split and packed rings (VIRTIO 1.4 §2.7.7, §2.7.10,
//! §2.8.10).
//!
//! The only arithmetic here is the EVENT_IDX window test. It is generic over the index width so
//! the same code that runs on 16-bit ring indices can be proved exhaustively on 8-bit ones.

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

/// Result of [`Queue::drain`](crate::Queue::drain): what happened and what to do next.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DrainReport {
    /// Chains taken from the available ring in this call.
    pub processed: usize,
    /// Used elements published in this call.
    pub completed: u16,
    /// The driver must be sent a used-buffer notification (interrupt) now.
    pub notify: bool,
    /// The budget ran out with work still available: call again soon (available-buffer
    /// notifications were left disabled, so no kick will come for it).
    pub more: bool,
}

/// What a device did with one chain inside [`Queue::drain`](crate::Queue::drain).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Completion {
    /// Done: complete the chain with this many bytes written to its writable part.
    Used(u32),
    /// The device keeps the chain and completes it later with `push_used` (for example, a
    /// receive buffer waiting for a packet).
    Deferred,
    /// The chain was malformed and the device will not complete it: stop the queue
    /// (escalation (b); the transport raises DEVICE_NEEDS_RESET).
    Broken(crate::ChainError),
}

/// What the drain loop needs from a ring format; implemented by the split and packed queues so
/// both run the one loop in [`drain_loop`].
///
/// `C` is where a popped chain is kept while the device handles it.
pub(crate) trait DrainRing<M: crate::GuestMemory + ?Sized, C> {
    /// Ask for no kicks.
    fn kicks_off(&mut self, mem: &M) -> Result<(), crate::QueueError>;
    /// Ask for kicks again and re-check the ring; `true` if work raced in.
    fn kicks_on(&mut self, mem: &M) -> Result<bool, crate::QueueError>;
    /// Whether chains are available.
    fn pending(&mut self, mem: &M) -> Result<bool, crate::QueueError>;
    /// Pop the next chain into `chain`; `false` if the ring is empty.
    fn pop(&mut self, mem: &M, chain: &mut C) -> Result<bool, crate::QueueError>;
    /// Add (without publishing) the used element for `chain`.
    fn complete(&mut self, mem: &M, chain: &C, len: u32) -> Result<(), crate::QueueError>;
    /// Stop the queue because of a malformed chain.
    fn stop(&mut self, e: crate::ChainError);
    /// Publish added used elements; how many.
    fn publish(&mut self, mem: &M) -> Result<u16, crate::QueueError>;
    /// Must the driver be interrupted now?
    fn must_notify(&mut self, mem: &M) -> Result<bool, crate::QueueError>;
}

/// The drain loop shared by both ring formats: kicks off while working, at most `budget`
/// units of work, one publication, one interrupt decision; when the ring runs dry, kicks back
/// on and a re-check so work that raced in is not slept on (SPLIT-62, PACKED-49); when the
/// budget runs out first, the report says `more` (H17).
///
/// The loop is bounded by a counter it owns, never by the guest's timing: a unit of budget is
/// one chain popped, or one re-check that reported work. A re-check that saw work the next pop
/// does not find (a guest toggling a flags word, or `avail.idx` moving back and forth) costs a
/// unit like a chain, so at most `budget + 1` re-enables happen per call whatever the guest
/// does, and a call whose budget the re-checks used up reports `more`.
pub(crate) fn drain_loop<M, C, R, F>(
    ring: &mut R,
    mem: &M,
    budget: usize,
    chain: &mut C,
    mut handle: F,
) -> Result<DrainReport, crate::QueueError>
where
    M: crate::GuestMemory + ?Sized,
    R: DrainRing<M, C>,
    F: FnMut(&C) -> Completion,
{
    let mut report = DrainReport::default();
    let mut spent: usize = 0;
    ring.kicks_off(mem)?;
    loop {
        while spent < budget {
            if !ring.pop(mem, chain)? {
                break;
            }
            spent = spent.saturating_add(1);
            report.processed = report.processed.saturating_add(1);
            match handle(chain) {
                Completion::Used(len) => ring.complete(mem, chain, len)?,
                Completion::Deferred => {}
                Completion::Broken(e) => {
                    ring.stop(e);
                    return Err(crate::QueueError::Chain(e));
                }
            }
        }
        if spent >= budget && ring.pending(mem)? {
            // Kicks stay off: the caller was told to come back.
            report.more = true;
            break;
        }
        if !ring.kicks_on(mem)? {
            break;
        }
        // Work raced in while re-enabling. The re-check is charged like a chain, so a guest
        // that shows work and takes it back cannot keep this loop turning.
        spent = spent.saturating_add(1);
        if spent >= budget {
            // Kicks are on (a spurious kick is harmless); the caller comes back for the work.
            report.more = true;
            break;
        }
        ring.kicks_off(mem)?;
    }
    report.completed = ring.publish(mem)?;
    report.notify = ring.must_notify(mem)?;
    Ok(report)
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
