//! Save and restore of a virtio-pci function (see [`crate::snapshot`] for the format).
//!
//! The state is the [`Header`](crate::snapshot::Header) (kind [`StateKind::Pci`]), the PCI
//! and virtio register block [`PciFields`], the MSI-X table ([`MsixEntryFields`], 16 bytes per
//! vector), the queues' MSI-X vectors (2 bytes per queue), then the transport core (status,
//! features, generation, every queue's registers and ring state). The identity registers
//! (IDs, class, capability list) come from the device and are not saved.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::msix::{Entry, ISR_CONFIG, ISR_QUEUE, Interrupts, NO_VECTOR};
use super::{PciOutcome, PciTransport, layout};
use crate::memory::GuestMemory;
use crate::snapshot::{HEADER_LEN, StateError, StateField, StateKind, flag, open, write_header};
use crate::transport::VirtioDevice;
use crate::wire::DeviceStatus;

/// The PCI and virtio register block of a PCI function's state.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PciFields {
    /// The command register (Memory Space, Bus Master, Interrupt Disable only).
    pub command: U16,
    /// `queue_select`.
    pub queue_select: U16,
    /// The interrupt line register (scratch for the guest).
    pub interrupt_line: u8,
    /// ISR status (bits 0 and 1 only).
    pub isr: u8,
    /// MSI-X Enable (0 or 1).
    pub msix_enabled: u8,
    /// MSI-X Function Mask (0 or 1).
    pub function_mask: u8,
    /// BAR 0's address (a multiple of the BAR size).
    pub bar: U64,
    /// `device_feature_select`.
    pub device_feature_select: U32,
    /// `driver_feature_select`.
    pub driver_feature_select: U32,
    /// The `VIRTIO_PCI_CAP_PCI_CFG` window's offset.
    pub window_offset: U32,
    /// Its length.
    pub window_length: U32,
    /// Its data bytes.
    pub window_data: [u8; 4],
    /// Its BAR.
    pub window_bar: u8,
    /// Zero.
    pub reserved: [u8; 3],
    /// `config_msix_vector`.
    pub config_vector: U16,
    /// MSI-X table entries that follow (the function's vector count).
    pub vectors: U16,
    /// Queues whose vectors follow (the function's queue count).
    pub queues: U16,
    /// Zero.
    pub reserved2: U16,
    /// The MSI-X Pending Bit Array.
    pub pending: U64,
}

/// One MSI-X table entry.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MsixEntryFields {
    /// Message Address.
    pub address: U64,
    /// Message Data.
    pub data: U32,
    /// Vector Control's mask bit (0 or 1).
    pub masked: u8,
    /// Zero.
    pub reserved: [u8; 3],
}

const FIELDS_LEN: usize = core::mem::size_of::<PciFields>();
const ENTRY_LEN: usize = core::mem::size_of::<MsixEntryFields>();

fn invalid(field: StateField) -> StateError {
    StateError::invalid(field)
}

fn truncated(needed: usize, got: usize) -> StateError {
    StateError::Truncated { needed, got }
}

impl<D: VirtioDevice, M: GuestMemory, const Q: usize, const V: usize> PciTransport<D, M, Q, V> {
    /// Bytes [`save_into`](Self::save_into) writes at most: the 16-byte header, 56 bytes of
    /// registers, 16 per MSI-X vector, 2 per queue, and the transport core (as for
    /// virtio-mmio: 32 bytes, then per queue 44 bytes of registers and its ring state).
    pub fn state_len(&self) -> usize {
        HEADER_LEN
            .saturating_add(FIELDS_LEN)
            .saturating_add(ENTRY_LEN.saturating_mul(V))
            .saturating_add(2usize.saturating_mul(Q))
            .saturating_add(self.core.state_len())
    }

    /// Save the function's state into `out` (VIRTIO 1.4 §4.1 and the PCI registers the guest
    /// programmed: command, BAR 0, MSI-X table, pending bits and vectors, ISR, selects, the
    /// configuration access window, and the transport core). Save between two accesses, with
    /// the device stopped. Returns the length written.
    pub fn save_into(&self, out: &mut [u8]) -> Result<usize, StateError> {
        let needed = self.state_len();
        if out.len() < needed {
            return Err(StateError::BufferTooSmall { needed });
        }
        let irq = &self.irq;
        let fields = PciFields {
            command: U16::new(self.command),
            queue_select: U16::new(self.queue_select),
            interrupt_line: self.interrupt_line,
            isr: irq.isr,
            msix_enabled: u8::from(irq.enabled),
            function_mask: u8::from(irq.function_mask),
            bar: U64::new(self.bar),
            device_feature_select: U32::new(self.device_feature_select),
            driver_feature_select: U32::new(self.driver_feature_select),
            window_offset: U32::new(self.window.offset),
            window_length: U32::new(self.window.length),
            window_data: self.window.data,
            window_bar: self.window.bar,
            reserved: [0; 3],
            config_vector: U16::new(irq.config_vector),
            vectors: U16::new(u16::try_from(V).unwrap_or(u16::MAX)),
            queues: U16::new(u16::try_from(Q).unwrap_or(u16::MAX)),
            reserved2: U16::new(0),
            pending: U64::new(irq.pending),
        };
        let body = out.get_mut(HEADER_LEN..).unwrap_or(&mut []);
        let full = StateError::BufferTooSmall { needed };
        fields.write_to_prefix(body).map_err(|_| full)?;
        let mut at = FIELDS_LEN;
        for e in &irq.table {
            let f = MsixEntryFields {
                address: U64::new(e.address),
                data: U32::new(e.data),
                masked: u8::from(e.masked),
                reserved: [0; 3],
            };
            f.write_to_prefix(body.get_mut(at..).unwrap_or(&mut []))
                .map_err(|_| full)?;
            at = at.saturating_add(ENTRY_LEN);
        }
        for v in &irq.queue_vectors {
            U16::new(*v)
                .write_to_prefix(body.get_mut(at..).unwrap_or(&mut []))
                .map_err(|_| full)?;
            at = at.saturating_add(2);
        }
        let core_len = self.core.save_into(body.get_mut(at..).unwrap_or(&mut []))?;
        let len = HEADER_LEN.saturating_add(at).saturating_add(core_len);
        write_header(out, StateKind::Pci, len)?;
        Ok(len)
    }

    /// Restore a state [`save_into`](Self::save_into) wrote, into this function (built for the
    /// same device type, queue count and vector count), after checking every field; on any
    /// error nothing changes.
    ///
    /// Checked, besides the transport core's checks (as for
    /// [`MmioTransport::restore`](crate::transport::MmioTransport::restore)): the vector and
    /// queue counts; the command register holding only its writable bits; BAR 0 aligned to its
    /// size; ISR bits 0 and 1 only, and none, nor a pending bit, without DRIVER_OK; MSI-X flags 0 or 1; every MSI-X Message Address dword aligned; every vector (configuration and
    /// queues) an entry of the table or `NO_VECTOR`; pending bits only for existing entries;
    /// the core's DMA permission the command register's Bus Master Enable.
    ///
    /// Restore with the guest stopped, then call [`resume`](Self::resume) and map the BAR
    /// trap at [`bar_address`](Self::bar_address).
    pub fn restore(&mut self, state: &[u8]) -> Result<(), StateError> {
        let body = open(state, StateKind::Pci)?;
        let (f, mut rest) = PciFields::read_from_prefix(body)
            .map_err(|_| truncated(HEADER_LEN.saturating_add(FIELDS_LEN), state.len()))?;
        if f.reserved != [0; 3] || f.reserved2.get() != 0 {
            return Err(invalid(StateField::Reserved));
        }
        if usize::from(f.vectors.get()) != V || usize::from(f.queues.get()) != Q {
            return Err(invalid(StateField::Msix));
        }
        let command = f.command.get();
        if command & !layout::COMMAND_WRITABLE != 0 {
            return Err(invalid(StateField::Command));
        }
        let bar = f.bar.get();
        if bar % layout::BAR_SIZE != 0 {
            return Err(invalid(StateField::Bar));
        }
        if f.isr & !(ISR_QUEUE | ISR_CONFIG) != 0 {
            return Err(invalid(StateField::InterruptStatus));
        }
        let vector_ok = |v: u16| usize::from(v) < V || v == NO_VECTOR;
        let all = if V >= 64 {
            u64::MAX
        } else {
            (1u64 << V).wrapping_sub(1)
        };
        if !vector_ok(f.config_vector.get()) || f.pending.get() & !all != 0 {
            return Err(invalid(StateField::Msix));
        }
        let mut irq: Interrupts<Q, V> = Interrupts::POWER_ON;
        irq.isr = f.isr;
        irq.enabled = flag(f.msix_enabled, StateField::Msix)?;
        irq.function_mask = flag(f.function_mask, StateField::Msix)?;
        irq.config_vector = f.config_vector.get();
        irq.pending = f.pending.get();
        irq.bus_master = command & layout::COMMAND_BUS_MASTER != 0;
        irq.intx_disable = command & layout::COMMAND_INTX_DISABLE != 0;
        for e in &mut irq.table {
            let (ef, next) = MsixEntryFields::read_from_prefix(rest)
                .map_err(|_| truncated(ENTRY_LEN, rest.len()))?;
            if ef.reserved != [0; 3] {
                return Err(invalid(StateField::Reserved));
            }
            // Message Address bits 1:0 read 0 (PCI 3.0 §6.8.2.5): no table holds them.
            if ef.address.get() & 3 != 0 {
                return Err(invalid(StateField::Msix));
            }
            *e = Entry {
                address: ef.address.get(),
                data: ef.data.get(),
                masked: flag(ef.masked, StateField::Msix)?,
            };
            rest = next;
        }
        for v in &mut irq.queue_vectors {
            let (vf, next) = U16::read_from_prefix(rest).map_err(|_| truncated(2, rest.len()))?;
            if !vector_ok(vf.get()) {
                return Err(invalid(StateField::Msix));
            }
            *v = vf.get();
            rest = next;
        }
        // The core last, checked in full before anything is applied.
        let used = self.core.check_state(rest, |_, _| Ok(()))?;
        if used != rest.len() {
            return Err(StateError::Length {
                stated: u32::try_from(state.len()).unwrap_or(u32::MAX),
                expected: u32::try_from(
                    state.len().saturating_sub(rest.len()).saturating_add(used),
                )
                .unwrap_or(u32::MAX),
            });
        }
        if self.core.state_dma(rest) != Some(irq.bus_master) {
            return Err(invalid(StateField::Command));
        }
        // ISR bits and pending messages are raised only for a live driver (used buffers,
        // configuration changes and NEEDS_RESET notify only after DRIVER_OK, STAT-09), and the
        // virtio reset that takes DRIVER_OK back clears them (§4.1.4.5).
        let live = self
            .core
            .state_status(rest)
            .is_some_and(|s| s.contains(DeviceStatus::DRIVER_OK));
        if !live && irq.isr != 0 {
            return Err(invalid(StateField::InterruptStatus));
        }
        if !live && irq.pending != 0 {
            return Err(invalid(StateField::Msix));
        }
        self.core.apply_state(rest)?;
        self.irq = irq;
        self.command = command;
        self.bar = bar;
        self.interrupt_line = f.interrupt_line;
        self.queue_select = f.queue_select.get();
        self.device_feature_select = f.device_feature_select.get();
        self.driver_feature_select = f.driver_feature_select.get();
        self.window.offset = f.window_offset.get();
        self.window.length = f.window_length.get();
        self.window.data = f.window_data;
        self.window.bar = f.window_bar;
        Ok(())
    }

    /// After a [`restore`](Self::restore): tell the device its negotiated features again,
    /// re-arm and re-check every ready queue once (kicks sent while the function was stopped
    /// were lost) and serve the ones with work, decide the interrupts still due; the outcome
    /// carries the MSI-X messages to send and the INTx level (pending bits of unmasked vectors
    /// go out now).
    pub fn resume(&mut self) -> PciOutcome {
        let start = self.begin();
        self.core.resume(&mut self.irq);
        self.irq.release_pending();
        self.finish(0, start)
    }
}
