//! Tier 1: blocks that run often are compiled to x86-64 host code.
//!
//! `compile.rs` turns a tier-0 block's ops into host code (hot forms inline, everything else a
//! call of the op's tier-0 handler), `buffer.rs` is the bounded W^X code cache, and
//! `trampoline.rs` the entry into compiled code and the helpers it calls. The dispatch loop
//! (`Cpu::run`) asks [`run_block`] to run a block; it counts executions, compiles blocks over
//! the threshold (or all of them in [`JitMode::Always`]) and runs compiled ones. Compiled code
//! leaves the `Cpu` exactly as the tier-0 loop would, so the loop's accounting (icount, budget,
//! fault delivery, chaining) is shared.

mod buffer;
mod compile;
mod trampoline;

use crate::Cpu;
use crate::block::Block;
use crate::bus::CpuBus;
use crate::exception::Fault;
use buffer::CodeBuffer;
pub(crate) use buffer::Compiled;
use trampoline::{ST_BREAK, ST_FAULT, ST_HALT, ST_OK, ST_STOP};

/// Whether tier 1 is used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum JitMode {
    /// Tier 0 only.
    Off,
    /// Compile blocks that have run [`Jit::threshold`] times.
    #[default]
    Auto,
    /// Compile every block before its first run (for tests).
    Always,
}

impl JitMode {
    /// `VIREO_JIT=off|auto|always`, if set to one of these.
    pub fn from_env() -> Option<Self> {
        match std::env::var("VIREO_JIT")
            .ok()?
            .to_ascii_lowercase()
            .as_str()
        {
            "off" | "0" => Some(JitMode::Off),
            "auto" | "on" | "1" => Some(JitMode::Auto),
            "always" => Some(JitMode::Always),
            _ => None,
        }
    }
}

/// Counters for tests and tuning.
#[derive(Clone, Copy, Debug, Default)]
pub struct JitStats {
    /// Blocks compiled.
    pub compiled: u64,
    /// Ops compiled inline / as calls of their tier-0 handler.
    pub inline_ops: u64,
    pub called_ops: u64,
    /// Runs of compiled blocks.
    pub entries: u64,
    /// Code cache flushes (it was full).
    pub flushes: u64,
}

/// Executions after which [`JitMode::Auto`] compiles a block.
pub const DEFAULT_THRESHOLD: u32 = 32;
/// Default code cache size.
pub const DEFAULT_CACHE_BYTES: usize = 32 << 20;

pub struct Jit {
    pub mode: JitMode,
    pub threshold: u32,
    /// Code cache size; takes effect when the cache is first mapped.
    pub cache_bytes: usize,
    pub stats: JitStats,
    buf: Option<CodeBuffer>,
}

impl Default for Jit {
    fn default() -> Self {
        Jit {
            mode: JitMode::from_env().unwrap_or_default(),
            threshold: DEFAULT_THRESHOLD,
            cache_bytes: DEFAULT_CACHE_BYTES,
            stats: JitStats::default(),
            buf: None,
        }
    }
}

impl Jit {
    fn is_current(&self, c: Compiled) -> bool {
        self.buf
            .as_ref()
            .is_some_and(|b| b.generation == c.generation)
    }

    /// Code cache bytes in use (bounded by `cache_bytes`).
    pub fn cache_used(&self) -> usize {
        self.buf.as_ref().map_or(0, |b| b.used())
    }

    /// Compile `block` into the code cache, flushing it when full.
    fn compile(&mut self, block: &Block) -> Option<Compiled> {
        let out = match compile::compile(&block.ops, block.bitness(), block.ip_mask) {
            Ok(c) => c,
            Err(e) => {
                log::warn!("jit: block not compiled: {e}");
                return None;
            }
        };
        if self.buf.is_none() {
            match CodeBuffer::new(self.cache_bytes) {
                Ok(b) => self.buf = Some(b),
                Err(e) => {
                    log::warn!("jit: {e}; running tier 0 only");
                    self.mode = JitMode::Off;
                    return None;
                }
            }
        }
        let buf = self.buf.as_mut()?;
        if out.code.len() > buf.capacity() {
            return None;
        }
        let off = match buf.next_offset(out.code.len()) {
            Some(o) => o,
            None => {
                buf.flush();
                self.stats.flushes += 1;
                log::debug!("jit: code cache full, flushed");
                buf.next_offset(out.code.len())?
            }
        };
        match buf.write(off, &out.code) {
            Ok(c) => {
                self.stats.compiled += 1;
                self.stats.inline_ops += out.counts.inline;
                self.stats.called_ops += out.counts.called;
                Some(c)
            }
            Err(e) => {
                log::warn!("jit: {e}; running tier 0 only");
                self.mode = JitMode::Off;
                None
            }
        }
    }
}

/// How a compiled block ended (what the tier-0 loop would have seen).
pub(crate) enum Outcome {
    /// `done` ops completed; `clean`: the block ran to its end without `block_break`.
    Ran { done: u64, clean: bool },
    /// `done` ops completed, then the next one faulted (RIP and RSP are at its start).
    Fault { done: u64, fault: Fault },
    /// `done` ops completed, then HLT.
    Halt { done: u64 },
}

/// Run the first `max_ops` ops of `block` (all when it has no more) as compiled code,
/// compiling it first if it is due; `None` when tier 0 should run it.
pub(crate) fn run_block(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    block: &Block,
    max_ops: usize,
) -> Option<Outcome> {
    if cpu.jit.mode == JitMode::Off {
        return None;
    }
    let code = match block.jit.get() {
        Some(c) if cpu.jit.is_current(c) => c,
        _ => {
            let hits = block.hits.get().saturating_add(1);
            block.hits.set(hits);
            if cpu.jit.mode == JitMode::Auto && hits < cpu.jit.threshold {
                return None;
            }
            let c = cpu.jit.compile(block)?;
            block.jit.set(Some(c));
            c
        }
    };
    let entry = cpu.jit.buf.as_ref()?.addr(code.offset);
    cpu.jit.stats.entries += 1;
    // SAFETY: `code` is current (checked above or just compiled), so `entry` is mapped
    // executable and was compiled from `block`, which the caller holds alive for the call.
    let (r, fault) = unsafe { trampoline::enter(cpu, bus, entry, block.ip_mask, max_ops as u64) };
    let (status, idx) = (r & 0xFF, r >> 8);
    Some(match (status, fault) {
        (ST_OK, _) => Outcome::Ran {
            done: block.ops.len() as u64,
            clean: true,
        },
        (ST_BREAK, _) => Outcome::Ran {
            done: idx + 1,
            clean: false,
        },
        (ST_FAULT, Some(fault)) => Outcome::Fault { done: idx, fault },
        (ST_HALT, _) => Outcome::Halt { done: idx },
        (ST_STOP, _) => Outcome::Ran {
            done: idx,
            clean: false,
        },
        _ => unreachable!("compiled code returned {r:#x}"),
    })
}
