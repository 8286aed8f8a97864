//! Differential test against the host CPU (this machine's x86-64): each instruction form runs
//! natively — in an executable page between a register-load prologue and a register-store
//! epilogue, inside a forked child so #DE (SIGFPE) cannot take the test down — and in Vireo with
//! the same registers and flags. Registers and the flags the manuals define must agree, and so
//! must the fault.
//!
//! Scope of this first version: register-only integer forms whose 32-bit encoding means the same
//! in 64-bit mode (the host runs them in 64-bit mode; the guest in 32-bit protected mode), so the
//! low 32 bits of every register must match. Memory forms and mode-specific instructions (INC r
//! short forms, DAA...) need a 32-bit compat-mode child and are not covered yet.
//!
//! Fixed seed, `VIREO_HOST_DIFF_CASES` cases per form (default 1000).

#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

use iced_x86::code_asm::*;
use iced_x86::{Decoder, DecoderOptions, RflagsBits};
use translator::state::{Segment, attr, cr0};
use translator::{Cpu, NullBus, PhysMem, RunExit};

/// Register block shared with the native code: RAX RCX RDX RBX RSP(unused) RBP RSI RDI, RFLAGS.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq)]
struct Regs {
    r: [u64; 8],
    flags: u64,
}

/// One native result slot in the shared buffer.
#[repr(C)]
#[derive(Clone, Copy)]
struct Slot {
    regs: Regs,
    /// 1 = ran to completion, 2 = killed by a signal (fault).
    state: u64,
    /// The data buffer after the instruction.
    mem: [u8; MEM],
}

/// Bytes of the data buffer memory forms operate on.
const MEM: usize = 64;

/// One input: registers, flags and the data buffer.
#[derive(Clone, Copy)]
struct Case {
    regs: Regs,
    mem: [u8; MEM],
}

/// The host data buffer (below 2 GiB so 32-bit addresses reach it), shared by all forms.
fn host_buffer() -> u64 {
    static BUF: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *BUF.get_or_init(|| {
        // SAFETY: a fresh anonymous private mapping; never unmapped (lives for the test run).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap of the data buffer failed");
        p as u64
    })
}

struct Native {
    code: *mut u8,
    len: usize,
}

impl Native {
    /// Build `fn(*mut Regs)` around `insn` (64-bit encoding).
    fn new(insn: &[u8]) -> Native {
        let mut a = CodeAssembler::new(64).unwrap();
        for r in [rbx, rbp, r12, r13, r14, r15] {
            a.push(r).unwrap();
        }
        a.mov(r15, rdi).unwrap();
        a.push(qword_ptr(r15 + 64)).unwrap();
        a.popfq().unwrap();
        for (i, r) in [rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi]
            .into_iter()
            .enumerate()
        {
            if i != 4 {
                a.mov(r, qword_ptr(r15 + i * 8)).unwrap();
            }
        }
        a.db(insn).unwrap();
        for (i, r) in [rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi]
            .into_iter()
            .enumerate()
        {
            if i != 4 {
                a.mov(qword_ptr(r15 + i * 8), r).unwrap();
            }
        }
        a.pushfq().unwrap();
        a.pop(qword_ptr(r15 + 64)).unwrap();
        for r in [r15, r14, r13, r12, rbp, rbx] {
            a.pop(r).unwrap();
        }
        a.ret().unwrap();
        let bytes = a.assemble(0).unwrap();
        // SAFETY: a fresh anonymous private mapping; no existing memory is affected.
        let code = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(code, libc::MAP_FAILED, "mmap of the code page failed");
        let code = code as *mut u8;
        // SAFETY: `code` is a 4096-byte writable mapping and the stub is far smaller.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), code, bytes.len()) };
        Native {
            code,
            len: bytes.len(),
        }
    }

    /// Run every input in a forked child; the results come back through a shared mapping.
    /// A child killed by a signal marks that case as faulted and a new child continues.
    fn run_all(&self, inputs: &[Case]) -> Vec<Slot> {
        let buf = host_buffer() as *mut u8;
        assert!(self.len < 4096);
        let bytes = std::mem::size_of::<Slot>() * inputs.len().max(1);
        // SAFETY: a fresh shared anonymous mapping, unmapped below.
        let shared = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(shared, libc::MAP_FAILED);
        let slots = shared as *mut Slot;
        let mut next = 0;
        while next < inputs.len() {
            // SAFETY: fork in a test process; the child only runs the native stub on memory it
            // owns or shares with us, then _exits without unwinding or running destructors.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork failed");
            if pid == 0 {
                for (i, inp) in inputs.iter().enumerate().skip(next) {
                    let mut r = inp.regs;
                    // SAFETY: `buf` is the 4 KiB data mapping; MEM bytes fit.
                    unsafe { std::ptr::copy_nonoverlapping(inp.mem.as_ptr(), buf, MEM) };
                    // SAFETY: `code` holds a complete function following the C ABI that only
                    // touches the registers it saves and restores, the Regs block and the data
                    // buffer the registers point into.
                    let f: extern "C" fn(*mut Regs) = unsafe { std::mem::transmute(self.code) };
                    f(&mut r);
                    let mut mem = [0u8; MEM];
                    // SAFETY: as above.
                    unsafe { std::ptr::copy_nonoverlapping(buf, mem.as_mut_ptr(), MEM) };
                    // SAFETY: i < inputs.len(), within the shared mapping.
                    unsafe {
                        *slots.add(i) = Slot {
                            regs: r,
                            state: 1,
                            mem,
                        }
                    };
                }
                // SAFETY: leave the child immediately.
                unsafe { libc::_exit(0) };
            }
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            // Find where the child stopped.
            let mut i = next;
            // SAFETY: reading slots within the mapping.
            while i < inputs.len() && unsafe { (*slots.add(i)).state } == 1 {
                i += 1;
            }
            if i < inputs.len() {
                assert!(
                    libc::WIFSIGNALED(status),
                    "child stopped early without a signal"
                );
                // SAFETY: as above.
                unsafe { (*slots.add(i)).state = 2 };
                i += 1;
            }
            next = i;
        }
        // SAFETY: copying out of the mapping, then releasing it.
        let out = (0..inputs.len())
            .map(|i| unsafe { *slots.add(i) })
            .collect();
        // SAFETY: the mapping is no longer used.
        unsafe { libc::munmap(shared, bytes) };
        out
    }
}

impl Drop for Native {
    fn drop(&mut self) {
        // SAFETY: unmapping the page mapped in `new`.
        unsafe { libc::munmap(self.code as *mut libc::c_void, 4096) };
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// An f64 with a moderate exponent (no denormal or overflowing results), sometimes a
    /// small integer, a signed zero, an infinity or a NaN.
    fn float(&mut self) -> f64 {
        let v = self.next();
        match v % 16 {
            0 => 0.0,
            1 => -0.0,
            2 => f64::INFINITY,
            3 => f64::NAN,
            4..=7 => ((v >> 8) % 2001) as f64 - 1000.0 + 0.5 * ((v >> 40) & 1) as f64,
            _ => {
                let mant = (v >> 12) & 0x000F_FFFF_FFFF_FFFF;
                let exp = 1023 - 60 + ((v >> 4) % 120);
                f64::from_bits(((v >> 3) & 1) << 63 | exp << 52 | mant)
            }
        }
    }

    /// Operands biased toward edge values, where flag bugs live.
    fn operand(&mut self) -> u64 {
        let v = self.next();
        match v % 8 {
            0 => 0,
            1 => 0xFFFF_FFFF,
            2 => 0x8000_0000 | ((v >> 40) & 0xFF),
            3 => 0x7FFF_FFFF,
            4 => (v >> 32) & 0xFF,
            5 => ((v >> 32) & 0xFFFF) | (0xFFFF_0000 * ((v >> 20) & 1)),
            _ => v >> 32,
        }
    }
}

/// Guest-physical address of the data buffer; DS/ES bases map the host buffer's address onto it.
const GUEST_BUF: u64 = 0x4000;

fn guest(cpu: &mut Cpu, insn32: &[u8], case: &Case) -> (Regs, Option<u8>, [u8; MEM]) {
    let inp = &case.regs;
    cpu.reset();
    let m = cpu.mem.as_mut_slice();
    m[0x1000..0x1000 + insn32.len()].copy_from_slice(insn32);
    m[0x1000 + insn32.len()] = 0xF4;
    m[GUEST_BUF as usize..GUEST_BUF as usize + MEM].copy_from_slice(&case.mem);
    cpu.flush_translations();
    cpu.cr0 |= cr0::PE;
    for s in 0..6 {
        cpu.segs[s] = Segment {
            selector: if s == 1 { 8 } else { 0x10 },
            base: 0,
            limit: 0xFFFF_FFFF,
            attr: attr::P
                | attr::S
                | attr::RW
                | attr::DB
                | attr::G
                | if s == 1 { attr::CODE } else { 0 },
        };
    }
    let base = GUEST_BUF.wrapping_sub(host_buffer()) & 0xFFFF_FFFF;
    cpu.segs[0].base = base;
    cpu.segs[3].base = base;
    cpu.rip = 0x1000;
    for i in 0..8 {
        cpu.regs[i] = inp.r[i] & 0xFFFF_FFFF;
    }
    cpu.regs[4] = 0x8000;
    cpu.set_rflags(inp.flags);
    // IDT limit 0: the first fault shuts the CPU down, which is all we need to see.
    let exit = cpu.run(&mut NullBus, 100);
    let fault = cpu.last_fault.map(|f| f.vector);
    assert!(
        exit == RunExit::Halted || fault.is_some(),
        "guest neither halted nor faulted"
    );
    let mut out = Regs {
        flags: cpu.rflags(),
        ..Regs::default()
    };
    for i in 0..8 {
        out.r[i] = cpu.regs[i] & 0xFFFF_FFFF;
    }
    let mut mem = [0u8; MEM];
    mem.copy_from_slice(&cpu.mem.as_slice()[GUEST_BUF as usize..GUEST_BUF as usize + MEM]);
    (out, fault, mem)
}

/// Our flag bits for iced's RflagsBits.
fn flags_of(bits: u32) -> u64 {
    let mut f = 0;
    for (i, x) in [
        (RflagsBits::OF, 0x800),
        (RflagsBits::SF, 0x80),
        (RflagsBits::ZF, 0x40),
        (RflagsBits::AF, 0x10),
        (RflagsBits::CF, 1),
        (RflagsBits::PF, 4),
    ] {
        if bits & i != 0 {
            f |= x;
        }
    }
    f
}

/// The host's vendor and model, recorded with the results (undefined flags and a few
/// behaviours differ between vendors; results so far are from an AMD EPYC).
fn host_cpu() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |k: &str| {
        info.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    format!("{} / {}", field("vendor_id"), field("model name"))
}

type Form = (
    &'static str,
    fn(&mut CodeAssembler) -> Result<(), IcedError>,
);

fn check(
    name: &str,
    form: fn(&mut CodeAssembler) -> Result<(), IcedError>,
    cases: usize,
    rng: &mut Rng,
    memory: bool,
) -> Vec<String> {
    let x87 = name.starts_with("x87");
    let enc = |bits| {
        let mut a = CodeAssembler::new(bits).unwrap();
        form(&mut a).unwrap();
        a.assemble(0).unwrap()
    };
    let (i32b, i64b) = (enc(32), enc(64));
    let ins = Decoder::with_ip(32, &i32b, 0, DecoderOptions::NONE).decode();
    let undefined = flags_of(ins.rflags_undefined());
    let mask = 0x8D5 & !undefined;
    let inputs: Vec<Case> = (0..cases)
        .map(|_| {
            let mut r = Regs {
                flags: 0x202 | (rng.next() & 0x8D5),
                ..Regs::default()
            };
            for (i, x) in r.r.iter_mut().enumerate() {
                *x = if i == 4 { 0 } else { rng.operand() };
            }
            let mut mem = [0u8; MEM];
            for c in mem.chunks_mut(4) {
                c.copy_from_slice(&(rng.operand() as u32).to_le_bytes());
            }
            if x87 {
                // Two f64 operands at [EBX] and [EBX+8], the control word at [EBX+24]:
                // double precision (so the host's 80-bit registers round like f64), random
                // rounding control, all exceptions masked.
                r.r[3] = host_buffer();
                mem.fill(0);
                mem[0..8].copy_from_slice(&rng.float().to_le_bytes());
                mem[8..16].copy_from_slice(&rng.float().to_le_bytes());
                let cw: u16 = 0x027F | (((rng.next() & 3) as u16) << 10);
                mem[24..26].copy_from_slice(&cw.to_le_bytes());
            } else if memory {
                // EBX, ESI, EDI point into the data buffer; ECX is a small count.
                let b = host_buffer();
                r.r[3] = b + 16;
                r.r[6] = b + (rng.next() % 24);
                r.r[7] = b + 24 + (rng.next() % 24);
                r.r[1] = rng.next() % 17;
            }
            Case { regs: r, mem }
        })
        .collect();
    // Double shifts of 16-bit operands by 17-31 leave result and flags undefined: keep the
    // count in 0..=16 for those forms.
    let mut inputs = inputs;
    if name.starts_with("shld r16") || name.starts_with("shrd r16") {
        for c in &mut inputs {
            c.regs.r[1] = (c.regs.r[1] & !0xFF) | (c.regs.r[1] % 17);
        }
    }
    let native = Native::new(&i64b);
    let mut cpu = Cpu::new(PhysMem::new(64 << 10));
    let host = native.run_all(&inputs);
    let mut errs = Vec::new();
    for (case, h) in inputs.iter().zip(&host) {
        let inp = &case.regs;
        let (g, gf, gmem) = guest(&mut cpu, &i32b, case);
        let host_faulted = h.state == 2;
        let mut bad = host_faulted != (gf == Some(0));
        if !host_faulted && !bad {
            for i in [0, 1, 2, 3, 5, 6, 7] {
                bad |= (h.regs.r[i] & 0xFFFF_FFFF) != g.r[i];
            }
            bad |= (h.regs.flags & mask) != (g.flags & mask);
            bad |= h.mem != gmem;
        }
        if bad && errs.len() < 3 {
            errs.push(format!(
                "{name}: in {:x?} flags {:#x}: host {} {:x?} {:#x} / vireo {gf:?} {:x?} {:#x} (mask {mask:#x})",
                inp.r, inp.flags, if host_faulted { "fault" } else { "ok" }, h.regs.r.map(|x| x & 0xFFFF_FFFF), h.regs.flags & 0xFFF, g.r, g.flags & 0xFFF
            ) + &mem_diff(&case.mem, &h.mem, &gmem));
        }
    }
    errs
}

#[test]
fn integer_register_forms_match_the_host_cpu() {
    let cases: usize = std::env::var("VIREO_HOST_DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    eprintln!("host CPU: {}", host_cpu());
    let mut rng = Rng(0xD1FF_0000_0000_0001);
    let forms: &[Form] = &[
        ("add r32", |a| a.add(eax, ebx)),
        ("adc r32", |a| a.adc(ecx, edx)),
        ("sub r32", |a| a.sub(esi, edi)),
        ("sbb r32", |a| a.sbb(eax, ecx)),
        ("cmp r32", |a| a.cmp(ebx, edx)),
        ("and r32", |a| a.and(eax, esi)),
        ("or r32", |a| a.or(edi, ebx)),
        ("xor r32", |a| a.xor(ecx, eax)),
        ("test r32", |a| a.test(edx, ebp)),
        ("add r8 hi", |a| a.add(ah, bl)),
        ("sbb r8", |a| a.sbb(cl, dh)),
        ("adc r16", |a| a.adc(ax, bx)),
        ("sub r16", |a| a.sub(si, di)),
        ("neg r32", |a| a.neg(ebx)),
        ("neg r8", |a| a.neg(ch)),
        ("not r16", |a| a.not(dx)),
        ("inc r32 (FF /0)", |a| a.inc(esi)),
        ("dec r16 (FF /1)", |a| a.dec(bp)),
        ("mul r32", |a| a.mul(ebx)),
        ("mul r8", |a| a.mul(cl)),
        ("imul r32", |a| a.imul(ecx)),
        ("imul r16", |a| a.imul(bx)),
        ("imul r32, r32", |a| a.imul_2(esi, edi)),
        ("imul r16, r16, imm", |a| a.imul_3(dx, cx, 0x1234)),
        ("div r32", |a| a.div(ebx)),
        ("div r8", |a| a.div(cl)),
        ("idiv r32", |a| a.idiv(ecx)),
        ("idiv r16", |a| a.idiv(bx)),
        ("idiv r8", |a| a.idiv(dh)),
        ("shl r32, cl", |a| a.shl(ebx, cl)),
        ("shr r32, cl", |a| a.shr(edx, cl)),
        ("sar r32, cl", |a| a.sar(esi, cl)),
        ("shl r8, cl", |a| a.shl(bl, cl)),
        ("shr r16, cl", |a| a.shr(dx, cl)),
        ("sar r8, 1", |a| a.sar(ah, 1)),
        ("rol r32, cl", |a| a.rol(eax, cl)),
        ("ror r16, cl", |a| a.ror(bx, cl)),
        ("rcl r32, cl", |a| a.rcl(edx, cl)),
        ("rcr r8, cl", |a| a.rcr(bl, cl)),
        ("rcl r16, 1", |a| a.rcl(si, 1)),
        ("shld r32, r32, cl", |a| a.shld(eax, ebx, cl)),
        ("shrd r32, r32, imm", |a| a.shrd(edx, esi, 7)),
        ("shld r16, r16, cl", |a| a.shld(ax, dx, cl)),
        ("bsf r32", |a| a.bsf(eax, ebx)),
        ("bsr r16", |a| a.bsr(cx, dx)),
        ("bt r32, r32", |a| a.bt(eax, ecx)),
        ("bts r32, imm", |a| a.bts(ebx, 13)),
        ("btr r16, r16", |a| a.btr(si, di)),
        ("btc r32, r32", |a| a.btc(edx, ebx)),
        ("bswap", |a| a.bswap(esi)),
        ("xadd r32", |a| a.xadd(ecx, edx)),
        ("cmpxchg r32", |a| a.cmpxchg(ebx, esi)),
        ("cmpxchg r8", |a| a.cmpxchg(dl, bh)),
        ("cmovbe", |a| a.cmovbe(eax, ebx)),
        ("cmovl", |a| a.cmovl(ecx, edx)),
        ("setg", |a| a.setg(al)),
        ("setp", |a| a.setp(bh)),
        ("movzx r32, r8", |a| a.movzx(eax, bh)),
        ("movsx r32, r16", |a| a.movsx(edx, si)),
        ("cbw", |a| a.cbw()),
        ("cwde", |a| a.cwde()),
        ("cdq", |a| a.cdq()),
        ("cwd", |a| a.cwd()),
        ("xchg r32", |a| a.xchg(esi, edi)),
        ("lea", |a| a.lea(eax, dword_ptr(ebx + ecx * 4 + 0x1234))),
        ("sahf", |a| a.sahf()),
        ("lahf", |a| a.lahf()),
        ("cmc", |a| a.cmc()),
        ("add r32, imm8", |a| a.add(ebx, -5)),
        ("sub r16, imm16", |a| a.sub(cx, 0x7FFF)),
        ("cmp r8, imm8", |a| a.cmp(dl, 0x80)),
        // Sequences: INC/DEC keep the CF of a still-lazy previous operation.
        ("sub; inc", |a| {
            a.sub(eax, ebx)?;
            a.inc(ecx)
        }),
        ("add; dec", |a| {
            a.add(edx, esi)?;
            a.dec(edi)
        }),
        ("adc; inc r8", |a| {
            a.adc(al, bl)?;
            a.inc(ch)
        }),
        ("sbb; dec r16", |a| {
            a.sbb(si, di)?;
            a.dec(dx)
        }),
        ("neg; inc; adc", |a| {
            a.neg(eax)?;
            a.inc(ebx)?;
            a.adc(ecx, edx)
        }),
        ("xor; dec; sbb", |a| {
            a.xor(eax, ebx)?;
            a.dec(ecx)?;
            a.sbb(edx, esi)
        }),
    ];
    let mut errs = Vec::new();
    for (name, f) in forms {
        errs.extend(check(name, *f, cases, &mut rng, false));
    }
    assert!(errs.is_empty(), "host CPU disagrees:\n{}", errs.join("\n"));
}

/// Memory forms: EBX/ESI/EDI point into a data buffer (32-bit addresses on both sides), so
/// read-modify-write, bit-string offsets, CMPXCHG8B and REP string instructions are compared
/// including the bytes they write.
#[test]
fn integer_memory_forms_match_the_host_cpu() {
    let cases: usize = std::env::var("VIREO_HOST_DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let mut rng = Rng(0xD1FF_0000_0000_0002);
    let forms: &[Form] = &[
        ("add m32, r32", |a| a.add(dword_ptr(ebx), eax)),
        ("sub r32, m32", |a| a.sub(eax, dword_ptr(ebx + 4))),
        ("adc m8, r8", |a| a.adc(byte_ptr(ebx + 1), cl)),
        ("sbb m16, imm", |a| a.sbb(word_ptr(ebx + 2), 0x1234)),
        ("and m32, imm8", |a| a.and(dword_ptr(ebx - 4), -3)),
        ("inc m32", |a| a.inc(dword_ptr(ebx))),
        ("dec m8", |a| a.dec(byte_ptr(ebx + 3))),
        ("neg m16", |a| a.neg(word_ptr(ebx))),
        ("not m32", |a| a.not(dword_ptr(ebx + 8))),
        ("shl m32, cl", |a| a.shl(dword_ptr(ebx), cl)),
        ("sar m16, imm", |a| a.sar(word_ptr(ebx), 5)),
        ("rcr m8, 1", |a| a.rcr(byte_ptr(ebx + 1), 1)),
        ("rol m32, cl", |a| a.rol(dword_ptr(ebx + 4), cl)),
        ("shld m32, r32, cl", |a| a.shld(dword_ptr(ebx), edx, cl)),
        ("shrd m32, r32, imm", |a| a.shrd(dword_ptr(ebx), esi, 9)),
        ("bt m32, r32", |a| a.bt(dword_ptr(ebx), ecx)),
        ("bts m32, r32", |a| a.bts(dword_ptr(ebx), ecx)),
        ("btr m16, r16", |a| a.btr(word_ptr(ebx), cx)),
        ("btc m32, imm", |a| a.btc(dword_ptr(ebx), 37)),
        ("xadd m32, r32", |a| a.xadd(dword_ptr(ebx), ecx)),
        ("cmpxchg m32, r32", |a| a.cmpxchg(dword_ptr(ebx), edx)),
        ("cmpxchg8b", |a| a.cmpxchg8b(qword_ptr(ebx))),
        ("xchg m32, r32", |a| a.xchg(dword_ptr(ebx), eax)),
        ("movzx r32, m8", |a| a.movzx(eax, byte_ptr(ebx + 5))),
        ("movsx r32, m16", |a| a.movsx(edx, word_ptr(ebx + 6))),
        ("imul r32, m32, imm", |a| {
            a.imul_3(eax, dword_ptr(ebx), 1000)
        }),
        ("mul m16", |a| a.mul(word_ptr(ebx))),
        ("div m32", |a| a.div(dword_ptr(ebx))),
        ("idiv m8", |a| a.idiv(byte_ptr(ebx))),
        ("setc m8", |a| a.setb(byte_ptr(ebx))),
        ("cmovz r32, m32", |a| a.cmovz(eax, dword_ptr(ebx))),
        ("bsf r16, m16", |a| a.bsf(ax, word_ptr(ebx))),
        ("mov m32, imm", |a| a.mov(dword_ptr(ebx + 8), 0x5555)),
        ("rep movsb", |a| a.rep().movsb()),
        ("rep movsd", |a| a.rep().movsd()),
        ("rep stosw", |a| a.rep().stosw()),
        ("repe cmpsb", |a| a.repe().cmpsb()),
        ("repne scasb", |a| a.repne().scasb()),
        ("lodsd", |a| a.lodsd()),
        ("movsw", |a| a.movsw()),
    ];
    let mut errs = Vec::new();
    for (name, f) in forms {
        errs.extend(check(name, *f, cases, &mut rng, true));
    }
    assert!(errs.is_empty(), "host CPU disagrees:\n{}", errs.join("\n"));
}

/// The x87 around one instruction: load b then a (so ST0 = a, ST1 = b), run it, store ST0 as
/// m64 at [EBX+16] and C3/C2/C0 of the status word at [EBX+32].
fn x87_wrap(
    a: &mut CodeAssembler,
    body: fn(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Result<(), IcedError> {
    a.fninit()?;
    a.fldcw(word_ptr(ebx + 24))?;
    a.fld(qword_ptr(ebx + 8))?;
    a.fld(qword_ptr(ebx))?;
    body(a)?;
    a.fstp(qword_ptr(ebx + 16))?;
    a.fnstsw(ax)?;
    a.and(eax, 0x4500)?;
    a.mov(word_ptr(ebx + 32), ax)?;
    a.fninit()
}

/// x87 arithmetic, compares and rounding against the host's FPU running at double precision:
/// the stored results must be bit-identical and the condition codes equal.
#[test]
fn x87_matches_the_host_fpu_at_double_precision() {
    let cases: usize = std::env::var("VIREO_HOST_DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let mut rng = Rng(0xD1FF_0000_0000_0003);
    let forms: &[Form] = &[
        ("x87 fadd", |a| x87_wrap(a, |a| a.fadd_2(st0, st1))),
        ("x87 fsub", |a| x87_wrap(a, |a| a.fsub_2(st0, st1))),
        ("x87 fsubr", |a| x87_wrap(a, |a| a.fsubr_2(st0, st1))),
        ("x87 fmul", |a| x87_wrap(a, |a| a.fmul_2(st0, st1))),
        ("x87 fdiv", |a| x87_wrap(a, |a| a.fdiv_2(st0, st1))),
        ("x87 fdivr", |a| x87_wrap(a, |a| a.fdivr_2(st0, st1))),
        ("x87 fadd m64", |a| {
            x87_wrap(a, |a| a.fadd(qword_ptr(ebx + 8)))
        }),
        ("x87 fsqrt", |a| x87_wrap(a, |a| a.fsqrt())),
        ("x87 fchs", |a| x87_wrap(a, |a| a.fchs())),
        ("x87 fabs", |a| x87_wrap(a, |a| a.fabs())),
        ("x87 frndint", |a| x87_wrap(a, |a| a.frndint())),
        ("x87 fcom", |a| x87_wrap(a, |a| a.fcom_2(st0, st1))),
        ("x87 fucom", |a| x87_wrap(a, |a| a.fucom(st0, st1))),
        ("x87 ftst", |a| x87_wrap(a, |a| a.ftst())),
        ("x87 fcomi", |a| x87_wrap(a, |a| a.fcomi(st0, st1))),
        ("x87 fxch", |a| x87_wrap(a, |a| a.fxch(st0, st1))),
        ("x87 fld m32 round trip", |a| {
            x87_wrap(a, |a| {
                a.fst(dword_ptr(ebx + 40))?;
                a.fld(dword_ptr(ebx + 40))
            })
        }),
        ("x87 fistp m32", |a| {
            x87_wrap(a, |a| {
                a.fist(dword_ptr(ebx + 40))?;
                a.fild(dword_ptr(ebx + 40))
            })
        }),
    ];
    let mut errs = Vec::new();
    for (name, f) in forms {
        errs.extend(check(name, *f, cases, &mut rng, true));
    }
    assert!(errs.is_empty(), "host FPU disagrees:\n{}", errs.join("\n"));
}

/// The 8-byte words of the data buffer where host and Vireo differ (with the input word).
fn mem_diff(input: &[u8; MEM], host: &[u8; MEM], ours: &[u8; MEM]) -> String {
    let mut out = String::new();
    for i in (0..MEM).step_by(8) {
        let w = |b: &[u8; MEM]| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        if host[i..i + 8] != ours[i..i + 8] {
            out += &format!(
                " mem+{i}: in {:#x} host {:#x} vireo {:#x};",
                w(input),
                w(host),
                w(ours)
            );
        }
    }
    out
}
