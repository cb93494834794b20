//! Soundness of [`HostRegion`] shared by several host threads while the guest writes the same
//! memory (issue 12 item 3; GUIDE §7 "Accessors").
//!
//! Two host threads copy into and out of overlapping ranges of ONE region (every alignment and
//! length class: odd heads and tails, whole aligned words, a 16-byte descriptor, an 8-byte used
//! element at 4 mod 8) and use its index-word accessors on the same bytes, while a third
//! thread plays the guest: 16-bit index stores and loads and single-byte writes over the same
//! area. The guest is Rust code here, so it keeps the region's rule (naturally aligned 16-bit
//! atomics; a byte is written with `fetch_and` / `fetch_or` on its word).
//!
//! Natively this checks that index words never tear; under Miri (`-Zmiri-tree-borrows`) it is
//! the proof that no access is a data race or a mixed-size atomic race. The volatile byte
//! copies `HostRegion` had before fail it under Miri ("Data race detected").

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, AtomicU16, Ordering};
use std::thread;

use virtq::memory::HostRegion;
use virtq::{GuestAddress, GuestMemory};

const BASE: u64 = 0x1000;
/// The shared area: copies, index words and guest byte writes all land here.
const AREA: u64 = 64;
/// Whole words after the area that only ever hold one of `WORDS` (index accessors only).
const INDEX: u64 = AREA;
const WORDS: [u16; 3] = [0x0000, 0xFFFF, 0xA55A];

fn rounds() -> usize {
    if cfg!(miri) { 30 } else { 20_000 }
}

/// Guest RAM as 16-bit atomics, so the guest thread can reach it from safe code; page-aligned
/// like real guest RAM, so a copy that would use wider accesses on aligned data gets to.
#[repr(C, align(4096))]
struct Ram([AtomicU16; 80]);

fn backing() -> Box<Ram> {
    Box::new(Ram(std::array::from_fn(|_| AtomicU16::new(0))))
}

/// A region over `len` bytes of `mem` starting at byte `skip` (odd `skip` gives an odd host
/// pointer).
fn region(mem: &[AtomicU16], skip: usize, len: usize) -> HostRegion {
    assert!(skip + len <= mem.len() * 2);
    let p = NonNull::new(mem.as_ptr().cast::<u8>().cast_mut().wrapping_add(skip)).unwrap();
    // SAFETY: `mem` outlives the region in every test; the memory is interior-mutable
    // (`AtomicU16`), and the only other accesses are the guest thread's, which follow the
    // region's rule: aligned 16-bit atomics on words wholly inside it, and 8-bit atomics on an
    // edge byte whose word is not.
    unsafe { HostRegion::new(GuestAddress(BASE), p, len) }.unwrap()
}

/// One host thread: copies in and out of every (offset, length) class over the area, and
/// index-word accesses on the same bytes. `salt` makes the two threads write different data.
fn host(r: &HostRegion, salt: u8) {
    let mut buf = [0u8; 24];
    for round in 0..rounds() {
        let off = (round * 5 + usize::from(salt)) % 17;
        let len = (round * 7 + usize::from(salt)) % 24 + 1;
        let a = GuestAddress(BASE + off as u64);
        buf.iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = salt ^ (i as u8));
        r.write(a, &buf[..len]).unwrap();
        r.read(a, &mut buf[..len]).unwrap();
        // The hot path's shapes: a descriptor (16 bytes at 16) and a used element (8 at 4 mod 8).
        r.read(GuestAddress(BASE + 16), &mut buf[..16]).unwrap();
        r.write(GuestAddress(BASE + 12), &buf[..8]).unwrap();
        // Index words over the copied bytes (a hostile guest can put a buffer there).
        let w = GuestAddress(BASE + (off as u64 & !1));
        let v = r.load_u16(w).unwrap();
        r.store_u16(w, v.rotate_left(3)).unwrap();
        // Index words nobody copies over: they must never tear.
        let iw = GuestAddress(BASE + INDEX + 2 * (round as u64 % 4));
        r.store_u16(iw, WORDS[(round + usize::from(salt)) % WORDS.len()])
            .unwrap();
        let seen = r.load_u16(iw).unwrap();
        assert!(WORDS.contains(&seen), "torn index word {seen:#06x}");
    }
}

/// The guest: 16-bit stores and loads of index words, and byte writes, over the same area.
fn guest(mem: &[AtomicU16], skip_words: usize) {
    for round in 0..rounds() {
        let w = skip_words + round % (AREA as usize / 2);
        mem[w].store((round as u16).wrapping_mul(0x0101), Ordering::Relaxed);
        let _ = mem[w + 1].load(Ordering::Relaxed);
        // A byte write: clear the byte, then set it, on the word that holds it.
        let (keep, set) = if round % 2 == 0 {
            (u16::from_ne_bytes([0xFF, 0]), u16::from_ne_bytes([0, 0x5A]))
        } else {
            (u16::from_ne_bytes([0, 0xFF]), u16::from_ne_bytes([0xA5, 0]))
        };
        let b = skip_words + (round * 3) % (AREA as usize / 2);
        mem[b].fetch_and(keep, Ordering::Relaxed);
        mem[b].fetch_or(set, Ordering::Relaxed);
        let iw = skip_words + (INDEX as usize / 2) + round % 4;
        mem[iw].store(WORDS[round % WORDS.len()], Ordering::Relaxed);
        let seen = mem[iw].load(Ordering::Relaxed);
        assert!(WORDS.contains(&seen), "torn index word {seen:#06x}");
    }
}

/// Two host threads and a guest thread on one region with an even host pointer.
#[test]
fn two_host_threads_and_a_guest_share_one_region() {
    let ram = backing();
    let mem = &ram.0[..];
    let r = region(mem, 0, 128);
    thread::scope(|s| {
        s.spawn(|| host(&r, 1));
        s.spawn(|| host(&r, 2));
        s.spawn(|| guest(mem, 0));
    });
    // Every index word holds one of the values written whole.
    for i in 0..4 {
        let v = r.load_u16(GuestAddress(BASE + INDEX + 2 * i)).unwrap();
        assert!(WORDS.contains(&v), "torn index word {v:#06x}");
    }
}

/// The same with an odd host pointer (and an even length): the first and last byte of the
/// region have no whole word inside it. Here index words are refused (`Misaligned`), and the copies
/// reach those two bytes with 8-bit atomics, so the guest's accesses to them are 8-bit too.
#[test]
fn odd_edged_region_is_shared_soundly() {
    let ram = backing();
    let mem = &ram.0[..];
    let len = 2 * AREA as usize;
    let r = region(mem, 1, len);
    assert!(r.load_u16(GuestAddress(BASE)).is_err(), "odd host pointer");
    let edge = |i: usize| {
        // SAFETY: byte `i` of `mem` is in bounds; it is only ever accessed with 8-bit atomics
        // (the region's rule for an edge byte), so the 8-bit view races with nothing else.
        unsafe { AtomicU8::from_ptr(mem.as_ptr().cast::<u8>().cast_mut().wrapping_add(i)) }
    };
    thread::scope(|s| {
        for salt in [1u8, 2] {
            let r = &r;
            s.spawn(move || {
                let mut buf = [0u8; 19];
                for round in 0..rounds() {
                    let off = (round * 3 + usize::from(salt)) % (len - 18);
                    let n = (round + usize::from(salt)) % 19 + 1;
                    let a = GuestAddress(BASE + off as u64);
                    r.write(a, &buf[..n]).unwrap();
                    r.read(a, &mut buf[..n]).unwrap();
                    r.write(GuestAddress(BASE + len as u64 - 3), &[salt; 3])
                        .unwrap();
                    r.read(GuestAddress(BASE), &mut buf[..3]).unwrap();
                }
            });
        }
        s.spawn(|| {
            for round in 0..rounds() {
                // Words wholly inside the region (host bytes 2..len) with 16-bit atomics, the two
                // edge bytes (host bytes 1 and len) with 8-bit ones.
                mem[1 + round % 60].store(round as u16, Ordering::Relaxed);
                edge(1).store(round as u8, Ordering::Relaxed);
                let _ = edge(len).load(Ordering::Relaxed);
                edge(len).store(round as u8, Ordering::Relaxed);
            }
        });
    });
}
