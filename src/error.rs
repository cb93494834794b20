//! Queue-level errors.

use core::fmt;

use crate::chain::ChainError;
use crate::memory::MemoryError;

/// Why a queue operation failed.
///
/// Errors marked *fatal* below leave the queue broken: it returns the same error from every
/// later [`pop_avail`](crate::Queue::pop_avail) and [`push_used`](crate::Queue::push_used)
/// without touching guest memory (O(1)), until [`reset`](crate::Queue::reset). A transport turns
/// a fatal error into DEVICE_NEEDS_RESET plus a configuration-change interrupt (§2.1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum QueueError {
    /// The queue is not ready or its configuration is invalid (size, alignment); nothing was
    /// read. Not fatal.
    NotReady,
    /// Fatal: `avail.idx` moved more than `size` entries past the device's cursor (§2.7.6.1,
    /// hostile class H1).
    AvailIdxOverrun {
        /// `avail.idx` as read.
        avail_idx: u16,
        /// The device's `next_avail_idx`.
        next_avail: u16,
    },
    /// Fatal: an available-ring entry names a head `>= size` (H2).
    HeadOutOfRange {
        /// The head index read from the ring.
        head: u16,
    },
    /// Fatal: the driver made available a head that is still in flight (H13).
    DuplicateHead {
        /// The head index read from the ring.
        head: u16,
    },
    /// Fatal: the driver made available more chains than the queue has descriptors while
    /// `size` chains are already in flight (H13).
    TooManyInFlight,
    /// Fatal: a ring lies (partly) outside guest RAM.
    Memory(MemoryError),
    /// Fatal when recorded with [`Queue::mark_broken`](crate::Queue::mark_broken): a chain was
    /// malformed and the device chose to stop the queue rather than complete it.
    Chain(ChainError),
    /// Not fatal: `push_used` named a head `>= size`. A device bug, not a guest error.
    InvalidUsedHead {
        /// The head the device passed.
        head: u16,
    },
    /// Not fatal: an [`InOrder`](crate::in_order::InOrder) tracker is full (its capacity is
    /// below the queue size); nothing was consumed.
    InOrderCapacity,
    /// Not fatal: `push_used` named a head that is not in flight (completed twice, or popped
    /// before a reset). Nothing was written.
    HeadNotInFlight {
        /// The head the device passed.
        head: u16,
    },
}

impl QueueError {
    /// Whether this error leaves the queue broken until reset.
    pub const fn is_fatal(&self) -> bool {
        !matches!(
            self,
            Self::NotReady
                | Self::InvalidUsedHead { .. }
                | Self::HeadNotInFlight { .. }
                | Self::InOrderCapacity
        )
    }
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NotReady => f.write_str("queue is not ready or not validly configured"),
            Self::AvailIdxOverrun {
                avail_idx,
                next_avail,
            } => write!(
                f,
                "avail.idx {avail_idx} is more than the queue size ahead of {next_avail}"
            ),
            Self::HeadOutOfRange { head } => write!(f, "available head {head} is out of range"),
            Self::DuplicateHead { head } => write!(f, "available head {head} is already in flight"),
            Self::TooManyInFlight => f.write_str("more chains in flight than the queue size"),
            Self::Memory(e) => write!(f, "ring access failed: {e}"),
            Self::Chain(e) => write!(f, "malformed descriptor chain: {e}"),
            Self::InvalidUsedHead { head } => write!(f, "used head {head} is out of range"),
            Self::HeadNotInFlight { head } => write!(f, "used head {head} is not in flight"),
            Self::InOrderCapacity => f.write_str("in-order tracker is full"),
        }
    }
}

impl core::error::Error for QueueError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Memory(e) => Some(e),
            Self::Chain(e) => Some(e),
            _ => None,
        }
    }
}

impl From<MemoryError> for QueueError {
    fn from(e: MemoryError) -> Self {
        Self::Memory(e)
    }
}

/// A queue's sticky fatal error, shared by the split and packed queues: set once by the first
/// fatal error, returned by every later operation in O(1), cleared only by a reset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Sticky(Option<QueueError>);

impl From<Option<QueueError>> for Sticky {
    fn from(e: Option<QueueError>) -> Self {
        Self(e)
    }
}

impl Sticky {
    /// No error.
    pub(crate) const CLEAR: Self = Self(None);

    /// The recorded error, if any.
    #[inline]
    pub(crate) const fn get(self) -> Option<QueueError> {
        self.0
    }

    /// `Err` with the recorded error, if any.
    #[inline]
    pub(crate) const fn check(self) -> Result<(), QueueError> {
        match self.0 {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Record `e` unless an error is already recorded (the first one sticks); returns `e`.
    #[cold]
    pub(crate) fn set(&mut self, e: QueueError) -> QueueError {
        if self.0.is_none() {
            warn!("virtq: queue stopped: {}", e);
            self.0 = Some(e);
        }
        e
    }
}

/// Why [`Queue::try_new`](crate::Queue::try_new), [`Queue::try_set_size`](crate::Queue::try_set_size)
/// or their [`PackedQueue`](crate::PackedQueue) counterparts refused a size instead of rounding
/// it (§2.7: a split ring's size is a power of two; §2.6, §2.8: at most 32768, never 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum SizeError {
    /// The size was 0 (SPLIT-01, PACKED-03).
    Zero,
    /// The size is above the limit: 32768 for a maximum, the queue's `max_size` for a size.
    TooLarge {
        /// The value given.
        size: u16,
        /// The largest value allowed.
        max: u16,
    },
    /// A split ring's size that is not a power of two (SPLIT-01).
    NotPowerOfTwo {
        /// The value given.
        size: u16,
    },
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Zero => f.write_str("queue size 0"),
            Self::TooLarge { size, max } => write!(f, "queue size {size} above {max}"),
            Self::NotPowerOfTwo { size } => write!(f, "queue size {size} not a power of two"),
        }
    }
}

impl core::error::Error for SizeError {}
