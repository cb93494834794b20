//! `defmt::Format` (feature `defmt`) for the public types that cannot derive it, and the
//! compile-time list of every public type.
//!
//! Most types derive `defmt::Format` where they are defined. The ones here cannot: the
//! `bitflags` words (printed as their flag names, unknown bits in hex), the `zerocopy` wire
//! layouts (their fields are little-endian wrappers; printed as host values), and the queues
//! and memory accessors, whose private state is not worth a log line (printed from their public
//! configuration and counters). None of them reads guest memory.
//!
//! [`every_public_type`] names every public type in an `assert_format::<T>()` call, so a
//! `--features defmt` build fails if one lacks `Format`; `.ci/defmt-check.sh` fails if a
//! public type is missing from that list.

use defmt::{Format, Formatter, write};

use crate::in_order::InOrder;
use crate::io::{ChainReader, ChainWriter, Reader, Writer};
use crate::memory::{GuestMemory, HostRegion, RegionTable};
use crate::packed::PackedQueue;
use crate::split::Queue;
use crate::transport::{AnyQueue, Events, InterruptStatus, Queues};
use crate::wire::{
    AvailFlags, DescFlags, DeviceStatus, EventSuppress, Features, PackedDesc, SplitDesc, UsedElem,
    UsedFlags,
};

/// `Name(FLAG_A | FLAG_B | 0x…)`: the known flags by name, then any unknown bits in hex.
fn write_flags<'n>(
    f: Formatter<'_>,
    type_name: &str,
    names: impl Iterator<Item = &'n str>,
    unknown: u64,
) {
    write!(f, "{=str}(", type_name);
    let mut first = true;
    for name in names {
        if !first {
            write!(f, " | ");
        }
        write!(f, "{=str}", name);
        first = false;
    }
    if unknown != 0 {
        if !first {
            write!(f, " | ");
        }
        write!(f, "{=u64:#x}", unknown);
    }
    write!(f, ")");
}

/// `defmt::Format` for `bitflags` types: flag names, then unknown bits.
macro_rules! format_flags {
    ($($ty:ident),* $(,)?) => {$(
        impl Format for $ty {
            fn format(&self, f: Formatter<'_>) {
                let unknown = self.bits() & !Self::all().bits();
                write_flags(f, stringify!($ty), self.iter_names().map(|(n, _)| n), unknown.into());
            }
        }
    )*};
}

format_flags!(
    DescFlags,
    AvailFlags,
    UsedFlags,
    Features,
    DeviceStatus,
    Events,
    InterruptStatus,
);

impl Format for AnyQueue<'_> {
    fn format(&self, f: Formatter<'_>) {
        match self {
            AnyQueue::Split(q) => write!(f, "AnyQueue::Split({})", q),
            AnyQueue::Packed(q) => write!(f, "AnyQueue::Packed({})", q),
        }
    }
}

impl Format for Queues<'_> {
    /// The format and how many queues; each queue prints through [`AnyQueue`].
    fn format(&self, f: Formatter<'_>) {
        let format = if self.is_packed() { "Packed" } else { "Split" };
        write!(f, "Queues::{=str}({=usize} queues)", format, self.len());
    }
}

impl Format for SplitDesc {
    fn format(&self, f: Formatter<'_>) {
        write!(
            f,
            "SplitDesc {{ addr: {=u64:#x}, len: {=u32}, flags: {=u16:#x}, next: {=u16} }}",
            self.addr.get(),
            self.len.get(),
            self.flags.get(),
            self.next.get()
        );
    }
}

impl Format for UsedElem {
    fn format(&self, f: Formatter<'_>) {
        write!(
            f,
            "UsedElem {{ id: {=u32}, len: {=u32} }}",
            self.id.get(),
            self.len.get()
        );
    }
}

impl Format for PackedDesc {
    fn format(&self, f: Formatter<'_>) {
        write!(
            f,
            "PackedDesc {{ addr: {=u64:#x}, len: {=u32}, id: {=u16}, flags: {=u16:#x} }}",
            self.addr.get(),
            self.len.get(),
            self.id.get(),
            self.flags.get()
        );
    }
}

impl Format for EventSuppress {
    fn format(&self, f: Formatter<'_>) {
        write!(
            f,
            "EventSuppress {{ off_wrap: {=u16:#x}, flags: {=u16:#x} }}",
            self.off_wrap.get(),
            self.flags.get()
        );
    }
}

impl Format for Queue {
    fn format(&self, f: Formatter<'_>) {
        write!(
            f,
            "Queue {{ size: {=u16}/{=u16}, ready: {=bool}, desc: {}, avail: {}, used: {}, next_avail: {=u16}, next_used: {=u16}, features: {}, in_flight: {=u16}, error: {} }}",
            self.size,
            self.max_size,
            self.ready,
            self.desc_table_addr,
            self.avail_ring_addr,
            self.used_ring_addr,
            self.next_avail_idx,
            self.next_used_idx,
            self.features,
            self.in_flight(),
            self.error()
        );
    }
}

impl Format for PackedQueue {
    fn format(&self, f: Formatter<'_>) {
        write!(
            f,
            "PackedQueue {{ size: {=u16}/{=u16}, ready: {=bool}, desc: {}, driver_event: {}, device_event: {}, next_avail: {=u16} (wrap {=bool}), next_used: {=u16} (wrap {=bool}), features: {}, in_flight: {=u16}, error: {} }}",
            self.size,
            self.max_size,
            self.ready,
            self.desc_ring_addr,
            self.driver_event_addr,
            self.device_event_addr,
            self.next_avail_idx,
            self.avail_wrap_counter,
            self.next_used_idx,
            self.used_wrap_counter,
            self.features,
            self.in_flight(),
            self.error()
        );
    }
}

impl Format for HostRegion {
    /// The guest range it serves (the host pointer is left out on purpose: it is a host
    /// secret a log line should not carry).
    fn format(&self, f: Formatter<'_>) {
        write!(
            f,
            "HostRegion {{ guest: {}, len: {=u64:#x} }}",
            self.guest_base(),
            self.len()
        );
    }
}

impl<const N: usize> Format for RegionTable<N> {
    fn format(&self, f: Formatter<'_>) {
        write!(f, "RegionTable<{=usize}> {}", N, self.regions());
    }
}

impl<const N: usize> Format for InOrder<N> {
    fn format(&self, f: Formatter<'_>) {
        write!(
            f,
            "InOrder<{=usize}> {{ in_flight: {=usize} }}",
            N,
            self.in_flight()
        );
    }
}

impl<M: GuestMemory + ?Sized> Format for Reader<'_, M> {
    fn format(&self, f: Formatter<'_>) {
        write!(
            f,
            "Reader {{ bytes_read: {=u32}, remaining: {=u32} }}",
            self.bytes_read(),
            self.remaining()
        );
    }
}

impl<M: GuestMemory + ?Sized> Format for Writer<'_, M> {
    fn format(&self, f: Formatter<'_>) {
        write!(
            f,
            "Writer {{ bytes_written: {=u32}, remaining: {=u32} }}",
            self.bytes_written(),
            self.remaining()
        );
    }
}

impl<M: GuestMemory + ?Sized, const L: usize> Format for ChainReader<'_, M, L> {
    fn format(&self, f: Formatter<'_>) {
        write!(f, "ChainReader {{ bytes_read: {=u32} }}", self.bytes_read());
    }
}

impl<M: GuestMemory + ?Sized, const L: usize> Format for ChainWriter<'_, M, L> {
    fn format(&self, f: Formatter<'_>) {
        write!(
            f,
            "ChainWriter {{ bytes_written: {=u32} }}",
            self.bytes_written()
        );
    }
}

#[cfg(feature = "vm-memory")]
impl<G: vm_memory::GuestMemory + ?Sized> Format for crate::memory::VmMemory<'_, G> {
    /// How many regions the vm-memory object has (when it is physical memory, not behind an
    /// IOMMU).
    fn format(&self, f: Formatter<'_>) {
        use vm_memory::GuestMemoryBackend as _;
        let regions = self.inner().physical_memory().map(|p| p.num_regions());
        write!(f, "VmMemory {{ regions: {} }}", regions);
    }
}

/// `defmt::Format` for saved-state layouts (issue 13's field blocks): their little-endian
/// bytes, as they are saved.
macro_rules! format_as_bytes {
    ($($ty:ty),* $(,)?) => {$(
        impl Format for $ty {
            fn format(&self, f: Formatter<'_>) {
                use zerocopy::IntoBytes as _;
                write!(f, "{=str}({=[u8]:02x})", stringify!($ty), self.as_bytes());
            }
        }
    )*};
}

format_as_bytes!(
    crate::snapshot::ErrorCode,
    crate::split::state::SplitFields,
    crate::packed::state::PackedFields,
    crate::packed::state::SavedChainHeader,
    crate::packed::state::SavedBuffer,
    crate::transport::mmio::state::MmioFields,
    crate::transport::CoreFields,
    crate::transport::QueueRegsFields,
    crate::transport::pci::state::PciFields,
    crate::transport::pci::state::MsixEntryFields,
);

/// The transport's state as a hypervisor log wants it: version, device status, negotiated
/// features and interrupt status. The device model and guest memory are not printed (they
/// need not implement `Format`).
impl<D: crate::transport::VirtioDevice, M: GuestMemory, const Q: usize> Format
    for crate::transport::MmioTransport<D, M, Q>
{
    fn format(&self, f: Formatter<'_>) {
        write!(
            f,
            "MmioTransport {{ version: {}, status: {}, features: {}, interrupt_status: {}, packed: {=bool} }}",
            self.version(),
            self.status(),
            self.negotiated_features(),
            self.interrupt_status(),
            self.is_packed()
        );
    }
}

/// The function's state as a hypervisor log wants it: command register, BAR 0, device
/// status, negotiated features, ISR, MSI-X enable and pending bits.
impl<D: crate::transport::VirtioDevice, M: GuestMemory, const Q: usize, const V: usize> Format
    for crate::transport::pci::PciTransport<D, M, Q, V>
{
    fn format(&self, f: Formatter<'_>) {
        write!(
            f,
            "PciTransport {{ command: {=u16:#x}, bar0: {}, status: {}, features: {}, isr: {}, msix: {=bool}, pending: {=u64:#x} }}",
            self.command(),
            self.bar_address(0),
            self.status(),
            self.negotiated_features(),
            self.isr(),
            self.msix_enabled(),
            self.msix_pending()
        );
    }
}

impl Format for crate::snapshot::Header {
    fn format(&self, f: Formatter<'_>) {
        write!(
            f,
            "Header {{ magic: {=[u8]:02x}, version: {=u16}, kind: {=u16}, len: {=u32} }}",
            self.magic,
            self.version.get(),
            self.kind.get(),
            self.len.get()
        );
    }
}

impl<const N: usize> Format for crate::snapshot::Snapshot<N> {
    /// Its length; the bytes are a saved state, printed by `as_bytes` if wanted.
    fn format(&self, f: Formatter<'_>) {
        write!(
            f,
            "Snapshot<{=usize}> {{ len: {=usize} }}",
            N,
            self.as_bytes().len()
        );
    }
}

/// Names every public type of the crate: the `defmt` build fails if one lacks `Format`.
/// Generic types are named with placeholder parameters; `.ci/defmt-check.sh` keeps this list
/// complete.
#[allow(dead_code)]
fn every_public_type<'m, M: GuestMemory + ?Sized + 'm>() {
    fn assert_format<T: Format + ?Sized>() {}

    use crate::chain::{ChainError, Descriptor, DescriptorChain, DescriptorIter};
    use crate::error::{QueueError, SizeError};
    use crate::io::IoError;
    use crate::memory::{Barrier, GuestAddress, MemoryError};
    use crate::notify::{Completion, DrainReport};
    use crate::packed::PackedChain;
    use crate::packed::state::{PackedFields, SavedBuffer, SavedChainHeader};
    use crate::snapshot::{ErrorCode, Header, Snapshot, StateError, StateField, StateKind};
    use crate::split::state::SplitFields;
    use crate::transport::mmio::state::MmioFields;
    use crate::transport::pci::state::{MsixEntryFields, PciFields};
    use crate::transport::pci::{MsiMessage, MsixVectors, PciEvents, PciIds, PciOutcome};
    use crate::transport::{
        AnyChain, CoreFields, DeviceId, MmioOutcome, MmioVersion, NotifyMode, NotifyReport,
        QueueRegsFields, QueueSetupError,
    };
    use crate::wire::RingEventFlags;

    // wire
    assert_format::<SplitDesc>();
    assert_format::<UsedElem>();
    assert_format::<PackedDesc>();
    assert_format::<EventSuppress>();
    assert_format::<DescFlags>();
    assert_format::<AvailFlags>();
    assert_format::<UsedFlags>();
    assert_format::<RingEventFlags>();
    assert_format::<Features>();
    assert_format::<DeviceStatus>();
    // memory
    assert_format::<GuestAddress>();
    assert_format::<MemoryError>();
    assert_format::<Barrier>();
    assert_format::<HostRegion>();
    assert_format::<RegionTable<4>>();
    #[cfg(feature = "vm-memory")]
    fn vm_memory<'a, G: vm_memory::GuestMemory + ?Sized + 'a>() {
        use crate::memory::VmMemory;
        assert_format::<VmMemory<'a, G>>();
    }
    // chains and I/O
    assert_format::<Descriptor>();
    assert_format::<ChainError>();
    assert_format::<DescriptorChain>();
    assert_format::<DescriptorIter<'m, M>>();
    assert_format::<IoError>();
    assert_format::<Reader<'m, M>>();
    assert_format::<Writer<'m, M>>();
    assert_format::<ChainReader<'m, M>>();
    assert_format::<ChainWriter<'m, M, 4>>();
    // queues
    assert_format::<Queue>();
    assert_format::<QueueError>();
    assert_format::<PackedQueue>();
    assert_format::<PackedChain<3>>();
    assert_format::<InOrder<8>>();
    assert_format::<DrainReport>();
    assert_format::<Completion>();
    // transport
    assert_format::<MmioVersion>();
    assert_format::<NotifyMode>();
    assert_format::<QueueSetupError>();
    assert_format::<PciIds>();
    assert_format::<PciOutcome>();
    assert_format::<PciEvents>();
    assert_format::<MsixVectors>();
    assert_format::<MsiMessage>();
    assert_format::<Events>();
    assert_format::<InterruptStatus>();
    assert_format::<MmioOutcome>();
    assert_format::<DeviceId>();
    assert_format::<NotifyReport>();
    assert_format::<Queues<'m>>();
    assert_format::<AnyQueue<'m>>();
    assert_format::<AnyChain<3>>();
    assert_format::<SizeError>();
    // saved state (snapshot)
    assert_format::<Snapshot<64>>();
    assert_format::<Header>();
    assert_format::<ErrorCode>();
    assert_format::<StateKind>();
    assert_format::<StateField>();
    assert_format::<StateError>();
    assert_format::<SplitFields>();
    assert_format::<PackedFields>();
    assert_format::<SavedChainHeader>();
    assert_format::<SavedBuffer>();
    assert_format::<MmioFields>();
    assert_format::<PciFields>();
    assert_format::<MsixEntryFields>();
    assert_format::<CoreFields>();
    assert_format::<QueueRegsFields>();
}

/// The transports, for any device and memory.
#[allow(dead_code)]
fn transports<D: crate::transport::VirtioDevice, M: GuestMemory>() {
    fn assert_format<T: Format + ?Sized>() {}
    assert_format::<crate::transport::MmioTransport<D, M, 1>>();
    assert_format::<crate::transport::pci::PciTransport<D, M, 1, 2>>();
}
