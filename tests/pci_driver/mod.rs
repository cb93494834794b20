//! A register-level virtio-pci driver model (VIRTIO 1.4 §4.1): what a guest kernel does to a
//! virtio PCI function, done only with configuration-space accesses and loads and stores in
//! the function's BAR, exactly what a hypervisor traps and forwards to `PciTransport`.
//!
//! * [`Function`] is the hypervisor side of one function: it forwards each access to the
//!   transport and delivers what the outcome says (MSI-X messages into a log, the INTA# level).
//! * [`PciDriver`] probes like a guest: IDs, the capability list walked by offset with a
//!   bound, BAR sizing with all-ones writes, placement, Memory Space and Bus Master; then
//!   feature negotiation, queue setup, notifications, MSI-X programming, the ISR, device
//!   configuration and the `VIRTIO_PCI_CAP_PCI_CFG` window.
//! * [`GuestPci`] is `virtio-drivers`' `Transport` on top of it, so the real guest device
//!   drivers (blk, console, net) run over this PCI function with split rings.
//!
//! Until the trap-based harness (virtio-drivers' own `PciTransport` on a faulting BAR) lands,
//! this is how PCI is driven in tests and in `blk_demo --transport pci`.
#![allow(dead_code)]

use std::cell::RefCell;
use std::rc::Rc;

use virtq::GuestMemory;
use virtq::transport::VirtioDevice;
use virtq::transport::pci::{MsiMessage, PciEvents, PciOutcome, PciTransport, layout};
use virtq_testkit::guest::virtio_drivers::transport::{
    DeviceStatus, DeviceType, InterruptStatus, Transport,
};
use virtq_testkit::guest::virtio_drivers::{self, PhysAddr};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Where the driver model places BAR 0 by default (guest-physical).
pub const BAR_BASE: u64 = 0x1_E000_0000;

/// What the hypervisor delivered to the guest.
#[derive(Debug, Default)]
pub struct IrqLog {
    /// MSI-X messages sent, in order.
    pub msi: Vec<MsiMessage>,
    /// The INTA# level now.
    pub intx: bool,
    /// Rising edges of INTA#.
    pub intx_edges: u32,
    /// Every event seen, accumulated.
    pub events: PciEvents,
    /// Accesses forwarded.
    pub traps: u64,
}

impl IrqLog {
    /// Take the messages sent so far.
    pub fn take_msi(&mut self) -> Vec<MsiMessage> {
        std::mem::take(&mut self.msi)
    }
}

/// The hypervisor side of one PCI function.
pub struct Function<D, M, const Q: usize, const V: usize> {
    pub t: RefCell<PciTransport<D, M, Q, V>>,
    pub irq: RefCell<IrqLog>,
}

/// A function shared by the guest model and the test.
pub type Shared<D, M, const Q: usize, const V: usize> = Rc<Function<D, M, Q, V>>;

/// Put `device` behind a PCI function over `mem`.
pub fn attach<D: VirtioDevice, M: GuestMemory, const Q: usize, const V: usize>(
    device: D,
    mem: M,
) -> Shared<D, M, Q, V> {
    Rc::new(Function {
        t: RefCell::new(PciTransport::new(device, mem)),
        irq: RefCell::new(IrqLog::default()),
    })
}

impl<D: VirtioDevice, M: GuestMemory, const Q: usize, const V: usize> Function<D, M, Q, V> {
    /// Deliver an outcome as a hypervisor does: each MSI-X message, the INTA# level.
    pub fn deliver(&self, out: PciOutcome) -> u64 {
        let t = self.t.borrow();
        let mut irq = self.irq.borrow_mut();
        irq.traps += 1;
        irq.msi.extend(t.msix_messages(out.msix));
        assert_eq!(
            t.msix_messages(out.msix).count(),
            out.msix.iter().count(),
            "every vector fired has a table entry"
        );
        if out.intx && !irq.intx {
            irq.intx_edges += 1;
        }
        irq.intx = out.intx;
        irq.events |= out.events;
        out.value
    }

    /// Run `f` on the transport and deliver its outcome.
    pub fn with(&self, f: impl FnOnce(&mut PciTransport<D, M, Q, V>) -> PciOutcome) -> u64 {
        let out = f(&mut self.t.borrow_mut());
        self.deliver(out)
    }
}

/// Configuration and memory accesses to one function, as the guest makes them.
pub trait PciBus {
    /// Configuration read.
    fn cfg_read(&self, off: u16, width: u8) -> u64;
    /// Configuration write.
    fn cfg_write(&self, off: u16, width: u8, value: u64);
    /// Memory load; all-ones if nothing decodes the address (master abort).
    fn mem_read(&self, addr: u64, width: u8) -> u64;
    /// Memory store; dropped if nothing decodes the address.
    fn mem_write(&self, addr: u64, width: u8, value: u64);
}

impl<D: VirtioDevice, M: GuestMemory, const Q: usize, const V: usize> PciBus
    for Shared<D, M, Q, V>
{
    fn cfg_read(&self, off: u16, width: u8) -> u64 {
        self.with(|t| t.config_read(off, width))
    }
    fn cfg_write(&self, off: u16, width: u8, value: u64) {
        self.with(|t| t.config_write(off, width, value));
    }
    fn mem_read(&self, addr: u64, width: u8) -> u64 {
        let out = self.t.borrow_mut().memory_read(addr, width);
        match out {
            Some(out) => self.deliver(out),
            None => u64::MAX >> (64 - 8 * u32::from(width.clamp(1, 8))),
        }
    }
    fn mem_write(&self, addr: u64, width: u8, value: u64) {
        let out = self.t.borrow_mut().memory_write(addr, width, value);
        if let Some(out) = out {
            self.deliver(out);
        }
    }
}

/// A virtio structure as the capability list describes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Structure {
    /// Configuration-space offset of its capability.
    pub cap: u16,
    pub bar: u8,
    pub offset: u64,
    pub length: u64,
}

/// The MSI-X capability.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsixCap {
    pub cap: u16,
    /// Entries (Table Size + 1).
    pub table_size: u16,
    pub table: u64,
    pub pba: u64,
}

/// Why probing failed.
#[derive(Debug, PartialEq, Eq)]
pub enum ProbeError {
    NotVirtio(u64),
    NoCapabilities,
    CapabilityLoop,
    Missing(u8),
    BadBar(u64),
    OutsideBar(u8),
}

/// The MSI-X address/data the model programs for vector `v`.
pub fn msi_for(v: u16) -> MsiMessage {
    MsiMessage {
        address: 0xFEE0_0000 + (u64::from(v) << 12),
        data: 0x4000 + u32::from(v),
    }
}

/// A register-level virtio-pci driver over bus `B`.
#[derive(Debug)]
pub struct PciDriver<B: PciBus> {
    pub bus: B,
    pub device_id: u16,
    pub bar: u64,
    pub bar_size: u64,
    pub common: Structure,
    pub notify: Structure,
    pub notify_mult: u32,
    pub isr: Structure,
    pub device: Structure,
    pub pci_cfg: Structure,
    pub msix: MsixCap,
    /// Capabilities visited in the walk, in order (id, offset).
    pub walk: Vec<(u8, u16)>,
}

use layout::common as cc;

impl<B: PciBus> PciDriver<B> {
    /// Probe the function as a guest kernel does and place BAR 0 at `base`.
    pub fn probe(bus: B, base: u64) -> Result<Self, ProbeError> {
        let id = bus.cfg_read(layout::VENDOR, 4);
        let device_id = (id >> 16) as u16;
        if id & 0xFFFF != 0x1AF4 || !(0x1040..=0x107F).contains(&device_id) {
            return Err(ProbeError::NotVirtio(id));
        }
        assert!(
            bus.cfg_read(layout::REVISION, 1) >= 1,
            "modern: revision ≥ 1"
        );
        if bus.cfg_read(layout::STATUS, 2) & u64::from(layout::STATUS_CAPABILITIES) == 0 {
            return Err(ProbeError::NoCapabilities);
        }
        // Walk the list by offset, at most 48 capabilities (the most 256 bytes can hold).
        let mut found: [Option<Structure>; 6] = [None; 6];
        let mut msix = None;
        let mut walk = Vec::new();
        let mut ptr = (bus.cfg_read(layout::CAPABILITIES, 1) & 0xFC) as u16;
        while ptr != 0 {
            if walk.len() >= 48 || ptr < 0x40 {
                return Err(ProbeError::CapabilityLoop);
            }
            let head = bus.cfg_read(ptr, 4);
            let (cap_id, next) = (head as u8, ((head >> 8) & 0xFC) as u16);
            walk.push((cap_id, ptr));
            match cap_id {
                layout::CAP_ID_VENDOR => {
                    let len = (head >> 16) as u8;
                    let cfg_type = (head >> 24) as u8;
                    assert!(len >= 16, "cap_len covers struct virtio_pci_cap");
                    let s = Structure {
                        cap: ptr,
                        bar: bus.cfg_read(ptr + 4, 1) as u8,
                        offset: bus.cfg_read(ptr + 8, 4),
                        length: bus.cfg_read(ptr + 12, 4),
                    };
                    // The first of each type is the preferred one (§4.1.4).
                    if let Some(slot) = found.get_mut(usize::from(cfg_type)) {
                        slot.get_or_insert(s);
                    }
                }
                layout::CAP_ID_MSIX => {
                    let control = (head >> 16) as u16;
                    let table = bus.cfg_read(ptr + 4, 4);
                    let pba = bus.cfg_read(ptr + 8, 4);
                    assert_eq!(table & 7, 0, "table in BAR 0");
                    assert_eq!(pba & 7, 0, "PBA in BAR 0");
                    msix = Some(MsixCap {
                        cap: ptr,
                        table_size: (control & 0x7FF) + 1,
                        table: table & !7,
                        pba: pba & !7,
                    });
                }
                _ => {}
            }
            ptr = next;
        }
        let get = |t: u8| found[usize::from(t)].ok_or(ProbeError::Missing(t));
        let (common, notify, isr, pci_cfg) = (
            get(layout::COMMON_CFG)?,
            get(layout::NOTIFY_CFG)?,
            get(layout::ISR_CFG)?,
            get(layout::PCI_CFG)?,
        );
        let device = get(layout::DEVICE_CFG)?;
        let notify_mult = bus.cfg_read(notify.cap + 16, 4) as u32;
        // BAR sizing: all-ones to both halves, read back the size mask.
        let lo = bus.cfg_read(layout::BAR0, 4);
        if lo & 0b111 != 0b100 {
            return Err(ProbeError::BadBar(lo));
        }
        bus.cfg_write(layout::BAR0, 4, 0xFFFF_FFFF);
        bus.cfg_write(layout::BAR1, 4, 0xFFFF_FFFF);
        let mask = (bus.cfg_read(layout::BAR0, 4) & !0xF) | (bus.cfg_read(layout::BAR1, 4) << 32);
        let bar_size = (!mask).wrapping_add(1);
        if !bar_size.is_power_of_two() || !base.is_multiple_of(bar_size) {
            return Err(ProbeError::BadBar(mask));
        }
        bus.cfg_write(layout::BAR0, 4, base & 0xFFFF_FFFF);
        bus.cfg_write(layout::BAR1, 4, base >> 32);
        for s in [common, notify, isr, device] {
            if s.bar != 0 || s.offset + s.length > bar_size {
                return Err(ProbeError::OutsideBar(s.bar));
            }
        }
        let command = bus.cfg_read(layout::COMMAND, 2);
        bus.cfg_write(
            layout::COMMAND,
            2,
            command | u64::from(layout::COMMAND_MEMORY | layout::COMMAND_BUS_MASTER),
        );
        Ok(Self {
            bus,
            device_id,
            bar: base,
            bar_size,
            common,
            notify,
            notify_mult,
            isr,
            device,
            pci_cfg,
            msix: msix.unwrap_or_default(),
            walk,
        })
    }

    /// Common configuration field at `off`, `width` bytes.
    pub fn cr(&self, off: u64, width: u8) -> u64 {
        self.bus
            .mem_read(self.bar + self.common.offset + off, width)
    }

    /// Write a common configuration field.
    pub fn cw(&self, off: u64, width: u8, value: u64) {
        self.bus
            .mem_write(self.bar + self.common.offset + off, width, value);
    }

    /// The device status.
    pub fn status(&self) -> u8 {
        self.cr(cc::DEVICE_STATUS, 1) as u8
    }

    /// Write the device status.
    pub fn set_status(&self, s: u8) {
        self.cw(cc::DEVICE_STATUS, 1, s.into());
    }

    /// Reset and wait (boundedly) for the status to read 0 (§4.1.4.3.2).
    pub fn reset(&self) {
        self.set_status(0);
        for _ in 0..8 {
            if self.status() == 0 {
                return;
            }
        }
        panic!("reset did not complete");
    }

    /// The offered features.
    pub fn device_features(&self) -> u64 {
        self.cw(cc::DEVICE_FEATURE_SELECT, 4, 0);
        let lo = self.cr(cc::DEVICE_FEATURE, 4);
        self.cw(cc::DEVICE_FEATURE_SELECT, 4, 1);
        lo | (self.cr(cc::DEVICE_FEATURE, 4) << 32)
    }

    /// Write the accepted features.
    pub fn write_features(&self, f: u64) {
        self.cw(cc::DRIVER_FEATURE_SELECT, 4, 0);
        self.cw(cc::DRIVER_FEATURE, 4, f & 0xFFFF_FFFF);
        self.cw(cc::DRIVER_FEATURE_SELECT, 4, 1);
        self.cw(cc::DRIVER_FEATURE, 4, f >> 32);
    }

    /// Reset, ACKNOWLEDGE, DRIVER, accept `offered & want`, FEATURES_OK. Returns the accepted
    /// set if the device kept FEATURES_OK.
    pub fn negotiate(&self, want: u64) -> Option<u64> {
        self.reset();
        self.set_status(1);
        self.set_status(3);
        let accept = self.device_features() & want;
        self.write_features(accept);
        self.set_status(3 | 8);
        (self.status() & 8 != 0).then_some(accept)
    }

    /// DRIVER_OK.
    pub fn driver_ok(&self) {
        self.set_status(1 | 2 | 8 | 4);
    }

    /// Select queue `q`.
    pub fn select(&self, q: u16) {
        self.cw(cc::QUEUE_SELECT, 2, q.into());
    }

    /// `queue_size` of queue `q` (its maximum until the driver writes one).
    pub fn queue_size(&self, q: u16) -> u16 {
        self.select(q);
        self.cr(cc::QUEUE_SIZE, 2) as u16
    }

    /// Program queue `q`: size, vector (returns what reads back), the three areas as 32-bit
    /// halves (as Linux does), enable. Returns the vector read back.
    pub fn setup_queue(&self, q: u16, size: u16, areas: (u64, u64, u64), vector: u16) -> u16 {
        self.select(q);
        self.cw(cc::QUEUE_SIZE, 2, size.into());
        self.cw(cc::QUEUE_MSIX_VECTOR, 2, vector.into());
        let got = self.cr(cc::QUEUE_MSIX_VECTOR, 2) as u16;
        for (off, v) in [
            (cc::QUEUE_DESC, areas.0),
            (cc::QUEUE_DRIVER, areas.1),
            (cc::QUEUE_DEVICE, areas.2),
        ] {
            self.cw(off, 4, v & 0xFFFF_FFFF);
            self.cw(off + 4, 4, v >> 32);
        }
        self.cw(cc::QUEUE_ENABLE, 2, 1);
        got
    }

    /// Map configuration changes to `vector`; returns what reads back.
    pub fn set_config_vector(&self, vector: u16) -> u16 {
        self.cw(cc::CONFIG_MSIX_VECTOR, 2, vector.into());
        self.cr(cc::CONFIG_MSIX_VECTOR, 2) as u16
    }

    /// The notify address of queue `q` (§4.1.4.4).
    pub fn notify_addr(&self, q: u16) -> u64 {
        self.select(q);
        let off = self.cr(cc::QUEUE_NOTIFY_OFF, 2);
        self.bar + self.notify.offset + off * u64::from(self.notify_mult)
    }

    /// Notify queue `q`: its index, 16 bits, at its notify address.
    pub fn notify(&self, q: u16) {
        let at = self.notify_addr(q);
        self.bus.mem_write(at, 2, q.into());
    }

    /// Read (and so clear) the ISR.
    pub fn read_isr(&self) -> u8 {
        self.bus.mem_read(self.bar + self.isr.offset, 1) as u8
    }

    /// Device configuration, `width` bytes at `off`.
    pub fn device_cfg(&self, off: u64, width: u8) -> u64 {
        self.bus
            .mem_read(self.bar + self.device.offset + off, width)
    }

    /// `config_generation`.
    pub fn generation(&self) -> u8 {
        self.cr(cc::CONFIG_GENERATION, 1) as u8
    }

    /// Program MSI-X entries `0..n` with [`msi_for`], unmasked, then enable MSI-X.
    pub fn enable_msix(&self, n: u16) {
        for v in 0..n {
            let m = msi_for(v);
            let e = self.bar + self.msix.table + u64::from(v) * 16;
            self.bus.mem_write(e, 4, m.address & 0xFFFF_FFFF);
            self.bus.mem_write(e + 4, 4, m.address >> 32);
            self.bus.mem_write(e + 8, 4, m.data.into());
            self.bus.mem_write(e + 12, 4, 0);
        }
        self.set_msix_control(true, false);
    }

    /// MSI-X Message Control: enable and function mask (a 2-byte config write).
    pub fn set_msix_control(&self, enable: bool, function_mask: bool) {
        let v = (u64::from(enable) << 15) | (u64::from(function_mask) << 14);
        self.bus.cfg_write(self.msix.cap + 2, 2, v);
    }

    /// Mask or unmask MSI-X entry `v`.
    pub fn mask_vector(&self, v: u16, masked: bool) {
        let at = self.bar + self.msix.table + u64::from(v) * 16 + 12;
        self.bus.mem_write(at, 4, masked.into());
    }

    /// The pending bit array.
    pub fn pba(&self) -> u64 {
        self.bus.mem_read(self.bar + self.msix.pba, 8)
    }

    /// A BAR 0 read through the `VIRTIO_PCI_CAP_PCI_CFG` window (§4.1.4.9).
    pub fn window_read(&self, bar_off: u64, len: u8) -> u64 {
        let cap = self.pci_cfg.cap;
        self.bus.cfg_write(cap + 4, 1, 0);
        self.bus.cfg_write(cap + 12, 4, len.into());
        self.bus.cfg_write(cap + 8, 4, bar_off);
        let v = self.bus.cfg_read(cap + 16, 4);
        v & (u64::MAX >> (64 - 8 * u32::from(len)))
    }

    /// A BAR 0 write through the window.
    pub fn window_write(&self, bar_off: u64, len: u8, value: u64) {
        let cap = self.pci_cfg.cap;
        self.bus.cfg_write(cap + 4, 1, 0);
        self.bus.cfg_write(cap + 12, 4, len.into());
        self.bus.cfg_write(cap + 8, 4, bar_off);
        self.bus.cfg_write(cap + 16, 4, value);
    }
}

/// `virtio-drivers`' `Transport` over the register-level model, so the real guest drivers run
/// over the PCI function. With `msix`, queue `i` is mapped to vector `i + 1` and
/// configuration changes to vector 0 (the table must have been enabled).
#[derive(Debug)]
pub struct GuestPci<B: PciBus> {
    pub drv: PciDriver<B>,
    pub msix: bool,
}

impl<B: PciBus> GuestPci<B> {
    /// Probe `bus` with BAR 0 at `base`; with `msix`, program and enable MSI-X (one vector
    /// per queue plus one for configuration changes).
    pub fn new(bus: B, base: u64, msix: bool) -> Self {
        let drv = PciDriver::probe(bus, base).expect("probe");
        if msix {
            drv.enable_msix(drv.msix.table_size);
            assert_eq!(drv.set_config_vector(0), 0);
        }
        Self { drv, msix }
    }
}

impl<B: PciBus> Drop for GuestPci<B> {
    fn drop(&mut self) {
        // Like virtio-drivers' own transports: reset the device when the transport goes.
        self.drv.set_status(0);
    }
}

impl<B: PciBus> Transport for GuestPci<B> {
    fn device_type(&self) -> DeviceType {
        DeviceType::try_from(u32::from(self.drv.device_id - 0x1040)).expect("known type")
    }

    fn read_device_features(&mut self) -> u64 {
        self.drv.device_features()
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        self.drv.write_features(driver_features);
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.drv.queue_size(queue).into()
    }

    fn notify(&mut self, queue: u16) {
        self.drv.notify(queue);
    }

    fn get_status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_retain(self.drv.status().into())
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.drv.set_status(status.bits() as u8);
    }

    fn set_guest_page_size(&mut self, _guest_page_size: u32) {}

    fn requires_legacy_layout(&self) -> bool {
        false
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        let vector = if self.msix {
            queue + 1
        } else {
            virtq::transport::pci::NO_VECTOR
        };
        let got = self.drv.setup_queue(
            queue,
            size as u16,
            (descriptors, driver_area, device_area),
            vector,
        );
        assert_eq!(got, vector, "vector mapped");
    }

    fn queue_unset(&mut self, _queue: u16) {
        // PCI has no way to disable one queue (queue_enable = 0 is forbidden, §4.1.4.3.2).
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.drv.select(queue);
        self.drv.cr(cc::QUEUE_ENABLE, 2) == 1
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        InterruptStatus::from_bits_retain(self.drv.read_isr().into())
    }

    fn read_config_generation(&self) -> u32 {
        self.drv.generation().into()
    }

    fn read_config_space<T: FromBytes + IntoBytes>(
        &self,
        offset: usize,
    ) -> virtio_drivers::Result<T> {
        let len = size_of::<T>();
        if (offset + len) as u64 > self.drv.device.length {
            return Err(virtio_drivers::Error::ConfigSpaceTooSmall);
        }
        // Field by field at the field's width (§4.1.3): 8-byte values as two 4-byte halves.
        let mut bytes = vec![0u8; len];
        let w = [4usize, 2, 1]
            .into_iter()
            .find(|&w| offset.is_multiple_of(w) && len.is_multiple_of(w))
            .unwrap_or(1);
        for at in (0..len).step_by(w) {
            let v = self
                .drv
                .device_cfg((offset + at) as u64, w as u8)
                .to_le_bytes();
            bytes[at..at + w].copy_from_slice(&v[..w]);
        }
        Ok(T::read_from_bytes(&bytes).expect("size matches"))
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> virtio_drivers::Result<()> {
        let bytes = value.as_bytes();
        if (offset + bytes.len()) as u64 > self.drv.device.length {
            return Err(virtio_drivers::Error::ConfigSpaceTooSmall);
        }
        for (i, b) in bytes.iter().enumerate() {
            self.drv.bus.mem_write(
                self.drv.bar + self.drv.device.offset + (offset + i) as u64,
                1,
                (*b).into(),
            );
        }
        Ok(())
    }
}
