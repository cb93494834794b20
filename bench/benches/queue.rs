//! Device-side cost per chain of a virtqueue: `virtq` next to rust-vmm `virtio-queue` 0.18 and
//! a raw loop that does only the necessary loads and stores, with no checks at all.
//!
//! All of them serve the *same* guest memory (one `vm-memory` mmap; `virtq` and the raw loops
//! reach it through its host pointer) with the *same* layout. Each timed region is one batch:
//! the device pops every chain the driver made available, walks every descriptor (folding
//! addresses and writable lengths, as a device that looks at each buffer would) and completes
//! it. The driver-side refill (ring entries and `avail.idx`, or packed descriptors) runs outside
//! the timed region. The result criterion prints is the time **per chain**: each batch is timed
//! as a whole, the cost of an empty timed region is subtracted, and the median batch of each
//! criterion sample is scaled to the number of iterations criterion asked for (see
//! `per_chain`).
//!
//! Implementations (the function names in each group):
//! * `virtq`: `Queue` over one `HostRegion`, `pop_avail`, `iter`, `push_used` per chain;
//! * `virtq-batched`: the same with `add_used` per chain and one `publish_used` per batch;
//! * `virtq-regions`: `virtq` over a `RegionTable<4>` of two adjacent regions;
//! * `virtq-packed`: `PackedQueue` over one `HostRegion` (same chains, packed layout);
//! * `virtq-drain`: `Queue::drain` (the documented loop: kicks off, pop/walk/`add_used`,
//!   kicks on and re-check, one publication, one interrupt decision), one call per batch;
//! * `virtq-hand`: the same loop written by hand, as the README spells it out (no budget);
//! * `rust-vmm`: `virtio_queue::Queue` over `GuestMemoryMmap`, `pop_descriptor_chain`,
//!   iterate, `add_used` (which publishes `used.idx`);
//! * `raw`, `raw-batched`: the unchecked loop, publishing per chain or per batch;
//! * `raw-checked`: the raw loop plus every check virtq makes, inlined; `raw-checked-hoisted`
//!   skips the re-checks of ring and table accesses that enable-time checks already cover.
//!   Yardsticks for "every check on", not products.
//!
//! Workloads (ring of 256 unless named otherwise):
//! * `A-1desc`: one writable 512-byte descriptor per chain, 256 chains per batch;
//! * `B-blk3`: a blk-like request: readable 16-byte header, readable 512-byte data, writable
//!   1-byte status (85 chains per batch: a chain holds 3 of the 256 descriptors);
//! * `C-indirect3`: one INDIRECT descriptor to a table of those 3 entries, 256 chains per batch.
//!
//! Scaling groups: `ring-size/<impl>/<size>` (workload A, 16 … 32768) and
//! `chain-len/<impl>/<n>` (n descriptors per chain, ring of 4096).
//!
//! Idle transition (`idle/<ring>-<plain|event-idx>`): one `pop_avail` on an empty ring with
//! kicks enabled, without and with EVENT_IDX. With EVENT_IDX the empty pop re-arms (stores
//! `avail_event` or the device event position, full fence, reads the index or flags again):
//! that is what a device pays each time the seed loop runs dry.
//!
//! For profilers, `VIRTQ_BENCH_PROFILE=<impl>/<A|B|C>` runs one workload without criterion
//! (see `profile`).
//!
//! No assertion here is about time; the checks after each batch only make sure every
//! implementation really served every chain (a silent `None` would otherwise look fast).

use std::hint::black_box;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering, fence};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use virtio_queue::{Queue as VmmQueue, QueueT};
use vm_memory::{Bytes, GuestAddress as VmmAddress, GuestMemoryBackend as _, GuestMemoryMmap};

use virtq::memory::{HostRegion, RegionTable};
use virtq::{Completion, Features, GuestAddress, GuestMemory, PackedQueue, Queue};

/// Guest RAM: 8 MiB at guest-physical 0.
const MEM_SIZE: usize = 8 << 20;
/// Descriptor table (up to 32768 × 16 bytes = 512 KiB).
const DESC: u64 = 0x1_0000;
/// Available ring (up to 4 + 2 × 32768 + 2 bytes).
const AVAIL: u64 = 0x10_0000;
/// Used ring (up to 4 + 8 × 32768 + 2 bytes).
const USED: u64 = 0x12_0000;
/// Indirect tables, 48 bytes (3 entries) each, up to 32768 of them.
const TABLES: u64 = 0x20_0000;
/// Data buffers: 256 slots of 1 KiB, reused modulo 256 (the walk never touches the data).
const DATA: u64 = 0x40_0000;
/// Where the two regions of the `RegionTable` variant meet (rings below, data above).
const SEAM: usize = 0x40_0000;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// How the driver shapes each chain.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// (A) one writable 512-byte buffer.
    Single,
    /// (B) readable 16-byte header, readable 512-byte data, writable 1-byte status.
    Blk,
    /// (C) one indirect descriptor to a 3-entry table shaped like `Blk`.
    Indirect,
    /// `n` descriptors of 64 bytes, the last one writable.
    Chain(u16),
}

impl Shape {
    /// Descriptor-table entries one chain occupies.
    fn table_entries(self) -> u16 {
        match self {
            Shape::Single | Shape::Indirect => 1,
            Shape::Blk => 3,
            Shape::Chain(n) => n,
        }
    }

    /// Bytes the device may write into one chain (what each implementation reports as used).
    fn writable_bytes(self) -> u32 {
        match self {
            Shape::Single => 512,
            Shape::Blk | Shape::Indirect => 1,
            Shape::Chain(_) => 64,
        }
    }
}

/// The guest: RAM, the ring layout and a driver that refills the available ring.
struct Guest {
    mem: GuestMemoryMmap,
    host: *mut u8,
    size: u16,
    /// Chains per batch.
    chains: u16,
    /// Descriptor-table entries per chain: chain `c` starts at descriptor `c * stride`.
    stride: u16,
    /// Driver's free-running `avail.idx` (split ring).
    avail_idx: u16,
    /// Packed ring instead of split: the driver's next slot and wrap counter, and the shape.
    packed: Option<(u16, bool, Shape)>,
}

impl Guest {
    fn new(size: u16, shape: Shape) -> Self {
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(VmmAddress(0), MEM_SIZE)]).expect("guest RAM");
        let host = mem.get_host_address(VmmAddress(0)).expect("host address");
        let per_chain = shape.table_entries();
        let chains = size / per_chain;
        assert!(chains > 0, "{shape:?} does not fit in a ring of {size}");
        let g = Self {
            mem,
            host,
            size,
            chains,
            stride: per_chain,
            avail_idx: 0,
            packed: None,
        };
        let data = |c: u16, off: u64| DATA + u64::from(c % 256) * 1024 + off;
        for c in 0..chains {
            let head = c * per_chain;
            match shape {
                Shape::Single => g.desc(DESC, head, data(c, 0), 512, F_WRITE, 0),
                Shape::Blk => g.blk(DESC, head, data(c, 0)),
                Shape::Indirect => {
                    let table = TABLES + u64::from(c) * 48;
                    g.blk(table, 0, data(c, 0));
                    g.desc(DESC, head, table, 48, F_INDIRECT, 0);
                }
                Shape::Chain(n) => {
                    for k in 0..n {
                        let last = k + 1 == n;
                        let flags = if last { F_WRITE } else { F_NEXT };
                        let addr = data(c, u64::from(k % 16) * 64);
                        g.desc(DESC, head + k, addr, 64, flags, head + k + 1);
                    }
                }
            }
        }
        g
    }

    /// The same chains on a packed ring of `size` (§2.8): the driver writes the descriptors
    /// into the ring at every refill; buffer IDs are the chain numbers.
    fn new_packed(size: u16, shape: Shape) -> Self {
        let mut g = Self::new(size, shape);
        // The split descriptors written by `new` are overwritten by the packed refill. Indirect
        // tables are rewritten in the packed format: `id` (ignored) where split has `flags`,
        // flags where split has `next`, and entries in table order (no NEXT).
        if let Shape::Indirect = shape {
            for c in 0..g.chains {
                let (table, data) = (TABLES + u64::from(c) * 48, DATA + u64::from(c % 256) * 1024);
                for (k, (addr, len, flags)) in
                    [(data, 16, 0), (data + 16, 512, 0), (data + 528, 1, F_WRITE)]
                        .into_iter()
                        .enumerate()
                {
                    g.desc(table, k as u16, addr, len, 0, flags);
                }
            }
        }
        g.packed = Some((0, true, shape));
        g
    }

    /// Driver side of the packed ring, untimed: make one batch of chains available.
    fn refill_packed(&mut self) {
        let Some((mut slot, mut wrap, shape)) = self.packed else {
            return;
        };
        let data = |c: u16, off: u64| DATA + u64::from(c % 256) * 1024 + off;
        for c in 0..self.chains {
            let bufs: [(u64, u32, u16); 3];
            let list: &[(u64, u32, u16)] = match shape {
                Shape::Single => {
                    bufs = [(data(c, 0), 512, F_WRITE), (0, 0, 0), (0, 0, 0)];
                    &bufs[..1]
                }
                Shape::Blk => {
                    bufs = [
                        (data(c, 0), 16, F_NEXT),
                        (data(c, 16), 512, F_NEXT),
                        (data(c, 528), 1, F_WRITE),
                    ];
                    &bufs[..]
                }
                Shape::Indirect => {
                    bufs = [
                        (TABLES + u64::from(c) * 48, 48, F_INDIRECT),
                        (0, 0, 0),
                        (0, 0, 0),
                    ];
                    &bufs[..1]
                }
                Shape::Chain(_) => unimplemented!("packed chains of n descriptors"),
            };
            // Write the chain's later descriptors first and the head's flags last (§2.8.21).
            let head = (slot, wrap);
            let mut head_flags = 0;
            for (k, &(addr, len, flags)) in list.iter().enumerate() {
                let avail_used = if wrap { 1 << 7 } else { 1 << 15 };
                let flags = flags | avail_used;
                let at = DESC + u64::from(slot) * 16;
                let mut raw = [0u8; 14];
                raw[0..8].copy_from_slice(&addr.to_le_bytes());
                raw[8..12].copy_from_slice(&len.to_le_bytes());
                raw[12..14].copy_from_slice(&c.to_le_bytes());
                self.mem
                    .write_slice(&raw, VmmAddress(at))
                    .expect("descriptor");
                if k == 0 {
                    head_flags = flags;
                } else {
                    self.word(at + 14).store(flags.to_le(), Ordering::Relaxed);
                }
                slot += 1;
                if slot == self.size {
                    slot = 0;
                    wrap = !wrap;
                }
            }
            fence(Ordering::Release);
            self.word(DESC + u64::from(head.0) * 16 + 14)
                .store(head_flags.to_le(), Ordering::Relaxed);
        }
        self.packed = Some((slot, wrap, shape));
    }

    /// A blk-like 3-entry chain at entries `first..first + 3` of the table at `table`.
    fn blk(&self, table: u64, first: u16, data: u64) {
        self.desc(table, first, data, 16, F_NEXT, first + 1);
        self.desc(table, first + 1, data + 16, 512, F_NEXT, first + 2);
        self.desc(table, first + 2, data + 528, 1, F_WRITE, 0);
    }

    fn ptr(&self, gpa: u64) -> *mut u8 {
        assert!(gpa < MEM_SIZE as u64);
        self.host.wrapping_add(gpa as usize)
    }

    fn desc(&self, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = table + u64::from(i) * 16;
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem
            .write_slice(&raw, VmmAddress(at))
            .expect("descriptor");
    }

    fn word(&self, gpa: u64) -> &AtomicU16 {
        // SAFETY: `gpa` is an even offset inside the mapping, which lives as long as `self` and
        // is only ever accessed with atomic or volatile operations while a device runs.
        unsafe { AtomicU16::from_ptr(self.ptr(gpa).cast::<u16>()) }
    }

    /// Driver side, untimed: make one batch of chains available and publish `avail.idx`.
    fn refill(&mut self) {
        if self.packed.is_some() {
            return self.refill_packed();
        }
        for c in 0..self.chains {
            let slot = self.avail_idx.wrapping_add(c) & (self.size - 1);
            let head = c * self.stride;
            self.word(AVAIL + 4 + 2 * u64::from(slot))
                .store(head.to_le(), Ordering::Relaxed);
        }
        self.avail_idx = self.avail_idx.wrapping_add(self.chains);
        fence(Ordering::Release);
        self.word(AVAIL + 2)
            .store(self.avail_idx.to_le(), Ordering::Relaxed);
    }

    /// `used.idx` as the device last published it.
    fn used_idx(&self) -> u16 {
        u16::from_le(self.word(USED + 2).load(Ordering::Acquire))
    }

    /// One region over the whole of RAM.
    fn host_region(&self) -> HostRegion {
        let p = NonNull::new(self.host).expect("non-null mapping");
        // SAFETY: the mapping is `MEM_SIZE` bytes, outlives every benchmark that uses the region
        // and is only accessed through atomic or volatile operations.
        unsafe { HostRegion::new(GuestAddress(0), p, MEM_SIZE) }.expect("region")
    }

    /// Two adjacent regions (rings below `SEAM`, buffers above), as a RAM map with a split.
    fn region_table(&self) -> RegionTable<4> {
        let mut t = RegionTable::new();
        for (base, len) in [(0, SEAM), (SEAM, MEM_SIZE - SEAM)] {
            let p = NonNull::new(self.host.wrapping_add(base)).expect("non-null mapping");
            // SAFETY: as in `host_region`, for a sub-range of the mapping.
            let r = unsafe { HostRegion::new(GuestAddress(base as u64), p, len) };
            t.insert(r.expect("region")).expect("insert");
        }
        t
    }

    fn virtq_queue(&self) -> Queue {
        let mut q = Queue::new(self.size);
        q.desc_table_addr = GuestAddress(DESC);
        q.avail_ring_addr = GuestAddress(AVAIL);
        q.used_ring_addr = GuestAddress(USED);
        q.features = Features::INDIRECT_DESC;
        q.ready = true;
        q.check_rings(&self.host_region()).expect("rings in RAM");
        q
    }

    fn checked(&self) -> Checked {
        Checked {
            host: self.host,
            len: MEM_SIZE as u64,
            size: self.size,
            next_avail: 0,
            next_used: 0,
            in_flight: Box::new([0; 512]),
        }
    }

    fn packed_queue(&self) -> PackedQueue {
        let mut q = PackedQueue::new(self.size);
        q.desc_ring_addr = GuestAddress(DESC);
        q.driver_event_addr = GuestAddress(AVAIL);
        q.device_event_addr = GuestAddress(USED);
        q.features = Features::INDIRECT_DESC | Features::RING_PACKED;
        q.ready = true;
        q.check_rings(&self.host_region()).expect("rings in RAM");
        q
    }

    fn vmm_queue(&self) -> VmmQueue {
        let mut q = VmmQueue::new(self.size).expect("rust-vmm queue");
        q.try_set_size(self.size).expect("size");
        q.try_set_desc_table_address(VmmAddress(DESC))
            .expect("desc");
        q.try_set_avail_ring_address(VmmAddress(AVAIL))
            .expect("avail");
        q.try_set_used_ring_address(VmmAddress(USED)).expect("used");
        q.set_ready(true);
        assert!(q.is_valid(&self.mem));
        q
    }
}

/// Time `batch` once per batch of chains, reporting criterion's `iters` as chains.
///
/// Each batch is timed on its own; the sample reports the *median* batch of the sample, scaled
/// to `iters` chains. On a shared machine a batch (a few microseconds) is either run whole or
/// preempted, so the median filters out preemptions and the cold caches after them, which would
/// otherwise dominate a sum. `batch` returns the number of chains it served; that is checked
/// outside the timed region.
fn per_chain(
    guest: &mut Guest,
    iters: u64,
    overhead: Duration,
    mut batch: impl FnMut(&Guest) -> u16,
) -> Duration {
    let n = u64::from(guest.chains);
    let batches = iters.div_ceil(n).max(1);
    let mut times = Vec::with_capacity(usize::try_from(batches).unwrap_or(0));
    for _ in 0..batches {
        guest.refill();
        let before = guest.used_idx();
        let start = Instant::now();
        let served = batch(guest);
        let elapsed = start.elapsed();
        times.push(elapsed.saturating_sub(overhead));
        assert_eq!(served, guest.chains, "every chain served");
        if guest.packed.is_none() {
            assert_eq!(guest.used_idx(), before.wrapping_add(guest.chains));
        }
    }
    times.sort_unstable();
    let median = times[times.len() / 2];
    // Scale the median batch of `n` chains to `iters` chains.
    let ns = median.as_nanos() * u128::from(iters) / u128::from(n);
    Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
}

/// The cost of an empty timed region (two `Instant::now` calls), median of many.
fn timer_overhead() -> Duration {
    let mut v: Vec<Duration> = (0..20_001)
        .map(|_| {
            let s = Instant::now();
            black_box(());
            s.elapsed()
        })
        .collect();
    v.sort();
    v[v.len() / 2]
}

/// virtq: pop, walk, `push_used` (publishes `used.idx` for every chain).
#[inline(never)]
fn serve_virtq<M: GuestMemory + ?Sized>(q: &mut Queue, mem: &M) -> u16 {
    let mut served = 0u16;
    let mut acc = 0u64;
    while let Some(chain) = q.pop_avail(mem).expect("pop") {
        let mut written = 0u32;
        for d in chain.iter(mem) {
            let d = d.expect("valid chain");
            acc ^= d.addr().raw_value();
            if d.is_write_only() {
                written += d.len();
            }
        }
        q.push_used(mem, chain.head_index(), written).expect("push");
        served += 1;
    }
    black_box(acc);
    served
}

/// virtq with batched completion: `add_used` per chain, one `publish_used` per batch.
#[inline(never)]
fn serve_virtq_batched<M: GuestMemory + ?Sized>(q: &mut Queue, mem: &M) -> u16 {
    let mut served = 0u16;
    let mut acc = 0u64;
    while let Some(chain) = q.pop_avail(mem).expect("pop") {
        let mut written = 0u32;
        for d in chain.iter(mem) {
            let d = d.expect("valid chain");
            acc ^= d.addr().raw_value();
            if d.is_write_only() {
                written += d.len();
            }
        }
        q.add_used(mem, chain.head_index(), written).expect("add");
        served += 1;
    }
    q.publish_used(mem).expect("publish");
    black_box(acc);
    served
}

/// The walk every implementation makes: fold each buffer's address into `acc`, return the
/// writable bytes.
#[inline(always)]
fn walk_virtq<M: GuestMemory + ?Sized>(chain: virtq::DescriptorIter<'_, M>, acc: &mut u64) -> u32 {
    let mut written = 0u32;
    for d in chain {
        let d = d.expect("valid chain");
        *acc ^= d.addr().raw_value();
        if d.is_write_only() {
            written += d.len();
        }
    }
    written
}

/// virtq: `Queue::drain`, one call per batch (the budget covers the batch).
#[inline(never)]
fn serve_virtq_drain<M: GuestMemory + ?Sized>(q: &mut Queue, mem: &M) -> u16 {
    let mut acc = 0u64;
    let report = q
        .drain(mem, 1 << 16, |chain| {
            Completion::Used(walk_virtq(chain.iter(mem), &mut acc))
        })
        .expect("drain");
    black_box((acc, report.notify));
    u16::try_from(report.processed).expect("batch")
}

/// virtq: the drain loop by hand, as the README writes it (no budget).
#[inline(never)]
fn serve_virtq_hand<M: GuestMemory + ?Sized>(q: &mut Queue, mem: &M) -> u16 {
    let mut served = 0u16;
    let mut acc = 0u64;
    q.disable_notification(mem).expect("kicks off");
    loop {
        while let Some(chain) = q.pop_avail(mem).expect("pop") {
            let written = walk_virtq(chain.iter(mem), &mut acc);
            q.add_used(mem, chain.head_index(), written).expect("add");
            served += 1;
        }
        if !q.enable_notification(mem).expect("kicks on") {
            break;
        }
        q.disable_notification(mem).expect("kicks off");
    }
    q.publish_used(mem).expect("publish");
    black_box((acc, q.needs_notification(mem).expect("notify")));
    served
}

/// One idle transition of the seed loop on a split ring: a `pop_avail` that finds nothing.
#[inline(never)]
fn serve_idle_split<M: GuestMemory + ?Sized>(q: &mut Queue, mem: &M) -> bool {
    q.pop_avail(mem).expect("pop").is_some()
}

/// The same on a packed ring (popping into reused storage, as a device does).
#[inline(never)]
fn serve_idle_packed<M: GuestMemory + ?Sized>(
    q: &mut PackedQueue,
    mem: &M,
    chain: &mut virtq::packed::PackedChain,
) -> bool {
    q.pop_avail_into(mem, chain).expect("pop")
}

/// virtq on the packed ring: pop, walk, `push_used` (publishes every chain).
#[inline(never)]
fn serve_packed<M: GuestMemory + ?Sized>(q: &mut PackedQueue, mem: &M) -> u16 {
    let mut served = 0u16;
    let mut acc = 0u64;
    // Pop into one reused chain: a PackedChain carries its copied descriptors, so returning
    // it by value would copy them again.
    let mut chain = virtq::packed::PackedChain::new();
    while q.pop_avail_into(mem, &mut chain).expect("pop") {
        let mut written = 0u32;
        for d in chain.iter(mem) {
            let d = d.expect("valid chain");
            acc ^= d.addr().raw_value();
            if d.is_write_only() {
                written += d.len();
            }
        }
        q.push_used(mem, &chain, written).expect("push");
        served += 1;
    }
    black_box(acc);
    served
}

/// rust-vmm: `pop_descriptor_chain`, iterate the chain, `add_used` (which publishes `used.idx`).
#[inline(never)]
fn serve_vmm(q: &mut VmmQueue, mem: &GuestMemoryMmap) -> u16 {
    let mut served = 0u16;
    let mut acc = 0u64;
    while let Some(chain) = q.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let mut written = 0u32;
        for d in chain {
            acc ^= d.addr().0;
            if d.is_write_only() {
                written += d.len();
            }
        }
        q.add_used(mem, head, written).expect("add_used");
        served += 1;
    }
    black_box(acc);
    served
}

/// The raw limit: the loads and stores a device cannot avoid, with no checks whatsoever.
struct Raw {
    host: *mut u8,
    size: u16,
    next_avail: u16,
    next_used: u16,
}

impl Raw {
    #[inline(always)]
    fn at(&self, gpa: u64) -> *mut u8 {
        self.host.wrapping_add(gpa as usize)
    }

    #[inline(always)]
    fn word(&self, gpa: u64) -> &AtomicU16 {
        // SAFETY: the benchmark only passes ring index words inside the mapping (see `Guest`).
        unsafe { AtomicU16::from_ptr(self.at(gpa).cast::<u16>()) }
    }

    /// `publish_each`: store `used.idx` after every chain (like `push_used`) or once per batch.
    #[inline(always)]
    fn serve(&mut self, publish_each: bool) -> u16 {
        let avail_idx = u16::from_le(self.word(AVAIL + 2).load(Ordering::Relaxed));
        fence(Ordering::Acquire);
        let mask = self.size - 1;
        // The cursors live in registers for the batch.
        let (mut next_avail, mut next_used) = (self.next_avail, self.next_used);
        let mut served = 0u16;
        let mut acc = 0u64;
        while next_avail != avail_idx {
            let slot = u64::from(next_avail & mask);
            let head = u16::from_le(self.word(AVAIL + 4 + 2 * slot).load(Ordering::Relaxed));
            next_avail = next_avail.wrapping_add(1);
            let mut table = DESC;
            let mut idx = head;
            let mut written = 0u32;
            loop {
                let p = self.at(table + u64::from(idx) * 16);
                // SAFETY: descriptors lie inside the mapping (the benchmark wrote them).
                let (addr, len, flags, next) = unsafe {
                    (
                        p.cast::<u64>().read_volatile(),
                        p.add(8).cast::<u32>().read_volatile(),
                        p.add(12).cast::<u16>().read_volatile(),
                        p.add(14).cast::<u16>().read_volatile(),
                    )
                };
                if flags & F_INDIRECT != 0 {
                    table = addr;
                    idx = 0;
                    continue;
                }
                acc ^= addr;
                if flags & F_WRITE != 0 {
                    written = written.wrapping_add(len);
                }
                if flags & F_NEXT == 0 {
                    break;
                }
                idx = next;
            }
            let slot = u64::from(next_used & mask);
            let e = self.at(USED + 4 + 8 * slot);
            // SAFETY: the used ring lies inside the mapping.
            unsafe {
                e.cast::<u32>().write_volatile(u32::from(head));
                e.add(4).cast::<u32>().write_volatile(written);
            }
            next_used = next_used.wrapping_add(1);
            if publish_each {
                fence(Ordering::Release);
                self.word(USED + 2)
                    .store(next_used.to_le(), Ordering::Relaxed);
            }
            served += 1;
        }
        if !publish_each {
            fence(Ordering::Release);
            self.word(USED + 2)
                .store(next_used.to_le(), Ordering::Relaxed);
        }
        (self.next_avail, self.next_used) = (next_avail, next_used);
        black_box(acc);
        served
    }
}

#[inline(never)]
fn serve_raw(r: &mut Raw) -> u16 {
    r.serve(true)
}

#[inline(never)]
fn serve_raw_batched(r: &mut Raw) -> u16 {
    r.serve(false)
}

/// Why the checked loop refused something (the checks virtq makes, as one small enum).
#[derive(Clone, Copy, Debug)]
enum Refused {
    Range,
    Misaligned,
    Overrun,
    Head,
    InFlight,
    Next,
    TooLong,
    Indirect,
    Direction,
    Length,
}

/// An estimate of what virtq's checks cost when the whole device loop is one inlined function:
/// the raw loop plus every check virtq makes on guest input (bounds of every access against
/// the RAM region with overflow-checked arithmetic, aligned 16-bit index words, `avail.idx`
/// overrun, head range, in-flight bitmap, `next` range, hop and buffer budget, the INDIRECT
/// rules, direction order, total length, zero-length buffers skipped). Not a product: a
/// yardstick for "within 2x of raw, with every check on".
struct Checked {
    host: *mut u8,
    /// RAM region: guest base 0, `len` bytes.
    len: u64,
    size: u16,
    next_avail: u16,
    next_used: u16,
    in_flight: Box<[u64; 512]>,
}

impl Checked {
    /// `[addr, addr + len)` inside RAM, as a host pointer.
    #[inline(always)]
    fn range(&self, addr: u64, len: u64) -> Result<*mut u8, Refused> {
        let end = addr.checked_add(len).ok_or(Refused::Range)?;
        if end > self.len {
            return Err(Refused::Range);
        }
        Ok(self.host.wrapping_add(addr as usize))
    }

    #[inline(always)]
    fn word(&self, addr: u64) -> Result<&AtomicU16, Refused> {
        let p = self.range(addr, 2)?;
        if !addr.is_multiple_of(2) {
            return Err(Refused::Misaligned);
        }
        // SAFETY: in bounds (checked) and 2-aligned (guest base and host mapping are aligned).
        Ok(unsafe { AtomicU16::from_ptr(p.cast::<u16>()) })
    }

    /// A ring or table access: with `HOIST`, not checked again, because the rings were checked
    /// when the queue was enabled, an indirect table when its descriptor was read, and every
    /// index into them is below their length.
    #[inline(always)]
    fn ring<const HOIST: bool>(&self, addr: u64, len: u64) -> Result<*mut u8, Refused> {
        if HOIST {
            Ok(self.host.wrapping_add(addr as usize))
        } else {
            self.range(addr, len)
        }
    }

    #[inline(always)]
    fn ring_word<const HOIST: bool>(&self, addr: u64) -> Result<&AtomicU16, Refused> {
        if HOIST {
            // SAFETY: inside a ring checked at enable time; rings are 2-aligned.
            Ok(unsafe { AtomicU16::from_ptr(self.ring::<true>(addr, 2)?.cast::<u16>()) })
        } else {
            self.word(addr)
        }
    }

    #[inline(always)]
    fn serve<const HOIST: bool>(&mut self) -> Result<u16, Refused> {
        let size = self.size;
        let mask = size - 1;
        let avail_idx = u16::from_le(self.ring_word::<HOIST>(AVAIL + 2)?.load(Ordering::Relaxed));
        fence(Ordering::Acquire);
        let (mut next_avail, mut next_used) = (self.next_avail, self.next_used);
        if avail_idx.wrapping_sub(next_avail) > size {
            return Err(Refused::Overrun);
        }
        let mut served = 0u16;
        let mut acc = 0u64;
        while next_avail != avail_idx {
            let slot = u64::from(next_avail & mask);
            let entry = self.ring_word::<HOIST>(AVAIL + 4 + 2 * slot)?;
            let head = u16::from_le(entry.load(Ordering::Relaxed));
            if head >= size {
                return Err(Refused::Head);
            }
            let (w, m) = (usize::from(head / 64), 1u64 << (head % 64));
            let bits = self.in_flight.get_mut(w).ok_or(Refused::Head)?;
            if *bits & m != 0 {
                return Err(Refused::InFlight);
            }
            *bits |= m;
            next_avail = next_avail.wrapping_add(1);

            // The walk, with virtq's rules.
            let (mut table, mut table_len, mut idx) = (DESC, size, head);
            let (mut hops, mut hop_limit, mut in_indirect) = (0u16, size, false);
            let (mut count, mut seen_writable, mut total) = (0u32, false, 0u64);
            let mut written = 0u32;
            loop {
                if hops >= hop_limit {
                    return Err(Refused::TooLong);
                }
                hops += 1;
                let p = self.ring::<HOIST>(table + u64::from(idx) * 16, 16)?;
                // SAFETY: the 16 bytes are inside RAM (checked just above).
                let (addr, len, flags, next) = unsafe {
                    (
                        p.cast::<u64>().read_volatile(),
                        p.add(8).cast::<u32>().read_volatile(),
                        p.add(12).cast::<u16>().read_volatile(),
                        p.add(14).cast::<u16>().read_volatile(),
                    )
                };
                if flags & F_INDIRECT != 0 {
                    let entries = len / 16;
                    if in_indirect
                        || flags & F_NEXT != 0
                        || len == 0
                        || len % 16 != 0
                        || entries > u32::from(size) - count
                    {
                        return Err(Refused::Indirect);
                    }
                    self.range(addr, u64::from(len))?;
                    (table, table_len, idx) = (addr, entries as u16, 0);
                    (hops, hop_limit, in_indirect) = (0, entries as u16, true);
                    continue;
                }
                if count >= u32::from(size) {
                    return Err(Refused::TooLong);
                }
                count += 1;
                let writable = flags & F_WRITE != 0;
                if writable {
                    seen_writable = true;
                } else if seen_writable {
                    return Err(Refused::Direction);
                }
                total += u64::from(len);
                if total > u64::from(u32::MAX) {
                    return Err(Refused::Length);
                }
                self.range(addr, u64::from(len))?;
                if len != 0 {
                    acc ^= addr;
                    if writable {
                        written += len;
                    }
                }
                if flags & F_NEXT == 0 {
                    break;
                }
                if next >= table_len {
                    return Err(Refused::Next);
                }
                idx = next;
            }

            // Complete: the head must be in flight; write the element, publish.
            let bits = self.in_flight.get_mut(w).ok_or(Refused::Head)?;
            if *bits & m == 0 {
                return Err(Refused::InFlight);
            }
            *bits &= !m;
            let e = self.ring::<HOIST>(USED + 4 + 8 * u64::from(next_used & mask), 8)?;
            // SAFETY: the 8 bytes are inside RAM (checked just above).
            unsafe {
                e.cast::<u32>().write_volatile(u32::from(head));
                e.add(4).cast::<u32>().write_volatile(written);
            }
            next_used = next_used.wrapping_add(1);
            fence(Ordering::Release);
            self.ring_word::<HOIST>(USED + 2)?
                .store(next_used.to_le(), Ordering::Relaxed);
            served += 1;
        }
        (self.next_avail, self.next_used) = (next_avail, next_used);
        black_box(acc);
        Ok(served)
    }
}

#[inline(never)]
fn serve_checked(c: &mut Checked) -> u16 {
    c.serve::<false>().expect("valid ring")
}

#[inline(never)]
fn serve_checked_hoisted(c: &mut Checked) -> u16 {
    c.serve::<true>().expect("valid ring")
}

/// The implementations compared.
#[derive(Clone, Copy)]
enum Impl {
    Virtq,
    VirtqDrain,
    VirtqHand,
    VirtqPacked,
    VirtqRegions,
    VirtqBatched,
    RustVmm,
    Raw,
    RawBatched,
    RawChecked,
    RawCheckedHoisted,
}

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Impl::Virtq => "virtq",
            Impl::VirtqDrain => "virtq-drain",
            Impl::VirtqHand => "virtq-hand",
            Impl::VirtqPacked => "virtq-packed",
            Impl::VirtqRegions => "virtq-regions",
            Impl::VirtqBatched => "virtq-batched",
            Impl::RustVmm => "rust-vmm",
            Impl::Raw => "raw",
            Impl::RawBatched => "raw-batched",
            Impl::RawChecked => "raw-checked",
            Impl::RawCheckedHoisted => "raw-checked-hoisted",
        }
    }

    /// Benchmark this implementation on a fresh guest of `size` with chains of `shape`.
    fn run(self, c: &mut Criterion, group: &str, id: &str, size: u16, shape: Shape) {
        let overhead = timer_overhead();
        let mut g = match self {
            Impl::VirtqPacked => Guest::new_packed(size, shape),
            _ => Guest::new(size, shape),
        };
        let mut grp = c.benchmark_group(group);
        match self {
            Impl::VirtqPacked => {
                let mem = g.host_region();
                let mut q = g.packed_queue();
                grp.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        per_chain(&mut g, iters, overhead, |_| serve_packed(&mut q, &mem))
                    })
                });
            }
            Impl::VirtqDrain | Impl::VirtqHand => {
                let mem = g.host_region();
                let mut q = g.virtq_queue();
                let drain = matches!(self, Impl::VirtqDrain);
                grp.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        per_chain(&mut g, iters, overhead, |_| {
                            if drain {
                                serve_virtq_drain(&mut q, &mem)
                            } else {
                                serve_virtq_hand(&mut q, &mem)
                            }
                        })
                    })
                });
            }
            Impl::Virtq | Impl::VirtqBatched => {
                let mem = g.host_region();
                let mut q = g.virtq_queue();
                let batched = matches!(self, Impl::VirtqBatched);
                grp.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        per_chain(&mut g, iters, overhead, |_| {
                            if batched {
                                serve_virtq_batched(&mut q, &mem)
                            } else {
                                serve_virtq(&mut q, &mem)
                            }
                        })
                    })
                });
            }
            Impl::VirtqRegions => {
                let mem = g.region_table();
                let mut q = g.virtq_queue();
                grp.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        per_chain(&mut g, iters, overhead, |_| serve_virtq(&mut q, &mem))
                    })
                });
            }
            Impl::RustVmm => {
                let mut q = g.vmm_queue();
                grp.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        per_chain(&mut g, iters, overhead, |g| serve_vmm(&mut q, &g.mem))
                    })
                });
            }
            Impl::RawChecked | Impl::RawCheckedHoisted => {
                let mut r = g.checked();
                let hoisted = matches!(self, Impl::RawCheckedHoisted);
                grp.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        per_chain(&mut g, iters, overhead, |_| {
                            if hoisted {
                                serve_checked_hoisted(&mut r)
                            } else {
                                serve_checked(&mut r)
                            }
                        })
                    })
                });
            }
            Impl::Raw | Impl::RawBatched => {
                let mut r = Raw {
                    host: g.host,
                    size,
                    next_avail: 0,
                    next_used: 0,
                };
                let batched = matches!(self, Impl::RawBatched);
                grp.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        per_chain(&mut g, iters, overhead, |_| {
                            if batched {
                                serve_raw_batched(&mut r)
                            } else {
                                serve_raw(&mut r)
                            }
                        })
                    })
                });
            }
        }
        grp.finish();
        if g.packed.is_some() || g.used_idx() == 0 {
            return; // packed (no used.idx), or filtered out: nothing ran
        }
        // Written lengths reached the used ring as each implementation computed them.
        let last = g.used_idx().wrapping_sub(1) & (size - 1);
        let len = g
            .mem
            .read_obj::<u32>(VmmAddress(USED + 4 + 8 * u64::from(last) + 4))
            .expect("used len");
        assert_eq!(len, shape.writable_bytes(), "{} used length", self.name());
    }
}

/// The three workloads on a ring of 256, every implementation (the table's input).
fn split(c: &mut Criterion) {
    let workloads = [
        ("A-1desc", Shape::Single),
        ("B-blk3", Shape::Blk),
        ("C-indirect3", Shape::Indirect),
    ];
    let impls = [
        Impl::Virtq,
        Impl::VirtqDrain,
        Impl::VirtqHand,
        Impl::VirtqPacked,
        Impl::VirtqRegions,
        Impl::VirtqBatched,
        Impl::RustVmm,
        Impl::Raw,
        Impl::RawBatched,
        Impl::RawChecked,
        Impl::RawCheckedHoisted,
    ];
    for (w, shape) in workloads {
        for i in impls {
            i.run(c, &format!("split-{w}"), i.name(), 256, shape);
        }
    }
}

/// A split and a packed queue over `g`'s rings with kicks enabled, with or without EVENT_IDX,
/// and an empty ring.
fn idle_queues(g: &Guest, event_idx: bool) -> (Queue, PackedQueue) {
    let mut q = g.virtq_queue();
    let mut p = g.packed_queue();
    if event_idx {
        q.features |= Features::EVENT_IDX;
        p.features |= Features::EVENT_IDX;
    }
    (q, p)
}

/// The idle transition of the seed loop (an empty `pop_avail` with kicks enabled), without and
/// with EVENT_IDX, on both rings: what the re-arm costs.
fn idle(c: &mut Criterion) {
    let g = Guest::new(256, Shape::Single);
    let mem = g.host_region();
    let mut grp = c.benchmark_group("idle");
    for event_idx in [false, true] {
        let suffix = if event_idx { "event-idx" } else { "plain" };
        let (mut q, mut p) = idle_queues(&g, event_idx);
        grp.bench_function(format!("split-{suffix}"), |b| {
            b.iter(|| black_box(serve_idle_split(&mut q, &mem)))
        });
        let mut chain = virtq::packed::PackedChain::new();
        grp.bench_function(format!("packed-{suffix}"), |b| {
            b.iter(|| black_box(serve_idle_packed(&mut p, &mem, &mut chain)))
        });
    }
    grp.finish();
}

/// Cost per chain against ring size (workload A): should be flat.
fn ring_size(c: &mut Criterion) {
    for i in [Impl::Virtq, Impl::RustVmm, Impl::Raw] {
        for size in [16u16, 256, 4096, 32768] {
            let group = format!("ring-size/{}", i.name());
            i.run(c, &group, &size.to_string(), size, Shape::Single);
        }
    }
}

/// Cost per chain against chain length (ring of 4096): should be linear.
fn chain_len(c: &mut Criterion) {
    for i in [Impl::Virtq, Impl::RustVmm, Impl::Raw] {
        for n in [1u16, 4, 16, 64] {
            let group = format!("chain-len/{}", i.name());
            i.run(c, &group, &n.to_string(), 4096, Shape::Chain(n));
        }
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(800))
        .without_plots()
}

criterion_group! {
    name = benches;
    config = config();
    targets = split, idle, ring_size, chain_len
}

/// For profilers (`valgrind --tool=callgrind`, `perf record`): serve `batches` batches of one
/// workload with one implementation, without criterion. Selected with the environment variable
/// `VIRTQ_BENCH_PROFILE=<impl>/<workload>`, e.g. `virtq/A`, `virtq-regions/B`, `raw/C`,
/// `rust-vmm/A`; `VIRTQ_BENCH_BATCHES` sets the number of batches (default 2000).
fn profile(spec: &str) {
    let (imp, work) = spec
        .split_once('/')
        .expect("VIRTQ_BENCH_PROFILE=<impl>/<A|B|C>");
    if imp == "idle" {
        return profile_idle(work);
    }
    let shape = match work {
        "A" => Shape::Single,
        "B" => Shape::Blk,
        "C" => Shape::Indirect,
        _ => panic!("workload {work}: expected A, B or C"),
    };
    let batches: u64 = std::env::var("VIRTQ_BENCH_BATCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let mut g = Guest::new(256, shape);
    let iters = batches * u64::from(g.chains);
    let overhead = timer_overhead();
    let t = match imp {
        "virtq" => {
            let (mem, mut q) = (g.host_region(), g.virtq_queue());
            per_chain(&mut g, iters, overhead, |_| serve_virtq(&mut q, &mem))
        }
        "virtq-batched" => {
            let (mem, mut q) = (g.host_region(), g.virtq_queue());
            per_chain(&mut g, iters, overhead, |_| {
                serve_virtq_batched(&mut q, &mem)
            })
        }
        "virtq-drain" => {
            let (mem, mut q) = (g.host_region(), g.virtq_queue());
            per_chain(&mut g, iters, overhead, |_| serve_virtq_drain(&mut q, &mem))
        }
        "virtq-hand" => {
            let (mem, mut q) = (g.host_region(), g.virtq_queue());
            per_chain(&mut g, iters, overhead, |_| serve_virtq_hand(&mut q, &mem))
        }
        "virtq-packed" => {
            let mut g = Guest::new_packed(256, shape);
            let (mem, mut q) = (g.host_region(), g.packed_queue());
            per_chain(&mut g, iters, overhead, |_| serve_packed(&mut q, &mem))
        }
        "virtq-regions" => {
            let (mem, mut q) = (g.region_table(), g.virtq_queue());
            per_chain(&mut g, iters, overhead, |_| serve_virtq(&mut q, &mem))
        }
        "rust-vmm" => {
            let mut q = g.vmm_queue();
            per_chain(&mut g, iters, overhead, |g| serve_vmm(&mut q, &g.mem))
        }
        "raw-checked" => {
            let mut r = g.checked();
            per_chain(&mut g, iters, overhead, |_| serve_checked(&mut r))
        }
        "raw-checked-hoisted" => {
            let mut r = g.checked();
            per_chain(&mut g, iters, overhead, |_| serve_checked_hoisted(&mut r))
        }
        "raw" => {
            let mut r = Raw {
                host: g.host,
                size: 256,
                next_avail: 0,
                next_used: 0,
            };
            per_chain(&mut g, iters, overhead, |_| serve_raw(&mut r))
        }
        _ => panic!(
            "implementation {imp}: expected virtq, virtq-batched, virtq-drain, virtq-hand, virtq-packed, virtq-regions, rust-vmm, raw, raw-checked, raw-checked-hoisted or idle"
        ),
    };
    println!(
        "{spec}: {:.2} ns/chain over {iters} chains",
        t.as_secs_f64() * 1e9 / iters as f64
    );
}

/// `VIRTQ_BENCH_PROFILE=idle/<split|packed>-<plain|event-idx>`: 256 empty pops per batch
/// (`VIRTQ_BENCH_BATCHES` batches), so instruction counts divide like a workload's.
fn profile_idle(which: &str) {
    let batches: u64 = std::env::var("VIRTQ_BENCH_BATCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let (ring, mode) = which
        .split_once('-')
        .expect("idle/<split|packed>-<plain|event-idx>");
    let g = Guest::new(256, Shape::Single);
    let mem = g.host_region();
    let (mut q, mut p) = idle_queues(&g, mode == "event-idx");
    let mut chain = virtq::packed::PackedChain::new();
    let pops = batches * 256;
    let start = Instant::now();
    for _ in 0..pops {
        let found = match ring {
            "split" => serve_idle_split(&mut q, &mem),
            "packed" => serve_idle_packed(&mut p, &mem, &mut chain),
            _ => panic!("ring {ring}: expected split or packed"),
        };
        assert!(!found, "the ring is empty");
    }
    println!(
        "idle/{which}: {:.2} ns per empty pop over {pops}",
        start.elapsed().as_secs_f64() * 1e9 / pops as f64
    );
}

fn main() {
    if let Ok(spec) = std::env::var("VIRTQ_BENCH_PROFILE") {
        profile(&spec);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
