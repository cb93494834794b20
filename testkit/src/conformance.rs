//! A conformance suite for [`GuestMemory`] implementations: run it against your own accessor
//! before you trust a queue to it (GUIDE §7, the contract on [`GuestMemory`]).
//!
//! ```
//! use virtq_testkit::TestMemory;
//! use virtq_testkit::conformance::{self, Layout};
//!
//! let ram = [(0x1000, 0x100), (0x1100, 0x100), (0x4000, 0x200)];
//! let mem = TestMemory::new(&ram);
//! conformance::check(&mem, &Layout::new(&ram)).assert_ok();
//! ```
//!
//! The caller describes the guest-physical map the accessor implements as a [`Layout`]: the RAM
//! ranges; every other address is a hole. Ranges that touch (one ends where the next begins)
//! are a seam between two mappings. The suite then probes the accessor around every boundary
//! of that map (each range's start and end, address 0, the middle and the top of the address
//! space) and reports each way it breaks the contract as a [`Failure`] naming the [`Check`]:
//!
//! * range checks: `check_range`, `read` and `write` accept every range of RAM and refuse
//!   every other one with the typed error the contract names (`OutOfRange` or `Overflow`, with
//!   the requested address and length), ranges that reach or wrap past 2⁶⁴ included;
//! * zero-length ranges are accepted anywhere;
//! * 16-bit index accesses: odd addresses refused (`Misaligned`), words outside RAM refused,
//!   and `load_u16` / `store_u16` agreeing with the byte copies (little-endian);
//! * a refused `write` or `store_u16` wrote nothing, and an accepted one wrote nothing outside
//!   its range;
//! * [`check_u16_range`](GuestMemory::check_u16_range) accepts a range only if every aligned
//!   word in it loads and stores (and does not refuse a range where they all do);
//! * index words are atomic: a writer thread stores alternating 16-bit patterns while reader
//!   threads load the word and must never see a mix of two patterns.
//!
//! The suite **writes** to the RAM it probes: run it on a memory no guest is using.
//! [`check_deterministic`] runs everything but the threads (it is what Miri runs in CI).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};

use virtq::{GuestAddress, GuestMemory, MemoryError};

/// The guest-physical map an accessor implements: its RAM ranges, and whether a byte copy may
/// cross a seam between two adjacent ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    ram: Vec<(u64, u64)>,
    copies_cross_seams: bool,
}

impl Layout {
    /// RAM ranges given as `(base, len)`, in any order; everything else is a hole. Byte copies
    /// are expected to cross seams (as [`virtq::memory::RegionTable`] and
    /// [`TestMemory`](crate::TestMemory) do); see
    /// [`copies_cross_seams`](Self::copies_cross_seams).
    ///
    /// # Panics
    /// If a range is empty, ends past 2⁶⁴ − 1, or overlaps another: a set-up error.
    pub fn new(ram: &[(u64, u64)]) -> Self {
        let mut ram = ram.to_vec();
        ram.sort_unstable();
        for &(base, len) in &ram {
            assert!(len > 0, "empty RAM range at {base:#x}");
            assert!(
                base.checked_add(len).is_some(),
                "RAM range {base:#x}+{len:#x} wraps"
            );
        }
        for w in ram.windows(2) {
            assert!(
                w[0].0 + w[0].1 <= w[1].0,
                "RAM ranges overlap at {:#x}",
                w[1].0
            );
        }
        Self {
            ram,
            copies_cross_seams: true,
        }
    }

    /// Set whether a copy may cross a seam between adjacent ranges. With `false`, a range
    /// across a seam is expected to be refused as `OutOfRange` by `check_range`, `read` and
    /// `write` alike.
    pub fn copies_cross_seams(mut self, cross: bool) -> Self {
        self.copies_cross_seams = cross;
        self
    }

    /// The RAM ranges, sorted.
    pub fn ram(&self) -> &[(u64, u64)] {
        &self.ram
    }

    /// Whether byte `addr` is RAM.
    fn is_ram(&self, addr: u64) -> bool {
        self.range_of(addr).is_some()
    }

    fn range_of(&self, addr: u64) -> Option<(u64, u64)> {
        self.ram
            .iter()
            .copied()
            .find(|&(b, l)| addr >= b && addr - b < l)
    }

    /// What the contract says `check_range(addr, len)` (and a copy of `len` bytes) returns.
    fn expect(&self, addr: u64, len: u64) -> Result<(), MemoryError> {
        let end = addr
            .checked_add(len)
            .ok_or(MemoryError::Overflow { addr, len })?;
        let out = Err(MemoryError::OutOfRange { addr, len });
        let mut cur = addr;
        while cur < end {
            let Some((b, l)) = self.range_of(cur) else {
                return out;
            };
            if cur != addr && !self.copies_cross_seams {
                return out;
            }
            cur = b + l;
        }
        Ok(())
    }
}

/// One property the suite checks; each [`Failure`] names the one it broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Check {
    /// `check_range`, `read` or `write` accepted a range that is not RAM, refused one that is,
    /// or refused with the wrong error.
    RangeCheck,
    /// A range reaching or wrapping past 2⁶⁴ was accepted.
    Overflow,
    /// A range was refused, but with the wrong error: the wrong variant (`OutOfRange` for a
    /// range that overflows, say), or fields that do not name the requested range.
    WrongError,
    /// A zero-length range was refused (its address does not overflow, so it names no byte).
    ZeroLength,
    /// A 16-bit access at an odd address was accepted, or refused with an unrelated error.
    Misaligned,
    /// A refused `write` or `store_u16` changed memory.
    PartialWrite,
    /// An accepted `write` or `store_u16` changed memory outside its range.
    WriteSpill,
    /// What was written did not read back: through `read`, or between the byte copies and
    /// `load_u16` / `store_u16` (which are little-endian).
    RoundTrip,
    /// A 16-bit access to a word that is not all RAM was accepted, or refused with the wrong
    /// error.
    IndexWord,
    /// `check_u16_range` accepted a range in which some aligned word does not load or store, or
    /// a range `check_range` refuses.
    U16Range,
    /// `check_u16_range` refused a RAM range in which every aligned word loads and stores: a
    /// queue there would be refused for no reason.
    U16RangeTooStrict,
    /// A reader saw a 16-bit index word that no writer stored (a torn access).
    TornWord,
}

/// One broken property, with the probe that showed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The property.
    pub check: Check,
    /// The probe and what the accessor did.
    pub detail: String,
}

/// What a run of the suite found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Failures, at most [`Report::KEPT`] per [`Check`] (the rest are only counted).
    pub failures: Vec<Failure>,
    /// Failures per check, including those not kept.
    pub counts: BTreeMap<Check, u64>,
    /// Accessor calls made.
    pub calls: u64,
    /// Things the suite could not check on this memory (for example: no accessible index word
    /// to race on).
    pub notes: Vec<String>,
}

impl Report {
    /// Failures kept per check.
    pub const KEPT: u64 = 5;

    /// Whether no check failed.
    pub fn is_ok(&self) -> bool {
        self.counts.is_empty()
    }

    /// Whether `check` failed at least once.
    pub fn failed(&self, check: Check) -> bool {
        self.counts.contains_key(&check)
    }

    /// Panic with the report unless every check passed (for tests).
    #[track_caller]
    pub fn assert_ok(&self) {
        assert!(self.is_ok(), "GuestMemory conformance failures:\n{self}");
    }

    fn fail(&mut self, check: Check, detail: impl FnOnce() -> String) {
        let n = self.counts.entry(check).or_insert(0);
        *n += 1;
        if *n <= Self::KEPT {
            self.failures.push(Failure {
                check,
                detail: detail(),
            });
        }
    }

    fn merge(&mut self, other: Report) {
        for (check, n) in other.counts {
            *self.counts.entry(check).or_insert(0) += n;
        }
        self.failures.extend(other.failures);
        self.calls += other.calls;
        self.notes.extend(other.notes);
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} accessor calls", self.calls)?;
        for (check, n) in &self.counts {
            writeln!(f, "{check:?}: {n} failure(s)")?;
        }
        for fail in &self.failures {
            writeln!(f, "  {:?}: {}", fail.check, fail.detail)?;
        }
        for note in &self.notes {
            writeln!(f, "  note: {note}")?;
        }
        Ok(())
    }
}

/// Run the whole suite: [`check_deterministic`], then [`check_index_atomicity`] with 20 000
/// stores (200 under Miri).
pub fn check<M: GuestMemory + Sync + ?Sized>(mem: &M, layout: &Layout) -> Report {
    let mut report = check_deterministic(mem, layout);
    let stores = if cfg!(miri) { 200 } else { 20_000 };
    report.merge(check_index_atomicity(mem, layout, stores));
    report
}

/// Every check that needs no threads: ranges, holes, overflow, zero length, misalignment,
/// writes that fail or spill, round trips and `check_u16_range`.
pub fn check_deterministic<M: GuestMemory + ?Sized>(mem: &M, layout: &Layout) -> Report {
    let mut s = Suite {
        mem,
        layout,
        report: Report::default(),
    };
    // Under Miri (which runs this in CI) fewer lengths: still both parities, a word, a
    // descriptor and one byte more.
    let (copy_lens, word_lens): (&[u64], &[u64]) = if cfg!(miri) {
        (&[0, 1, 2, 3, 8, 17], &[0, 2, 6, 18])
    } else {
        (&[0, 1, 2, 3, 4, 7, 8, 16, 17], &[0, 2, 4, 6, 16, 18])
    };
    for a in s.probe_addresses() {
        for &len in copy_lens {
            s.copies(a, len);
        }
        s.huge_ranges(a);
        s.word(a);
        if a % 2 == 0 {
            for &len in word_lens {
                s.u16_range(a, len);
            }
        }
    }
    s.report
}

/// Store alternating patterns (`0x0000`, `0xFFFF`) into one index word from a writer thread,
/// at least `stores` times, until two reader threads have loaded it as often and have seen it
/// change `stores / 64` times (so the threads did overlap; at most 64 × `stores` stores), and
/// report a [`Check::TornWord`] failure for every value a reader sees that is neither.
///
/// A torn access is only seen if a reader runs while a store is half done: with spare cores
/// that is likely, on a busy machine it takes a preemption at the wrong moment. The check can
/// find tearing, never prove its absence; if the readers saw the word change less often than
/// asked, the report carries a note.
///
/// The word is the first one of RAM that `check_u16_range` accepts; if there is none, the
/// report carries a note instead.
pub fn check_index_atomicity<M: GuestMemory + Sync + ?Sized>(
    mem: &M,
    layout: &Layout,
    stores: u64,
) -> Report {
    const PATTERNS: [u16; 2] = [0x0000, 0xFFFF];
    const READERS: usize = 2;
    let mut report = Report::default();
    let Some(w) = first_index_word(mem, layout) else {
        report
            .notes
            .push("no index word that check_u16_range accepts: atomicity not checked".into());
        return report;
    };
    let addr = GuestAddress(w);
    if let Err(e) = mem.store_u16(addr, PATTERNS[0]) {
        report.fail(Check::U16Range, || {
            format!("store_u16({w:#x}) refused: {e}")
        });
        return report;
    }
    let done = AtomicBool::new(false);
    let reads = AtomicU64::new(0);
    // Changes of value the readers saw: evidence that a reader and the writer really ran at
    // the same time (on a busy machine they may not, and then nothing can tear).
    let changes = AtomicU64::new(0);
    let calls = AtomicU64::new(0);
    let start = Barrier::new(READERS + 1);
    let shared = Mutex::new(Report::default());
    let (min_reads, min_changes) = (stores.saturating_mul(READERS as u64), stores / 64);
    // Bounds on every loop: the writer stops after 64 × `stores` stores even if the readers
    // lag or never overlap with it, and a reader stops after 64 × `stores` loads even if the
    // writer never finishes.
    let max_stores = stores.saturating_mul(64).max(1);
    let max_reads = stores.saturating_mul(64).max(1);
    std::thread::scope(|s| {
        s.spawn(|| {
            start.wait();
            let mut i = 0u64;
            while i < max_stores
                && (i < stores
                    || reads.load(Ordering::Relaxed) < min_reads
                    || changes.load(Ordering::Relaxed) < min_changes)
            {
                let v = PATTERNS[usize::from(i % 2 == 1)];
                if let Err(e) = mem.store_u16(addr, v) {
                    let mut r = shared.lock().unwrap();
                    r.fail(Check::TornWord, || {
                        format!("store_u16({w:#x}) refused: {e}")
                    });
                    break;
                }
                i += 1;
                if i.is_multiple_of(63) {
                    // On a busy machine (or one core) the readers may otherwise run only after
                    // the writer; an odd period leaves either pattern in the word for them.
                    std::thread::yield_now();
                }
            }
            calls.fetch_add(i, Ordering::Relaxed);
            done.store(true, Ordering::Release);
        });
        for _ in 0..READERS {
            s.spawn(|| {
                start.wait();
                let (mut n, mut last) = (0u64, PATTERNS[0]);
                while n < max_reads {
                    let finished = done.load(Ordering::Acquire);
                    match mem.load_u16(addr) {
                        Ok(v) if PATTERNS.contains(&v) => {
                            if v != last {
                                changes.fetch_add(1, Ordering::Relaxed);
                                last = v;
                            }
                        }
                        Ok(v) => shared.lock().unwrap().fail(Check::TornWord, || {
                            format!(
                                "load_u16({w:#x}) saw {v:#06x} while 0x0000 and 0xffff were stored"
                            )
                        }),
                        Err(e) => shared
                            .lock()
                            .unwrap()
                            .fail(Check::TornWord, || format!("load_u16({w:#x}) refused: {e}")),
                    }
                    n += 1;
                    reads.fetch_add(1, Ordering::Relaxed);
                    if finished {
                        break;
                    }
                }
                calls.fetch_add(n, Ordering::Relaxed);
            });
        }
    });
    report.merge(shared.into_inner().unwrap());
    report.calls += calls.into_inner() + 1;
    let seen = changes.into_inner();
    if seen < min_changes {
        report.notes.push(format!(
            "readers saw the word change only {seen} times (wanted {min_changes}): the threads \
             barely ran at the same time, so tearing may have gone unseen"
        ));
    }
    report
}

/// The first word of RAM that `check_u16_range` accepts (probing the first few words of each
/// range and its middle).
fn first_index_word<M: GuestMemory + ?Sized>(mem: &M, layout: &Layout) -> Option<u64> {
    layout.ram().iter().find_map(|&(base, len)| {
        let mid = base + len / 2;
        [base, base + 1, base + 2, mid, mid + 1]
            .into_iter()
            .map(|a| a & !1)
            .find(|&a| {
                a >= base && a + 2 <= base + len && mem.check_u16_range(GuestAddress(a), 2).is_ok()
            })
    })
}

struct Suite<'a, M: ?Sized> {
    mem: &'a M,
    layout: &'a Layout,
    report: Report,
}

impl<M: GuestMemory + ?Sized> Suite<'_, M> {
    /// Addresses within `NEAR` bytes of every boundary of the map: 0, the middle and the top of
    /// the address space, each range's start, middle and end.
    fn probe_addresses(&self) -> Vec<u64> {
        const NEAR: u64 = if cfg!(miri) { 1 } else { 3 };
        let mut points = vec![0, 1 << 63, u64::MAX];
        for &(base, len) in self.layout.ram() {
            points.extend([base, base + len / 2, base + len]);
        }
        let mut addrs: Vec<u64> = points
            .into_iter()
            .flat_map(|p| (0..=2 * NEAR).filter_map(move |d| p.checked_add(d)?.checked_sub(NEAR)))
            .collect();
        addrs.extend([u64::MAX - 2, u64::MAX - 1, u64::MAX]);
        addrs.sort_unstable();
        addrs.dedup();
        addrs
    }

    /// Each RAM byte of `[lo, hi)` (clipped to the address space), read one byte at a time.
    fn snapshot(&mut self, lo: u64, hi: u128) -> Vec<(u64, u8)> {
        let mut out = Vec::new();
        let mut a = lo;
        while u128::from(a) < hi {
            if self.layout.is_ram(a) {
                let mut b = [0u8];
                self.report.calls += 1;
                match self.mem.read(GuestAddress(a), &mut b) {
                    Ok(()) => out.push((a, b[0])),
                    Err(e) => self.report.fail(Check::RangeCheck, || {
                        format!("read({a:#x}, 1 byte) of RAM refused: {e}")
                    }),
                }
            }
            match a.checked_add(1) {
                Some(n) => a = n,
                None => break,
            }
        }
        out
    }

    /// Classify a wrong answer to a range probe.
    fn range_check(
        len: u64,
        expected: Result<(), MemoryError>,
        got: Result<(), MemoryError>,
    ) -> Check {
        match (expected, got) {
            (Ok(()), _) if len == 0 => Check::ZeroLength,
            (Err(MemoryError::Overflow { .. }), Ok(())) => Check::Overflow,
            (Err(_), Err(_)) => Check::WrongError,
            _ => Check::RangeCheck,
        }
    }

    fn expect_eq(
        &mut self,
        what: &str,
        addr: u64,
        len: u64,
        expected: Result<(), MemoryError>,
        got: Result<(), MemoryError>,
    ) {
        if got != expected {
            let check = Self::range_check(len, expected, got);
            self.report.fail(check, || {
                format!("{what}({addr:#x}, {len:#x}) returned {got:?}, expected {expected:?}")
            });
        }
    }

    /// `check_range`, `read` and `write` of `[addr, addr + len)`, and what the write did.
    fn copies(&mut self, addr: u64, len: u64) {
        let expected = self.layout.expect(addr, len);
        let n = usize::try_from(len).unwrap_or(0);
        let (lo, hi) = (
            addr.saturating_sub(1),
            u128::from(addr) + u128::from(len) + 1,
        );
        let before = self.snapshot(lo, hi);
        self.report.calls += 3;
        let got = self.mem.check_range(GuestAddress(addr), len);
        self.expect_eq("check_range", addr, len, expected, got);
        let pattern: Vec<u8> = (0..n)
            .map(|i| {
                let at = addr.wrapping_add(i as u64);
                let old = before
                    .iter()
                    .find(|&&(a, _)| a == at)
                    .map_or(0, |&(_, b)| b);
                !old
            })
            .collect();
        let got = self.mem.write(GuestAddress(addr), &pattern);
        self.expect_eq("write", addr, len, expected, got);
        let mut back = vec![0u8; n];
        let got_read = self.mem.read(GuestAddress(addr), &mut back);
        self.expect_eq("read", addr, len, expected, got_read);
        let after = self.snapshot(lo, hi);
        let inside = |a: u64| {
            u128::from(a) >= u128::from(addr) && u128::from(a) < u128::from(addr) + u128::from(len)
        };
        if got.is_ok() {
            if got_read.is_ok() && back != pattern {
                self.report.fail(Check::RoundTrip, || {
                    format!(
                        "read({addr:#x}, {len}) after write returned {back:02x?}, wrote \
                        {pattern:02x?}"
                    )
                });
            }
            for (&(a, old), &(_, new)) in before.iter().zip(&after) {
                let want = if inside(a) { !old } else { old };
                if new != want {
                    let check = if inside(a) {
                        Check::RoundTrip
                    } else {
                        Check::WriteSpill
                    };
                    self.report.fail(check, || {
                        format!(
                            "after write({addr:#x}, {len}), byte {a:#x} is {new:#04x}, \
                            expected {want:#04x}"
                        )
                    });
                }
            }
        } else if before != after {
            self.report.fail(Check::PartialWrite, || {
                format!(
                    "write({addr:#x}, {len}) failed ({got:?}) but changed memory: \
                    {before:02x?} -> {after:02x?}"
                )
            });
        }
    }

    /// `check_range` (and `check_u16_range`) of lengths no buffer could hold: to the top of
    /// the address space, exactly to 2⁶⁴, and past it.
    fn huge_ranges(&mut self, addr: u64) {
        let to_top = u64::MAX - addr;
        let mut lens = vec![u64::MAX, to_top, 1 << 63];
        lens.extend(to_top.checked_add(1));
        lens.extend(to_top.checked_add(2));
        for len in lens {
            let expected = self.layout.expect(addr, len);
            self.report.calls += 2;
            let got = self.mem.check_range(GuestAddress(addr), len);
            self.expect_eq("check_range", addr, len, expected, got);
            if expected.is_err() && self.mem.check_u16_range(GuestAddress(addr), len).is_ok() {
                self.report.fail(Check::U16Range, || {
                    format!(
                        "check_u16_range({addr:#x}, {len:#x}) accepted; check_range \
                            must refuse it ({expected:?})"
                    )
                });
            }
        }
    }

    /// `load_u16` and `store_u16` at `addr`.
    fn word(&mut self, addr: u64) {
        let a = GuestAddress(addr);
        let (lo, hi) = (addr.saturating_sub(1), u128::from(addr) + 3);
        let before = self.snapshot(lo, hi);
        let ram =
            self.layout.is_ram(addr) && addr.checked_add(1).is_some_and(|b| self.layout.is_ram(b));
        self.report.calls += 3;
        let load = self.mem.load_u16(a);
        let old = |at: u64| {
            before
                .iter()
                .find(|&&(x, _)| x == at)
                .map_or(0, |&(_, b)| b)
        };
        let value = u16::from_le_bytes([!old(addr), !old(addr.wrapping_add(1))]);
        let store = self.mem.store_u16(a, value);
        let refusal_ok = |e: MemoryError| match e {
            MemoryError::Misaligned { addr: x } => x == addr && addr % 2 == 1,
            MemoryError::OutOfRange { addr: x, len: 2 }
            | MemoryError::Overflow { addr: x, len: 2 } => x == addr && (!ram || addr % 2 == 1),
            _ => false,
        };
        if addr % 2 == 1 || !ram {
            let check = if addr % 2 == 1 {
                Check::Misaligned
            } else {
                Check::IndexWord
            };
            for (what, r) in [("load_u16", load.map(|_| ())), ("store_u16", store)] {
                match r {
                    Err(e) if refusal_ok(e) => {}
                    _ => self.report.fail(check, || {
                        let why = if addr % 2 == 1 {
                            "odd address"
                        } else {
                            "not all RAM"
                        };
                        format!("{what}({addr:#x}) returned {r:?} ({why})")
                    }),
                }
            }
        }
        let mut works = false;
        if addr.is_multiple_of(2) && ram {
            // An even word of RAM: `check_u16_range` says whether it must work.
            let accepted = self.mem.check_u16_range(a, 2).is_ok();
            match (accepted, load, store) {
                (true, Ok(_), Ok(())) => {
                    works = true;
                    self.report.calls += 1;
                    let back = self.mem.load_u16(a);
                    if back != Ok(value) {
                        self.report.fail(Check::RoundTrip, || {
                            format!(
                                "load_u16({addr:#x}) after store_u16 {value:#06x} returned \
                                {back:?}"
                            )
                        });
                    }
                }
                (true, l, s) => self.report.fail(Check::U16Range, || {
                    format!(
                        "check_u16_range({addr:#x}, 2) accepted but load_u16 returned \
                        {l:?}, store_u16 {s:?}"
                    )
                }),
                (false, Ok(_), Ok(())) => self.report.fail(Check::U16RangeTooStrict, || {
                    format!("check_u16_range({addr:#x}, 2) refused a word that loads and stores")
                }),
                (false, _, _) => {}
            }
        }
        let after = self.snapshot(lo, hi);
        if store.is_err() {
            if before != after {
                self.report.fail(Check::PartialWrite, || {
                    format!(
                        "store_u16({addr:#x}) failed ({store:?}) but changed memory: \
                        {before:02x?} -> {after:02x?}"
                    )
                });
            }
            return;
        }
        let bytes = value.to_le_bytes();
        for (&(at, old), &(_, new)) in before.iter().zip(&after) {
            let (want, check) = match at.wrapping_sub(addr) {
                0 => (bytes[0], Check::RoundTrip),
                1 => (bytes[1], Check::RoundTrip),
                _ => (old, Check::WriteSpill),
            };
            if new != want {
                self.report.fail(check, || {
                    format!(
                        "after store_u16({addr:#x}, {value:#06x}), byte {at:#x} is \
                        {new:#04x}, expected {want:#04x} (little-endian)"
                    )
                });
            }
        }
        // And the other way: bytes written by a copy, loaded as a word.
        if works {
            let bytes = [bytes[1], bytes[0]];
            self.report.calls += 2;
            if self.mem.write(a, &bytes).is_ok() {
                let got = self.mem.load_u16(a);
                if got != Ok(u16::from_le_bytes(bytes)) {
                    self.report.fail(Check::RoundTrip, || {
                        format!(
                            "load_u16({addr:#x}) after writing bytes {bytes:02x?} returned \
                            {got:?} (little-endian)"
                        )
                    });
                }
            }
        }
    }

    /// `check_u16_range(addr, len)` against `check_range` and the words it covers.
    fn u16_range(&mut self, addr: u64, len: u64) {
        let a = GuestAddress(addr);
        self.report.calls += 2;
        let range = self.mem.check_range(a, len);
        let words = self.mem.check_u16_range(a, len);
        if range.is_err() {
            if words.is_ok() {
                self.report.fail(Check::U16Range, || {
                    format!(
                        "check_u16_range({addr:#x}, {len}) accepted a range check_range \
                        refuses ({range:?})"
                    )
                });
            }
            return;
        }
        // Every aligned word inside the range (`addr` is even; the range does not overflow).
        let mut all_work = true;
        let mut broken = None;
        let end = u128::from(addr) + u128::from(len);
        let mut w = addr;
        while u128::from(w) + 2 <= end {
            let g = GuestAddress(w);
            self.report.calls += 2;
            let ok = match self.mem.load_u16(g) {
                Ok(v) => self.mem.store_u16(g, v).is_ok(),
                Err(_) => false,
            };
            if !ok {
                all_work = false;
                broken.get_or_insert(w);
            }
            match w.checked_add(2) {
                Some(next) => w = next,
                None => break,
            }
        }
        match (words, all_work) {
            (Ok(()), false) => self.report.fail(Check::U16Range, || {
                format!(
                    "check_u16_range({addr:#x}, {len}) accepted, but the word at {:#x} does \
                    not load and store",
                    broken.unwrap_or(addr)
                )
            }),
            (Err(e), true) => self.report.fail(Check::U16RangeTooStrict, || {
                format!(
                    "check_u16_range({addr:#x}, {len}) refused ({e}) a RAM range whose \
                    words all load and store"
                )
            }),
            _ => {}
        }
    }
}
