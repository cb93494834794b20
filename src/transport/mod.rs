//! Transports: how a guest finds a device, negotiates features, programs queues and exchanges
//! notifications (VIRTIO 1.4 §4).
//!
//! A transport owns the queues and the device status state machine; the device model plugs in
//! through [`VirtioDevice`]. Two transports decode their registers on one shared core (status
//! state machine, feature negotiation, queue programming and validation, DEVICE_NEEDS_RESET,
//! interrupt decisions), so neither has a copy of a queue check:
//!
//! * virtio-mmio ([`mmio`], §4.2), what a hypervisor on Arm or RISC-V usually exposes: the
//!   hypervisor traps every access to the device's register window and forwards it to
//!   [`MmioTransport::read`] / [`MmioTransport::write`];
//! * virtio-pci ([`pci`], §4.1, modern interface), a PCI function: configuration-space
//!   accesses go to [`PciTransport::config_read`] / [`PciTransport::config_write`], BAR
//!   accesses to [`PciTransport::bar_read`] / [`PciTransport::bar_write`], and each returns a
//!   [`PciOutcome`] naming the MSI-X vectors to send and the INTx level.
//!
//! Accesses are 1, 2, 4 or 8 bytes wide with the value in a `u64`, as a trap delivers them;
//! each transport answers the widths its specification allows and reads 0 / ignores the
//! rest.
//!
//! # In a trap handler
//!
//! Every entry point runs to completion in bounded time on the caller's stack: `virtq` never
//! allocates, never blocks, takes no lock and never panics on guest input. A hypervisor may
//! therefore call the transports directly from its VM-exit or stage-2 fault handler, with
//! interrupts masked if it likes. What runs inside is the register decode plus, for a queue
//! notification in [`NotifyMode::Inline`], the device model's handler; choose
//! [`NotifyMode::Deferred`] to keep the queue work out of the trap.

mod core;

pub use self::core::state::{CoreFields, QueueRegsFields};
pub mod mmio;
pub mod pci;

pub use self::core::QueueSetupError;
pub use mmio::{MmioTransport, MmioVersion};
pub use pci::{PciOutcome, PciTransport};

/// When an available-buffer notification runs the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum NotifyMode {
    /// Inside the trap: the notification calls [`VirtioDevice::queue_notify`] before the
    /// access returns.
    #[default]
    Inline,
    /// Later: the notification only records the kick ([`MmioTransport::take_kicks`],
    /// [`PciTransport::take_kicks`]); the hypervisor runs the transport's `process_queue` or
    /// `poll` from its own context (an I/O thread, a deferred work item).
    Deferred,
}

use crate::memory::GuestMemory;
use crate::packed::PackedQueue;
use crate::split::Queue;

/// A device model served by a transport (VIRTIO 1.4 §2, §5).
///
/// The transport handles everything device-independent (status, feature negotiation, queue
/// setup and validation, interrupts); the device supplies its identity, its features, its
/// configuration space and what to do when a queue is notified.
pub trait VirtioDevice {
    /// The virtio device type (§5: 1 = network, 2 = block, 3 = console, ...). 0 marks an empty
    /// slot that drivers ignore.
    #[doc(alias = "DeviceID")]
    fn device_id(&self) -> u32;

    /// Subsystem vendor ID shown in the virtio-mmio `VendorID` register (§4.2.2). Any value.
    /// (A PCI function shows [`pci::PciIds`] instead.)
    #[doc(alias = "VendorID")]
    fn vendor_id(&self) -> u32 {
        0
    }

    /// Whether this device type serves packed rings (§2.8) through
    /// [`queue_notify_packed`](Self::queue_notify_packed). Only then does the transport offer
    /// `VIRTIO_F_RING_PACKED`, and only when [`device_features`](Self::device_features) lists
    /// it too. A constant, so that a split-only device's transport compiles without the packed
    /// ring's code (about 2 KiB of `.text` on thumbv7em).
    const PACKED_RING: bool = false;

    /// Feature bits the device supports: its device-specific bits plus the device-independent
    /// ones it can honour (for example [`Features::INDIRECT_DESC`](crate::Features),
    /// `EVENT_IDX`, and `RING_PACKED` with [`PACKED_RING`](Self::PACKED_RING)). The transport
    /// adds `VERSION_1` where the transport requires it and removes every bit the transport
    /// cannot carry (§2.2.2, FEAT-06, MMIO-31).
    #[doc(alias = "DeviceFeatures")]
    fn device_features(&self) -> u64;

    /// Extra checks on the set the driver accepted, for example feature prerequisites
    /// (§2.2.2). Called at FEATURES_OK after the transport checked that `accepted` is a subset
    /// of what was offered. Returning `false` refuses FEATURES_OK (FEAT-05).
    fn validate_features(&self, accepted: u64) -> bool {
        let _ = accepted;
        true
    }

    /// Largest size of queue `index` (`QueueNumMax`, PCI `queue_size` at reset), or 0 if the
    /// queue does not exist. Asked once, when the transport is built, and clamped to 32768.
    /// A split ring's size must be a power of two (§2.7), so until the driver negotiates
    /// `VIRTIO_F_RING_PACKED` the transport shows this rounded down to a power of two; a
    /// packed ring may have any size up to it (§2.8), so with RING_PACKED it is shown as is.
    #[doc(alias = "QueueNumMax")]
    fn queue_max_size(&self, index: u16) -> u16;

    /// Read `data.len()` (1, 2, 4 or 8) bytes of device-specific configuration at `offset`
    /// (§2.5, little-endian), at any alignment. `data` arrives zeroed; leave bytes past the
    /// end of the configuration untouched (they read as zero). [`config_read`] does this for
    /// a byte image.
    fn read_config(&self, offset: u32, data: &mut [u8]);

    /// Write `data.len()` (1, 2, 4 or 8) bytes of device-specific configuration at `offset`
    /// (§2.5, little-endian), at any alignment. Ignore what is read-only or out of range.
    fn write_config(&mut self, offset: u32, data: &[u8]) {
        let _ = (offset, data);
    }

    /// The driver set DRIVER_OK: the device is live with `negotiated` features (§3.1.1).
    fn activate(&mut self, negotiated: u64) {
        let _ = negotiated;
    }

    /// Device reset (§2.4): drop all device state, including chains kept for later. The
    /// transport resets the queues itself.
    fn reset(&mut self) {}

    /// Queue `index` alone was stopped or reset: `QueueReset` (§2.6.1, RING_RESET),
    /// `QueueReady = 0`, or legacy `QueuePFN = 0`. Drop every chain kept from that queue: its
    /// heads may be reused by the driver after the queue is enabled again (H19).
    fn queue_reset(&mut self, index: u16) {
        let _ = index;
    }

    /// Queue `index` was notified (or is being polled): process what the driver made
    /// available. `queues` is every queue of the device (a device such as a network loopback
    /// may complete chains on another queue); only ready, unbroken queues should be touched,
    /// and every `Queue` method refuses the others in O(1).
    ///
    /// Return `true` if a used-buffer notification is due, typically
    /// [`DrainReport::notify`](crate::DrainReport) from [`Queue::drain`]. After the handler
    /// returns, the transport also asks every live queue
    /// [`Queue::needs_notification`], and turns a queue that became broken into
    /// DEVICE_NEEDS_RESET. A transport with per-queue interrupts (PCI with MSI-X) sends the
    /// `true` to every queue whose used ring the handler moved (to queue `index` if it moved
    /// none).
    fn queue_notify<M: GuestMemory + ?Sized>(
        &mut self,
        index: u16,
        queues: &mut [Queue],
        mem: &M,
    ) -> bool;

    /// Queue `index` was notified (or is being polled) and the driver negotiated
    /// `VIRTIO_F_RING_PACKED` (§2.8): as [`queue_notify`](Self::queue_notify), with the
    /// device's queues in the packed format, typically drained with
    /// [`PackedQueue::drain`].
    ///
    /// Called only for a device with [`PACKED_RING`](Self::PACKED_RING) set; a device that
    /// serves only split rings keeps this default, which does nothing.
    fn queue_notify_packed<M: GuestMemory + ?Sized>(
        &mut self,
        index: u16,
        queues: &mut [PackedQueue],
        mem: &M,
    ) -> bool {
        let _ = (index, queues, mem);
        false
    }
}

/// The access widths the transports answer: 1, 2, 4 or 8 bytes, what a trap delivers. `None`
/// for any other width (such an access reads 0 and is ignored on write).
pub(crate) fn access_len(width: u8) -> Option<usize> {
    matches!(width, 1 | 2 | 4 | 8).then_some(usize::from(width))
}

/// Copy the part of `image` (a device's configuration space as bytes) that `[offset, offset +
/// data.len())` covers into `data`; bytes past the end of `image` are left as they are (zero).
pub fn config_read(image: &[u8], offset: u32, data: &mut [u8]) {
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    let src = image.get(start..).unwrap_or(&[]);
    for (d, s) in data.iter_mut().zip(src) {
        *d = *s;
    }
}
