//! Chain reader/writer (`virtq::io`): an arbitrary chain and an arbitrary sequence of
//! read / read_exact / skip, then write / write_all steps, through both the copied form
//! (`Reader`/`Writer` over `copy_into`) and the lazy form (`ChainReader`/`ChainWriter` with a
//! 4-descriptor window), checked against the reference model's verdict for the chain.
//!
//! Invariants:
//! * every byte read equals the byte at that position of the chain's readable stream (the
//!   model's readable buffers, concatenated); positions and `remaining` are exact;
//! * copied form: `read` returns `min(n, remaining)`, `*_exact`/`skip`/`write_all` succeed iff
//!   the bytes are there and leave the position unchanged on failure;
//! * lazy form: a malformed chain surfaces only as `IoError::Chain` with the model's error class,
//!   never as `ShortBuffer`, `Ok(0)` or a silently shorter stream; `finish` is `Ok(bytes
//!   written)` iff the model accepts the chain;
//! * the library writes only inside the chain's writable buffers, `bytes_written` never exceeds
//!   the writable total, and (for disjoint buffers) the bytes land at their stream position.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtq::io::{ChainReader, ChainWriter, IoError, Reader, Writer};
use virtq::{Descriptor, DescriptorChain, Features, GuestAddress, Queue};
use virtq_fuzz::{AVAIL, DESC, IMAGE_AT, IoInput, IoOp, USED, new_memory};
use virtq_testkit::model::{ChainClass, ModelBuffer, walk_chain};
use virtq_testkit::{Access, AccessKind, TestMemory};

fn setup(inp: &IoInput) -> (TestMemory, DescriptorChain) {
    let mem = new_memory();
    mem.poke(IMAGE_AT, &inp.image);
    mem.poke_u16(AVAIL + 4, inp.head % inp.size);
    mem.poke_u16(AVAIL + 2, 1);
    let mut q = Queue::new(inp.size);
    q.set_size(inp.size);
    q.desc_table_addr = GuestAddress(DESC);
    q.avail_ring_addr = GuestAddress(AVAIL);
    q.used_ring_addr = GuestAddress(USED);
    if inp.indirect {
        q.features = Features::INDIRECT_DESC;
    }
    q.ready = true;
    let chain = q.pop_avail(&mem).expect("pop").expect("chain");
    (mem, chain)
}

fn overlaps(a: u64, al: u64, b: u64, bl: u64) -> bool {
    a < b.saturating_add(bl) && b < a.saturating_add(al)
}

/// Writes must lie inside one writable buffer.
fn check_writes(log: &[Access], writable: &[ModelBuffer]) {
    for a in log.iter().filter(|a| a.kind != AccessKind::Read) {
        assert_eq!(a.kind, AccessKind::Write, "unexpected access {a:?}");
        assert!(
            writable
                .iter()
                .any(|w| w.addr <= a.addr && a.addr + a.len <= w.addr + u64::from(w.len)),
            "write {a:?} outside the writable buffers {writable:?}"
        );
    }
}

/// The bytes at writable-stream positions `[from, from + n)` as the guest sees them.
fn peek_stream(mem: &TestMemory, writable: &[ModelBuffer], from: usize, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    for w in writable {
        let len = w.len as usize;
        for i in 0..len {
            if pos + i >= from && pos + i < from + n {
                out.push(mem.peek(w.addr + i as u64, 1)[0]);
            }
        }
        pos += len;
    }
    out
}

fn run(data: &[u8]) {
    let inp = IoInput::decode(data);
    let size = inp.size;

    // The model's verdict, and which guest addresses the walk reads (descriptors).
    let (mem0, chain0) = setup(&inp);
    mem0.start_recording();
    let v = walk_chain(&mem0, DESC, size, chain0.head_index(), inp.indirect);
    let desc_reads = mem0.take_log();
    let readable: Vec<ModelBuffer> = v.buffers.iter().copied().filter(|b| !b.writable).collect();
    let writable: Vec<ModelBuffer> = v.buffers.iter().copied().filter(|b| b.writable).collect();
    let mut stream = Vec::new();
    for b in &readable {
        stream.extend(mem0.peek(b.addr, b.len as usize));
    }
    let r_total = stream.len();
    let w_total: usize = writable.iter().map(|b| b.len as usize).sum();
    // Writes that could change a descriptor, or each other's bytes, make the expectations
    // below unknowable: then only the containment and no-panic rules are checked.
    let self_modifying = writable.iter().any(|w| {
        desc_reads
            .iter()
            .any(|d| overlaps(w.addr, u64::from(w.len), d.addr, d.len))
    });
    let disjoint = writable.iter().enumerate().all(|(i, a)| {
        writable[i + 1..]
            .iter()
            .all(|b| !overlaps(a.addr, u64::from(a.len), b.addr, u64::from(b.len)))
    });

    // Copied form, only for chains `copy_into` accepts.
    if v.error.is_none() && v.buffers.len() <= 128 {
        let (mem, chain) = setup(&inp);
        let mut descs = heapless::Vec::<Descriptor, 128>::new();
        chain
            .copy_into(&mem, &mut descs)
            .expect("model accepts the chain");
        let got: Vec<ModelBuffer> = descs.iter().map(|d| ModelBuffer::from(*d)).collect();
        assert_eq!(got, v.buffers);
        let mut reader = Reader::new(&mem, &descs);
        let mut pos = 0usize;
        let mut ops = inp.ops.iter();
        for op in ops.by_ref() {
            let left = r_total - pos;
            match *op {
                IoOp::Read(n) => {
                    let mut buf = vec![0u8; usize::from(n)];
                    let k = reader.read(&mut buf).expect("read");
                    assert_eq!(k, usize::from(n).min(left));
                    assert_eq!(&buf[..k], &stream[pos..pos + k]);
                    pos += k;
                }
                IoOp::ReadExact(n) | IoOp::Skip(n) => {
                    let n = usize::from(n);
                    let mut buf = vec![0u8; n];
                    let r = if matches!(op, IoOp::Skip(_)) {
                        reader.skip(n)
                    } else {
                        reader.read_exact(&mut buf)
                    };
                    if n <= left {
                        r.expect("enough readable bytes");
                        if !matches!(op, IoOp::Skip(_)) {
                            assert_eq!(&buf[..], &stream[pos..pos + n]);
                        }
                        pos += n;
                    } else {
                        assert_eq!(
                            r,
                            Err(IoError::ShortBuffer {
                                requested: n,
                                available: left as u32
                            })
                        );
                    }
                }
                _ => break,
            }
            assert_eq!(reader.bytes_read() as usize, pos);
            assert_eq!(reader.remaining() as usize, r_total - pos);
        }
        let mut writer = Writer::new(&mem, &descs);
        let mut wpos = 0usize;
        let mut expect: Vec<Option<u8>> = vec![None; w_total];
        mem.start_recording();
        for op in ops {
            let left = w_total - wpos;
            match *op {
                IoOp::Write(n, b) => {
                    let k = writer.write(&vec![b; usize::from(n)]).expect("write");
                    assert_eq!(k, usize::from(n).min(left));
                    expect[wpos..wpos + k].fill(Some(b));
                    wpos += k;
                }
                IoOp::WriteAll(n, b) => {
                    let n = usize::from(n);
                    let r = writer.write_all(&vec![b; n]);
                    if n <= left {
                        r.expect("enough writable bytes");
                        expect[wpos..wpos + n].fill(Some(b));
                        wpos += n;
                    } else {
                        assert!(matches!(r, Err(IoError::ShortBuffer { .. })), "{r:?}");
                    }
                }
                _ => {}
            }
            assert_eq!(writer.bytes_written() as usize, wpos);
            assert_eq!(writer.remaining() as usize, w_total - wpos);
        }
        check_writes(&mem.take_log(), &writable);
        if disjoint {
            for (i, e) in expect.iter().enumerate() {
                if let Some(b) = e {
                    assert_eq!(peek_stream(&mem, &writable, i, 1), vec![*b], "byte {i}");
                }
            }
        }
    }

    // Lazy form, for every chain.
    let (mem, chain) = setup(&inp);
    let err = v.error;
    // The readable part is known to have ended if the chain is fine or a writable buffer came
    // before the error.
    let readable_complete = err.is_none() || !writable.is_empty();
    let class = |e: &IoError| match e {
        IoError::Chain(c) => Some(ChainClass::of(c)),
        _ => None,
    };
    let mut reader = ChainReader::<_, 4>::new(&mem, &chain);
    let mut ops = inp.ops.iter();
    for op in ops.by_ref() {
        let pos = reader.bytes_read() as usize;
        assert!(pos <= r_total);
        let left = r_total - pos;
        let (n, r, buf) = match *op {
            IoOp::Read(n) => {
                let mut buf = vec![0u8; usize::from(n)];
                let r = reader.read(&mut buf);
                (usize::from(n), r, Some(buf))
            }
            IoOp::ReadExact(n) => {
                let mut buf = vec![0u8; usize::from(n)];
                let r = reader.read_exact(&mut buf).map(|()| usize::from(n));
                (usize::from(n), r, Some(buf))
            }
            IoOp::Skip(n) => (
                usize::from(n),
                reader.skip(usize::from(n)).map(|()| usize::from(n)),
                None,
            ),
            _ => break,
        };
        if self_modifying {
            continue;
        }
        match r {
            Ok(k) => {
                assert!(k <= n && k <= left, "read {k} of {n}, {left} left");
                if k < n {
                    assert_eq!(k, left, "short read before the end of the readable part");
                    assert!(
                        k > 0 || n == 0 || readable_complete,
                        "Ok(0) on a malformed chain"
                    );
                }
                if let Some(buf) = buf {
                    assert_eq!(&buf[..k], &stream[pos..pos + k]);
                }
                assert_eq!(reader.bytes_read() as usize, pos + k);
            }
            Err(e @ IoError::ShortBuffer { .. }) => {
                assert!(readable_complete, "{e:?} on a malformed chain ({err:?})");
                assert!(n > left);
            }
            Err(e) => {
                assert!(!readable_complete, "{e:?} on a chain the model accepts");
                assert_eq!(class(&e), err, "reader error class");
            }
        }
    }
    let mut writer: ChainWriter<'_, _, 4> = reader.into_writer();
    mem.start_recording();
    for op in ops {
        let wpos = writer.bytes_written() as usize;
        assert!(wpos <= w_total);
        let left = w_total - wpos;
        let (n, r) = match *op {
            IoOp::Write(n, b) => (usize::from(n), writer.write(&vec![b; usize::from(n)])),
            IoOp::WriteAll(n, b) => (
                usize::from(n),
                writer
                    .write_all(&vec![b; usize::from(n)])
                    .map(|()| usize::from(n)),
            ),
            _ => continue,
        };
        if self_modifying {
            continue;
        }
        match r {
            Ok(k) => {
                assert!(k <= n && k <= left);
                if k < n {
                    assert_eq!(k, left, "short write before the end of the writable part");
                    assert!(
                        k > 0 || n == 0 || err.is_none(),
                        "Ok(0) on a malformed chain"
                    );
                }
                assert_eq!(writer.bytes_written() as usize, wpos + k);
            }
            Err(e @ IoError::ShortBuffer { .. }) => {
                assert!(err.is_none(), "{e:?} on a malformed chain ({err:?})");
                assert!(n > left);
            }
            Err(e) => {
                assert!(err.is_some(), "{e:?} on a chain the model accepts");
                assert_eq!(class(&e), err, "writer error class");
            }
        }
    }
    let log = mem.take_log();
    let bw = writer.bytes_written() as usize;
    assert!(bw <= w_total, "bytes_written {bw} > writable {w_total}");
    let fin = writer.finish();
    if !self_modifying {
        check_writes(&log, &writable);
        match (fin, err) {
            (Ok(n), None) => assert_eq!(n as usize, bw),
            (Err(e), Some(c)) => assert_eq!(class(&e), Some(c)),
            (f, e) => panic!("finish {f:?}, model {e:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| run(data));
