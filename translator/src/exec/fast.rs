//! Handlers specialised at translation time for the hottest instruction forms.
//!
//! The generic handlers (`arith::alu`, `moves::mov`...) match the operand location and the
//! operand size on every execution. The decoder already knows both, so for the common forms
//! (register/register, register/immediate, register/memory, memory/register, memory/immediate)
//! with a fixed size it picks one of these monomorphic handlers instead
//! ([`specialise`]). Their semantics are exactly the generic handlers' (same reads, same
//! write order, same lazy flags); only the dispatch work is gone.

use crate::Cpu;
use crate::bus::CpuBus;
use crate::decode::op::{Handler, Op, loc};
use crate::exception::ExecResult;
use crate::exception::Fault;
use crate::exec::{arith, control, shift_rotate, string};
use crate::flags::{FlagOp, LazyFlags, sign_bit, size_mask, szp};
use crate::state::{cr0, efer, flag, sreg};
use arith::kind;
use iced_x86::Instruction;

/// Low `S` bytes of general register `r` (0-15; byte forms never name AH-BH here).
#[inline(always)]
fn get<const S: u8>(cpu: &Cpu, r: u8) -> u64 {
    cpu.regs[r as usize & 15] & size_mask(S)
}

/// Write the low `S` bytes of register `r` (32-bit writes zero-extend, as `Cpu::set_reg`).
#[inline(always)]
fn put<const S: u8>(cpu: &mut Cpu, r: u8, v: u64) {
    let x = &mut cpu.regs[r as usize & 15];
    match S {
        1 => *x = (*x & !0xFF) | (v & 0xFF),
        2 => *x = (*x & !0xFFFF) | (v & 0xFFFF),
        4 => *x = v & 0xFFFF_FFFF,
        _ => *x = v,
    }
}

/// Effective address; `A` marks the common `[base + disp]` form with 32-bit addressing.
#[inline(always)]
fn ea<const A: bool>(cpu: &Cpu, op: &Op) -> u64 {
    if A {
        cpu.regs[op.base as usize & 15].wrapping_add(op.disp) & 0xFFFF_FFFF
    } else {
        cpu.ea(op)
    }
}

/// Is the memory operand `[base + disp]` with a 32-bit address?
fn simple_ea(op: &Op) -> bool {
    op.asize == 4 && op.base < 16 && op.index == loc::NO_REG
}

/// `a OP b` for the carry-less ALU operations, recording the lazy flags.
#[inline(always)]
fn alu_op<const K: u8, const S: u8>(cpu: &mut Cpu, a: u64, b: u64) -> u64 {
    let (res, fop) = match K {
        kind::ADD => (a.wrapping_add(b), FlagOp::Add),
        kind::SUB | kind::CMP => (a.wrapping_sub(b), FlagOp::Sub),
        kind::AND | kind::TEST => (a & b, FlagOp::Logic),
        kind::OR => (a | b, FlagOp::Logic),
        _ => (a ^ b, FlagOp::Logic),
    };
    let res = res & size_mask(S);
    cpu.lazy = LazyFlags {
        op: fop,
        size: S,
        a,
        b,
        res,
    };
    res
}

const fn writes(k: u8) -> bool {
    k != kind::CMP && k != kind::TEST
}

fn alu_rr<const K: u8, const S: u8>(cpu: &mut Cpu, op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    let a = get::<S>(cpu, op.dst);
    let b = get::<S>(cpu, op.src);
    let res = alu_op::<K, S>(cpu, a, b);
    if writes(K) {
        put::<S>(cpu, op.dst, res);
    }
    Ok(())
}

fn alu_ri<const K: u8, const S: u8>(cpu: &mut Cpu, op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    let a = get::<S>(cpu, op.dst);
    let res = alu_op::<K, S>(cpu, a, op.imm & size_mask(S));
    if writes(K) {
        put::<S>(cpu, op.dst, res);
    }
    Ok(())
}

fn alu_rm<const K: u8, const S: u8, const A: bool>(
    cpu: &mut Cpu,
    op: &Op,
    bus: &mut dyn CpuBus,
) -> ExecResult {
    let a = get::<S>(cpu, op.dst);
    let ea = ea::<A>(cpu, op);
    let b = cpu.load_fast::<S>(bus, op.seg as usize, ea)?;
    let res = alu_op::<K, S>(cpu, a, b);
    if writes(K) {
        put::<S>(cpu, op.dst, res);
    }
    Ok(())
}

/// Memory destination: the lazy flags are recorded only after the write succeeded.
#[inline(always)]
fn alu_m<const K: u8, const S: u8, const A: bool>(
    cpu: &mut Cpu,
    op: &Op,
    bus: &mut dyn CpuBus,
    b: u64,
) -> ExecResult {
    let ea = ea::<A>(cpu, op);
    let seg = op.seg as usize;
    let a = if writes(K) {
        cpu.load_rmw_fast::<S>(bus, seg, ea)?
    } else {
        cpu.load_fast::<S>(bus, seg, ea)?
    };
    let saved = cpu.lazy;
    let res = alu_op::<K, S>(cpu, a, b);
    if writes(K)
        && let Err(e) = cpu.store_fast::<S>(bus, seg, ea, res)
    {
        cpu.lazy = saved;
        return Err(e);
    }
    Ok(())
}

fn alu_mr<const K: u8, const S: u8, const A: bool>(
    cpu: &mut Cpu,
    op: &Op,
    bus: &mut dyn CpuBus,
) -> ExecResult {
    let b = get::<S>(cpu, op.src);
    alu_m::<K, S, A>(cpu, op, bus, b)
}

fn alu_mi<const K: u8, const S: u8, const A: bool>(
    cpu: &mut Cpu,
    op: &Op,
    bus: &mut dyn CpuBus,
) -> ExecResult {
    alu_m::<K, S, A>(cpu, op, bus, op.imm & size_mask(S))
}

fn mov_rr<const S: u8>(cpu: &mut Cpu, op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    let v = get::<S>(cpu, op.src);
    put::<S>(cpu, op.dst, v);
    Ok(())
}

fn mov_ri<const S: u8>(cpu: &mut Cpu, op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    put::<S>(cpu, op.dst, op.imm);
    Ok(())
}

fn mov_rm<const S: u8, const A: bool>(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let ea = ea::<A>(cpu, op);
    let v = cpu.load_fast::<S>(bus, op.seg as usize, ea)?;
    put::<S>(cpu, op.dst, v);
    Ok(())
}

fn mov_mr<const S: u8, const A: bool>(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let v = get::<S>(cpu, op.src);
    let ea = ea::<A>(cpu, op);
    cpu.store_fast::<S>(bus, op.seg as usize, ea, v)
}

fn mov_mi<const S: u8, const A: bool>(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let ea = ea::<A>(cpu, op);
    cpu.store_fast::<S>(bus, op.seg as usize, ea, op.imm & size_mask(S))
}

fn inc_r<const S: u8>(cpu: &mut Cpu, op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    let a = get::<S>(cpu, op.dst);
    let res = a.wrapping_add(1) & size_mask(S);
    put::<S>(cpu, op.dst, res);
    cpu.set_lazy(FlagOp::Inc, S, a, 1, res);
    Ok(())
}

fn dec_r<const S: u8>(cpu: &mut Cpu, op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    let a = get::<S>(cpu, op.dst);
    let res = a.wrapping_sub(1) & size_mask(S);
    put::<S>(cpu, op.dst, res);
    cpu.set_lazy(FlagOp::Dec, S, a, 1, res);
    Ok(())
}

/// LEA with a 32-bit address and operand size (the address is already masked to 32 bits).
fn lea_r<const S: u8>(cpu: &mut Cpu, op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    let ea = cpu.ea(op);
    put::<S>(cpu, op.dst, ea);
    Ok(())
}

/// A 32-bit stack outside long mode (what `Cpu::stack_size` calls 4).
#[inline(always)]
fn stack32(cpu: &Cpu) -> bool {
    cpu.efer & efer::LMA == 0 && cpu.cr0 & cr0::PE != 0 && cpu.segs[sreg::SS].big()
}

/// CALL rel32 with a 32-bit stack.
#[inline(always)]
fn call_rel32(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    if !stack32(cpu) {
        return control::call_rel(cpu, op, bus);
    }
    let ret = cpu.rip;
    let t = ret.wrapping_add(op.imm) & 0xFFFF_FFFF;
    if t > cpu.segs[sreg::CS].limit as u64 {
        return Err(Fault::gp(0).into());
    }
    let sp = cpu.regs[4].wrapping_sub(4) & 0xFFFF_FFFF;
    cpu.store_fast::<4>(bus, sreg::SS, sp, ret)?;
    cpu.regs[4] = sp;
    cpu.rip = t;
    Ok(())
}

/// [`call_rel32`] as a handler of its own: `call_rel32` is inlined into `call_rel32_sb`, and an
/// `#[inline(always)]` function whose address is taken in several places can get one copy
/// per codegen unit, so the address `specialise` stores would not be the one [`fast_form`]
/// looks for. This one is never inlined: one copy, one address.
#[inline(never)]
fn call_rel32_op(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    call_rel32(cpu, op, bus)
}

/// NOP, PAUSE, ENDBR32/64 (`exec::nop`, which is small enough to be copied into every
/// codegen unit that takes its address: this one is what tier 1 recognises).
#[inline(never)]
fn nop_op(_cpu: &mut Cpu, _op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    Ok(())
}

/// CLD and STD (`flags_ops::cld`/`std`, small enough to be copied into each codegen unit:
/// these are the copies tier 1 recognises).
#[inline(never)]
fn cld_op(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    crate::exec::flags_ops::cld(cpu, op, bus)
}

#[inline(never)]
fn std_op(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    crate::exec::flags_ops::std(cpu, op, bus)
}

fn string1_for(m: iced_x86::Mnemonic) -> Option<Handler> {
    use iced_x86::Mnemonic as M;
    match m {
        M::Lodsb | M::Lodsw | M::Lodsd => Some(lods_op as Handler),
        M::Stosb | M::Stosw | M::Stosd => Some(stos_op as Handler),
        _ => Some(movs_op as Handler),
    }
}

/// LODS/STOS/MOVS with 32-bit addressing, and REP STOS/MOVS (`string::string`, a generic
/// instantiated wherever it is named: these copies are what tier 1 recognises).
#[inline(never)]
fn lods_op(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    string::string::<{ string::kind::LODS }>(cpu, op, bus)
}

#[inline(never)]
fn stos_op(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    string::string::<{ string::kind::STOS }>(cpu, op, bus)
}

#[inline(never)]
fn movs_op(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    string::string::<{ string::kind::MOVS }>(cpu, op, bus)
}

/// CALL rel32 inside a block that goes on with the callee's code (the block builder followed
/// the call into the same page). `imm2` holds the page offset the callee was decoded at (bits
/// 0-11) and the length of the callee run (bits 12+). If at run time the target is not that
/// byte of the same linear page (another CS base or offset mapped the block's start here), or
/// the callee run reaches past the CS limit, the block stops after the call and the next
/// block is looked up as usual.
pub(crate) fn call_rel32_sb(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let ret = cpu.rip;
    call_rel32(cpu, op, bus)?;
    let cs = &cpu.segs[sreg::CS];
    let t = cpu.rip;
    let start = ret.wrapping_sub(op.len as u64) & 0xFFFF_FFFF;
    let lin_call = cs.base.wrapping_add(start) & 0xFFFF_FFFF;
    let lin_t = cs.base.wrapping_add(t) & 0xFFFF_FFFF;
    let span = (op.imm2 >> 12) as u64;
    let ok = cpu.efer & efer::LMA == 0
        && lin_t >> 12 == lin_call >> 12
        && lin_t & 0xFFF == (op.imm2 & 0xFFF) as u64
        && (span == 0 || t + span - 1 <= cs.limit as u64);
    if !ok {
        cpu.block_break = true;
    }
    Ok(())
}

/// JMP rel32 inside a block that goes on at the target (the block builder followed it, maybe
/// to the block's second page: `Cpu::join_page`). `imm2` as for [`call_rel32_sb`]. The
/// target's linear address is a fixed distance from the block's start in 32-bit code, and
/// `get_block` checked the block's pages at its lookup, so only the CS limit can end the
/// block here: when the target run reaches past it, the next block is looked up as usual.
pub(crate) fn jmp_rel_sb(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    super::control::jmp_rel(cpu, op, bus)?;
    let cs = &cpu.segs[sreg::CS];
    let t = cpu.rip;
    let span = (op.imm2 >> 12) as u64;
    let ok = cs.base.wrapping_add(t) & 0xFFF == (op.imm2 & 0xFFF) as u64
        && (span == 0 || t + span - 1 <= cs.limit as u64);
    if !ok {
        cpu.block_break = true;
    }
    Ok(())
}

/// RET / RET imm16 with a 32-bit operand size and stack.
fn ret32(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    if !stack32(cpu) {
        return control::ret_near(cpu, op, bus);
    }
    let sp = cpu.regs[4] & 0xFFFF_FFFF;
    let t = cpu.load_fast::<4>(bus, sreg::SS, sp)?;
    if t > cpu.segs[sreg::CS].limit as u64 {
        return Err(Fault::gp(0).into());
    }
    cpu.regs[4] = sp.wrapping_add(4).wrapping_add(op.imm & 0xFFFF) & 0xFFFF_FFFF;
    cpu.rip = t;
    Ok(())
}

/// SHL/SAL, SHR, SAR of a register by an immediate count (the flag rules of
/// `shift_rotate::shift`: a masked count of 0 changes nothing, AF is cleared).
fn shift_ri<const K: u8, const S: u8>(cpu: &mut Cpu, op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    use shift_rotate::kind as sk;
    let cnt = (op.imm as u32) & if S == 8 { 0x3F } else { 0x1F };
    if cnt == 0 {
        return Ok(());
    }
    let v = get::<S>(cpu, op.dst);
    let bits = S as u32 * 8;
    let m = size_mask(S);
    let sign = sign_bit(S);
    let (res, cf, of) = match K {
        sk::SHL | sk::SAL => {
            let res = (v << cnt) & m;
            let cf = cnt <= bits && (v >> (bits - cnt)) & 1 != 0;
            (res, cf, ((res & sign) != 0) ^ cf)
        }
        sk::SHR => {
            let res = v >> cnt;
            (
                res,
                (v >> (cnt - 1)) & 1 != 0,
                ((res << 1) ^ res) & sign != 0,
            )
        }
        _ => {
            let x = arith::sext(v, S);
            (((x >> cnt) as u64) & m, (x >> (cnt - 1)) & 1 != 0, false)
        }
    };
    put::<S>(cpu, op.dst, res);
    let mut f = szp(res, S);
    if cf {
        f |= flag::CF;
    }
    if of {
        f |= flag::OF;
    }
    cpu.set_arith_flags(f);
    Ok(())
}

fn shift_for<const K: u8>(size: u8) -> Option<Handler> {
    by_size(
        size,
        shift_ri::<K, 1>,
        shift_ri::<K, 2>,
        shift_ri::<K, 4>,
        shift_ri::<K, 8>,
    )
}

/// Jcc rel32 outside long mode, one instance per condition code.
fn jcc32<const CC: u8>(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    if cpu.efer & efer::LMA != 0 {
        return control::jcc(cpu, op, bus);
    }
    if cpu.cond(CC) {
        let t = cpu.rip.wrapping_add(op.imm) & 0xFFFF_FFFF;
        if t > cpu.segs[sreg::CS].limit as u64 {
            return Err(Fault::gp(0).into());
        }
        cpu.rip = t;
        cpu.take_side_exit(op);
    }
    Ok(())
}

const JCC32: [Handler; 16] = [
    jcc32::<0>,
    jcc32::<1>,
    jcc32::<2>,
    jcc32::<3>,
    jcc32::<4>,
    jcc32::<5>,
    jcc32::<6>,
    jcc32::<7>,
    jcc32::<8>,
    jcc32::<9>,
    jcc32::<10>,
    jcc32::<11>,
    jcc32::<12>,
    jcc32::<13>,
    jcc32::<14>,
    jcc32::<15>,
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    RegReg,
    RegImm,
    RegMem,
    MemReg,
    MemImm,
}

fn form(op: &Op) -> Option<Form> {
    let reg = |l: u8| l < 16;
    match (op.dst, op.src) {
        (d, s) if reg(d) && reg(s) => Some(Form::RegReg),
        (d, loc::IMM) if reg(d) => Some(Form::RegImm),
        (d, loc::MEM) if reg(d) => Some(Form::RegMem),
        (loc::MEM, s) if reg(s) => Some(Form::MemReg),
        (loc::MEM, loc::IMM) => Some(Form::MemImm),
        _ => None,
    }
}

fn alu_sized<const K: u8, const S: u8>(f: Form, simple: bool) -> Handler {
    match (f, simple) {
        (Form::RegReg, _) => alu_rr::<K, S>,
        (Form::RegImm, _) => alu_ri::<K, S>,
        (Form::RegMem, false) => alu_rm::<K, S, false>,
        (Form::RegMem, true) => alu_rm::<K, S, true>,
        (Form::MemReg, false) => alu_mr::<K, S, false>,
        (Form::MemReg, true) => alu_mr::<K, S, true>,
        (Form::MemImm, false) => alu_mi::<K, S, false>,
        (Form::MemImm, true) => alu_mi::<K, S, true>,
    }
}

fn alu_for<const K: u8>(f: Form, size: u8, simple: bool) -> Option<Handler> {
    Some(match size {
        1 => alu_sized::<K, 1>(f, simple),
        2 => alu_sized::<K, 2>(f, simple),
        4 => alu_sized::<K, 4>(f, simple),
        8 => alu_sized::<K, 8>(f, simple),
        _ => return None,
    })
}

fn mov_sized<const S: u8>(f: Form, simple: bool) -> Handler {
    match (f, simple) {
        (Form::RegReg, _) => mov_rr::<S>,
        (Form::RegImm, _) => mov_ri::<S>,
        (Form::RegMem, false) => mov_rm::<S, false>,
        (Form::RegMem, true) => mov_rm::<S, true>,
        (Form::MemReg, false) => mov_mr::<S, false>,
        (Form::MemReg, true) => mov_mr::<S, true>,
        (Form::MemImm, false) => mov_mi::<S, false>,
        (Form::MemImm, true) => mov_mi::<S, true>,
    }
}

fn by_size(size: u8, h1: Handler, h2: Handler, h4: Handler, h8: Handler) -> Option<Handler> {
    Some(match size {
        1 => h1,
        2 => h2,
        4 => h4,
        8 => h8,
        _ => return None,
    })
}

/// Replace the generic handler the decoder chose for `ins` by a specialised one when the
/// form allows it. Chosen by mnemonic (comparing handler addresses is unreliable: a generic
/// handler may be instantiated in several codegen units).
pub(crate) fn specialise(ins: &Instruction, op: &mut Op) {
    use crate::decode::op::pfx;
    use iced_x86::{Mnemonic as M, OpKind};
    if op.prefix & (pfx::LOCK | pfx::UNDEFINED) != 0 {
        return;
    }
    // Segment, control and debug register moves keep their own handlers.
    let gprs_only = (0..ins.op_count())
        .all(|i| ins.op_kind(i) != OpKind::Register || ins.op_register(i).is_gpr());
    if !gprs_only {
        return;
    }
    let size = op.osize;
    let f = form(op);
    let simple = simple_ea(op);
    let shift_imm = op.dst < 16 && op.src == loc::IMM;
    let new = match (ins.mnemonic(), f) {
        (M::Add, Some(f)) => alu_for::<{ kind::ADD }>(f, size, simple),
        (M::Sub, Some(f)) => alu_for::<{ kind::SUB }>(f, size, simple),
        (M::Cmp, Some(f)) => alu_for::<{ kind::CMP }>(f, size, simple),
        (M::And, Some(f)) => alu_for::<{ kind::AND }>(f, size, simple),
        (M::Or, Some(f)) => alu_for::<{ kind::OR }>(f, size, simple),
        (M::Xor, Some(f)) => alu_for::<{ kind::XOR }>(f, size, simple),
        (M::Test, Some(f)) => alu_for::<{ kind::TEST }>(f, size, simple),
        (M::Mov, Some(f)) => match size {
            1 => Some(mov_sized::<1>(f, simple)),
            2 => Some(mov_sized::<2>(f, simple)),
            4 => Some(mov_sized::<4>(f, simple)),
            8 => Some(mov_sized::<8>(f, simple)),
            _ => None,
        },
        (M::Lea, Some(Form::RegMem)) if op.asize == 4 && size == 4 => Some(lea_r::<4> as Handler),
        (M::Lea, Some(Form::RegMem)) if op.asize == 4 && size == 8 => Some(lea_r::<8> as Handler),
        (M::Inc, None) if op.dst < 16 && op.src == loc::NONE => {
            by_size(size, inc_r::<1>, inc_r::<2>, inc_r::<4>, inc_r::<8>)
        }
        (M::Dec, None) if op.dst < 16 && op.src == loc::NONE => {
            by_size(size, dec_r::<1>, dec_r::<2>, dec_r::<4>, dec_r::<8>)
        }
        (M::Shl, _) if shift_imm => shift_for::<{ shift_rotate::kind::SHL }>(size),
        (M::Sal, _) if shift_imm => shift_for::<{ shift_rotate::kind::SAL }>(size),
        (M::Shr, _) if shift_imm => shift_for::<{ shift_rotate::kind::SHR }>(size),
        (M::Sar, _) if shift_imm => shift_for::<{ shift_rotate::kind::SAR }>(size),
        (
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
            | M::Jg,
            _,
        ) if ins.op_kind(0) == OpKind::NearBranch32 => JCC32.get(op.aux as usize).copied(),
        (M::Call, _) if ins.op_kind(0) == OpKind::NearBranch32 => Some(call_rel32_op as Handler),
        (M::Nop | M::Pause | M::Endbr32 | M::Endbr64, _) => Some(nop_op as Handler),
        (M::Cld, _) => Some(cld_op as Handler),
        // String moves with 32-bit addressing: single ones, and REP STOS/MOVS (the wrappers
        // run `string::string`, which does both; tier 1 tells them apart by the prefix).
        (M::Lodsb | M::Lodsw | M::Lodsd, _)
            if op.prefix & (pfx::REP | pfx::REPNE) == 0 && op.asize == 4 =>
        {
            Some(lods_op as Handler)
        }
        (M::Stosb | M::Stosw | M::Stosd | M::Movsb | M::Movsw, _) if op.asize == 4 => {
            string1_for(ins.mnemonic())
        }
        (M::Movsd, _) if ins.code() == iced_x86::Code::Movsd_m32_m32 && op.asize == 4 => {
            Some(movs_op as Handler)
        }
        (M::Std, _) => Some(std_op as Handler),
        (M::Ret, _) if size == 4 => Some(ret32 as Handler),
        _ => None,
    };
    if let Some(n) = new {
        op.exec = n;
    }
}

/// A specialised handler that tier 1 compiles inline (`jit::compile`), with its parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FastForm {
    /// ALU `K` (`arith::kind`) of size `s`, register destination and register source.
    AluRR {
        k: u8,
        s: u8,
    },
    /// ALU with a register destination and the immediate.
    AluRI {
        k: u8,
        s: u8,
    },
    MovRR(u8),
    MovRI(u8),
    Inc(u8),
    Dec(u8),
    /// LEA with 32-bit addressing and this operand size.
    Lea(u8),
    /// Jcc rel32 (`jcc32`); the condition is in `Op::aux`.
    Jcc32,
    /// MOV reg, [mem] / MOV [mem], reg / MOV [mem], imm of size `s`.
    MovRM(u8),
    MovMR(u8),
    MovMI(u8),
    /// ALU with a register destination and a memory source.
    AluRM {
        k: u8,
        s: u8,
    },
    /// ALU with a memory destination and a register / immediate source.
    AluMR {
        k: u8,
        s: u8,
    },
    AluMI {
        k: u8,
        s: u8,
    },
    /// SHL/SAL/SHR/SAR (`shift_rotate::kind`) of a register by an immediate.
    ShiftRI {
        k: u8,
        s: u8,
    },
    /// RET / RET imm16 with a 32-bit operand size (`ret32`).
    Ret32,
    /// NOP, PAUSE, ENDBR32/64 (`nop_op`).
    Nop,
    /// CLD / STD (`cld_op` / `std_op`).
    Cld,
    Std,
    /// LODS / STOS / MOVS with 32-bit addressing (`lods_op`, `stos_op`, `movs_op`), and REP
    /// STOS / REP MOVS (the same wrappers: `string::string` runs both).
    Lods,
    Stos,
    Movs,

    /// CALL rel32 (`call_rel32`), and the form the block goes on after (`call_rel32_sb`).
    Call32,
    Call32Sb,
}

fn push_sized<const S: u8>(t: &mut Vec<(usize, FastForm)>) {
    fn alu<const K: u8, const S: u8>(t: &mut Vec<(usize, FastForm)>) {
        t.push((
            alu_rr::<K, S> as Handler as usize,
            FastForm::AluRR { k: K, s: S },
        ));
        t.push((
            alu_ri::<K, S> as Handler as usize,
            FastForm::AluRI { k: K, s: S },
        ));
        let rm = FastForm::AluRM { k: K, s: S };
        t.push((alu_rm::<K, S, false> as Handler as usize, rm));
        t.push((alu_rm::<K, S, true> as Handler as usize, rm));
        let (mr, mi) = (
            FastForm::AluMR { k: K, s: S },
            FastForm::AluMI { k: K, s: S },
        );
        t.push((alu_mr::<K, S, false> as Handler as usize, mr));
        t.push((alu_mr::<K, S, true> as Handler as usize, mr));
        t.push((alu_mi::<K, S, false> as Handler as usize, mi));
        t.push((alu_mi::<K, S, true> as Handler as usize, mi));
    }
    alu::<{ kind::ADD }, S>(t);
    alu::<{ kind::OR }, S>(t);
    alu::<{ kind::AND }, S>(t);
    alu::<{ kind::SUB }, S>(t);
    alu::<{ kind::XOR }, S>(t);
    alu::<{ kind::CMP }, S>(t);
    alu::<{ kind::TEST }, S>(t);
    t.push((mov_rr::<S> as Handler as usize, FastForm::MovRR(S)));
    t.push((mov_ri::<S> as Handler as usize, FastForm::MovRI(S)));
    t.push((mov_rm::<S, false> as Handler as usize, FastForm::MovRM(S)));
    t.push((mov_rm::<S, true> as Handler as usize, FastForm::MovRM(S)));
    t.push((mov_mr::<S, false> as Handler as usize, FastForm::MovMR(S)));
    t.push((mov_mr::<S, true> as Handler as usize, FastForm::MovMR(S)));
    t.push((mov_mi::<S, false> as Handler as usize, FastForm::MovMI(S)));
    t.push((mov_mi::<S, true> as Handler as usize, FastForm::MovMI(S)));
    t.push((inc_r::<S> as Handler as usize, FastForm::Inc(S)));
    {
        use shift_rotate::kind as sk;
        t.push((
            shift_ri::<{ sk::SHL }, S> as Handler as usize,
            FastForm::ShiftRI { k: sk::SHL, s: S },
        ));
        t.push((
            shift_ri::<{ sk::SAL }, S> as Handler as usize,
            FastForm::ShiftRI { k: sk::SAL, s: S },
        ));
        t.push((
            shift_ri::<{ sk::SHR }, S> as Handler as usize,
            FastForm::ShiftRI { k: sk::SHR, s: S },
        ));
        t.push((
            shift_ri::<{ sk::SAR }, S> as Handler as usize,
            FastForm::ShiftRI { k: sk::SAR, s: S },
        ));
    }
    t.push((dec_r::<S> as Handler as usize, FastForm::Dec(S)));
}

/// Which [`FastForm`] handler `h` is. Recognised by address, taken here where `specialise`
/// takes it: a handler instantiated elsewhere (another codegen unit) is simply not
/// recognised and runs as a call, which is always correct.
pub(crate) fn fast_form(h: Handler) -> Option<FastForm> {
    static TABLE: std::sync::OnceLock<Vec<(usize, FastForm)>> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = Vec::new();
        push_sized::<1>(&mut t);
        push_sized::<2>(&mut t);
        push_sized::<4>(&mut t);
        push_sized::<8>(&mut t);
        t.push((lea_r::<4> as Handler as usize, FastForm::Lea(4)));
        t.push((lea_r::<8> as Handler as usize, FastForm::Lea(8)));
        t.push((ret32 as Handler as usize, FastForm::Ret32));
        t.push((call_rel32_op as Handler as usize, FastForm::Call32));
        t.push((nop_op as Handler as usize, FastForm::Nop));
        t.push((cld_op as Handler as usize, FastForm::Cld));
        t.push((std_op as Handler as usize, FastForm::Std));
        t.push((lods_op as Handler as usize, FastForm::Lods));
        t.push((stos_op as Handler as usize, FastForm::Stos));
        t.push((movs_op as Handler as usize, FastForm::Movs));

        t.push((call_rel32_sb as Handler as usize, FastForm::Call32Sb));
        for h in JCC32 {
            t.push((h as usize, FastForm::Jcc32));
        }
        t
    });
    let a = h as usize;
    t.iter().find(|(p, _)| *p == a).map(|(_, f)| *f)
}
