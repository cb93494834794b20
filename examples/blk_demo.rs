//! A virtio-blk RAM disk served by `virtq`, driven by a real guest driver through the
//! virtio-mmio trap path.
//!
//! The guest is the `virtio-drivers` crate (an independent no_std driver used by real
//! kernels). Every register access it makes arrives here as (offset, width, value), exactly
//! what a hypervisor's stage-2 fault handler decodes from a trapped load or store, and goes to
//! `MmioTransport::read` / `write`. The device reads and writes guest RAM only through
//! `GuestMemory`.
//!
//! ```sh
//! cargo run --release --example blk_demo            # 256 MiB written, read back, verified
//! cargo run --release --example blk_demo -- 64      # disk size in MiB
//! ```

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use virtq::Features;
use virtq::transport::MmioTransport;
use virtq::transport::mmio::MmioVersion;
use virtq_testkit::devices::BlkDevice;
use virtq_testkit::guest::virtio_drivers::device::blk::VirtIOBlk;
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

    /// A trapped guest store. A `QueueNotify` runs the device to completion inside the trap;
    /// the return value is the interrupt line level to forward to the interrupt controller.
    fn write(&self, offset: u64, width: u8, value: u32) {
        if self.trap(|dev| dev.write(offset, width, value.into())) {
            self.irqs.set(self.irqs.get() + 1); // a hypervisor would assert the guest's IRQ here
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let disk_mib: u64 = std::env::args().nth(1).map_or(Ok(256), |a| a.parse())?;
    let disk_bytes = disk_mib << 20;

    // Guest RAM: 4 MiB at guest-physical 0x4000_0000, enough for the rings and the buffers in
    // flight. The device sees it through `GuestMemory` (virtq's `HostRegion`).
    let ram = Arena::new(4 << 20);
    let _guest = ram.install();

    // The hypervisor: a RAM disk behind a virtio-mmio v2 register window, one queue of 16.
    let device = attach::<_, 1>(
        BlkDevice::new(
            disk_bytes / SECTOR as u64,
            Features::INDIRECT_DESC | Features::EVENT_IDX,
            16,
        ),
        &ram,
        MmioVersion::V2,
    );
    let (traps, irqs) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
    let window = TrapHandler {
        device: device.clone(),
        traps: traps.clone(),
        irqs: irqs.clone(),
    };

    // The guest: virtio-drivers probes the window, negotiates, sets up its queue.
    let mut blk =
        VirtIOBlk::<GuestHal, _>::new(GuestMmio::new(window).map_err(|e| format!("{e:?}"))?)?;
    let mut id = [0u8; 20];
    let n = blk.device_id(&mut id)?;
    eprintln!(
        "virtio-blk \"{}\": {} MiB, features {:#x}, {} traps to boot",
        String::from_utf8_lossy(&id[..n]),
        (blk.capacity() * SECTOR as u64) >> 20,
        device.lock().unwrap().negotiated_features(),
        traps.get()
    );

    let seed = std::process::id() as u64;
    let mut buf = vec![0u8; CHUNK];
    let mut expect = vec![0u8; CHUNK];
    let start = Instant::now();
    let mut requests = 0u64;

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
            blk.ack_interrupt();
            requests += 1;
            if i % 64 == 0 {
                progress(pass, off, disk_bytes, pass_start);
            }
        }
        progress(pass, disk_bytes, disk_bytes, pass_start);
        eprintln!();
    }
    blk.flush()?;

    let secs = start.elapsed().as_secs_f64();
    let moved = 2 * disk_bytes;
    println!(
        "{} MiB written and read back, verified: {:.0} MiB/s, {:.0} requests/s \
         ({} requests of {} KiB, {} MMIO traps, {} interrupts)",
        moved >> 20,
        moved as f64 / (1 << 20) as f64 / secs,
        requests as f64 / secs,
        requests,
        CHUNK / 1024,
        traps.get(),
        irqs.get()
    );
    Ok(())
}
