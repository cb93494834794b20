//! The device contract for both ring formats (issue 15): one handler written against
//! `Queues` / `AnyQueue` / `AnyChain` serves split and packed rings alike, with the queues'
//! own checks (a chain completes only on the queue and format it came from) and the drain
//! budget.

use virtq::transport::{AnyChain, AnyQueue, NotifyReport, Queues};
use virtq::{Completion, Features, GuestMemory, PackedQueue, Queue, QueueError};
use virtq_testkit::{PackedDriver, SplitDriver, TestMemory};

/// One handler for both formats: echo the readable bytes of each chain into its writable
/// part, at most `budget` chains.
fn echo<M: GuestMemory + ?Sized>(
    index: u16,
    mut queues: Queues<'_>,
    mem: &M,
    budget: usize,
) -> NotifyReport {
    let Some(mut q) = queues.get(index) else {
        return NotifyReport::IDLE;
    };
    q.drain(mem, budget, |chain: &AnyChain| {
        let mut buf = [0u8; 64];
        let mut r = chain.reader(mem);
        let Ok(n) = r.read(&mut buf) else {
            return Completion::Used(0);
        };
        let mut w = r.into_writer();
        match w.write_all(&buf[..n]) {
            Ok(()) => Completion::Used(w.bytes_written()),
            Err(_) => Completion::Used(0),
        }
    })
    .into()
}

/// The driver side of either format, for the tests below.
enum Driver<'m> {
    Split(SplitDriver<'m>),
    Packed(PackedDriver<'m>),
}

impl Driver<'_> {
    fn add(&mut self, bufs: &[(u64, u32, bool)]) {
        match self {
            Self::Split(d) => d.add_chain(bufs).map(drop),
            Self::Packed(d) => d.add_chain(bufs).map(drop),
        }
        .unwrap();
    }
    fn used_len(&mut self) -> Option<u32> {
        match self {
            Self::Split(d) => d.pop_used().map(|(_, l)| l),
            Self::Packed(d) => d.pop_used().map(|u| u.len),
        }
    }
}

/// The queues in the format a transport would hand over.
fn pick<'a>(packed: bool, s: &'a mut [Queue], p: &'a mut [PackedQueue]) -> Queues<'a> {
    if packed {
        Queues::Packed(p)
    } else {
        Queues::Split(s)
    }
}

fn run_echo(packed: bool) {
    let mem = TestMemory::m0();
    // Without EVENT_IDX both formats interrupt after every batch.
    let features = Features::INDIRECT_DESC;
    let (mut split, mut packed_q, mut drv) = if packed {
        let d = PackedDriver::standard(&mem, 16);
        (Queue::new(16), d.queue(16, features), Driver::Packed(d))
    } else {
        let d = SplitDriver::standard(&mem, 16);
        (
            d.queue(16, features),
            PackedQueue::new(16),
            Driver::Split(d),
        )
    };
    for k in 0..5u64 {
        mem.poke(0x8_0000 + k * 0x100, &[k as u8; 7]);
        drv.add(&[
            (0x8_0000 + k * 0x100, 7, false),
            (0x9_0000 + k * 0x100, 16, true),
        ]);
    }
    let (mut s, mut p) = ([split.clone()], [packed_q.clone()]);
    // A budget of 3: three chains, `more`; then the rest.
    let r = echo(0, pick(packed, &mut s, &mut p), &mem, 3);
    assert_eq!(
        r,
        NotifyReport {
            notify: true,
            more: true
        }
    );
    let r = echo(0, pick(packed, &mut s, &mut p), &mem, 3);
    assert_eq!(
        r,
        NotifyReport {
            notify: true,
            more: false
        }
    );
    for k in 0..5u64 {
        assert_eq!(drv.used_len(), Some(7), "packed {packed}");
        assert_eq!(mem.peek(0x9_0000 + k * 0x100, 7), vec![k as u8; 7]);
    }
    assert_eq!(drv.used_len(), None);
    // Out of range: nothing.
    assert_eq!(
        echo(1, pick(packed, &mut s, &mut p), &mem, 3),
        NotifyReport::IDLE
    );
    split = s[0].clone();
    packed_q = p[0].clone();
    assert_eq!(split.ready, !packed);
    assert_eq!(packed_q.ready, packed);
}

#[test]
fn one_handler_serves_split_rings() {
    run_echo(false);
}

#[test]
fn one_handler_serves_packed_rings() {
    run_echo(true);
}

/// A chain completes only on a queue of its own format; an empty chain never completes.
#[test]
fn chains_complete_only_where_they_came_from() {
    let mem = TestMemory::m0();
    let mut sd = SplitDriver::new(&mem, 8, 0x1000, 0x2000, 0x3000);
    let mut pd = PackedDriver::new(&mem, 8, 0x4000, 0x5000, 0x5100);
    let mut sq = sd.queue(8, Features::empty());
    let mut pq = pd.queue(8, Features::empty());
    sd.add_chain(&[(0x8_0000, 4, true)]).unwrap();
    pd.add_chain(&[(0x8_1000, 4, true)]).unwrap();
    let (mut split, mut packed) = (AnyQueue::Split(&mut sq), AnyQueue::Packed(&mut pq));
    assert!(!split.is_packed() && packed.is_packed());
    let mut sc: AnyChain = AnyChain::EMPTY;
    let mut pc: AnyChain = AnyChain::EMPTY;
    assert!(sc.is_empty());
    assert_eq!(split.pop_avail_into(&mem, &mut sc), Ok(true));
    assert_eq!(packed.pop_avail_into(&mem, &mut pc), Ok(true));
    assert!(sc.as_split().is_some() && pc.as_packed().is_some());
    assert_eq!(pc.head_index(), 0, "Buffer ID");
    // Crossed: refused without writing.
    assert_eq!(
        split.add_used(&mem, &pc, 4),
        Err(QueueError::HeadNotInFlight { head: 0 })
    );
    assert_eq!(
        packed.add_used(&mem, &sc, 4),
        Err(QueueError::HeadNotInFlight { head: 0 })
    );
    assert_eq!(
        split.add_used(&mem, &AnyChain::<16>::EMPTY, 0),
        Err(QueueError::HeadNotInFlight { head: 0 })
    );
    assert_eq!(split.in_flight(), 1);
    // Their own: accepted, once.
    split.push_used(&mem, &sc, 4).unwrap();
    packed.push_used(&mem, &pc, 4).unwrap();
    assert_eq!(
        packed.push_used(&mem, &pc, 4),
        Err(QueueError::HeadNotInFlight { head: 0 }),
        "completed twice"
    );
    assert_eq!(sd.pop_used(), Some((0, 4)));
    assert_eq!(pd.pop_used().map(|u| u.len), Some(4));
    // Nothing more: the storage is left empty.
    assert_eq!(split.pop_avail_into(&mem, &mut sc), Ok(false));
    assert!(sc.is_empty());
    assert_eq!(sc.iter(&mem).count(), 0);
}

/// `get_disjoint` gives several queues at once and refuses a repeated or missing index.
#[test]
fn disjoint_queues() {
    let mut qs = [Queue::new(8), Queue::new(8), Queue::new(8)];
    let mut queues = Queues::Split(&mut qs);
    assert_eq!(queues.len(), 3);
    assert!(!queues.is_packed());
    assert!(queues.get_disjoint([0, 2]).is_some());
    assert!(queues.get_disjoint([1, 1]).is_none());
    assert!(queues.get_disjoint([0, 3]).is_none());
    assert!(queues.get(3).is_none());
    let [a, b] = queues.get_disjoint([2, 0]).unwrap();
    assert_eq!((a.size(), b.size()), (8, 8));
}
