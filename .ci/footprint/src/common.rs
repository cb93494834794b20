//! The skeleton every probe shares: an entry point, a panic handler and a configuration block
//! the "hypervisor" reads with volatile loads, so nothing is constant-folded away.
#![allow(dead_code)] // each probe uses a different part

use core::panic::PanicInfo;

/// Where the probes read their configuration (never executed; only linked).
const CONFIG: usize = 0x2000_0000;

/// Word `i` of the configuration block.
#[inline(always)]
pub fn cfg(i: usize) -> u32 {
    // SAFETY: the probes are linked and measured, never run.
    unsafe { core::ptr::read_volatile((CONFIG as *const u32).wrapping_add(i)) }
}

/// Spin until the doorbell word is non-zero (a stand-in for a notification trap).
#[inline(always)]
pub fn wait_for_kick() {
    while cfg(15) == 0 {}
}

/// Stop here for good (a real hypervisor would park the core or reset the VM).
pub fn halt() -> ! {
    loop {
        core::hint::spin_loop();
    }
}

#[panic_handler]
fn panic(_: &PanicInfo) -> ! {
    halt()
}
