//! Register windows that trap like a hypervisor's: guest code that was never written for tests
//! (`virtio-drivers`' own `MmioTransport` and `PciTransport`) drives a `virtq` transport
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
//! * [`pci`] does the same for a virtio-pci function: BAR 0 in a window, configuration space
//!   through `virtio-drivers`' `ConfigurationAccess`, firmware enumeration, MSI-X and INTx
//!   delivery ([the PCI path](#the-pci-path) below).
//! * [`runs`] holds the guest workloads (blk, net, console through `virtio-drivers`) the trap
//!   tests run over either transport.
//! * [`HandlerAllocations`] is a global allocator for tests that counts allocations made
//!   inside the handler ([`handler_allocations`]).
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
//! # The PCI path
//!
//! [`pci`] runs `virtio-drivers`' own `PciTransport` against [`virtq::transport::PciTransport`]:
//!
//! 1. [`pci::pci_window`] puts the function's BAR 0 in a [`TrapWindow::at_gpa`] window that
//!    claims a fresh guest-physical aperture; its target, [`pci::PciTarget`], forwards
//!    `(address, width, value)` to the transport's `memory_read` / `memory_write` (8-byte
//!    accesses whole: `virtio-drivers` writes `queue_desc`, `queue_driver` and `queue_device`
//!    as single 8-byte stores) and delivers each outcome's interrupts: the INTA# level, and the
//!    MSI-X messages with the address and data the guest programmed.
//! 2. [`pci::PciCam`] is the `ConfigurationAccess`: configuration cycles are port or ECAM
//!    accesses a hypervisor also traps, but `virtio-drivers` issues them through this trait,
//!    not as loads, so it calls the transport's configuration-space handler through
//!    [`TrapWindow::with`].
//! 3. [`pci::firmware`] enumerates bus 0 with `PciRoot`, sizes BAR 0, places it at the
//!    window's aperture and enables memory decoding and bus mastering with `set_command`.
//! 4. [`pci::boot`] builds `virtio-drivers`' `PciTransport::new::<TrapHal, _>` (its capability
//!    walk maps each structure with [`TrapHal`]'s `mmio_phys_to_virt`) and hands it to the
//!    drivers in [`pci::GuestPci`], which forwards every call unchanged. That transport never
//!    programs MSI-X (it acknowledges INTx by reading the ISR); with
//!    [`pci::GuestIrq::Msix`] the wrapper does what a guest kernel does: MSI-X enabled and the
//!    table programmed through the trap before the driver starts, `config_msix_vector` and each
//!    `queue_msix_vector` written (and read back) before DRIVER_OK.

pub mod runs;
pub mod x86;

#[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
pub mod mmio;
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
pub mod pci;
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
mod window;

#[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
pub use window::{MAX_WINDOWS, TrapCounts, TrapWindow, in_handler};

/// The `libc` the trap is built on, for tests that need POSIX calls of their own (for
/// example to watch a child process die loudly).
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
pub use libc;

/// A global allocator (the system's) that counts allocations and frees made inside the trap
/// handler, for tests that check a target allocates nothing there:
///
/// ```
/// # use virtq_testkit::trap::{HandlerAllocations, handler_allocations};
/// #[global_allocator]
/// static ALLOC: HandlerAllocations = HandlerAllocations;
/// # fn main() {
/// // ... drive a device through a trap window ...
/// assert_eq!(handler_allocations(), 0);
/// # }
/// ```
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
#[derive(Debug)]
pub struct HandlerAllocations;

#[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
static HANDLER_ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Allocations and frees [`HandlerAllocations`] saw inside the trap handler, in the whole
/// process so far.
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
pub fn handler_allocations() -> u64 {
    HANDLER_ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed)
}

// SAFETY: forwards every call to the system allocator unchanged; the counter is an atomic.
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
unsafe impl std::alloc::GlobalAlloc for HandlerAllocations {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if in_handler() {
            HANDLER_ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        if in_handler() {
            HANDLER_ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        // SAFETY: as above.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

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
