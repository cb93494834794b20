//! The skeleton alone: reads its configuration and waits for kicks, without virtq.
#![no_std]
#![no_main]

mod common;
use common::{cfg, wait_for_kick};

/// Entry point.
#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    let mut acc = 0u32;
    for i in 0..7 {
        acc ^= cfg(i);
    }
    loop {
        wait_for_kick();
        // SAFETY: linked, never run.
        unsafe { core::ptr::write_volatile(0x2000_0040 as *mut u32, acc) };
    }
}
