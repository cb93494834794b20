//! A virtio-console that echoes (VIRTIO 1.4 §5.3): every byte the driver transmits on port 0
//! comes back on port 0's receive queue.

use virtq::heapless::{Deque, Vec as FixedVec};
use virtq::io::{Reader, Writer};
use virtq::transport::{DeviceId, NotifyReport, Queues, VirtioDevice, config_read};
use virtq::{Features, GuestMemory};

use super::{BUDGET, Loopback, Scratch, serve_loopback};

/// Device type 3 (§5.3.1).
pub const DEVICE_ID: DeviceId = DeviceId::CONSOLE;
/// `VIRTIO_CONSOLE_F_SIZE` (§5.3.3).
pub const F_SIZE: Features = Features::from_bits_retain(1 << 0);
/// receiveq of port 0.
pub const RX: u16 = 0;
/// transmitq of port 0.
pub const TX: u16 = 1;
/// Bytes the console holds for echoing (a FIFO: what does not fit is dropped and counted).
pub const FIFO_BYTES: usize = 16 * 1024;
/// Bytes of [`ConsoleDevice::transmitted`] kept (later bytes are echoed but not recorded).
pub const TRANSCRIPT_BYTES: usize = 16 * 1024;

/// An echoing console.
#[derive(Debug)]
pub struct ConsoleDevice {
    features: Features,
    queue_size: u16,
    /// Bytes received from the driver and not yet echoed back.
    pending: Deque<u8, FIFO_BYTES>,
    scratch: Scratch,
    /// The bytes the driver transmitted, in order (the first [`TRANSCRIPT_BYTES`]).
    pub transmitted: FixedVec<u8, TRANSCRIPT_BYTES>,
    /// Transmitted bytes dropped because the echo FIFO was full.
    pub dropped: u64,
}

impl ConsoleDevice {
    /// A console offering SIZE plus the device-independent `extra` features.
    pub fn new(extra: Features, queue_size: u16) -> Self {
        Self {
            features: F_SIZE | extra,
            queue_size,
            pending: Deque::new(),
            scratch: Scratch::new(BUDGET),
            transmitted: FixedVec::new(),
            dropped: 0,
        }
    }

    /// The same console doing at most `budget` chains per notification (default [`BUDGET`]).
    pub fn with_budget(mut self, budget: usize) -> Self {
        self.scratch = Scratch::new(budget);
        self
    }
}

/// The console's echo state, borrowed apart from its chain storage.
struct Echo<'d> {
    pending: &'d mut Deque<u8, FIFO_BYTES>,
    transmitted: &'d mut FixedVec<u8, TRANSCRIPT_BYTES>,
    dropped: &'d mut u64,
}

impl Loopback for Echo<'_> {
    fn transmit<M: GuestMemory + ?Sized>(&mut self, rd: &mut Reader<'_, M>) {
        let mut buf = [0u8; 256];
        while let Ok(n @ 1..) = rd.read(&mut buf) {
            for &b in &buf[..n] {
                // A full transcript stops recording; a full FIFO drops the byte.
                let _ = self.transmitted.push(b);
                if self.pending.push_back(b).is_err() {
                    *self.dropped += 1;
                }
            }
        }
    }

    fn has_rx_data(&self) -> bool {
        !self.pending.is_empty()
    }

    /// As many pending bytes as the buffer holds.
    fn receive<M: GuestMemory + ?Sized>(&mut self, wr: &mut Writer<'_, M>) -> u32 {
        let (front, back) = self.pending.as_slices();
        let mut n = 0;
        for part in [front, back] {
            match wr.write(part) {
                Ok(k) => n += k,
                Err(_) => return 0,
            }
            if n < front.len() {
                break;
            }
        }
        for _ in 0..n {
            self.pending.pop_front();
        }
        wr.bytes_written()
    }
}

impl VirtioDevice for ConsoleDevice {
    const PACKED_RING: bool = true;

    fn device_id(&self) -> DeviceId {
        DEVICE_ID
    }

    fn device_features(&self) -> Features {
        self.features
    }

    fn queue_max_size(&self, index: u16) -> u16 {
        if index <= TX { self.queue_size } else { 0 }
    }

    fn read_config(&self, offset: u32, data: &mut [u8]) {
        // struct virtio_console_config: cols, rows (le16), max_nr_ports, emerg_wr (le32).
        let mut image = [0u8; 12];
        image[0..2].copy_from_slice(&80u16.to_le_bytes());
        image[2..4].copy_from_slice(&25u16.to_le_bytes());
        image[4..8].copy_from_slice(&1u32.to_le_bytes());
        config_read(&image, offset, data);
    }

    fn reset(&mut self) {
        self.pending.clear();
    }

    fn queue_notify<M: GuestMemory + ?Sized>(
        &mut self,
        index: u16,
        queues: Queues<'_>,
        mem: &M,
    ) -> NotifyReport {
        let Self {
            pending,
            scratch,
            transmitted,
            dropped,
            ..
        } = self;
        let mut echo = Echo {
            pending,
            transmitted,
            dropped,
        };
        serve_loopback(&mut echo, scratch, index, queues, mem)
    }
}
