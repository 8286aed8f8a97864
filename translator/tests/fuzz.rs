//! Bad input: random bytes at random addresses with random registers, in real mode, 16- and
//! 32-bit protected mode (with and without paging) and v8086 mode. The CPU must raise
//! architectural exceptions, never panic or hang. Fixed seed, bounded budget per case.

use translator::state::{Segment, TableReg, attr, cr0, flag};
use translator::{Cpu, CpuBus, JitMode, PhysMem};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

struct Bus;
impl CpuBus for Bus {
    fn io_read(&mut self, port: u16, _size: u8) -> u32 {
        port as u32 * 0x0101
    }
    fn io_write(&mut self, _port: u16, _size: u8, _value: u32) {}
    fn intr_pending(&mut self) -> bool {
        true
    }
    fn intr_ack(&mut self) -> u8 {
        0x20
    }
}

#[derive(Clone, Copy, Debug)]
enum Setup {
    Real,
    Prot16,
    Prot32,
    Paged32,
    V86,
}

fn prepare(cpu: &mut Cpu, rng: &mut Rng, setup: Setup) {
    cpu.reset();
    // Random memory in the first 128 KiB: code, stacks, tables all random.
    let mem = cpu.mem.as_mut_slice();
    for chunk in mem[..0x20000].chunks_mut(8) {
        let v = rng.next().to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    for r in 0..8 {
        cpu.regs[r] = rng.next()
            & if matches!(setup, Setup::Prot32 | Setup::Paged32) {
                0xFFFF_FFFF
            } else {
                0xFFFF
            };
    }
    let fl = rng.next() & !(flag::TF | flag::VM);
    cpu.set_rflags(fl | flag::FIXED1);
    cpu.rip = rng.next() & 0xFFF;
    match setup {
        Setup::Real => {
            for s in 0..6 {
                cpu.segs[s] = Segment::real((rng.next() & 0x1FFF) as u16, s == 1);
            }
            cpu.idtr = TableReg {
                base: 0,
                limit: 0x3FF,
            };
        }
        Setup::Prot16 | Setup::Prot32 | Setup::Paged32 => {
            let big = if matches!(setup, Setup::Prot16) {
                0
            } else {
                attr::DB | attr::G
            };
            let limit = if big != 0 { 0xFFFF_FFFF } else { 0xFFFF };
            cpu.cr0 |= cr0::PE;
            for s in 0..6 {
                cpu.segs[s] = Segment {
                    selector: 0x10,
                    base: 0,
                    limit,
                    attr: attr::P
                        | attr::S
                        | attr::RW
                        | attr::ACCESSED
                        | big
                        | if s == 1 { attr::CODE } else { 0 },
                };
            }
            cpu.segs[1].selector = 0x08;
            cpu.gdtr = TableReg {
                base: 0x1000,
                limit: 0xFF,
            };
            cpu.idtr = TableReg {
                base: 0x2000,
                limit: 0x7FF,
            };
            if matches!(setup, Setup::Paged32) {
                cpu.cr3 = 0x8000;
                cpu.cr0 |= cr0::PG;
            }
        }
        Setup::V86 => {
            cpu.cr0 |= cr0::PE;
            cpu.set_rflags(fl | flag::VM | flag::FIXED1);
            cpu.cpl = 3;
            for s in 0..6 {
                let mut seg = Segment::real((rng.next() & 0x1FFF) as u16, s == 1);
                seg.attr |= 3 << attr::DPL_SHIFT;
                cpu.segs[s] = seg;
            }
            cpu.gdtr = TableReg {
                base: 0x1000,
                limit: 0xFF,
            };
            cpu.idtr = TableReg {
                base: 0x2000,
                limit: 0x7FF,
            };
            cpu.tr = Segment {
                selector: 0x28,
                base: 0x3000,
                limit: 0x67,
                attr: 0x8B,
            };
        }
    }
    cpu.flush_translations();
}

#[test]
fn random_bytes_never_panic() {
    random_bytes(JitMode::Off);
}

/// The same cases with every block compiled by the JIT.
#[test]
fn random_bytes_never_panic_jit_forced() {
    random_bytes(JitMode::Always);
}

fn random_bytes(mode: JitMode) {
    let mut cpu = Cpu::new(PhysMem::new(1 << 20));
    cpu.jit.mode = mode;
    let mut bus = Bus;
    // More cases on demand: VIREO_FUZZ_CASES=100000 VIREO_FUZZ_SEED=7 cargo test --test fuzz
    let cases: usize = std::env::var("VIREO_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let seed: u64 = std::env::var("VIREO_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5EED_1234_ABCD_0001);
    let mut rng = Rng(seed | 1);
    for setup in [
        Setup::Real,
        Setup::Prot16,
        Setup::Prot32,
        Setup::Paged32,
        Setup::V86,
    ] {
        let mut retired = 0;
        for _ in 0..cases {
            prepare(&mut cpu, &mut rng, setup);
            // Whatever happens (faults, triple fault, HLT), it must come back.
            let _ = cpu.run(&mut bus, 300);
            retired += cpu.icount;
        }
        // The cases must actually execute code, not die at the first fetch.
        assert!(
            retired > cases as u64 * 5,
            "{setup:?}: only {retired} instructions retired"
        );
    }
}
