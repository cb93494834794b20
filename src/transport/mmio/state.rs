//! Save and restore of a virtio-mmio transport (see [`crate::snapshot`] for the format).
//!
//! The state is the [`Header`](crate::snapshot::Header) (kind [`StateKind::Mmio`]), the
//! register block [`MmioFields`], the legacy per-queue registers (`QueuePFN`, `QueueAlign`,
//! 8 bytes per queue), then the transport core: status, features, configuration generation
//! and every queue's registers and ring state
//! ([`CoreFields`](crate::transport::CoreFields),
//! [`QueueRegsFields`](crate::transport::QueueRegsFields)). The device model's own state (a
//! disk, posted receive buffers) is the device's to save; chains it holds are saved as their
//! heads (split) or with [`PackedChain::save_into`](crate::PackedChain::save_into).

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{
    INT_CONFIG, INT_VRING, IrqState, LEGACY_DEFAULT_PAGE, LegacyQueue, MmioOutcome, MmioTransport,
    MmioVersion, legacy_layout,
};
use crate::memory::GuestMemory;
use crate::snapshot::{HEADER_LEN, StateError, StateField, StateKind, open, write_header};
use crate::transport::InterruptStatus;
use crate::transport::VirtioDevice;
use crate::transport::core::state::QueueView;
use crate::wire::DeviceStatus;

/// The virtio-mmio register block of a transport state.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MmioFields {
    /// The register layout: 1 legacy, 2 version 2 (§4.2.2, §4.2.4).
    pub version: u8,
    /// Zero.
    pub reserved: [u8; 3],
    /// `InterruptStatus` (bits 0 and 1 only).
    pub interrupt_status: U32,
    /// `DeviceFeaturesSel`.
    pub device_features_sel: U32,
    /// `DriverFeaturesSel`.
    pub driver_features_sel: U32,
    /// `QueueSel`.
    pub queue_sel: U32,
    /// Legacy `GuestPageSize`.
    pub guest_page_size: U32,
    /// The number of queues (the legacy registers and the core's queues that follow).
    pub queues: U16,
    /// Zero.
    pub reserved2: U16,
}

debug_fields!(MmioFields {
    version,
    reserved,
    interrupt_status,
    device_features_sel,
    driver_features_sel,
    queue_sel,
    guest_page_size,
    queues,
    reserved2
});

/// One queue's legacy registers.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct LegacyFields {
    pfn: U32,
    align: U32,
}

const FIELDS_LEN: usize = core::mem::size_of::<MmioFields>();
const LEGACY_LEN: usize = core::mem::size_of::<LegacyFields>();

impl<D: VirtioDevice, M: GuestMemory, const Q: usize> MmioTransport<D, M, Q> {
    /// Bytes [`save_into`](Self::save_into) writes at most: the 16-byte header, 28 bytes of
    /// registers, 8 per queue of legacy registers, and the core (32 bytes, then per queue 44
    /// bytes of registers and that queue's state: 96 bytes (split) or 112 (packed) plus one
    /// bit per entry of its maximum size, rounded up to 8 bytes). A blk device with one queue
    /// of 16 saves 232 bytes.
    pub fn state_len(&self) -> usize {
        HEADER_LEN
            .saturating_add(FIELDS_LEN)
            .saturating_add(LEGACY_LEN.saturating_mul(Q))
            .saturating_add(self.core.state_len())
    }

    /// Save the transport's state into `out` (VIRTIO 1.4 §4.2 registers, §2.1 status, §2.2
    /// features, §2.6 queues): every register a driver can read back, the interrupt status,
    /// and each queue's ring state. Save between two accesses, with the device stopped.
    /// Returns the length written.
    pub fn save_into(&self, out: &mut [u8]) -> Result<usize, StateError> {
        let needed = self.state_len();
        if out.len() < needed {
            return Err(StateError::BufferTooSmall { needed });
        }
        let fields = MmioFields {
            version: match self.version {
                MmioVersion::Legacy => 1,
                MmioVersion::V2 => 2,
            },
            reserved: [0; 3],
            interrupt_status: U32::new(u32::from(self.int.status.bits())),
            device_features_sel: U32::new(self.device_features_sel),
            driver_features_sel: U32::new(self.driver_features_sel),
            queue_sel: U32::new(self.queue_sel),
            guest_page_size: U32::new(self.guest_page_size),
            queues: U16::new(u16::try_from(Q).unwrap_or(u16::MAX)),
            reserved2: U16::new(0),
        };
        let body = out.get_mut(HEADER_LEN..).unwrap_or(&mut []);
        fields
            .write_to_prefix(body)
            .map_err(|_| StateError::BufferTooSmall { needed })?;
        let mut at = FIELDS_LEN;
        for l in &self.legacy {
            let f = LegacyFields {
                pfn: U32::new(l.pfn),
                align: U32::new(l.align),
            };
            let dst = body.get_mut(at..).unwrap_or(&mut []);
            f.write_to_prefix(dst)
                .map_err(|_| StateError::BufferTooSmall { needed })?;
            at = at.saturating_add(LEGACY_LEN);
        }
        let core_len = self.core.save_into(body.get_mut(at..).unwrap_or(&mut []))?;
        let len = HEADER_LEN.saturating_add(at).saturating_add(core_len);
        write_header(out, StateKind::Mmio, len)?;
        Ok(len)
    }

    /// Restore a state [`save_into`](Self::save_into) wrote, into this transport (built for
    /// the same device type, register layout and queue count), after checking every field
    /// against this transport, its device and guest memory; on any error nothing changes.
    ///
    /// Checked, besides every queue's own restore checks
    /// ([`Queue::restore`](crate::Queue::restore),
    /// [`PackedQueue::restore`](crate::PackedQueue::restore)): the register layout and queue
    /// count; the interrupt status bits, set only on a device the driver made usable
    /// (`USED_BUFFER` needs DRIVER_OK, legacy ACKNOWLEDGE and DRIVER; `CONFIG_CHANGE` needs
    /// DRIVER_OK); DMA allowed (MMIO has no bus mastering); on version 2 the legacy registers
    /// at their power-on values; a queue refused, reported broken or kicked only as a session
    /// leaves it (refusals and reports with DEVICE_NEEDS_RESET set, kicks on accepted
    /// queues); the device status a legal combination (no reserved
    /// bits, FEATURES_OK only after ACKNOWLEDGE and DRIVER with the features accepted,
    /// DRIVER_OK only after FEATURES_OK, legacy: after ACKNOWLEDGE and DRIVER); the negotiated
    /// features what this device would accept (a subset of what it offers, VERSION_1 on a
    /// modern transport, its own `validate_features`); the ring format the features select;
    /// each queue's registers consistent with its ring (an enabled queue is ready with the
    /// programmed size and areas; any other is not); legacy `QueuePFN` set exactly for enabled
    /// queues.
    ///
    /// Restore with the guest stopped, then call [`resume`](Self::resume).
    pub fn restore(&mut self, state: &[u8]) -> Result<(), StateError> {
        let invalid = StateError::invalid;
        let body = open(state, StateKind::Mmio)?;
        let (f, rest) = MmioFields::read_from_prefix(body).map_err(|_| StateError::Truncated {
            needed: HEADER_LEN.saturating_add(FIELDS_LEN),
            got: state.len(),
        })?;
        let version = match (f.version, self.version) {
            (1, MmioVersion::Legacy) | (2, MmioVersion::V2) => self.version,
            _ => return Err(invalid(StateField::TransportVersion)),
        };
        if f.reserved != [0; 3] || f.reserved2.get() != 0 {
            return Err(invalid(StateField::Reserved));
        }
        if usize::from(f.queues.get()) != Q {
            return Err(invalid(StateField::QueueRegister));
        }
        let int = f.interrupt_status.get();
        let int = match u8::try_from(int).ok().and_then(InterruptStatus::from_bits) {
            Some(bits) if int & !(INT_VRING | INT_CONFIG) == 0 => bits,
            _ => return Err(invalid(StateField::InterruptStatus)),
        };
        let page = f.guest_page_size.get();
        if !page.is_power_of_two() {
            return Err(invalid(StateField::Legacy));
        }
        let mut legacy = [LegacyQueue::POWER_ON; Q];
        let mut rest = rest;
        for l in &mut legacy {
            let (lf, next) =
                LegacyFields::read_from_prefix(rest).map_err(|_| StateError::Truncated {
                    needed: LEGACY_LEN,
                    got: rest.len(),
                })?;
            *l = LegacyQueue {
                pfn: lf.pfn.get(),
                align: lf.align.get(),
            };
            if !l.align.is_power_of_two() {
                return Err(invalid(StateField::Legacy));
            }
            rest = next;
        }
        // Everything checked before anything is applied. A legacy queue is enabled exactly
        // when its QueuePFN is set, and one in use sits where its page number, some page size
        // (GuestPageSize may have changed since), its QueueAlign and its size put it (LEG-07).
        let used = self.core.check_state(rest, |i, q| {
            let Some(&l) = legacy.get(i) else {
                return Err(invalid(StateField::Legacy));
            };
            if version == MmioVersion::Legacy
                && ((l.pfn != 0) != q.enabled || (q.accepted && !legacy_placed(l, q)))
            {
                return Err(invalid(StateField::Legacy));
            }
            Ok(())
        })?;
        // MMIO has no bus mastering: its core always may do DMA. `InterruptStatus` bits are
        // only ever raised for a driver that made the device usable (config changes and
        // DEVICE_NEEDS_RESET notify only with DRIVER_OK set, STAT-09; used buffers need a live
        // device, STAT-07), and only a reset, which clears them (MMIO-06), takes that back.
        if self.core.state_dma(rest) != Some(true) {
            return Err(invalid(StateField::Status));
        }
        let status = self
            .core
            .state_status(rest)
            .unwrap_or(DeviceStatus::empty());
        let usable = match version {
            MmioVersion::V2 => DeviceStatus::DRIVER_OK,
            MmioVersion::Legacy => DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER,
        };
        if (int.contains(InterruptStatus::USED_BUFFER) && !status.contains(usable))
            || (int.contains(InterruptStatus::CONFIG_CHANGE)
                && !status.contains(DeviceStatus::DRIVER_OK))
        {
            return Err(invalid(StateField::InterruptStatus));
        }
        // A version 2 transport never writes the legacy registers.
        if version == MmioVersion::V2
            && (page != LEGACY_DEFAULT_PAGE
                || legacy
                    .iter()
                    .any(|l| l.pfn != 0 || l.align != LEGACY_DEFAULT_PAGE))
        {
            return Err(invalid(StateField::Legacy));
        }
        if used != rest.len() {
            return Err(StateError::Length {
                stated: u32::try_from(state.len()).unwrap_or(u32::MAX),
                expected: u32::try_from(
                    state.len().saturating_sub(rest.len()).saturating_add(used),
                )
                .unwrap_or(u32::MAX),
            });
        }
        self.core.apply_state(rest)?;
        self.int = IrqState {
            status: int,
            raised: InterruptStatus::empty(),
        };
        self.legacy = legacy;
        self.device_features_sel = f.device_features_sel.get();
        self.driver_features_sel = f.driver_features_sel.get();
        self.queue_sel = f.queue_sel.get();
        self.guest_page_size = page;
        Ok(())
    }

    /// After a [`restore`](Self::restore): tell the device its negotiated features again,
    /// re-arm and re-check every ready queue once (kicks the driver sent while the device was
    /// stopped were lost) and serve the queues that have work, decide the interrupts still
    /// due, and return the outcome: the interrupt line level to set (it may already be high
    /// from the restored `InterruptStatus`; an edge-triggered line must get an edge now if it
    /// is) and the events (queues whose device budget ran out are pending,
    /// [`Events::KICKS`](crate::transport::Events::KICKS)).
    pub fn resume(&mut self) -> MmioOutcome {
        let start = self.begin();
        self.core.resume(&mut self.int);
        self.finish(start)
    }
}

/// Whether legacy queue `q` lies at the contiguous layout of its page number `l.pfn` with some
/// power-of-two page size, alignment `l.align` and its size (LEG-07).
fn legacy_placed(l: LegacyQueue, q: &QueueView) -> bool {
    let (desc, _, _) = q.areas;
    let pfn = u64::from(l.pfn);
    let page = desc
        .checked_div(pfn)
        .filter(|&p| p.saturating_mul(pfn) == desc);
    page.and_then(|p| u32::try_from(p).ok())
        .filter(|p| p.is_power_of_two())
        .and_then(|p| legacy_layout(l.pfn, p, u32::from(q.size), l.align))
        == Some(q.areas)
}
