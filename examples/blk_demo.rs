//! A virtio-blk RAM disk served by `virtq`, driven by a real guest driver through the trap
//! path of a virtio-mmio window or of a virtio-pci function.
//!
//! The guest is the `virtio-drivers` crate (an independent no_std driver used by real
//! kernels). Every register access it makes arrives here as (offset, width, value), exactly
//! what a hypervisor's stage-2 fault handler decodes from a trapped load or store, and goes to
//! `MmioTransport::read` / `write`; with `--transport pci` the guest probes a PCI function
//! (configuration space, capability list, BAR sizing, MSI-X) and every access goes to
//! `PciTransport::config_read` / `config_write` or, by guest-physical address, to
//! `memory_read` / `memory_write`, whose outcomes say which MSI-X message to send. The device
//! reads and writes guest RAM only through `GuestMemory`.
//!
//! Over PCI on x86-64 Linux the guest's transport is `virtio-drivers`' own, unmodified
//! `PciTransport`: firmware code enumerates the bus through a `ConfigurationAccess` that calls
//! `config_read` / `config_write`, places BAR 0 and enables decoding and bus mastering; BAR 0
//! is a trap window (`virtq_testkit::trap::pci`: no access rights, each load and store caught
//! by a `SIGSEGV` handler, decoded and forwarded to `memory_read` / `memory_write`, the device
//! running inside the trap); the guest enables MSI-X and maps the queue to vector 1. Elsewhere
//! (no trap harness) the guest's transport is the register-level virtio-pci driver model of
//! the test suite (`tests/pci_driver`).
//!
//! ```sh
//! cargo run --release --example blk_demo                      # 256 MiB over MMIO, verified
//! cargo run --release --example blk_demo -- 64                # disk size in MiB
//! cargo run --release --example blk_demo -- --transport pci   # the same over virtio-pci
//! ```

#[cfg(not(all(target_arch = "x86_64", target_os = "linux", not(miri))))]
#[path = "../tests/pci_driver/mod.rs"]
mod pci_driver;

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use virtq::Features;
use virtq::transport::mmio::MmioVersion;
use virtq::transport::{Events, MmioOutcome, MmioTransport};
use virtq_testkit::devices::BlkDevice;
use virtq_testkit::guest::virtio_drivers::Hal;
use virtq_testkit::guest::virtio_drivers::device::blk::VirtIOBlk;
use virtq_testkit::guest::virtio_drivers::transport::Transport;
use virtq_testkit::guest::{Arena, GuestHal, GuestMmio, GuestRam, MmioBus, SharedDevice, attach};

/// The hypervisor side of the device's MMIO window: the trap handler.
struct TrapHandler {
    device: SharedDevice<BlkDevice, 1>,
    traps: Rc<Cell<u64>>,
    irqs: Rc<Cell<u64>>,
}

impl TrapHandler {
    fn trap<R>(&self, f: impl FnOnce(&mut MmioTransport<BlkDevice, GuestRam, 1>) -> R) -> R {
        self.traps.set(self.traps.get() + 1);
        f(&mut self.device.lock().unwrap())
    }
}

impl MmioBus for TrapHandler {
    /// A trapped guest load: answer from the register file.
    fn read(&self, offset: u64, width: u8) -> u32 {
        // The guest loads at most 32 bits: the value is in the low bytes.
        self.trap(|dev| dev.read(offset, width)) as u32
    }

    /// A trapped guest store. A `QueueNotify` runs the device inside the trap for at most its
    /// budget; the outcome says what to do next.
    fn write(&self, offset: u64, width: u8, value: u32) {
        let out = self.trap(|dev| dev.write(offset, width, value.into()));
        self.deliver(out);
    }
}

impl TrapHandler {
    /// Act on an outcome: queue work the device's budget did not cover runs once more (a
    /// hypervisor may as well hand it to an I/O thread); every notification the device raised
    /// is an interrupt for the guest.
    fn deliver(&self, mut out: MmioOutcome) {
        if out.events.contains(Events::KICKS) {
            let mut dev = self.device.lock().unwrap();
            let mut pending = Vec::new();
            dev.take_kicks(|q| pending.push(q));
            for q in pending {
                let more = dev.process_queue(q);
                out.raised |= more.raised;
            }
        }
        if !out.raised.is_empty() {
            // A hypervisor would send the guest an interrupt here (an edge; a level-triggered
            // line would follow `out.irq` instead).
            self.irqs.set(self.irqs.get() + 1);
        }
    }
}

const CHUNK: usize = 64 * 1024;
const SECTOR: usize = 512;

/// Data that differs for every 8-byte word of the disk and for every run.
fn fill(buf: &mut [u8], offset: u64, seed: u64) {
    for (i, w) in buf.chunks_exact_mut(8).enumerate() {
        let v = (offset + 8 * i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed;
        w.copy_from_slice(&v.to_le_bytes());
    }
}

fn progress(label: &str, done: u64, total: u64, start: Instant) {
    let frac = done as f64 / total as f64;
    let bar = (frac * 40.0) as usize;
    let mib = done as f64 / (1 << 20) as f64;
    eprint!(
        "\r{label} [{}{}] {:3.0}%  {:7.1} MiB/s",
        "#".repeat(bar),
        " ".repeat(40 - bar),
        frac * 100.0,
        mib / start.elapsed().as_secs_f64().max(1e-9)
    );
}

/// Which trap path the guest uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Mmio,
    Pci,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut kind = Kind::Mmio;
    let mut disk_mib = 256u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--transport" => {
                kind = match args.next().as_deref() {
                    Some("mmio") => Kind::Mmio,
                    Some("pci") => Kind::Pci,
                    other => return Err(format!("--transport mmio|pci, not {other:?}").into()),
                }
            }
            n => disk_mib = n.parse()?,
        }
    }
    let disk_bytes = disk_mib << 20;

    // Guest RAM: 4 MiB at guest-physical 0x4000_0000, enough for the rings and the buffers in
    // flight. The device sees it through `GuestMemory` (virtq's `HostRegion`).
    let ram = Arena::new(4 << 20);
    let _guest = ram.install();
    let disk = || {
        BlkDevice::new(
            disk_bytes / SECTOR as u64,
            Features::INDIRECT_DESC | Features::EVENT_IDX,
            16,
        )
    };

    match kind {
        Kind::Mmio => {
            // The hypervisor: a RAM disk behind a virtio-mmio v2 register window, one queue
            // of 16.
            let device = attach::<_, 1>(disk(), &ram, MmioVersion::V2);
            let (traps, irqs) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
            let window = TrapHandler {
                device: device.clone(),
                traps: traps.clone(),
                irqs: irqs.clone(),
            };
            // The guest: virtio-drivers probes the window, negotiates, sets up its queue.
            let mut blk = VirtIOBlk::<GuestHal, _>::new(
                GuestMmio::new(window).map_err(|e| format!("{e:?}"))?,
            )?;
            let features = device.lock().unwrap().negotiated_features();
            let timed = run(&mut blk, disk_bytes, features, || traps.get(), true)?;
            report(disk_bytes, timed, "MMIO traps", traps.get(), irqs.get());
        }
        Kind::Pci => pci(disk(), &ram, disk_bytes)?,
    }
    Ok(())
}

/// Write the whole disk, read it back and verify every byte; the number of requests and the
/// seconds it took.
/// `ack_isr`: the guest reads the interrupt status after each request (MMIO; with MSI-X a
/// PCI guest does not, §4.1.4.5.2).
fn run<H: Hal, T: Transport>(
    blk: &mut VirtIOBlk<H, T>,
    disk_bytes: u64,
    features: Features,
    traps: impl Fn() -> u64,
    ack_isr: bool,
) -> Result<(u64, f64), Box<dyn std::error::Error>> {
    let mut id = [0u8; 20];
    let n = blk.device_id(&mut id)?;
    eprintln!(
        "virtio-blk \"{}\": {} MiB, features {:#x}, {} traps to boot",
        String::from_utf8_lossy(&id[..n]),
        (blk.capacity() * SECTOR as u64) >> 20,
        features.bits(),
        traps()
    );

    let seed = std::process::id() as u64;
    let mut buf = vec![0u8; CHUNK];
    let mut expect = vec![0u8; CHUNK];
    let mut requests = 0u64;
    let start = Instant::now();

    // Pass 1: write the whole disk. Pass 2: read it back and verify every byte.
    for pass in ["write ", "verify"] {
        let pass_start = Instant::now();
        for (i, off) in (0..disk_bytes).step_by(CHUNK).enumerate() {
            let block = (off / SECTOR as u64) as usize;
            if pass == "write " {
                fill(&mut buf, off, seed);
                blk.write_blocks(block, &buf)?;
            } else {
                blk.read_blocks(block, &mut buf)?;
                fill(&mut expect, off, seed);
                if buf != expect {
                    return Err(format!("data mismatch at byte {off:#x}").into());
                }
            }
            if ack_isr {
                blk.ack_interrupt();
            }
            requests += 1;
            if i % 64 == 0 {
                progress(pass, off, disk_bytes, pass_start);
            }
        }
        progress(pass, disk_bytes, disk_bytes, pass_start);
        eprintln!();
    }
    blk.flush()?;
    Ok((requests, start.elapsed().as_secs_f64()))
}

/// The RAM disk as a PCI function (one queue of 16, two MSI-X vectors: configuration changes
/// and the queue), BAR 0 behind a trap window, driven by `virtio-drivers`' own `PciTransport`.
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
fn pci(
    disk: BlkDevice,
    ram: &std::sync::Arc<Arena>,
    disk_bytes: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    use virtq::transport::NotifyMode;
    use virtq_testkit::trap::TrapHal;
    use virtq_testkit::trap::pci::{GuestIrq, boot, pci_window};

    // The hypervisor: BAR 0 is a window with no access rights; every notification runs the
    // device inside the trap.
    let window = pci_window::<_, 1, 2>(disk, ram, NotifyMode::Inline);
    // Firmware enumerates the bus, sizes and places BAR 0, enables decoding and bus mastering;
    // the guest probes with virtio-drivers' own PciTransport (capability walk, BAR mapping),
    // enables MSI-X and maps the queue to vector 1.
    let transport = boot(&window, GuestIrq::msix_per_queue(1))?;
    let mut blk = VirtIOBlk::<TrapHal, _>::new(transport)?;
    let features = window.with(|t| t.transport().negotiated_features());
    let traps = || {
        let c = window.counts();
        c.reads + c.writes + window.with(|t| t.config_accesses())
    };
    let timed = run(&mut blk, disk_bytes, features, traps, false)?;
    let msi = window.with(|t| t.msi_total());
    report(disk_bytes, timed, "PCI traps", traps(), msi);
    Ok(())
}

/// The RAM disk as a PCI function driven by the register-level driver model (no trap harness
/// on this host).
#[cfg(not(all(target_arch = "x86_64", target_os = "linux", not(miri))))]
fn pci(
    disk: BlkDevice,
    ram: &std::sync::Arc<Arena>,
    disk_bytes: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    // The hypervisor: the RAM disk as a PCI function, one queue of 16, two MSI-X vectors
    // (configuration changes, the queue).
    let function = pci_driver::attach::<_, _, 1, 2>(disk, ram.guest_ram());
    // The guest: probes the function (capability list, BAR sizing and placement), programs
    // MSI-X, negotiates, sets up its queue on vector 1.
    let mut blk = VirtIOBlk::<GuestHal, _>::new(pci_driver::GuestPci::new(
        function.clone(),
        pci_driver::BAR_BASE,
        true,
    ))?;
    let features = function.t.borrow().negotiated_features();
    let traps = || function.irq.borrow().traps;
    let timed = run(&mut blk, disk_bytes, features, traps, false)?;
    let msi = function.irq.borrow().msi.len() as u64;
    report(disk_bytes, timed, "PCI traps", traps(), msi);
    Ok(())
}

fn report(disk_bytes: u64, (requests, secs): (u64, f64), trap_kind: &str, traps: u64, irqs: u64) {
    let moved = 2 * disk_bytes;
    println!(
        "{} MiB written and read back, verified: {:.0} MiB/s, {:.0} requests/s \
         ({} requests of {} KiB, {} {}, {} interrupts)",
        moved >> 20,
        moved as f64 / (1 << 20) as f64 / secs,
        requests as f64 / secs,
        requests,
        CHUNK / 1024,
        traps,
        trap_kind,
        irqs
    );
}
