//! Register windows that trap like a hypervisor's: guest code that was never written for tests
//! (`virtio-drivers`' own `MmioTransport`, later its `PciTransport`) drives a `virtq` transport
//! through ordinary volatile loads and stores.
//!
//! [`crate::guest`] drives our devices through a `Transport` of our own that calls
//! [`MmioTransport::read`](virtq::transport::MmioTransport::read) directly; the guest's real
//! transport code never runs there. Here it does:
//!
//! * [`TrapWindow`] maps a window with no access rights and hands out its address. A
//!   `SIGSEGV` handler catches each access, decodes the faulting instruction ([`x86`]),
//!   forwards it to the window's [`TrapTarget`], writes a load's value into the destination
//!   register and resumes after the instruction. [Signal context](#signal-context) below gives
//!   the rules for code that runs there.
//! * [`mmio::MmioTarget`] is the target for a virtio-mmio device: a thin adapter over
//!   [`virtq::transport::MmioTransport`] that records the interrupt line and every access the
//!   transport cannot take. [`mmio::mmio_window`] builds device + window in one call, and
//!   [`mmio::guest_transport`] gives `virtio-drivers`' own `MmioTransport` over the window.
//! * [`TrapHal`] is [`GuestHal`](crate::guest::GuestHal) plus `mmio_phys_to_virt` for windows
//!   created with [`TrapWindow::at_gpa`]: the way `virtio-drivers`' PCI transport maps BARs.
//!
//! # Signal context
//!
//! The target runs inside the signal handler on the thread that made the access, exactly
//! where a hypervisor's trap handler would run: in the middle of the guest code, which may
//! hold any lock. That works because `virtq` never allocates and never takes a lock; every
//! target must keep that property, and so must a device model that runs inside the trap
//! ([`NotifyMode::Inline`](virtq::transport::NotifyMode)). [`in_handler`] tells a test's
//! counting allocator whether it is being called from the handler. Device models that do
//! allocate run with [`NotifyMode::Deferred`](virtq::transport::NotifyMode): the trap only
//! records the kick and the device runs later in ordinary code, like a hypervisor's I/O
//! thread ([`mmio::MmioTarget::process_kicks`] through [`TrapWindow::with`]).
//!
//! # Availability
//!
//! The trap needs x86-64 Linux and real signals: it is compiled only there and never under
//! Miri. The decoder ([`x86`]) is plain code and available everywhere.
//!
//! # Adding the PCI path
//!
//! `virtio-drivers`' `PciTransport::new::<TrapHal, C>(&mut PciRoot<C>, DeviceFunction)` reads
//! configuration space through `C: ConfigurationAccess` and maps each capability's BAR region
//! with `Hal::mmio_phys_to_virt`, which [`TrapHal`] answers from the windows. A PCI test:
//!
//! 1. builds one [`TrapWindow::at_gpa`] per memory BAR (or one window spanning BARs it places
//!    back to back), whose target forwards `(offset, width, value)` to the PCI transport's BAR
//!    handler, in the style of [`mmio::MmioTarget`];
//! 2. implements `ConfigurationAccess` by calling the transport's configuration-space handler
//!    through [`TrapWindow::with`] (configuration cycles are port or ECAM accesses a hypervisor
//!    also traps, but `virtio-drivers` issues them through this trait, not as loads);
//! 3. acts as firmware: sizes and programs the BARs with `PciRoot::bar_info` / `set_bar_64` at
//!    the window's address and enables memory decoding with `set_command`;
//! 4. hands `PciTransport` to the drivers exactly as [`mmio::guest_transport`] does here.
//!
//! `virtio-drivers` writes `queue_desc`, `queue_driver` and `queue_device` as single 8-byte
//! stores, so the BAR adapter must pass 8-byte accesses through (the MMIO adapter counts them
//! as refused). Its `PciTransport` never programs MSI-X: it acknowledges INTx by reading the
//! ISR. An MSI-X test enables the capability and writes `msix_config` / `queue_msix_vector`
//! itself (through the window) before DRIVER_OK, and the adapter records the vectors the
//! transport asks for.

pub mod x86;

#[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
pub mod mmio;
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
mod window;

#[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
pub use window::{MAX_WINDOWS, TrapCounts, TrapWindow, in_handler};

/// The `libc` the trap is built on, for tests that need POSIX calls of their own (for
/// example to watch a child process die loudly).
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
pub use libc;

/// What a [`TrapWindow`] forwards guest accesses to: the device side of a register window.
///
/// Called from the trap handler (signal context): implementations must not allocate, lock, or
/// panic. A width or offset the device cannot take must be answered (0 on a read, ignored on
/// a write) and recorded where the test can see it, never split into smaller accesses.
pub trait TrapTarget {
    /// A guest load of `width` bytes (1, 2, 4 or 8) at `offset` in the window; the value
    /// (bits above `width` are ignored).
    fn read(&mut self, offset: u64, width: u8) -> u64;
    /// A guest store of `width` bytes at `offset`; `value` holds exactly `width` bytes.
    fn write(&mut self, offset: u64, width: u8, value: u64);
}

/// `virtio-drivers`' `Hal` for trapped devices: DMA and buffer sharing as
/// [`GuestHal`](crate::guest::GuestHal) (the arena installed on the current thread), and
/// `mmio_phys_to_virt` that finds the [`TrapWindow`] claiming the guest-physical range.
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
#[derive(Debug)]
pub struct TrapHal;

#[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
mod hal {
    use std::ptr::NonNull;

    use virtio_drivers::{BufferDirection, Hal, PhysAddr};

    use crate::guest::GuestHal;

    use super::{TrapHal, window};

    // SAFETY: DMA and sharing are `GuestHal`'s (see its safety comment); `mmio_phys_to_virt`
    // returns an address inside a live trap window that covers the whole requested range.
    unsafe impl Hal for TrapHal {
        fn dma_alloc(pages: usize, direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
            GuestHal::dma_alloc(pages, direction)
        }

        unsafe fn dma_dealloc(paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
            // SAFETY: the caller's promises are GuestHal's.
            unsafe { GuestHal::dma_dealloc(paddr, vaddr, pages) }
        }

        unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
            window::gpa_to_host(paddr, size).unwrap_or_else(|| {
                panic!("no trap window claims guest-physical {paddr:#x}+{size:#x}")
            })
        }

        unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
            // SAFETY: the caller's promises are GuestHal's.
            unsafe { GuestHal::share(buffer, direction) }
        }

        unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
            // SAFETY: the caller's promises are GuestHal's.
            unsafe { GuestHal::unshare(paddr, buffer, direction) }
        }
    }
}
