//! The generator: the list of instruction forms and, per form, random cases from a fixed seed.
//!
//! Most forms are generic: an iced `Code` whose name (`Add_rm32_imm8`, `Shld_rm16_r16_CL`,
//! `Loop_rel8_32_ECX`...) gives the operands; an `rm` operand yields two forms, register and
//! memory. Memory operands get a random base/index/scale/displacement whose sum lands in the
//! area (sometimes across its page boundary, sometimes into a guard page), using only registers
//! the instruction does not otherwise read or write (iced's `InstructionInfo`). Per-mnemonic
//! rules shape the inputs where random ones would say little (DIV without #DE, shift counts,
//! CMPXCHG equal/unequal, stack pointers in the area...). String instructions and x87 use
//! templates.

#[path = "fxsr.rs"]
mod fxsr;

use super::common::*;
use iced_x86::{
    Code, Decoder, DecoderOptions, Encoder, Instruction, InstructionInfoFactory, MemoryOperand,
    Register, RepPrefixKind, RflagsBits,
};

/// EFLAGS bits compared: CF PF AF ZF SF TF IF DF OF IOPL NT AC ID (not RF/VM/VIF/VIP).
pub const COMPARE_FLAGS: u32 = 0x0024_7FD5;

/// What to ignore when comparing a case.
#[derive(Clone, Copy)]
pub struct Mask {
    /// EFLAGS bits compared.
    pub flags: u32,
    /// Registers (bit i = register i) not compared: an architecturally undefined result.
    pub regs: u8,
    /// Mismatches of this case are reported but do not fail the test (a documented difference).
    pub informational: bool,
    /// A REPE/REPNE CMPS/SCAS. When it is suspended after at least one iteration (a fault or
    /// a single-step trap with EIP still at it and ECX changed), only the Intel SDM says what
    /// the arithmetic flags hold (those before the instruction): on other hosts the host's are
    /// not compared, Vireo's are checked against that rule (`compare`, HOST_DIFF.md "Intel vs
    /// AMD hosts").
    pub rep_cmp: Option<RepCmp>,
    /// BOUND with the lower bound readable and above the index and the upper bound reaching the
    /// unmapped page: #BR and #PF are both faults of the executing instruction, whose order
    /// neither manual fixes; the host may raise #BR where Vireo (reading both bounds first)
    /// raises #PF.
    pub bound_br_first: bool,
}

#[derive(Clone, Copy)]
pub struct RepCmp {
    /// Address of the string instruction.
    pub eip: u32,
    /// ECX when it starts.
    pub ecx: u32,
    /// EFLAGS when it starts.
    pub eflags: u32,
}

pub enum Kind {
    /// `lock`: with a LOCK prefix (on a register destination: #UD). `addr16`: 16-bit
    /// addressing (67h), used for LEA only (a flat 16-bit address cannot reach the area).
    Generic {
        code: Code,
        mem: bool,
        lock: bool,
        addr16: bool,
    },
    Str {
        code: Code,
        rep: RepPrefixKind,
    },
    /// `full_sw`: compare the whole FPU status word; otherwise its exception flags, ES and C1
    /// are masked out (`and eax, 0xFFFFFD40` after FNSTSW) so only results and C0/C2/C3 count.
    X87 {
        op: X87Op,
        double_pc: bool,
        full_sw: bool,
    },
    /// A random sequence of `len` register-only instructions from `pool` (lazy-flag interplay:
    /// INC/DEC after ADD, ADC after a shift, SETcc/CMOVcc reading flags a few instructions old).
    /// The inner form's instruction with EFLAGS.TF set by a `push imm32; popfd` just before it:
    /// a single-step #DB after it (after one iteration for REP string instructions).
    Tf(Box<Kind>),
    Seq {
        len: u32,
        pool: std::sync::Arc<Vec<Code>>,
    },
    /// FXSAVE/FXRSTOR templates (`fxsr.rs`).
    Fxsr(fxsr::FxOp),
}

pub struct Form {
    pub name: String,
    pub kind: Kind,
}

#[derive(Clone, Copy, Debug)]
pub enum X87Op {
    Fadd,
    Fsub,
    Fmul,
    Fdiv,
    Fsqrt,
    Fcompp,
    Fistp32,
    Fstp32,
    /// FDIV with the quotient stored as an 80-bit value: shows the internal precision.
    Fdiv80,
    Fistp64,
    Fistp16,
    Fild32,
    Fld32,
    Frndint,
    Fprem,
    Fchs,
    Fxam,
    Fucompp,
}

const MNEMONICS: &[&str] = &[
    "add",
    "adc",
    "sub",
    "sbb",
    "and",
    "or",
    "xor",
    "cmp",
    "test",
    "inc",
    "dec",
    "neg",
    "not",
    "mul",
    "imul",
    "div",
    "idiv",
    "rol",
    "ror",
    "rcl",
    "rcr",
    "shl",
    "sal",
    "shr",
    "sar",
    "shld",
    "shrd",
    "bt",
    "bts",
    "btr",
    "btc",
    "bsf",
    "bsr",
    "bswap",
    "xadd",
    "cmpxchg",
    "cmpxchg8b",
    "lea",
    "movzx",
    "movsx",
    "xchg",
    "cbw",
    "cwde",
    "cdq",
    "cwd",
    "daa",
    "das",
    "aaa",
    "aas",
    "aam",
    "aad",
    "push",
    "pushw",
    "pushd",
    "pop",
    "pushad",
    "pushaw",
    "popad",
    "popaw",
    "pushfd",
    "pushfw",
    "popfd",
    "popfw",
    "enterd",
    "enterw",
    "leaved",
    "leavew",
    "lahf",
    "sahf",
    "clc",
    "stc",
    "cmc",
    "cld",
    "std",
    "mov",
    "loop",
    "loope",
    "loopne",
    "jecxz",
    "jcxz",
    "call",
    "retnd",
    "bound",
    "salc",
    "nopd",
    "nopw",
    "jmp",
    "int3",
    "into",
    "int1",
    "ud2",
    "cli",
    "sti",
    "hlt",
    "int",
    "in",
    "out",
];

/// Mnemonics that take a LOCK prefix with a memory destination.
const LOCKABLE: &[&str] = &[
    "add",
    "adc",
    "sub",
    "sbb",
    "and",
    "or",
    "xor",
    "inc",
    "dec",
    "neg",
    "not",
    "xchg",
    "xadd",
    "cmpxchg",
    "cmpxchg8b",
    "bts",
    "btr",
    "btc",
];

fn is_cc_mnemonic(m: &str) -> bool {
    const CC: &[&str] = &[
        "o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g",
    ];
    for p in ["cmov", "set", "j"] {
        if let Some(c) = m.strip_prefix(p)
            && CC.contains(&c)
        {
            return true;
        }
    }
    false
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Tok {
    Rm(u32),
    R(u32),
    M,
    Imm(u32),
    One,
    Fixed(Register),
    Rel,
    Moffs(u32),
}

fn parse(code: Code) -> Option<(String, Vec<Tok>)> {
    let name = format!("{code:?}");
    let mut it = name.split('_');
    let m = it.next()?.to_lowercase();
    if !MNEMONICS.contains(&m.as_str()) && !is_cc_mnemonic(&m) {
        return None;
    }
    let parts: Vec<&str> = it.collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < parts.len() {
        let p = parts[i];
        let num = |s: &str| s.parse::<u32>().ok();
        let t = if let Some(n) = p.strip_prefix("rm").and_then(num) {
            Tok::Rm(n)
        } else if let Some(n) = p.strip_prefix("moffs").and_then(num) {
            Tok::Moffs(n)
        } else if let Some(n) = p.strip_prefix('r').and_then(num) {
            Tok::R(n)
        } else if let Some(n) = p.strip_prefix("imm").and_then(num) {
            Tok::Imm(n)
        } else if p == "m"
            || p.starts_with('m') && p[1..].chars().next().is_some_and(|c| c.is_ascii_digit())
        {
            Tok::M
        } else if p == "1" {
            Tok::One
        } else if p.starts_with("rel") {
            // rel8_32 / rel32_32: the next part is the operand size; 16-bit branches truncate
            // EIP and are left out.
            i += 1;
            if parts.get(i) != Some(&"32") {
                return None;
            }
            Tok::Rel
        } else if let Some(r) = fixed_reg(p) {
            if toks.last() == Some(&Tok::Rel) {
                // Loop_rel8_32_ECX: the counter, not an operand. Only the ECX flavours.
                if r != Register::ECX {
                    return None;
                }
                i += 1;
                continue;
            }
            Tok::Fixed(r)
        } else if i + 1 == parts.len() && p.chars().all(|c| c.is_ascii_hexdigit() || c == 'r') {
            // An encoding note (`Add_rm8_imm8_82`, `Test_rm8_imm8_F6r1`): alias opcodes, kept.
            i += 1;
            continue;
        } else {
            return None;
        };
        toks.push(t);
        i += 1;
    }
    if toks
        .iter()
        .any(|t| matches!(t, Tok::Rm(64) | Tok::R(64) | Tok::Imm(64)))
    {
        return None;
    }
    Some((m, toks))
}

fn fixed_reg(p: &str) -> Option<Register> {
    Some(match p {
        "AL" => Register::AL,
        "AX" => Register::AX,
        "EAX" => Register::EAX,
        "CL" => Register::CL,
        "ECX" => Register::ECX,
        "CX" => Register::CX,
        "DX" => Register::DX,
        _ => return None,
    })
}

/// Forms left out on purpose, with the reason in HOST_DIFF.md.
fn excluded(code: Code, m: &str) -> bool {
    let n = format!("{code:?}");
    // BSWAP r16: undefined result. MOV to/from segment, control, debug registers: not
    // user-level integer ALU forms (and mov from sreg differs by selector values).
    n == "Bswap_r16"
        || n.contains("Sreg")
        || n.contains("_cr")
        || n.contains("_dr")
        || n.contains("_tr")
        || m == "push" && (n.contains("ES") || n.contains("CS") || n.contains("SS") || n.contains("DS") || n.contains("FS") || n.contains("GS"))
        || m == "pop" && (n.contains("ES") || n.contains("SS") || n.contains("DS") || n.contains("FS") || n.contains("GS"))
        // 16-bit-operand near branches and returns truncate EIP to 16 bits.
        || n.starts_with("Retnw")
        || n.starts_with("Call_rel16")
        || n.starts_with("Call_rm16")
        || n.starts_with("Jmp_rel16")
        || n.starts_with("Jmp_rm16")
        // Far transfers (m16:16, m16:32, ptr16:32): system behaviour, see HOST_DIFF.md.
        || n.contains("1632")
        || n.contains("1616")
        || n.contains("1664")
        // Intel-only or 64-bit only encodings.
        || n.contains("rm64")
}

pub fn forms() -> Vec<Form> {
    let mut v = Vec::new();
    let enc_ok = |code: Code| {
        // A form is kept if iced can encode it in 32-bit code (with some operands).
        trial(code).is_some()
    };
    for code in Code::values() {
        let Some((m, toks)) = parse(code) else {
            continue;
        };
        if excluded(code, &m) || !enc_ok(code) {
            continue;
        }
        let has_rm = toks.iter().any(|t| matches!(t, Tok::Rm(_)));
        let has_m = toks.iter().any(|t| matches!(t, Tok::M | Tok::Moffs(_)));
        let g = |mem, lock, addr16| Kind::Generic {
            code,
            mem,
            lock,
            addr16,
        };
        if has_rm {
            v.push(Form {
                name: format!("{code:?}/reg"),
                kind: g(false, false, false),
            });
            v.push(Form {
                name: format!("{code:?}/mem"),
                kind: g(true, false, false),
            });
        } else {
            v.push(Form {
                name: format!("{code:?}"),
                kind: g(has_m, false, false),
            });
        }
        let first_rm = matches!(toks.first(), Some(Tok::Rm(_)) | Some(Tok::M));
        if LOCKABLE.contains(&m.as_str())
            && first_rm
            && !matches!(toks.get(1), Some(Tok::One) | Some(Tok::Fixed(Register::CL)))
        {
            v.push(Form {
                name: format!("{code:?}/mem/lock"),
                kind: g(true, true, false),
            });
            if has_rm && matches!(m.as_str(), "add" | "xchg" | "bts" | "not") {
                v.push(Form {
                    name: format!("{code:?}/reg/lock"),
                    kind: g(false, true, false),
                });
            }
        }
        if m == "lea" {
            v.push(Form {
                name: format!("{code:?}/addr16"),
                kind: g(true, false, true),
            });
        }
    }
    // Sequences from the register-only forms of flag-producing and flag-consuming instructions
    // (XADD is left out: its own forms show its same-register bug).
    const SEQ_POOL: &[&str] = &[
        "add", "adc", "sub", "sbb", "cmp", "and", "or", "xor", "test", "inc", "dec", "neg", "not",
        "rol", "ror", "rcl", "rcr", "shl", "shr", "sar", "bt", "bts", "btr", "btc", "cmc", "clc",
        "stc", "lahf", "sahf", "xchg", "movzx", "movsx", "lea", "bswap", "imul", "mul", "cbw",
        "cwde", "cdq", "cwd", "daa", "das", "aaa", "aas", "salc", "bsf", "bsr", "shld", "shrd",
        "cmpxchg", "mov",
    ];
    let mut pool = Vec::new();
    for code in Code::values() {
        let Some((m, toks)) = parse(code) else {
            continue;
        };
        let reg_only = !toks
            .iter()
            .any(|t| matches!(t, Tok::M | Tok::Moffs(_) | Tok::Rel));
        let wanted = SEQ_POOL.contains(&m.as_str()) || (is_cc_mnemonic(&m) && !m.starts_with('j'));
        if wanted && reg_only && !excluded(code, &m) && build(code, false, &mut Rng(1)).is_some() {
            pool.push(code);
        }
    }
    // Single-step: the 32-bit register forms of the sequence pool, and every string form.
    for code in &pool {
        let n = format!("{code:?}");
        if n.contains("r32") || n.contains("EAX") || !n.contains('_') {
            v.push(Form {
                name: format!("{n}/reg/tf"),
                kind: Kind::Tf(Box::new(Kind::Generic {
                    code: *code,
                    mem: false,
                    lock: false,
                    addr16: false,
                })),
            });
        }
    }
    let pool = std::sync::Arc::new(pool);
    for len in [2, 3, 5, 8] {
        v.push(Form {
            name: format!("seq{len}"),
            kind: Kind::Seq {
                len,
                pool: pool.clone(),
            },
        });
    }
    use Code::*;
    for code in [
        Movsb_m8_m8,
        Movsw_m16_m16,
        Movsd_m32_m32,
        Stosb_m8_AL,
        Stosw_m16_AX,
        Stosd_m32_EAX,
        Lodsb_AL_m8,
        Lodsw_AX_m16,
        Lodsd_EAX_m32,
    ] {
        for rep in [RepPrefixKind::None, RepPrefixKind::Repe] {
            v.push(Form {
                name: format!("{code:?}{}", rep_name(rep)),
                kind: Kind::Str { code, rep },
            });
        }
    }
    for code in [
        Cmpsb_m8_m8,
        Cmpsw_m16_m16,
        Cmpsd_m32_m32,
        Scasb_AL_m8,
        Scasw_AX_m16,
        Scasd_EAX_m32,
    ] {
        for rep in [
            RepPrefixKind::None,
            RepPrefixKind::Repe,
            RepPrefixKind::Repne,
        ] {
            v.push(Form {
                name: format!("{code:?}{}", rep_name(rep)),
                kind: Kind::Str { code, rep },
            });
        }
    }
    let strings: Vec<Form> = v
        .iter()
        .filter_map(|f| match &f.kind {
            Kind::Str { code, rep } => Some(Form {
                name: format!("{}/tf", f.name),
                kind: Kind::Tf(Box::new(Kind::Str {
                    code: *code,
                    rep: *rep,
                })),
            }),
            _ => None,
        })
        .collect();
    v.extend(strings);
    for op in [
        X87Op::Fadd,
        X87Op::Fsub,
        X87Op::Fmul,
        X87Op::Fdiv,
        X87Op::Fsqrt,
        X87Op::Fcompp,
        X87Op::Fistp32,
        X87Op::Fstp32,
        X87Op::Fdiv80,
        X87Op::Fistp64,
        X87Op::Fistp16,
        X87Op::Fild32,
        X87Op::Fld32,
        X87Op::Frndint,
        X87Op::Fprem,
        X87Op::Fchs,
        X87Op::Fxam,
        X87Op::Fucompp,
    ] {
        for double_pc in [true, false] {
            for full_sw in [false, true] {
                let pc = if double_pc { "pc53" } else { "pc64" };
                let sw = if full_sw { " fullsw" } else { "" };
                v.push(Form {
                    name: format!("x87 {op:?} {pc}{sw}"),
                    kind: Kind::X87 {
                        op,
                        double_pc,
                        full_sw,
                    },
                });
            }
        }
    }
    for op in fxsr::OPS {
        v.push(Form {
            name: format!("fxsr {op:?}"),
            kind: Kind::Fxsr(op),
        });
    }
    v
}

fn rep_name(r: RepPrefixKind) -> &'static str {
    match r {
        RepPrefixKind::None => "",
        RepPrefixKind::Repe => "/rep",
        RepPrefixKind::Repne => "/repne",
        _ => "?",
    }
}

fn trial(code: Code) -> Option<()> {
    let mut rng = Rng(1);
    for mem in [false, true] {
        if build(code, mem, &mut rng).is_some() {
            return Some(());
        }
    }
    None
}

fn reg_of(size: u32, n: u32) -> Register {
    let base = match size {
        8 => Register::AL,
        16 => Register::AX,
        _ => Register::EAX,
    };
    // AL..BH are numbered AL CL DL BL AH CH DH BH, like the encoding.
    unsafe_reg(base as u32 + n)
}

fn unsafe_reg(v: u32) -> Register {
    Register::values().nth(v as usize).unwrap()
}

/// Full 32-bit register number (0-7) of a GPR.
fn full(r: Register) -> Option<usize> {
    if r == Register::None || !r.is_gpr() {
        return None;
    }
    let n = if r.is_gpr8() {
        let k = r.number();
        if k >= 4 { k - 4 } else { k }
    } else {
        r.number()
    };
    Some(n)
}

enum Opnd {
    R(Register),
    M(MemoryOperand),
    I(i32),
}

fn make(code: Code, ops: &[Opnd]) -> Option<Instruction> {
    use Opnd::*;
    let r = match ops {
        [] => Ok(Instruction::with(code)),
        [R(a)] => Instruction::with1(code, *a),
        [M(a)] => Instruction::with1(code, *a),
        [I(a)] => Instruction::with1(code, *a),
        [R(a), R(b)] => Instruction::with2(code, *a, *b),
        [R(a), M(b)] => Instruction::with2(code, *a, *b),
        [M(a), R(b)] => Instruction::with2(code, *a, *b),
        [R(a), I(b)] => Instruction::with2(code, *a, *b),
        [M(a), I(b)] => Instruction::with2(code, *a, *b),
        [I(a), I(b)] => Instruction::with2(code, *a, *b),
        [R(a), R(b), R(c)] => Instruction::with3(code, *a, *b, *c),
        [R(a), R(b), I(c)] => Instruction::with3(code, *a, *b, *c),
        [R(a), M(b), I(c)] => Instruction::with3(code, *a, *b, *c),
        [M(a), R(b), R(c)] => Instruction::with3(code, *a, *b, *c),
        [M(a), R(b), I(c)] => Instruction::with3(code, *a, *b, *c),
        _ => return None,
    };
    r.ok()
}

fn encode(ins: &Instruction, ip: u32) -> Option<Vec<u8>> {
    let mut e = Encoder::new(32);
    e.encode(ins, ip as u64).ok()?;
    Some(e.take_buffer())
}

/// A template instruction for a generic form: the operand shapes filled with fixed choices;
/// memory operands as a bare displacement. Returns the instruction and its bytes.
fn build(code: Code, mem: bool, rng: &mut Rng) -> Option<(Instruction, Vec<u8>)> {
    let (_, toks) = parse(code)?;
    let mut ops = Vec::new();
    for t in &toks {
        ops.push(match *t {
            Tok::Rm(_) if mem => Opnd::M(MemoryOperand::with_displ(AREA as u64, 4)),
            Tok::Rm(n) | Tok::R(n) => Opnd::R(reg_of(n, rng.below(8))),
            Tok::M => Opnd::M(MemoryOperand::with_displ(AREA as u64, 4)),
            Tok::Moffs(_) => Opnd::M(MemoryOperand::with_displ(AREA as u64, 4)),
            Tok::Imm(_) | Tok::One => Opnd::I(1),
            Tok::Fixed(r) => Opnd::R(r),
            Tok::Rel => {
                let ins = Instruction::with_branch(code, CODE as u64 + 0x10).ok()?;
                let b = encode(&ins, CODE)?;
                return Some((ins, b));
            }
        });
    }
    let _ = &ops;
    let ins = make(code, &ops)?;
    let b = encode(&ins, CODE)?;
    Some((ins, b))
}

fn flags_from_iced(f: u32) -> u32 {
    let mut e = 0;
    for (i, x) in [
        (RflagsBits::OF, 0x800),
        (RflagsBits::SF, 0x80),
        (RflagsBits::ZF, 0x40),
        (RflagsBits::AF, 0x10),
        (RflagsBits::CF, 0x1),
        (RflagsBits::PF, 0x4),
        (RflagsBits::DF, 0x400),
        (RflagsBits::IF, 0x200),
        (RflagsBits::AC, 0x40000),
    ] {
        if f & i != 0 {
            e |= x;
        }
    }
    e
}

fn random_eflags(rng: &mut Rng) -> u32 {
    // The six arithmetic flags and DF at random; IF is always set in user mode.
    (rng.u32() & 0x8D5) | (if rng.chance(20) { 0x400 } else { 0 }) | 0x202
}

fn shift_count(rng: &mut Rng) -> u32 {
    const C: [u32; 14] = [0, 1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 255];
    if rng.chance(60) {
        C[rng.below(14) as usize]
    } else {
        rng.below(256)
    }
}

fn set_reg_val(regs: &mut [u32; 8], r: Register, v: u32) {
    let n = full(r).unwrap();
    let (mask, shift) = match r.size() {
        1 if r.number() >= 4 => (0xFFu32, 8),
        1 => (0xFF, 0),
        2 => (0xFFFF, 0),
        _ => (0xFFFF_FFFF, 0),
    };
    regs[n] = (regs[n] & !(mask << shift)) | ((v & mask) << shift);
}

fn get_reg_val(regs: &[u32; 8], r: Register) -> u32 {
    let n = full(r).unwrap();
    match r.size() {
        1 if r.number() >= 4 => (regs[n] >> 8) & 0xFF,
        1 => regs[n] & 0xFF,
        2 => regs[n] & 0xFFFF,
        _ => regs[n],
    }
}

fn new_case(rng: &mut Rng) -> Case {
    let mut regs = [0u32; 8];
    for r in regs.iter_mut() {
        *r = rng.interesting();
    }
    Case {
        regs,
        eflags: random_eflags(rng),
        code_len: 0,
        seed: rng.next(),
        code: [0; MAX_CODE],
        patch_off: 0,
        patch_len: 0,
        patch: [0; MAX_PATCH],
    }
}

fn set_code(c: &mut Case, bytes: &[u8]) {
    c.code[..bytes.len()].copy_from_slice(bytes);
    c.code_len = bytes.len() as u32;
}

fn patch(c: &mut Case, addr: u32, bytes: &[u8]) {
    let off = addr.wrapping_sub(AREA) as usize;
    if off + bytes.len() <= AREA_SIZE && bytes.len() <= MAX_PATCH {
        c.patch_off = off as u16;
        c.patch_len = bytes.len() as u16;
        c.patch[..bytes.len()].copy_from_slice(bytes);
    }
}

fn mem_read(c: &Case, addr: u32, n: usize) -> u64 {
    let mut v = 0u64;
    for i in 0..n {
        let off = addr.wrapping_add(i as u32).wrapping_sub(AREA) as usize;
        let b = if off < AREA_SIZE {
            initial_byte(c, off)
        } else {
            0
        };
        v |= (b as u64) << (8 * i);
    }
    v
}

/// An address for a `size`-byte access: mostly inside the area, sometimes across its page
/// boundary, sometimes partly outside it (a #PF on both sides).
fn pick_addr(rng: &mut Rng, size: u32) -> u32 {
    let size = size.max(1);
    match rng.below(100) {
        0..=2 => AREA + AREA_SIZE as u32 - size / 2 - 1 + (size == 1) as u32,
        3..=4 => AREA - size / 2 - (size == 1) as u32,
        5..=14 => AREA + 0x1000 - rng.below(size + 1),
        _ => AREA + rng.below(AREA_SIZE as u32 - size + 1),
    }
}

fn stack_ptr(rng: &mut Rng) -> u32 {
    let p = AREA + 0x200 + rng.below(AREA_SIZE as u32 - 0x400);
    if rng.chance(85) { p & !3 } else { p }
}

/// Generate one case of a form; `None` when this attempt picked an impossible combination.
pub fn gen_case(form: &Form, rng: &mut Rng) -> (Case, Mask) {
    for _ in 0..10_000 {
        let r = match &form.kind {
            Kind::Generic {
                code,
                mem,
                lock,
                addr16,
            } => gen_generic(*code, *mem, *lock, *addr16, rng),
            Kind::Str { code, rep } => gen_string(*code, *rep, rng),
            Kind::Tf(inner) => gen_tf(inner, rng),
            Kind::X87 {
                op,
                double_pc,
                full_sw,
            } => gen_x87(*op, *double_pc, *full_sw, rng),
            Kind::Seq { len, pool } => gen_seq(*len, pool, rng),
            Kind::Fxsr(op) => fxsr::gen_case(*op, rng),
        };
        if let Some(x) = r {
            return x;
        }
    }
    panic!("form {} yields no case", form.name)
}

fn gen_generic(
    code: Code,
    mem: bool,
    lock: bool,
    addr16: bool,
    rng: &mut Rng,
) -> Option<(Case, Mask)> {
    let (m, toks) = parse(code)?;
    let mut c = new_case(rng);
    let mut ops = Vec::new();
    let mut used = [false; 8];
    let mut regs_ops: Vec<Register> = Vec::new();
    // Register operands first.
    for t in &toks {
        match *t {
            Tok::Rm(n) if !mem => {
                let r = reg_of(n, rng.below(8));
                regs_ops.push(r);
                ops.push(Some(Opnd::R(r)));
            }
            Tok::R(n) => {
                let r = reg_of(n, rng.below(8));
                regs_ops.push(r);
                ops.push(Some(Opnd::R(r)));
            }
            Tok::Fixed(r) => {
                regs_ops.push(r);
                ops.push(Some(Opnd::R(r)));
            }
            _ => ops.push(None),
        }
    }
    for r in &regs_ops {
        used[full(*r).unwrap()] = true;
    }
    // Implicit registers, from iced's instruction info on a template.
    let (tmpl, _) = build(code, mem, rng)?;
    let mut f = InstructionInfoFactory::new();
    for u in f.info(&tmpl).used_registers() {
        if let Some(n) = full(u.register()) {
            used[n] = true;
        }
    }
    let stack = used[4]
        || matches!(
            m.as_str(),
            "enterd" | "enterw" | "leaved" | "leavew" | "call" | "retnd"
        );
    if stack {
        used[4] = true;
        c.regs[4] = stack_ptr(rng);
    }
    if m.starts_with("enter") || m.starts_with("leave") {
        used[5] = true;
        c.regs[5] = stack_ptr(rng);
    }
    // Immediates.
    let shift = matches!(
        m.as_str(),
        "rol" | "ror" | "rcl" | "rcr" | "shl" | "sal" | "shr" | "sar" | "shld" | "shrd"
    );
    for (i, t) in toks.iter().enumerate() {
        match *t {
            Tok::Imm(n) => {
                let v: i32 = if shift || (m.starts_with("bt") && n == 8) {
                    shift_count(rng) as i32
                } else if m == "aam" || m == "aad" {
                    [0, 10, 10, 10, 16, 1, 2, 7]
                        .get(rng.below(10) as usize)
                        .copied()
                        .unwrap_or(rng.below(256)) as i32
                } else if m.starts_with("enter") {
                    if i == 0 {
                        rng.below(0x80) as i32
                    } else {
                        [0, 1, 2, 3, 4][rng.below(5) as usize]
                    }
                } else if m == "int" {
                    let v = rng.below(256);
                    // 3/4 are the DPL-3 gates, 0x80 is Linux's system call, 0x40 Vireo's exit.
                    if matches!(v, 3 | 4 | 0x40 | 0x80) {
                        return None;
                    }
                    v as i8 as i32
                } else if m == "retnd" {
                    (rng.below(8) * 4) as i32
                } else {
                    // Values the encoder accepts for this immediate's kind: an i8 for 8-bit
                    // (sign-extended or not), i16 for 16-bit, anything for 32-bit.
                    match n {
                        8 => rng.interesting() as i8 as i32,
                        16 => rng.interesting() as i16 as i32,
                        _ => rng.interesting() as i32,
                    }
                };
                ops[i] = Some(Opnd::I(v));
            }
            Tok::One => ops[i] = Some(Opnd::I(1)),
            Tok::Rel => ops[i] = Some(Opnd::I(0)), // placeholder: branches are built below
            _ => {}
        }
    }
    // The memory operand.
    let mut mem_addr = None;
    let mem_tok = toks
        .iter()
        .position(|t| matches!(t, Tok::M | Tok::Moffs(_)) || (mem && matches!(t, Tok::Rm(_))));
    if let Some(i) = mem_tok {
        let size = tmpl.memory_size().size() as u32;
        let bt_reg = m.starts_with("bt") && matches!(toks.get(1), Some(Tok::R(_)));
        let target = if bt_reg {
            AREA + 0x1000 + rng.below(16).wrapping_sub(8)
        } else if m == "lea" {
            rng.interesting()
        } else {
            pick_addr(rng, size)
        };
        let free: Vec<usize> = (0..8).filter(|&n| !used[n]).collect();
        let pick = |rng: &mut Rng, avoid: Option<usize>, no_esp: bool| -> Option<usize> {
            let cands: Vec<usize> = free
                .iter()
                .copied()
                .filter(|&n| Some(n) != avoid && !(no_esp && n == 4))
                .collect();
            if cands.is_empty() {
                None
            } else {
                Some(cands[rng.below(cands.len() as u32) as usize])
            }
        };
        let moffs = matches!(toks[i], Tok::Moffs(_));
        let shape = if moffs { 0 } else { rng.below(10) };
        let (base, index) = match shape {
            0 => (None, None),
            1 => (None, pick(rng, None, true)),
            2..=5 => (pick(rng, None, false), None),
            _ => {
                let b = pick(rng, None, false);
                (b, pick(rng, b, true))
            }
        };
        let scale = if index.is_some() {
            [1, 2, 4, 8][rng.below(4) as usize]
        } else {
            1
        };
        let disp: u32 = match (rng.below(3), base.is_some() || index.is_some()) {
            (_, false) => target,
            (0, _) => 0,
            (1, _) => rng.u32() as i8 as i32 as u32,
            _ => rng.u32(),
        };
        let dsize = if moffs
            || (base.is_none() && index.is_none())
            || disp as i32 as i64 != disp as i8 as i64
        {
            4
        } else if disp == 0 {
            0
        } else {
            1
        };
        if let Some(x) = index {
            c.regs[x] = rng.interesting();
        }
        let idx_part = index.map(|x| c.regs[x].wrapping_mul(scale)).unwrap_or(0);
        let mut disp = disp;
        if let Some(b) = base {
            c.regs[b] = target.wrapping_sub(idx_part).wrapping_sub(disp);
        } else if index.is_some() {
            disp = target.wrapping_sub(idx_part);
        }
        let dsize = if base.is_none() && index.is_some() {
            4
        } else {
            dsize
        };
        let reg = |n: Option<usize>| n.map(|n| reg_of(32, n as u32)).unwrap_or(Register::None);
        let mo = if addr16 {
            let b = [Register::None, Register::BX, Register::BP][rng.below(3) as usize];
            let x = [Register::None, Register::SI, Register::DI][rng.below(3) as usize];
            let d = rng.u32() as u16;
            let ds = if b == Register::None && x == Register::None {
                2
            } else {
                [0, 1, 2][rng.below(3) as usize]
            };
            let d = match ds {
                0 => 0,
                1 => d as i8 as i64,
                _ => d as i16 as i64,
            };
            MemoryOperand::with_base_index_scale_displ_size(b, x, 1, d, ds)
        } else {
            MemoryOperand::with_base_index_scale_displ_size(
                reg(base),
                reg(index),
                scale,
                disp as i32 as i64,
                dsize,
            )
        };
        ops[i] = Some(Opnd::M(mo));
        mem_addr = Some((target, size));
        if bt_reg {
            // Bit offsets reaching about ±2 KiB around the middle of the area.
            let r = regs_ops[0];
            let span = 0x7F0 * 8;
            let off = rng.below(2 * span) as i32 - span as i32;
            set_reg_val(&mut c.regs, r, off as u32);
        }
    }
    let ops: Vec<Opnd> = ops.into_iter().collect::<Option<Vec<_>>>()?;
    // Per-mnemonic shaping of the inputs.
    let dst_val = |c: &Case| -> u64 {
        match (&ops[0], mem_addr) {
            (Opnd::R(r), _) => get_reg_val(&c.regs, *r) as u64,
            (Opnd::M(_), Some((a, s))) => mem_read(c, a, s as usize),
            _ => 0,
        }
    };
    let op_size = match ops.first() {
        Some(Opnd::R(r)) => r.size() as u32,
        _ => mem_addr.map(|(_, s)| s).unwrap_or(4),
    };
    match m.as_str() {
        "div" | "idiv" if rng.chance(75) => {
            let s = op_size * 8;
            let mask = if s == 32 {
                u32::MAX as u64
            } else {
                (1u64 << s) - 1
            };
            let mut d = (rng.interesting() as u64) & mask;
            if d == 0 {
                d = 1 + rng.below(100) as u64;
            }
            let q = rng.interesting() as u64 & mask;
            let (mut lo, mut hi);
            if m == "div" {
                let r = rng.next() % d;
                let dividend = (q as u128) * (d as u128) + r as u128;
                lo = dividend as u64 & mask;
                hi = (dividend >> s) as u64 & mask;
            } else {
                let sx = |v: u64| ((v << (64 - s)) as i64) >> (64 - s);
                let (ds, qs) = (sx(d) as i128, sx(q >> 1) as i128);
                let mut r = (rng.next() % (ds.unsigned_abs() as u64)) as i128;
                if qs * ds < 0 {
                    r = -r;
                }
                let dividend = qs * ds + r;
                lo = dividend as u64 & mask;
                hi = (dividend >> s) as u64 & mask;
            }
            if m == "idiv" && rng.chance(20) {
                // By -1: the quotient is the negated dividend, which does not fit (#DE) for
                // the most negative ones, -2^(2s-1) and -2^(s-1) among them.
                let top = 1u64 << (s - 1);
                d = mask;
                (lo, hi) = match rng.below(4) {
                    0 => (0, top),
                    1 => (top, mask),
                    2 => (rng.next() & mask, 0),
                    _ => (rng.next() & mask, mask),
                };
            }
            match (&ops[0], mem_addr) {
                (Opnd::R(r), _) => {
                    if full(*r) == Some(0) || full(*r) == Some(2) {
                        return None;
                    }
                    set_reg_val(&mut c.regs, *r, d as u32);
                }
                (_, Some((a, s))) => patch(&mut c, a, &d.to_le_bytes()[..s as usize]),
                _ => {}
            }
            if s == 8 {
                set_reg_val(&mut c.regs, Register::AX, (lo | hi << 8) as u32);
            } else if s == 16 {
                set_reg_val(&mut c.regs, Register::AX, lo as u32);
                set_reg_val(&mut c.regs, Register::DX, hi as u32);
            } else {
                c.regs[0] = lo as u32;
                c.regs[2] = hi as u32;
            }
        }
        "rol" | "ror" | "rcl" | "rcr" | "shl" | "sal" | "shr" | "sar" | "shld" | "shrd"
            if regs_ops.contains(&Register::CL) =>
        {
            set_reg_val(&mut c.regs, Register::CL, shift_count(rng));
        }
        "cmpxchg" if rng.chance(50) => {
            let v = dst_val(&c);
            let acc = match op_size {
                1 => Register::AL,
                2 => Register::AX,
                _ => Register::EAX,
            };
            set_reg_val(&mut c.regs, acc, v as u32);
        }
        "cmpxchg8b" if rng.chance(50) => {
            if let Some((a, _)) = mem_addr {
                let v = mem_read(&c, a, 8);
                c.regs[0] = v as u32;
                c.regs[2] = (v >> 32) as u32;
            }
        }
        "bound" if rng.chance(70) => {
            if let (Opnd::R(r), Some((a, s))) = (&ops[0], mem_addr) {
                let half = s / 2;
                let v = get_reg_val(&c.regs, *r);
                let lo = v.wrapping_sub(rng.below(4));
                let hi = v.wrapping_add(rng.below(4)).wrapping_sub(1);
                let mut b = lo.to_le_bytes()[..half as usize].to_vec();
                b.extend_from_slice(&hi.to_le_bytes()[..half as usize]);
                patch(&mut c, a, &b);
            }
        }
        "bsf" | "bsr" if rng.chance(10) => match (&ops[1], mem_addr) {
            (Opnd::R(r), _) => set_reg_val(&mut c.regs, *r, 0),
            (_, Some((a, s))) => patch(&mut c, a, &[0u8; 4][..s as usize]),
            _ => {}
        },
        "loop" | "loope" | "loopne" | "jecxz" | "jcxz" => {
            c.regs[1] = [0, 1, 2, 0xFFFF_FFFF, 0x10000][rng.below(5) as usize]
        }
        _ => {}
    }
    if m == "popfd" || m == "popfw" {
        // No TF (a trap after POPF is not what this form tests).
        let v = rng.u32() & !0x100;
        let sp = c.regs[4];
        patch(
            &mut c,
            sp,
            &v.to_le_bytes()[..if m == "popfd" { 4 } else { 2 }],
        );
    }
    // Build and encode.
    let ins = if toks.contains(&Tok::Rel) {
        // A taken branch skips `lea ebp,[ebp+1]`: the outcome shows in EBP.
        let len = encode(
            &Instruction::with_branch(code, CODE as u64 + 0x10).ok()?,
            CODE,
        )?
        .len() as u64;
        Instruction::with_branch(code, CODE as u64 + len + 3).ok()?
    } else {
        make(code, &ops)?
    };
    let mut ins = ins;
    if lock {
        ins.set_has_lock_prefix(true);
    }
    if mem_addr.is_some() && m != "lea" && rng.chance(10) {
        // A segment override: ES/SS/DS are the same flat data segment; CS is read-only code
        // (a write through it is #GP(0)).
        ins.set_segment_prefix(
            [Register::ES, Register::CS, Register::SS, Register::DS][rng.below(4) as usize],
        );
    }
    if mem_addr.is_some() && rng.chance(10) {
        // EFLAGS.AC with CR0.AM (Linux sets it): a misaligned access at CPL 3 is #AC(0).
        c.eflags |= 0x4_0000;
    }
    let mut bytes = encode(&ins, CODE)?;
    if toks.contains(&Tok::Rel) {
        bytes.extend_from_slice(&[0x8D, 0x6D, 0x01]);
    }
    if matches!(m.as_str(), "jmp" | "call") && !toks.contains(&Tok::Rel) {
        // Indirect near JMP/CALL r/m32: the target is the instruction after it.
        let next = CODE + bytes.len() as u32;
        match (&ops[0], mem_addr) {
            (Opnd::R(r), _) => {
                if full(*r) == Some(4) && m == "call" {
                    return None;
                }
                set_reg_val(&mut c.regs, *r, next);
            }
            (_, Some((a, _))) => patch(&mut c, a, &next.to_le_bytes()),
            _ => {}
        }
    }
    if m == "retnd" {
        // Return to the instruction after the RET.
        let sp = c.regs[4];
        patch(&mut c, sp, &(CODE + bytes.len() as u32).to_le_bytes());
    }
    if bytes.len() > MAX_CODE {
        return None;
    }
    set_code(&mut c, &bytes);
    let mut mask = mask_for(&c, &m, &ops, &regs_ops);
    if m == "bound"
        && let (Opnd::R(r), Some((a, s))) = (&ops[0], mem_addr)
    {
        let half = s / 2;
        let end = AREA + AREA_SIZE as u32;
        if a >= AREA && a + half <= end && a + s > end {
            let sext = |v: u64| ((v << (64 - 8 * half)) as i64) >> (64 - 8 * half);
            let lo = sext(mem_read(&c, a, half as usize));
            let idx = sext(get_reg_val(&c.regs, *r) as u64);
            mask.bound_br_first = idx < lo;
        }
    }
    if m == "int1" {
        // ICEBP: Linux reports the trap's EIP inconsistently (see HOST_DIFF.md).
        mask.informational = true;
    }
    Some((c, mask))
}

fn mask_for(c: &Case, m: &str, ops: &[Opnd], regs_ops: &[Register]) -> Mask {
    let mut dec = Decoder::with_ip(32, c.code(), CODE as u64, DecoderOptions::NONE);
    let ins = dec.decode();
    let mut undef = flags_from_iced(ins.rflags_undefined());
    let mut regs = 0u8;
    let mut info = false;
    let count = |c: &Case| -> Option<u32> {
        match ops.last() {
            Some(Opnd::I(v)) => Some(*v as u32 & 0xFF),
            Some(Opnd::R(Register::CL)) => Some(c.regs[1] & 0xFF),
            _ => None,
        }
    };
    match m {
        "rol" | "ror" | "rcl" | "rcr" | "shl" | "sal" | "shr" | "sar" => {
            if let Some(n) = count(c) {
                let n = n & 31;
                if n == 0 {
                    undef = 0;
                } else if n == 1 {
                    undef &= 0x10; // only AF stays undefined (SHL/SHR/SAR)
                } else {
                    // Both manuals define OF only when the masked count is 1. iced reduces
                    // RCL/RCR 8/16 counts mod 9/17 first (a count of 9 or 18 "rotates nothing",
                    // so it keeps OF defined); the manuals do not: Intel leaves OF alone there,
                    // AMD (like Vireo) writes it.
                    undef |= 0x800;
                }
            }
        }
        "shld" | "shrd" => {
            if let Some(n) = count(c) {
                let n = n & 31;
                let width = match &ops[0] {
                    Opnd::R(r) => r.size() as u32 * 8,
                    _ => regs_ops[0].size() as u32 * 8,
                };
                if n == 0 {
                    undef = 0;
                } else if n == 1 {
                    undef &= 0x10;
                } else if n <= width {
                    // OF is defined for a 1-bit shift only.
                    undef |= 0x800;
                } else {
                    // 16-bit operands with a count above 16: result and flags undefined.
                    undef = 0x8D5;
                    match &ops[0] {
                        Opnd::R(r) => regs |= 1 << full(*r).unwrap(),
                        // A memory destination cannot be masked byte-wise here: such cases
                        // are reported but do not fail.
                        _ => info = true,
                    }
                }
            }
        }
        _ => {}
    }
    Mask {
        flags: COMPARE_FLAGS & !undef,
        regs,
        informational: info,
        rep_cmp: None,
        bound_br_first: false,
    }
}

fn gen_string(code: Code, rep: RepPrefixKind, rng: &mut Rng) -> Option<(Case, Mask)> {
    let mut c = new_case(rng);
    let ins = match code {
        Code::Movsb_m8_m8 => Instruction::with_movsb(32, Register::None, rep),
        Code::Movsw_m16_m16 => Instruction::with_movsw(32, Register::None, rep),
        Code::Movsd_m32_m32 => Instruction::with_movsd(32, Register::None, rep),
        Code::Stosb_m8_AL => Instruction::with_stosb(32, rep),
        Code::Stosw_m16_AX => Instruction::with_stosw(32, rep),
        Code::Stosd_m32_EAX => Instruction::with_stosd(32, rep),
        Code::Lodsb_AL_m8 => Instruction::with_lodsb(32, Register::None, rep),
        Code::Lodsw_AX_m16 => Instruction::with_lodsw(32, Register::None, rep),
        Code::Lodsd_EAX_m32 => Instruction::with_lodsd(32, Register::None, rep),
        Code::Cmpsb_m8_m8 => Instruction::with_cmpsb(32, Register::None, rep),
        Code::Cmpsw_m16_m16 => Instruction::with_cmpsw(32, Register::None, rep),
        Code::Cmpsd_m32_m32 => Instruction::with_cmpsd(32, Register::None, rep),
        Code::Scasb_AL_m8 => Instruction::with_scasb(32, rep),
        Code::Scasw_AX_m16 => Instruction::with_scasw(32, rep),
        Code::Scasd_EAX_m32 => Instruction::with_scasd(32, rep),
        _ => return None,
    }
    .ok()?;
    let bytes = encode(&ins, CODE)?;
    set_code(&mut c, &bytes);
    let pos = |rng: &mut Rng| -> u32 {
        if rng.chance(5) {
            // Near an edge: a long REP runs into a guard page.
            if rng.chance(50) {
                AREA + rng.below(64)
            } else {
                AREA + AREA_SIZE as u32 - rng.below(64) - 1
            }
        } else {
            AREA + 0x100 + rng.below(AREA_SIZE as u32 - 0x200)
        }
    };
    c.regs[6] = pos(rng);
    c.regs[7] = pos(rng);
    if rep != RepPrefixKind::None {
        c.regs[1] = match rng.below(10) {
            0 => 0,
            1 => 1,
            2 => 0x100 + rng.below(0x400),
            _ => rng.below(48),
        };
    }
    let size = ins.memory_size().size() as u32;
    if rng.chance(40) {
        // Make equal elements likely for CMPS (source = destination copy) and SCAS.
        let v = mem_read(&c, c.regs[7], size as usize) as u32;
        match size {
            1 => set_reg_val(&mut c.regs, Register::AL, v),
            2 => set_reg_val(&mut c.regs, Register::AX, v),
            _ => c.regs[0] = v,
        }
        if matches!(
            code,
            Code::Cmpsb_m8_m8 | Code::Cmpsw_m16_m16 | Code::Cmpsd_m32_m32
        ) {
            let d = c.regs[7];
            // 32 bytes compared (the patch limit when these cases were designed).
            const CMPS_SPAN: usize = 32;
            let n = CMPS_SPAN.min(AREA_SIZE - (d - AREA).min(AREA_SIZE as u32) as usize);
            let mut b = [0u8; CMPS_SPAN];
            for (i, x) in b.iter_mut().enumerate().take(n) {
                *x = mem_read(&c, d + i as u32, 1) as u8;
            }
            if rng.chance(50) && n > 4 {
                let k = rng.below(n as u32) as usize;
                b[k] ^= 1;
            }
            let src = c.regs[6];
            patch(&mut c, src, &b[..n]);
        }
    }
    let mask = {
        let mut dec = Decoder::with_ip(32, c.code(), CODE as u64, DecoderOptions::NONE);
        let i = dec.decode();
        let rep_cmp = (rep != RepPrefixKind::None
            && matches!(
                code,
                Code::Cmpsb_m8_m8
                    | Code::Cmpsw_m16_m16
                    | Code::Cmpsd_m32_m32
                    | Code::Scasb_AL_m8
                    | Code::Scasw_AX_m16
                    | Code::Scasd_EAX_m32
            ))
        .then_some(RepCmp {
            eip: CODE,
            ecx: c.regs[1],
            eflags: c.eflags,
        });
        Mask {
            flags: COMPARE_FLAGS & !flags_from_iced(i.rflags_undefined()),
            regs: 0,
            informational: false,
            rep_cmp,
            bound_br_first: false,
        }
    };
    Some((c, mask))
}

/// An f64 drawn from several families: ordinary numbers, integers, tiny and huge values,
/// and raw bit patterns (NaNs, infinities, denormals).
fn rand_f64(rng: &mut Rng) -> f64 {
    match rng.below(8) {
        0 => f64::from_bits(rng.next()),
        1 => (rng.u32() as i32) as f64,
        2 => (rng.u32() as i32) as f64 / (1 + rng.below(1000)) as f64,
        3 => [
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.5,
            2.5,
            -2.5,
            3.5,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            1e308,
            5e-324,
            2147483647.5,
            -2147483648.5,
            // Signalling NaNs (positive and negative, with payloads) and a negative quiet NaN.
            f64::from_bits(0x7FF0_0000_0000_0001),
            f64::from_bits(0xFFF4_0000_0000_1234),
            f64::from_bits(0xFFF8_0000_0000_0000),
        ][rng.below(18) as usize],
        _ => {
            let m = (rng.next() >> 12) | 0x3FF0_0000_0000_0000;
            let e = rng.below(80) as i32 - 40;
            let s = if rng.chance(50) { -1.0 } else { 1.0 };
            s * f64::from_bits(m) * 2f64.powi(e)
        }
    }
}

fn gen_x87(op: X87Op, double_pc: bool, full_sw: bool, rng: &mut Rng) -> Option<(Case, Mask)> {
    use iced_x86::code_asm::*;
    let mut c = new_case(rng);
    let a_val = rand_f64(rng);
    let b_val = rand_f64(rng);
    let mut p = [0u8; 16];
    p[..8].copy_from_slice(&a_val.to_le_bytes());
    p[8..].copy_from_slice(&b_val.to_le_bytes());
    // Operands at AREA+0x100, the control word at +0x110, results at +0x120.
    let base = AREA + 0x100;
    let mut full_patch = [0u8; 18];
    full_patch[..16].copy_from_slice(&p);
    let cw: u16 = if double_pc { 0x027F } else { 0x037F };
    full_patch[16..].copy_from_slice(&cw.to_le_bytes());
    patch(&mut c, base, &full_patch);
    let res = base + 0x20;
    let mut a = CodeAssembler::new(32).ok()?;
    let asm = |a: &mut CodeAssembler| -> Result<(), IcedError> {
        a.fninit()?;
        a.fldcw(word_ptr(base + 16))?;
        a.fld(qword_ptr(base))?;
        match op {
            X87Op::Fadd | X87Op::Fsub | X87Op::Fmul | X87Op::Fdiv => {
                a.fld(qword_ptr(base + 8))?;
                match op {
                    X87Op::Fadd => a.fadd_2(st0, st1)?,
                    X87Op::Fsub => a.fsub_2(st0, st1)?,
                    X87Op::Fmul => a.fmul_2(st0, st1)?,
                    _ => a.fdiv_2(st0, st1)?,
                }
                a.fstp(qword_ptr(res))?;
            }
            X87Op::Fsqrt => {
                a.fsqrt()?;
                a.fstp(qword_ptr(res))?;
            }
            X87Op::Fcompp => {
                a.fld(qword_ptr(base + 8))?;
                a.fcompp()?;
            }
            X87Op::Fistp32 => a.fistp(dword_ptr(res))?,
            X87Op::Fstp32 => a.fstp(dword_ptr(res))?,
            X87Op::Fdiv80 => {
                a.fld(qword_ptr(base + 8))?;
                a.fdiv_2(st0, st1)?;
                a.fstp(tword_ptr(res))?;
            }
            X87Op::Fistp64 => a.fistp(qword_ptr(res))?,
            X87Op::Fistp16 => a.fistp(word_ptr(res))?,
            X87Op::Fild32 => {
                a.fild(dword_ptr(base + 8))?;
                a.fstp(qword_ptr(res))?;
            }
            X87Op::Fld32 => {
                a.fld(dword_ptr(base + 8))?;
                a.fstp(qword_ptr(res))?;
            }
            X87Op::Frndint => {
                a.frndint()?;
                a.fstp(qword_ptr(res))?;
            }
            X87Op::Fprem => {
                a.fld(qword_ptr(base + 8))?;
                a.fprem()?;
                a.fstp(qword_ptr(res))?;
            }
            X87Op::Fchs => {
                a.fchs()?;
                a.fstp(qword_ptr(res))?;
            }
            X87Op::Fxam => a.fxam()?,
            X87Op::Fucompp => {
                a.fld(qword_ptr(base + 8))?;
                a.fucompp()?;
            }
        }
        a.fnstsw(ax)?;
        if !full_sw {
            a.and(eax, 0xFFFF_FD40u32 as i32)?;
        }
        Ok(())
    };
    asm(&mut a).ok()?;
    let bytes = a.assemble(CODE as u64).ok()?;
    set_code(&mut c, &bytes);
    // FNSTSW AX: only AX changes; the rest of EAX is compared too. AF after the AND is
    // undefined. Extended precision (double rounding against Vireo's f64) and the full status
    // word (exception flags, C1: not modelled by an f64 FPU) are informational.
    // Fdiv80 stores the 80-bit quotient: it documents Vireo's f64 precision and exponent range.
    // FXAM of an f64 denormal: normal in the 80-bit register, denormal in Vireo's f64.
    let f64_denormal = matches!(op, X87Op::Fxam) && a_val.is_subnormal();
    // A result in the f64 denormal range: even with PC=53 the x87 keeps its 15-bit exponent, rounds
    // to 53 bits, and FST m64 rounds again to the denormal's precision (double rounding); Vireo
    // rounds once. Both are "right"; the case is informational.
    let r = match op {
        X87Op::Fadd => b_val + a_val,
        X87Op::Fsub => b_val - a_val,
        X87Op::Fmul => b_val * a_val,
        X87Op::Fdiv => b_val / a_val,
        X87Op::Fsqrt => a_val.sqrt(),
        _ => 1.0,
    };
    let tiny = r.is_subnormal()
        || (r == 0.0 && a_val != 0.0 && b_val != 0.0 && !matches!(op, X87Op::Fadd | X87Op::Fsub));
    let info = !double_pc || full_sw || matches!(op, X87Op::Fdiv80) || f64_denormal || tiny;
    Some((
        c,
        Mask {
            flags: COMPARE_FLAGS & !0x10,
            regs: 0,
            informational: info,
            rep_cmp: None,
            bound_br_first: false,
        },
    ))
}

/// A sequence of register-only instructions. Flags left undefined by one instruction stay masked
/// until an instruction defines them; an instruction that would read an undefined flag (ADC after
/// a multi-bit shift's OF... DAA after AND's AF, LAHF) is not picked.
fn gen_seq(len: u32, pool: &[Code], rng: &mut Rng) -> Option<(Case, Mask)> {
    let mut c = new_case(rng);
    let mut bytes = Vec::new();
    let mut undef = 0u32;
    let mut n = 0;
    let mut tries = 0;
    while n < len {
        tries += 1;
        if tries > 1000 {
            return None;
        }
        let code = pool[rng.below(pool.len() as u32) as usize];
        let Some((one, _)) = gen_generic(code, false, false, false, rng) else {
            continue;
        };
        let mut dec = Decoder::with_ip(32, one.code(), CODE as u64, DecoderOptions::NONE);
        let ins = dec.decode();
        let read = flags_from_iced(ins.rflags_read());
        // LAHF/PUSHF-like readers expose every flag; a reader of an undefined flag is skipped.
        if read & undef != 0 {
            continue;
        }
        // SHLD/SHRD with a 16-bit count above 16 leave the destination undefined: skip them here.
        if matches!(
            ins.mnemonic(),
            iced_x86::Mnemonic::Shld | iced_x86::Mnemonic::Shrd
        ) && ins.op0_register().size() == 2
        {
            continue;
        }
        if bytes.len() + one.code().len() > MAX_CODE {
            break;
        }
        let mut defined =
            flags_from_iced(ins.rflags_written() | ins.rflags_cleared() | ins.rflags_set());
        let mut extra_undef = 0;
        // A shift or rotate whose count may be 0 (CL, or an imm8 that is 0 mod 32) leaves the
        // flags as they were, undefined ones included: it defines nothing for certain.
        {
            use iced_x86::{Mnemonic as Mn, OpKind};
            let shift = matches!(
                ins.mnemonic(),
                Mn::Rol
                    | Mn::Ror
                    | Mn::Rcl
                    | Mn::Rcr
                    | Mn::Shl
                    | Mn::Sal
                    | Mn::Shr
                    | Mn::Sar
                    | Mn::Shld
                    | Mn::Shrd
            );
            let last = ins.op_count() - 1;
            let zero_possible = match ins.op_kind(last) {
                OpKind::Register => ins.op_register(last) == Register::CL,
                OpKind::Immediate8 => ins.immediate8() & 31 == 0,
                _ => false,
            };
            if shift && zero_possible {
                defined = 0;
            }
            // OF is defined only for a masked count of 1 (see `mask_for`; iced keeps it for
            // RCL/RCR 8/16 by 9, 10, 17, 18...).
            if shift && ins.op_kind(last) == OpKind::Immediate8 && ins.immediate8() & 31 >= 2 {
                defined &= !0x800;
                extra_undef = 0x800;
            }
        }
        undef = (undef & !defined) | flags_from_iced(ins.rflags_undefined()) | extra_undef;
        bytes.extend_from_slice(one.code());
        n += 1;
    }
    set_code(&mut c, &bytes);
    Some((
        c,
        Mask {
            flags: COMPARE_FLAGS & !undef,
            regs: 0,
            informational: false,
            rep_cmp: None,
            bound_br_first: false,
        },
    ))
}

/// Single-step: `push imm32 (EFLAGS | TF); popfd; <inner>` with ESP in the area. The trap comes
/// after the inner instruction (POPF's own TF takes effect one instruction later).
fn gen_tf(inner: &Kind, rng: &mut Rng) -> Option<(Case, Mask)> {
    let (mut c, mask) = match inner {
        Kind::Generic {
            code,
            mem,
            lock,
            addr16,
        } => gen_generic(*code, *mem, *lock, *addr16, rng)?,
        Kind::Str { code, rep } => gen_string(*code, *rep, rng)?,
        _ => return None,
    };
    let mut dec = Decoder::with_ip(32, c.code(), CODE as u64, DecoderOptions::NONE);
    let ins = dec.decode();
    let mut f = InstructionInfoFactory::new();
    if f.info(&ins)
        .used_registers()
        .iter()
        .any(|u| full(u.register()) == Some(4))
        || ins.is_jcc_short_or_near()
    {
        return None;
    }
    c.regs[4] = stack_ptr(rng) & !3;
    let mut bytes = vec![0x68];
    bytes.extend_from_slice(&(c.eflags | 0x100).to_le_bytes());
    bytes.push(0x9D);
    bytes.extend_from_slice(c.code());
    if bytes.len() > MAX_CODE {
        return None;
    }
    set_code(&mut c, &bytes);
    let mut mask = mask;
    if let Some(r) = &mut mask.rep_cmp {
        // The string instruction now follows `push imm32; popfd`, which loads the same
        // arithmetic flags.
        r.eip += 6;
    }
    Some((c, mask))
}
