//! A virtio-console that echoes (VIRTIO 1.4 §5.3): every byte the driver transmits on port 0
//! comes back on port 0's receive queue.

use std::collections::VecDeque;

use virtq::io::Writer;
use virtq::transport::{VirtioDevice, config_read};
use virtq::{Descriptor, Features, GuestMemory, PackedQueue, Queue};

use super::{Loopback, Posted, serve_loopback};

/// Device type 3 (§5.3.1).
pub const DEVICE_ID: u32 = 3;
/// `VIRTIO_CONSOLE_F_SIZE` (§5.3.3).
pub const F_SIZE: u64 = 1 << 0;
/// receiveq of port 0.
pub const RX: u16 = 0;
/// transmitq of port 0.
pub const TX: u16 = 1;

/// An echoing console.
#[derive(Debug)]
pub struct ConsoleDevice {
    features: u64,
    queue_size: u16,
    /// Bytes received from the driver and not yet echoed back.
    pending: VecDeque<u8>,
    /// Receive buffers the driver posted that are still empty (kept across notifications).
    posted: Posted,
    scratch: Vec<Descriptor>,
    /// Every byte the driver transmitted, in order.
    pub transmitted: Vec<u8>,
}

impl ConsoleDevice {
    /// A console offering SIZE plus the device-independent `extra` features.
    pub fn new(extra: Features, queue_size: u16) -> Self {
        Self {
            features: F_SIZE | extra.bits(),
            queue_size,
            pending: VecDeque::new(),
            posted: Posted::default(),
            scratch: Vec::new(),
            transmitted: Vec::new(),
        }
    }
}

impl Loopback for ConsoleDevice {
    fn transmitted(&mut self, data: Vec<u8>) {
        self.transmitted.extend_from_slice(&data);
        self.pending.extend(data);
    }

    fn has_rx_data(&self) -> bool {
        !self.pending.is_empty()
    }

    /// As many pending bytes as the buffer holds.
    fn receive<M: GuestMemory + ?Sized>(&mut self, wr: &mut Writer<'_, M>) -> u32 {
        let n = (wr.remaining() as usize).min(self.pending.len());
        let bytes: Vec<u8> = self.pending.drain(..n).collect();
        match wr.write_all(&bytes) {
            Ok(()) => wr.bytes_written(),
            Err(_) => 0,
        }
    }

    fn buffers(&mut self) -> (&mut Posted, &mut Vec<Descriptor>) {
        (&mut self.posted, &mut self.scratch)
    }
}

impl VirtioDevice for ConsoleDevice {
    const PACKED_RING: bool = true;

    fn device_id(&self) -> u32 {
        DEVICE_ID
    }

    fn device_features(&self) -> u64 {
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
        self.posted.clear();
    }

    fn queue_reset(&mut self, index: u16) {
        // Kept receive buffers belong to the old incarnation of the queue.
        if index == RX {
            self.posted.clear();
        }
    }

    fn queue_notify<M: GuestMemory + ?Sized>(
        &mut self,
        index: u16,
        queues: &mut [Queue],
        mem: &M,
    ) -> bool {
        serve_loopback(self, index, queues, mem)
    }

    fn queue_notify_packed<M: GuestMemory + ?Sized>(
        &mut self,
        index: u16,
        queues: &mut [PackedQueue],
        mem: &M,
    ) -> bool {
        serve_loopback(self, index, queues, mem)
    }
}
