//! The trap harness (`virtq_testkit::trap`) on its own, without a virtio device:
//!
//! * the x86-64 decoder against a table of encodings made by GNU as
//!   (`tests/data/x86_table.txt`: every load/store form, every register including r8–r15 and
//!   their 8-bit forms and ah/ch/dh/bh, every addressing mode including SIB and RIP-relative),
//!   plus hand-made non-canonical encodings and everything it must refuse;
//! * the trap end to end (x86-64 Linux, not Miri) with a plain byte-array target: loads and
//!   stores of every width at every offset, the register write-back rules for every register,
//!   immediates, SIB addressing, several windows and threads at once, and the loud failures
//!   (unsupported instruction, access past the window, re-entrant access, stray fault) in a
//!   child process. No allocation ever happens inside the handler.

use virtq_testkit::trap::x86::{
    DecodeError, Extend, FlagOp, Insn, MemOperand, Op, Operand, RegOperand, decode,
};

const TABLE: &str = include_str!("data/x86_table.txt");

/// A register name → (encoding number, width, high byte).
fn reg(name: &str) -> Option<RegOperand> {
    const R64: [&str; 16] = [
        "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15",
    ];
    const R32: [&str; 8] = ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"];
    const R16: [&str; 8] = ["ax", "cx", "dx", "bx", "sp", "bp", "si", "di"];
    const R8: [&str; 8] = ["al", "cl", "dl", "bl", "spl", "bpl", "sil", "dil"];
    const HI: [&str; 4] = ["ah", "ch", "dh", "bh"];
    let op = |gpr: usize, width, high_byte| RegOperand {
        gpr: gpr as u8,
        width,
        high_byte,
    };
    if let Some(i) = R64.iter().position(|r| *r == name) {
        return Some(op(i, 8, false));
    }
    for (names, w) in [(&R32, 4), (&R16, 2), (&R8, 1)] {
        if let Some(i) = names.iter().position(|r| *r == name) {
            return Some(op(i, w, false));
        }
    }
    if let Some(i) = HI.iter().position(|r| *r == name) {
        return Some(op(i, 1, true));
    }
    // r8b/r8w/r8d ... r15b/r15w/r15d
    let rest = name.strip_prefix('r')?;
    let (num, w) = match rest.as_bytes().last()? {
        b'b' => (&rest[..rest.len() - 1], 1),
        b'w' => (&rest[..rest.len() - 1], 2),
        b'd' => (&rest[..rest.len() - 1], 4),
        _ => return None,
    };
    let n: usize = num.parse().ok()?;
    (8..16).contains(&n).then(|| op(n, w, false))
}

fn int(s: &str) -> i64 {
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let v = match s.strip_prefix("0x") {
        Some(h) => i64::from_str_radix(h, 16).unwrap(),
        None => s.parse().unwrap(),
    };
    if neg { -v } else { v }
}

/// `byte ptr [base+index*scale+disp]` → (width, operand).
fn mem(s: &str) -> (u8, MemOperand) {
    let (size, rest) = s.split_once(" ptr ").unwrap();
    let width = match size {
        "byte" => 1,
        "word" => 2,
        "dword" => 4,
        "qword" => 8,
        _ => panic!("size {size}"),
    };
    let inner = rest.strip_prefix('[').unwrap().strip_suffix(']').unwrap();
    let mut m = MemOperand {
        base: None,
        index: None,
        disp: 0,
        rip_relative: false,
    };
    // Split into signed terms.
    let mut terms = Vec::new();
    let mut start = 0;
    for (i, c) in inner.char_indices().skip(1) {
        if c == '+' || c == '-' {
            terms.push(&inner[start..i]);
            start = i;
        }
    }
    terms.push(&inner[start..]);
    for t in terms {
        let t = t.strip_prefix('+').unwrap_or(t);
        if t == "rip" {
            m.rip_relative = true;
        } else if let Some((r, s)) = t.split_once('*') {
            m.index = Some((reg(r).unwrap().gpr, s.parse().unwrap()));
        } else if let Some(r) = reg(t) {
            m.base = Some(r.gpr);
        } else {
            m.disp = i32::try_from(int(t)).unwrap();
        }
    }
    (width, m)
}

/// What the assembler text says the instruction is.
fn expected(asm: &str, len: usize) -> Insn {
    let (mnemonic, ops) = asm.split_once(' ').unwrap();
    let (a, b) = ops.split_once(", ").unwrap();
    let mask = |w: u8| {
        if w == 8 {
            u64::MAX
        } else {
            (1u64 << (8 * w)) - 1
        }
    };
    let flag_op = match mnemonic {
        "cmp" => Some(FlagOp::Cmp),
        "test" => Some(FlagOp::Test),
        _ => None,
    };
    let other = |s: &str, width| match reg(s) {
        Some(r) => Operand::Reg(r),
        None => Operand::Imm((int(s) as u64) & mask(width)),
    };
    let (width, mem, op) = if a.contains(" ptr ") {
        let (width, m) = mem(a);
        let op = match (flag_op, other(b, width)) {
            (Some(op), o) => Op::Flags {
                op,
                other: o,
                memory_first: true,
            },
            (None, Operand::Reg(src)) => Op::StoreReg { src },
            (None, Operand::Imm(value)) => Op::StoreImm { value },
        };
        (width, m, op)
    } else if let Some(op) = flag_op {
        let (width, m) = mem(b);
        let other = Operand::Reg(reg(a).unwrap());
        (
            width,
            m,
            Op::Flags {
                op,
                other,
                memory_first: false,
            },
        )
    } else {
        let (width, m) = mem(b);
        let extend = match mnemonic {
            "mov" => Extend::None,
            "movzx" => Extend::Zero,
            "movsx" | "movsxd" => Extend::Sign,
            _ => panic!("{mnemonic}"),
        };
        let dst = reg(a).unwrap();
        (width, m, Op::Load { dst, extend })
    };
    Insn {
        op,
        width,
        mem,
        len: len as u8,
    }
}

fn table() -> impl Iterator<Item = (Vec<u8>, &'static str)> {
    TABLE.lines().filter(|l| !l.starts_with('#')).map(|l| {
        let (hex, asm) = l.split_once(" | ").unwrap();
        let bytes = hex
            .split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect();
        (bytes, asm)
    })
}

/// Every encoding GNU as produced decodes to what its assembler text says.
#[test]
fn decoder_agrees_with_the_assembler() {
    let mut forms = std::collections::HashSet::new();
    let mut n = 0;
    for (bytes, asm) in table() {
        let got = decode(&bytes).unwrap_or_else(|e| panic!("{asm}: {e}"));
        assert_eq!(got, expected(asm, bytes.len()), "{asm}");
        // Trailing bytes do not change the result.
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0x90; 8]);
        assert_eq!(decode(&longer), Ok(got), "{asm} + trailing bytes");
        forms.insert((
            asm.split(' ').next().unwrap(),
            got.width,
            matches!(got.op, Op::Load { .. }),
        ));
        n += 1;
    }
    assert!(n > 600, "table has {n} entries");
    // mov load/store × 4 widths, movzx/movsx × 2 source widths, movsxd, cmp/test × 4 widths.
    assert_eq!(forms.len(), 8 + 4 + 1 + 8, "{forms:?}");
}

/// Every register appears in every width of every form: the table is what it claims.
#[test]
fn table_covers_every_register_and_mode() {
    let mut seen = std::collections::HashSet::new();
    let (mut sib, mut rip, mut nobase, mut disp8, mut disp32) = (0, 0, 0, 0, 0);
    for (bytes, asm) in table() {
        let i = decode(&bytes).unwrap();
        let r = match i.op {
            Op::Load { dst, .. } => Some(dst),
            Op::StoreReg { src } => Some(src),
            Op::Flags {
                other: Operand::Reg(r),
                ..
            } => Some(r),
            Op::StoreImm { .. } | Op::Flags { .. } => None,
        };
        if let Some(r) = r {
            seen.insert((asm.split(' ').next().unwrap(), r.gpr, r.width, r.high_byte));
        }
        sib += usize::from(i.mem.index.is_some());
        rip += usize::from(i.mem.rip_relative);
        nobase += usize::from(i.mem.base.is_none() && !i.mem.rip_relative);
        disp8 += usize::from((-128..128).contains(&i.mem.disp) && i.mem.disp != 0);
        disp32 += usize::from(!(-128..128).contains(&i.mem.disp));
    }
    for g in 0..16u8 {
        for w in [1u8, 2, 4, 8] {
            assert!(seen.contains(&("mov", g, w, false)), "mov r{g} width {w}");
        }
        for w in [2u8, 4, 8] {
            assert!(seen.contains(&("movzx", g, w, false)), "movzx r{g}/{w}");
            assert!(seen.contains(&("movsx", g, w, false)), "movsx r{g}/{w}");
        }
        assert!(seen.contains(&("movsxd", g, 8, false)), "movsxd r{g}");
        for w in [1u8, 2, 4, 8] {
            assert!(seen.contains(&("cmp", g, w, false)), "cmp r{g} width {w}");
            assert!(seen.contains(&("test", g, w, false)), "test r{g} width {w}");
        }
    }
    for g in 0..4u8 {
        assert!(
            seen.contains(&("mov", g, 1, true)),
            "high byte of register {g}"
        );
    }
    assert!(sib > 60 && rip > 10 && nobase > 10 && disp8 > 20 && disp32 > 20);
}

/// Encodings an assembler does not choose but a CPU runs: the decoder must read them right.
#[test]
fn non_canonical_encodings() {
    let m = |base, index, disp, rip_relative| MemOperand {
        base,
        index,
        disp,
        rip_relative,
    };
    let eax = RegOperand {
        gpr: 0,
        width: 4,
        high_byte: false,
    };
    let cases: &[(&[u8], MemOperand)] = &[
        // SIB with index 4 and no REX.X: no index ([rax+riz]).
        (&[0x8b, 0x04, 0x20], m(Some(0), None, 0, false)),
        // REX.X + index 4 is r12, a real index.
        (
            &[0x42, 0x8b, 0x04, 0x20],
            m(Some(0), Some((12, 1)), 0, false),
        ),
        // mod 0, rm 5 with REX.B is still RIP-relative, not r13.
        (&[0x41, 0x8b, 0x05, 1, 0, 0, 0], m(None, None, 1, true)),
        // SIB base 5 with mod 1 is rbp + disp8; with REX.B r13 + disp8.
        (&[0x8b, 0x44, 0x25, 0xF0], m(Some(5), None, -16, false)),
        // ... and with index 0 it is rbp + rax - 16.
        (
            &[0x8b, 0x44, 0x05, 0xF0],
            m(Some(5), Some((0, 1)), -16, false),
        ),
        (
            &[0x41, 0x8b, 0x44, 0x25, 0x7F],
            m(Some(13), None, 127, false),
        ),
        // SIB base 5, mod 0, with REX.B: no base, disp32 (not r13).
        (
            &[0x41, 0x8b, 0x04, 0x25, 0, 0x10, 0, 0],
            m(None, None, 0x1000, false),
        ),
        // mod 2 with a zero disp32.
        (&[0x8b, 0x80, 0, 0, 0, 0], m(Some(0), None, 0, false)),
        // A redundant operand-size prefix twice: still one 16-bit load.
        (&[0x66, 0x66, 0x8b, 0x00], m(Some(0), None, 0, false)),
    ];
    for (bytes, want) in cases {
        let i = decode(bytes).unwrap_or_else(|e| panic!("{bytes:02x?}: {e}"));
        assert_eq!(i.mem, *want, "{bytes:02x?}");
        assert_eq!(usize::from(i.len), bytes.len(), "{bytes:02x?}");
    }
    assert_eq!(
        decode(&[0x8b, 0x04, 0x20]).unwrap().op,
        Op::Load {
            dst: eax,
            extend: Extend::None
        }
    );
    assert_eq!(decode(&[0x66, 0x66, 0x8b, 0x00]).unwrap().width, 2);
    // REX.W wins over 66.
    assert_eq!(decode(&[0x66, 0x48, 0x8b, 0x00]).unwrap().width, 8);
    // A REX prefix turns register 4-7 of an 8-bit operand into spl..dil; 0x40 is a bare REX.
    let spl = decode(&[0x40, 0x8a, 0x20]).unwrap();
    let ah = decode(&[0x8a, 0x20]).unwrap();
    assert!(matches!(spl.op, Op::Load { dst, .. } if dst.gpr == 4 && !dst.high_byte));
    // ah is bits 8-15 of rax (register 0), not rsp.
    assert!(matches!(ah.op, Op::Load { dst, .. } if dst.gpr == 0 && dst.high_byte));
}

/// What the decoder refuses, and why: the trap aborts on these rather than guess.
#[test]
fn decoder_refusals() {
    use DecodeError::*;
    let cases: &[(&[u8], DecodeError)] = &[
        (&[0x8b, 0xc0], RegisterOperand),             // mov eax, eax
        (&[0x88, 0xe0], RegisterOperand),             // mov al, ah
        (&[0xf0, 0x89, 0x00], Prefix(0xf0)),          // lock
        (&[0xf3, 0x8b, 0x00], Prefix(0xf3)),          // rep
        (&[0xf2, 0x8b, 0x00], Prefix(0xf2)),          // repne
        (&[0x64, 0x8b, 0x00], Prefix(0x64)),          // fs:
        (&[0x65, 0x8b, 0x00], Prefix(0x65)),          // gs:
        (&[0x2e, 0x8b, 0x00], Prefix(0x2e)),          // cs:
        (&[0x67, 0x8b, 0x00], Prefix(0x67)),          // addr32
        (&[0x48, 0x66, 0x8b, 0x00], Prefix(0x66)),    // REX not last
        (&[0x48, 0x48, 0x8b, 0x00], Prefix(0x48)),    // two REX
        (&[0x01, 0x00], Opcode(0x01)),                // add [rax], eax
        (&[0x83, 0x00, 0x01], BadExtension(0)),       // add dword [rax], 1
        (&[0x81, 0x08, 1, 0, 0, 0], BadExtension(1)), // or dword [rax], 1
        (&[0x80, 0x30, 1], BadExtension(6)),          // xor byte [rax], 1
        (&[0xf7, 0x18], BadExtension(3)),             // neg dword [rax]
        (&[0xf6, 0x08, 1], BadExtension(1)),          // test alias /1
        (&[0x3d, 1, 0, 0, 0], Opcode(0x3d)),          // cmp eax, imm32 (no memory)
        (&[0x87, 0x00], Opcode(0x87)),                // xchg [rax], eax
        (&[0x63, 0x00], Opcode(0x63)),                // movsxd without REX.W
        (&[0x0f, 0xaf, 0x00], Opcode0F(0xaf)),        // imul eax, [rax]
        (&[0x0f, 0x10, 0x00], Opcode0F(0x10)),        // movups xmm0, [rax]
        (&[0xc7, 0x08, 1, 0, 0, 0], BadExtension(1)),
        (&[0xc6, 0x38, 1], BadExtension(7)),
        (&[], Truncated),
    ];
    for (bytes, want) in cases {
        assert_eq!(decode(bytes), Err(*want), "{bytes:02x?}");
    }
    // 16 bytes: fourteen 66 prefixes and a two-byte load.
    let mut long = vec![0x66; 14];
    long.extend_from_slice(&[0x8b, 0x00]);
    assert_eq!(decode(&long), Err(TooLong));
    long.remove(0);
    assert_eq!(decode(&long).map(|i| i.len), Ok(15));
    // Every strict prefix of every table entry is truncated, never misread.
    for (bytes, asm) in table() {
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), Err(Truncated), "{asm} cut at {cut}");
        }
    }
}

/// The register write rules of x86-64, the widening of MOVZX/MOVSX, and the flags of
/// CMP/TEST.
#[test]
fn register_write_back_rules() {
    const OLD: u64 = 0xAAAA_AAAA_AAAA_AAAA;
    let r = |width, high_byte| RegOperand {
        gpr: 0,
        width,
        high_byte,
    };
    assert_eq!(r(1, false).put(OLD, 0x81), 0xAAAA_AAAA_AAAA_AA81);
    assert_eq!(r(1, true).put(OLD, 0x81), 0xAAAA_AAAA_AAAA_81AA);
    assert_eq!(r(2, false).put(OLD, 0x9281), 0xAAAA_AAAA_AAAA_9281);
    assert_eq!(r(4, false).put(OLD, 0xB4A3_9281), 0x0000_0000_B4A3_9281);
    assert_eq!(
        r(8, false).put(OLD, 0xF8E7_D6C5_B4A3_9281),
        0xF8E7_D6C5_B4A3_9281
    );
    // Values wider than the operand are cut to it.
    assert_eq!(r(2, false).put(OLD, 0x1_2345), 0xAAAA_AAAA_AAAA_2345);
    assert_eq!(r(1, false).get(0x1122_3344_5566_7788), 0x88);
    assert_eq!(r(1, true).get(0x1122_3344_5566_7788), 0x77);
    assert_eq!(r(4, false).get(0x1122_3344_5566_7788), 0x5566_7788);
    let load = |bytes: &[u8], loaded| decode(bytes).unwrap().load_value(loaded).unwrap();
    assert_eq!(load(&[0x0f, 0xb6, 0x00], 0x181), 0x81); // movzx eax, byte
    assert_eq!(load(&[0x0f, 0xbe, 0x00], 0x81), 0xFFFF_FF81); // movsx eax, byte
    assert_eq!(load(&[0x48, 0x0f, 0xbe, 0x00], 0x81), 0xFFFF_FFFF_FFFF_FF81);
    assert_eq!(load(&[0x66, 0x0f, 0xbe, 0x00], 0x81), 0xFF81); // movsx ax, byte
    assert_eq!(
        load(&[0x48, 0x0f, 0xbf, 0x00], 0x9281),
        0xFFFF_FFFF_FFFF_9281
    );
    assert_eq!(
        load(&[0x48, 0x63, 0x00], 0x8000_0000),
        0xFFFF_FFFF_8000_0000
    );
    assert_eq!(load(&[0x48, 0x63, 0x00], 0x7FFF_FFFF), 0x7FFF_FFFF);
    assert_eq!(load(&[0x0f, 0xbe, 0x00], 0x7F), 0x7F);
    assert_eq!(decode(&[0x89, 0x00]).unwrap().load_value(1), None);
    // CMP/TEST flags (the live test checks them against the CPU; these run everywhere).
    use virtq_testkit::trap::x86::{AF, CF, OF, PF, SF, ZF};
    let flags = |bytes: &[u8], rflags, mem, reg| {
        decode(bytes).unwrap().flags(rflags, mem, |_| reg).unwrap()
    };
    let cmp32 = [0x39, 0x00]; // cmp [rax], eax
    assert_eq!(flags(&cmp32, 0x202, 0, 0), 0x202 | ZF | PF);
    assert_eq!(flags(&cmp32, 0x202, 0, 1), 0x202 | CF | SF | PF | AF);
    assert_eq!(flags(&cmp32, 0x202 | ZF | OF, 5, 3), 0x202);
    // cmp byte [rax], al with 0x80 - 1: signed overflow.
    assert_eq!(flags(&[0x38, 0x00], 0, 0x80, 1), OF | AF);
    // cmp eax, [rax] subtracts memory from the register.
    assert_eq!(flags(&[0x3b, 0x00], 0, 0, 1), 0);
    assert_eq!(flags(&[0x3b, 0x00], 0, 1, 0), CF | SF | PF | AF);
    // test [rax], eax: CF and OF cleared, AF kept.
    assert_eq!(flags(&[0x85, 0x00], CF | OF | AF, 0xF0, 0x30), AF | PF);
    assert_eq!(flags(&[0x85, 0x00], 0, 0xF0, 0x0F), ZF | PF);
    // cmp dword [rax], 0x74726976 (the magic-value check) on a match.
    let magic = [0x81, 0x38, 0x76, 0x69, 0x72, 0x74];
    assert_eq!(flags(&magic, 0, 0x7472_6976, 0), ZF | PF);
    assert_eq!(decode(&[0x8b, 0x00]).unwrap().flags(0, 0, |_| 0), None);
    assert_eq!(
        decode(&[0x88, 0x20]).unwrap().store_value(|_| 0x5A00),
        Some(0x5A),
        "store from ah"
    );
}

/// Effective addresses: wrapping, negative displacements, RIP-relative from the next
/// instruction.
#[test]
fn effective_addresses() {
    let regs = |g: u8| 0x1000 * u64::from(g) + 0x10;
    // mov eax, [rip-0x200]; next rip 0x5006
    let i = decode(&[0x8b, 0x05, 0x00, 0xfe, 0xff, 0xff]).unwrap();
    assert_eq!(i.mem.address(regs, 0x5006), 0x4e06);
    // mov r10, [r8+r12*4+0x10]: 0x8010 + 4 * 0xc010 + 0x10
    let i = decode(&[0x4f, 0x8b, 0x54, 0xa0, 0x10]).unwrap();
    assert_eq!(i.mem.address(regs, 0), 0x8010 + 4 * 0xc010 + 0x10);
    // [rax-8] with rax = 4 wraps below zero.
    let i = decode(&[0x8b, 0x40, 0xf8]).unwrap();
    assert_eq!(i.mem.address(|_| 4, 0), 4u64.wrapping_sub(8));
}

#[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
mod live {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::arch::asm;
    use std::sync::atomic::{AtomicU64, Ordering};

    use virtq_testkit::trap::x86::{AF, STATUS_FLAGS};
    use virtq_testkit::trap::{TrapHal, TrapTarget, TrapWindow, in_handler};

    /// Counts allocations made inside the trap handler (there must be none).
    struct Counting;
    static IN_HANDLER: AtomicU64 = AtomicU64::new(0);

    // SAFETY: forwards to the system allocator unchanged.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            if in_handler() {
                IN_HANDLER.fetch_add(1, Ordering::Relaxed);
            }
            // SAFETY: the caller's contract is System's.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            if in_handler() {
                IN_HANDLER.fetch_add(1, Ordering::Relaxed);
            }
            // SAFETY: as above.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static ALLOC: Counting = Counting;

    fn no_handler_allocations() {
        assert_eq!(
            IN_HANDLER.load(Ordering::Relaxed),
            0,
            "allocation in the trap handler"
        );
    }

    const LEN: usize = 0x200;

    /// A plain window: little-endian bytes, plus what arrived.
    struct Bytes {
        mem: [u8; LEN],
        last: Option<(u64, u8, Option<u64>)>,
    }

    impl Bytes {
        fn new() -> Self {
            Self {
                mem: [0; LEN],
                last: None,
            }
        }
    }

    impl TrapTarget for Bytes {
        fn read(&mut self, offset: u64, width: u8) -> u64 {
            self.last = Some((offset, width, None));
            let o = offset as usize;
            let mut b = [0u8; 8];
            b[..usize::from(width)].copy_from_slice(&self.mem[o..o + usize::from(width)]);
            u64::from_le_bytes(b)
        }
        fn write(&mut self, offset: u64, width: u8, value: u64) {
            self.last = Some((offset, width, Some(value)));
            let o = offset as usize;
            self.mem[o..o + usize::from(width)]
                .copy_from_slice(&value.to_le_bytes()[..usize::from(width)]);
        }
    }

    /// Pattern value of a given width for an offset.
    fn pattern(off: usize, width: u8) -> u64 {
        let v = 0x8877_6655_4433_2211u64.rotate_left(off as u32 * 8) ^ (off as u64 * 0x0101);
        if width == 8 {
            v
        } else {
            v & ((1 << (8 * width)) - 1)
        }
    }

    // Trapped accesses of each width through a register the compiler picks, at any alignment.
    unsafe fn store(p: *mut u8, width: u8, v: u64) {
        // SAFETY (all arms): `p` is inside a trap window; the access never touches memory.
        unsafe {
            match width {
                1 => {
                    asm!("mov byte ptr [{p}], {v:l}", p = in(reg) p, v = in(reg) v, options(nostack))
                }
                2 => {
                    asm!("mov word ptr [{p}], {v:x}", p = in(reg) p, v = in(reg) v, options(nostack))
                }
                4 => {
                    asm!("mov dword ptr [{p}], {v:e}", p = in(reg) p, v = in(reg) v, options(nostack))
                }
                _ => {
                    asm!("mov qword ptr [{p}], {v:r}", p = in(reg) p, v = in(reg) v, options(nostack))
                }
            }
        }
    }

    unsafe fn load(p: *const u8, width: u8) -> u64 {
        let mut v: u64 = 0xDEAD_BEEF_DEAD_BEEF;
        // SAFETY (all arms): as in `store`.
        unsafe {
            match width {
                1 => {
                    asm!("mov {v:l}, byte ptr [{p}]", p = in(reg) p, v = inout(reg) v, options(nostack))
                }
                2 => {
                    asm!("mov {v:x}, word ptr [{p}]", p = in(reg) p, v = inout(reg) v, options(nostack))
                }
                4 => {
                    asm!("mov {v:e}, dword ptr [{p}]", p = in(reg) p, v = inout(reg) v, options(nostack))
                }
                _ => {
                    asm!("mov {v:r}, qword ptr [{p}]", p = in(reg) p, v = inout(reg) v, options(nostack))
                }
            }
        }
        v
    }

    /// Loads and stores of every width at every offset (aligned or not) reach the target with
    /// the right offset, width and value, and loads come back with the target's value and the
    /// register rules of their width.
    #[test]
    fn every_width_at_every_offset() {
        let w = TrapWindow::new(LEN, Bytes::new());
        let base = w.base().as_ptr();
        let mut expect_reads = 0;
        for width in [1u8, 2, 4, 8] {
            for off in 0..=LEN - usize::from(width) {
                let v = pattern(off, width);
                // SAFETY: inside the window.
                unsafe { store(base.wrapping_add(off), width, v) };
                assert_eq!(w.with(|t| t.last), Some((off as u64, width, Some(v))));
                let bytes = w.with(|t| t.mem[off..off + usize::from(width)].to_vec());
                assert_eq!(bytes, v.to_le_bytes()[..usize::from(width)]);
                // SAFETY: inside the window.
                let back = unsafe { load(base.wrapping_add(off), width) };
                let kept = match width {
                    1 => 0xDEAD_BEEF_DEAD_BE00,
                    2 => 0xDEAD_BEEF_DEAD_0000,
                    _ => 0,
                };
                assert_eq!(back, kept | v, "width {width} offset {off:#x}");
                assert_eq!(w.with(|t| t.last), Some((off as u64, width, None)));
                expect_reads += 1;
            }
        }
        assert_eq!(w.counts().reads, expect_reads);
        assert_eq!(w.counts().writes, expect_reads);
        no_handler_allocations();
    }

    /// The accesses the compiler itself emits for volatile u8/u16/u32/u64 (this build's
    /// profile), at every aligned offset.
    #[test]
    fn compiler_volatile_accesses() {
        let w = TrapWindow::new(LEN, Bytes::new());
        let base = w.base().as_ptr();
        for off in (0..LEN).step_by(8) {
            let p = base.wrapping_add(off);
            // SAFETY: inside the window, aligned for each type.
            unsafe {
                p.cast::<u64>().write_volatile(pattern(off, 8));
                assert_eq!(p.cast::<u64>().read_volatile(), pattern(off, 8));
                p.cast::<u32>().write_volatile(0x1234_5678);
                assert_eq!(p.cast::<u32>().read_volatile(), 0x1234_5678);
                assert_eq!(
                    p.add(4).cast::<u32>().read_volatile() as u64,
                    pattern(off, 8) >> 32
                );
                p.add(2).cast::<u16>().write_volatile(0xBEEF);
                assert_eq!(p.add(2).cast::<u16>().read_volatile(), 0xBEEF);
                p.add(7).write_volatile(0x5A);
                assert_eq!(p.add(7).read_volatile(), 0x5A);
                let high = ((pattern(off, 8) >> 32) & 0x00FF_FFFF) | 0x5A00_0000;
                assert_eq!(p.cast::<u64>().read_volatile(), (high << 32) | 0xBEEF_5678);
            }
        }
        no_handler_allocations();
    }

    const INIT: u64 = 0xAAAA_AAAA_AAAA_AAAA;
    const MEM: [u8; 8] = [0x81, 0x92, 0xA3, 0xB4, 0xC5, 0xD6, 0xE7, 0xF8];

    /// Loads into one named register with each form, from a window holding `MEM` at 0.
    macro_rules! loads_into {
        ($p:expr, $r64:tt, $r32:tt, $r16:tt, $r8:tt) => {{
            let p = $p;
            let mut out = [INIT; 12];
            // SAFETY: `p` points into a trap window; only the named register is written.
            unsafe {
                asm!(concat!("mov ", $r8, ", byte ptr [{p}]"), p = in(reg) p, inout($r64) out[0], options(nostack));
                asm!(concat!("mov ", $r16, ", word ptr [{p}]"), p = in(reg) p, inout($r64) out[1], options(nostack));
                asm!(concat!("mov ", $r32, ", dword ptr [{p}]"), p = in(reg) p, inout($r64) out[2], options(nostack));
                asm!(concat!("mov ", $r64, ", qword ptr [{p}]"), p = in(reg) p, inout($r64) out[3], options(nostack));
                asm!(concat!("movzx ", $r16, ", byte ptr [{p}]"), p = in(reg) p, inout($r64) out[4], options(nostack));
                asm!(concat!("movzx ", $r32, ", byte ptr [{p}]"), p = in(reg) p, inout($r64) out[5], options(nostack));
                asm!(concat!("movzx ", $r64, ", word ptr [{p}]"), p = in(reg) p, inout($r64) out[6], options(nostack));
                asm!(concat!("movsx ", $r16, ", byte ptr [{p}]"), p = in(reg) p, inout($r64) out[7], options(nostack));
                asm!(concat!("movsx ", $r32, ", byte ptr [{p}]"), p = in(reg) p, inout($r64) out[8], options(nostack));
                asm!(concat!("movsx ", $r64, ", word ptr [{p}]"), p = in(reg) p, inout($r64) out[9], options(nostack));
                asm!(concat!("movsx ", $r32, ", word ptr [{p}]"), p = in(reg) p, inout($r64) out[10], options(nostack));
                asm!(concat!("movsxd ", $r64, ", dword ptr [{p}]"), p = in(reg) p, inout($r64) out[11], options(nostack));
            }
            out
        }};
    }

    /// Stores from one named register at each width (register holds 0x1122334455667788).
    macro_rules! stores_from {
        ($w:expr, $r64:tt, $r32:tt, $r16:tt, $r8:tt) => {{
            let w = $w;
            // Away from the bytes the loads read.
            let p = w.base().as_ptr().wrapping_add(0x100);
            let v = 0x1122_3344_5566_7788u64;
            let stored = || w.with(|t| t.last.and_then(|l| l.2)).unwrap();
            // SAFETY: `p` points into a trap window.
            unsafe {
                asm!(concat!("mov byte ptr [{p}], ", $r8), p = in(reg) p, in($r64) v, options(nostack));
                let b = stored();
                asm!(concat!("mov word ptr [{p}], ", $r16), p = in(reg) p, in($r64) v, options(nostack));
                let h = stored();
                asm!(concat!("mov dword ptr [{p}], ", $r32), p = in(reg) p, in($r64) v, options(nostack));
                let d = stored();
                asm!(concat!("mov qword ptr [{p}], ", $r64), p = in(reg) p, in($r64) v, options(nostack));
                [b, h, d, stored()]
            }
        }};
    }

    const LOADED: [u64; 12] = [
        0xAAAA_AAAA_AAAA_AA81, // mov r8: upper 56 bits kept
        0xAAAA_AAAA_AAAA_9281, // mov r16: upper 48 kept
        0x0000_0000_B4A3_9281, // mov r32: upper 32 cleared
        0xF8E7_D6C5_B4A3_9281, // mov r64
        0xAAAA_AAAA_AAAA_0081, // movzx r16, m8: 16-bit write keeps the rest
        0x0000_0000_0000_0081, // movzx r32, m8
        0x0000_0000_0000_9281, // movzx r64, m16
        0xAAAA_AAAA_AAAA_FF81, // movsx r16, m8
        0x0000_0000_FFFF_FF81, // movsx r32, m8: sign to 32, then upper cleared
        0xFFFF_FFFF_FFFF_9281, // movsx r64, m16
        0x0000_0000_FFFF_9281, // movsx r32, m16
        0xFFFF_FFFF_B4A3_9281, // movsxd r64, m32
    ];
    const STORED: [u64; 4] = [0x88, 0x7788, 0x5566_7788, 0x1122_3344_5566_7788];

    /// Every register the compiler lets us name, as load destination and store source, with
    /// every form: the handler writes the right register with the right rules.
    #[test]
    fn every_register() {
        let w = TrapWindow::new(LEN, Bytes::new());
        w.with(|t| t.mem[..8].copy_from_slice(&MEM));
        let p = w.base().as_ptr();
        let regs: [([u64; 12], [u64; 4], &str); 14] = [
            (
                loads_into!(p, "rax", "eax", "ax", "al"),
                stores_from!(&w, "rax", "eax", "ax", "al"),
                "rax",
            ),
            (
                loads_into!(p, "rcx", "ecx", "cx", "cl"),
                stores_from!(&w, "rcx", "ecx", "cx", "cl"),
                "rcx",
            ),
            (
                loads_into!(p, "rdx", "edx", "dx", "dl"),
                stores_from!(&w, "rdx", "edx", "dx", "dl"),
                "rdx",
            ),
            (
                loads_into!(p, "rsi", "esi", "si", "sil"),
                stores_from!(&w, "rsi", "esi", "si", "sil"),
                "rsi",
            ),
            (
                loads_into!(p, "rdi", "edi", "di", "dil"),
                stores_from!(&w, "rdi", "edi", "di", "dil"),
                "rdi",
            ),
            (
                loads_into!(p, "r8", "r8d", "r8w", "r8b"),
                stores_from!(&w, "r8", "r8d", "r8w", "r8b"),
                "r8",
            ),
            (
                loads_into!(p, "r9", "r9d", "r9w", "r9b"),
                stores_from!(&w, "r9", "r9d", "r9w", "r9b"),
                "r9",
            ),
            (
                loads_into!(p, "r10", "r10d", "r10w", "r10b"),
                stores_from!(&w, "r10", "r10d", "r10w", "r10b"),
                "r10",
            ),
            (
                loads_into!(p, "r11", "r11d", "r11w", "r11b"),
                stores_from!(&w, "r11", "r11d", "r11w", "r11b"),
                "r11",
            ),
            (
                loads_into!(p, "r12", "r12d", "r12w", "r12b"),
                stores_from!(&w, "r12", "r12d", "r12w", "r12b"),
                "r12",
            ),
            (
                loads_into!(p, "r13", "r13d", "r13w", "r13b"),
                stores_from!(&w, "r13", "r13d", "r13w", "r13b"),
                "r13",
            ),
            (
                loads_into!(p, "r14", "r14d", "r14w", "r14b"),
                stores_from!(&w, "r14", "r14d", "r14w", "r14b"),
                "r14",
            ),
            (
                loads_into!(p, "r15", "r15d", "r15w", "r15b"),
                stores_from!(&w, "r15", "r15d", "r15w", "r15b"),
                "r15",
            ),
            (rbx_loads(p), rbx_stores(&w), "rbx"),
        ];
        for (loaded, stored, name) in regs {
            assert_eq!(loaded, LOADED, "{name}");
            assert_eq!(stored, STORED, "{name}");
        }
        // High-byte registers: ah..bh as destination (bits 8-15 only) and as source.
        let mut v = [INIT; 4];
        // SAFETY: `p` points into the window.
        unsafe {
            asm!("mov ah, byte ptr [{p}]", p = in(reg) p, inout("rax") v[0], options(nostack));
            asm!("mov ch, byte ptr [{p}]", p = in(reg) p, inout("rcx") v[1], options(nostack));
            asm!("mov dh, byte ptr [{p}]", p = in(reg) p, inout("rdx") v[2], options(nostack));
            asm!("xchg rbx, {t}", "mov bh, byte ptr [{p}]", "xchg rbx, {t}", p = in(reg) p, t = inout(reg) v[3], options(nostack));
        }
        assert_eq!(v, [0xAAAA_AAAA_AAAA_81AA; 4]);
        for (i, src) in [0x5A00u64, 0x5B00, 0x5C00, 0x5D00].into_iter().enumerate() {
            // SAFETY: as above.
            unsafe {
                match i {
                    0 => {
                        asm!("mov byte ptr [{p}+1], ah", p = in(reg) p, in("rax") src, options(nostack))
                    }
                    1 => {
                        asm!("mov byte ptr [{p}+1], ch", p = in(reg) p, in("rcx") src, options(nostack))
                    }
                    2 => {
                        asm!("mov byte ptr [{p}+1], dh", p = in(reg) p, in("rdx") src, options(nostack))
                    }
                    _ => {
                        asm!("xchg rbx, {t}", "mov byte ptr [{p}+1], bh", "xchg rbx, {t}", p = in(reg) p, t = inout(reg) src => _, options(nostack))
                    }
                }
            }
            assert_eq!(w.with(|t| t.last), Some((1, 1, Some(src >> 8))));
        }
        no_handler_allocations();
    }

    /// rbx cannot be an asm operand: swap it in and out around the access.
    fn rbx_loads(p: *mut u8) -> [u64; 12] {
        let mut out = [INIT; 12];
        for (i, o) in out.iter_mut().enumerate() {
            // SAFETY: `p` points into the window; rbx is restored before the block ends.
            unsafe {
                match i {
                    0 => {
                        asm!("xchg rbx, {t}", "mov bl, byte ptr [{p}]", "xchg rbx, {t}", p = in(reg) p, t = inout(reg) *o, options(nostack))
                    }
                    1 => {
                        asm!("xchg rbx, {t}", "mov bx, word ptr [{p}]", "xchg rbx, {t}", p = in(reg) p, t = inout(reg) *o, options(nostack))
                    }
                    2 => {
                        asm!("xchg rbx, {t}", "mov ebx, dword ptr [{p}]", "xchg rbx, {t}", p = in(reg) p, t = inout(reg) *o, options(nostack))
                    }
                    3 => {
                        asm!("xchg rbx, {t}", "mov rbx, qword ptr [{p}]", "xchg rbx, {t}", p = in(reg) p, t = inout(reg) *o, options(nostack))
                    }
                    4 => {
                        asm!("xchg rbx, {t}", "movzx bx, byte ptr [{p}]", "xchg rbx, {t}", p = in(reg) p, t = inout(reg) *o, options(nostack))
                    }
                    5 => {
                        asm!("xchg rbx, {t}", "movzx ebx, byte ptr [{p}]", "xchg rbx, {t}", p = in(reg) p, t = inout(reg) *o, options(nostack))
                    }
                    6 => {
                        asm!("xchg rbx, {t}", "movzx rbx, word ptr [{p}]", "xchg rbx, {t}", p = in(reg) p, t = inout(reg) *o, options(nostack))
                    }
                    7 => {
                        asm!("xchg rbx, {t}", "movsx bx, byte ptr [{p}]", "xchg rbx, {t}", p = in(reg) p, t = inout(reg) *o, options(nostack))
                    }
                    8 => {
                        asm!("xchg rbx, {t}", "movsx ebx, byte ptr [{p}]", "xchg rbx, {t}", p = in(reg) p, t = inout(reg) *o, options(nostack))
                    }
                    9 => {
                        asm!("xchg rbx, {t}", "movsx rbx, word ptr [{p}]", "xchg rbx, {t}", p = in(reg) p, t = inout(reg) *o, options(nostack))
                    }
                    10 => {
                        asm!("xchg rbx, {t}", "movsx ebx, word ptr [{p}]", "xchg rbx, {t}", p = in(reg) p, t = inout(reg) *o, options(nostack))
                    }
                    _ => {
                        asm!("xchg rbx, {t}", "movsxd rbx, dword ptr [{p}]", "xchg rbx, {t}", p = in(reg) p, t = inout(reg) *o, options(nostack))
                    }
                }
            }
        }
        out
    }

    fn rbx_stores(w: &TrapWindow<Bytes>) -> [u64; 4] {
        let p = w.base().as_ptr().wrapping_add(0x100);
        let mut got = [0u64; 4];
        for (i, g) in got.iter_mut().enumerate() {
            // SAFETY: as in `rbx_loads`.
            unsafe {
                match i {
                    0 => {
                        asm!("xchg rbx, {t}", "mov byte ptr [{p}], bl", "xchg rbx, {t}", p = in(reg) p, t = inout(reg) 0x1122_3344_5566_7788u64 => _, options(nostack))
                    }
                    1 => {
                        asm!("xchg rbx, {t}", "mov word ptr [{p}], bx", "xchg rbx, {t}", p = in(reg) p, t = inout(reg) 0x1122_3344_5566_7788u64 => _, options(nostack))
                    }
                    2 => {
                        asm!("xchg rbx, {t}", "mov dword ptr [{p}], ebx", "xchg rbx, {t}", p = in(reg) p, t = inout(reg) 0x1122_3344_5566_7788u64 => _, options(nostack))
                    }
                    _ => {
                        asm!("xchg rbx, {t}", "mov qword ptr [{p}], rbx", "xchg rbx, {t}", p = in(reg) p, t = inout(reg) 0x1122_3344_5566_7788u64 => _, options(nostack))
                    }
                }
            }
            *g = w.with(|t| t.last.and_then(|l| l.2)).unwrap();
        }
        got
    }

    /// Immediate stores (sign extension of imm32 to 64 bits) and SIB addressing with
    /// negative displacements.
    #[test]
    fn immediates_and_sib() {
        let w = TrapWindow::new(LEN, Bytes::new());
        let p = w.base().as_ptr();
        let last = || w.with(|t| t.last);
        // SAFETY: every address below lies inside the window.
        unsafe {
            asm!("mov byte ptr [{p}+3], 0x7f", p = in(reg) p, options(nostack));
            assert_eq!(last(), Some((3, 1, Some(0x7F))));
            asm!("mov word ptr [{p}+0x10], 0xbeef", p = in(reg) p, options(nostack));
            assert_eq!(last(), Some((0x10, 2, Some(0xBEEF))));
            asm!("mov dword ptr [{p}+0x20], 0xdeadbeef", p = in(reg) p, options(nostack));
            assert_eq!(last(), Some((0x20, 4, Some(0xDEAD_BEEF))));
            asm!("mov qword ptr [{p}+0x30], -5", p = in(reg) p, options(nostack));
            assert_eq!(last(), Some((0x30, 8, Some(0xFFFF_FFFF_FFFF_FFFB))));
            asm!("mov qword ptr [{p}+0x38], 0x7fffffff", p = in(reg) p, options(nostack));
            assert_eq!(last(), Some((0x38, 8, Some(0x7FFF_FFFF))));
            // base + index * scale + disp, with a base past the target and a negative disp.
            let base = p.wrapping_add(0x100);
            for (idx, want) in [(0usize, 0xC0u64), (3, 0xD8), (9, 0x108)] {
                let mut v = 0u64;
                asm!("mov {v:e}, dword ptr [{b}+{i}*8-0x40]", b = in(reg) base, i = in(reg) idx, v = out(reg) v, options(nostack));
                assert_eq!(v, 0);
                assert_eq!(last(), Some((want, 4, None)));
            }
            let idx = 0x31usize;
            asm!("mov byte ptr [{i}*4+{b}], {v:l}", b = in(reg) p, i = in(reg) idx, v = in(reg) 0x66u64, options(nostack));
            assert_eq!(last(), Some((0xC4, 1, Some(0x66))));
        }
        no_handler_allocations();
    }

    /// Values around every sign and carry boundary of a width.
    fn edge_values(width: u8) -> Vec<u64> {
        let bits = 8 * u32::from(width);
        let m = if width == 8 {
            u64::MAX
        } else {
            (1 << bits) - 1
        };
        let top = 1u64 << (bits - 1);
        let mut v = vec![
            0,
            1,
            2,
            0x0F,
            0x10,
            0x7F,
            0x80,
            0xFF,
            top - 1,
            top,
            top + 1,
            m,
            m - 1,
        ];
        v.extend([
            0x5A5A_5A5A_5A5A_5A5A,
            0x1234_5678_9ABC_DEF0,
            0x8000_0000,
            0x7FFF_FFFF,
        ]);
        v.into_iter().map(|x| x & m).collect()
    }

    /// Status flags the CPU produces for `$insn` with `[{p}]` pointing at `p` and `{b}` = b.
    macro_rules! flags_of {
        ($insn:literal, $p:expr, $b:expr) => {{
            let f: u64;
            // SAFETY: `p` is readable memory or a trap window; only flags and `f` change.
            unsafe {
                asm!(
                    "xor {f:e}, {f:e}",
                    $insn,
                    "pushfq",
                    "pop {f}",
                    p = in(reg) $p,
                    b = in(reg) $b,
                    f = out(reg) f,
                )
            };
            f & STATUS_FLAGS
        }};
        ($insn:literal, $p:expr) => {{
            let f: u64;
            // SAFETY: as above.
            unsafe { asm!("xor {f:e}, {f:e}", $insn, "pushfq", "pop {f}", p = in(reg) $p, f = out(reg) f) };
            f & STATUS_FLAGS
        }};
    }

    /// CMP and TEST on a trapped load (what optimised code folds `read() == x` into) set the
    /// same status flags as the CPU does on ordinary memory, for every width, both operand
    /// orders, register and immediate forms, over edge values.
    #[test]
    fn compare_flags_match_the_cpu() {
        let w = TrapWindow::new(LEN, Bytes::new());
        let trap = w.base().as_ptr();
        let mut plain = Box::new([0u8; 8]);
        let mut checked = 0;
        for width in [1u8, 2, 4, 8] {
            for a in edge_values(width) {
                plain[..].copy_from_slice(&a.to_le_bytes());
                w.with(|t| t.mem[..8].copy_from_slice(&a.to_le_bytes()));
                let mem = plain.as_ptr();
                for b in edge_values(width) {
                    let both = |f: &dyn Fn(*const u8) -> u64| (f(mem), f(trap));
                    let pairs = match width {
                        1 => [
                            both(&|p| flags_of!("cmp byte ptr [{p}], {b:l}", p, b)),
                            both(&|p| flags_of!("cmp {b:l}, byte ptr [{p}]", p, b)),
                            both(&|p| flags_of!("test byte ptr [{p}], {b:l}", p, b) & !AF),
                        ],
                        2 => [
                            both(&|p| flags_of!("cmp word ptr [{p}], {b:x}", p, b)),
                            both(&|p| flags_of!("cmp {b:x}, word ptr [{p}]", p, b)),
                            both(&|p| flags_of!("test word ptr [{p}], {b:x}", p, b) & !AF),
                        ],
                        4 => [
                            both(&|p| flags_of!("cmp dword ptr [{p}], {b:e}", p, b)),
                            both(&|p| flags_of!("cmp {b:e}, dword ptr [{p}]", p, b)),
                            both(&|p| flags_of!("test dword ptr [{p}], {b:e}", p, b) & !AF),
                        ],
                        _ => [
                            both(&|p| flags_of!("cmp qword ptr [{p}], {b}", p, b)),
                            both(&|p| flags_of!("cmp {b}, qword ptr [{p}]", p, b)),
                            both(&|p| flags_of!("test qword ptr [{p}], {b}", p, b) & !AF),
                        ],
                    };
                    for (i, (cpu, emulated)) in pairs.into_iter().enumerate() {
                        assert_eq!(emulated, cpu, "form {i} width {width} a {a:#x} b {b:#x}");
                        checked += 1;
                    }
                }
                // Immediate forms (imm8 sign-extended, imm32 sign-extended, 8/16-bit imm).
                let imm = [
                    (
                        flags_of!("cmp byte ptr [{p}], 0x80", mem),
                        flags_of!("cmp byte ptr [{p}], 0x80", trap),
                    ),
                    (
                        flags_of!("cmp word ptr [{p}], 0x8000", mem),
                        flags_of!("cmp word ptr [{p}], 0x8000", trap),
                    ),
                    (
                        flags_of!("cmp word ptr [{p}], -2", mem),
                        flags_of!("cmp word ptr [{p}], -2", trap),
                    ),
                    (
                        flags_of!("cmp dword ptr [{p}], 0x7f", mem),
                        flags_of!("cmp dword ptr [{p}], 0x7f", trap),
                    ),
                    (
                        flags_of!("cmp dword ptr [{p}], 0x74726976", mem),
                        flags_of!("cmp dword ptr [{p}], 0x74726976", trap),
                    ),
                    (
                        flags_of!("cmp qword ptr [{p}], -1", mem),
                        flags_of!("cmp qword ptr [{p}], -1", trap),
                    ),
                    (
                        flags_of!("cmp qword ptr [{p}], -0x80000000", mem),
                        flags_of!("cmp qword ptr [{p}], -0x80000000", trap),
                    ),
                    (
                        flags_of!("test byte ptr [{p}], 0x81", mem) & !AF,
                        flags_of!("test byte ptr [{p}], 0x81", trap) & !AF,
                    ),
                    (
                        flags_of!("test dword ptr [{p}], 0x80000000", mem) & !AF,
                        flags_of!("test dword ptr [{p}], 0x80000000", trap) & !AF,
                    ),
                    (
                        flags_of!("test qword ptr [{p}], -0x100", mem) & !AF,
                        flags_of!("test qword ptr [{p}], -0x100", trap) & !AF,
                    ),
                ];
                for (i, (cpu, emulated)) in imm.into_iter().enumerate() {
                    assert_eq!(emulated, cpu, "immediate form {i}, memory {a:#x}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 2000);
        assert!(w.counts().reads >= checked);
        // Flag-setting loads never write the target.
        assert_eq!(w.counts().writes, 0);
        no_handler_allocations();
    }

    /// Several windows on several threads at once, and one window shared by two threads: each
    /// access reaches its own window, and the shared one serialises them.
    #[test]
    fn windows_on_many_threads() {
        let shared = TrapWindow::new(LEN, Bytes::new());
        std::thread::scope(|s| {
            for k in 0..4u8 {
                let shared = &shared;
                s.spawn(move || {
                    let own = TrapWindow::new(64, Bytes::new());
                    for i in 0..2000u64 {
                        let v = i ^ (u64::from(k) << 40);
                        // SAFETY: inside the windows.
                        unsafe {
                            store(own.base().as_ptr().wrapping_add(8), 8, v);
                            assert_eq!(load(own.base().as_ptr().wrapping_add(8), 8), v);
                            // Each thread owns 8 bytes of the shared window.
                            let sp = shared.base().as_ptr().wrapping_add(8 * usize::from(k));
                            store(sp, 8, v);
                            assert_eq!(load(sp, 8), v);
                        }
                        if i % 500 == 0 {
                            // Ordinary-code access to the target while others trap into it.
                            shared.with(|t| {
                                assert_eq!(t.mem[8 * usize::from(k)..][..8], v.to_le_bytes())
                            });
                        }
                    }
                    assert_eq!(own.counts().reads, 2000);
                });
            }
        });
        assert_eq!(shared.counts().reads, 8000);
        assert_eq!(shared.counts().writes, 8000);
        no_handler_allocations();
    }

    /// `TrapHal::mmio_phys_to_virt` finds the window claiming a guest-physical range (how the
    /// PCI transport will map BARs), and only for ranges entirely inside it.
    #[test]
    fn hal_maps_guest_physical_windows() {
        use virtq_testkit::guest::virtio_drivers::Hal;
        let w = TrapWindow::at_gpa(0xFE00_0000, 0x1000, Bytes::new());
        assert_eq!(w.gpa(), Some(0xFE00_0000));
        // SAFETY: the window exists; the result is only compared and accessed through the trap.
        let v = unsafe { TrapHal::mmio_phys_to_virt(0xFE00_0040, 0x20) };
        assert_eq!(v.as_ptr(), w.base().as_ptr().wrapping_add(0x40));
        // SAFETY: inside the window.
        unsafe { store(v.as_ptr(), 4, 0x1234) };
        assert_eq!(w.with(|t| t.last), Some((0x40, 4, Some(0x1234))));
        let outside = std::panic::catch_unwind(|| {
            // SAFETY: panics before returning anything.
            unsafe { TrapHal::mmio_phys_to_virt(0xFE00_0FF0, 0x20) }
        });
        assert!(
            outside.is_err(),
            "a range running past the window is not mapped"
        );
        no_handler_allocations();
    }

    /// How a child process ended: its signal and what it wrote to stderr.
    fn in_child(f: impl FnOnce()) -> (i32, String) {
        let mut fds = [0; 2];
        // SAFETY: plain POSIX calls; the child only runs `f` (trapped accesses that end in
        // abort or a fault) and _exit.
        unsafe {
            assert_eq!(libc_pipe(&mut fds), 0);
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                libc::dup2(fds[1], 2);
                f();
                libc::_exit(0);
            }
            libc::close(fds[1]);
            let mut status = 0;
            assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
            let mut out = vec![0u8; 4096];
            let n = libc::read(fds[0], out.as_mut_ptr().cast(), out.len());
            libc::close(fds[0]);
            out.truncate(n.max(0) as usize);
            let sig = if libc::WIFSIGNALED(status) {
                libc::WTERMSIG(status)
            } else {
                0
            };
            (sig, String::from_utf8_lossy(&out).into_owned())
        }
    }

    use virtq_testkit::trap::libc;

    unsafe fn libc_pipe(fds: &mut [i32; 2]) -> i32 {
        // SAFETY: `fds` has room for two descriptors.
        unsafe { libc::pipe(fds.as_mut_ptr()) }
    }

    /// The failures are loud: an instruction the decoder refuses, an access past the window's
    /// length, a guest access while the same thread holds the target, and a fault outside
    /// every window (which keeps the default action).
    #[test]
    fn failures_are_loud() {
        let w = TrapWindow::new(0x100, Bytes::new());
        let p = w.base().as_ptr();
        let (sig, err) = in_child(|| {
            // SAFETY: the child dies on this instruction (the base register is fixed so the
            // message's bytes are known).
            unsafe { asm!("add dword ptr [rax], 1", in("rax") p, options(nostack)) };
        });
        assert_eq!(sig, libc::SIGABRT, "{err}");
        assert!(
            err.contains("unsupported instruction") && err.contains("bytes 83 00 01"),
            "{err}"
        );
        let (sig, err) = in_child(|| {
            // SAFETY: as above (an atomic exchange: neither a load nor a store alone).
            unsafe { asm!("xchg dword ptr [{p}], {v:e}", p = in(reg) p, v = in(reg) 1u64) };
        });
        assert_eq!(sig, libc::SIGABRT, "{err}");
        assert!(err.contains("opcode 0x87"), "{err}");

        let (sig, err) = in_child(|| {
            // SAFETY: as above: past the 0x100-byte window, in its page.
            unsafe { store(p.wrapping_add(0x100), 4, 1) };
        });
        assert_eq!(sig, libc::SIGABRT, "{err}");
        assert!(err.contains("runs past"), "{err}");

        let (sig, err) = in_child(|| {
            // SAFETY: as above.
            unsafe { store(p.wrapping_add(0xFE), 4, 1) };
        });
        assert_eq!(sig, libc::SIGABRT, "straddling the end: {err}");

        let (sig, err) = in_child(|| {
            // SAFETY: as above.
            w.with(|_| unsafe { store(p, 4, 1) });
        });
        assert_eq!(sig, libc::SIGABRT, "{err}");
        assert!(err.contains("holds"), "{err}");

        let (sig, _) = in_child(|| {
            // A page that was a window and is gone: an ordinary fault.
            let gone = TrapWindow::new(8, Bytes::new());
            let q = gone.base().as_ptr();
            drop(gone);
            // SAFETY: not safe at all: the child is meant to die here.
            unsafe { store(q, 4, 1) };
        });
        assert_eq!(sig, libc::SIGSEGV);
        no_handler_allocations();
    }
}
