//! SingleStepTests 80286 real-mode developer slice: every test must pass, or fail only for a
//! documented 80286 quirk (translator/KNOWN_286_DIFFERENCES.md).
//!
//! The data is found at `$VIREO_CONFORMANCE_DIR/80286_real_mode/dev_first500_nocycles`, or in
//! a `shared/conformance` directory above this crate. Missing data fails the test unless
//! `VIREO_SKIP_CONFORMANCE=1`.

use std::path::PathBuf;
use translator::JitMode;
use translator::conformance::{Runner, SuiteInfo, test_files};

fn suite_dir() -> Option<PathBuf> {
    let rel = "80286_real_mode/dev_first500_nocycles";
    if let Ok(d) = std::env::var("VIREO_CONFORMANCE_DIR") {
        return Some(PathBuf::from(d).join(rel));
    }
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .map(|a| a.join("shared/conformance").join(rel))
        .find(|p| p.is_dir())
}

#[test]
fn sst_80286_real_mode_developer_slice() {
    developer_slice(JitMode::Off);
}

/// The same suite with every block compiled by the JIT: tier 1 must give the same results.
#[test]
fn sst_80286_real_mode_developer_slice_jit_forced() {
    developer_slice(JitMode::Always);
}

fn developer_slice(mode: JitMode) {
    let Some(dir) = suite_dir() else {
        if std::env::var("VIREO_SKIP_CONFORMANCE").as_deref() == Ok("1") {
            eprintln!("conformance data not found; skipped on request");
            return;
        }
        panic!("SingleStepTests data not found (set VIREO_CONFORMANCE_DIR)");
    };
    let info = SuiteInfo::load(&dir);
    let mut runner = Runner::new();
    runner.cpu.jit.mode = mode;
    let mut pass = 0;
    let mut known = 0;
    let mut failures = Vec::new();
    let files = test_files(&dir).expect("read suite directory");
    assert!(
        files.len() >= 300,
        "expected the 325 opcode files, found {}",
        files.len()
    );
    for f in files {
        let r = runner.run_file(&f, &info).expect("read test file");
        pass += r.pass;
        known += r.known.values().sum::<usize>();
        if r.fail > 0 {
            failures.push(format!(
                "{}: {} failed, e.g. {:?}",
                r.key, r.fail, r.samples
            ));
        }
    }
    eprintln!(
        "{pass} passed, {known} known 80286 differences, {} files with failures",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "unexplained failures:\n{}",
        failures.join("\n")
    );
    assert!(pass >= 159_000, "only {pass} tests passed");
}
