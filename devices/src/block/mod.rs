//! Block backends: where a disk's sectors live on the host.
//!
//! A backend is a fixed-size array of bytes addressed by byte offset; disks see it through
//! [`BlockBackend`], whose sector helpers do the 512-byte arithmetic. Two backends exist:
//!
//! - [`raw::RawFile`]: a raw image file, read and written in place with positional I/O.
//! - [`overlay::CowOverlay`]: copy-on-write over any other backend (QEMU's `snapshot=on`):
//!   writes land in a private overlay, reads see them, and the base never changes.
//!
//! Every failure is a [`BlockError`]: an access past the end, a write to a read-only image,
//! an image that shrank under us, a host I/O error. Devices turn these into drive errors the
//! guest sees (an aborted command, a CHECK CONDITION); nothing here panics on a guest-chosen
//! offset or length.

pub mod overlay;
pub mod raw;

use std::io;
use std::path::PathBuf;

use thiserror::Error;

pub use overlay::CowOverlay;
pub use raw::RawFile;

/// The sector size of the ATA command set, and the unit of the dirty-sector bitmap.
pub const SECTOR_SIZE: u64 = 512;

#[derive(Debug, Error)]
pub enum BlockError {
    #[error("opening {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{len} byte(s) at {offset:#x} reach beyond the end of the {size}-byte image")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("the image is read-only")]
    ReadOnly,
    #[error("the image ended early: {done} of {len} byte(s) read at {offset:#x}")]
    ShortRead {
        offset: u64,
        len: usize,
        done: usize,
    },
    #[error("{op} of {len} byte(s) at {offset:#x}: {source}")]
    Io {
        op: &'static str,
        offset: u64,
        len: usize,
        #[source]
        source: io::Error,
    },
    #[error("creating the copy-on-write overlay: {0}")]
    Overlay(#[source] io::Error),
}

/// A disk image as a device sees it.
///
/// Offsets and lengths come from the guest (through a device's arithmetic), so every method
/// checks them against [`BlockBackend::size`] and fails rather than panics or grows the image.
pub trait BlockBackend: Send {
    /// The image size in bytes; fixed for the backend's life.
    fn size(&self) -> u64;

    /// Whether writes are refused with [`BlockError::ReadOnly`].
    fn is_read_only(&self) -> bool;

    /// Fill `buf` from `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError>;

    /// Write all of `buf` at `offset`.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), BlockError>;

    /// Make completed writes durable (the guest's FLUSH CACHE).
    fn flush(&mut self) -> Result<(), BlockError>;

    /// Whole 512-byte sectors in the image (a trailing partial sector is not addressable).
    fn sectors(&self) -> u64 {
        self.size() / SECTOR_SIZE
    }

    /// Read whole sectors starting at `sector`; `buf.len()` should be a multiple of 512.
    fn read_sectors(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let offset = sector_offset(sector, buf.len(), self.size())?;
        self.read_at(offset, buf)
    }

    /// Write whole sectors starting at `sector`.
    fn write_sectors(&mut self, sector: u64, buf: &[u8]) -> Result<(), BlockError> {
        let offset = sector_offset(sector, buf.len(), self.size())?;
        self.write_at(offset, buf)
    }
}

/// The byte offset of `sector`, or `OutOfRange` when it does not fit in 64 bits.
fn sector_offset(sector: u64, len: usize, size: u64) -> Result<u64, BlockError> {
    sector
        .checked_mul(SECTOR_SIZE)
        .ok_or(BlockError::OutOfRange {
            offset: u64::MAX,
            len: len as u64,
            size,
        })
}

/// `Ok` when `offset..offset+len` lies within an image of `size` bytes.
pub fn check_range(offset: u64, len: usize, size: u64) -> Result<(), BlockError> {
    let len = len as u64;
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(BlockError::OutOfRange { offset, len, size }),
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A file in the temporary directory, removed when dropped.
    pub struct TempImage {
        path: PathBuf,
    }

    impl TempImage {
        /// A new image of `size` bytes (sparse where the filesystem allows), zero-filled.
        pub fn new(tag: &str, size: u64) -> TempImage {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir()
                .join(format!("vireo-test-{tag}-{}-{n}.img", std::process::id()));
            let f = std::fs::File::create(&path).unwrap();
            f.set_len(size).unwrap();
            TempImage { path }
        }

        /// A new image holding `data`.
        pub fn with_data(tag: &str, data: &[u8]) -> TempImage {
            let img = TempImage::new(tag, 0);
            std::fs::write(&img.path, data).unwrap();
            img
        }

        pub fn path(&self) -> &Path {
            &self.path
        }

        pub fn contents(&self) -> Vec<u8> {
            std::fs::read(&self.path).unwrap()
        }
    }

    impl Drop for TempImage {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_checks_reject_overflow_and_the_end() {
        assert!(check_range(0, 512, 512).is_ok());
        assert!(check_range(512, 0, 512).is_ok());
        assert!(matches!(
            check_range(1, 512, 512),
            Err(BlockError::OutOfRange {
                offset: 1,
                len: 512,
                size: 512
            })
        ));
        assert!(check_range(u64::MAX, 2, u64::MAX).is_err());
        assert!(sector_offset(u64::MAX / 2, 512, 0).is_err());
    }
}
