//! Byte-level access to a chain's buffers: allocation-free readers and writers (§2.7.4, §2.7.4.1).
//!
//! A device does not want descriptors. It wants to read a request header, move payload bytes
//! and write a status byte, however the driver cut the request into buffers: VIRTIO devices must
//! not assume any particular framing (§2.7.4.1). This module gives it byte streams over the
//! device-readable part and the device-writable part of a chain, in two forms:
//!
//! * [`Reader`] and [`Writer`] work over the *copied form*, a `&[Descriptor]` filled by
//!   [`DescriptorChain::copy_into`]: the whole chain is validated before any data moves, the
//!   byte counts are exact from the start ([`Reader::remaining`], [`Writer::remaining`]), and
//!   every failed `*_exact`/`*_all` call leaves the position where it was.
//!   [`split_descriptors`] makes both at once.
//! * [`ChainReader`] and [`ChainWriter`] walk the chain lazily, for chains too long to copy
//!   (up to 32768 descriptors): they hold the [`DescriptorIter`] and fetch each descriptor once,
//!   when the bytes are needed, keeping at most `L` fetched descriptors in a look-ahead window.
//!   [`ChainReader::into_writer`] hands the walk over to the writable part, so one walk serves
//!   both. A malformed chain surfaces as [`IoError::Chain`] from the call that needed the
//!   missing bytes (never as a short chain), and from every later call that needs more.
//!
//! # Guarantees
//!
//! * No allocation; no descriptor is fetched twice; no buffer is touched outside
//!   `[addr, addr + len)` of a descriptor of the right direction.
//! * A buffer that crosses from one guest RAM region into another is copied through
//!   [`GuestMemory`], whose implementation splits the copy at the seam (the provided
//!   [`RegionTable`](crate::memory::RegionTable) does); this module never turns guest memory
//!   into one host slice.
//! * The writers count exactly the bytes they copied into the chain. [`Writer::bytes_written`]
//!   and [`ChainWriter::bytes_written`] are the used length to pass to
//!   [`Queue::push_used`](crate::Queue::push_used) (§2.7.8.2: the device must not report more
//!   than it wrote). They never exceed the writable total, by construction: the counter only
//!   grows by bytes stored inside writable descriptors. A read-only chain reports 0.
//!
//! # Position after an error
//!
//! * Copied form: every failed call (short chain or memory error) leaves the position exactly
//!   where it was before the call. Bytes a failed `write_all` stored before the memory error
//!   lie beyond `bytes_written`, so the driver is never told about them.
//! * Lazy form: a failed request that needs at most `L` descriptors from the current position
//!   (always the case for a request of at most `L` bytes, such as any device header with the
//!   default `L = 16` up to 16 bytes) leaves the position unchanged too. A longer request
//!   streams: it commits `L` descriptors at a time, and if it then fails, the position is after
//!   the last byte moved, and [`ChainReader::bytes_read`] / [`ChainWriter::bytes_written`] say
//!   exactly where. A failure caused by the end of the part or by a malformed chain moves every
//!   byte that was available first.
//!
//! # Example: a virtio-blk request handler (§5.2.6)
//!
//! The request is a 16-byte header `struct virtio_blk_req { le32 type; le32 reserved; le64
//! sector; }` in the device-readable part, data, and a status byte as the last writable byte.
//! The used length is what the writer counted.
//!
//! ```
//! use virtq::io::{IoError, split_descriptors};
//! use virtq::{Descriptor, GuestMemory};
//! use zerocopy::little_endian::{U32, U64};
//! use zerocopy::{FromBytes, Immutable, IntoBytes};
//!
//! #[derive(FromBytes, IntoBytes, Immutable)]
//! #[repr(C)]
//! struct BlkReqHeader {
//!     type_: U32,
//!     reserved: U32,
//!     sector: U64,
//! }
//!
//! const VIRTIO_BLK_T_IN: u32 = 0;
//! const VIRTIO_BLK_T_OUT: u32 = 1;
//! const VIRTIO_BLK_S_OK: u8 = 0;
//! const VIRTIO_BLK_S_IOERR: u8 = 1;
//! const VIRTIO_BLK_S_UNSUPP: u8 = 2;
//!
//! /// Serve one request against `disk`; returns the used length.
//! fn handle<M: GuestMemory + ?Sized>(
//!     mem: &M,
//!     chain: &[Descriptor],
//!     disk: &mut [u8],
//! ) -> Result<u32, IoError> {
//!     let (mut req, mut resp) = split_descriptors(mem, chain);
//!     // All or nothing: a header shorter than 16 bytes (hostile class H21) is an error that
//!     // consumes nothing.
//!     let hdr: BlkReqHeader = req.read_obj()?;
//!     // The status byte is the last writable byte; everything before it is data.
//!     let data_len = resp.remaining().checked_sub(1).ok_or(IoError::ShortBuffer {
//!         requested: 1,
//!         available: 0,
//!     })?;
//!     let start = hdr.sector.get().checked_mul(512).and_then(|s| usize::try_from(s).ok());
//!     let status = match hdr.type_.get() {
//!         VIRTIO_BLK_T_IN => {
//!             let range = start.and_then(|s| Some(s..s.checked_add(data_len as usize)?));
//!             match range.and_then(|r| disk.get(r)) {
//!                 Some(data) => {
//!                     resp.write_all(data)?; // may straddle any number of descriptors
//!                     VIRTIO_BLK_S_OK
//!                 }
//!                 None => VIRTIO_BLK_S_IOERR,
//!             }
//!         }
//!         VIRTIO_BLK_T_OUT => {
//!             let range = start.and_then(|s| Some(s..s.checked_add(req.remaining() as usize)?));
//!             match range.and_then(|r| disk.get_mut(r)) {
//!                 Some(data) => {
//!                     req.read_exact(data)?;
//!                     VIRTIO_BLK_S_OK
//!                 }
//!                 None => VIRTIO_BLK_S_IOERR,
//!             }
//!         }
//!         _ => VIRTIO_BLK_S_UNSUPP,
//!     };
//!     // Data not transferred (an error) is zero-filled, so the status lands in the last byte
//!     // and no stale bytes reach the guest.
//!     while resp.remaining() > 1 {
//!         let n = (resp.remaining() - 1).min(64) as usize;
//!         resp.write_all(&[0; 64][..n])?;
//!     }
//!     resp.write_obj(&status)?;
//!     // Exactly what was written: never more than the writable total.
//!     Ok(resp.bytes_written())
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # use core::ptr::NonNull;
//! # use virtq::{GuestAddress, Queue, memory::HostRegion};
//! # // 8 KiB of guest RAM at guest-physical 0x1_0000, backed by a local buffer.
//! # let base = 0x1_0000u64;
//! # let mut ram = vec![0u64; 1024];
//! # let host = NonNull::new(ram.as_mut_ptr().cast::<u8>()).unwrap();
//! # // SAFETY: `ram` outlives `mem`, and is accessed only through `mem` from here on.
//! # let mem = unsafe { HostRegion::new(GuestAddress(base), host, 8192) }?;
//! # let (desc, avail, used) = (base, base + 0x100, base + 0x200);
//! # let put_desc = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
//! #     let mut b = [0u8; 16];
//! #     b[..8].copy_from_slice(&addr.to_le_bytes());
//! #     b[8..12].copy_from_slice(&len.to_le_bytes());
//! #     b[12..14].copy_from_slice(&flags.to_le_bytes());
//! #     b[14..].copy_from_slice(&next.to_le_bytes());
//! #     mem.write(GuestAddress(desc + 16 * i), &b).unwrap();
//! # };
//! # // The driver's request: a header cut 10 + 6 across two descriptors, a 512-byte data
//! # // buffer and a status byte (NEXT = 1, WRITE = 2).
//! # let hdr = BlkReqHeader { type_: VIRTIO_BLK_T_IN.into(), reserved: 0.into(), sector: 1.into() };
//! # mem.write(GuestAddress(base + 0x400), &hdr.as_bytes()[..10])?;
//! # mem.write(GuestAddress(base + 0x480), &hdr.as_bytes()[10..])?;
//! # put_desc(0, base + 0x400, 10, 1, 1);
//! # put_desc(1, base + 0x480, 6, 1, 2);
//! # put_desc(2, base + 0x800, 512, 1 | 2, 3);
//! # put_desc(3, base + 0xC00, 1, 2, 0);
//! # mem.store_u16(GuestAddress(avail + 4), 0)?; // ring[0] = head 0
//! # mem.store_u16(GuestAddress(avail + 2), 1)?; // avail.idx = 1
//! # let mut q = Queue::new(4);
//! # q.desc_table_addr = GuestAddress(desc);
//! # q.avail_ring_addr = GuestAddress(avail);
//! # q.used_ring_addr = GuestAddress(used);
//! # q.ready = true;
//! let mut disk = vec![0u8; 4096];
//! disk[512..1024].fill(0x5A);
//!
//! // The device loop: copy (and so validate) each chain, serve it, complete it.
//! while let Some(chain) = q.pop_avail(&mem)? {
//!     let mut descs: heapless::Vec<Descriptor, 16> = heapless::Vec::new();
//!     let used_len = match chain.copy_into(&mem, &mut descs) {
//!         Ok(()) => handle(&mem, &descs, &mut disk).unwrap_or(0),
//!         Err(_) => 0, // malformed chain: complete it with nothing written
//!     };
//!     q.push_used(&mem, chain.head_index(), used_len)?;
//! }
//! # let mut elem = [0u8; 8];
//! # mem.read(GuestAddress(used + 4), &mut elem)?;
//! # assert_eq!(elem, [0, 0, 0, 0, 0x01, 0x02, 0, 0]); // id 0, len 513
//! # let mut data = [0u8; 512];
//! # mem.read(GuestAddress(base + 0x800), &mut data)?;
//! # assert!(data.iter().all(|&b| b == 0x5A));
//! # let mut status = [0xFFu8];
//! # mem.read(GuestAddress(base + 0xC00), &mut status)?;
//! # assert_eq!(status, [VIRTIO_BLK_S_OK]);
//! # Ok(())
//! # }
//! ```

use core::fmt;

use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::chain::{ChainError, Descriptor, DescriptorChain, DescriptorIter};
use crate::fifo::Fifo;
use crate::memory::{GuestAddress, GuestMemory, MemoryError};

/// Why a read or write through a chain's buffers failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum IoError {
    /// The part (device-readable or device-writable) holds fewer bytes than the request
    /// (hostile class H21: a header descriptor shorter than the device header).
    ShortBuffer {
        /// Bytes the call asked for.
        requested: usize,
        /// Bytes that were left in the part when the call started.
        available: u32,
    },
    /// The chain is malformed; the walk stopped at this error (§2.7.5, see [`ChainError`]).
    Chain(ChainError),
    /// The memory accessor refused a copy.
    Memory(MemoryError),
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::ShortBuffer {
                requested,
                available,
            } => write!(
                f,
                "chain buffers too short: {requested} bytes requested, {available} available"
            ),
            Self::Chain(e) => write!(f, "malformed chain: {e}"),
            Self::Memory(e) => write!(f, "chain buffer access: {e}"),
        }
    }
}

impl core::error::Error for IoError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Chain(e) => Some(e),
            Self::Memory(e) => Some(e),
            Self::ShortBuffer { .. } => None,
        }
    }
}

impl From<ChainError> for IoError {
    fn from(e: ChainError) -> Self {
        Self::Chain(e)
    }
}

impl From<MemoryError> for IoError {
    fn from(e: MemoryError) -> Self {
        Self::Memory(e)
    }
}

/// `u32` byte count as `usize`, saturating on targets where `usize` is narrower.
#[inline]
fn to_usize(v: u32) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// `buf[at..at + len]`, or a memory error that cannot happen for the ranges this module forms
/// (it keeps the copy loops free of indexing that could panic).
#[inline]
fn sub(buf: &[u8], at: usize, len: usize) -> Result<&[u8], MemoryError> {
    buf.get(at..)
        .and_then(|b| b.get(..len))
        .ok_or(MemoryError::OutOfRange {
            addr: 0,
            len: len as u64,
        })
}

/// Mutable version of [`sub`].
#[inline]
fn sub_mut(buf: &mut [u8], at: usize, len: usize) -> Result<&mut [u8], MemoryError> {
    buf.get_mut(at..)
        .and_then(|b| b.get_mut(..len))
        .ok_or(MemoryError::OutOfRange {
            addr: 0,
            len: len as u64,
        })
}

/// Guest address `off` bytes into descriptor `d` (`off < d.len()`, and the chain walk checked
/// that `addr + len` does not overflow, so this never fails for a validated descriptor).
#[inline]
fn at_offset(d: &Descriptor, off: u32) -> Result<GuestAddress, IoError> {
    d.addr()
        .checked_add(u64::from(off))
        .ok_or(IoError::Memory(MemoryError::Overflow {
            addr: d.addr().0,
            len: u64::from(off),
        }))
}

// ---------------------------------------------------------------------------------------------
// Copied form
// ---------------------------------------------------------------------------------------------

/// Position in the descriptors of one direction of a `&[Descriptor]`.
#[derive(Clone, Copy, Debug)]
struct SliceCursor<'a> {
    descs: &'a [Descriptor],
    /// Which direction this cursor uses; descriptors of the other direction are skipped.
    writable: bool,
    /// Descriptor holding the next byte (or one before it, see `off`).
    idx: usize,
    /// Bytes of `descs[idx]` already consumed; `== len` means "move on".
    off: u32,
    consumed: u32,
    /// Bytes of this direction, capped at `u32::MAX` (a validated chain never exceeds it).
    total: u32,
}

impl<'a> SliceCursor<'a> {
    fn new(descs: &'a [Descriptor], writable: bool) -> Self {
        let total = descs
            .iter()
            .filter(|d| d.is_write_only() == writable)
            .fold(0u64, |acc, d| acc.saturating_add(u64::from(d.len())));
        Self {
            descs,
            writable,
            idx: 0,
            off: 0,
            consumed: 0,
            total: u32::try_from(total).unwrap_or(u32::MAX),
        }
    }

    #[inline]
    fn remaining(&self) -> u32 {
        // `consumed <= total` always: `transfer` checks the request against `remaining`.
        self.total.saturating_sub(self.consumed)
    }

    /// Move exactly `n` bytes, calling `f(guest address, offset in the request, length)` for
    /// each piece. All or nothing: on any error the position is unchanged.
    fn transfer<F>(&mut self, n: usize, mut f: F) -> Result<(), IoError>
    where
        F: FnMut(GuestAddress, usize, usize) -> Result<(), MemoryError>,
    {
        let available = self.remaining();
        let short = IoError::ShortBuffer {
            requested: n,
            available,
        };
        let n32 = match u32::try_from(n) {
            Ok(v) if v <= available => v,
            _ => return Err(short),
        };
        let (mut idx, mut off) = (self.idx, self.off);
        let mut done = 0usize;
        // Each turn either moves to the next descriptor or moves at least one byte, so the loop
        // ends after at most `descs.len() + n` turns.
        while done < n {
            let d = self.descs.get(idx).ok_or(short)?;
            if d.is_write_only() != self.writable || off >= d.len() {
                idx = idx.saturating_add(1);
                off = 0;
                continue;
            }
            let avail = to_usize(d.len().saturating_sub(off));
            let take = avail.min(n.saturating_sub(done));
            f(at_offset(d, off)?, done, take)?;
            done = done.saturating_add(take);
            // `take <= len - off`, so it fits in a u32 and `off + take <= len`.
            off = off.saturating_add(u32::try_from(take).unwrap_or(u32::MAX));
        }
        self.idx = idx;
        self.off = off;
        self.consumed = self.consumed.saturating_add(n32);
        Ok(())
    }
}

/// Reads the device-readable buffers of a copied chain as one byte stream (§2.7.4).
///
/// Built over a `&[Descriptor]` (usually filled by [`DescriptorChain::copy_into`]); it uses the
/// device-readable descriptors of the slice, in order, and ignores the writable ones. Every
/// failed call leaves the position unchanged. Cloning a reader saves its position.
pub struct Reader<'a, M: ?Sized> {
    mem: &'a M,
    cur: SliceCursor<'a>,
}

impl<M: ?Sized> Clone for Reader<'_, M> {
    fn clone(&self) -> Self {
        Self {
            mem: self.mem,
            cur: self.cur,
        }
    }
}

impl<M: ?Sized> fmt::Debug for Reader<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("bytes_read", &self.cur.consumed)
            .field("remaining", &self.cur.remaining())
            .finish()
    }
}

impl<'a, M: GuestMemory + ?Sized> Reader<'a, M> {
    /// A reader over the device-readable descriptors of `descs`.
    pub fn new(mem: &'a M, descs: &'a [Descriptor]) -> Self {
        Self {
            mem,
            cur: SliceCursor::new(descs, false),
        }
    }

    /// Bytes not read yet.
    #[inline]
    pub fn remaining(&self) -> u32 {
        self.cur.remaining()
    }

    /// Bytes read (or skipped) so far.
    #[inline]
    pub fn bytes_read(&self) -> u32 {
        self.cur.consumed
    }

    /// Read up to `buf.len()` bytes; returns how many (0 once the readable part is exhausted).
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, IoError> {
        let n = buf.len().min(to_usize(self.remaining()));
        self.read_exact(sub_mut(buf, 0, n)?)?;
        Ok(n)
    }

    /// Fill `buf` completely, or fail with nothing consumed ([`IoError::ShortBuffer`] when fewer
    /// than `buf.len()` bytes remain). After a memory error `buf` may hold some of the bytes.
    pub fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), IoError> {
        let mem = self.mem;
        self.cur.transfer(buf.len(), |addr, at, len| {
            mem.read(addr, sub_mut(buf, at, len)?)
        })
    }

    /// Skip exactly `n` bytes without reading them, or fail with nothing consumed.
    pub fn skip(&mut self, n: usize) -> Result<(), IoError> {
        self.cur.transfer(n, |_, _, _| Ok(()))
    }

    /// Read a plain-data value (a device header) that may straddle descriptors, all or
    /// nothing.
    pub fn read_obj<T: FromBytes + IntoBytes>(&mut self) -> Result<T, IoError> {
        let mut value = T::new_zeroed();
        self.read_exact(value.as_mut_bytes())?;
        Ok(value)
    }
}

/// Writes the device-writable buffers of a copied chain as one byte stream and counts the used
/// length (§2.7.4, §2.7.8.2).
///
/// Built over a `&[Descriptor]` (usually filled by [`DescriptorChain::copy_into`]); it uses the
/// device-writable descriptors of the slice, in order, and ignores the readable ones.
/// [`bytes_written`](Self::bytes_written) is the length to complete the chain with.
pub struct Writer<'a, M: ?Sized> {
    mem: &'a M,
    cur: SliceCursor<'a>,
}

impl<M: ?Sized> fmt::Debug for Writer<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer")
            .field("bytes_written", &self.cur.consumed)
            .field("remaining", &self.cur.remaining())
            .finish()
    }
}

impl<'a, M: GuestMemory + ?Sized> Writer<'a, M> {
    /// A writer over the device-writable descriptors of `descs`.
    pub fn new(mem: &'a M, descs: &'a [Descriptor]) -> Self {
        Self {
            mem,
            cur: SliceCursor::new(descs, true),
        }
    }

    /// Writable bytes not written yet.
    #[inline]
    pub fn remaining(&self) -> u32 {
        self.cur.remaining()
    }

    /// Bytes written so far: the used length for
    /// [`Queue::push_used`](crate::Queue::push_used) (§2.7.8.2). Never more than the writable
    /// total; 0 for a chain without writable buffers.
    #[inline]
    pub fn bytes_written(&self) -> u32 {
        self.cur.consumed
    }

    /// Write as much of `buf` as fits; returns how many bytes (0 once the writable part is
    /// full).
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, IoError> {
        let n = buf.len().min(to_usize(self.remaining()));
        self.write_all(sub(buf, 0, n)?)?;
        Ok(n)
    }

    /// Write all of `buf`, or fail with [`bytes_written`](Self::bytes_written) unchanged.
    ///
    /// A short chain is detected before any byte is stored. After a memory error, bytes
    /// stored before it lie beyond `bytes_written`: the driver is not told about them.
    pub fn write_all(&mut self, buf: &[u8]) -> Result<(), IoError> {
        let mem = self.mem;
        self.cur.transfer(buf.len(), |addr, at, len| {
            mem.write(addr, sub(buf, at, len)?)
        })
    }

    /// Write a plain-data value (a status byte, a device header) that may straddle
    /// descriptors, all or nothing.
    pub fn write_obj<T: IntoBytes + Immutable>(&mut self, value: &T) -> Result<(), IoError> {
        self.write_all(value.as_bytes())
    }
}

/// A [`Reader`] over the device-readable part and a [`Writer`] over the device-writable part of
/// a copied chain.
///
/// ```
/// # use virtq::{Descriptor, GuestMemory};
/// # fn f<M: GuestMemory>(mem: &M, descs: &heapless::Vec<Descriptor, 16>) {
/// let (reader, writer) = virtq::io::split_descriptors(mem, descs);
/// assert_eq!(writer.bytes_written(), 0);
/// # let _ = reader;
/// # }
/// ```
pub fn split_descriptors<'a, M: GuestMemory + ?Sized>(
    mem: &'a M,
    descs: &'a [Descriptor],
) -> (Reader<'a, M>, Writer<'a, M>) {
    (Reader::new(mem, descs), Writer::new(mem, descs))
}

// ---------------------------------------------------------------------------------------------
// Lazy form
// ---------------------------------------------------------------------------------------------

/// The lazy walk shared by [`ChainReader`] and [`ChainWriter`]: descriptors are pulled from the
/// chain's iterator when bytes are needed and kept in a window of at most `L` until consumed.
struct LazyCursor<'m, M: ?Sized, const L: usize> {
    mem: &'m M,
    iter: DescriptorIter<'m, M>,
    /// Fetched descriptors of this direction not fully consumed; the front one has `off`
    /// bytes consumed, and `off < front.len()` whenever the window is not empty.
    ahead: Fifo<Descriptor, L>,
    off: u32,
    /// Unconsumed bytes in `ahead`.
    known: u64,
    consumed: u32,
    writable: bool,
    /// No more descriptors of this direction.
    ended: bool,
    /// Reader only: the first writable descriptor, fetched when the readable part ended.
    handoff: Option<Descriptor>,
    /// The walk failed; sticky.
    error: Option<ChainError>,
}

impl<M: ?Sized, const L: usize> fmt::Debug for LazyCursor<'_, M, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LazyCursor")
            .field("consumed", &self.consumed)
            .field("window", &self.ahead.len())
            .field("known", &self.known)
            .field("ended", &self.ended)
            .field("error", &self.error)
            .finish()
    }
}

impl<'m, M: GuestMemory + ?Sized, const L: usize> LazyCursor<'m, M, L> {
    fn new(mem: &'m M, iter: DescriptorIter<'m, M>, writable: bool) -> Self {
        Self::with_window(mem, iter, writable, Fifo::new(Descriptor::EMPTY))
    }

    /// A cursor over `ahead`'s storage (emptied): the reader hands its window to the writer, so
    /// the storage is initialised once per walk.
    fn with_window(
        mem: &'m M,
        iter: DescriptorIter<'m, M>,
        writable: bool,
        mut ahead: Fifo<Descriptor, L>,
    ) -> Self {
        ahead.clear();
        Self {
            mem,
            iter,
            ahead,
            off: 0,
            known: 0,
            consumed: 0,
            writable,
            ended: false,
            handoff: None,
            error: None,
        }
    }

    /// Fetch one more descriptor of this direction into the window. `false` when the part
    /// ended, the walk failed, or the window is full.
    fn pull(&mut self) -> bool {
        if self.ended || self.error.is_some() || self.ahead.is_full() {
            return false;
        }
        // Bounded by the chain walk, which ends after at most `size` descriptors.
        loop {
            match self.iter.next() {
                None => {
                    self.ended = true;
                    return false;
                }
                Some(Err(e)) => {
                    self.error = Some(e);
                    return false;
                }
                Some(Ok(d)) if d.is_write_only() == self.writable => {
                    if d.is_empty() {
                        continue;
                    }
                    // Cannot fail: the window was checked not to be full above.
                    if self.ahead.push_back(d).is_err() {
                        return false;
                    }
                    self.known = self.known.saturating_add(u64::from(d.len()));
                    return true;
                }
                Some(Ok(d)) => {
                    if self.writable {
                        // The writer skips the readable part (readable descriptors all come
                        // first: the walk rejects a readable one after a writable one).
                        continue;
                    }
                    // The reader met the first writable descriptor: keep it for the writer.
                    self.handoff = Some(d);
                    self.ended = true;
                    return false;
                }
            }
        }
    }

    /// Pull until `want` bytes are known, or the window is full, or the part ended or failed.
    fn fill(&mut self, want: u64) {
        while self.known < want && self.pull() {}
    }

    /// Move the first `k <= known` bytes of the window, then commit. On a memory error nothing
    /// is committed.
    fn copy<F>(&mut self, k: usize, base: usize, f: &mut F) -> Result<(), IoError>
    where
        F: FnMut(GuestAddress, usize, usize) -> Result<(), MemoryError>,
    {
        let mut off = self.off;
        let mut done = 0usize;
        let mut pops = 0usize;
        // Fully consumed descriptors are the first `pops` of the window, so the next one to
        // copy from is always number `pops`.
        while done < k {
            let Some(d) = self.ahead.get(pops) else {
                break;
            };
            let avail = to_usize(d.len().saturating_sub(off));
            let take = avail.min(k.saturating_sub(done));
            f(at_offset(d, off)?, base.saturating_add(done), take)?;
            done = done.saturating_add(take);
            if take == avail {
                pops = pops.saturating_add(1);
                off = 0;
            } else {
                // `take < len - off`, so it fits in a u32.
                off = off.saturating_add(u32::try_from(take).unwrap_or(u32::MAX));
            }
        }
        self.ahead.drop_front(pops);
        self.off = off;
        let moved = u64::try_from(done).unwrap_or(u64::MAX);
        self.known = self.known.saturating_sub(moved);
        // `consumed` never exceeds the part's total, which the walk bounds by u32::MAX.
        self.consumed = self
            .consumed
            .saturating_add(u32::try_from(done).unwrap_or(u32::MAX));
        Ok(())
    }

    fn known_usize(&self) -> usize {
        usize::try_from(self.known).unwrap_or(usize::MAX)
    }

    /// The error for a request of `n` bytes that found only `available` bytes.
    fn shortfall(&self, n: usize, available: usize) -> IoError {
        match self.error {
            Some(e) => IoError::Chain(e),
            None => IoError::ShortBuffer {
                requested: n,
                available: u32::try_from(available).unwrap_or(u32::MAX),
            },
        }
    }

    /// Move `n` bytes (`exact`) or up to `n` bytes (not `exact`); returns how many moved.
    fn transfer<F>(&mut self, n: usize, exact: bool, mut f: F) -> Result<usize, IoError>
    where
        F: FnMut(GuestAddress, usize, usize) -> Result<(), MemoryError>,
    {
        plant_panic!("io", n == 0x5eed);
        let mut done = 0usize;
        // Each turn either finishes or moves a full window of `L` non-empty descriptors, so the
        // loop ends after at most (chain length / L) + 1 turns.
        loop {
            let want = n.saturating_sub(done);
            if want == 0 {
                return Ok(done);
            }
            self.fill(u64::try_from(want).unwrap_or(u64::MAX));
            let known = self.known_usize();
            if known >= want {
                self.copy(want, done, &mut f)?;
                return Ok(n);
            }
            if self.ahead.is_full() {
                // The request spans more than the window: stream it, a window at a time.
                self.copy(known, done, &mut f)?;
                done = done.saturating_add(known);
                continue;
            }
            // The part ended, or the walk failed, before `want` more bytes.
            if exact && done == 0 {
                // Nothing committed yet: fail without consuming anything.
                return Err(self.shortfall(n, known));
            }
            self.copy(known, done, &mut f)?;
            done = done.saturating_add(known);
            if exact {
                return Err(self.shortfall(n, done));
            }
            return match self.error {
                // Never report a broken chain as an empty one.
                Some(e) if done == 0 => Err(IoError::Chain(e)),
                _ => Ok(done),
            };
        }
    }

    /// Walk the rest of the chain (bounded by the walk itself) and report a malformed tail.
    fn validate_rest(&mut self) -> Result<(), IoError> {
        if let Some(e) = self.error {
            return Err(IoError::Chain(e));
        }
        for d in self.iter.by_ref() {
            if let Err(e) = d {
                self.error = Some(e);
                return Err(IoError::Chain(e));
            }
        }
        Ok(())
    }
}

/// Reads the device-readable part of a chain as one byte stream, walking the chain lazily
/// (§2.7.4, §2.7.5).
///
/// Each descriptor is fetched once, when its bytes are first needed; at most `L` fetched
/// descriptors are held (the window, `L * 16` bytes). A request that needs at most `L`
/// descriptors (any request of at most `L` bytes) is all or nothing; see the
/// [module docs](self#position-after-an-error) for longer ones. There is no `remaining()`: the
/// length of the part is known only once it was walked; use the copied form
/// ([`Reader`]) when the device needs it up front.
///
/// When the reader is done, [`into_writer`](Self::into_writer) continues the same walk over the
/// writable part.
pub struct ChainReader<'m, M: ?Sized, const L: usize = 16> {
    cur: LazyCursor<'m, M, L>,
}

impl<M: ?Sized, const L: usize> fmt::Debug for ChainReader<'_, M, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ChainReader").field(&self.cur).finish()
    }
}

impl<'m, M: GuestMemory + ?Sized, const L: usize> ChainReader<'m, M, L> {
    /// A reader over the device-readable part of `chain`; nothing is fetched yet.
    ///
    /// Name the type when calling it (`let r: ChainReader<'_, _> = ChainReader::new(..)`), or
    /// use [`DescriptorChain::reader`]: Rust does not infer the default window `L` (E0284).
    pub fn new(mem: &'m M, chain: &DescriptorChain) -> Self {
        Self::from_iter(mem, chain.iter(mem))
    }

    /// A reader continuing a walk the caller started (descriptors already taken from `iter`
    /// are not seen).
    pub fn from_iter(mem: &'m M, iter: DescriptorIter<'m, M>) -> Self {
        Self {
            cur: LazyCursor::new(mem, iter, false),
        }
    }

    /// Bytes read (or skipped) so far.
    #[inline]
    pub fn bytes_read(&self) -> u32 {
        self.cur.consumed
    }

    /// Read up to `buf.len()` bytes; returns how many. `Ok(0)` (for a non-empty `buf`) means
    /// the readable part ended; a malformed chain is an error, never `Ok(0)`.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, IoError> {
        let mem = self.cur.mem;
        self.cur.transfer(buf.len(), false, |addr, at, len| {
            mem.read(addr, sub_mut(buf, at, len)?)
        })
    }

    /// Fill `buf` completely or fail ([`IoError::ShortBuffer`] at the end of the readable part,
    /// [`IoError::Chain`] for a malformed chain). Nothing is consumed by a failure if `buf`
    /// spans at most `L` descriptors.
    pub fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), IoError> {
        let mem = self.cur.mem;
        self.cur
            .transfer(buf.len(), true, |addr, at, len| {
                mem.read(addr, sub_mut(buf, at, len)?)
            })
            .map(|_| ())
    }

    /// Skip exactly `n` bytes without reading them; failures as for
    /// [`read_exact`](Self::read_exact).
    pub fn skip(&mut self, n: usize) -> Result<(), IoError> {
        self.cur.transfer(n, true, |_, _, _| Ok(())).map(|_| ())
    }

    /// Read a plain-data value that may straddle descriptors; all or nothing when it spans at
    /// most `L` descriptors.
    pub fn read_obj<T: FromBytes + IntoBytes>(&mut self) -> Result<T, IoError> {
        let mut value = T::new_zeroed();
        self.read_exact(value.as_mut_bytes())?;
        Ok(value)
    }

    /// Continue the same walk over the device-writable part. Unread readable bytes are dropped
    /// (their descriptors are fetched once, to get past them); a chain error already met is
    /// kept and reported by the writer.
    pub fn into_writer(self) -> ChainWriter<'m, M, L> {
        let c = self.cur;
        let mut w = LazyCursor::with_window(c.mem, c.iter, true, c.ahead);
        w.error = c.error;
        if let Some(d) = c.handoff {
            // The window is empty and `L > 0` (`Fifo::new` checks it at compile time).
            if w.ahead.push_back(d).is_ok() {
                w.known = u64::from(d.len());
            }
        } else if c.ended {
            // The walk ended inside the readable part: no writable part.
            w.ended = true;
        }
        ChainWriter { cur: w }
    }
}

/// Writes the device-writable part of a chain as one byte stream, walking the chain lazily, and
/// counts the used length (§2.7.4, §2.7.8.2).
///
/// Each descriptor is fetched once, when bytes go into it (readable descriptors before the
/// writable part are fetched once to get past them). Failures as for [`ChainReader`].
/// [`bytes_written`](Self::bytes_written) is the length to complete the chain with;
/// [`finish`](Self::finish) also walks the unused rest of the chain so a malformed tail is not
/// missed.
pub struct ChainWriter<'m, M: ?Sized, const L: usize = 16> {
    cur: LazyCursor<'m, M, L>,
}

impl<M: ?Sized, const L: usize> fmt::Debug for ChainWriter<'_, M, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ChainWriter").field(&self.cur).finish()
    }
}

impl<'m, M: GuestMemory + ?Sized, const L: usize> ChainWriter<'m, M, L> {
    /// A writer over the device-writable part of `chain`; nothing is fetched yet.
    ///
    /// Name the type when calling it (`let w: ChainWriter<'_, _> = ChainWriter::new(..)`), or
    /// use [`DescriptorChain::writer`]: Rust does not infer the default window `L` (E0284).
    pub fn new(mem: &'m M, chain: &DescriptorChain) -> Self {
        Self::from_iter(mem, chain.iter(mem))
    }

    /// A writer continuing a walk the caller started; readable descriptors still ahead in
    /// `iter` are skipped.
    pub fn from_iter(mem: &'m M, iter: DescriptorIter<'m, M>) -> Self {
        Self {
            cur: LazyCursor::new(mem, iter, true),
        }
    }

    /// Bytes written so far: the used length for
    /// [`Queue::push_used`](crate::Queue::push_used) (§2.7.8.2). Never more than the writable
    /// total; 0 for a chain without writable buffers.
    #[inline]
    pub fn bytes_written(&self) -> u32 {
        self.cur.consumed
    }

    /// Write as much of `buf` as fits; returns how many bytes. `Ok(0)` (for a non-empty `buf`)
    /// means the writable part is full; a malformed chain is an error, never `Ok(0)`.
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, IoError> {
        let mem = self.cur.mem;
        self.cur.transfer(buf.len(), false, |addr, at, len| {
            mem.write(addr, sub(buf, at, len)?)
        })
    }

    /// Write all of `buf` or fail ([`IoError::ShortBuffer`] at the end of the writable part,
    /// [`IoError::Chain`] for a malformed chain). If `buf` spans at most `L` descriptors, a
    /// short or malformed chain is detected before any byte is stored and `bytes_written` is
    /// unchanged by a failure.
    pub fn write_all(&mut self, buf: &[u8]) -> Result<(), IoError> {
        let mem = self.cur.mem;
        self.cur
            .transfer(buf.len(), true, |addr, at, len| {
                mem.write(addr, sub(buf, at, len)?)
            })
            .map(|_| ())
    }

    /// Write a plain-data value that may straddle descriptors; all or nothing when it spans at
    /// most `L` descriptors.
    pub fn write_obj<T: IntoBytes + Immutable>(&mut self, value: &T) -> Result<(), IoError> {
        self.write_all(value.as_bytes())
    }

    /// Walk the rest of the chain (descriptors not needed so far, fetched once each) and return
    /// the used length, or the chain error met anywhere in the walk.
    pub fn finish(mut self) -> Result<u32, IoError> {
        self.cur.validate_rest()?;
        Ok(self.cur.consumed)
    }
}

/// Readers and writers straight from a popped chain, with the default window of 16
/// descriptors.
///
/// `ChainReader::new(mem, &chain)` alone does not compile (E0284, "type annotations needed"):
/// `new` is generic over the window size `L`, and Rust does not fill in a const generic's
/// default from an expression, only from a type that is written out. Either name the type
/// (`let r: ChainReader<'_, _> = ChainReader::new(mem, &chain);`, or `ChainReader::<_, 4>` for
/// another window), or use these methods, whose return type fixes `L` to the default:
///
/// ```compile_fail,E0284
/// # use virtq::{DescriptorChain, GuestMemory, io::ChainReader};
/// fn serve<M: GuestMemory>(mem: &M, chain: &DescriptorChain) {
///     let r = ChainReader::new(mem, chain); // error[E0284]: type annotations needed
///     let _ = r.bytes_read();
/// }
/// ```
///
/// ```
/// use virtq::{Features, Queue};
/// use virtq_testkit::{SplitDriver, TestMemory};
///
/// let mem = TestMemory::m0();
/// let mut driver = SplitDriver::standard(&mem, 8);
/// let mut q: Queue = driver.queue(8, Features::empty());
/// mem.poke(0x8_0000, b"ping");
/// driver.add_chain(&[(0x8_0000, 4, false), (0x8_1000, 4, true)]).unwrap();
///
/// let chain = q.pop_avail(&mem)?.unwrap();
/// let mut r = chain.reader(&mem); // ChainReader<'_, TestMemory>, no annotation
/// let mut request = [0u8; 4];
/// r.read_exact(&mut request)?;
/// let mut w = r.into_writer();
/// w.write_all(b"pong")?;
/// q.push_used(&mem, chain.head_index(), w.bytes_written())?;
///
/// assert_eq!(&request, b"ping");
/// assert_eq!(mem.peek(0x8_1000, 4), b"pong");
/// assert_eq!(driver.pop_used(), Some((0, 4)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
impl DescriptorChain {
    /// A [`ChainReader`] over this chain's device-readable part (§2.7.4):
    /// `ChainReader::new(mem, self)` with the default window.
    #[inline]
    pub fn reader<'m, M: GuestMemory + ?Sized>(&self, mem: &'m M) -> ChainReader<'m, M> {
        ChainReader::new(mem, self)
    }

    /// A [`ChainWriter`] over this chain's device-writable part (§2.7.4, §2.7.8.2):
    /// `ChainWriter::new(mem, self)` with the default window.
    #[inline]
    pub fn writer<'m, M: GuestMemory + ?Sized>(&self, mem: &'m M) -> ChainWriter<'m, M> {
        ChainWriter::new(mem, self)
    }
}

/// The same for a packed chain (§2.8): the reader and writer borrow the chain, whose copied
/// buffers they walk.
///
/// ```
/// use virtq::{Features, PackedQueue};
/// use virtq_testkit::{PackedDriver, TestMemory};
///
/// let mem = TestMemory::m0();
/// let mut driver = PackedDriver::standard(&mem, 8);
/// let mut q: PackedQueue = driver.queue(8, Features::RING_PACKED);
/// mem.poke(0x8_0000, b"ping");
/// let id = driver.add_chain(&[(0x8_0000, 4, false), (0x8_1000, 4, true)]).unwrap();
///
/// let chain = q.pop_avail(&mem)?.unwrap();
/// let mut request = [0u8; 4];
/// chain.reader(&mem).read_exact(&mut request)?;
/// let mut w = chain.writer(&mem); // skips the readable part
/// w.write_all(b"pong")?;
/// let written = w.bytes_written();
/// q.push_used(&mem, &chain, written)?;
///
/// assert_eq!(&request, b"ping");
/// assert_eq!(mem.peek(0x8_1000, 4), b"pong");
/// assert_eq!(driver.pop_used().map(|u| (u.id, u.len)), Some((id, 4)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
impl<const N: usize> crate::packed::PackedChain<N> {
    /// A [`ChainReader`] over this chain's device-readable part, with the default window.
    #[inline]
    pub fn reader<'a, M: GuestMemory + ?Sized>(&'a self, mem: &'a M) -> ChainReader<'a, M> {
        ChainReader::from_iter(mem, self.iter(mem))
    }

    /// A [`ChainWriter`] over this chain's device-writable part, with the default window.
    #[inline]
    pub fn writer<'a, M: GuestMemory + ?Sized>(&'a self, mem: &'a M) -> ChainWriter<'a, M> {
        ChainWriter::from_iter(mem, self.iter(mem))
    }
}
