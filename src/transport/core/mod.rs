//! The transport core: what every virtio transport does, whatever its register layout
//! (VIRTIO 1.4 §2.1 device status, §2.2 feature negotiation, §2.4 reset, §2.5 configuration
//! generation, §2.6 virtqueues, §3.1 initialization).
//!
//! virtio-mmio ([`super::mmio`]) and virtio-pci ([`super::pci`]) only decode their registers
//! and call in here. The status state machine, the feature latch, queue programming and every
//! queue check, DEVICE_NEEDS_RESET, the notification path and the used-buffer interrupt
//! decision exist once, in [`Core`].
//!
//! Interrupts leave the core through [`Signals`]: the core says "queue `i` has a used-buffer
//! notification due" or "a configuration change notification is due"; the transport turns
//! that into its own form (an `InterruptStatus` bit for MMIO, an ISR bit or an MSI-X vector
//! for PCI). The core never raises anything by itself.
//!
//! Nothing here allocates, blocks or takes a lock, so every entry point may run inside a
//! hypervisor's trap handler.

use core::fmt;

use crate::memory::{GuestAddress, GuestMemory};
use crate::packed::{PackedQueue, layout as packed_layout};
use crate::split::Queue;
use crate::wire::{DeviceStatus, Features, split_layout as layout};

use super::{Events, NotifyMode, Queues, VirtioDevice};

pub(crate) mod state;

/// Why a queue was refused when the driver enabled it (H9, MMIO-16, §4.1.4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum QueueSetupError {
    /// `QueueNum` / `queue_size` was 0 (H9a, PACKED-03).
    SizeZero,
    /// The size is above the maximum, including values that do not fit 16 bits (H9d, H9e).
    SizeTooLarge {
        /// The value written.
        size: u32,
    },
    /// The size is not a power of two, which the split ring requires (H9b, SPLIT-01).
    SizeNotPowerOfTwo {
        /// The value written.
        size: u32,
    },
    /// A ring address is zero or not aligned as §2.7 / §2.8 require (H9f).
    Misaligned,
    /// A ring's end does not fit in 64 bits (H9i).
    AddressOverflow,
    /// A ring lies (partly) outside guest RAM (H9g, H9h, SPLIT-07).
    OutsideRam,
    /// Two rings overlap (H9n).
    Overlap,
    /// Legacy: the page size or alignment makes the layout impossible.
    BadLegacyLayout,
    /// The queue was enabled before the driver's FEATURES_OK was accepted. §3.1.1 sets queues
    /// up after feature negotiation, and the ring format (split or packed) is only known
    /// once the features are, so the enable does not take: the enable register reads back
    /// 0, and the device raises DEVICE_NEEDS_RESET like for any refused queue.
    FeaturesNotAccepted,
}

impl fmt::Display for QueueSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::SizeZero => f.write_str("queue size 0"),
            Self::SizeTooLarge { size } => write!(f, "queue size {size} above the maximum"),
            Self::SizeNotPowerOfTwo { size } => write!(f, "queue size {size} not a power of two"),
            Self::Misaligned => f.write_str("ring address zero or misaligned"),
            Self::AddressOverflow => f.write_str("ring address range overflows"),
            Self::OutsideRam => f.write_str("ring outside guest RAM"),
            Self::Overlap => f.write_str("rings overlap"),
            Self::BadLegacyLayout => f.write_str("invalid legacy page size or alignment"),
            Self::FeaturesNotAccepted => f.write_str("queue enabled before FEATURES_OK"),
        }
    }
}

impl core::error::Error for QueueSetupError {}

/// Where the core's interrupt decisions go: a transport's interrupt state.
pub(crate) trait Signals {
    /// Whether the transport tells queues apart (PCI with per-queue MSI-X vectors). When it
    /// does not (MMIO: one `InterruptStatus` bit for every queue), the core skips the work of
    /// attributing a device's "notify" answer to the queues it completed on.
    const PER_QUEUE: bool;
    /// Queue `queue` has a used-buffer notification due (after suppression, §2.7.10, §2.8.10).
    fn used(&mut self, queue: u16);
    /// A configuration change notification is due (§2.5, also DEVICE_NEEDS_RESET, §2.1.2).
    fn config(&mut self);
}

/// Which status rules apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// VIRTIO 1.0 and later: FEATURES_OK is a step, the device is live at DRIVER_OK.
    Modern,
    /// Legacy interface (virtio-mmio version 1): no FEATURES_OK step; the driver may use the
    /// queues once it has set ACKNOWLEDGE and DRIVER (§3.1.2, LEG-10).
    Legacy,
}

/// One of the three areas of a queue (§2.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Area {
    /// Descriptor Area: split descriptor table or packed descriptor ring.
    Desc,
    /// Driver Area: split available ring or packed driver event suppression structure.
    Driver,
    /// Device Area: split used ring or packed device event suppression structure.
    Device,
}

/// The per-queue registers as the driver programmed them (raw; validated only at enable).
#[derive(Clone, Copy, Debug)]
struct QueueRegs {
    /// The size the driver wrote; `None`: the maximum for the negotiated ring format.
    num: Option<u32>,
    desc: u64,
    driver: u64,
    device: u64,
    /// Enabled by the driver: v2 `QueueReady` / PCI `queue_enable` as last accepted, or a
    /// legacy `QueuePFN != 0`. A refused queue stays enabled here (it reads back 1) but its
    /// `Queue` is never made ready.
    enabled: bool,
    /// Why the last enable was refused.
    refused: Option<QueueSetupError>,
    /// The queue's fatal error has been turned into DEVICE_NEEDS_RESET.
    reported: bool,
    /// A notification arrived in [`NotifyMode::Deferred`] and was not taken yet.
    kicked: bool,
}

impl QueueRegs {
    const POWER_ON: Self = Self {
        num: None,
        desc: 0,
        driver: 0,
        device: 0,
        enabled: false,
        refused: None,
        reported: false,
        kicked: false,
    };
}

/// Device-independent feature bits every transport here can carry when the device offers them
/// (§6): INDIRECT_DESC, EVENT_IDX, ACCESS_PLATFORM, IN_ORDER, ORDER_PLATFORM. VERSION_1,
/// RING_PACKED, RING_RESET and NOTIFICATION_DATA depend on the transport; SR_IOV,
/// NOTIF_CONFIG_DATA, ADMIN_VQ and SUSPEND are never offered (no mechanism behind them); bits
/// 44–49 are reserved (FEAT-02); 25, 26, 30, 31 are unassigned or legacy-only.
pub(crate) const GENERIC_ALLOWED: u64 = Features::INDIRECT_DESC.bits()
    | Features::EVENT_IDX.bits()
    | Features::ACCESS_PLATFORM.bits()
    | Features::IN_ORDER.bits()
    | Features::ORDER_PLATFORM.bits();

/// Device-type bits (§2.2): 0–23, 42 and 50–63 (41 is ADMIN_VQ, so it is withheld).
pub(crate) const DEVICE_SPECIFIC: u64 = 0x00FF_FFFF | (1 << 42) | !((1u64 << 50) - 1);

/// Negotiated bits a queue acts on.
const QUEUE_FEATURES: Features = Features::INDIRECT_DESC
    .union(Features::EVENT_IDX)
    .union(Features::IN_ORDER);

/// Word `sel` (32 bits) of a 64-bit feature set; words ≥ 2 are 0 (§4.1.4.3, MMIO-R05).
pub(crate) fn feature_word(bits: u64, sel: u32) -> u32 {
    let word = match sel {
        0 => bits,
        1 => bits >> 32,
        _ => 0,
    };
    // Keep the low 32 bits: that is the word.
    u32::try_from(word & 0xFFFF_FFFF).unwrap_or(0)
}

/// The device-independent state of one virtio device: its model `D`, guest memory `M`, `Q`
/// queues in both ring formats, status, features and configuration generation.
pub(crate) struct Core<D, M, const Q: usize> {
    pub(crate) device: D,
    pub(crate) mem: M,
    flavor: Flavor,
    mode: NotifyMode,
    queues: [Queue; Q],
    /// The same queues in the packed format, used instead of `queues` once RING_PACKED is
    /// negotiated. Their maximum is the device's own (any value ≤ 32768, §2.8); the split
    /// queues' is rounded down to a power of two (§2.7).
    packed: [PackedQueue; Q],
    regs: [QueueRegs; Q],
    status: DeviceStatus,
    offered: u64,
    driver_features: u64,
    negotiated: u64,
    features_latched: bool,
    config_generation: u32,
    /// Bump the generation at most once between two configuration reads (PCI's 8-bit
    /// `config_generation`, §4.1.4.3.1); MMIO's 32-bit one bumps on every change.
    lazy_generation: bool,
    /// The generation was bumped and the driver has not read the configuration since.
    generation_fresh: bool,
    /// The transport lets the device do DMA (PCI: Bus Master Enable). Without it no queue is
    /// run.
    dma: bool,
    /// A queue was refused since the transport last asked
    /// ([`access_events`](Self::access_events)): an event of the access in progress, not
    /// state.
    refused_event: bool,
}

impl<D: fmt::Debug, M, const Q: usize> fmt::Debug for Core<D, M, Q> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("device", &self.device)
            .field("status", &self.status)
            .field("offered", &self.offered)
            .field("negotiated", &self.negotiated)
            .field("queues", &self.queues)
            .field("packed", &self.packed)
            .finish()
    }
}

impl<D: VirtioDevice, M: GuestMemory, const Q: usize> Core<D, M, Q> {
    /// A core for `device` offering `offered` (already masked by the transport). Queue `i <
    /// Q` gets `device.queue_max_size(i)` entries as a packed ring and that rounded down to a
    /// power of two as a split ring (0: no such queue).
    pub(crate) fn new(device: D, mem: M, flavor: Flavor, offered: u64) -> Self {
        let max = |i: usize| u16::try_from(i).map_or(0, |i| device.queue_max_size(i));
        // `Queue::new` rounds the maximum down to a power of two (§2.7); a packed ring may
        // have any size up to the device's maximum (§2.8, PACKED-02).
        let queues = core::array::from_fn(|i| Queue::new(max(i)));
        let packed = core::array::from_fn(|i| PackedQueue::new(max(i)));
        Self {
            device,
            mem,
            flavor,
            mode: NotifyMode::Inline,
            queues,
            packed,
            regs: [QueueRegs::POWER_ON; Q],
            status: DeviceStatus::empty(),
            offered,
            driver_features: 0,
            negotiated: 0,
            features_latched: false,
            config_generation: 0,
            lazy_generation: false,
            generation_fresh: false,
            dma: true,
            refused_event: false,
        }
    }

    // ---- plain accessors ---------------------------------------------------------------------

    pub(crate) fn set_notify_mode(&mut self, mode: NotifyMode) {
        self.mode = mode;
    }

    /// Bump the configuration generation at most once between two configuration reads
    /// ([`note_config_read`](Self::note_config_read)).
    pub(crate) fn set_lazy_generation(&mut self) {
        self.lazy_generation = true;
    }

    /// Whether the device may do DMA (PCI Bus Master Enable): without it no queue runs.
    pub(crate) fn set_dma(&mut self, allowed: bool) {
        self.dma = allowed;
    }

    /// DMA allowed again (PCI Bus Master Enable set). If it was off while the driver is live,
    /// every ready queue is scanned as at DRIVER_OK: kicks sent and buffers queued while the
    /// device could not read the rings were not seen (INIT-07).
    pub(crate) fn dma_on<S: Signals>(&mut self, sig: &mut S) {
        let was = core::mem::replace(&mut self.dma, true);
        if !was && self.is_live() {
            self.scan(sig);
        }
    }

    pub(crate) fn queue(&self, index: u16) -> Option<&Queue> {
        self.queues.get(usize::from(index))
    }

    pub(crate) fn packed_queue(&self, index: u16) -> Option<&PackedQueue> {
        self.packed.get(usize::from(index))
    }

    /// Whether RING_PACKED was negotiated (§2.8).
    pub(crate) const fn is_packed(&self) -> bool {
        // `D::PACKED_RING` first: for a split-only device this folds to `false` at compile
        // time and the packed paths are not linked.
        D::PACKED_RING
            && self.features_latched
            && self.negotiated & Features::RING_PACKED.bits() != 0
    }

    pub(crate) fn queue_setup_error(&self, index: u16) -> Option<QueueSetupError> {
        self.regs.get(usize::from(index)).and_then(|r| r.refused)
    }

    /// The events of an access that started with device status `before`, as far as the core
    /// knows them: DEVICE_NEEDS_RESET newly raised, a queue refused at enable, queue work
    /// waiting. Clears the refusal record.
    pub(crate) fn access_events(&mut self, before: DeviceStatus) -> Events {
        let mut events = Events::empty();
        let needs_reset = DeviceStatus::DEVICE_NEEDS_RESET;
        if self.status.contains(needs_reset) && !before.contains(needs_reset) {
            events |= Events::NEEDS_RESET;
        }
        if core::mem::take(&mut self.refused_event) {
            events |= Events::QUEUE_REFUSED;
        }
        if self.has_kicks() {
            events |= Events::KICKS;
        }
        events
    }

    pub(crate) const fn status(&self) -> DeviceStatus {
        self.status
    }

    pub(crate) const fn offered(&self) -> u64 {
        self.offered
    }

    pub(crate) const fn negotiated(&self) -> u64 {
        self.negotiated
    }

    /// Whether the driver may use the device: not FAILED, and DRIVER_OK (modern) or
    /// ACKNOWLEDGE and DRIVER (legacy: no FEATURES_OK step, and the queues may be used before
    /// DRIVER_OK, LEG-10). A status holding only what the device set itself
    /// (DEVICE_NEEDS_RESET) is never live: §3.1.1 has the driver acknowledge the device
    /// before it uses it.
    pub(crate) fn is_live(&self) -> bool {
        let s = self.status;
        !s.contains(DeviceStatus::FAILED)
            && match self.flavor {
                Flavor::Modern => s.contains(DeviceStatus::DRIVER_OK),
                Flavor::Legacy => s.contains(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER),
            }
    }

    // ---- features ----------------------------------------------------------------------------

    /// Offered features, word `sel`.
    pub(crate) fn device_feature_word(&self, sel: u32) -> u32 {
        feature_word(self.offered, sel)
    }

    /// The driver's accepted features as the device keeps them (as written), word `sel`
    /// (§4.1.4.3.1 allows presenting invalid bits; FEATURES_OK checks them).
    pub(crate) fn driver_feature_word(&self, sel: u32) -> u32 {
        feature_word(self.driver_features, sel)
    }

    /// The driver writes word `sel` of its accepted features. Frozen once latched (FEAT-09);
    /// bits and words the device never offers are dropped (FEAT-11); FEATURES_OK still
    /// checks the set.
    pub(crate) fn write_driver_feature_word(&mut self, sel: u32, value: u32) {
        if self.features_latched {
            return;
        }
        let (mask, shifted) = match sel {
            0 => (0xFFFF_FFFF, u64::from(value)),
            1 => (0xFFFF_FFFF << 32, u64::from(value) << 32),
            _ => return,
        };
        // Kept as written: FEATURES_OK refuses a set with bits that were not offered (FEAT-08),
        // and a legacy driver negotiates exactly `written & offered`.
        self.driver_features = (self.driver_features & !mask) | (shifted & mask);
    }

    /// FEATURES_OK: validate and freeze the accepted set (FEAT-05, FEAT-08, INIT-04).
    fn latch_features(&mut self) -> bool {
        if self.features_latched {
            return true;
        }
        let accepted = match self.flavor {
            Flavor::Modern => {
                let a = self.driver_features;
                if a & !self.offered != 0
                    || a & Features::VERSION_1.bits() == 0
                    || !self.device.validate_features(Features::from_bits_retain(a))
                {
                    return false;
                }
                a
            }
            // Legacy has no FEATURES_OK step: keep what both sides know.
            Flavor::Legacy => self.driver_features & self.offered,
        };
        self.negotiated = accepted;
        self.features_latched = true;
        let qf = self.queue_features();
        for q in &mut self.queues {
            q.features = qf;
        }
        if D::PACKED_RING {
            for q in &mut self.packed {
                q.features = qf;
            }
        }
        true
    }

    /// The negotiated bits a queue acts on. A legacy driver may use a queue before DRIVER_OK
    /// (LEG-10), so until features are latched legacy queues use what the driver wrote.
    fn queue_features(&self) -> Features {
        let bits = match (self.features_latched, self.flavor) {
            (true, _) => self.negotiated,
            (false, Flavor::Legacy) => self.driver_features & self.offered,
            (false, Flavor::Modern) => 0,
        };
        Features::from_bits_truncate(bits) & QUEUE_FEATURES
    }

    // ---- status ------------------------------------------------------------------------------

    /// A non-zero write of the device status (§2.1, §3.1.1). The caller handles 0 (reset) by
    /// resetting its own state and calling [`reset`](Self::reset).
    pub(crate) fn write_status<S: Signals>(&mut self, value: u8, sig: &mut S) {
        let old = self.status;
        // DEVICE_NEEDS_RESET belongs to the device, SUSPEND is not offered and bit 5 is
        // reserved: all ignored (STAT-10, STAT-13).
        let requested = DeviceStatus::from_bits_truncate(value)
            .difference(DeviceStatus::DEVICE_NEEDS_RESET | DeviceStatus::SUSPEND);
        // Sticky: bits already set stay set; a write that would clear one is ignored for that
        // bit (STAT-11). After FAILED only reset is accepted (STAT-12).
        if old.contains(DeviceStatus::FAILED) {
            return;
        }
        let added = requested.difference(old);
        let mut new = old | (added & (DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER));
        let acked = new.contains(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        if added.contains(DeviceStatus::FEATURES_OK) && acked && self.latch_features() {
            new |= DeviceStatus::FEATURES_OK;
        }
        let mut go_live = false;
        if added.contains(DeviceStatus::DRIVER_OK) {
            let ok = match self.flavor {
                // Not live without an accepted FEATURES_OK (INIT-08).
                Flavor::Modern => new.contains(DeviceStatus::FEATURES_OK),
                // Legacy: no FEATURES_OK step, but the driver has acknowledged the device.
                Flavor::Legacy => acked,
            };
            if ok {
                new |= DeviceStatus::DRIVER_OK;
                go_live = true;
            }
        }
        if added.contains(DeviceStatus::FAILED) {
            new |= DeviceStatus::FAILED;
        }
        self.status = new;
        if go_live {
            self.go_live(sig);
        }
    }

    fn go_live<S: Signals>(&mut self, sig: &mut S) {
        if !self.features_latched {
            // Legacy: features are whatever the driver wrote by now.
            self.latch_features();
        }
        self.device
            .activate(Features::from_bits_retain(self.negotiated));
        // Buffers queued during setup get processed now (INIT-07), or are reported as kicks.
        self.scan(sig);
    }

    /// Serve every ready queue as if kicked (inline), or record a kick for each (deferred):
    /// buffers the driver queued while the device could not look (before DRIVER_OK, INIT-07;
    /// or while DMA was off). Nothing without DMA: [`dma_on`](Self::dma_on) scans again.
    fn scan<S: Signals>(&mut self, sig: &mut S) {
        if !self.dma {
            return;
        }
        match self.mode {
            NotifyMode::Inline => self.poll(sig),
            NotifyMode::Deferred => {
                let packed = self.is_packed();
                for ((q, p), r) in self.queues.iter().zip(&self.packed).zip(&mut self.regs) {
                    r.kicked = if packed { p.ready } else { q.ready };
                }
            }
        }
    }

    /// Device reset (§2.4, STAT-06, H19): every queue, the status, the features and the
    /// device model back to power-on before the status reads 0. The configuration generation
    /// survives (the driver compares it across reads).
    pub(crate) fn reset(&mut self) {
        self.device.reset();
        for ((q, p), r) in self
            .queues
            .iter_mut()
            .zip(&mut self.packed)
            .zip(&mut self.regs)
        {
            q.reset();
            // A split-only device never uses (or links) its packed queues.
            if D::PACKED_RING {
                p.reset();
            }
            *r = QueueRegs::POWER_ON;
        }
        self.status = DeviceStatus::empty();
        self.driver_features = 0;
        self.negotiated = 0;
        self.features_latched = false;
    }

    /// Enter DEVICE_NEEDS_RESET (§2.1.2), with a configuration change notification if
    /// DRIVER_OK is set (STAT-09, INIT-11). Only the first call has an effect until reset.
    pub(crate) fn raise_needs_reset<S: Signals>(&mut self, sig: &mut S) {
        if !self.status.contains(DeviceStatus::DEVICE_NEEDS_RESET) {
            self.status |= DeviceStatus::DEVICE_NEEDS_RESET;
            if self.status.contains(DeviceStatus::DRIVER_OK) {
                sig.config();
            }
        }
    }

    // ---- device configuration ----------------------------------------------------------------

    /// The configuration generation (§2.5.1).
    pub(crate) const fn config_generation(&self) -> u32 {
        self.config_generation
    }

    /// The device changed its configuration: a new generation, and a configuration change
    /// notification once the driver is live (§3.2.1, MMIO-05, MMIO-07). With a lazy
    /// generation, no new one if the driver has not read the configuration since the last
    /// (§4.1.4.3.1: the driver must see a change after reading a changed value; an 8-bit
    /// counter bumped on every change could wrap back to a value it saw).
    pub(crate) fn signal_config_change<S: Signals>(&mut self, sig: &mut S) {
        if !(self.lazy_generation && self.generation_fresh) {
            self.config_generation = self.config_generation.wrapping_add(1);
            self.generation_fresh = true;
        }
        if self.status.contains(DeviceStatus::DRIVER_OK) {
            sig.config();
        }
    }

    /// Read device-specific configuration (§2.5): `data.len()` bytes at `offset`.
    pub(crate) fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Ok(off) = u32::try_from(offset) {
            self.device.read_config(off, data);
        }
    }

    /// The driver read the device-specific configuration: the next change bumps the
    /// generation.
    pub(crate) fn note_config_read(&mut self) {
        self.generation_fresh = false;
    }

    /// Write device-specific configuration (§2.5). Before FEATURES_OK a modern driver must not
    /// write it: ignored (INIT-03); a legacy driver may (LEG-10).
    pub(crate) fn write_config(&mut self, offset: u64, data: &[u8]) {
        if self.flavor == Flavor::Modern && !self.features_latched {
            return;
        }
        if let Ok(off) = u32::try_from(offset) {
            self.device.write_config(off, data);
        }
    }

    // ---- queue programming -------------------------------------------------------------------

    /// Whether queue `index` exists (maximum size non-zero, MMIO-20, §4.1.4.3).
    pub(crate) fn queue_exists(&self, index: usize) -> bool {
        self.queues.get(index).is_some_and(|q| q.max_size != 0)
    }

    /// The largest size of queue `index` in the ring format the driver negotiated: a power of
    /// two for split rings (§2.7, §4.1.4.3.1), the device's own maximum for packed rings
    /// (§2.8: any size ≤ 32768). Before FEATURES_OK the split value (0 for no queue).
    pub(crate) fn max_size(&self, index: usize) -> u16 {
        if self.is_packed() {
            self.packed.get(index).map_or(0, |p| p.max_size)
        } else {
            self.queues.get(index).map_or(0, |q| q.max_size)
        }
    }

    /// Queue `index`'s size as the driver wrote it, or the maximum if it wrote none.
    pub(crate) fn queue_num(&self, index: usize) -> u32 {
        self.regs
            .get(index)
            .and_then(|r| r.num)
            .unwrap_or_else(|| u32::from(self.max_size(index)))
    }

    /// Whether queue `index` is enabled as the driver sees it.
    pub(crate) fn queue_enabled(&self, index: usize) -> bool {
        self.regs.get(index).is_some_and(|r| r.enabled)
    }

    /// Queue `index`'s registers if it exists and is not enabled: queue registers are frozen
    /// while the queue is enabled (MMIO-17, H9j, §4.1.4.3.2).
    fn regs_unlocked(&mut self, index: usize) -> Option<&mut QueueRegs> {
        if !self.queue_exists(index) {
            return None;
        }
        let r = self.regs.get_mut(index)?;
        if r.enabled {
            debug!(
                "virtq: queue {} register write ignored while enabled",
                index
            );
            return None;
        }
        Some(r)
    }

    /// The driver writes queue `index`'s size (ignored while enabled).
    pub(crate) fn set_queue_num(&mut self, index: usize, value: u32) {
        if let Some(r) = self.regs_unlocked(index) {
            r.num = Some(value);
        }
    }

    /// Queue `index`'s area address as programmed (0 for no queue).
    pub(crate) fn queue_addr(&self, index: usize, area: Area) -> u64 {
        self.regs.get(index).map_or(0, |r| match area {
            Area::Desc => r.desc,
            Area::Driver => r.driver,
            Area::Device => r.device,
        })
    }

    /// The driver writes the bits `mask` of queue `index`'s area address (a 32-bit half or
    /// all 64 bits; ignored while enabled, validated only at enable, MMIO-15).
    pub(crate) fn write_queue_addr(&mut self, index: usize, area: Area, value: u64, mask: u64) {
        if let Some(r) = self.regs_unlocked(index) {
            let f = match area {
                Area::Desc => &mut r.desc,
                Area::Driver => &mut r.driver,
                Area::Device => &mut r.device,
            };
            *f = (*f & !mask) | (value & mask);
        }
    }

    /// The driver enables queue `index` with the registers it programmed (v2 `QueueReady = 1`,
    /// PCI `queue_enable = 1`). Refused on a modern device before FEATURES_OK (the ring format
    /// is not known yet; the enable does not take, §3.1.1) and on any failed check (the enable
    /// reads back 1, the queue is never read, DEVICE_NEEDS_RESET, MMIO-16).
    pub(crate) fn enable_queue<S: Signals>(&mut self, index: usize, sig: &mut S) {
        if !self.queue_exists(index) || self.queue_enabled(index) {
            return; // MMIO-20; a second enable changes nothing
        }
        if self.flavor == Flavor::Modern && !self.features_latched {
            if let Some(r) = self.regs.get_mut(index) {
                r.refused = Some(QueueSetupError::FeaturesNotAccepted);
            }
            self.refused_event = true;
            warn!("virtq: queue {} enabled before FEATURES_OK: refused", index);
            self.raise_needs_reset(sig);
            return;
        }
        let num = self.queue_num(index);
        let Some(r) = self.regs.get_mut(index) else {
            return;
        };
        r.enabled = true;
        let (desc, driver, device) = (r.desc, r.driver, r.device);
        self.program(index, num, desc, driver, device, sig);
    }

    /// Legacy `QueuePFN` (§4.2.4, LEG-05, LEG-07): enable queue `index` at the contiguous
    /// layout `areas` computed from the PFN, or refuse it if that layout is impossible.
    pub(crate) fn enable_legacy<S: Signals>(
        &mut self,
        index: usize,
        areas: Option<(u64, u64, u64)>,
        sig: &mut S,
    ) {
        if !self.queue_exists(index) || self.queue_enabled(index) {
            return;
        }
        let num = self.queue_num(index);
        let Some(r) = self.regs.get_mut(index) else {
            return;
        };
        r.enabled = true;
        match areas {
            Some((desc, driver, device)) => {
                (r.desc, r.driver, r.device) = (desc, driver, device);
                self.program(index, num, desc, driver, device, sig);
            }
            None => {
                let max = self.max_size(index);
                let err = check_size(num, max)
                    .err()
                    .unwrap_or(QueueSetupError::BadLegacyLayout);
                self.refuse(index, err, sig);
            }
        }
    }

    /// The driver stops queue `index` (v2 `QueueReady = 0`, legacy `QueuePFN = 0`): nothing is
    /// touched after this returns; chains still in flight can no longer be completed (H19).
    pub(crate) fn stop_queue(&mut self, index: usize) {
        let Some(r) = self.regs.get_mut(index) else {
            return;
        };
        let was_enabled = core::mem::replace(&mut r.enabled, false);
        r.refused = None;
        r.reported = false;
        r.kicked = false;
        self.reset_rings(index);
        if was_enabled {
            self.queue_stopped(index);
        }
    }

    /// Per-queue reset (§2.6.1, `QueueReset` / `queue_reset` = 1): only with RING_RESET
    /// negotiated and for an enabled queue, otherwise ignored (MMIO-28). The device forgets
    /// the queue's chains, the queue and its registers return to their defaults, and the
    /// enable register reads 0 (MMIO-13). Returns whether the queue was reset.
    pub(crate) fn reset_queue(&mut self, index: usize) -> bool {
        if self.negotiated & Features::RING_RESET.bits() == 0 || !self.queue_exists(index) {
            return false;
        }
        let Some(r) = self.regs.get_mut(index) else {
            return false;
        };
        if !r.enabled {
            return false;
        }
        *r = QueueRegs::POWER_ON;
        self.reset_rings(index);
        self.queue_stopped(index);
        true
    }

    /// Queue `i` was stopped or reset on its own: the device must forget chains it kept from
    /// it, or it could later complete a stale head that the driver has since reused (H19).
    fn queue_stopped(&mut self, i: usize) {
        if let Ok(index) = u16::try_from(i) {
            self.device.queue_reset(index);
        }
    }

    /// Both formats of queue `i` back to their power-on state.
    fn reset_rings(&mut self, i: usize) {
        if let Some(q) = self.queues.get_mut(i) {
            q.reset();
        }
        if let Some(p) = self.packed.get_mut(i).filter(|_| D::PACKED_RING) {
            p.reset();
        }
    }

    /// Validate and program queue `i` (H9, MMIO-16) in the negotiated ring format; refuse it
    /// on any error.
    fn program<S: Signals>(
        &mut self,
        i: usize,
        num: u32,
        desc: u64,
        driver: u64,
        device: u64,
        sig: &mut S,
    ) {
        let qf = self.queue_features();
        let result = if self.is_packed() {
            let Some(p) = self.packed.get_mut(i) else {
                return;
            };
            let r = program_packed(p, &self.mem, num, desc, driver, device);
            p.features = qf;
            r
        } else {
            let Some(q) = self.queues.get_mut(i) else {
                return;
            };
            let r = program_split(q, &self.mem, num, desc, driver, device);
            q.features = qf;
            r
        };
        match result {
            Ok(()) => {
                if let Some(r) = self.regs.get_mut(i) {
                    r.refused = None;
                    r.reported = false;
                }
            }
            Err(e) => self.refuse(i, e, sig),
        }
    }

    fn refuse<S: Signals>(&mut self, i: usize, e: QueueSetupError, sig: &mut S) {
        warn!("virtq: queue {} refused: {}", i, e);
        self.reset_rings(i);
        if let Some(r) = self.regs.get_mut(i) {
            r.refused = Some(e);
        }
        self.refused_event = true;
        self.raise_needs_reset(sig);
    }

    // ---- notifications -----------------------------------------------------------------------

    /// Whether queue `index` may be run: the device is live, may do DMA, and the queue is
    /// ready (accepted) and not broken.
    pub(crate) fn queue_live(&self, index: u16) -> bool {
        let i = usize::from(index);
        self.dma
            && self.is_live()
            && if self.is_packed() {
                self.packed
                    .get(i)
                    .is_some_and(|q| q.ready && !q.is_broken())
            } else {
                self.queues
                    .get(i)
                    .is_some_and(|q| q.ready && !q.is_broken())
            }
    }

    /// An available-buffer notification for queue `index` (§2.9). Ignored in O(1) for a queue
    /// that is unknown, not ready, refused or broken, before DRIVER_OK and after FAILED
    /// (MMIO-27, H9l, H9m). Returns whether a kick was recorded for later
    /// ([`NotifyMode::Deferred`]).
    pub(crate) fn notify<S: Signals>(&mut self, index: u16, sig: &mut S) -> bool {
        if !self.queue_live(index) {
            return false;
        }
        match self.mode {
            NotifyMode::Inline => {
                self.process_queue(index, sig);
                false
            }
            NotifyMode::Deferred => match self.regs.get_mut(usize::from(index)) {
                Some(r) => {
                    r.kicked = true;
                    true
                }
                None => false,
            },
        }
    }

    /// Queues with work waiting: kicks recorded in [`NotifyMode::Deferred`], and queues whose
    /// device reported `more` (its budget ran out). Calls `f` with each and clears the record.
    pub(crate) fn take_kicks(&mut self, mut f: impl FnMut(u16)) {
        // Indices from a bounded range, not `enumerate` (whose counter is an overflow-checked
        // addition in builds with overflow checks).
        for (i, r) in (0..Q).zip(self.regs.iter_mut()) {
            let kicked = core::mem::take(&mut r.kicked);
            match u16::try_from(i) {
                Ok(i) if kicked => f(i),
                _ => {}
            }
        }
    }

    /// Whether any queue has work waiting (a kick or a `more`) not taken yet.
    pub(crate) fn has_kicks(&self) -> bool {
        self.regs.iter().any(|r| r.kicked)
    }

    /// Run the device on every live queue (a device that polls its rings).
    pub(crate) fn poll<S: Signals>(&mut self, sig: &mut S) {
        for i in 0..Q {
            if let Some(r) = self.regs.get_mut(i) {
                r.kicked = false;
            }
            if let Ok(i) = u16::try_from(i) {
                self.process_queue(i, sig);
            }
        }
    }

    /// Run the device on queue `index` now; ignored for a queue that is not live. Then the
    /// interrupt decision: every queue the device says needs one (its own suppression check,
    /// [`Queue::needs_notification`] / [`PackedQueue::needs_notification`]), and the device's
    /// own answer, and DEVICE_NEEDS_RESET for queues that broke. A device that reports `more`
    /// leaves the queue recorded as pending (taken with [`take_kicks`](Self::take_kicks)); the
    /// handler is never called again from here, so one call costs one device budget.
    pub(crate) fn process_queue<S: Signals>(&mut self, index: u16, sig: &mut S) {
        if !self.queue_live(index) {
            return;
        }
        let packed = self.is_packed();
        // Where each queue's used cursor stood, to attribute the handler's "notify" to the
        // queues it completed on (only for a transport with per-queue interrupts).
        let before: [u32; Q] = if S::PER_QUEUE {
            core::array::from_fn(|i| self.used_cursor(i, packed))
        } else {
            [0; Q]
        };
        // One call site for both formats: for a split-only device `packed` is a constant
        // `false` and the packed arm folds away.
        let queues = if packed {
            Queues::Packed(&mut self.packed)
        } else {
            Queues::Split(&mut self.queues)
        };
        let report = self.device.queue_notify(index, queues, &self.mem);
        let signal = report.notify;
        let mut broke = false;
        let mut attributed = false;
        let queues = self
            .queues
            .iter_mut()
            .zip(&mut self.packed)
            .zip(&mut self.regs)
            .zip(before);
        for (i, (((q, p), r), was)) in (0..Q).zip(queues) {
            // (ready, broken, interrupt due, used cursor) in the negotiated format.
            let (ready, broken, due, cursor) = if packed {
                let due = p.ready && !p.is_broken() && p.needs_notification(&self.mem) == Ok(true);
                let cursor = packed_cursor(p);
                (p.ready, p.is_broken(), due, cursor)
            } else {
                let due = q.ready && !q.is_broken() && q.needs_notification(&self.mem) == Ok(true);
                (q.ready, q.is_broken(), due, u32::from(q.next_used_idx))
            };
            if !ready {
                continue;
            }
            let moved = S::PER_QUEUE && signal && cursor != was;
            if (due || moved)
                && let Ok(i) = u16::try_from(i)
            {
                sig.used(i);
            }
            attributed |= moved;
            if broken && !r.reported {
                r.reported = true;
                broke = true;
            }
        }
        if signal && !attributed {
            sig.used(index);
        }
        // Work left over: record it (a kick the device owes itself). Served or not, any
        // earlier record for this queue is settled by this call.
        let pending = report.more && self.queue_live(index);
        if let Some(r) = self.regs.get_mut(usize::from(index)) {
            r.kicked = pending;
        }
        if broke {
            self.raise_needs_reset(sig);
        }
    }

    /// Ask every ready queue whether a used-buffer notification is due, and turn a queue that
    /// broke into DEVICE_NEEDS_RESET (after a restore, when no queue had work to serve).
    pub(crate) fn decide_interrupts<S: Signals>(&mut self, sig: &mut S) {
        let packed = self.is_packed();
        let mut broke = false;
        let queues = self
            .queues
            .iter_mut()
            .zip(&mut self.packed)
            .zip(&mut self.regs);
        for (i, ((q, p), r)) in (0..Q).zip(queues) {
            let (ready, broken, due) = if packed {
                let due = p.ready && !p.is_broken() && p.needs_notification(&self.mem) == Ok(true);
                (p.ready, p.is_broken(), due)
            } else {
                let due = q.ready && !q.is_broken() && q.needs_notification(&self.mem) == Ok(true);
                (q.ready, q.is_broken(), due)
            };
            if !ready {
                continue;
            }
            if due && let Ok(i) = u16::try_from(i) {
                sig.used(i);
            }
            if broken && !r.reported {
                r.reported = true;
                broke = true;
            }
        }
        if broke {
            self.raise_needs_reset(sig);
        }
    }

    fn used_cursor(&self, i: usize, packed: bool) -> u32 {
        if packed {
            self.packed.get(i).map_or(0, packed_cursor)
        } else {
            self.queues.get(i).map_or(0, |q| u32::from(q.next_used_idx))
        }
    }
}

/// A packed queue's used cursor with its wrap counter, as one comparable value.
fn packed_cursor(p: &PackedQueue) -> u32 {
    u32::from(p.next_used_idx) | (u32::from(p.used_wrap_counter) << 16)
}

/// Size checks for the split ring (H9a, b, d, e).
pub(crate) fn check_size(num: u32, max: u16) -> Result<u16, QueueSetupError> {
    if num == 0 {
        return Err(QueueSetupError::SizeZero);
    }
    if num > u32::from(max) {
        return Err(QueueSetupError::SizeTooLarge { size: num });
    }
    if !num.is_power_of_two() {
        return Err(QueueSetupError::SizeNotPowerOfTwo { size: num });
    }
    u16::try_from(num).map_err(|_| QueueSetupError::SizeTooLarge { size: num })
}

/// Size checks for the packed ring (§2.8.10.1, PACKED-02, PACKED-03): 1 to `max`, any value
/// (no power-of-two rule, H9c).
pub(crate) fn check_packed_size(num: u32, max: u16) -> Result<u16, QueueSetupError> {
    if num == 0 {
        return Err(QueueSetupError::SizeZero);
    }
    match u16::try_from(num) {
        Ok(size) if size <= max => Ok(size),
        _ => Err(QueueSetupError::SizeTooLarge { size: num }),
    }
}

/// Whether `[a, a + la)` and `[b, b + lb)` overlap; both ends were checked not to overflow.
fn overlaps(a: u64, la: u64, b: u64, lb: u64) -> bool {
    a < b.saturating_add(lb) && b < a.saturating_add(la)
}

/// The checks on a queue's three areas, each `(address, alignment, length)`, shared by both
/// ring formats (H9): non-zero and aligned (SPLIT-03..05, PACKED-04), not wrapping around the
/// address space, pairwise disjoint. Whether they are RAM is the queue's `check_rings`.
fn check_areas(areas: [(u64, u64, u64); 3]) -> Result<(), QueueSetupError> {
    if areas
        .iter()
        .any(|&(addr, align, _)| addr == 0 || !GuestAddress(addr).is_aligned(align))
    {
        return Err(QueueSetupError::Misaligned);
    }
    if areas
        .iter()
        .any(|&(addr, _, len)| GuestAddress(addr).checked_end(len).is_none())
    {
        return Err(QueueSetupError::AddressOverflow);
    }
    let [(a, _, la), (b, _, lb), (c, _, lc)] = areas;
    if overlaps(a, la, b, lb) || overlaps(a, la, c, lc) || overlaps(b, lb, c, lc) {
        return Err(QueueSetupError::Overlap);
    }
    Ok(())
}

/// Program packed queue `p` from raw register values and validate it (PACKED-02..05, H9); on
/// error `p` is left not ready. `desc` is the descriptor ring, `driver` and `device` the
/// driver and device event suppression structures.
fn program_packed<M: GuestMemory + ?Sized>(
    p: &mut PackedQueue,
    mem: &M,
    num: u32,
    desc: u64,
    driver: u64,
    device: u64,
) -> Result<(), QueueSetupError> {
    let size = check_packed_size(num, p.max_size)?;
    check_areas([
        (
            desc,
            packed_layout::DESC_ALIGN,
            packed_layout::desc_ring_bytes(size),
        ),
        (
            driver,
            packed_layout::EVENT_ALIGN,
            packed_layout::EVENT_SIZE,
        ),
        (
            device,
            packed_layout::EVENT_ALIGN,
            packed_layout::EVENT_SIZE,
        ),
    ])?;
    p.reset();
    p.set_size(size);
    p.desc_ring_addr = GuestAddress(desc);
    p.driver_event_addr = GuestAddress(driver);
    p.device_event_addr = GuestAddress(device);
    p.ready = true;
    if p.check_rings(mem).is_err() {
        p.reset();
        return Err(QueueSetupError::OutsideRam);
    }
    Ok(())
}

/// Program split queue `q` from raw register values and validate it; on error `q` is left not
/// ready.
fn program_split<M: GuestMemory + ?Sized>(
    q: &mut Queue,
    mem: &M,
    num: u32,
    desc: u64,
    driver: u64,
    device: u64,
) -> Result<(), QueueSetupError> {
    let size = check_size(num, q.max_size)?;
    check_areas([
        (desc, layout::DESC_ALIGN, layout::desc_table_bytes(size)),
        (driver, layout::AVAIL_ALIGN, layout::avail_ring_bytes(size)),
        (device, layout::USED_ALIGN, layout::used_ring_bytes(size)),
    ])?;
    q.reset();
    q.set_size(size);
    q.desc_table_addr = GuestAddress(desc);
    q.avail_ring_addr = GuestAddress(driver);
    q.used_ring_addr = GuestAddress(device);
    q.ready = true;
    if q.check_rings(mem).is_err() {
        q.reset();
        return Err(QueueSetupError::OutsideRam);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_checks() {
        assert_eq!(check_size(0, 256), Err(QueueSetupError::SizeZero));
        assert_eq!(
            check_size(0x1_0000, 256),
            Err(QueueSetupError::SizeTooLarge { size: 0x1_0000 })
        );
        assert_eq!(
            check_size(6, 256),
            Err(QueueSetupError::SizeNotPowerOfTwo { size: 6 })
        );
        assert_eq!(check_size(256, 256), Ok(256));
        // Packed: any size from 1 to the maximum (H9c), 0 and above-maximum refused.
        assert_eq!(check_packed_size(0, 256), Err(QueueSetupError::SizeZero));
        assert_eq!(check_packed_size(6, 256), Ok(6));
        assert_eq!(check_packed_size(1, 256), Ok(1));
        assert_eq!(check_packed_size(256, 256), Ok(256));
        assert_eq!(
            check_packed_size(257, 256),
            Err(QueueSetupError::SizeTooLarge { size: 257 })
        );
        assert_eq!(
            check_packed_size(0x1_0006, 256),
            Err(QueueSetupError::SizeTooLarge { size: 0x1_0006 })
        );
    }

    #[test]
    fn offered_mask_keeps_device_bits() {
        assert_eq!(DEVICE_SPECIFIC & (1 << 41), 0);
        assert_ne!(DEVICE_SPECIFIC & (1 << 50), 0);
        assert_eq!(DEVICE_SPECIFIC & (0x3F << 44), 0);
    }

    #[test]
    fn feature_words() {
        assert_eq!(feature_word(0x1234_5678_9ABC_DEF0, 0), 0x9ABC_DEF0);
        assert_eq!(feature_word(0x1234_5678_9ABC_DEF0, 1), 0x1234_5678);
        assert_eq!(feature_word(u64::MAX, 2), 0);
        assert_eq!(feature_word(u64::MAX, u32::MAX), 0);
    }
}
