//! The split ring against the plain reference model in `virtq_testkit::model`: on every input
//! the queue and the model pop the same heads (or stop with the same ring error class), and
//! every chain walk yields the same buffers up to the same first broken rule (same error class).
//! `copy_into` agrees with the model's all-or-nothing verdict, capacity included.
//!
//! Uses the `split_queue` input format; the TOCTOU flip operations are ignored (the model and the
//! queue read memory at different moments, so a flip would make them see different bytes), and
//! so are the notification operations (the model has no opinion on them).
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtq::{DescriptorChain, Features, GuestAddress, Queue};
use virtq_fuzz::{BUFS, Config, Op, Scenario, in_ram, new_memory};
use virtq_testkit::TestMemory;
use virtq_testkit::model::{
    ChainClass, ModelBuffer, ModelRing, RingClass, copy_verdict, walk_chain,
};

fn configure(c: &Config) -> Queue {
    let mut q = Queue::new(c.size);
    q.set_size(c.size);
    q.desc_table_addr = GuestAddress(c.desc);
    q.avail_ring_addr = GuestAddress(c.avail);
    q.used_ring_addr = GuestAddress(c.used);
    if c.indirect {
        q.features = Features::INDIRECT_DESC;
    }
    q.ready = true;
    q
}

/// Library walk as (buffers, error class).
fn lib_walk(chain: &DescriptorChain, mem: &TestMemory) -> (Vec<ModelBuffer>, Option<ChainClass>) {
    let mut bufs = Vec::new();
    for d in chain.iter(mem) {
        match d {
            Ok(d) => bufs.push(ModelBuffer::from(d)),
            Err(e) => return (bufs, Some(ChainClass::of(&e))),
        }
    }
    (bufs, None)
}

fn poke(mem: &TestMemory, addr: u64, b: &[u8]) {
    if in_ram(addr, b.len() as u64) {
        mem.poke(addr, b);
    }
}

fn run(data: &[u8]) {
    let mem = new_memory();
    let sc = Scenario::decode(data, &mem);
    let mut c = sc.config;
    // The model describes a validly configured ring in guest RAM (the queue's own checks of
    // the configuration are covered by `split_queue`).
    if !(c.desc % 16 == 0
        && c.avail % 2 == 0
        && c.used % 4 == 0
        && in_ram(c.desc, 16 * u64::from(c.size))
        && in_ram(c.avail, 6 + 2 * u64::from(c.size))
        && in_ram(c.used, c.used_len())
        && c.desc != 0
        && c.avail != 0
        && c.used != 0)
    {
        c = Config::standard(c.size, c.indirect);
    }
    let size = c.size;
    let mut q = configure(&c);
    assert!(q.is_valid());
    let mut ring = ModelRing::new(size, c.avail);
    let mut held: Vec<DescriptorChain> = Vec::new();

    for op in &sc.ops {
        match op {
            Op::Pop => {
                let want = ring.pop(&mem);
                let got = q.pop_avail(&mem).map_err(|e| RingClass::of(&e));
                match (&want, &got) {
                    (Ok(Some(h)), Ok(Some(ch))) => {
                        assert_eq!(*h, ch.head_index());
                        held.push(*ch);
                    }
                    (Ok(None), Ok(None)) => {}
                    (Err(a), Err(b)) => assert_eq!(a, b),
                    _ => panic!("pop: model {want:?}, queue {got:?}"),
                }
                assert_eq!(ring.next_avail, q.next_avail_idx);
            }
            Op::Walk(i) | Op::CopyInto(i, _) => {
                if held.is_empty() {
                    continue;
                }
                let chain = held[usize::from(*i) % held.len()];
                let v = walk_chain(&mem, c.desc, size, chain.head_index(), c.indirect);
                let (bufs, err) = lib_walk(&chain, &mem);
                assert_eq!(
                    (&v.buffers, v.error),
                    (&bufs, err),
                    "walk of head {}: model vs queue",
                    chain.head_index()
                );
                if let Op::CopyInto(_, small) = op {
                    let (cap, got) = if *small {
                        let mut out = heapless::Vec::<virtq::Descriptor, 4>::new();
                        let r = chain.copy_into(&mem, &mut out);
                        (
                            4,
                            r.map(|()| out.iter().map(|d| ModelBuffer::from(*d)).collect()),
                        )
                    } else {
                        let mut out = heapless::Vec::<virtq::Descriptor, 128>::new();
                        let r = chain.copy_into(&mem, &mut out);
                        (
                            128,
                            r.map(|()| out.iter().map(|d| ModelBuffer::from(*d)).collect()),
                        )
                    };
                    let got: Result<Vec<ModelBuffer>, ChainClass> =
                        got.map_err(|e| ChainClass::of(&e));
                    assert_eq!(copy_verdict(&v, cap), got, "copy_into cap {cap}");
                }
            }
            Op::PushUsed(..) | Op::AddUsed(..) | Op::PushBogus(..) => {
                let (head, len) = match *op {
                    Op::PushBogus(h, l) => (h, l),
                    Op::PushUsed(i, l) | Op::AddUsed(i, l) => {
                        if held.is_empty() {
                            continue;
                        }
                        (held[usize::from(i) % held.len()].head_index(), l)
                    }
                    _ => unreachable!(),
                };
                let want = ring.complete(head);
                let got = q.add_used(&mem, head, len).map_err(|e| RingClass::of(&e));
                assert_eq!(want, got, "complete head {head}");
                if got.is_ok() {
                    held.retain(|ch| ch.head_index() != head);
                    if !matches!(op, Op::AddUsed(..)) {
                        q.publish_used(&mem).expect("publish to a used ring in RAM");
                    }
                }
            }
            Op::Publish => {
                let r = q.publish_used(&mem);
                assert_eq!(r.is_err(), ring.broken.is_some());
            }
            Op::Reset => {
                q.reset();
                q = configure(&c);
                ring = ModelRing::new(size, c.avail);
                held.clear();
            }
            Op::MarkBroken => {
                q.mark_broken(virtq::ChainError::TooLong);
                if ring.broken.is_none() {
                    ring.broken = Some(RingClass::Chain);
                }
            }
            Op::HasPending => {}
            Op::WriteDesc(i, d) => poke(
                &mem,
                c.desc + 16 * (u64::from(*i) % u64::from(size)),
                &d.bytes(),
            ),
            Op::WriteTableEntry(i, d) => poke(&mem, BUFS + 16 * u64::from(*i), &d.bytes()),
            Op::WriteBytes(off, b) => poke(&mem, u64::from(*off) % 0x8000, b),
            Op::PublishHead(h) => {
                let idx = mem.peek_u16(c.avail + 2);
                let slot = c.avail + 4 + 2 * (u64::from(idx) % u64::from(size));
                poke(&mem, slot, &h.to_le_bytes());
                poke(&mem, c.avail + 2, &idx.wrapping_add(1).to_le_bytes());
            }
            Op::SetAvailIdx(v) => poke(&mem, c.avail + 2, &v.to_le_bytes()),
            _ => {}
        }
        assert_eq!(usize::from(q.in_flight()), ring.in_flight.len());
        assert_eq!(q.is_broken(), ring.broken.is_some());
    }
}

fuzz_target!(|data: &[u8]| run(data));
