//! A driver-side model of the split ring (§2.7.13): lays out the rings in [`TestMemory`],
//! writes descriptors (well-formed or hostile), publishes heads and reads the used ring back.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{Ordering, fence};

use virtq::wire::split_layout as layout;
use virtq::{Features, GuestAddress, Queue};

use crate::memory::TestMemory;

/// Descriptor flag values for building tables by hand.
pub mod desc_flags {
    /// VIRTQ_DESC_F_NEXT
    pub const N: u16 = 1;
    /// VIRTQ_DESC_F_WRITE
    pub const W: u16 = 2;
    /// VIRTQ_DESC_F_INDIRECT
    pub const I: u16 = 4;
}

/// The driver side of one split virtqueue in test memory.
#[derive(Debug)]
pub struct SplitDriver<'m> {
    mem: &'m TestMemory,
    /// Queue size.
    pub size: u16,
    /// Descriptor table address.
    pub desc: u64,
    /// Available ring address.
    pub avail: u64,
    /// Used ring address.
    pub used: u64,
    /// The driver's shadow of `avail.idx`.
    pub avail_idx: u16,
    /// The driver's cursor into the used ring.
    pub last_used: u16,
    free: VecDeque<u16>,
    chains: HashMap<u16, Vec<u16>>,
}

impl<'m> SplitDriver<'m> {
    /// Lay out a queue of `size` at the given addresses and zero its rings.
    pub fn new(mem: &'m TestMemory, size: u16, desc: u64, avail: u64, used: u64) -> Self {
        mem.fill(desc, layout::desc_table_bytes(size) as usize, 0);
        mem.fill(avail, layout::avail_ring_bytes(size) as usize, 0);
        mem.fill(used, layout::used_ring_bytes(size) as usize, 0);
        Self {
            mem,
            size,
            desc,
            avail,
            used,
            avail_idx: 0,
            last_used: 0,
            free: (0..size).collect(),
            chains: HashMap::new(),
        }
    }

    /// The standard test layout in map M0: desc `0x1000`, avail `0x2000 + …`, used after it,
    /// each part at its own page-aligned address large enough for `size`.
    pub fn standard(mem: &'m TestMemory, size: u16) -> Self {
        let d = layout::desc_table_bytes(size);
        let a = layout::avail_ring_bytes(size);
        let page = |v: u64| v.div_ceil(0x1000) * 0x1000;
        let desc = 0x1000;
        let avail = desc + page(d);
        let used = avail + page(a);
        Self::new(mem, size, desc, avail, used)
    }

    /// A device-side [`Queue`] configured for this layout and marked ready.
    pub fn queue(&self, max_size: u16, features: Features) -> Queue {
        let mut q = Queue::new(max_size);
        q.set_size(self.size);
        q.desc_table_addr = GuestAddress(self.desc);
        q.avail_ring_addr = GuestAddress(self.avail);
        q.used_ring_addr = GuestAddress(self.used);
        q.features = features;
        q.ready = true;
        q
    }

    /// Write descriptor `i` of the descriptor table.
    pub fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        write_desc(
            self.mem,
            self.desc + 16 * u64::from(i),
            addr,
            len,
            flags,
            next,
        );
    }

    /// Write an indirect table at `at` (entries `(addr, len, flags, next)`).
    pub fn write_table(&self, at: u64, entries: &[(u64, u32, u16, u16)]) {
        for (i, &(addr, len, flags, next)) in entries.iter().enumerate() {
            write_desc(self.mem, at + 16 * i as u64, addr, len, flags, next);
        }
    }

    /// Write `head` into ring slot `avail_idx % size` and publish it (write barrier, then the
    /// index store), as a driver does.
    pub fn publish(&mut self, head: u16) {
        self.set_ring_entry(self.avail_idx, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        fence(Ordering::Release);
        self.mem
            .poke_u16(self.avail + layout::IDX_OFFSET, self.avail_idx);
    }

    /// Write ring entry for index `idx` (slot `idx % size`) without publishing.
    pub fn set_ring_entry(&self, idx: u16, head: u16) {
        let slot = u64::from(idx % self.size);
        self.mem
            .poke_u16(self.avail + layout::RING_OFFSET + 2 * slot, head);
    }

    /// Store a raw `avail.idx` (hostile drivers move it anywhere).
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.avail_idx = idx;
        fence(Ordering::Release);
        self.mem.poke_u16(self.avail + layout::IDX_OFFSET, idx);
    }

    /// Set the available ring's flags word.
    pub fn set_avail_flags(&self, flags: u16) {
        self.mem.poke_u16(self.avail, flags);
    }

    /// Set `used_event` (the driver's EVENT_IDX threshold).
    pub fn set_used_event(&self, v: u16) {
        self.mem
            .poke_u16(self.avail + layout::used_event_offset(self.size), v);
    }

    /// The used ring's flags word.
    pub fn used_flags(&self) -> u16 {
        self.mem.peek_u16(self.used)
    }

    /// `avail_event` (the device's EVENT_IDX threshold).
    pub fn avail_event(&self) -> u16 {
        self.mem
            .peek_u16(self.used + layout::avail_event_offset(self.size))
    }

    /// `used.idx` as the device published it (read, then acquire).
    pub fn used_idx(&self) -> u16 {
        let v = self.mem.peek_u16(self.used + layout::IDX_OFFSET);
        fence(Ordering::Acquire);
        v
    }

    /// Used element at ring index `idx` (slot `idx % size`): `(id, len)`.
    pub fn used_elem(&self, idx: u16) -> (u32, u32) {
        let at = self.used + layout::RING_OFFSET + 8 * u64::from(idx % self.size);
        (self.mem.peek_u32(at), self.mem.peek_u32(at + 4))
    }

    /// Next used element not yet consumed by the driver, returning the chain's descriptors to
    /// the free list if it was built with [`add_chain`](Self::add_chain).
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        if self.last_used == self.used_idx() {
            return None;
        }
        let e = self.used_elem(self.last_used);
        self.last_used = self.last_used.wrapping_add(1);
        if let Some(ids) = u16::try_from(e.0).ok().and_then(|h| self.chains.remove(&h)) {
            self.free.extend(ids);
        }
        Some(e)
    }

    /// Return the descriptors of chain `head` (built with [`add_chain`](Self::add_chain)) to
    /// the free list without reading the used ring: for in-order batches (§2.7.9), whose single
    /// used element names only the batch's last chain. `false` if `head` is not outstanding.
    pub fn recycle(&mut self, head: u16) -> bool {
        match self.chains.remove(&head) {
            Some(ids) => {
                self.free.extend(ids);
                true
            }
            None => false,
        }
    }

    /// Number of free descriptors for [`add_chain`](Self::add_chain).
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Build a well-formed chain from free descriptors (buffers `(addr, len, writable)`, readable
    /// ones first) and publish it. Returns the head, or `None` if not enough descriptors are
    /// free.
    pub fn add_chain(&mut self, bufs: &[(u64, u32, bool)]) -> Option<u16> {
        if bufs.is_empty() || bufs.len() > self.free.len() {
            return None;
        }
        let ids: Vec<u16> = (0..bufs.len())
            .map(|_| self.free.pop_front().unwrap())
            .collect();
        for (k, &(addr, len, w)) in bufs.iter().enumerate() {
            let last = k + 1 == bufs.len();
            let mut flags = if w { desc_flags::W } else { 0 };
            let next = if last { 0 } else { ids[k + 1] };
            if !last {
                flags |= desc_flags::N;
            }
            self.set_desc(ids[k], addr, len, flags, next);
        }
        let head = ids[0];
        self.chains.insert(head, ids);
        self.publish(head);
        Some(head)
    }

    /// Build a chain made of one indirect descriptor pointing at a table written at `table`,
    /// and publish it. Returns the head.
    pub fn add_indirect_chain(&mut self, table: u64, bufs: &[(u64, u32, bool)]) -> Option<u16> {
        let id = self.free.pop_front()?;
        let entries: Vec<(u64, u32, u16, u16)> = bufs
            .iter()
            .enumerate()
            .map(|(k, &(a, l, w))| {
                let last = k + 1 == bufs.len();
                let flags =
                    if w { desc_flags::W } else { 0 } | if last { 0 } else { desc_flags::N };
                (a, l, flags, if last { 0 } else { k as u16 + 1 })
            })
            .collect();
        self.write_table(table, &entries);
        self.set_desc(id, table, 16 * bufs.len() as u32, desc_flags::I, 0);
        self.chains.insert(id, vec![id]);
        self.publish(id);
        Some(id)
    }
}

/// Write one split descriptor at `at`.
pub fn write_desc(mem: &TestMemory, at: u64, addr: u64, len: u32, flags: u16, next: u16) {
    let mut b = [0u8; 16];
    b[0..8].copy_from_slice(&addr.to_le_bytes());
    b[8..12].copy_from_slice(&len.to_le_bytes());
    b[12..14].copy_from_slice(&flags.to_le_bytes());
    b[14..16].copy_from_slice(&next.to_le_bytes());
    mem.poke(at, &b);
}
