//! A virtio-mmio device behind a [`TrapWindow`]: the target adapter over `virtq`'s
//! [`MmioTransport`], and the constructors that put `virtio-drivers`' own `MmioTransport` in
//! front of it.
//!
//! ```
//! # use virtq::Features;
//! # use virtq::transport::{MmioVersion, NotifyMode};
//! # use virtq_testkit::devices::BlkDevice;
//! # use virtq_testkit::guest::{Arena, GuestHal};
//! # use virtq_testkit::trap::mmio::{guest_transport, mmio_window};
//! # use virtio_drivers::device::blk::VirtIOBlk;
//! let arena = Arena::new(1 << 20);
//! let _g = arena.install();
//! let dev = BlkDevice::new(2048, Features::EVENT_IDX, 16);
//! let window = mmio_window::<_, 1>(dev, &arena, MmioVersion::V2, NotifyMode::Inline);
//! // virtio-drivers' own transport; each register access below traps into `window`.
//! let mut blk = VirtIOBlk::<GuestHal, _>::new(guest_transport(&window).unwrap()).unwrap();
//! blk.write_blocks(0, &[1u8; 512]).unwrap();
//! assert_eq!(window.with(|t| t.device().disk()[0]), 1);
//! ```

use std::ptr::NonNull;
use std::sync::Arc;

use virtio_drivers::transport::mmio::{MmioError, MmioTransport as DriverMmio, VirtIOHeader};
use virtq::GuestMemory;
use virtq::transport::{MmioTransport, MmioVersion, NotifyMode, VirtioDevice};

use super::{TrapTarget, TrapWindow};
use crate::guest::{Arena, GuestRam};

/// Size of a virtio-mmio register window: registers to 0x100, then configuration space
/// (VIRTIO 1.4 §4.2.2).
pub const MMIO_WINDOW_SIZE: usize = 0x200;

/// The device's interrupt line as the transport drives it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqLine {
    /// Current level: asserted while `InterruptStatus` is non-zero (MMIO-03).
    pub level: bool,
    /// Rising edges so far: how often the hypervisor would have injected the interrupt.
    pub raised: u64,
}

impl IrqLine {
    fn set(&mut self, level: bool) {
        if level && !self.level {
            self.raised += 1;
        }
        self.level = level;
    }
}

/// A guest access the transport cannot take, as it arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefusedAccess {
    /// Offset in the window.
    pub offset: u64,
    /// Width in bytes.
    pub width: u8,
    /// A store (`true`) or a load.
    pub write: bool,
}

/// [`TrapTarget`] for a virtio-mmio device: every access goes to
/// [`MmioTransport::read`] / [`MmioTransport::write`] unchanged.
///
/// The transport takes accesses of 1, 2, 4 and 8 bytes (and answers each as the spec says);
/// an access of any other width cannot come from a load or store, so it is counted in
/// [`refused`](Self::refused) (and still forwarded: it reads 0 or is dropped) so the test
/// sees it.
#[derive(Debug)]
pub struct MmioTarget<D, M, const Q: usize> {
    transport: MmioTransport<D, M, Q>,
    irq: IrqLine,
    refused: u64,
    first_refused: Option<RefusedAccess>,
}

impl<D: VirtioDevice, M: GuestMemory, const Q: usize> MmioTarget<D, M, Q> {
    /// Serve `transport`'s register file.
    pub fn new(transport: MmioTransport<D, M, Q>) -> Self {
        Self {
            transport,
            irq: IrqLine::default(),
            refused: 0,
            first_refused: None,
        }
    }

    /// The transport.
    pub fn transport(&self) -> &MmioTransport<D, M, Q> {
        &self.transport
    }

    /// The transport, mutably (record the interrupt level of what you call yourself with
    /// [`process_kicks`](Self::process_kicks) or by calling it through this adapter).
    pub fn transport_mut(&mut self) -> &mut MmioTransport<D, M, Q> {
        &mut self.transport
    }

    /// The device model.
    pub fn device(&self) -> &D {
        self.transport.device()
    }

    /// The interrupt line.
    pub fn irq(&self) -> IrqLine {
        self.irq
    }

    /// How many accesses the transport could not take, and the first of them.
    pub fn refused(&self) -> (u64, Option<RefusedAccess>) {
        (self.refused, self.first_refused)
    }

    /// Run the device on every queue the guest kicked since the last call (for
    /// [`NotifyMode::Deferred`]): what a hypervisor's I/O thread does after a trap recorded a
    /// notification. Returns the interrupt level afterwards.
    pub fn process_kicks(&mut self) -> bool {
        let mut kicked = [false; Q];
        self.transport.take_kicks(|i| {
            if let Some(k) = kicked.get_mut(usize::from(i)) {
                *k = true;
            }
        });
        let mut level = self.transport.interrupt_asserted();
        for (i, _) in kicked.iter().enumerate().filter(|(_, k)| **k) {
            if let Ok(i) = u16::try_from(i) {
                level = self.transport.process_queue(i).irq;
            }
        }
        self.irq.set(level);
        level
    }

    fn refuse(&mut self, offset: u64, width: u8, write: bool) {
        self.refused += 1;
        self.first_refused.get_or_insert(RefusedAccess {
            offset,
            width,
            write,
        });
    }
}

impl<D: VirtioDevice, M: GuestMemory, const Q: usize> TrapTarget for MmioTarget<D, M, Q> {
    fn read(&mut self, offset: u64, width: u8) -> u64 {
        if !matches!(width, 1 | 2 | 4 | 8) {
            self.refuse(offset, width, false);
        }
        self.transport.read(offset, width)
    }

    fn write(&mut self, offset: u64, width: u8, value: u64) {
        if !matches!(width, 1 | 2 | 4 | 8) {
            self.refuse(offset, width, true);
        }
        let level = self.transport.write(offset, width, value).irq;
        self.irq.set(level);
    }
}

/// A virtio-mmio device in a trap window, over the guest RAM of an [`Arena`].
pub type MmioWindow<D, const Q: usize> = TrapWindow<MmioTarget<D, GuestRam, Q>>;

/// Put `device` behind a virtio-mmio register file of `version` over `arena`'s RAM, in a
/// [`MMIO_WINDOW_SIZE`]-byte trap window, with notifications handled per `mode`.
pub fn mmio_window<D: VirtioDevice + Send, const Q: usize>(
    device: D,
    arena: &Arc<Arena>,
    version: MmioVersion,
    mode: NotifyMode,
) -> MmioWindow<D, Q> {
    let mut t = MmioTransport::new(device, arena.guest_ram(), version);
    t.set_notify_mode(mode);
    TrapWindow::new(MMIO_WINDOW_SIZE, MmioTarget::new(t))
}

/// `virtio-drivers`' own `MmioTransport` over `window`: it probes the window (magic, version,
/// device ID) through the trap, like a guest kernel.
pub fn guest_transport<T: TrapTarget + Send>(
    window: &TrapWindow<T>,
) -> Result<DriverMmio<'_>, MmioError> {
    let header: NonNull<VirtIOHeader> = window.base().cast();
    // SAFETY: the window is page-aligned (so aligned for the header) and `window.len()` bytes
    // long; every access to it is a trapped register access, never ordinary memory, and the
    // window outlives the returned transport (the borrow).
    unsafe { DriverMmio::new(header, window.len()) }
}
