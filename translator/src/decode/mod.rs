//! Decoding: iced-x86 turns guest bytes into an `Instruction`; [`translate`] turns that into our
//! compact [`Op`] — the handler to run plus its operands resolved once (register numbers,
//! immediate, effective-address form, sizes). Anything without a handler becomes #UD.

pub mod op;

use crate::exec::{
    self, arith, bcd, bits, control, flags_ops, io, logic, moves, shift_rotate, stack, string,
    system, x87,
};
use iced_x86::{Code, Instruction, Mnemonic as M, OpKind, Register};
use op::{Handler, Op, loc, pfx};

/// Prefix facts iced does not hand out directly, from a scan of the instruction's bytes.
struct Prefixes {
    opsize: bool,
    adsize: bool,
    rep: bool,
    repne: bool,
    lock: bool,
    rex_w: bool,
}

fn scan_prefixes(bytes: &[u8], bitness: u32) -> Prefixes {
    let mut p = Prefixes {
        opsize: false,
        adsize: false,
        rep: false,
        repne: false,
        lock: false,
        rex_w: false,
    };
    for &b in bytes {
        match b {
            0x26 | 0x2E | 0x36 | 0x3E | 0x64 | 0x65 => {}
            0x66 => p.opsize = true,
            0x67 => p.adsize = true,
            0xF0 => p.lock = true,
            // The last of F2/F3 wins.
            0xF2 => {
                p.repne = true;
                p.rep = false;
            }
            0xF3 => {
                p.rep = true;
                p.repne = false;
            }
            0x40..=0x4F if bitness == 64 => p.rex_w = b & 8 != 0,
            _ => break,
        }
    }
    p
}

/// Our register number for an iced general register: 0-15, or 16-19 for AH/CH/DH/BH.
fn gpr(r: Register) -> u8 {
    if r.is_gpr8() {
        let n = r.number() as u8;
        match n {
            0..=3 => n,
            4..=7 => n + 12,
            _ => n - 4,
        }
    } else {
        r.full_register().number() as u8
    }
}

fn seg_index(r: Register) -> u8 {
    match r {
        Register::ES => 0,
        Register::CS => 1,
        Register::SS => 2,
        Register::FS => 4,
        Register::GS => 5,
        _ => 3,
    }
}

fn is_imm(k: OpKind) -> bool {
    matches!(
        k,
        OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64
            | OpKind::Immediate8_2nd
    )
}

/// Location and size of operand `i`; immediates land in `op.imm`.
fn operand(ins: &Instruction, i: u32, op: &mut Op) -> (u8, u8) {
    let k = ins.op_kind(i);
    match k {
        OpKind::Register => {
            let r = ins.op_register(i);
            (gpr(r), r.size() as u8)
        }
        OpKind::Memory => (loc::MEM, ins.memory_size().size() as u8),
        k if is_imm(k) => {
            op.imm = ins.immediate(i);
            (loc::IMM, 0)
        }
        _ => (loc::NONE, 0),
    }
}

/// Translate one decoded instruction. `bytes` are its raw bytes (for the prefix scan).
pub fn translate(ins: &Instruction, bytes: &[u8], bitness: u32) -> Op {
    let len = ins.len() as u8;
    let mut op = Op::new(exec::undefined, len);
    if ins.is_invalid() {
        op.prefix |= pfx::UNDEFINED;
        return op;
    }
    let p = scan_prefixes(bytes, bitness);
    // Default operand size of this instruction, and of instructions that push/pop.
    let osz: u8 = match bitness {
        64 => {
            if p.rex_w {
                8
            } else if p.opsize {
                2
            } else {
                4
            }
        }
        32 => {
            if p.opsize {
                2
            } else {
                4
            }
        }
        _ => {
            if p.opsize {
                4
            } else {
                2
            }
        }
    };
    let ssz: u8 = if bitness == 64 {
        if p.opsize { 2 } else { 8 }
    } else {
        osz
    };
    op.asize = match bitness {
        64 => {
            if p.adsize {
                4
            } else {
                8
            }
        }
        32 => {
            if p.adsize {
                2
            } else {
                4
            }
        }
        _ => {
            if p.adsize {
                4
            } else {
                2
            }
        }
    };
    if p.rep {
        op.prefix |= pfx::REP;
    }
    if p.repne {
        op.prefix |= pfx::REPNE;
    }
    if p.lock {
        op.prefix |= pfx::LOCK;
    }
    if p.opsize {
        op.prefix |= pfx::OPSIZE;
    }
    if p.adsize {
        op.prefix |= pfx::ADSIZE;
    }

    // The memory operand, if any (string instructions use implicit forms handled below).
    let has_mem = (0..ins.op_count()).any(|i| ins.op_kind(i) == OpKind::Memory);
    if has_mem {
        op.seg = seg_index(ins.memory_segment());
        let base = ins.memory_base();
        let index = ins.memory_index();
        op.disp = ins.memory_displacement64();
        if base == Register::RIP || base == Register::EIP {
            op.base = loc::RIP;
            // iced resolved the target from the decode address; keep it relative.
            op.disp = ins.memory_displacement64().wrapping_sub(ins.next_ip());
        } else if base != Register::None {
            op.base = gpr(base);
        }
        if index != Register::None {
            op.index = gpr(index);
            op.scale = ins.memory_index_scale().trailing_zeros() as u8;
        }
    } else {
        // Implicit DS:rSI sources (string ops, XLAT) still honour segment overrides.
        op.seg = seg_index(ins.memory_segment());
    }

    let n = ins.op_count();
    let (d, dsz) = if n > 0 {
        operand(ins, 0, &mut op)
    } else {
        (loc::NONE, 0)
    };
    let (s, ssize) = if n > 1 {
        operand(ins, 1, &mut op)
    } else {
        (loc::NONE, 0)
    };
    op.dst = d;
    op.src = s;
    op.osize = if dsz != 0 { dsz } else { osz };
    let _ = ssize;
    let cc = (ins.condition_code() as u8).wrapping_sub(1);
    let rel = ins.near_branch_target().wrapping_sub(ins.next_ip());
    let branch_size = |k: OpKind| match k {
        OpKind::NearBranch16 => 2,
        OpKind::NearBranch32 => 4,
        _ => 8,
    };

    let h: Handler = match ins.mnemonic() {
        // ---- arithmetic and logic ----
        M::Add => arith::alu::<{ arith::kind::ADD }>,
        M::Or => arith::alu::<{ arith::kind::OR }>,
        M::Adc => arith::alu::<{ arith::kind::ADC }>,
        M::Sbb => arith::alu::<{ arith::kind::SBB }>,
        M::And => arith::alu::<{ arith::kind::AND }>,
        M::Sub => arith::alu::<{ arith::kind::SUB }>,
        M::Xor => arith::alu::<{ arith::kind::XOR }>,
        M::Cmp => arith::alu::<{ arith::kind::CMP }>,
        M::Test => arith::alu::<{ arith::kind::TEST }>,
        M::Inc => arith::inc,
        M::Dec => arith::dec,
        M::Neg => arith::neg,
        M::Not => logic::not,
        M::Mul => arith::mul1,
        M::Div => arith::div1,
        M::Idiv => arith::idiv1,
        M::Imul => match n {
            1 => arith::imul1,
            2 => arith::imul_n,
            _ => {
                // imul r, r/m, imm: the multiplier is the immediate.
                let (s2, _) = operand(ins, 1, &mut op);
                op.src = s2;
                op.imm = ins.immediate(2);
                op.aux = 1;
                arith::imul_n
            }
        },
        M::Cbw | M::Cwde | M::Cdqe => arith::cbw,
        M::Cwd | M::Cdq | M::Cqo => arith::cwd,
        // ---- shifts ----
        M::Rol | M::Ror | M::Rcl | M::Rcr | M::Shl | M::Sal | M::Shr | M::Sar => {
            if op.src == loc::IMM {
                op.imm &= 0xFF;
            } else if op.src == loc::NONE {
                op.src = loc::IMM;
                op.imm = 1;
            }
            // A CL count stays a register location (1 = CL).
            match ins.mnemonic() {
                M::Rol => shift_rotate::shift::<{ shift_rotate::kind::ROL }>,
                M::Ror => shift_rotate::shift::<{ shift_rotate::kind::ROR }>,
                M::Rcl => shift_rotate::shift::<{ shift_rotate::kind::RCL }>,
                M::Rcr => shift_rotate::shift::<{ shift_rotate::kind::RCR }>,
                M::Shl => shift_rotate::shift::<{ shift_rotate::kind::SHL }>,
                M::Sal => shift_rotate::shift::<{ shift_rotate::kind::SAL }>,
                M::Shr => shift_rotate::shift::<{ shift_rotate::kind::SHR }>,
                _ => shift_rotate::shift::<{ shift_rotate::kind::SAR }>,
            }
        }
        M::Shld | M::Shrd => {
            op.aux = (ins.mnemonic() == M::Shrd) as u8;
            if is_imm(ins.op_kind(2)) {
                op.imm = ins.immediate(2) & 0xFF;
                op.imm2 = 1;
            }
            shift_rotate::shxd
        }
        // ---- BCD ----
        M::Daa => bcd::daa,
        M::Das => bcd::das,
        M::Aaa => bcd::aaa,
        M::Aas => bcd::aas,
        M::Aam => bcd::aam,
        M::Aad => bcd::aad,
        // ---- moves ----
        M::Mov => match ins.code() {
            Code::Mov_rm16_Sreg | Code::Mov_r32m16_Sreg | Code::Mov_r64m16_Sreg => {
                op.aux = seg_index(ins.op_register(1));
                op.osize = if op.dst == loc::MEM { 2 } else { dsz };
                moves::mov_from_sreg
            }
            Code::Mov_Sreg_rm16 | Code::Mov_Sreg_r32m16 | Code::Mov_Sreg_r64m16 => {
                op.aux = ins.op_register(0).number() as u8;
                op.osize = 2;
                moves::mov_to_sreg
            }
            Code::Mov_r32_cr | Code::Mov_r64_cr => {
                op.aux = ins.op_register(1).number() as u8;
                op.osize = if bitness == 64 { 8 } else { 4 };
                system::mov_from_cr
            }
            Code::Mov_cr_r32 | Code::Mov_cr_r64 => {
                op.aux = ins.op_register(0).number() as u8;
                op.osize = if bitness == 64 { 8 } else { 4 };
                system::mov_to_cr
            }
            Code::Mov_r32_dr | Code::Mov_r64_dr => {
                op.aux = ins.op_register(1).number() as u8;
                op.osize = if bitness == 64 { 8 } else { 4 };
                system::mov_from_dr
            }
            Code::Mov_dr_r32 | Code::Mov_dr_r64 => {
                op.aux = ins.op_register(0).number() as u8;
                op.osize = if bitness == 64 { 8 } else { 4 };
                system::mov_to_dr
            }
            Code::Mov_r32_tr | Code::Mov_tr_r32 => exec::undefined,
            _ => moves::mov,
        },
        M::Movzx | M::Movsx | M::Movsxd => {
            op.aux = ssize;
            if ins.mnemonic() == M::Movzx {
                moves::movzx
            } else {
                moves::movsx
            }
        }
        M::Xchg => {
            // Keep the register in src: xchg r, r/m is symmetric.
            if op.src == loc::MEM {
                std::mem::swap(&mut op.dst, &mut op.src);
            }
            moves::xchg
        }
        M::Lea => {
            if op.src != loc::MEM {
                exec::undefined
            } else {
                moves::lea
            }
        }
        M::Cmovo
        | M::Cmovno
        | M::Cmovb
        | M::Cmovae
        | M::Cmove
        | M::Cmovne
        | M::Cmovbe
        | M::Cmova
        | M::Cmovs
        | M::Cmovns
        | M::Cmovp
        | M::Cmovnp
        | M::Cmovl
        | M::Cmovge
        | M::Cmovle
        | M::Cmovg => {
            op.aux = cc;
            moves::cmov
        }
        M::Seto
        | M::Setno
        | M::Setb
        | M::Setae
        | M::Sete
        | M::Setne
        | M::Setbe
        | M::Seta
        | M::Sets
        | M::Setns
        | M::Setp
        | M::Setnp
        | M::Setl
        | M::Setge
        | M::Setle
        | M::Setg => {
            op.aux = cc;
            moves::setcc
        }
        M::Bswap => moves::bswap,
        M::Xadd => moves::xadd,
        M::Cmpxchg => moves::cmpxchg,
        M::Cmpxchg8b => moves::cmpxchg8b,
        M::Xlatb => moves::xlat,
        M::Lds | M::Les | M::Lss | M::Lfs | M::Lgs => {
            op.aux = match ins.mnemonic() {
                M::Les => 0,
                M::Lss => 2,
                M::Lfs => 4,
                M::Lgs => 5,
                _ => 3,
            };
            moves::load_far_ptr
        }
        // ---- stack ----
        M::Push => {
            if ins.op_kind(0) == OpKind::Register && ins.op_register(0).is_segment_register() {
                op.aux = seg_index(ins.op_register(0));
                op.osize = ssz;
                stack::push_sreg
            } else {
                op.src = op.dst;
                op.dst = loc::NONE;
                if op.src == loc::IMM {
                    op.osize = ssz;
                }
                stack::push
            }
        }
        M::Pop => {
            if ins.op_kind(0) == OpKind::Register && ins.op_register(0).is_segment_register() {
                op.aux = seg_index(ins.op_register(0));
                op.osize = ssz;
                if op.aux == 1 {
                    exec::undefined
                } else {
                    stack::pop_sreg
                }
            } else {
                stack::pop
            }
        }
        M::Pusha | M::Pushad => {
            op.osize = if ins.mnemonic() == M::Pushad { 4 } else { 2 };
            stack::pusha
        }
        M::Popa | M::Popad => {
            op.osize = if ins.mnemonic() == M::Popad { 4 } else { 2 };
            stack::popa
        }
        M::Pushf | M::Pushfd | M::Pushfq => {
            op.osize = ssz;
            stack::pushf
        }
        M::Popf | M::Popfd | M::Popfq => {
            op.osize = ssz;
            stack::popf
        }
        M::Enter => {
            op.osize = ssz;
            op.imm = ins.immediate16() as u64;
            op.imm2 = ins.immediate8_2nd() as u32;
            stack::enter
        }
        M::Leave => {
            op.osize = ssz;
            stack::leave
        }
        // ---- control transfer ----
        M::Jo
        | M::Jno
        | M::Jb
        | M::Jae
        | M::Je
        | M::Jne
        | M::Jbe
        | M::Ja
        | M::Js
        | M::Jns
        | M::Jp
        | M::Jnp
        | M::Jl
        | M::Jge
        | M::Jle
        | M::Jg => {
            op.aux = cc;
            op.imm = rel;
            op.osize = branch_size(ins.op_kind(0));
            control::jcc
        }
        M::Jmp => match ins.op_kind(0) {
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
                op.imm = rel;
                op.osize = branch_size(ins.op_kind(0));
                control::jmp_rel
            }
            OpKind::FarBranch16 | OpKind::FarBranch32 => {
                let f32b = ins.op_kind(0) == OpKind::FarBranch32;
                op.imm = if f32b {
                    ins.far_branch32() as u64
                } else {
                    ins.far_branch16() as u64
                };
                op.imm2 = ins.far_branch_selector() as u32;
                op.osize = if f32b { 4 } else { 2 };
                control::jmp_far_ptr
            }
            _ => {
                op.src = op.dst;
                op.dst = loc::NONE;
                if is_far_mem(ins) {
                    op.osize = far_mem_offset_size(ins, osz);
                    control::jmp_far_mem
                } else {
                    control::jmp_ind
                }
            }
        },
        M::Call => match ins.op_kind(0) {
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
                op.imm = rel;
                op.osize = branch_size(ins.op_kind(0));
                control::call_rel
            }
            OpKind::FarBranch16 | OpKind::FarBranch32 => {
                let f32b = ins.op_kind(0) == OpKind::FarBranch32;
                op.imm = if f32b {
                    ins.far_branch32() as u64
                } else {
                    ins.far_branch16() as u64
                };
                op.imm2 = ins.far_branch_selector() as u32;
                op.osize = if f32b { 4 } else { 2 };
                control::call_far_ptr
            }
            _ => {
                op.src = op.dst;
                op.dst = loc::NONE;
                if is_far_mem(ins) {
                    op.osize = far_mem_offset_size(ins, osz);
                    control::call_far_mem
                } else {
                    control::call_ind
                }
            }
        },
        M::Ret => {
            op.osize = ssz;
            op.imm = if n > 0 { ins.immediate16() as u64 } else { 0 };
            control::ret_near
        }
        M::Retf => {
            op.osize = if bitness == 64 && p.rex_w {
                8
            } else {
                osz.min(4)
            };
            op.imm = if n > 0 { ins.immediate16() as u64 } else { 0 };
            control::ret_far
        }
        M::Int => {
            op.imm = ins.immediate8() as u64;
            control::int_n
        }
        M::Int3 => control::int3,
        M::Int1 => control::int1,
        M::Into => control::into,
        M::Iret | M::Iretd | M::Iretq => {
            op.osize = match ins.mnemonic() {
                M::Iret => 2,
                M::Iretd => 4,
                _ => 8,
            };
            control::iret
        }
        M::Loop | M::Loope | M::Loopne => {
            op.aux = match ins.mnemonic() {
                M::Loope => 1,
                M::Loopne => 2,
                _ => 0,
            };
            op.imm = rel;
            op.osize = branch_size(ins.op_kind(0));
            op.asize = loop_counter_size(ins.code(), op.asize);
            control::loop_
        }
        M::Jcxz | M::Jecxz | M::Jrcxz => {
            op.imm = rel;
            op.osize = branch_size(ins.op_kind(0));
            op.asize = match ins.mnemonic() {
                M::Jcxz => 2,
                M::Jecxz => 4,
                _ => 8,
            };
            control::jcxz
        }
        M::Hlt => control::hlt,
        // ---- flags ----
        M::Clc => flags_ops::clc,
        M::Stc => flags_ops::stc,
        M::Cmc => flags_ops::cmc,
        M::Cld => flags_ops::cld,
        M::Std => flags_ops::std,
        M::Cli => flags_ops::cli,
        M::Sti => flags_ops::sti,
        M::Lahf => flags_ops::lahf,
        M::Sahf => flags_ops::sahf,
        M::Salc => flags_ops::salc,
        // ---- strings (operand size from the element size) ----
        M::Movsb | M::Movsw | M::Movsd | M::Movsq if is_string(ins) => {
            op.osize = elem(ins.mnemonic());
            string::string::<{ string::kind::MOVS }>
        }
        M::Cmpsb | M::Cmpsw | M::Cmpsd | M::Cmpsq if is_string(ins) => {
            op.osize = elem(ins.mnemonic());
            string::string::<{ string::kind::CMPS }>
        }
        M::Stosb | M::Stosw | M::Stosd | M::Stosq => {
            op.osize = elem(ins.mnemonic());
            string::string::<{ string::kind::STOS }>
        }
        M::Lodsb | M::Lodsw | M::Lodsd | M::Lodsq => {
            op.osize = elem(ins.mnemonic());
            string::string::<{ string::kind::LODS }>
        }
        M::Scasb | M::Scasw | M::Scasd | M::Scasq => {
            op.osize = elem(ins.mnemonic());
            string::string::<{ string::kind::SCAS }>
        }
        M::Insb | M::Insw | M::Insd => {
            op.osize = elem(ins.mnemonic());
            string::string::<{ string::kind::INS }>
        }
        M::Outsb | M::Outsw | M::Outsd => {
            op.osize = elem(ins.mnemonic());
            string::string::<{ string::kind::OUTS }>
        }
        // ---- I/O ----
        M::In => {
            op.osize = dsz;
            io::in_
        }
        M::Out => {
            op.osize = ssize;
            io::out
        }
        // ---- bits ----
        M::Bt | M::Bts | M::Btr | M::Btc => {
            op.aux = match ins.mnemonic() {
                M::Bts => 1,
                M::Btr => 2,
                M::Btc => 3,
                _ => 0,
            };
            bits::bt
        }
        // F3 0F BC/BD decode as TZCNT/LZCNT, but a CPU without BMI1/LZCNT (ours: CPUID
        // advertises neither) ignores the REP prefix and runs BSF/BSR — which Linux relies on
        // (`rep bsf` in its find-first-bit helpers).
        M::Bsf | M::Bsr | M::Tzcnt | M::Lzcnt => {
            op.aux = matches!(ins.mnemonic(), M::Bsr | M::Lzcnt) as u8;
            bits::bsf_bsr
        }
        M::Bound => bits::bound,
        // ---- system ----
        // 0F 19-0F 1E are hint NOPs on the P6 and later; CET's ENDBR32/64 and RDSSP live in
        // that space and are NOPs on a CPU without CET (ours), which is what lets CET-built
        // programs such as Debian's static glibc run on it.
        M::Reservednop | M::Endbr32 | M::Endbr64 | M::Rdsspd | M::Rdsspq => exec::nop,
        M::Nop
        | M::Pause
        | M::Lfence
        | M::Mfence
        | M::Sfence
        | M::Prefetchnta
        | M::Prefetcht0
        | M::Prefetcht1
        | M::Prefetcht2 => exec::nop,
        M::Cpuid => system::cpuid,
        M::Rdtsc => system::rdtsc,
        M::Rdmsr => system::rdmsr,
        M::Wrmsr => system::wrmsr,
        M::Lgdt | M::Lidt => {
            op.aux = (ins.mnemonic() == M::Lidt) as u8;
            op.src = op.dst;
            op.dst = loc::NONE;
            op.osize = osz;
            system::lgdt_lidt
        }
        M::Sgdt | M::Sidt => {
            op.aux = (ins.mnemonic() == M::Sidt) as u8;
            op.osize = osz;
            system::sgdt_sidt
        }
        M::Sldt | M::Str => {
            op.aux = (ins.mnemonic() == M::Str) as u8;
            system::sldt_str
        }
        M::Lldt | M::Ltr | M::Lmsw | M::Verr | M::Verw | M::Invlpg => {
            op.src = op.dst;
            op.dst = loc::NONE;
            match ins.mnemonic() {
                M::Lldt => system::lldt,
                M::Ltr => system::ltr,
                M::Lmsw => system::lmsw,
                M::Invlpg => system::invlpg,
                m => {
                    op.aux = (m == M::Verw) as u8;
                    system::verr_verw
                }
            }
        }
        M::Smsw => system::smsw,
        M::Clts => system::clts,
        M::Wbinvd | M::Invd => system::wbinvd,
        M::Lar | M::Lsl => {
            op.aux = (ins.mnemonic() == M::Lsl) as u8;
            system::lar_lsl
        }
        M::Arpl if bitness != 64 => system::arpl,
        M::Wait => x87::fwait,
        _ => x87::translate(ins, &mut op, osz).unwrap_or(exec::undefined),
    };
    if std::ptr::fn_addr_eq(h, exec::undefined as Handler) {
        op.prefix |= pfx::UNDEFINED;
    }
    op.exec = h;
    exec::fast::specialise(ins, &mut op);
    op
}

fn is_string(ins: &Instruction) -> bool {
    matches!(
        ins.op_kind(0),
        OpKind::MemoryESDI
            | OpKind::MemoryESEDI
            | OpKind::MemoryESRDI
            | OpKind::MemorySegSI
            | OpKind::MemorySegESI
            | OpKind::MemorySegRSI
    )
}

fn elem(m: M) -> u8 {
    match m {
        M::Movsb | M::Cmpsb | M::Stosb | M::Lodsb | M::Scasb | M::Insb | M::Outsb => 1,
        M::Movsw | M::Cmpsw | M::Stosw | M::Lodsw | M::Scasw | M::Insw | M::Outsw => 2,
        M::Movsd | M::Cmpsd | M::Stosd | M::Lodsd | M::Scasd | M::Insd | M::Outsd => 4,
        _ => 8,
    }
}

/// JMP/CALL m16:16/m16:32 (FF /3, FF /5) — also their register forms, which are #UD.
fn is_far_mem(ins: &Instruction) -> bool {
    matches!(
        ins.code(),
        Code::Jmp_m1616
            | Code::Jmp_m1632
            | Code::Jmp_m1664
            | Code::Call_m1616
            | Code::Call_m1632
            | Code::Call_m1664
    )
}

fn far_mem_offset_size(ins: &Instruction, osz: u8) -> u8 {
    match ins.code() {
        Code::Jmp_m1616 | Code::Call_m1616 => 2,
        Code::Jmp_m1632 | Code::Call_m1632 => 4,
        Code::Jmp_m1664 | Code::Call_m1664 => 8,
        _ => osz,
    }
}

/// LOOP's counter is CX/ECX/RCX by address size; iced names it in the code.
fn loop_counter_size(c: Code, default: u8) -> u8 {
    let name = format!("{c:?}");
    if name.ends_with("_CX") {
        2
    } else if name.ends_with("_ECX") {
        4
    } else if name.ends_with("_RCX") {
        8
    } else {
        default
    }
}
