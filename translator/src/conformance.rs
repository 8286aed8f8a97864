//! Harness for the SingleStepTests 80286 real-mode suite (format and rules:
//! `conformance/README.md`), shared by the `sst-runner` binary and the integration test.
//!
//! Each test loads registers and RAM into a real-mode CPU with 16 MiB of RAM, runs until the
//! HLT that follows the instruction (or the one at the exception handler) and compares the
//! registers (flags under the opcode's undefined-flag mask, bits 12-15 ignored) and the RAM
//! bytes the test lists. Failures that are documented 80286 behaviour a 386+ does not share are
//! reported as [`Outcome::Known`] with their reason (see `KNOWN_286_DIFFERENCES.md`), never
//! dropped.

use crate::state::{Segment, TableReg, sreg};
use crate::{Cpu, NullBus, PhysMem, RunExit};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// Register names in test order, mapped to our GPR numbers.
const GPRS: [(&str, usize); 8] = [
    ("ax", 0),
    ("bx", 3),
    ("cx", 1),
    ("dx", 2),
    ("sp", 4),
    ("bp", 5),
    ("si", 6),
    ("di", 7),
];
const SEGS: [(&str, usize); 4] = [
    ("cs", sreg::CS),
    ("ss", sreg::SS),
    ("ds", sreg::DS),
    ("es", sreg::ES),
];

/// Per-opcode flag masks and the revocation list.
#[derive(Default)]
pub struct SuiteInfo {
    /// "80.3" / "00" → flags mask (1 = compared).
    masks: HashMap<String, u16>,
    revoked: HashSet<String>,
}

impl SuiteInfo {
    /// Load `metadata.json` and `revocation_list.txt` from `dir` or its parent.
    pub fn load(dir: &Path) -> SuiteInfo {
        let mut info = SuiteInfo::default();
        let find = |name: &str| -> Option<PathBuf> {
            [dir.join(name), dir.join("..").join(name)]
                .into_iter()
                .find(|p| p.exists())
        };
        if let Some(p) = find("metadata.json")
            && let Ok(text) = std::fs::read_to_string(p)
            && let Ok(v) = serde_json::from_str::<Value>(&text)
            && let Some(ops) = v["opcodes"].as_object()
        {
            for (k, o) in ops {
                if let Some(m) = o["flags-mask"].as_u64() {
                    info.masks.insert(k.clone(), m as u16);
                }
                if let Some(regs) = o["reg"].as_object() {
                    for (r, ro) in regs {
                        if let Some(m) = ro["flags-mask"].as_u64() {
                            info.masks.insert(format!("{k}.{r}"), m as u16);
                        }
                    }
                }
            }
        }
        if let Some(p) = find("revocation_list.txt")
            && let Ok(text) = std::fs::read_to_string(p)
        {
            for l in text.lines() {
                let l = l.trim();
                if !l.is_empty() && !l.starts_with('#') {
                    info.revoked.insert(l.to_string());
                }
            }
        }
        info
    }

    /// The compared flag bits for an opcode key ("80.3", "00"): the metadata mask without the
    /// 286's bits 12-15.
    pub fn flags_mask(&self, key: &str) -> u16 {
        self.masks.get(key).copied().unwrap_or(0xFFFF) & 0x0FFF
    }
}

/// Result of one test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    /// A real mismatch, with a description.
    Fail(String),
    /// A mismatch explained by a documented 80286 quirk (the reason).
    Known(&'static str),
    /// Revoked by the suite's maintainers.
    Revoked,
}

/// Results of one file.
#[derive(Default, Debug)]
pub struct FileResult {
    pub key: String,
    pub pass: usize,
    pub fail: usize,
    pub known: HashMap<&'static str, usize>,
    pub revoked: usize,
    /// The first few failures (test name and difference).
    pub samples: Vec<String>,
}

/// Reusable runner: one CPU with 16 MiB of RAM, reset between tests.
pub struct Runner {
    pub cpu: Cpu,
    bus: NullBus,
    dirty_pages: Vec<u64>,
}

impl Default for Runner {
    fn default() -> Self {
        Self::new()
    }
}

fn reg16(v: &Value, name: &str) -> Option<u16> {
    v.get(name).and_then(Value::as_u64).map(|x| x as u16)
}

impl Runner {
    pub fn new() -> Self {
        Runner {
            cpu: Cpu::new(PhysMem::new(16 << 20)),
            bus: NullBus,
            dirty_pages: Vec::new(),
        }
    }

    /// Run one test (a parsed JSON line) with flag mask `mask`.
    pub fn run_test(&mut self, t: &Value, mask: u16) -> Outcome {
        // Clear what the previous test touched.
        for p in self.dirty_pages.drain(..) {
            let a = (p << 12) as usize;
            if let Some(s) = self.cpu.mem.as_mut_slice().get_mut(a..a + 4096) {
                s.fill(0);
            }
        }
        let cpu = &mut self.cpu;
        cpu.reset();
        cpu.idtr = TableReg {
            base: 0,
            limit: 0x3FF,
        };
        let init = &t["initial"];
        let iregs = &init["regs"];
        for (n, r) in GPRS {
            cpu.regs[r] = reg16(iregs, n).unwrap_or(0) as u64;
        }
        for (n, s) in SEGS {
            cpu.segs[s] = Segment::real(reg16(iregs, n).unwrap_or(0), s == sreg::CS);
        }
        cpu.rip = reg16(iregs, "ip").unwrap_or(0) as u64;
        // A real-mode 80286 keeps flag bits 12-15 clear (PUSHF stores them as 0), but the
        // generator fills them with noise: load the state the 286 actually had.
        cpu.set_rflags(reg16(iregs, "flags").unwrap_or(2) as u64 & 0x0FFF);
        let mut pages = Vec::new();
        if let Some(ram) = init["ram"].as_array() {
            for e in ram {
                let a = e[0].as_u64().unwrap_or(0);
                let b = e[1].as_u64().unwrap_or(0) as u8;
                if let Some(x) = cpu.mem.as_mut_slice().get_mut(a as usize) {
                    *x = b;
                }
                pages.push(a >> 12);
            }
        }
        cpu.flush_translations();
        // The instruction, maybe an exception handler, and the HLT: a few steps at most (a REP
        // instruction counts once per slice of iterations).
        // The first step is the instruction under test: remember whether it faulted.
        let mut exit = cpu.run(&mut self.bus, 1);
        let first_fault = cpu.last_fault.map(|f| f.vector);
        // SI/DI when that fault was delivered (a REP loop may have advanced them).
        let fault_si_di = (cpu.regs[6] as u16, cpu.regs[7] as u16);
        if exit == RunExit::Budget {
            exit = cpu.run(&mut self.bus, 63);
        }
        let fin = &t["final"];
        if let Some(ram) = fin["ram"].as_array() {
            for e in ram {
                pages.push(e[0].as_u64().unwrap_or(0) >> 12);
            }
        }
        pages.sort_unstable();
        pages.dedup();
        self.dirty_pages = pages;
        let cpu = &mut self.cpu;
        if exit != RunExit::Halted {
            if let Some(reason) = known_286_difference(t, first_fault, fault_si_di) {
                return Outcome::Known(reason);
            }
            return Outcome::Fail(format!(
                "did not reach HLT: {exit:?} at {:04x}:{:04x}",
                cpu.segs[1].selector, cpu.rip
            ));
        }

        let fregs = &fin["regs"];
        let want = |n: &str| reg16(fregs, n).or_else(|| reg16(iregs, n)).unwrap_or(0);
        let mut diffs = Vec::new();
        for (n, r) in GPRS {
            let got = cpu.regs[r] as u16;
            if got != want(n) {
                diffs.push(format!("{n}={got:04x} want {:04x}", want(n)));
            }
        }
        for (n, s) in SEGS {
            let got = cpu.segs[s].selector;
            if got != want(n) {
                diffs.push(format!("{n}={got:04x} want {:04x}", want(n)));
            }
        }
        if cpu.rip as u16 != want("ip") {
            diffs.push(format!("ip={:04x} want {:04x}", cpu.rip, want("ip")));
        }
        let gf = cpu.rflags() as u16;
        if gf & mask != want("flags") & mask {
            diffs.push(format!(
                "flags={gf:04x} want {:04x} (mask {mask:04x})",
                want("flags")
            ));
        }
        // Where the exception frame's FLAGS word is: SS:(final SP + 4). The suite's
        // `flag_address` is rounded down to an even address, which is wrong when SP is odd, so
        // it is computed from the expected final SS:SP instead.
        let flag_addr = t["exception"]["flag_address"]
            .as_u64()
            .map(|_| ((want("ss") as u64) << 4) + ((want("sp") as u64 + 4) & 0xFFFF));
        if let Some(ram) = fin["ram"].as_array() {
            for e in ram {
                let a = e[0].as_u64().unwrap_or(0);
                let w = e[1].as_u64().unwrap_or(0) as u8;
                let g = cpu.mem.as_slice().get(a as usize).copied().unwrap_or(0);
                let m = match flag_addr {
                    Some(fa) if a == fa => mask as u8,
                    Some(fa) if a == fa + 1 => (mask >> 8) as u8,
                    _ => 0xFF,
                };
                if g & m != w & m {
                    diffs.push(format!("[{a:06x}]={g:02x} want {w:02x}"));
                }
            }
        }
        if diffs.is_empty() {
            return Outcome::Pass;
        }
        if let Some(reason) = known_286_difference(t, first_fault, fault_si_di) {
            return Outcome::Known(reason);
        }
        Outcome::Fail(diffs.join(", "))
    }

    /// Run every test of one `.jsonl.gz` file.
    pub fn run_file(&mut self, path: &Path, info: &SuiteInfo) -> std::io::Result<FileResult> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let key = name
            .trim_end_matches(".gz")
            .trim_end_matches(".jsonl")
            .trim_end_matches(".json")
            .to_string();
        let mask = info.flags_mask(&key);
        let f = std::fs::File::open(path)?;
        let reader: Box<dyn BufRead> = if name.ends_with(".gz") {
            Box::new(BufReader::new(flate2::read::GzDecoder::new(f)))
        } else {
            Box::new(BufReader::new(f))
        };
        let mut res = FileResult {
            key,
            ..FileResult::default()
        };
        for line in reader.lines() {
            let line = line?;
            let Ok(t) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if t.get("header").is_some() || t.get("initial").is_none() {
                continue;
            }
            if let Some(h) = t["hash"].as_str()
                && info.revoked.contains(h)
            {
                res.revoked += 1;
                continue;
            }
            match self.run_test(&t, mask) {
                Outcome::Pass => res.pass += 1,
                Outcome::Known(r) => *res.known.entry(r).or_default() += 1,
                Outcome::Revoked => res.revoked += 1,
                Outcome::Fail(d) => {
                    res.fail += 1;
                    if res.samples.len() < 5 {
                        res.samples.push(format!(
                            "{} {:?}: {d}",
                            t["name"].as_str().unwrap_or("?"),
                            t["bytes"]
                        ));
                    }
                }
            }
        }
        Ok(res)
    }
}

/// Test files (`*.json`, `*.jsonl`, `*.jsonl.gz`, `*.json.gz`) in `dir`, sorted.
pub fn test_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            (n.ends_with(".jsonl.gz") || n.ends_with(".json.gz") || n.ends_with(".jsonl"))
                && n != "metadata.json"
        })
        .collect();
    v.sort();
    Ok(v)
}

/// Classify a failing test as a documented 80286 behaviour that a 386+ does not share.
/// Every reason here is explained in `translator/KNOWN_286_DIFFERENCES.md`.
/// `ours` is the first exception Vireo raised for the test, if any.
/// `si_di` are SI and DI right after that exception was delivered.
pub fn known_286_difference(
    t: &Value,
    ours: Option<u8>,
    si_di: (u16, u16),
) -> Option<&'static str> {
    let bytes: Vec<u8> = t["bytes"]
        .as_array()?
        .iter()
        .filter_map(|b| b.as_u64().map(|x| x as u8))
        .collect();
    let exc = t["exception"]["number"].as_u64().map(|v| v as u8);
    // Instruction bytes without the trailing HLT.
    let insn = &bytes[..bytes.len().saturating_sub(1)];
    let prefixes: Vec<u8> = insn
        .iter()
        .copied()
        .take_while(|b| matches!(b, 0x26 | 0x2E | 0x36 | 0x3E | 0xF0 | 0xF2 | 0xF3))
        .collect();
    let opcode = insn.get(prefixes.len()).copied().unwrap_or(0);
    if exc == Some(13) && insn.len() > 10 && ours.is_none() {
        return Some(LONG_INSN);
    }
    if exc != Some(6) && ours == Some(6) && prefixes.contains(&0xF0) {
        return Some(LOCK);
    }
    let modrm_reg = insn.get(prefixes.len() + 1).map(|m| (m >> 3) & 7);
    if exc == Some(6)
        && ours.is_none()
        && matches!(opcode, 0x8C | 0x8E)
        && matches!(modrm_reg, Some(4 | 5))
    {
        return Some(NO_FS_GS);
    }
    if exc == Some(13) && ours == Some(12) {
        return Some(SS_OVERRUN);
    }
    let r = &t["initial"]["regs"];
    let at_ffff = r["si"].as_u64() == Some(0xFFFF)
        || r["di"].as_u64() == Some(0xFFFF)
        || si_di.0 == 0xFFFF
        || si_di.1 == 0xFFFF;
    if at_ffff
        && matches!(ours, Some(12 | 13))
        && matches!(opcode, 0x6D | 0x6F | 0xA5 | 0xA7 | 0xAB | 0xAD | 0xAF)
    {
        return Some(STRING_WRAP);
    }
    None
}

pub const NO_FS_GS: &str = "286: there is no FS or GS, so MOV to/from segment register 4 or 5 (8C/8E) is #UD; a 386+ moves FS/GS";
pub const LONG_INSN: &str =
    "286: an instruction longer than 10 bytes raises #GP(13); a 386+ allows 15";
pub const LOCK: &str = "286: LOCK is accepted on any instruction; a 386+ raises #UD unless it is a lockable read-modify-write of memory";
pub const SS_OVERRUN: &str =
    "286: a segment-limit overrun on an SS-relative access raises #GP(13); a 386+ raises #SS(12)";
pub const STRING_WRAP: &str = "286: a word string access at offset FFFFh is carried out (wrapping to offset 0) and SI/DI advance, sometimes followed by #GP; a 386+ raises #GP/#SS before any change";
