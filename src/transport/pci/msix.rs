//! Interrupts of the virtio-pci function: MSI-X (PCI Local Bus 3.0 §6.8.2; virtio §4.1.5.1.2,
//! §4.1.5.4, §4.1.5.5) and INTx with the ISR status (§4.1.4.5).
//!
//! The transport core decides *that* an interrupt is due ([`Signals`]); this module decides
//! *how*: with MSI-X enabled, the vector the driver mapped the event to (nothing for
//! [`NO_VECTOR`]), held in the pending bit array while the vector, the whole function or bus
//! mastering is masked and sent when it is unmasked; with MSI-X disabled, a bit in the ISR and
//! the INTA# level. Nothing is raised here: the vectors to send are collected and handed to
//! the hypervisor in the access's [`PciOutcome`](super::PciOutcome).

use crate::transport::core::Signals;

/// `queue_msix_vector` / `config_msix_vector` value that maps an event to no vector
/// (§4.1.5.1.2); also what a mapping the device refuses reads back as.
#[doc(alias = "VIRTIO_MSI_NO_VECTOR")]
pub const NO_VECTOR: u16 = 0xFFFF;

/// A set of MSI-X vectors (table entries) whose message the hypervisor must send now: bit `v`
/// is entry `v`. Look each message up with
/// [`PciTransport::msix_message`](super::PciTransport::msix_message) or iterate them with
/// [`PciTransport::msix_messages`](super::PciTransport::msix_messages).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MsixVectors(u64);

impl MsixVectors {
    /// No vector.
    pub const EMPTY: Self = Self(0);

    /// The set as a bit mask (bit `v` = vector `v`).
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Whether no message is due.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether vector `v` is in the set.
    pub const fn contains(self, v: u16) -> bool {
        v < 64 && self.0 & (1 << v) != 0
    }

    /// The vectors in the set, lowest first.
    pub fn iter(self) -> impl Iterator<Item = u16> {
        (0u16..64).filter(move |&v| self.contains(v))
    }
}

/// One MSI-X message: a 32-bit write of `data` to `address` (PCI Local Bus 3.0 §6.8.2.5,
/// §6.8.2.6), as the driver programmed it in the table. On x86 the address selects the local
/// APIC and the data the vector; a hypervisor delivers it as its interrupt controller model
/// expects (KVM: `KVM_SIGNAL_MSI` or an irqfd routed to it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MsiMessage {
    /// Message Address (64 bits, dword aligned).
    pub address: u64,
    /// Message Data.
    pub data: u32,
}

/// One MSI-X table entry.
#[derive(Clone, Copy, Debug)]
pub(super) struct Entry {
    pub(super) address: u64,
    pub(super) data: u32,
    /// Vector Control bit 0. Every entry is masked at power-on (PCI 3.0 §6.8.2.9).
    pub(super) masked: bool,
}

impl Entry {
    const POWER_ON: Self = Self {
        address: 0,
        data: 0,
        masked: true,
    };
}

/// `Message Control` bit 15: MSI-X enable.
const MSIX_ENABLE: u16 = 1 << 15;
/// `Message Control` bit 14: function mask.
const FUNCTION_MASK: u16 = 1 << 14;

/// ISR bit 0: a queue interrupt (§4.1.4.5).
pub(super) const ISR_QUEUE: u8 = 1;
/// ISR bit 1: a configuration change interrupt.
pub(super) const ISR_CONFIG: u8 = 2;

/// The interrupt state of a function with `Q` queues and `V` MSI-X vectors (`1 ≤ V ≤ 64`).
#[derive(Clone)]
pub(super) struct Interrupts<const Q: usize, const V: usize> {
    /// ISR status (§4.1.4.5).
    pub(super) isr: u8,
    /// MSI-X enable and function mask, as in Message Control.
    pub(super) enabled: bool,
    pub(super) function_mask: bool,
    /// Command register mirrors: bus master enable (no message without it), INTx disable.
    pub(super) bus_master: bool,
    pub(super) intx_disable: bool,
    pub(super) config_vector: u16,
    pub(super) queue_vectors: [u16; Q],
    pub(super) table: [Entry; V],
    /// Pending bit array.
    pub(super) pending: u64,
    /// Vectors to send, collected during one access.
    fire: u64,
}

debug_fields!([const Q: usize, const V: usize] [Q, V] Interrupts {
    isr, enabled, function_mask, bus_master, intx_disable, config_vector, queue_vectors, table,
    pending, fire
});

impl<const Q: usize, const V: usize> Interrupts<Q, V> {
    pub(super) const POWER_ON: Self = Self {
        isr: 0,
        enabled: false,
        function_mask: false,
        bus_master: false,
        intx_disable: false,
        config_vector: NO_VECTOR,
        queue_vectors: [NO_VECTOR; Q],
        table: [Entry::POWER_ON; V],
        pending: 0,
        fire: 0,
    };

    /// Virtio device reset (§4.1.5.1.2: every event unmapped; §2.4: no notification from
    /// before the reset survives it). The MSI-X capability and table belong to PCI and stay.
    pub(super) fn virtio_reset(&mut self) {
        self.isr = 0;
        self.config_vector = NO_VECTOR;
        self.queue_vectors = [NO_VECTOR; Q];
        self.pending = 0;
        self.fire = 0;
    }

    /// What a driver's write of `v` to a vector field maps to: `v` if the table has that entry
    /// or `v` is [`NO_VECTOR`], otherwise [`NO_VECTOR`] (a refused mapping, §4.1.5.1.2).
    pub(super) fn map(v: u16) -> u16 {
        if usize::from(v) < V { v } else { NO_VECTOR }
    }

    /// Whether MSI-X is enabled in Message Control.
    pub(super) const fn msix_enabled(&self) -> bool {
        self.enabled
    }

    /// The INTA# level: asserted while the ISR is non-zero, MSI-X is disabled and the command
    /// register does not disable INTx (§4.1.4.5).
    pub(super) const fn intx_level(&self) -> bool {
        !self.enabled && !self.intx_disable && self.isr != 0
    }

    /// The status register's Interrupt Status bit: an INTx interrupt is pending, whether or
    /// not INTx is disabled.
    pub(super) const fn intx_pending(&self) -> bool {
        !self.enabled && self.isr != 0
    }

    /// Message Control as the driver reads it: table size − 1 (bits 10:0), function mask,
    /// enable.
    pub(super) fn message_control(&self) -> u16 {
        let size = u16::try_from(V.saturating_sub(1)).unwrap_or(0) & 0x7FF;
        size | if self.function_mask { FUNCTION_MASK } else { 0 }
            | if self.enabled { MSIX_ENABLE } else { 0 }
    }

    /// A write of the bits `mask` of Message Control: only enable and function mask are
    /// writable. Unmasking sends what is pending.
    pub(super) fn write_message_control(&mut self, value: u16, mask: u16) {
        if mask & MSIX_ENABLE != 0 {
            self.enabled = value & MSIX_ENABLE != 0;
        }
        if mask & FUNCTION_MASK != 0 {
            self.function_mask = value & FUNCTION_MASK != 0;
        }
        self.release_pending();
    }

    /// Entry `v`'s message, if the table has entry `v`.
    pub(super) fn message(&self, v: u16) -> Option<MsiMessage> {
        self.table.get(usize::from(v)).map(|e| MsiMessage {
            address: e.address,
            data: e.data,
        })
    }

    /// The vectors collected since the last call.
    pub(super) fn take_fired(&mut self) -> MsixVectors {
        MsixVectors(core::mem::take(&mut self.fire))
    }

    /// The pending bit array.
    pub(super) const fn pending(&self) -> u64 {
        self.pending
    }

    /// Whether entry `e` may send now: MSI-X enabled, function and entry unmasked, bus
    /// mastering on (a message is a memory write by the function).
    fn deliverable(&self, e: &Entry) -> bool {
        self.enabled && !self.function_mask && self.bus_master && !e.masked
    }

    /// Send vector `v` now, or set its pending bit while it is masked (PCI 3.0 §6.8.2.9). A
    /// vector the table does not have ([`NO_VECTOR`]) sends nothing (§4.1.5.4).
    fn route(&mut self, v: u16) {
        let Some(e) = self.table.get(usize::from(v)) else {
            return;
        };
        // `v < V ≤ 64`.
        let bit = 1u64.checked_shl(u32::from(v)).unwrap_or(0);
        if self.deliverable(e) {
            self.fire |= bit;
        } else {
            self.pending |= bit;
        }
    }

    /// Send every pending vector that is no longer masked, clearing its pending bit.
    pub(super) fn release_pending(&mut self) {
        if self.pending == 0 {
            return;
        }
        for (v, e) in (0..V).zip(&self.table) {
            let bit = 1u64
                .checked_shl(u32::try_from(v).unwrap_or(64))
                .unwrap_or(0);
            if self.pending & bit != 0 && self.deliverable(e) {
                self.pending &= !bit;
                self.fire |= bit;
            }
        }
    }

    /// A read of `len` bytes at `off` in the MSI-X table: aligned dword or qword accesses
    /// only (PCI 3.0 §6.8.2); anything else, and entries past the table, read 0.
    pub(super) fn table_read(&self, off: u64, len: usize) -> u64 {
        let Some((e, field)) =
            table_slot(off, len).and_then(|(i, f)| Some((self.table.get(i)?, f)))
        else {
            return 0;
        };
        let ctrl = u64::from(e.masked);
        match (len, field) {
            (4, 0) => e.address & 0xFFFF_FFFF,
            (4, 4) => e.address >> 32,
            (4, 8) => u64::from(e.data),
            (4, 12) => ctrl,
            (8, 0) => e.address,
            (8, 8) => u64::from(e.data) | (ctrl << 32),
            _ => 0,
        }
    }

    /// A write of `len` bytes at `off` in the MSI-X table. The address is dword aligned (bits
    /// 1:0 read 0), Vector Control has only its mask bit; writes past the table are ignored.
    /// Unmasking an entry sends its pending message.
    pub(super) fn table_write(&mut self, off: u64, len: usize, value: u64) {
        let Some((e, field)) =
            table_slot(off, len).and_then(|(i, f)| Some((self.table.get_mut(i)?, f)))
        else {
            return;
        };
        let low = value & 0xFFFF_FFFF;
        match (len, field) {
            (4, 0) => e.address = (e.address & !0xFFFF_FFFF) | (low & !3),
            (4, 4) => e.address = (e.address & 0xFFFF_FFFF) | (low << 32),
            (4, 8) => e.data = u32::try_from(low).unwrap_or(0),
            (4, 12) => e.masked = value & 1 != 0,
            (8, 0) => e.address = value & !3,
            (8, 8) => {
                e.data = u32::try_from(low).unwrap_or(0);
                e.masked = (value >> 32) & 1 != 0;
            }
            _ => return,
        }
        self.release_pending();
    }

    /// A read of `len` bytes at `off` in the pending bit array (aligned dword or qword).
    pub(super) fn pba_read(&self, off: u64, len: usize) -> u64 {
        match (off, len) {
            (0, 8) => self.pending,
            (0, 4) => self.pending & 0xFFFF_FFFF,
            (4, 4) => self.pending >> 32,
            _ => 0,
        }
    }
}

/// The entry index and the byte offset inside the entry of an aligned dword or qword access.
fn table_slot(off: u64, len: usize) -> Option<(usize, u64)> {
    let l = u64::try_from(len).ok()?;
    if !matches!(len, 4 | 8) || !off.is_multiple_of(l) {
        return None;
    }
    Some((usize::try_from(off / 16).ok()?, off % 16))
}

impl<const Q: usize, const V: usize> Signals for Interrupts<Q, V> {
    const PER_QUEUE: bool = true;

    /// §4.1.5.4: with MSI-X, the queue's vector (none for [`NO_VECTOR`]); without, ISR bit 0
    /// and INTx.
    fn used(&mut self, queue: u16) {
        if self.enabled {
            let v = self
                .queue_vectors
                .get(usize::from(queue))
                .copied()
                .unwrap_or(NO_VECTOR);
            self.route(v);
        } else {
            self.isr |= ISR_QUEUE;
        }
    }

    /// §4.1.5.5: ISR bit 1 in any case (§4.1.4.5 sets it before the notification), and with
    /// MSI-X the configuration vector.
    fn config(&mut self) {
        self.isr |= ISR_CONFIG;
        if self.enabled {
            self.route(self.config_vector);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_sets() {
        let s = MsixVectors(0b1010 | 1 << 63);
        assert_eq!(s.iter().collect::<heapless::Vec<u16, 4>>(), [1, 3, 63]);
        assert!(s.contains(63) && !s.contains(64) && !s.contains(NO_VECTOR));
        assert!(MsixVectors::EMPTY.is_empty());
    }

    #[test]
    fn table_slots() {
        assert_eq!(table_slot(0x10, 4), Some((1, 0)));
        assert_eq!(table_slot(0x1C, 4), Some((1, 12)));
        assert_eq!(table_slot(0x18, 8), Some((1, 8)));
        assert_eq!(table_slot(0x1C, 8), None);
        assert_eq!(table_slot(0x11, 4), None);
        assert_eq!(table_slot(0x10, 2), None);
    }

    #[test]
    fn masked_vectors_pend_and_fire_on_unmask() {
        let mut irq = Interrupts::<2, 4>::POWER_ON;
        irq.bus_master = true;
        irq.write_message_control(MSIX_ENABLE, MSIX_ENABLE);
        irq.queue_vectors = [1, NO_VECTOR];
        irq.used(0); // entry 1 masked at power-on
        irq.used(1); // no vector
        assert!(irq.take_fired().is_empty());
        assert_eq!(irq.pending(), 0b10);
        irq.table_write(0x1C, 4, 0);
        assert_eq!(irq.take_fired(), MsixVectors(0b10));
        assert_eq!(irq.pending(), 0);
        assert_eq!(irq.isr, 0, "MSI-X on: no ISR queue bit");
    }
}
