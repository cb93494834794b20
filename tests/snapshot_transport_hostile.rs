//! A transport state is untrusted input (issue #13, "Restore is validation"): every field of a
//! virtio-mmio state corrupted on its own is refused with a typed error naming it, and a
//! refused restore changes nothing (the transport saves to the same bytes as before). Every
//! single-bit corruption of a live device's state is refused without change, or restores a
//! transport that saves and restores again.

use std::sync::Arc;

use virtq::Features;
use virtq::snapshot::{HEADER_LEN, StateError, StateField};
use virtq::transport::mmio::MmioVersion;
use virtq::transport::mmio::state::MmioFields;
use virtq::transport::{CoreFields, MmioTransport, QueueRegsFields};
use virtq_testkit::devices::blk::BlkDevice;
use virtq_testkit::guest::virtio_drivers::device::blk::VirtIOBlk;
use virtq_testkit::guest::{Arena, GuestHal, GuestMmio, GuestRam, attach};

type Dev = MmioTransport<BlkDevice, GuestRam, 1>;

const MMIO: usize = HEADER_LEN;
const LEGACY: usize = MMIO + size_of::<MmioFields>();
const CORE: usize = LEGACY + 8;
const REGS: usize = CORE + size_of::<CoreFields>();
const QUEUE: usize = REGS + size_of::<QueueRegsFields>();

/// A live blk device (the guest driver initialised it and ran a request) and its state.
fn live(arena: &Arc<Arena>, version: MmioVersion) -> Vec<u8> {
    let _g = arena.install();
    let dev = attach::<_, 1>(BlkDevice::new(64, Features::EVENT_IDX, 16), arena, version);
    let mut blk = VirtIOBlk::<GuestHal, _>::new(GuestMmio::new(dev.clone()).unwrap()).unwrap();
    let mut buf = [0u8; 512];
    blk.read_blocks(0, &mut buf).unwrap();
    let t = dev.lock().unwrap();
    let mut state = vec![0u8; t.state_len()];
    let n = t.save_into(&mut state).unwrap();
    state.truncate(n);
    std::mem::forget(blk); // keep the guest's queue memory as it is
    state
}

fn fresh(arena: &Arc<Arena>, version: MmioVersion) -> Dev {
    MmioTransport::new(
        BlkDevice::new(64, Features::EVENT_IDX, 16),
        arena.guest_ram(),
        version,
    )
}

fn saved(t: &Dev) -> Vec<u8> {
    let mut b = vec![0u8; t.state_len()];
    let n = t.save_into(&mut b).unwrap();
    b.truncate(n);
    b
}

fn refused(arena: &Arc<Arena>, version: MmioVersion, state: &[u8]) -> StateError {
    let mut t = fresh(arena, version);
    let before = saved(&t);
    let e = t.restore(state).expect_err("corrupted state");
    assert_eq!(saved(&t), before, "a refused restore changed the transport");
    e
}

fn named(e: StateError) -> Option<StateField> {
    match e {
        StateError::Invalid { field } | StateError::Memory { field, .. } => Some(field),
        _ => None,
    }
}

#[test]
fn a_live_state_restores_exactly() {
    for version in [MmioVersion::V2, MmioVersion::Legacy] {
        let arena = Arena::new(1 << 20);
        let state = live(&arena, version);
        let mut t = fresh(&arena, version);
        t.restore(&state).unwrap();
        assert_eq!(saved(&t), state);
        assert!(t.is_live());
    }
}

#[test]
fn every_field_corrupted_alone_is_refused_by_name() {
    use StateField as F;
    let arena = Arena::new(1 << 20);
    let state = live(&arena, MmioVersion::V2);
    let cases: Vec<(usize, Vec<u8>, &[StateField])> = vec![
        (MMIO, vec![1], &[F::TransportVersion]),
        (MMIO, vec![7], &[F::TransportVersion]),
        (MMIO + 1, vec![1], &[F::Reserved]),
        (MMIO + 4, 4u32.to_le_bytes().to_vec(), &[F::InterruptStatus]),
        (MMIO + 20, 3u32.to_le_bytes().to_vec(), &[F::Legacy]),
        (MMIO + 24, 2u16.to_le_bytes().to_vec(), &[F::QueueRegister]),
        (LEGACY + 4, 3u32.to_le_bytes().to_vec(), &[F::Legacy]),
        (CORE, vec![0x2F], &[F::Status]),
        (CORE, vec![0x07], &[F::Status]),
        (CORE, vec![0x0D], &[F::Status]),
        (CORE + 1, vec![2], &[F::Features]),
        (CORE + 1, vec![0], &[F::Status]),
        (CORE + 3, vec![2], &[F::Status]),
        (CORE + 4, vec![1], &[F::Features]),
        (CORE + 5, vec![1], &[F::Reserved]),
        (CORE + 16, 0u64.to_le_bytes().to_vec(), &[F::Features]),
        (CORE + 16 + 5, vec![0x80], &[F::Features]),
        (CORE + 28, 3u16.to_le_bytes().to_vec(), &[F::QueueRegister]),
        (REGS, vec![2], &[F::QueueRegister]),
        (REGS + 1, vec![0], &[F::QueueRegister]),
        (REGS + 4, vec![42], &[F::QueueSetup]),
        (REGS + 5, vec![1], &[F::Reserved]),
        (
            REGS + 20,
            0x40_0100u64.to_le_bytes().to_vec(),
            &[F::QueueRegister],
        ),
        (
            QUEUE + HEADER_LEN + 2,
            3u16.to_le_bytes().to_vec(),
            &[F::Size],
        ),
    ];
    for (off, value, fields) in cases {
        let mut b = state.clone();
        b[off..off + value.len()].copy_from_slice(&value);
        let e = refused(&arena, MmioVersion::V2, &b);
        assert!(
            named(e).is_some_and(|f| fields.contains(&f)),
            "offset {off} = {value:x?}: {e:?}, expected one of {fields:?}"
        );
    }
    // The header and the lengths.
    let mut b = state.clone();
    b[4] = 9;
    assert_eq!(
        refused(&arena, MmioVersion::V2, &b),
        StateError::UnsupportedVersion { found: 9 }
    );
    for cut in [0, HEADER_LEN, REGS + 3, state.len() - 1] {
        assert!(matches!(
            refused(&arena, MmioVersion::V2, &state[..cut]),
            StateError::Truncated { .. }
        ));
    }
    // A legacy state given to a version 2 transport, and the other way round.
    let legacy = live(&Arena::new(1 << 20), MmioVersion::Legacy);
    assert_eq!(
        named(refused(&arena, MmioVersion::V2, &legacy)),
        Some(StateField::TransportVersion)
    );
    assert_eq!(
        named(refused(&arena, MmioVersion::Legacy, &state)),
        Some(StateField::TransportVersion)
    );
}

#[test]
fn every_bit_flip_is_refused_or_consistent() {
    let arena = Arena::new(1 << 20);
    let state = live(&arena, MmioVersion::V2);
    let step = if cfg!(miri) { 37 } else { 1 };
    let mut accepted = 0;
    for i in (0..state.len()).step_by(step) {
        for bit in 0..8 {
            let mut b = state.clone();
            b[i] ^= 1 << bit;
            let mut t = fresh(&arena, MmioVersion::V2);
            let before = saved(&t);
            match t.restore(&b) {
                Err(_) => assert_eq!(saved(&t), before, "byte {i} bit {bit}"),
                Ok(()) => {
                    accepted += 1;
                    let again = saved(&t);
                    let mut u = fresh(&arena, MmioVersion::V2);
                    u.restore(&again)
                        .unwrap_or_else(|e| panic!("byte {i} bit {bit}: {e:?}"));
                    assert_eq!(saved(&u), again);
                }
            }
        }
    }
    // Flips of free-form registers (feature selects, queue select, the generation) are valid.
    assert!(accepted > 0);
}
