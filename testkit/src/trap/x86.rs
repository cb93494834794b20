//! A decoder for the x86-64 instructions a compiler emits for volatile `u8` / `u16` / `u32` /
//! `u64` loads and stores, and the rules for completing them: which register a load writes,
//! how wide, and with which extension.
//!
//! Only what a trapped register access needs is decoded (Intel SDM vol. 2, "MOV", "MOVZX",
//! "MOVSX"; §2.1–2.2 for prefixes, ModRM, SIB and RIP-relative addressing):
//!
//! | opcode | form | access |
//! |---|---|---|
//! | `88 /r` | `MOV r/m8, r8` | store 1 |
//! | `89 /r` | `MOV r/m16/32/64, r` | store 2, 4, 8 |
//! | `8A /r` | `MOV r8, r/m8` | load 1 |
//! | `8B /r` | `MOV r, r/m16/32/64` | load 2, 4, 8 |
//! | `C6 /0 ib` | `MOV r/m8, imm8` | store 1 |
//! | `C7 /0 iw/id` | `MOV r/m16/32/64, imm16/imm32` | store 2, 4, 8 (imm32 sign-extended) |
//! | `0F B6 /r`, `0F B7 /r` | `MOVZX r, r/m8`, `MOVZX r, r/m16` | load 1, 2 |
//! | `0F BE /r`, `0F BF /r` | `MOVSX r, r/m8`, `MOVSX r, r/m16` | load 1, 2 |
//! | `REX.W 63 /r` | `MOVSXD r64, r/m32` | load 4 |
//! | `38`, `39`, `3A`, `3B /r` | `CMP r/m, r` and `CMP r, r/m` | load, flags |
//! | `80 /7 ib`, `81 /7 iw/id`, `83 /7 ib` | `CMP r/m, imm` | load, flags |
//! | `84`, `85 /r`; `F6 /0 ib`, `F7 /0 iw/id` | `TEST r/m, r`; `TEST r/m, imm` | load, flags |
//!
//! `CMP` and `TEST` appear because an optimising compiler folds a volatile load whose value
//! is only compared (`reg.read() != 0`) into the comparison; they read memory once and write
//! only the status flags ([`Insn::flags`]).
//!
//! with the operand-size prefix `66`, one REX prefix (`40`–`4F`) directly before the opcode,
//! and every memory form of ModRM: base register, SIB with scaled index (including `r12` and
//! `r13` as base and no base), 8- and 32-bit displacements and RIP-relative. A register
//! operand (`mod = 3`), any other opcode or prefix (segment overrides, `LOCK`, `REP`,
//! address-size) is an error: the trap must not guess.
//!
//! Pure code over a byte slice: it runs (and is tested) on every host, under Miri too.

use core::fmt;

/// A general-purpose register by its encoding number: 0 = `rax`, 1 = `rcx`, 2 = `rdx`,
/// 3 = `rbx`, 4 = `rsp`, 5 = `rbp`, 6 = `rsi`, 7 = `rdi`, 8–15 = `r8`–`r15`.
pub type Gpr = u8;

/// Names of the 64-bit registers, by encoding number.
pub const GPR_NAMES: [&str; 16] = [
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];

/// A register operand of an instruction, with the part of the 64-bit register it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegOperand {
    /// The 64-bit register that holds the operand (for `ah`..`bh`: `rax`..`rbx`).
    pub gpr: Gpr,
    /// Operand width in bytes: 1, 2, 4 or 8.
    pub width: u8,
    /// `ah`, `ch`, `dh`, `bh`: bits 8–15 of `rax`..`rbx` (an 8-bit operand with encoding 4–7
    /// and no REX prefix).
    pub high_byte: bool,
}

impl RegOperand {
    /// The operand's value, read from the full 64-bit register value `full`.
    pub fn get(&self, full: u64) -> u64 {
        if self.high_byte {
            return (full >> 8) & 0xFF;
        }
        full & mask(self.width)
    }

    /// The new 64-bit register value after writing `value` (already `width` bytes) to this
    /// operand: 32-bit writes zero bits 32–63; 8- and 16-bit writes keep the other bits.
    pub fn put(&self, full: u64, value: u64) -> u64 {
        let value = value & mask(self.width);
        match (self.width, self.high_byte) {
            (1, true) => (full & !0xFF00) | (value << 8),
            (4, _) => value,
            (8, _) => value,
            (w, _) => (full & !mask(w)) | value,
        }
    }
}

impl fmt::Display for RegOperand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const LEGACY8: [&str; 8] = ["al", "cl", "dl", "bl", "spl", "bpl", "sil", "dil"];
        const HIGH8: [&str; 4] = ["ah", "ch", "dh", "bh"];
        const LEGACY16: [&str; 8] = ["ax", "cx", "dx", "bx", "sp", "bp", "si", "di"];
        let g = usize::from(self.gpr & 15);
        let low = g < 8;
        match (self.width, self.high_byte) {
            (1, true) => f.write_str(HIGH8.get(g).copied().unwrap_or("?h")),
            (1, _) if low => f.write_str(LEGACY8[g]),
            (1, _) => write!(f, "r{g}b"),
            (2, _) if low => f.write_str(LEGACY16[g]),
            (2, _) => write!(f, "r{g}w"),
            (4, _) if low => write!(f, "e{}", &GPR_NAMES[g][1..]),
            (4, _) => write!(f, "r{g}d"),
            _ => f.write_str(GPR_NAMES[g]),
        }
    }
}

/// All ones in the low `width` bytes.
pub const fn mask(width: u8) -> u64 {
    match width {
        1 => 0xFF,
        2 => 0xFFFF,
        4 => 0xFFFF_FFFF,
        _ => u64::MAX,
    }
}

/// How a load's value reaches its destination register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extend {
    /// `MOV`: the access is as wide as the register operand.
    None,
    /// `MOVZX`: zero-extended to the register operand.
    Zero,
    /// `MOVSX`: sign-extended to the register operand.
    Sign,
}

/// What the instruction does with the memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// A load of `width` bytes into `dst`.
    Load {
        /// Destination register operand.
        dst: RegOperand,
        /// How the loaded value is widened to `dst.width`.
        extend: Extend,
    },
    /// A store of `width` bytes of a register.
    StoreReg {
        /// Source register operand (its width is the access width).
        src: RegOperand,
    },
    /// A store of an immediate (already sign-extended to the access width and masked to it).
    StoreImm {
        /// The value stored.
        value: u64,
    },
    /// A load that only sets the status flags: `CMP` or `TEST` of the memory operand with a
    /// register or an immediate.
    Flags {
        /// Which comparison.
        op: FlagOp,
        /// The other operand.
        other: Operand,
        /// `CMP r/m, x` computes `memory - x`; `CMP r, r/m` (opcodes `3A`/`3B`) computes
        /// `register - memory`. `TEST` is symmetric.
        memory_first: bool,
    },
}

/// The comparison a flag-setting load performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagOp {
    /// `CMP`: flags of a subtraction.
    Cmp,
    /// `TEST`: flags of a bitwise and.
    Test,
}

/// A register or immediate operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    /// A register, as wide as the access.
    Reg(RegOperand),
    /// An immediate, sign-extended to the access width and masked to it.
    Imm(u64),
}

/// The status flags in `RFLAGS`: CF, PF, AF, ZF, SF, OF.
pub const STATUS_FLAGS: u64 = CF | PF | AF | ZF | SF | OF;
/// Carry flag.
pub const CF: u64 = 1 << 0;
/// Parity flag (even parity of the result's low byte).
pub const PF: u64 = 1 << 2;
/// Auxiliary carry flag (carry out of bit 3).
pub const AF: u64 = 1 << 4;
/// Zero flag.
pub const ZF: u64 = 1 << 6;
/// Sign flag.
pub const SF: u64 = 1 << 7;
/// Overflow flag.
pub const OF: u64 = 1 << 11;

/// A memory operand `[base + index * scale + disp]` or `[rip + disp]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemOperand {
    /// Base register, if any.
    pub base: Option<Gpr>,
    /// Index register and its scale (1, 2, 4 or 8), if any.
    pub index: Option<(Gpr, u8)>,
    /// Signed displacement.
    pub disp: i32,
    /// `[rip + disp]`: relative to the address of the next instruction.
    pub rip_relative: bool,
}

impl MemOperand {
    /// The effective address, given the registers (`gpr(n)` is register `n`'s 64-bit value)
    /// and the address of the next instruction.
    pub fn address(&self, gpr: impl Fn(Gpr) -> u64, next_rip: u64) -> u64 {
        let mut ea = if self.rip_relative { next_rip } else { 0 };
        if let Some(b) = self.base {
            ea = ea.wrapping_add(gpr(b));
        }
        if let Some((i, s)) = self.index {
            ea = ea.wrapping_add(gpr(i).wrapping_mul(u64::from(s)));
        }
        // Sign-extend the displacement (two's complement: wrapping add of the extended value).
        ea.wrapping_add(i64::from(self.disp) as u64)
    }
}

/// A decoded load or store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    /// What the instruction does.
    pub op: Op,
    /// Bytes accessed in memory: 1, 2, 4 or 8.
    pub width: u8,
    /// The memory operand.
    pub mem: MemOperand,
    /// Instruction length in bytes (prefixes included).
    pub len: u8,
}

impl Insn {
    /// The value a load leaves in its destination operand, from the `width`-byte memory value
    /// `loaded` (bits above `width` ignored). `None` for a store.
    pub fn load_value(&self, loaded: u64) -> Option<u64> {
        let Op::Load { dst, extend } = self.op else {
            return None;
        };
        let v = loaded & mask(self.width);
        let widened = match extend {
            Extend::None | Extend::Zero => v,
            Extend::Sign => {
                let shift = 64 - 8 * u32::from(self.width);
                (((v << shift) as i64) >> shift) as u64
            }
        };
        Some(widened & mask(dst.width))
    }

    /// The `width`-byte value a store writes, given the registers. `None` for a load.
    pub fn store_value(&self, gpr: impl Fn(Gpr) -> u64) -> Option<u64> {
        match self.op {
            Op::Load { .. } | Op::Flags { .. } => None,
            Op::StoreReg { src } => Some(src.get(gpr(src.gpr))),
            Op::StoreImm { value } => Some(value),
        }
    }

    /// For `CMP`/`TEST`: the new `RFLAGS` value, from the old one, the `width`-byte memory
    /// value and the registers. Only the status flags change; `TEST` clears CF and OF and
    /// leaves AF (architecturally undefined) as it was. `None` for other instructions.
    pub fn flags(&self, rflags: u64, memory: u64, gpr: impl Fn(Gpr) -> u64) -> Option<u64> {
        let Op::Flags {
            op,
            other,
            memory_first,
        } = self.op
        else {
            return None;
        };
        let m = mask(self.width);
        let sign = 1u64 << (8 * u32::from(self.width) - 1);
        let x = match other {
            Operand::Reg(r) => r.get(gpr(r.gpr)),
            Operand::Imm(v) => v,
        } & m;
        let mem = memory & m;
        let (a, b) = if memory_first { (mem, x) } else { (x, mem) };
        let (result, mut f) = match op {
            FlagOp::Cmp => {
                let r = a.wrapping_sub(b) & m;
                let mut f = 0;
                if a < b {
                    f |= CF;
                }
                if (a ^ b) & (a ^ r) & sign != 0 {
                    f |= OF;
                }
                if (a ^ b ^ r) & 0x10 != 0 {
                    f |= AF;
                }
                (r, f)
            }
            FlagOp::Test => (a & b, rflags & AF),
        };
        if result == 0 {
            f |= ZF;
        }
        if result & sign != 0 {
            f |= SF;
        }
        if (result & 0xFF).count_ones() % 2 == 0 {
            f |= PF;
        }
        Some((rflags & !STATUS_FLAGS) | f)
    }
}

/// Why bytes are not a supported load or store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes end before the instruction does.
    Truncated,
    /// A prefix this decoder does not accept (segment override, LOCK, REP, address size, a
    /// second REX, a REX before another prefix).
    Prefix(u8),
    /// An opcode that is not one of the supported loads and stores.
    Opcode(u8),
    /// `0F` followed by an unsupported second opcode byte.
    Opcode0F(u8),
    /// ModRM names a register, not memory (`mod = 3`).
    RegisterOperand,
    /// `C6`/`C7` with a ModRM `reg` field other than 0 (not `MOV`).
    BadExtension(u8),
    /// Longer than the architectural limit of 15 bytes.
    TooLong,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Truncated => f.write_str("instruction truncated"),
            Self::Prefix(p) => write!(f, "unsupported prefix {p:#04x}"),
            Self::Opcode(o) => write!(f, "unsupported opcode {o:#04x}"),
            Self::Opcode0F(o) => write!(f, "unsupported opcode 0f {o:#04x}"),
            Self::RegisterOperand => f.write_str("register operand, not memory"),
            Self::BadExtension(r) => write!(f, "opcode extension /{r} is not MOV"),
            Self::TooLong => f.write_str("longer than 15 bytes"),
        }
    }
}

impl core::error::Error for DecodeError {}

/// Longest x86 instruction.
pub const MAX_LEN: usize = 15;

/// A cursor over the instruction bytes.
struct Bytes<'a> {
    b: &'a [u8],
    at: usize,
}

impl Bytes<'_> {
    fn u8(&mut self) -> Result<u8, DecodeError> {
        let v = *self.b.get(self.at).ok_or(DecodeError::Truncated)?;
        self.at += 1;
        Ok(v)
    }
    fn le(&mut self, n: usize) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for i in 0..n {
            v |= u64::from(self.u8()?) << (8 * i);
        }
        Ok(v)
    }
}

/// REX prefix bits.
#[derive(Clone, Copy, Default)]
struct Rex {
    present: bool,
    w: bool,
    r: u8,
    x: u8,
    b: u8,
}

/// An immediate of `len` bytes, sign-extended to `width` bytes (and masked to it).
fn imm(c: &mut Bytes<'_>, len: u8, width: u8) -> Result<u64, DecodeError> {
    let raw = c.le(usize::from(len))?;
    let shift = 64 - 8 * u32::from(len);
    Ok((((raw << shift) as i64) >> shift) as u64 & mask(width))
}

/// Decode the load or store at the start of `bytes`.
pub fn decode(bytes: &[u8]) -> Result<Insn, DecodeError> {
    let mut c = Bytes { b: bytes, at: 0 };
    let mut opsize16 = false;
    let mut rex = Rex::default();
    let opcode = loop {
        let b = c.u8()?;
        match b {
            // REX must come last: another prefix after it is refused below.
            0x66 if !rex.present => opsize16 = true,
            0x40..=0x4F if !rex.present => {
                rex = Rex {
                    present: true,
                    w: b & 8 != 0,
                    r: (b >> 2) & 1,
                    x: (b >> 1) & 1,
                    b: b & 1,
                };
            }
            0x66
            | 0x40..=0x4F
            | 0x26
            | 0x2E
            | 0x36
            | 0x3E
            | 0x64
            | 0x65
            | 0x67
            | 0xF0
            | 0xF2
            | 0xF3 => return Err(DecodeError::Prefix(b)),
            _ => break b,
        }
    };
    // Operand width of the full-size forms.
    let full = if rex.w {
        8
    } else if opsize16 {
        2
    } else {
        4
    };
    // (memory access width, kind) where kind selects how the ModRM reg field is used.
    enum Kind {
        Load(Extend, u8),
        Store,
        Imm,
        /// CMP/TEST with the ModRM register; `true`: memory is the first operand.
        FlagsReg(FlagOp, bool),
        /// CMP/TEST with an immediate of this many bytes (sign-extended), ModRM reg = the
        /// required extension.
        FlagsImm(FlagOp, u8, u8),
    }
    let imm_full = if full == 2 { 2 } else { 4 };
    let (width, kind) = match opcode {
        0x88 => (1, Kind::Store),
        0x89 => (full, Kind::Store),
        0x8A => (1, Kind::Load(Extend::None, 1)),
        0x8B => (full, Kind::Load(Extend::None, full)),
        0xC6 => (1, Kind::Imm),
        0xC7 => (full, Kind::Imm),
        // MOVSXD without REX.W is a plain 32-bit move that compilers do not emit: refused.
        0x63 if rex.w => (4, Kind::Load(Extend::Sign, 8)),
        0x38 => (1, Kind::FlagsReg(FlagOp::Cmp, true)),
        0x39 => (full, Kind::FlagsReg(FlagOp::Cmp, true)),
        0x3A => (1, Kind::FlagsReg(FlagOp::Cmp, false)),
        0x3B => (full, Kind::FlagsReg(FlagOp::Cmp, false)),
        0x84 => (1, Kind::FlagsReg(FlagOp::Test, true)),
        0x85 => (full, Kind::FlagsReg(FlagOp::Test, true)),
        0x80 => (1, Kind::FlagsImm(FlagOp::Cmp, 1, 7)),
        0x81 => (full, Kind::FlagsImm(FlagOp::Cmp, imm_full, 7)),
        0x83 => (full, Kind::FlagsImm(FlagOp::Cmp, 1, 7)),
        0xF6 => (1, Kind::FlagsImm(FlagOp::Test, 1, 0)),
        0xF7 => (full, Kind::FlagsImm(FlagOp::Test, imm_full, 0)),
        0x0F => match c.u8()? {
            0xB6 => (1, Kind::Load(Extend::Zero, full)),
            0xB7 => (2, Kind::Load(Extend::Zero, full)),
            0xBE => (1, Kind::Load(Extend::Sign, full)),
            0xBF => (2, Kind::Load(Extend::Sign, full)),
            o => return Err(DecodeError::Opcode0F(o)),
        },
        o => return Err(DecodeError::Opcode(o)),
    };
    let modrm = c.u8()?;
    let md = modrm >> 6;
    let reg_field = (modrm >> 3) & 7;
    let rm = modrm & 7;
    if md == 3 {
        return Err(DecodeError::RegisterOperand);
    }
    let mut mem = MemOperand {
        base: None,
        index: None,
        disp: 0,
        rip_relative: false,
    };
    let mut disp_len = match md {
        1 => 1,
        2 => 4,
        _ => 0,
    };
    if rm == 4 {
        let sib = c.u8()?;
        let scale = 1u8 << (sib >> 6);
        let index = ((sib >> 3) & 7) | (rex.x << 3);
        // Index 4 without REX.X means "no index"; r12 (REX.X + 4) is a real index.
        if index != 4 {
            mem.index = Some((index, scale));
        }
        if sib & 7 == 5 && md == 0 {
            // No base, disp32 (rbp/r13 as base need mod 1 or 2).
            disp_len = 4;
        } else {
            mem.base = Some((sib & 7) | (rex.b << 3));
        }
    } else if rm == 5 && md == 0 {
        // RIP-relative, whatever REX.B says.
        mem.rip_relative = true;
        disp_len = 4;
    } else {
        mem.base = Some(rm | (rex.b << 3));
    }
    mem.disp = match disp_len {
        1 => i32::from(c.u8()? as i8),
        4 => c.le(4)? as u32 as i32,
        _ => 0,
    };
    let reg = |width: u8| {
        let gpr = reg_field | (rex.r << 3);
        // Without REX, 8-bit register numbers 4-7 are ah, ch, dh, bh: bits 8-15 of 0-3.
        let high_byte = width == 1 && !rex.present && (4..8).contains(&gpr);
        RegOperand {
            gpr: if high_byte { gpr - 4 } else { gpr },
            width,
            high_byte,
        }
    };
    let op = match kind {
        Kind::Load(extend, dst_width) => Op::Load {
            dst: reg(dst_width),
            extend,
        },
        Kind::Store => Op::StoreReg { src: reg(width) },
        Kind::Imm => {
            if reg_field != 0 {
                return Err(DecodeError::BadExtension(reg_field));
            }
            Op::StoreImm {
                value: imm(&mut c, width.min(4), width)?,
            }
        }
        Kind::FlagsReg(op, memory_first) => Op::Flags {
            op,
            other: Operand::Reg(reg(width)),
            memory_first,
        },
        Kind::FlagsImm(op, imm_len, ext) => {
            // 80/81/83 /0-/6 are read-modify-write arithmetic, F6/F7 /2-/7 are NOT, NEG, MUL,
            // DIV...; F6/F7 /1 is an undocumented alias of TEST that compilers never emit.
            if reg_field != ext {
                return Err(DecodeError::BadExtension(reg_field));
            }
            Op::Flags {
                op,
                other: Operand::Imm(imm(&mut c, imm_len, width)?),
                memory_first: true,
            }
        }
    };
    if c.at > MAX_LEN {
        return Err(DecodeError::TooLong);
    }
    Ok(Insn {
        op,
        width,
        mem,
        len: c.at as u8,
    })
}
