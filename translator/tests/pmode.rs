//! Small assembled programs (iced's code_asm) that enter protected mode, load segments, take
//! exceptions through the IDT, enable paging and change privilege. They report through port
//! 0xE9, which the test bus records.

#[macro_use]
mod tier;

use iced_x86::code_asm::*;
use translator::{Cpu, PhysMem, RunExit};

mod e9_bus;
use e9_bus::TestBus;

const GDT: u64 = 0x500;
const GDTR: u64 = 0x4F0;
const IDTR: u64 = 0x4F8;
const TSS: u64 = 0x700;
const IDT: u64 = 0x800;
const MAIN32: u64 = 0x2000;
const RING3: u64 = 0x2800;
const GP_HANDLER: u64 = 0x3000;
const PF_HANDLER: u64 = 0x3100;
const SYSCALL: u64 = 0x3200;
const PD: u64 = 0x10000;

fn put(mem: &mut PhysMem, addr: u64, bytes: &[u8]) {
    mem.as_mut_slice()[addr as usize..addr as usize + bytes.len()].copy_from_slice(bytes);
}

fn put32(mem: &mut PhysMem, addr: u64, v: u32) {
    put(mem, addr, &v.to_le_bytes());
}

fn gate(offset: u64, sel: u16, attr: u8) -> u64 {
    (offset & 0xFFFF)
        | ((sel as u64) << 16)
        | ((attr as u64) << 40)
        | (((offset >> 16) & 0xFFFF) << 48)
}

fn asm32(ip: u64, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(32).unwrap();
    f(&mut a).unwrap();
    a.assemble(ip).unwrap()
}

/// Emit `out 0xE9, eax`.
fn report(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.mov(dx, 0xE9u32)?;
    a.out(dx, eax)
}

/// Report EFLAGS & `mask` (clobbers EAX).
fn report_flags(a: &mut CodeAssembler, mask: u32) -> Result<(), IcedError> {
    a.pushfd()?;
    a.pop(eax)?;
    a.and(eax, mask)?;
    report(a)
}

/// A machine in real mode at 0000:1000 whose code switches to 32-bit protected mode (flat
/// ring-0 segments, IDT with #GP/#PF/INT 80h handlers) and runs `main` at 0x2000.
fn machine(main: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> (Cpu, TestBus) {
    let mut mem = PhysMem::new(32 << 20);
    let gdt: [u64; 7] = [
        0,
        0x00CF_9A00_0000_FFFF, // 0x08 code32 ring 0
        0x00CF_9200_0000_FFFF, // 0x10 data32 ring 0
        0x00CF_FA00_0000_FFFF, // 0x18 code32 ring 3
        0x00CF_F200_0000_FFFF, // 0x20 data32 ring 3
        0x67 | ((TSS & 0xFF_FFFF) << 16) | (0x89u64 << 40), // 0x28 TSS32
        0x0040_9200_0000_0FFF, // 0x30 data32, 4 KiB limit
    ];
    for (i, d) in gdt.iter().enumerate() {
        put(&mut mem, GDT + i as u64 * 8, &d.to_le_bytes());
    }
    put(&mut mem, GDTR, &((gdt.len() * 8 - 1) as u16).to_le_bytes());
    put32(&mut mem, GDTR + 2, GDT as u32);
    put(&mut mem, IDTR, &0x7FFu16.to_le_bytes());
    put32(&mut mem, IDTR + 2, IDT as u32);
    put(
        &mut mem,
        IDT + 13 * 8,
        &gate(GP_HANDLER, 0x08, 0x8E).to_le_bytes(),
    );
    put(
        &mut mem,
        IDT + 14 * 8,
        &gate(PF_HANDLER, 0x08, 0x8E).to_le_bytes(),
    );
    put(
        &mut mem,
        IDT + 0x80 * 8,
        &gate(SYSCALL, 0x08, 0xEE).to_le_bytes(),
    );
    put32(&mut mem, TSS + 4, 0x8F000); // ESP0
    put32(&mut mem, TSS + 8, 0x10); // SS0
    put(&mut mem, TSS + 0x66, &0x68u16.to_le_bytes());

    let mut a = CodeAssembler::new(16).unwrap();
    a.lgdt(ptr(GDTR as u32)).unwrap();
    a.lidt(ptr(IDTR as u32)).unwrap();
    a.mov(eax, cr0).unwrap();
    a.or(eax, 1).unwrap();
    a.mov(cr0, eax).unwrap();
    // jmp dword 0x08:MAIN32
    a.db(&[0x66, 0xEA]).unwrap();
    a.db(&(MAIN32 as u32).to_le_bytes()).unwrap();
    a.db(&[0x08, 0x00]).unwrap();
    put(&mut mem, 0x1000, &a.assemble(0x1000).unwrap());

    let main_code = asm32(MAIN32, |a| {
        a.mov(ax, 0x10)?;
        a.mov(ds, ax)?;
        a.mov(es, ax)?;
        a.mov(ss, ax)?;
        a.mov(esp, 0x80000)?;
        main(a)?;
        a.hlt()
    });
    put(&mut mem, MAIN32, &main_code);
    let gp = asm32(GP_HANDLER, |a| {
        a.pop(eax)?;
        report(a)?;
        a.mov(eax, 0xDEAD_000Du32)?;
        report(a)?;
        a.hlt()
    });
    put(&mut mem, GP_HANDLER, &gp);
    let pf = asm32(PF_HANDLER, |a| {
        a.pop(eax)?;
        report(a)?;
        a.mov(eax, cr2)?;
        report(a)?;
        a.hlt()
    });
    put(&mut mem, PF_HANDLER, &pf);
    let sys = asm32(SYSCALL, |a| {
        a.mov(eax, esp)?;
        report(a)?;
        a.mov(eax, dword_ptr(esp + 4))?; // old CS
        report(a)?;
        a.mov(eax, dword_ptr(esp + 12))?; // old ESP
        report(a)?;
        a.mov(eax, dword_ptr(esp + 16))?; // old SS
        report(a)?;
        a.hlt()
    });
    put(&mut mem, SYSCALL, &sys);

    let mut cpu = Cpu::new(mem);
    cpu.jit.mode = tier::mode();
    cpu.segs[1] = translator::state::Segment::real(0, true);
    cpu.rip = 0x1000;
    (cpu, TestBus::default())
}

fn run(cpu: &mut Cpu, bus: &mut TestBus) {
    let exit = cpu.run(bus, 100_000);
    assert_eq!(
        exit,
        RunExit::Halted,
        "program did not halt; output so far {:x?}",
        bus.out
    );
}

#[test]
fn enters_protected_mode_and_uses_flat_segments() {
    let (mut cpu, mut bus) = machine(|a| {
        a.mov(dword_ptr(0x5000), 0x1234_5678)?;
        a.mov(eax, dword_ptr(0x5000))?;
        report(a)?;
        a.mov(eax, cs)?;
        report(a)
    });
    run(&mut cpu, &mut bus);
    assert_eq!(bus.out, vec![0x1234_5678, 0x08]);
    assert!(cpu.protected());
    assert_eq!(cpu.code_bitness(), 32);
}

#[test]
fn selector_beyond_gdt_limit_raises_gp_with_selector() {
    let (mut cpu, mut bus) = machine(|a| {
        a.mov(ax, 0x40)?;
        a.mov(ds, ax)
    });
    run(&mut cpu, &mut bus);
    assert_eq!(bus.out, vec![0x40, 0xDEAD_000D]);
}

#[test]
fn segment_limit_violation_raises_gp0() {
    let (mut cpu, mut bus) = machine(|a| {
        a.mov(ax, 0x30)?;
        a.mov(es, ax)?;
        a.mov(eax, dword_ptr(0xFFC).es())?; // last dword inside the 4 KiB limit: fine
        a.mov(eax, dword_ptr(0xFFE).es()) // crosses the limit
    });
    run(&mut cpu, &mut bus);
    assert_eq!(bus.out, vec![0, 0xDEAD_000D]);
}

/// Identity-map the first 4 MiB with a page table, map linear 0x400000 to physical 0x6000.
fn setup_paging(cpu: &mut Cpu) {
    let mem = &mut cpu.mem;
    put32(mem, PD, (PD as u32 + 0x1000) | 7);
    for i in 0..1024u32 {
        put32(mem, PD + 0x1000 + i as u64 * 4, (i << 12) | 7);
    }
    put32(mem, PD + 4, (PD as u32 + 0x2000) | 7);
    put32(mem, PD + 0x2000, 0x6000 | 3);
}

fn enable_paging(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.mov(eax, PD as u32)?;
    a.mov(cr3, eax)?;
    a.mov(eax, cr0)?;
    a.or(eax, 0x8000_0000u32 as i32)?;
    a.mov(cr0, eax)
}

#[test]
fn paging_translates_and_sets_accessed_and_dirty() {
    let (mut cpu, mut bus) = machine(|a| {
        enable_paging(a)?;
        a.mov(dword_ptr(0x40_0010), 0xCAFE_BABEu32 as i32)?;
        a.mov(eax, dword_ptr(0x6010))?; // the same bytes through the identity map
        report(a)?;
        a.mov(eax, dword_ptr(PD as u32 + 0x2000))?; // the PTE
        report(a)
    });
    setup_paging(&mut cpu);
    run(&mut cpu, &mut bus);
    assert_eq!(bus.out, vec![0xCAFE_BABE, 0x6000 | 0x63]);
}

#[test]
fn page_fault_reports_cr2_and_error_code() {
    let (mut cpu, mut bus) = machine(|a| {
        enable_paging(a)?;
        a.mov(dword_ptr(0x80_0004), eax) // PDE 2 is not present
    });
    setup_paging(&mut cpu);
    run(&mut cpu, &mut bus);
    // Error code: not present, write, supervisor.
    assert_eq!(bus.out, vec![2, 0x80_0004]);
}

#[test]
fn write_protect_faults_only_with_cr0_wp() {
    let (mut cpu, mut bus) = machine(|a| {
        // Make the page of 0x6000 read-only, then write to it: allowed for the supervisor
        // until CR0.WP is set.
        a.mov(dword_ptr(PD as u32 + 0x1000 + 6 * 4), 0x6000 | 5)?;
        enable_paging(a)?;
        a.mov(dword_ptr(0x6000), 1)?;
        a.mov(eax, 0x11)?;
        report(a)?;
        a.mov(eax, cr0)?;
        a.or(eax, 1 << 16)?;
        a.mov(cr0, eax)?;
        a.mov(dword_ptr(0x6000), 2)
    });
    setup_paging(&mut cpu);
    run(&mut cpu, &mut bus);
    assert_eq!(bus.out, vec![0x11, 3, 0x6000]);
}

#[test]
fn large_pages_with_pse() {
    let (mut cpu, mut bus) = machine(|a| {
        a.mov(eax, cr4)?;
        a.or(eax, 1 << 4)?;
        a.mov(cr4, eax)?;
        enable_paging(a)?;
        a.mov(dword_ptr(0xC0_1234), 0x5A5A_5A5A)?;
        a.mov(eax, dword_ptr(PD as u32 + 3 * 4))?;
        report(a)
    });
    setup_paging(&mut cpu);
    put32(&mut cpu.mem, PD + 3 * 4, 0x0100_0000 | 0x83);
    run(&mut cpu, &mut bus);
    let m = cpu.mem.as_slice();
    assert_eq!(&m[0x100_1234..0x100_1238], &0x5A5A_5A5Au32.to_le_bytes());
    // Accessed and dirty set in the 4 MiB PDE.
    assert_eq!(bus.out, vec![0x0100_0000 | 0x83 | 0x60]);
}

#[test]
fn ring3_interrupt_switches_to_the_tss_stack() {
    let (mut cpu, mut bus) = machine(|a| {
        a.mov(ax, 0x28)?;
        a.ltr(ax)?;
        a.push(0x23)?; // SS3
        a.push(0x70000)?; // ESP3
        a.pushfd()?;
        a.push(0x1B)?; // CS3
        a.push(RING3 as i32)?;
        a.iretd()
    });
    let r3 = asm32(RING3, |a| {
        a.mov(ax, 0x23)?;
        a.mov(ds, ax)?;
        a.int(0x80)?;
        a.hlt()
    });
    put(&mut cpu.mem, RING3, &r3);
    run(&mut cpu, &mut bus);
    // Handler's ESP: 0x8F000 minus SS, ESP, EFLAGS, CS, EIP.
    assert_eq!(bus.out, vec![0x8F000 - 20, 0x1B, 0x70000, 0x23]);
    assert_eq!(cpu.cpl, 0);
}

#[test]
fn hlt_at_ring3_is_gp() {
    let (mut cpu, mut bus) = machine(|a| {
        a.push(0x23)?;
        a.push(0x70000)?;
        a.pushfd()?;
        a.push(0x1B)?;
        a.push(RING3 as i32)?;
        a.mov(ax, 0x28)?;
        a.ltr(ax)?;
        a.iretd()
    });
    let r3 = asm32(RING3, |a| a.hlt());
    put(&mut cpu.mem, RING3, &r3);
    run(&mut cpu, &mut bus);
    assert_eq!(bus.out, vec![0, 0xDEAD_000D]);
}

const SMC: u64 = 0x4000;

#[test]
fn store_into_the_next_instruction_is_seen() {
    let (mut cpu, mut bus) = machine(|a| a.jmp(SMC));
    // C6 05 disp32 imm8 (7 bytes) patches the immediate of the B8 imm32 right after it.
    let code = asm32(SMC, |a| {
        a.mov(byte_ptr(SMC as u32 + 8), 0x77)?;
        a.mov(eax, 0x11u32)?;
        report(a)?;
        a.hlt()
    });
    put(&mut cpu.mem, SMC, &code);
    run(&mut cpu, &mut bus);
    assert_eq!(bus.out, vec![0x77]);
}

#[test]
fn code_rewritten_on_a_loop_pass_is_retranslated() {
    let (mut cpu, mut bus) = machine(|a| a.jmp(SMC));
    // mov ecx, 2 is 5 bytes: the loop body's `mov eax, imm32` starts at SMC + 5.
    let code = asm32(SMC, |a| {
        let mut body = a.create_label();
        let mut done = a.create_label();
        a.mov(ecx, 2)?;
        a.set_label(&mut body)?;
        a.mov(eax, 0x1111u32)?;
        report(a)?;
        a.mov(byte_ptr(SMC as u32 + 6), 0x22)?;
        a.dec(ecx)?;
        a.jz(done)?;
        a.jmp(body)?;
        a.set_label(&mut done)?;
        a.hlt()
    });
    put(&mut cpu.mem, SMC, &code);
    run(&mut cpu, &mut bus);
    assert_eq!(bus.out, vec![0x1111, 0x1122]);
}

#[test]
fn pae_with_nx_faults_on_fetch() {
    const PDPT: u64 = 0x20000;
    let (mut cpu, mut bus) = machine(|a| {
        // EFER.NXE
        a.mov(ecx, 0xC000_0080u32)?;
        a.rdmsr()?;
        a.or(eax, 1 << 11)?;
        a.wrmsr()?;
        a.mov(eax, cr4)?;
        a.or(eax, 1 << 5)?;
        a.mov(cr4, eax)?;
        a.mov(eax, PDPT as u32)?;
        a.mov(cr3, eax)?;
        a.mov(eax, cr0)?;
        a.or(eax, 0x8000_0000u32 as i32)?;
        a.mov(cr0, eax)?;
        // Data access to the NX page works...
        a.mov(dword_ptr(0x40_0000), 0x90909090u32 as i32)?;
        a.mov(eax, dword_ptr(0x6000))?;
        report(a)?;
        // ...executing it does not.
        a.mov(eax, 0x40_0000)?;
        a.jmp(eax)
    });
    let m = &mut cpu.mem;
    put(m, PDPT, &(0x21000u64 | 1).to_le_bytes());
    put(m, 0x21000, &(0x83u64).to_le_bytes()); // 2 MiB identity page at 0
    put(m, 0x21000 + 2 * 8, &(0x22000u64 | 7).to_le_bytes()); // 0x400000: a page table
    put(m, 0x22000, &(0x6000u64 | 3 | 1 << 63).to_le_bytes());
    run(&mut cpu, &mut bus);
    // Error code: present + instruction fetch; CR2 = the target.
    assert_eq!(bus.out, vec![0x9090_9090, 0x11, 0x40_0000]);
}

/// Enter ring 3 at RING3 with paging on: every page user-accessible but the one at 0x6000.
fn ring3_paged(r3: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> (Cpu, TestBus) {
    let (mut cpu, bus) = machine(|a| {
        a.mov(ax, 0x28)?;
        a.ltr(ax)?;
        enable_paging(a)?;
        a.push(0x23)?;
        a.push(0x70000)?;
        a.pushfd()?;
        a.push(0x1B)?;
        a.push(RING3 as i32)?;
        a.iretd()
    });
    setup_paging(&mut cpu);
    put32(&mut cpu.mem, PD + 0x1000 + 6 * 4, 0x6000 | 3);
    let code = asm32(RING3, r3);
    put(&mut cpu.mem, RING3, &code);
    (cpu, bus)
}

#[test]
fn user_access_to_a_supervisor_page_faults() {
    let (mut cpu, mut bus) = ring3_paged(|a| {
        // IRET to ring 3 nulled DS (its DPL 0 is below CPL 3): load the ring-3 data segment.
        a.mov(ax, 0x23)?;
        a.mov(ds, ax)?;
        a.mov(eax, dword_ptr(0x5000))?; // a user page: fine
        a.mov(eax, dword_ptr(0x6004))?;
        a.hlt()
    });
    run(&mut cpu, &mut bus);
    // Present, read, user.
    assert_eq!(bus.out, vec![5, 0x6004]);
}

#[test]
fn user_port_access_without_iopl_is_gp() {
    let (mut cpu, mut bus) = ring3_paged(|a| {
        a.mov(dx, 0x80u32)?;
        a.in_(al, dx)?;
        a.hlt()
    });
    run(&mut cpu, &mut bus);
    assert_eq!(bus.out, vec![0, 0xDEAD_000D]);
}

/// IRETD from ring 0 into v8086 mode at 0500:0000 with the given IOPL.
fn v86(
    iopl: u32,
    code: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> (Cpu, TestBus) {
    let (mut cpu, bus) = machine(|a| {
        a.mov(ax, 0x28)?;
        a.ltr(ax)?;
        for v in [0x0700, 0x0700, 0x0700, 0x0700, 0x0600, 0xFFE] {
            a.push(v)?; // GS FS DS ES SS SP
        }
        a.push(((1 << 17) | (iopl << 12) | 2) as i32)?; // EFLAGS: VM, IOPL
        a.push(0x0500)?; // CS
        a.push(0)?; // IP
        a.iretd()
    });
    let mut a = CodeAssembler::new(16).unwrap();
    code(&mut a).unwrap();
    put(&mut cpu.mem, 0x5000, &a.assemble(0).unwrap());
    (cpu, bus)
}

#[test]
fn v86_int_with_iopl_below_3_is_gp() {
    let (mut cpu, mut bus) = v86(0, |a| {
        a.mov(ax, 0x1234)?;
        a.int(0x80)
    });
    run(&mut cpu, &mut bus);
    assert_eq!(bus.out, vec![0, 0xDEAD_000D]);
}

#[test]
fn v86_int_with_iopl_3_enters_ring0_with_the_v86_frame() {
    let (mut cpu, mut bus) = v86(3, |a| {
        // Real-mode addressing: DS = 0x0700 → linear 0x7000.
        a.mov(word_ptr(0x10), 0x4321)?;
        a.int(0x80)
    });
    run(&mut cpu, &mut bus);
    // ESP0 minus GS FS DS ES SS ESP EFLAGS CS EIP; old CS; old ESP; old SS.
    assert_eq!(bus.out, vec![0x8F000 - 36, 0x0500, 0xFFE, 0x0600]);
    assert_eq!(
        &cpu.mem.as_slice()[0x7010..0x7012],
        &0x4321u16.to_le_bytes()
    );
    // The handler runs with the data segments nulled.
    assert_eq!(cpu.segs[3].selector, 0);
}

#[test]
fn task_switch_through_a_task_gate_and_back_with_iret_then_jmp() {
    const TSS2: u64 = 0x7800;
    const TASK2: u64 = 0x4800;
    let (mut cpu, mut bus) = machine(|a| {
        a.mov(ax, 0x28)?;
        a.ltr(ax)?;
        a.db(&[0x9A, 0, 0, 0, 0, 0x40, 0])?; // call far 0x40:0 (task gate)
        a.mov(eax, 0x1111)?;
        report(a)?;
        a.db(&[0xEA, 0, 0, 0, 0, 0x38, 0])?; // jmp far 0x38:0 (TSS)
        Ok(())
    });
    let m = &mut cpu.mem;
    // Extra GDT entries: 0x38 TSS2, 0x40 task gate to it.
    put(
        m,
        GDT + 7 * 8,
        &(0x67 | ((TSS2 & 0xFF_FFFF) << 16) | (0x89u64 << 40)).to_le_bytes(),
    );
    put(
        m,
        GDT + 8 * 8,
        &((0x38u64 << 16) | (0x85u64 << 40)).to_le_bytes(),
    );
    put(m, GDTR, &(9u16 * 8 - 1).to_le_bytes());
    put32(m, TSS2 + 0x20, TASK2 as u32); // EIP
    put32(m, TSS2 + 0x24, 2); // EFLAGS
    put32(m, TSS2 + 0x38, 0x60000); // ESP
    for (i, sel) in [0x10u16, 0x08, 0x10, 0x10, 0x10, 0x10].iter().enumerate() {
        put(m, TSS2 + 0x48 + i as u64 * 4, &sel.to_le_bytes());
    }
    let t2 = asm32(TASK2, |a| {
        a.str(ax)?;
        a.movzx(eax, ax)?;
        report(a)?;
        report_flags(a, 0x4000)?;
        a.mov(eax, dword_ptr(TSS2 as u32))?;
        report(a)?;
        a.iretd()?;
        // Resumed by the JMP from task 1.
        a.mov(eax, 0x2222)?;
        report(a)?;
        a.hlt()
    });
    put(&mut cpu.mem, TASK2, &t2);
    run(&mut cpu, &mut bus);
    assert_eq!(bus.out, vec![0x38, 0x4000, 0x28, 0x1111, 0x2222]);
    assert_eq!(cpu.tr.selector, 0x38);
    // JMP left task 1 not busy and task 2 busy; CR0.TS is set by the switches.
    let m = cpu.mem.as_slice();
    assert_eq!(m[(GDT + 5 * 8 + 5) as usize] & 0xF, 0x9);
    assert_eq!(m[(GDT + 7 * 8 + 5) as usize] & 0xF, 0xB);
    assert!(cpu.cr0 & translator::state::cr0::TS != 0);
}

#[test]
fn bad_selector_in_the_new_tss_raises_ts_inside_the_new_task() {
    const TSS2: u64 = 0x7800;
    let (mut cpu, mut bus) = machine(|a| {
        a.mov(ax, 0x28)?;
        a.ltr(ax)?;
        a.db(&[0xEA, 0, 0, 0, 0, 0x38, 0]) // jmp far 0x38:0 (TSS)
    });
    let m = &mut cpu.mem;
    put(
        m,
        GDT + 7 * 8,
        &(0x67 | ((TSS2 & 0xFF_FFFF) << 16) | (0x89u64 << 40)).to_le_bytes(),
    );
    put(m, GDTR, &(8u16 * 8 - 1).to_le_bytes());
    put(m, IDT + 10 * 8, &gate(GP_HANDLER, 0x08, 0x8E).to_le_bytes());
    put32(m, TSS2 + 0x20, 0x4800);
    put32(m, TSS2 + 0x24, 2);
    put32(m, TSS2 + 0x38, 0x60000);
    // DS = 0x48 lies beyond the GDT limit.
    for (i, sel) in [0x10u16, 0x08, 0x10, 0x48, 0x10, 0x10].iter().enumerate() {
        put(m, TSS2 + 0x48 + i as u64 * 4, &sel.to_le_bytes());
    }
    run(&mut cpu, &mut bus);
    assert_eq!(bus.out, vec![0x48, 0xDEAD_000D]);
    assert_eq!(cpu.tr.selector, 0x38);
    // The handler ran on the new task's stack: EIP, CS, EFLAGS and the error code were pushed,
    // the handler popped the error code.
    assert_eq!(cpu.regs[4] as u32, 0x60000 - 12);
}

const DATA: u32 = 0x6000;

#[test]
fn x87_arithmetic_conversions_and_compares() {
    let (mut cpu, mut bus) = machine(|a| {
        a.fninit()?;
        // sqrt(1 + 1) stored as m64.
        a.fld1()?;
        a.fld1()?;
        a.faddp(st1, st0)?;
        a.fsqrt()?;
        a.fstp(qword_ptr(DATA))?;
        // Integer round trip: -7 → m16.
        a.mov(dword_ptr(DATA + 8), -7)?;
        a.fild(dword_ptr(DATA + 8))?;
        a.fistp(word_ptr(DATA + 12))?;
        a.movsx(eax, word_ptr(DATA + 12))?;
        report(a)?;
        // pi as m80.
        a.fldpi()?;
        a.fstp(tword_ptr(DATA + 16))?;
        // 1 < 2: FCOM + FNSTSW AX reports C0, C3 = 0.
        a.fld1()?;
        a.fld1()?;
        a.fld1()?;
        a.faddp(st1, st0)?; // st0 = 2, st1 = 1
        a.fxch(st0, st1)?; // st0 = 1, st1 = 2
        a.fcom_2(st0, st1)?;
        a.fnstsw(ax)?;
        a.and(eax, 0x4500)?;
        report(a)?;
        // FCOMI sets CF for below.
        a.fcomi(st0, st1)?;
        a.setb(al)?;
        a.movzx(eax, al)?;
        report(a)?;
        a.fcompp()?;
        // FIST rounding: 2.5 → 2 (nearest even); with RC = chop, -2.7 → -2.
        a.mov(dword_ptr(DATA + 32), 0x4020_0000)?; // 2.5f
        a.fld(dword_ptr(DATA + 32))?;
        a.fistp(dword_ptr(DATA + 36))?;
        a.mov(eax, dword_ptr(DATA + 36))?;
        report(a)?;
        a.fnstcw(word_ptr(DATA + 40))?;
        a.or(word_ptr(DATA + 40), 0x0C00)?;
        a.fldcw(word_ptr(DATA + 40))?;
        a.mov(dword_ptr(DATA + 32), 0xC02C_CCCDu32 as i32)?; // -2.7f
        a.fld(dword_ptr(DATA + 32))?;
        a.fistp(dword_ptr(DATA + 36))?;
        a.mov(eax, dword_ptr(DATA + 36))?;
        report(a)?;
        // BCD store of 1234.
        a.mov(dword_ptr(DATA + 48), 1234)?;
        a.fild(dword_ptr(DATA + 48))?;
        a.fbstp(tword_ptr(DATA + 52))?;
        a.mov(eax, dword_ptr(DATA + 52))?;
        report(a)?;
        // The stack is empty again: TOP = 0 and every tag empty after FNSTENV.
        a.fnstenv(ptr(DATA + 64))?;
        a.mov(eax, dword_ptr(DATA + 64 + 8))?;
        report(a)
    });
    run(&mut cpu, &mut bus);
    assert_eq!(
        bus.out,
        vec![
            (-7i32) as u32,
            0x0100,
            1,
            2,
            (-2i32) as u32,
            0x1234,
            0xFFFF_FFFF
        ]
    );
    let m = cpu.mem.as_slice();
    let d = DATA as usize;
    assert_eq!(
        f64::from_le_bytes(m[d..d + 8].try_into().unwrap()),
        2f64.sqrt()
    );
    let (mant, se) = translator::x87::f64_to_f80(std::f64::consts::PI);
    assert_eq!(&m[d + 16..d + 24], &mant.to_le_bytes());
    assert_eq!(&m[d + 24..d + 26], &se.to_le_bytes());
    assert_eq!(se, 0x4000);
    assert_eq!(mant >> 11, 0xC90F_DAA2_2168_C235 >> 11);
}

#[test]
fn x87_fnsave_frstor_round_trip() {
    let (mut cpu, mut bus) = machine(|a| {
        a.fninit()?;
        a.fldpi()?;
        a.fld1()?;
        a.fnsave(ptr(DATA))?; // also reinitialises
        a.fld1()?;
        a.fstp(st0)?;
        a.frstor(ptr(DATA))?;
        a.fstp(qword_ptr(DATA + 200))?; // 1.0
        a.fstp(qword_ptr(DATA + 208))?; // pi
        a.fnstsw(ax)?;
        a.movzx(eax, ax)?;
        report(a)
    });
    run(&mut cpu, &mut bus);
    let m = cpu.mem.as_slice();
    let d = DATA as usize;
    assert_eq!(
        f64::from_le_bytes(m[d + 200..d + 208].try_into().unwrap()),
        1.0
    );
    assert_eq!(
        f64::from_le_bytes(m[d + 208..d + 216].try_into().unwrap()),
        std::f64::consts::PI
    );
    // TOP back at 0, no exception flags.
    assert_eq!(bus.out, vec![0]);
}

#[test]
fn x87_with_cr0_em_raises_nm() {
    let (mut cpu, mut bus) = machine(|a| {
        a.mov(eax, cr0)?;
        a.or(eax, 4)?; // EM
        a.mov(cr0, eax)?;
        a.fld1()
    });
    put(
        &mut cpu.mem,
        IDT + 7 * 8,
        &gate(GP_HANDLER + 0x40, 0x08, 0x8E).to_le_bytes(),
    );
    let nm = asm32(GP_HANDLER + 0x40, |a| {
        a.mov(eax, 0x77)?;
        report(a)?;
        a.hlt()
    });
    put(&mut cpu.mem, GP_HANDLER + 0x40, &nm);
    run(&mut cpu, &mut bus);
    assert_eq!(bus.out, vec![0x77]);
}

#[test]
fn f80_conversions_are_exact_for_f64_values() {
    use translator::x87::{f64_to_f80, f80_to_f64};
    for v in [
        0.0,
        -0.0,
        1.0,
        -2.5,
        1e300,
        -1e-300,
        5e-324,
        f64::MAX,
        f64::MIN_POSITIVE,
        f64::INFINITY,
    ] {
        let (m, se) = f64_to_f80(v);
        let back = f80_to_f64(m, se);
        assert_eq!(back.to_bits(), v.to_bits(), "{v}");
    }
    assert!(f80_to_f64(0xC000_0000_0000_0000, 0x7FFF).is_nan());
    // 1 + 2^-63 rounds to 1.0 in f64.
    assert_eq!(f80_to_f64(0x8000_0000_0000_0001, 0x3FFF), 1.0);
}

#[test]
fn invlpg_drops_a_cached_translation() {
    let (mut cpu, mut bus) = machine(|a| {
        enable_paging(a)?;
        a.mov(dword_ptr(0x6000), 0xAAAA)?;
        a.mov(dword_ptr(0x7000), 0xBBBB)?;
        a.mov(eax, dword_ptr(0x40_0000))?; // through PTE → 0x6000
        report(a)?;
        a.mov(dword_ptr(PD as u32 + 0x2000), 0x7000 | 3)?; // remap to 0x7000
        a.mov(eax, dword_ptr(0x40_0000))?; // may still be the cached 0x6000
        a.invlpg(ptr(0x40_0000))?;
        a.mov(eax, dword_ptr(0x40_0000))?;
        report(a)?;
        // A write through the new mapping lands in 0x7000.
        a.mov(dword_ptr(0x40_0004), 0xCCCC)?;
        a.mov(eax, dword_ptr(0x7004))?;
        report(a)
    });
    setup_paging(&mut cpu);
    run(&mut cpu, &mut bus);
    assert_eq!(bus.out, vec![0xAAAA, 0xBBBB, 0xCCCC]);
}

/// Data accesses that run off the end of a page whose start was just accessed (so compiled
/// code's near page holds it) reach the next linear page's own frame, which is not the next
/// physical one: reads and writes, 40 passes (compiled in both JIT modes).
#[test]
fn accesses_across_a_page_end_after_one_in_the_page_use_both_frames() {
    let (mut cpu, mut bus) = machine(|a| {
        enable_paging(a)?;
        a.xor(esi, esi)?;
        a.mov(edi, 40)?;
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.mov(eax, dword_ptr(0x40_0000))?;
        a.mov(ecx, dword_ptr(0x40_0FFE))?;
        a.add(esi, ecx)?;
        a.mov(dword_ptr(0x40_0000), eax)?;
        a.mov(dword_ptr(0x40_0FFE), 0xA1B2_C3D4u32 as i32)?;
        a.dec(edi)?;
        a.jne(top)?;
        a.mov(eax, esi)?;
        report(a)?;
        // Through the identity map: the stores' halves in each frame, and the physical
        // page after the first frame untouched.
        a.mov(eax, dword_ptr(0x6FFC))?;
        report(a)?;
        a.mov(eax, dword_ptr(0x9000))?;
        report(a)?;
        a.mov(eax, dword_ptr(0x7000))?;
        report(a)
    });
    setup_paging(&mut cpu);
    // 0x40_0000 -> 0x6000 (setup_paging), 0x40_1000 -> 0x9000.
    put32(&mut cpu.mem, PD + 0x2004, 0x9000 | 3);
    put32(&mut cpu.mem, 0x6FFC, 0x4433_0000);
    put32(&mut cpu.mem, 0x9000, 0x0000_6655);
    put32(&mut cpu.mem, 0x7000, 0xEEEE_EEEE);
    run(&mut cpu, &mut bus);
    // The first pass reads 0x6655_4433; the others read back the store of the pass before.
    let sum = 0x6655_4433u32.wrapping_add(39u32.wrapping_mul(0xA1B2_C3D4));
    assert_eq!(bus.out, vec![sum, 0xC3D4_0000, 0x0000_A1B2, 0xEEEE_EEEE]);
}

/// REP MOVSB through FS with a base that is not page-aligned: a source run inside one page
/// of offsets crosses a page of linear addresses, whose frame is not the next physical one
/// (compiled code may copy a run in one go only when it stays in one linear page).
#[test]
fn rep_movs_through_a_based_segment_reads_the_next_linear_pages_frame() {
    let (mut cpu, mut bus) = machine(|a| {
        enable_paging(a)?;
        a.mov(eax, 0x30u32)?;
        a.mov(fs, ax)?;
        a.cld()?;
        a.mov(ebp, 40)?;
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        // FS:0x40_0E80 is linear 0x40_0F80: 0x80 bytes in frame 0x6000, 0x80 in frame 0x9000.
        a.mov(esi, 0x40_0E80u32)?;
        a.mov(edi, 0x5000u32)?;
        a.mov(ecx, 0x100u32)?;
        a.db(&[0x64, 0xF3, 0xA4])?;
        a.dec(ebp)?;
        a.jne(top)?;
        a.mov(eax, dword_ptr(0x507C))?;
        report(a)?;
        a.mov(eax, dword_ptr(0x5080))?;
        report(a)?;
        a.mov(eax, esi)?;
        report(a)
    });
    setup_paging(&mut cpu);
    // 0x40_0000 -> 0x6000 (setup_paging), 0x40_1000 -> 0x9000; FS (0x30): base 0x100, 4 GiB.
    put32(&mut cpu.mem, PD + 0x2004, 0x9000 | 3);
    put(
        &mut cpu.mem,
        GDT + 0x30,
        &0x00CF_9200_0100_FFFFu64.to_le_bytes(),
    );
    put32(&mut cpu.mem, 0x6FFC, 0x4433_2211);
    put32(&mut cpu.mem, 0x9000, 0x8877_6655);
    put32(&mut cpu.mem, 0x7000, 0xEEEE_EEEE);
    run(&mut cpu, &mut bus);
    assert_eq!(bus.out, vec![0x4433_2211, 0x8877_6655, 0x40_0F80]);
}

/// INC keeps the CF of the ADD before it, also when the load after the INC misses the TLB
/// on its first run (compiled code stores the INC's pending flags on that slow path and
/// again before the PUSHFD: the second time must not take CF from the INC's own record).
#[test]
fn inc_keeps_the_carry_across_a_load_that_misses_the_tlb() {
    let (mut cpu, mut bus) = machine(|a| {
        a.mov(dword_ptr(0x5000), 2)?;
        a.mov(eax, 0xFFFF_FFFFu32)?;
        a.mov(ecx, 7)?;
        a.add(eax, dword_ptr(0x5000))?; // CF = 1
        a.inc(ecx)?;
        a.mov(edx, dword_ptr(0x8000))?;
        report_flags(a, 1)?;
        a.mov(eax, ecx)?;
        report(a)
    });
    run(&mut cpu, &mut bus);
    assert_eq!(bus.out, vec![1, 8]);
}

/// An ADD with a memory operand after a register ADD whose flags are still pending (only
/// the memory ADD's slow path would store them) records its own operation, not the one left
/// in memory by the SUB before.
#[test]
fn a_memory_add_after_a_pending_add_records_its_operation() {
    let (mut cpu, mut bus) = machine(|a| {
        a.mov(dword_ptr(0x5000), 1)?;
        a.mov(dword_ptr(0x5004), 1)?;
        a.mov(eax, 5)?;
        a.mov(ebx, 1)?;
        a.mov(ecx, 2)?;
        a.mov(edx, 0xFFFF_FFFFu32)?;
        a.sub(eax, dword_ptr(0x5004))?;
        a.add(ebx, ecx)?;
        a.add(edx, dword_ptr(0x5000))?; // 0: CF = 1, ZF = 1
        report_flags(a, 0x41)
    });
    run(&mut cpu, &mut bus);
    assert_eq!(bus.out, vec![0x41]);
}

/// The flags of a SUB from ESP stay the SUB's across the PUSH after it (which moves ESP
/// before anything stores them): AF = 1 (0x80000 - 8 borrows from bit 4).
#[test]
fn a_push_after_a_sub_from_esp_keeps_the_subs_flags() {
    let (mut cpu, mut bus) = machine(|a| {
        a.mov(esp, 0x80000)?;
        a.sub(esp, 8)?;
        a.push(eax)?;
        report_flags(a, 0x10)
    });
    run(&mut cpu, &mut bus);
    assert_eq!(bus.out, vec![0x10]);
}

/// Two rotates in a row after an ADD: SF/ZF/AF/PF stay the ADD's, CF and OF are the last
/// rotate's (0x100 ROR 3 ROR 5 = 1: CF = OF = 0; the ADD's 0 gave ZF, AF, PF and CF).
#[test]
fn rotates_keep_the_arithmetic_flags_of_the_add_before_them() {
    let (mut cpu, mut bus) = machine(|a| {
        a.mov(eax, 1)?;
        a.mov(ebx, 0xFFFF_FFFFu32)?;
        a.mov(ecx, 0x100)?;
        a.add(eax, ebx)?;
        a.ror(ecx, 3)?;
        a.ror(ecx, 5)?;
        a.mov(dword_ptr(0x5008), ecx)?;
        report_flags(a, 0x8D5)?;
        a.mov(eax, ecx)?;
        report(a)
    });
    run(&mut cpu, &mut bus);
    assert_eq!(bus.out, vec![0x54, 1]);
}

/// A paged machine (CR4.PGE on) whose program makes 40 passes (EDI = 40 down to 1), each
/// storing the PTE at `pte` from `table[EDI]`, running `forget` and `before_call`, then
/// calling 0x40_0000; it reports ESI at the end.
fn pte_loop(
    pte: u32,
    table: u32,
    forget: fn(&mut CodeAssembler) -> Result<(), IcedError>,
    before_call: fn(&mut CodeAssembler) -> Result<(), IcedError>,
) -> (Cpu, TestBus) {
    machine(|a| {
        enable_paging(a)?;
        a.mov(eax, cr4)?;
        a.or(eax, 0x80)?;
        a.mov(cr4, eax)?;
        a.xor(esi, esi)?;
        a.mov(edi, 40)?;
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.mov(eax, dword_ptr(edi * 4 + table))?;
        a.mov(dword_ptr(pte), eax)?;
        forget(a)?;
        before_call(a)?;
        a.call(0x40_0000u64)?;
        a.dec(edi)?;
        a.jne(top)?;
        a.mov(eax, esi)?;
        report(a)
    })
}

/// A loop of 40 passes that writes the next PTE of the code page at 0x40_0000 from a table,
/// makes the TLB drop it with `forget`, calls into the page and reports ESI at the end. The
/// page at 0x6000 counts passes in ESI by 1, the one at 0x7000 by 0x100; passes 40..=11 map
/// the first, 10..=1 the second, with `pte_bits` in each PTE. CR4.PGE is on.
fn remapping_loop(
    forget: fn(&mut CodeAssembler) -> Result<(), IcedError>,
    pte_bits: u32,
) -> Vec<u32> {
    const TABLE: u32 = 0x8000;
    let (mut cpu, mut bus) = pte_loop(PD as u32 + 0x2000, TABLE, forget, |_| Ok(()));
    setup_paging(&mut cpu);
    for (frame, step) in [(0x6000, 1), (0x7000, 0x100)] {
        let code = asm32(0x40_0000, |a| {
            a.add(esi, step)?;
            a.ret()
        });
        put(&mut cpu.mem, frame, &code);
    }
    for i in 1..=40u32 {
        let frame = if i > 10 { 0x6000 } else { 0x7000 };
        put32(&mut cpu.mem, (TABLE + i * 4) as u64, frame | pte_bits | 3);
    }
    run(&mut cpu, &mut bus);
    bus.out
}

/// A loop that calls (through a JMP at 0x40_0000) `add esi, imm32; ret` at linear 0x40_0FFD,
/// so that the ADD runs from
/// its opcode on one page (frame 0x6000, global when `global_first`) into its immediate's
/// upper three bytes on the next, 0x40_1000. Each pass (`i` = 40 down to 1) points the second
/// page's PTE at frame `second(i)` and drops the old translation with `forget`, and may
/// change code with `before_call`.
fn straddling_loop(
    forget: fn(&mut CodeAssembler) -> Result<(), IcedError>,
    global_first: bool,
    before_call: fn(&mut CodeAssembler) -> Result<(), IcedError>,
    second: impl Fn(u32) -> u32,
) -> Vec<u32> {
    const TABLE: u32 = 0x22000;
    let (mut cpu, mut bus) = pte_loop(PD as u32 + 0x2004, TABLE, forget, before_call);
    setup_paging(&mut cpu);
    if global_first {
        put32(&mut cpu.mem, PD + 0x2000, 0x6000 | 0x100 | 3);
    }
    // The call lands on a jump to it within the first page (a static link's case)...
    let jump = asm32(0x40_0000, |a| a.jmp(0x40_0FFDu64));
    put(&mut cpu.mem, 0x6000, &jump);
    // ...add esi, imm32 (81 C6 imm32): opcode, ModRM and the immediate's low byte (1) here...
    put(&mut cpu.mem, 0x6FFD, &[0x81, 0xC6, 0x01]);
    // ...its other three bytes and the RET on the next page: imm 1 or 0x10001.
    put(&mut cpu.mem, 0x20000, &[0x00, 0x00, 0x00, 0xC3]);
    put(&mut cpu.mem, 0x21000, &[0x00, 0x01, 0x00, 0xC3]);
    for i in 1..=40u32 {
        put32(&mut cpu.mem, (TABLE + i * 4) as u64, second(i) | 3);
    }
    run(&mut cpu, &mut bus);
    bus.out
}

/// An instruction that runs onto the next page is cached as a block of its own that holds
/// only while that page maps where it did: remapped, the new bytes run — after INVLPG of
/// the second page, and after a CR3 reload when only the first page is global (a link into
/// the block must not outlive the reload as links into global code do).
#[test]
fn an_instruction_across_pages_follows_a_remap_of_the_second_page() {
    let invlpg = |a: &mut CodeAssembler| a.invlpg(ptr(0x40_1000));
    let reload = |a: &mut CodeAssembler| {
        a.mov(eax, cr3)?;
        a.mov(cr3, eax)
    };
    for (forget, global_first) in [(invlpg as fn(&mut _) -> _, false), (reload, true)] {
        let second = |i| if i > 10 { 0x20000 } else { 0x21000 };
        let out = straddling_loop(forget, global_first, |_| Ok(()), second);
        assert_eq!(
            out,
            vec![30 + 10 * 0x10001],
            "global first page: {global_first}"
        );
    }
}

/// A block goes on at a JMP's target on another page and holds only while that page maps
/// where it did. The code at 0x40_0000 (frame 0x6000, global in the CR3-reload case) adds 1
/// to ESI and jumps to 0x40_1000, whose PTE each pass points at frame 0x20000 (passes
/// 40..=11: ESI += 0x100) or 0x21000 (10..=1: += 0x10000) before dropping the old
/// translation. The block is reached through a side exit within the first page — a static
/// jump once compiled, which vouches for the first page only — so its second page must be
/// checked there too, not only by the dispatcher's lookup.
#[test]
fn a_block_that_jumps_onto_another_page_follows_a_remap_of_that_page() {
    let invlpg = |a: &mut CodeAssembler| a.invlpg(ptr(0x40_1000));
    let reload = |a: &mut CodeAssembler| {
        a.mov(eax, cr3)?;
        a.mov(cr3, eax)
    };
    for (forget, global_first) in [(invlpg as fn(&mut _) -> _, false), (reload, true)] {
        const TABLE: u32 = 0x22000;
        let (mut cpu, mut bus) = pte_loop(PD as u32 + 0x2004, TABLE, forget, |_| Ok(()));
        setup_paging(&mut cpu);
        if global_first {
            put32(&mut cpu.mem, PD + 0x2000, 0x6000 | 0x100 | 3);
        }
        let first = asm32(0x40_0000, |a| {
            let mut on = a.create_label();
            a.test(esi, esi)?;
            a.jns(on)?;
            // (Never runs; ends the block, which so stays on the first page.)
            a.ret()?;
            a.set_label(&mut on)?;
            a.add(esi, 1)?;
            a.jmp(0x40_1000u64)
        });
        put(&mut cpu.mem, 0x6000, &first);
        for (frame, step) in [(0x20000, 0x100), (0x21000, 0x10000)] {
            let code = asm32(0x40_1000, |a| {
                a.add(esi, step)?;
                a.ret()
            });
            put(&mut cpu.mem, frame, &code);
        }
        for i in 1..=40u32 {
            let frame = if i > 10 { 0x20000 } else { 0x21000 };
            put32(&mut cpu.mem, (TABLE + i * 4) as u64, frame | 3);
        }
        run(&mut cpu, &mut bus);
        assert_eq!(
            bus.out,
            vec![40 + 30 * 0x100 + 10 * 0x10000],
            "global first page: {global_first}"
        );
    }
}

/// Building a block that could go on into the next page translates that page first; when it
/// is not mapped, nothing the guest sees may change: CR2 keeps the value it had (one the
/// program put there), though the failed walk raised a #PF internally.
#[test]
fn a_block_ending_before_an_unmapped_page_leaves_cr2_alone() {
    let (mut cpu, mut bus) = machine(|a| {
        enable_paging(a)?;
        a.mov(eax, 0x1234_5000u32)?;
        a.mov(cr2, eax)?;
        a.mov(eax, 0x40_0FF0u32)?;
        a.jmp(eax)
    });
    setup_paging(&mut cpu);
    // At the end of 0x40_0000's page: one block up to the page's end, then the fetch from
    // 0x40_1000, which is not mapped, faults (the #PF handler reports its error code and
    // CR2, now the fetch's address).
    let mut tail = asm32(0x40_0FF0, |a| {
        a.mov(eax, cr2)?;
        report(a)
    });
    assert!(tail.len() <= 16);
    tail.resize(16, 0x90);
    put(&mut cpu.mem, 0x6FF0, &tail);
    run(&mut cpu, &mut bus);
    assert_eq!(bus.out.first(), Some(&0x1234_5000), "{:x?}", bus.out);
    assert_eq!(bus.out.last(), Some(&0x40_1000), "{:x?}", bus.out);
}

/// A cached block on two pages whose second page is no longer mapped is built again; when
/// the run then leaves before reaching that page, CR2 keeps its value (the lookup's failed
/// walk of the second page must not leave its address there). The code at 0x40_0000 jumps
/// to 0x40_1000 (a RET) when ESI is 0, else reports CR2 first.
#[test]
fn a_block_whose_second_page_went_away_leaves_cr2_alone() {
    let (mut cpu, mut bus) = machine(|a| {
        enable_paging(a)?;
        a.xor(esi, esi)?;
        a.call(0x40_0000u64)?;
        a.mov(dword_ptr(PD as u32 + 0x2004), 0)?;
        a.invlpg(ptr(0x40_1000))?;
        a.mov(eax, 0x1234_5000u32)?;
        a.mov(cr2, eax)?;
        a.inc(esi)?;
        a.call(0x40_0000u64)
    });
    setup_paging(&mut cpu);
    put32(&mut cpu.mem, PD + 0x2004, 0x20000 | 3);
    let first = asm32(0x40_0000, |a| {
        let mut skip = a.create_label();
        a.test(esi, esi)?;
        a.jnz(skip)?;
        a.jmp(0x40_1000u64)?;
        a.set_label(&mut skip)?;
        a.mov(eax, cr2)?;
        report(a)?;
        a.ret()
    });
    put(&mut cpu.mem, 0x6000, &first);
    put(&mut cpu.mem, 0x20000, &[0xC3]);
    run(&mut cpu, &mut bus);
    assert_eq!(bus.out, vec![0x1234_5000]);
}

/// A store into the second page's part of a cached page-crossing instruction is seen (the
/// block is on both pages' code lists): from pass 20 on, the immediate is 0x20001.
#[test]
fn a_store_into_the_second_page_of_an_instruction_is_seen() {
    let store = |a: &mut CodeAssembler| {
        let mut skip = a.create_label();
        a.cmp(edi, 20)?;
        a.ja(skip)?;
        // Through the identity map of the low 4 MiB.
        a.mov(byte_ptr(0x20001), 2)?;
        a.set_label(&mut skip)?;
        a.nop()
    };
    let out = straddling_loop(|a| a.invlpg(ptr(0x40_1000)), false, store, |_| 0x20000);
    assert_eq!(out, vec![20 + 20 * 0x20001]);
}

/// When the PTE points elsewhere after INVLPG, the call must reach the new page's code, not
/// the compiled code a link from an earlier pass leads to (the link context changes with the
/// TLB generation, which the handler bumps in the middle of the block).
#[test]
fn remapped_code_after_invlpg_is_not_reached_through_an_old_link() {
    let out = remapping_loop(|a| a.invlpg(ptr(0x40_0000)), 0);
    assert_eq!(out, vec![30 + 10 * 0x100]);
}

/// The same with a CR3 reload instead of INVLPG, with ordinary and with global PTEs: the
/// reload drops the ordinary translation, so the new page runs; it keeps the global one, so
/// the first page goes on running — in tier 0 through the TLB, in tier 1 also through links
/// stamped with the global-page context, which outlive CR3 reloads.
#[test]
fn a_cr3_reload_remaps_ordinary_code_but_not_global_code() {
    let reload = |a: &mut CodeAssembler| {
        a.mov(eax, cr3)?;
        a.mov(cr3, eax)
    };
    assert_eq!(remapping_loop(reload, 0), vec![30 + 10 * 0x100]);
    assert_eq!(remapping_loop(reload, 0x100), vec![40]);
}

#[test]
fn call_gate_from_ring3_copies_parameters_and_retf_returns() {
    const GATE_TARGET: u64 = 0x3400;
    let (mut cpu, mut bus) = machine(|a| {
        a.mov(ax, 0x28)?;
        a.ltr(ax)?;
        a.push(0x23)?;
        a.push(0x70000)?;
        a.pushfd()?;
        a.or(dword_ptr(esp), 0x3000)?; // IOPL 3: ring 3 may report through OUT
        a.push(0x1B)?;
        a.push(RING3 as i32)?;
        a.iretd()
    });
    let m = &mut cpu.mem;
    // 0x38: 32-bit call gate, DPL 3, two dword parameters, to 0x08:GATE_TARGET.
    put(
        m,
        GDT + 7 * 8,
        &(gate(GATE_TARGET, 0x08, 0xEC) | (2u64 << 32)).to_le_bytes(),
    );
    put(m, GDTR, &(8u16 * 8 - 1).to_le_bytes());
    let r3 = asm32(RING3, |a| {
        a.mov(ax, 0x23)?;
        a.mov(ds, ax)?;
        a.push(0x1111)?;
        a.push(0x2222)?;
        a.db(&[0x9A, 0, 0, 0, 0, 0x3B, 0])?; // call far 0x3B:0 (gate, RPL 3)
        // Back in ring 3 with the parameters released by RETF 8.
        a.mov(eax, esp)?;
        report(a)?;
        a.mov(eax, cs)?;
        report(a)?;
        a.hlt() // #GP at ring 3 ends the test
    });
    put(&mut cpu.mem, RING3, &r3);
    let target = asm32(GATE_TARGET, |a| {
        a.mov(eax, cs)?;
        report(a)?;
        a.mov(eax, dword_ptr(esp + 8))?; // second pushed = first parameter slot
        report(a)?;
        a.mov(eax, dword_ptr(esp + 12))?;
        report(a)?;
        a.mov(eax, dword_ptr(esp + 16))?; // old ESP
        report(a)?;
        a.retf_1(8)
    });
    put(&mut cpu.mem, GATE_TARGET, &target);
    run(&mut cpu, &mut bus);
    assert_eq!(
        bus.out,
        vec![
            0x08,   // CS in the gate's target
            0x2222, // parameters copied in order
            0x1111,
            0x70000 - 8, // the caller's ESP after its pushes
            0x70000,     // ESP after RETF 8 in ring 3
            0x1B,        // CS back at ring 3
            0,           // then HLT at ring 3: #GP(0)
            0xDEAD_000D
        ]
    );
}

/// `rep bsf`/`rep bsr` are TZCNT/LZCNT on CPUs with BMI1/LZCNT; ours advertises neither, so
/// they run as BSF/BSR, as on the P6 (Linux's find-first-bit helpers use `rep bsf`).
#[test]
fn rep_bsf_and_rep_bsr_run_as_bsf_and_bsr() {
    let (mut cpu, mut bus) = machine(|a| {
        a.mov(eax, 0x0000_0110u32)?;
        a.mov(ecx, 0xFFFF_FFFFu32)?;
        a.db(&[0xF3, 0x0F, 0xBC, 0xC8])?; // rep bsf ecx, eax
        a.mov(eax, ecx)?;
        report(a)?;
        a.mov(eax, 0x0000_0110u32)?;
        a.db(&[0xF3, 0x0F, 0xBD, 0xC8])?; // rep bsr ecx, eax
        a.mov(eax, ecx)?;
        report(a)?;
        // A zero source: BSF sets ZF and leaves the destination (TZCNT would write 32).
        a.xor(eax, eax)?;
        a.db(&[0xF3, 0x0F, 0xBC, 0xC8])?;
        a.mov(eax, ecx)?;
        report(a)
    });
    run(&mut cpu, &mut bus);
    assert_eq!(bus.out, vec![4, 8, 8]);
}

/// 0F 19-0F 1E are hint NOPs on the P6: ENDBR32 (F3 0F 1E FB), which CET-built code such as
/// Debian's static glibc starts every function with, and RDSSPD (F3 0F 1E /1), which leaves its
/// register alone on a CPU without CET. A memory form touches no memory.
#[test]
fn endbr32_rdssp_and_hint_nops_are_nops() {
    let (mut cpu, mut bus) = machine(|a| {
        a.mov(eax, 0x1234_5678u32)?;
        a.db(&[0xF3, 0x0F, 0x1E, 0xFB])?; // endbr32
        a.db(&[0xF3, 0x0F, 0x1E, 0xC8])?; // rdsspd eax
        a.db(&[0x0F, 0x19, 0x05, 0xF0, 0xFF, 0xFF, 0xFF])?; // hint nop [0xFFFFFFF0]
        a.db(&[0x0F, 0x1E, 0xC0])?; // hint nop eax, eax
        report(a)
    });
    run(&mut cpu, &mut bus);
    assert_eq!(bus.out, vec![0x1234_5678]);
}

jit_forced!(
    enters_protected_mode_and_uses_flat_segments,
    selector_beyond_gdt_limit_raises_gp_with_selector,
    segment_limit_violation_raises_gp0,
    paging_translates_and_sets_accessed_and_dirty,
    page_fault_reports_cr2_and_error_code,
    write_protect_faults_only_with_cr0_wp,
    large_pages_with_pse,
    ring3_interrupt_switches_to_the_tss_stack,
    hlt_at_ring3_is_gp,
    store_into_the_next_instruction_is_seen,
    code_rewritten_on_a_loop_pass_is_retranslated,
    pae_with_nx_faults_on_fetch,
    user_access_to_a_supervisor_page_faults,
    user_port_access_without_iopl_is_gp,
    v86_int_with_iopl_below_3_is_gp,
    v86_int_with_iopl_3_enters_ring0_with_the_v86_frame,
    task_switch_through_a_task_gate_and_back_with_iret_then_jmp,
    bad_selector_in_the_new_tss_raises_ts_inside_the_new_task,
    x87_arithmetic_conversions_and_compares,
    x87_fnsave_frstor_round_trip,
    x87_with_cr0_em_raises_nm,
    f80_conversions_are_exact_for_f64_values,
    invlpg_drops_a_cached_translation,
    remapped_code_after_invlpg_is_not_reached_through_an_old_link,
    a_cr3_reload_remaps_ordinary_code_but_not_global_code,
    an_instruction_across_pages_follows_a_remap_of_the_second_page,
    a_block_that_jumps_onto_another_page_follows_a_remap_of_that_page,
    a_block_ending_before_an_unmapped_page_leaves_cr2_alone,
    a_block_whose_second_page_went_away_leaves_cr2_alone,
    a_store_into_the_second_page_of_an_instruction_is_seen,
    call_gate_from_ring3_copies_parameters_and_retf_returns,
    rep_bsf_and_rep_bsr_run_as_bsf_and_bsr,
    endbr32_rdssp_and_hint_nops_are_nops,
    accesses_across_a_page_end_after_one_in_the_page_use_both_frames,
    inc_keeps_the_carry_across_a_load_that_misses_the_tlb,
    a_memory_add_after_a_pending_add_records_its_operation,
    a_push_after_a_sub_from_esp_keeps_the_subs_flags,
    rotates_keep_the_arithmetic_flags_of_the_add_before_them,
    rep_movs_through_a_based_segment_reads_the_next_linear_pages_frame,
);
