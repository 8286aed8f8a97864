//! Tier 1 against tier 0: generated instruction sequences (straight-line and looping) and
//! self-modifying code run from identical states in tier 0 alone, with the JIT forced for
//! every block, and with the JIT compiling hot blocks (tiers mixed within one run). Registers,
//! RIP, RFLAGS, the instruction count, the run's exit and all memory must agree.
//!
//! `VIREO_JIT_DIFF_CASES=5000 VIREO_JIT_DIFF_SEED=9 cargo test --release -p translator --test jit_vs_interp`

use iced_x86::BlockEncoderOptions;
use iced_x86::code_asm::*;
use translator::state::{Segment, TableReg, attr, cr0, sreg};
use translator::{Cpu, CpuBus, JitMode, NullBus, PhysMem, RunExit};

const CODE: u64 = 0x1000;
const DATA: u64 = 0x10000;
const MEM: usize = 1 << 20;
/// `machine`'s `limit` for data segments with 4 GiB limits but base 0x40.
const OFFSET_BASES: u32 = 0xFFFF_FFFE;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// 32-bit flat protected mode, no IDT (an exception ends in shutdown, the same in both tiers).
/// `limit`: the byte-granular limit of the data segments (4 GiB when `None`; all ones: a
/// 16-bit stack segment instead; [`OFFSET_BASES`]: DS, ES and SS at base 0x40 with 4 GiB
/// limits instead; below `DATA`: the limit of CS instead).
fn machine(code: &[u8], regs: &[u64; 8], data: &[u8], mode: JitMode, limit: Option<u32>) -> Cpu {
    let mut mem = PhysMem::new(MEM);
    mem.as_mut_slice()[CODE as usize..CODE as usize + code.len()].copy_from_slice(code);
    mem.as_mut_slice()[DATA as usize..DATA as usize + data.len()].copy_from_slice(data);
    let mut cpu = Cpu::new(mem);
    cpu.jit.mode = mode;
    // Auto with a low threshold: blocks switch tiers in the middle of a run.
    cpu.jit.threshold = 3;
    cpu.cr0 |= cr0::PE;
    for s in 0..6 {
        cpu.segs[s] = Segment::flat32(if s == sreg::CS { 8 } else { 0x10 }, s == sreg::CS);
    }
    // FS (only used by segment-override forms) is offset, so reading through the wrong
    // segment shows.
    cpu.segs[sreg::FS].base = 0x100;
    match limit {
        // A 16-bit stack segment: SS.B clear.
        Some(0xFFFF_FFFF) => cpu.segs[sreg::SS].attr &= !attr::DB,
        // Flat-limit segments the JIT may not take for base 0 (it must check them).
        Some(OFFSET_BASES) => {
            for s in [sreg::ES, sreg::SS, sreg::DS] {
                cpu.segs[s].base = 0x40;
            }
        }
        // A code segment that ends inside the code: branches, calls and fetches beyond it
        // fault (#GP).
        Some(l) if l < DATA as u32 => {
            cpu.segs[sreg::CS].limit = l;
            cpu.segs[sreg::CS].attr &= !attr::G;
        }
        Some(l) => {
            for s in [sreg::ES, sreg::SS, sreg::DS] {
                cpu.segs[s].limit = l;
                cpu.segs[s].attr &= !attr::G;
            }
        }
        None => {}
    }
    cpu.idtr.limit = 0;
    cpu.rip = CODE;
    cpu.regs[..8].copy_from_slice(regs);
    cpu.regs[4] = 0x8000;
    cpu.regs[5] = DATA;
    cpu
}

#[derive(Debug, PartialEq, Eq)]
struct State {
    exits: Vec<RunExit>,
    regs: [u64; 16],
    rip: u64,
    rflags: u64,
    icount: u64,
}

/// Run to HLT, shutdown or the budget, in two slices (the second one odd-sized, so blocks
/// are cut short by the budget too).
fn run(cpu: &mut Cpu) -> State {
    let mut exits = vec![cpu.run(&mut NullBus, 3000)];
    if exits[0] == RunExit::Budget {
        exits.push(cpu.run(&mut NullBus, 777));
    }
    State {
        exits,
        regs: cpu.regs,
        rip: cpu.rip,
        rflags: cpu.rflags(),
        icount: cpu.icount,
    }
}

/// Run `code` in the three configurations and compare; returns the JIT-forced CPU.
fn compare(what: &str, code: &[u8], regs: &[u64; 8], data: &[u8], limit: Option<u32>) -> Cpu {
    let mut t0 = machine(code, regs, data, JitMode::Off, limit);
    let s0 = run(&mut t0);
    let mut out = None;
    for mode in [JitMode::Always, JitMode::Auto] {
        let mut t1 = machine(code, regs, data, mode, limit);
        let s1 = run(&mut t1);
        assert_eq!(
            s0, s1,
            "{what}: {mode:?} differs from tier 0; code {code:02x?}"
        );
        assert!(
            t0.mem.as_slice() == t1.mem.as_slice(),
            "{what}: {mode:?}: memory differs from tier 0; code {code:02x?}"
        );
        if mode == JitMode::Always {
            out = Some(t1);
        }
    }
    out.expect("the forced run")
}

/// Run the program, then shrink CS to `cs_limit` and run it again from the start: blocks
/// translated (and compiled) under the larger limit must now fault where the limit says.
fn compare_shrinking_cs(case: u64, code: &[u8], regs: &[u64; 8], data: &[u8], cs_limit: u32) {
    let go = |mode| {
        let mut cpu = machine(code, regs, data, mode, None);
        let first = run(&mut cpu);
        cpu.segs[sreg::CS].limit = cs_limit;
        cpu.segs[sreg::CS].attr &= !attr::G;
        cpu.rip = CODE;
        cpu.regs[..8].copy_from_slice(regs);
        cpu.regs[4] = 0x8000;
        cpu.regs[5] = DATA;
        cpu.halted = false;
        let second = run(&mut cpu);
        (first, second, cpu)
    };
    let (a1, a2, t0) = go(JitMode::Off);
    for mode in [JitMode::Always, JitMode::Auto] {
        let (b1, b2, t1) = go(mode);
        assert_eq!(
            (&a1, &a2),
            (&b1, &b2),
            "case {case}, CS shrunk to {cs_limit:#x}: {mode:?}"
        );
        assert!(
            t0.mem.as_slice() == t1.mem.as_slice(),
            "case {case}: memory"
        );
    }
}

const R32: [AsmRegister32; 6] = [eax, ebx, ecx, edx, esi, edi];
const R16: [AsmRegister16; 6] = [ax, bx, cx, dx, si, di];
const R8: [AsmRegister8; 8] = [al, bl, cl, dl, ah, bh, ch, dh];

/// One random instruction (or a short forward branch around one). `avoid` is a register the
/// generated code must not write (a loop counter).
fn random_insn(
    a: &mut CodeAssembler,
    rng: &mut Rng,
    avoid: Option<AsmRegister32>,
) -> Result<(), IcedError> {
    let dst32 = loop {
        let r = rng.pick(&R32);
        if Some(r) != avoid {
            break r;
        }
    };
    let idx = R32.iter().position(|r| *r == dst32).unwrap_or(0);
    let dst16 = R16[idx];
    // Byte registers: only the low byte of the destination (AH-BH alias other registers).
    let dst8 = [al, bl, cl, dl, ah, bh][idx.min(3)];
    let src32 = rng.pick(&R32);
    let src16 = rng.pick(&R16);
    let src8 = rng.pick(&R8);
    let imm = match rng.below(4) {
        0 => rng.below(4) as u32,
        1 => 0xFFFF_FFFF - rng.below(4) as u32,
        2 => 0x7FFF_FFFF + rng.below(3) as u32,
        _ => rng.next() as u32,
    };
    let disp = (rng.below(0x100) * 4) as i32;
    let mem32 = dword_ptr(ebp + disp);
    match rng.below(38) {
        25..=33 => flag_consumer_insn(a, rng, avoid),
        34..=37 => frame_and_string_insn(a, rng, avoid),
        0 => a.mov(dst32, src32),
        1 => a.mov(dst32, imm),
        2 => match rng.below(9) {
            0 => a.add(dst32, src32),
            1 => a.sub(dst32, src32),
            2 => a.and(dst32, src32),
            3 => a.or(dst32, src32),
            4 => a.xor(dst32, src32),
            5 => a.cmp(dst32, src32),
            6 => a.test(dst32, src32),
            7 => a.adc(dst32, src32),
            _ => a.sbb(dst32, src32),
        },
        3 => match rng.below(8) {
            0 => a.add(dst32, imm as i32),
            1 => a.sub(dst32, imm as i32),
            2 => a.and(dst32, imm as i32),
            3 => a.or(dst32, imm as i32),
            4 => a.xor(dst32, imm as i32),
            5 => a.cmp(dst32, imm as i32),
            6 => a.test(dst32, imm),
            _ => a.adc(dst32, imm as i32),
        },
        4 => match rng.below(6) {
            0 => a.add(dst16, src16),
            1 => a.sub(dst16, imm & 0xFFFF),
            2 => a.cmp(dst16, src16),
            3 => a.xor(dst16, imm & 0xFFFF),
            4 => a.mov(dst16, src16),
            _ => a.mov(dst16, imm & 0xFFFF),
        },
        5 if idx < 4 => match rng.below(6) {
            0 => a.add(dst8, src8),
            1 => a.sub(dst8, (imm & 0xFF) as i32),
            2 => a.cmp(dst8, src8),
            3 => a.and(dst8, (imm & 0xFF) as i32),
            4 => a.mov(dst8, src8),
            _ => a.mov(dst8, imm & 0xFF),
        },
        6 => match rng.below(5) {
            0 => a.inc(dst32),
            1 => a.dec(dst32),
            2 => a.inc(dst16),
            3 => a.bswap(dst32),
            _ => a.dec(dst16),
        },
        7 => {
            let scale = rng.pick(&[1, 2, 4, 8]);
            a.lea(dst32, dword_ptr(src32 + rng.pick(&R32) * scale + disp))
        }
        8 => match rng.below(7) {
            0 => a.shl(dst32, imm & 31),
            1 => a.shr(dst32, imm & 31),
            2 => a.sar(dst16, imm & 15),
            // Counts up to 31 on narrow operands (beyond the width: tier 0's rules).
            3 if idx < 4 => a.shl(dst8, imm & 31),
            4 => a.shr(dst16, imm & 31),
            5 => a.sar(dst16, imm & 31),
            _ => a.rol(dst32, imm & 31),
        },
        9 => a.mov(mem32, src32),
        10 => a.mov(dst32, mem32),
        11 => match rng.below(11) {
            0 => a.add(mem32, src32),
            1 => a.cmp(mem32, imm as i32),
            2 => a.and(mem32, imm as i32),
            3 => a.xor(mem32, src32),
            4 => a.sub(word_ptr(ebp + disp), src16),
            // Shifts of memory by an immediate (0 included) and by CL (any count).
            5 => a.shl(mem32, imm & 31),
            6 => a.shr(mem32, cl),
            7 => a.sar(word_ptr(ebp + disp), imm & 31),
            8 => a.shl(byte_ptr(ebp + disp), cl),
            9 => a.sar(mem32, cl),
            _ => a.test(mem32, src32),
        },
        12 => match rng.below(6) {
            0 => a.sub(dst32, mem32),
            1 => a.add(dst32, mem32),
            2 => a.and(dst32, mem32),
            3 => a.or(dst32, mem32),
            4 => a.xor(dst32, mem32),
            _ => a.cmp(dst32, mem32),
        },
        13 => a.cmovne(dst32, src32),
        14 if idx < 4 => a.setb(dst8),
        15 => {
            // Read the flags (they must be materialised exactly).
            a.pushfd()?;
            a.pop(dst32)
        }
        16 => {
            // A forward branch around one instruction: ends a block on both paths.
            let mut skip = a.create_label();
            match rng.below(6) {
                0 => a.jne(skip)?,
                1 => a.jb(skip)?,
                2 => a.jl(skip)?,
                3 => a.jbe(skip)?,
                4 => a.js(skip)?,
                _ => a.jo(skip)?,
            }
            a.add(dst32, imm as i32)?;
            a.set_label(&mut skip)?;
            a.nop()
        }
        17 => {
            a.push(src32)?;
            a.pop(dst32)
        }
        18 => a.neg(dst32),
        19 => match rng.below(8) {
            0 => a.imul_2(dst32, src32),
            1 => a.imul_3(dst32, src32, imm as i32),
            2 => a.imul_2(dst16, word_ptr(ebp + disp)),
            3 => a.imul_3(dst32, mem32, (imm & 0xFF) as i32 - 0x80),
            4 => a.movzx(dst32, src8),
            5 => a.movsx(dst32, word_ptr(ebp + disp)),
            6 => a.movsx(dst16, byte_ptr(ebp + disp)),
            _ => a.movzx(dst32, byte_ptr(ebp + disp)),
        },
        20 => a.xor(dst32, dst32),
        21 => {
            // Carry-consuming forms after a producer.
            a.cmp(src32, imm as i32)?;
            a.adc(dst32, 0)
        }
        22 => {
            let mut skip = a.create_label();
            a.jmp(skip)?;
            a.int3()?;
            a.set_label(&mut skip)?;
            a.nop()
        }
        23 => {
            // A near call and return (RET imm16 sometimes), each ending a block.
            let mut f = a.create_label();
            let mut after = a.create_label();
            a.call(f)?;
            a.jmp(after)?;
            a.set_label(&mut f)?;
            a.xor(dst32, imm as i32)?;
            match rng.below(3) {
                0 => a.ret_1(4)?,
                _ => a.ret()?,
            }
            a.set_label(&mut after)?;
            a.nop()
        }
        _ => a.inc(mem32),
    }
}

/// The forms tier 1 compiles inline beyond the basic ALU/MOV set (ADC/SBB, SETcc, CMOVcc,
/// NOT/NEG, INC/DEC of memory, shifts by CL, rotates, one-operand MUL...) in every operand
/// form and size, each often preceded by a flag producer and followed by a flag consumer
/// (ADC, SETcc, Jcc), so the lazy-flags records the JIT leaves are read back in each way.
fn flag_consumer_insn(
    a: &mut CodeAssembler,
    rng: &mut Rng,
    avoid: Option<AsmRegister32>,
) -> Result<(), IcedError> {
    let pick_dst = |rng: &mut Rng| loop {
        let i = rng.below(R32.len() as u64) as usize;
        if Some(R32[i]) != avoid {
            break i;
        }
    };
    let idx = pick_dst(rng);
    let (d32, d16) = (R32[idx], R16[idx]);
    let d8 = [al, bl, cl, dl, ah, bh][idx.min(3)];
    let (s32, s16, s8) = (rng.pick(&R32), rng.pick(&R16), rng.pick(&R8));
    let imm = match rng.below(4) {
        0 => rng.below(3) as u32,
        1 => 0xFFFF_FFFF - rng.below(3) as u32,
        2 => 0x7FFF_FFFF + rng.below(3) as u32,
        _ => rng.next() as u32,
    };
    let disp = (rng.below(0x100) * 4) as i32;
    let (m32, m16, m8) = (
        dword_ptr(ebp + disp),
        word_ptr(ebp + disp),
        byte_ptr(ebp + disp + rng.below(4) as i32),
    );
    // A producer first: the consumer then sees each kind of pending flags.
    match rng.below(8) {
        0 => a.cmp(s32, imm as i32)?,
        1 => a.add(d32, s32)?,
        2 => a.test(s8, s8)?,
        3 => a.inc(d16)?,
        4 => a.dec(m32)?,
        5 => a.shl(d32, 1 + (imm & 7))?,
        6 => a.adc(d32, s32)?,
        _ => {}
    }
    let consumer = rng.below(4);
    match rng.below(12) {
        // Returns through indirect JMPs (register and memory), and an indirect CALL.
        11 => {
            let (mut f, mut after) = (a.create_label(), a.create_label());
            a.call(f)?;
            a.jmp(after)?;
            a.set_label(&mut f)?;
            match rng.below(3) {
                0 => {
                    a.pop(d32)?;
                    a.jmp(d32)?;
                }
                1 => {
                    a.add(esp, 4)?;
                    a.jmp(dword_ptr(esp - 4))?;
                }
                // CALL [ESP]: on to the JMP after the first CALL (both return addresses stay
                // on the stack).
                _ => a.call(dword_ptr(esp))?,
            }
            a.set_label(&mut after)?;
            a.nop()
        }
        // Rotates by an immediate and by CL (they keep SF/ZF/AF/PF of the producer).
        6 => match rng.below(8) {
            0 => a.rol(d32, imm & 31),
            1 => a.ror(d32, imm & 31),
            2 => a.rol(d16, imm & 31),
            3 if idx < 4 => a.ror(d8, imm & 31),
            4 => a.rol(d32, cl),
            5 => a.ror(d16, cl),
            6 if idx < 4 => a.rol(d8, cl),
            _ => a.ror(d32, 1),
        },
        // Shifts by CL: counts of 0, below and beyond the width of narrow operands.
        7 => {
            // A small count first half the time (CL is random otherwise).
            if rng.below(2) == 0 {
                a.mov(cl, rng.below(20) as u32)?;
            }
            match rng.below(7) {
                0 => a.shl(d32, cl),
                1 => a.shr(d32, cl),
                2 => a.sar(d32, cl),
                3 => a.shl(d16, cl),
                4 => a.sar(d16, cl),
                5 if idx < 4 => a.shr(d8, cl),
                _ => a.sal(d32, cl),
            }
        }
        // NOT / NEG / INC / DEC of registers and memory.
        8 => match rng.below(10) {
            0 => a.not(d32),
            1 => a.not(m32),
            2 => a.neg(d16),
            3 => a.neg(m32),
            4 => a.inc(m32),
            5 => a.dec(m16),
            6 => a.inc(m8),
            7 => a.dec(m32),
            8 if idx < 4 => a.not(d8),
            _ => a.neg(m8),
        },
        // One-operand MUL/IMUL (EDX:EAX), from registers and memory.
        9 => match rng.below(6) {
            0 => a.mul(s32),
            1 => a.imul(s32),
            2 => a.mul(m32),
            3 => a.imul(m16),
            4 => a.mul(s16),
            _ => a.imul(m32),
        },
        10 => match rng.below(16) {
            0 => a.nop(),
            1 if rng.below(2) == 0 => a.pause(),
            1 => a.endbr32(),
            2 => a.cwde(),
            3 => a.cdq(),
            4 => a.cbw(),
            5 => a.cwd(),
            // DIV/IDIV: EDX often small enough for a quotient that fits, a zero divisor and
            // overflows sometimes (#DE: shutdown without an IDT, in both tiers).
            6 | 7 => {
                if rng.below(4) != 0 {
                    a.mov(edx, rng.below(3) as u32)?;
                }
                match rng.below(4) {
                    0 => a.div(s32),
                    1 => a.idiv(s32),
                    2 => a.div(m32),
                    _ => a.idiv(m32),
                }
            }
            8 => a.shld(d32, s32, imm & 31),
            9 => a.shrd(d32, s32, cl),
            10 => a.shld(d32, s32, cl),
            11 => a.shrd(d32, s32, imm & 31),
            12 => a.bsf(d32, s32),
            13 => a.bsr(d16, m16),
            14 => a.bsr(d32, m32),
            _ => a.push(m32),
        },
        // ADC/SBB in every form and size.
        0 => match rng.below(12) {
            0 => a.adc(d32, s32),
            1 => a.sbb(d32, s32),
            2 => a.adc(d32, imm as i32),
            3 => a.sbb(d32, imm as i32),
            4 => a.adc(d32, m32),
            5 => a.sbb(m32, s32),
            6 => a.adc(m32, imm as i32),
            7 if idx < 4 => a.sbb(d8, s8),
            8 => a.adc(d16, s16),
            9 => a.sbb(m16, (imm & 0xFFFF) as i32),
            10 => a.adc(m8, (imm & 0xFF) as i32),
            _ => a.sbb(d32, d32),
        },
        // SETcc of every condition, into low and high byte registers.
        1 => {
            let r = rng.pick(&R8);
            match rng.below(16) {
                0 => a.seto(r),
                1 => a.setno(r),
                2 => a.setb(r),
                3 => a.setae(r),
                4 => a.sete(r),
                5 => a.setne(r),
                6 => a.setbe(r),
                7 => a.seta(r),
                8 => a.sets(r),
                9 => a.setns(r),
                10 => a.setp(r),
                11 => a.setnp(r),
                12 => a.setl(r),
                13 => a.setge(r),
                14 => a.setle(r),
                _ => a.setg(r),
            }
        }
        // CMOVcc from registers and memory, 16 and 32 bits.
        2 => match rng.below(8) {
            0 => a.cmovb(d32, m32),
            1 => a.cmovae(d32, m32),
            2 => a.cmove(d32, s32),
            3 => a.cmovl(d32, s32),
            4 => a.cmovg(d16, s16),
            5 => a.cmovbe(d16, m16),
            6 => a.cmovs(d32, s32),
            _ => a.cmovo(d32, s32),
        },
        // Carry chains: ADD/SUB then ADC/SBB then a CF consumer.
        3 => {
            a.add(d32, s32)?;
            a.adc(s32, imm as i32)?;
            a.sbb(d32, m32)?;
            a.setb(s8)
        }
        4 => {
            a.sub(d32, imm as i32)?;
            a.sbb(d32, s32)?;
            let mut skip = a.create_label();
            match rng.below(3) {
                0 => a.jb(skip)?,
                1 => a.jae(skip)?,
                _ => a.jl(skip)?,
            }
            a.adc(d32, 1)?;
            a.set_label(&mut skip)?;
            a.nop()
        }
        _ => {
            // A consumer of every kind after each of the producers above.
            match rng.below(4) {
                0 => a.adc(d32, 0),
                1 => a.sbb(d32, d32),
                2 => a.cmovne(d32, s32),
                _ => a.setle(d8),
            }
        }
    }?;
    // Then, often, a reader of every flag (OF and AF included).
    match consumer {
        0 => {
            a.pushfd()?;
            a.pop(d32)
        }
        1 => a.seto(s8),
        2 => a.setl(d8),
        _ => Ok(()),
    }
}

/// CLD/STD, LEAVE and single (non-REP) LODS/STOS/MOVS of each size, with DF set either way,
/// pointers into the data area (past a data segment limit in the limited cases) and frames
/// whose LEAVE loads from anywhere in the data area.
fn frame_and_string_insn(
    a: &mut CodeAssembler,
    rng: &mut Rng,
    avoid: Option<AsmRegister32>,
) -> Result<(), IcedError> {
    let disp = (rng.below(0x100) * 4) as i32 + rng.below(4) as i32;
    let scratch = loop {
        let r = rng.pick(&[eax, ebx, ecx, edx, edi]);
        if Some(r) != avoid {
            break r;
        }
    };
    match rng.below(4) {
        0 => {
            // A frame as compilers emit it.
            a.push(ebp)?;
            a.mov(ebp, esp)?;
            a.sub(esp, (rng.below(4) * 4) as i32)?;
            a.mov(dword_ptr(ebp - 4), scratch)?;
            a.leave()
        }
        1 => {
            // LEAVE from a frame pointer into the data area (it may cross the data limit:
            // #SS); ESP and EBP are restored after it.
            a.mov(scratch, esp)?;
            a.push(ebp)?;
            a.lea(ebp, dword_ptr(ebp + disp))?;
            a.leave()?;
            a.mov(esp, scratch)?;
            a.mov(ebp, dword_ptr(esp - 4))
        }
        2 => {
            if rng.below(2) == 0 {
                a.std()?;
            } else {
                a.cld()?;
            }
            if rng.below(3) == 0 {
                a.pushfd()?;
                a.pop(scratch)?;
            }
            Ok(())
        }
        _ => {
            if rng.below(2) == 0 {
                a.std()?;
            } else {
                a.cld()?;
            }
            a.lea(edi, dword_ptr(ebp + disp))?;
            let uses_esi = avoid != Some(esi);
            if uses_esi {
                a.lea(esi, dword_ptr(ebp + (rng.below(0x400) as i32)))?;
            }
            for _ in 0..1 + rng.below(3) {
                match (rng.below(4), rng.below(3), uses_esi) {
                    // FS is never limited here, DS/ES may be; 0x67: 16-bit addressing
                    // (called).
                    (3, 0, true) => a.db(&[0x64, 0xAC])?,
                    (3, 1, true) => a.db(&[0x66, 0x64, 0xA5])?,
                    (3, _, _) => a.db(&[0x67, 0xAA])?,
                    (0, 0, true) => a.lodsb()?,
                    (0, 1, true) => a.lodsw()?,
                    (0, _, true) => a.lodsd()?,
                    (1, 0, true) => a.movsb()?,
                    (1, 1, true) => a.movsw()?,
                    (1, _, true) => a.movsd()?,
                    (_, 0, _) => a.stosb()?,
                    (_, 1, _) => a.stosw()?,
                    _ => a.stosd()?,
                }
            }
            // Sometimes read DI/SI back through a flag consumer path.
            a.add(scratch, edi)
        }
    }
}

#[test]
fn carry_and_condition_forms_compile_inline() {
    // Each of these is compiled inline (only the HLT the CALL reaches is called, and the zero
    // bytes after it decode as more inline ADDs), and the results agree with tier 0.
    let mut a = CodeAssembler::new(32).expect("32-bit assembler");
    let body = |a: &mut CodeAssembler| -> Result<(), IcedError> {
        a.add(eax, ebx)?;
        a.adc(ecx, edx)?;
        a.sbb(esi, 7)?;
        a.adc(dword_ptr(ebp + 8), eax)?;
        a.sbb(edi, dword_ptr(ebp + 12))?;
        a.setb(al)?;
        a.seta(bh)?;
        a.cmovae(edx, dword_ptr(ebp + 16))?;
        a.cmovl(si, di)?;
        a.rol(eax, 7)?;
        a.ror(bx, cl)?;
        a.shl(edx, cl)?;
        a.sar(si, cl)?;
        a.not(dword_ptr(ebp + 20))?;
        a.neg(ecx)?;
        a.inc(word_ptr(ebp + 24))?;
        a.dec(byte_ptr(ebp + 26))?;
        a.mul(ecx)?;
        a.imul(dword_ptr(ebp + 4))?;
        a.nop()?;
        a.endbr32()?;
        a.cdq()?;
        a.cwde()?;
        a.mov(ecx, 7)?;
        a.xor(edx, edx)?;
        a.div(ecx)?;
        a.shld(eax, ebx, 3)?;
        a.shrd(edx, esi, cl)?;
        a.bsf(edi, dword_ptr(ebp + 28))?;
        a.push(dword_ptr(ebp + 32))?;
        a.std()?;
        a.cld()?;
        a.std()?;
        a.push(ebp)?;
        a.mov(ebp, esp)?;
        a.leave()?;
        a.lea(esi, dword_ptr(ebp + 40))?;
        a.lea(edi, dword_ptr(ebp + 48))?;
        a.lodsd()?;
        a.movsw()?;
        a.cld()?;
        a.stosb()?;
        a.movsd()?;
        a.lodsb()?;
        // CALL rel32 to another page: a HLT (then zero bytes: more inline ADDs).
        let mut far = a.create_label();
        a.call(far)?;
        a.db(&[0x90; 0x1000])?;
        a.set_label(&mut far)?;
        a.hlt()
    };
    body(&mut a).expect("asm");
    let code = a.assemble(CODE).expect("assemble");
    let regs = [0xFFFF_FFF0, 0x20, 3, 0xFFFF_FFFF, 0, 0, 9, 2];
    let data: Vec<u8> = (0..64).map(|i| i * 37).collect();
    let t1 = compare("carry forms", &code, &regs, &data, None);
    let st = t1.jit.stats;
    assert!(st.called_ops == 1 && st.inline_ops >= 32, "{st:?}");
}

#[test]
fn indirect_jumps_and_calls_agree() {
    // JMP/CALL through registers and memory in a loop (compiled after a few rounds), also with
    // a CS limit that cuts off each target (#GP), a 16-bit stack (the handler path) and a data
    // limit below the memory operands.
    let code = assemble_with_labels(3, |a, l, addr| {
        let (t_a, t_b, t_f) = (addr[0] as u32, addr[1] as u32, addr[2] as u32);
        a.mov(esi, 12)?;
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.mov(eax, t_a)?;
        a.jmp(eax)?;
        a.int3()?;
        a.set_label(&mut l[0])?;
        a.mov(dword_ptr(ebp + 0x40), t_b)?;
        a.jmp(dword_ptr(ebp + 0x40))?;
        a.int3()?;
        a.set_label(&mut l[1])?;
        a.mov(ebx, t_f)?;
        a.call(ebx)?;
        a.mov(dword_ptr(ebp + 0x44), t_f)?;
        a.call(dword_ptr(ebp + 0x44))?;
        a.add(edi, esp)?;
        a.dec(esi)?;
        a.jne(top)?;
        a.hlt()?;
        a.set_label(&mut l[2])?;
        a.add(edx, dword_ptr(esp))?;
        a.ret()
    });
    let regs = [1, 2, 3, 4, 0, 0, 5, 6];
    let t1 = compare("indirect", &code, &regs, &[], None);
    assert_eq!(t1.regs[7], 6 + 12 * 0x8000, "EDI sums ESP after each round");
    // The branches ran inline: the HLT is the only handler call compiled.
    assert_eq!(t1.jit.stats.called_ops, 1, "{:?}", t1.jit.stats);
    let mut limits = vec![Some(0xFFFF_FFFF), Some(DATA as u32 + 0x42)];
    limits.extend(
        (0..code.len() as u32)
            .step_by(3)
            .map(|o| Some(CODE as u32 + o)),
    );
    for limit in limits {
        compare(
            &format!("indirect, limit {limit:x?}"),
            &code,
            &regs,
            &[],
            limit,
        );
    }
}

fn random_regs(rng: &mut Rng) -> [u64; 8] {
    let mut r = [0u64; 8];
    for x in r.iter_mut() {
        *x = rng.next() & 0xFFFF_FFFF;
    }
    r
}

fn random_data(rng: &mut Rng) -> Vec<u8> {
    (0..0x1000).map(|_| rng.next() as u8).collect()
}

#[test]
fn generated_sequences_agree() {
    let cases = env_num("VIREO_JIT_DIFF_CASES", 1500);
    let mut rng = Rng(env_num("VIREO_JIT_DIFF_SEED", 0x0717_5EED) | 1);
    let mut inline_ops = 0;
    for case in 0..cases {
        let looping = case % 2 == 1;
        let mut a = CodeAssembler::new(32).expect("32-bit assembler");
        let counter = if looping && rng.below(2) == 0 {
            Some(esi)
        } else {
            None
        };
        let mut top = a.create_label();
        if looping {
            match counter {
                Some(r) => a.mov(r, 5 + rng.below(40) as u32),
                None => a.mov(dword_ptr(ebp + 0x800), 5 + rng.below(40) as u32),
            }
            .expect("asm");
            a.set_label(&mut top).expect("asm");
        }
        for _ in 0..1 + rng.below(30) {
            random_insn(&mut a, &mut rng, counter).expect("asm");
        }
        if looping {
            match counter {
                Some(r) => a.dec(r),
                None => a.dec(dword_ptr(ebp + 0x800)),
            }
            .expect("asm");
            a.jne(top).expect("asm");
        }
        a.hlt().expect("asm");
        let code = a.assemble(CODE).expect("assemble");
        let regs = random_regs(&mut rng);
        let data = random_data(&mut rng);
        // Every third case: data segments that end inside the data area, so some accesses
        // fault (#GP/#SS → shutdown, no IDT) in the middle of a compiled block.
        let limit = (case % 3 == 2).then_some(DATA as u32 + 0x200 + rng.below(0x200) as u32);
        let mut t1 = compare(&format!("case {case}"), &code, &regs, &data, limit);
        if case % 7 == 6 {
            let cs_limit = CODE as u32 + rng.below(code.len() as u64) as u32;
            compare(
                &format!("case {case}, CS limit {cs_limit:#x}"),
                &code,
                &regs,
                &data,
                Some(cs_limit),
            );
        }
        let cs_limit = CODE as u32 + rng.below(code.len() as u64) as u32;
        compare_shrinking_cs(case, &code, &regs, &data, cs_limit);
        if case % 5 == 1 {
            // DS, ES and SS with a base: compiled code that took them for zero-based must
            // notice and be compiled again with the full checks.
            compare(
                &format!("case {case}, based data segments"),
                &code,
                &regs,
                &data,
                Some(OFFSET_BASES),
            );
        }
        if case % 5 == 4 {
            // The same program on a 16-bit stack (the 32-bit stack paths must step aside).
            t1 = compare(
                &format!("case {case}, 16-bit stack"),
                &code,
                &regs,
                &data,
                Some(0xFFFF_FFFF),
            );
        }
        inline_ops += t1.jit.stats.inline_ops;
    }
    // The JIT really compiled code inline (not only handler calls).
    assert!(inline_ops > cases, "only {inline_ops} ops compiled inline");
}

/// Assemble until `f`, which gets the addresses of its labels from the previous pass, gives
/// the same addresses again.
fn assemble_with_labels(
    n: usize,
    f: impl Fn(&mut CodeAssembler, &mut [CodeLabel], &[u64]) -> Result<(), IcedError>,
) -> Vec<u8> {
    let mut addrs = vec![0x0FFF_FFF0u64; n];
    // Branch encodings may shrink once the targets are known: a few passes settle them.
    for _ in 0..5 {
        let mut a = CodeAssembler::new(32).expect("32-bit assembler");
        let mut labels: Vec<CodeLabel> = (0..n).map(|_| a.create_label()).collect();
        f(&mut a, &mut labels, &addrs).expect("asm");
        let r = a
            .assemble_options(CODE, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)
            .expect("assemble");
        let new: Vec<u64> = labels
            .iter()
            .map(|l| r.label_ip(l).expect("label"))
            .collect();
        if new == addrs {
            return r.inner.code_buffer;
        }
        addrs = new;
    }
    panic!("label addresses did not settle");
}

#[test]
fn self_modifying_code_agrees() {
    // A loop that bumps the immediate of an instruction it already ran (in a compiled block).
    let bump = assemble_with_labels(1, |a, l, addr| {
        a.mov(esi, 20)?;
        a.set_label(&mut l[0])?;
        a.mov(eax, 0x100)?;
        a.add(ebx, eax)?;
        a.inc(dword_ptr(addr[0] as u32 + 1))?;
        a.dec(esi)?;
        a.jne(l[0])?;
        a.hlt()
    });
    let t1 = compare("bump an immediate", &bump, &[0; 8], &[], None);
    assert_eq!(t1.regs[3], (0..20).map(|i| 0x100 + i).sum::<u64>());

    // A store into the very next instruction of the same block: NOP becomes INC EAX.
    let next = assemble_with_labels(1, |a, l, addr| {
        a.mov(byte_ptr(addr[0] as u32), 0x40)?;
        a.set_label(&mut l[0])?;
        a.nop()?;
        a.hlt()
    });
    let t1 = compare("patch the next instruction", &next, &[0; 8], &[], None);
    assert_eq!(t1.regs[0], 1);

    // A loop whose body is rewritten between passes (the loop branch's block is compiled).
    let rewrite = assemble_with_labels(1, |a, l, addr| {
        a.mov(ecx, 6)?;
        a.set_label(&mut l[0])?;
        a.inc(eax)?; // 0x40; rewritten to DEC EAX (0x48) and back
        a.xor(byte_ptr(addr[0] as u32), 0x08)?;
        a.dec(ecx)?;
        a.jne(l[0])?;
        a.hlt()
    });
    let t1 = compare("rewrite a loop body", &rewrite, &[0; 8], &[], None);
    assert_eq!(t1.regs[0], 0);

    // A jump into the middle of an instruction: the immediate's bytes are INC EAX x4.
    let middle = assemble_with_labels(1, |a, l, addr| {
        let mut skip = a.create_label();
        a.jmp(addr[0] + 1)?;
        a.set_label(&mut l[0])?;
        a.mov(ebx, 0x4040_4040)?;
        a.jmp(skip)?;
        a.set_label(&mut skip)?;
        a.hlt()
    });
    let t1 = compare("jump into an instruction", &middle, &[0; 8], &[], None);
    assert_eq!((t1.regs[0], t1.regs[3]), (4, 0));

    // Random stores of random bytes into the code that follows them.
    let mut rng = Rng(env_num("VIREO_JIT_DIFF_SEED", 0x0717_5EED) | 1);
    for case in 0..env_num("VIREO_JIT_DIFF_CASES", 300) / 2 {
        let patches: Vec<(u64, u8)> = (0..4).map(|_| (rng.below(64), rng.next() as u8)).collect();
        let body = Rng(rng.next() | 1);
        let code = assemble_with_labels(1, |a, l, addr| {
            let mut b = Rng(body.0);
            a.mov(esi, 4)?;
            let mut top = a.create_label();
            a.set_label(&mut top)?;
            for (i, (off, byte)) in patches.iter().enumerate() {
                a.mov(byte_ptr(addr[0] as u32 + *off as u32), *byte as u32)?;
                for _ in 0..2 + i {
                    random_insn(a, &mut b, Some(esi))?;
                }
            }
            a.dec(esi)?;
            a.jne(top)?;
            a.set_label(&mut l[0])?;
            for _ in 0..20 {
                random_insn(a, &mut b, Some(esi))?;
            }
            a.hlt()
        });
        let regs = random_regs(&mut rng);
        let data = random_data(&mut rng);
        compare(&format!("random SMC {case}"), &code, &regs, &data, None);
    }
}

#[test]
fn a_tiny_code_cache_is_flushed_and_stays_bounded() {
    // Many distinct blocks through a cache that holds only a few of them.
    let mut a = CodeAssembler::new(32).expect("32-bit assembler");
    a.mov(esi, 50).expect("asm");
    let mut top = a.create_label();
    a.set_label(&mut top).expect("asm");
    let mut rng = Rng(5);
    for _ in 0..200 {
        random_insn(&mut a, &mut rng, Some(esi)).expect("asm");
        // (A JMP would be followed by the block builder; RDTSC starts a block.)
        a.rdtsc().expect("asm");
    }
    a.dec(esi).expect("asm");
    a.jne(top).expect("asm");
    a.hlt().expect("asm");
    let code = a.assemble(CODE).expect("assemble");
    let regs = [1, 2, 3, 4, 0, 0, 5, 6];
    let mut t0 = machine(&code, &regs, &[], JitMode::Off, None);
    let s0 = run(&mut t0);
    let mut t1 = machine(&code, &regs, &[], JitMode::Always, None);
    t1.jit.cache_bytes = 8192;
    let s1 = run(&mut t1);
    assert_eq!(s0, s1);
    assert!(t0.mem.as_slice() == t1.mem.as_slice());
    assert!(t1.jit.stats.flushes > 10, "{:?}", t1.jit.stats);
    assert!(t1.jit.cache_used() <= 8192);
}

#[test]
fn user_accesses_never_hit_supervisor_entries_of_the_fast_tlb() {
    // Paging on: everything identity-mapped user-accessible, except the supervisor data page.
    let mut a = CodeAssembler::new(32).expect("32-bit assembler");
    a.mov(eax, dword_ptr(DATA as u32)).expect("asm");
    a.mov(dword_ptr(DATA as u32 + 4), eax).expect("asm");
    a.hlt().expect("asm");
    let kernel = a.assemble(CODE).expect("assemble");
    let mut a = CodeAssembler::new(32).expect("32-bit assembler");
    a.mov(ebx, dword_ptr(DATA as u32)).expect("asm");
    a.mov(dword_ptr(DATA as u32 + 8), ebx).expect("asm");
    a.hlt().expect("asm");
    let user = a.assemble(CODE + 0x100).expect("assemble");
    let mut code = kernel.clone();
    code.resize(0x100, 0x90);
    code.extend_from_slice(&user);
    let go = |mode| {
        let mut cpu = machine(&code, &[0; 8], &[0x5A; 16], mode, None);
        let (pd, pt) = (0x20000usize, 0x21000usize);
        let m = cpu.mem.as_mut_slice();
        m[pd..pd + 4].copy_from_slice(&(pt as u32 | 7).to_le_bytes());
        for i in 0..256u32 {
            let flags = if i << 12 == DATA as u32 { 3 } else { 7 };
            m[pt + 4 * i as usize..pt + 4 * i as usize + 4]
                .copy_from_slice(&((i << 12) | flags).to_le_bytes());
        }
        cpu.cr3 = pd as u64;
        cpu.cr0 |= cr0::PG;
        cpu.flush_translations();
        let kernel = run(&mut cpu);
        // Now at CPL 3 over the same (cached) translations.
        cpu.cpl = 3;
        cpu.halted = false;
        cpu.rip = CODE + 0x100;
        let user = run(&mut cpu);
        (kernel, user, cpu)
    };
    let (kern0, u0, t0) = go(JitMode::Off);
    assert_eq!(
        u0.exits,
        vec![RunExit::Shutdown],
        "tier 0: the user read must fault"
    );
    for mode in [JitMode::Always, JitMode::Auto] {
        let (kern1, u1, t1) = go(mode);
        assert_eq!((&kern0, &u0), (&kern1, &u1), "{mode:?}");
        assert!(t0.mem.as_slice() == t1.mem.as_slice(), "{mode:?}: memory");
    }
}

// --- Direct links between compiled blocks -------------------------------------------------

/// Run `cpu` in slices of the sizes in `slices` (cycled) until HLT or shutdown, recording the
/// state after each slice: budget cuts land inside chains of linked blocks.
fn run_sliced(cpu: &mut Cpu, bus: &mut dyn CpuBus, slices: &[u64]) -> Vec<State> {
    let mut out = Vec::new();
    for &n in slices.iter().cycle().take(20_000) {
        let exit = cpu.run(bus, n);
        out.push(State {
            exits: vec![exit],
            regs: cpu.regs,
            rip: cpu.rip,
            rflags: cpu.rflags(),
            icount: cpu.icount,
        });
        if exit != RunExit::Budget {
            break;
        }
    }
    out
}

/// Main loop at CODE calling `f` (next page) which calls `g` (the page after): every CALL and
/// RET ends a block, so the loop is a chain of small blocks including return targets.
fn call_chain_program() -> Result<Vec<u8>, IcedError> {
    let (f, g) = (CODE + 0x1000, CODE + 0x2000);
    let mut a = CodeAssembler::new(32)?;
    let mut top = a.create_label();
    let mut skip = a.create_label();
    a.mov(esi, 300)?;
    a.set_label(&mut top)?;
    a.call(f)?;
    a.add(edi, eax)?;
    a.test(esi, 3)?;
    a.jnz(skip)?;
    a.call(g)?;
    a.set_label(&mut skip)?;
    a.dec(esi)?;
    a.jnz(top)?;
    a.hlt()?;
    let mut code = a.assemble(CODE)?;
    let mut a = CodeAssembler::new(32)?;
    a.mov(eax, esi)?;
    a.shl(eax, 1)?;
    a.call(g)?;
    a.add(eax, ebx)?;
    a.ret()?;
    code.resize(0x1000, 0xCC);
    code.extend_from_slice(&a.assemble(f)?);
    let mut a = CodeAssembler::new(32)?;
    a.inc(ebx)?;
    a.xor(ebx, esi)?;
    a.ret()?;
    code.resize(0x2000, 0xCC);
    code.extend_from_slice(&a.assemble(g)?);
    Ok(code)
}

/// Nested counted loops over blocks that end in Jcc, JMP and fall-through.
fn nested_loop_program() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(32)?;
    let mut outer = a.create_label();
    let mut inner = a.create_label();
    let mut odd = a.create_label();
    let mut join = a.create_label();
    a.mov(ecx, 40)?;
    a.set_label(&mut outer)?;
    a.mov(edx, 25)?;
    a.set_label(&mut inner)?;
    a.add(eax, edx)?;
    a.test(eax, 1)?;
    a.jnz(odd)?;
    a.add(dword_ptr(DATA as u32), eax)?;
    a.jmp(join)?;
    a.set_label(&mut odd)?;
    a.xor(ebx, eax)?;
    a.set_label(&mut join)?;
    a.dec(edx)?;
    a.jnz(inner)?;
    a.lea(edi, dword_ptr(edi + ecx * 2 + 1))?;
    a.dec(ecx)?;
    a.jnz(outer)?;
    a.hlt()?;
    a.assemble(CODE)
}

#[test]
fn chained_loops_and_call_chains_agree_under_any_budget_cut() {
    let programs = [
        ("call chain", call_chain_program().expect("asm")),
        ("nested loops", nested_loop_program().expect("asm")),
    ];
    let cuts: [&[u64]; 3] = [
        &[1_000_000],
        &[1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 7],
        &[97, 1, 40, 3],
    ];
    for (name, code) in &programs {
        let regs = [1, 2, 3, 4, 0, 0, 5, 6];
        for slices in cuts {
            let mut t0 = machine(code, &regs, &[0; 16], JitMode::Off, None);
            let s0 = run_sliced(&mut t0, &mut NullBus, slices);
            assert_eq!(s0.last().map(|s| s.exits[0]), Some(RunExit::Halted));
            for mode in [JitMode::Always, JitMode::Auto] {
                let mut t1 = machine(code, &regs, &[0; 16], mode, None);
                let s1 = run_sliced(&mut t1, &mut NullBus, slices);
                assert_eq!(s0, s1, "{name}, slices {slices:?}: {mode:?}");
                assert!(t0.mem.as_slice() == t1.mem.as_slice(), "{name}: memory");
                if slices.len() == 1 && mode == JitMode::Always {
                    // The loops ran in host code: hundreds of blocks per dispatcher entry.
                    let st = t1.jit.stats;
                    assert!(st.links > 0, "{name}: {st:?}");
                    // Their back edges stay in one page: static sites, patched.
                    assert!(st.static_links > 0, "{name}: {st:?}");
                    assert!(st.entries * 20 < t1.icount, "{name}: {st:?}, {}", t1.icount);
                }
            }
        }
    }
}

/// A loop head first entered from another block through a register (so the dispatcher put
/// it in the indirect table) is still linked from the loop's own back edge: a block ending
/// in a direct branch leaves a transition its links miss to the dispatcher instead of the
/// table, whose hits the dispatcher never sees. (The back edge is a JMP to code the block
/// holds already, which the block builder does not follow.)
#[test]
fn a_back_edge_is_linked_even_when_its_target_is_in_the_indirect_table() {
    let mut a = CodeAssembler::new(32).expect("asm");
    let (mut head, mut out) = (a.create_label(), a.create_label());
    a.mov(ecx, 5000).expect("asm");
    a.mov(edx, CODE as i32 + 0x40).expect("asm");
    a.jmp(edx).expect("asm");
    a.nops_with_size(0x40 - 12).expect("asm");
    a.set_label(&mut head).expect("asm");
    a.add(eax, ecx).expect("asm");
    a.dec(ecx).expect("asm");
    a.jz(out).expect("asm");
    a.jmp(head).expect("asm");
    a.set_label(&mut out).expect("asm");
    a.hlt().expect("asm");
    let code = a.assemble(CODE).expect("asm");
    assert_eq!(code[0x40], 0x01, "ADD at the head");
    let mut t0 = machine(&code, &[0; 8], &[0; 16], JitMode::Off, None);
    let s0 = run_sliced(&mut t0, &mut NullBus, &[1_000_000]);
    let mut t1 = machine(&code, &[0; 8], &[0; 16], JitMode::Always, None);
    let s1 = run_sliced(&mut t1, &mut NullBus, &[1_000_000]);
    assert_eq!(s0, s1);
    // The back edge is patched once and the loop runs in host code.
    let st = t1.jit.stats;
    assert!(st.static_links >= 1, "{st:?}");
    assert!(st.entries < 10, "{st:?}");
}

/// A loop whose body falls through from one page into the next and jumps back and forth
/// between them: a block goes on across the page boundary and at a JMP's target (on its own
/// page or its second one), so after the entry the loop is one block on two pages that
/// loops back into itself. Whole and in odd budget slices: tier 0's registers, flags and
/// counts.
#[test]
fn blocks_on_two_pages_agree_with_tier_0() {
    let mut a = CodeAssembler::new(32).expect("asm");
    let (mut head, mut back, mut done) = (a.create_label(), a.create_label(), a.create_label());
    a.mov(ecx, 300).expect("asm");
    a.jmp(head).expect("asm");
    a.set_label(&mut back).expect("asm");
    a.add(esi, eax).expect("asm");
    a.dec(ecx).expect("asm");
    a.jz(done).expect("asm");
    a.jmp(head).expect("asm");
    a.set_label(&mut done).expect("asm");
    a.hlt().expect("asm");
    // The head five bytes before the end of the first page (after the 21 bytes above): its
    // third instruction is the second page's first.
    a.nops_with_size(0xFFB - 21).expect("asm");
    a.set_label(&mut head).expect("asm");
    a.add(eax, ecx).expect("asm");
    a.rol(eax, 3).expect("asm");
    a.xor(ebx, eax).expect("asm");
    a.xor(ebx, 0x55).expect("asm");
    a.add(edx, ebx).expect("asm");
    a.jmp(back).expect("asm");
    let code = a.assemble(CODE).expect("asm");
    assert_eq!(
        &code[0xFFB..0xFFD],
        &[0x01, 0xC8],
        "ADD EAX, ECX at the head"
    );
    let regs = [0, 0, 0, 0, 0x8000, 0, 0, 0];
    let t1 = agree_in_slices(&code, &regs, &[&[1, 2, 3, 5, 8, 13, 7], &[97, 1, 40, 3]]);
    // Hundreds of passes in compiled code, a handful of dispatcher entries; the JMP back to
    // the head is a static jump, patched once: compiled code knows which page offset it is
    // at after the JMPs it went on at.
    let st = t1.jit.stats;
    assert!(st.entries < 10, "{st:?}");
    assert!(st.static_links >= 2, "{st:?}");
}

/// Blocks go on past Jcc's whose target is in their page; taken, such a Jcc is a side exit.
/// Its targets here read the flags of the SUB before it (ADC, SBB, PUSHFD), which the
/// fall-through path overwrites at once — so compiled code that kept that SUB's flag
/// record pending on the fall-through must store it on the way out — and the loop's own
/// back edge is a side exit in a block that ends with HLT (no chainable end). Run whole and
/// cut into odd budget slices: registers, flags and instruction counts as tier 0's.
#[test]
fn side_exits_leave_the_flags_and_counts_of_tier_0() {
    let mut a = CodeAssembler::new(32).expect("asm");
    let (mut top, mut low, mut five, mut next) = (
        a.create_label(),
        a.create_label(),
        a.create_label(),
        a.create_label(),
    );
    a.mov(ecx, 600).expect("asm");
    a.xor(edx, edx).expect("asm");
    a.set_label(&mut top).expect("asm");
    a.mov(eax, ecx).expect("asm");
    a.and(eax, 7).expect("asm");
    a.sub(eax, 3).expect("asm");
    a.jb(low).expect("asm");
    a.add(edx, eax).expect("asm");
    a.sub(eax, 2).expect("asm");
    a.je(five).expect("asm");
    a.xor(edx, 0x55).expect("asm");
    a.jmp(next).expect("asm");
    a.set_label(&mut low).expect("asm");
    a.adc(edx, 100).expect("asm");
    a.sbb(ebx, eax).expect("asm");
    a.jmp(next).expect("asm");
    a.set_label(&mut five).expect("asm");
    a.pushfd().expect("asm");
    a.pop(esi).expect("asm");
    a.and(esi, 0x8d5).expect("asm");
    a.add(edx, esi).expect("asm");
    a.set_label(&mut next).expect("asm");
    a.rol(edx, 3).expect("asm");
    a.dec(ecx).expect("asm");
    a.jnz(top).expect("asm");
    a.hlt().expect("asm");
    let code = a.assemble(CODE).expect("asm");
    let regs = [0, 0, 0, 0, 0x8000, 0, 0, 0];
    let t1 = agree_in_slices(&code, &regs, &[&[1, 2, 3, 5, 8, 13, 7], &[29, 4, 11]]);
    // The side exits' targets are in the page: patched sites, not the dispatcher.
    let st = t1.jit.stats;
    assert!(st.static_links >= 3, "{st:?}");
    assert!(st.entries * 20 < t1.icount, "{st:?}, {}", t1.icount);
}

/// Runs `code` (to HLT) in tier 0 and in both JIT modes, whole and cut into each of `cuts`'
/// budget slices, asserting equal states at every slice's end; returns the machine of the
/// whole run with every block compiled.
fn agree_in_slices(code: &[u8], regs: &[u64; 8], cuts: &[&[u64]]) -> Cpu {
    let mut whole = None;
    for slices in std::iter::once(&[1_000_000u64][..]).chain(cuts.iter().copied()) {
        let mut t0 = machine(code, regs, &[0; 16], JitMode::Off, None);
        let s0 = run_sliced(&mut t0, &mut NullBus, slices);
        assert_eq!(s0.last().map(|s| s.exits[0]), Some(RunExit::Halted));
        for mode in [JitMode::Always, JitMode::Auto] {
            let mut t1 = machine(code, regs, &[0; 16], mode, None);
            let s1 = run_sliced(&mut t1, &mut NullBus, slices);
            assert_eq!(s0, s1, "slices {slices:?}: {mode:?}");
            if whole.is_none() && mode == JitMode::Always {
                whole = Some(t1);
            }
        }
    }
    whole.expect("the whole run")
}

/// CMP and TEST of byte and dword registers with immediates and registers, each followed by
/// a Jcc that tests the host flags of the compiled compare directly (its record pending),
/// over a table of edge values: every condition code counted into EDX, as tier 0 does.
#[test]
fn compares_tested_by_jcc_agree_with_tier_0() {
    let mut a = CodeAssembler::new(32).expect("asm");
    let mut top = a.create_label();
    a.mov(esi, DATA as i32).expect("asm");
    a.mov(edi, 48).expect("asm");
    a.xor(edx, edx).expect("asm");
    a.set_label(&mut top).expect("asm");
    a.mov(eax, dword_ptr(esi)).expect("asm");
    a.mov(ebx, dword_ptr(esi + 4)).expect("asm");
    // (cc, form): each compare, then a Jcc over one INC; EDX doubles between them.
    for k in 0..16u32 {
        let mut skip = a.create_label();
        match k % 8 {
            0 => a.cmp(al, 0x80).expect("asm"),
            1 => a.cmp(al, bl).expect("asm"),
            2 => a.test(al, 0x81).expect("asm"),
            3 => a.test(bl, al).expect("asm"),
            4 => a.cmp(eax, 0x7fff_ffff).expect("asm"),
            5 => a.cmp(eax, ebx).expect("asm"),
            6 => a.test(eax, 0x8000_0001u32 as i32).expect("asm"),
            _ => a.test(ebx, eax).expect("asm"),
        }
        match k {
            0 | 8 => a.jb(skip),
            1 | 9 => a.jbe(skip),
            2 | 10 => a.jl(skip),
            3 | 11 => a.jle(skip),
            4 | 12 => a.js(skip),
            5 | 13 => a.jo(skip),
            6 | 14 => a.jp(skip),
            _ => a.je(skip),
        }
        .expect("asm");
        a.inc(edx).expect("asm");
        a.set_label(&mut skip).expect("asm");
        a.rol(edx, 1).expect("asm");
    }
    a.add(esi, 8).expect("asm");
    a.dec(edi).expect("asm");
    a.jnz(top).expect("asm");
    a.hlt().expect("asm");
    let code = a.assemble(CODE).expect("asm");
    let edges = [
        0u32,
        1,
        0x7f,
        0x80,
        0x81,
        0xff,
        0x100,
        0x7fff_ffff,
        0x8000_0000,
        0x8000_0001,
        0xffff_ffff,
        0x1234_5678,
    ];
    let mut data = Vec::new();
    let mut rng = Rng(0x5eed);
    for i in 0..48 {
        let (x, y) = if i < 24 {
            (edges[i % edges.len()], edges[(i * 7 + 3) % edges.len()])
        } else {
            (rng.next() as u32, rng.next() as u32)
        };
        data.extend_from_slice(&x.to_le_bytes());
        data.extend_from_slice(&y.to_le_bytes());
    }
    let regs = [0; 8];
    let mut t0 = machine(&code, &regs, &data, JitMode::Off, None);
    let s0 = run_sliced(&mut t0, &mut NullBus, &[1_000_000]);
    assert_eq!(s0.last().map(|s| s.exits[0]), Some(RunExit::Halted));
    for mode in [JitMode::Always, JitMode::Auto] {
        let mut t1 = machine(&code, &regs, &data, mode, None);
        let s1 = run_sliced(&mut t1, &mut NullBus, &[1_000_000]);
        assert_eq!(s0, s1, "{mode:?}");
    }
}

/// Byte TESTs each followed by a Jcc on SF, many in a row: whichever Jcc ends the block (the
/// first past the side exits a block may have), the TEST's pending record is stored before
/// it, and the flags the Jcc then tests must still be the byte's (SF from bit 7), not those
/// of a dword AND of the zero-extended bytes. AL runs through all 256 values.
#[test]
fn a_byte_tests_flags_survive_storing_its_record() {
    let mut a = CodeAssembler::new(32).expect("asm");
    let mut top = a.create_label();
    a.mov(ecx, 256).expect("asm");
    a.set_label(&mut top).expect("asm");
    a.mov(eax, ecx).expect("asm");
    for k in 0..20u32 {
        let mut skip = a.create_label();
        a.test(al, (0x80 | (k * 7)) as i32).expect("asm");
        // (Not taken when the byte's SF is set: for AL >= 0x80 the block goes on to the
        // Jcc that ends it.)
        if k % 2 == 0 {
            a.jge(skip).expect("asm");
        } else {
            a.jns(skip).expect("asm");
        }
        a.add(edx, k + 1).expect("asm");
        a.set_label(&mut skip).expect("asm");
        a.rol(edx, 1).expect("asm");
    }
    a.dec(ecx).expect("asm");
    a.jnz(top).expect("asm");
    a.hlt().expect("asm");
    let code = a.assemble(CODE).expect("asm");
    agree_in_slices(&code, &[0; 8], &[&[97, 1, 40, 3]]);
}

/// A register ADD's record stays pending while the next ops overwrite its source (the value
/// moves to a spare host register) and push a dword from memory, which uses that spare
/// register itself: the record must be stored before the PUSH, so the flags PUSHFD then
/// reads are the ADD's (0x7FFFFFFF + 1: OF, SF, AF, PF).
#[test]
fn a_pending_record_survives_its_source_overwritten_then_a_push_from_memory() {
    let mut a = CodeAssembler::new(32).expect("asm");
    for value in [1u32, 0xFFFF_FFFF] {
        a.mov(eax, 0x7FFF_FFFF).expect("asm");
        a.mov(ebx, value).expect("asm");
        a.add(eax, ebx).expect("asm");
        a.mov(ebx, 5).expect("asm");
        a.push(dword_ptr(ebp + 8)).expect("asm");
        a.pushfd().expect("asm");
        a.pop(ecx).expect("asm");
        a.pop(edx).expect("asm");
        a.add(esi, ecx).expect("asm");
        a.rol(esi, 5).expect("asm");
    }
    a.hlt().expect("asm");
    let code = a.assemble(CODE).expect("asm");
    let mut data = vec![0; 16];
    data[8..12].copy_from_slice(&0x1234_5678u32.to_le_bytes());
    compare("overwritten source, PUSH m32", &code, &[0; 8], &data, None);
}

/// Loops whose back edge is a side exit to their own block's start run round inside the
/// compiled code. The first loop's body replaces the flags before reading them, so the
/// record of its SUB stays unstored on the way round; the second one's ADC reads the CF
/// the back edge leaves, so there it is stored. Whole and cut into odd budget slices (the
/// loop checks the budget for each pass): registers, flags and counts as tier 0's.
#[test]
fn loops_back_to_their_own_block_keep_tier_0s_flags_and_counts() {
    let mut a = CodeAssembler::new(32).expect("asm");
    let (mut dead, mut live) = (a.create_label(), a.create_label());
    a.mov(ecx, 1000).expect("asm");
    a.set_label(&mut dead).expect("asm");
    a.add(eax, ecx).expect("asm");
    a.sub(ecx, 1).expect("asm");
    a.jnz(dead).expect("asm");
    a.mov(ecx, 700).expect("asm");
    a.mov(ebx, 0x9e37_79b9u32 as i32).expect("asm");
    a.set_label(&mut live).expect("asm");
    a.adc(edx, eax).expect("asm");
    a.rol(eax, 5).expect("asm");
    a.add(eax, ebx).expect("asm");
    a.sub(ecx, 1).expect("asm");
    a.jnz(live).expect("asm");
    a.pushfd().expect("asm");
    a.pop(esi).expect("asm");
    a.hlt().expect("asm");
    let code = a.assemble(CODE).expect("asm");
    let regs = [0, 0, 0, 0, 0x8000, 0, 0, 0];
    // (Slices longer than the blocks — 64 ops: the zeros after HLT decode as ADDs — let
    // compiled code go round several times in one.)
    let t1 = agree_in_slices(
        &code,
        &regs,
        &[&[1, 2, 3, 5, 8, 13, 7], &[29, 4, 11], &[100, 67, 130]],
    );
    // Thousands of passes, a handful of dispatcher entries.
    let st = t1.jit.stats;
    assert!(st.entries < 10, "{st:?}");
}

/// RDTSC (a handler call) in a loop that compiled code goes round through links and its own
/// back edge: the handler must see the instruction count of tier 0 (the TSC counts retired
/// instructions here), so the ops compiled code ran since it was entered must be counted
/// before every call out, not only on the way out.
#[test]
fn handlers_called_from_chained_code_see_tier_0s_instruction_count() {
    let mut a = CodeAssembler::new(32).expect("asm");
    let (mut top, mut skip) = (a.create_label(), a.create_label());
    a.mov(ecx, 300).expect("asm");
    a.set_label(&mut top).expect("asm");
    a.add(ebx, ecx).expect("asm");
    a.rdtsc().expect("asm");
    a.add(edi, eax).expect("asm");
    a.test(ecx, 1).expect("asm");
    a.jnz(skip).expect("asm");
    a.xor(esi, edx).expect("asm");
    a.xor(esi, eax).expect("asm");
    a.set_label(&mut skip).expect("asm");
    a.dec(ecx).expect("asm");
    a.jnz(top).expect("asm");
    a.hlt().expect("asm");
    let code = a.assemble(CODE).expect("asm");
    let regs = [0, 0, 0, 0, 0x8000, 0, 0, 0];
    let t1 = agree_in_slices(&code, &regs, &[&[1, 2, 3, 5, 8, 13, 7], &[97, 1, 40, 3]]);
    let st = t1.jit.stats;
    assert!(st.entries * 20 < t1.icount, "{st:?}, {}", t1.icount);
}

#[test]
fn stores_into_a_chained_successor_invalidate_it() {
    // P patches the immediate of B's first instruction every 8th pass (and B is otherwise
    // reached through P's link): once from another page, once from B's own page.
    for p_at in [CODE + 0x1000, CODE + 0x80] {
        let b_at = CODE + 0x100;
        let mut a = CodeAssembler::new(32).expect("asm");
        a.mov(esi, 64).expect("asm");
        a.jmp(p_at).expect("asm");
        let mut code = a.assemble(CODE).expect("asm");
        let mut a = CodeAssembler::new(32).expect("asm");
        a.test(esi, 7).expect("asm");
        a.jnz(b_at).expect("asm");
        a.inc(dword_ptr(b_at as u32 + 1)).expect("asm");
        a.jmp(b_at).expect("asm");
        let p = a.assemble(p_at).expect("asm");
        let mut a = CodeAssembler::new(32).expect("asm");
        a.mov(eax, 0x100).expect("asm");
        a.add(ebx, eax).expect("asm");
        a.dec(esi).expect("asm");
        a.jnz(p_at).expect("asm");
        a.hlt().expect("asm");
        let b = a.assemble(b_at).expect("asm");
        let mut parts = [(p_at, &p), (b_at, &b)];
        parts.sort_by_key(|&(at, _)| at);
        for (at, bytes) in parts {
            code.resize((at - CODE) as usize, 0xCC);
            code.extend_from_slice(bytes);
        }
        let t1 = compare(&format!("P at {p_at:#x}"), &code, &[0; 8], &[], None);
        // Passes with esi = 64..1; the immediate goes up after each multiple of 8.
        let want: u64 = (1..=64u64).rev().map(|e| 0x100 + (64 - e) / 8 + 1).sum();
        assert_eq!(t1.regs[3], want, "P at {p_at:#x}");
        if p_at >> 12 == b_at >> 12 {
            // P's jump into B's page was a static site while B lived.
            assert!(t1.jit.stats.static_links > 0, "{:?}", t1.jit.stats);
        }
    }
}

/// INTR and NMI raised by the bus when the guest has written port 0x80 a given number of
/// times: tier 0 and tier 1 must take them at the same instruction.
struct EventBus {
    outs: u64,
    intr_at: Vec<u64>,
    nmi_at: Vec<u64>,
    intr: bool,
    nmi: bool,
    /// Answer `events_pending` exactly (else the conservative default).
    precise: bool,
}

impl CpuBus for EventBus {
    fn io_read(&mut self, _port: u16, _size: u8) -> u32 {
        u32::MAX
    }
    fn io_write(&mut self, port: u16, _size: u8, _value: u32) {
        if port == 0x80 {
            self.outs += 1;
            self.intr |= self.intr_at.contains(&self.outs);
            self.nmi |= self.nmi_at.contains(&self.outs);
        }
    }
    fn intr_pending(&mut self) -> bool {
        self.intr
    }
    fn intr_ack(&mut self) -> u8 {
        self.intr = false;
        0x20
    }
    fn take_nmi(&mut self) -> bool {
        std::mem::take(&mut self.nmi)
    }
    fn events_pending(&mut self) -> bool {
        !self.precise || self.intr || self.nmi
    }
}

/// A counted loop writing port 0x80 every 16th pass (and every 64th pass inside a CLI/STI
/// window), with a flat GDT and an IDT whose INTR (0x20) and NMI handlers log ECX.
fn event_machine(mode: JitMode) -> Cpu {
    event_machine_with(mode, |a| {
        let mut top = a.create_label();
        let mut skip = a.create_label();
        let mut skip2 = a.create_label();
        a.xor(ecx, ecx)?;
        a.sti()?;
        a.set_label(&mut top)?;
        a.inc(ecx)?;
        a.add(ebx, ecx)?;
        a.test(ecx, 15)?;
        a.jnz(skip)?;
        a.out(0x80, al)?;
        a.set_label(&mut skip)?;
        a.test(ecx, 63)?;
        a.jnz(skip2)?;
        a.cli()?;
        a.out(0x80, al)?;
        a.add(edx, ecx)?;
        a.sti()?;
        a.set_label(&mut skip2)?;
        a.cmp(ecx, 3000)?;
        a.jne(top)?;
        a.hlt()
    })
}

/// [`event_machine`] with `main` as the program at CODE.
fn event_machine_with(
    mode: JitMode,
    main: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Cpu {
    // Handler `i` at CODE + 0x2000 + 0x100 * i logs ECX | tag.
    let handler = |i: u64, tag: u32| -> Result<Vec<u8>, IcedError> {
        let mut a = CodeAssembler::new(32)?;
        a.push(eax)?;
        a.mov(eax, dword_ptr(DATA as u32))?;
        a.mov(dword_ptr(eax * 4 + DATA as u32 + 4), ecx)?;
        a.or(dword_ptr(eax * 4 + DATA as u32 + 4), tag)?;
        a.inc(dword_ptr(DATA as u32))?;
        a.pop(eax)?;
        a.iretd()?;
        a.assemble(CODE + 0x2000 + 0x100 * i)
    };
    let mut a = CodeAssembler::new(32).expect("asm");
    main(&mut a).expect("asm");
    let mut code = a.assemble(CODE).expect("asm");
    for (i, tag) in [(0u64, 0u32), (1, 0x1000_0000)] {
        code.resize(0x2000 + 0x100 * i as usize, 0xCC);
        code.extend_from_slice(&handler(i, tag).expect("asm"));
    }
    let mut cpu = machine(&code, &[0; 8], &[0; 16], mode, None);
    let (gdt, idt) = (0x30000usize, 0x31000usize);
    let m = cpu.mem.as_mut_slice();
    for (i, d) in [0u64, 0x00CF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF]
        .iter()
        .enumerate()
    {
        m[gdt + 8 * i..gdt + 8 * i + 8].copy_from_slice(&d.to_le_bytes());
    }
    for (vector, i) in [(0x20usize, 0u64), (2, 1)] {
        let off = CODE + 0x2000 + 0x100 * i;
        let gate = (off & 0xFFFF) | 8 << 16 | 0x8E00 << 32 | (off >> 16) << 48;
        m[idt + 8 * vector..idt + 8 * vector + 8].copy_from_slice(&gate.to_le_bytes());
    }
    cpu.gdtr = TableReg {
        base: gdt as u64,
        limit: 23,
    };
    cpu.idtr = TableReg {
        base: idt as u64,
        limit: 0x107,
    };
    cpu
}

#[test]
fn interrupts_reach_a_chained_loop_at_the_same_instruction() {
    let bus = |precise| EventBus {
        outs: 0,
        intr_at: (1..250).step_by(7).collect(),
        nmi_at: vec![5, 40, 41, 120],
        intr: false,
        nmi: false,
        precise,
    };
    let slices: [&[u64]; 2] = [&[1_000_000], &[50, 3, 701, 1, 64]];
    for slices in slices {
        let mut t0 = event_machine(JitMode::Off);
        let mut b0 = bus(true);
        let s0 = run_sliced(&mut t0, &mut b0, slices);
        assert_eq!(
            s0.last().map(|s| s.exits[0]),
            Some(RunExit::Halted),
            "{:?} at {:#x}",
            t0.last_fault,
            t0.rip
        );
        let logged =
            u32::from_le_bytes(t0.mem.as_slice()[DATA as usize..][..4].try_into().unwrap());
        assert!(logged > 30, "tier 0 took {logged} events");
        for mode in [JitMode::Always, JitMode::Auto] {
            for precise in [true, false] {
                let mut t1 = event_machine(mode);
                let mut b1 = bus(precise);
                let s1 = run_sliced(&mut t1, &mut b1, slices);
                let what = format!("{mode:?}, precise {precise}, slices {slices:?}");
                assert_eq!(s0, s1, "{what}");
                assert!(
                    t0.mem.as_slice() == t1.mem.as_slice(),
                    "{what}: memory (event log)"
                );
                if slices.len() == 1 && mode == JitMode::Always && precise {
                    let st = t1.jit.stats;
                    assert!(st.entries * 10 < t1.icount, "{what}: {st:?}, {}", t1.icount);
                }
            }
        }
    }
}

/// A loop that goes round inside its block (its back edge a side exit to the block's own
/// start) with a port write in its body, which raises INTR or NMI on chosen writes: the
/// loop's way round must look whether a handler asked for a poll, or the event is taken
/// later than tier 0 takes it.
#[test]
fn interrupts_reach_a_loop_inside_its_block_at_the_same_instruction() {
    let program = |a: &mut CodeAssembler| {
        let mut top = a.create_label();
        a.xor(ecx, ecx)?;
        a.sti()?;
        a.set_label(&mut top)?;
        a.inc(ecx)?;
        a.add(ebx, ecx)?;
        a.out(0x80, al)?;
        a.cmp(ecx, 400)?;
        a.jne(top)?;
        a.hlt()
    };
    let bus = || EventBus {
        outs: 0,
        intr_at: (3..300).step_by(11).collect(),
        nmi_at: vec![7, 90],
        intr: false,
        nmi: false,
        precise: true,
    };
    let mut t0 = event_machine_with(JitMode::Off, program);
    let s0 = run_sliced(&mut t0, &mut bus(), &[1_000_000]);
    assert_eq!(s0.last().map(|s| s.exits[0]), Some(RunExit::Halted));
    for mode in [JitMode::Always, JitMode::Auto] {
        let mut t1 = event_machine_with(mode, program);
        let s1 = run_sliced(&mut t1, &mut bus(), &[1_000_000]);
        assert_eq!(s0, s1, "{mode:?}");
        assert!(
            t0.mem.as_slice() == t1.mem.as_slice(),
            "{mode:?}: event log"
        );
    }
}

/// `g` (next page) called from four sites and three targets called through a register in
/// turn: RETs and indirect CALLs with more successors than a block's two links.
fn many_targets_program() -> Result<Vec<u8>, IcedError> {
    let g = CODE + 0x1000;
    let targets = [CODE + 0x2000, CODE + 0x2040, CODE + 0x2080];
    let mut a = CodeAssembler::new(32)?;
    let mut top = a.create_label();
    a.mov(esi, 200)?;
    a.set_label(&mut top)?;
    for k in 0..4u32 {
        a.add(edx, k + 1)?;
        a.call(g)?;
    }
    // EAX = targets[esi % 3]
    a.mov(eax, esi)?;
    a.xor(edx, edx)?;
    a.mov(ecx, 3)?;
    a.div(ecx)?;
    a.mov(eax, dword_ptr(edx * 4 + DATA as u32))?;
    a.call(eax)?;
    a.dec(esi)?;
    a.jnz(top)?;
    a.hlt()?;
    let mut code = a.assemble(CODE)?;
    let mut a = CodeAssembler::new(32)?;
    a.add(ebx, edx)?;
    a.rol(ebx, 3)?;
    a.ret()?;
    code.resize(0x1000, 0xCC);
    code.extend_from_slice(&a.assemble(g)?);
    for (i, &t) in targets.iter().enumerate() {
        let mut a = CodeAssembler::new(32)?;
        a.add(edi, i as u32 + 1)?;
        a.imul_3(edi, edi, 3)?;
        a.ret()?;
        code.resize((t - CODE) as usize, 0xCC);
        code.extend_from_slice(&a.assemble(t)?);
    }
    Ok(code)
}

#[test]
fn returns_to_many_sites_and_indirect_calls_stay_in_host_code() {
    let code = many_targets_program().expect("asm");
    let data: Vec<u8> = [CODE + 0x2000, CODE + 0x2040, CODE + 0x2080]
        .iter()
        .flat_map(|&t| (t as u32).to_le_bytes())
        .collect();
    let regs = [0, 7, 0, 0, 0, 0, 0, 1];
    for slices in [&[1_000_000u64][..], &[1, 5, 17, 60, 2, 333]] {
        let mut t0 = machine(&code, &regs, &data, JitMode::Off, None);
        let s0 = run_sliced(&mut t0, &mut NullBus, slices);
        assert_eq!(s0.last().map(|s| s.exits[0]), Some(RunExit::Halted));
        for mode in [JitMode::Always, JitMode::Auto] {
            let mut t1 = machine(&code, &regs, &data, mode, None);
            let s1 = run_sliced(&mut t1, &mut NullBus, slices);
            assert_eq!(s0, s1, "slices {slices:?}: {mode:?}");
            assert!(t0.mem.as_slice() == t1.mem.as_slice(), "{mode:?}: memory");
            if slices.len() == 1 && mode == JitMode::Always {
                // Without the indirect table every return to a third call site and most
                // indirect calls go back to the dispatcher (more than one entry per loop pass).
                let st = t1.jit.stats;
                assert!(st.entries < 100, "{st:?}, {} instructions", t1.icount);
            }
        }
    }
}

#[test]
fn links_are_not_followed_under_a_smaller_cs_limit() {
    // A (0x100) jumps to B (0x200), which loops back 50 times, then a far return reloads CS
    // with a descriptor of the same base whose limit ends inside B: A's link to B (recorded
    // under the 4 GiB limit, same RIP, stamp, base and CPL) must not be followed — B's tail
    // lies beyond the limit, so the fetch there raises #GP (no IDT: shutdown).
    let (a_at, b_at) = (CODE + 0x100, CODE + 0x200);
    let mut a = CodeAssembler::new(32).expect("asm");
    a.xor(esi, esi).expect("asm");
    a.jmp(a_at).expect("asm");
    let mut code = a.assemble(CODE).expect("asm");
    let mut a = CodeAssembler::new(32).expect("asm");
    a.inc(esi).expect("asm");
    a.jmp(b_at).expect("asm");
    code.resize(0x100, 0xCC);
    code.extend_from_slice(&a.assemble(a_at).expect("asm"));
    let mut a = CodeAssembler::new(32).expect("asm");
    a.add(ebx, esi).expect("asm"); // 0x200, 2 bytes
    a.add(ecx, 1).expect("asm"); // 0x202, 3 bytes: the small limit ends here
    a.cmp(esi, 50).expect("asm"); // 0x205
    a.jne(a_at).expect("asm");
    a.push(0x18).expect("asm");
    a.push(a_at as u32).expect("asm");
    a.db(&[0xCB]).expect("asm"); // RETF (32-bit)
    code.resize(0x200, 0xCC);
    code.extend_from_slice(&a.assemble(b_at).expect("asm"));
    let limit = (b_at - CODE) as u32 + 0x1000 + 4;
    let go = |mode| {
        let mut cpu = machine(&code, &[0; 8], &[], mode, None);
        let gdt = 0x30000usize;
        let small =
            0x0040_9A00_0000_0000u64 | (limit & 0xFFFF) as u64 | ((limit as u64 >> 16) << 48);
        let m = cpu.mem.as_mut_slice();
        for (i, d) in [0u64, 0x00CF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF, small]
            .iter()
            .enumerate()
        {
            m[gdt + 8 * i..gdt + 8 * i + 8].copy_from_slice(&d.to_le_bytes());
        }
        cpu.gdtr = TableReg {
            base: gdt as u64,
            limit: 31,
        };
        let s = run_sliced(&mut cpu, &mut NullBus, &[100_000]);
        (s, cpu)
    };
    let (s0, t0) = go(JitMode::Off);
    assert_eq!(
        s0.last().map(|s| s.exits[0]),
        Some(RunExit::Shutdown),
        "{s0:?}"
    );
    assert_eq!(t0.last_fault.map(|f| f.vector), Some(13));
    assert_eq!(t0.rip, CODE + 0x205);
    for mode in [JitMode::Always, JitMode::Auto] {
        let (s1, t1) = go(mode);
        assert_eq!(s0, s1, "{mode:?}");
        assert!(t0.mem.as_slice() == t1.mem.as_slice(), "{mode:?}: memory");
    }
}

#[test]
fn rep_stos_and_movs_agree_with_tier_0() {
    // Counts 0, 1, a few, the slice tier 0 runs at once (4096) and one more; ranges inside a
    // page, across a page end and onto themselves (MOVS with the destination one element
    // above the source repeats its first element); DF set; every element size.
    let counts = [0u32, 1, 4, 37, 1024, 4096, 4097];
    let mut case = 0;
    for &count in &counts {
        for size in [1u32, 2, 4] {
            for (dst, src) in [
                (0x10010u32, 0x10800u32),
                (0x10ff0, 0x12000),
                (0x10201, 0x10200),
            ] {
                for std in [false, true] {
                    let mut a = CodeAssembler::new(32).expect("32-bit assembler");
                    let body = |a: &mut CodeAssembler| -> Result<(), IcedError> {
                        if std {
                            a.std()?;
                        } else {
                            a.cld()?;
                        }
                        a.mov(eax, 0xA1B2_C3D4u32)?;
                        for movs in [false, true] {
                            a.mov(edi, dst)?;
                            a.mov(esi, src)?;
                            a.mov(ecx, count)?;
                            match (movs, size) {
                                (false, 1) => a.rep().stosb()?,
                                (false, 2) => a.rep().stosw()?,
                                (false, _) => a.rep().stosd()?,
                                (true, 1) => a.rep().movsb()?,
                                (true, 2) => a.rep().movsw()?,
                                (true, _) => a.rep().movsd()?,
                            }
                            // ECX, ESI and EDI as they were left, into the compared state.
                            a.add(ebx, ecx)?;
                            a.add(ebx, esi)?;
                            a.add(ebx, edi)?;
                        }
                        a.cld()?;
                        a.hlt()
                    };
                    body(&mut a).expect("assembles");
                    let code = a.assemble(CODE).expect("encodes");
                    let data: Vec<u8> = (0..0x3000u32).map(|i| (i * 7 + 3) as u8).collect();
                    let what = format!(
                        "case {case}: count {count} size {size} dst {dst:#x} src {src:#x} std {std}"
                    );
                    compare(&what, &code, &[0; 8], &data, None);
                    case += 1;
                }
            }
        }
    }
}
