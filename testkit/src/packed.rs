//! A driver-side model of the packed ring (§2.8.21): lays out the descriptor ring and the two
//! event suppression structures in [`TestMemory`], makes chains available (well-formed, or any
//! raw descriptor a hostile driver could write), and reads used descriptors back.
//!
//! `virtio-drivers` has no packed ring, so this model is the guest for packed-ring tests. It
//! follows the driver rules of §2.8.21.1: every descriptor of a chain is written before the
//! head's flags, and a write barrier precedes the head's flags store.

use std::collections::HashMap;
use std::sync::atomic::{Ordering, fence};

use virtq::packed::layout;
use virtq::{Features, GuestAddress, PackedQueue};

use crate::memory::TestMemory;

/// Packed descriptor flag values for building rings by hand (hostile-inputs notation).
pub mod pflags {
    /// VIRTQ_DESC_F_NEXT
    pub const N: u16 = 1;
    /// VIRTQ_DESC_F_WRITE
    pub const W: u16 = 2;
    /// VIRTQ_DESC_F_INDIRECT
    pub const I: u16 = 4;
    /// VIRTQ_DESC_F_AVAIL
    pub const A: u16 = 1 << 7;
    /// VIRTQ_DESC_F_USED
    pub const U: u16 = 1 << 15;

    /// The AVAIL/USED bits that make a descriptor available in a lap with driver wrap counter
    /// `wrap` (A = wrap, U = !wrap).
    pub const fn avail(wrap: bool) -> u16 {
        if wrap { A } else { U }
    }
}

/// A used descriptor as the driver reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedDesc {
    /// Buffer ID.
    pub id: u16,
    /// Bytes written (meaningful only with WRITE).
    pub len: u32,
    /// The raw flags word.
    pub flags: u16,
}

/// The driver side of one packed virtqueue in test memory.
#[derive(Debug)]
pub struct PackedDriver<'m> {
    mem: &'m TestMemory,
    /// Queue size.
    pub size: u16,
    /// Descriptor ring address.
    pub desc: u64,
    /// Driver event suppression structure (Driver Area).
    pub driver_event: u64,
    /// Device event suppression structure (Device Area).
    pub device_event: u64,
    /// Next slot the driver writes.
    pub next_avail: u16,
    /// Driver ring wrap counter.
    pub avail_wrap: bool,
    /// Next slot the driver expects a used descriptor in.
    pub next_used: u16,
    /// The wrap counter the driver expects used descriptors to carry.
    pub used_wrap: bool,
    /// Descriptors not outstanding.
    pub num_free: u16,
    free_ids: Vec<u16>,
    /// Descriptor count per outstanding Buffer ID.
    outstanding: HashMap<u16, u16>,
}

impl<'m> PackedDriver<'m> {
    /// Lay out a queue of `size` at the given addresses and zero its areas.
    pub fn new(
        mem: &'m TestMemory,
        size: u16,
        desc: u64,
        driver_event: u64,
        device_event: u64,
    ) -> Self {
        mem.fill(desc, layout::desc_ring_bytes(size) as usize, 0);
        mem.fill(driver_event, 4, 0);
        mem.fill(device_event, 4, 0);
        Self {
            mem,
            size,
            desc,
            driver_event,
            device_event,
            next_avail: 0,
            avail_wrap: true,
            next_used: 0,
            used_wrap: true,
            num_free: size,
            free_ids: (0..size).rev().collect(),
            outstanding: HashMap::new(),
        }
    }

    /// The standard layout in map M0: ring at `0x1000`, driver event structure on the next
    /// page after the ring, device event structure 0x100 after it.
    pub fn standard(mem: &'m TestMemory, size: u16) -> Self {
        let ring = layout::desc_ring_bytes(size);
        let desc = 0x1000;
        let driver_event = desc + ring.div_ceil(0x1000) * 0x1000;
        Self::new(mem, size, desc, driver_event, driver_event + 0x100)
    }

    /// A device-side [`PackedQueue`] configured for this layout and marked ready.
    pub fn queue(&self, max_size: u16, features: Features) -> PackedQueue {
        let mut q = PackedQueue::new(max_size);
        q.set_size(self.size);
        q.desc_ring_addr = GuestAddress(self.desc);
        q.driver_event_addr = GuestAddress(self.driver_event);
        q.device_event_addr = GuestAddress(self.device_event);
        q.features = features;
        q.ready = true;
        q
    }

    /// Address of slot `slot`.
    pub fn slot_addr(&self, slot: u16) -> u64 {
        self.desc + 16 * u64::from(slot)
    }

    /// Write the body of descriptor `slot` (addr, len, id), leaving its flags alone.
    pub fn set_body(&self, slot: u16, addr: u64, len: u32, id: u16) {
        let at = self.slot_addr(slot);
        let mut b = [0u8; 14];
        b[0..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&id.to_le_bytes());
        self.mem.poke(at, &b);
    }

    /// Store the flags word of descriptor `slot` (after a write barrier, as a driver does).
    pub fn set_flags(&self, slot: u16, flags: u16) {
        fence(Ordering::Release);
        self.mem
            .poke_u16(self.slot_addr(slot) + layout::FLAGS_OFFSET, flags);
    }

    /// Write a whole raw descriptor: body first, then flags (hostile tests).
    pub fn set_desc(&self, slot: u16, addr: u64, len: u32, id: u16, flags: u16) {
        self.set_body(slot, addr, len, id);
        self.set_flags(slot, flags);
    }

    /// The flags word of `slot` as it is now.
    pub fn flags(&self, slot: u16) -> u16 {
        self.mem
            .peek_u16(self.slot_addr(slot) + layout::FLAGS_OFFSET)
    }

    /// Write an indirect table at `at`: entries `(addr, len, flags)` (ids 0).
    pub fn write_table(&self, at: u64, entries: &[(u64, u32, u16)]) {
        for (i, &(addr, len, flags)) in entries.iter().enumerate() {
            let mut b = [0u8; 16];
            b[0..8].copy_from_slice(&addr.to_le_bytes());
            b[8..12].copy_from_slice(&len.to_le_bytes());
            b[14..16].copy_from_slice(&flags.to_le_bytes());
            self.mem.poke(at + 16 * i as u64, &b);
        }
    }

    fn take_id(&mut self) -> Option<u16> {
        self.free_ids.pop()
    }

    /// Make a chain of raw descriptors `(addr, len, flags-without-A/U)` available at the driver
    /// cursor with Buffer ID `id` in every descriptor: the later descriptors first, the head's
    /// flags last (§2.8.21.1). No bookkeeping of free descriptors: for hostile tests.
    pub fn publish_raw(&mut self, id: u16, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_avail;
        let mut head_flags = 0;
        for (k, &(addr, len, flags)) in descs.iter().enumerate() {
            let slot = self.next_avail;
            let f = flags | pflags::avail(self.avail_wrap);
            self.set_body(slot, addr, len, id);
            if k == 0 {
                head_flags = f;
            } else {
                self.set_flags(slot, f);
            }
            self.next_avail += 1;
            if self.next_avail == self.size {
                self.next_avail = 0;
                self.avail_wrap = !self.avail_wrap;
            }
        }
        // Write barrier, then the head's flags: the whole chain becomes visible at once.
        self.set_flags(head, head_flags);
        head
    }

    /// Build a well-formed chain (buffers `(addr, len, writable)`, readable ones first) and make
    /// it available. Returns its Buffer ID, or `None` if not enough descriptors are free.
    pub fn add_chain(&mut self, bufs: &[(u64, u32, bool)]) -> Option<u16> {
        let n = u16::try_from(bufs.len()).ok()?;
        if n == 0 || n > self.num_free {
            return None;
        }
        let id = self.take_id()?;
        let descs: Vec<(u64, u32, u16)> = bufs
            .iter()
            .enumerate()
            .map(|(k, &(a, l, w))| {
                let mut f = if w { pflags::W } else { 0 };
                if k + 1 < bufs.len() {
                    f |= pflags::N;
                }
                (a, l, f)
            })
            .collect();
        self.publish_raw(id, &descs);
        self.num_free -= n;
        self.outstanding.insert(id, n);
        Some(id)
    }

    /// Build a chain of one indirect descriptor pointing at a table written at `table`, and make
    /// it available. Returns its Buffer ID.
    pub fn add_indirect_chain(&mut self, table: u64, bufs: &[(u64, u32, bool)]) -> Option<u16> {
        if self.num_free == 0 {
            return None;
        }
        let id = self.take_id()?;
        let entries: Vec<(u64, u32, u16)> = bufs
            .iter()
            .map(|&(a, l, w)| (a, l, if w { pflags::W } else { 0 }))
            .collect();
        self.write_table(table, &entries);
        self.publish_raw(id, &[(table, 16 * bufs.len() as u32, pflags::I)]);
        self.num_free -= 1;
        self.outstanding.insert(id, 1);
        Some(id)
    }

    /// The used descriptor in the driver's next used slot, if the device has marked it used
    /// (A = U = the expected used wrap counter), without consuming it.
    pub fn peek_used(&self) -> Option<UsedDesc> {
        let at = self.slot_addr(self.next_used);
        let flags = self.mem.peek_u16(at + layout::FLAGS_OFFSET);
        let a = flags & pflags::A != 0;
        let u = flags & pflags::U != 0;
        if a != self.used_wrap || u != self.used_wrap {
            return None;
        }
        // Acquire: read id and len only after seeing the flags.
        fence(Ordering::Acquire);
        let len = self.mem.peek_u32(at + 8);
        let id = u16::from_le_bytes(self.mem.peek(at + 12, 2).try_into().unwrap());
        Some(UsedDesc { id, len, flags })
    }

    /// Consume the next used descriptor: the driver's used cursor skips the descriptor count it
    /// recorded for that Buffer ID (`skip` for IDs it did not hand out, e.g. hostile tests),
    /// and the ID returns to the free list.
    pub fn pop_used_skip(&mut self, skip: u16) -> Option<UsedDesc> {
        let d = self.peek_used()?;
        let n = match self.outstanding.remove(&d.id) {
            Some(n) => {
                self.num_free += n;
                self.free_ids.push(d.id);
                n
            }
            None => skip,
        };
        let s = u32::from(self.next_used) + u32::from(n);
        if s >= u32::from(self.size) {
            self.next_used = (s - u32::from(self.size)) as u16;
            self.used_wrap = !self.used_wrap;
        } else {
            self.next_used = s as u16;
        }
        Some(d)
    }

    /// Consume the next used descriptor of a chain built with [`add_chain`](Self::add_chain).
    pub fn pop_used(&mut self) -> Option<UsedDesc> {
        self.pop_used_skip(1)
    }

    /// Treat the chains with IDs `ids` as used (in-order batch: the device wrote only the
    /// last one), returning their descriptors to the free list. Returns the total skipped.
    pub fn retire_in_order(&mut self, ids: &[u16]) -> u16 {
        let mut total = 0;
        for id in ids {
            if let Some(n) = self.outstanding.remove(id) {
                self.num_free += n;
                self.free_ids.push(*id);
                total += n;
            }
        }
        let s = u32::from(self.next_used) + u32::from(total);
        let q = u32::from(self.size);
        self.next_used = (s % q) as u16;
        if (s / q) % 2 == 1 {
            self.used_wrap = !self.used_wrap;
        }
        total
    }

    /// Write the driver event suppression structure (off_wrap first, then flags).
    pub fn set_driver_event(&self, off_wrap: u16, flags: u16) {
        self.mem.poke_u16(self.driver_event, off_wrap);
        fence(Ordering::Release);
        self.mem.poke_u16(self.driver_event + 2, flags);
    }

    /// The device event suppression structure: `(off_wrap, flags)`.
    pub fn device_event(&self) -> (u16, u16) {
        (
            self.mem.peek_u16(self.device_event),
            self.mem.peek_u16(self.device_event + 2),
        )
    }

    /// The driver's used position as an `off_wrap` value (what a driver writes to ask for an
    /// interrupt at its next used descriptor).
    pub fn used_off_wrap(&self) -> u16 {
        self.next_used | if self.used_wrap { 0x8000 } else { 0 }
    }
}
