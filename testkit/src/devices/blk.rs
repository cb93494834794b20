//! A virtio-blk RAM disk (VIRTIO 1.4 §5.2): read, write, flush and get-id; anything else is
//! `UNSUPP`, out-of-range or misaligned requests are `IOERR`.

use virtq::io::{IoError, Reader, Writer};
use virtq::transport::{DeviceId, NotifyReport, Queues, VirtioDevice, config_read};
use virtq::{Completion, Features, GuestMemory};

use super::{BUDGET, Chain, Scratch, buffers};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Device type 2 (§5.2.1).
pub const DEVICE_ID: DeviceId = DeviceId::BLOCK;
/// Sector size (§5.2.6).
pub const SECTOR: usize = 512;
/// `VIRTIO_BLK_F_FLUSH` (§5.2.3).
pub const F_FLUSH: Features = Features::from_bits_retain(1 << 9);
/// `VIRTIO_BLK_F_BLK_SIZE` (§5.2.3).
pub const F_BLK_SIZE: Features = Features::from_bits_retain(1 << 6);

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
    features: Features,
    queue_size: u16,
    id: [u8; 20],
    scratch: Scratch,
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
            features: F_FLUSH | F_BLK_SIZE | extra,
            queue_size,
            id,
            scratch: Scratch::new(BUDGET),
            stats: BlkStats::default(),
        }
    }

    /// The same device serving at most `budget` requests per notification (default
    /// [`BUDGET`]); the rest is reported as `more` for the transport to schedule.
    pub fn with_budget(mut self, budget: usize) -> Self {
        self.scratch = Scratch::new(budget);
        self
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
}

/// The disk side of a request: what serving one needs, apart from the chain storage.
struct Disk<'d> {
    data: &'d mut [u8],
    id: &'d [u8; 20],
    stats: &'d mut BlkStats,
}

impl Disk<'_> {
    /// Serve one request: `req` its readable part, `resp` its writable part (data, then the
    /// status byte). Returns the used length.
    fn serve<M: GuestMemory + ?Sized>(
        &mut self,
        mut req: Reader<'_, M>,
        mut resp: Writer<'_, M>,
    ) -> Result<u32, IoError> {
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
                match range.and_then(|r| self.data.get(r)) {
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
                match range.and_then(|r| self.data.get_mut(r)) {
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
}

static ZEROS: [u8; 4096] = [0; 4096];

impl VirtioDevice for BlkDevice {
    const PACKED_RING: bool = true;

    fn device_id(&self) -> DeviceId {
        DEVICE_ID
    }

    fn device_features(&self) -> Features {
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
        mut queues: Queues<'_>,
        mem: &M,
    ) -> NotifyReport {
        let Some(mut q) = queues.get(index).filter(|_| index == 0) else {
            return NotifyReport::IDLE;
        };
        let Self {
            disk,
            id,
            scratch,
            stats,
            ..
        } = self;
        let mut disk = Disk {
            data: disk,
            id,
            stats,
        };
        let (chain, segments, budget) = scratch.parts();
        q.drain_into(mem, budget, chain, |c: &Chain| {
            let served = buffers(c, mem, segments).map(|(req, resp)| disk.serve(req, resp));
            match served {
                Some(Ok(len)) => Completion::Used(len),
                // Malformed, or no status byte: completed with length 0.
                _ => {
                    disk.stats.malformed += 1;
                    Completion::Used(0)
                }
            }
        })
        .into()
    }
}
