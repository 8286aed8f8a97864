//! vbench (tests/guests/bench/vbench.c) inside Debian's i386 kernel: the guest's checksum must
//! equal the one the same static i386 binary computes on the host CPU, so any instruction the
//! emulated CPU gets wrong on the way (arithmetic, flags, string ops, libc's copy routines,
//! indirect jumps) shows up as a different checksum. Needs `tests/guests/fetch.sh seabios
//! linux` (it builds vbench with `gcc -m32 -static`; as root the first time); the test runs it.

mod support;

use std::process::Command;
use support::{Guest, boot_limit, fetch, field};

/// Rounds of the benchmark: vbench's default, ~50 ms natively, a few seconds under tier 0.
const ROUNDS: u32 = 200;

/// The `VBENCH …` line vbench printed when the host ran it.
fn native_run(vbench: &std::path::Path) -> String {
    let out = Command::new(vbench)
        .arg(ROUNDS.to_string())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} on the host: {e}", vbench.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "native vbench failed: {stdout}");
    stdout
        .lines()
        .find(|l| l.starts_with("VBENCH "))
        .unwrap_or_else(|| panic!("no VBENCH line from the native run: {stdout}"))
        .to_string()
}

#[test]
fn vbench_checksum_in_the_guest_equals_the_native_run() {
    fetch("seabios");
    let paths = fetch("linux");
    let (kernel, initrd, vbench) = (&paths[0], &paths[1], &paths[2]);
    let native = native_run(vbench);
    assert_eq!(field(&native, "selftest"), Some("ok"), "{native}");

    let append = format!("console=ttyS0 panic=-1 vbench={ROUNDS}");
    let mut guest = Guest::start(
        ["run", "-m", "256", "-nographic", "-no-reboot", "-kernel"]
            .iter()
            .map(std::ffi::OsStr::new)
            .chain([kernel.as_os_str(), "-initrd".as_ref(), initrd.as_os_str()])
            .chain(["-append".as_ref(), append.as_ref()]),
    );
    guest.expect("VIREO-READY", boot_limit());
    // The shell starts once vbench has ended, however it ended (a #UD shows up as SIGILL).
    guest.expect("built-in shell", boot_limit());
    let console = guest.console();
    let line = guest
        .line_starting("VBENCH ")
        .unwrap_or_else(|| panic!("vbench printed no result; console:\n{console}"));
    println!("guest:  {line}\nnative: {native}");
    assert_eq!(field(&line, "size"), Some(ROUNDS.to_string().as_str()));
    assert_eq!(field(&line, "selftest"), Some("ok"), "{line}");
    assert_eq!(
        field(&line, "checksum"),
        field(&native, "checksum"),
        "the guest computed a different checksum than the host CPU"
    );
    let ms: f64 = field(&line, "time_ms")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no time_ms in {line:?}"));
    assert!(ms > 0.0, "{line}");
}
