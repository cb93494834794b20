//! Panic-freedom proof for `virtq`, checked by the linker.
//!
//! This bare-metal binary calls every public entry point of the library with inputs the
//! optimiser cannot see through (volatile reads of a static, `core::hint::black_box`). Its
//! `#[panic_handler]` calls `virtq_panic_path_survived`, a symbol that is defined nowhere, so if
//! any panic path in the library survives optimisation (an unchecked index, an `unwrap`, an
//! arithmetic overflow check, a failed slice conversion...), the binary fails to link and the
//! linker names the function that still references it.
//!
//! Build: `.ci/panic-check/build.sh` (x86_64-unknown-none, release, fat LTO).
#![no_std]
#![no_main]

use core::fmt::{self, Write};
use core::hint::black_box;
use core::panic::PanicInfo;
use core::ptr::{NonNull, read_volatile, write_volatile};

use virtq::io::{ChainReader, ChainWriter, IoError, Reader, Writer, split_descriptors};
use virtq::memory::{GuestMemoryExt, HostRegion, RegionTable};
use virtq::notify::need_event;
use virtq::packed::{PackedChain, PackedQueue};
use virtq::transport::{
    DeviceId, MmioTransport, MmioVersion, NotifyMode, NotifyReport, Queues, VirtioDevice,
    config_read,
};
use virtq::wire::{self, RingEventFlags, SplitDesc, UsedElem, split_layout};
use virtq::{
    ChainError, Completion, Descriptor, Features, GuestAddress, GuestMemory, MemoryError, Queue,
    QueueError,
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

/// Where the opaque inputs come from: the optimiser must assume any value.
static mut SEED: [u64; 8] = [0; 8];
/// Guest RAM for the provided accessors.
static mut RAM: [u8; 0x10000] = [0; 0x10000];
/// Where results go, so nothing is optimised away.
static mut SINK: u64 = 0;

fn any<T: From<u64>>(k: usize) -> T {
    // SAFETY: a volatile read of an initialised static; single-threaded bare-metal program.
    let v = unsafe { read_volatile((&raw const SEED).cast::<u64>().add(k % 8)) };
    T::from(black_box(v))
}
fn any_u64(k: usize) -> u64 {
    any(k)
}
fn any_u32(k: usize) -> u32 {
    any_u64(k) as u32
}
fn any_u16(k: usize) -> u16 {
    any_u64(k) as u16
}
fn any_bool(k: usize) -> bool {
    any_u64(k) & 1 != 0
}

fn sink<T>(v: T) {
    let v = black_box(v);
    // SAFETY: a volatile write to a static; single-threaded bare-metal program.
    unsafe { write_volatile(&raw mut SINK, black_box(core::mem::size_of_val(&v) as u64)) };
    core::mem::forget(v);
}

/// A `fmt::Write` that throws the text away through volatile writes.
struct NullWriter;
impl Write for NullWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            sink(b);
        }
        Ok(())
    }
}

fn display<T: fmt::Display + fmt::Debug>(v: &T) {
    let _ = write!(NullWriter, "{v} {v:?}");
}

fn errors() {
    let m = match any_u64(0) % 4 {
        0 => MemoryError::OutOfRange {
            addr: any_u64(1),
            len: any_u64(2),
        },
        1 => MemoryError::Overflow {
            addr: any_u64(1),
            len: any_u64(2),
        },
        2 => MemoryError::Misaligned { addr: any_u64(1) },
        _ => MemoryError::BadRegion,
    };
    display(&m);
    let c = match any_u64(3) % 10 {
        0 => ChainError::NextOutOfRange { next: any_u16(4) },
        1 => ChainError::TooLong,
        2 => ChainError::IndirectNotNegotiated,
        3 => ChainError::NestedIndirect,
        4 => ChainError::IndirectWithNext,
        5 => ChainError::IndirectTableLength { len: any_u32(4) },
        6 => ChainError::ReadableAfterWritable,
        7 => ChainError::LengthOverflow,
        8 => ChainError::Memory(m),
        _ => ChainError::TooManySegments,
    };
    display(&c);
    let q = match any_u64(5) % 9 {
        0 => QueueError::NotReady,
        1 => QueueError::AvailIdxOverrun {
            avail_idx: any_u16(6),
            next_avail: any_u16(7),
        },
        2 => QueueError::HeadOutOfRange { head: any_u16(6) },
        3 => QueueError::DuplicateHead { head: any_u16(6) },
        4 => QueueError::TooManyInFlight,
        5 => QueueError::Memory(m),
        6 => QueueError::Chain(c),
        7 => QueueError::InvalidUsedHead { head: any_u16(6) },
        _ => QueueError::HeadNotInFlight { head: any_u16(6) },
    };
    display(&q);
    sink(q.is_fatal());
    let a = GuestAddress(any_u64(0));
    display(&a);
    sink((
        a.raw_value(),
        a.checked_add(any_u64(1)),
        a.checked_offset_from(GuestAddress(any_u64(2))),
        a.is_aligned(any_u64(3)),
        a.checked_end(any_u64(4)),
    ));
}

fn wire_items() {
    let f = RingEventFlags::from_bits(any_u16(0));
    sink(f.bits());
    let s = any_u16(1);
    sink((
        split_layout::desc_table_bytes(s),
        split_layout::avail_ring_bytes(s),
        split_layout::used_ring_bytes(s),
        split_layout::used_event_offset(s),
        split_layout::avail_event_offset(s),
    ));
    sink(wire::DescFlags::from_bits_retain(any_u16(2)));
    sink(Features::from_bits_retain(any_u64(3)));
    sink(need_event(any_u16(0), any_u16(1), any_u16(2)));
    sink(need_event(
        any_u64(0) as u8,
        any_u64(1) as u8,
        any_u64(2) as u8,
    ));
}

/// Every `GuestMemory` method and the typed copies.
fn memory_calls<M: GuestMemory + ?Sized>(mem: &M) {
    let mut buf = [0u8; 64];
    let n = (any_u64(4) % 65) as usize;
    sink(mem.read(
        GuestAddress(any_u64(0)),
        buf.get_mut(..n).unwrap_or(&mut []),
    ));
    sink(mem.write(GuestAddress(any_u64(1)), buf.get(..n).unwrap_or(&[])));
    sink(mem.load_u16(GuestAddress(any_u64(2))));
    sink(mem.store_u16(GuestAddress(any_u64(3)), any_u16(4)));
    sink(mem.check_range(GuestAddress(any_u64(5)), any_u64(6)));
    sink(mem.read_obj::<SplitDesc>(GuestAddress(any_u64(7))));
    let e = UsedElem::default();
    sink(mem.write_obj(GuestAddress(any_u64(0)), &e));
}

fn descriptor(d: &Descriptor) {
    sink((d.addr(), d.len(), d.is_empty(), d.is_write_only()));
}

/// Every `Queue` entry point, on a queue configured from opaque values.
fn queue_calls<M: GuestMemory + ?Sized>(mem: &M) {
    let mut q = Queue::new(any_u16(0));
    q.set_size(any_u16(1));
    q.desc_table_addr = GuestAddress(any_u64(2));
    q.avail_ring_addr = GuestAddress(any_u64(3));
    q.used_ring_addr = GuestAddress(any_u64(4));
    q.features = Features::from_bits_retain(any_u64(5));
    q.ready = any_bool(6);
    q.next_avail_idx = any_u16(7);
    q.next_used_idx = any_u16(0);
    sink((
        q.is_valid(),
        q.check_rings(mem),
        q.error(),
        q.is_broken(),
        q.in_flight(),
    ));
    sink(q.has_pending(mem));
    while let Ok(Some(chain)) = q.pop_avail(mem) {
        sink(chain.head_index());
        let mut written = 0u32;
        for d in chain.iter(mem) {
            match d {
                Ok(d) => {
                    descriptor(&d);
                    written = written.saturating_add(d.len());
                }
                Err(e) => {
                    if any_bool(1) {
                        q.mark_broken(e);
                    }
                    break;
                }
            }
        }
        let mut v = heapless::Vec::<Descriptor, 8>::new();
        sink(chain.copy_into(mem, &mut v));
        if any_bool(2) {
            sink(q.push_used(mem, chain.head_index(), written));
        } else {
            sink(q.add_used(mem, chain.head_index(), written));
        }
        if any_bool(3) {
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
        0 => Completion::Used(
            chain
                .iter(mem)
                .filter_map(Result::ok)
                .map(|d| d.len())
                .fold(0u32, u32::saturating_add),
        ),
        1 => Completion::Deferred,
        _ => Completion::Broken(ChainError::TooLong),
    });
    sink(r);

    let mut order = virtq::in_order::InOrder::<32>::new();
    sink(order.in_flight());
    if let Ok(Some(chain)) = order.pop_avail(&mut q, mem) {
        sink(order.complete(&mut q, mem, chain.head_index(), any_u32(7)));
    }
    sink(order.complete(&mut q, mem, any_u16(0), any_u32(1)));
    sink(order.complete_batch(&mut q, mem, any_u16(2), any_u32(3)));
    order.reset();
    q.reset();
    sink(q.pop_avail(mem));
}

/// Byte-level access through the copied and the lazy forms.
fn io_calls<M: GuestMemory + ?Sized>(mem: &M, chain: &virtq::DescriptorChain) {
    let mut buf = [0u8; 32];
    let n = (any_u64(1) % 33) as usize;
    let mut descs = heapless::Vec::<Descriptor, 16>::new();
    if chain.copy_into(mem, &mut descs).is_ok() {
        let (mut r, mut w) = split_descriptors(mem, &descs);
        sink((r.remaining(), r.bytes_read()));
        sink(r.read(buf.get_mut(..n).unwrap_or(&mut [])));
        sink(r.read_exact(buf.get_mut(..n).unwrap_or(&mut [])));
        sink(r.skip(any_u64(2) as usize));
        sink(r.read_obj::<SplitDesc>());
        sink(w.write(buf.get(..n).unwrap_or(&[])));
        sink(w.write_all(buf.get(..n).unwrap_or(&[])));
        sink(w.write_obj(&UsedElem::default()));
        sink((w.remaining(), w.bytes_written()));
        let r2 = Reader::new(mem, &descs);
        let w2 = Writer::new(mem, &descs);
        sink((r2.remaining(), w2.remaining()));
    }
    let mut r = ChainReader::<M, 4>::new(mem, chain);
    sink(r.read(buf.get_mut(..n).unwrap_or(&mut [])));
    sink(r.read_exact(buf.get_mut(..n).unwrap_or(&mut [])));
    sink(r.skip(any_u64(3) as usize));
    sink(r.read_obj::<SplitDesc>());
    sink(r.bytes_read());
    let mut w = r.into_writer();
    sink(w.write(buf.get(..n).unwrap_or(&[])));
    sink(w.write_all(buf.get(..n).unwrap_or(&[])));
    sink(w.write_obj(&UsedElem::default()));
    sink(w.bytes_written());
    sink(w.finish());
    let mut w = ChainWriter::<M>::new(mem, chain);
    sink(w.write(buf.get(..n).unwrap_or(&[])));
    sink(w.finish());
    let mut r = ChainReader::<M>::from_iter(mem, chain.iter(mem));
    sink(r.read(buf.get_mut(..n).unwrap_or(&mut [])));
    let mut w = ChainWriter::<M, 2>::from_iter(mem, chain.iter(mem));
    sink(w.write_all(buf.get(..n).unwrap_or(&[])));
    sink(w.finish());
    let e = IoError::ShortBuffer {
        requested: any_u64(0) as usize,
        available: any_u32(1),
    };
    display(&e);
}

fn packed_chain<M: GuestMemory + ?Sized>(mem: &M, chain: &PackedChain) {
    sink((chain.head_index(), chain.descriptor_count()));
    for d in chain.iter(mem) {
        match d {
            Ok(d) => descriptor(&d),
            Err(_) => break,
        }
    }
    let mut v = heapless::Vec::<Descriptor, 8>::new();
    sink(chain.copy_into(mem, &mut v));
}

/// Every `PackedQueue` entry point.
fn packed_calls<M: GuestMemory + ?Sized>(mem: &M) {
    let mut q = PackedQueue::new(any_u16(0));
    q.set_size(any_u16(1));
    q.desc_ring_addr = GuestAddress(any_u64(2));
    q.driver_event_addr = GuestAddress(any_u64(3));
    q.device_event_addr = GuestAddress(any_u64(4));
    q.features = Features::from_bits_retain(any_u64(5));
    q.ready = any_bool(6);
    q.next_avail_idx = any_u16(7);
    q.avail_wrap_counter = any_bool(0);
    q.next_used_idx = any_u16(1);
    q.used_wrap_counter = any_bool(2);
    sink((q.is_valid(), q.check_rings(mem), q.error(), q.is_broken()));
    sink((q.in_flight(), q.in_flight_descriptors()));
    sink(q.has_pending(mem));
    let mut batch = heapless::Vec::<PackedChain, 4>::new();
    while let Ok(Some(chain)) = q.pop_avail(mem) {
        packed_chain(mem, &chain);
        match any_u64(3) % 3 {
            0 => sink(q.push_used(mem, &chain, any_u32(4))),
            1 => sink(q.add_used(mem, &chain, any_u32(4))),
            _ => sink(batch.push(chain)),
        }
        if any_bool(5) {
            q.mark_broken(ChainError::TooLong);
        }
        if any_bool(6) {
            break;
        }
    }
    let mut reused = PackedChain::new();
    if let Ok(true) = q.pop_avail_into(mem, &mut reused) {
        packed_chain(mem, &reused);
        sink(q.push_used(mem, &reused, any_u32(0)));
    }
    sink(q.add_used_in_order(mem, &batch, any_u32(7)));
    sink(q.publish_used(mem));
    sink(q.needs_notification(mem));
    sink(q.disable_notification(mem));
    sink(q.enable_notification(mem));
    sink(q.notifications_enabled());
    let r = q.drain(mem, any_u64(0) as usize, |chain| {
        packed_chain(mem, chain);
        match any_u64(1) % 3 {
            0 => Completion::Used(any_u32(2)),
            1 => Completion::Deferred,
            _ => Completion::Broken(ChainError::NestedIndirect),
        }
    });
    sink(r);
    sink(virtq::packed::layout::desc_ring_bytes(any_u16(3)));
    q.reset();
    sink(q.pop_avail(mem));
}

/// A device whose every answer is opaque; it serves its queues with the drain loop and the
/// lazy reader/writer.
struct OpaqueDevice;

static CONFIG: [u8; 16] = [0; 16];

impl VirtioDevice for OpaqueDevice {
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

/// Every `MmioTransport` entry point, with opaque register traffic.
fn transport_calls<M: GuestMemory>(mem: M) {
    let version = if any_bool(0) {
        MmioVersion::V2
    } else {
        MmioVersion::Legacy
    };
    let mut t = MmioTransport::<OpaqueDevice, M, 4>::new(OpaqueDevice, mem, version);
    t.set_notify_mode(if any_bool(1) {
        NotifyMode::Inline
    } else {
        NotifyMode::Deferred
    });
    for k in 0..8 {
        sink(t.write(any_u64(k), any_u64(k + 1) as u8, any_u64(k + 2)));
        sink(t.read(any_u64(k + 3), any_u64(k + 4) as u8));
    }
    t.take_kicks(|i| sink(i));
    sink(t.process_queue(any_u16(5)));
    sink(t.poll());
    sink(t.signal_config_change());
    sink(t.raise_needs_reset());
    sink((
        t.version(),
        t.status(),
        t.offered_features(),
        t.negotiated_features(),
    ));
    sink((t.interrupt_status(), t.interrupt_asserted(), t.is_live()));
    sink(t.queue(any_u16(6)).map(Queue::is_valid));
    if let Some(e) = t.queue_setup_error(any_u16(7)) {
        display(&e);
    }
    sink((
        t.device() as *const OpaqueDevice,
        t.device_mut() as *mut OpaqueDevice,
    ));
    sink(t.memory() as *const M);
}

fn run() {
    #[cfg(feature = "self-test")]
    {
        let a = [1u8, 2, 3, 4];
        sink(a[any_u64(0) as usize]);
    }
    errors();
    wire_items();
    let ram = (&raw mut RAM).cast::<u8>();
    let Some(ptr) = NonNull::new(ram) else { return };
    // SAFETY: `RAM` is a static of 64 KiB, valid for the whole program and only accessed
    // through the region (volatile/atomic accesses).
    let region = unsafe { HostRegion::new(GuestAddress(any_u64(0)), ptr, 0x10000) };
    let Ok(region) = region else { return };
    sink((
        region.guest_base(),
        region.len(),
        region.is_empty(),
        region.contains(GuestAddress(any_u64(1))),
    ));
    memory_calls(&region);
    queue_calls(&region);
    queue_calls(&region as &dyn GuestMemory);
    packed_calls(&region);
    let chain = {
        let mut q = Queue::new(any_u16(0));
        q.desc_table_addr = GuestAddress(any_u64(1));
        q.avail_ring_addr = GuestAddress(any_u64(2));
        q.used_ring_addr = GuestAddress(any_u64(3));
        q.features = Features::from_bits_retain(any_u64(4));
        q.ready = true;
        q.pop_avail(&region)
    };
    if let Ok(Some(chain)) = chain {
        io_calls(&region, &chain);
    }

    let mut table = RegionTable::<4>::new();
    for k in 0..3 {
        let len = (any_u64(k) % 0x10000) as usize;
        // SAFETY: as above; the regions alias the same static, which is fine for volatile
        // and atomic accesses (the contract forbids Rust references, not aliasing).
        if let Ok(r) = unsafe { HostRegion::new(GuestAddress(any_u64(k + 1)), ptr, len) } {
            sink(table.insert(r));
        }
    }
    sink(table.regions().len());
    memory_calls(&table);
    queue_calls(&table);
    packed_calls(&table);
    transport_calls(table);
}

/// Entry point of the bare-metal image.
#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    run();
    loop {
        core::hint::spin_loop();
    }
}
