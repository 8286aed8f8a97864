//! Runs SingleStepTests-format CPU tests against Vireo's translator.
//!
//! `cargo run --release --bin sst-runner -- DIR [-v]`: every `*.jsonl.gz` file in DIR is run;
//! the pass rate per opcode is printed, then the known 80286 differences by reason, and last a
//! line `N passed, M failed` (M includes the known differences). Exit status 1 if any failure
//! is not a documented 80286 difference.

use std::path::PathBuf;
use translator::conformance::{Runner, SuiteInfo, test_files};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut dir: Option<PathBuf> = None;
    let mut verbose = false;
    for a in args.by_ref() {
        if a == "-v" || a == "--verbose" {
            verbose = true;
        } else {
            dir = Some(PathBuf::from(a));
        }
    }
    let Some(dir) = dir else {
        anyhow::bail!("usage: sst-runner DIR [-v]");
    };
    let info = SuiteInfo::load(&dir);
    let mut runner = Runner::new();
    let (mut pass, mut fail) = (0usize, 0usize);
    let mut known: std::collections::BTreeMap<&'static str, usize> = Default::default();
    for f in test_files(&dir)? {
        let r = runner.run_file(&f, &info)?;
        let k: usize = r.known.values().sum();
        let total = r.pass + r.fail + k;
        let pct = if total > 0 {
            100.0 * r.pass as f64 / total as f64
        } else {
            100.0
        };
        println!(
            "{:<6} {:>5}/{:<5} {:6.2}%{}{}",
            r.key,
            r.pass,
            total,
            pct,
            if r.fail > 0 {
                format!("  FAIL {}", r.fail)
            } else {
                String::new()
            },
            if k > 0 {
                format!("  known-286 {k}")
            } else {
                String::new()
            }
        );
        if verbose {
            for s in &r.samples {
                println!("        {s}");
            }
        }
        for (reason, n) in r.known {
            *known.entry(reason).or_default() += n;
        }
        pass += r.pass;
        fail += r.fail;
    }
    if !known.is_empty() {
        println!(
            "known 80286 differences (counted as failures of the 286 oracle, see translator/KNOWN_286_DIFFERENCES.md):"
        );
        for (reason, n) in &known {
            println!("  {n:>6}  {reason}");
        }
    }
    let known_total: usize = known.values().sum();
    println!("{} passed, {} failed", pass, fail + known_total);
    // Documented 286 quirks are failures of the 286 oracle but not regressions: the exit
    // status (for CI) reports only unexplained failures.
    if fail > 0 {
        std::process::exit(1);
    }
    Ok(())
}
