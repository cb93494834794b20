//! Byte-level access to chain buffers (`virtq::io`): every framing of a payload reads and writes
//! back the same bytes (SPLIT-10: devices must not assume a framing), headers shorter than the
//! device struct fail cleanly (H21), the used length is exactly what was written (VQ-03,
//! SPLIT-40..42: never over-reported, 0 for a read-only chain),
//! buffers crossing a RAM-region seam are split (H7e), and a malformed chain met by the lazy
//! walk is an error, never a short chain (H3).

use std::ptr::NonNull;

use heapless::Vec as HVec;
use proptest::prelude::*;
use virtq::io::{ChainReader, ChainWriter, IoError, Reader, Writer, split_descriptors};
use virtq::memory::{HostRegion, RegionTable};
use virtq::{
    ChainError, Descriptor, DescriptorChain, Features, GuestAddress, GuestMemory, MemoryError,
    Queue,
};
use virtq_testkit::{AccessKind, SplitDriver, TestMemory, desc_flags};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `struct virtio_blk_req` header (§5.2.6): 16 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct BlkHdr {
    type_: U32,
    reserved: U32,
    sector: U64,
}

const QSIZE: u16 = 16;
const BUF_BASE: u64 = 0x4_0000;
const POISON: u8 = 0xEE;

fn payload() -> Vec<u8> {
    (0..64u32)
        .map(|i| (i as u8).wrapping_mul(37).wrapping_add(11))
        .collect()
}

/// Buffers for `lens`, each at its own slightly misaligned address with a poisoned gap after it.
fn place(lens: &[u32], writable: bool, base: u64) -> Vec<(u64, u32, bool)> {
    lens.iter()
        .enumerate()
        .map(|(i, &l)| (base + 0x100 * i as u64 + (i as u64 % 3), l, writable))
        .collect()
}

/// Split `data` over `bufs` in guest memory (driver side).
fn poke_split(mem: &TestMemory, bufs: &[(u64, u32, bool)], data: &[u8]) {
    let mut at = 0;
    for &(addr, len, _) in bufs {
        mem.poke(addr, &data[at..at + len as usize]);
        at += len as usize;
    }
    assert_eq!(at, data.len());
}

/// Poison each buffer of `bufs` and the byte after it.
fn poison(mem: &TestMemory, bufs: &[(u64, u32, bool)]) {
    for &(addr, len, _) in bufs {
        mem.fill(addr, len as usize + 1, POISON);
    }
}

/// Gather the bytes of `bufs` from guest memory and check the byte after each is untouched.
fn peek_split(mem: &TestMemory, bufs: &[(u64, u32, bool)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(addr, len, _) in bufs {
        out.extend(mem.peek(addr, len as usize));
        assert_eq!(
            mem.peek(addr + u64::from(len), 1),
            [POISON],
            "write past a buffer"
        );
    }
    out
}

struct Rig<'m> {
    mem: &'m TestMemory,
    drv: SplitDriver<'m>,
    q: Queue,
}

impl<'m> Rig<'m> {
    fn new(mem: &'m TestMemory, features: Features) -> Self {
        let drv = SplitDriver::standard(mem, QSIZE);
        let q = drv.queue(QSIZE, features);
        Self { mem, drv, q }
    }

    /// Publish `bufs` as one chain, let the device serve it with `serve` (which returns the used
    /// length), complete it, and return the used length the driver sees.
    fn run(
        &mut self,
        bufs: &[(u64, u32, bool)],
        serve: impl FnOnce(&TestMemory, &DescriptorChain) -> u32,
    ) -> u32 {
        let head = self.drv.add_chain(bufs).expect("free descriptors");
        let chain = self.q.pop_avail(self.mem).unwrap().expect("a chain");
        assert_eq!(chain.head_index(), head);
        let len = serve(self.mem, &chain);
        self.q.push_used(self.mem, head, len).unwrap();
        let (id, used_len) = self.drv.pop_used().expect("a used element");
        assert_eq!(id, u32::from(head));
        used_len
    }
}

fn copy(mem: &TestMemory, chain: &DescriptorChain) -> HVec<Descriptor, 32> {
    let mut v = HVec::new();
    chain.copy_into(mem, &mut v).unwrap();
    v
}

/// Descriptor-length lists of 1..=8 entries summing to 64: every composition into at most 3
/// parts, and for 4..=8 parts every choice of cut points (with repetition, so zero-length
/// descriptors appear anywhere) from a set that includes the header boundary ±1 and the ends.
fn compositions() -> Vec<Vec<u32>> {
    let mut out = vec![vec![64]];
    for a in 0..=64 {
        out.push(vec![a, 64 - a]);
        for b in a..=64 {
            out.push(vec![a, b - a, 64 - b]);
        }
    }
    const CUTS: [u32; 11] = [0, 1, 3, 8, 15, 16, 17, 33, 48, 63, 64];
    fn rec(k: usize, from: usize, cuts: &mut Vec<u32>, out: &mut Vec<Vec<u32>>) {
        if cuts.len() == k {
            let mut lens = Vec::with_capacity(k + 1);
            let mut prev = 0;
            for &c in cuts.iter() {
                lens.push(c - prev);
                prev = c;
            }
            lens.push(64 - prev);
            out.push(lens);
            return;
        }
        for (i, &c) in CUTS.iter().enumerate().skip(from) {
            cuts.push(c);
            rec(k, i, cuts, out);
            cuts.pop();
        }
    }
    for parts in 4..=8 {
        rec(parts - 1, 0, &mut Vec::new(), &mut out);
    }
    out
}

fn hdr_of(p: &[u8]) -> BlkHdr {
    BlkHdr::read_from_bytes(&p[..16]).unwrap()
}

/// SPLIT-10 (reading side), plus SPLIT-42: a read-only chain's used length is 0.
#[test]
fn every_split_of_a_64_byte_payload_reads_back() {
    let mem = TestMemory::new(&[(0, 0x10_0000)]);
    let mut rig = Rig::new(&mem, Features::empty());
    let p = payload();
    let comps = compositions();
    assert!(comps.len() > 20_000, "{} compositions", comps.len());
    let (mut straddled, mut with_zero) = (0, 0);
    for lens in &comps {
        // A descriptor boundary strictly inside the 16-byte header: it straddles.
        let straddles = lens
            .iter()
            .scan(0, |at, &l| {
                *at += l;
                Some(*at)
            })
            .any(|cut| (1..16).contains(&cut));
        straddled += usize::from(straddles);
        with_zero += usize::from(lens.contains(&0));
        let bufs = place(lens, false, BUF_BASE);
        poke_split(&mem, &bufs, &p);
        let used = rig.run(&bufs, |mem, chain| {
            // Copied form: a typed header that may straddle, then the rest in one call.
            let descs = copy(mem, chain);
            assert_eq!(descs.len(), lens.iter().filter(|&&l| l > 0).count());
            let (mut r, w) = split_descriptors(mem, &descs);
            assert_eq!(r.remaining(), 64);
            assert_eq!(r.read_obj::<BlkHdr>().unwrap(), hdr_of(&p), "{lens:?}");
            assert_eq!((r.bytes_read(), r.remaining()), (16, 48));
            let mut rest = [0u8; 48];
            r.read_exact(&mut rest).unwrap();
            assert_eq!(&rest[..], &p[16..], "{lens:?}");
            assert_eq!(r.read(&mut [0u8; 4]).unwrap(), 0);
            assert_eq!(w.remaining(), 0);

            // Lazy form with a 4-descriptor window: the header and longer reads stream.
            let mut lr: ChainReader<'_, TestMemory, 4> = ChainReader::new(mem, chain);
            assert_eq!(lr.read_obj::<BlkHdr>().unwrap(), hdr_of(&p), "{lens:?}");
            let mut got = hdr_of(&p).as_bytes().to_vec();
            let mut chunk = [0u8; 5];
            loop {
                let n = lr.read(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&chunk[..n]);
            }
            assert_eq!(got, p, "{lens:?}");
            assert_eq!(lr.bytes_read(), 64);
            // A read-only chain: the writer has nothing and reports 0.
            let mut lw = lr.into_writer();
            assert_eq!(lw.write(&[1, 2, 3]).unwrap(), 0);
            assert_eq!(
                lw.write_all(&[1]),
                Err(IoError::ShortBuffer {
                    requested: 1,
                    available: 0
                })
            );
            lw.finish().unwrap()
        });
        assert_eq!(used, 0);
    }
    assert!(
        straddled > 1000 && with_zero > 1000,
        "{straddled} {with_zero}"
    );
}

/// SPLIT-10 (writing side), SPLIT-40: the used length covers the bytes written from the start
/// of the writable part.
#[test]
fn every_split_of_a_64_byte_payload_writes_back() {
    let mem = TestMemory::new(&[(0, 0x10_0000)]);
    let mut rig = Rig::new(&mem, Features::empty());
    let p = payload();
    for lens in &compositions() {
        let bufs = place(lens, true, BUF_BASE);
        // Copied form: typed header, then the rest.
        poison(&mem, &bufs);
        let used = rig.run(&bufs, |mem, chain| {
            let descs = copy(mem, chain);
            let mut w = Writer::new(mem, &descs);
            assert_eq!(w.remaining(), 64);
            w.write_obj(&hdr_of(&p)).unwrap();
            assert_eq!((w.bytes_written(), w.remaining()), (16, 48));
            w.write_all(&p[16..]).unwrap();
            assert_eq!(w.write(&[0xAB]).unwrap(), 0);
            assert_eq!(Reader::new(mem, &descs).remaining(), 0);
            w.bytes_written()
        });
        assert_eq!(used, 64);
        assert_eq!(peek_split(&mem, &bufs), p, "{lens:?}");

        // Lazy form, window of 4: header, then 5-byte pieces.
        poison(&mem, &bufs);
        let used = rig.run(&bufs, |mem, chain| {
            let mut w: ChainWriter<'_, TestMemory, 4> = ChainWriter::new(mem, chain);
            w.write_obj(&hdr_of(&p)).unwrap();
            for piece in p[16..].chunks(5) {
                assert_eq!(w.write(piece).unwrap(), piece.len());
            }
            assert_eq!(w.write(&[0xAB]).unwrap(), 0);
            w.finish().unwrap()
        });
        assert_eq!(used, 64);
        assert_eq!(peek_split(&mem, &bufs), p, "{lens:?}");
    }
}

#[test]
fn mixed_chains_hand_the_walk_from_reader_to_writer() {
    let mem = TestMemory::new(&[(0, 0x10_0000)]);
    let mut rig = Rig::new(&mem, Features::empty());
    let p = payload();
    let out: Vec<u8> = p.iter().rev().copied().collect();
    let comps = compositions();
    // Pair read framings with write framings (a stride through the list keeps it quick).
    for (i, rl) in comps.iter().enumerate().step_by(97) {
        let wl = &comps[(i * 7919) % comps.len()];
        let rb = place(rl, false, BUF_BASE);
        let wb = place(wl, true, BUF_BASE + 0x1000);
        let all: Vec<_> = rb.iter().chain(wb.iter()).copied().collect();
        if all.len() > usize::from(QSIZE) {
            continue;
        }
        poison(&mem, &all);
        poke_split(&mem, &rb, &p);
        let used = rig.run(&all, |mem, chain| {
            // Lazy: read only the header, hand over, write everything.
            let mut r = ChainReader::<'_, TestMemory>::new(mem, chain);
            assert_eq!(r.read_obj::<BlkHdr>().unwrap(), hdr_of(&p));
            let mut w = r.into_writer();
            w.write_all(&out).unwrap();
            w.finish().unwrap()
        });
        assert_eq!(used, 64);
        assert_eq!(peek_split(&mem, &wb), out, "{rl:?} {wl:?}");

        poison(&mem, &wb);
        let used = rig.run(&all, |mem, chain| {
            let descs = copy(mem, chain);
            let (mut r, mut w) = split_descriptors(mem, &descs);
            let mut back = [0u8; 64];
            r.read_exact(&mut back).unwrap();
            assert_eq!(&back[..], &p[..]);
            assert_eq!(w.remaining(), 64);
            w.write_all(&out[..40]).unwrap();
            w.bytes_written()
        });
        assert_eq!(used, 40);
        assert_eq!(peek_split(&mem, &wb)[..40], out[..40]);
    }
}

#[test]
fn lazy_walk_fetches_each_descriptor_once_and_touches_only_buffers() {
    let mem = TestMemory::new(&[(0, 0x10_0000)]);
    let mut rig = Rig::new(&mem, Features::empty());
    let p = payload();
    let rb = place(&[5, 0, 30, 29], false, BUF_BASE);
    let wb = place(&[7, 0, 57], true, BUF_BASE + 0x1000);
    let all: Vec<_> = rb.iter().chain(wb.iter()).copied().collect();
    poke_split(&mem, &rb, &p);
    mem.fill(BUF_BASE + 0x1000, 0x1000, POISON);
    let desc_table = rig.drv.desc;
    let mut log = Vec::new();
    let used = rig.run(&all, |mem, chain| {
        mem.start_recording();
        let mut r: ChainReader<'_, TestMemory, 2> = ChainReader::new(mem, chain);
        let mut back = [0u8; 64];
        r.read_exact(&mut back).unwrap();
        assert_eq!(&back[..], &p[..]);
        let mut w = r.into_writer();
        w.write_all(&p).unwrap();
        let n = w.finish().unwrap();
        log = mem.take_log();
        n
    });
    assert_eq!(used, 64);
    // Every descriptor of the chain (the add_chain allocation is 0..7 on a fresh queue) is read
    // exactly once, as one 16-byte read.
    for i in 0..all.len() as u64 {
        let slot = desc_table + 16 * i;
        let reads: Vec<_> = log.iter().filter(|a| a.overlaps(slot, 16)).collect();
        assert_eq!(reads.len(), 1, "descriptor {i}: {reads:?}");
        assert_eq!(
            (reads[0].kind, reads[0].addr, reads[0].len),
            (AccessKind::Read, slot, 16)
        );
    }
    let inside = |bufs: &[(u64, u32, bool)], addr: u64, len: u64| {
        bufs.iter()
            .any(|&(a, l, _)| a <= addr && addr + len <= a + u64::from(l))
    };
    for a in log.iter().filter(|a| a.addr >= BUF_BASE) {
        match a.kind {
            AccessKind::Read => assert!(inside(&rb, a.addr, a.len), "{a:?}"),
            AccessKind::Write => assert!(inside(&wb, a.addr, a.len), "{a:?}"),
            _ => panic!("index access to a buffer: {a:?}"),
        }
    }
    assert_eq!(peek_split(&mem, &wb[..1]), p[..7]);
}

#[test]
fn lazy_reader_over_an_indirect_table() {
    let mem = TestMemory::new(&[(0, 0x10_0000)]);
    let mut rig = Rig::new(&mem, Features::INDIRECT_DESC);
    let p = payload();
    let rb = place(&[3, 13, 0, 48], false, BUF_BASE);
    let wb = place(&[1], true, BUF_BASE + 0x1000);
    poke_split(&mem, &rb, &p);
    let all: Vec<_> = rb.iter().chain(wb.iter()).copied().collect();
    let head = rig.drv.add_indirect_chain(0x8_0000, &all).unwrap();
    let chain = rig.q.pop_avail(&mem).unwrap().unwrap();
    let mut r = ChainReader::<'_, TestMemory>::new(&mem, &chain);
    assert_eq!(r.read_obj::<BlkHdr>().unwrap(), hdr_of(&p));
    r.skip(40).unwrap();
    let mut tail = [0u8; 8];
    r.read_exact(&mut tail).unwrap();
    assert_eq!(&tail[..], &p[56..]);
    let mut w = r.into_writer();
    w.write_obj(&0u8).unwrap();
    let n = w.finish().unwrap();
    rig.q.push_used(&mem, head, n).unwrap();
    assert_eq!(rig.drv.pop_used(), Some((u32::from(head), 1)));
}

/// H21: a virtio-blk header in descriptors holding only 8 bytes.
#[test]
fn short_device_header_fails_without_consuming() {
    let mem = TestMemory::new(&[(0, 0x10_0000)]);
    let mut rig = Rig::new(&mem, Features::empty());
    let p = payload();
    let short = IoError::ShortBuffer {
        requested: 16,
        available: 8,
    };
    for lens in [&[8u32][..], &[4, 4], &[1, 0, 7], &[2, 2, 2, 2]] {
        let rb = place(lens, false, BUF_BASE);
        let wb = place(&[1], true, BUF_BASE + 0x1000);
        let all: Vec<_> = rb.iter().chain(wb.iter()).copied().collect();
        poke_split(&mem, &rb, &p[..8]);
        rig.run(&all, |mem, chain| {
            // Copied form: error, position and remaining unchanged, the bytes still readable.
            let descs = copy(mem, chain);
            let mut r = Reader::new(mem, &descs);
            assert_eq!(r.read_obj::<BlkHdr>(), Err(short));
            assert_eq!((r.bytes_read(), r.remaining()), (0, 8));
            assert_eq!(
                r.skip(9),
                Err(IoError::ShortBuffer {
                    requested: 9,
                    available: 8
                })
            );
            assert_eq!((r.bytes_read(), r.remaining()), (0, 8));
            let mut eight = [0u8; 8];
            r.read_exact(&mut eight).unwrap();
            assert_eq!(&eight[..], &p[..8]);

            // Lazy form (window 16): the same, judged by bytes_read.
            let mut lr = ChainReader::<'_, TestMemory>::new(mem, chain);
            assert_eq!(lr.read_obj::<BlkHdr>(), Err(short));
            assert_eq!(lr.bytes_read(), 0);
            let mut eight = [0u8; 8];
            lr.read_exact(&mut eight).unwrap();
            assert_eq!(&eight[..], &p[..8]);
            assert_eq!(lr.read(&mut eight).unwrap(), 0);

            // A 1-descriptor window cannot see ahead: the request streams and, as documented,
            // stops after every available byte.
            let mut tiny: ChainReader<'_, TestMemory, 1> = ChainReader::new(mem, chain);
            assert_eq!(tiny.read_obj::<BlkHdr>(), Err(short));
            assert_eq!(tiny.bytes_read(), 8);

            // Writer side: a 16-byte response into 1 writable byte is refused before any store.
            mem.fill(wb[0].0, 2, POISON);
            let mut w = Writer::new(mem, &descs);
            let refused = IoError::ShortBuffer {
                requested: 16,
                available: 1,
            };
            assert_eq!(w.write_obj(&hdr_of(&p)), Err(refused));
            let mut lw = ChainWriter::<'_, TestMemory>::new(mem, chain);
            assert_eq!(lw.write_obj(&hdr_of(&p)), Err(refused));
            assert_eq!((w.bytes_written(), lw.bytes_written()), (0, 0));
            assert_eq!(mem.peek(wb[0].0, 2), [POISON; 2]);
            0
        });
    }
}

/// VQ-03, SPLIT-41 (never over-report), SPLIT-42 (0 when nothing was written or nothing is
/// writable).
#[test]
fn used_length_is_exactly_what_was_written() {
    let mem = TestMemory::new(&[(0, 0x10_0000)]);
    let mut rig = Rig::new(&mem, Features::empty());
    let p = payload();
    let rb = place(&[16], false, BUF_BASE);
    let wb = place(&[10, 20, 34], true, BUF_BASE + 0x1000);
    let all: Vec<_> = rb.iter().chain(wb.iter()).copied().collect();
    // (bytes to write in pieces of 7 via write(), expected used length)
    for (amount, expect) in [
        (0usize, 0u32),
        (1, 1),
        (30, 30),
        (63, 63),
        (64, 64),
        (200, 64),
    ] {
        let data: Vec<u8> = p.iter().cycle().take(amount).copied().collect();
        mem.fill(BUF_BASE + 0x1000, 0x1000, POISON);
        let used = rig.run(&all, |mem, chain| {
            let descs = copy(mem, chain);
            let mut w = Writer::new(mem, &descs);
            let mut sent = 0;
            for piece in data.chunks(7) {
                sent += w.write(piece).unwrap();
            }
            assert_eq!(sent, expect as usize);
            assert_eq!(w.remaining(), 64 - expect);
            w.bytes_written()
        });
        assert_eq!(used, expect, "copied, {amount} bytes");
        assert_eq!(
            peek_split(&mem, &wb)[..expect as usize],
            data[..expect as usize]
        );

        let used = rig.run(&all, |mem, chain| {
            let mut w = ChainWriter::<'_, TestMemory>::new(mem, chain);
            let mut sent = 0;
            for piece in data.chunks(7) {
                sent += w.write(piece).unwrap();
            }
            assert_eq!(sent, expect as usize);
            w.finish().unwrap()
        });
        assert_eq!(used, expect, "lazy, {amount} bytes");
    }
    // write_all that does not fit: nothing counted, and the writer is still usable.
    let used = rig.run(&all, |mem, chain| {
        let descs = copy(mem, chain);
        let mut w = Writer::new(mem, &descs);
        w.write_all(&p[..60]).unwrap();
        assert_eq!(
            w.write_all(&p[..5]),
            Err(IoError::ShortBuffer {
                requested: 5,
                available: 4
            })
        );
        assert_eq!(w.bytes_written(), 60);
        w.write_all(&p[..4]).unwrap();
        w.bytes_written()
    });
    assert_eq!(used, 64);
    // A read-only chain reports 0 in both forms.
    let used = rig.run(&rb, |mem, chain| {
        let descs = copy(mem, chain);
        let (_, mut w) = split_descriptors(mem, &descs);
        assert_eq!(w.write(&p).unwrap(), 0);
        let mut lw = ChainWriter::<'_, TestMemory>::new(mem, chain);
        assert_eq!(lw.write(&p).unwrap(), 0);
        assert_eq!(lw.finish().unwrap(), 0);
        w.bytes_written()
    });
    assert_eq!(used, 0);
}

/// H7e on test memory: three adjacent regions; a readable buffer crosses the seam at 0x10000,
/// the writable one the seam at 0x20000.
#[test]
fn region_seam_buffers_on_test_memory() {
    let mem = TestMemory::new(&[(0, 0x1_0000), (0x1_0000, 0x1_0000), (0x2_0000, 0x1_0000)]);
    let mut rig = Rig::new(&mem, Features::empty());
    let p = payload();
    let rb = [(0xFFF9, 16, false), (0xFF00, 48, false)];
    let wb = [(0x1_FFE1, 64, true)];
    let all = [rb[0], rb[1], wb[0]];
    mem.fill(0x1_FFD0, 0x80, POISON);
    poke_split(&mem, &rb, &p);
    let used = rig.run(&all, |mem, chain| {
        let mut r = ChainReader::<'_, TestMemory>::new(mem, chain);
        assert_eq!(r.read_obj::<BlkHdr>().unwrap(), hdr_of(&p));
        let mut rest = [0u8; 48];
        r.read_exact(&mut rest).unwrap();
        assert_eq!(&rest[..], &p[16..]);
        let mut w = r.into_writer();
        w.write_all(&p).unwrap();
        w.finish().unwrap()
    });
    assert_eq!(used, 64);
    assert_eq!(mem.peek(0x1_FFE1, 64), p);
    assert_eq!(mem.peek(0x1_FFE0, 1), [POISON]);
    assert_eq!(mem.peek(0x1_FFE1 + 64, 1), [POISON]);
}

/// A guest RAM map of three regions adjacent in guest-physical space but backed by separate
/// host allocations: a buffer crossing a seam must be copied in two parts.
#[test]
fn region_seam_buffers_on_a_region_table() {
    const REGION: usize = 0x2000;
    let mut low = vec![0u64; REGION / 8];
    let mut mid = vec![0u64; REGION / 8];
    let mut high = vec![0u64; REGION / 8];
    let (seam1, seam2) = (REGION as u64, 2 * REGION as u64);
    let p = payload();
    {
        let mut mem: RegionTable<3> = RegionTable::new();
        for (buf, base) in [(&mut low, 0u64), (&mut mid, seam1), (&mut high, seam2)] {
            let host = NonNull::new(buf.as_mut_ptr().cast::<u8>()).unwrap();
            // SAFETY: the three buffers outlive `mem` (this block) and are not otherwise
            // accessed while it exists.
            let region = unsafe { HostRegion::new(GuestAddress(base), host, REGION) }.unwrap();
            mem.insert(region).unwrap();
        }
        // Driver side by hand: queue of 4 at 0x100/0x200/0x300; readable 40 bytes crossing
        // the first seam, then writable 24 + 40 bytes, the second crossing the other seam.
        let put_desc = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&addr.to_le_bytes());
            b[8..12].copy_from_slice(&len.to_le_bytes());
            b[12..14].copy_from_slice(&flags.to_le_bytes());
            b[14..].copy_from_slice(&next.to_le_bytes());
            mem.write(GuestAddress(0x100 + 16 * i), &b).unwrap();
        };
        use desc_flags::{N, W};
        put_desc(0, seam1 - 20, 40, N, 1);
        put_desc(1, seam1 - 0x100, 24, N | W, 2);
        put_desc(2, seam2 - 13, 40, W, 0);
        mem.write(GuestAddress(seam1 - 20), &p[..40]).unwrap();
        mem.store_u16(GuestAddress(0x204), 0).unwrap();
        mem.store_u16(GuestAddress(0x202), 1).unwrap();
        let mut q = Queue::new(4);
        q.desc_table_addr = GuestAddress(0x100);
        q.avail_ring_addr = GuestAddress(0x200);
        q.used_ring_addr = GuestAddress(0x300);
        q.ready = true;
        let chain = q.pop_avail(&mem).unwrap().unwrap();

        let mut descs: HVec<Descriptor, 4> = HVec::new();
        chain.copy_into(&mem, &mut descs).unwrap();
        let (mut r, mut w) = split_descriptors(&mem, &descs);
        let mut back = [0u8; 40];
        r.read_exact(&mut back).unwrap();
        assert_eq!(&back[..], &p[..40]);
        w.write_all(&p).unwrap();
        assert_eq!(w.bytes_written(), 64);

        let mut lr = ChainReader::<'_, RegionTable<3>>::new(&mem, &chain);
        let mut back = [0u8; 40];
        lr.read_exact(&mut back).unwrap();
        assert_eq!(&back[..], &p[..40]);
        let mut lw = lr.into_writer();
        lw.write_all(&p).unwrap();
        assert_eq!(lw.finish().unwrap(), 64);
        q.push_used(&mem, chain.head_index(), w.bytes_written())
            .unwrap();
    }
    // Host view: each seam-crossing buffer landed in two allocations.
    let bytes = |v: &[u64]| -> Vec<u8> { v.iter().flat_map(|w| w.to_ne_bytes()).collect() };
    let (lo, mi, hi) = (bytes(&low), bytes(&mid), bytes(&high));
    assert_eq!(&lo[REGION - 20..], &p[..20]);
    assert_eq!(&mi[..20], &p[20..40]);
    assert_eq!(&lo[REGION - 0x100..REGION - 0x100 + 24], &p[..24]);
    assert_eq!(&mi[REGION - 13..], &p[24..37]);
    assert_eq!(&hi[..27], &p[37..]);
    assert_eq!(hi[27], 0);
}

/// H3 met by the lazy walk: two good descriptors, then a `next` out of range.
#[test]
fn malformed_chain_is_an_error_from_the_lazy_reader_and_writer() {
    let mem = TestMemory::new(&[(0, 0x10_0000)]);
    let drv = SplitDriver::standard(&mem, QSIZE);
    let mut q = drv.queue(QSIZE, Features::empty());
    let p = payload();
    use desc_flags::{N, W};
    let bad = ChainError::NextOutOfRange { next: 200 };
    let mut drv = drv;
    for writable in [false, true] {
        let f = if writable { W } else { 0 };
        drv.set_desc(0, BUF_BASE, 8, N | f, 1);
        drv.set_desc(1, BUF_BASE + 0x100, 8, N | f, 2);
        drv.set_desc(2, BUF_BASE + 0x200, 8, N | f, 200);
        mem.poke(BUF_BASE, &p[..8]);
        mem.poke(BUF_BASE + 0x100, &p[8..16]);
        drv.publish(0);
        let chain = q.pop_avail(&mem).unwrap().unwrap();
        // The copied form refuses the whole chain.
        let mut descs: HVec<Descriptor, 8> = HVec::new();
        assert_eq!(chain.copy_into(&mem, &mut descs), Err(bad));
        assert!(descs.is_empty());

        if !writable {
            // More than the good prefix: the chain error, nothing consumed.
            let mut r = ChainReader::<'_, TestMemory>::new(&mem, &chain);
            assert_eq!(r.read_exact(&mut [0u8; 17]), Err(IoError::Chain(bad)));
            assert_eq!(r.bytes_read(), 0);
            // The good prefix is still readable; past it, the error again (never Ok(0)).
            let mut prefix = [0u8; 16];
            r.read_exact(&mut prefix).unwrap();
            assert_eq!(&prefix[..], &p[..16]);
            assert_eq!(r.read(&mut [0u8; 4]), Err(IoError::Chain(bad)));
            assert_eq!(r.skip(1), Err(IoError::Chain(bad)));
            let mut w = r.into_writer();
            assert_eq!(w.write(&[1]), Err(IoError::Chain(bad)));
            assert_eq!(w.finish(), Err(IoError::Chain(bad)));
            // A partial read returns the prefix, then the error.
            let mut r = ChainReader::<'_, TestMemory>::new(&mem, &chain);
            assert_eq!(r.read(&mut [0u8; 100]), Ok(16));
            assert_eq!(r.read(&mut [0u8; 100]), Err(IoError::Chain(bad)));
        } else {
            let mut w = ChainWriter::<'_, TestMemory>::new(&mem, &chain);
            w.write_all(&p[..4]).unwrap();
            assert_eq!(w.write_all(&p[..13]), Err(IoError::Chain(bad)));
            assert_eq!(w.bytes_written(), 4);
            assert_eq!(w.write(&p), Ok(12));
            assert_eq!(w.write(&p), Err(IoError::Chain(bad)));
            assert_eq!(w.bytes_written(), 16);
            // A writer that never needed the broken tail still reports it at finish.
            let mut w = ChainWriter::<'_, TestMemory>::new(&mem, &chain);
            w.write_all(&p[..3]).unwrap();
            assert_eq!(w.finish(), Err(IoError::Chain(bad)));
        }
        q.push_used(&mem, 0, 0).unwrap();
    }
}

/// An accessor that refuses byte copies touching one address (a page the hypervisor revoked
/// after the chain was validated); everything else goes to the test memory.
struct Faulty<'a> {
    inner: &'a TestMemory,
    bad: u64,
}

impl Faulty<'_> {
    fn refuse(&self, addr: GuestAddress, len: usize) -> Result<(), MemoryError> {
        if addr.0 <= self.bad && self.bad < addr.0 + len as u64 {
            return Err(MemoryError::OutOfRange {
                addr: addr.0,
                len: len as u64,
            });
        }
        Ok(())
    }
}

impl GuestMemory for Faulty<'_> {
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.refuse(addr, buf.len())?;
        self.inner.read(addr, buf)
    }
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError> {
        self.refuse(addr, buf.len())?;
        self.inner.write(addr, buf)
    }
    fn load_u16(&self, addr: GuestAddress) -> Result<u16, MemoryError> {
        self.inner.load_u16(addr)
    }
    fn store_u16(&self, addr: GuestAddress, value: u16) -> Result<(), MemoryError> {
        self.inner.store_u16(addr, value)
    }
    fn check_range(&self, addr: GuestAddress, len: u64) -> Result<(), MemoryError> {
        self.inner.check_range(addr, len)
    }
}

/// A memory error in the second buffer of a request: the position (and so the used length)
/// stays where it was, in both forms.
#[test]
fn memory_error_mid_request_keeps_the_position() {
    let mem = TestMemory::new(&[(0, 0x10_0000)]);
    let mut rig = Rig::new(&mem, Features::empty());
    let p = payload();
    let rb = place(&[8, 8], false, BUF_BASE);
    let wb = place(&[8, 8], true, BUF_BASE + 0x1000);
    let all: Vec<_> = rb.iter().chain(wb.iter()).copied().collect();
    poke_split(&mem, &rb, &p[..16]);
    let used = rig.run(&all, |mem, chain| {
        let bad_r = Faulty {
            inner: mem,
            bad: rb[1].0 + 3,
        };
        let bad_w = Faulty {
            inner: mem,
            bad: wb[1].0 + 3,
        };
        let descs = copy(mem, chain);
        let mut r = Reader::new(&bad_r, &descs);
        r.skip(2).unwrap();
        assert!(matches!(r.read_obj::<[u8; 12]>(), Err(IoError::Memory(_))));
        assert_eq!((r.bytes_read(), r.remaining()), (2, 14));
        let mut w = Writer::new(&bad_w, &descs);
        w.write_all(&[1, 2]).unwrap();
        assert!(matches!(w.write_all(&p[..12]), Err(IoError::Memory(_))));
        assert_eq!((w.bytes_written(), w.remaining()), (2, 14));
        w.write_all(&p[..6]).unwrap(); // still fits before the bad byte
        assert_eq!(w.bytes_written(), 8);

        let mut lr = ChainReader::<'_, Faulty<'_>>::new(&bad_r, chain);
        lr.skip(2).unwrap();
        assert!(matches!(lr.read_obj::<[u8; 12]>(), Err(IoError::Memory(_))));
        assert_eq!(lr.bytes_read(), 2);
        let mut six = [0u8; 6];
        lr.read_exact(&mut six).unwrap();
        assert_eq!(&six[..], &p[2..8]);
        let mut lw = ChainWriter::<'_, Faulty<'_>>::new(&bad_w, chain);
        lw.write_all(&[1, 2]).unwrap();
        assert!(matches!(lw.write_all(&p[..12]), Err(IoError::Memory(_))));
        assert_eq!(lw.bytes_written(), 2);
        w.bytes_written()
    });
    assert_eq!(used, 8);
}

#[test]
fn io_error_is_a_proper_error() {
    let e = IoError::Chain(ChainError::TooLong);
    assert!(std::error::Error::source(&e).is_some());
    let s = IoError::ShortBuffer {
        requested: 16,
        available: 8,
    };
    assert!(s.to_string().contains("16") && s.to_string().contains('8'));
    assert!(std::error::Error::source(&s).is_none());
    fn copy_send_sync<T: Copy + Send + Sync + 'static>() {}
    copy_send_sync::<IoError>();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Random framings of random payloads, read and written in random pieces, in both forms.
    #[test]
    fn random_framings_and_pieces(
        rlens in prop::collection::vec(0u32..40, 1..8),
        wlens in prop::collection::vec(0u32..40, 1..8),
        pieces in prop::collection::vec(1usize..24, 1..40),
    ) {
        let mem = TestMemory::new(&[(0, 0x6_0000)]);
        let mut rig = Rig::new(&mem, Features::empty());
        let rtotal: u32 = rlens.iter().sum();
        let wtotal: u32 = wlens.iter().sum();
        let data: Vec<u8> = (0..rtotal).map(|i| (i * 13 + 5) as u8).collect();
        let rb = place(&rlens, false, BUF_BASE);
        let wb = place(&wlens, true, BUF_BASE + 0x1000);
        let all: Vec<_> = rb.iter().chain(wb.iter()).copied().collect();
        poke_split(&mem, &rb, &data);
        poison(&mem, &wb);
        let mut got = Vec::new();
        let mut sent = Vec::new();
        let used = rig.run(&all, |mem, chain| {
            let mut r: ChainReader<'_, TestMemory, 3> = ChainReader::new(mem, chain);
            for &n in pieces.iter().cycle().take(64) {
                let mut buf = vec![0u8; n];
                let k = r.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..k]);
            }
            let mut w = r.into_writer();
            for (i, &n) in pieces.iter().enumerate() {
                let piece: Vec<u8> = (0..n).map(|j| (i * 31 + j) as u8).collect();
                let k = w.write(&piece).unwrap();
                sent.extend_from_slice(&piece[..k]);
            }
            w.finish().unwrap()
        });
        let expect_read = data.len().min(pieces.iter().cycle().take(64).sum());
        prop_assert_eq!(&got[..], &data[..expect_read]);
        prop_assert_eq!(used as usize, sent.len());
        prop_assert!(used <= wtotal);
        prop_assert_eq!(&peek_split(&mem, &wb)[..sent.len()], &sent[..]);

        // Copied form over the same framing: exact counts up front.
        let used2 = rig.run(&all, |mem, chain| {
            let descs = copy(mem, chain);
            let (mut r, mut w) = split_descriptors(mem, &descs);
            assert_eq!((r.remaining(), w.remaining()), (rtotal, wtotal));
            let mut back = vec![0u8; rtotal as usize];
            r.read_exact(&mut back).unwrap();
            assert_eq!(back, data);
            w.write_all(&sent).unwrap();
            w.bytes_written()
        });
        prop_assert_eq!(used2, used);
    }
}
