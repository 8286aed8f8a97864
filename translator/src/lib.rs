//! Vireo's x86 CPU: decoder, tier-0 threaded-code interpreter and MMU.
//!
//! Guest code is decoded once with `iced-x86` into blocks of pre-decoded operations (a handler
//! plus resolved operands, see [`decode::op::Op`]); [`Cpu::run`] executes them in a tight loop
//! and handles interrupts between blocks. The CPU talks to the machine only through
//! [`CpuBus`] (ports, MMIO, the interrupt line) and reads RAM directly from [`PhysMem`].
//!
//! Layout: `state.rs` registers and descriptor caches, `flags.rs` lazy arithmetic flags,
//! `decode/` iced → `Op`, `block/` block builder and cache, `exec/` one file per instruction
//! family, `mmu/` segmentation, paging and the TLB, `interrupt.rs` exception and interrupt
//! delivery, `exception.rs` the fault type, `cpuid.rs`.

pub mod block;
pub mod bus;
pub mod conformance;
pub mod cpu;
pub mod cpuid;
pub mod decode;
pub mod exception;
pub mod exec;
pub mod flags;
pub mod interrupt;
pub mod jit;
pub mod mmu;
pub mod state;

pub use bus::{CpuBus, NullBus, PhysMem};
pub use cpu::{Cpu, Mode, TscClock};
pub use exception::{Exit, Fault};
pub use exec::x87;
pub use jit::JitMode;

use exception::vector;
use exec::system::dr6;
use state::flag;

/// Why [`Cpu::run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunExit {
    /// The instruction budget is used up.
    Budget,
    /// HLT: the CPU waits for an interrupt. Call `run` again once INTR or NMI is raised.
    Halted,
    /// Triple fault: the CPU shut down ([`CpuBus::shutdown`] was called). Reset it to go on.
    Shutdown,
}

impl Cpu {
    /// Run up to `budget` instructions.
    pub fn run(&mut self, bus: &mut dyn CpuBus, budget: u64) -> RunExit {
        // Chain links (tier 0's and tier 1's) outlive a call only when the board left the
        // registers they rest on (CS, CR0, EFER...) as the last call did.
        let key = self.run_key();
        if self.cache.run_key != Some(key) {
            self.cache.epoch = self.cache.epoch.wrapping_add(1);
        }
        let exit = self.run_blocks(bus, budget);
        self.cache.run_key = Some(self.run_key());
        exit
    }

    fn run_blocks(&mut self, bus: &mut dyn CpuBus, budget: u64) -> RunExit {
        let mut left = budget;
        // The board may have written the debug registers too.
        self.update_debug_arm();
        // Blocks dropped during the last call: no compiled code is running now.
        self.cache.graveyard.clear();
        // The block that just ran to its end without leaving its fetch context: the next
        // block may come from its chain links instead of a cache lookup.
        let mut prev: Option<std::rc::Rc<block::Block>> = None;
        loop {
            if left == 0 {
                return RunExit::Budget;
            }
            // Events are taken at block boundaries, never inside the interrupt shadow.
            let shadow = std::mem::take(&mut self.irq_shadow);
            if !shadow {
                // NMI stays pending on the bus while an NMI handler runs (until its IRET).
                if !self.nmi_blocked && bus.take_nmi() {
                    prev = None;
                    self.halted = false;
                    self.nmi_blocked = true;
                    if !self.raise(bus, Fault::new(vector::NMI), false) {
                        return RunExit::Shutdown;
                    }
                } else if self.rflags & flag::IF != 0 && bus.intr_pending() {
                    prev = None;
                    let v = bus.intr_ack();
                    self.halted = false;
                    if !self.raise(bus, Fault::new(v), false) {
                        return RunExit::Shutdown;
                    }
                }
            }
            if self.halted {
                return RunExit::Halted;
            }
            // Instruction breakpoints: a fault before the instruction (and its fetch) unless
            // RF is set. The pushed RF stays as it is; the handler sets it to go on.
            if self.dbg_armed && self.rflags & flag::RF == 0 {
                let hits = self.code_breakpoints();
                if hits != 0 {
                    prev = None;
                    self.dr[6] = (self.dr[6] & !dr6::B_MASK) | hits;
                    left -= 1;
                    if !self.raise(bus, Fault::new(vector::DB), true) {
                        return RunExit::Shutdown;
                    }
                    continue;
                }
            }
            let from = prev.take();
            let got = match &from {
                Some(p) => self.next_block(bus, p),
                None => self.get_block(bus),
            };
            let mut block = match got {
                Ok(b) => b,
                Err(Exit::Fault(f)) => {
                    // A fetch fault consumes budget too, so fault loops cannot spin forever.
                    left -= 1;
                    // Faults push RF = 1: the restarted instruction skips its breakpoint.
                    self.rflags |= flag::RF;
                    if !self.raise(bus, f, true) {
                        return RunExit::Shutdown;
                    }
                    continue;
                }
                Err(Exit::Halt) => return RunExit::Halted,
            };
            // TF: one instruction at a time, each followed by a single-step #DB trap. RF and
            // armed breakpoints also take this path (one test per block when none is).
            let single_step = self.rflags & flag::TF != 0;
            self.block_break = false;
            self.side_exit = false;
            self.smc_hit = false;
            let mask = block.ip_mask;
            if shadow || self.rflags & (flag::TF | flag::RF) != 0 || self.dbg_armed {
                let start = self.rip;
                let rsp = self.regs[4];
                let op = &block.ops[0];
                // RF covers this instruction's breakpoint check only (done above).
                self.rflags &= !flag::RF;
                self.dbg_hits = 0;
                self.rip = start.wrapping_add(op.len as u64) & mask;
                match (op.exec)(self, op, bus) {
                    Ok(()) => {}
                    Err(Exit::Fault(f)) => {
                        // Precise fault: back to the instruction's first byte and stack.
                        self.rip = start;
                        self.regs[4] = rsp;
                        left -= 1;
                        self.rflags |= flag::RF;
                        if !self.raise(bus, f, true) {
                            return RunExit::Shutdown;
                        }
                        continue;
                    }
                    Err(Exit::Halt) => {
                        self.icount += 1;
                        return RunExit::Halted;
                    }
                }
                self.icount += 1;
                left -= 1;
                // The trap is taken when TF was set before and after the instruction: INT n
                // and exception delivery clear TF and so skip it (as the hardware does); a
                // POPF that clears TF also skips it here, where the hardware would still trap
                // once.
                let step = single_step && self.rflags & flag::TF != 0;
                let hits = std::mem::take(&mut self.dbg_hits) as u64;
                if step || hits != 0 {
                    if step {
                        self.dr[6] |= dr6::BS;
                    }
                    if hits != 0 {
                        // Data breakpoints: a trap after the instruction.
                        self.dr[6] = (self.dr[6] & !dr6::B_MASK) | hits;
                    }
                    // After an iteration of an unfinished REP instruction RF = 1 is pushed.
                    if self.rip == start
                        && op.prefix & (decode::op::pfx::REP | decode::op::pfx::REPNE) != 0
                    {
                        self.rflags |= flag::RF;
                    }
                    if !self.raise(bus, Fault::new(vector::DB), true) {
                        return RunExit::Shutdown;
                    }
                }
                continue;
            }
            let mut n = block.ops.len().min(left.min(usize::MAX as u64) as usize);
            let mut done = 0u64;
            let mut clean = true;
            let icount = self.icount;
            let compiled = match jit::run_block(self, bus, &block, from.as_ref(), left) {
                Some((outcome, last)) => {
                    // Blocks left through direct links: counted into `icount` already.
                    left -= self.icount - icount;
                    if let Some(last) = last {
                        block = last;
                        n = block.ops.len().min(left.min(usize::MAX as u64) as usize);
                    }
                    Some(outcome)
                }
                None => None,
            };
            match compiled {
                Some(jit::Outcome::Ran { done: d, clean: c }) => (done, clean) = (d, c),
                Some(jit::Outcome::Fault { done: d, fault }) => {
                    self.icount += d;
                    left -= d + 1;
                    // As in tier 0 below: faults push RF = 1.
                    self.rflags |= flag::RF;
                    if !self.raise(bus, fault, true) {
                        return RunExit::Shutdown;
                    }
                    clean = false;
                }
                Some(jit::Outcome::Halt { done: d }) => {
                    self.icount += d + 1;
                    return RunExit::Halted;
                }
                None => {}
            }
            for op in &block.ops[..if compiled.is_some() { 0 } else { n }] {
                let start = self.rip;
                let rsp = self.regs[4];
                self.rip = start.wrapping_add(op.len as u64) & mask;
                match (op.exec)(self, op, bus) {
                    Ok(()) => {}
                    Err(Exit::Fault(f)) => {
                        self.rip = start;
                        self.regs[4] = rsp;
                        self.icount += done;
                        left -= done + 1;
                        self.rflags |= flag::RF;
                        if !self.raise(bus, f, true) {
                            return RunExit::Shutdown;
                        }
                        done = 0;
                        clean = false;
                        break;
                    }
                    Err(Exit::Halt) => {
                        self.icount += done + 1;
                        return RunExit::Halted;
                    }
                }
                done += 1;
                // (A store into translated code sets it too.)
                if self.block_break {
                    // (A taken side exit leaves the block as its end would.)
                    clean = self.side_exit;
                    break;
                }
            }
            self.icount += done;
            left -= done;
            // (A clean run that stopped short took a side exit, a Jcc, which keeps CS and the
            // mode whatever the block's last instruction does.)
            if clean && n == block.ops.len() && (block.chainable || done < n as u64) {
                prev = Some(block);
            }
        }
    }

    /// Deliver an exception or interrupt, escalating to #DF and to shutdown per the SDM's
    /// contributory/page-fault rules. Returns false on triple fault.
    pub(crate) fn raise(&mut self, bus: &mut dyn CpuBus, first: Fault, exception: bool) -> bool {
        if exception {
            self.last_fault = Some(first);
        }
        log::trace!(
            "exception {:?} at {:04x}:{:x} cpl {}",
            first,
            self.segs[state::sreg::CS].selector,
            self.rip,
            self.cpl
        );
        let mut f = first;
        for _ in 0..4 {
            match self.deliver(bus, f.vector, f.error_code, true) {
                Ok(()) => return true,
                Err(f2) => {
                    log::debug!("fault {f2:?} while delivering {f:?}");
                    if f.vector == vector::DF {
                        break;
                    }
                    let double = (f.is_contributory() && f2.is_contributory())
                        || (f.vector == vector::PF
                            && (f2.is_contributory() || f2.vector == vector::PF));
                    f = if double {
                        Fault::with_code(vector::DF, 0)
                    } else {
                        f2
                    };
                }
            }
        }
        log::warn!(
            "triple fault at {:04x}:{:x}",
            self.segs[state::sreg::CS].selector,
            self.rip
        );
        bus.shutdown();
        self.halted = true;
        false
    }
}
