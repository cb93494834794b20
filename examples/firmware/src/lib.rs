//! Decoding a stage-2 data abort taken to EL2 (Arm ARM, `ESR_EL2`, "ISS encoding for an
//! exception from a Data Abort"), the first thing a hypervisor's MMIO trap path does.
//!
//! Pure functions over the three syndrome registers, so they are tested on the host
//! (`cargo test --lib`); the binary (`main.rs`) reads the registers and forwards the decoded
//! access to `virtq`'s `MmioTransport`.
#![cfg_attr(not(test), no_std)]

/// `ESR_EL2.EC` for a Data Abort from a lower Exception level (the guest).
pub const EC_DATA_ABORT_LOWER: u64 = 0x24;

/// One trapped guest load or store, as the syndrome describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioAccess {
    /// The faulting intermediate physical address (the guest-physical address).
    pub ipa: u64,
    /// Access width in bytes: 1, 2, 4 or 8 (`ISS.SAS`).
    pub width: u8,
    /// A store (`ISS.WnR`).
    pub write: bool,
    /// The general-purpose register transferred (`ISS.SRT`); 31 is XZR / WZR.
    pub reg: u8,
    /// A load sign-extends to the register (`ISS.SSE`).
    pub sign_extend: bool,
    /// The register is 64 bits wide (X), else 32 (W) (`ISS.SF`).
    pub sixty_four: bool,
    /// Length of the trapped instruction in bytes, to step over it (`ESR_EL2.IL`: 4, or 2
    /// for a T32 instruction).
    pub instr_len: u8,
}

/// Why an exception is not an MMIO access the hypervisor can emulate from the syndrome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotMmio {
    /// Not a data abort from the guest (another exception class).
    OtherException,
    /// `ISS.ISV` = 0: the syndrome does not describe the access (a load/store pair, a
    /// write-back addressing mode, SIMD). A hypervisor must decode the instruction itself or
    /// inject an abort into the guest.
    NoSyndrome,
    /// `ISS.S1PTW` = 1: the fault hit the guest's own stage-1 page-table walk, not its access.
    PageTableWalk,
}

/// Decode `ESR_EL2`, `FAR_EL2` and `HPFAR_EL2` of a synchronous exception from the guest.
pub fn decode(esr: u64, far: u64, hpfar: u64) -> Result<MmioAccess, NotMmio> {
    let bit = |n: u32| (esr >> n) & 1 == 1;
    if (esr >> 26) & 0x3f != EC_DATA_ABORT_LOWER {
        return Err(NotMmio::OtherException);
    }
    if !bit(24) {
        return Err(NotMmio::NoSyndrome);
    }
    if bit(7) {
        return Err(NotMmio::PageTableWalk);
    }
    // HPFAR_EL2.FIPA (bits 43:4) holds IPA bits 51:12; FAR_EL2 holds the page offset.
    let page = (hpfar >> 4) & ((1 << 40) - 1);
    Ok(MmioAccess {
        ipa: (page << 12) | (far & 0xfff),
        width: 1 << ((esr >> 22) & 3),
        write: bit(6),
        reg: ((esr >> 16) & 0x1f) as u8,
        sign_extend: bit(21),
        sixty_four: bit(15),
        instr_len: if bit(25) { 4 } else { 2 },
    })
}

impl MmioAccess {
    /// The value a load puts in its register, from the `raw` bytes the device returned:
    /// sign-extended from the access width if `sign_extend`, then cut to 32 bits for a W
    /// register (a W write clears the upper half of the X register).
    pub fn load_value(&self, raw: u64) -> u64 {
        let bits = u32::from(self.width) * 8;
        let value = if bits >= 64 {
            raw
        } else {
            let raw = raw & ((1u64 << bits) - 1);
            if self.sign_extend && (raw >> (bits - 1)) & 1 == 1 {
                raw | !((1u64 << bits) - 1)
            } else {
                raw
            }
        };
        if self.sixty_four {
            value
        } else {
            value & 0xffff_ffff
        }
    }

    /// The bytes a store writes, from the register's value: its low `width` bytes.
    pub fn store_value(&self, reg_value: u64) -> u64 {
        match self.width {
            8 => reg_value,
            w => reg_value & ((1u64 << (u32::from(w) * 8)) - 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ESR_EL2 for a data abort with a valid syndrome (IL = 1, level-3 translation fault).
    fn esr(sas: u64, sse: bool, srt: u64, sf: bool, wnr: bool) -> u64 {
        (EC_DATA_ABORT_LOWER << 26)
            | (1 << 25)
            | (1 << 24)
            | (sas << 22)
            | (u64::from(sse) << 21)
            | (srt << 16)
            | (u64::from(sf) << 15)
            | (u64::from(wnr) << 6)
            | 0x07
    }

    /// HPFAR_EL2 for the page holding `ipa`.
    fn hpfar(ipa: u64) -> u64 {
        (ipa >> 12) << 4
    }

    #[test]
    fn a_word_store_decodes_to_the_register_width_and_address() {
        // str w1, [x0] with x0 = 0x0a00_0070 (QueueNotify of a device at 0x0a00_0000).
        let a = decode(
            esr(2, false, 1, false, true),
            0x0a00_0070,
            hpfar(0x0a00_0070),
        )
        .unwrap();
        assert_eq!(
            a,
            MmioAccess {
                ipa: 0x0a00_0070,
                width: 4,
                write: true,
                reg: 1,
                sign_extend: false,
                sixty_four: false,
                instr_len: 4,
            }
        );
        assert_eq!(a.store_value(0xdead_beef_0000_0003), 3);
    }

    #[test]
    fn loads_sign_extend_and_cut_to_w_registers() {
        // ldrsh x3, [x2]
        let x = decode(esr(1, true, 3, true, false), 0x100, hpfar(0x4000_0100)).unwrap();
        assert_eq!((x.ipa, x.width, x.reg, x.write), (0x4000_0100, 2, 3, false));
        assert_eq!(x.load_value(0x8000), 0xffff_ffff_ffff_8000);
        assert_eq!(x.load_value(0x7fff), 0x7fff);
        // ldrsh w3, [x2]
        let w = decode(esr(1, true, 3, false, false), 0x100, hpfar(0x100)).unwrap();
        assert_eq!(w.load_value(0x8000), 0xffff_8000);
        // ldrb w0, [x1]: no sign extension, only the low byte.
        let b = decode(esr(0, false, 0, false, false), 0, 0).unwrap();
        assert_eq!(b.load_value(0x1ff), 0xff);
        // ldr x5, [x4]
        let d = decode(esr(3, false, 5, true, false), 0, 0).unwrap();
        assert_eq!((d.width, d.load_value(u64::MAX)), (8, u64::MAX));
    }

    #[test]
    fn what_the_syndrome_cannot_describe_is_refused() {
        let valid = esr(2, false, 1, false, true);
        assert_eq!(decode(valid & !(1 << 24), 0, 0), Err(NotMmio::NoSyndrome));
        assert_eq!(decode(valid | (1 << 7), 0, 0), Err(NotMmio::PageTableWalk));
        // EC 0x16: HVC from AArch64.
        assert_eq!(decode(0x16 << 26, 0, 0), Err(NotMmio::OtherException));
        // A T32 instruction (IL = 0) is 2 bytes long.
        assert_eq!(decode(valid & !(1 << 25), 0, 0).unwrap().instr_len, 2);
    }
}
