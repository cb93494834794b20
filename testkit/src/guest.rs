//! A real guest driver on the host: the `virtio-drivers` crate (an independent no_std guest
//! driver stack) driving a `virtq` device through the virtio-mmio trap path.
//!
//! * [`Arena`] is the guest's RAM: one block of host memory that the device sees at
//!   guest-physical [`GUEST_RAM_BASE`] and up, through [`GuestRam`] (a [`GuestMemory`] built on
//!   virtq's own [`HostRegion`]).
//! * [`GuestHal`] is the driver's `Hal`: DMA pages come from the arena, and every buffer the
//!   driver shares is *bounced* through the arena (guest-physical address = arena offset +
//!   base). A device-writable bounce buffer starts out filled with [`POISON`], so a device that
//!   forgets to write a byte hands the driver `0xA5` instead of stale data that happens to be
//!   right. Freed bounce buffers are poisoned too.
//! * [`GuestMmio`] is the driver's `Transport`: every call becomes 32-bit (or config-width)
//!   reads and writes at register offsets, exactly what a hypervisor's trap handler forwards to
//!   [`MmioTransport::read`] / [`MmioTransport::write`]. Legacy (version 1) devices are driven
//!   with `virtio-drivers`' own legacy logic (`GuestPageSize`, `QueueAlign`, `QueuePFN`).
//!
//! `Hal` has no `self`, so the arena a driver allocates from is chosen per thread with
//! [`Arena::install`]; the device side holds its own handle ([`GuestRam`]) and may run on any
//! thread.

/// The guest driver crate, re-exported so tests need no dependency of their own.
pub use virtio_drivers;

use std::alloc::Layout;
use std::cell::RefCell;
use std::mem::size_of;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{BufferDirection, Hal, PAGE_SIZE, PhysAddr};
use virtq::memory::HostRegion;
use virtq::transport::mmio::{MmioVersion, regs};
use virtq::transport::{MmioTransport, VirtioDevice};
use virtq::{GuestAddress, GuestMemory, MemoryError};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Guest-physical address of the first byte of the arena (never 0, and above 4 GiB would
/// exercise the high address registers; 1 GiB keeps legacy PFNs small).
pub const GUEST_RAM_BASE: u64 = 0x4000_0000;

/// Fill byte of device-writable bounce buffers and of freed memory.
pub const POISON: u8 = 0xA5;

/// Bounce-buffer granule.
const GRANULE: usize = 64;

/// First-fit free list over the arena, in byte offsets.
#[derive(Debug)]
struct FreeList {
    /// Sorted, disjoint, non-adjacent free ranges `(offset, len)`.
    free: Vec<(usize, usize)>,
    in_use: usize,
    peak: usize,
}

impl FreeList {
    fn alloc(&mut self, len: usize, align: usize) -> Option<usize> {
        let len = len.max(1).next_multiple_of(GRANULE);
        for i in 0..self.free.len() {
            let (off, flen) = self.free[i];
            let start = off.next_multiple_of(align);
            let end = start.checked_add(len)?;
            if end <= off + flen {
                self.free.remove(i);
                if end < off + flen {
                    self.free.insert(i, (end, off + flen - end));
                }
                if start > off {
                    self.free.insert(i, (off, start - off));
                }
                self.in_use += len;
                self.peak = self.peak.max(self.in_use);
                return Some(start);
            }
        }
        None
    }

    fn free(&mut self, off: usize, len: usize) {
        let len = len.max(1).next_multiple_of(GRANULE);
        self.in_use -= len;
        let i = self.free.partition_point(|&(o, _)| o < off);
        self.free.insert(i, (off, len));
        // Merge with the next and the previous range.
        if i + 1 < self.free.len() && self.free[i].0 + self.free[i].1 == self.free[i + 1].0 {
            self.free[i].1 += self.free[i + 1].1;
            self.free.remove(i + 1);
        }
        if i > 0 && self.free[i - 1].0 + self.free[i - 1].1 == self.free[i].0 {
            self.free[i - 1].1 += self.free[i].1;
            self.free.remove(i);
        }
    }
}

/// The guest's RAM: one page-aligned block of host memory, seen by the device at
/// [`GUEST_RAM_BASE`].
#[derive(Debug)]
pub struct Arena {
    ptr: NonNull<u8>,
    layout: Layout,
    region: HostRegion,
    alloc: Mutex<FreeList>,
}

// SAFETY: the arena owns its block; all access goes through raw pointers (the driver's, which
// `virtio-drivers` synchronises with atomics and fences, and `HostRegion`'s volatile/atomic
// accesses), so sharing the description between threads is sound.
unsafe impl Send for Arena {}
// SAFETY: see `Send`.
unsafe impl Sync for Arena {}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: allocated in `Arena::new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Arena>>> = const { RefCell::new(None) };
}

/// Restores the previously installed arena when dropped.
#[derive(Debug)]
pub struct ArenaGuard {
    previous: Option<Arc<Arena>>,
}

impl Drop for ArenaGuard {
    fn drop(&mut self) {
        let prev = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = prev);
    }
}

impl Arena {
    /// `len` bytes of zeroed guest RAM (rounded up to whole pages).
    pub fn new(len: usize) -> Arc<Self> {
        let len = len.next_multiple_of(PAGE_SIZE);
        let layout = Layout::from_size_align(len, PAGE_SIZE).expect("arena layout");
        // SAFETY: `layout` has a non-zero size.
        let ptr = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) }).expect("arena alloc");
        // SAFETY: the block stays allocated until the arena (which owns the region) is dropped,
        // and the library only reaches it through the region's volatile/atomic accesses.
        let region = unsafe { HostRegion::new(GuestAddress(GUEST_RAM_BASE), ptr, len) }
            .expect("arena region");
        Arc::new(Self {
            ptr,
            layout,
            region,
            alloc: Mutex::new(FreeList {
                free: vec![(0, len)],
                in_use: 0,
                peak: 0,
            }),
        })
    }

    /// Make this the arena [`GuestHal`] allocates from on the current thread, until the guard
    /// is dropped.
    pub fn install(self: &Arc<Self>) -> ArenaGuard {
        let previous = CURRENT.with(|c| c.borrow_mut().replace(Arc::clone(self)));
        ArenaGuard { previous }
    }

    /// The device's view of this RAM.
    pub fn guest_ram(self: &Arc<Self>) -> GuestRam {
        GuestRam(Arc::clone(self))
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// Always `false` (an arena has at least one page).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Bytes currently allocated (DMA pages plus bounce buffers).
    pub fn in_use(&self) -> usize {
        self.alloc.lock().unwrap().in_use
    }

    /// Most bytes ever allocated at once.
    pub fn peak(&self) -> usize {
        self.alloc.lock().unwrap().peak
    }

    /// Driver-side copy out of guest RAM (test inspection).
    pub fn peek(&self, gpa: u64, buf: &mut [u8]) {
        self.region.read(GuestAddress(gpa), buf).expect("peek");
    }

    /// Driver-side copy into guest RAM (test set-up).
    pub fn poke(&self, gpa: u64, buf: &[u8]) {
        self.region.write(GuestAddress(gpa), buf).expect("poke");
    }

    fn host(&self, off: usize) -> *mut u8 {
        self.ptr.as_ptr().wrapping_add(off)
    }

    fn take(&self, len: usize, align: usize) -> Option<usize> {
        self.alloc.lock().unwrap().alloc(len, align)
    }

    fn give_back(&self, off: usize, len: usize) {
        // SAFETY: `[off, off + len)` was allocated from this arena and is no longer shared.
        unsafe { self.host(off).write_bytes(POISON, len) };
        self.alloc.lock().unwrap().free(off, len);
    }

    fn offset_of(&self, paddr: PhysAddr) -> usize {
        usize::try_from(paddr - GUEST_RAM_BASE).expect("paddr in arena")
    }
}

fn current() -> Arc<Arena> {
    CURRENT.with(|c| {
        c.borrow()
            .clone()
            .expect("no guest arena installed on this thread: call Arena::install")
    })
}

/// The device's view of an [`Arena`]: a [`GuestMemory`] over [`HostRegion`] that keeps the
/// arena alive. Cheap to clone; `Send + Sync`.
#[derive(Clone, Debug)]
pub struct GuestRam(Arc<Arena>);

impl GuestRam {
    /// The arena behind this view.
    pub fn arena(&self) -> &Arc<Arena> {
        &self.0
    }
}

impl GuestMemory for GuestRam {
    #[inline]
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.0.region.read(addr, buf)
    }
    #[inline]
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError> {
        self.0.region.write(addr, buf)
    }
    #[inline]
    fn load_u16(&self, addr: GuestAddress) -> Result<u16, MemoryError> {
        self.0.region.load_u16(addr)
    }
    #[inline]
    fn store_u16(&self, addr: GuestAddress, value: u16) -> Result<(), MemoryError> {
        self.0.region.store_u16(addr, value)
    }
    #[inline]
    fn check_range(&self, addr: GuestAddress, len: u64) -> Result<(), MemoryError> {
        self.0.region.check_range(addr, len)
    }
    /// The region's own answer (it knows its host pointer's alignment), not the provided one.
    #[inline]
    fn check_u16_range(&self, addr: GuestAddress, len: u64) -> Result<(), MemoryError> {
        self.0.region.check_u16_range(addr, len)
    }
}

/// `virtio-drivers`' `Hal` over the arena installed on the current thread.
#[derive(Debug)]
pub struct GuestHal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned, exclusively allocated arena memory that
// stays valid until `dma_dealloc`; `share` hands out arena copies that alias nothing else.
unsafe impl Hal for GuestHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let arena = current();
        let len = pages * PAGE_SIZE;
        match arena.take(len, PAGE_SIZE) {
            Some(off) => {
                let p = arena.host(off);
                // SAFETY: `[off, off + len)` is an exclusive allocation inside the arena.
                unsafe { p.write_bytes(0, len) };
                (
                    GUEST_RAM_BASE + off as u64,
                    NonNull::new(p).expect("non-null"),
                )
            }
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        let arena = current();
        arena.give_back(arena.offset_of(paddr), pages * PAGE_SIZE);
        0
    }

    unsafe fn mmio_phys_to_virt(_paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        unreachable!("only the PCI transport maps BARs")
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        let arena = current();
        let len = buffer.len();
        let off = arena.take(len, 16).expect("guest arena exhausted");
        let dst = arena.host(off);
        match direction {
            // SAFETY: the caller guarantees `buffer` is valid for `len` bytes; `dst` is an
            // exclusive arena allocation of at least `len` bytes.
            BufferDirection::DriverToDevice | BufferDirection::Both => unsafe {
                std::ptr::copy_nonoverlapping(buffer.cast::<u8>().as_ptr(), dst, len);
            },
            // SAFETY: as above.
            BufferDirection::DeviceToDriver => unsafe { dst.write_bytes(POISON, len) },
        }
        GUEST_RAM_BASE + off as u64
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        let arena = current();
        let off = arena.offset_of(paddr);
        let len = buffer.len();
        if matches!(
            direction,
            BufferDirection::DeviceToDriver | BufferDirection::Both
        ) {
            // SAFETY: `off` is the bounce buffer `share` returned for this buffer; the device
            // finished with it (the driver saw the used element).
            unsafe {
                std::ptr::copy_nonoverlapping(arena.host(off), buffer.cast::<u8>().as_ptr(), len)
            };
        }
        arena.give_back(off, len);
    }
}

/// The register window as the guest sees it: what a trap delivers to the device.
pub trait MmioBus {
    /// A guest load of `width` bytes at `offset`.
    fn read(&self, offset: u64, width: u8) -> u32;
    /// A guest store of `width` bytes at `offset`.
    fn write(&self, offset: u64, width: u8, value: u32);
}

/// A device shared between the guest (register accesses) and a test or device thread.
pub type SharedDevice<D, const Q: usize> = Arc<Mutex<MmioTransport<D, GuestRam, Q>>>;

impl<D: VirtioDevice, M: GuestMemory, const Q: usize> MmioBus
    for Arc<Mutex<MmioTransport<D, M, Q>>>
{
    fn read(&self, offset: u64, width: u8) -> u32 {
        // This guest makes accesses of at most 4 bytes: the value is in the low 32 bits.
        self.lock().unwrap().read(offset, width) as u32
    }
    fn write(&self, offset: u64, width: u8, value: u32) {
        // The guest polls `InterruptStatus` itself: the line level and events are not needed.
        let _ = self.lock().unwrap().write(offset, width, value.into());
    }
}

/// Bytes of configuration space the window exposes (0x100..0x200).
const CONFIG_SIZE: usize = 0x100;

/// `virtio-drivers`' `Transport`, implemented only with register accesses at MMIO offsets.
#[derive(Debug)]
pub struct GuestMmio<B: MmioBus> {
    bus: B,
    version: MmioVersion,
    device_type: DeviceType,
}

/// Why a register window is not a usable virtio-mmio device.
#[derive(Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// `MagicValue` is not "virt".
    BadMagic(u32),
    /// `Version` is neither 1 nor 2.
    BadVersion(u32),
    /// `DeviceID` is 0 or unknown to `virtio-drivers`.
    BadDeviceId(u32),
}

impl<B: MmioBus> GuestMmio<B> {
    /// Probe the window like a guest kernel does (INIT-27): magic, version, device ID.
    pub fn new(bus: B) -> Result<Self, ProbeError> {
        let magic = bus.read(regs::MAGIC_VALUE, 4);
        if magic != 0x7472_6976 {
            return Err(ProbeError::BadMagic(magic));
        }
        let version = match bus.read(regs::VERSION, 4) {
            1 => MmioVersion::Legacy,
            2 => MmioVersion::V2,
            v => return Err(ProbeError::BadVersion(v)),
        };
        let id = bus.read(regs::DEVICE_ID, 4);
        let device_type = DeviceType::try_from(id).map_err(|_| ProbeError::BadDeviceId(id))?;
        Ok(Self {
            bus,
            version,
            device_type,
        })
    }

    /// The register window.
    pub fn bus(&self) -> &B {
        &self.bus
    }

    fn w(&self, offset: u64, value: u32) {
        self.bus.write(offset, 4, value);
    }

    fn r(&self, offset: u64) -> u32 {
        self.bus.read(offset, 4)
    }

    /// Config accesses of the widths the spec allows: one access for a naturally aligned 1-,
    /// 2- or 4-byte field, aligned 32-bit accesses for larger ones, bytes otherwise.
    fn config_chunks(offset: usize, len: usize) -> Vec<(usize, u8)> {
        if matches!(len, 1 | 2 | 4) && offset.is_multiple_of(len) {
            return vec![(offset, len as u8)];
        }
        let w: usize = if offset.is_multiple_of(4) && len.is_multiple_of(4) {
            4
        } else {
            1
        };
        (0..len / w).map(|i| (offset + i * w, w as u8)).collect()
    }
}

impl<B: MmioBus> Drop for GuestMmio<B> {
    fn drop(&mut self) {
        // Like virtio-drivers' own MmioTransport: reset the device when the transport goes.
        self.w(regs::STATUS, 0);
    }
}

impl<B: MmioBus> Transport for GuestMmio<B> {
    fn device_type(&self) -> DeviceType {
        self.device_type
    }

    fn read_device_features(&mut self) -> u64 {
        self.w(regs::DEVICE_FEATURES_SEL, 0);
        let lo = u64::from(self.r(regs::DEVICE_FEATURES));
        self.w(regs::DEVICE_FEATURES_SEL, 1);
        let hi = u64::from(self.r(regs::DEVICE_FEATURES));
        lo | (hi << 32)
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        self.w(regs::DRIVER_FEATURES_SEL, 0);
        self.w(regs::DRIVER_FEATURES, driver_features as u32);
        self.w(regs::DRIVER_FEATURES_SEL, 1);
        self.w(regs::DRIVER_FEATURES, (driver_features >> 32) as u32);
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.w(regs::QUEUE_SEL, queue.into());
        self.r(regs::QUEUE_NUM_MAX)
    }

    fn notify(&mut self, queue: u16) {
        self.w(regs::QUEUE_NOTIFY, queue.into());
    }

    fn get_status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_retain(self.r(regs::STATUS))
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.w(regs::STATUS, status.bits());
    }

    fn set_guest_page_size(&mut self, guest_page_size: u32) {
        if self.version == MmioVersion::Legacy {
            self.w(regs::GUEST_PAGE_SIZE, guest_page_size);
        }
    }

    fn requires_legacy_layout(&self) -> bool {
        self.version == MmioVersion::Legacy
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        self.w(regs::QUEUE_SEL, queue.into());
        self.w(regs::QUEUE_NUM, size);
        match self.version {
            MmioVersion::Legacy => {
                // virtio-drivers lays legacy queues out contiguously at page granularity.
                assert_eq!(driver_area - descriptors, 16 * u64::from(size));
                assert_eq!(device_area % PAGE_SIZE as u64, 0);
                self.w(regs::QUEUE_ALIGN, PAGE_SIZE as u32);
                self.w(regs::QUEUE_PFN, (descriptors / PAGE_SIZE as u64) as u32);
            }
            MmioVersion::V2 => {
                self.w(regs::QUEUE_DESC_LOW, descriptors as u32);
                self.w(regs::QUEUE_DESC_HIGH, (descriptors >> 32) as u32);
                self.w(regs::QUEUE_DRIVER_LOW, driver_area as u32);
                self.w(regs::QUEUE_DRIVER_HIGH, (driver_area >> 32) as u32);
                self.w(regs::QUEUE_DEVICE_LOW, device_area as u32);
                self.w(regs::QUEUE_DEVICE_HIGH, (device_area >> 32) as u32);
                self.w(regs::QUEUE_READY, 1);
            }
        }
    }

    fn queue_unset(&mut self, queue: u16) {
        self.w(regs::QUEUE_SEL, queue.into());
        match self.version {
            MmioVersion::Legacy => {
                self.w(regs::QUEUE_NUM, 0);
                self.w(regs::QUEUE_PFN, 0);
            }
            MmioVersion::V2 => {
                self.w(regs::QUEUE_READY, 0);
                // The stop takes effect before the read-back (MMIO-18).
                assert_eq!(self.r(regs::QUEUE_READY), 0);
                for reg in [
                    regs::QUEUE_NUM,
                    regs::QUEUE_DESC_LOW,
                    regs::QUEUE_DESC_HIGH,
                    regs::QUEUE_DRIVER_LOW,
                    regs::QUEUE_DRIVER_HIGH,
                    regs::QUEUE_DEVICE_LOW,
                    regs::QUEUE_DEVICE_HIGH,
                ] {
                    self.w(reg, 0);
                }
            }
        }
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.w(regs::QUEUE_SEL, queue.into());
        match self.version {
            MmioVersion::Legacy => self.r(regs::QUEUE_PFN) != 0,
            MmioVersion::V2 => self.r(regs::QUEUE_READY) != 0,
        }
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        let status = self.r(regs::INTERRUPT_STATUS);
        if status != 0 {
            self.w(regs::INTERRUPT_ACK, status);
        }
        InterruptStatus::from_bits_truncate(status)
    }

    fn read_config_generation(&self) -> u32 {
        self.r(regs::CONFIG_GENERATION)
    }

    fn read_config_space<T: FromBytes + IntoBytes>(
        &self,
        offset: usize,
    ) -> virtio_drivers::Result<T> {
        let len = size_of::<T>();
        if offset + len > CONFIG_SIZE {
            return Err(virtio_drivers::Error::ConfigSpaceTooSmall);
        }
        let mut bytes = vec![0u8; len];
        for (off, w) in Self::config_chunks(offset, len) {
            let v = self.bus.read(regs::CONFIG + off as u64, w).to_le_bytes();
            let at = off - offset;
            bytes[at..at + usize::from(w)].copy_from_slice(&v[..usize::from(w)]);
        }
        Ok(T::read_from_bytes(&bytes).expect("size matches"))
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> virtio_drivers::Result<()> {
        let bytes = value.as_bytes();
        if offset + bytes.len() > CONFIG_SIZE {
            return Err(virtio_drivers::Error::ConfigSpaceTooSmall);
        }
        for (off, w) in Self::config_chunks(offset, bytes.len()) {
            let at = off - offset;
            let mut v = [0u8; 4];
            v[..usize::from(w)].copy_from_slice(&bytes[at..at + usize::from(w)]);
            self.bus
                .write(regs::CONFIG + off as u64, w, u32::from_le_bytes(v));
        }
        Ok(())
    }
}

/// Put `device` behind a virtio-mmio register file over `arena`'s RAM, shared so a guest
/// ([`GuestMmio`]) and the test (or a device thread) can both reach it.
pub fn attach<D: VirtioDevice, const Q: usize>(
    device: D,
    arena: &Arc<Arena>,
    version: MmioVersion,
) -> SharedDevice<D, Q> {
    Arc::new(Mutex::new(MmioTransport::new(
        device,
        arena.guest_ram(),
        version,
    )))
}
