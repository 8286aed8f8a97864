//! Debug-register breakpoints (SDM Vol. 3, chapter 17) in assembled 32-bit ring-0 programs: an
//! INT 1 handler reports DR6, the EIP it would return to and ECX through port 0xE9, clears
//! DR6, sets RF in the EFLAGS image (so an instruction breakpoint lets its instruction run on
//! return) and IRETs.
//!
//! What the SDM specifies and these programs check: instruction breakpoints are faults (EIP of
//! the instruction, taken again on every execution unless RF is set); data breakpoints are
//! traps (EIP of the next instruction) that match any overlap with the LEN-aligned range, writes
//! only for R/W = 01, reads and writes for 11; B0-B3 name the breakpoint; a REP string
//! instruction traps after the iteration that hit (EIP still at it, ECX counted down);
//! DR7.GD turns MOV DR into a #DB fault with BD set and GD cleared.

use iced_x86::BlockEncoderOptions;
use iced_x86::code_asm::*;
use translator::{Cpu, PhysMem, RunExit};

mod e9_bus;
use e9_bus::TestBus;

const GDT: u64 = 0x500;
const IDT: u64 = 0x800;
const MAIN: u64 = 0x2000;
const DB_HANDLER: u64 = 0x3000;
const SUB: u64 = 0x4000;
const DATA: u32 = 0x6000;
/// What DR6 reads with no status bit set (bits 4-11 and 16-31 read as 1).
const DR6_IDLE: u32 = 0xFFFF_0FF0;

fn put(mem: &mut PhysMem, addr: u64, bytes: &[u8]) {
    mem.as_mut_slice()[addr as usize..addr as usize + bytes.len()].copy_from_slice(bytes);
}

fn report(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.mov(dx, 0xE9u32)?;
    a.out(dx, eax)
}

/// A flat 32-bit ring-0 machine at MAIN (entered directly through the descriptor caches) with
/// the INT 1 handler installed. `main` returns the labels whose addresses the test needs.
fn machine(
    main: impl FnOnce(&mut CodeAssembler) -> Result<Vec<CodeLabel>, IcedError>,
) -> (Cpu, TestBus, Vec<u32>) {
    machine_with(main, None)
}

/// Code emitted into an assembler.
type Emit = dyn Fn(&mut CodeAssembler) -> Result<(), IcedError>;

/// Like [`machine`], with a routine at `SUB` (called by `main`).
fn machine_with(
    main: impl FnOnce(&mut CodeAssembler) -> Result<Vec<CodeLabel>, IcedError>,
    sub: Option<&Emit>,
) -> (Cpu, TestBus, Vec<u32>) {
    use translator::state::{Segment, TableReg, cr0, sreg};
    let mut mem = PhysMem::new(4 << 20);
    let gdt: [u64; 3] = [0, 0x00CF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF];
    for (i, d) in gdt.iter().enumerate() {
        put(&mut mem, GDT + i as u64 * 8, &d.to_le_bytes());
    }
    // INT 1: a 32-bit interrupt gate to 0x08:DB_HANDLER.
    let gate = (DB_HANDLER & 0xFFFF) | (0x08 << 16) | (0x8Eu64 << 40) | ((DB_HANDLER >> 16) << 48);
    put(&mut mem, IDT + 8, &gate.to_le_bytes());

    let mut a = CodeAssembler::new(32).unwrap();
    let labels = main(&mut a).unwrap();
    a.hlt().unwrap();
    let r = a
        .assemble_options(MAIN, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)
        .unwrap();
    let ips = labels
        .iter()
        .map(|l| r.label_ip(l).unwrap() as u32)
        .collect();
    put(&mut mem, MAIN, &r.inner.code_buffer);
    if let Some(f) = sub {
        let mut a = CodeAssembler::new(32).unwrap();
        f(&mut a).unwrap();
        put(&mut mem, SUB, &a.assemble(SUB).unwrap());
    }

    let mut h = CodeAssembler::new(32).unwrap();
    (|| -> Result<(), IcedError> {
        h.push(eax)?;
        h.push(edx)?;
        h.mov(eax, dr6)?;
        report(&mut h)?;
        h.mov(eax, dword_ptr(esp + 8))?; // EIP
        report(&mut h)?;
        h.mov(eax, ecx)?;
        report(&mut h)?;
        h.xor(eax, eax)?;
        h.mov(dr6, eax)?;
        h.or(dword_ptr(esp + 16), 0x1_0000)?; // RF in the EFLAGS image
        h.pop(edx)?;
        h.pop(eax)?;
        h.iretd()
    })()
    .unwrap();
    put(&mut mem, DB_HANDLER, &h.assemble(DB_HANDLER).unwrap());

    let mut cpu = Cpu::new(mem);
    let flat = Segment::flat32;
    cpu.segs[sreg::CS] = flat(0x08, true);
    for s in [sreg::SS, sreg::DS, sreg::ES, sreg::FS, sreg::GS] {
        cpu.segs[s] = flat(0x10, false);
    }
    cpu.gdtr = TableReg {
        base: GDT,
        limit: 23,
    };
    cpu.idtr = TableReg {
        base: IDT,
        limit: 0x7FF,
    };
    cpu.cr0 = cr0::PE | cr0::ET;
    cpu.rip = MAIN;
    cpu.regs[4] = 0x8_0000;
    (cpu, TestBus::default(), ips)
}

fn run(cpu: &mut Cpu, bus: &mut TestBus) {
    let exit = cpu.run(bus, 100_000);
    assert_eq!(
        exit,
        RunExit::Halted,
        "program did not reach HLT (last fault {:?})",
        cpu.last_fault
    );
}

/// DR7 bits for breakpoint `n`: local enable, R/W and LEN fields.
fn dr7_bp(n: u32, rw: u32, len: u32) -> u32 {
    (1 << (2 * n)) | (rw << (16 + 4 * n)) | (len << (18 + 4 * n))
}

const RW_EXEC: u32 = 0;
const RW_WRITE: u32 = 1;
const RW_RW: u32 = 3;
const LEN1: u32 = 0;
const LEN2: u32 = 1;
const LEN4: u32 = 3;

#[test]
fn instruction_breakpoint_faults_each_time_and_rf_lets_it_run() {
    // SUB: report 0x100 + ECX.
    let sub = |a: &mut CodeAssembler| -> Result<(), IcedError> {
        a.mov(eax, 0x100)?;
        a.add(eax, ecx)?;
        report(a)?;
        a.ret()
    };
    let (mut cpu, mut bus, _) = machine_with(
        |a| {
            let mut top = a.create_label();
            a.mov(eax, SUB as u32)?;
            a.mov(dr2, eax)?;
            a.mov(eax, dr7_bp(2, RW_EXEC, LEN1))?;
            a.mov(dr7, eax)?;
            a.mov(ecx, 2)?;
            a.set_label(&mut top)?;
            a.call(SUB)?;
            a.dec(ecx)?;
            a.jnz(top)?;
            // Disarmed: no #DB any more.
            a.xor(eax, eax)?;
            a.mov(dr7, eax)?;
            a.mov(ecx, 7)?;
            a.call(SUB)?;
            Ok(vec![])
        },
        Some(&sub),
    );
    run(&mut cpu, &mut bus);
    let hit: u32 = DR6_IDLE | 1 << 2;
    let sub = SUB as u32;
    assert_eq!(bus.out, vec![hit, sub, 2, 0x102, hit, sub, 1, 0x101, 0x107]);
}

#[test]
fn data_breakpoints_trap_after_matching_accesses() {
    let (mut cpu, mut bus, ips) = machine(|a| {
        let mut l = Vec::new();
        // DR1: writes to the dword at DATA+4. DR3: reads or writes of the word at DATA+0x10
        // (given as DATA+0x11: LEN-aligned down).
        a.mov(eax, DATA + 4)?;
        a.mov(dr1, eax)?;
        a.mov(eax, DATA + 0x11)?;
        a.mov(dr3, eax)?;
        a.mov(eax, dr7_bp(1, RW_WRITE, LEN4) | dr7_bp(3, RW_RW, LEN2))?;
        a.mov(dr7, eax)?;
        a.mov(ecx, 1)?;
        a.mov(dword_ptr(DATA + 4), eax)?; // hit DR1
        let mut x = a.create_label();
        a.set_label(&mut x)?;
        l.push(x);
        a.mov(ecx, 2)?;
        a.mov(eax, dword_ptr(DATA + 4))?; // read: no hit
        a.mov(byte_ptr(DATA + 8), al)?; // outside: no hit
        a.mov(word_ptr(DATA + 2), ax)?; // 2-3: no hit
        a.mov(word_ptr(DATA + 3), ax)?; // overlaps byte 4: hit DR1
        let mut x = a.create_label();
        a.set_label(&mut x)?;
        l.push(x);
        a.mov(ecx, 3)?;
        a.add(dword_ptr(DATA + 0x0E), ecx)?; // RMW of 0xE-0x11: hit DR3
        let mut x = a.create_label();
        a.set_label(&mut x)?;
        l.push(x);
        a.mov(ecx, 4)?;
        a.mov(al, byte_ptr(DATA + 0x12))?; // past the word: no hit
        a.movzx(eax, byte_ptr(DATA + 0x10))?; // read: hit DR3
        let mut x = a.create_label();
        a.set_label(&mut x)?;
        l.push(x);
        a.mov(ecx, 5)?;
        // A push through the stack hits too: point DR1 at the slot.
        a.lea(eax, dword_ptr(esp - 4))?;
        a.mov(dr1, eax)?;
        a.push(ecx)?;
        let mut x = a.create_label();
        a.set_label(&mut x)?;
        l.push(x);
        a.pop(ecx)?;
        a.mov(eax, 0x600D)?;
        report(a)?;
        Ok(l)
    });
    run(&mut cpu, &mut bus);
    let b1 = DR6_IDLE | 1 << 1;
    let b3 = DR6_IDLE | 1 << 3;
    assert_eq!(
        bus.out,
        vec![
            b1, ips[0], 1, //
            b1, ips[1], 2, //
            b3, ips[2], 3, //
            b3, ips[3], 4, //
            b1, ips[4], 5, //
            0x600D
        ]
    );
}

#[test]
fn rep_stos_traps_after_the_iteration_that_hits() {
    let (mut cpu, mut bus, ips) = machine(|a| {
        let mut rep = a.create_label();
        a.mov(eax, DATA + 8)?;
        a.mov(dr0, eax)?;
        a.mov(eax, dr7_bp(0, RW_WRITE, LEN4))?;
        a.mov(dr7, eax)?;
        a.cld()?;
        a.mov(edi, DATA)?;
        a.mov(ecx, 6)?;
        a.xor(eax, eax)?;
        a.set_label(&mut rep)?;
        a.rep().stosd()?;
        a.mov(eax, edi)?;
        report(a)?;
        Ok(vec![rep])
    });
    run(&mut cpu, &mut bus);
    // The third element (DATA+8) hits: EIP still at the REP STOSD, ECX = 6 - 3. It then
    // finishes (RF set) without trapping again.
    assert_eq!(bus.out, vec![DR6_IDLE | 1, ips[0], 3, DATA + 24]);
}

#[test]
fn general_detect_faults_mov_dr_with_bd_and_clears_gd() {
    let (mut cpu, mut bus, ips) = machine(|a| {
        let mut mov = a.create_label();
        a.mov(eax, 0x2000)?; // GD
        a.mov(dr7, eax)?;
        a.mov(ecx, 9)?;
        a.set_label(&mut mov)?;
        a.mov(eax, dr7)?;
        report(a)?;
        Ok(vec![mov])
    });
    run(&mut cpu, &mut bus);
    // A fault at the MOV; the handler's own MOV DRs work (GD cleared on entry), the MOV then
    // runs and reads DR7 without GD.
    assert_eq!(bus.out, vec![DR6_IDLE | 1 << 13, ips[0], 9, 0x400]);
}

#[test]
fn single_step_and_data_breakpoint_report_together() {
    let (mut cpu, mut bus, ips) = machine(|a| {
        let mut after = a.create_label();
        a.mov(eax, DATA)?;
        a.mov(dr0, eax)?;
        a.mov(eax, dr7_bp(0, RW_RW, LEN1))?;
        a.mov(dr7, eax)?;
        a.mov(ecx, 1)?;
        a.pushfd()?;
        a.or(dword_ptr(esp), 0x100)?;
        a.popfd()?; // TF from the next instruction on
        a.mov(dword_ptr(DATA), eax)?; // single-step trap and DR0 hit at once
        a.set_label(&mut after)?;
        a.pushfd()?;
        a.and(dword_ptr(esp), !0x100)?;
        a.popfd()?;
        Ok(vec![after])
    });
    // The handler clears DR6 between traps, so the second step trap (after PUSHFD) shows BS
    // alone; the one after the store shows BS and B0.
    run(&mut cpu, &mut bus);
    assert_eq!(&bus.out[..3], &[DR6_IDLE | 1 << 14 | 1, ips[0], 1]);
    assert_eq!(bus.out[3], DR6_IDLE | 1 << 14);
}
