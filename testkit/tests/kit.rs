//! The test kit's own tests: what a device author relies on when building tests on it.
//!
//! Guest RAM with holes refuses what is not RAM and records accesses; the split and packed
//! driver models publish chains a `virtq` queue pops with the same buffers and read back the
//! completion the device wrote; the reference model agrees with the library on a well-formed
//! chain and names the broken rule of a malformed one.

use virtq::{Features, GuestAddress, GuestMemory, MemoryError};
use virtq_testkit::model::{ChainClass, ModelBuffer, walk_chain};
use virtq_testkit::{AccessKind, PackedDriver, SplitDriver, TestMemory, desc_flags};

/// Buffers used by the tests below, inside RAM0 of map M0 and away from the rings.
const HDR: u64 = 0x8_0000;
const DATA: u64 = 0x8_1000;

#[test]
fn test_memory_refuses_holes_and_keeps_writes_whole() {
    let mem = TestMemory::m0();
    // RAM0 ends at 1 MiB; the hole runs to 2 MiB.
    let end0 = 0x10_0000;
    mem.poke(end0 - 2, &[0xaa, 0xbb]);
    let err = mem
        .write(GuestAddress(end0 - 2), &[1, 2, 3, 4])
        .unwrap_err();
    assert!(matches!(err, MemoryError::OutOfRange { .. }), "{err:?}");
    // Nothing of the refused write landed.
    assert_eq!(mem.peek(end0 - 2, 2), [0xaa, 0xbb]);
    assert!(mem.check_range(GuestAddress(0x20_0000), 16).is_ok());
    assert!(mem.check_range(GuestAddress(end0), 1).is_err());
    assert_eq!(
        mem.load_u16(GuestAddress(1)),
        Err(MemoryError::Misaligned { addr: 1 })
    );
    assert!(matches!(
        mem.check_range(GuestAddress(u64::MAX), 2),
        Err(MemoryError::Overflow { .. })
    ));
}

#[test]
fn test_memory_records_device_accesses() {
    let mem = TestMemory::m0();
    mem.start_recording();
    mem.store_u16(GuestAddress(0x100), 7).unwrap();
    let mut buf = [0u8; 8];
    mem.read(GuestAddress(0x200), &mut buf).unwrap();
    // Driver-side pokes are not device accesses.
    mem.poke(0x300, &[1]);
    let log = mem.take_log();
    let kinds: Vec<_> = log.iter().map(|a| (a.kind, a.addr, a.len)).collect();
    assert_eq!(
        kinds,
        [
            (AccessKind::Store16, 0x100, 2),
            (AccessKind::Read, 0x200, 8)
        ]
    );
    assert!(log[1].overlaps(0x207, 1) && !log[1].overlaps(0x208, 4));
}

#[test]
fn test_memory_flips_after_the_first_read() {
    let mem = TestMemory::m0();
    mem.poke(HDR, &[1, 2]);
    mem.flip_after_first_read(HDR, &[9, 9]);
    let mut first = [0u8; 2];
    mem.read(GuestAddress(HDR), &mut first).unwrap();
    let mut second = [0u8; 2];
    mem.read(GuestAddress(HDR), &mut second).unwrap();
    assert_eq!((first, second), ([1, 2], [9, 9]));
}

#[test]
fn split_driver_round_trip_through_a_queue() {
    let mem = TestMemory::m0();
    let mut drv = SplitDriver::standard(&mem, 8);
    let mut q = drv.queue(8, Features::empty());
    q.check_rings(&mem).unwrap();
    let head = drv
        .add_chain(&[(HDR, 16, false), (DATA, 512, true)])
        .unwrap();
    let chain = q.pop_avail(&mem).unwrap().unwrap();
    assert_eq!(chain.head_index(), head);
    let bufs: Vec<ModelBuffer> = chain
        .iter(&mem)
        .map(|d| ModelBuffer::from(d.unwrap()))
        .collect();
    assert_eq!(
        bufs,
        [
            ModelBuffer {
                addr: HDR,
                len: 16,
                writable: false
            },
            ModelBuffer {
                addr: DATA,
                len: 512,
                writable: true
            },
        ]
    );
    q.push_used(&mem, head, 100).unwrap();
    assert_eq!(drv.pop_used(), Some((u32::from(head), 100)));
    assert_eq!(drv.pop_used(), None);
    // The head's descriptors went back to the driver's free list.
    assert_eq!(drv.free_descriptors(), 8);
}

#[test]
fn packed_driver_round_trip_through_a_queue() {
    let mem = TestMemory::m0();
    let mut drv = PackedDriver::standard(&mem, 8);
    let mut q = drv.queue(8, Features::RING_PACKED);
    let id = drv
        .add_chain(&[(HDR, 16, false), (DATA, 64, true)])
        .unwrap();
    let chain = q.pop_avail(&mem).unwrap().unwrap();
    assert_eq!(chain.head_index(), id);
    let lens: Vec<u32> = chain.iter(&mem).map(|d| d.unwrap().len()).collect();
    assert_eq!(lens, [16, 64]);
    q.push_used(&mem, &chain, 64).unwrap();
    let used = drv.pop_used().unwrap();
    assert_eq!((used.id, used.len), (id, 64));
    assert_eq!(drv.pop_used(), None);
}

#[test]
fn model_agrees_with_the_library_on_a_good_chain_and_a_loop() {
    let mem = TestMemory::m0();
    let mut drv = SplitDriver::standard(&mem, 4);
    let mut q = drv.queue(4, Features::empty());
    drv.set_desc(0, HDR, 16, desc_flags::N, 1);
    drv.set_desc(1, DATA, 32, desc_flags::W, 0);
    let good = walk_chain(&mem, drv.desc, 4, 0, false);
    assert_eq!(good.error, None);
    drv.publish(0);
    let chain = q.pop_avail(&mem).unwrap().unwrap();
    let lib: Vec<ModelBuffer> = chain.iter(&mem).map(|d| d.unwrap().into()).collect();
    assert_eq!(lib, good.buffers);
    q.push_used(&mem, 0, 0).unwrap();

    // 0 -> 1 -> 0 -> ...: a loop, cut at `size` buffers by both.
    drv.set_desc(0, HDR, 16, desc_flags::W | desc_flags::N, 1);
    drv.set_desc(1, DATA, 32, desc_flags::W | desc_flags::N, 0);
    let looped = walk_chain(&mem, drv.desc, 4, 0, false);
    assert_eq!(looped.error, Some(ChainClass::TooLong));
    drv.publish(0);
    let chain = q.pop_avail(&mem).unwrap().unwrap();
    let err = chain.iter(&mem).find_map(Result::err).unwrap();
    assert_eq!(ChainClass::of(&err), ChainClass::TooLong);
}
