//! The native runner: runs each case on the host CPU in 32-bit compatibility mode, inside a
//! forked child.
//!
//! The child maps four fixed pages below 4 GiB (harness, code, area, state), installs handlers
//! for SIGSEGV/SIGBUS/SIGFPE/SIGILL/SIGTRAP on an alternate stack, and then for every case:
//! fills the area, writes `code` + `jmp epilogue` at `CODE`, and calls the 64-bit trampoline.
//! The trampoline saves the host stack and far-returns to the 32-bit prologue through Linux's
//! user 32-bit code selector 0x23; the prologue loads EFLAGS and all eight registers, jumps to
//! the code; the epilogue stores them and far-returns through 0x33 to 64-bit code. A fault
//! lands in the signal handler, which records the vector (`trapno`), error code, CR2, EIP, EFLAGS
//! and registers from the signal's `ucontext` and resumes the trampoline's exit path. Results
//! go to a shared mapping. No libc: raw system calls (the crate has no libc dependency, and a
//! forked child of a multithreaded test must not allocate anyway).

use super::common::*;
use iced_x86::code_asm::*;
use std::arch::asm;

const IN_REGS: u32 = STATE;
const IN_EFL: u32 = STATE + 0x20;
const OUT_REGS: u32 = STATE + 0x40;
const OUT_EFL: u32 = STATE + 0x60;
const HOST_RSP: u32 = STATE + 0x80;
/// The child's own MXCSR, put back after each case (FXRSTOR cases load random ones; MXCSR is
/// callee-saved in the SysV ABI).
const HOST_MXCSR: u32 = STATE + 0x88;
/// Signal record: signo, trapno, err, cr2, eip, eflags, then 8 registers.
const SIG_REC: u32 = STATE + 0x100;
const SCRATCH_TOP: u32 = STATE + 0xFF0;

const ENTRY64: u32 = HARNESS;
const RET64: u32 = HARNESS + 0x100;
const RESTORER: u32 = HARNESS + 0x200;
const PRO32: u32 = HARNESS + 0x400;
const EPI32: u32 = HARNESS + 0x600;

const USER32_CS: i32 = 0x23;
const USER64_CS: i32 = 0x33;
const USER_DS: i32 = 0x2B;

mod sys {
    pub const MMAP: usize = 9;
    pub const RT_SIGACTION: usize = 13;
    pub const RT_SIGRETURN: usize = 15;
    pub const ALARM: usize = 37;
    pub const FORK: usize = 57;
    pub const WAIT4: usize = 61;
    pub const MUNMAP: usize = 11;
    pub const SIGALTSTACK: usize = 131;
    pub const EXIT_GROUP: usize = 231;
}

/// A raw Linux x86-64 system call.
///
/// # Safety
/// The caller guarantees the call's arguments are valid for system call `n`.
unsafe fn syscall(
    n: usize,
    a1: usize,
    a2: usize,
    a3: usize,
    a4: usize,
    a5: usize,
    a6: usize,
) -> isize {
    let ret: isize;
    // SAFETY: the `syscall` instruction clobbers only rax (result), rcx and r11; the caller
    // vouches for the arguments.
    unsafe {
        asm!("syscall",
            inlateout("rax") n as isize => ret,
            in("rdi") a1, in("rsi") a2, in("rdx") a3, in("r10") a4, in("r8") a5, in("r9") a6,
            lateout("rcx") _, lateout("r11") _,
            options(nostack));
    }
    ret
}

fn asm_at(
    bitness: u32,
    ip: u32,
    f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Vec<u8> {
    let mut a = CodeAssembler::new(bitness).unwrap();
    f(&mut a).unwrap();
    a.assemble(ip as u64).unwrap()
}

/// The harness page's pieces, assembled once in the parent.
pub struct Harness {
    pieces: Vec<(u32, Vec<u8>)>,
}

impl Harness {
    pub fn new() -> Self {
        let entry = asm_at(64, ENTRY64, |a| {
            for r in [rbx, rbp, r12, r13, r14, r15] {
                a.push(r)?;
            }
            a.mov(rax, HOST_RSP as u64)?;
            a.mov(qword_ptr(rax), rsp)?;
            a.stmxcsr(dword_ptr(rax + 8))?;
            // Every case starts from MXCSR's reset value (the child's own carries sticky flags).
            a.mov(dword_ptr(rax + 12), 0x1F80)?;
            a.ldmxcsr(dword_ptr(rax + 12))?;
            a.push(USER32_CS)?;
            a.push(PRO32 as i32)?;
            a.db(&[0x48, 0xCB]) // retfq: into 32-bit code
        });
        let ret64 = asm_at(64, RET64, |a| {
            a.mov(rax, HOST_RSP as u64)?;
            a.mov(rsp, qword_ptr(rax))?;
            for r in [r15, r14, r13, r12, rbp, rbx] {
                a.pop(r)?;
            }
            a.cld()?;
            // The x87 control word is callee-saved in the SysV ABI.
            a.fninit()?;
            a.mov(rax, HOST_MXCSR as u64)?;
            a.ldmxcsr(dword_ptr(rax))?;
            a.ret()
        });
        let restorer = asm_at(64, RESTORER, |a| {
            a.mov(eax, sys::RT_SIGRETURN as u32)?;
            a.syscall()
        });
        let regs32 = [eax, ecx, edx, ebx, esp, ebp, esi, edi];
        let pro = asm_at(32, PRO32, |a| {
            a.mov(esp, SCRATCH_TOP)?;
            // 64-bit processes run with null DS/ES; compatibility mode needs them loaded.
            a.push(USER_DS)?;
            a.pop(ds)?;
            a.push(USER_DS)?;
            a.pop(es)?;
            a.push(dword_ptr(IN_EFL))?;
            a.popfd()?;
            for (i, r) in regs32.iter().enumerate() {
                if i != 4 {
                    a.mov(*r, dword_ptr(IN_REGS + 4 * i as u32))?;
                }
            }
            a.mov(esp, dword_ptr(IN_REGS + 16))?;
            a.jmp(CODE as u64)
        });
        let epi = asm_at(32, EPI32, |a| {
            for (i, r) in regs32.iter().enumerate() {
                a.mov(dword_ptr(OUT_REGS + 4 * i as u32), *r)?;
            }
            a.mov(esp, SCRATCH_TOP)?;
            a.pushfd()?;
            a.pop(dword_ptr(OUT_EFL))?;
            a.push(0x202)?;
            a.popfd()?;
            a.push(USER64_CS)?;
            a.push(RET64 as i32)?;
            a.retf()
        });
        Harness {
            pieces: vec![
                (ENTRY64, entry),
                (RET64, ret64),
                (RESTORER, restorer),
                (PRO32, pro),
                (EPI32, epi),
            ],
        }
    }
}

/// `jmp EPI32` placed right after the code under test.
fn jmp_epilogue(at: u32) -> [u8; 5] {
    let rel = EPI32.wrapping_sub(at + 5);
    let r = rel.to_le_bytes();
    [0xE9, r[0], r[1], r[2], r[3]]
}

/// The signal handler (runs in 64-bit mode on the alternate stack): record the fault and resume
/// at the trampoline's exit path in 64-bit code.
extern "C" fn on_signal(sig: i32, _info: *mut u8, uc: *mut u8) {
    // SAFETY: `uc` is the kernel's x86-64 `ucontext_t`; its `gregs` array starts at byte 40
    // (uc_flags, uc_link, uc_stack before it). SIG_REC is this child's mapped state page.
    unsafe {
        let g = uc.add(40) as *mut u64;
        let rec = SIG_REC as usize as *mut u32;
        // gregs indices: R8..R15 0-7, RDI 8, RSI 9, RBP 10, RBX 11, RDX 12, RAX 13, RCX 14,
        // RSP 15, RIP 16, EFL 17, CSGSFS 18, ERR 19, TRAPNO 20, OLDMASK 21, CR2 22.
        rec.write_volatile(sig as u32);
        rec.add(1).write_volatile(g.add(20).read() as u32);
        rec.add(2).write_volatile(g.add(19).read() as u32);
        rec.add(3).write_volatile(g.add(22).read() as u32);
        rec.add(4).write_volatile(g.add(16).read() as u32);
        rec.add(5).write_volatile(g.add(17).read() as u32);
        for (i, gi) in [13usize, 14, 12, 11, 15, 10, 9, 8].iter().enumerate() {
            rec.add(6 + i).write_volatile(g.add(*gi).read() as u32);
        }
        g.add(16).write(RET64 as u64);
        let csgsfs = g.add(18).read();
        g.add(18).write((csgsfs & !0xFFFF) | USER64_CS as u64);
        g.add(17).write(0x202);
    }
}

#[repr(C)]
struct KSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

const PROT_RWX: usize = 7;
const PROT_RW: usize = 3;
const MAP_PRIVATE_ANON: usize = 0x02 | 0x20;
const MAP_SHARED_ANON: usize = 0x01 | 0x20;
const MAP_FIXED_NOREPLACE: usize = 0x10_0000;

/// The child's whole life. Never returns; never allocates.
///
/// # Safety
/// Must run in a freshly forked child; `out` and `progress` point into a shared mapping with
/// room for `cases.len()` outcomes.
unsafe fn child(h: &Harness, cases: &[Case], out: *mut Outcome, progress: *mut u32) -> ! {
    // SAFETY: raw system calls with valid arguments; the fixed mappings are checked to land
    // where asked; all pointers written below are inside those mappings or `out`.
    unsafe {
        let exit = |code: usize| -> ! {
            syscall(sys::EXIT_GROUP, code, 0, 0, 0, 0, 0);
            unreachable!()
        };
        for (addr, len, prot) in [
            (HARNESS, 0x1000, PROT_RWX),
            (CODE, 0x1000, PROT_RWX),
            (AREA, AREA_SIZE, PROT_RW),
            (STATE, 0x1000, PROT_RW),
        ] {
            let r = syscall(
                sys::MMAP,
                addr as usize,
                len,
                prot,
                MAP_PRIVATE_ANON | MAP_FIXED_NOREPLACE,
                usize::MAX,
                0,
            );
            if r != addr as isize {
                exit(100);
            }
        }
        let alt = syscall(
            sys::MMAP,
            0,
            0x10000,
            PROT_RW,
            MAP_PRIVATE_ANON,
            usize::MAX,
            0,
        );
        if alt < 0 {
            exit(101);
        }
        let stack = [alt as usize, 0usize, 0x10000usize];
        if syscall(sys::SIGALTSTACK, stack.as_ptr() as usize, 0, 0, 0, 0, 0) != 0 {
            exit(102);
        }
        for (addr, bytes) in &h.pieces {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), *addr as usize as *mut u8, bytes.len());
        }
        let act = KSigaction {
            handler: on_signal as *const () as usize,
            // SA_SIGINFO | SA_ONSTACK | SA_RESTORER | SA_NODEFER
            flags: 0x4 | 0x0800_0000 | 0x0400_0000 | 0x4000_0000,
            restorer: RESTORER as usize,
            mask: 0,
        };
        for sig in [4usize, 5, 7, 8, 11] {
            if syscall(
                sys::RT_SIGACTION,
                sig,
                &act as *const KSigaction as usize,
                0,
                8,
                0,
                0,
            ) != 0
            {
                exit(103);
            }
        }
        // A runaway case (a loop that never ends) kills the child after a while.
        syscall(sys::ALARM, 120, 0, 0, 0, 0, 0);
        let area = std::slice::from_raw_parts_mut(AREA as usize as *mut u8, AREA_SIZE);
        let entry: extern "sysv64" fn() = std::mem::transmute(ENTRY64 as usize);
        let rec = SIG_REC as usize as *mut u32;
        for (i, c) in cases.iter().enumerate() {
            progress.write_volatile(i as u32);
            let inr = IN_REGS as usize as *mut u32;
            for k in 0..8 {
                inr.add(k).write_volatile(c.regs[k]);
            }
            (IN_EFL as usize as *mut u32).write_volatile(c.eflags);
            fill_area(c, area);
            let code = CODE as usize as *mut u8;
            let n = c.code_len as usize;
            std::ptr::copy_nonoverlapping(c.code.as_ptr(), code, n);
            let j = jmp_epilogue(CODE + n as u32);
            std::ptr::copy_nonoverlapping(j.as_ptr(), code.add(n), 5);
            rec.write_volatile(0);
            entry();
            let o = &mut *out.add(i);
            *o = Outcome::default();
            if rec.read_volatile() != 0 {
                o.signo = rec.read_volatile();
                o.vector = rec.add(1).read_volatile();
                o.err = if has_error_code(o.vector) {
                    rec.add(2).read_volatile()
                } else {
                    0
                };
                o.cr2 = if o.vector == 14 {
                    rec.add(3).read_volatile()
                } else {
                    0
                };
                o.eip = rec.add(4).read_volatile();
                o.eflags = rec.add(5).read_volatile();
                for k in 0..8 {
                    o.regs[k] = rec.add(6 + k).read_volatile();
                }
            } else {
                let outr = OUT_REGS as usize as *const u32;
                for k in 0..8 {
                    o.regs[k] = outr.add(k).read_volatile();
                }
                o.eflags = (OUT_EFL as usize as *const u32).read_volatile();
            }
            record_diffs(c, area, o);
        }
        progress.write_volatile(cases.len() as u32);
        exit(0)
    }
}

/// Run `cases` natively; one forked child per call (a new child resumes after a case that
/// killed one, which is then reported as a harness error).
pub fn run_batch(h: &Harness, cases: &[Case]) -> Vec<Outcome> {
    let n = cases.len();
    let bytes = (n * std::mem::size_of::<Outcome>() + 4096 + 4095) & !4095;
    // SAFETY: an anonymous shared mapping of `bytes` bytes; checked for failure.
    let shm = unsafe { syscall(sys::MMAP, 0, bytes, PROT_RW, MAP_SHARED_ANON, usize::MAX, 0) };
    assert!(shm > 0, "mmap of the result area failed: {shm}");
    let progress = shm as usize as *mut u32;
    let out = (shm as usize + 4096) as *mut Outcome;
    let mut start = 0;
    while start < n {
        // SAFETY: fork; the child only runs `child`, which never returns and never allocates.
        let pid = unsafe { syscall(sys::FORK, 0, 0, 0, 0, 0, 0) };
        assert!(pid >= 0, "fork failed: {pid}");
        if pid == 0 {
            // SAFETY: we are the freshly forked child; `out` has room for all cases.
            unsafe { child(h, &cases[start..], out.add(start), progress) }
        }
        let mut status: i32 = 0;
        // SAFETY: wait for our own child; `status` is a valid out pointer.
        let r = unsafe {
            syscall(
                sys::WAIT4,
                pid as usize,
                &mut status as *mut i32 as usize,
                0,
                0,
                0,
                0,
            )
        };
        assert_eq!(r, pid, "wait4 failed");
        // SAFETY: `progress` is in the shared mapping, written by the child.
        let done = unsafe { progress.read_volatile() } as usize;
        let ok = status & 0x7F == 0 && (status >> 8) & 0xFF == 0;
        if ok {
            break;
        }
        if status & 0x7F == 0 && (status >> 8) & 0xFF >= 100 {
            panic!(
                "native child could not set up: exit code {}",
                (status >> 8) & 0xFF
            );
        }
        // The child died at case start+done: mark it and go on after it.
        let bad = start + done.min(n - start - 1);
        // SAFETY: `bad < n`, inside the shared mapping.
        unsafe {
            let o = &mut *out.add(bad);
            *o = Outcome::default();
            o.harness_error = status as u32 | 0x1_0000;
        }
        start = bad + 1;
    }
    // SAFETY: the child wrote all `n` outcomes (or we marked them); plain-old-data copy.
    let v = unsafe { std::slice::from_raw_parts(out, n).to_vec() };
    // SAFETY: unmapping our own mapping, no references to it remain.
    unsafe { syscall(sys::MUNMAP, shm as usize, bytes, 0, 0, 0, 0) };
    v
}

/// The host's CPUID vendor string and family/model/stepping.
pub fn host_cpu() -> String {
    use std::arch::x86_64::__cpuid;
    #[allow(unused_unsafe)]
    // SAFETY: CPUID is available on every x86-64 processor.
    let (v, f) = unsafe { (__cpuid(0), __cpuid(1)) };
    let mut s = Vec::new();
    for r in [v.ebx, v.edx, v.ecx] {
        s.extend_from_slice(&r.to_le_bytes());
    }
    let base_fam = (f.eax >> 8) & 0xF;
    let fam = if base_fam == 0xF {
        base_fam + ((f.eax >> 20) & 0xFF)
    } else {
        base_fam
    };
    let model = ((f.eax >> 4) & 0xF)
        | if base_fam >= 6 {
            ((f.eax >> 16) & 0xF) << 4
        } else {
            0
        };
    format!(
        "{} family {:#x} model {:#x} stepping {}",
        String::from_utf8_lossy(&s),
        fam,
        model,
        f.eax & 0xF
    )
}
