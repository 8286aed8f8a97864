//! The `Cpu` type: architectural state plus the translator's caches.

use crate::block::BlockCache;
use crate::bus::PhysMem;
use crate::flags::{FlagOp, LazyFlags};
use crate::mmu::tlb::Tlb;
use crate::state::{Msrs, Segment, TableReg, cr0, flag, sreg};
use crate::x87::Fpu;

/// Operating mode, as far as decoding and semantics care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Real,
    Protected,
    V86,
    Long,
}

/// One x86 processor.
pub struct Cpu {
    /// RAX..R15 (64-bit storage; 16/32-bit code uses the low bits).
    pub regs: [u64; 16],
    /// Instruction pointer (offset in CS). While a handler runs it already points at the next
    /// instruction.
    pub rip: u64,
    /// RFLAGS; the arithmetic bits are stale while `lazy.op != FlagOp::None`.
    pub(crate) rflags: u64,
    pub(crate) lazy: LazyFlags,
    /// ES, CS, SS, DS, FS, GS.
    pub segs: [Segment; 6],
    pub gdtr: TableReg,
    pub idtr: TableReg,
    pub ldtr: Segment,
    pub tr: Segment,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub dr: [u64; 8],
    /// DR7 enables a breakpoint: the run loop goes one instruction at a time and checks them
    /// (derived from `dr`; recomputed at MOV DR and at every `run`).
    pub(crate) dbg_armed: bool,
    /// Data breakpoints (bit n = DRn) hit by the instruction running now.
    pub(crate) dbg_hits: u8,
    /// Added to the clock's ticks to give the time-stamp counter (WRMSR to it moves this).
    pub tsc: u64,
    pub tsc_clock: TscClock,
    pub msr: Msrs,
    pub fpu: Fpu,
    /// Current privilege level (CS.RPL in protected mode; 0 in real mode, 3 in v8086).
    pub cpl: u8,
    /// Guest physical memory the CPU reads and writes directly.
    pub mem: PhysMem,
    /// Physical address mask: bit 20 is cleared while the A20 gate is closed (set it with
    /// [`Cpu::set_a20`]).
    pub(crate) a20_mask: u64,
    /// Maximum instruction length in bytes (15 on 386+; a test harness may lower it).
    pub max_insn_len: u8,
    /// HLT executed; waiting for an interrupt.
    pub halted: bool,
    /// Interrupts are inhibited for one instruction (after STI, MOV SS, POP SS).
    pub(crate) irq_shadow: bool,
    /// An NMI handler is running: further NMIs wait for the next IRET.
    pub(crate) nmi_blocked: bool,
    /// A store hit a page with translated code: the running block must stop after this op.
    pub(crate) smc_hit: bool,
    /// Set by mode-changing instructions: the block cache key changes, stop the block.
    pub(crate) block_break: bool,
    /// With `block_break`: a Jcc inside the block was taken (`decode::op::JCC_GOES_ON`).
    /// The block ended where it should, so the dispatcher chains on from it as from a
    /// block's end.
    pub(crate) side_exit: bool,
    pub(crate) cache: BlockCache,
    pub(crate) tlb: Tlb,
    /// Tier 1 (the JIT): its mode, code cache and statistics.
    pub jit: crate::jit::Jit,
    /// Exception nesting during delivery (for #DF and triple fault).
    pub(crate) delivering: Option<u8>,
    /// Instructions retired since reset.
    pub icount: u64,
    /// The last exception raised (for diagnostics and test harnesses).
    pub last_fault: Option<crate::exception::Fault>,
}

/// What the time-stamp counter counts.
#[derive(Debug, Clone, Copy)]
pub enum TscClock {
    /// One tick per retired instruction: deterministic, for tests and conformance runs.
    Instructions,
    /// Host monotonic time at `hz` ticks per second, like an invariant TSC. A board whose
    /// timers run on host time needs this: a guest calibrating the TSC against the PIT, or
    /// checking one clock source against another, must see them agree, also across HLT
    /// (where no instructions retire).
    /// `per_ns` is `hz` per nanosecond in 32.32 fixed point: RDTSC (millions of times in a
    /// Linux boot: `sched_clock`, `udelay`) multiplies instead of dividing by 10^9.
    Host {
        origin: std::time::Instant,
        per_ns: u64,
    },
}

impl TscClock {
    /// Host time at `hz` from now on.
    pub fn host(hz: u64) -> Self {
        TscClock::Host {
            origin: std::time::Instant::now(),
            per_ns: ((u128::from(hz) << 32) / 1_000_000_000) as u64,
        }
    }
}

impl Cpu {
    /// The time-stamp counter's current value.
    pub fn tsc_now(&self) -> u64 {
        let ticks = match self.tsc_clock {
            TscClock::Instructions => self.icount,
            TscClock::Host { origin, per_ns } => {
                ((origin.elapsed().as_nanos() * u128::from(per_ns)) >> 32) as u64
            }
        };
        self.tsc.wrapping_add(ticks)
    }

    /// Makes the time-stamp counter read `value` now.
    pub fn set_tsc(&mut self, value: u64) {
        self.tsc = 0;
        self.tsc = value.wrapping_sub(self.tsc_now());
    }
}

impl Cpu {
    /// A CPU in the reset state (SDM Vol. 3, 9.1.1) with `mem` as its physical memory.
    pub fn new(mem: PhysMem) -> Self {
        let mut cpu = Cpu {
            regs: [0; 16],
            rip: 0,
            rflags: flag::FIXED1,
            lazy: LazyFlags::default(),
            segs: [Segment::default(); 6],
            gdtr: TableReg::default(),
            idtr: TableReg::default(),
            ldtr: Segment::default(),
            tr: Segment::default(),
            cr0: 0,
            cr2: 0,
            cr3: 0,
            cr4: 0,
            efer: 0,
            dr: [0; 8],
            dbg_armed: false,
            dbg_hits: 0,
            tsc: 0,
            tsc_clock: TscClock::Instructions,
            msr: Msrs::default(),
            fpu: Fpu::default(),
            cpl: 0,
            mem,
            a20_mask: u64::MAX,
            max_insn_len: 15,
            halted: false,
            irq_shadow: false,
            nmi_blocked: false,
            smc_hit: false,
            block_break: false,
            side_exit: false,
            cache: BlockCache::new(),
            tlb: Tlb::new(),
            jit: crate::jit::Jit::default(),
            delivering: None,
            icount: 0,
            last_fault: None,
        };
        cpu.reset();
        cpu
    }

    /// Processor reset (INIT state after RESET): real mode at F000:FFF0 with CS base FFFF0000.
    pub fn reset(&mut self) {
        self.regs = [0; 16];
        // EDX holds the processor signature after reset: family 6, model 1 (Pentium Pro class).
        self.regs[2] = crate::cpuid::SIGNATURE as u64;
        self.rip = 0xFFF0;
        self.set_rflags(flag::FIXED1);
        for (i, s) in self.segs.iter_mut().enumerate() {
            *s = Segment::real(0, i == sreg::CS);
        }
        self.segs[sreg::CS].selector = 0xF000;
        self.segs[sreg::CS].base = 0xFFFF_0000;
        self.gdtr = TableReg {
            base: 0,
            limit: 0xFFFF,
        };
        self.idtr = TableReg {
            base: 0,
            limit: 0xFFFF,
        };
        self.ldtr = Segment {
            selector: 0,
            base: 0,
            limit: 0xFFFF,
            attr: 0x82,
        };
        self.tr = Segment {
            selector: 0,
            base: 0,
            limit: 0xFFFF,
            attr: 0x8B,
        };
        self.cr0 = cr0::ET | cr0::CD | cr0::NW;
        self.cr2 = 0;
        self.cr3 = 0;
        self.cr4 = 0;
        self.efer = 0;
        self.dr = [0, 0, 0, 0, 0, 0, 0xFFFF_0FF0, 0x400];
        self.msr = Msrs {
            apic_base: 0xFEE0_0900,
            pat: 0x0007_0406_0007_0406,
            ..Msrs::default()
        };
        self.fpu = Fpu::default();
        self.cpl = 0;
        self.halted = false;
        self.irq_shadow = false;
        self.nmi_blocked = false;
        self.delivering = None;
        self.last_fault = None;
        self.set_tsc(0);
        self.flush_translations();
    }

    /// Current operating mode.
    #[inline]
    pub fn mode(&self) -> Mode {
        if self.cr0 & cr0::PE == 0 {
            Mode::Real
        } else if self.rflags & flag::VM != 0 {
            Mode::V86
        } else if self.efer & crate::state::efer::LMA != 0 {
            Mode::Long
        } else {
            Mode::Protected
        }
    }

    #[inline]
    pub fn protected(&self) -> bool {
        self.cr0 & cr0::PE != 0
    }

    /// Is the current code 64-bit (long mode with CS.L)?
    #[inline]
    pub fn long64(&self) -> bool {
        self.efer & crate::state::efer::LMA != 0
            && self.segs[sreg::CS].attr & crate::state::attr::L != 0
    }

    /// Default operand/address size of the code segment: 16, 32 or 64.
    #[inline]
    pub fn code_bitness(&self) -> u32 {
        if self.long64() {
            64
        } else if self.protected() && self.rflags & flag::VM == 0 && self.segs[sreg::CS].big() {
            32
        } else {
            16
        }
    }

    /// Mask applied to RIP after each instruction.
    #[inline]
    pub(crate) fn ip_mask(&self) -> u64 {
        match self.code_bitness() {
            16 => 0xFFFF,
            32 => 0xFFFF_FFFF,
            _ => u64::MAX,
        }
    }

    // ---- flags ----

    /// The full RFLAGS value (materialising lazy arithmetic flags).
    #[inline]
    pub fn rflags(&mut self) -> u64 {
        if self.lazy.op != FlagOp::None {
            let arith = self.lazy.compute(self.rflags);
            self.rflags = (self.rflags & !flag::ARITH) | arith;
            self.lazy.op = FlagOp::None;
        }
        self.rflags
    }

    /// Replace RFLAGS wholesale (bit 1 forced on, reserved bits forced off).
    #[inline]
    pub fn set_rflags(&mut self, v: u64) {
        self.lazy.op = FlagOp::None;
        self.rflags = (v & 0x003F_7FD5) | flag::FIXED1;
    }

    /// Read one flag bit.
    #[inline]
    pub fn flag(&mut self, f: u64) -> bool {
        if f & flag::ARITH != 0 {
            self.rflags() & f != 0
        } else {
            self.rflags & f != 0
        }
    }

    /// Set or clear flag bits.
    #[inline]
    pub fn set_flag(&mut self, f: u64, on: bool) {
        if f & flag::ARITH != 0 {
            self.rflags();
        }
        if on {
            self.rflags |= f;
        } else {
            self.rflags &= !f;
        }
    }

    /// Record a lazily evaluated arithmetic result.
    #[inline]
    pub(crate) fn set_lazy(&mut self, op: FlagOp, size: u8, a: u64, b: u64, res: u64) {
        if matches!(op, FlagOp::Inc | FlagOp::Dec) && self.lazy.op != FlagOp::None {
            // INC/DEC keep CF: carry the previous operation's CF into `rflags`. Its other
            // arithmetic bits are about to be replaced, so only CF needs computing.
            let cf = self.lazy.carry(self.rflags);
            self.rflags = (self.rflags & !flag::CF) | cf as u64;
        }
        self.lazy = LazyFlags {
            op,
            size,
            a,
            b,
            res,
        };
    }

    /// Set the six arithmetic flags eagerly (for instructions with irregular flag rules).
    #[inline]
    pub(crate) fn set_arith_flags(&mut self, f: u64) {
        self.lazy.op = FlagOp::None;
        self.rflags = (self.rflags & !flag::ARITH) | (f & flag::ARITH);
    }

    // ---- general registers ----

    /// Read a register operand of `size` bytes; for byte operands 16-19 mean AH/CH/DH/BH.
    #[inline]
    pub fn reg(&self, r: u8, size: u8) -> u64 {
        match size {
            1 => {
                if r >= 16 {
                    (self.regs[(r - 16) as usize] >> 8) & 0xFF
                } else {
                    self.regs[r as usize & 15] & 0xFF
                }
            }
            2 => self.regs[r as usize & 15] & 0xFFFF,
            4 => self.regs[r as usize & 15] & 0xFFFF_FFFF,
            _ => self.regs[r as usize & 15],
        }
    }

    /// Write a register operand. A 32-bit write zero-extends to 64 bits (as in long mode; the
    /// upper half is invisible outside it).
    #[inline]
    pub fn set_reg(&mut self, r: u8, size: u8, v: u64) {
        match size {
            1 => {
                if r >= 16 {
                    let x = &mut self.regs[(r - 16) as usize];
                    *x = (*x & !0xFF00) | ((v & 0xFF) << 8);
                } else {
                    let x = &mut self.regs[r as usize & 15];
                    *x = (*x & !0xFF) | (v & 0xFF);
                }
            }
            2 => {
                let x = &mut self.regs[r as usize & 15];
                *x = (*x & !0xFFFF) | (v & 0xFFFF);
            }
            4 => self.regs[r as usize & 15] = v & 0xFFFF_FFFF,
            _ => self.regs[r as usize & 15] = v,
        }
    }

    /// Open or close the A20 gate (the board's port 92h / keyboard controller output).
    pub fn set_a20(&mut self, enabled: bool) {
        self.a20_mask = if enabled { u64::MAX } else { !(1u64 << 20) };
        self.flush_translations();
    }

    /// Drop every translated block and TLB entry (mode switches that change decoding, CR3...).
    pub fn flush_translations(&mut self) {
        self.cache.clear();
        self.tlb.flush_all();
    }

    /// Tell the CPU that physical memory `[start, end)` changed behind its back (DMA): blocks
    /// translated from it are dropped.
    pub fn invalidate_phys(&mut self, start: u64, end: u64) {
        for page in (start >> 12)..end.div_ceil(4096) {
            self.cache.invalidate_page(page);
        }
    }
}
