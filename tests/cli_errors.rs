//! Bad input on the command line gets one clear line on stderr and a non-zero exit before any
//! guest code runs (issue: "a clear one-line error and a non-zero exit, before the guest
//! starts"). Needs Debian's seabios for the cases that get past the firmware check.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use support::fetch;

/// Runs `vireo run ARGS` and returns (exit code, stderr). A guest that started would print
/// on stdout or run until the timeout; `-display none` and no serial keep stdout empty.
fn vireo(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vireo"))
        .arg("run")
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .output()
        .expect("run vireo");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli_errors");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Asserts a failed start: exit status 1 (2 for clap's usage errors), one line on stderr that
/// names `mentions`, nothing from a guest.
fn assert_rejected(args: &[&str], mentions: &str) {
    let (code, stderr, stdout) = vireo(args);
    assert!(
        matches!(code, Some(1) | Some(2)),
        "{args:?}: exit {code:?}\n{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        !lines.is_empty() && (code == Some(2) || lines.len() == 1),
        "{args:?}: want one line, got:\n{stderr}"
    );
    assert!(
        lines[0].contains(mentions),
        "{args:?}: {:?} does not mention {mentions:?}",
        lines[0]
    );
    assert!(stdout.is_empty(), "{args:?}: the guest ran:\n{stdout}");
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn bad_command_lines_are_refused_in_one_line_before_the_guest_starts() {
    fetch("seabios");
    let missing = "/nonexistent/vireo-test-file";
    assert_rejected(&["-kernel", missing], missing);
    assert_rejected(&["-bios", missing], missing);
    assert_rejected(&["-drive", &format!("file={missing},format=raw")], missing);
    assert_rejected(&["-cdrom", missing], missing);

    let text = scratch("not-a-kernel", &b"echo this is not a bzImage\n".repeat(400));
    assert_rejected(&["-kernel", path(&text)], "bzImage");
    let tiny_bios = scratch("bios.bin", &[0u8; 1000]);
    assert_rejected(&["-bios", path(&tiny_bios)], "64 KiB");
    assert_rejected(
        &["-drive", &format!("file={},format=qcow2", path(&text))],
        "format=raw",
    );
    assert_rejected(
        &["-drive", &format!("file={},bogus=1", path(&text))],
        "bogus",
    );

    assert_rejected(&["-m", "1"], "-m 1");
    assert_rejected(&["-m", "100000"], "-m 100000");
    assert_rejected(&["-m", "lots"], "-m lots");
    assert_rejected(&["-smp", "4"], "-smp 4");
    assert_rejected(&["-display", "sdl"], "sdl");
    assert_rejected(&["-jit", "fast"], "-jit fast");
    assert_rejected(&["-append", "console=ttyS0"], "-kernel");
    assert_rejected(&["--frobnicate"], "--frobnicate");
}
