//! The same cases in Vireo's CPU: 32-bit flat protected mode with paging, CPL 3, the same
//! linear layout as the native child (code page, area pages, guard pages not present). The
//! descriptor caches, GDTR/IDTR/TR, CR0/CR3 and CPL are set directly through the CPU's public
//! fields, so no setup code runs. The code under test is followed by `int 0x40` (a DPL-3
//! interrupt gate, the "done" exit); every exception vector has its own ring-0 handler that is a
//! single HLT, so the vector is where the CPU halted and the error code, EIP, EFLAGS and ESP are
//! in the ring-0 frame.

use super::common::*;
use translator::state::{Segment, TableReg, attr, sreg};
use translator::{Cpu, JitMode, NullBus, PhysMem, RunExit};

const GDT: u64 = 0x1000;
const IDT: u64 = 0x2000;
const HANDLERS: u64 = 0x3000;
const TSS: u64 = 0x4000;
const STACK0_TOP: u64 = 0x8000;
const PD: u64 = 0x9000;
const PT: u64 = 0xA000;
/// The "done" vector, reached with `int 0x40` after the code.
pub const EXIT_VECTOR: u8 = 0x40;
const MEM_SIZE: usize = 4 << 20;

// Linux's selectors: kernel CS 0x10, kernel DS 0x18, user32 CS 0x23, user DS 0x2B; TSS 0x40.
const KCS: u16 = 0x10;
const KDS: u16 = 0x18;
const UCS: u16 = 0x23;
const UDS: u16 = 0x2B;
const TSS_SEL: u16 = 0x40;

pub struct Vireo {
    cpu: Cpu,
    bus: NullBus,
}

fn put(mem: &mut [u8], addr: u64, b: &[u8]) {
    mem[addr as usize..addr as usize + b.len()].copy_from_slice(b);
}

fn gate(offset: u64, sel: u16, dpl: u8) -> u64 {
    let a = 0x8E | ((dpl as u64) << 5); // present 32-bit interrupt gate
    (offset & 0xFFFF) | ((sel as u64) << 16) | (a << 40) | (((offset >> 16) & 0xFFFF) << 48)
}

const CODE32_3: u16 = attr::P
    | attr::S
    | attr::CODE
    | attr::RW
    | attr::ACCESSED
    | attr::DB
    | attr::G
    | (3 << attr::DPL_SHIFT);
const DATA32_3: u16 =
    attr::P | attr::S | attr::RW | attr::ACCESSED | attr::DB | attr::G | (3 << attr::DPL_SHIFT);

impl Vireo {
    /// The tier the CPU runs under (tier 0, or the JIT forced for every block).
    pub fn mode(&self) -> JitMode {
        self.cpu.jit.mode
    }

    pub fn new(mode: JitMode) -> Self {
        let mut mem = PhysMem::new(MEM_SIZE);
        let m = mem.as_mut_slice();
        let gdt: [u64; 9] = [
            0,
            0,
            0x00CF_9A00_0000_FFFF, // 0x10 kernel code
            0x00CF_9200_0000_FFFF, // 0x18 kernel data
            0x00CF_FA00_0000_FFFF, // 0x23 user code32
            0x00CF_F200_0000_FFFF, // 0x2B user data
            0,
            0,
            0x67 | ((TSS & 0xFF_FFFF) << 16) | (0x8Bu64 << 40), // 0x40 TSS32 (busy)
        ];
        for (i, d) in gdt.iter().enumerate() {
            put(m, GDT + i as u64 * 8, &d.to_le_bytes());
        }
        for v in 0..256u64 {
            let dpl = if v == 3 || v == 4 || v == EXIT_VECTOR as u64 {
                3
            } else {
                0
            };
            put(
                m,
                IDT + v * 8,
                &gate(HANDLERS + v * 4, KCS, dpl).to_le_bytes(),
            );
            put(m, HANDLERS + v * 4, &[0xF4, 0xF4, 0xF4, 0xF4]); // hlt
        }
        put(m, TSS + 4, &(STACK0_TOP as u32).to_le_bytes());
        put(m, TSS + 8, &(KDS as u32).to_le_bytes());
        put(m, TSS + 0x66, &0x68u16.to_le_bytes());
        // Page tables: system pages supervisor-only, the code and area pages user, nothing else.
        put(m, PD, &((PT as u32) | 7).to_le_bytes());
        for page in (0x1000..0xB000u32).step_by(0x1000) {
            put(m, PT + (page as u64 >> 12) * 4, &(page | 3).to_le_bytes());
        }
        for page in [CODE, AREA, AREA + 0x1000] {
            put(m, PT + (page as u64 >> 12) * 4, &(page | 7).to_le_bytes());
        }
        let mut cpu = Cpu::new(mem);
        cpu.jit.mode = mode;
        Vireo { cpu, bus: NullBus }
    }

    fn setup(&mut self, case: &Case) {
        let cpu = &mut self.cpu;
        cpu.reset();
        let flat = |sel: u16, a: u16| Segment {
            selector: sel,
            base: 0,
            limit: 0xFFFF_FFFF,
            attr: a,
        };
        cpu.segs[sreg::CS] = flat(UCS, CODE32_3);
        for s in [sreg::SS, sreg::DS, sreg::ES] {
            cpu.segs[s] = flat(UDS, DATA32_3);
        }
        for s in [sreg::FS, sreg::GS] {
            cpu.segs[s] = Segment {
                selector: 0,
                base: 0,
                limit: 0,
                attr: 0,
            };
        }
        cpu.gdtr = TableReg {
            base: GDT,
            limit: 9 * 8 - 1,
        };
        cpu.idtr = TableReg {
            base: IDT,
            limit: 256 * 8 - 1,
        };
        cpu.tr = Segment {
            selector: TSS_SEL,
            base: TSS,
            limit: 0x67,
            attr: 0x8B,
        };
        use translator::state::cr0;
        cpu.cr3 = PD;
        cpu.cr0 = cr0::PE | cr0::MP | cr0::ET | cr0::NE | cr0::WP | cr0::AM | cr0::PG;
        cpu.cpl = 3;
        for (i, r) in case.regs.iter().enumerate() {
            cpu.regs[i] = *r as u64;
        }
        cpu.set_rflags(case.eflags as u64);
        cpu.rip = CODE as u64;
        let m = cpu.mem.as_mut_slice();
        fill_area(case, &mut m[AREA as usize..AREA as usize + AREA_SIZE]);
        let c = CODE as usize;
        let n = case.code_len as usize;
        m[c..c + n].copy_from_slice(case.code());
        m[c + n..c + n + 2].copy_from_slice(&[0xCD, EXIT_VECTOR]);
        // `reset` dropped every translation and TLB entry, so the new code needs no flush.
        cpu.last_fault = None;
    }

    fn read32(&self, addr: u64) -> u32 {
        let m = self.cpu.mem.as_slice();
        u32::from_le_bytes(m[addr as usize..addr as usize + 4].try_into().unwrap())
    }

    pub fn run(&mut self, case: &Case) -> Outcome {
        self.setup(case);
        let exit = self.cpu.run(&mut self.bus, 100_000);
        let mut o = Outcome::default();
        if exit != RunExit::Halted {
            o.harness_error = if exit == RunExit::Shutdown { 2 } else { 3 };
            return o;
        }
        let h = self.cpu.rip.wrapping_sub(1).wrapping_sub(HANDLERS);
        if h >= 256 * 4 || self.cpu.cpl != 0 {
            o.harness_error = 4;
            return o;
        }
        let v = (h / 4) as u32;
        let mut sp = self.cpu.regs[4] & 0xFFFF_FFFF;
        for i in 0..8 {
            o.regs[i] = self.cpu.regs[i] as u32;
        }
        if v != EXIT_VECTOR as u32 {
            o.vector = v;
            if has_error_code(v) {
                o.err = self.read32(sp);
                sp += 4;
            }
            o.eip = self.read32(sp);
            if v == 14 {
                o.cr2 = self.cpu.cr2 as u32;
            }
        }
        o.eflags = self.read32(sp + 8);
        o.regs[4] = self.read32(sp + 12);
        let m = self.cpu.mem.as_slice();
        record_diffs(case, &m[AREA as usize..AREA as usize + AREA_SIZE], &mut o);
        o
    }
}
