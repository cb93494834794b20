//! The `split` device behind the virtio-mmio transport: the hypervisor forwards MMIO traps to
//! the transport's register file, which runs the device on `QueueNotify`.
#![no_std]
#![no_main]

mod common;
use common::{cfg, halt};

use core::ptr::NonNull;

use virtq::memory::HostRegion;
use virtq::transport::VirtioDevice;
use virtq::transport::{AnyChain, DeviceId, MmioTransport, MmioVersion, NotifyReport, Queues};
use virtq::{Features, GuestAddress, GuestMemory};

/// A device with one queue that sets the first writable byte of each chain.
#[derive(Debug)]
struct Device;

impl VirtioDevice for Device {
    fn device_id(&self) -> DeviceId {
        DeviceId::BLOCK
    }
    fn device_features(&self) -> Features {
        Features::VERSION_1 | Features::INDIRECT_DESC | Features::EVENT_IDX
    }
    fn queue_max_size(&self, index: u16) -> u16 {
        if index == 0 { 256 } else { 0 }
    }
    fn read_config(&self, offset: u32, data: &mut [u8]) {
        virtq::transport::config_read(&[0u8; 8], offset, data);
    }
    fn queue_notify<M: GuestMemory + ?Sized>(
        &mut self,
        _index: u16,
        mut queues: Queues<'_>,
        mem: &M,
    ) -> NotifyReport {
        let Some(mut q) = queues.get(0) else {
            return NotifyReport::IDLE;
        };
        // A split-only device: packed chain storage for one buffer is never used.
        let mut chain = AnyChain::<1>::EMPTY;
        while let Ok(true) = q.pop_avail_into(mem, &mut chain) {
            let mut written = 0u32;
            for d in chain.iter(mem) {
                match d {
                    Ok(d) if d.is_write_only() && written == 0 => {
                        written = u32::from(mem.write(d.addr(), &[0]).is_ok());
                    }
                    Ok(_) => {}
                    Err(_) => {
                        written = 0;
                        break;
                    }
                }
            }
            if q.add_used(mem, &chain, written).is_err() {
                break;
            }
        }
        NotifyReport {
            notify: q.publish_used(mem).is_ok_and(|n| n != 0),
            more: false,
        }
    }
}

/// Entry point.
#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    let Some(host) = NonNull::new(cfg(0) as usize as *mut u8) else {
        halt()
    };
    // SAFETY: linked, never run; a real hypervisor passes its mapping of guest RAM here.
    let mem = unsafe { HostRegion::new(GuestAddress(u64::from(cfg(1))), host, cfg(2) as usize) };
    let Ok(mem) = mem else { halt() };
    let mut t: MmioTransport<Device, HostRegion, 1> =
        MmioTransport::new(Device, mem, MmioVersion::V2);
    loop {
        // A trapped access: offset, direction, value (a stand-in for the hypervisor's decoder).
        let (offset, is_write, value) = (u64::from(cfg(8)), cfg(9) != 0, u64::from(cfg(10)));
        let irq = if is_write {
            t.write(offset, 4, value).irq
        } else {
            // SAFETY: linked, never run.
            unsafe { core::ptr::write_volatile(0x2000_0044 as *mut u64, t.read(offset, 4)) };
            false
        };
        // SAFETY: linked, never run: the interrupt line.
        unsafe { core::ptr::write_volatile(0x2000_0048 as *mut u32, u32::from(irq)) };
    }
}
