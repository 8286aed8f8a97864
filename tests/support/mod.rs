//! What the boot tests of the direct routes share (`multiboot.rs`, `boot_linux_direct.rs`):
//! the guest fetch script and a `vireo run` child whose console is captured.

#![allow(dead_code)] // each test crate uses part of it

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A scratch directory under target/guests/out.
pub fn out_dir() -> PathBuf {
    let dir = root().join("target/guests/out");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Run `tests/guests/fetch.sh what` and return the paths it printed.
pub fn fetch(what: &str) -> Vec<PathBuf> {
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

/// `vireo run` with COM1 on a pipe: what the guest prints accumulates in `output`.
pub struct Guest {
    child: Child,
    stdin: Option<ChildStdin>,
    output: Arc<Mutex<Vec<u8>>>,
    pub start: Instant,
}

impl Guest {
    pub fn start(args: &[&std::ffi::OsStr]) -> Guest {
        let start = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_vireo"))
            .arg("run")
            .args(args)
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
        let stdin = child.stdin.take();
        Guest {
            child,
            stdin,
            output,
            start,
        }
    }

    pub fn console(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Wait until the console shows `what`; returns the time since start.
    pub fn wait_for(&self, what: &str, limit: Duration) -> Option<Duration> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.console().contains(what) {
                return Some(self.start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
