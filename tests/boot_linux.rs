//! Debian's i386 kernel through `-kernel/-initrd/-append` (fw_cfg and SeaBIOS's linuxboot
//! option ROM) to the busybox shell on ttyS0.
//!
//! Slow on the tier-0 CPU (the XZ decompressor alone is billions of instructions), so it is
//! ignored by default: `cargo test --release --test boot_linux -- --ignored --nocapture`.
//! Needs `tests/guests/fetch.sh linux` (run as root the first time: it downloads Debian's
//! linux-image-*-686 and busybox-static for i386).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fetch(what: &str) -> Vec<PathBuf> {
    let script = root().join("tests/guests/fetch.sh");
    let out = Command::new(&script)
        .arg(what)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} {what} failed (run it by hand, as root if packages are missing):\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .collect()
}

fn wait_for(output: &Mutex<Vec<u8>>, what: &str, limit: Duration, start: Instant) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let text = String::from_utf8_lossy(&output.lock().unwrap()).into_owned();
        if text.contains(what) {
            println!("{what:?} after {:?}", start.elapsed());
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
#[ignore = "slow on the tier-0 CPU: minutes; run with --ignored"]
fn debian_i386_kernel_boots_to_a_busybox_shell() {
    fetch("seabios");
    let paths = fetch("linux");
    let (kernel, initrd) = (&paths[0], &paths[1]);
    let limit = Duration::from_secs(
        std::env::var("VIREO_LINUX_BOOT_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(900),
    );
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vireo"))
        .args(["run", "-m", "256", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1"])
        .env("RUST_LOG", "vireo=info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start vireo");
    let output = Arc::new(Mutex::new(Vec::new()));
    let mut stdout = child.stdout.take().unwrap();
    let sink = output.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let shown = || String::from_utf8_lossy(&output.lock().unwrap()).into_owned();

    if !wait_for(&output, "VIREO-READY", limit, start) {
        let _ = child.kill();
        panic!("no ready marker within {limit:?}; console:\n{}", shown());
    }
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"uname -m; echo answer=$((6*7))\n")
        .unwrap();
    assert!(
        wait_for(&output, "answer=42", Duration::from_secs(120), start),
        "{}",
        shown()
    );
    assert!(shown().contains("i686"), "{}", shown());
    stdin.write_all(b"reboot -f\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("reboot -f did not end the run; console:\n{}", shown());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
}
