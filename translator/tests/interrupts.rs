//! External interrupts from the board: INTR with IF, the STI shadow, HLT handing control back
//! and waking on INTR, NMI, and triple fault reaching the bus.

#[macro_use]
mod tier;

use iced_x86::code_asm::*;
use translator::state::{Segment, TableReg};
use translator::{Cpu, CpuBus, PhysMem, RunExit};

#[derive(Default)]
struct IrqBus {
    out: Vec<u32>,
    intr: Option<u8>,
    nmi: bool,
    shutdowns: u32,
}

impl CpuBus for IrqBus {
    fn io_read(&mut self, _port: u16, _size: u8) -> u32 {
        u32::MAX
    }
    fn io_write(&mut self, port: u16, _size: u8, value: u32) {
        if port == 0xE9 {
            self.out.push(value);
        }
    }
    fn intr_pending(&mut self) -> bool {
        self.intr.is_some()
    }
    fn intr_ack(&mut self) -> u8 {
        self.intr.take().unwrap_or(0xFF)
    }
    fn take_nmi(&mut self) -> bool {
        std::mem::take(&mut self.nmi)
    }
    fn shutdown(&mut self) {
        self.shutdowns += 1;
    }
}

/// Real-mode machine: code at 0000:1000, handler for vector 0x20 and NMI at 0000:3000 that
/// reports 0x20 / 2 and halts.
fn real_machine(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Cpu {
    let mut mem = PhysMem::new(1 << 20);
    let m = mem.as_mut_slice();
    let mut a = CodeAssembler::new(16).unwrap();
    f(&mut a).unwrap();
    let code = a.assemble(0x1000).unwrap();
    m[0x1000..0x1000 + code.len()].copy_from_slice(&code);
    for (vec, val) in [(0x20u32, 0x20u16), (2, 2)] {
        let h = 0x3000 + vec as usize * 0x10;
        let mut a = CodeAssembler::new(16).unwrap();
        a.mov(ax, val as u32).unwrap();
        a.mov(dx, 0xE9u32).unwrap();
        a.out(dx, ax).unwrap();
        a.iret().unwrap();
        let hc = a.assemble(h as u64).unwrap();
        m[h..h + hc.len()].copy_from_slice(&hc);
        m[vec as usize * 4..vec as usize * 4 + 2].copy_from_slice(&(h as u16).to_le_bytes());
    }
    let mut cpu = Cpu::new(mem);
    cpu.jit.mode = tier::mode();
    cpu.segs[1] = Segment::real(0, true);
    cpu.segs[2] = Segment::real(0, false);
    cpu.regs[4] = 0x8000;
    cpu.idtr = TableReg {
        base: 0,
        limit: 0x3FF,
    };
    cpu.rip = 0x1000;
    cpu
}

fn out_ax(a: &mut CodeAssembler, v: u32) -> Result<(), IcedError> {
    a.mov(ax, v)?;
    a.mov(dx, 0xE9u32)?;
    a.out(dx, ax)
}

#[test]
fn intr_waits_for_if_and_the_sti_shadow() {
    let mut cpu = real_machine(|a| {
        a.cli()?;
        out_ax(a, 1)?;
        a.sti()?;
        out_ax(a, 2)?; // the shadow covers only the first instruction after STI (mov ax)
        a.hlt()
    });
    let mut bus = IrqBus {
        intr: Some(0x20),
        ..Default::default()
    };
    assert_eq!(cpu.run(&mut bus, 1000), RunExit::Halted);
    // The interrupt is taken after `mov ax, 2` — the instruction in STI's shadow — but before
    // `mov dx` of the out sequence: the handler's AX clobbers it, so the out reports 0x20.
    assert_eq!(bus.out, vec![1, 0x20, 0x20]);
}

#[test]
fn hlt_returns_to_the_board_and_intr_wakes_it() {
    let mut cpu = real_machine(|a| {
        a.sti()?;
        a.hlt()?;
        out_ax(a, 7)?;
        a.hlt()
    });
    let mut bus = IrqBus::default();
    assert_eq!(cpu.run(&mut bus, 1000), RunExit::Halted);
    assert!(cpu.halted);
    // Still halted without an interrupt.
    assert_eq!(cpu.run(&mut bus, 1000), RunExit::Halted);
    assert!(bus.out.is_empty());
    bus.intr = Some(0x20);
    assert_eq!(cpu.run(&mut bus, 1000), RunExit::Halted);
    assert_eq!(bus.out, vec![0x20, 7]);
}

#[test]
fn nmi_ignores_if() {
    let mut cpu = real_machine(|a| {
        a.cli()?;
        a.hlt()?;
        out_ax(a, 9)?;
        a.hlt()
    });
    let mut bus = IrqBus::default();
    assert_eq!(cpu.run(&mut bus, 1000), RunExit::Halted);
    bus.nmi = true;
    assert_eq!(cpu.run(&mut bus, 1000), RunExit::Halted);
    assert_eq!(bus.out, vec![2, 9]);
}

#[test]
fn triple_fault_shuts_down_through_the_bus() {
    // An IDT limit of 0 in real mode: the #DE cannot be delivered (#GP), nor can that (#DF),
    // nor the #DF itself.
    let mut cpu = real_machine(|a| {
        a.xor(cx, cx)?;
        a.div(cx)
    });
    cpu.idtr.limit = 0;
    let mut bus = IrqBus::default();
    assert_eq!(cpu.run(&mut bus, 1000), RunExit::Shutdown);
    assert_eq!(bus.shutdowns, 1);
}

#[test]
fn budget_is_honoured() {
    let mut cpu = real_machine(|a| {
        let mut l = a.create_label();
        a.set_label(&mut l)?;
        a.jmp(l)
    });
    let mut bus = IrqBus::default();
    assert_eq!(cpu.run(&mut bus, 500), RunExit::Budget);
    assert_eq!(cpu.icount, 500);
}

#[test]
fn tf_single_steps_each_instruction() {
    let mut cpu = real_machine(|a| {
        a.pushf()?;
        a.pop(ax)?;
        a.or(ax, 0x100)?;
        a.push(ax)?;
        a.popf()?; // 0x1006: TF on from the next instruction
        a.nop()?; // 0x1007: trap with return IP 0x1008
        a.nop()?; // 0x1008: trap with return IP 0x1009
        a.hlt() // 0x1009
    });
    // #DB handler: report the return IP, return.
    let mut a = CodeAssembler::new(16).unwrap();
    a.mov(bp, sp).unwrap();
    a.mov(ax, word_ptr(bp)).unwrap();
    a.mov(dx, 0xE9u32).unwrap();
    a.out(dx, ax).unwrap();
    a.iret().unwrap();
    let h = a.assemble(0x3400).unwrap();
    cpu.mem.as_mut_slice()[0x3400..0x3400 + h.len()].copy_from_slice(&h);
    cpu.mem.as_mut_slice()[4..6].copy_from_slice(&0x3400u16.to_le_bytes());
    let mut bus = IrqBus::default();
    assert_eq!(cpu.run(&mut bus, 1000), RunExit::Halted);
    assert_eq!(bus.out, vec![0x1008, 0x1009]);
    assert!(cpu.dr[6] & (1 << 14) != 0);
}

#[test]
fn instruction_longer_than_15_bytes_is_gp() {
    let mut cpu = real_machine(|a| a.db(&[0x66; 15]).and_then(|_| a.nop()));
    // #GP handler (vector 13) at 0x3500 reports 13.
    let mut a = CodeAssembler::new(16).unwrap();
    out_ax(&mut a, 13).unwrap();
    a.hlt().unwrap();
    let h = a.assemble(0x3500).unwrap();
    cpu.mem.as_mut_slice()[0x3500..0x3500 + h.len()].copy_from_slice(&h);
    cpu.mem.as_mut_slice()[13 * 4..13 * 4 + 2].copy_from_slice(&0x3500u16.to_le_bytes());
    let mut bus = IrqBus::default();
    assert_eq!(cpu.run(&mut bus, 1000), RunExit::Halted);
    assert_eq!(bus.out, vec![13]);
}

#[test]
fn nmi_is_blocked_until_iret() {
    // The NMI handler (vector 2) reports 2 and IRETs; a second NMI raised while it runs must
    // wait for that IRET instead of nesting.
    let mut cpu = real_machine(|a| {
        a.cli()?;
        a.hlt()?;
        out_ax(a, 9)?;
        a.hlt()
    });
    let mut bus = IrqBus::default();
    assert_eq!(cpu.run(&mut bus, 1000), RunExit::Halted);
    bus.nmi = true;
    // Delivery plus the handler's first instruction: one frame on the stack.
    assert_eq!(cpu.run(&mut bus, 1), RunExit::Budget);
    assert_eq!(cpu.regs[4], 0x8000 - 6);
    bus.nmi = true;
    assert_eq!(cpu.run(&mut bus, 1), RunExit::Budget);
    assert_eq!(
        cpu.regs[4],
        0x8000 - 6,
        "a second NMI nested inside the handler"
    );
    assert_eq!(cpu.run(&mut bus, 1000), RunExit::Halted);
    // The first handler, then the held NMI right after its IRET, then the main line.
    assert_eq!(bus.out, vec![2, 2, 9]);
}

jit_forced!(
    intr_waits_for_if_and_the_sti_shadow,
    hlt_returns_to_the_board_and_intr_wakes_it,
    nmi_ignores_if,
    triple_fault_shuts_down_through_the_bus,
    budget_is_honoured,
    tf_single_steps_each_instruction,
    instruction_longer_than_15_bytes_is_gp,
    nmi_is_blocked_until_iret,
);
