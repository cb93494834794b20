//! Panic-freedom proof for `virtq`, checked by the linker.
//!
//! This bare-metal binary calls every public entry point of the library with inputs the
//! optimiser cannot see through: every value comes from a volatile read of a static, so the
//! optimiser must assume any valid value of its type. Its `#[panic_handler]` calls
//! `virtq_panic_path_survived`, a symbol that is defined nowhere, so if any panic path in the
//! library survives optimisation (an unchecked index, an `unwrap`, an arithmetic overflow check,
//! a failed slice conversion...), the binary fails to link.
//!
//! What it reaches: both queues directly (every method, `drain` and `drain_into`,
//! `pop_avail_into`, IN_ORDER completion on both formats) over `HostRegion`, `RegionTable` and
//! `dyn GuestMemory`; `PackedChain<N>` for N = 1, 16, 19 and 256; the byte-level readers and
//! writers (copied and lazy) over split and packed chains; `InOrder`; the MMIO and PCI
//! transports with a split-only device and with a device that serves packed rings
//! (`PACKED_RING = true`), driven by opaque register, configuration and BAR traffic; save and
//! restore of both queues, of packed chains and of the MMIO transport from opaque state bytes;
//! and the `Debug`, `Display` and `Hash` implementations of every public type (text formatted
//! into a fixed buffer through `core::fmt::Write`).
//!
//! The binary is never run; it exists to be linked. Build: `.ci/panic-check/build.sh`
//! (release, fat LTO; opt-level 3 and "s", with and without overflow checks).
#![no_std]
#![no_main]

use core::fmt::{self, Debug, Display, Write};
use core::hint::black_box;
use core::panic::PanicInfo;
use core::ptr::{NonNull, read_volatile, write_volatile};

use virtq::in_order::InOrder;
use virtq::io::{ChainReader, ChainWriter, IoError, Reader, Writer, split_descriptors};
use virtq::memory::{GuestMemoryExt, HostRegion, RegionTable};
use virtq::notify::{DrainReport, need_event};
use virtq::packed::state::{PackedFields, SavedBuffer, SavedChainHeader};
use virtq::packed::{PackedChain, PackedQueue};
use virtq::snapshot::{ErrorCode, Header, Snapshot, StateError, StateField, StateKind};
use virtq::split::state::SplitFields;
use virtq::transport::mmio::state::MmioFields;
use virtq::transport::pci::state::{MsixEntryFields, PciFields};
use virtq::transport::pci::{MsiMessage, MsixVectors, PciEvents, PciIds};
use virtq::transport::{
    AnyChain, CoreFields, DeviceId, Events, InterruptStatus, MmioOutcome, MmioTransport,
    MmioVersion, NotifyMode, NotifyReport, PciOutcome, PciTransport, QueueRegsFields,
    QueueSetupError, Queues, VirtioDevice, config_read,
};
use virtq::wire::{
    self, AvailFlags, DescFlags, DeviceStatus, EventSuppress, PackedDesc, RingEventFlags,
    SplitDesc, UsedElem, UsedFlags, split_layout,
};
use virtq::{
    Barrier, ChainError, Completion, Descriptor, DescriptorChain, DescriptorIter, Features,
    GuestAddress, GuestMemory, MemoryError, Queue, QueueError, SizeError,
};

unsafe extern "C" {
    /// Defined nowhere: referencing it from the panic handler makes any surviving panic path a
    /// link error.
    fn virtq_panic_path_survived() -> !;
}

#[panic_handler]
fn panic(_: &PanicInfo<'_>) -> ! {
    // SAFETY: never called in a binary that links; that is the point of the check.
    unsafe { virtq_panic_path_survived() }
}

// ---------------------------------------------------------------------------------------------
// Opaque inputs and outputs
// ---------------------------------------------------------------------------------------------

/// Where the opaque inputs come from: 256-byte slots the optimiser knows nothing about.
static mut SEED: [[u64; 32]; 8] = [[0; 32]; 8];
/// Saved states to restore from (contents made opaque by `black_box` on every use).
static mut STATE: [u8; 0x4000] = [0; 0x4000];
/// Guest RAM for the provided accessors.
static mut RAM: [u8; 0x10000] = [0; 0x10000];
/// Where results go, so nothing is optimised away.
static mut SINK: u64 = 0;

/// Any valid value of a plain-data type `T` (integers, flags, the library's error and report
/// enums): a volatile read of slot `k` of `SEED`, so the optimiser must assume every value.
fn any<T: Copy>(k: usize) -> T {
    const { assert!(size_of::<T>() <= 256 && align_of::<T>() <= 8) };
    let slot = (&raw const SEED).cast::<[u64; 32]>().wrapping_add(k % 8);
    // SAFETY: the slot is 256 bytes, 8-aligned, and covers `T` (checked above). The program is
    // never executed; for the optimiser the read yields an arbitrary valid `T`, which is all
    // the check needs (only types without invariants beyond their bit validity are read).
    black_box(unsafe { read_volatile(slot.cast::<T>()) })
}
fn any_u64(k: usize) -> u64 {
    any(k)
}
fn any_u32(k: usize) -> u32 {
    any(k)
}
fn any_u16(k: usize) -> u16 {
    any(k)
}
fn any_bool(k: usize) -> bool {
    any(k)
}
fn any_len(k: usize, max: usize) -> usize {
    any_u64(k) as usize % (max + 1)
}

/// A saved state of opaque contents and length, to restore from.
fn any_state(k: usize) -> &'static [u8] {
    let p = &raw const STATE;
    // SAFETY: only shared references to `STATE` exist (nothing writes it through Rust); the
    // `black_box` makes its contents opaque to the optimiser.
    let all: &'static [u8; 0x4000] = black_box(unsafe { &*p });
    all.get(..any_len(k, 0x4000)).unwrap_or(&[])
}

/// A buffer to save a state into.
struct SaveBuf([u8; 0x1000]);

impl SaveBuf {
    fn new() -> Self {
        Self([0; 0x1000])
    }
    /// The buffer cut to an opaque length.
    fn out(&mut self, k: usize) -> &mut [u8] {
        let n = any_len(k, 0x1000);
        self.0.get_mut(..n).unwrap_or(&mut [])
    }
}

fn sink<T>(v: T) {
    let v = black_box(v);
    // SAFETY: a volatile write to a static; single-threaded bare-metal program.
    unsafe { write_volatile(&raw mut SINK, black_box(size_of_val(&v) as u64)) };
    core::mem::forget(v);
}

/// A `fmt::Write` into a fixed buffer; text past its end is refused with `fmt::Error`.
struct FixedBuf {
    buf: [u8; 256],
    len: usize,
}

impl Write for FixedBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            let slot = self.buf.get_mut(self.len).ok_or(fmt::Error)?;
            *slot = b;
            self.len = self.len.wrapping_add(1);
        }
        Ok(())
    }
}

/// Format `v` with `Debug`, plain and pretty, into a fixed buffer.
fn debug<T: Debug + ?Sized>(v: &T) {
    let mut out = FixedBuf {
        buf: [0; 256],
        len: 0,
    };
    sink(write!(out, "{v:?}"));
    sink(write!(out, "{v:#?}"));
    sink(out.buf.get(..out.len).map(<[u8]>::len));
}

/// A `Hasher` whose input goes to the sink.
struct SinkHasher(u64);

impl core::hash::Hasher for SinkHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(5) ^ u64::from(b);
        }
    }
}

/// Hash `v` (queues and plain values implement `Hash`; equality too).
fn hash<T: core::hash::Hash + PartialEq>(v: &T) {
    let mut h = SinkHasher(0);
    v.hash(&mut h);
    sink(core::hash::Hasher::finish(&h));
    sink(v == black_box(v));
}

/// Format `v` with `Display` and `Debug`.
fn display<T: Display + Debug + ?Sized>(v: &T) {
    let mut out = FixedBuf {
        buf: [0; 256],
        len: 0,
    };
    sink(write!(out, "{v}"));
    sink(out.len);
    debug(v);
}

// ---------------------------------------------------------------------------------------------
// Plain values, errors and the wire module
// ---------------------------------------------------------------------------------------------

/// `Display` and `Debug` of every error type and of the plain value types, on arbitrary values
/// (every variant).
fn plain_values() {
    display(&any::<MemoryError>(0));
    display(&any::<ChainError>(1));
    display(&any::<QueueError>(2));
    hash(&any::<QueueError>(3));
    hash(&any::<Descriptor>(4));
    hash(&any::<PciOutcome>(5));
    display(&any::<IoError>(3));
    display(&any::<QueueSetupError>(4));
    display(&any::<GuestAddress>(5));
    sink(any::<QueueError>(6).is_fatal());
    debug(&any::<Descriptor>(7));
    debug(&any::<DescriptorChain>(0));
    debug(&any::<Completion>(1));
    debug(&any::<DrainReport>(2));
    debug(&any::<Barrier>(3));
    debug(&any::<MmioVersion>(4));
    debug(&any::<NotifyMode>(5));
    debug(&any::<RingEventFlags>(6));
    debug(&any::<Features>(7));
    debug(&any::<DeviceStatus>(0));
    debug(&any::<DescFlags>(1));
    debug(&any::<AvailFlags>(2));
    debug(&any::<UsedFlags>(3));
    debug(&any::<SplitDesc>(4));
    debug(&any::<UsedElem>(5));
    debug(&any::<PackedDesc>(6));
    debug(&any::<EventSuppress>(7));
    display(&any::<StateError>(0));
    debug(&any::<StateKind>(1));
    debug(&any::<StateField>(2));
    debug(&any::<Header>(3));
    debug(&any::<ErrorCode>(4));
    sink(any::<ErrorCode>(5).decode());
    debug(&ErrorCode::encode(any::<Option<QueueError>>(6)));
    debug(&any::<SplitFields>(7));
    debug(&any::<PackedFields>(0));
    debug(&any::<SavedChainHeader>(1));
    debug(&any::<SavedBuffer>(2));
    debug(&any::<MmioFields>(3));
    debug(&any::<CoreFields>(4));
    debug(&any::<QueueRegsFields>(5));
    debug(&any::<PciIds>(6));
    debug(&any::<PciEvents>(7));
    debug(&any::<PciOutcome>(0));
    debug(&any::<MsiMessage>(1));
    let v = any::<MsixVectors>(2);
    debug(&v);
    sink((v.bits(), v.is_empty(), v.contains(any_u16(3))));
    for i in v.iter() {
        sink(i);
    }
    debug(&PciIds::for_device(DeviceId(any_u32(4))));
    debug(&any::<DeviceId>(5));
    debug(&any::<NotifyReport>(6));
    debug(&any::<MmioOutcome>(7));
    debug(&any::<Events>(0));
    debug(&any::<InterruptStatus>(1));
    debug(&any::<PciFields>(2));
    debug(&any::<MsixEntryFields>(3));
    debug(&any::<SizeError>(4));
    display(&any::<SizeError>(5));
    debug(&any::<AnyChain<4>>(6));
    sink(NotifyReport::from(any::<DrainReport>(7)));
    if let Ok(snap) = Snapshot::<512>::from_bytes(any_state(5)) {
        let mut snap = snap;
        sink(snap.as_bytes().len());
        sink(snap.as_mut_bytes().len());
        debug(&snap);
    }
    any::<Barrier>(0).issue();
    sink(any::<Barrier>(1).ordering());

    let a = GuestAddress(any_u64(0));
    sink((
        a.raw_value(),
        a.checked_add(any_u64(1)),
        a.checked_offset_from(GuestAddress(any_u64(2))),
        a.is_aligned(any_u64(3)),
        a.checked_end(any_u64(4)),
    ));
    let f = RingEventFlags::from_bits(any_u16(0));
    sink(f.bits());
    let s = any_u16(1);
    sink((
        split_layout::desc_table_bytes(s),
        split_layout::avail_ring_bytes(s),
        split_layout::used_ring_bytes(s),
        split_layout::used_event_offset(s),
        split_layout::avail_event_offset(s),
        virtq::packed::layout::desc_ring_bytes(s),
    ));
    sink(wire::DescFlags::from_bits_retain(any_u16(2)));
    sink(Features::from_bits_retain(any_u64(3)));
    sink(need_event(any_u16(0), any_u16(1), any_u16(2)));
    sink(need_event(any::<u8>(0), any::<u8>(1), any::<u8>(2)));
}

// ---------------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------------

/// Every `GuestMemory` method and the typed copies.
fn memory_calls<M: GuestMemory + ?Sized>(mem: &M) {
    let mut buf = [0u8; 64];
    let n = any_len(4, 64);
    sink(mem.read(
        GuestAddress(any_u64(0)),
        buf.get_mut(..n).unwrap_or(&mut []),
    ));
    sink(mem.write(GuestAddress(any_u64(1)), buf.get(..n).unwrap_or(&[])));
    sink(mem.load_u16(GuestAddress(any_u64(2))));
    sink(mem.store_u16(GuestAddress(any_u64(3)), any_u16(4)));
    sink(mem.check_range(GuestAddress(any_u64(5)), any_u64(6)));
    sink(mem.check_u16_range(GuestAddress(any_u64(6)), any_u64(7)));
    mem.fence(any::<Barrier>(7));
    sink(mem.read_obj::<SplitDesc>(GuestAddress(any_u64(7))));
    sink(mem.read_obj::<PackedDesc>(GuestAddress(any_u64(0))));
    sink(mem.write_obj(GuestAddress(any_u64(1)), &any::<UsedElem>(2)));
}

// ---------------------------------------------------------------------------------------------
// Chains and byte-level access
// ---------------------------------------------------------------------------------------------

/// Walk a chain's descriptors (split or packed), formatting the iterator and each item.
fn walk<M: GuestMemory + Debug + ?Sized>(iter: DescriptorIter<'_, M>) -> u32 {
    debug(&iter);
    let mut written = 0u32;
    for d in iter {
        match d {
            Ok(d) => {
                sink((d.addr(), d.len(), d.is_empty(), d.is_write_only()));
                if d.is_write_only() {
                    written = written.saturating_add(d.len());
                }
            }
            Err(e) => {
                display(&e);
                break;
            }
        }
    }
    written
}

/// The copied form over `descs`.
fn copied_io<M: GuestMemory + Debug + ?Sized>(mem: &M, descs: &[Descriptor]) {
    let mut buf = [0u8; 32];
    let n = any_len(1, 32);
    let (mut r, mut w) = split_descriptors(mem, descs);
    sink((r.remaining(), r.bytes_read()));
    sink(r.read(buf.get_mut(..n).unwrap_or(&mut [])));
    sink(r.read_exact(buf.get_mut(..n).unwrap_or(&mut [])));
    sink(r.skip(any_u64(2) as usize));
    sink(r.read_obj::<SplitDesc>());
    debug(&r.clone());
    sink(w.write(buf.get(..n).unwrap_or(&[])));
    sink(w.write_all(buf.get(..n).unwrap_or(&[])));
    sink(w.write_obj(&UsedElem::default()));
    sink((w.remaining(), w.bytes_written()));
    debug(&w);
    let r2 = Reader::new(mem, descs);
    let w2 = Writer::new(mem, descs);
    sink((r2.remaining(), w2.remaining()));
}

/// The lazy form over a walk the caller started (split or packed), window `L`.
fn lazy_io<'m, M: GuestMemory + Debug + ?Sized, const L: usize>(
    mem: &'m M,
    mut iter: impl FnMut() -> DescriptorIter<'m, M>,
) {
    let mut buf = [0u8; 32];
    let n = any_len(1, 32);
    let mut r = ChainReader::<M, L>::from_iter(mem, iter());
    sink(r.read(buf.get_mut(..n).unwrap_or(&mut [])));
    sink(r.read_exact(buf.get_mut(..n).unwrap_or(&mut [])));
    sink(r.skip(any_u64(3) as usize));
    sink(r.read_obj::<SplitDesc>());
    sink(r.bytes_read());
    debug(&r);
    let mut w = r.into_writer();
    sink(w.write(buf.get(..n).unwrap_or(&[])));
    sink(w.write_all(buf.get(..n).unwrap_or(&[])));
    sink(w.write_obj(&UsedElem::default()));
    sink(w.bytes_written());
    debug(&w);
    sink(w.finish());
    let mut w = ChainWriter::<M, L>::from_iter(mem, iter());
    sink(w.write(buf.get(..n).unwrap_or(&[])));
    sink(w.finish());
}

/// Everything a device does with a split chain: walk, copy, both byte-level forms.
fn split_chain<M: GuestMemory + Debug + ?Sized>(mem: &M, chain: &DescriptorChain) -> u32 {
    debug(chain);
    sink(chain.head_index());
    let written = walk(chain.iter(mem));
    let mut descs = heapless::Vec::<Descriptor, 16>::new();
    if chain.copy_into(mem, &mut descs).is_ok() {
        copied_io(mem, &descs);
    }
    let mut r = ChainReader::<M>::new(mem, chain);
    sink(r.read_obj::<UsedElem>());
    let mut w = r.into_writer();
    sink(w.write_obj(&0u8));
    sink(w.finish());
    let mut w = ChainWriter::<M>::new(mem, chain);
    sink(w.write_all(&[0u8; 3]));
    sink(w.finish());
    lazy_io::<M, 4>(mem, || chain.iter(mem));
    written
}

/// Everything a device does with a packed chain.
fn packed_chain<M: GuestMemory + Debug + ?Sized, const N: usize>(
    mem: &M,
    chain: &PackedChain<N>,
) -> u32 {
    debug(chain);
    sink((
        chain.head_index(),
        chain.descriptor_count(),
        chain.capacity(),
    ));
    let written = walk(chain.iter(mem));
    let mut descs = heapless::Vec::<Descriptor, 8>::new();
    if chain.copy_into(mem, &mut descs).is_ok() {
        copied_io(mem, &descs);
    }
    lazy_io::<M, 16>(mem, || chain.iter(mem));
    lazy_io::<M, 3>(mem, || chain.iter(mem));
    written
}

// ---------------------------------------------------------------------------------------------
// The split queue
// ---------------------------------------------------------------------------------------------

/// A split queue configured from opaque values.
fn opaque_queue<const W: usize>() -> Queue<W> {
    let mut q = Queue::<W>::with_capacity(any_u16(0));
    if let Err(e) = q.try_set_size(any_u16(1)) {
        sink(e);
        q.set_size(any_u16(1));
    }
    q.desc_table_addr = GuestAddress(any_u64(2));
    q.avail_ring_addr = GuestAddress(any_u64(3));
    q.used_ring_addr = GuestAddress(any_u64(4));
    q.features = Features::from_bits_retain(any_u64(5));
    q.ready = any_bool(6);
    q.next_avail_idx = any_u16(7);
    q.next_used_idx = any_u16(0);
    q
}

/// Every `Queue` entry point, and `InOrder` over it.
fn queue_calls<M: GuestMemory + Debug + ?Sized, const W: usize>(mem: &M) {
    let mut q = opaque_queue::<W>();
    sink((
        q.is_valid(),
        q.check_rings(mem),
        q.error(),
        q.is_broken(),
        q.in_flight(),
    ));
    sink(q.has_pending(mem));
    while let Ok(Some(chain)) = q.pop_avail(mem) {
        let written = split_chain(mem, &chain);
        match any_u64(3) % 3 {
            0 => sink(q.push_used(mem, chain.head_index(), written)),
            1 => sink(q.add_used(mem, chain.head_index(), written)),
            _ => q.mark_broken(any::<ChainError>(4)),
        }
        if any_bool(5) {
            break;
        }
    }
    sink(q.add_used(mem, any_u16(1), any_u32(2)));
    sink(q.publish_used(mem));
    sink(q.push_used(mem, any_u16(3), any_u32(4)));
    sink(q.needs_notification(mem));
    sink(q.disable_notification(mem));
    sink(q.enable_notification(mem));
    sink(q.notifications_enabled());
    let r = q.drain(mem, any_u64(5) as usize, |chain| match any_u64(6) % 3 {
        0 => Completion::Used(split_chain(mem, &chain)),
        1 => Completion::Deferred,
        _ => Completion::Broken(any::<ChainError>(7)),
    });
    sink(r);
    debug(&q);
    hash(&q);

    // Save and restore (§ save/restore: untrusted state bytes), and the chains held across it.
    let mut buf = SaveBuf::new();
    sink(q.state_len());
    sink(q.save_into(buf.out(0)));
    let snap = q.save();
    sink(snap.as_bytes().len());
    sink(q.restore(snap.as_bytes(), mem));
    sink(q.restore(any_state(1), mem));
    if let Ok(chain) = q.in_flight_chain(any_u16(2)) {
        sink(q.push_used(mem, chain.head_index(), split_chain(mem, &chain)));
    }
    sink(q.resume(mem));

    let mut order = InOrder::<32>::new();
    sink(order.in_flight());
    while let Ok(Some(chain)) = order.pop_avail(&mut q, mem) {
        sink(chain.head_index());
        if any_bool(0) {
            break;
        }
    }
    sink(order.complete(&mut q, mem, any_u16(0), any_u32(1)));
    sink(order.complete(&mut q, mem, any_u16(1), any_u32(2)));
    sink(order.complete_batch(&mut q, mem, any_u16(2), any_u32(3)));
    debug(&order);
    order.reset();
    let mut small = InOrder::<1>::default();
    sink(small.pop_avail(&mut q, mem));
    sink(small.complete(&mut q, mem, any_u16(3), any_u32(4)));
    q.reset();
    sink(q.pop_avail(mem));
}

// ---------------------------------------------------------------------------------------------
// The packed queue
// ---------------------------------------------------------------------------------------------

/// A packed queue configured from opaque values.
fn opaque_packed_queue() -> PackedQueue {
    let mut q = match PackedQueue::try_new(any_u16(0)) {
        Ok(q) => q,
        Err(e) => {
            sink(e);
            PackedQueue::new(any_u16(0))
        }
    };
    if let Err(e) = q.try_set_size(any_u16(1)) {
        sink(e);
        q.set_size(any_u16(1));
    }
    q.desc_ring_addr = GuestAddress(any_u64(2));
    q.driver_event_addr = GuestAddress(any_u64(3));
    q.device_event_addr = GuestAddress(any_u64(4));
    q.features = Features::from_bits_retain(any_u64(5));
    q.ready = any_bool(6);
    q.next_avail_idx = any_u16(7);
    q.avail_wrap_counter = any_bool(0);
    q.next_used_idx = any_u16(1);
    q.used_wrap_counter = any_bool(2);
    q
}

/// Every `PackedQueue` entry point, popping into `PackedChain<N>`.
fn packed_calls<M: GuestMemory + Debug + ?Sized, const N: usize>(mem: &M) {
    let mut q = opaque_packed_queue();
    sink((q.is_valid(), q.check_rings(mem), q.error(), q.is_broken()));
    sink((q.in_flight(), q.in_flight_descriptors()));
    sink(q.has_pending(mem));
    // Chains popped by value (default storage) and into caller storage.
    if let Ok(Some(chain)) = q.pop_avail(mem) {
        let written = packed_chain(mem, &chain);
        sink(q.push_used(mem, &chain, written));
    }
    let mut batch = [PackedChain::<N>::EMPTY; 4];
    let mut held = 0usize;
    let mut chain = PackedChain::<N>::default();
    while let Ok(true) = q.pop_avail_into(mem, &mut chain) {
        let written = packed_chain(mem, &chain);
        match any_u64(3) % 3 {
            0 => sink(q.push_used(mem, &chain, written)),
            1 => sink(q.add_used(mem, &chain, written)),
            _ => {
                if let Some(slot) = batch.get_mut(held) {
                    *slot = chain;
                    held = held.wrapping_add(1);
                }
            }
        }
        if any_bool(5) {
            q.mark_broken(any::<ChainError>(6));
        }
        if any_bool(7) {
            break;
        }
    }
    sink(q.add_used_in_order(mem, batch.get(..held).unwrap_or(&[]), any_u32(7)));
    sink(q.publish_used(mem));
    sink(q.needs_notification(mem));
    sink(q.disable_notification(mem));
    sink(q.enable_notification(mem));
    sink(q.notifications_enabled());
    let r = q.drain(mem, any_u64(0) as usize, |chain| {
        let written = packed_chain(mem, chain);
        match any_u64(1) % 3 {
            0 => Completion::Used(written),
            1 => Completion::Deferred,
            _ => Completion::Broken(any::<ChainError>(2)),
        }
    });
    sink(r);
    let r = q.drain_into(mem, any_u64(3) as usize, &mut chain, |chain| {
        match any_u64(4) % 3 {
            0 => Completion::Used(packed_chain(mem, chain)),
            1 => Completion::Deferred,
            _ => Completion::Broken(any::<ChainError>(5)),
        }
    });
    sink(r);
    debug(&q);
    hash(&q);
    sink(chain == *black_box(&chain));

    // Save and restore, with the chains held across it saved and readopted.
    let mut buf = SaveBuf::new();
    let mut saved_chain = SaveBuf::new();
    sink((chain.saved_len(), chain.save_into(saved_chain.out(0))));
    sink(q.state_len());
    sink(q.save_into(buf.out(1)));
    let snap = q.save();
    sink(q.restore(snap.as_bytes(), mem));
    sink(q.restore(any_state(2), mem));
    if q.readopt_into(mem, any_state(3), &mut chain).is_ok() {
        let written = packed_chain(mem, &chain);
        sink(q.push_used(mem, &chain, written));
    }
    if q.readopt_into(mem, saved_chain.out(4), &mut chain).is_ok() {
        sink(q.add_used(mem, &chain, 0));
    }
    sink(q.resume(mem));
    q.reset();
    sink(q.pop_avail_into(mem, &mut chain));
}

// ---------------------------------------------------------------------------------------------
// The MMIO transport
// ---------------------------------------------------------------------------------------------

static CONFIG: [u8; 16] = [0; 16];

/// A split-only device whose every answer is opaque; it serves its queues with the drain loop
/// and the lazy writer.
#[derive(Debug)]
struct OpaqueDevice;

/// A device that also serves packed rings (`PACKED_RING = true`): with `RING_PACKED`
/// negotiated through the opaque register traffic, the transport runs its packed queues.
#[derive(Debug)]
struct OpaquePackedDevice;

/// The device methods both devices answer the same way.
macro_rules! opaque_device_answers {
    () => {
        fn device_id(&self) -> DeviceId {
            DeviceId(any_u32(0))
        }
        fn vendor_id(&self) -> u32 {
            any_u32(1)
        }
        fn device_features(&self) -> Features {
            Features::from_bits_retain(any_u64(2))
        }
        fn validate_features(&self, accepted: Features) -> bool {
            accepted.bits() & any_u64(3) == 0
        }
        fn queue_max_size(&self, index: u16) -> u16 {
            any_u16(usize::from(index))
        }
        fn read_config(&self, offset: u32, data: &mut [u8]) {
            config_read(&CONFIG, offset, data);
        }
        fn write_config(&mut self, offset: u32, data: &[u8]) {
            sink((offset, data.len()));
        }
        fn activate(&mut self, negotiated: Features) {
            sink(negotiated.bits());
        }
        fn reset(&mut self) {}
        fn queue_reset(&mut self, index: u16) {
            sink(index);
        }
    };
}

impl VirtioDevice for OpaqueDevice {
    opaque_device_answers!();

    /// The drain loop and the lazy writer, on whichever ring the transport runs.
    fn queue_notify<M: GuestMemory + ?Sized>(
        &mut self,
        index: u16,
        mut queues: Queues<'_>,
        mem: &M,
    ) -> NotifyReport {
        let Some(mut q) = queues.get(index) else {
            return NotifyReport::IDLE;
        };
        q.drain(mem, 8, |chain| {
            let mut w = chain.writer(mem);
            match w.write_all(&[0u8; 4]) {
                Ok(()) => Completion::Used(w.bytes_written()),
                Err(IoError::Chain(e)) => Completion::Broken(e),
                Err(_) => Completion::Used(0),
            }
        })
        .into()
    }
}

impl VirtioDevice for OpaquePackedDevice {
    const PACKED_RING: bool = true;

    opaque_device_answers!();

    /// `drain_into` reused chain storage, a reader that turns into a writer, and the raw
    /// pop/push calls of [`AnyQueue`] beside it.
    fn queue_notify<M: GuestMemory + ?Sized>(
        &mut self,
        index: u16,
        mut queues: Queues<'_>,
        mem: &M,
    ) -> NotifyReport {
        sink(queues.len());
        let Some(mut q) = queues.get(index) else {
            return NotifyReport::IDLE;
        };
        sink((
            q.is_ready(),
            q.is_broken(),
            q.error(),
            q.size(),
            q.in_flight(),
        ));
        sink(q.features().bits());
        let mut chain = AnyChain::<19>::default();
        let r = q.drain_into(mem, 8, &mut chain, |chain| {
            let mut r = chain.reader(mem);
            let header = r.read_obj::<UsedElem>();
            let mut w = r.into_writer();
            match header.and_then(|h| w.write_obj(&h)) {
                Ok(()) => Completion::Used(w.bytes_written()),
                Err(IoError::Chain(e)) => Completion::Broken(e),
                Err(_) => Completion::Used(0),
            }
        });
        if matches!(q.pop_avail_into(mem, &mut chain), Ok(true)) {
            sink(q.push_used(mem, &chain, any_u32(4)));
        }
        sink(q.needs_notification(mem));
        sink(q.enable_notification(mem));
        sink(q.disable_notification(mem));
        r.into()
    }
}

/// Every `MmioTransport` entry point, with opaque register traffic.
fn transport_calls<D: VirtioDevice + Debug, M: GuestMemory>(device: D, mem: M) {
    let version = if any_bool(0) {
        MmioVersion::V2
    } else {
        MmioVersion::Legacy
    };
    let mut t = MmioTransport::<D, M, 4>::new(device, mem, version);
    t.set_notify_mode(any::<NotifyMode>(1));
    for k in 0..8 {
        sink(t.write(any_u64(k), any::<u8>(k + 1), any_u64(k + 2)));
        sink(t.read(any_u64(k + 3), any::<u8>(k + 4)));
    }
    t.take_kicks(sink);
    sink(t.process_queue(any_u16(5)));
    sink(t.poll());
    sink(t.signal_config_change());
    sink(t.raise_needs_reset());
    sink((
        t.version(),
        t.status(),
        t.offered_features(),
        t.negotiated_features(),
        t.is_packed(),
    ));
    sink((t.interrupt_status(), t.interrupt_asserted(), t.is_live()));
    sink(t.queue(any_u16(6)).map(Queue::is_valid));
    sink(t.packed_queue(any_u16(6)).map(PackedQueue::is_valid));
    if let Some(e) = t.queue_setup_error(any_u16(7)) {
        display(&e);
    }
    debug(&t);
    let mut buf = SaveBuf::new();
    sink(t.state_len());
    sink(t.save_into(buf.out(0)));
    sink(t.restore(any_state(1)));
    sink(t.resume());
    sink((t.device() as *const D, t.device_mut() as *mut D));
    sink(t.memory() as *const M);
}

/// Every `PciTransport` entry point, with opaque configuration and BAR traffic.
fn pci_calls<D: VirtioDevice + Debug, M: GuestMemory>(device: D, mem: M) {
    let mut f = if any_bool(0) {
        PciTransport::<D, M, 4, 5>::new(device, mem)
    } else {
        PciTransport::<D, M, 4, 5>::with_ids(device, mem, any::<PciIds>(1))
    };
    f.set_notify_mode(any::<NotifyMode>(2));
    for k in 0..8 {
        debug(&f.config_write(any_u16(k), any::<u8>(k + 1), any_u64(k + 2)));
        sink(f.config_read(any_u16(k + 3), any::<u8>(k + 4)));
        sink(f.bar_write(
            any::<u8>(k),
            any_u64(k + 1),
            any::<u8>(k + 2),
            any_u64(k + 3),
        ));
        sink(f.bar_read(any::<u8>(k + 4), any_u64(k + 5), any::<u8>(k + 6)));
        sink(f.memory_write(any_u64(k + 7), any::<u8>(k), any_u64(k + 1)));
        sink(f.memory_read(any_u64(k + 2), any::<u8>(k + 3)));
    }
    f.take_kicks(sink);
    sink(f.process_queue(any_u16(5)));
    sink(f.poll());
    sink(f.signal_config_change());
    sink(f.raise_needs_reset());
    sink(f.pci_reset());
    sink((f.ids(), f.status(), f.is_live(), f.is_packed()));
    sink((f.offered_features(), f.negotiated_features(), f.command()));
    sink((
        f.bar_address(any::<u8>(6)),
        f.isr(),
        f.msix_enabled(),
        f.msix_control(),
    ));
    sink((f.intx_level(), f.msix_pending(), f.config_vector()));
    sink(f.queue_vector(any_u16(7)));
    if let Some(m) = f.msix_message(any_u16(0)) {
        debug(&m);
    }
    for m in f.msix_messages(any::<MsixVectors>(1)) {
        sink(m);
    }
    sink(f.queue(any_u16(2)).map(Queue::is_valid));
    sink(f.packed_queue(any_u16(3)).map(PackedQueue::is_valid));
    if let Some(e) = f.queue_setup_error(any_u16(4)) {
        display(&e);
    }
    debug(&f);
    sink((f.device() as *const D, f.device_mut() as *mut D));
    sink(f.memory() as *const M);
}

// ---------------------------------------------------------------------------------------------
// The image
// ---------------------------------------------------------------------------------------------

/// A region over `RAM` at an opaque guest address, `len` bytes.
fn ram_region(base: u64, len: usize) -> Option<HostRegion> {
    let ptr = NonNull::new((&raw mut RAM).cast::<u8>())?;
    let len = len.min(0x10000);
    // SAFETY: `RAM` is a static of 64 KiB, valid for the whole program and only accessed
    // through regions (volatile and atomic accesses); several regions aliasing it is allowed
    // (the contract forbids Rust references into it, not aliasing).
    unsafe { HostRegion::new(GuestAddress(base), ptr, len) }.ok()
}

fn run() {
    plain_values();
    match Queue::try_new(any_u16(3)) {
        Ok(q) => debug(&q),
        Err(e) => display(&e),
    }
    let Some(region) = ram_region(any_u64(0), 0x10000) else {
        return;
    };
    sink((
        region.guest_base(),
        region.len(),
        region.is_empty(),
        region.contains(GuestAddress(any_u64(1))),
    ));
    debug(&region);
    memory_calls(&region);
    memory_calls(&region as &dyn GuestMemory);
    queue_calls::<_, 512>(&region);
    queue_calls::<_, 4>(&region);
    packed_calls::<_, 1>(&region);
    packed_calls::<_, 19>(&region);
    packed_calls::<_, 256>(&region);

    let mut table = RegionTable::<4>::new();
    for k in 0..3 {
        if let Some(r) = ram_region(any_u64(k + 1), any_len(k, 0x10000)) {
            sink(table.insert(r));
        }
    }
    sink(table.regions().len());
    debug(&table);
    memory_calls(&table);
    queue_calls::<_, 512>(&table);
    packed_calls::<_, 16>(&table);

    // The `dyn` accessor: split queue and its IN_ORDER completion, the packed queue.
    let dyn_mem: &dyn GuestMemory = &table;
    let mut q = opaque_queue::<512>();
    while let Ok(Some(chain)) = q.pop_avail(dyn_mem) {
        let mut w = ChainWriter::<dyn GuestMemory>::new(dyn_mem, &chain);
        sink(w.write_all(&[0u8; 2]));
        sink(q.push_used(dyn_mem, chain.head_index(), w.bytes_written()));
    }
    let mut p = opaque_packed_queue();
    sink(p.drain(dyn_mem, any_u64(0) as usize, |chain| {
        Completion::Used(chain.descriptor_count().into())
    }));

    match any_u64(2) % 4 {
        0 => transport_calls(OpaqueDevice, table),
        1 => transport_calls(OpaquePackedDevice, table),
        2 => pci_calls(OpaqueDevice, table),
        _ => pci_calls(OpaquePackedDevice, table),
    }
}

/// Entry point of the bare-metal image.
#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    run();
    loop {
        core::hint::spin_loop();
    }
}
