//! A virtio-net loopback (VIRTIO 1.4 §5.1): every frame the driver transmits is delivered back
//! on the receive queue, header included, byte for byte.

use virtq::heapless::{Deque, Vec as FixedVec};
use virtq::io::{Reader, Writer};
use virtq::transport::{DeviceId, NotifyReport, Queues, VirtioDevice, config_read};
use virtq::{Features, GuestMemory};

use super::{BUDGET, Loopback, Scratch, serve_loopback};

/// Device type 1 (§5.1.1).
pub const DEVICE_ID: DeviceId = DeviceId::NET;
/// `VIRTIO_NET_F_MAC` (§5.1.3).
pub const F_MAC: Features = Features::from_bits_retain(1 << 5);
/// `VIRTIO_NET_F_STATUS` (§5.1.3).
pub const F_STATUS: Features = Features::from_bits_retain(1 << 16);
/// receiveq1.
pub const RX: u16 = 0;
/// transmitq1.
pub const TX: u16 = 1;
/// The device's MAC address.
pub const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// Largest transmitted chain looped back: the 12-byte `virtio_net_hdr` and an Ethernet frame
/// of up to 1518 bytes (no GSO, no mergeable buffers are offered). Longer ones are dropped.
pub const MAX_FRAME: usize = 12 + 1518;
/// Frames held waiting for a receive buffer (a full queue drops what is transmitted).
pub const FRAME_SLOTS: usize = 32;

/// One frame, header included.
type Frame = FixedVec<u8, MAX_FRAME>;

/// A loopback network card.
#[derive(Debug)]
pub struct NetDevice {
    features: Features,
    queue_size: u16,
    frames: Deque<Frame, FRAME_SLOTS>,
    scratch: Scratch,
    /// Frames delivered back to the driver.
    pub looped: u64,
    /// Frames dropped: longer than [`MAX_FRAME`], no room among the [`FRAME_SLOTS`], or the
    /// receive buffer too small.
    pub dropped: u64,
}

impl NetDevice {
    /// A loopback card offering MAC and STATUS plus the device-independent `extra` features.
    pub fn new(extra: Features, queue_size: u16) -> Self {
        Self {
            features: F_MAC | F_STATUS | extra,
            queue_size,
            frames: Deque::new(),
            scratch: Scratch::new(BUDGET),
            looped: 0,
            dropped: 0,
        }
    }

    /// The same card doing at most `budget` chains per notification (default [`BUDGET`]).
    pub fn with_budget(mut self, budget: usize) -> Self {
        self.scratch = Scratch::new(budget);
        self
    }

    /// Frames transmitted and not yet looped back (waiting for a receive buffer).
    pub fn frames_pending(&self) -> usize {
        self.frames.len()
    }
}

/// The card's frame queue and counters, borrowed apart from its chain storage.
struct Wire<'d> {
    frames: &'d mut Deque<Frame, FRAME_SLOTS>,
    looped: &'d mut u64,
    dropped: &'d mut u64,
}

impl Loopback for Wire<'_> {
    fn transmit<M: GuestMemory + ?Sized>(&mut self, rd: &mut Reader<'_, M>) {
        let len = rd.remaining() as usize;
        if len > MAX_FRAME || self.frames.push_back(Frame::new()).is_err() {
            *self.dropped += 1;
            return;
        }
        let copied = self
            .frames
            .back_mut()
            .is_some_and(|f| f.resize_default(len).is_ok() && rd.read_exact(f).is_ok());
        if !copied {
            self.frames.pop_back();
            *self.dropped += 1;
        }
    }

    fn has_rx_data(&self) -> bool {
        !self.frames.is_empty()
    }

    /// One whole frame per buffer; a frame that does not fit is dropped (length 0).
    fn receive<M: GuestMemory + ?Sized>(&mut self, wr: &mut Writer<'_, M>) -> u32 {
        let Some(frame) = self.frames.pop_front() else {
            return 0;
        };
        if wr.write_all(&frame).is_ok() {
            *self.looped += 1;
            wr.bytes_written()
        } else {
            *self.dropped += 1;
            0
        }
    }
}

impl VirtioDevice for NetDevice {
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
        // struct virtio_net_config: mac[6], status (le16, LINK_UP = 1).
        let mut image = [0u8; 8];
        image[..6].copy_from_slice(&MAC);
        image[6..8].copy_from_slice(&1u16.to_le_bytes());
        config_read(&image, offset, data);
    }

    fn reset(&mut self) {
        self.frames.clear();
    }

    fn queue_notify<M: GuestMemory + ?Sized>(
        &mut self,
        index: u16,
        queues: Queues<'_>,
        mem: &M,
    ) -> NotifyReport {
        let Self {
            frames,
            scratch,
            looped,
            dropped,
            ..
        } = self;
        let mut wire = Wire {
            frames,
            looped,
            dropped,
        };
        serve_loopback(&mut wire, scratch, index, queues, mem)
    }
}
