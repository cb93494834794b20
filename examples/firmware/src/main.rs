//! A firmware-shaped use of `virtq`: the EL2 side of an aarch64 hypervisor that gives its guest
//! a virtio entropy device (virtio-rng, §5.4) over virtio-mmio (§4.2).
//!
//! The guest's accesses to the device's 0x200-byte register window fault at stage 2 (the
//! window is left unmapped in the stage-2 tables). The exception vector saves the guest's
//! registers and calls [`el2_sync_lower`], which decodes the syndrome (`ESR_EL2` ISS: SAS, SRT,
//! WnR, SSE, SF), forwards the access to [`MmioTransport`] in [`forward`] (the only place the
//! register interface is called), writes a load's value back into the guest's register, steps
//! over the instruction and sets the device's interrupt line at the guest's GIC.
//!
//! Everything lives in statics: no allocator, no lock. `virtq` never allocates, takes no lock
//! and never panics on guest input, so the whole device, queue work included, runs inside the
//! trap handler.
//!
//! This binary links for `aarch64-unknown-none` but does not run: it has no stage-2 tables,
//! no guest to enter and no GIC driver (see README.md).
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::panic::PanicInfo;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};

use virtq::memory::HostRegion;
use virtq::transport::{DeviceId, MmioTransport, MmioVersion, NotifyReport, Queues, VirtioDevice};
use virtq::{Completion, Features, GuestAddress, GuestMemory};
use virtq_firmware_example::{MmioAccess, decode};

// ---- The guest's memory map (example values) ---------------------------------------------

/// Guest RAM: 128 MiB at IPA 0x4000_0000 ...
const GUEST_RAM_IPA: u64 = 0x4000_0000;
const GUEST_RAM_LEN: usize = 128 << 20;
/// ... which the hypervisor's own page tables map at this virtual address.
const GUEST_RAM_HOST_VA: usize = 0x8_0000_0000;
/// The virtio-mmio window of the entropy device (the guest's device tree says
/// `virtio_mmio@a000000 { reg = <0x0 0xa000000 0x0 0x200>; interrupts = <0 16 4>; }`).
const RNG_MMIO_IPA: u64 = 0x0a00_0000;
const RNG_MMIO_LEN: u64 = 0x200;
/// Its interrupt: SPI 16, INTID 48, level-triggered (MMIO-03).
const RNG_INTID: u32 = 48;

// ---- The device model ----------------------------------------------------------------------

/// Chains served per notification before the device yields (H17).
const BUDGET: usize = 32;
/// Bytes written per request at most, so one request is bounded work.
const MAX_REQUEST: usize = 4096;

/// A virtio entropy device: one request queue whose writable buffers it fills.
///
/// The bytes come from a xorshift generator, a stand-in for the platform's TRNG: they are NOT
/// entropy. A real device reads a hardware source (`RNDR`, a TRNG peripheral).
struct Rng {
    state: u64,
}

impl Rng {
    fn fill(&mut self, block: &mut [u8; 64]) {
        for chunk in block.chunks_exact_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            chunk.copy_from_slice(&self.state.to_le_bytes());
        }
    }
}

impl VirtioDevice for Rng {
    fn device_id(&self) -> DeviceId {
        DeviceId::ENTROPY
    }

    fn device_features(&self) -> Features {
        Features::empty() // no device-specific features; the transport adds VERSION_1
    }

    fn queue_max_size(&self, index: u16) -> u16 {
        if index == 0 { 64 } else { 0 }
    }

    fn read_config(&self, _offset: u32, _data: &mut [u8]) {
        // virtio-rng has no configuration space.
    }

    fn queue_notify<M: GuestMemory + ?Sized>(
        &mut self,
        index: u16,
        mut queues: Queues<'_>,
        mem: &M,
    ) -> NotifyReport {
        let Some(mut q) = queues.get(index) else {
            return NotifyReport::IDLE;
        };
        let mut block = [0u8; 64];
        // At most BUDGET chains; if requests are left, the report says `more`, the transport
        // records the queue as pending and the idle loop runs it (no kick will come for them).
        // A broken queue reports nothing here: the transport raises DEVICE_NEEDS_RESET.
        q.drain(mem, BUDGET, |chain| {
            let mut w = chain.writer(mem);
            for _ in 0..MAX_REQUEST / block.len() {
                self.fill(&mut block);
                match w.write(&block) {
                    Ok(n) if n == block.len() => {}
                    // Full (or malformed: the writer reports it; complete with what landed).
                    _ => break,
                }
            }
            Completion::Used(w.bytes_written())
        })
        .into()
    }
}

type Transport = MmioTransport<Rng, HostRegion, 1>;

// ---- Static storage --------------------------------------------------------------------------

/// The device, in a static: built once at boot, then used only from the trap handler and the
/// idle loop of the one physical CPU that runs this guest's vCPU.
struct DeviceSlot {
    busy: AtomicBool,
    transport: UnsafeCell<Option<Transport>>,
}

// SAFETY: the only access to `transport` is through `with`, which hands out one `&mut` at a
// time (`busy` is set while it is out), on any CPU.
unsafe impl Sync for DeviceSlot {}

impl DeviceSlot {
    const fn new() -> Self {
        Self {
            busy: AtomicBool::new(false),
            transport: UnsafeCell::new(None),
        }
    }

    /// Run `f` on the device, or return `None` if it is already in use (the handler
    /// re-entered, or another CPU is in it). Never waits: this is a borrow flag, not a lock.
    fn with<R>(&self, f: impl FnOnce(&mut Option<Transport>) -> R) -> Option<R> {
        if self.busy.swap(true, Ordering::Acquire) {
            return None;
        }
        // SAFETY: `busy` was false and is now true, so no other reference to the cell exists
        // until it is cleared below.
        let r = f(unsafe { &mut *self.transport.get() });
        self.busy.store(false, Ordering::Release);
        Some(r)
    }
}

static RNG: DeviceSlot = DeviceSlot::new();

// ---- The trap path ---------------------------------------------------------------------------

/// The guest's general-purpose registers x0..x30 as the exception vector saved them.
#[repr(C)]
pub struct TrapFrame {
    x: [u64; 31],
    _pad: u64,
}

impl TrapFrame {
    /// Register `n`; 31 is XZR in a load/store's register field and reads as zero.
    fn reg(&self, n: u8) -> u64 {
        self.x.get(usize::from(n)).copied().unwrap_or(0)
    }

    /// Set register `n`; writes to XZR (31) are discarded.
    fn set_reg(&mut self, n: u8, value: u64) {
        if let Some(r) = self.x.get_mut(usize::from(n)) {
            *r = value;
        }
    }
}

/// What the transport made of one access.
enum Forwarded {
    /// A load: the bytes to return, in the low `width` bytes.
    Load(u64),
    /// A store: the device's interrupt line level afterwards.
    Store { irq_level: bool },
}

/// Forward one decoded access at `offset` in the register window to the transport: the only
/// place this example calls its register interface, so an API change lands here alone.
/// Accesses are 1, 2, 4 or 8 bytes with the value in the low bytes of a `u64`, as the
/// syndrome gives them.
fn forward(t: &mut Transport, offset: u64, width: u8, store: Option<u64>) -> Forwarded {
    match store {
        None => Forwarded::Load(t.read(offset, width)),
        // The outcome's events (a refused queue, DEVICE_NEEDS_RESET, a reset) need nothing
        // here; queue work left over (`Events::KICKS`) is taken by the idle loop.
        Some(value) => Forwarded::Store {
            irq_level: t.write(offset, width, value).irq,
        },
    }
}

/// Synchronous exception from the guest (vector offset 0x400), called by the vector stub with
/// the saved registers. Handles stage-2 data aborts on the device window; anything else goes
/// to [`inject_abort`].
#[unsafe(no_mangle)]
pub extern "C" fn el2_sync_lower(frame: &mut TrapFrame) {
    let (esr, far, hpfar) = syndrome();
    let access = match decode(esr, far, hpfar) {
        Ok(a) if (RNG_MMIO_IPA..RNG_MMIO_IPA + RNG_MMIO_LEN).contains(&a.ipa) => a,
        // Another address, an exception that is not a data abort, or one the syndrome does
        // not describe (no ISV): not this device's business.
        _ => return inject_abort(esr),
    };
    let offset = access.ipa - RNG_MMIO_IPA;
    let store = access
        .write
        .then(|| access.store_value(frame.reg(access.reg)));
    let done = RNG.with(|slot| {
        slot.as_mut()
            .map(|t| forward(t, offset, access.width, store))
    });
    match done.flatten() {
        Some(Forwarded::Load(raw)) => frame.set_reg(access.reg, access.load_value(raw)),
        Some(Forwarded::Store { irq_level }) => gic_set_spi_level(RNG_INTID, irq_level),
        // Device not built yet, or busy on this CPU (re-entry): refuse the access.
        None => return inject_abort(esr),
    }
    step_over(&access);
}

/// `ESR_EL2`, `FAR_EL2`, `HPFAR_EL2` of the exception being handled.
fn syndrome() -> (u64, u64, u64) {
    let (esr, far, hpfar): (u64, u64, u64);
    // SAFETY: reading the syndrome registers at EL2 has no side effects.
    unsafe {
        asm!(
            "mrs {esr}, esr_el2",
            "mrs {far}, far_el2",
            "mrs {hpfar}, hpfar_el2",
            esr = out(reg) esr,
            far = out(reg) far,
            hpfar = out(reg) hpfar,
            options(nomem, nostack, preserves_flags),
        );
    }
    (esr, far, hpfar)
}

/// Resume the guest after the emulated instruction: `ELR_EL2 += length`.
fn step_over(access: &MmioAccess) {
    // SAFETY: moves the guest's return address past the instruction just emulated; the
    // vector stub's `eret` then resumes the guest there.
    unsafe {
        asm!(
            "mrs {t}, elr_el2",
            "add {t}, {t}, {len}",
            "msr elr_el2, {t}",
            t = out(reg) _,
            len = in(reg) u64::from(access.instr_len),
            options(nomem, nostack, preserves_flags),
        );
    }
}

/// The level of the device's interrupt at the guest's GIC. Level-triggered: the line stays
/// asserted while the device's `InterruptStatus` is non-zero, so a completion while it is
/// already high sends nothing new, and the guest's `InterruptACK` store brings it low.
///
/// A stub that only records the level. What a real hypervisor does with a GICv3 and a virtual
/// CPU interface: keep the virtual SPI pending in its emulated distributor while `level` is
/// high; if the SPI is enabled and routed to this vCPU, put it in a free list register
/// (`ICH_LR<n>_EL2`: vINTID = `intid`, group 1, state pending, HW = 0) before the next `eret`
/// into the guest, or send an SGI to the physical CPU running that vCPU so it exits and does
/// so. When the guest completes the virtual interrupt while the level is still high, present
/// it again; when the level drops, take it out of the pending state.
fn gic_set_spi_level(intid: u32, level: bool) {
    let _ = intid;
    RNG_LINE.store(level, Ordering::Relaxed);
}

/// The device's line level as last set (what the stub above has instead of a GIC).
static RNG_LINE: AtomicBool = AtomicBool::new(false);

/// Reflect an access the hypervisor does not emulate back to the guest as a synchronous
/// external abort. A stub: a real hypervisor sets up `ESR_EL1`, `FAR_EL1`, `SPSR_EL1` and
/// `ELR_EL1` and returns to the guest's vector (`VBAR_EL1` + 0x200 or 0x400).
fn inject_abort(esr: u64) {
    let _ = esr;
}

// ---- Boot and idle ---------------------------------------------------------------------------

/// Called by `_start` on the boot CPU with a stack and a zeroed `.bss`.
#[unsafe(no_mangle)]
pub extern "C" fn hyp_main() -> ! {
    let ram = NonNull::new(core::ptr::with_exposed_provenance_mut::<u8>(
        GUEST_RAM_HOST_VA,
    ))
    // SAFETY: the hypervisor maps the guest's RAM at GUEST_RAM_HOST_VA for GUEST_RAM_LEN
    // bytes for the guest's lifetime and holds no Rust references into it.
    .and_then(|p| unsafe { HostRegion::new(GuestAddress(GUEST_RAM_IPA), p, GUEST_RAM_LEN) }.ok());
    if let Some(ram) = ram {
        let device = Rng {
            state: 0x9e37_79b9_7f4a_7c15,
        };
        RNG.with(|slot| *slot = Some(MmioTransport::new(device, ram, MmioVersion::V2)));
    }
    // Here a real hypervisor builds the guest's stage-2 tables (RAM mapped, the device window
    // left unmapped so that accesses to it fault), sets HCR_EL2 and VTTBR_EL2 and enters the
    // guest with `eret`. This example stops at the idle loop.
    loop {
        run_deferred();
        // SAFETY: `wfe` only waits for an event.
        unsafe { asm!("wfe", options(nomem, nostack, preserves_flags)) };
    }
}

/// Requests left over when a notification's budget ran out: no kick will come for them, so
/// the hypervisor runs the queue again from its own loop, one budget at a time.
fn run_deferred() {
    RNG.with(|slot| {
        if let Some(t) = slot.as_mut() {
            let mut pending = false;
            t.take_kicks(|q| pending |= q == 0);
            if pending {
                let out = t.process_queue(0);
                gic_set_spi_level(RNG_INTID, out.irq);
            }
        }
    });
}

#[panic_handler]
fn panic(_: &PanicInfo) -> ! {
    loop {
        // SAFETY: `wfe` only waits for an event.
        unsafe { asm!("wfe", options(nomem, nostack, preserves_flags)) };
    }
}

// The entry point and the EL2 exception vector table. Only the synchronous exception from a
// lower EL in AArch64 (offset 0x400) is handled; every other entry parks the CPU.
global_asm!(
    r#"
    .section .text.boot, "ax"
    .global _start
_start:
    mrs     x0, mpidr_el1
    and     x0, x0, #0xff
    cbnz    x0, 9f                      // only CPU 0 runs the example
    adrp    x0, __stack_top
    add     x0, x0, :lo12:__stack_top
    mov     sp, x0
    adrp    x0, __bss_start
    add     x0, x0, :lo12:__bss_start
    adrp    x1, __bss_end
    add     x1, x1, :lo12:__bss_end
1:  cmp     x0, x1
    b.hs    2f
    str     xzr, [x0], #8
    b       1b
2:  adrp    x0, el2_vectors
    add     x0, x0, :lo12:el2_vectors
    msr     vbar_el2, x0
    isb
    bl      hyp_main
9:  wfe
    b       9b

    .macro  ventry target
    .balign 0x80
    b       \target
    .endm

    .section .text.vectors, "ax"
    .balign 0x800
    .global el2_vectors
el2_vectors:
    ventry  park                        // current EL, SP_EL0: sync, IRQ, FIQ, SError
    ventry  park
    ventry  park
    ventry  park
    ventry  park                        // current EL, SP_ELx
    ventry  park
    ventry  park
    ventry  park
    ventry  lower_sync                  // lower EL, AArch64: sync (stage-2 aborts land here)
    ventry  park                        //   IRQ, FIQ, SError: a real hypervisor handles these
    ventry  park
    ventry  park
    ventry  park                        // lower EL, AArch32
    ventry  park
    ventry  park
    ventry  park

park:
    wfe
    b       park

lower_sync:
    sub     sp, sp, #256
    stp     x0, x1, [sp, #0]
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    str     x30, [sp, #240]
    mov     x0, sp
    bl      el2_sync_lower
    ldp     x0, x1, [sp, #0]
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x19, [sp, #144]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    ldr     x30, [sp, #240]
    add     sp, sp, #256
    eret
"#
);
