//! A saved state is untrusted input (issue #13, "Restore is validation"): every field
//! corrupted on its own is refused with a typed error naming it (or the guest-memory word it
//! disagrees with), and a refused restore changes nothing. Every single-byte corruption of a
//! whole state either is refused without change or restores a queue whose state is
//! consistent (it saves to the bytes it was restored from and serves a chain).

use virtq::packed::PackedChain;
use virtq::snapshot::{HEADER_LEN, StateError, StateField};
use virtq::{Features, PackedQueue, Queue};
use virtq_testkit::{PackedDriver, SplitDriver, TestMemory};

const RAM: (u64, u64) = (0, 0x20000);

/// Offsets inside the split field block (after the 16-byte header).
mod split_off {
    pub const MAX_SIZE: usize = 0;
    pub const SIZE: usize = 2;
    pub const READY: usize = 4;
    pub const KICKS: usize = 5;
    pub const RESERVED: usize = 6;
    pub const DESC: usize = 8;
    pub const AVAIL: usize = 16;
    pub const USED: usize = 24;
    pub const FEATURES: usize = 32;
    pub const NEXT_AVAIL: usize = 40;
    pub const NEXT_USED: usize = 42;
    pub const PUBLISHED: usize = 44;
    pub const NOTIFY_BASE: usize = 46;
    pub const UNSIGNALLED: usize = 48;
    pub const IN_FLIGHT: usize = 52;
    pub const RESERVED2: usize = 54;
    pub const ERROR: usize = 56;
    pub const BITMAP: usize = 80;
}

fn put(bytes: &mut [u8], off: usize, v: &[u8]) {
    bytes[HEADER_LEN + off..HEADER_LEN + off + v.len()].copy_from_slice(v);
}

/// A split queue with chains in flight, completions published and not yet signalled, and one
/// used element added but not published; and its memory.
fn split_setup() -> (TestMemory, Vec<u8>) {
    let mem = TestMemory::new(&[RAM]);
    let mut drv = SplitDriver::new(&mem, 8, 0x1000, 0x2000, 0x3000);
    let mut q = drv.queue(8, Features::EVENT_IDX);
    for _ in 0..5 {
        drv.add_chain(&[(0x8000, 16, true)]).unwrap();
    }
    let c: Vec<_> = (0..4)
        .map(|_| q.pop_avail(&mem).unwrap().unwrap())
        .collect();
    q.push_used(&mem, c[1].head_index(), 1).unwrap();
    q.add_used(&mem, c[3].head_index(), 1).unwrap();
    let saved = q.save().as_bytes().to_vec();
    (mem, saved)
}

/// A live queue the restore must leave alone when it refuses.
fn split_target(mem: &TestMemory) -> Queue {
    let mut drv = SplitDriver::new(mem, 8, 0x5000, 0x6000, 0x7000);
    let mut q = drv.queue(8, Features::empty());
    drv.add_chain(&[(0x9000, 8, false)]).unwrap();
    q.pop_avail(mem).unwrap().unwrap();
    q
}

fn expect_refused(mem: &TestMemory, bytes: &[u8], fields: &[StateField], what: &str) {
    let mut q = split_target(mem);
    let before = q.clone();
    let e = q.restore(bytes, mem).expect_err(what);
    let named = match e {
        StateError::Invalid { field } | StateError::Memory { field, .. } => Some(field),
        _ => None,
    };
    assert!(
        named.is_some_and(|f| fields.contains(&f)),
        "{what}: {e:?}, expected one of {fields:?}"
    );
    assert!(q == before, "{what}: a refused restore changed the queue");
}

#[test]
fn split_state_restores_as_saved() {
    let (mem, saved) = split_setup();
    let mut q = split_target(&mem);
    q.restore(&saved, &mem).unwrap();
    assert_eq!(q.save().as_bytes(), &saved[..]);
    assert_eq!(q.in_flight(), 2);
}

#[test]
fn split_every_field_corrupted_alone_is_refused_by_name() {
    use StateField as F;
    use split_off as o;
    let (mem, saved) = split_setup();
    let cases: Vec<(usize, Vec<u8>, &[StateField])> = vec![
        (o::MAX_SIZE, 0u16.to_le_bytes().to_vec(), &[F::MaxSize]),
        (o::MAX_SIZE, 12u16.to_le_bytes().to_vec(), &[F::MaxSize]),
        (o::MAX_SIZE, 65535u16.to_le_bytes().to_vec(), &[F::MaxSize]),
        (o::SIZE, 3u16.to_le_bytes().to_vec(), &[F::Size]),
        (o::SIZE, 16u16.to_le_bytes().to_vec(), &[F::Size]),
        (o::SIZE, 0u16.to_le_bytes().to_vec(), &[F::Size]),
        (o::READY, vec![2], &[F::Ready]),
        (o::KICKS, vec![7], &[F::Kicks]),
        (o::RESERVED, vec![1, 0], &[F::Reserved]),
        (o::RESERVED2, vec![0, 1], &[F::Reserved]),
        (o::DESC, 0x1008u64.to_le_bytes().to_vec(), &[F::DescAddr]),
        (o::DESC, 0u64.to_le_bytes().to_vec(), &[F::DescAddr]),
        (
            o::DESC,
            0x1_0000_0000u64.to_le_bytes().to_vec(),
            &[F::DescAddr],
        ),
        (o::AVAIL, 0x2001u64.to_le_bytes().to_vec(), &[F::DriverAddr]),
        (
            o::AVAIL,
            (u64::MAX - 1).to_le_bytes().to_vec(),
            &[F::DriverAddr],
        ),
        (o::USED, 0x3002u64.to_le_bytes().to_vec(), &[F::DeviceAddr]),
        (
            o::USED,
            0x1F_FFF0u64.to_le_bytes().to_vec(),
            &[F::DeviceAddr],
        ),
        (
            o::FEATURES,
            (1u64 << 34).to_le_bytes().to_vec(),
            &[F::Features],
        ),
        (o::FEATURES, 1u64.to_le_bytes().to_vec(), &[F::Features]),
        (
            o::NEXT_AVAIL,
            5u16.to_le_bytes().to_vec(),
            &[F::NextAvail, F::NextUsed, F::AvailIdx],
        ),
        (
            o::NEXT_AVAIL,
            0x8004u16.to_le_bytes().to_vec(),
            &[F::NextAvail, F::NextUsed, F::AvailIdx],
        ),
        (
            o::NEXT_USED,
            1u16.to_le_bytes().to_vec(),
            &[F::NextUsed, F::Published],
        ),
        (
            o::PUBLISHED,
            0u16.to_le_bytes().to_vec(),
            &[F::Published, F::UsedIdx, F::Notification],
        ),
        (
            o::PUBLISHED,
            0xFFF0u16.to_le_bytes().to_vec(),
            &[F::Published, F::UsedIdx],
        ),
        (
            o::NOTIFY_BASE,
            0x55u16.to_le_bytes().to_vec(),
            &[F::Notification],
        ),
        (
            o::UNSIGNALLED,
            9u32.to_le_bytes().to_vec(),
            &[F::Notification],
        ),
        (
            o::IN_FLIGHT,
            3u16.to_le_bytes().to_vec(),
            &[F::InFlightCount, F::NextUsed],
        ),
        (
            o::IN_FLIGHT,
            9u16.to_le_bytes().to_vec(),
            &[F::InFlightCount, F::NextUsed],
        ),
        (o::ERROR, vec![99], &[F::Error]),
        (o::ERROR, vec![1], &[F::Error]),
        (o::ERROR, vec![6, 0, 9], &[F::Error]),
        (o::ERROR + 3, vec![1], &[F::Error]),
        // A head at or above `size`, and one more head than stated.
        (o::BITMAP + 1, vec![0b10], &[F::InFlight]),
        (o::BITMAP, vec![0xFF], &[F::InFlightCount]),
    ];
    for (off, value, fields) in cases {
        let mut b = saved.clone();
        put(&mut b, off, &value);
        expect_refused(&mem, &b, fields, &format!("offset {off} = {value:x?}"));
    }
}

#[test]
fn split_state_that_disagrees_with_guest_memory_is_refused() {
    let (mem, saved) = split_setup();
    // avail.idx more than `size` ahead of the saved next_avail_idx.
    let avail_idx = mem.peek_u16(0x2002);
    mem.poke_u16(0x2002, avail_idx.wrapping_add(9));
    expect_refused(&mem, &saved, &[StateField::AvailIdx], "avail.idx far ahead");
    mem.poke_u16(0x2002, avail_idx);
    // used.idx not what the device published.
    let used_idx = mem.peek_u16(0x3002);
    mem.poke_u16(0x3002, used_idx.wrapping_add(1));
    expect_refused(&mem, &saved, &[StateField::UsedIdx], "used.idx moved");
    mem.poke_u16(0x3002, used_idx);
    // Rings outside RAM (a memory map without the ring pages).
    let small = TestMemory::new(&[(0, 0x2000), (0x4000, 0x10000)]);
    expect_refused(
        &small,
        &saved,
        &[StateField::DriverAddr, StateField::DeviceAddr],
        "rings not in RAM",
    );
}

#[test]
fn split_header_corruptions_are_refused_before_any_field() {
    let (mem, saved) = split_setup();
    let refused = |b: &[u8]| {
        let mut q = split_target(&mem);
        let before = q.clone();
        let e = q.restore(b, &mem).unwrap_err();
        assert!(q == before);
        e
    };
    let mut b = saved.clone();
    b[0] = b'X';
    assert_eq!(refused(&b), StateError::BadMagic);
    let mut b = saved.clone();
    b[4] = 2;
    assert_eq!(refused(&b), StateError::UnsupportedVersion { found: 2 });
    let mut b = saved.clone();
    b[6] = 2;
    assert_eq!(refused(&b), StateError::WrongKind { found: 2 });
    for cut in [
        0,
        1,
        HEADER_LEN - 1,
        HEADER_LEN,
        HEADER_LEN + 40,
        saved.len() - 1,
    ] {
        assert!(
            matches!(refused(&saved[..cut]), StateError::Truncated { .. }),
            "cut at {cut}"
        );
    }
    // The header states a longer or shorter state than the fields imply.
    for len in [saved.len() as u32 - 8, saved.len() as u32 + 8] {
        let mut b = saved.clone();
        b.extend([0; 8]);
        b[8..12].copy_from_slice(&len.to_le_bytes());
        assert!(matches!(
            refused(&b),
            StateError::Length { .. } | StateError::Truncated { .. }
        ));
    }
}

#[test]
fn split_every_byte_flip_is_refused_or_consistent() {
    let (mem, saved) = split_setup();
    // Every byte natively; a stride under Miri, which interprets each restore.
    for i in (0..saved.len()).step_by(if cfg!(miri) { 23 } else { 1 }) {
        for bit in 0..8 {
            let mut b = saved.clone();
            b[i] ^= 1 << bit;
            let mut q = split_target(&mem);
            let before = q.clone();
            match q.restore(&b, &mem) {
                Err(_) => assert!(q == before, "byte {i} bit {bit}: changed on refusal"),
                Ok(()) => {
                    // Accepted: the state is self-consistent and round-trips.
                    let again = q.save();
                    let mut r = Queue::new(8);
                    r.restore(again.as_bytes(), &mem)
                        .unwrap_or_else(|e| panic!("byte {i} bit {bit}: {e:?}"));
                    assert!(r.in_flight() <= r.size);
                }
            }
        }
    }
}

// ---------------------------------------------------------------- packed

fn packed_setup() -> (TestMemory, Vec<u8>, Vec<Vec<u8>>) {
    let mem = TestMemory::new(&[RAM]);
    let mut drv = PackedDriver::new(&mem, 6, 0x1000, 0x2000, 0x2100);
    let mut q = drv.queue(6, Features::EVENT_IDX);
    for n in 1..=3usize {
        let bufs: Vec<_> = (0..n)
            .map(|i| (0x8000 + 0x100 * i as u64, 16, i + 1 == n))
            .collect();
        drv.add_chain(&bufs).unwrap();
    }
    let mut c = [PackedChain::<4>::EMPTY; 3];
    for slot in &mut c {
        assert!(q.pop_avail_into(&mem, slot).unwrap());
    }
    q.push_used(&mem, &c[1], 1).unwrap();
    let chains = [c[0], c[2]]
        .iter()
        .map(|c| {
            let mut b = vec![0; c.saved_len()];
            c.save_into(&mut b).unwrap();
            b
        })
        .collect();
    (mem, q.save().as_bytes().to_vec(), chains)
}

fn packed_target(mem: &TestMemory) -> PackedQueue {
    let mut drv = PackedDriver::new(mem, 6, 0x5000, 0x6000, 0x6100);
    let mut q = drv.queue(6, Features::empty());
    drv.add_chain(&[(0x9000, 8, false)]).unwrap();
    q.pop_avail(mem).unwrap().unwrap();
    q
}

#[test]
fn packed_state_and_held_chains_restore() {
    let (mem, saved, chains) = packed_setup();
    let mut q = packed_target(&mem);
    q.restore(&saved, &mem).unwrap();
    assert_eq!(q.save().as_bytes(), &saved[..]);
    assert_eq!(q.in_flight(), 2);
    for b in &chains {
        let mut c = PackedChain::<4>::EMPTY;
        q.readopt_into(&mem, b, &mut c).unwrap();
        assert!(c.iter(&mem).all(|d| d.is_ok()));
        q.push_used(&mem, &c, 0).unwrap();
        // Completed once: a second readopt of the same saved chain cannot complete again.
        let mut again = PackedChain::<4>::EMPTY;
        assert!(q.readopt_into(&mem, b, &mut again).is_err());
    }
    assert_eq!(q.in_flight(), 0);
}

#[test]
fn packed_every_byte_flip_is_refused_or_consistent() {
    let (mem, saved, chains) = packed_setup();
    // Every byte natively; a stride under Miri, which interprets each restore.
    for i in (0..saved.len()).step_by(if cfg!(miri) { 23 } else { 1 }) {
        for bit in 0..8 {
            let mut b = saved.clone();
            b[i] ^= 1 << bit;
            let mut q = packed_target(&mem);
            let before = q.clone();
            match q.restore(&b, &mem) {
                Err(_) => assert!(q == before, "byte {i} bit {bit}: changed on refusal"),
                Ok(()) => {
                    let again = q.save();
                    let mut r = PackedQueue::new(6);
                    r.restore(again.as_bytes(), &mem)
                        .unwrap_or_else(|e| panic!("byte {i} bit {bit}: {e:?}"));
                    assert!(r.in_flight_descriptors() <= r.size);
                }
            }
        }
    }
    // Every single-bit corruption of a saved chain: refused (chain left empty) or a chain
    // whose buffers are all in guest RAM.
    let (mem, saved, _) = packed_setup();
    let mut q = PackedQueue::new(6);
    q.restore(&saved, &mem).unwrap();
    for b0 in &chains {
        for i in (0..b0.len()).step_by(if cfg!(miri) { 11 } else { 1 }) {
            for bit in 0..8 {
                let mut b = b0.clone();
                b[i] ^= 1 << bit;
                let mut c = PackedChain::<4>::EMPTY;
                match q.readopt_into(&mem, &b, &mut c) {
                    Err(_) => assert_eq!(c, PackedChain::<4>::EMPTY),
                    Ok(()) => {
                        for d in c.iter(&mem).flatten() {
                            assert!(d.addr().0 + u64::from(d.len()) <= RAM.1);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn packed_fields_corrupted_alone_are_refused_by_name() {
    use StateField as F;
    let (mem, saved, _) = packed_setup();
    // (offset in the field block, value, accepted names)
    let cases: Vec<(usize, Vec<u8>, &[StateField])> = vec![
        (0, 0u16.to_le_bytes().to_vec(), &[F::MaxSize]),
        (2, 7u16.to_le_bytes().to_vec(), &[F::Size]),
        (4, vec![3], &[F::Ready]),
        (5, vec![3], &[F::Kicks]),
        (6, vec![2], &[F::WrapCounter]),
        (7, vec![2], &[F::WrapCounter]),
        (8, 0x1008u64.to_le_bytes().to_vec(), &[F::DescAddr]),
        (16, 0x2002u64.to_le_bytes().to_vec(), &[F::DriverAddr]),
        (24, 0x30_0000u64.to_le_bytes().to_vec(), &[F::DeviceAddr]),
        (32, (1u64 << 34).to_le_bytes().to_vec(), &[F::Features]),
        (40, 6u16.to_le_bytes().to_vec(), &[F::NextAvail]),
        (42, 9u16.to_le_bytes().to_vec(), &[F::NextUsed]),
        (
            44,
            5u16.to_le_bytes().to_vec(),
            &[F::InFlightCount, F::NextUsed],
        ),
        (46, 3u16.to_le_bytes().to_vec(), &[F::InFlightCount]),
        (52, vec![1], &[F::Held]),
        (53, vec![9], &[F::Kicks]),
        (54, vec![2], &[F::Notification]),
        (61, vec![1], &[F::Reserved]),
        (64, 1u32.to_le_bytes().to_vec(), &[F::Published, F::Held]),
        (72, vec![42], &[F::Error]),
        (96, vec![0x80], &[F::InFlight]),
    ];
    for (off, value, fields) in cases {
        let mut b = saved.clone();
        put(&mut b, off, &value);
        let mut q = packed_target(&mem);
        let before = q.clone();
        let e = q.restore(&b, &mem).expect_err("corrupted");
        let named = match e {
            StateError::Invalid { field } | StateError::Memory { field, .. } => Some(field),
            _ => None,
        };
        assert!(
            named.is_some_and(|f| fields.contains(&f)),
            "offset {off} = {value:x?}: {e:?}, expected one of {fields:?}"
        );
        assert!(q == before);
    }
    // A used descriptor of the lap the device is about to read, at its read cursor (slot 0 of
    // the second lap: the three chains took all six slots).
    let mut q = PackedQueue::new(6);
    let slot_flags = 0x1000 + 14;
    let old = mem.peek_u16(slot_flags);
    mem.poke_u16(slot_flags, 0);
    assert_eq!(
        q.restore(&saved, &mem),
        Err(StateError::Invalid {
            field: StateField::Ring
        })
    );
    mem.poke_u16(slot_flags, old);
    assert_eq!(q.restore(&saved, &mem), Ok(()));
}
