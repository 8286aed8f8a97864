//! What the root package's boot tests share: the guests fetched by `tests/guests/fetch.sh`,
//! and a running `vireo` whose serial console the test reads and types into.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// How long a Linux boot may take before a test gives up: generous for a loaded CI machine
/// (a quiet one boots in well under a minute); `VIREO_LINUX_BOOT_SECS` overrides it.
pub fn boot_limit() -> Duration {
    Duration::from_secs(
        std::env::var("VIREO_LINUX_BOOT_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(600),
    )
}

/// A scratch directory for images and logs the tests make (target/guests/out).
pub fn out_dir() -> PathBuf {
    let dir = root().join("target/guests/out");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `tests/guests/fetch.sh WHAT` and returns the paths it printed, one per line.
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

/// A one-sector boot disk: `code` at 0x7C00, zero bytes after it, the 0x55AA signature.
pub fn boot_sector(name: &str, code: &[u8]) -> PathBuf {
    let dir = root().join("target/guests/out");
    std::fs::create_dir_all(&dir).unwrap();
    let mut sector = vec![0u8; 512];
    sector[..code.len()].copy_from_slice(code);
    sector[510] = 0x55;
    sector[511] = 0xAA;
    let path = dir.join(name);
    std::fs::write(&path, sector).unwrap();
    path
}

/// A `vireo` child whose stdout (the guest's serial console with `-nographic`) is collected
/// by a thread, so the test can wait for text without blocking on the pipe.
pub struct Guest {
    child: Child,
    stdin: Option<ChildStdin>,
    output: Arc<Mutex<Vec<u8>>>,
    pub started: Instant,
}

impl Guest {
    /// Starts `vireo` with `args` (the `run` subcommand and its options).
    pub fn start<I, S>(args: I) -> Guest
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_vireo"))
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
            started,
        }
    }

    /// Everything the guest has printed so far.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Waits until the console shows `text`; on timeout the guest is killed and the test
    /// fails with the console.
    pub fn expect(&mut self, text: &str, limit: Duration) -> Duration {
        self.expect_nth(text, 1, limit)
    }

    /// Waits until the console shows `text` for the `n`th time (a second boot, say).
    pub fn expect_nth(&mut self, text: &str, n: usize, limit: Duration) -> Duration {
        let deadline = Instant::now() + limit;
        loop {
            if self.console().matches(text).count() >= n {
                let at = self.started.elapsed();
                println!("{text:?} after {at:?}");
                return at;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "vireo ended ({status}) before {text:?}; console:\n{}",
                    self.console()
                );
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!("no {text:?} within {limit:?}; console:\n{}", self.console());
    }

    /// Types `text` on the serial console.
    pub fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for vireo to end; kills it and fails after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "vireo did not end within {limit:?}; console:\n{}",
                    self.console()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Guest {
    /// The first complete console line (without its line ending) that starts with `prefix`.
    pub fn line_starting(&self, prefix: &str) -> Option<String> {
        let console = self.console();
        let at = console.find(prefix)?;
        let line = &console[at..];
        let end = line.find('\n')?;
        Some(line[..end].trim_end_matches('\r').to_string())
    }
}

/// The value of `key=` in a line of space-separated `key=value` words.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}
