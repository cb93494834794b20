//! [`GuestMemory`] over rust-vmm's `vm-memory` (feature `vm-memory`, needs `std`).
//!
//! A VMM built on rust-vmm (Cloud Hypervisor, Firecracker, crosvm-style) already describes its
//! guest RAM with `vm-memory`: a `GuestMemoryMmap`, possibly with a dirty-page bitmap for live
//! migration, possibly behind an IOMMU. [`VmMemory`] lets `virtq` use that description as it
//! is. Every access goes through `vm-memory`'s own slices, so its dirty-page tracking sees every
//! byte the device writes (used elements, buffer data, event words).
//!
//! What the adapter adds to keep `GuestMemory`'s contract, which `vm-memory` alone does not:
//!
//! * **No partial writes.** `vm-memory`'s `Bytes::write` copies region by region and stops at
//!   the first hole or failure, leaving the bytes before it written. [`VmMemory::write`] first
//!   resolves the whole range (every region it crosses, seams included) and writes only if all
//!   of it is accessible; a failed write has written nothing.
//! * **Atomic index words.** [`load_u16`](VmMemory::load_u16) and
//!   [`store_u16`](VmMemory::store_u16) use `vm-memory`'s atomic accessors (one `AtomicU16`
//!   access, `Relaxed`: the queues issue the fences) on a word that lies in one region; a word
//!   at an odd address, one that straddles a seam between two regions, or one at an odd host
//!   address is refused with [`MemoryError::Misaligned`], never split into two accesses.
//! * **Typed errors.** A range that is not (all) guest RAM is [`MemoryError::OutOfRange`]
//!   naming the whole range, `addr + len` past 2⁶⁴ is [`MemoryError::Overflow`], and any other
//!   failure of the backend (an IOMMU fault, a region without a host mapping, an I/O error) is
//!   [`MemoryError::Backend`].
//!
//! The adapter supports `vm-memory` 0.18 (its `GuestMemory` trait, which every
//! `GuestMemoryBackend` such as `GuestMemoryMmap` implements, and `IommuMemory`).

use core::ops::Range;
use core::sync::atomic::Ordering;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{Bytes, GuestMemoryError, Permissions, VolatileMemoryError, VolatileSlice};

use super::{GuestAddress, GuestMemory, MemoryError, range_end};

/// A [`GuestMemory`] over any `vm_memory::GuestMemory`: a `GuestMemoryMmap` (with or without a
/// dirty bitmap), a `GuestMemoryAtomic` load guard (dereference it), or an `IommuMemory`.
///
/// It borrows the VMM's memory object; build one per device activation, or per access, for
/// free (it is one reference).
///
/// ```rust,ignore
/// // (vm-memory with its `backend-mmap` feature, which the VMM enables)
/// use vm_memory::{GuestAddress as Gpa, GuestMemoryMmap};
/// use virtq::memory::VmMemory;
///
/// let ram = GuestMemoryMmap::<()>::from_ranges(&[(Gpa(0), 64 << 20)])?;
/// let mem = VmMemory::new(&ram);
/// let report = queue.drain(&mem, 64, |chain| serve(&mem, chain))?;
/// ```
///
/// For a `GuestMemoryBackend` (`GuestMemoryMmap` and every other backend: immutable by
/// `vm-memory`'s contract) a write that passed the check cannot fail part-way. Behind an IOMMU
/// (`IommuMemory`) the translation is read twice, once to check and once to write: if the guest
/// invalidates a mapping between the two, the write can stop part-way and fails with
/// [`MemoryError::Backend`], like a DMA that races an IOTLB invalidation on real hardware.
#[derive(Debug)]
pub struct VmMemory<'a, G: ?Sized> {
    mem: &'a G,
}

impl<G: ?Sized> Clone for VmMemory<'_, G> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<G: ?Sized> Copy for VmMemory<'_, G> {}

impl<'a, G: vm_memory::GuestMemory + ?Sized> VmMemory<'a, G> {
    /// Serve `mem` to the queues.
    #[inline]
    pub const fn new(mem: &'a G) -> Self {
        Self { mem }
    }

    /// The `vm-memory` object it serves.
    #[inline]
    pub const fn inner(&self) -> &'a G {
        self.mem
    }

    /// Check that all of `[addr, addr + len)` resolves to host memory with `access`, without
    /// touching it: every slice `vm-memory` yields for it is `Ok` and together they cover
    /// `len` bytes. Returns `len` as a `usize`.
    fn resolve(
        &self,
        addr: GuestAddress,
        len: u64,
        access: Permissions,
    ) -> Result<usize, MemoryError> {
        range_end(addr, len)?;
        let out_of_range = MemoryError::OutOfRange { addr: addr.0, len };
        // A range longer than the host's address space cannot be RAM of this host.
        let count = usize::try_from(len).map_err(|_| out_of_range)?;
        if count == 0 {
            return Ok(0);
        }
        let mut covered: usize = 0;
        for slice in self.slices(addr, count, len, access)? {
            let slice = slice.map_err(|e| backend_error(&e, addr, len))?;
            covered = covered.checked_add(slice.len()).ok_or(out_of_range)?;
        }
        // `vm-memory` promises the slices cover `count` bytes when none failed; a shorter
        // cover would be a hole it did not report, so it is refused as one.
        if covered == count {
            Ok(count)
        } else {
            Err(out_of_range)
        }
    }

    /// `vm-memory`'s slices of `[addr, addr + count)`, `len` being `count` for the errors.
    fn slices(
        &self,
        addr: GuestAddress,
        count: usize,
        len: u64,
        access: Permissions,
    ) -> Result<impl Iterator<Item = Result<VmSlice<'a, G>, GuestMemoryError>> + 'a, MemoryError>
    {
        self.mem
            .get_slices(vm_memory::GuestAddress(addr.0), count, access)
            .map_err(|e| backend_error(&e, addr, len))
    }

    /// The one slice holding the 16-bit word at `addr`, for an atomic access.
    fn word(&self, addr: GuestAddress, access: Permissions) -> Result<VmSlice<'a, G>, MemoryError> {
        if !addr.is_aligned(2) {
            return Err(MemoryError::Misaligned { addr: addr.0 });
        }
        let mut slices = self.slices(addr, 2, 2, access)?;
        match slices.next() {
            Some(Ok(slice)) if slice.len() == 2 => Ok(slice),
            // The word straddles a seam between two regions (one ends at an odd address): it
            // cannot be one atomic access. If its second byte is not RAM at all, say so.
            Some(Ok(_)) => match slices.next() {
                Some(Ok(_)) => Err(MemoryError::Misaligned { addr: addr.0 }),
                Some(Err(e)) => Err(backend_error(&e, addr, 2)),
                None => Err(MemoryError::OutOfRange {
                    addr: addr.0,
                    len: 2,
                }),
            },
            Some(Err(e)) => Err(backend_error(&e, addr, 2)),
            None => Err(MemoryError::OutOfRange {
                addr: addr.0,
                len: 2,
            }),
        }
    }
}

/// A `vm-memory` slice of `G`'s memory, with `G`'s dirty bitmap.
type VmSlice<'a, G> =
    VolatileSlice<'a, vm_memory::bitmap::BS<'a, <G as vm_memory::GuestMemory>::Bitmap>>;

/// `vm-memory`'s error for an access to `[addr, addr + len)` as a [`MemoryError`]: an address
/// that is not guest RAM is `OutOfRange` (naming the whole range), anything else `Backend`.
fn backend_error(e: &GuestMemoryError, addr: GuestAddress, len: u64) -> MemoryError {
    match e {
        GuestMemoryError::InvalidGuestAddress(_) | GuestMemoryError::GuestAddressOverflow => {
            MemoryError::OutOfRange { addr: addr.0, len }
        }
        _ => MemoryError::Backend { addr: addr.0, len },
    }
}

/// An error of an atomic access to the word at `addr`: a host address that is not 2-aligned
/// is `Misaligned`, anything else `Backend`.
fn atomic_error(e: &VolatileMemoryError, addr: GuestAddress) -> MemoryError {
    match e {
        VolatileMemoryError::Misaligned { .. } => MemoryError::Misaligned { addr: addr.0 },
        _ => MemoryError::Backend {
            addr: addr.0,
            len: 2,
        },
    }
}

/// Copy between a buffer and the slices of `[addr, addr + len)`, slice by slice, with `copy`
/// (a `VolatileSlice` read or write of the given range of the buffer). Returns the bytes
/// copied.
fn each_slice<'a, S: BitmapSlice + 'a>(
    slices: impl Iterator<Item = Result<VolatileSlice<'a, S>, GuestMemoryError>>,
    addr: GuestAddress,
    len: u64,
    mut copy: impl FnMut(&VolatileSlice<'a, S>, Range<usize>) -> Result<(), VolatileMemoryError>,
) -> Result<usize, MemoryError> {
    let mut done: usize = 0;
    for slice in slices {
        let slice = slice.map_err(|e| backend_error(&e, addr, len))?;
        let end = done.saturating_add(slice.len());
        copy(&slice, done..end).map_err(|_| MemoryError::Backend { addr: addr.0, len })?;
        done = end;
    }
    Ok(done)
}

impl<G: vm_memory::GuestMemory + ?Sized> GuestMemory for VmMemory<'_, G> {
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError> {
        let len = buf.len() as u64;
        range_end(addr, len)?;
        if buf.is_empty() {
            return Ok(());
        }
        // One pass: a read that fails part-way has only filled some of `buf`, which the
        // contract allows.
        let slices = self.slices(addr, buf.len(), len, Permissions::Read)?;
        let done = each_slice(slices, addr, len, |slice, at| {
            match buf.get_mut(at.clone()) {
                Some(part) => slice.read_slice(part, 0),
                None => Err(VolatileMemoryError::OutOfBounds { addr: at.start }),
            }
        })?;
        if done == buf.len() {
            Ok(())
        } else {
            Err(MemoryError::OutOfRange { addr: addr.0, len })
        }
    }

    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError> {
        let len = buf.len() as u64;
        // The whole range first: a hole or a failing region anywhere in it refuses the write
        // before any byte is stored (vm-memory alone would store up to the failure).
        let count = self.resolve(addr, len, Permissions::Write)?;
        if count == 0 {
            return Ok(());
        }
        let slices = self.slices(addr, count, len, Permissions::Write)?;
        each_slice(slices, addr, len, |slice, at| {
            match buf.get(at.clone()) {
                // Marks the pages dirty in the region's bitmap.
                Some(part) => slice.write_slice(part, 0),
                None => Err(VolatileMemoryError::OutOfBounds { addr: at.start }),
            }
        })
        .map(|_| ())
    }

    fn load_u16(&self, addr: GuestAddress) -> Result<u16, MemoryError> {
        let slice = self.word(addr, Permissions::Read)?;
        slice
            .load::<u16>(0, Ordering::Relaxed)
            .map(u16::from_le)
            .map_err(|e| atomic_error(&e, addr))
    }

    fn store_u16(&self, addr: GuestAddress, value: u16) -> Result<(), MemoryError> {
        let slice = self.word(addr, Permissions::Write)?;
        // One atomic store; marks the page dirty in the region's bitmap.
        slice
            .store(value.to_le(), 0, Ordering::Relaxed)
            .map_err(|e| atomic_error(&e, addr))
    }

    fn check_range(&self, addr: GuestAddress, len: u64) -> Result<(), MemoryError> {
        // Readable is what "guest RAM" means here; a write is checked for write access itself.
        self.resolve(addr, len, Permissions::Read).map(|_| ())
    }

    /// Every aligned word inside the range lies in one region at an even host address (so
    /// `load_u16` and `store_u16` take it), checked slice by slice without touching memory.
    /// The first word refused gives the error, as `load_u16` would: a word split by a seam
    /// at an odd address, or the first word of a region mapped at an odd host address, is
    /// `Misaligned`.
    fn check_u16_range(&self, addr: GuestAddress, len: u64) -> Result<(), MemoryError> {
        let count = self.resolve(addr, len, Permissions::ReadWrite)?;
        if !addr.is_aligned(2) {
            return Err(MemoryError::Misaligned { addr: addr.0 });
        }
        let end = range_end(addr, len)?;
        let mut at = addr.0;
        for slice in self.slices(addr, count, len, Permissions::ReadWrite)? {
            let slice = slice.map_err(|e| backend_error(&e, addr, len))?;
            // `resolve` saw these slices cover exactly `[addr, end)`: no sum below overflows.
            let slice_end = at.saturating_add(slice.len() as u64).min(end);
            // The first aligned word starting in this slice, if it fits in the slice.
            let word = at.saturating_add(at & 1);
            let host = slice.ptr_guard().as_ptr().addr() as u64;
            if word.saturating_add(2) <= slice_end
                && host.wrapping_add(word.wrapping_sub(at)) & 1 == 1
            {
                return Err(MemoryError::Misaligned { addr: word });
            }
            // A slice ending at an odd address inside the range splits the word across it.
            if slice_end & 1 == 1 && slice_end < end {
                return Err(MemoryError::Misaligned {
                    addr: slice_end.saturating_sub(1),
                });
            }
            at = slice_end;
        }
        Ok(())
    }
}
