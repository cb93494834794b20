//! Guest RAM for tests: a few regions of atomics, with optional access recording and
//! "changes after first read" hooks for double-fetch (TOCTOU) tests.
//!
//! Every byte lives in an `AtomicU16` word and every access is a 16-bit atomic on that word (a
//! byte write is a `fetch_and` and a `fetch_or`), so the driver side (another thread, or the
//! test itself) and the device side may touch the same memory concurrently with neither a data
//! race nor a mixed-size atomic race in the Rust memory model: threaded tests are Miri-clean,
//! and the ordering between the two sides comes only from the fences the queue issues. Regions
//! are 2-aligned, so every aligned word is accessible and the provided
//! `GuestMemory::check_u16_range` is exact for it.

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Mutex, OnceLock};

use virtq::{GuestAddress, GuestMemory, MemoryError};

/// What kind of device access was recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccessKind {
    /// `GuestMemory::read`
    Read,
    /// `GuestMemory::write`
    Write,
    /// `GuestMemory::load_u16`
    Load16,
    /// `GuestMemory::store_u16`
    Store16,
}

/// One recorded device access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Access {
    /// Kind of access.
    pub kind: AccessKind,
    /// First guest address.
    pub addr: u64,
    /// Width in bytes.
    pub len: u64,
}

impl Access {
    /// Whether the access touches any byte of `[addr, addr + len)`.
    pub fn overlaps(&self, addr: u64, len: u64) -> bool {
        // In u128: a recorded access (or the query) may end at or past 2⁶⁴.
        let end = |a: u64, l: u64| u128::from(a) + u128::from(l);
        u128::from(self.addr) < end(addr, len) && u128::from(addr) < end(self.addr, self.len)
    }
}

/// Bytes per lazily allocated page of a region.
const PAGE: u64 = 4096;

/// A RAM region whose pages are allocated on first write: untouched memory reads as zero, so
/// a large guest map costs nothing until used (which keeps Miri runs fast).
struct Region {
    base: u64,
    len: u64,
    pages: Box<[OnceLock<Box<[AtomicU16]>>]>,
}

impl Region {
    fn new(base: u64, len: u64) -> Self {
        let pages = (0..len.div_ceil(PAGE)).map(|_| OnceLock::new()).collect();
        Self { base, len, pages }
    }

    fn len(&self) -> u64 {
        self.len
    }

    /// The word holding byte offset `off`, if its page exists.
    fn word(&self, off: u64) -> Option<&AtomicU16> {
        let page = self.pages[(off / PAGE) as usize].get()?;
        Some(&page[((off % PAGE) / 2) as usize])
    }

    /// The word holding byte offset `off`, allocating its page (zeroed) if needed.
    fn word_mut(&self, off: u64) -> &AtomicU16 {
        let page = self.pages[(off / PAGE) as usize]
            .get_or_init(|| (0..PAGE / 2).map(|_| AtomicU16::new(0)).collect());
        &page[((off % PAGE) / 2) as usize]
    }

    fn load(&self, off: u64) -> u16 {
        self.word(off).map_or(0, |w| w.load(Ordering::Relaxed))
    }
}

struct Flip {
    addr: u64,
    bytes: Vec<u8>,
    done: bool,
}

/// Guest RAM made of regions with holes between them.
pub struct TestMemory {
    regions: Vec<Region>,
    recording: AtomicBool,
    log: Mutex<Vec<Access>>,
    has_flips: AtomicBool,
    flips: Mutex<Vec<Flip>>,
}

impl std::fmt::Debug for TestMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r: Vec<(u64, u64)> = self.regions.iter().map(|r| (r.base, r.len())).collect();
        f.debug_struct("TestMemory").field("regions", &r).finish()
    }
}

impl TestMemory {
    /// RAM regions given as `(base, len)`; both even, non-overlapping. Zero-filled.
    pub fn new(regions: &[(u64, u64)]) -> Self {
        let mut rs: Vec<Region> = regions
            .iter()
            .map(|&(base, len)| {
                assert!(base % 2 == 0 && len % 2 == 0, "regions must be 2-aligned");
                Region::new(base, len)
            })
            .collect();
        rs.sort_by_key(|r| r.base);
        for w in rs.windows(2) {
            assert!(w[0].base + w[0].len() <= w[1].base, "regions overlap");
        }
        Self {
            regions: rs,
            recording: AtomicBool::new(false),
            log: Mutex::new(Vec::new()),
            has_flips: AtomicBool::new(false),
            flips: Mutex::new(Vec::new()),
        }
    }

    /// The hostile-inputs map M0: RAM0 `[0, 1 MiB)`, a hole `[1 MiB, 2 MiB)` (the device's MMIO
    /// window sits at 1 MiB), RAM1 `[2 MiB, 3 MiB)`.
    pub fn m0() -> Self {
        Self::new(&[(0, 0x10_0000), (0x20_0000, 0x10_0000)])
    }

    /// Start (or restart) recording device accesses.
    pub fn start_recording(&self) {
        self.log.lock().unwrap().clear();
        self.recording.store(true, Ordering::SeqCst);
    }

    /// Stop recording and return what was recorded.
    pub fn take_log(&self) -> Vec<Access> {
        self.recording.store(false, Ordering::SeqCst);
        std::mem::take(&mut *self.log.lock().unwrap())
    }

    /// After the first device read that touches `addr`, overwrite `[addr, addr + bytes.len())`
    /// with `bytes` (the guest changing memory between two fetches).
    pub fn flip_after_first_read(&self, addr: u64, bytes: &[u8]) {
        self.flips.lock().unwrap().push(Flip {
            addr,
            bytes: bytes.to_vec(),
            done: false,
        });
        self.has_flips.store(true, Ordering::SeqCst);
    }

    fn record(&self, kind: AccessKind, addr: u64, len: u64) {
        if self.recording.load(Ordering::Relaxed) {
            self.log.lock().unwrap().push(Access { kind, addr, len });
        }
    }

    fn after_read(&self, addr: u64, len: u64) {
        if !self.has_flips.load(Ordering::Relaxed) {
            return;
        }
        let mut flips = self.flips.lock().unwrap();
        for f in flips.iter_mut().filter(|f| !f.done) {
            if f.addr < addr + len.max(1) && addr < f.addr + f.bytes.len() as u64 {
                f.done = true;
                self.poke(f.addr, &f.bytes);
            }
        }
    }

    fn region(&self, addr: u64, len: u64) -> Result<&Region, MemoryError> {
        let end = addr
            .checked_add(len)
            .ok_or(MemoryError::Overflow { addr, len })?;
        self.regions
            .iter()
            .find(|r| r.base <= addr && addr < r.base + r.len() && end <= r.base + r.len())
            .ok_or(MemoryError::OutOfRange { addr, len })
    }

    fn byte(&self, r: &Region, addr: u64) -> u8 {
        let off = addr - r.base;
        r.load(off).to_le_bytes()[(off % 2) as usize]
    }

    /// Write one byte of its word: clear it, then set it. Two read-modify-writes, never a
    /// compare-and-swap loop, which a thread hammering the other byte could keep failing.
    fn set_byte(&self, r: &Region, addr: u64, v: u8) {
        let off = addr - r.base;
        let shift = (off % 2) * 8;
        let word = r.word_mut(off);
        word.fetch_and((!(0xFFu16 << shift)).to_le(), Ordering::Relaxed);
        word.fetch_or((u16::from(v) << shift).to_le(), Ordering::Relaxed);
    }

    /// Call `f(region, addr)` for every byte of `[addr, addr + len)`, crossing seams between
    /// adjacent regions.
    fn each_byte(
        &self,
        addr: u64,
        len: u64,
        mut f: impl FnMut(&Region, u64, usize),
    ) -> Result<(), MemoryError> {
        self.check_range(GuestAddress(addr), len)?;
        if len == 0 {
            return Ok(());
        }
        let mut r = self.region(addr, 0)?;
        for i in 0..len {
            let at = addr + i;
            if at >= r.base + r.len() {
                r = self.region(at, 1)?;
            }
            f(r, at, i as usize);
        }
        Ok(())
    }

    /// Driver-side (guest) read, not recorded. Panics outside RAM: test set-up errors.
    pub fn peek(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.each_byte(addr, len as u64, |r, at, i| out[i] = self.byte(r, at))
            .expect("peek outside RAM");
        out
    }

    /// Driver-side (guest) write, not recorded. Panics outside RAM: test set-up errors.
    pub fn poke(&self, addr: u64, bytes: &[u8]) {
        self.each_byte(addr, bytes.len() as u64, |r, at, i| {
            self.set_byte(r, at, bytes[i])
        })
        .expect("poke outside RAM");
    }

    /// Driver-side single-copy-atomic 16-bit load (`addr` even), not recorded.
    pub fn peek_u16(&self, addr: u64) -> u16 {
        let r = self.region(addr, 2).expect("peek_u16 outside RAM");
        assert!(addr.is_multiple_of(2));
        u16::from_le(r.load(addr - r.base))
    }

    /// Driver-side single-copy-atomic 16-bit store (`addr` even), not recorded.
    pub fn poke_u16(&self, addr: u64, v: u16) {
        let r = self.region(addr, 2).expect("poke_u16 outside RAM");
        assert!(addr.is_multiple_of(2));
        r.word_mut(addr - r.base)
            .store(v.to_le(), Ordering::Relaxed);
    }

    /// Driver-side 32-bit read (two 16-bit halves; not atomic).
    pub fn peek_u32(&self, addr: u64) -> u32 {
        u32::from_le_bytes(self.peek(addr, 4).try_into().unwrap())
    }

    /// Driver-side fill.
    pub fn fill(&self, addr: u64, len: usize, v: u8) {
        self.poke(addr, &vec![v; len]);
    }
}

impl GuestMemory for TestMemory {
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError> {
        let (a, len) = (addr.0, buf.len() as u64);
        self.record(AccessKind::Read, a, len);
        self.each_byte(a, len, |r, at, i| buf[i] = self.byte(r, at))?;
        self.after_read(a, len);
        Ok(())
    }

    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError> {
        let (a, len) = (addr.0, buf.len() as u64);
        self.record(AccessKind::Write, a, len);
        self.each_byte(a, len, |r, at, i| self.set_byte(r, at, buf[i]))
    }

    fn load_u16(&self, addr: GuestAddress) -> Result<u16, MemoryError> {
        self.record(AccessKind::Load16, addr.0, 2);
        if !addr.0.is_multiple_of(2) {
            return Err(MemoryError::Misaligned { addr: addr.0 });
        }
        let r = self.region(addr.0, 2)?;
        let v = u16::from_le(r.load(addr.0 - r.base));
        self.after_read(addr.0, 2);
        Ok(v)
    }

    fn store_u16(&self, addr: GuestAddress, value: u16) -> Result<(), MemoryError> {
        self.record(AccessKind::Store16, addr.0, 2);
        if !addr.0.is_multiple_of(2) {
            return Err(MemoryError::Misaligned { addr: addr.0 });
        }
        let r = self.region(addr.0, 2)?;
        r.word_mut(addr.0 - r.base)
            .store(value.to_le(), Ordering::Relaxed);
        Ok(())
    }

    fn check_range(&self, addr: GuestAddress, len: u64) -> Result<(), MemoryError> {
        let end = addr
            .0
            .checked_add(len)
            .ok_or(MemoryError::Overflow { addr: addr.0, len })?;
        if len == 0 {
            return Ok(());
        }
        // Adjacent regions form one range: walk across seams.
        let mut cur = addr.0;
        while cur < end {
            let r = self
                .regions
                .iter()
                .find(|r| r.base <= cur && cur < r.base + r.len())
                .ok_or(MemoryError::OutOfRange { addr: addr.0, len })?;
            cur = r.base + r.len();
        }
        Ok(())
    }
}
