//! The example devices driven by `virtio-drivers`' own, unmodified `PciTransport` over a
//! virtio-pci function: configuration cycles go through `ConfigurationAccess`
//! (`virtq_testkit::trap::pci::PciCam`) to `PciTransport::config_read` / `config_write`; every
//! load and store to BAR 0 is a real access to a trap window, decoded and forwarded to
//! `PciTransport::memory_read` / `memory_write` the way a hypervisor's trap handler forwards
//! it; the outcomes' MSI-X messages and INTx level are delivered as a hypervisor delivers them.
//!
//! * Firmware enumeration (bus walk, BAR sizing and placement, command register) and
//!   `virtio-drivers`' probe (capability walk, BAR mapping).
//! * blk with the device inside the trap (`NotifyMode::Inline`, blocking API); blk, net and
//!   console with deferred notifications and a guest interrupt loop or an I/O thread.
//! * Each over {no features, INDIRECT_DESC, EVENT_IDX, both} × {MSI-X, INTx}. The devices offer
//!   `VIRTIO_F_RING_PACKED` in half the cases; `virtio-drivers` 0.13 has no packed ring, so the
//!   tests check that it is declined and the split ring is used.
//! * MSI-X: the guest (the test) enables MSI-X and programs the table and the vectors through
//!   the trap before DRIVER_OK; completions arrive as the programmed messages; per-vector and
//!   function masks hold them in the pending bit array until unmasked (PCI-14, PCI-15,
//!   PCI-16); without Bus Master Enable nothing is sent. INTx: the ISR read acknowledges and
//!   lowers the line (PCI-12, PCI-17).
//!
//! A counting allocator checks that nothing allocates inside the trap handler. Needs x86-64
//! Linux and real signals: compiled only there, never under Miri.
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use virtq::Features;
use virtq::GuestMemory;
use virtq::transport::pci::{NO_VECTOR, layout};
use virtq::transport::{NotifyMode, VirtioDevice};
use virtq::wire::DeviceStatus;
use virtq_testkit::devices::{BlkDevice, ConsoleDevice, NetDevice};
use virtq_testkit::guest::virtio_drivers::device::blk::VirtIOBlk;
use virtq_testkit::guest::virtio_drivers::device::console::VirtIOConsole;
use virtq_testkit::guest::virtio_drivers::device::net::VirtIONetRaw;
use virtq_testkit::guest::virtio_drivers::transport::pci::PciTransport as DriverPci;
use virtq_testkit::guest::virtio_drivers::transport::pci::bus::{
    BarInfo, Command, ConfigurationAccess, MemoryBarType, PciRoot, Status,
};
use virtq_testkit::guest::virtio_drivers::transport::{DeviceType, InterruptStatus, Transport};
use virtq_testkit::guest::{Arena, ArenaGuard};
use virtq_testkit::trap::pci::{
    BootError, FUNCTION, GuestIrq, GuestMsix, MsixPlan, PciCam, PciTarget, PciWindow, boot,
    firmware, msi_message, pci_window,
};
use virtq_testkit::trap::runs::{self, CONSOLE_ECHO_BYTES, pattern};
use virtq_testkit::trap::{HandlerAllocations, TrapHal, handler_allocations};

#[global_allocator]
static ALLOC: HandlerAllocations = HandlerAllocations;

const BOTH: Features = Features::INDIRECT_DESC.union(Features::EVENT_IDX);

/// How the guest takes interrupts in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Irq {
    Msix,
    Intx,
}

impl Irq {
    /// The guest's setup: with MSI-X, configuration changes on entry 0 and queue `i` on `i + 1`.
    fn guest(self, queues: u16) -> GuestIrq {
        match self {
            Irq::Msix => GuestIrq::msix_per_queue(queues),
            Irq::Intx => GuestIrq::Intx,
        }
    }
}

/// {MSI-X, INTx} × {none, INDIRECT, EVENT_IDX, both}; RING_PACKED offered with EVENT_IDX.
fn matrix() -> Vec<(Irq, Features)> {
    let feats = [
        Features::empty(),
        Features::INDIRECT_DESC,
        Features::EVENT_IDX | Features::RING_PACKED,
        BOTH | Features::RING_PACKED,
    ];
    [Irq::Msix, Irq::Intx]
        .into_iter()
        .flat_map(|i| feats.into_iter().map(move |f| (i, f)))
        .collect()
}

/// After initialisation: the negotiated ring features are what the device offered, the packed
/// ring (offered) was declined, the device is live, and with MSI-X the vectors the guest
/// programmed are in place (PCI-14).
fn check_negotiated<D: VirtioDevice, M: GuestMemory, const Q: usize, const V: usize>(
    t: &PciTarget<D, M, Q, V>,
    irq: Irq,
    extra: Features,
) {
    let tr = t.transport();
    let neg = Features::from_bits_truncate(tr.negotiated_features().bits());
    let ctx = format!("{irq:?} {extra:?}");
    assert_eq!(neg & BOTH, extra & BOTH, "{ctx}");
    assert!(neg.contains(Features::VERSION_1), "{ctx}");
    let offered = Features::from_bits_truncate(tr.offered_features().bits());
    assert_eq!(
        offered.contains(Features::RING_PACKED),
        extra.contains(Features::RING_PACKED),
        "{ctx}"
    );
    assert!(
        !neg.contains(Features::RING_PACKED),
        "{ctx}: virtio-drivers took RING_PACKED"
    );
    assert!(!tr.is_packed(), "{ctx}");
    assert!(tr.status().contains(DeviceStatus::DRIVER_OK), "{ctx}");
    assert_eq!(tr.msix_enabled(), irq == Irq::Msix, "{ctx}");
    if irq == Irq::Msix {
        assert_eq!(tr.config_vector(), 0, "{ctx}");
        for q in 0..u16::try_from(Q).unwrap() {
            assert_eq!(tr.queue_vector(q), Some(q + 1), "{ctx}: queue {q}");
        }
    }
}

/// The interrupts of a run went out the way the guest asked: with MSI-X, only as the
/// messages programmed for the queues' entries (never INTx); with INTx, never as a message.
fn check_interrupts<D: VirtioDevice, M: GuestMemory, const Q: usize, const V: usize>(
    t: &PciTarget<D, M, Q, V>,
    irq: Irq,
    ctx: &str,
) {
    match irq {
        Irq::Msix => {
            assert!(t.msi_total() >= 1, "{ctx}: no MSI-X message");
            assert_eq!(t.intx().raised, 0, "{ctx}: INTx with MSI-X enabled");
            for d in t.msi_log() {
                assert!(
                    (1..=u16::try_from(Q).unwrap()).contains(&d.entry),
                    "{ctx}: message from entry {} (not a queue's)",
                    d.entry
                );
                assert_eq!(d.message, msi_message(d.entry), "{ctx}: address/data");
            }
        }
        Irq::Intx => {
            assert!(t.intx().raised >= 1, "{ctx}: INTA# never rose");
            assert_eq!(t.msi_total(), 0, "{ctx}: MSI-X message without MSI-X");
        }
    }
}

/// What every test checks at the end: the trap carried the traffic, the function decoded every
/// access, the driver's drop reset the device, and nothing allocated in the handler.
fn check_window<D: VirtioDevice + Send, const Q: usize, const V: usize>(
    w: &PciWindow<D, Q, V>,
    ctx: &str,
) {
    let c = w.counts();
    assert!(c.reads > 10 && c.writes > 10, "{ctx}: {c:?}");
    assert_eq!(
        w.with(|t| t.unclaimed()),
        (0, None),
        "{ctx}: BAR accesses the function did not decode"
    );
    assert_eq!(w.with(|t| t.needs_reset_events()), 0, "{ctx}");
    assert_eq!(
        w.with(|t| t.transport().status()),
        DeviceStatus::empty(),
        "{ctx}: the driver's drop resets the device"
    );
    assert_eq!(
        handler_allocations(),
        0,
        "allocation inside the trap handler"
    );
}

const SECTORS: u64 = 2048;

/// Guest RAM of `ram` bytes installed for this thread, and `device` behind a PCI function in a
/// trap window with notifications handled per `mode` (dropped in reverse order: window, then
/// the arena's installation).
fn machine<D: VirtioDevice + Send, const Q: usize, const V: usize>(
    device: D,
    ram: usize,
    mode: NotifyMode,
) -> (Arc<Arena>, ArenaGuard, PciWindow<D, Q, V>) {
    let arena = Arena::new(ram);
    let guard = arena.install();
    let w = pci_window::<_, Q, V>(device, &arena, mode);
    (arena, guard, w)
}

/// The guest's interrupt handler entry: the interrupt it was called for is a queue
/// interrupt. With MSI-X the latched entries must lie in `queue_entries` (a bit mask; the
/// messages themselves are checked by `check_interrupts`) and the ISR is not read; with INTx
/// the driver reads the ISR (`ack_isr`), which must show a queue interrupt.
fn queue_interrupt<D: VirtioDevice + Send, const Q: usize, const V: usize>(
    w: &PciWindow<D, Q, V>,
    irq: Irq,
    ack_isr: impl FnOnce() -> InterruptStatus,
    queue_entries: u64,
    ctx: &str,
) {
    match irq {
        Irq::Msix => {
            let latched = w.with(|t| t.take_msi());
            assert_ne!(latched, 0, "{ctx}: interrupt without a message");
            assert_eq!(latched & !queue_entries, 0, "{ctx}: {latched:#b}");
        }
        Irq::Intx => assert!(
            ack_isr().contains(InterruptStatus::QUEUE_INTERRUPT),
            "{ctx}"
        ),
    }
}

/// PCI-01, PCI-03, PCI-18: firmware finds the function by walking bus 0, sizes BAR 0 (a
/// 64-bit, non-prefetchable, 32 KiB memory BAR), places it above 4 GiB and enables decoding;
/// before that the window decodes nothing. `virtio-drivers`' own probe then walks the
/// capabilities and maps every structure in the window.
#[test]
fn firmware_enumerates_and_virtio_drivers_probes() {
    let (_arena, _g, w) = machine::<_, 1, 2>(
        BlkDevice::new(SECTORS, Features::EVENT_IDX, 16),
        1 << 20,
        NotifyMode::Inline,
    );
    let gpa = w.gpa().unwrap();
    // Before firmware: memory decoding is off, a load in the window is a master abort.
    // SAFETY: the window's first dword; every access to it traps.
    let v = unsafe { std::ptr::read_volatile(w.base().as_ptr().cast::<u32>()) };
    assert_eq!(v, u32::MAX);
    assert_eq!(w.with(|t| t.unclaimed().0), 1);

    let mut root = PciRoot::new(PciCam::new(&w));
    let found: Vec<_> = root.enumerate_bus(0).collect();
    assert_eq!(found.len(), 1, "one function on the bus: {found:?}");
    let (df, info) = &found[0];
    assert_eq!(*df, FUNCTION);
    assert_eq!((info.vendor_id, info.device_id), (0x1AF4, 0x1042));
    assert_eq!((info.class, info.subclass), (0x01, 0x00));
    assert!(info.revision >= 1);
    assert_eq!(
        root.bar_info(FUNCTION, 0).unwrap(),
        Some(BarInfo::Memory {
            address_type: MemoryBarType::Width64,
            prefetchable: false,
            address: 0,
            size: layout::BAR_SIZE,
        })
    );
    let ids: Vec<u8> = root.capabilities(FUNCTION).map(|c| c.id).collect();
    assert_eq!(
        ids,
        [0x11, 9, 9, 9, 9, 9],
        "MSI-X, then five virtio capabilities"
    );

    assert_eq!(firmware(&mut root, gpa, layout::BAR_SIZE), Ok(FUNCTION));
    let (status, command) = root.get_status_command(FUNCTION);
    assert!(status.contains(Status::CAPABILITIES_LIST));
    assert_eq!(command, Command::MEMORY_SPACE | Command::BUS_MASTER);
    assert_eq!(w.with(|t| t.transport().bar_address(0)), Some(gpa));
    assert!(gpa > u64::from(u32::MAX), "both BAR halves in use");

    let mut t = DriverPci::new::<TrapHal, _>(&mut root, FUNCTION).unwrap();
    assert_eq!(t.device_type(), DeviceType::Block);
    let f = Features::from_bits_truncate(t.read_device_features());
    assert!(f.contains(Features::VERSION_1 | Features::EVENT_IDX));
    assert_eq!(t.max_queue_size(0), 16);
    assert_eq!(t.max_queue_size(1), 0, "PCI-10: no queue 1");
    // The probe's BAR sizing toggled decoding; the BAR is back where firmware put it.
    assert!(w.with(|t| t.bar_changes()) >= 2);
    assert_eq!(w.with(|t| t.transport().bar_address(0)), Some(gpa));
    drop(t);
    assert_eq!(
        w.with(|t| t.unclaimed().0),
        1,
        "only the access before firmware"
    );
}

/// blk with the device inside the trap: every notify runs the device in the signal handler
/// (INIT-01, FEAT-10), nothing allocates there. Writes and reads of 1–8 sectors, flush, GET_ID
/// and an out-of-range read; each completion interrupts once as the queue's MSI-X message
/// (PCI-14), or on INTA#, which the guest's ISR read lowers (PCI-12, PCI-17).
#[test]
fn blk_device_inside_the_trap() {
    for (irq, extra) in matrix() {
        let ctx = format!("{irq:?} {extra:?}");
        let (arena, g, w) = machine::<_, 1, 2>(
            BlkDevice::new(SECTORS, extra, 16),
            1 << 20,
            NotifyMode::Inline,
        );
        let mut blk = VirtIOBlk::<TrapHal, _>::new(boot(&w, irq.guest(1)).unwrap()).unwrap();
        w.with(|t| check_negotiated(t, irq, extra));
        let disk = |at: usize, len: usize| w.with(|t| t.device().disk()[at..][..len].to_vec());
        runs::blk_blocking(&mut blk, SECTORS, disk, &ctx);
        let stats = w.with(|t| t.device().stats);
        assert_eq!(
            (stats.requests, stats.ioerr, stats.flushes, stats.malformed),
            (15, 1, 1, 0),
            "{ctx}"
        );
        w.with(|t| check_interrupts(t, irq, &ctx));
        let cam = PciCam::new(&w);
        let status = || PciRoot::new(cam).get_status_command(FUNCTION).0;
        match irq {
            Irq::Msix => {
                // Every request interrupted once; the ISR has no queue bit (§4.1.4.5).
                assert_eq!(w.with(|t| t.msi_count(1)), 15, "{ctx}");
                assert!(blk.ack_interrupt().is_empty(), "{ctx}: ISR");
                assert!(!status().contains(Status::INTERRUPT_STATUS), "{ctx}");
            }
            Irq::Intx => {
                assert!(w.with(|t| t.intx().level), "{ctx}");
                assert!(status().contains(Status::INTERRUPT_STATUS), "{ctx}");
                queue_interrupt(&w, irq, || blk.ack_interrupt(), 0, &ctx);
                assert!(
                    !w.with(|t| t.intx().level),
                    "{ctx}: the ISR read lowers INTA#"
                );
                assert!(!status().contains(Status::INTERRUPT_STATUS), "{ctx}");
            }
        }
        drop(blk);
        check_window(&w, &ctx);
        drop(g);
        assert_eq!(arena.in_use(), 0, "{ctx}: every DMA page returned");
    }
}

/// blk with deferred notifications: the guest submits requests (non-blocking API, each notify
/// only records a kick), the hypervisor runs the device afterwards, and the guest's interrupt
/// handler completes what the used ring holds.
#[test]
fn blk_guest_interrupt_loop() {
    for (irq, extra) in matrix() {
        let ctx = format!("{irq:?} {extra:?}");
        let (_arena, _g, w) = machine::<_, 1, 2>(
            BlkDevice::new(SECTORS, extra, 16),
            1 << 20,
            NotifyMode::Deferred,
        );
        let mut blk = VirtIOBlk::<TrapHal, _>::new(boot(&w, irq.guest(1)).unwrap()).unwrap();
        w.with(|t| check_negotiated(t, irq, extra));
        runs::blk_interrupt_loop(
            &mut blk,
            || w.with(|t| t.process_kicks()),
            |blk| queue_interrupt(&w, irq, || blk.ack_interrupt(), 0b10, &ctx),
            &ctx,
        );
        w.with(|t| {
            check_interrupts(t, irq, &ctx);
            let n = t.msi_total() + t.intx().raised;
            assert!(n >= 4, "{ctx}: one per round at least");
            assert!(!t.intx().level, "{ctx}: acknowledged");
        });
        drop(blk);
        check_window(&w, &ctx);
    }
}

/// PCI-16, PCI-14, PCI-15: a masked entry's message waits in the pending bit array (read by
/// the guest through the trap) and goes out, once, when the entry or the whole function is
/// unmasked; a reprogrammed entry sends its new message; the configuration vector carries
/// configuration changes; without Bus Master Enable no message is sent until it is set again.
#[test]
fn msix_masks_hold_messages_pending() {
    let (_arena, _g, w) = machine::<_, 1, 4>(
        BlkDevice::new(SECTORS, Features::EVENT_IDX, 16),
        1 << 20,
        NotifyMode::Inline,
    );
    let t = boot(&w, GuestIrq::msix_per_queue(1)).unwrap();
    let msix: GuestMsix<'_> = t.msix().unwrap();
    let mut blk = VirtIOBlk::<TrapHal, _>::new(t).unwrap();
    assert_eq!(msix.size(), 4);
    assert_eq!(
        msix.entry(1),
        (msi_message(1), false),
        "table through the trap"
    );
    let count = || w.with(|t| t.msi_count(1));
    let last = || w.with(|t| t.msi_log().last()).unwrap();
    let data = pattern(5, 512, 9);
    let mut request = |n: usize| blk.write_blocks(n, &data).unwrap();

    request(0);
    assert_eq!(count(), 1);
    assert_eq!(last().message, msi_message(1));

    // Per-vector mask: the completion is polled, its message held pending.
    msix.set_masked(1, true);
    request(1);
    request(2);
    assert_eq!(count(), 1, "masked: nothing sent");
    assert_eq!(msix.pending(), 0b10, "PBA bit 1, once for two events");
    msix.set_masked(1, false);
    assert_eq!(count(), 2, "unmasking sends the pending message once");
    assert_eq!(msix.pending(), 0);
    assert_eq!(last().message, msi_message(1));

    // Function mask through Message Control.
    msix.set_control(true, true);
    assert_eq!(msix.control() >> 14, 0b11);
    request(3);
    assert_eq!((count(), msix.pending()), (2, 0b10));
    msix.set_control(true, false);
    assert_eq!((count(), msix.pending()), (3, 0));

    // Reprogram entry 1 (masked while it changes, as software must): the next completion
    // carries the new address and data.
    let moved = msi_message(3);
    msix.set_masked(1, true);
    msix.program(1, moved, false);
    request(4);
    assert_eq!(count(), 4);
    assert_eq!(last().message, moved);

    // Configuration changes go to entry 0.
    let config = || {
        w.with(|t| {
            let out = t.transport_mut().signal_config_change();
            t.deliver(out);
            t.msi_count(0)
        })
    };
    assert_eq!(config(), 1);
    assert_eq!(last().message, msi_message(0));

    // No bus mastering, no message: it waits and goes out when Bus Master Enable returns.
    let mut cam = PciCam::new(&w);
    cam.write_word(FUNCTION, 4, u32::from(Command::MEMORY_SPACE.bits()));
    assert_eq!(config(), 1, "held without Bus Master Enable");
    assert_eq!(msix.pending(), 0b01);
    let on = Command::MEMORY_SPACE | Command::BUS_MASTER;
    cam.write_word(FUNCTION, 4, u32::from(on.bits()));
    assert_eq!(w.with(|t| t.msi_count(0)), 2);
    assert_eq!(msix.pending(), 0);
    assert_eq!(w.with(|t| t.intx().raised), 0);
    drop(blk);
    check_window(&w, "masks");
}

/// PCI-17: with Interrupt Disable set in the command register INTA# stays low while the ISR
/// holds a queue interrupt (and the status register still shows it pending); clearing the bit
/// asserts the line.
#[test]
fn intx_disable_holds_the_line_low() {
    let (_arena, _g, w) = machine::<_, 1, 2>(
        BlkDevice::new(SECTORS, Features::empty(), 16),
        1 << 20,
        NotifyMode::Inline,
    );
    let mut blk = VirtIOBlk::<TrapHal, _>::new(boot(&w, GuestIrq::Intx).unwrap()).unwrap();
    let mut cam = PciCam::new(&w);
    let on = Command::MEMORY_SPACE | Command::BUS_MASTER;
    let disabled = on | Command::INTERRUPT_DISABLE;
    cam.write_word(FUNCTION, 4, u32::from(disabled.bits()));
    blk.write_blocks(0, &[7u8; 512]).unwrap();
    assert_eq!(
        w.with(|t| t.intx()).raised,
        0,
        "disabled: the line stayed low"
    );
    let (status, _) = PciRoot::new(cam).get_status_command(FUNCTION);
    assert!(
        status.contains(Status::INTERRUPT_STATUS),
        "but the interrupt is pending"
    );
    cam.write_word(FUNCTION, 4, u32::from(on.bits()));
    let line = w.with(|t| t.intx());
    assert!(line.level && line.raised == 1, "{line:?}");
    assert!(
        blk.ack_interrupt()
            .contains(InterruptStatus::QUEUE_INTERRUPT)
    );
    assert!(!w.with(|t| t.intx().level));
    drop(blk);
    check_window(&w, "intx disable");
}

/// net loopback with deferred notifications and a guest interrupt loop over `VirtIONetRaw`
/// (24 frames of varied length, each checked byte for byte).
#[test]
fn net_guest_interrupt_loop() {
    const FRAMES: usize = 24;
    for (irq, extra) in matrix() {
        let ctx = format!("{irq:?} {extra:?}");
        let (_arena, _g, w) =
            machine::<_, 2, 3>(NetDevice::new(extra, 16), 2 << 20, NotifyMode::Deferred);
        let mut net = VirtIONetRaw::<TrapHal, _, 16>::new(boot(&w, irq.guest(2)).unwrap()).unwrap();
        w.with(|t| check_negotiated(t, irq, extra));
        runs::net_loopback(
            &mut net,
            FRAMES,
            || w.with(|t| t.process_kicks()),
            // Entries 1 (receive queue) and 2 (transmit queue).
            |net| queue_interrupt(&w, irq, || net.ack_interrupt(), 0b110, &ctx),
            &ctx,
        );
        w.with(|t| {
            assert_eq!(
                (t.device().looped, t.device().dropped),
                (FRAMES as u64, 0),
                "{ctx}"
            );
            check_interrupts(t, irq, &ctx);
            if irq == Irq::Msix {
                assert!(
                    t.msi_count(1) >= 1 && t.msi_count(2) >= 1,
                    "{ctx}: both queues"
                );
            }
        });
        drop(net);
        check_window(&w, &ctx);
    }
}

/// console echo with the device on its own I/O thread (deferred notifications): the blocking
/// transmit waits on the used ring while that thread runs the device; receptions complete in
/// the guest's interrupt handler (INTx: after the ISR read) or in `recv` (MSI-X).
#[test]
fn console_with_an_io_thread() {
    for (irq, extra) in matrix() {
        let ctx = format!("{irq:?} {extra:?}");
        let (_arena, _g, w) =
            machine::<_, 2, 3>(ConsoleDevice::new(extra, 16), 1 << 20, NotifyMode::Deferred);
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            // The hypervisor's I/O thread.
            s.spawn(|| {
                while !stop.load(Ordering::Acquire) {
                    w.with(|t| t.process_kicks());
                    std::thread::sleep(Duration::from_micros(20));
                }
            });
            let mut con =
                VirtIOConsole::<TrapHal, _>::new(boot(&w, irq.guest(2)).unwrap()).unwrap();
            w.with(|t| check_negotiated(t, irq, extra));
            let interrupt = |con: &mut VirtIOConsole<TrapHal, _>| match irq {
                Irq::Intx if w.with(|t| t.intx().level) => {
                    con.ack_interrupt().unwrap();
                }
                Irq::Intx => {}
                Irq::Msix => {
                    let latched = w.with(|t| t.take_msi());
                    assert_eq!(latched & !0b110, 0, "{ctx}: {latched:#b}");
                }
            };
            runs::console_echo(&mut con, interrupt, &ctx);
            w.with(|t| {
                assert_eq!(t.device().transmitted.len(), CONSOLE_ECHO_BYTES, "{ctx}");
                check_interrupts(t, irq, &ctx);
                assert!(t.msi_total() + t.intx().raised >= 2, "{ctx}");
            });
            drop(con);
            stop.store(true, Ordering::Release);
        });
        check_window(&w, &ctx);
    }
}

/// A plan the device must refuse (an entry past the table) fails the boot before the driver
/// starts, like a guest kernel's probe; `NO_VECTOR` for a queue is accepted and that queue's
/// completions send nothing (PCI-15).
#[test]
fn msix_plans() {
    let (_arena, _g, w) = machine::<_, 1, 2>(
        BlkDevice::new(SECTORS, Features::empty(), 16),
        1 << 20,
        NotifyMode::Inline,
    );
    let plan = |q| {
        GuestIrq::Msix(MsixPlan {
            config: 0,
            queues: vec![q],
        })
    };
    assert_eq!(
        boot(&w, plan(2)).err(),
        Some(BootError::NoMsix),
        "entry 2 of a 2-entry table"
    );
    let mut blk = VirtIOBlk::<TrapHal, _>::new(boot(&w, plan(NO_VECTOR)).unwrap()).unwrap();
    blk.write_blocks(0, &[1u8; 512]).unwrap();
    w.with(|t| {
        assert_eq!(t.transport().queue_vector(0), Some(NO_VECTOR));
        assert_eq!((t.msi_total(), t.intx().raised), (0, 0));
        assert_eq!(t.transport().msix_pending(), 0, "nothing pending either");
    });
    drop(blk);
    check_window(&w, "plans");
}
