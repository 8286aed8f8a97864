//! Copy-on-write over another backend: QEMU's `snapshot=on`.
//!
//! Writes go to a private overlay and a bitmap records which 512-byte sectors it holds; a read
//! takes each sector from the overlay where it was written and from the base elsewhere.
//! Nothing ever reaches the base, which may be opened read-only. The overlay is an anonymous
//! temporary file (created in the temporary directory and unlinked at once, so it disappears
//! with the process) or, for small disks and tests, memory.
//!
//! A write that covers only part of a sector the overlay does not hold yet first copies that
//! sector up from the base, so the overlay always holds whole sectors. The overlay can grow to
//! the size of the image and no further (writes past the end are refused like any backend's);
//! the bitmap is sparse, 512 bytes per 2 MiB of disk that was written.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use log::{debug, warn};

use super::{BlockBackend, BlockError, SECTOR_SIZE, check_range};

/// Sectors per bitmap chunk: 64 words of 64 bits, 2 MiB of disk.
const CHUNK_SECTORS: u64 = 4096;
const WORDS_PER_CHUNK: usize = (CHUNK_SECTORS / 64) as usize;

/// Which sectors the overlay holds.
#[derive(Default)]
struct DirtyMap {
    chunks: BTreeMap<u64, Box<[u64; WORDS_PER_CHUNK]>>,
    count: u64,
}

impl DirtyMap {
    fn get(&self, sector: u64) -> bool {
        let bit = sector % CHUNK_SECTORS;
        self.chunks
            .get(&(sector / CHUNK_SECTORS))
            .is_some_and(|words| words[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }

    fn set(&mut self, sector: u64) {
        let bit = sector % CHUNK_SECTORS;
        let words = self
            .chunks
            .entry(sector / CHUNK_SECTORS)
            .or_insert_with(|| Box::new([0; WORDS_PER_CHUNK]));
        let word = &mut words[(bit / 64) as usize];
        let mask = 1 << (bit % 64);
        if *word & mask == 0 {
            *word |= mask;
            self.count += 1;
        }
    }
}

enum Store {
    /// Sector number to its 512 bytes (the image's last sector may be shorter).
    Memory(HashMap<u64, Box<[u8]>>),
    /// An unlinked file laid out like the image.
    File(File),
}

pub struct CowOverlay {
    base: Box<dyn BlockBackend>,
    store: Store,
    dirty: DirtyMap,
    size: u64,
}

impl CowOverlay {
    /// An overlay in an anonymous file in the system's temporary directory.
    pub fn new(base: Box<dyn BlockBackend>) -> Result<CowOverlay, BlockError> {
        CowOverlay::in_dir(base, &std::env::temp_dir())
    }

    /// An overlay in an anonymous file in `dir`.
    pub fn in_dir(base: Box<dyn BlockBackend>, dir: &Path) -> Result<CowOverlay, BlockError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = dir.join(format!(
            "vireo-overlay-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(BlockError::Overlay)?;
        // Unlinked at once: the open handle keeps the data, and nothing is left behind however
        // the process ends.
        if let Err(e) = std::fs::remove_file(&path) {
            warn!("could not unlink overlay {}: {e}", path.display());
        }
        let size = base.size();
        file.set_len(size).map_err(BlockError::Overlay)?;
        debug!("copy-on-write overlay of {size} bytes in {}", dir.display());
        Ok(CowOverlay {
            base,
            store: Store::File(file),
            dirty: DirtyMap::default(),
            size,
        })
    }

    /// An overlay held in memory (up to the image's size of it).
    pub fn in_memory(base: Box<dyn BlockBackend>) -> CowOverlay {
        let size = base.size();
        CowOverlay {
            base,
            store: Store::Memory(HashMap::new()),
            dirty: DirtyMap::default(),
            size,
        }
    }

    /// How many sectors have been written since the overlay was created.
    pub fn dirty_sectors(&self) -> u64 {
        self.dirty.count
    }

    /// The byte range of `sector` inside the image.
    fn sector_span(&self, sector: u64) -> (u64, u64) {
        let start = sector * SECTOR_SIZE;
        (start, (start + SECTOR_SIZE).min(self.size))
    }

    fn store_read(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        match &self.store {
            Store::File(f) => f
                .read_exact_at(buf, offset)
                .map_err(|source| BlockError::Io {
                    op: "overlay read",
                    offset,
                    len: buf.len(),
                    source,
                }),
            Store::Memory(map) => {
                let mut done = 0;
                while done < buf.len() {
                    let at = offset + done as u64;
                    let sector = at / SECTOR_SIZE;
                    let within = (at % SECTOR_SIZE) as usize;
                    let n = (SECTOR_SIZE as usize - within).min(buf.len() - done);
                    let data = map.get(&sector).map(|d| d.get(within..within + n));
                    match data {
                        Some(Some(src)) => buf[done..done + n].copy_from_slice(src),
                        _ => buf[done..done + n].fill(0),
                    }
                    done += n;
                }
                Ok(())
            }
        }
    }

    fn store_write(&mut self, offset: u64, buf: &[u8]) -> Result<(), BlockError> {
        let size = self.size;
        match &mut self.store {
            Store::File(f) => f
                .write_all_at(buf, offset)
                .map_err(|source| BlockError::Io {
                    op: "overlay write",
                    offset,
                    len: buf.len(),
                    source,
                }),
            Store::Memory(map) => {
                let mut done = 0;
                while done < buf.len() {
                    let at = offset + done as u64;
                    let sector = at / SECTOR_SIZE;
                    let within = (at % SECTOR_SIZE) as usize;
                    let n = (SECTOR_SIZE as usize - within).min(buf.len() - done);
                    let len = (size - sector * SECTOR_SIZE).min(SECTOR_SIZE) as usize;
                    let data = map
                        .entry(sector)
                        .or_insert_with(|| vec![0u8; len].into_boxed_slice());
                    if let Some(dst) = data.get_mut(within..within + n) {
                        dst.copy_from_slice(&buf[done..done + n]);
                    }
                    done += n;
                }
                Ok(())
            }
        }
    }

    /// Bring `sector` into the overlay from the base, if it is not there yet.
    fn copy_up(&mut self, sector: u64) -> Result<(), BlockError> {
        if self.dirty.get(sector) {
            return Ok(());
        }
        let (start, end) = self.sector_span(sector);
        let mut data = [0u8; SECTOR_SIZE as usize];
        let data = &mut data[..(end - start) as usize];
        self.base.read_at(start, data)?;
        self.store_write(start, data)?;
        self.dirty.set(sector);
        Ok(())
    }
}

impl BlockBackend for CowOverlay {
    fn size(&self) -> u64 {
        self.size
    }

    /// The overlay takes writes even over a read-only base.
    fn is_read_only(&self) -> bool {
        false
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        check_range(offset, buf.len(), self.size)?;
        let end = offset + buf.len() as u64;
        let mut at = offset;
        // Runs of sectors with the same source are read in one piece.
        while at < end {
            let dirty = self.dirty.get(at / SECTOR_SIZE);
            let mut run_end = ((at / SECTOR_SIZE) + 1) * SECTOR_SIZE;
            while run_end < end && self.dirty.get(run_end / SECTOR_SIZE) == dirty {
                run_end += SECTOR_SIZE;
            }
            let run_end = run_end.min(end);
            let piece = &mut buf[(at - offset) as usize..(run_end - offset) as usize];
            if dirty {
                self.store_read(at, piece)?;
            } else {
                self.base.read_at(at, piece)?;
            }
            at = run_end;
        }
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), BlockError> {
        check_range(offset, buf.len(), self.size)?;
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset + buf.len() as u64;
        let first = offset / SECTOR_SIZE;
        let last = (end - 1) / SECTOR_SIZE;
        // Sectors the write covers only in part keep the base's bytes around it.
        if !offset.is_multiple_of(SECTOR_SIZE) {
            self.copy_up(first)?;
        }
        if end < self.sector_span(last).1 {
            self.copy_up(last)?;
        }
        self.store_write(offset, buf)?;
        for sector in first..=last {
            self.dirty.set(sector);
        }
        Ok(())
    }

    /// Nothing in the overlay outlives the process, so there is nothing to make durable.
    fn flush(&mut self) -> Result<(), BlockError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::RawFile;
    use crate::block::test_util::TempImage;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    fn check_overlay(mut ov: CowOverlay, img: &TempImage, original: &[u8]) {
        // A write straddling sectors 1-3, partial at both ends.
        ov.write_at(700, &[0xEE; 1000]).unwrap();
        // A whole-sector write.
        ov.write_sectors(6, &[0x11; 512]).unwrap();
        let mut expect = original.to_vec();
        expect[700..1700].fill(0xEE);
        expect[3072..3584].fill(0x11);
        let mut all = vec![0u8; original.len()];
        ov.read_at(0, &mut all).unwrap();
        assert_eq!(all, expect, "reads see the writes and the base around them");
        // Reads that start and end inside sectors, across dirty and clean runs.
        let mut piece = vec![0u8; 3000];
        ov.read_at(100, &mut piece).unwrap();
        assert_eq!(&piece[..], &expect[100..3100]);
        assert_eq!(ov.dirty_sectors(), 4, "sectors 1, 2, 3 and 6");
        ov.flush().unwrap();
        assert_eq!(img.contents(), original, "the base file is untouched");
        assert!(ov.write_at(original.len() as u64 - 1, &[0, 0]).is_err());
    }

    #[test]
    fn file_overlay_keeps_the_base_untouched() {
        let original = pattern(8 * 512);
        let img = TempImage::with_data("cow-file", &original);
        let base = RawFile::open(img.path(), true).unwrap();
        let ov = CowOverlay::new(Box::new(base)).unwrap();
        assert!(!ov.is_read_only());
        check_overlay(ov, &img, &original);
    }

    #[test]
    fn memory_overlay_keeps_the_base_untouched() {
        let original = pattern(8 * 512);
        let img = TempImage::with_data("cow-mem", &original);
        let base = RawFile::open(img.path(), false).unwrap();
        check_overlay(CowOverlay::in_memory(Box::new(base)), &img, &original);
    }

    #[test]
    fn partial_last_sector_is_copied_up_whole() {
        // 1000 bytes: sector 1 is 488 bytes long.
        let original = pattern(1000);
        let img = TempImage::with_data("cow-tail", &original);
        for mut ov in [
            CowOverlay::in_memory(Box::new(RawFile::open(img.path(), true).unwrap())),
            CowOverlay::new(Box::new(RawFile::open(img.path(), true).unwrap())).unwrap(),
        ] {
            ov.write_at(990, &[0x55; 5]).unwrap();
            let mut all = vec![0u8; 1000];
            ov.read_at(0, &mut all).unwrap();
            let mut expect = original.clone();
            expect[990..995].fill(0x55);
            assert_eq!(all, expect);
            ov.write_at(512, &[0x66; 488]).unwrap();
            ov.read_at(0, &mut all).unwrap();
            expect[512..].fill(0x66);
            assert_eq!(all, expect);
        }
        assert_eq!(img.contents(), original);
    }

    #[test]
    fn base_errors_pass_through() {
        let img = TempImage::new("cow-err", 4096);
        let base = RawFile::open(img.path(), false).unwrap();
        let mut ov = CowOverlay::in_memory(Box::new(base));
        // The base shrinks: reading a clean sector fails, a written one still reads.
        ov.write_sectors(0, &[9; 512]).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(img.path())
            .unwrap()
            .set_len(512)
            .unwrap();
        let mut buf = [0u8; 512];
        ov.read_sectors(0, &mut buf).unwrap();
        assert_eq!(buf, [9; 512]);
        assert!(matches!(
            ov.read_sectors(3, &mut buf),
            Err(BlockError::ShortRead { .. })
        ));
        // A partial write to a sector that cannot be copied up fails without marking it.
        assert!(ov.write_at(3 * 512 + 1, &[1]).is_err());
        assert_eq!(ov.dirty_sectors(), 1);
    }

    #[test]
    fn dirty_map_is_sparse_and_counts_once() {
        let mut m = DirtyMap::default();
        m.set(5);
        m.set(5);
        m.set(1 << 40);
        assert!(m.get(5) && m.get(1 << 40) && !m.get(6) && !m.get(4));
        assert_eq!(m.count, 2);
        assert_eq!(m.chunks.len(), 2);
    }
}
