//! Save and restore (snapshots, live migration, device back-end restarts): the byte format
//! the queues and transports write their state in, and the errors a restore reports.
//!
//! A saved state may come back from disk or from another host, so a restore treats it as
//! untrusted input, like a descriptor: every field is checked against the restoring object's
//! own limits and against guest memory, a violation is a [`StateError`] naming the field, and
//! nothing is applied unless everything is valid.
//!
//! # Format
//!
//! Little-endian, fixed layout, built with `zerocopy`, no allocation:
//!
//! | bytes | what |
//! |---|---|
//! | 16 | [`Header`]: magic `VQST`, format version ([`VERSION`]), kind ([`StateKind`]), total length |
//! | fixed | the kind's field block ([`SplitFields`](crate::split::state::SplitFields), [`PackedFields`](crate::packed::state::PackedFields), or a transport's) |
//! | `8 * ceil(max_size / 64)` | a queue's in-flight set: one bit per head (split) or per chain token (packed) |
//!
//! A queue's state is therefore bounded by its `max_size`: 16 + 80 bytes plus 32 bytes for a
//! queue of 256, 4 KiB more for one of 32768. An unknown version, kind or length is refused
//! before any field is looked at.

use core::fmt;

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::chain::ChainError;
use crate::error::QueueError;
use crate::memory::MemoryError;

/// The four bytes every virtq state starts with.
pub const MAGIC: [u8; 4] = *b"VQST";

/// The format version this crate writes and reads.
pub const VERSION: u16 = 1;

/// What a saved state describes (the `kind` field of the [`Header`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u16)]
pub enum StateKind {
    /// A split virtqueue ([`Queue`](crate::Queue)).
    Split = 1,
    /// A packed virtqueue ([`PackedQueue`](crate::PackedQueue)).
    Packed = 2,
    /// A virtio-mmio transport with its queues.
    Mmio = 3,
    /// A virtio-pci transport with its queues.
    Pci = 4,
}

/// The first 16 bytes of every saved state.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Header {
    /// [`MAGIC`].
    pub magic: [u8; 4],
    /// [`VERSION`].
    pub version: U16,
    /// A [`StateKind`].
    pub kind: U16,
    /// Total length in bytes, this header included.
    pub len: U32,
    /// Zero.
    pub reserved: U32,
}

/// Size of the [`Header`].
pub const HEADER_LEN: usize = core::mem::size_of::<Header>();

/// The field a restore refused (or the guest-memory word it checked the field against).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum StateField {
    /// `max_size`: not a valid maximum, or larger than the restoring queue's.
    MaxSize,
    /// `size`: not allowed for this ring format, or above `max_size`.
    Size,
    /// `ready` (a flag byte that is neither 0 nor 1).
    Ready,
    /// The descriptor table or ring address.
    DescAddr,
    /// The driver area (available ring, driver event structure) address.
    DriverAddr,
    /// The device area (used ring, device event structure) address.
    DeviceAddr,
    /// Negotiated features: bits this queue or device does not know or did not offer.
    Features,
    /// `next_avail_idx` (packed: the slot, `< size`).
    NextAvail,
    /// `next_used_idx` (split: not consistent with the in-flight set; packed: the slot).
    NextUsed,
    /// A wrap counter flag byte.
    WrapCounter,
    /// The in-flight set: a bit at or above `size`, or the wrong encoded size.
    InFlight,
    /// The in-flight count disagrees with the set, or exceeds the queue size.
    InFlightCount,
    /// The used index last published (split), or the published position (packed).
    Published,
    /// The interrupt bookkeeping (`used` positions published and not yet signalled).
    Notification,
    /// `kicks_enabled` or the device event flags.
    Kicks,
    /// The sticky error: not a fatal error this crate can produce.
    Error,
    /// Guest memory: `avail.idx` more than `size` ahead of `next_avail_idx`.
    AvailIdx,
    /// Guest memory: `used.idx` is not what the state says was published.
    UsedIdx,
    /// Guest memory: the packed ring at the device's cursors does not match the wrap
    /// counters (the slot before the read cursor is not one the driver made available in the
    /// current lap, or the used cursor's slot is not what the device last wrote there).
    Ring,
    /// A packed ring's held (added, unpublished) used descriptor.
    Held,
    /// A reserved field that is not zero.
    Reserved,
    /// A saved chain (packed): token, position or buffers.
    Chain,
    /// The transport's device status.
    Status,
    /// The transport's device feature select or driver feature select.
    FeatureSelect,
    /// The transport's queue select.
    QueueSelect,
    /// The transport's interrupt status.
    InterruptStatus,
    /// The transport's configuration generation.
    ConfigGeneration,
    /// The transport's queue count or a per-queue register.
    QueueRegister,
    /// The legacy transport's page size or ring alignment.
    Legacy,
    /// The transport's version or kind (a virtio-mmio v2 state given to a legacy transport).
    TransportVersion,
    /// A queue's setup error code.
    QueueSetup,
    /// The PCI command register.
    Command,
    /// The PCI BAR address.
    Bar,
    /// The MSI-X state: vectors, table, pending bits, enable and mask, the vector count.
    Msix,
}

/// Why a state could not be saved or restored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum StateError {
    /// The output buffer of a save is too small.
    BufferTooSmall {
        /// Bytes the state needs.
        needed: usize,
    },
    /// The bytes end before the header, or before the length the header states.
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        got: usize,
    },
    /// The bytes do not start with [`MAGIC`].
    BadMagic,
    /// A format version this crate does not read.
    UnsupportedVersion {
        /// The version found.
        found: u16,
    },
    /// A state of another kind (a packed queue's state given to a split queue, say).
    WrongKind {
        /// The kind found.
        found: u16,
    },
    /// The header's length disagrees with the length the fields imply.
    Length {
        /// The length the header states.
        stated: u32,
        /// The length the fields imply.
        expected: u32,
    },
    /// A field is not valid for the restoring object.
    Invalid {
        /// The field.
        field: StateField,
    },
    /// A ring area or index word the state names is not accessible guest RAM.
    Memory {
        /// The field naming the area.
        field: StateField,
        /// The accessor's answer.
        error: MemoryError,
    },
}

impl StateError {
    pub(crate) const fn invalid(field: StateField) -> Self {
        Self::Invalid { field }
    }
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BufferTooSmall { needed } => write!(f, "state needs {needed} bytes"),
            Self::Truncated { needed, got } => {
                write!(f, "state truncated: {got} bytes of {needed}")
            }
            Self::BadMagic => f.write_str("not a virtq state (bad magic)"),
            Self::UnsupportedVersion { found } => write!(f, "unsupported state version {found}"),
            Self::WrongKind { found } => write!(f, "state of the wrong kind ({found})"),
            Self::Length { stated, expected } => {
                write!(f, "state length {stated} where the fields need {expected}")
            }
            Self::Invalid { field } => write!(f, "invalid state field {field:?}"),
            Self::Memory { field, error } => write!(f, "state field {field:?}: {error}"),
        }
    }
}

impl core::error::Error for StateError {}

/// Check the header of `bytes` and return the rest (exactly the header's length).
pub(crate) fn open(bytes: &[u8], kind: StateKind) -> Result<&[u8], StateError> {
    let Ok((h, _)) = Header::ref_from_prefix(bytes) else {
        return Err(StateError::Truncated {
            needed: HEADER_LEN,
            got: bytes.len(),
        });
    };
    if h.magic != MAGIC {
        return Err(StateError::BadMagic);
    }
    if h.version.get() != VERSION {
        return Err(StateError::UnsupportedVersion {
            found: h.version.get(),
        });
    }
    if h.kind.get() != kind as u16 {
        return Err(StateError::WrongKind {
            found: h.kind.get(),
        });
    }
    if h.reserved.get() != 0 {
        return Err(StateError::invalid(StateField::Reserved));
    }
    let len = usize::try_from(h.len.get()).unwrap_or(usize::MAX);
    if len < HEADER_LEN {
        return Err(StateError::Length {
            stated: h.len.get(),
            expected: 16,
        });
    }
    match bytes.get(HEADER_LEN..len) {
        Some(rest) => Ok(rest),
        None => Err(StateError::Truncated {
            needed: len,
            got: bytes.len(),
        }),
    }
}

/// Write a queue state: header, `fields`, then `bitmap` fills the in-flight words of a queue of
/// `max_size`. Returns the length written.
pub(crate) fn write_queue_state<F: IntoBytes + Immutable>(
    out: &mut [u8],
    kind: StateKind,
    fields: &F,
    max_size: u16,
    bitmap: impl FnOnce(&mut [u8]),
) -> Result<usize, StateError> {
    let fields = fields.as_bytes();
    let len = state_len(fields.len(), max_size);
    let Some(buf) = out.get_mut(..len) else {
        return Err(StateError::BufferTooSmall { needed: len });
    };
    write_header(buf, kind, len)?;
    let (f, words) = buf
        .get_mut(HEADER_LEN..)
        .unwrap_or(&mut [])
        .split_at_mut_checked(fields.len())
        .ok_or(StateError::BufferTooSmall { needed: len })?;
    f.copy_from_slice(fields);
    // The bitmap may keep fewer words than `max_size` asks for (a `Queue<W>` whose public
    // `max_size` was raised past its capacity): the words it does not write are zero, never
    // what the caller's buffer held before.
    words.fill(0);
    bitmap(words);
    Ok(len)
}

/// Write a header for `kind` and a total of `len` bytes into the front of `out`.
pub(crate) fn write_header(out: &mut [u8], kind: StateKind, len: usize) -> Result<(), StateError> {
    let total = u32::try_from(len).map_err(|_| StateError::BufferTooSmall { needed: len })?;
    let h = Header {
        magic: MAGIC,
        version: U16::new(VERSION),
        kind: U16::new(kind as u16),
        len: U32::new(total),
        reserved: U32::new(0),
    };
    h.write_to_prefix(out)
        .map_err(|_| StateError::BufferTooSmall { needed: len })
}

/// A flag byte: 0 or 1, anything else refused as `field`.
pub(crate) fn flag(v: u8, field: StateField) -> Result<bool, StateError> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(StateError::invalid(field)),
    }
}

/// Bytes of a queue state: header, a field block of `fields` bytes, and the in-flight bitmap
/// of a queue of `max_size` (at most 16 + 96 + 4096: no overflow).
pub(crate) const fn state_len(fields: usize, max_size: u16) -> usize {
    HEADER_LEN
        .wrapping_add(fields)
        .wrapping_add(bitmap_words(max_size).wrapping_mul(8))
}

/// Words of an in-flight bitmap for a queue of `max_size`.
pub(crate) const fn bitmap_words(max_size: u16) -> usize {
    (max_size as usize).div_ceil(64)
}

/// A queue's sticky error as 24 bytes: the variant of [`QueueError`], of the [`ChainError`]
/// inside it and of the [`MemoryError`] inside that (each 0 when absent), and two payload
/// words.
#[derive(Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ErrorCode {
    /// [`QueueError`] variant, 0 for none.
    pub queue: u8,
    /// [`ChainError`] variant inside [`QueueError::Chain`], else 0.
    pub chain: u8,
    /// [`MemoryError`] variant inside [`QueueError::Memory`] or [`ChainError::Memory`], else 0.
    pub memory: u8,
    /// Zero.
    pub reserved: [u8; 5],
    /// First payload value.
    pub a: U64,
    /// Second payload value.
    pub b: U64,
}

debug_fields!(ErrorCode {
    queue,
    chain,
    memory,
    reserved,
    a,
    b
});

fn mem_code(e: MemoryError) -> (u8, u64, u64) {
    match e {
        MemoryError::OutOfRange { addr, len } => (1, addr, len),
        MemoryError::Overflow { addr, len } => (2, addr, len),
        MemoryError::Misaligned { addr } => (3, addr, 0),
        MemoryError::BadRegion => (4, 0, 0),
        MemoryError::Backend { addr, len } => (5, addr, len),
    }
}

fn mem_decode(code: u8, a: u64, b: u64) -> Option<MemoryError> {
    Some(match code {
        1 => MemoryError::OutOfRange { addr: a, len: b },
        2 => MemoryError::Overflow { addr: a, len: b },
        3 if b == 0 => MemoryError::Misaligned { addr: a },
        4 if a == 0 && b == 0 => MemoryError::BadRegion,
        5 => MemoryError::Backend { addr: a, len: b },
        _ => return None,
    })
}

fn chain_code(e: ChainError) -> (u8, u8, u64, u64) {
    match e {
        ChainError::NextOutOfRange { next } => (1, 0, u64::from(next), 0),
        ChainError::TooLong => (2, 0, 0, 0),
        ChainError::IndirectNotNegotiated => (3, 0, 0, 0),
        ChainError::NestedIndirect => (4, 0, 0, 0),
        ChainError::IndirectWithNext => (5, 0, 0, 0),
        ChainError::IndirectTableLength { len } => (6, 0, u64::from(len), 0),
        ChainError::ReadableAfterWritable => (7, 0, 0, 0),
        ChainError::LengthOverflow => (8, 0, 0, 0),
        ChainError::Memory(m) => {
            let (c, a, b) = mem_code(m);
            (9, c, a, b)
        }
        ChainError::TooManySegments => (10, 0, 0, 0),
        ChainError::Incomplete { slot } => (11, 0, u64::from(slot), 0),
        ChainError::IndirectInList => (12, 0, 0, 0),
    }
}

fn chain_decode(code: u8, memory: u8, a: u64, b: u64) -> Option<ChainError> {
    let none = memory == 0 && a == 0 && b == 0;
    let small = memory == 0 && b == 0;
    Some(match code {
        1 if small => ChainError::NextOutOfRange {
            next: u16::try_from(a).ok()?,
        },
        2 if none => ChainError::TooLong,
        3 if none => ChainError::IndirectNotNegotiated,
        4 if none => ChainError::NestedIndirect,
        5 if none => ChainError::IndirectWithNext,
        6 if small => ChainError::IndirectTableLength {
            len: u32::try_from(a).ok()?,
        },
        7 if none => ChainError::ReadableAfterWritable,
        8 if none => ChainError::LengthOverflow,
        9 => ChainError::Memory(mem_decode(memory, a, b)?),
        10 if none => ChainError::TooManySegments,
        11 if small => ChainError::Incomplete {
            slot: u16::try_from(a).ok()?,
        },
        12 if none => ChainError::IndirectInList,
        _ => return None,
    })
}

impl ErrorCode {
    /// The code of a sticky error (`None`: no error).
    pub fn encode(e: Option<QueueError>) -> Self {
        let (queue, chain, memory, a, b) = match e {
            None => (0, 0, 0, 0, 0),
            Some(QueueError::NotReady) => (1, 0, 0, 0, 0),
            Some(QueueError::AvailIdxOverrun {
                avail_idx,
                next_avail,
            }) => (2, 0, 0, u64::from(avail_idx), u64::from(next_avail)),
            Some(QueueError::HeadOutOfRange { head }) => (3, 0, 0, u64::from(head), 0),
            Some(QueueError::DuplicateHead { head }) => (4, 0, 0, u64::from(head), 0),
            Some(QueueError::TooManyInFlight) => (5, 0, 0, 0, 0),
            Some(QueueError::Memory(m)) => {
                let (c, a, b) = mem_code(m);
                (6, 0, c, a, b)
            }
            Some(QueueError::Chain(ce)) => {
                let (c, m, a, b) = chain_code(ce);
                (7, c, m, a, b)
            }
            Some(QueueError::InvalidUsedHead { head }) => (8, 0, 0, u64::from(head), 0),
            Some(QueueError::InOrderCapacity) => (9, 0, 0, 0, 0),
            Some(QueueError::HeadNotInFlight { head }) => (10, 0, 0, u64::from(head), 0),
        };
        Self {
            queue,
            chain,
            memory,
            reserved: [0; 5],
            a: U64::new(a),
            b: U64::new(b),
        }
    }

    /// The sticky error this code names: `Ok(None)` for none, `Err` for a code this crate
    /// never writes or an error that is not fatal (a queue is never stopped by one).
    pub fn decode(&self) -> Result<Option<QueueError>, StateError> {
        let bad = StateError::invalid(StateField::Error);
        if self.reserved != [0; 5] {
            return Err(bad);
        }
        let (a, b) = (self.a.get(), self.b.get());
        let nested = self.chain == 0 && self.memory == 0;
        let none = nested && a == 0 && b == 0;
        let head = |v: u64| u16::try_from(v).map_err(|_| bad);
        let e = match self.queue {
            0 if none => return Ok(None),
            2 if nested => QueueError::AvailIdxOverrun {
                avail_idx: head(a)?,
                next_avail: head(b)?,
            },
            3 if nested && b == 0 => QueueError::HeadOutOfRange { head: head(a)? },
            4 if nested && b == 0 => QueueError::DuplicateHead { head: head(a)? },
            5 if none => QueueError::TooManyInFlight,
            6 if self.chain == 0 => QueueError::Memory(mem_decode(self.memory, a, b).ok_or(bad)?),
            7 => QueueError::Chain(chain_decode(self.chain, self.memory, a, b).ok_or(bad)?),
            _ => return Err(bad),
        };
        if e.is_fatal() { Ok(Some(e)) } else { Err(bad) }
    }
}

/// A saved state in a fixed-size buffer of `N` bytes (no allocation): what
/// [`Queue::save`](crate::Queue::save) and [`PackedQueue::save`](crate::PackedQueue::save)
/// return. [`as_bytes`](Self::as_bytes) is the encoding; with the `serde` feature it
/// serializes as those bytes.
#[derive(Clone)]
pub struct Snapshot<const N: usize> {
    len: usize,
    bytes: [u8; N],
}

impl<const N: usize> Snapshot<N> {
    /// The encoded state.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or(&[])
    }

    /// The encoded state, to corrupt in tests or patch by hand.
    pub fn as_mut_bytes(&mut self) -> &mut [u8] {
        self.bytes.get_mut(..self.len).unwrap_or(&mut [])
    }

    /// A snapshot holding a copy of `bytes` (at most `N`; nothing is validated until a
    /// restore).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StateError> {
        let mut s = Self {
            len: bytes.len(),
            bytes: [0; N],
        };
        s.bytes
            .get_mut(..bytes.len())
            .ok_or(StateError::BufferTooSmall {
                needed: bytes.len(),
            })?
            .copy_from_slice(bytes);
        Ok(s)
    }

    /// Fill a snapshot with `save(buffer) -> length`.
    pub(crate) fn fill(save: impl FnOnce(&mut [u8]) -> Result<usize, StateError>) -> Self {
        let mut s = Self {
            len: 0,
            bytes: [0; N],
        };
        // `N` is the largest state of its kind, so a save into it cannot run out of room.
        s.len = save(&mut s.bytes).unwrap_or(0);
        s
    }
}

impl<const N: usize> fmt::Debug for Snapshot<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Snapshot({} bytes)", self.len)
    }
}

impl<const N: usize> PartialEq for Snapshot<N> {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl<const N: usize> Eq for Snapshot<N> {}

#[cfg(feature = "serde")]
impl<const N: usize> serde::Serialize for Snapshot<N> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.as_bytes())
    }
}

#[cfg(feature = "serde")]
impl<'de, const N: usize> serde::Deserialize<'de> for Snapshot<N> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Bytes<const N: usize>;
        impl<'de, const N: usize> serde::de::Visitor<'de> for Bytes<N> {
            type Value = Snapshot<N>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "at most {N} bytes of virtq state")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                Snapshot::from_bytes(v).map_err(|_| E::invalid_length(v.len(), &self))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut s = Snapshot {
                    len: 0,
                    bytes: [0; N],
                };
                while let Some(b) = seq.next_element::<u8>()? {
                    let Some(slot) = s.bytes.get_mut(s.len) else {
                        return Err(serde::de::Error::invalid_length(s.len, &self));
                    };
                    *slot = b;
                    s.len = s.len.saturating_add(1);
                }
                Ok(s)
            }
        }
        d.deserialize_bytes(Bytes::<N>)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn every_fatal_error_round_trips_and_others_are_refused() {
        let mems = [
            MemoryError::OutOfRange { addr: 1, len: 2 },
            MemoryError::Overflow {
                addr: u64::MAX,
                len: 9,
            },
            MemoryError::Misaligned { addr: 3 },
            MemoryError::BadRegion,
            MemoryError::Backend { addr: 4, len: 5 },
        ];
        let mut chains = std::vec![
            ChainError::NextOutOfRange { next: 7 },
            ChainError::TooLong,
            ChainError::IndirectNotNegotiated,
            ChainError::NestedIndirect,
            ChainError::IndirectWithNext,
            ChainError::IndirectTableLength { len: 5 },
            ChainError::ReadableAfterWritable,
            ChainError::LengthOverflow,
            ChainError::TooManySegments,
            ChainError::Incomplete { slot: 4 },
            ChainError::IndirectInList,
        ];
        chains.extend(mems.iter().map(|&m| ChainError::Memory(m)));
        let mut fatal = std::vec![
            QueueError::AvailIdxOverrun {
                avail_idx: 9,
                next_avail: 65535,
            },
            QueueError::HeadOutOfRange { head: 300 },
            QueueError::DuplicateHead { head: 2 },
            QueueError::TooManyInFlight,
        ];
        fatal.extend(mems.iter().map(|&m| QueueError::Memory(m)));
        fatal.extend(chains.iter().map(|&c| QueueError::Chain(c)));
        for e in fatal {
            assert!(e.is_fatal());
            assert_eq!(ErrorCode::encode(Some(e)).decode(), Ok(Some(e)), "{e:?}");
        }
        assert_eq!(ErrorCode::encode(None).decode(), Ok(None));
        for e in [
            QueueError::NotReady,
            QueueError::InvalidUsedHead { head: 1 },
            QueueError::InOrderCapacity,
            QueueError::HeadNotInFlight { head: 1 },
        ] {
            assert!(ErrorCode::encode(Some(e)).decode().is_err(), "{e:?}");
        }
        // Every byte value of every code field, alone: either refused or a valid error.
        for field in 0..3 {
            for v in 0..=255u8 {
                let mut c = ErrorCode::default();
                [&mut c.queue, &mut c.chain, &mut c.memory][field].clone_from(&v);
                if let Ok(Some(e)) = c.decode() {
                    assert!(e.is_fatal());
                }
            }
        }
    }

    #[test]
    fn header_checks_come_first() {
        let mut b = [0u8; 64];
        write_header(&mut b, StateKind::Split, 40).unwrap();
        assert_eq!(open(&b, StateKind::Split).map(<[u8]>::len), Ok(24));
        assert_eq!(
            open(&b, StateKind::Packed),
            Err(StateError::WrongKind { found: 1 })
        );
        assert_eq!(
            open(&b[..30], StateKind::Split),
            Err(StateError::Truncated {
                needed: 40,
                got: 30
            })
        );
        let mut v = b;
        v[4] = 2;
        assert_eq!(
            open(&v, StateKind::Split),
            Err(StateError::UnsupportedVersion { found: 2 })
        );
        let mut m = b;
        m[0] = b'X';
        assert_eq!(open(&m, StateKind::Split), Err(StateError::BadMagic));
        assert!(write_header(&mut [0u8; 8], StateKind::Split, 40).is_err());
    }
}
