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
//!   accesses to [`PciTransport::bar_read`] / [`PciTransport::bar_write`].
//!
//! Accesses are 1, 2, 4 or 8 bytes wide with the value in a `u64`, as a trap delivers them;
//! each transport answers the widths its specification allows and reads 0 / ignores the
//! rest. Every access that can change something returns an outcome the hypervisor must act
//! on ([`MmioOutcome`], [`PciOutcome`], both `#[must_use]`): the interrupt line level, the
//! interrupts raised, and [`Events`] (a queue refused at enable, DEVICE_NEEDS_RESET newly
//! raised, a device reset, queue work waiting), so nothing has to be polled.
//!
//! # A device model
//!
//! A device implements [`VirtioDevice`]: its type, features, queue sizes, configuration space
//! and one notification handler that serves split and packed rings alike through [`Queues`],
//! [`AnyQueue`] and [`AnyChain`]. Here is a complete virtio entropy device (§5.4): one request
//! queue whose device-writable buffers it fills with random bytes.
//!
//! ```
//! use virtq::transport::mmio::{MmioVersion, regs};
//! use virtq::transport::{
//!     AnyChain, DeviceId, MmioTransport, NotifyReport, Queues, VirtioDevice,
//! };
//! use virtq::{Completion, Features, GuestMemory};
//!
//! /// virtio-entropy: fills each buffer the driver posts with up to 256 random bytes.
//! struct Entropy {
//!     /// xorshift64 state (a stand-in for the platform's entropy source).
//!     state: u64,
//! }
//!
//! impl Entropy {
//!     /// At most this many bytes per request: a bound the device owns, whatever buffer
//!     /// size the guest claims (the spec lets the device write fewer bytes than offered).
//!     const MAX_BYTES: usize = 256;
//!
//!     /// Serve one chain; the used length is exactly what was written.
//!     fn fill<M: GuestMemory + ?Sized>(&mut self, chain: &AnyChain, mem: &M) -> Completion {
//!         let mut w = chain.writer(mem);
//!         for _ in 0..Self::MAX_BYTES / 8 {
//!             self.state ^= self.state << 13;
//!             self.state ^= self.state >> 7;
//!             self.state ^= self.state << 17;
//!             match w.write(&self.state.to_le_bytes()) {
//!                 Ok(0) => break, // the writable part is full
//!                 Ok(_) => {}
//!                 // A malformed chain: complete it with length 0, the queue keeps running.
//!                 Err(_) => return Completion::Used(0),
//!             }
//!         }
//!         Completion::Used(w.bytes_written())
//!     }
//! }
//!
//! impl VirtioDevice for Entropy {
//!     // Serve packed rings too: the one handler below does both.
//!     const PACKED_RING: bool = true;
//!
//!     fn device_id(&self) -> DeviceId {
//!         DeviceId::ENTROPY
//!     }
//!
//!     fn device_features(&self) -> Features {
//!         Features::INDIRECT_DESC | Features::EVENT_IDX | Features::RING_PACKED
//!     }
//!
//!     fn queue_max_size(&self, index: u16) -> u16 {
//!         if index == 0 { 64 } else { 0 } // one queue, "requestq"
//!     }
//!
//!     fn read_config(&self, _offset: u32, _data: &mut [u8]) {
//!         // No device configuration: every byte reads as zero.
//!     }
//!
//!     fn queue_notify<M: GuestMemory + ?Sized>(
//!         &mut self,
//!         index: u16,
//!         mut queues: Queues<'_>,
//!         mem: &M,
//!     ) -> NotifyReport {
//!         let Some(mut q) = queues.get(index) else {
//!             return NotifyReport::IDLE;
//!         };
//!         // At most 32 chains per call; if more are waiting the report says `more` and the
//!         // hypervisor calls `process_queue` again, from wherever it likes.
//!         q.drain(mem, 32, |chain| self.fill(chain, mem)).into()
//!     }
//! }
//!
//! // The hypervisor: the device behind a virtio-mmio window, over its guest RAM accessor.
//! let ram = virtq::memory::RegionTable::<1>::new();
//! let mut dev = MmioTransport::<_, _, 1>::new(Entropy { state: 0x2545_F491 }, &ram, MmioVersion::V2);
//! assert_eq!(dev.read(regs::DEVICE_ID, 4), 4);
//! // In the trap handler for a store: forward it, then act on the outcome.
//! let out = dev.write(regs::STATUS, 4, 1); // ACKNOWLEDGE
//! assert!(!out.irq && out.events.is_empty());
//! # // The same device driven by a guest-side model of the split ring.
//! # use virtq_testkit::{SplitDriver, TestMemory};
//! # let mem = TestMemory::m0();
//! # let mut drv = SplitDriver::standard(&mem, 16);
//! # let mut dev = MmioTransport::<_, _, 1>::new(Entropy { state: 1 }, &mem, MmioVersion::V2);
//! # for (reg, v) in [(regs::STATUS, 3), (regs::DRIVER_FEATURES_SEL, 1), (regs::DRIVER_FEATURES, 1),
//! #     (regs::STATUS, 11), (regs::QUEUE_NUM, 16), (regs::QUEUE_DESC_LOW, drv.desc),
//! #     (regs::QUEUE_DRIVER_LOW, drv.avail), (regs::QUEUE_DEVICE_LOW, drv.used),
//! #     (regs::QUEUE_READY, 1), (regs::STATUS, 15)] {
//! #     let _ = dev.write(reg, 4, v);
//! # }
//! # drv.add_chain(&[(0x8_0000, 100, true)]).unwrap();
//! # drv.add_chain(&[(0x9_0000, 1000, true)]).unwrap();
//! # let out = dev.write(regs::QUEUE_NOTIFY, 4, 0);
//! # assert!(out.irq);
//! # assert_eq!(drv.pop_used().map(|(_, len)| len), Some(100));
//! # assert_eq!(drv.pop_used().map(|(_, len)| len), Some(256));
//! ```
//!
//! `Queues` is [`Queues::Split`] until the driver negotiates `VIRTIO_F_RING_PACKED`, then
//! [`Queues::Packed`]; an [`AnyQueue`] has the methods of both queue types (pop, complete,
//! publish, the notification protocol, the drain loop) and an [`AnyChain`] walks, reads and
//! writes the same way whichever ring it came from. A device that must keep chains (posted
//! receive buffers) stores `AnyChain`s and completes them later with [`AnyQueue::add_used`].
//!
//! # In a trap handler
//!
//! Every entry point runs to completion in bounded time on the caller's stack: `virtq` never
//! allocates, never blocks, takes no lock and never panics on guest input. A hypervisor may
//! therefore call the transports directly from its VM-exit or stage-2 fault handler, with
//! interrupts masked if it likes. What runs inside is the register decode plus, for a queue
//! notification in [`NotifyMode::Inline`], the device model's handler, which must keep the
//! same rules (the example devices of `virtq-testkit` allocate nothing there); choose
//! [`NotifyMode::Deferred`] to keep the queue work out of the trap.
//!
//! The work of one access is bounded by the device's budget, not by the guest: a handler
//! that used up its budget reports [`NotifyReport::more`], and the transport records the
//! queue as pending ([`Events::KICKS`] in the outcome, the queue in `take_kicks`) instead of
//! calling the handler again. The hypervisor then calls `process_queue` for it later, as it
//! does for deferred kicks.
//!
//! # Interrupt lines: levels and edges
//!
//! The transports report interrupt lines as levels: the virtio-mmio line is asserted while
//! `InterruptStatus` is non-zero (MMIO-03), INTA# while the ISR is non-zero and MSI-X is off
//! (§4.1.4.5). A hypervisor with a **level-triggered** line sets it to the outcome's level
//! ([`MmioOutcome::irq`], [`PciOutcome::intx`]) after every access and is done: the
//! interrupt controller re-delivers while the level stays high.
//!
//! With an **edge-triggered** line (an edge-configured interrupt, an "inject interrupt" call
//! or an eventfd) the level is not enough. A notification raised while the level is already
//! high changes nothing: no new edge. That happens whenever the device completes more work
//! before the driver acknowledged the last interrupt, and it loses an interrupt when the
//! driver acknowledges only the bits it saw: for example, the driver's handler reads
//! `InterruptStatus` = used buffer, a configuration change arrives (no edge: the line is
//! high), the handler acknowledges the used-buffer bit and returns, and the line stays high
//! with nothing left to trigger it. So with an edge-triggered line:
//!
//! * send an edge for every outcome whose [`MmioOutcome::raised`] is not empty (each
//!   notification the device raised during the access, whether or not the line was already
//!   high); an extra interrupt is harmless, the driver reads `InterruptStatus` and finds
//!   nothing new;
//! * after [`MmioTransport::resume`] (a restored state may hold a pending interrupt), send an
//!   edge if the level is high.
//!
//! `tests/mmio_events.rs` shows both cases. For PCI, INTx is level-sensitive by definition and
//! each MSI-X message ([`PciOutcome::msix`]) is one edge already.

mod core;
mod device;
mod ring;

pub use self::core::state::{CoreFields, QueueRegsFields};
pub mod mmio;
pub mod pci;

pub use self::core::QueueSetupError;
pub use device::{DeviceId, NotifyReport, VirtioDevice};
pub use mmio::{MmioOutcome, MmioTransport, MmioVersion};
pub use pci::{PciOutcome, PciTransport};
pub use ring::{AnyChain, AnyQueue, Queues};

use bitflags::bitflags;

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

bitflags! {
    /// Things besides interrupts the hypervisor may have to act on after an access, on either
    /// transport ([`MmioOutcome::events`], [`PciOutcome::events`]).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct Events: u8 {
        /// PCI only: BAR 0 moved or Memory Space decoding was switched: read
        /// [`PciTransport::bar_address`] and move the BAR trap.
        const BAR_CHANGED = 1;
        /// The device entered DEVICE_NEEDS_RESET during the access (a queue was refused or
        /// broke, §2.1.2); `queue_setup_error` and the queues' errors say why.
        const NEEDS_RESET = 1 << 1;
        /// The driver reset the device (device status 0, §2.4): the device model was reset,
        /// every queue is back at power-on.
        const DEVICE_RESET = 1 << 2;
        /// Queue work waits: kicks recorded in [`NotifyMode::Deferred`], or a device whose
        /// budget ran out ([`NotifyReport::more`]). Call `take_kicks` and run `process_queue`
        /// for each queue it names, when convenient (never required inside the trap).
        const KICKS = 1 << 3;
        /// The driver enabled a queue and the transport refused it (H9, MMIO-16, §4.1.4.3:
        /// size, alignment, rings outside RAM, overlap, or enabled before FEATURES_OK);
        /// `queue_setup_error` says why. The device also raises DEVICE_NEEDS_RESET.
        const QUEUE_REFUSED = 1 << 4;
    }
}

bitflags! {
    /// The interrupt status of a device: virtio-mmio `InterruptStatus` (§4.2.2) and the PCI
    /// ISR status (§4.1.4.5) share the two defined bits.
    #[doc(alias = "isr_status")]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct InterruptStatus: u8 {
        /// A used-buffer notification (MMIO "Used Buffer Notification", PCI "Queue
        /// Interrupt"): some queue has used buffers the driver was not told about.
        #[doc(alias = "VIRTIO_MMIO_INT_VRING")]
        #[doc(alias = "VIRTIO_PCI_ISR_QUEUE")]
        const USED_BUFFER = 1;
        /// A configuration change notification (also how DEVICE_NEEDS_RESET is announced,
        /// §2.1.2).
        #[doc(alias = "VIRTIO_MMIO_INT_CONFIG")]
        #[doc(alias = "VIRTIO_PCI_ISR_CONFIG")]
        const CONFIG_CHANGE = 2;
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
