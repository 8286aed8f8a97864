//! Differential test against the host CPU (issue 3, oracle 2): every case runs natively in a
//! forked child in 32-bit compatibility mode and in Vireo's CPU (32-bit flat protected mode with
//! paging, CPL 3); registers, EFLAGS (less the flags the manuals call undefined), the memory
//! area and the exception raised must agree. See `translator/HOST_DIFF.md`.
//!
//! `VIREO_HOSTDIFF_CASES=N` sets the cases per form (default 1000), `VIREO_HOSTDIFF_SEED` the
//! seed, `VIREO_HOSTDIFF_FILTER=substring` limits the forms, `VIREO_HOSTDIFF_REPORT=path` writes
//! the per-form table there.

// The native runner needs an x86-64 Linux host (compatibility-mode selectors, raw system calls).
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

#[path = "host_diff/common.rs"]
mod common;
#[path = "host_diff/gen.rs"]
mod generator;
#[path = "host_diff/native.rs"]
mod native;
#[path = "host_diff/vireo.rs"]
mod vireo;

use common::*;
use generator::{Form, Mask};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Instant;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct FormResult {
    name: String,
    cases: usize,
    pass: usize,
    fail: usize,
    faults: usize,
    informational: usize,
    examples: Vec<String>,
    /// Failing cases by kind of difference: (count, first form, first example).
    kinds: std::collections::BTreeMap<String, (usize, String, String)>,
    /// Seconds spent generating, natively, in Vireo.
    times: [f64; 3],
}

fn disasm(bytes: &[u8]) -> String {
    use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
    let mut d = Decoder::with_ip(32, bytes, CODE as u64, DecoderOptions::NONE);
    let mut f = IntelFormatter::new();
    let mut s = String::new();
    for ins in d.iter() {
        if !s.is_empty() {
            s.push_str("; ");
        }
        f.format(&ins, &mut s);
    }
    s
}

fn show(o: &Outcome) -> String {
    let mut s = String::new();
    if o.harness_error != 0 {
        let _ = write!(s, "HARNESS ERROR {:#x} ", o.harness_error);
    }
    if o.vector != NO_FAULT {
        let _ = write!(
            s,
            "fault #{} err={:#x} cr2={:#x} eip={:#x} ",
            o.vector, o.err, o.cr2, o.eip
        );
    }
    let names = ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"];
    for (n, v) in names.iter().zip(o.regs) {
        let _ = write!(s, "{n}={v:08x} ");
    }
    let _ = write!(s, "efl={:08x} mem: {} bytes changed", o.eflags, o.ndiff);
    if o.ndiff > 0 {
        s.push_str(" [");
        for d in &o.diffs[..(o.ndiff as usize).min(8)] {
            let _ = write!(s, "{:#x}={:02x} ", AREA + (d >> 8), d & 0xFF);
        }
        s.push(']');
    }
    s
}

/// Compare; `None` when they agree under the mask, else a description of what differs.
/// `intel`: the host is a GenuineIntel processor (the vendor-conditional rule below).
fn compare(n: &Outcome, v: &Outcome, mask: &Mask, intel: bool) -> Option<String> {
    let mut what = Vec::new();
    if n.harness_error != 0 || v.harness_error != 0 {
        what.push("harness".to_string());
    }
    // BOUND across into the unmapped page: the host's #BR from the lower bound alone is the
    // other permitted order of two same-class faults (see `Mask::bound_br_first`); the rest of
    // the state must still agree.
    let bound_alt = mask.bound_br_first && n.vector == 5 && v.vector == 14;
    if bound_alt {
        if n.eip != v.eip {
            what.push("eip".into());
        }
    } else if n.vector != v.vector {
        what.push("vector".into());
    } else if n.vector != NO_FAULT {
        if n.err != v.err {
            what.push("error code".into());
        }
        if n.cr2 != v.cr2 {
            what.push("cr2".into());
        }
        if n.eip != v.eip {
            what.push("eip".into());
        }
    }
    for i in 0..8 {
        if mask.regs & (1 << i) == 0 && n.regs[i] != v.regs[i] {
            what.push(["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"][i].into());
        }
    }
    // A fault leaves the flags as they were before the instruction; a single-step trap (#DB)
    // comes after it, with its undefined flags.
    let mut fm = if n.vector != NO_FAULT && n.vector != 1 {
        generator::COMPARE_FLAGS
    } else {
        mask.flags
    };
    // REPE/REPNE CMPS/SCAS suspended after at least one iteration: the Intel SDM restores the
    // flags of before the instruction (Vireo does so); the AMD APM leaves them unspecified, and
    // Zen 3 shows the last comparison's. On other hosts than Intel the host's arithmetic flags
    // are not compared; Vireo's must still be the ones before the instruction.
    if let Some(r) = mask.rep_cmp
        && !intel
        && n.vector != NO_FAULT
        && n.eip == r.eip
        && n.regs[1] != r.ecx
    {
        fm &= !0x8D5;
        if (v.eflags ^ r.eflags) & 0x8D5 != 0 {
            what.push(format!(
                "eflags({:#x} vs before the instruction)",
                (v.eflags ^ r.eflags) & 0x8D5
            ));
        }
    }
    if (n.eflags ^ v.eflags) & fm != 0 {
        what.push(format!("eflags({:#x})", (n.eflags ^ v.eflags) & fm));
    }
    if n.ndiff != v.ndiff || n.diff_hash != v.diff_hash {
        what.push("memory".into());
    }
    if what.is_empty() {
        None
    } else {
        Some(what.join(","))
    }
}

fn run_form(
    form: &Form,
    cases: usize,
    seed: u64,
    h: &native::Harness,
    vm: &mut vireo::Vireo,
    intel: bool,
) -> FormResult {
    let mut rng = Rng(seed
        ^ common::splitmix(
            form.name
                .bytes()
                .fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(b as u64)),
        ));
    let t0 = Instant::now();
    let mut list = Vec::with_capacity(cases);
    let mut masks = Vec::with_capacity(cases);
    for _ in 0..cases {
        let (c, m) = generator::gen_case(form, &mut rng);
        list.push(c);
        masks.push(m);
    }
    let mut r = FormResult {
        name: form.name.clone(),
        cases,
        pass: 0,
        fail: 0,
        faults: 0,
        informational: 0,
        examples: Vec::new(),
        kinds: Default::default(),
        times: [0.0; 3],
    };
    r.times[0] = t0.elapsed().as_secs_f64();
    for chunk in (0..cases).collect::<Vec<_>>().chunks(20_000) {
        let (lo, hi) = (chunk[0], chunk[chunk.len() - 1] + 1);
        let t1 = Instant::now();
        let nat = native::run_batch(h, &list[lo..hi]);
        r.times[1] += t1.elapsed().as_secs_f64();
        let t2 = Instant::now();
        let mut vo = Vec::with_capacity(hi - lo);
        for c in &list[lo..hi] {
            vo.push(
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| vm.run(c))) {
                    Ok(v) => v,
                    Err(_) => {
                        *vm = vireo::Vireo::new(vm.mode());
                        Outcome {
                            harness_error: 0xBAD,
                            ..Outcome::default()
                        }
                    }
                },
            );
        }
        r.times[2] += t2.elapsed().as_secs_f64();
        for (k, n) in nat.iter().enumerate() {
            let i = lo + k;
            let c = &list[i];
            let v = vo[k];
            if n.vector != NO_FAULT {
                r.faults += 1;
            }
            match compare(n, &v, &masks[i], intel) {
                None => r.pass += 1,
                Some(what) => {
                    if masks[i].informational {
                        r.informational += 1;
                    } else {
                        r.fail += 1;
                        let vec_name = |x: u32| {
                            if x == NO_FAULT {
                                "-".to_string()
                            } else {
                                format!("#{x}")
                            }
                        };
                        // The kind: a different exception, or which parts differ (registers
                        // lumped together, the EFLAGS bits dropped) under the same outcome.
                        let key = if n.vector != v.vector {
                            format!(
                                "exception: host {} / vireo {}",
                                vec_name(n.vector),
                                vec_name(v.vector)
                            )
                        } else {
                            let mut parts: Vec<&str> = what
                                .split(',')
                                .map(|p| match p {
                                    "eax" | "ecx" | "edx" | "ebx" | "esp" | "ebp" | "esi"
                                    | "edi" => "registers",
                                    p if p.starts_with("eflags") => "eflags",
                                    p => p,
                                })
                                .collect();
                            parts.dedup();
                            format!("{} differ (both {})", parts.join("+"), vec_name(n.vector))
                        };
                        let e = r.kinds.entry(key).or_insert_with(|| {
                            (
                                0,
                                form.name.clone(),
                                format!(
                                    "{} | bytes {:02x?} | in: {} efl={:08x}\n      native: {}\n      vireo:  {}",
                                    disasm(c.code()),
                                    c.code(),
                                    c.regs.iter().map(|x| format!("{x:08x}")).collect::<Vec<_>>().join(" "),
                                    c.eflags,
                                    show(n),
                                    show(&v)
                                ),
                            )
                        });
                        e.0 += 1;
                    }
                    let seen = r
                        .examples
                        .iter()
                        .filter(|e| e.starts_with(&format!("  [{what}]")))
                        .count();
                    if seen < 1 && r.examples.len() < 4 {
                        r.examples.push(format!(
                            "  [{}] {} | bytes {:02x?} | in: {} efl={:08x} seed={:#x} patch@{:#x}={:02x?}\n    native: {}\n    vireo:  {}",
                            what,
                            disasm(c.code()),
                            c.code(),
                            c.regs.iter().map(|x| format!("{x:08x}")).collect::<Vec<_>>().join(" "),
                            c.eflags,
                            c.seed,
                            AREA + c.patch_off as u32,
                            &c.patch[..c.patch_len as usize],
                            show(n),
                            show(&v)
                        ));
                    }
                }
            }
        }
    }
    r
}

#[test]
fn host_cpu_differential() {
    differential(translator::JitMode::Off);
}

/// The same forms and cases with every block compiled by the JIT.
#[test]
fn host_cpu_differential_jit_forced() {
    differential(translator::JitMode::Always);
}

fn differential(mode: translator::JitMode) {
    let start = Instant::now();
    let cases = env_num("VIREO_HOSTDIFF_CASES", 1000) as usize;
    let seed = env_num("VIREO_HOSTDIFF_SEED", 0x5EED_0003);
    let filter = std::env::var("VIREO_HOSTDIFF_FILTER").ok();
    let mut forms = generator::forms();
    if let Some(f) = &filter {
        forms.retain(|x| x.name.contains(f.as_str()));
    }
    let host = native::host_cpu();
    let intel = host.starts_with("GenuineIntel");
    let vendor_rule = if intel {
        "compared (Intel host: the SDM restores the flags of before the instruction)"
    } else {
        "masked (not an Intel host: the AMD APM does not specify them)"
    };
    println!("host CPU: {host}; {mode:?}");
    println!("{} forms x {} cases, seed {:#x}", forms.len(), cases, seed);
    let h = native::Harness::new();
    let next = Mutex::new(0usize);
    let results = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(2);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut vm = vireo::Vireo::new(mode);
                loop {
                    let i = {
                        let mut g = next.lock().unwrap();
                        let i = *g;
                        *g += 1;
                        i
                    };
                    if i >= forms.len() {
                        break;
                    }
                    let t = Instant::now();
                    let r = run_form(&forms[i], cases, seed, &h, &mut vm, intel);
                    if std::env::var_os("VIREO_HOSTDIFF_VERBOSE").is_some() {
                        eprintln!(
                            "{:<40} {:>6.2}s {} fail",
                            forms[i].name,
                            t.elapsed().as_secs_f64(),
                            r.fail
                        );
                    }
                    results.lock().unwrap().push((i, r));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _)| *i);
    let mut report = String::new();
    let _ = writeln!(
        report,
        "host CPU: {host}\nseed {seed:#x}, {cases} cases per form\nvendor-conditional: arithmetic flags of a REPE/REPNE CMPS/SCAS suspended mid-way {vendor_rule}\n"
    );
    let _ = writeln!(
        report,
        "{:<40} {:>7} {:>7} {:>6} {:>6} {:>6}",
        "form", "cases", "pass", "fail", "info", "faults"
    );
    let (mut tp, mut tf, mut ti, mut tc) = (0, 0, 0, 0);
    let mut times = [0.0f64; 3];
    let mut failing = Vec::new();
    for (_, r) in &results {
        let _ = writeln!(
            report,
            "{:<40} {:>7} {:>7} {:>6} {:>6} {:>6}",
            r.name, r.cases, r.pass, r.fail, r.informational, r.faults
        );
        tp += r.pass;
        tf += r.fail;
        ti += r.informational;
        tc += r.cases;
        for (t, x) in times.iter_mut().zip(r.times) {
            *t += x;
        }
        if r.fail > 0 || r.informational > 0 {
            failing.push(r);
        }
    }
    let _ = writeln!(
        report,
        "\nTOTAL {} forms, {tc} cases: {tp} pass, {tf} fail, {ti} informational (documented differences)",
        results.len()
    );
    let _ = writeln!(
        report,
        "time {:.1}s wall; cpu seconds: generate {:.1}, native {:.1}, vireo {:.1}",
        start.elapsed().as_secs_f64(),
        times[0],
        times[1],
        times[2]
    );
    let mut kinds: std::collections::BTreeMap<String, (usize, usize, String, String)> =
        Default::default();
    for (_, r) in &results {
        for (k, (n, form, ex)) in &r.kinds {
            let e = kinds
                .entry(k.clone())
                .or_insert_with(|| (0, 0, form.clone(), ex.clone()));
            e.0 += n;
            e.1 += 1;
        }
    }
    let mut kinds: Vec<_> = kinds.into_iter().collect();
    kinds.sort_by_key(|k| std::cmp::Reverse(k.1.0));
    let _ = writeln!(
        report,
        "\nfailing cases by kind of difference (cases, forms, first example):"
    );
    for (k, (n, forms_n, form, ex)) in &kinds {
        let _ = writeln!(
            report,
            "{n:>7} cases in {forms_n:>3} forms  {k}\n    e.g. {form}: {ex}"
        );
    }
    let _ = writeln!(report, "\nexamples:");
    for r in &failing {
        let _ = writeln!(
            report,
            "{} ({} fail, {} info):",
            r.name, r.fail, r.informational
        );
        for e in &r.examples {
            let _ = writeln!(report, "{e}");
        }
    }
    println!("{report}");
    if let Ok(p) = std::env::var("VIREO_HOSTDIFF_REPORT") {
        std::fs::write(p, &report).unwrap();
    }
    assert_eq!(
        tf, 0,
        "{tf} cases differ from the host CPU (see the report above)"
    );
}
