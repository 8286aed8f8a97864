//! Tier-0 throughput: guest instructions per second on a mixed integer loop (arithmetic,
//! memory, branches, calls) and on a string-copy loop, in 32-bit flat protected mode.
//!
//! `cargo run --release -p translator --example bench` (`VIREO_JIT=always` for tier 1)

use iced_x86::code_asm::*;
use std::time::Instant;
use translator::state::{Segment, cr0};
use translator::{Cpu, NullBus, PhysMem, RunExit};

fn flat32(code: &[u8]) -> Cpu {
    let mut mem = PhysMem::new(16 << 20);
    mem.as_mut_slice()[0x1000..0x1000 + code.len()].copy_from_slice(code);
    let mut cpu = Cpu::new(mem);
    cpu.cr0 |= cr0::PE;
    for s in 0..6 {
        cpu.segs[s] = Segment::flat32(if s == 1 { 8 } else { 0x10 }, s == 1);
    }
    cpu.rip = 0x1000;
    cpu.regs[4] = 0x80000;
    cpu
}

/// User CPU time of this process: on a shared machine wall time mostly measures the neighbours.
fn cpu_time() -> f64 {
    // SAFETY: getrusage only writes the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_utime.tv_sec as f64 + ru.ru_utime.tv_usec as f64 / 1e6
}

fn measure(name: &str, code: &[u8], bytes_moved: u64) {
    let mut cpu = flat32(code);
    let mut bus = NullBus;
    let t = Instant::now();
    let c0 = cpu_time();
    loop {
        match cpu.run(&mut bus, 1 << 30) {
            RunExit::Halted => break,
            RunExit::Budget => continue,
            RunExit::Shutdown => panic!("shutdown"),
        }
    }
    let dt = t.elapsed().as_secs_f64();
    let cpu_s = cpu_time() - c0;
    if cpu.jit.mode != translator::JitMode::Off {
        println!("  jit ({:?}): {:?}", cpu.jit.mode, cpu.jit.stats);
    }
    if bytes_moved == 0 {
        println!(
            "{name}: {} instructions, {:.1} M instructions/s of CPU time ({:.1} M/s wall)",
            cpu.icount,
            cpu.icount as f64 / cpu_s / 1e6,
            cpu.icount as f64 / dt / 1e6
        );
    } else {
        println!(
            "{name}: {:.0} MB/s of CPU time ({:.0} MB/s wall)",
            bytes_moved as f64 / cpu_s / 1e6,
            bytes_moved as f64 / dt / 1e6
        );
    }
}

fn main() -> Result<(), IcedError> {
    // A smaller count keeps callgrind runs short: `VIREO_BENCH_SCALE=0.02`.
    let scale: f64 = std::env::var("VIREO_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let iters = ((20_000_000.0 * scale) as u32).max(1);
    let copies = ((2000.0 * scale) as u32).max(1);
    // `VIREO_BENCH=int` or `=copy` runs one loop only.
    let only = std::env::var("VIREO_BENCH").unwrap_or_default();
    let mut a = CodeAssembler::new(32)?;
    let mut top = a.create_label();
    let mut func = a.create_label();
    a.mov(ecx, iters)?;
    a.mov(esi, 0x10000)?;
    a.set_label(&mut top)?;
    a.add(eax, ebx)?;
    a.xor(edx, eax)?;
    a.mov(dword_ptr(esi), edx)?;
    a.mov(ebx, dword_ptr(esi + 4))?;
    a.lea(edi, dword_ptr(eax + ebx * 2 + 8))?;
    a.shl(edi, 3)?;
    a.call(func)?;
    a.cmp(edi, eax)?;
    a.dec(ecx)?;
    a.jnz(top)?;
    a.hlt()?;
    a.set_label(&mut func)?;
    a.sub(eax, 3)?;
    a.ret()?;
    if only != "copy" {
        measure("integer loop", &a.assemble(0x1000)?, 0);
    }
    if only == "int" {
        return Ok(());
    }

    let mut a = CodeAssembler::new(32)?;
    let mut top = a.create_label();
    a.mov(ebx, copies)?;
    a.set_label(&mut top)?;
    a.mov(esi, 0x100000)?;
    a.mov(edi, 0x200000)?;
    a.mov(ecx, 16384)?;
    a.rep().movsd()?;
    a.dec(ebx)?;
    a.jnz(top)?;
    a.hlt()?;
    measure(
        &format!("string copy (rep movsd, 64 KiB x {copies})"),
        &a.assemble(0x1000)?,
        copies as u64 * 65536,
    );
    Ok(())
}
