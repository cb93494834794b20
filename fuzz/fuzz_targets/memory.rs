//! Guest memory accessors: a `RegionTable<4>` of 1–4 `HostRegion`s (seams, holes, tiny and
//! empty regions, bases near 2⁶⁴, overlapping or overflowing regions the constructors must
//! refuse, host pointers at every offset 0…7 from an 8-byte boundary) and, over the same host
//! memory, each region as a standalone `HostRegion`, driven by read / write / check_range /
//! load_u16 / store_u16 / read_obj / write_obj at addresses near region starts, ends, seams and
//! holes, differentially against a plain byte-array model.
//!
//! Model rules (from `src/memory`'s docs and unit tests):
//! * `HostRegion::new(base, _, len)` fails with `Overflow { addr: base, len }` iff `base + len`
//!   does not fit in a u64; `RegionTable::insert` ignores an empty region and refuses one that
//!   overlaps a region already inserted with `BadRegion`.
//! * Table, `[addr, addr + len)`: `Overflow { addr, len }` if `addr + len` does not fit in a
//!   u64, else `OutOfRange { addr, len }` (the whole range) if any byte is in no region, else
//!   accepted and split at seams. A zero-length range is accepted at every address.
//! * Standalone region: accepted iff `base <= addr` and `addr - base + len <= region len`
//!   (so a zero-length range only at `base ..= base + len`); refused with `Overflow` if
//!   `addr + len` does not fit, else `OutOfRange` (the whole range).
//! * `load_u16`/`store_u16`: the table looks up the region holding `addr` (none:
//!   `OutOfRange { addr, len: 2 }`) and hands the word to it: a word across a seam is refused,
//!   not split. A region checks `[addr, addr + 2)` first (`Overflow`/`OutOfRange` as above),
//!   then `Misaligned { addr }` if `addr` or the host address of the word is odd. Words are
//!   little-endian.
//! * Reads and refused accesses change no byte; a write changes exactly its range. After
//!   every step the host backing (regions and the canary bytes around them) equals the model,
//!   and each table region read back through the table equals it.
#![no_main]

use std::ptr::NonNull;

use libfuzzer_sys::fuzz_target;
use virtq::memory::{GuestMemoryExt, HostRegion, RegionTable};
use virtq::{GuestAddress, GuestMemory, MemoryError};
use virtq_fuzz::{MemAddr, MemGap, MemInput, MemLen, MemOp, MemPlacement, MemTarget};

/// Longest copy a step makes (longer lengths are taken modulo this).
const MAX_COPY: u64 = 2048;
/// Canary bytes after each region in its backing buffer.
const TAIL: usize = 8;

/// One layout entry: its host backing, the standalone region over it, and the model bytes.
struct Entry {
    base: u64,
    len: u64,
    /// The backing buffer (8-aligned), owned through this pointer until `Drop`.
    backing: *mut [u64],
    host_off: usize,
    /// Whether the table holds this entry.
    in_table: bool,
    /// Model of the region's guest bytes.
    bytes: Vec<u8>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        // SAFETY: `backing` came from `Box::into_raw` in `setup` and is freed only here; `run`
        // drops the regions over it first.
        drop(unsafe { Box::from_raw(self.backing) });
    }
}

impl Entry {
    fn raw(&self) -> *mut u8 {
        self.backing.cast::<u8>()
    }
    fn backing_len(&self) -> usize {
        self.backing.len() * 8
    }
    fn host_addr(&self, off: usize) -> usize {
        self.raw().addr() + self.host_off + off
    }
    fn end(&self) -> u64 {
        self.base.wrapping_add(self.len)
    }
    fn holds(&self, addr: u64) -> bool {
        addr.checked_sub(self.base).is_some_and(|o| o < self.len)
    }
}

fn canary(j: usize) -> u8 {
    (j as u8) ^ 0xC3
}

fn initial(k: usize, i: usize) -> u8 {
    (i as u8).wrapping_mul(0x1d) ^ ((k as u8) << 6) ^ 0x5a
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i as u8).wrapping_mul(0x9d)) ^ (i >> 8) as u8)
        .collect()
}

fn setup(inp: &MemInput) -> (Vec<Entry>, Vec<Option<HostRegion>>, RegionTable<4>) {
    // Relative positions, then the start.
    let mut rel = Vec::new();
    let mut pos = 0u64;
    for (i, r) in inp.regions.iter().enumerate() {
        let gap = match r.gap {
            MemGap::Seam => 0,
            MemGap::Hole(v) => 1 + u64::from(v),
            MemGap::Far(v) => v,
        };
        if i > 0 || gap != 0 {
            pos = pos.wrapping_add(gap);
        }
        rel.push(pos);
        pos = pos.wrapping_add(u64::from(r.len));
    }
    let start = match inp.placement {
        MemPlacement::Low => 0x1000,
        MemPlacement::Top(slack) => (u64::MAX - u64::from(slack)).wrapping_sub(pos),
        MemPlacement::At(a) => a,
        MemPlacement::Zero => 0,
    };
    let mut entries: Vec<Entry> = Vec::new();
    let mut solos = Vec::new();
    let mut table = RegionTable::<4>::new();
    for (k, (r, p)) in inp.regions.iter().zip(rel).enumerate() {
        let base = start.wrapping_add(p);
        let len = usize::from(r.len);
        let host_off = usize::from(r.host_off & 7);
        let words = (host_off + len + TAIL).div_ceil(8);
        let backing = Box::into_raw(vec![0u64; words].into_boxed_slice());
        let mut e = Entry {
            base,
            len: len as u64,
            backing,
            host_off,
            in_table: false,
            bytes: (0..len).map(|i| initial(k, i)).collect(),
        };
        for j in 0..e.backing_len() {
            let b = match j.checked_sub(host_off) {
                Some(i) if i < len => e.bytes[i],
                _ => canary(j),
            };
            // SAFETY: `j` is inside the backing buffer, which only this entry references.
            unsafe { e.raw().add(j).write_volatile(b) };
        }
        let host = NonNull::new(e.raw().wrapping_add(host_off)).unwrap();
        let make = || {
            // SAFETY: `host .. host + len` lies in the entry's backing buffer, which lives until
            // the entry is dropped (after the table) and is otherwise accessed only through raw
            // pointers, never references.
            unsafe { HostRegion::new(GuestAddress(base), host, len) }
        };
        let want = match base.checked_add(len as u64) {
            Some(_) => Ok(()),
            None => Err(MemoryError::Overflow {
                addr: base,
                len: len as u64,
            }),
        };
        let solo = make();
        match &solo {
            Ok(solo) => {
                assert_eq!(want, Ok(()), "HostRegion::new({base:#x}, {len}) accepted");
                assert_eq!((solo.guest_base().0, solo.len()), (base, len as u64));
                assert_eq!(solo.is_empty(), len == 0);
                let overlaps = entries
                    .iter()
                    .filter(|o| o.in_table)
                    .any(|o| base < o.end() && o.base < e.end());
                let got = table.insert(make().unwrap());
                if len == 0 {
                    assert_eq!(got, Ok(()), "empty region");
                } else if overlaps {
                    assert_eq!(got, Err(MemoryError::BadRegion), "overlapping region");
                } else {
                    assert_eq!(got, Ok(()), "insert {base:#x}+{len}");
                    e.in_table = true;
                }
            }
            Err(err) => assert_eq!(Err(*err), want, "HostRegion::new({base:#x}, {len})"),
        }
        solos.push(solo.ok());
        entries.push(e);
    }
    let mut want: Vec<(u64, u64)> = entries
        .iter()
        .filter(|e| e.in_table)
        .map(|e| (e.base, e.len))
        .collect();
    want.sort();
    let got: Vec<(u64, u64)> = table
        .regions()
        .iter()
        .map(|r| (r.guest_base().0, r.len()))
        .collect();
    assert_eq!(got, want, "table regions");
    (entries, solos, table)
}

/// One piece of an accepted range: `n` bytes at offset `off` of entry `k`.
type Piece = (usize, usize, usize);

/// The model's verdict on `[addr, addr + len)` through `target`.
fn expect_range(
    entries: &[Entry],
    target: Option<usize>,
    addr: u64,
    len: u64,
) -> Result<Vec<Piece>, MemoryError> {
    let Some(end) = addr.checked_add(len) else {
        return Err(MemoryError::Overflow { addr, len });
    };
    let out = MemoryError::OutOfRange { addr, len };
    match target {
        Some(k) => {
            let e = &entries[k];
            match addr.checked_sub(e.base) {
                // A zero-length range names no byte: accepted anywhere (the trait's contract).
                _ if len == 0 => Ok(Vec::new()),
                Some(off) if off.checked_add(len).is_some_and(|x| x <= e.len) => {
                    Ok(vec![(k, off as usize, len as usize)])
                }
                _ => Err(out),
            }
        }
        None => {
            let mut pieces = Vec::new();
            let mut cur = addr;
            while cur < end {
                let k = entries
                    .iter()
                    .position(|e| e.in_table && e.holds(cur))
                    .ok_or(out)?;
                let e = &entries[k];
                let stop = end.min(e.end());
                pieces.push((k, (cur - e.base) as usize, (stop - cur) as usize));
                cur = stop;
            }
            Ok(pieces)
        }
    }
}

/// The model's verdict on a 16-bit index word at `addr` through `target`: (entry, offset).
fn expect_word(
    entries: &[Entry],
    target: Option<usize>,
    addr: u64,
) -> Result<(usize, usize), MemoryError> {
    let k = match target {
        Some(k) => k,
        None => entries
            .iter()
            .position(|e| e.in_table && e.holds(addr))
            .ok_or(MemoryError::OutOfRange { addr, len: 2 })?,
    };
    let pieces = expect_range(entries, Some(k), addr, 2)?;
    let off = pieces[0].1;
    if entries[k].host_addr(off) % 2 != 0 || addr % 2 != 0 {
        return Err(MemoryError::Misaligned { addr });
    }
    Ok((k, off))
}

fn model_read(entries: &[Entry], pieces: &[Piece]) -> Vec<u8> {
    let mut v = Vec::new();
    for &(k, off, n) in pieces {
        v.extend_from_slice(&entries[k].bytes[off..off + n]);
    }
    v
}

fn model_write(entries: &mut [Entry], pieces: &[Piece], data: &[u8]) {
    let mut at = 0;
    for &(k, off, n) in pieces {
        entries[k].bytes[off..off + n].copy_from_slice(&data[at..at + n]);
        at += n;
    }
    assert_eq!(at, data.len());
}

const OBJ_SIZES: [usize; 6] = [1, 2, 4, 8, 16, 12];

fn read_obj(m: &dyn GuestMemory, a: GuestAddress, kind: u8) -> Result<Vec<u8>, MemoryError> {
    Ok(match kind % 6 {
        0 => vec![m.read_obj::<u8>(a)?],
        1 => m.read_obj::<u16>(a)?.to_ne_bytes().to_vec(),
        2 => m.read_obj::<u32>(a)?.to_ne_bytes().to_vec(),
        3 => m.read_obj::<u64>(a)?.to_ne_bytes().to_vec(),
        4 => m.read_obj::<[u8; 16]>(a)?.to_vec(),
        _ => m
            .read_obj::<[u32; 3]>(a)?
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect(),
    })
}

fn write_obj(m: &dyn GuestMemory, a: GuestAddress, kind: u8, b: &[u8]) -> Result<(), MemoryError> {
    match kind % 6 {
        0 => m.write_obj(a, &b[0]),
        1 => m.write_obj(a, &u16::from_ne_bytes(b.try_into().unwrap())),
        2 => m.write_obj(a, &u32::from_ne_bytes(b.try_into().unwrap())),
        3 => m.write_obj(a, &u64::from_ne_bytes(b.try_into().unwrap())),
        4 => m.write_obj(a, &<[u8; 16]>::try_from(b).unwrap()),
        _ => {
            let w = |i: usize| u32::from_ne_bytes(b[4 * i..4 * i + 4].try_into().unwrap());
            m.write_obj(a, &[w(0), w(1), w(2)])
        }
    }
}

/// Host backing (region bytes and canaries) and every table region read through the table
/// equal the model.
fn check_memory(entries: &[Entry], table: &RegionTable<4>, step: usize) {
    for (k, e) in entries.iter().enumerate() {
        let mut got = vec![0u8; e.backing_len()];
        // SAFETY: the backing buffer is valid for `backing_len()` bytes; no access through the
        // regions runs concurrently, and no reference into it is formed.
        unsafe { std::ptr::copy_nonoverlapping(e.raw(), got.as_mut_ptr(), got.len()) };
        let mut want: Vec<u8> = (0..got.len()).map(canary).collect();
        let off = e.host_off;
        want[off..off + e.bytes.len()].copy_from_slice(&e.bytes);
        if got != want {
            let j = (0..got.len()).find(|&j| got[j] != want[j]).unwrap();
            let what = match j.checked_sub(off) {
                Some(i) if (i as u64) < e.len => "region byte",
                _ => "canary",
            };
            panic!(
                "step {step}: entry {k} ({:#x}+{}) host byte {j} ({what}): {:#04x}, model {:#04x}",
                e.base, e.len, got[j], want[j]
            );
        }
        if e.in_table {
            let mut buf = vec![0u8; e.len as usize];
            assert_eq!(table.read(GuestAddress(e.base), &mut buf), Ok(()));
            assert_eq!(buf, e.bytes, "step {step}: entry {k} read back");
        }
    }
}

fn run(data: &[u8]) {
    let inp = MemInput::decode(data);
    let (mut entries, solos, table) = setup(&inp);
    let n = entries.len();
    check_memory(&entries, &table, 0);
    for (step, op) in inp.ops.iter().enumerate() {
        let (t, a) = match *op {
            MemOp::Read(t, a, _)
            | MemOp::Write(t, a, _, _)
            | MemOp::Check(t, a, _)
            | MemOp::Load(t, a)
            | MemOp::Store(t, a, _)
            | MemOp::ReadObj(t, a, _)
            | MemOp::WriteObj(t, a, _, _) => (t, a),
        };
        let addr = match a {
            MemAddr::Start(i, d) => entries[usize::from(i) % n]
                .base
                .wrapping_add(d as i64 as u64),
            MemAddr::End(i, d) => entries[usize::from(i) % n]
                .end()
                .wrapping_add(d as i64 as u64),
            MemAddr::Raw(v) => v,
            MemAddr::Top(v) => u64::MAX - u64::from(v),
        };
        let len_of = |l: MemLen, copy: bool| {
            let v = match l {
                MemLen::Small(v) => u64::from(v % 81),
                MemLen::ToEnd(i, d) => entries[usize::from(i) % n]
                    .end()
                    .wrapping_add(d as i64 as u64)
                    .wrapping_sub(addr),
                MemLen::Raw(v) => v,
            };
            if copy && v > MAX_COPY {
                v % MAX_COPY
            } else {
                v
            }
        };
        let target = match t {
            MemTarget::Table => None,
            MemTarget::Solo(i) => Some(usize::from(i) % n),
        };
        let mem: &dyn GuestMemory = match target {
            None => &table,
            Some(k) => match &solos[k] {
                Some(r) => {
                    assert_eq!(r.contains(GuestAddress(addr)), entries[k].holds(addr));
                    r
                }
                None => continue,
            },
        };
        let ga = GuestAddress(addr);
        let ctx = format!("step {step}: {op:?} at {addr:#x} via {target:?}");
        match *op {
            MemOp::Read(_, _, l) => {
                let len = len_of(l, true);
                let mut buf = vec![0u8; len as usize];
                let got = mem.read(ga, &mut buf);
                match expect_range(&entries, target, addr, len) {
                    Ok(p) => {
                        assert_eq!(got, Ok(()), "{ctx} len {len}");
                        assert_eq!(buf, model_read(&entries, &p), "{ctx} len {len}");
                    }
                    Err(e) => assert_eq!(got, Err(e), "{ctx} len {len}"),
                }
            }
            MemOp::Write(_, _, l, seed) => {
                let len = len_of(l, true);
                let src = pattern(seed, len as usize);
                let got = mem.write(ga, &src);
                match expect_range(&entries, target, addr, len) {
                    Ok(p) => {
                        assert_eq!(got, Ok(()), "{ctx} len {len}");
                        model_write(&mut entries, &p, &src);
                    }
                    Err(e) => assert_eq!(got, Err(e), "{ctx} len {len}"),
                }
            }
            MemOp::Check(_, _, l) => {
                let len = len_of(l, false);
                let got = mem.check_range(ga, len);
                let want = expect_range(&entries, target, addr, len).map(|_| ());
                assert_eq!(got, want, "{ctx} len {len}");
            }
            MemOp::Load(..) => {
                let got = mem.load_u16(ga);
                let want = expect_word(&entries, target, addr).map(|(k, off)| {
                    u16::from_le_bytes([entries[k].bytes[off], entries[k].bytes[off + 1]])
                });
                assert_eq!(got, want, "{ctx}");
            }
            MemOp::Store(_, _, v) => {
                let got = mem.store_u16(ga, v);
                let want = expect_word(&entries, target, addr);
                assert_eq!(got, want.map(|_| ()), "{ctx}");
                if let Ok((k, off)) = want {
                    entries[k].bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
                }
            }
            MemOp::ReadObj(_, _, kind) => {
                let len = OBJ_SIZES[usize::from(kind % 6)] as u64;
                let got = read_obj(mem, ga, kind);
                let want =
                    expect_range(&entries, target, addr, len).map(|p| model_read(&entries, &p));
                assert_eq!(got, want, "{ctx}");
            }
            MemOp::WriteObj(_, _, kind, seed) => {
                let len = OBJ_SIZES[usize::from(kind % 6)] as u64;
                let src = pattern(seed, len as usize);
                let got = write_obj(mem, ga, kind, &src);
                match expect_range(&entries, target, addr, len) {
                    Ok(p) => {
                        assert_eq!(got, Ok(()), "{ctx}");
                        model_write(&mut entries, &p, &src);
                    }
                    Err(e) => assert_eq!(got, Err(e), "{ctx}"),
                }
            }
        }
        check_memory(&entries, &table, step + 1);
    }
    drop(table);
    drop(solos);
    drop(entries);
}

fuzz_target!(|data: &[u8]| run(data));
