//! The PIIX4 power-management function (82371AB function 3, 8086:7113) at 00:01.3, as QEMU's
//! `PIIX4_PM` presents it to SeaBIOS, hvmloader and the guest's ACPI driver.
//!
//! # Pieces and where a board registers them
//!
//! | piece | type | where |
//! |---|---|---|
//! | PCI function (PMBA, PMREGMISC, SMBus base, DEVACT/DEVRES...) | [`Piix4Pm`] | `PciRoot::add` at [`PIIX4_PM_BDF`] |
//! | PM I/O block (PM1a_EVT, PM1a_CNT, PM_TMR) | [`PmIoWindow`] | at PMBA, moved by [`PmIoMapper`] |
//! | GPE0 block (status, enable) | [`GpeBlock`] | [`GPE0_BASE`], [`GPE0_LEN`] bytes |
//! | APM control / status (the FADT's SMI_CMD) | [`ApmPorts`] | [`APM_CNT_PORT`], [`APM_PORT_COUNT`] bytes |
//! | events from the board (power button, wake, GPE) | [`Piix4PmEvents`] | — |
//!
//! All of them share one register state; it is saved with the PCI function (through the root's
//! snapshot, or [`Piix4Pm`]'s own [`Snapshot`]).
//!
//! # PM I/O base
//!
//! PMBA (config 0x40) holds the base in bits 15:6 (bit 0 reads 1: an I/O resource) and
//! PMREGMISC (0x80) bit 0 enables decoding. The block is not a BAR, so the root cannot map it:
//! after every config write, reset and restore the function tells its [`PmIoListener`] where
//! the block decodes now. [`PmIoMapper`] is the listener that moves a [`PmIoWindow`] on a port
//! bus ([`Piix4Pm::attach_io`] builds both in one call); a Xen board wraps it to claim the
//! range from Xen too. A base of 0 counts as unassigned (firmware enables decoding only after
//! programming the base; 0 would sit on the DMA controller).
//!
//! # The PM I/O block (offsets from PMBA)
//!
//! - **0x00 PM1_STS**: TMR_STS (bit 0), GBL_STS, PWRBTN_STS, RTC_STS, WAK_STS (bit 15); the
//!   guest clears a bit by writing 1. Only the hardware sets them.
//! - **0x02 PM1_EN**: stored as written.
//! - **0x04 PM1_CNT**: SCI_EN (bit 0), BM_RLD (bit 1), SLP_TYP (bits 12:10) are stored;
//!   GBL_RLS (bit 2) and SLP_EN (bit 13) are write-only and read 0. Writing SLP_EN requests the
//!   sleep state whose type is in the same write, as [`SleepTypes`] decodes it, through
//!   [`PowerControl`]. A byte write to 0x05 combines with the stored low byte.
//! - **0x08 PM_TMR**: a 24-bit counter at 3.579545 MHz, computed from the [`Clock`] (bits 31:24
//!   read 0). TMR_STS sets each time bit 23 of the count changes; while TMR_EN is set and
//!   TMR_STS clear, a timer is armed for that instant so the SCI rises on time.
//! - Every other byte of the 64 reads all ones and drops writes (QEMU maps nothing there; the
//!   PIIX4's GPSTS, GLBCTL, DEVCTL... have no function in a virtual machine).
//!
//! Any access of 1 to 4 bytes at any offset works, register by register.
//!
//! # SCI
//!
//! The SCI (ISA IRQ 9, level, active high) is asserted while SCI_EN is set and an enabled
//! PM1 event (timer, global lock, power button, RTC) or an enabled GPE0 event is pending. With
//! SCI_EN clear the chipset would raise SMI instead, which is not modelled: no SCI. (QEMU
//! does not gate the SCI with SCI_EN; no guest enables events before SCI_EN.)
//!
//! # ACPI enable (ports 0xB2/0xB3)
//!
//! Writing 0xF1 to the APM control port sets SCI_EN, 0xF0 clears it: what the FADT's
//! ACPI_ENABLE/ACPI_DISABLE name and what hvmloader does when SCI_EN is clear (it BUG()s if
//! SCI_EN is still clear after). Other commands would raise SMI: logged and dropped. With
//! [`Piix4PmConfig::acpi_only`] (QEMU's behaviour when SMM is off, which includes Xen) SCI_EN
//! is set at reset and the two commands are ignored.
//!
//! # Under Xen
//!
//! With `HVM_PARAM_ACPI_IOPORTS_LOCATION = 1` Xen emulates PM1a_EVT (PMBA+0..+3) and PM_TMR
//! (PMBA+8..+0xB) itself, with its own SCI; the device model is left PM1a_CNT (poweroff,
//! sleep, SCI_EN), GPE0 and the APM ports. A Xen board attaches the window with
//! [`PmIoScope::Pm1aControl`], which maps only PMBA+4..+7, and registers GPE0 and the APM
//! ports; it does not use [`Piix4PmEvents::press_power_button`] (Xen's `xl trigger power`
//! goes to Xen's PM1a). The timer here is then never armed: TMR_EN writes go to Xen.
//!
//! # Sleep types
//!
//! QEMU's DSDT for the PIIX4 and Xen's libacpi both use SLP_TYP 0 for S5 and 1 for S3; QEMU
//! uses 2 for S4 (`s4_val`), while Xen's SSDT_S4 gives S4 type 0, the same as S5, so S4
//! powers off there. [`SleepTypes::QEMU`] and [`SleepTypes::XEN`] hold those; other types
//! written with SLP_EN are ignored (logged).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use log::{debug, info, warn};

use crate::bus::{AccessSizes, Bus, BusAddress, BusDevice, SharedDevice};
use crate::clock::{Clock, NANOS_PER_SEC, Nanos, Timer, TimerTarget};
use crate::irq::IrqLine;
use crate::pci::config_space::{CONFIG_SPACE_SIZE, ConfigSpace, PciIds, status};
use crate::pci::{Bdf, PciFunction};
use crate::snapshot::{self, Snapshot, SnapshotError, StateReader, StateWriter};

/// PIIX4 function 3 on the i440FX board: device 1, function 3.
pub const PIIX4_PM_BDF: Bdf = Bdf::from_devfn(0, 0x0B);
pub const PIIX4_PM_VENDOR_ID: u16 = 0x8086;
pub const PIIX4_PM_DEVICE_ID: u16 = 0x7113;
pub const PIIX4_PM_REVISION: u8 = 0x03;
/// Bridge, other.
pub const PIIX4_PM_CLASS: u32 = 0x06_80_00;

/// The ISA IRQ the SCI is wired to (the FADT's SCI_INT).
pub const SCI_IRQ: u8 = 9;
/// The PM I/O block's size.
pub const PM_IO_LEN: u64 = 64;
/// QEMU's and Xen's GPE0 block.
pub const GPE0_BASE: u64 = 0xAFE0;
pub const GPE0_LEN: u64 = 4;
/// The APM control port (SMI_CMD); the status port follows.
pub const APM_CNT_PORT: u64 = 0xB2;
pub const APM_STS_PORT: u64 = 0xB3;
pub const APM_PORT_COUNT: u64 = 2;
/// What the FADT names ACPI_ENABLE and ACPI_DISABLE.
pub const ACPI_ENABLE: u8 = 0xF1;
pub const ACPI_DISABLE: u8 = 0xF0;

/// The PM timer's frequency.
pub const PM_TIMER_HZ: u64 = 3_579_545;
/// The timer counts in 24 bits.
pub const PM_TIMER_MASK: u32 = 0x00FF_FFFF;
/// TMR_STS sets each time this bit of the count changes.
const TMR_TOGGLE: u64 = 1 << 23;

// Configuration registers.
/// PM base address (bits 15:6; bit 0 reads 1).
pub const PMBA: usize = 0x40;
/// Device activity B (stored).
pub const DEVACTB: usize = 0x58;
/// PM miscellaneous: bit 0 (PMIOSE) enables the PM I/O block.
pub const PMREGMISC: usize = 0x80;
/// SMBus base address (bits 15:4; bit 0 reads 1), stored: no SMBus controller is modelled.
pub const SMBBA: usize = 0x90;
/// SMBus host configuration: bit 0 enables the host interface (stored).
pub const SMBHSTCFG: usize = 0xD2;
const PMIOSE: u8 = 1 << 0;
/// QEMU's PC board puts the SMBus here.
pub const DEFAULT_SMBUS_BASE: u16 = 0xB100;

// PM I/O register offsets.
pub const PM1_STS: u64 = 0x00;
pub const PM1_EN: u64 = 0x02;
pub const PM1_CNT: u64 = 0x04;
pub const PM_TMR: u64 = 0x08;

/// PM1_STS bits (PM1_EN has the enables at the same positions).
pub mod pm1 {
    pub const TMR: u16 = 1 << 0;
    pub const BM: u16 = 1 << 4;
    pub const GBL: u16 = 1 << 5;
    pub const PWRBTN: u16 = 1 << 8;
    pub const RTC: u16 = 1 << 10;
    /// Status only: set on resume from a sleep state.
    pub const WAK: u16 = 1 << 15;
    /// The events that raise the SCI when enabled.
    pub const SCI_EVENTS: u16 = TMR | GBL | PWRBTN | RTC;
}

/// PM1_CNT bits.
pub mod pm1_cnt {
    pub const SCI_EN: u16 = 1 << 0;
    pub const BM_RLD: u16 = 1 << 1;
    pub const GBL_RLS: u16 = 1 << 2;
    pub const SLP_TYP_SHIFT: u32 = 10;
    pub const SLP_TYP: u16 = 7 << SLP_TYP_SHIFT;
    pub const SLP_EN: u16 = 1 << 13;
    /// The bits that are stored; the others read 0.
    pub const STORED: u16 = SCI_EN | BM_RLD | SLP_TYP;
}

/// The SLP_TYP values the ACPI tables give for each sleep state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SleepTypes {
    /// S3, suspend to RAM; `None` if the tables offer none.
    pub s3: Option<u8>,
    /// S4, suspend to disk: the guest saved its memory, so this powers off.
    pub s4: Option<u8>,
    /// S5, soft off.
    pub s5: u8,
}

impl SleepTypes {
    /// QEMU's DSDT for the PIIX4: S3 = 1, S4 = 2 (`s4_val`), S5 = 0.
    pub const QEMU: SleepTypes = SleepTypes {
        s3: Some(1),
        s4: Some(2),
        s5: 0,
    };
    /// Xen's libacpi: DSDT S5 = 0, SSDT_S3 S3 = 1, SSDT_S4 S4 = 0 (which is S5's).
    pub const XEN: SleepTypes = SleepTypes {
        s3: Some(1),
        s4: None,
        s5: 0,
    };

    fn decode(self, typ: u8) -> Option<SleepRequest> {
        if typ == self.s5 {
            Some(SleepRequest::PowerOff)
        } else if Some(typ) == self.s3 {
            Some(SleepRequest::Suspend)
        } else if Some(typ) == self.s4 {
            Some(SleepRequest::Hibernate)
        } else {
            None
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SleepRequest {
    Suspend,
    Hibernate,
    PowerOff,
}

/// What the guest's sleep requests become on the board. Called after the guest's access,
/// with no lock of this device held, but possibly with the bus's port device locked: latch
/// the request (see [`PowerSignals`]) rather than tearing the machine down from inside.
pub trait PowerControl: Send + Sync {
    /// S5: power off (under Xen: `remote_shutdown(SHUTDOWN_poweroff)`).
    fn request_poweroff(&self);
    /// S3: suspend to RAM (under Xen: `HVM_PARAM_ACPI_S_STATE = 3`). The board wakes the
    /// machine later with [`Piix4PmEvents::wake`].
    fn request_suspend(&self);
    /// S4: the guest has saved itself to disk; QEMU powers off.
    fn request_hibernate(&self) {
        self.request_poweroff();
    }
}

/// Sleep requests latched for a board that polls them.
#[derive(Debug, Default)]
pub struct PowerSignals {
    poweroff: AtomicBool,
    suspend: AtomicBool,
}

impl PowerSignals {
    pub fn new() -> PowerSignals {
        PowerSignals::default()
    }

    /// True once after each poweroff (or hibernate) request.
    pub fn take_poweroff(&self) -> bool {
        self.poweroff.swap(false, Ordering::AcqRel)
    }

    /// True once after each suspend request.
    pub fn take_suspend(&self) -> bool {
        self.suspend.swap(false, Ordering::AcqRel)
    }
}

impl PowerControl for PowerSignals {
    fn request_poweroff(&self) {
        self.poweroff.store(true, Ordering::Release);
    }

    fn request_suspend(&self) {
        self.suspend.store(true, Ordering::Release);
    }
}

fn request(power: &dyn PowerControl, req: Option<SleepRequest>) {
    match req {
        Some(SleepRequest::PowerOff) => {
            info!("piix4-pm: guest requests S5 (power off)");
            power.request_poweroff();
        }
        Some(SleepRequest::Suspend) => {
            info!("piix4-pm: guest requests S3 (suspend)");
            power.request_suspend();
        }
        Some(SleepRequest::Hibernate) => {
            info!("piix4-pm: guest requests S4 (hibernate)");
            power.request_hibernate();
        }
        None => {}
    }
}

/// The board's choices for the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piix4PmConfig {
    pub sleep_types: SleepTypes,
    /// SCI_EN is set at reset and the APM enable/disable commands are ignored: QEMU's
    /// `acpi_only`, what its current machine types get whenever SMM is off (always under Xen).
    pub acpi_only: bool,
    /// The SMBus base programmed at reset (stored only).
    pub smbus_base: u16,
    /// Which legacy devices the board has, for the DEVRESx decode bits QEMU presets: the
    /// parallel port at 0x378, COM1 at 0x3F8 and COM2 at 0x2F8.
    pub lpt1: bool,
    pub com1: bool,
    pub com2: bool,
}

impl Piix4PmConfig {
    /// The standalone PC with SMM-capable firmware: SCI_EN starts clear and the guest enables
    /// ACPI through port 0xB2.
    pub fn pc() -> Piix4PmConfig {
        Piix4PmConfig {
            sleep_types: SleepTypes::QEMU,
            acpi_only: false,
            smbus_base: DEFAULT_SMBUS_BASE,
            lpt1: false,
            com1: true,
            com2: false,
        }
    }

    /// QEMU's `xenfv`: ACPI-only (SCI_EN set from reset) with Xen's sleep types.
    pub fn xen() -> Piix4PmConfig {
        Piix4PmConfig {
            sleep_types: SleepTypes::XEN,
            acpi_only: true,
            ..Piix4PmConfig::pc()
        }
    }
}

impl Default for Piix4PmConfig {
    fn default() -> Self {
        Piix4PmConfig::pc()
    }
}

/// Why the machine woke (QEMU's wake-up reasons), for [`Piix4PmEvents::wake`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WakeReason {
    Rtc,
    PmTimer,
    /// Anything else (a QMP `system_wakeup`): reported as a power button press, as in QEMU.
    Other,
}

// ----- The register state -----

fn ticks_at(now: Nanos) -> u64 {
    (u128::from(now) * u128::from(PM_TIMER_HZ) / u128::from(NANOS_PER_SEC)) as u64
}

/// The first instant at which the count reaches `ticks`.
fn nanos_at(ticks: u64) -> Nanos {
    let ns = (u128::from(ticks) * u128::from(NANOS_PER_SEC)).div_ceil(u128::from(PM_TIMER_HZ));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// The next change of bit 23 after `ticks`.
fn next_toggle(ticks: u64) -> u64 {
    (ticks | (TMR_TOGGLE - 1)).saturating_add(1)
}

#[derive(Clone, Copy)]
enum Reg {
    Sts,
    En,
    Cnt,
    Tmr,
}

/// (offset, width, register) of the PM I/O block's registers.
const PM_REGS: [(u64, u64, Reg); 4] = [
    (PM1_STS, 2, Reg::Sts),
    (PM1_EN, 2, Reg::En),
    (PM1_CNT, 2, Reg::Cnt),
    (PM_TMR, 4, Reg::Tmr),
];

struct PmCore {
    pm1_sts: u16,
    pm1_en: u16,
    pm1_cnt: u16,
    /// The count at which TMR_STS next sets (a multiple of 2^23).
    overflow_at: u64,
    gpe_sts: u16,
    gpe_en: u16,
    apm_cnt: u8,
    apm_sts: u8,
    sci_level: bool,
    armed: Option<Nanos>,
    settings: Piix4PmConfig,
    clock: Clock,
    timer: Timer,
    sci: Arc<dyn IrqLine>,
}

impl PmCore {
    fn reset(&mut self) {
        let now = self.clock.now();
        self.pm1_sts = 0;
        self.pm1_en = 0;
        self.pm1_cnt = if self.settings.acpi_only {
            pm1_cnt::SCI_EN
        } else {
            0
        };
        self.overflow_at = next_toggle(ticks_at(now));
        self.gpe_sts = 0;
        self.gpe_en = 0;
        self.apm_cnt = 0;
        self.apm_sts = 0;
        self.update();
    }

    /// Latch TMR_STS if bit 23 has changed since it was last cleared.
    fn sync(&mut self) {
        if self.pm1_sts & pm1::TMR == 0 && ticks_at(self.clock.now()) >= self.overflow_at {
            self.pm1_sts |= pm1::TMR;
        }
    }

    fn sci_pending(&self) -> bool {
        self.pm1_cnt & pm1_cnt::SCI_EN != 0
            && (self.pm1_sts & self.pm1_en & pm1::SCI_EVENTS != 0
                || self.gpe_sts & self.gpe_en != 0)
    }

    /// Drive the SCI and (re)arm the timer to match the registers.
    fn update(&mut self) {
        self.sync();
        let level = self.sci_pending();
        if level != self.sci_level {
            self.sci_level = level;
            self.sci.set_level(level);
        }
        let want = (self.pm1_en & pm1::TMR != 0 && self.pm1_sts & pm1::TMR == 0)
            .then(|| nanos_at(self.overflow_at));
        if want != self.armed {
            match want {
                Some(deadline) => self.timer.arm(deadline),
                None => self.timer.cancel(),
            }
            self.armed = want;
        }
    }

    fn reg_value(&mut self, reg: Reg) -> u32 {
        match reg {
            Reg::Sts => {
                self.sync();
                u32::from(self.pm1_sts)
            }
            Reg::En => u32::from(self.pm1_en),
            Reg::Cnt => u32::from(self.pm1_cnt),
            Reg::Tmr => ticks_at(self.clock.now()) as u32 & PM_TIMER_MASK,
        }
    }

    fn read_io(&mut self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let addr = offset.saturating_add(i as u64);
            *byte = 0xFF;
            for (start, len, reg) in PM_REGS {
                if (start..start + len).contains(&addr) {
                    *byte = (self.reg_value(reg) >> (8 * (addr - start))) as u8;
                }
            }
        }
        self.update();
    }

    fn write_io(&mut self, offset: u64, data: &[u8]) -> Option<SleepRequest> {
        let end = offset.saturating_add(data.len() as u64);
        let mut sleep = None;
        for (start, len, reg) in PM_REGS {
            if end <= start || start + len <= offset {
                continue;
            }
            // Bytes the access does not cover keep their value, except in the write-1-to-clear
            // status register, where they write 0 (clear nothing).
            let mut value = match reg {
                Reg::Sts => 0,
                _ => self.reg_value(reg),
            };
            for (i, &b) in data.iter().enumerate() {
                let addr = offset + i as u64;
                if (start..start + len).contains(&addr) {
                    let shift = 8 * (addr - start);
                    value = (value & !(0xFF << shift)) | (u32::from(b) << shift);
                }
            }
            match reg {
                Reg::Sts => self.write_sts(value as u16),
                Reg::En => self.pm1_en = value as u16,
                Reg::Cnt => sleep = self.write_cnt(value as u16),
                Reg::Tmr => debug!("piix4-pm: write to the read-only PM timer dropped"),
            }
        }
        let in_register = |a: u64| PM_REGS.iter().any(|&(s, l, _)| (s..s + l).contains(&a));
        if (offset..end).any(|a| !in_register(a)) {
            debug!("piix4-pm: write at PM+{offset:#x} outside the registers dropped (in part)");
        }
        self.update();
        sleep
    }

    fn write_sts(&mut self, value: u16) {
        self.sync();
        if value & self.pm1_sts & pm1::TMR != 0 {
            self.overflow_at = next_toggle(ticks_at(self.clock.now()));
        }
        self.pm1_sts &= !value;
    }

    fn write_cnt(&mut self, value: u16) -> Option<SleepRequest> {
        self.pm1_cnt = value & pm1_cnt::STORED;
        if value & pm1_cnt::GBL_RLS != 0 {
            debug!("piix4-pm: GBL_RLS would raise SMI, which is not modelled");
        }
        if value & pm1_cnt::SLP_EN == 0 {
            return None;
        }
        let typ = ((value & pm1_cnt::SLP_TYP) >> pm1_cnt::SLP_TYP_SHIFT) as u8;
        let req = self.settings.sleep_types.decode(typ);
        if req.is_none() {
            debug!("piix4-pm: SLP_EN with sleep type {typ}, which no state uses: ignored");
        }
        req
    }

    fn read_gpe(&self, offset: u64) -> u8 {
        match offset {
            0 => self.gpe_sts as u8,
            1 => (self.gpe_sts >> 8) as u8,
            2 => self.gpe_en as u8,
            3 => (self.gpe_en >> 8) as u8,
            _ => 0xFF,
        }
    }

    fn write_gpe(&mut self, offset: u64, value: u8) {
        let v = u16::from(value);
        match offset {
            0 => self.gpe_sts &= !v,
            1 => self.gpe_sts &= !(v << 8),
            2 => self.gpe_en = (self.gpe_en & 0xFF00) | v,
            3 => self.gpe_en = (self.gpe_en & 0x00FF) | (v << 8),
            _ => {}
        }
        self.update();
    }

    fn write_apm(&mut self, offset: u64, value: u8) {
        if offset != 0 {
            self.apm_sts = value;
            return;
        }
        self.apm_cnt = value;
        match value {
            ACPI_ENABLE | ACPI_DISABLE if self.settings.acpi_only => {
                debug!("piix4-pm: ACPI-only chipset ignores APM command {value:#04x}");
            }
            ACPI_ENABLE => {
                debug!("piix4-pm: ACPI enabled through port 0xB2");
                self.pm1_cnt |= pm1_cnt::SCI_EN;
            }
            ACPI_DISABLE => {
                debug!("piix4-pm: ACPI disabled through port 0xB2");
                self.pm1_cnt &= !pm1_cnt::SCI_EN;
            }
            _ => debug!("piix4-pm: APM command {value:#04x} would raise SMI; not modelled"),
        }
        self.update();
    }
}

impl TimerTarget for PmCore {
    fn timer_expired(&mut self, _token: u32, _now: Nanos) {
        self.armed = None;
        self.update();
    }
}

const PM_CORE_VERSION: u16 = 1;

impl Snapshot for PmCore {
    fn snapshot_id(&self) -> &'static str {
        "piix4-pm-regs"
    }

    fn snapshot_version(&self) -> u16 {
        PM_CORE_VERSION
    }

    fn save_state(&self, w: &mut StateWriter) {
        w.u16(self.pm1_sts);
        w.u16(self.pm1_en);
        w.u16(self.pm1_cnt);
        w.u64(self.overflow_at);
        w.u16(self.gpe_sts);
        w.u16(self.gpe_en);
        w.u8(self.apm_cnt);
        w.u8(self.apm_sts);
    }

    fn restore_state(
        &mut self,
        r: &mut StateReader<'_>,
        _version: u16,
    ) -> Result<(), SnapshotError> {
        let pm1_sts = r.u16()?;
        let pm1_en = r.u16()?;
        let pm1_cnt = r.u16()?;
        let overflow_at = r.u64()?;
        let gpe_sts = r.u16()?;
        let gpe_en = r.u16()?;
        let apm_cnt = r.u8()?;
        let apm_sts = r.u8()?;
        if pm1_cnt & !pm1_cnt::STORED != 0 {
            return Err(SnapshotError::Invalid(format!(
                "PM1_CNT {pm1_cnt:#x} holds write-only or reserved bits"
            )));
        }
        if overflow_at % TMR_TOGGLE != 0 {
            return Err(SnapshotError::Invalid(format!(
                "PM timer overflow point {overflow_at:#x} is not a toggle of bit 23"
            )));
        }
        self.pm1_sts = pm1_sts;
        self.pm1_en = pm1_en;
        self.pm1_cnt = pm1_cnt;
        self.overflow_at = overflow_at;
        self.gpe_sts = gpe_sts;
        self.gpe_en = gpe_en;
        self.apm_cnt = apm_cnt;
        self.apm_sts = apm_sts;
        self.timer.cancel();
        self.armed = None;
        self.update();
        // Re-drive the line whatever it was: the receiver may have been restored separately.
        self.sci.set_level(self.sci_level);
        Ok(())
    }
}

type Core = Arc<Mutex<PmCore>>;

fn lock(core: &Mutex<PmCore>) -> MutexGuard<'_, PmCore> {
    core.lock().unwrap_or_else(|e| e.into_inner())
}

// ----- The PCI function -----

/// Told where the PM I/O block decodes: `Some(base)` or `None` (decoding off). Called with the
/// function (and the PCI root) locked: do not call back into PCI.
pub trait PmIoListener: Send + Sync {
    fn pm_base_changed(&self, base: Option<u16>);
}

/// The PCI function. See the module documentation.
pub struct Piix4Pm {
    config: ConfigSpace,
    core: Core,
    power: Arc<dyn PowerControl>,
    listener: Option<Arc<dyn PmIoListener>>,
    /// What the listener was last told.
    announced: Option<Option<u16>>,
}

impl Piix4Pm {
    /// The function at its reset values, counting its PM timer on `clock`, driving `sci`
    /// (ISA IRQ 9, level) and sending sleep requests to `power`.
    pub fn new(
        settings: Piix4PmConfig,
        clock: &Clock,
        sci: Arc<dyn IrqLine>,
        power: Arc<dyn PowerControl>,
    ) -> Piix4Pm {
        let core: Core = Arc::new_cyclic(|me: &Weak<Mutex<PmCore>>| {
            let timer = clock.timer(me.clone(), 0);
            let now = clock.now();
            let mut core = PmCore {
                pm1_sts: 0,
                pm1_en: 0,
                pm1_cnt: 0,
                overflow_at: next_toggle(ticks_at(now)),
                gpe_sts: 0,
                gpe_en: 0,
                apm_cnt: 0,
                apm_sts: 0,
                sci_level: false,
                armed: None,
                settings,
                clock: clock.clone(),
                timer,
                sci,
            };
            core.reset();
            Mutex::new(core)
        });
        Piix4Pm {
            config: Self::config_space(&settings),
            core,
            power,
            listener: None,
            announced: None,
        }
    }

    fn config_space(settings: &Piix4PmConfig) -> ConfigSpace {
        let mut config = ConfigSpace::new(PciIds {
            vendor_id: PIIX4_PM_VENDOR_ID,
            device_id: PIIX4_PM_DEVICE_ID,
            revision_id: PIIX4_PM_REVISION,
            class_code: PIIX4_PM_CLASS,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
        });
        config.set_status_bits(status::FAST_BACK_TO_BACK | status::DEVSEL_MEDIUM);
        if let Err(e) = config.set_interrupt_pin(1) {
            unreachable!("pin 1 is valid: {e}");
        }
        // The device-specific registers (DEVACTx, DEVRESx, GLBCTL, SMBus slave registers...)
        // are stored as written, as in QEMU; the base registers have their datasheet masks.
        config.set_write_mask(0x40, &[0xFF; CONFIG_SPACE_SIZE - 0x40]);
        config.set_write_mask(PMBA, &[0xC0, 0xFF, 0, 0]);
        config.set_u32(PMBA, 0x0000_0001);
        config.set_write_mask(PMREGMISC, &[PMIOSE]);
        config.set_write_mask(SMBBA, &[0xF0, 0xFF, 0, 0]);
        config.set_u32(SMBBA, u32::from(settings.smbus_base & 0xFFF0) | 1);
        config.set_write_mask(SMBHSTCFG, &[0x0F]);
        config.set_u8(SMBHSTCFG, 0x09);
        // No SMM: QEMU marks the BIOS's SMM initialisation as done (DEVACTB bit 25).
        config.set_u8(DEVACTB + 3, 0x02);
        // The decode enables QEMU presets for the legacy devices present.
        config.set_u8(0x5F, 0x10 | if settings.lpt1 { 0x80 } else { 0 });
        config.set_u8(0x63, 0x60);
        config.set_u8(
            0x67,
            if settings.com1 { 0x08 } else { 0 } | if settings.com2 { 0x90 } else { 0 },
        );
        config.capture_power_on();
        config
    }

    /// Where the PM I/O block decodes now.
    pub fn pm_base(&self) -> Option<u16> {
        if self.config.get_u8(PMREGMISC) & PMIOSE == 0 {
            return None;
        }
        let base = (self.config.get_u32(PMBA) & 0xFFC0) as u16;
        (base != 0).then_some(base)
    }

    /// Report the block's placement to `listener`, now and after every change.
    pub fn set_io_listener(&mut self, listener: Arc<dyn PmIoListener>) {
        let base = self.pm_base();
        listener.pm_base_changed(base);
        self.listener = Some(listener);
        self.announced = Some(base);
    }

    /// Build the PM I/O window for `scope` and a [`PmIoMapper`] that keeps it at PMBA on
    /// `bus`, and install the mapper as the listener. Returns the mapper (a Xen board reads
    /// its range to claim it from Xen).
    pub fn attach_io(&mut self, bus: Arc<Bus>, scope: PmIoScope) -> Arc<PmIoMapper> {
        let mapper = PmIoMapper::new(bus, self.io_window(scope));
        self.set_io_listener(mapper.clone());
        mapper
    }

    /// A bus device for the PM I/O block (or its PM1a_CNT part), to be kept at PMBA.
    pub fn io_window(&self, scope: PmIoScope) -> Arc<Mutex<PmIoWindow>> {
        Arc::new(Mutex::new(PmIoWindow {
            core: self.core.clone(),
            power: self.power.clone(),
            scope,
        }))
    }

    /// The GPE0 block, for [`GPE0_BASE`].
    pub fn gpe_block(&self) -> Arc<Mutex<GpeBlock>> {
        Arc::new(Mutex::new(GpeBlock {
            core: self.core.clone(),
        }))
    }

    /// The APM control and status ports, for [`APM_CNT_PORT`].
    pub fn apm_ports(&self) -> Arc<Mutex<ApmPorts>> {
        Arc::new(Mutex::new(ApmPorts {
            core: self.core.clone(),
        }))
    }

    /// A handle for the board's events; it does not lock the PCI function.
    pub fn events(&self) -> Piix4PmEvents {
        Piix4PmEvents {
            core: self.core.clone(),
        }
    }

    fn announce(&mut self) {
        let base = self.pm_base();
        if self.announced == Some(base) {
            return;
        }
        if let Some(l) = &self.listener {
            debug!("piix4-pm: PM I/O block now at {base:x?}");
            l.pm_base_changed(base);
            self.announced = Some(base);
        }
    }
}

impl PciFunction for Piix4Pm {
    fn name(&self) -> &str {
        "piix4-pm"
    }

    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn write_config(&mut self, reg: usize, data: &[u8]) {
        self.config.write(reg, data);
        self.announce();
    }

    fn reset(&mut self) {
        self.config.reset();
        lock(&self.core).reset();
        self.announce();
    }

    fn config_restored(&mut self) {
        self.announce();
    }

    fn save_device_state(&self) -> Vec<u8> {
        snapshot::save(&*lock(&self.core))
    }

    fn restore_device_state(&mut self, blob: &[u8]) -> Result<(), SnapshotError> {
        snapshot::restore(&mut *lock(&self.core), blob)
    }
}

/// The whole function: its configuration space, then its registers.
impl Snapshot for Piix4Pm {
    fn snapshot_id(&self) -> &'static str {
        "piix4-pm"
    }

    fn snapshot_version(&self) -> u16 {
        1
    }

    fn save_state(&self, w: &mut StateWriter) {
        w.bytes(self.config.data());
        w.var_bytes(&self.save_device_state());
    }

    fn restore_state(
        &mut self,
        r: &mut StateReader<'_>,
        _version: u16,
    ) -> Result<(), SnapshotError> {
        let mut config = [0u8; CONFIG_SPACE_SIZE];
        r.bytes(&mut config)?;
        if config[..4] != self.config.data()[..4] {
            return Err(SnapshotError::Invalid(
                "saved configuration space is not a PIIX4 PM function's".into(),
            ));
        }
        let blob = r.var_bytes(256)?;
        self.restore_device_state(&blob)?;
        self.config.restore_data(&config);
        self.config_restored();
        Ok(())
    }
}

// ----- Bus devices -----

/// Which part of the PM I/O block a window serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PmIoScope {
    /// All 64 bytes: the standalone PC.
    Full,
    /// PM1a_CNT only (PMBA+4..+7): Xen emulates PM1a_EVT and PM_TMR itself.
    Pm1aControl,
}

impl PmIoScope {
    /// The window's first byte, from PMBA.
    pub fn offset(self) -> u64 {
        match self {
            PmIoScope::Full => 0,
            PmIoScope::Pm1aControl => PM1_CNT,
        }
    }

    pub fn size(self) -> u64 {
        match self {
            PmIoScope::Full => PM_IO_LEN,
            PmIoScope::Pm1aControl => 4,
        }
    }

    /// The port range (start, length) the window takes with the block at `base`.
    pub fn range(self, base: u16) -> (u64, u64) {
        (u64::from(base) + self.offset(), self.size())
    }
}

/// The PM I/O block, or the part of it its [`PmIoScope`] names; offsets are from the window's
/// start. Register it for `scope.size()` bytes at `scope.range(base)` (or let [`PmIoMapper`]).
pub struct PmIoWindow {
    core: Core,
    power: Arc<dyn PowerControl>,
    scope: PmIoScope,
}

impl PmIoWindow {
    pub fn scope(&self) -> PmIoScope {
        self.scope
    }
}

impl BusDevice for PmIoWindow {
    fn read(&mut self, at: BusAddress, data: &mut [u8]) {
        let offset = self.scope.offset().saturating_add(at.offset);
        lock(&self.core).read_io(offset, data);
    }

    fn write(&mut self, at: BusAddress, data: &[u8]) {
        let offset = self.scope.offset().saturating_add(at.offset);
        let sleep = lock(&self.core).write_io(offset, data);
        request(&*self.power, sleep);
    }

    fn access_sizes(&self) -> AccessSizes {
        AccessSizes::new(1, 4)
    }
}

/// Keeps a [`PmIoWindow`] on a port bus where PMBA puts it.
pub struct PmIoMapper {
    bus: Arc<Bus>,
    window: SharedDevice,
    scope: PmIoScope,
    mapped: Mutex<Option<u64>>,
}

impl PmIoMapper {
    pub fn new(bus: Arc<Bus>, window: Arc<Mutex<PmIoWindow>>) -> Arc<PmIoMapper> {
        let scope = window.lock().unwrap_or_else(|e| e.into_inner()).scope;
        Arc::new(PmIoMapper {
            bus,
            window,
            scope,
            mapped: Mutex::new(None),
        })
    }

    /// The port range (start, length) the window occupies now.
    pub fn mapped_range(&self) -> Option<(u64, u64)> {
        self.mapped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|start| (start, self.scope.size()))
    }
}

impl PmIoListener for PmIoMapper {
    fn pm_base_changed(&self, base: Option<u16>) {
        let mut mapped = self.mapped.lock().unwrap_or_else(|e| e.into_inner());
        let want = base.map(|b| self.scope.range(b).0);
        if *mapped == want {
            return;
        }
        if let Some(old) = mapped.take()
            && let Err(e) = self.bus.remove(old)
        {
            warn!("piix4-pm: unmapping the PM block from {old:#x}: {e}");
        }
        if let Some(start) = want {
            match self
                .bus
                .insert("piix4-pm", start, self.scope.size(), self.window.clone())
            {
                Ok(()) => *mapped = Some(start),
                Err(e) => warn!("piix4-pm: PM block left unmapped: {e}"),
            }
        }
    }
}

/// The GPE0 block: status (bytes 0-1, write 1 to clear), enable (bytes 2-3).
pub struct GpeBlock {
    core: Core,
}

impl BusDevice for GpeBlock {
    fn read(&mut self, at: BusAddress, data: &mut [u8]) {
        let core = lock(&self.core);
        for (i, b) in data.iter_mut().enumerate() {
            *b = core.read_gpe(at.offset.saturating_add(i as u64));
        }
    }

    fn write(&mut self, at: BusAddress, data: &[u8]) {
        let mut core = lock(&self.core);
        for (i, &b) in data.iter().enumerate() {
            core.write_gpe(at.offset.saturating_add(i as u64), b);
        }
    }

    fn access_sizes(&self) -> AccessSizes {
        AccessSizes::BYTE
    }
}

/// The APM control (0xB2) and status (0xB3) ports.
pub struct ApmPorts {
    core: Core,
}

impl BusDevice for ApmPorts {
    fn read(&mut self, at: BusAddress, data: &mut [u8]) {
        let core = lock(&self.core);
        let value = if at.offset == 0 {
            core.apm_cnt
        } else {
            core.apm_sts
        };
        data.fill(value);
    }

    fn write(&mut self, at: BusAddress, data: &[u8]) {
        if let Some(&value) = data.first() {
            lock(&self.core).write_apm(at.offset, value);
        }
    }

    fn access_sizes(&self) -> AccessSizes {
        AccessSizes::BYTE
    }
}

/// The board's side: events it raises and what it may want to look at.
#[derive(Clone)]
pub struct Piix4PmEvents {
    core: Core,
}

impl Piix4PmEvents {
    /// The power button (QMP `system_powerdown`): PWRBTN_STS sets if the guest enabled it,
    /// as in QEMU (a press the OS does not listen for is lost).
    pub fn press_power_button(&self) {
        let mut core = lock(&self.core);
        if core.pm1_en & pm1::PWRBTN != 0 {
            core.pm1_sts |= pm1::PWRBTN;
            core.update();
        }
    }

    /// The machine resumed from S3 (after the board's reset): WAK_STS and the reason's
    /// status bit are set.
    pub fn wake(&self, reason: WakeReason) {
        let mut core = lock(&self.core);
        core.pm1_sts |= pm1::WAK
            | match reason {
                WakeReason::Rtc => pm1::RTC,
                WakeReason::PmTimer => pm1::TMR,
                WakeReason::Other => pm1::PWRBTN,
            };
        core.update();
    }

    /// Set GPE0 status bits (hot-plug notifications, when there are some).
    pub fn raise_gpe(&self, bits: u16) {
        let mut core = lock(&self.core);
        core.gpe_sts |= bits;
        core.update();
    }

    /// The level driven on the SCI line.
    pub fn sci_level(&self) -> bool {
        lock(&self.core).sci_level
    }

    /// PM1_CNT as the guest reads it.
    pub fn pm1_control(&self) -> u16 {
        lock(&self.core).pm1_cnt
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusKind;
    use crate::irq::LatchedLine;
    use crate::pci::PirqRouter;
    use crate::pci::root::PciRoot;
    use crate::snapshot::check_round_trip;

    const BASE: u64 = 0xB000;

    struct Rig {
        clock: Clock,
        sci: Arc<LatchedLine>,
        power: Arc<PowerSignals>,
        pio: Arc<Bus>,
        root: PciRoot,
        pm: Arc<Mutex<Piix4Pm>>,
        events: Piix4PmEvents,
    }

    fn rig_with(settings: Piix4PmConfig, scope: PmIoScope) -> Rig {
        let clock = Clock::new(0);
        let sci = Arc::new(LatchedLine::new());
        let power = Arc::new(PowerSignals::new());
        let pio = Arc::new(Bus::new(BusKind::Pio));
        let mmio = Arc::new(Bus::new(BusKind::Mmio));
        let root = PciRoot::new(pio.clone(), mmio, PirqRouter::unconnected());
        let mut pm = Piix4Pm::new(settings, &clock, sci.clone(), power.clone());
        pm.attach_io(pio.clone(), scope);
        pio.insert("acpi-gpe0", GPE0_BASE, GPE0_LEN, pm.gpe_block())
            .unwrap();
        pio.insert("apm", APM_CNT_PORT, APM_PORT_COUNT, pm.apm_ports())
            .unwrap();
        let events = pm.events();
        let pm = root.add(PIIX4_PM_BDF, pm).unwrap();
        Rig {
            clock,
            sci,
            power,
            pio,
            root,
            pm,
            events,
        }
    }

    /// What SeaBIOS and hvmloader do: PM base 0xB000, decoding on.
    fn enabled(settings: Piix4PmConfig) -> Rig {
        let r = rig_with(settings, PmIoScope::Full);
        r.root
            .config_write(PIIX4_PM_BDF, PMBA as u16, 4, 0xB000 | 1);
        r.root.config_write(PIIX4_PM_BDF, PMREGMISC as u16, 1, 1);
        r
    }

    fn ns_for_ticks(ticks: u64) -> Nanos {
        nanos_at(ticks)
    }

    #[test]
    fn pci_identity_and_reset_values() {
        let r = rig_with(Piix4PmConfig::pc(), PmIoScope::Full);
        let cfg = |reg, size| r.root.config_read(PIIX4_PM_BDF, reg, size);
        assert_eq!(cfg(0x00, 4), 0x7113_8086);
        assert_eq!(cfg(0x08, 4), 0x0680_0003, "class 0680, revision 3");
        assert_eq!(cfg(0x06, 2), 0x0280, "fast back-to-back, medium DEVSEL");
        assert_eq!(cfg(0x3D, 1), 1);
        assert_eq!(cfg(PMBA as u16, 4), 1, "I/O indicator, no base");
        assert_eq!(cfg(PMREGMISC as u16, 1), 0);
        assert_eq!(cfg(SMBBA as u16, 4), 0xB101);
        assert_eq!(cfg(SMBHSTCFG as u16, 1), 0x09);
        assert_eq!(cfg(0x5B, 1), 0x02);
        assert_eq!(cfg(0x67, 1), 0x08, "COM1 decode");
        // Masks: PMBA takes bits 15:6, SMBBA bits 15:4, PMREGMISC bit 0.
        r.root.config_write(PIIX4_PM_BDF, PMBA as u16, 4, u32::MAX);
        assert_eq!(cfg(PMBA as u16, 4), 0xFFC1);
        r.root.config_write(PIIX4_PM_BDF, SMBBA as u16, 4, u32::MAX);
        assert_eq!(cfg(SMBBA as u16, 4), 0xFFF1);
        r.root.config_write(PIIX4_PM_BDF, PMREGMISC as u16, 1, 0xFF);
        assert_eq!(cfg(PMREGMISC as u16, 1), 1);
        // DEVACTB and friends are stored.
        r.root
            .config_write(PIIX4_PM_BDF, DEVACTB as u16, 4, 0x1234_5678);
        assert_eq!(cfg(DEVACTB as u16, 4), 0x1234_5678);
        // hvmloader clears the SMBus enable.
        r.root.config_write(PIIX4_PM_BDF, SMBHSTCFG as u16, 1, 0);
        assert_eq!(cfg(SMBHSTCFG as u16, 1), 0);
    }

    #[test]
    fn pmba_relocation_moves_the_block() {
        let r = rig_with(Piix4PmConfig::pc(), PmIoScope::Full);
        let pm_ranges = |r: &Rig| -> Vec<(u64, u64)> {
            r.pio
                .ranges()
                .into_iter()
                .filter(|(n, _, _)| &**n == "piix4-pm")
                .map(|(_, s, l)| (s, l))
                .collect()
        };
        r.root.config_write(PIIX4_PM_BDF, PMBA as u16, 4, 0xB001);
        assert!(pm_ranges(&r).is_empty(), "decoding is still off");
        assert_eq!(r.pio.read_value(BASE + 4, 2), 0xFFFF);
        r.root.config_write(PIIX4_PM_BDF, PMREGMISC as u16, 1, 1);
        assert_eq!(pm_ranges(&r), vec![(0xB000, 64)]);
        assert_eq!(r.pio.read_value(BASE + 4, 2), 0);
        assert_eq!(r.pm.lock().unwrap().pm_base(), Some(0xB000));
        // SeaBIOS's base.
        r.root.config_write(PIIX4_PM_BDF, PMBA as u16, 4, 0x0601);
        assert_eq!(pm_ranges(&r), vec![(0x600, 64)]);
        assert_eq!(r.pio.read_value(BASE + 4, 2), 0xFFFF);
        r.pio.write_value(0x604, 2, 0x0001);
        assert_eq!(r.pio.read_value(0x604, 2), 1);
        // Reads outside the registers are ones.
        assert_eq!(r.pio.read_value(0x606, 2), 0xFFFF);
        assert_eq!(r.pio.read_value(0x60C, 4), 0xFFFF_FFFF);
        r.root.config_write(PIIX4_PM_BDF, PMREGMISC as u16, 1, 0);
        assert!(pm_ranges(&r).is_empty());
        r.root.config_write(PIIX4_PM_BDF, PMREGMISC as u16, 1, 1);
        assert_eq!(pm_ranges(&r), vec![(0x600, 64)]);
        // A PCI reset turns decoding off and the registers return to their reset values.
        r.root.reset();
        assert!(pm_ranges(&r).is_empty());
        assert_eq!(r.events.pm1_control(), 0);
    }

    #[test]
    fn xen_scope_maps_only_pm1a_control() {
        let r = rig_with(Piix4PmConfig::xen(), PmIoScope::Pm1aControl);
        r.root.config_write(PIIX4_PM_BDF, PMBA as u16, 4, 0xB001);
        r.root.config_write(PIIX4_PM_BDF, PMREGMISC as u16, 1, 1);
        assert!(
            r.pio
                .ranges()
                .iter()
                .any(|(n, s, l)| &**n == "piix4-pm" && *s == 0xB004 && *l == 4)
        );
        assert_eq!(r.pio.read_value(BASE, 4), 0xFFFF_FFFF, "PM1a_EVT is Xen's");
        assert_eq!(
            r.pio.read_value(BASE + 8, 4),
            0xFFFF_FFFF,
            "PM_TMR is Xen's"
        );
        assert_eq!(
            r.pio.read_value(BASE + 4, 2),
            1,
            "ACPI-only: SCI_EN from reset"
        );
        r.pio.write_value(BASE + 4, 2, 0x2001);
        assert!(r.power.take_poweroff(), "Xen's S5 type is 0");
        r.pio.write_value(BASE + 4, 2, 0x2401);
        assert!(r.power.take_suspend(), "Xen's S3 type is 1");
        r.pio.write_value(BASE + 4, 2, 0x2801);
        assert!(!r.power.take_poweroff() && !r.power.take_suspend());
        // hvmloader's enable command changes nothing on an ACPI-only chipset.
        r.pio.write_value(APM_CNT_PORT, 1, u64::from(ACPI_DISABLE));
        assert_eq!(r.pio.read_value(BASE + 4, 2) & 1, 1);
    }

    #[test]
    fn s5_powers_off_and_other_types_do_not() {
        let r = enabled(Piix4PmConfig::pc());
        // SLP_EN with types the tables do not use: nothing.
        for typ in [3u64, 4, 5, 6, 7] {
            r.pio.write_value(BASE + 4, 2, (typ << 10) | 0x2000);
            assert!(!r.power.take_poweroff(), "type {typ}");
            assert!(!r.power.take_suspend(), "type {typ}");
        }
        // SLP_TYP without SLP_EN: stored, no request.
        r.pio.write_value(BASE + 4, 2, 0);
        assert!(!r.power.take_poweroff());
        r.pio.write_value(BASE + 4, 2, 1 << 10);
        assert_eq!(r.pio.read_value(BASE + 4, 2), 1 << 10);
        assert!(!r.power.take_suspend());
        // S3.
        r.pio.write_value(BASE + 4, 2, (1 << 10) | 0x2000);
        assert!(r.power.take_suspend());
        assert!(!r.power.take_poweroff());
        assert_eq!(r.pio.read_value(BASE + 4, 2), 1 << 10, "SLP_EN reads 0");
        // S4 (QEMU's type 2) powers off.
        r.pio.write_value(BASE + 4, 2, (2 << 10) | 0x2000);
        assert!(r.power.take_poweroff());
        // S5, type 0, as Linux writes it: SLP_TYP first, then SLP_EN in a second write.
        r.pio.write_value(BASE + 4, 2, 0x0000);
        r.pio.write_value(BASE + 4, 2, 0x2000);
        assert!(r.power.take_poweroff());
        // A byte write to the high half combines with the stored low half.
        r.pio.write_value(BASE + 4, 1, 1);
        r.pio.write_value(BASE + 5, 1, 0x20);
        assert!(r.power.take_poweroff());
        assert_eq!(r.pio.read_value(BASE + 4, 2), 1, "SCI_EN kept");
    }

    #[test]
    fn apm_enable_sets_sci_en() {
        let r = enabled(Piix4PmConfig::pc());
        assert_eq!(r.pio.read_value(BASE + 4, 2) & 1, 0);
        r.pio.write_value(APM_CNT_PORT, 1, u64::from(ACPI_ENABLE));
        assert_eq!(r.pio.read_value(BASE + 4, 2) & 1, 1);
        assert_eq!(r.pio.read_value(APM_CNT_PORT, 1), 0xF1);
        r.pio.write_value(APM_STS_PORT, 1, 0x5A);
        assert_eq!(r.pio.read_value(APM_STS_PORT, 1), 0x5A);
        assert_eq!(
            r.pio.read_value(BASE + 4, 2) & 1,
            1,
            "status port is storage"
        );
        r.pio.write_value(APM_CNT_PORT, 1, 0x12);
        assert_eq!(
            r.pio.read_value(BASE + 4, 2) & 1,
            1,
            "other commands are SMIs"
        );
        r.pio.write_value(APM_CNT_PORT, 1, u64::from(ACPI_DISABLE));
        assert_eq!(r.pio.read_value(BASE + 4, 2) & 1, 0);
    }

    #[test]
    fn pm_timer_counts_at_3_579545_mhz_and_wraps_at_24_bits() {
        let r = enabled(Piix4PmConfig::pc());
        assert_eq!(r.pio.read_value(BASE + 8, 4), 0);
        r.clock.advance_to(NANOS_PER_SEC);
        assert_eq!(r.pio.read_value(BASE + 8, 4), 3_579_545);
        r.clock.advance_to(10 * NANOS_PER_SEC);
        assert_eq!(r.pio.read_value(BASE + 8, 4), 35_795_450 & 0xFF_FFFF);
        // Just before and at the 24-bit wrap.
        let wrap = 1u64 << 24;
        r.clock.advance_to(ns_for_ticks(3 * wrap) - 1);
        assert_eq!(r.pio.read_value(BASE + 8, 4), 0xFF_FFFF);
        r.clock.advance_to(ns_for_ticks(3 * wrap + 5));
        assert_eq!(r.pio.read_value(BASE + 8, 4), 5);
        // Byte and word reads see slices of the same count; writes change nothing.
        r.pio.write_value(BASE + 8, 4, 0x1234_5678);
        assert_eq!(r.pio.read_value(BASE + 8, 2), 5);
        assert_eq!(r.pio.read_value(BASE + 11, 1), 0, "bits 31:24 read 0");
    }

    #[test]
    fn tmr_sts_is_write_1_to_clear_and_drives_the_sci() {
        let r = enabled(Piix4PmConfig::pc());
        let sts = |r: &Rig| r.pio.read_value(BASE, 2) as u16;
        r.pio.write_value(APM_CNT_PORT, 1, u64::from(ACPI_ENABLE));
        r.pio.write_value(BASE + 2, 2, u64::from(pm1::TMR));
        assert_eq!(sts(&r), 0);
        let toggle = ns_for_ticks(1 << 23);
        assert_eq!(r.clock.next_deadline(), Some(toggle), "armed for bit 23");
        r.clock.advance_to(toggle - 1);
        assert!(!r.sci.level());
        assert_eq!(sts(&r), 0);
        r.clock.advance_to(toggle);
        assert!(r.sci.level(), "the timer raised the SCI at the toggle");
        assert_eq!(r.sci.take_rising_edges(), 1);
        assert_eq!(sts(&r) & pm1::TMR, pm1::TMR);
        assert_eq!(
            r.clock.next_deadline(),
            None,
            "no timer while TMR_STS is set"
        );
        // Writing 0 clears nothing; writing 1 clears it.
        r.pio.write_value(BASE, 2, 0);
        assert!(r.sci.level());
        r.pio.write_value(BASE, 2, u64::from(pm1::TMR));
        assert!(!r.sci.level());
        assert_eq!(sts(&r), 0);
        // The next toggle (bit 23 falling at the 24-bit wrap) sets it again.
        let next = ns_for_ticks(2 << 23);
        assert_eq!(r.clock.next_deadline(), Some(next));
        r.clock.advance_to(next);
        assert!(r.sci.level());
        // Disabling the event drops the SCI but leaves the status.
        r.pio.write_value(BASE + 2, 2, 0);
        assert!(!r.sci.level());
        assert_eq!(sts(&r) & pm1::TMR, pm1::TMR);
        // Status and enable both set, SCI_EN clear: no SCI (it would be an SMI).
        r.pio.write_value(APM_CNT_PORT, 1, u64::from(ACPI_DISABLE));
        r.pio.write_value(BASE + 2, 2, u64::from(pm1::TMR));
        assert!(!r.sci.level());
        r.pio.write_value(APM_CNT_PORT, 1, u64::from(ACPI_ENABLE));
        assert!(r.sci.level());
        // A dword write at 0 clears the status and writes the enable at once.
        r.pio.write_value(BASE, 4, u64::from(pm1::TMR));
        assert!(!r.sci.level());
        assert_eq!(r.pio.read_value(BASE, 4), 0);
    }

    #[test]
    fn power_button_wake_and_gpe_raise_the_sci() {
        let r = enabled(Piix4PmConfig::xen());
        r.events.press_power_button();
        assert_eq!(
            r.pio.read_value(BASE, 2),
            0,
            "not enabled: lost, as in QEMU"
        );
        r.pio.write_value(BASE + 2, 2, u64::from(pm1::PWRBTN));
        r.events.press_power_button();
        assert_eq!(r.pio.read_value(BASE, 2), u64::from(pm1::PWRBTN));
        assert!(r.sci.level());
        r.pio.write_value(BASE, 2, u64::from(pm1::PWRBTN));
        assert!(!r.sci.level());
        r.events.wake(WakeReason::Other);
        assert_eq!(r.pio.read_value(BASE, 2), u64::from(pm1::WAK | pm1::PWRBTN));
        r.pio.write_value(BASE, 2, 0xFFFF);
        assert!(!r.sci.level());
        // GPE0: status bit 1 pending, enable it by a byte write at 0xAFE2.
        r.events.raise_gpe(0x0002);
        assert!(!r.sci.level());
        assert_eq!(r.pio.read_value(GPE0_BASE, 4), 0x0000_0002);
        r.pio.write_value(GPE0_BASE + 2, 1, 0x02);
        assert!(r.sci.level());
        assert!(r.events.sci_level());
        r.pio.write_value(GPE0_BASE, 2, 0x0002);
        assert!(!r.sci.level());
        assert_eq!(r.pio.read_value(GPE0_BASE, 4), 0x0002_0000);
    }

    #[test]
    fn snapshot_round_trip_keeps_the_armed_timer() {
        let r = enabled(Piix4PmConfig::pc());
        r.pio.write_value(APM_CNT_PORT, 1, u64::from(ACPI_ENABLE));
        r.pio.write_value(BASE + 2, 2, u64::from(pm1::TMR));
        r.pio.write_value(BASE + 4, 2, (1 << 10) | 1);
        r.pio.write_value(GPE0_BASE + 3, 1, 0x80);
        r.clock.advance_to(NANOS_PER_SEC);

        // A second machine on the same clock, attached to its own bus.
        let sci = Arc::new(LatchedLine::new());
        let power = Arc::new(PowerSignals::new());
        let bus = Arc::new(Bus::new(BusKind::Pio));
        let mut fresh = Piix4Pm::new(Piix4PmConfig::pc(), &r.clock, sci.clone(), power.clone());
        let mapper = fresh.attach_io(bus.clone(), PmIoScope::Full);
        check_round_trip(&*r.pm.lock().unwrap(), &mut fresh).unwrap();
        assert_eq!(
            mapper.mapped_range(),
            Some((0xB000, 64)),
            "PMBA restored and mapped"
        );
        assert_eq!(bus.read_value(BASE + 4, 2), 0x0401);
        assert_eq!(bus.read_value(BASE + 2, 2), u64::from(pm1::TMR));
        assert_eq!(fresh.events().pm1_control(), 0x0401);
        // The restored timer fires at the original's next toggle.
        let toggle = ns_for_ticks(1 << 23);
        r.clock.advance_to(toggle - 1);
        assert!(!sci.level());
        r.clock.advance_to(toggle);
        assert!(sci.level(), "restored device raised its SCI");
        assert!(r.sci.level(), "and so did the original");
        // Power requests continue.
        bus.write_value(BASE + 4, 2, 0x2001);
        assert!(power.take_poweroff());

        // The root's snapshot carries the registers too.
        let blob = snapshot::save(&r.root);
        r.pio.write_value(BASE + 4, 2, 0);
        r.pio.write_value(BASE, 2, 0xFFFF);
        let mut root = r.root.clone();
        snapshot::restore(&mut root, &blob).unwrap();
        assert_eq!(r.pio.read_value(BASE + 4, 2), 0x0401);
        assert!(r.sci.level());
    }

    #[test]
    fn corrupt_register_state_is_refused() {
        let r = enabled(Piix4PmConfig::pc());
        r.pio.write_value(APM_CNT_PORT, 1, u64::from(ACPI_ENABLE));
        let blob = |cnt: u16, overflow: u64| {
            let mut b = Vec::new();
            for v in [0u16, 0, cnt] {
                b.extend(v.to_le_bytes());
            }
            b.extend(overflow.to_le_bytes());
            b.extend([0u8; 6]);
            b
        };
        let pm = r.pm.lock().unwrap();
        let mut core = lock(&pm.core);
        let good = blob(pm1_cnt::SCI_EN, 1 << 23);
        assert!(
            core.restore_state(&mut StateReader::new(&good), 1).is_ok(),
            "the hand-made blob is well formed"
        );
        let bad_cnt = blob(pm1_cnt::SCI_EN | pm1_cnt::SLP_EN, 1 << 23);
        assert!(
            core.restore_state(&mut StateReader::new(&bad_cnt), 1)
                .is_err()
        );
        let bad_overflow = blob(0, (1 << 23) + 1);
        assert!(
            core.restore_state(&mut StateReader::new(&bad_overflow), 1)
                .is_err()
        );
        assert_eq!(
            core.pm1_cnt,
            pm1_cnt::SCI_EN,
            "refused blobs changed nothing"
        );
        drop(core);
        drop(pm);
        assert!(
            r.pm.lock()
                .unwrap()
                .restore_device_state(&[1, 2, 3])
                .is_err()
        );
    }

    #[test]
    fn random_accesses_do_not_panic() {
        let r = enabled(Piix4PmConfig::pc());
        let mut x: u64 = 0x853C_49E6_748F_EA9B;
        for step in 0..30_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let size = 1usize << (x % 4);
            let value = x >> 20;
            let addr = match (x >> 2) % 5 {
                0 => BASE - 2 + (x >> 8) % 70,
                1 => 0x600 - 2 + (x >> 8) % 70,
                2 => GPE0_BASE - 2 + (x >> 8) % 8,
                3 => APM_CNT_PORT - 2 + (x >> 8) % 6,
                _ => {
                    // Config writes, including PMBA and PMREGMISC, keep remapping the block.
                    let reg = (0x3C + (x >> 8) % 0xC4) as u16;
                    r.root
                        .config_write(PIIX4_PM_BDF, reg, 1 << (x % 3), value as u32);
                    continue;
                }
            };
            if x & 0x40 == 0 {
                r.pio.write_value(addr, size, value);
            } else {
                r.pio.read_value(addr, size);
            }
            if step % 1000 == 0 {
                r.clock.advance_by(x % (NANOS_PER_SEC * 10));
            }
        }
        let _ = r.power.take_poweroff();
    }
}
