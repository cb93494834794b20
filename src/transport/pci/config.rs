//! The configuration space of the virtio-pci function (PCI Local Bus 3.0 §6; VIRTIO 1.4 §4.1.2,
//! §4.1.4): the type-0 header, BAR sizing and relocation, and the capability list with the
//! MSI-X capability and the virtio structure capabilities.
//!
//! The list is fixed: every `cap_next` is a constant pointing forward, and the driver cannot
//! write any of them, so a walk of the list always ends (after six capabilities). The only
//! driver-writable capability fields are MSI-X Message Control's enable and function mask and
//! the `VIRTIO_PCI_CAP_PCI_CFG` window (§4.1.4.9).

use crate::memory::GuestMemory;
use crate::transport::VirtioDevice;

use super::layout::{self as l, BAR_SIZE};
use super::{Events, PciTransport};

/// Fields of the `VIRTIO_PCI_CAP_PCI_CFG` window as the driver wrote them (§4.1.4.9).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Window {
    pub(super) bar: u8,
    pub(super) offset: u32,
    pub(super) length: u32,
    pub(super) data: [u8; 4],
}

impl Window {
    /// The BAR access the window describes, if it is one this function answers: BAR 0, a
    /// length of 1, 2 or 4, aligned to it, inside the BAR (§4.1.4.9.2).
    fn access(&self) -> Option<(u64, usize)> {
        let len = match self.length {
            1 => 1,
            2 => 2,
            4 => 4,
            _ => return None,
        };
        let off = u64::from(self.offset);
        let ok = self.bar == l::BAR
            && off.is_multiple_of(u64::from(self.length))
            && off.saturating_add(u64::from(self.length)) <= BAR_SIZE;
        ok.then_some((off, len))
    }
}

/// A vendor capability's dword `dw` (0-based): `cap_vndr`, `cap_next`, `cap_len`, `cfg_type`;
/// `bar`, `id`, padding; `offset`; `length`; then `extra` (§4.1.4).
fn vendor_cap(
    dw: u16,
    next: u8,
    len: u8,
    cfg_type: u8,
    offset: u64,
    length: u64,
    extra: u32,
) -> u32 {
    match dw {
        0 => u32::from_le_bytes([l::CAP_ID_VENDOR, next, len, cfg_type]),
        1 => u32::from(l::BAR),
        2 => u32::try_from(offset).unwrap_or(0),
        3 => u32::try_from(length).unwrap_or(0),
        4 => extra,
        _ => 0,
    }
}

/// The class code a device type presents by default (base class, subclass, programming
/// interface), as hypervisors commonly show virtio devices: network → Ethernet, block and
/// SCSI → SCSI storage, console → other communication, GPU → other display, input → other
/// input, vsock → other network, file system → other storage; anything else → 0xFF (a
/// device that fits no defined class).
pub(super) const fn default_class_code(device_id: u32) -> u32 {
    match device_id {
        1 => 0x02_00_00,
        2 | 8 => 0x01_00_00,
        3 => 0x07_80_00,
        16 => 0x03_80_00,
        18 => 0x09_80_00,
        19 => 0x02_80_00,
        26 => 0x01_80_00,
        _ => 0xFF_00_00,
    }
}

impl<D: VirtioDevice, M: GuestMemory, const Q: usize, const V: usize> PciTransport<D, M, Q, V> {
    /// Length of the notification structure: one `notify_off_multiplier` per queue (§4.1.4.4:
    /// `cap.length ≥ queue_notify_off * notify_off_multiplier + 4` for every queue).
    pub(super) fn notify_len(&self) -> u64 {
        u64::from(self.num_queues.max(1)).saturating_mul(u64::from(l::NOTIFY_OFF_MULTIPLIER))
    }

    /// The status register.
    fn status_register(&self) -> u16 {
        l::STATUS_CAPABILITIES
            | if self.irq.intx_pending() {
                l::STATUS_INTERRUPT
            } else {
                0
            }
    }

    /// Configuration dword at `dw` (a multiple of 4 below 256), without side effects. The
    /// `pci_cfg_data` dword is the window's latched data.
    pub(super) fn config_dword(&self, dw: u16) -> u32 {
        let cap = |base: u8| dw.wrapping_sub(u16::from(base)) / 4;
        let msix = u16::from(l::CAP_MSIX);
        match dw {
            0x00 => u32::from(l::VENDOR_ID) | u32::from(self.pci_device_id) << 16,
            0x04 => u32::from(self.command) | u32::from(self.status_register()) << 16,
            0x08 => u32::from(self.ids.revision) | (self.ids.class_code & 0xFF_FFFF) << 8,
            // Cache line size, latency timer, header type 0 (one function), BIST: all 0.
            0x0C => 0,
            0x10 => u32::try_from(self.bar & 0xFFFF_FFFF).unwrap_or(0) | l::BAR0_FLAGS,
            0x14 => u32::try_from(self.bar >> 32).unwrap_or(0),
            0x2C => {
                u32::from(self.ids.subsystem_vendor_id) | u32::from(self.ids.subsystem_id) << 16
            }
            0x34 => u32::from(l::CAP_MSIX),
            0x3C => u32::from(self.interrupt_line) | 1 << 8,
            // MSI-X: ID, next, Message Control; Table offset | BIR 0; PBA offset | BIR 0.
            d if d == msix => {
                u32::from(l::CAP_ID_MSIX)
                    | u32::from(l::CAP_COMMON) << 8
                    | u32::from(self.irq.message_control()) << 16
            }
            d if d == msix + 4 => u32::try_from(l::MSIX_TABLE_OFFSET).unwrap_or(0),
            d if d == msix + 8 => u32::try_from(l::MSIX_PBA_OFFSET).unwrap_or(0),
            d if (u16::from(l::CAP_COMMON)..u16::from(l::CAP_NOTIFY)).contains(&d) => vendor_cap(
                cap(l::CAP_COMMON),
                l::CAP_NOTIFY,
                16,
                l::COMMON_CFG,
                l::COMMON_OFFSET,
                l::COMMON_LEN,
                0,
            ),
            d if (u16::from(l::CAP_NOTIFY)..u16::from(l::CAP_ISR)).contains(&d) => vendor_cap(
                cap(l::CAP_NOTIFY),
                l::CAP_ISR,
                20,
                l::NOTIFY_CFG,
                l::NOTIFY_OFFSET,
                self.notify_len(),
                l::NOTIFY_OFF_MULTIPLIER,
            ),
            d if (u16::from(l::CAP_ISR)..u16::from(l::CAP_DEVICE)).contains(&d) => vendor_cap(
                cap(l::CAP_ISR),
                l::CAP_DEVICE,
                16,
                l::ISR_CFG,
                l::ISR_OFFSET,
                l::ISR_LEN,
                0,
            ),
            d if (u16::from(l::CAP_DEVICE)..u16::from(l::CAP_PCI_CFG)).contains(&d) => vendor_cap(
                cap(l::CAP_DEVICE),
                l::CAP_PCI_CFG,
                16,
                l::DEVICE_CFG,
                l::DEVICE_OFFSET,
                l::DEVICE_LEN,
                0,
            ),
            d if d == u16::from(l::CAP_PCI_CFG) => {
                u32::from_le_bytes([l::CAP_ID_VENDOR, 0, 20, l::PCI_CFG])
            }
            l::PCI_CFG_BAR => u32::from(self.window.bar),
            l::PCI_CFG_OFFSET => self.window.offset,
            l::PCI_CFG_LENGTH => self.window.length,
            l::PCI_CFG_DATA => u32::from_le_bytes(self.window.data),
            // BARs 2–5 and the expansion ROM are not implemented (read 0: no resource), and
            // everything else in the 256 bytes is reserved.
            _ => 0,
        }
    }

    /// A write of the bytes `mask` of configuration dword `dw`, `value` in place.
    pub(super) fn config_dword_write(&mut self, dw: u16, value: u32, mask: u32) {
        let merge = |old: u32| (old & !mask) | (value & mask);
        let msix = u16::from(l::CAP_MSIX);
        match dw {
            0x04 => {
                // Command (the low half); the status half has no writable bit here.
                let low = u16::try_from(merge(u32::from(self.command)) & 0xFFFF).unwrap_or(0);
                self.write_command(low & l::COMMAND_WRITABLE);
            }
            0x10 => {
                // BAR 0: the address bits above the size are writable; the size bits read 0,
                // so writing all-ones reads back the size mask (BAR sizing).
                let low = u64::from(merge(u32::try_from(self.bar & 0xFFFF_FFFF).unwrap_or(0)));
                self.move_bar((self.bar & !0xFFFF_FFFF) | (low & !(BAR_SIZE - 1)));
            }
            0x14 => {
                let high = u64::from(merge(u32::try_from(self.bar >> 32).unwrap_or(0)));
                self.move_bar((self.bar & 0xFFFF_FFFF) | (high << 32));
            }
            0x3C => {
                self.interrupt_line =
                    u8::try_from(merge(u32::from(self.interrupt_line)) & 0xFF).unwrap_or(0);
            }
            d if d == msix => {
                // Message Control is the upper half.
                let v = u16::try_from(value >> 16).unwrap_or(0);
                let m = u16::try_from(mask >> 16).unwrap_or(0);
                self.irq.write_message_control(v, m);
            }
            l::PCI_CFG_BAR => {
                self.window.bar =
                    u8::try_from(merge(u32::from(self.window.bar)) & 0xFF).unwrap_or(0);
            }
            l::PCI_CFG_OFFSET => self.window.offset = merge(self.window.offset),
            l::PCI_CFG_LENGTH => self.window.length = merge(self.window.length),
            l::PCI_CFG_DATA => {
                // §4.1.4.9.1: a write of pci_cfg_data writes the first cap.length bytes of it
                // to the BAR.
                self.window.data = merge(u32::from_le_bytes(self.window.data)).to_le_bytes();
                if let Some((off, len)) = self.window.access() {
                    let v = u64::from(u32::from_le_bytes(self.window.data));
                    self.bar0_write(off, len, v);
                }
            }
            // Read-only and reserved registers, BARs 2–5, expansion ROM: ignored.
            _ => {}
        }
    }

    /// A read of `pci_cfg_data` (§4.1.4.9.1): the BAR read of `cap.length` bytes at
    /// `cap.offset` lands in the first bytes of the window; an invalid window reads 0.
    pub(super) fn window_read(&mut self) -> u32 {
        let data = match self.window.access() {
            Some((off, len)) => u32::try_from(self.bar0_read(off, len) & 0xFFFF_FFFF).unwrap_or(0),
            None => 0,
        };
        self.window.data = data.to_le_bytes();
        data
    }

    fn write_command(&mut self, command: u16) {
        if (command ^ self.command) & l::COMMAND_MEMORY != 0 {
            self.events |= Events::BAR_CHANGED;
        }
        self.command = command;
        let bus_master = command & l::COMMAND_BUS_MASTER != 0;
        self.irq.bus_master = bus_master;
        self.irq.intx_disable = command & l::COMMAND_INTX_DISABLE != 0;
        // Without bus mastering the function does no DMA: no queue is run. Turned on, the
        // queues are scanned for what arrived meanwhile.
        if bus_master {
            self.core.dma_on(&mut self.irq);
        } else {
            self.core.set_dma(false);
        }
        // Messages held while bus mastering was off go out now.
        self.irq.release_pending();
    }

    fn move_bar(&mut self, address: u64) {
        if address != self.bar {
            self.bar = address;
            self.events |= Events::BAR_CHANGED;
        }
    }
}
