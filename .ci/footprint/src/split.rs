//! A minimal device on the split ring: one queue over one RAM region; every chain is walked,
//! its first writable byte set (a status byte), and completed.
#![no_std]
#![no_main]

mod common;
use common::{cfg, halt, wait_for_kick};

use core::ptr::NonNull;

use virtq::memory::HostRegion;
use virtq::split::in_flight_words;
use virtq::{Features, GuestAddress, GuestMemory, Queue};

/// Entry point.
#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    let Some(host) = NonNull::new(cfg(0) as usize as *mut u8) else {
        halt()
    };
    // SAFETY: linked, never run; a real hypervisor passes its mapping of guest RAM here.
    let mem = unsafe { HostRegion::new(GuestAddress(u64::from(cfg(1))), host, cfg(2) as usize) };
    let Ok(mem) = mem else { halt() };
    // In-flight storage sized to the queue, as firmware would (`Queue::new` holds 32768 heads).
    let mut q = Queue::<{ in_flight_words(256) }>::with_capacity(256);
    q.set_size(cfg(3) as u16);
    q.desc_table_addr = GuestAddress(u64::from(cfg(4)));
    q.avail_ring_addr = GuestAddress(u64::from(cfg(5)));
    q.used_ring_addr = GuestAddress(u64::from(cfg(6)));
    q.features = Features::INDIRECT_DESC;
    q.ready = true;
    if q.check_rings(&mem).is_err() {
        halt()
    }
    loop {
        wait_for_kick();
        while let Ok(Some(chain)) = q.pop_avail(&mem) {
            let mut written = 0u32;
            for d in chain.iter(&mem) {
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
            if q.push_used(&mem, chain.head_index(), written).is_err() {
                break;
            }
        }
    }
}
