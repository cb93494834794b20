//! Save and restore of the transport core: status, features, configuration generation, and
//! per queue the registers as the driver programmed them plus the queue's own state (see
//! [`crate::snapshot`]).
//!
//! A transport's state is its register block, then [`CoreFields`], then for each of its `Q`
//! queues a [`QueueRegsFields`] followed by that queue's state (split or packed, whichever
//! format the features select; [`QueueRegsFields::state_len`] bytes). Restore runs in two
//! passes: the first checks everything (each queue restored into a scratch queue, the
//! registers against it), the second applies; the second skips only the checks against what
//! guest memory *holds* (its map is checked again), so with the guest stopped, as a restore
//! requires, it cannot fail and nothing is ever half-applied.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{Core, Flavor, QueueRegs, QueueSetupError};
use crate::memory::GuestMemory;
use crate::packed::PackedQueue;
use crate::snapshot::{StateError, StateField, flag};
use crate::split::Queue;
use crate::transport::{NotifyMode, VirtioDevice};
use crate::wire::{DeviceStatus, Features};

/// The core's fields in a transport state.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct CoreFields {
    /// The device status byte.
    pub status: u8,
    /// Whether the driver's features were accepted (FEATURES_OK, or legacy DRIVER_OK).
    pub features_latched: u8,
    /// The generation was bumped and not read since.
    pub generation_fresh: u8,
    /// The transport lets the device do DMA (PCI Bus Master Enable; 1 for MMIO).
    pub dma: u8,
    /// The queues' states are packed-ring states (RING_PACKED negotiated).
    pub packed: u8,
    /// Zero.
    pub reserved: [u8; 3],
    /// The driver features register as written.
    pub driver_features: U64,
    /// The negotiated features (0 until latched).
    pub negotiated: U64,
    /// The configuration generation.
    pub config_generation: U32,
    /// The number of queues that follow.
    pub queues: U16,
    /// Zero.
    pub reserved2: U16,
}

debug_fields!(CoreFields {
    status,
    features_latched,
    generation_fresh,
    dma,
    packed,
    reserved,
    driver_features,
    negotiated,
    config_generation,
    queues,
    reserved2
});

/// One queue's registers in a transport state, followed by the queue's state.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct QueueRegsFields {
    /// The driver wrote a size (0 or 1).
    pub has_num: u8,
    /// Enabled by the driver (0 or 1).
    pub enabled: u8,
    /// The queue's fatal error was turned into DEVICE_NEEDS_RESET (0 or 1).
    pub reported: u8,
    /// A deferred notification was not taken yet (0 or 1).
    pub kicked: u8,
    /// Why the last enable was refused: 0 not refused, else a [`QueueSetupError`] code.
    pub refused: u8,
    /// Zero.
    pub reserved: [u8; 3],
    /// The size the driver wrote.
    pub num: U32,
    /// The size payload of a refused enable.
    pub refused_size: U32,
    /// Bytes of the queue state that follows.
    pub state_len: U32,
    /// Descriptor area address.
    pub desc: U64,
    /// Driver area address.
    pub driver: U64,
    /// Device area address.
    pub device: U64,
}

debug_fields!(QueueRegsFields {
    has_num,
    enabled,
    reported,
    kicked,
    refused,
    reserved,
    num,
    refused_size,
    state_len,
    desc,
    driver,
    device
});

const CORE_LEN: usize = core::mem::size_of::<CoreFields>();
const REGS_LEN: usize = core::mem::size_of::<QueueRegsFields>();

fn setup_code(e: Option<QueueSetupError>) -> (u8, u32) {
    match e {
        None => (0, 0),
        Some(QueueSetupError::SizeZero) => (1, 0),
        Some(QueueSetupError::SizeTooLarge { size }) => (2, size),
        Some(QueueSetupError::SizeNotPowerOfTwo { size }) => (3, size),
        Some(QueueSetupError::Misaligned) => (4, 0),
        Some(QueueSetupError::AddressOverflow) => (5, 0),
        Some(QueueSetupError::OutsideRam) => (6, 0),
        Some(QueueSetupError::Overlap) => (7, 0),
        Some(QueueSetupError::BadLegacyLayout) => (8, 0),
        Some(QueueSetupError::FeaturesNotAccepted) => (9, 0),
    }
}

fn setup_decode(code: u8, size: u32) -> Result<Option<QueueSetupError>, StateError> {
    let bad = StateError::invalid(StateField::QueueSetup);
    let plain = |e| if size == 0 { Ok(Some(e)) } else { Err(bad) };
    match code {
        0 => plain(QueueSetupError::SizeZero).map(|_| None),
        1 => plain(QueueSetupError::SizeZero),
        2 => Ok(Some(QueueSetupError::SizeTooLarge { size })),
        3 => Ok(Some(QueueSetupError::SizeNotPowerOfTwo { size })),
        4 => plain(QueueSetupError::Misaligned),
        5 => plain(QueueSetupError::AddressOverflow),
        6 => plain(QueueSetupError::OutsideRam),
        7 => plain(QueueSetupError::Overlap),
        8 => plain(QueueSetupError::BadLegacyLayout),
        9 => plain(QueueSetupError::FeaturesNotAccepted),
        _ => Err(bad),
    }
}

/// Split `n` bytes off the front of `b`, or a truncation error.
fn take(b: &[u8], n: usize) -> Result<(&[u8], &[u8]), StateError> {
    b.split_at_checked(n).ok_or(StateError::Truncated {
        needed: n,
        got: b.len(),
    })
}

/// Status bits a device status byte may hold (SUSPEND is never offered, bit 5 is reserved).
const STATUS_BITS: DeviceStatus = DeviceStatus::ACKNOWLEDGE
    .union(DeviceStatus::DRIVER)
    .union(DeviceStatus::DRIVER_OK)
    .union(DeviceStatus::FEATURES_OK)
    .union(DeviceStatus::DEVICE_NEEDS_RESET)
    .union(DeviceStatus::FAILED);

impl<D: VirtioDevice, M: GuestMemory, const Q: usize> Core<D, M, Q> {
    /// Bytes [`save_into`](Self::save_into) writes at most.
    pub(crate) fn state_len(&self) -> usize {
        let packed = self.is_packed();
        let per_queue = |i: usize| {
            let q = if packed {
                self.packed.get(i).map_or(0, PackedQueue::state_len)
            } else {
                self.queues.get(i).map_or(0, Queue::state_len)
            };
            REGS_LEN.saturating_add(q)
        };
        (0..Q).map(per_queue).fold(CORE_LEN, usize::saturating_add)
    }

    /// Save the core: its fields, then each queue's registers and state. Returns the bytes
    /// written.
    pub(crate) fn save_into(&self, out: &mut [u8]) -> Result<usize, StateError> {
        let needed = self.state_len();
        if out.len() < needed {
            return Err(StateError::BufferTooSmall { needed });
        }
        let packed = self.is_packed();
        let fields = CoreFields {
            status: self.status.bits(),
            features_latched: u8::from(self.features_latched),
            generation_fresh: u8::from(self.generation_fresh),
            dma: u8::from(self.dma),
            packed: u8::from(packed),
            reserved: [0; 3],
            driver_features: U64::new(self.driver_features),
            negotiated: U64::new(self.negotiated),
            config_generation: U32::new(self.config_generation),
            queues: U16::new(u16::try_from(Q).unwrap_or(u16::MAX)),
            reserved2: U16::new(0),
        };
        fields
            .write_to_prefix(out)
            .map_err(|_| StateError::BufferTooSmall { needed })?;
        let mut at = CORE_LEN;
        for i in 0..Q {
            let (Some(r), Some(q), Some(p)) =
                (self.regs.get(i), self.queues.get(i), self.packed.get(i))
            else {
                break;
            };
            let rest = out.get_mut(at..).unwrap_or(&mut []);
            let (head, body) = rest
                .split_at_mut_checked(REGS_LEN)
                .ok_or(StateError::BufferTooSmall { needed })?;
            let len = if packed {
                p.save_into(body)?
            } else {
                q.save_into(body)?
            };
            let (refused, refused_size) = setup_code(r.refused);
            let regs = QueueRegsFields {
                has_num: u8::from(r.num.is_some()),
                enabled: u8::from(r.enabled),
                reported: u8::from(r.reported),
                kicked: u8::from(r.kicked),
                refused,
                reserved: [0; 3],
                num: U32::new(r.num.unwrap_or(0)),
                refused_size: U32::new(refused_size),
                state_len: U32::new(u32::try_from(len).unwrap_or(u32::MAX)),
                desc: U64::new(r.desc),
                driver: U64::new(r.driver),
                device: U64::new(r.device),
            };
            regs.write_to_prefix(head)
                .map_err(|_| StateError::BufferTooSmall { needed })?;
            at = at.saturating_add(REGS_LEN).saturating_add(len);
        }
        Ok(at)
    }

    /// Check a saved core (the bytes after the transport's own block) against this device and
    /// guest memory without changing anything; `queue_ok` adds the transport's own check of
    /// each queue's registers. Returns the bytes it covers.
    pub(crate) fn check_state(
        &self,
        bytes: &[u8],
        mut queue_ok: impl FnMut(usize, &QueueView) -> Result<(), StateError>,
    ) -> Result<usize, StateError> {
        let (f, mut rest) = self.core_fields(bytes)?;
        let packed = f.packed == 1;
        let needs_reset = f.status & DeviceStatus::DEVICE_NEEDS_RESET.bits() != 0;
        for i in 0..Q {
            let (r, body, next) = split_queue(rest)?;
            rest = next;
            let regs = decode_regs(r)?;
            check_refusal(&regs, needs_reset)?;
            let (Some(q), Some(p)) = (self.queues.get(i), self.packed.get(i)) else {
                return Err(StateError::invalid(StateField::QueueRegister));
            };
            // Restore into a scratch queue of the same maximum: all its own checks.
            let (size, broken) = if packed {
                let mut s = PackedQueue::new(p.max_size);
                s.restore(body, &self.mem)?;
                let areas = [s.driver_event_addr.0, s.device_event_addr.0];
                check_regs_against(&regs, s.ready, s.size, s.desc_ring_addr.0, areas)?;
                (s.size, s.ready && s.is_broken())
            } else {
                let mut s = Queue::new(q.max_size);
                s.restore(body, &self.mem)?;
                let areas = [s.avail_ring_addr.0, s.used_ring_addr.0];
                check_regs_against(&regs, s.ready, s.size, s.desc_table_addr.0, areas)?;
                (s.size, s.ready && s.is_broken())
            };
            // A queue that broke was reported inside the access that broke it.
            if broken && !regs.reported {
                return Err(StateError::invalid(StateField::QueueRegister));
            }
            let view = QueueView {
                enabled: regs.enabled,
                accepted: regs.enabled && regs.refused.is_none(),
                size,
                areas: (regs.desc, regs.driver, regs.device),
            };
            queue_ok(i, &view)?;
        }
        Ok(bytes.len().saturating_sub(rest.len()))
    }

    /// The DMA permission a saved core states (`None` if its fields do not decode).
    pub(crate) fn state_dma(&self, bytes: &[u8]) -> Option<bool> {
        CoreFields::read_from_prefix(bytes)
            .ok()
            .map(|(f, _)| f.dma == 1)
    }

    /// The device status a saved core states (`None` if its fields do not decode).
    pub(crate) fn state_status(&self, bytes: &[u8]) -> Option<DeviceStatus> {
        CoreFields::read_from_prefix(bytes)
            .ok()
            .map(|(f, _)| DeviceStatus::from_bits_retain(f.status))
    }

    /// Apply a saved core that [`check_state`](Self::check_state) accepted: the core fields,
    /// then each queue in place (a queue's restore applies nothing on error; with the state
    /// checked and the guest stopped none fails).
    pub(crate) fn apply_state(&mut self, bytes: &[u8]) -> Result<usize, StateError> {
        let (f, mut rest) = self.core_fields(bytes)?;
        let packed = f.packed == 1;
        self.status = DeviceStatus::from_bits_retain(f.status);
        self.features_latched = f.features_latched == 1;
        self.generation_fresh = f.generation_fresh == 1;
        self.dma = f.dma == 1;
        self.driver_features = f.driver_features.get();
        self.negotiated = f.negotiated.get();
        self.config_generation = f.config_generation.get();
        for i in 0..Q {
            let (r, body, next) = split_queue(rest)?;
            rest = next;
            let regs = decode_regs(r)?;
            let (Some(q), Some(p), Some(slot)) = (
                self.queues.get_mut(i),
                self.packed.get_mut(i),
                self.regs.get_mut(i),
            ) else {
                break;
            };
            *slot = regs;
            if packed {
                q.reset();
                p.restore_checked(body, &self.mem, false)?;
            } else {
                if D::PACKED_RING {
                    p.reset();
                }
                q.restore_checked(body, &self.mem, false)?;
            }
        }
        Ok(bytes.len().saturating_sub(rest.len()))
    }

    /// Decode and check the core fields against this device.
    fn core_fields<'b>(&self, bytes: &'b [u8]) -> Result<(CoreFields, &'b [u8]), StateError> {
        let invalid = StateError::invalid;
        let (f, rest) = CoreFields::read_from_prefix(bytes).map_err(|_| StateError::Truncated {
            needed: CORE_LEN,
            got: bytes.len(),
        })?;
        if f.reserved != [0; 3] || f.reserved2.get() != 0 {
            return Err(invalid(StateField::Reserved));
        }
        if usize::from(f.queues.get()) != Q {
            return Err(invalid(StateField::QueueRegister));
        }
        let latched = flag(f.features_latched, StateField::Features)?;
        flag(f.generation_fresh, StateField::ConfigGeneration)?;
        flag(f.dma, StateField::Status)?;
        let packed = flag(f.packed, StateField::Features)?;
        let status = DeviceStatus::from_bits(f.status)
            .filter(|s| STATUS_BITS.contains(*s))
            .ok_or(invalid(StateField::Status))?;
        // The combinations the status state machine reaches: FEATURES_OK only after
        // ACKNOWLEDGE and DRIVER with the features accepted; DRIVER_OK only after FEATURES_OK
        // (legacy: after ACKNOWLEDGE and DRIVER); features accepted only at one of those.
        let acked = status.contains(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        let features_ok = status.contains(DeviceStatus::FEATURES_OK);
        let driver_ok = status.contains(DeviceStatus::DRIVER_OK);
        let legal = (!features_ok || (acked && latched))
            && match self.flavor {
                Flavor::Modern => features_ok || (!driver_ok && !latched),
                Flavor::Legacy => (!driver_ok || acked) && (!latched || features_ok || driver_ok),
            };
        if !legal {
            return Err(invalid(StateField::Status));
        }
        let negotiated = f.negotiated.get();
        let driver = f.driver_features.get();
        if latched {
            // What FEATURES_OK would have accepted from this device.
            let ok = match self.flavor {
                Flavor::Modern => {
                    negotiated == driver
                        && negotiated & !self.offered == 0
                        && negotiated & Features::VERSION_1.bits() != 0
                        && self
                            .device
                            .validate_features(Features::from_bits_retain(negotiated))
                }
                Flavor::Legacy => negotiated == driver & self.offered,
            };
            if !ok {
                return Err(invalid(StateField::Features));
            }
        } else if negotiated != 0 {
            return Err(invalid(StateField::Features));
        }
        let packed_negotiated =
            D::PACKED_RING && latched && negotiated & Features::RING_PACKED.bits() != 0;
        if packed != packed_negotiated {
            return Err(invalid(StateField::Features));
        }
        Ok((f, rest))
    }

    /// After a restore: the device learns the negotiated features again if it is live, and
    /// every ready queue is re-armed and re-checked once (kicks sent while it was stopped were
    /// lost); queues with work are served as after a kick, and every queue's interrupt is
    /// decided for what it published and had not signalled.
    pub(crate) fn resume<S: super::Signals>(&mut self, sig: &mut S) {
        if self.status.contains(DeviceStatus::DRIVER_OK) {
            self.device
                .activate(Features::from_bits_retain(self.negotiated));
        }
        if !self.is_live() || !self.dma {
            return;
        }
        let packed = self.is_packed();
        let mut served = false;
        for i in 0..Q {
            let pending = if packed {
                self.packed.get_mut(i).map(|p| p.resume(&self.mem))
            } else {
                self.queues.get_mut(i).map(|q| q.resume(&self.mem))
            };
            // An error leaves the queue broken; the pass below reports it.
            if pending == Some(Ok(true)) {
                match self.mode {
                    NotifyMode::Inline => {
                        if let Ok(i) = u16::try_from(i) {
                            self.process_queue(i, sig);
                            served = true;
                        }
                    }
                    NotifyMode::Deferred => {
                        if let Some(r) = self.regs.get_mut(i) {
                            r.kicked = true;
                        }
                    }
                }
            }
        }
        if !served {
            self.decide_interrupts(sig);
        }
    }
}

/// What a transport's own restore check sees of one saved queue (already checked against
/// its ring state).
pub(crate) struct QueueView {
    /// Enabled by the driver.
    pub(crate) enabled: bool,
    /// Enabled and not refused: the queue runs on `areas` with `size` entries.
    pub(crate) accepted: bool,
    /// The queue's size (meaningful when `accepted`).
    pub(crate) size: u16,
    /// Descriptor, driver and device area addresses as programmed.
    pub(crate) areas: (u64, u64, u64),
}

/// One queue's registers, its state, and what follows.
fn split_queue(b: &[u8]) -> Result<(&QueueRegsFields, &[u8], &[u8]), StateError> {
    let (r, rest) = QueueRegsFields::ref_from_prefix(b).map_err(|_| StateError::Truncated {
        needed: REGS_LEN,
        got: b.len(),
    })?;
    let len = usize::try_from(r.state_len.get()).unwrap_or(usize::MAX);
    let (body, rest) = take(rest, len)?;
    Ok((r, body, rest))
}

fn decode_regs(r: &QueueRegsFields) -> Result<QueueRegs, StateError> {
    if r.reserved != [0; 3] {
        return Err(StateError::invalid(StateField::Reserved));
    }
    let has_num = flag(r.has_num, StateField::QueueRegister)?;
    if !has_num && r.num.get() != 0 {
        return Err(StateError::invalid(StateField::QueueRegister));
    }
    Ok(QueueRegs {
        num: has_num.then(|| r.num.get()),
        desc: r.desc.get(),
        driver: r.driver.get(),
        device: r.device.get(),
        enabled: flag(r.enabled, StateField::QueueRegister)?,
        refused: setup_decode(r.refused, r.refused_size.get())?,
        reported: flag(r.reported, StateField::QueueRegister)?,
        kicked: flag(r.kicked, StateField::QueueRegister)?,
    })
}

/// A queue's refusal, breakage and kick records agree with the status and with each other:
/// every refusal and every reported breakage raised DEVICE_NEEDS_RESET, which only a reset
/// clears (MMIO-16, INIT-10); a refusal at enable leaves the queue enabled, except the one
/// before FEATURES_OK, which does not take; a kick is only recorded for an accepted queue
/// (notifies for any other are ignored, stopping or resetting a queue drops its kick).
/// Without this a restored queue marked as reported would break silently later.
fn check_refusal(r: &QueueRegs, needs_reset: bool) -> Result<(), StateError> {
    let recorded = r.reported || r.refused.is_some();
    let enabled_ok = match r.refused {
        None => true,
        Some(QueueSetupError::FeaturesNotAccepted) => !r.enabled,
        Some(_) => r.enabled,
    };
    let kick_ok = !r.kicked || (r.enabled && r.refused.is_none());
    if (recorded && !needs_reset) || !enabled_ok || !kick_ok {
        return Err(StateError::invalid(StateField::QueueSetup));
    }
    Ok(())
}

/// The registers agree with the queue they configure: an enabled, accepted queue is ready
/// with exactly the programmed size and areas; any other queue is not ready.
fn check_regs_against(
    r: &QueueRegs,
    ready: bool,
    size: u16,
    desc: u64,
    [driver, device]: [u64; 2],
) -> Result<(), StateError> {
    let live = r.enabled && r.refused.is_none();
    let consistent = if live {
        ready
            && r.num.is_none_or(|n| n == u32::from(size))
            && (r.desc, r.driver, r.device) == (desc, driver, device)
    } else {
        !ready
    };
    if consistent {
        Ok(())
    } else {
        Err(StateError::invalid(StateField::QueueRegister))
    }
}
