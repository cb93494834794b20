//! A virtio-net loopback (VIRTIO 1.4 §5.1): every frame the driver transmits is delivered back
//! on the receive queue, header included, byte for byte.

use std::collections::VecDeque;

use virtq::io::Writer;
use virtq::transport::{VirtioDevice, config_read};
use virtq::{Descriptor, Features, GuestMemory, PackedQueue, Queue};

use super::{Loopback, Posted, serve_loopback};

/// Device type 1 (§5.1.1).
pub const DEVICE_ID: u32 = 1;
/// `VIRTIO_NET_F_MAC` (§5.1.3).
pub const F_MAC: u64 = 1 << 5;
/// `VIRTIO_NET_F_STATUS` (§5.1.3).
pub const F_STATUS: u64 = 1 << 16;
/// receiveq1.
pub const RX: u16 = 0;
/// transmitq1.
pub const TX: u16 = 1;
/// The device's MAC address.
pub const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// A loopback network card.
#[derive(Debug)]
pub struct NetDevice {
    features: u64,
    queue_size: u16,
    frames: VecDeque<Vec<u8>>,
    /// Receive buffers the driver posted that are still empty (kept across notifications).
    posted: Posted,
    scratch: Vec<Descriptor>,
    /// Frames delivered back to the driver.
    pub looped: u64,
    /// Frames dropped because the receive buffer was too small.
    pub dropped: u64,
}

impl NetDevice {
    /// A loopback card offering MAC and STATUS plus the device-independent `extra` features.
    pub fn new(extra: Features, queue_size: u16) -> Self {
        Self {
            features: F_MAC | F_STATUS | extra.bits(),
            queue_size,
            frames: VecDeque::new(),
            posted: Posted::default(),
            scratch: Vec::new(),
            looped: 0,
            dropped: 0,
        }
    }

    /// Frames transmitted and not yet looped back (waiting for a receive buffer).
    pub fn frames_pending(&self) -> usize {
        self.frames.len()
    }
}

impl Loopback for NetDevice {
    fn transmitted(&mut self, frame: Vec<u8>) {
        self.frames.push_back(frame);
    }

    fn has_rx_data(&self) -> bool {
        !self.frames.is_empty()
    }

    /// One whole frame per buffer; a frame that does not fit is dropped (length 0).
    fn receive<M: GuestMemory + ?Sized>(&mut self, wr: &mut Writer<'_, M>) -> u32 {
        let frame = self.frames.pop_front().unwrap_or_default();
        if wr.write_all(&frame).is_ok() {
            self.looped += 1;
            wr.bytes_written()
        } else {
            self.dropped += 1;
            0
        }
    }

    fn buffers(&mut self) -> (&mut Posted, &mut Vec<Descriptor>) {
        (&mut self.posted, &mut self.scratch)
    }
}

impl VirtioDevice for NetDevice {
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
        // struct virtio_net_config: mac[6], status (le16, LINK_UP = 1).
        let mut image = [0u8; 8];
        image[..6].copy_from_slice(&MAC);
        image[6..8].copy_from_slice(&1u16.to_le_bytes());
        config_read(&image, offset, data);
    }

    fn reset(&mut self) {
        self.frames.clear();
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
