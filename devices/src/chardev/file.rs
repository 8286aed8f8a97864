//! Output to a file; no input.
//!
//! Bytes are written straight through (no user-space buffering), so the file always holds
//! everything the guest sent, even if the process is killed. A regular file never returns
//! `EAGAIN`, so there is no bounded buffer here; a write error (disk full) is logged once and
//! output is dropped from then on.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use mio::{Registry, Token};

use super::{CharBackend, CharSink, ChardevError};

struct Output {
    file: File,
    path: PathBuf,
    failed: bool,
}

/// A backend that appends device output to a file.
pub struct FileBackend {
    out: Arc<Mutex<Output>>,
}

impl FileBackend {
    /// Append to `path`, creating it if needed (earlier contents are kept).
    pub fn open_append(path: impl AsRef<Path>) -> Result<FileBackend, ChardevError> {
        Self::open_with(path.as_ref(), OpenOptions::new().create(true).append(true))
    }

    /// Create `path`, truncating earlier contents.
    pub fn create(path: impl AsRef<Path>) -> Result<FileBackend, ChardevError> {
        Self::open_with(
            path.as_ref(),
            OpenOptions::new().create(true).write(true).truncate(true),
        )
    }

    fn open_with(path: &Path, options: &OpenOptions) -> Result<FileBackend, ChardevError> {
        let file = options
            .open(path)
            .map_err(|source| ChardevError::OpenFile {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(FileBackend {
            out: Arc::new(Mutex::new(Output {
                file,
                path: path.to_path_buf(),
                failed: false,
            })),
        })
    }
}

struct FileSink {
    out: Arc<Mutex<Output>>,
}

impl CharSink for FileSink {
    fn write(&mut self, bytes: &[u8]) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if out.failed {
            return;
        }
        if let Err(e) = out.file.write_all(bytes) {
            log::warn!(
                "writing serial output to {}: {e}; further output is dropped",
                out.path.display()
            );
            out.failed = true;
        }
    }
}

impl CharBackend for FileBackend {
    fn sink(&self) -> Box<dyn CharSink> {
        Box::new(FileSink {
            out: self.out.clone(),
        })
    }

    fn register(&mut self, _registry: &Registry, _token: Token) -> io::Result<()> {
        Ok(())
    }

    fn handle_ready(&mut self) {}

    fn pump_input(&mut self, _deliver: &mut dyn FnMut(&[u8]) -> usize) -> usize {
        0
    }

    fn has_input(&self) -> bool {
        false
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh, empty directory for one test.
    pub(crate) fn scratch_dir(tag: &str) -> PathBuf {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vireo-chardev-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn output_lands_in_the_file_immediately_and_appends() {
        let dir = scratch_dir("file");
        let path = dir.join("serial.log");
        std::fs::write(&path, b"before\n").unwrap();
        let mut backend = FileBackend::open_append(&path).unwrap();
        let poll = mio::Poll::new().unwrap();
        backend.register(poll.registry(), Token(3)).unwrap();
        let mut sink = backend.sink();
        sink.write(b"hello ");
        for &b in b"world\n" {
            sink.write(&[b]);
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"before\nhello world\n");
        backend.handle_ready();
        assert!(!backend.has_input());
        assert_eq!(backend.pump_input(&mut |_| panic!("no input expected")), 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn create_truncates() {
        let dir = scratch_dir("file-trunc");
        let path = dir.join("serial.log");
        std::fs::write(&path, b"old contents").unwrap();
        let backend = FileBackend::create(&path).unwrap();
        backend.sink().write(b"new");
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn unopenable_path_is_a_typed_error() {
        let dir = scratch_dir("file-err");
        let err = FileBackend::open_append(dir.join("missing/sub/serial.log"))
            .err()
            .unwrap();
        assert!(matches!(err, ChardevError::OpenFile { .. }));
        let _ = std::fs::remove_dir_all(dir);
    }
}
