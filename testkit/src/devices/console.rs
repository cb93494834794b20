//! A virtio-console that echoes (VIRTIO 1.4 §5.3): every byte the driver transmits on port 0
//! comes back on port 0's receive queue.

use std::collections::VecDeque;

use virtq::io::split_descriptors;
use virtq::transport::{VirtioDevice, config_read};
use virtq::{Completion, Descriptor, DescriptorChain, Features, GuestMemory, PackedChain};
use virtq::{PackedQueue, Queue};

use super::{Ring, drain_all};

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
    posted: VecDeque<DescriptorChain>,
    /// The same, when the rings are packed.
    posted_packed: VecDeque<PackedChain<{ super::PACKED_DIRECT }>>,
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
            posted: VecDeque::new(),
            posted_packed: VecDeque::new(),
            scratch: Vec::new(),
            transmitted: Vec::new(),
        }
    }

    /// Take what the driver transmitted.
    fn take_tx<R: Ring, M: GuestMemory + ?Sized>(&mut self, q: &mut R, mem: &M) -> bool {
        let (pending, transmitted, scratch) =
            (&mut self.pending, &mut self.transmitted, &mut self.scratch);
        drain_all(q, mem, |chain| {
            if super::collect(chain, mem, scratch).is_ok() {
                let (mut rd, _) = split_descriptors(mem, scratch);
                let mut buf = vec![0u8; rd.remaining() as usize];
                if rd.read_exact(&mut buf).is_ok() {
                    transmitted.extend_from_slice(&buf);
                    pending.extend(buf);
                }
            }
            Completion::Used(0)
        })
    }

    /// Post new receive buffers and fill as many as there are pending bytes.
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
        while !self.pending.is_empty() {
            let Some(chain) = posted.pop_front() else {
                break;
            };
            let mut len = 0;
            if super::collect(&chain, mem, &mut self.scratch).is_ok() {
                let (_, mut wr) = split_descriptors(mem, &self.scratch);
                let n = (wr.remaining() as usize).min(self.pending.len());
                let bytes: Vec<u8> = self.pending.drain(..n).collect();
                if wr.write_all(&bytes).is_ok() {
                    len = wr.bytes_written();
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
