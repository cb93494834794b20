//! A virtio-blk RAM disk (VIRTIO 1.4 §5.2): read, write, flush and get-id; anything else is
//! `UNSUPP`, out-of-range or misaligned requests are `IOERR`.

use virtq::io::{IoError, split_descriptors};
use virtq::transport::{VirtioDevice, config_read};

use super::{RingChain, drain_all};
use virtq::{Completion, Descriptor, Features, GuestMemory, PackedQueue, Queue};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Device type 2 (§5.2.1).
pub const DEVICE_ID: u32 = 2;
/// Sector size (§5.2.6).
pub const SECTOR: usize = 512;
/// `VIRTIO_BLK_F_FLUSH` (§5.2.3).
pub const F_FLUSH: u64 = 1 << 9;
/// `VIRTIO_BLK_F_BLK_SIZE` (§5.2.3).
pub const F_BLK_SIZE: u64 = 1 << 6;

/// Request types (§5.2.6).
pub const T_IN: u32 = 0;
/// Write.
pub const T_OUT: u32 = 1;
/// Flush.
pub const T_FLUSH: u32 = 4;
/// Get the device ID string.
pub const T_GET_ID: u32 = 8;
/// Status: success.
pub const S_OK: u8 = 0;
/// Status: I/O error.
pub const S_IOERR: u8 = 1;
/// Status: unsupported request.
pub const S_UNSUPP: u8 = 2;

/// `struct virtio_blk_req` header (§5.2.6).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable)]
#[repr(C)]
pub struct BlkReqHeader {
    /// `T_*`.
    pub type_: U32,
    /// Reserved.
    pub reserved: U32,
    /// First sector.
    pub sector: U64,
}

/// Counters of what the device served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkStats {
    /// Requests completed (any status).
    pub requests: u64,
    /// Completed with `S_IOERR`.
    pub ioerr: u64,
    /// Completed with `S_UNSUPP`.
    pub unsupp: u64,
    /// Chains that were malformed or had no status byte (completed with length 0).
    pub malformed: u64,
    /// Bytes read from the disk into the guest.
    pub bytes_read: u64,
    /// Bytes written to the disk from the guest.
    pub bytes_written: u64,
    /// Flush requests.
    pub flushes: u64,
}

/// A RAM disk with one request queue.
#[derive(Debug)]
pub struct BlkDevice {
    disk: Vec<u8>,
    features: u64,
    queue_size: u16,
    id: [u8; 20],
    scratch: Vec<Descriptor>,
    /// What has been served so far.
    pub stats: BlkStats,
}

impl BlkDevice {
    /// A zero-filled disk of `sectors` sectors offering FLUSH plus the device-independent
    /// `extra` features (for example `Features::INDIRECT_DESC | Features::EVENT_IDX`).
    pub fn new(sectors: u64, extra: Features, queue_size: u16) -> Self {
        let mut id = [0u8; 20];
        id[..10].copy_from_slice(b"virtq-ram0");
        Self {
            disk: vec![0; usize::try_from(sectors).unwrap() * SECTOR],
            features: F_FLUSH | F_BLK_SIZE | extra.bits(),
            queue_size,
            id,
            scratch: Vec::with_capacity(64),
            stats: BlkStats::default(),
        }
    }

    /// The disk contents.
    pub fn disk(&self) -> &[u8] {
        &self.disk
    }

    /// The disk contents, to fill (or restore: the disk is the device's own state, which a
    /// snapshot of the transport does not carry).
    pub fn disk_mut(&mut self) -> &mut [u8] {
        &mut self.disk
    }

    /// Capacity in sectors.
    pub fn sectors(&self) -> u64 {
        (self.disk.len() / SECTOR) as u64
    }

    /// Serve one request already copied into `descs`; returns the used length.
    fn serve<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        descs: &[Descriptor],
    ) -> Result<u32, IoError> {
        let (mut req, mut resp) = split_descriptors(mem, descs);
        let data_len = resp
            .remaining()
            .checked_sub(1)
            .ok_or(IoError::ShortBuffer {
                requested: 1,
                available: 0,
            })?;
        // H21: a header shorter than 16 bytes is an I/O error, not a panic.
        let hdr: Option<BlkReqHeader> = req.read_obj().ok();
        let start = hdr.and_then(|h| usize::try_from(h.sector.get()).ok()?.checked_mul(SECTOR));
        let status = match hdr.map(|h| h.type_.get()) {
            None => S_IOERR,
            Some(T_IN) => {
                let len = data_len as usize;
                let range = start.and_then(|s| Some(s..s.checked_add(len)?));
                match range.and_then(|r| self.disk.get(r)) {
                    Some(data) if len.is_multiple_of(SECTOR) => {
                        resp.write_all(data)?;
                        self.stats.bytes_read += len as u64;
                        S_OK
                    }
                    _ => S_IOERR,
                }
            }
            Some(T_OUT) => {
                let len = req.remaining() as usize;
                let range = start.and_then(|s| Some(s..s.checked_add(len)?));
                match range.and_then(|r| self.disk.get_mut(r)) {
                    Some(data) if len.is_multiple_of(SECTOR) => {
                        req.read_exact(data)?;
                        self.stats.bytes_written += len as u64;
                        S_OK
                    }
                    _ => S_IOERR,
                }
            }
            Some(T_FLUSH) => {
                self.stats.flushes += 1;
                S_OK
            }
            Some(T_GET_ID) => {
                let n = (data_len as usize).min(self.id.len());
                resp.write_all(&self.id[..n])?;
                S_OK
            }
            Some(_) => S_UNSUPP,
        };
        match status {
            S_IOERR => self.stats.ioerr += 1,
            S_UNSUPP => self.stats.unsupp += 1,
            _ => {}
        }
        // The status is the last writable byte. Data not transferred (an error, or the rest of
        // a GET_ID buffer) is zero-filled, so no stale bytes reach the guest; the used length
        // is exactly what was written.
        while resp.remaining() > 1 {
            let n = (resp.remaining() - 1).min(4096) as usize;
            resp.write_all(&ZEROS[..n])?;
        }
        resp.write_obj(&status)?;
        self.stats.requests += 1;
        Ok(resp.bytes_written())
    }

    fn handle<M: GuestMemory + ?Sized, C: RingChain>(&mut self, chain: &C, mem: &M) -> Completion {
        let mut descs = std::mem::take(&mut self.scratch);
        let len = match super::collect(chain, mem, &mut descs) {
            Ok(()) => self.serve(mem, &descs).unwrap_or_else(|_| {
                self.stats.malformed += 1;
                0
            }),
            Err(_) => {
                self.stats.malformed += 1;
                0
            }
        };
        self.scratch = descs;
        Completion::Used(len)
    }
}

static ZEROS: [u8; 4096] = [0; 4096];

impl VirtioDevice for BlkDevice {
    const PACKED_RING: bool = true;

    fn device_id(&self) -> u32 {
        DEVICE_ID
    }

    fn device_features(&self) -> u64 {
        self.features
    }

    fn queue_max_size(&self, index: u16) -> u16 {
        if index == 0 { self.queue_size } else { 0 }
    }

    fn read_config(&self, offset: u32, data: &mut [u8]) {
        // struct virtio_blk_config: capacity (le64) at 0, blk_size (le32) at 20.
        let mut image = [0u8; 24];
        image[..8].copy_from_slice(&self.sectors().to_le_bytes());
        image[20..24].copy_from_slice(&(SECTOR as u32).to_le_bytes());
        config_read(&image, offset, data);
    }

    fn queue_notify<M: GuestMemory + ?Sized>(
        &mut self,
        index: u16,
        queues: &mut [Queue],
        mem: &M,
    ) -> bool {
        let Some(q) = queues.get_mut(usize::from(index)).filter(|_| index == 0) else {
            return false;
        };
        drain_all(q, mem, |chain| self.handle(chain, mem))
    }

    fn queue_notify_packed<M: GuestMemory + ?Sized>(
        &mut self,
        index: u16,
        queues: &mut [PackedQueue],
        mem: &M,
    ) -> bool {
        let Some(q) = queues.get_mut(usize::from(index)).filter(|_| index == 0) else {
            return false;
        };
        drain_all(q, mem, |chain| self.handle(chain, mem))
    }
}
