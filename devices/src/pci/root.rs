//! The PCI root: bus 0's functions, direct configuration access by address, BAR mapping onto
//! the port and MMIO buses, and INTx routing.
//!
//! [`PciRoot`] is a cheap handle (clone it for the 0xCF8 device, the Xen ioreq loop and the
//! board). Configuration mechanism #1 goes through [`super::config_io::PciConfigIo`]; Xen's
//! PCI_CONFIG ioreqs call [`PciRoot::config_read`] / [`PciRoot::config_write`] directly.
//!
//! **BARs.** After every config write the root asks the function which BARs it decodes now and
//! reconciles that with what it has put on the buses: a BAR whose address changed moves
//! (`Bus::move_range`), one whose decode was turned off is removed, one turned on is inserted.
//! A real chipset decodes whatever the guest programs, even on top of another device; the
//! buses here cannot hold overlapping ranges, so a BAR programmed over something else (or to an
//! address the bus refuses) is left unmapped, with a warning the first time, and retried after
//! later config writes (firmware sizing BARs with decode on briefly places them at
//! 0xFFFFxxxx, over the BIOS ROM, then moves them to their final place).
//!
//! **INTx.** Each function gets a line from [`PciRoot::intx_line`]. The root masks it with the
//! function's INTx-disable bit, ORs the functions of a device sharing a pin, swizzles
//! (device + pin) onto PIRQA-D and ORs the pins on each PIRQ into the PIIX3's
//! [`PirqRouter`]; an optional [`IntxSink`] sees the per-(device, pin) levels for Xen. The
//! status register's interrupt bit reads the function's own line, disabled or not.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use log::{debug, warn};

use super::config_space::{
    self, BarRegion, CONFIG_SPACE_SIZE, HEADER_TYPE, HEADER_TYPE_MULTI_FUNCTION, NUM_REGIONS,
    ROM_BAR, STATUS,
};
use super::piix3::{NUM_PIRQS, PirqRouter};
use super::{BarMappingListener, Bdf, IntxPin, IntxSink, PciError, PciFunction};
use crate::bus::{AccessSizes, Bus, BusAddress, BusDevice, BusKind, SharedDevice};
use crate::irq::IrqLine;
use crate::snapshot::{Snapshot, SnapshotError, StateReader, StateWriter};

/// CONFIG_ADDRESS bits that hold state: enable, bus, device, function, register. Bits 30:24
/// and 1:0 are reserved and read as zero.
pub const CONFIG_ADDRESS_MASK: u32 = 0x80FF_FFFC;
pub const CONFIG_ADDRESS_ENABLE: u32 = 0x8000_0000;
/// The one reset control bit that is stored (System Reset: hard rather than soft).
pub const RESET_CONTROL_MASK: u8 = 0x02;

const NUM_DEVFNS: usize = 256;
const NUM_DEVICES: usize = 32;
/// Bound on one function's nested device-state blob when restoring.
const MAX_DEVICE_STATE: usize = 1 << 30;

/// The bus-0 functions and everything around them. See the module documentation.
#[derive(Clone)]
pub struct PciRoot {
    inner: Arc<Inner>,
}

struct Inner {
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    intx: Arc<IntxRouter>,
    state: Mutex<RootState>,
}

struct RootState {
    config_address: u32,
    reset_control: u8,
    slots: BTreeMap<u8, Slot>,
    listener: Option<Arc<dyn BarMappingListener>>,
}

struct Slot {
    function: Arc<Mutex<dyn PciFunction>>,
    name: String,
    sizes: [AccessSizes; NUM_REGIONS],
    bars: [BarState; NUM_REGIONS],
}

#[derive(Default)]
struct BarState {
    /// What is on the bus now.
    mapped: Option<BarRegion>,
    /// A region the bus refused (overlap), so the warning is logged once.
    refused: Option<BarRegion>,
    adapter: Option<SharedDevice>,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PciRoot {
    /// A root with no functions that maps BARs on `pio` and `mmio` and routes INTx into
    /// `pirq` (the PIIX3's router, also given to [`super::Piix3::new`]).
    pub fn new(pio: Arc<Bus>, mmio: Arc<Bus>, pirq: Arc<PirqRouter>) -> PciRoot {
        PciRoot {
            inner: Arc::new(Inner {
                pio,
                mmio,
                intx: Arc::new(IntxRouter::new(pirq)),
                state: Mutex::new(RootState {
                    config_address: 0,
                    reset_control: 0,
                    slots: BTreeMap::new(),
                    listener: None,
                }),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, RootState> {
        lock(&self.inner.state)
    }

    /// Register `function` at `bdf` (bus 0). Its current configuration becomes its power-on
    /// state, and its INTx pin is read from its interrupt pin register.
    pub fn add_function(
        &self,
        bdf: Bdf,
        function: Arc<Mutex<dyn PciFunction>>,
    ) -> Result<(), PciError> {
        if bdf.bus() != 0 {
            return Err(PciError::NoSuchBus(bdf.bus()));
        }
        let mut st = self.state();
        if st.slots.contains_key(&bdf.devfn()) {
            return Err(PciError::SlotInUse(bdf));
        }
        let (name, sizes, pin, disabled) = {
            let mut f = lock(&function);
            f.config_mut().capture_power_on();
            let sizes = std::array::from_fn(|i| f.bar_access_sizes(i));
            (
                f.name().to_string(),
                sizes,
                IntxPin::from_register(f.config().interrupt_pin()),
                intx_disabled(&*f),
            )
        };
        self.inner.intx.register(bdf.devfn(), pin, disabled);
        st.slots.insert(
            bdf.devfn(),
            Slot {
                function,
                name,
                sizes,
                bars: Default::default(),
            },
        );
        self.reconcile(&mut st, bdf.devfn());
        Ok(())
    }

    /// Register a function and keep a typed handle to it (to read the host bridge's PAM, say).
    pub fn add<F: PciFunction + 'static>(
        &self,
        bdf: Bdf,
        function: F,
    ) -> Result<Arc<Mutex<F>>, PciError> {
        let f = Arc::new(Mutex::new(function));
        self.add_function(bdf, f.clone())?;
        Ok(f)
    }

    pub fn function(&self, bdf: Bdf) -> Option<Arc<Mutex<dyn PciFunction>>> {
        if bdf.bus() != 0 {
            return None;
        }
        self.state()
            .slots
            .get(&bdf.devfn())
            .map(|s| s.function.clone())
    }

    /// The addresses of the registered functions, in order.
    pub fn functions(&self) -> Vec<Bdf> {
        self.state()
            .slots
            .keys()
            .map(|&devfn| Bdf::from_devfn(0, devfn))
            .collect()
    }

    /// The interrupt line for the function at `bdf` to drive (level-triggered, active high).
    /// It may be taken before the function is registered; its pin is the function's interrupt
    /// pin register.
    pub fn intx_line(&self, bdf: Bdf) -> Result<Arc<dyn IrqLine>, PciError> {
        if bdf.bus() != 0 {
            return Err(PciError::NoSuchBus(bdf.bus()));
        }
        Ok(Arc::new(IntxLine {
            router: self.inner.intx.clone(),
            devfn: bdf.devfn(),
        }))
    }

    /// Report per-(device, pin) INTx levels to `sink` (Xen); it is told the asserted ones now.
    pub fn set_intx_sink(&self, sink: Arc<dyn IntxSink>) {
        self.inner.intx.set_sink(sink);
    }

    /// Report BAR mappings to `listener`; it is told the current ones now.
    pub fn set_mapping_listener(&self, listener: Arc<dyn BarMappingListener>) {
        let mut st = self.state();
        for (&devfn, slot) in &st.slots {
            for region in slot.bars.iter().filter_map(|b| b.mapped) {
                listener.bar_mapped(Bdf::from_devfn(0, devfn), region);
            }
        }
        st.listener = Some(listener);
    }

    pub fn pirq_router(&self) -> Arc<PirqRouter> {
        self.inner.intx.pirq.clone()
    }

    /// The BAR regions of `bdf` currently on the buses.
    pub fn mapped_regions(&self, bdf: Bdf) -> Vec<BarRegion> {
        if bdf.bus() != 0 {
            return Vec::new();
        }
        self.state()
            .slots
            .get(&bdf.devfn())
            .map(|s| s.bars.iter().filter_map(|b| b.mapped).collect())
            .unwrap_or_default()
    }

    // ----- Configuration access -----

    /// Read `size` (1, 2 or 4) bytes at register `reg` of `bdf`, little-endian. Absent
    /// functions, other buses and registers past the 256-byte space read as all ones, as does
    /// an access of any other size.
    pub fn config_read(&self, bdf: Bdf, reg: u16, size: u8) -> u32 {
        let n = match size {
            1 | 2 | 4 => usize::from(size),
            _ => {
                debug!("{bdf}: config read of {size} bytes at {reg:#x} reads ones");
                return u32::MAX;
            }
        };
        let mut buf = [0u8; 4];
        self.config_read_bytes(bdf, usize::from(reg), &mut buf[..n]);
        u32::from_le_bytes(buf)
    }

    /// Write the low `size` (1, 2 or 4) bytes of `value` at register `reg` of `bdf`. Writes to
    /// absent functions, past the space, or of any other size are dropped.
    pub fn config_write(&self, bdf: Bdf, reg: u16, size: u8, value: u32) {
        let n = match size {
            1 | 2 | 4 => usize::from(size),
            _ => {
                debug!("{bdf}: config write of {size} bytes at {reg:#x} dropped");
                return;
            }
        };
        self.config_write_bytes(bdf, usize::from(reg), &value.to_le_bytes()[..n]);
    }

    /// Byte-level read; every byte not backed by a function's space reads 0xFF.
    pub fn config_read_bytes(&self, bdf: Bdf, reg: usize, data: &mut [u8]) {
        data.fill(0xFF);
        if bdf.bus() != 0 {
            return;
        }
        let st = self.state();
        let devfn = bdf.devfn();
        let Some(slot) = st.slots.get(&devfn) else {
            return;
        };
        let inside = CONFIG_SPACE_SIZE.saturating_sub(reg).min(data.len());
        if inside == 0 {
            return;
        }
        lock(&slot.function).read_config(reg, &mut data[..inside]);
        let other_functions =
            bdf.function() == 0 && st.slots.range(devfn + 1..=devfn | 7).next().is_some();
        let asserted = self.inner.intx.raw_level(devfn);
        for (i, b) in data[..inside].iter_mut().enumerate() {
            match reg + i {
                STATUS => {
                    let bit = config_space::status::INTERRUPT as u8;
                    *b = if asserted { *b | bit } else { *b & !bit };
                }
                HEADER_TYPE if other_functions => *b |= HEADER_TYPE_MULTI_FUNCTION,
                _ => {}
            }
        }
    }

    /// Byte-level write; bytes outside a function's space are dropped. BARs are remapped and
    /// the INTx-disable bit applied afterwards.
    pub fn config_write_bytes(&self, bdf: Bdf, reg: usize, data: &[u8]) {
        if bdf.bus() != 0 {
            debug!("{bdf}: no such bus, config write dropped");
            return;
        }
        let mut st = self.state();
        let devfn = bdf.devfn();
        let Some(slot) = st.slots.get(&devfn) else {
            debug!("{bdf}: no function, config write dropped");
            return;
        };
        let inside = CONFIG_SPACE_SIZE.saturating_sub(reg).min(data.len());
        if inside == 0 {
            return;
        }
        let disabled = {
            let mut f = lock(&slot.function);
            f.write_config(reg, &data[..inside]);
            intx_disabled(&*f)
        };
        self.inner.intx.set_disabled(devfn, disabled);
        self.reconcile(&mut st, devfn);
    }

    /// The CONFIG_ADDRESS latch (port 0xCF8).
    pub fn config_address(&self) -> u32 {
        self.state().config_address
    }

    /// Latch CONFIG_ADDRESS; the reserved bits are dropped.
    pub fn set_config_address(&self, value: u32) {
        self.state().config_address = value & CONFIG_ADDRESS_MASK;
    }

    /// The PIIX3 reset control register (port 0xCF9) as it reads.
    pub fn reset_control(&self) -> u8 {
        self.state().reset_control
    }

    /// Store the reset control register's System Reset bit; see [`super::config_io`].
    pub fn set_reset_control(&self, value: u8) {
        self.state().reset_control = value & RESET_CONTROL_MASK;
    }

    /// A PCI reset (the board's hard reset): every function resets, the latches clear, BARs
    /// leave the buses.
    pub fn reset(&self) {
        let mut st = self.state();
        st.config_address = 0;
        st.reset_control = 0;
        let devfns: Vec<u8> = st.slots.keys().copied().collect();
        for &devfn in &devfns {
            let disabled = {
                let mut f = lock(&st.slots[&devfn].function);
                f.reset();
                intx_disabled(&*f)
            };
            self.inner.intx.set_disabled(devfn, disabled);
        }
        for devfn in devfns {
            self.reconcile(&mut st, devfn);
        }
    }

    // ----- BAR mapping -----

    fn bus(&self, space: BusKind) -> &Bus {
        match space {
            BusKind::Pio => &self.inner.pio,
            BusKind::Mmio => &self.inner.mmio,
        }
    }

    /// Bring `devfn`'s mappings in line with what it decodes; if that freed bus space, retry
    /// the BARs other functions could not map.
    fn reconcile(&self, st: &mut RootState, devfn: u8) {
        if self.reconcile_slot(st, devfn) {
            let waiting: Vec<u8> = st
                .slots
                .iter()
                .filter(|&(&d, s)| d != devfn && s.bars.iter().any(|b| b.refused.is_some()))
                .map(|(&d, _)| d)
                .collect();
            for d in waiting {
                self.reconcile_slot(st, d);
            }
        }
    }

    /// Returns whether anything left or moved on a bus.
    fn reconcile_slot(&self, st: &mut RootState, devfn: u8) -> bool {
        let RootState {
            slots, listener, ..
        } = st;
        let Some(slot) = slots.get_mut(&devfn) else {
            return false;
        };
        let desired = lock(&slot.function).config().bar_regions();
        let bdf = Bdf::from_devfn(0, devfn);
        let mut freed = false;
        for (index, want) in desired.into_iter().enumerate() {
            freed |= self.apply_bar(bdf, slot, index, want, listener.as_deref());
        }
        freed
    }

    fn apply_bar(
        &self,
        bdf: Bdf,
        slot: &mut Slot,
        index: usize,
        want: Option<BarRegion>,
        listener: Option<&dyn BarMappingListener>,
    ) -> bool {
        if slot.bars[index].mapped == want {
            slot.bars[index].refused = None;
            return false;
        }
        let label = if index == ROM_BAR {
            format!("{bdf} {} ROM", slot.name)
        } else {
            format!("{bdf} {} BAR{index}", slot.name)
        };
        let bar = &mut slot.bars[index];
        let have = bar.mapped;
        if let (Some(h), Some(w)) = (have, want)
            && h.space == w.space
            && h.size == w.size
        {
            match self.bus(w.space).move_range(h.base, w.base) {
                Ok(()) => {
                    debug!("{label}: moved {:#x} -> {:#x}", h.base, w.base);
                    bar.mapped = Some(w);
                    bar.refused = None;
                    if let Some(l) = listener {
                        l.bar_unmapped(bdf, h);
                        l.bar_mapped(bdf, w);
                    }
                    return true;
                }
                Err(e) => self.refuse(&label, bar, w, &e.to_string()),
            }
        }
        if let Some(h) = have {
            bar.mapped = None;
            if let Err(e) = self.bus(h.space).remove(h.base) {
                warn!("{label}: unmapping {:#x}: {e}", h.base);
            }
            debug!("{label}: unmapped from {:#x}", h.base);
            if let Some(l) = listener {
                l.bar_unmapped(bdf, h);
            }
        }
        if let Some(w) = want {
            let device = match &bar.adapter {
                Some(d) => d.clone(),
                None => {
                    let d: SharedDevice = Arc::new(Mutex::new(BarDevice {
                        function: slot.function.clone(),
                        bar: index,
                        sizes: slot.sizes[index],
                    }));
                    bar.adapter = Some(d.clone());
                    d
                }
            };
            match self.bus(w.space).insert(&label, w.base, w.size, device) {
                Ok(()) => {
                    debug!("{label}: mapped at {:#x}+{:#x}", w.base, w.size);
                    bar.mapped = Some(w);
                    bar.refused = None;
                    if let Some(l) = listener {
                        l.bar_mapped(bdf, w);
                    }
                }
                Err(e) => self.refuse(&label, bar, w, &e.to_string()),
            }
        }
        have.is_some()
    }

    fn refuse(&self, label: &str, bar: &mut BarState, region: BarRegion, why: &str) {
        if bar.refused != Some(region) {
            warn!(
                "{label}: programmed at {:#x}+{:#x}, left unmapped: {why}",
                region.base, region.size
            );
        }
        bar.refused = Some(region);
    }
}

fn intx_disabled(f: &dyn PciFunction) -> bool {
    f.config().command() & config_space::command::INTX_DISABLE != 0
}

/// A BAR as the bus sees it: forwards accesses to the function with the BAR's index.
struct BarDevice {
    function: Arc<Mutex<dyn PciFunction>>,
    bar: usize,
    sizes: AccessSizes,
}

impl BusDevice for BarDevice {
    fn read(&mut self, at: BusAddress, data: &mut [u8]) {
        lock(&self.function).bar_read(self.bar, at.offset, data);
    }

    fn write(&mut self, at: BusAddress, data: &[u8]) {
        lock(&self.function).bar_write(self.bar, at.offset, data);
    }

    fn access_sizes(&self) -> AccessSizes {
        self.sizes
    }
}

// ----- INTx -----

struct IntxState {
    pin: [Option<IntxPin>; NUM_DEVFNS],
    /// What each function drives.
    raw: [bool; NUM_DEVFNS],
    disabled: [bool; NUM_DEVFNS],
    /// Per device and pin: the OR of its enabled functions on that pin.
    device_pins: [[bool; 4]; NUM_DEVICES],
    pirqs: [bool; NUM_PIRQS],
    sink: Option<Arc<dyn IntxSink>>,
}

/// The swizzle and the OR trees; outputs change only on edges. Outputs are driven with the
/// lock held so that levels computed in one order arrive in that order.
struct IntxRouter {
    state: Mutex<IntxState>,
    pirq: Arc<PirqRouter>,
}

const PINS: [IntxPin; 4] = [IntxPin::A, IntxPin::B, IntxPin::C, IntxPin::D];

impl IntxRouter {
    fn new(pirq: Arc<PirqRouter>) -> IntxRouter {
        IntxRouter {
            state: Mutex::new(IntxState {
                pin: [None; NUM_DEVFNS],
                raw: [false; NUM_DEVFNS],
                disabled: [false; NUM_DEVFNS],
                device_pins: [[false; 4]; NUM_DEVICES],
                pirqs: [false; NUM_PIRQS],
                sink: None,
            }),
            pirq,
        }
    }

    fn register(&self, devfn: u8, pin: Option<IntxPin>, disabled: bool) {
        let mut st = lock(&self.state);
        st.pin[usize::from(devfn)] = pin;
        st.disabled[usize::from(devfn)] = disabled;
        self.update(&mut st, devfn >> 3);
    }

    fn set_raw(&self, devfn: u8, level: bool) {
        let mut st = lock(&self.state);
        st.raw[usize::from(devfn)] = level;
        self.update(&mut st, devfn >> 3);
    }

    fn raw_level(&self, devfn: u8) -> bool {
        lock(&self.state).raw[usize::from(devfn)]
    }

    fn set_disabled(&self, devfn: u8, disabled: bool) {
        let mut st = lock(&self.state);
        if st.disabled[usize::from(devfn)] != disabled {
            st.disabled[usize::from(devfn)] = disabled;
            self.update(&mut st, devfn >> 3);
        }
    }

    fn set_sink(&self, sink: Arc<dyn IntxSink>) {
        let mut st = lock(&self.state);
        for (device, pins) in st.device_pins.iter().enumerate() {
            for (pin, _) in PINS.iter().zip(pins).filter(|(_, on)| **on) {
                sink.set_intx_level(device as u8, *pin, true);
            }
        }
        st.sink = Some(sink);
    }

    /// Restore every function's level at once.
    fn restore_raw(&self, raw: &[bool; NUM_DEVFNS]) {
        let mut st = lock(&self.state);
        st.raw = *raw;
        for device in 0..NUM_DEVICES as u8 {
            self.update(&mut st, device);
        }
    }

    fn update(&self, st: &mut IntxState, device: u8) {
        let dev = usize::from(device);
        for (p, pin) in PINS.into_iter().enumerate() {
            let level = (dev * 8..dev * 8 + 8)
                .any(|i| st.pin[i] == Some(pin) && st.raw[i] && !st.disabled[i]);
            if level != st.device_pins[dev][p] {
                st.device_pins[dev][p] = level;
                if let Some(sink) = &st.sink {
                    sink.set_intx_level(device, pin, level);
                }
            }
        }
        for q in 0..NUM_PIRQS {
            let level = st.device_pins.iter().enumerate().any(|(d, pins)| {
                PINS.iter()
                    .zip(pins)
                    .any(|(pin, on)| *on && usize::from(pin.pirq(d as u8)) == q)
            });
            if level != st.pirqs[q] {
                st.pirqs[q] = level;
                self.pirq.set_pirq_level(q as u8, level);
            }
        }
    }
}

/// The line a function drives.
struct IntxLine {
    router: Arc<IntxRouter>,
    devfn: u8,
}

impl IrqLine for IntxLine {
    fn set_level(&self, asserted: bool) {
        self.router.set_raw(self.devfn, asserted);
    }
}

// ----- Snapshot -----

struct SavedFunction {
    devfn: u8,
    config: [u8; CONFIG_SPACE_SIZE],
    level: bool,
    device: Vec<u8>,
}

impl Snapshot for PciRoot {
    fn snapshot_id(&self) -> &'static str {
        "pci-root-i440fx"
    }

    fn snapshot_version(&self) -> u16 {
        1
    }

    /// CONFIG_ADDRESS, the reset control register, then for each function in address order:
    /// devfn, its 256 configuration bytes, the level it drives, its nested device blob.
    fn save_state(&self, w: &mut StateWriter) {
        let st = self.state();
        w.u32(st.config_address);
        w.u8(st.reset_control);
        w.u16(st.slots.len() as u16);
        for (&devfn, slot) in &st.slots {
            let f = lock(&slot.function);
            w.u8(devfn);
            w.bytes(f.config().data());
            w.bool(self.inner.intx.raw_level(devfn));
            w.var_bytes(&f.save_device_state());
        }
    }

    fn restore_state(
        &mut self,
        r: &mut StateReader<'_>,
        _version: u16,
    ) -> Result<(), SnapshotError> {
        let config_address = r.u32()?;
        if config_address & !CONFIG_ADDRESS_MASK != 0 {
            return Err(SnapshotError::Invalid(format!(
                "CONFIG_ADDRESS {config_address:#x} has reserved bits set"
            )));
        }
        let reset_control = r.u8()?;
        if reset_control & !RESET_CONTROL_MASK != 0 {
            return Err(SnapshotError::Invalid(format!(
                "reset control {reset_control:#x} has reserved bits set"
            )));
        }
        let count = usize::from(r.u16()?);
        let mut st = self.state();
        if count != st.slots.len() {
            return Err(SnapshotError::Invalid(format!(
                "{count} PCI functions saved, {} present",
                st.slots.len()
            )));
        }
        let mut saved = Vec::with_capacity(count);
        for _ in 0..count {
            let devfn = r.u8()?;
            let mut config = [0u8; CONFIG_SPACE_SIZE];
            r.bytes(&mut config)?;
            let level = r.bool()?;
            let device = r.var_bytes(MAX_DEVICE_STATE)?;
            let bdf = Bdf::from_devfn(0, devfn);
            let slot = st.slots.get(&devfn).ok_or_else(|| {
                SnapshotError::Invalid(format!("no function at {bdf} for the saved one"))
            })?;
            if saved.iter().any(|s: &SavedFunction| s.devfn == devfn) {
                return Err(SnapshotError::Invalid(format!("{bdf} saved twice")));
            }
            let current = *lock(&slot.function).config().data();
            // Vendor, device and header layout must match: another device's state does not
            // fit this one.
            let identity = |c: &[u8; CONFIG_SPACE_SIZE]| (c[0..4].to_vec(), c[HEADER_TYPE] & 0x7F);
            if identity(&current) != identity(&config) {
                return Err(SnapshotError::Invalid(format!(
                    "{bdf}: saved function is not the one present"
                )));
            }
            saved.push(SavedFunction {
                devfn,
                config,
                level,
                device,
            });
        }

        // Apply; a device that refuses its blob rolls back the ones already restored.
        let mut undo: Vec<SavedFunction> = Vec::with_capacity(count);
        for s in &saved {
            let slot = &st.slots[&s.devfn];
            let mut f = lock(&slot.function);
            let previous = SavedFunction {
                devfn: s.devfn,
                config: *f.config().data(),
                level: false,
                device: f.save_device_state(),
            };
            f.config_mut().restore_data(&s.config);
            f.config_restored();
            if let Err(e) = f.restore_device_state(&s.device) {
                f.config_mut().restore_data(&previous.config);
                f.config_restored();
                drop(f);
                for u in undo.iter().rev() {
                    let mut g = lock(&st.slots[&u.devfn].function);
                    g.config_mut().restore_data(&u.config);
                    g.config_restored();
                    if let Err(e) = g.restore_device_state(&u.device) {
                        warn!(
                            "{}: could not roll back after a failed restore: {e}",
                            Bdf::from_devfn(0, u.devfn)
                        );
                    }
                }
                return Err(e);
            }
            undo.push(previous);
        }

        st.config_address = config_address;
        st.reset_control = reset_control;
        let mut raw = [false; NUM_DEVFNS];
        for s in &saved {
            raw[usize::from(s.devfn)] = s.level;
            let disabled = intx_disabled(&*lock(&st.slots[&s.devfn].function));
            self.inner.intx.set_disabled(s.devfn, disabled);
        }
        self.inner.intx.restore_raw(&raw);
        let devfns: Vec<u8> = st.slots.keys().copied().collect();
        for devfn in devfns {
            self.reconcile(&mut st, devfn);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::LatchedLine;
    use crate::pci::config_space::{BarKind, ConfigSpace, PciIds, command};
    use crate::pci::i440fx::{I440FX_BDF, I440fx};
    use crate::pci::piix3::{PIIX3_BDF, Piix3};
    use crate::snapshot::{self, check_round_trip};

    /// A test function: an I/O BAR, a 32-bit memory BAR, a 64-bit prefetchable BAR and a ROM,
    /// each backed by 256 bytes of registers.
    struct TestDev {
        config: ConfigSpace,
        regs: [[u8; 256]; NUM_REGIONS],
        irq: Option<Arc<dyn IrqLine>>,
        counter: u8,
    }

    impl TestDev {
        fn new(device_id: u16, pin: u8) -> TestDev {
            let mut config = ConfigSpace::new(PciIds {
                vendor_id: 0x1B36,
                device_id,
                revision_id: 1,
                class_code: 0xFF_00_00,
                subsystem_vendor_id: 0,
                subsystem_id: 0,
            });
            config.add_bar(0, BarKind::Io, 0x20).unwrap();
            config
                .add_bar(
                    1,
                    BarKind::Memory32 {
                        prefetchable: false,
                    },
                    0x1000,
                )
                .unwrap();
            config
                .add_bar(2, BarKind::Memory64 { prefetchable: true }, 0x4000)
                .unwrap();
            config.set_rom_bar(0x800).unwrap();
            config.set_interrupt_pin(pin).unwrap();
            let mut regs = [[0u8; 256]; NUM_REGIONS];
            for (bar, r) in regs.iter_mut().enumerate() {
                for (i, b) in r.iter_mut().enumerate() {
                    *b = (bar as u8) << 5 ^ i as u8;
                }
            }
            TestDev {
                config,
                regs,
                irq: None,
                counter: 0,
            }
        }

        fn raise(&self, on: bool) {
            if let Some(l) = &self.irq {
                l.set_level(on);
            }
        }
    }

    impl PciFunction for TestDev {
        fn name(&self) -> &str {
            "testdev"
        }
        fn config(&self) -> &ConfigSpace {
            &self.config
        }
        fn config_mut(&mut self) -> &mut ConfigSpace {
            &mut self.config
        }
        fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = self.regs[bar][(offset as usize + i) & 0xFF];
            }
        }
        fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
            for (i, b) in data.iter().enumerate() {
                self.regs[bar][(offset as usize + i) & 0xFF] = *b;
            }
            // A write to offset 0x1F of BAR 0 drives the interrupt line.
            if bar == 0 && offset == 0x1F {
                self.raise(data[0] != 0);
            }
            self.counter = self.counter.wrapping_add(1);
        }
        fn save_device_state(&self) -> Vec<u8> {
            let mut v = vec![self.counter];
            v.extend(self.regs.iter().flatten());
            v
        }
        fn restore_device_state(&mut self, blob: &[u8]) -> Result<(), SnapshotError> {
            if blob.len() != 1 + NUM_REGIONS * 256 {
                return Err(SnapshotError::Invalid("testdev state".into()));
            }
            self.counter = blob[0];
            for (r, chunk) in self.regs.iter_mut().zip(blob[1..].chunks(256)) {
                r.copy_from_slice(chunk);
            }
            Ok(())
        }
    }

    struct Board {
        root: PciRoot,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        isa: Vec<Arc<LatchedLine>>,
        piix3: Arc<Mutex<Piix3>>,
    }

    fn board() -> Board {
        let pio = Arc::new(Bus::new(BusKind::Pio));
        let mmio = Arc::new(Bus::new(BusKind::Mmio));
        let isa: Vec<Arc<LatchedLine>> = (0..16).map(|_| Arc::new(LatchedLine::new())).collect();
        let router =
            PirqRouter::new(isa.iter().map(|l| l.clone() as Arc<dyn IrqLine>).collect()).unwrap();
        let root = PciRoot::new(pio.clone(), mmio.clone(), router.clone());
        root.add(I440FX_BDF, I440fx::new()).unwrap();
        let piix3 = root.add(PIIX3_BDF, Piix3::new(router)).unwrap();
        Board {
            root,
            pio,
            mmio,
            isa,
            piix3,
        }
    }

    fn bdf(d: u8, f: u8) -> Bdf {
        Bdf::new(0, d, f).unwrap()
    }

    fn add_test(b: &Board, at: Bdf, pin: u8) -> Arc<Mutex<TestDev>> {
        let mut dev = TestDev::new(0x0100 + u16::from(at.devfn()), pin);
        dev.irq = Some(b.root.intx_line(at).unwrap());
        b.root.add(at, dev).unwrap()
    }

    /// A device that is not PCI, to collide with.
    struct Fixed(u8);
    impl BusDevice for Fixed {
        fn read(&mut self, _at: BusAddress, data: &mut [u8]) {
            data.fill(self.0);
        }
        fn write(&mut self, _at: BusAddress, _data: &[u8]) {}
    }

    #[test]
    fn bar_sizing_through_the_root() {
        let b = board();
        let d = bdf(3, 0);
        add_test(&b, d, 1);
        let sizes: Vec<u32> = (0..7)
            .map(|i| {
                let reg = if i == 6 { 0x30 } else { 0x10 + 4 * i };
                b.root.config_write(d, reg, 4, 0xFFFF_FFFF);
                b.root.config_read(d, reg, 4)
            })
            .collect();
        assert_eq!(
            sizes,
            vec![
                0xFFFF_FFE1, // I/O, 32 bytes
                0xFFFF_F000, // memory, 4 KiB
                0xFFFF_C00C, // 64-bit prefetchable, 16 KiB, low dword
                0xFFFF_FFFF, // its high dword
                0,           // no BAR 4
                0,
                0xFFFF_F801, // 2 KiB ROM
            ]
        );
    }

    #[test]
    fn bar_relocation_moves_the_range_on_the_bus() {
        let b = board();
        let d = bdf(3, 0);
        add_test(&b, d, 1);
        b.root.config_write(d, 0x10, 4, 0xC000);
        assert_eq!(b.pio.read_value(0xC001, 1), 0xFF, "decode off");
        b.root
            .config_write(d, 0x04, 2, u32::from(command::IO_SPACE));
        assert_eq!(b.pio.read_value(0xC001, 1), 0x01);
        assert_eq!(b.pio.read_value(0xC004, 4), 0x0706_0504);
        b.pio.write_value(0xC010, 2, 0xBEEF);
        b.root.config_write(d, 0x10, 4, 0xC100);
        assert_eq!(b.pio.read_value(0xC010, 2), 0xFFFF, "old address unmapped");
        assert_eq!(b.pio.read_value(0xC110, 2), 0xBEEF, "new address answers");
        assert_eq!(
            b.root.mapped_regions(d),
            vec![BarRegion {
                index: 0,
                space: BusKind::Pio,
                base: 0xC100,
                size: 0x20
            }]
        );
        // A byte write to the BAR's second byte moves it too.
        b.root.config_write(d, 0x11, 1, 0xD0);
        assert_eq!(b.pio.read_value(0xD010, 2), 0xBEEF);
        assert_eq!(b.pio.ranges().len(), 1);
    }

    #[test]
    fn memory_and_64bit_bars_map_on_the_mmio_bus() {
        let b = board();
        let d = bdf(4, 0);
        add_test(&b, d, 1);
        b.root.config_write(d, 0x14, 4, 0xFEBF_0000);
        b.root.config_write(d, 0x18, 4, 0x0000_0000);
        b.root.config_write(d, 0x1C, 4, 0x0000_0008);
        b.root.config_write(d, 0x30, 4, 0xFEB8_0001);
        b.root
            .config_write(d, 0x04, 2, u32::from(command::MEMORY_SPACE));
        assert_eq!(b.mmio.read_value(0xFEBF_0002, 1), 0x22);
        assert_eq!(b.mmio.read_value(0x8_0000_0003, 1), 0x43);
        assert_eq!(b.mmio.read_value(0xFEB8_0000, 1), 0xC0, "ROM is index 6");
        // Moving the high dword alone relocates the 64-bit BAR.
        b.root.config_write(d, 0x1C, 4, 0x0000_0010);
        assert_eq!(b.mmio.read_value(0x8_0000_0003, 1), 0xFF);
        assert_eq!(b.mmio.read_value(0x10_0000_0003, 1), 0x43);
        // Turning memory decode off unmaps all three; the I/O BAR never mapped.
        b.root.config_write(d, 0x04, 2, 0);
        assert!(b.mmio.ranges().is_empty());
        assert!(b.root.mapped_regions(d).is_empty());
        b.root
            .config_write(d, 0x04, 2, u32::from(command::MEMORY_SPACE));
        assert_eq!(b.mmio.ranges().len(), 3);
    }

    #[test]
    fn overlapping_or_absurd_bars_stay_unmapped_without_panic() {
        let b = board();
        let d = bdf(3, 0);
        let e = bdf(5, 0);
        add_test(&b, d, 1);
        add_test(&b, e, 1);
        b.mmio
            .insert(
                "bios",
                0xFFFE_0000,
                0x2_0000,
                Arc::new(Mutex::new(Fixed(0xAA))),
            )
            .unwrap();
        b.pio
            .insert("uart", 0x3F8, 8, Arc::new(Mutex::new(Fixed(0x55))))
            .unwrap();
        for dev in [d, e] {
            b.root.config_write(
                dev,
                0x04,
                2,
                u32::from(command::IO_SPACE | command::MEMORY_SPACE),
            );
        }
        // Sizing with decode on puts the memory BAR over the BIOS: refused, BIOS intact.
        b.root.config_write(d, 0x14, 4, 0xFFFF_FFFF);
        assert_eq!(b.mmio.read_value(0xFFFF_F000, 1), 0xAA);
        assert!(b.root.mapped_regions(d).is_empty());
        b.root.config_write(d, 0x14, 4, 0xE000_0000);
        assert_eq!(b.mmio.read_value(0xE000_0001, 1), 0x21);
        // Two devices at the same address: the first keeps it.
        b.root.config_write(e, 0x14, 4, 0xE000_0000);
        assert_eq!(b.mmio.read_value(0xE000_0001, 1), 0x21);
        assert!(b.root.mapped_regions(e).is_empty());
        // Once the first moves away, the second is retried and maps.
        b.root.config_write(d, 0x14, 4, 0xE100_0000);
        assert_eq!(b.root.mapped_regions(e).len(), 1);
        assert_eq!(b.mmio.read_value(0xE000_0001, 1), 0x21);
        // An I/O BAR over the UART, then beyond the I/O space.
        b.root.config_write(d, 0x10, 4, 0x3E0);
        assert_eq!(b.pio.read_value(0x3F8, 1), 0x55);
        b.root.config_write(d, 0x10, 4, 0xFFE1);
        b.root.config_write(d, 0x10, 4, 0xFFFF_FFE1);
        assert_eq!(b.root.mapped_regions(d).len(), 1, "only the memory BAR");
        // A moved BAR that lands on something is unmapped, not left at the old address.
        b.root.config_write(d, 0x10, 4, 0x1000);
        assert_eq!(b.pio.read_value(0x1000, 1), 0x00);
        b.root.config_write(d, 0x10, 4, 0x3E0);
        assert_eq!(b.pio.read_value(0x1000, 1), 0xFF);
        // 64-bit BAR at the very top of the address space.
        b.root.config_write(d, 0x18, 4, 0xFFFF_FFFF);
        b.root.config_write(d, 0x1C, 4, 0xFFFF_FFFF);
        assert_eq!(b.mmio.read_value(0xFFFF_FFFF_FFFF_C000, 1), 0x40);
    }

    #[test]
    fn direct_access_absent_functions_and_other_buses() {
        let b = board();
        assert_eq!(b.root.config_read(I440FX_BDF, 0, 4), 0x1237_8086);
        assert_eq!(b.root.config_read(I440FX_BDF, 2, 2), 0x1237);
        assert_eq!(b.root.config_read(I440FX_BDF, 1, 1), 0x80);
        assert_eq!(b.root.config_read(PIIX3_BDF, 0, 4), 0x7000_8086);
        assert_eq!(b.root.config_read(bdf(2, 0), 0, 4), 0xFFFF_FFFF);
        assert_eq!(b.root.config_read(bdf(2, 0), 0, 1), 0x0000_00FF);
        assert_eq!(b.root.config_read(bdf(2, 0), 0, 2), 0x0000_FFFF);
        assert_eq!(
            b.root.config_read(Bdf::new(1, 0, 0).unwrap(), 0, 4),
            u32::MAX
        );
        assert_eq!(b.root.config_read(I440FX_BDF, 0x100, 4), u32::MAX);
        assert_eq!(b.root.config_read(I440FX_BDF, 0xFE, 4), 0xFFFF_0000);
        assert_eq!(b.root.config_read(I440FX_BDF, 0, 3), u32::MAX);
        b.root.config_write(PIIX3_BDF, 0x60, 1, 0x0B);
        assert_eq!(b.root.config_read(PIIX3_BDF, 0x60, 4), 0x8080_800B);
        b.root.config_write(PIIX3_BDF, 0x61, 3, 0x0B);
        b.root.config_write(bdf(9, 0), 0x04, 2, 0x7);
        assert_eq!(b.root.config_read(PIIX3_BDF, 0x60, 4), 0x8080_800B);
        assert_eq!(b.root.functions(), vec![I440FX_BDF, PIIX3_BDF]);
        assert!(b.root.intx_line(Bdf::new(1, 0, 0).unwrap()).is_err());
        assert!(
            b.root
                .add(Bdf::new(1, 0, 0).unwrap(), I440fx::new())
                .is_err()
        );
        assert_eq!(
            b.root.add(PIIX3_BDF, I440fx::new()).err(),
            Some(PciError::SlotInUse(PIIX3_BDF))
        );
    }

    #[test]
    fn multi_function_bit_reflects_present_functions() {
        let b = board();
        add_test(&b, bdf(3, 0), 1);
        assert_eq!(b.root.config_read(bdf(3, 0), 0x0E, 1), 0x00);
        add_test(&b, bdf(3, 2), 2);
        assert_eq!(b.root.config_read(bdf(3, 0), 0x0E, 1), 0x80);
        assert_eq!(b.root.config_read(bdf(3, 0), 0x0C, 4) >> 16, 0x0080);
        assert_eq!(b.root.config_read(bdf(3, 2), 0x0E, 1), 0x00);
        assert_eq!(b.root.config_read(bdf(3, 1), 0x00, 4), 0xFFFF_FFFF);
        // The PIIX3 declares itself multi-function.
        assert_eq!(b.root.config_read(PIIX3_BDF, 0x0E, 1), 0x80);
    }

    #[test]
    fn intx_swizzle_routing_sharing_and_disable() {
        let b = board();
        // Device 3 INTA# and device 2 INTB# both swizzle to PIRQD (3).
        let d3 = add_test(&b, bdf(3, 0), 1);
        let d2 = add_test(&b, bdf(2, 0), 2);
        b.root.config_write(PIIX3_BDF, 0x63, 1, 11);
        lock(&d3).raise(true);
        assert!(b.isa[11].level());
        assert_eq!(b.root.config_read(bdf(3, 0), 0x06, 2) & 0x8, 0x8);
        assert_eq!(b.root.config_read(bdf(2, 0), 0x06, 2) & 0x8, 0);
        lock(&d2).raise(true);
        lock(&d3).raise(false);
        assert!(b.isa[11].level(), "device 2 still holds PIRQD");
        assert_eq!(b.isa[11].take_rising_edges(), 1);
        // INTx disable masks the pin but the status bit still shows it.
        b.root
            .config_write(bdf(2, 0), 0x04, 2, u32::from(command::INTX_DISABLE));
        assert!(!b.isa[11].level());
        assert_eq!(
            b.root.config_read(bdf(2, 0), 0x04, 4) & 0x0008_0400,
            0x0008_0400
        );
        b.root.config_write(bdf(2, 0), 0x04, 2, 0);
        assert!(b.isa[11].level());
        lock(&d2).raise(false);
        assert!(!b.isa[11].level());
        // PIRQ disabled: the level goes nowhere; re-routing picks it up.
        b.root.config_write(PIIX3_BDF, 0x63, 1, 0x80);
        lock(&d3).raise(true);
        assert!(b.isa.iter().all(|l| !l.level()));
        assert!(b.pirq_level(3));
        b.root.config_write(PIIX3_BDF, 0x63, 1, 0x09);
        assert!(b.isa[9].level());
        // A device driving its line from a BAR access (lock order: bus -> function -> INTx).
        lock(&d3).raise(false);
        assert!(!b.isa[9].level());
        b.root.config_write(bdf(3, 0), 0x10, 4, 0xC000);
        b.root
            .config_write(bdf(3, 0), 0x04, 2, u32::from(command::IO_SPACE));
        b.pio.write_value(0xC01F, 1, 1);
        assert!(b.isa[9].level());
        b.pio.write_value(0xC01F, 1, 0);
        assert!(!b.isa[9].level());
    }

    impl Board {
        fn pirq_level(&self, pirq: u8) -> bool {
            self.root.pirq_router().pirq_level(pirq)
        }
    }

    #[derive(Default)]
    struct SinkRecorder(Mutex<Vec<(u8, IntxPin, bool)>>);
    impl IntxSink for SinkRecorder {
        fn set_intx_level(&self, device: u8, pin: IntxPin, asserted: bool) {
            self.0.lock().unwrap().push((device, pin, asserted));
        }
    }

    #[test]
    fn intx_sink_sees_device_pins_ored_across_functions() {
        let b = board();
        let f0 = add_test(&b, bdf(6, 0), 1);
        let f1 = add_test(&b, bdf(6, 1), 1);
        lock(&f0).raise(true);
        let sink = Arc::new(SinkRecorder::default());
        b.root.set_intx_sink(sink.clone());
        lock(&f1).raise(true);
        lock(&f0).raise(false);
        lock(&f1).raise(false);
        assert_eq!(
            *sink.0.lock().unwrap(),
            vec![(6, IntxPin::A, true), (6, IntxPin::A, false)]
        );
    }

    #[derive(Default)]
    struct MapRecorder(Mutex<Vec<(bool, u64)>>);
    impl BarMappingListener for MapRecorder {
        fn bar_mapped(&self, _bdf: Bdf, region: BarRegion) {
            self.0.lock().unwrap().push((true, region.base));
        }
        fn bar_unmapped(&self, _bdf: Bdf, region: BarRegion) {
            self.0.lock().unwrap().push((false, region.base));
        }
    }

    #[test]
    fn mapping_listener_follows_the_bus() {
        let b = board();
        let d = bdf(3, 0);
        add_test(&b, d, 1);
        let rec = Arc::new(MapRecorder::default());
        b.root.set_mapping_listener(rec.clone());
        b.root.config_write(d, 0x10, 4, 0xC000);
        b.root.config_write(d, 0x04, 2, 1);
        b.root.config_write(d, 0x10, 4, 0xC040);
        b.root.config_write(d, 0x04, 2, 0);
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![
                (true, 0xC000),
                (false, 0xC000),
                (true, 0xC040),
                (false, 0xC040)
            ]
        );
    }

    #[test]
    fn reset_unmaps_and_restores_defaults() {
        let b = board();
        let d = bdf(3, 0);
        add_test(&b, d, 1);
        b.root.config_write(d, 0x10, 4, 0xC000);
        b.root.config_write(d, 0x04, 2, 1);
        b.root.config_write(PIIX3_BDF, 0x60, 4, 0x0B0A_0B0A);
        b.root.set_config_address(0x8000_0800);
        b.root.reset();
        assert!(b.pio.ranges().is_empty());
        assert_eq!(b.root.config_read(d, 0x10, 4), 1);
        assert_eq!(b.root.config_read(PIIX3_BDF, 0x60, 4), 0x8080_8080);
        assert_eq!(b.root.pirq_router().route(0), None);
        assert_eq!(b.root.config_address(), 0);
    }

    fn programmed_board() -> (Board, Arc<Mutex<TestDev>>) {
        let b = board();
        let d = add_test(&b, bdf(3, 0), 1);
        add_test(&b, bdf(3, 1), 2);
        b.root.config_write(bdf(3, 0), 0x10, 4, 0xC000);
        b.root.config_write(bdf(3, 0), 0x14, 4, 0xFEBF_0000);
        b.root.config_write(
            bdf(3, 0),
            0x04,
            2,
            u32::from(command::IO_SPACE | command::MEMORY_SPACE),
        );
        b.root.config_write(bdf(3, 0), 0x3C, 1, 11);
        b.root.config_write(PIIX3_BDF, 0x60, 4, 0x0B0A_0B0A);
        b.pio.write_value(0xC010, 1, 0x5A);
        lock(&d).raise(true);
        b.root.set_config_address(0x8000_1800);
        b.root.set_reset_control(0x02);
        (b, d)
    }

    #[test]
    fn snapshot_round_trip_and_behaviour_continues() {
        let (orig, _) = programmed_board();
        assert!(orig.isa[11].level());
        let mut fresh = board();
        let fresh_dev = add_test(&fresh, bdf(3, 0), 1);
        add_test(&fresh, bdf(3, 1), 2);
        check_round_trip(&orig.root, &mut fresh.root).unwrap();
        // Mappings, routes, the line level, the latches and the device state came back.
        assert_eq!(fresh.root.config_read(bdf(3, 0), 0x10, 4), 0xC001);
        assert_eq!(fresh.pio.read_value(0xC010, 1), 0x5A);
        assert_eq!(fresh.mmio.read_value(0xFEBF_0001, 1), 0x21);
        assert!(fresh.isa[11].level(), "INTA# of 3.0 on PIRQD -> IRQ 11");
        assert_eq!(fresh.root.config_read(bdf(3, 0), 0x06, 2) & 0x8, 0x8);
        assert_eq!(fresh.root.config_address(), 0x8000_1800);
        assert_eq!(fresh.root.reset_control(), 0x02);
        assert_eq!(fresh.root.config_read(bdf(3, 0), 0x3C, 1), 11);
        assert_eq!(lock(&fresh_dev).counter, 1);
        assert_eq!(lock(&fresh.piix3).router().route(3), Some(11));
        // Behaviour continues: the device lowers its line, the BAR moves.
        lock(&fresh_dev).raise(false);
        assert!(!fresh.isa[11].level());
        fresh.root.config_write(bdf(3, 0), 0x10, 4, 0xD000);
        assert_eq!(fresh.pio.read_value(0xD010, 1), 0x5A);
        assert_eq!(fresh.pio.read_value(0xC010, 1), 0xFF);
    }

    #[test]
    fn snapshot_of_a_different_machine_is_refused() {
        let (orig, _) = programmed_board();
        let blob = snapshot::save(&orig.root);
        // Missing a function.
        let mut fewer = board();
        add_test(&fewer, bdf(3, 0), 1);
        assert!(snapshot::restore(&mut fewer.root, &blob).is_err());
        // Same slots, another device at 3.1.
        let mut other = board();
        add_test(&other, bdf(3, 0), 1);
        other.root.add(bdf(3, 1), TestDev::new(0x9999, 2)).unwrap();
        let before = snapshot::save(&other.root);
        assert!(snapshot::restore(&mut other.root, &blob).is_err());
        assert_eq!(
            snapshot::save(&other.root),
            before,
            "refused blob changed nothing"
        );
    }

    #[test]
    fn failing_device_restore_rolls_back() {
        let (orig, _) = programmed_board();
        let mut fresh = board();
        add_test(&fresh, bdf(3, 0), 1);
        let victim = add_test(&fresh, bdf(3, 1), 2);
        // Build a blob whose 3.1 device state is refused by its device.
        lock(&victim).counter = 42;
        let before = snapshot::save(&fresh.root);
        struct Liar<'a>(&'a PciRoot, Vec<u8>);
        impl Snapshot for Liar<'_> {
            fn snapshot_id(&self) -> &'static str {
                self.0.snapshot_id()
            }
            fn snapshot_version(&self) -> u16 {
                1
            }
            fn save_state(&self, w: &mut StateWriter) {
                w.bytes(&self.1);
            }
            fn restore_state(
                &mut self,
                _r: &mut StateReader<'_>,
                _v: u16,
            ) -> Result<(), SnapshotError> {
                unreachable!()
            }
        }
        // Append a byte to the last function's device blob, the payload's last field.
        let blob = snapshot::save(&orig.root);
        let header = 4 + 1 + "pci-root-i440fx".len() + 2 + 4;
        let mut inner = blob[header..blob.len() - 4].to_vec();
        let len_at = inner.len() - (1 + NUM_REGIONS * 256) - 4;
        inner[len_at] += 1;
        inner.push(0);
        let payload = snapshot::save(&Liar(&orig.root, inner));
        assert!(snapshot::restore(&mut fresh.root, &payload).is_err());
        assert_eq!(snapshot::save(&fresh.root), before);
        assert_eq!(lock(&victim).counter, 42);
    }

    #[test]
    fn random_config_accesses_do_not_panic() {
        let b = board();
        add_test(&b, bdf(3, 0), 1);
        add_test(&b, bdf(3, 1), 4);
        add_test(&b, bdf(4, 0), 2);
        b.mmio
            .insert("ram", 0, 0x1000_0000, Arc::new(Mutex::new(Fixed(0))))
            .unwrap();
        b.pio
            .insert("pic", 0x20, 2, Arc::new(Mutex::new(Fixed(0))))
            .unwrap();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut most_mapped = 0;
        for _ in 0..20_000 {
            let r = next();
            let dev = [0u8, 1, 3, 4, (r >> 40) as u8 & 31][(r % 5) as usize];
            let f = if r & 0x100 != 0 {
                1
            } else {
                (r >> 44) as u8 & 7
            };
            let bus = if r & 0xFF00_0000 == 0 {
                (r >> 8) as u8
            } else {
                0
            };
            let at = Bdf::new(bus, dev, f).unwrap();
            let reg = ((r >> 16) & 0x1FF) as u16;
            let size = [1u8, 2, 4, 4, 0, 3, 8][((r >> 32) % 7) as usize];
            let value = next() as u32;
            if r & 0x200 != 0 {
                b.root.config_write(at, reg, size, value);
            } else {
                b.root.config_read(at, reg, size);
            }
            if r & 0x7000 == 0 {
                let line = b.root.intx_line(at);
                if let Ok(l) = line {
                    l.set_level(r & 0x8000 != 0);
                }
            }
            most_mapped = most_mapped.max(b.pio.ranges().len() + b.mmio.ranges().len());
        }
        assert!(most_mapped > 3, "the run should have mapped some BARs");
        // The buses stay consistent with what the root believes it mapped.
        for at in b.root.functions() {
            for region in b.root.mapped_regions(at) {
                let bus = if region.space == BusKind::Pio {
                    &b.pio
                } else {
                    &b.mmio
                };
                assert!(
                    bus.ranges()
                        .iter()
                        .any(|(_, s, l)| *s == region.base && *l == region.size)
                );
            }
        }
        b.root.reset();
        assert_eq!(b.pio.ranges().len(), 1);
        assert_eq!(b.mmio.ranges().len(), 1);
    }
}
