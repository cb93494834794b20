//! A virtio-net loopback (VIRTIO 1.4 §5.1): every frame the driver transmits is delivered back
//! on the receive queue, header included, byte for byte.

use std::collections::VecDeque;

use virtq::io::split_descriptors;
use virtq::transport::{VirtioDevice, config_read};
use virtq::{Completion, Descriptor, DescriptorChain, Features, GuestMemory, PackedChain};
use virtq::{PackedQueue, Queue};

use super::{Ring, drain_all};

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
    posted: VecDeque<DescriptorChain>,
    /// The same, when the rings are packed.
    posted_packed: VecDeque<PackedChain<{ super::PACKED_DIRECT }>>,
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
            posted: VecDeque::new(),
            posted_packed: VecDeque::new(),
            scratch: Vec::new(),
            looped: 0,
            dropped: 0,
        }
    }

    /// Frames transmitted and not yet looped back (waiting for a receive buffer).
    pub fn frames_pending(&self) -> usize {
        self.frames.len()
    }

    fn take_tx<R: Ring, M: GuestMemory + ?Sized>(&mut self, q: &mut R, mem: &M) -> bool {
        let (frames, scratch) = (&mut self.frames, &mut self.scratch);
        drain_all(q, mem, |chain| {
            if super::collect(chain, mem, scratch).is_ok() {
                let (mut rd, _) = split_descriptors(mem, scratch);
                let mut frame = vec![0u8; rd.remaining() as usize];
                if rd.read_exact(&mut frame).is_ok() {
                    frames.push_back(frame);
                }
            }
            Completion::Used(0)
        })
    }

    fn fill_rx<R: Ring, M: GuestMemory + ?Sized>(
        &mut self,
        q: &mut R,
        posted: &mut VecDeque<R::Chain>,
        mem: &M,
    ) -> bool {
        let mut notify = match q.drain_with(mem, usize::MAX, |chain| {
            posted.push_back(*chain);
            Completion::Deferred
        }) {
            Ok(r) => r.notify,
            Err(_) => return false,
        };
        let mut any = false;
        while !self.frames.is_empty() {
            let Some(chain) = posted.pop_front() else {
                break;
            };
            let frame = self.frames.pop_front().unwrap_or_default();
            let mut len = 0;
            if super::collect(&chain, mem, &mut self.scratch).is_ok() {
                let (_, mut wr) = split_descriptors(mem, &self.scratch);
                if wr.write_all(&frame).is_ok() {
                    len = wr.bytes_written();
                    self.looped += 1;
                } else {
                    self.dropped += 1;
                }
            }
            if q.complete(mem, &chain, len).is_ok() {
                any = true;
            }
        }
        if any {
            notify |= q.publish(mem);
        }
        notify
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
        self.posted_packed.clear();
    }

    fn queue_reset(&mut self, index: u16) {
        // Kept receive buffers belong to the old incarnation of the queue.
        if index == RX {
            self.posted.clear();
            self.posted_packed.clear();
        }
    }

    fn queue_notify<M: GuestMemory + ?Sized>(
        &mut self,
        index: u16,
        queues: &mut [Queue],
        mem: &M,
    ) -> bool {
        let [rx, tx, ..] = queues else {
            return false;
        };
        let mut notify = false;
        if index == TX {
            notify |= self.take_tx(tx, mem);
        }
        let mut posted = std::mem::take(&mut self.posted);
        notify |= self.fill_rx(rx, &mut posted, mem);
        self.posted = posted;
        notify
    }

    fn queue_notify_packed<M: GuestMemory + ?Sized>(
        &mut self,
        index: u16,
        queues: &mut [PackedQueue],
        mem: &M,
    ) -> bool {
        let [rx, tx, ..] = queues else {
            return false;
        };
        let mut notify = false;
        if index == TX {
            notify |= self.take_tx(tx, mem);
        }
        let mut posted = std::mem::take(&mut self.posted_packed);
        notify |= self.fill_rx(rx, &mut posted, mem);
        self.posted_packed = posted;
        notify
    }
}
