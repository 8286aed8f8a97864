//! A raw disk image file: byte N of the disk is byte N of the file.
//!
//! I/O is positional (`pread`/`pwrite` through `FileExt`), so the file has no cursor to keep
//! consistent. The size is taken when the image is opened and never changes: a write past the
//! end is refused rather than growing the file, as a disk cannot grow. An image shorter than
//! its recorded size (truncated by someone else while in use) gives [`BlockError::ShortRead`].

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{BlockBackend, BlockError, check_range};

#[derive(Debug)]
pub struct RawFile {
    file: File,
    size: u64,
    read_only: bool,
    path: Option<PathBuf>,
}

impl RawFile {
    /// Open the image at `path`, read-write unless `read_only`.
    pub fn open(path: impl AsRef<Path>, read_only: bool) -> Result<RawFile, BlockError> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let mut raw = RawFile::from_file(file, read_only).map_err(|e| match e {
            BlockError::Io { source, .. } => BlockError::Open {
                path: path.to_path_buf(),
                source,
            },
            other => other,
        })?;
        raw.path = Some(path.to_path_buf());
        Ok(raw)
    }

    /// Wrap an already open file; `read_only` must be set if it was not opened for writing.
    pub fn from_file(file: File, read_only: bool) -> Result<RawFile, BlockError> {
        let size = file
            .metadata()
            .map_err(|source| BlockError::Io {
                op: "stat",
                offset: 0,
                len: 0,
                source,
            })?
            .len();
        Ok(RawFile {
            file,
            size,
            read_only,
            path: None,
        })
    }

    /// Where the image was opened from, when known.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

impl BlockBackend for RawFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        check_range(offset, buf.len(), self.size)?;
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            match self.file.read_at(&mut buf[done..], at) {
                Ok(0) => {
                    return Err(BlockError::ShortRead {
                        offset,
                        len: buf.len(),
                        done,
                    });
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(BlockError::Io {
                        op: "read",
                        offset: at,
                        len: buf.len() - done,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        check_range(offset, buf.len(), self.size)?;
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            match self.file.write_at(&buf[done..], at) {
                Ok(0) => {
                    return Err(BlockError::Io {
                        op: "write",
                        offset: at,
                        len: buf.len() - done,
                        source: ErrorKind::WriteZero.into(),
                    });
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(BlockError::Io {
                        op: "write",
                        offset: at,
                        len: buf.len() - done,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BlockError> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data().map_err(|source| BlockError::Io {
            op: "flush",
            offset: 0,
            len: 0,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::test_util::TempImage;

    #[test]
    fn reads_and_writes_in_place() {
        let data: Vec<u8> = (0..2048u32).map(|i| (i * 7) as u8).collect();
        let img = TempImage::with_data("raw-rw", &data);
        let mut raw = RawFile::open(img.path(), false).unwrap();
        assert_eq!(raw.size(), 2048);
        assert_eq!(raw.sectors(), 4);
        let mut sector = [0u8; 512];
        raw.read_sectors(2, &mut sector).unwrap();
        assert_eq!(&sector[..], &data[1024..1536]);
        raw.write_at(1000, &[0xAA; 30]).unwrap();
        raw.flush().unwrap();
        let now = img.contents();
        assert_eq!(&now[1000..1030], &[0xAA; 30]);
        assert_eq!(&now[..1000], &data[..1000]);
        assert_eq!(now.len(), 2048, "writes never grow the image");
    }

    #[test]
    fn past_the_end_is_an_error_not_a_panic() {
        let img = TempImage::new("raw-end", 1024);
        let mut raw = RawFile::open(img.path(), false).unwrap();
        let mut buf = [0u8; 512];
        assert!(matches!(
            raw.read_sectors(2, &mut buf),
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(matches!(
            raw.write_at(1023, &[0, 0]),
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(raw.read_at(u64::MAX, &mut buf).is_err());
        assert!(raw.read_sectors(u64::MAX, &mut buf).is_err());
        assert_eq!(img.contents().len(), 1024);
    }

    #[test]
    fn read_only_refuses_writes() {
        let img = TempImage::new("raw-ro", 1024);
        let mut raw = RawFile::open(img.path(), true).unwrap();
        assert!(raw.is_read_only());
        assert!(matches!(raw.write_at(0, &[1]), Err(BlockError::ReadOnly)));
        raw.flush().unwrap();
        assert_eq!(img.contents(), vec![0u8; 1024]);
    }

    #[test]
    fn truncated_underneath_is_a_short_read() {
        let img = TempImage::new("raw-short", 4096);
        let mut raw = RawFile::open(img.path(), false).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(img.path())
            .unwrap()
            .set_len(1000)
            .unwrap();
        let mut buf = [0u8; 512];
        raw.read_at(0, &mut buf).unwrap();
        assert!(matches!(
            raw.read_sectors(1, &mut buf),
            Err(BlockError::ShortRead { done: 488, .. })
        ));
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = RawFile::open("/nonexistent/vireo/disk.img", false).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vireo/disk.img"));
    }
}
