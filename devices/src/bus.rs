//! Port-I/O and MMIO buses: address ranges mapped to devices.
//!
//! A bus owns the map from address ranges to devices and adapts access widths, so devices only
//! ever see accesses of the sizes they declare. One access can span several devices (an `inw`
//! at the last port of one device reads the first port of the next), so the bus first splits an
//! access at range boundaries, then at the device's width limits.

use std::sync::{Arc, Mutex, RwLock};

use log::debug;
use thiserror::Error;

/// Where an access landed: the start of the range the device was registered at, and the
/// offset from it. Devices registered at several ranges (the 8259 at 0x20, 0xA0 and 0x4D0)
/// tell them apart by `base`; PCI BARs that move see a new `base` and the same `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusAddress {
    pub base: u64,
    pub offset: u64,
}

impl BusAddress {
    pub fn absolute(self) -> u64 {
        self.base.wrapping_add(self.offset)
    }
}

/// The access sizes a device implements, in bytes (powers of two from 1 to 8).
///
/// Wider accesses are split into `max`-sized little-endian pieces; narrower ones are widened
/// to an aligned `min`-sized access (a write becomes read-modify-write), so a device that has
/// read side effects must accept byte accesses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccessSizes {
    pub min: u8,
    pub max: u8,
}

impl AccessSizes {
    pub const ANY: AccessSizes = AccessSizes { min: 1, max: 8 };
    pub const BYTE: AccessSizes = AccessSizes { min: 1, max: 1 };

    pub const fn new(min: u8, max: u8) -> AccessSizes {
        assert!(min.is_power_of_two() && max.is_power_of_two() && min <= max && max <= 8);
        AccessSizes { min, max }
    }
}

/// A device as a bus sees it.
pub trait BusDevice: Send {
    /// Read `data.len()` bytes at `at`; `data` arrives filled with ones.
    fn read(&mut self, at: BusAddress, data: &mut [u8]);
    /// Write `data` at `at`.
    fn write(&mut self, at: BusAddress, data: &[u8]);
    /// The access sizes this device implements; the bus adapts all others.
    fn access_sizes(&self) -> AccessSizes {
        AccessSizes::ANY
    }
}

pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusKind {
    /// The x86 I/O port space: 64 KiB.
    Pio,
    /// The guest-physical address space.
    Mmio,
}

impl BusKind {
    /// One past the last address (the MMIO space is the whole 64-bit range).
    fn limit(self) -> u64 {
        match self {
            BusKind::Pio => 0x1_0000,
            BusKind::Mmio => u64::MAX,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BusError {
    #[error(
        "{new} at {new_start:#x}+{new_len:#x} overlaps {existing} at {existing_start:#x}+{existing_len:#x}"
    )]
    Overlap {
        new: String,
        new_start: u64,
        new_len: u64,
        existing: String,
        existing_start: u64,
        existing_len: u64,
    },
    #[error("{name}: range {start:#x}+{len:#x} is empty or outside the {kind:?} space")]
    BadRange {
        name: String,
        kind: BusKind,
        start: u64,
        len: u64,
    },
    #[error("no device is registered at {0:#x}")]
    NotRegistered(u64),
}

struct Entry {
    start: u64,
    len: u64,
    name: Arc<str>,
    sizes: AccessSizes,
    device: SharedDevice,
}

impl Entry {
    fn end(&self) -> u64 {
        self.start + (self.len - 1)
    }
}

/// A bus: a sorted, non-overlapping set of ranges. Lookups take a read lock only long enough to
/// clone the device handle, so a device may re-program the bus (a BAR write) while it runs.
pub struct Bus {
    kind: BusKind,
    entries: RwLock<Vec<Entry>>,
}

struct Target {
    start: u64,
    len: u64,
    sizes: AccessSizes,
    device: SharedDevice,
}

impl Bus {
    pub fn new(kind: BusKind) -> Bus {
        Bus {
            kind,
            entries: RwLock::new(Vec::new()),
        }
    }

    pub fn kind(&self) -> BusKind {
        self.kind
    }

    /// Map `device` at `start..start+len`. The error names both devices when ranges overlap.
    pub fn insert(
        &self,
        name: &str,
        start: u64,
        len: u64,
        device: SharedDevice,
    ) -> Result<(), BusError> {
        self.check_range(name, start, len)?;
        let sizes = device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .access_sizes();
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        Self::check_overlap(&entries, name, start, len, None)?;
        let at = entries.partition_point(|e| e.start < start);
        entries.insert(
            at,
            Entry {
                start,
                len,
                name: name.into(),
                sizes,
                device,
            },
        );
        Ok(())
    }

    /// Unmap the range that starts at `start`, returning its device.
    pub fn remove(&self, start: u64) -> Result<SharedDevice, BusError> {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let at = entries
            .iter()
            .position(|e| e.start == start)
            .ok_or(BusError::NotRegistered(start))?;
        Ok(entries.remove(at).device)
    }

    /// Move the range that starts at `old_start` to `new_start` (PCI BAR relocation). On error
    /// the range stays where it was.
    pub fn move_range(&self, old_start: u64, new_start: u64) -> Result<(), BusError> {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let at = entries
            .iter()
            .position(|e| e.start == old_start)
            .ok_or(BusError::NotRegistered(old_start))?;
        let (name, len) = (entries[at].name.clone(), entries[at].len);
        self.check_range(&name, new_start, len)?;
        Self::check_overlap(&entries, &name, new_start, len, Some(at))?;
        let mut entry = entries.remove(at);
        entry.start = new_start;
        let to = entries.partition_point(|e| e.start < new_start);
        entries.insert(to, entry);
        Ok(())
    }

    /// The registered ranges, in address order: (name, start, len).
    pub fn ranges(&self) -> Vec<(Arc<str>, u64, u64)> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .map(|e| (e.name.clone(), e.start, e.len))
            .collect()
    }

    fn check_range(&self, name: &str, start: u64, len: u64) -> Result<(), BusError> {
        let end = len
            .checked_sub(1)
            .and_then(|extent| start.checked_add(extent));
        match end {
            Some(end) if self.kind == BusKind::Mmio || end < self.kind.limit() => Ok(()),
            _ => Err(BusError::BadRange {
                name: name.to_string(),
                kind: self.kind,
                start,
                len,
            }),
        }
    }

    fn check_overlap(
        entries: &[Entry],
        name: &str,
        start: u64,
        len: u64,
        skip: Option<usize>,
    ) -> Result<(), BusError> {
        let end = start + (len - 1);
        match entries
            .iter()
            .enumerate()
            .find(|(i, e)| Some(*i) != skip && e.start <= end && start <= e.end())
        {
            Some((_, e)) => Err(BusError::Overlap {
                new: name.to_string(),
                new_start: start,
                new_len: len,
                existing: e.name.to_string(),
                existing_start: e.start,
                existing_len: e.len,
            }),
            None => Ok(()),
        }
    }

    /// The device covering `addr`, or the number of unmapped bytes before the next device.
    fn lookup(&self, addr: u64) -> Result<Target, u64> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let i = entries.partition_point(|e| e.start <= addr);
        if i > 0 {
            let e = &entries[i - 1];
            if addr <= e.end() {
                return Ok(Target {
                    start: e.start,
                    len: e.len,
                    sizes: e.sizes,
                    device: e.device.clone(),
                });
            }
        }
        Err(entries.get(i).map_or(u64::MAX, |next| next.start - addr))
    }

    /// Read `data.len()` bytes (1 to 8) at `addr`. Unmapped bytes read as ones.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        data.fill(0xff);
        let mut done = 0;
        while done < data.len() {
            let a = addr.wrapping_add(done as u64);
            let rest = data.len() - done;
            match self.lookup(a) {
                Ok(t) => {
                    let n = rest.min(span(a, t.start, t.len));
                    let mut dev = t.device.lock().unwrap_or_else(|e| e.into_inner());
                    read_adapted(
                        &mut *dev,
                        t.sizes,
                        t.start,
                        a - t.start,
                        &mut data[done..done + n],
                    );
                    done += n;
                }
                Err(gap) => {
                    let n = rest.min(usize::try_from(gap).unwrap_or(usize::MAX));
                    debug!("{:?} read of {n} unmapped byte(s) at {a:#x}", self.kind);
                    done += n;
                }
            }
        }
    }

    /// Write `data` (1 to 8 bytes) at `addr`. Unmapped bytes are dropped.
    pub fn write(&self, addr: u64, data: &[u8]) {
        let mut done = 0;
        while done < data.len() {
            let a = addr.wrapping_add(done as u64);
            let rest = data.len() - done;
            match self.lookup(a) {
                Ok(t) => {
                    let n = rest.min(span(a, t.start, t.len));
                    let mut dev = t.device.lock().unwrap_or_else(|e| e.into_inner());
                    write_adapted(
                        &mut *dev,
                        t.sizes,
                        t.start,
                        a - t.start,
                        &data[done..done + n],
                    );
                    done += n;
                }
                Err(gap) => {
                    let n = rest.min(usize::try_from(gap).unwrap_or(usize::MAX));
                    debug!(
                        "{:?} write of {n} unmapped byte(s) at {a:#x} dropped",
                        self.kind
                    );
                    done += n;
                }
            }
        }
    }

    /// Read a little-endian value of `size` bytes (1 to 8).
    pub fn read_value(&self, addr: u64, size: usize) -> u64 {
        let size = size.clamp(1, 8);
        let mut buf = [0u8; 8];
        self.read(addr, &mut buf[..size]);
        u64::from_le_bytes(buf)
    }

    /// Write the low `size` bytes (1 to 8) of `value`, little-endian.
    pub fn write_value(&self, addr: u64, size: usize, value: u64) {
        let size = size.clamp(1, 8);
        self.write(addr, &value.to_le_bytes()[..size]);
    }
}

/// How many bytes from `addr` stay inside the range `start..start+len`.
fn span(addr: u64, start: u64, len: u64) -> usize {
    usize::try_from(len - (addr - start)).unwrap_or(usize::MAX)
}

/// The largest access size the device takes that fits `len` bytes.
fn piece(sizes: AccessSizes, len: usize) -> usize {
    let mut size = usize::from(sizes.max);
    while size > len {
        size /= 2;
    }
    size
}

fn read_adapted(
    dev: &mut dyn BusDevice,
    sizes: AccessSizes,
    base: u64,
    offset: u64,
    data: &mut [u8],
) {
    let mut done = 0;
    while done < data.len() {
        let off = offset + done as u64;
        let size = piece(sizes, data.len() - done);
        if size >= usize::from(sizes.min) {
            let chunk = &mut data[done..done + size];
            dev.read(BusAddress { base, offset: off }, chunk);
            done += size;
        } else {
            // Narrower than the device takes: read the aligned unit that holds these bytes.
            let min = usize::from(sizes.min);
            let unit = off & !(min as u64 - 1);
            let skip = (off - unit) as usize;
            let take = (min - skip).min(data.len() - done);
            let mut buf = [0xffu8; 8];
            dev.read(BusAddress { base, offset: unit }, &mut buf[..min]);
            data[done..done + take].copy_from_slice(&buf[skip..skip + take]);
            done += take;
        }
    }
}

fn write_adapted(dev: &mut dyn BusDevice, sizes: AccessSizes, base: u64, offset: u64, data: &[u8]) {
    let mut done = 0;
    while done < data.len() {
        let off = offset + done as u64;
        let size = piece(sizes, data.len() - done);
        if size >= usize::from(sizes.min) {
            dev.write(BusAddress { base, offset: off }, &data[done..done + size]);
            done += size;
        } else {
            let min = usize::from(sizes.min);
            let unit = off & !(min as u64 - 1);
            let skip = (off - unit) as usize;
            let take = (min - skip).min(data.len() - done);
            let mut buf = [0xffu8; 8];
            dev.read(BusAddress { base, offset: unit }, &mut buf[..min]);
            buf[skip..skip + take].copy_from_slice(&data[done..done + take]);
            dev.write(BusAddress { base, offset: unit }, &buf[..min]);
            done += take;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every access it sees and answers reads with `address + byte index` so split
    /// and merged accesses can be checked byte by byte.
    struct Probe {
        sizes: AccessSizes,
        log: Vec<(char, u64, u64, usize)>,
        mem: [u8; 16],
    }

    impl Probe {
        fn shared(sizes: AccessSizes) -> Arc<Mutex<Probe>> {
            let mut mem = [0u8; 16];
            for (i, b) in mem.iter_mut().enumerate() {
                *b = 0xa0 + i as u8;
            }
            Arc::new(Mutex::new(Probe {
                sizes,
                log: Vec::new(),
                mem,
            }))
        }
    }

    impl BusDevice for Probe {
        fn read(&mut self, at: BusAddress, data: &mut [u8]) {
            assert!(data.len() >= self.sizes.min.into() && data.len() <= self.sizes.max.into());
            self.log.push(('r', at.base, at.offset, data.len()));
            for (i, b) in data.iter_mut().enumerate() {
                *b = self.mem[(at.offset as usize + i) % 16];
            }
        }
        fn write(&mut self, at: BusAddress, data: &[u8]) {
            assert!(data.len() >= self.sizes.min.into() && data.len() <= self.sizes.max.into());
            self.log.push(('w', at.base, at.offset, data.len()));
            for (i, b) in data.iter().enumerate() {
                self.mem[(at.offset as usize + i) % 16] = *b;
            }
        }
        fn access_sizes(&self) -> AccessSizes {
            self.sizes
        }
    }

    #[test]
    fn overlap_error_names_both_devices() {
        let bus = Bus::new(BusKind::Pio);
        bus.insert("com1", 0x3f8, 8, Probe::shared(AccessSizes::BYTE))
            .unwrap();
        let err = bus
            .insert("rogue", 0x3fc, 8, Probe::shared(AccessSizes::BYTE))
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("rogue") && text.contains("com1"), "{text}");
        // Adjacent ranges are fine.
        bus.insert("next", 0x400, 1, Probe::shared(AccessSizes::BYTE))
            .unwrap();
        bus.insert("prev", 0x3f0, 8, Probe::shared(AccessSizes::BYTE))
            .unwrap();
    }

    #[test]
    fn bad_ranges_are_refused() {
        let pio = Bus::new(BusKind::Pio);
        assert!(
            pio.insert("empty", 0x10, 0, Probe::shared(AccessSizes::ANY))
                .is_err()
        );
        assert!(
            pio.insert("beyond", 0xfffe, 4, Probe::shared(AccessSizes::ANY))
                .is_err()
        );
        pio.insert("last", 0xfffc, 4, Probe::shared(AccessSizes::ANY))
            .unwrap();
        let mmio = Bus::new(BusKind::Mmio);
        assert!(
            mmio.insert("wrap", u64::MAX - 1, 4, Probe::shared(AccessSizes::ANY))
                .is_err()
        );
        mmio.insert("top", u64::MAX - 3, 4, Probe::shared(AccessSizes::ANY))
            .unwrap();
        assert_eq!(mmio.read_value(u64::MAX - 3, 4), 0xa3a2_a1a0);
    }

    #[test]
    fn unmapped_reads_all_ones_and_writes_are_dropped() {
        let bus = Bus::new(BusKind::Mmio);
        assert_eq!(bus.read_value(0x1000, 8), u64::MAX);
        bus.write_value(0x1000, 4, 0);
        let dev = Probe::shared(AccessSizes::ANY);
        bus.insert("dev", 0x1002, 2, dev.clone()).unwrap();
        // Two unmapped bytes, the device's two, four unmapped bytes.
        assert_eq!(bus.read_value(0x1000, 8), 0xffff_ffff_a1a0_ffff);
        assert_eq!(dev.lock().unwrap().log, vec![('r', 0x1002, 0, 2)]);
    }

    #[test]
    fn wide_accesses_are_split_to_the_device_maximum() {
        let bus = Bus::new(BusKind::Pio);
        let dev = Probe::shared(AccessSizes::BYTE);
        bus.insert("uart", 0x3f8, 8, dev.clone()).unwrap();
        assert_eq!(bus.read_value(0x3f8, 4), 0xa3a2_a1a0);
        bus.write_value(0x3fa, 2, 0x1234);
        let log = dev.lock().unwrap().log.clone();
        assert_eq!(
            log,
            vec![
                ('r', 0x3f8, 0, 1),
                ('r', 0x3f8, 1, 1),
                ('r', 0x3f8, 2, 1),
                ('r', 0x3f8, 3, 1),
                ('w', 0x3f8, 2, 1),
                ('w', 0x3f8, 3, 1),
            ]
        );
        assert_eq!(bus.read_value(0x3fa, 2), 0x1234);
    }

    #[test]
    fn narrow_accesses_are_widened_with_read_modify_write() {
        let bus = Bus::new(BusKind::Mmio);
        let dev = Probe::shared(AccessSizes::new(4, 4));
        bus.insert("regs", 0x8000, 16, dev.clone()).unwrap();
        assert_eq!(bus.read_value(0x8005, 1), 0xa5);
        bus.write_value(0x8006, 2, 0xbeef);
        assert_eq!(bus.read_value(0x8004, 4), 0xbeef_a5a4);
        // Eight bytes: two dword accesses.
        assert_eq!(bus.read_value(0x8008, 8), 0xafae_adac_abaa_a9a8);
        let log = dev.lock().unwrap().log.clone();
        assert_eq!(log[0], ('r', 0x8000, 4, 4));
        assert_eq!(&log[1..3], &[('r', 0x8000, 4, 4), ('w', 0x8000, 4, 4)]);
        assert_eq!(&log[4..], &[('r', 0x8000, 8, 4), ('r', 0x8000, 12, 4)]);
    }

    #[test]
    fn an_access_spanning_two_devices_reaches_both() {
        let bus = Bus::new(BusKind::Pio);
        let a = Probe::shared(AccessSizes::ANY);
        let b = Probe::shared(AccessSizes::ANY);
        bus.insert("a", 0x100, 2, a.clone()).unwrap();
        bus.insert("b", 0x102, 2, b.clone()).unwrap();
        assert_eq!(bus.read_value(0x101, 2), 0xa0a1);
        assert_eq!(a.lock().unwrap().log, vec![('r', 0x100, 1, 1)]);
        assert_eq!(b.lock().unwrap().log, vec![('r', 0x102, 0, 1)]);
    }

    #[test]
    fn odd_lengths_split_into_supported_sizes() {
        let bus = Bus::new(BusKind::Mmio);
        let dev = Probe::shared(AccessSizes::new(1, 4));
        bus.insert("dev", 0, 16, dev.clone()).unwrap();
        let mut seven = [0u8; 7];
        bus.read(0, &mut seven);
        assert_eq!(seven, [0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6]);
        let sizes: Vec<usize> = dev.lock().unwrap().log.iter().map(|e| e.3).collect();
        assert_eq!(sizes, vec![4, 2, 1]);
    }

    #[test]
    fn ranges_move_and_report_where_they_are() {
        let bus = Bus::new(BusKind::Mmio);
        let dev = Probe::shared(AccessSizes::ANY);
        bus.insert("bar0", 0xfebf_0000, 16, dev.clone()).unwrap();
        bus.insert("other", 0xfec0_0000, 16, Probe::shared(AccessSizes::ANY))
            .unwrap();
        assert!(matches!(
            bus.move_range(0xfebf_0000, 0xfec0_0008),
            Err(BusError::Overlap { .. })
        ));
        assert_eq!(bus.read_value(0xfebf_0000, 1), 0xa0);
        bus.move_range(0xfebf_0000, 0xe000_0000).unwrap();
        assert_eq!(bus.read_value(0xfebf_0000, 1), 0xff);
        assert_eq!(bus.read_value(0xe000_0004, 1), 0xa4);
        assert_eq!(
            dev.lock().unwrap().log.last(),
            Some(&('r', 0xe000_0000, 4, 1))
        );
        let names: Vec<String> = bus.ranges().iter().map(|r| r.0.to_string()).collect();
        assert_eq!(names, vec!["bar0", "other"]);
        bus.remove(0xe000_0000).unwrap();
        assert_eq!(bus.read_value(0xe000_0004, 1), 0xff);
        assert_eq!(
            bus.remove(0xe000_0000).err(),
            Some(BusError::NotRegistered(0xe000_0000))
        );
    }

    /// A device that relocates itself while handling an access, as a PCI BAR write does.
    struct SelfMover {
        bus: Arc<Bus>,
    }

    impl BusDevice for SelfMover {
        fn read(&mut self, _at: BusAddress, data: &mut [u8]) {
            data.fill(0x42);
        }
        fn write(&mut self, at: BusAddress, data: &[u8]) {
            let to = u64::from(data[0]) << 8;
            self.bus.move_range(at.base, to).unwrap();
        }
    }

    #[test]
    fn a_device_may_reprogram_the_bus_during_an_access() {
        let bus = Arc::new(Bus::new(BusKind::Pio));
        let dev = Arc::new(Mutex::new(SelfMover { bus: bus.clone() }));
        bus.insert("mover", 0x100, 1, dev).unwrap();
        bus.write_value(0x100, 1, 0x20);
        assert_eq!(bus.read_value(0x2000, 1), 0x42);
        assert_eq!(bus.read_value(0x100, 1), 0xff);
    }
}
