//! The MC146818 real-time clock and its CMOS RAM, as the PC has it (ports 0x70/0x71, IRQ 8).
//!
//! Register at [`PORT_BASE`] with length [`PORT_COUNT`]: offset 0 is the index port (bits 0-6
//! select one of 128 bytes, bit 7 masks NMI), offset 1 the data port. Offsets alias on bit 0,
//! as in QEMU. Byte accesses only; the bus splits wider ones.
//!
//! # Time
//!
//! The chip counts with a 32.768 kHz divider chain. We model that chain as a nanosecond count,
//! "divider time", kept as an offset from the board's virtual [`Clock`]; while the clock updates
//! (divider bits 010 and SET clear), its whole seconds are the RTC's seconds since the Unix
//! epoch, so the date and time registers are computed from it when read, with our own calendar
//! arithmetic. While SET is set or the chain is stopped, the registers themselves hold the time
//! (latched when updating stopped) and are turned back into divider time when it resumes:
//! clearing SET keeps the sub-second phase, releasing the divider from reset or starting the
//! oscillator puts the first update half a second later (MC146818/DS12887 data sheets).
//!
//! The update is instantaneous at each whole second of divider time; UIP reads 1 in the
//! 244 µs (8 ticks of the 32.768 kHz base) before it. The weekday register is derived from the
//! date, as QEMU does: a guest write to it does not survive the next update. Out-of-range
//! register values (BCD nibbles above 9, the 31st of February, hour 25) are normalised
//! arithmetically when the time is taken from the registers; the chip's own behaviour with
//! them is undefined. The century lives at 0x32 (SeaBIOS reads it there, and Linux through the
//! FADT century field that QEMU points at 0x32); 0x37, the IBM PS/2 century byte, aliases it
//! as in QEMU. DSE and SQWE are stored and otherwise ignored, as in QEMU.
//!
//! # Interrupts
//!
//! Register C's flags are computed lazily from divider time whenever something looks at them,
//! so PF, UF and AF are set "at their rate" even when nothing is enabled, without a timer per
//! tick. IRQF is PF·PIE + AF·AIE + UF·UIE and the IRQ 8 line follows it as a level. One timer
//! runs only while IRQF is clear and some enabled event lies ahead; once IRQF is set nothing
//! fires until the guest reads register C. The PC's 8259 takes IRQ 8 on its rising edge, so the
//! next interrupt comes only after register C is read, just as on hardware. The fastest
//! periodic rate is the hardware's own 8192 Hz, and it costs a timer only while the guest
//! acknowledges every interrupt.
//!
//! # Board-set CMOS contents
//!
//! [`Mc146818::set_memory_size`], [`Mc146818::set_boot_order`] and the other helpers write
//! the bytes QEMU's `pc_cmos_init` writes and SeaBIOS reads; every helper (and
//! [`Mc146818::set_cmos`] inside 0x10-0x2D) keeps the standard checksum at 0x2E/0x2F.

use std::sync::{Arc, Mutex, Weak};

use log::{debug, warn};
use thiserror::Error;

use crate::bus::{AccessSizes, BusAddress, BusDevice};
use crate::clock::{Clock, Nanos, Timer, TimerTarget};
use crate::irq::IrqLine;
use crate::snapshot::{Snapshot, SnapshotError, StateReader, StateWriter};

/// Where the board registers the device on the port bus.
pub const PORT_BASE: u64 = 0x70;
/// Index and data port.
pub const PORT_COUNT: u64 = 2;
/// The ISA interrupt the RTC drives.
pub const IRQ: u8 = 8;
/// Bytes of CMOS: 14 clock registers and 114 bytes of NVRAM.
pub const CMOS_SIZE: usize = 128;

// Clock registers.
const SECONDS: usize = 0x00;
const SECONDS_ALARM: usize = 0x01;
const MINUTES: usize = 0x02;
const MINUTES_ALARM: usize = 0x03;
const HOURS: usize = 0x04;
const HOURS_ALARM: usize = 0x05;
const DAY_OF_WEEK: usize = 0x06;
const DAY_OF_MONTH: usize = 0x07;
const MONTH: usize = 0x08;
const YEAR: usize = 0x09;
const REG_A: usize = 0x0A;
const REG_B: usize = 0x0B;
const REG_C: usize = 0x0C;
const REG_D: usize = 0x0D;
const LAST_CLOCK_REGISTER: usize = REG_D;

/// CMOS bytes with a conventional meaning on the PC (QEMU `pc_cmos_init`, SeaBIOS `rtc.h`).
pub mod layout {
    /// Shutdown status: why the BIOS is being entered (0xFE: S3 resume).
    pub const SHUTDOWN_STATUS: usize = 0x0F;
    /// Floppy drive types: drive A in the high nibble, drive B in the low one.
    pub const FLOPPY_TYPES: usize = 0x10;
    /// Hard disk types: 0xF in a nibble means "see 0x19/0x1A" (drive 0 high, drive 1 low).
    pub const DISK_DATA: usize = 0x12;
    /// Equipment byte.
    pub const EQUIPMENT: usize = 0x14;
    /// Base memory in KiB (little-endian word).
    pub const BASE_MEMORY: usize = 0x15;
    /// Extended memory above 1 MiB in KiB, saturating at 0xFFFF (word).
    pub const EXTENDED_MEMORY: usize = 0x17;
    /// Extended type of hard disk 0 (47: user-defined, parameters at 0x1B).
    pub const DISK0_TYPE: usize = 0x19;
    /// Extended type of hard disk 1 (47: parameters at 0x24).
    pub const DISK1_TYPE: usize = 0x1A;
    /// Hard disk 0 parameter block (9 bytes).
    pub const DISK0_PARAMS: usize = 0x1B;
    /// Hard disk 1 parameter block (9 bytes).
    pub const DISK1_PARAMS: usize = 0x24;
    /// Checksum of 0x10-0x2D, high byte first.
    pub const CHECKSUM_HIGH: usize = 0x2E;
    pub const CHECKSUM_LOW: usize = 0x2F;
    /// Extended memory again, as the POST reports it (word).
    pub const EXTENDED_MEMORY_POST: usize = 0x30;
    /// The century, kept by the clock.
    pub const CENTURY: usize = 0x32;
    /// Memory between 16 MiB and 4 GiB in 64 KiB units, saturating at 0xFFFF (word).
    pub const MEMORY_ABOVE_16M: usize = 0x34;
    /// The IBM PS/2 century byte: an alias of [`CENTURY`].
    pub const PS2_CENTURY: usize = 0x37;
    /// Third boot device (high nibble); bit 0 set skips the floppy boot-signature check.
    pub const BOOT_FLAG1: usize = 0x38;
    /// Disk translation: two bits per ATA drive 0-3.
    pub const DISK_TRANSLATION: usize = 0x39;
    /// First boot device (low nibble) and second (high nibble).
    pub const BOOT_FLAG2: usize = 0x3D;
    /// Memory above 4 GiB in 64 KiB units (three bytes, little-endian).
    pub const MEMORY_ABOVE_4G: usize = 0x5B;
    /// Number of CPUs minus one.
    pub const SMP_COUNT: usize = 0x5F;
}

use layout::{CENTURY, PS2_CENTURY};

const A_UIP: u8 = 0x80;
const A_DIVIDER: u8 = 0x70;
const A_DIVIDER_32K: u8 = 0x20;
const A_RATE: u8 = 0x0F;

const B_SET: u8 = 0x80;
const B_PIE: u8 = 0x40;
const B_AIE: u8 = 0x20;
const B_UIE: u8 = 0x10;
const B_SQWE: u8 = 0x08;
const B_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;

const C_IRQF: u8 = 0x80;
const C_PF: u8 = 0x40;
const C_AF: u8 = 0x20;
const C_UF: u8 = 0x10;
/// The flags that IRQF sums; each sits at the same bit as its enable in register B.
const C_FLAGS: u8 = C_PF | C_AF | C_UF;

const D_VRT: u8 = 0x80;

/// An hour byte's PM flag in 12-hour mode.
const HOUR_PM: u8 = 0x80;

const NS_PER_SEC: i128 = 1_000_000_000;
const TICKS_PER_SEC: i128 = 32_768;
/// UIP rises 8 ticks (244.14 µs) before the update.
const UIP_TICKS: i128 = 8;
const HALF_SECOND: i128 = NS_PER_SEC / 2;
const SECS_PER_DAY: i64 = 86_400;

/// Seconds from the epoch beyond which the calendar saturates (about ±139,000 years). The
/// registers can only express years up to 25,599 plus normalisation, so real time never gets
/// near; the bound keeps the calendar arithmetic far from overflow for any input.
const SECS_LIMIT: i64 = 1 << 42;
/// Bound on a restored divider offset, far beyond anything `SECS_LIMIT` produces, so that
/// divider-time arithmetic (times 32768) cannot overflow an i128.
const OFFSET_LIMIT: i128 = 1 << 100;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CmosError {
    #[error("CMOS index {0:#x} is outside the {CMOS_SIZE}-byte CMOS")]
    OutOfRange(usize),
    #[error("CMOS index {0:#x} is a clock register; the clock keeps it")]
    ClockRegister(usize),
    #[error("the PC CMOS holds at most 3 boot devices, {0} given")]
    TooManyBootDevices(usize),
    #[error("CMOS has no {kind} slot {drive} (there are {slots})")]
    NoSuchDrive {
        kind: &'static str,
        drive: usize,
        slots: usize,
    },
}

/// A boot device as SeaBIOS reads it from 0x3D/0x38.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootDevice {
    Floppy = 1,
    HardDisk = 2,
    CdRom = 3,
    Network = 4,
}

/// A floppy drive type for 0x10.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloppyType {
    None = 0,
    /// 360 KiB, 5.25".
    K360 = 1,
    /// 1.2 MiB, 5.25".
    M1_2 = 2,
    /// 720 KiB, 3.5".
    K720 = 3,
    /// 1.44 MiB, 3.5".
    M1_44 = 4,
    /// 2.88 MiB, 3.5".
    M2_88 = 5,
}

/// The physical geometry of an ATA disk, as QEMU stores it for the BIOS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskGeometry {
    pub cylinders: u16,
    pub heads: u8,
    pub sectors: u8,
}

/// The CHS translation SeaBIOS applies to an ATA disk (0x39).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskTranslation {
    None = 0,
    Lba = 1,
    Large = 2,
    Rechs = 3,
}

/// One alarm field: "don't care" (11xxxxxx) or a value the time must equal.
#[derive(Clone, Copy, Debug)]
enum AlarmField {
    Any,
    Is(u32),
}

impl AlarmField {
    fn matches(self, v: u32) -> bool {
        match self {
            AlarmField::Any => true,
            AlarmField::Is(x) => x == v,
        }
    }
}

/// The alarm as a pattern over the time of day.
#[derive(Clone, Copy, Debug)]
struct Alarm {
    hour: AlarmField,
    minute: AlarmField,
    second: AlarmField,
}

impl Alarm {
    /// The first time of day at or after `start` (in the same day) that matches.
    fn first_from(&self, start: u32) -> Option<u32> {
        let (h0, m0, s0) = (start / 3600, start / 60 % 60, start % 60);
        for h in h0..24 {
            if !self.hour.matches(h) {
                continue;
            }
            let m_from = if h == h0 { m0 } else { 0 };
            for m in m_from..60 {
                if !self.minute.matches(m) {
                    continue;
                }
                let s_from = if h == h0 && m == m0 { s0 } else { 0 };
                let s = match self.second {
                    AlarmField::Any => s_from,
                    AlarmField::Is(x) if x >= s_from => x,
                    AlarmField::Is(_) => continue,
                };
                return Some(h * 3600 + m * 60 + s);
            }
        }
        None
    }

    /// The first second after `secs` whose time of day matches.
    fn next_after(&self, secs: i64) -> Option<i64> {
        let day = secs.div_euclid(SECS_PER_DAY);
        let next = secs.rem_euclid(SECS_PER_DAY) + 1;
        if next < SECS_PER_DAY {
            // `next` is below 86,400 here, so it fits a u32.
            if let Some(t) = self.first_from(next as u32) {
                return Some(day * SECS_PER_DAY + i64::from(t));
            }
        }
        self.first_from(0)
            .map(|t| (day + 1) * SECS_PER_DAY + i64::from(t))
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (month 1-12).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    // Count from 0000-03-01 so that the leap day ends each 4/100/400-year cycle.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y.rem_euclid(400);
    let shifted_month = (month + 9) % 12; // March = 0
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian (year, month 1-12, day 1-31) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // Both are small by construction (1-31, 1-12).
    (year, month as u32, day as u32)
}

/// Ticks of the 32.768 kHz divider at divider time `d`.
fn ticks(d: i128) -> i128 {
    (d * TICKS_PER_SEC).div_euclid(NS_PER_SEC)
}

fn ceil_div(a: i128, b: i128) -> i128 {
    -((-a).div_euclid(b))
}

fn secs_of(d: i128) -> i64 {
    let secs = d.div_euclid(NS_PER_SEC);
    // Within the clamp the value fits an i64.
    secs.clamp(i128::from(-SECS_LIMIT), i128::from(SECS_LIMIT)) as i64
}

/// The MC146818 RTC with its 128 bytes of CMOS.
pub struct Mc146818 {
    cmos: [u8; CMOS_SIZE],
    index: u8,
    nmi_masked: bool,
    /// Divider time minus clock time, while the divider chain runs.
    offset: i128,
    /// Clock time up to which register C accounts for events.
    synced_to: Nanos,
    /// The time the board gave, and the clock time it gave it at: the reference against which
    /// [`Mc146818::guest_time_offset_secs`] measures the guest's changes.
    base_secs: i64,
    base_clock: Nanos,
    irq_level: bool,
    clock: Clock,
    timer: Timer,
    irq: Arc<dyn IrqLine>,
}

impl Mc146818 {
    /// An RTC at `base_time_unix_secs` (the host's wall clock, or `-rtc base=`), counting on
    /// `clock` and driving `irq8`. Register it at [`PORT_BASE`], [`PORT_COUNT`] ports.
    pub fn new_shared(
        clock: &Clock,
        irq8: Arc<dyn IrqLine>,
        base_time_unix_secs: i64,
    ) -> Arc<Mutex<Mc146818>> {
        Arc::new_cyclic(|me: &Weak<Mutex<Mc146818>>| {
            let timer = clock.timer(me.clone(), 0);
            Mutex::new(Mc146818::new(clock, timer, irq8, base_time_unix_secs))
        })
    }

    fn new(clock: &Clock, timer: Timer, irq: Arc<dyn IrqLine>, base: i64) -> Mc146818 {
        let clamped = base.clamp(-SECS_LIMIT, SECS_LIMIT);
        if clamped != base {
            warn!("rtc: base time {base} s is beyond the calendar's range; using {clamped} s");
        }
        let now = clock.now();
        let mut cmos = [0u8; CMOS_SIZE];
        // What SeaBIOS programs and QEMU resets to: 32.768 kHz, 1024 Hz rate, BCD, 24-hour.
        cmos[REG_A] = A_DIVIDER_32K | 0x06;
        cmos[REG_B] = B_24H;
        cmos[REG_D] = D_VRT;
        let mut rtc = Mc146818 {
            cmos,
            index: 0,
            nmi_masked: false,
            offset: i128::from(clamped) * NS_PER_SEC - i128::from(now),
            synced_to: now,
            base_secs: clamped,
            base_clock: now,
            irq_level: false,
            clock: clock.clone(),
            timer,
            irq,
        };
        rtc.latch_time(clamped);
        rtc
    }

    /// Whether the last write to port 0x70 masked NMI (bit 7).
    pub fn nmi_masked(&self) -> bool {
        self.nmi_masked
    }

    /// A system reset: the chip's RESET input clears the interrupt enables and flags (time,
    /// register A and the data mode are kept). Like QEMU, the shutdown status byte 0x0F is
    /// cleared unless it holds 0xFE (S3 resume), so a reset after a guest's warm-boot request
    /// cold-boots. A board that models a CPU-only reset (the 286 return-from-protected-mode
    /// trick) must not call this.
    pub fn reset(&mut self) {
        let now = self.clock.now();
        self.sync(now);
        self.cmos[REG_B] &= !(B_PIE | B_AIE | B_UIE | B_SQWE);
        self.cmos[REG_C] = 0;
        if self.cmos[layout::SHUTDOWN_STATUS] != 0xFE {
            self.cmos[layout::SHUTDOWN_STATUS] = 0;
        }
        self.refresh(now);
    }

    /// A CMOS byte as stored. The clock registers read here may lag the time: the guest's
    /// view comes through port 0x71.
    pub fn cmos(&self, index: usize) -> Option<u8> {
        self.cmos.get(index).copied()
    }

    /// Set a NVRAM byte (0x0E-0x7F except the century bytes). Writes inside 0x10-0x2D update
    /// the checksum at 0x2E/0x2F.
    pub fn set_cmos(&mut self, index: usize, value: u8) -> Result<(), CmosError> {
        if index >= CMOS_SIZE {
            return Err(CmosError::OutOfRange(index));
        }
        if index <= LAST_CLOCK_REGISTER || index == CENTURY || index == PS2_CENTURY {
            return Err(CmosError::ClockRegister(index));
        }
        self.cmos[index] = value;
        if (0x10..=0x2D).contains(&index) {
            self.update_checksum();
        }
        Ok(())
    }

    /// The standard checksum: the 16-bit sum of bytes 0x10-0x2D.
    pub fn checksum(&self) -> u16 {
        self.cmos[0x10..=0x2D]
            .iter()
            .map(|&b| u16::from(b))
            .fold(0, u16::wrapping_add)
    }

    /// Store [`Mc146818::checksum`] at 0x2E (high byte) and 0x2F (low byte).
    pub fn update_checksum(&mut self) {
        let [high, low] = self.checksum().to_be_bytes();
        self.cmos[layout::CHECKSUM_HIGH] = high;
        self.cmos[layout::CHECKSUM_LOW] = low;
    }

    fn set_word(&mut self, at: usize, value: u16) {
        let [low, high] = value.to_le_bytes();
        self.cmos[at] = low;
        self.cmos[at + 1] = high;
    }

    /// The memory-size bytes, as QEMU's `pc_cmos_init` writes them: base memory (0x15), memory
    /// above 1 MiB in KiB (0x17 and 0x30), above 16 MiB in 64 KiB units (0x34), which
    /// SeaBIOS sizes RAM from without fw_cfg, and above 4 GiB in 64 KiB units (0x5B-0x5D).
    pub fn set_memory_size(&mut self, below_4g_bytes: u64, above_4g_bytes: u64) {
        const KIB: u64 = 1024;
        const MIB: u64 = 1024 * KIB;
        let word = |v: u64| u16::try_from(v).unwrap_or(u16::MAX);
        self.set_word(layout::BASE_MEMORY, word((below_4g_bytes / KIB).min(640)));
        let extended = word(below_4g_bytes.saturating_sub(MIB) / KIB);
        self.set_word(layout::EXTENDED_MEMORY, extended);
        self.set_word(layout::EXTENDED_MEMORY_POST, extended);
        self.set_word(
            layout::MEMORY_ABOVE_16M,
            word(below_4g_bytes.saturating_sub(16 * MIB) / (64 * KIB)),
        );
        let mut high = above_4g_bytes / (64 * KIB);
        if high > 0xFF_FFFF {
            warn!("rtc: {above_4g_bytes} bytes above 4 GiB do not fit CMOS 0x5B-0x5D; saturating");
            high = 0xFF_FFFF;
        }
        let [b0, b1, b2, ..] = high.to_le_bytes();
        self.cmos[layout::MEMORY_ABOVE_4G..layout::MEMORY_ABOVE_4G + 3]
            .copy_from_slice(&[b0, b1, b2]);
        self.update_checksum();
    }

    /// The boot order SeaBIOS reads: first and second device in 0x3D, third in the high
    /// nibble of 0x38. At most three devices.
    pub fn set_boot_order(&mut self, order: &[BootDevice]) -> Result<(), CmosError> {
        if order.len() > 3 {
            return Err(CmosError::TooManyBootDevices(order.len()));
        }
        let nibble = |i: usize| order.get(i).map_or(0, |&d| d as u8);
        self.cmos[layout::BOOT_FLAG2] = (nibble(1) << 4) | nibble(0);
        self.cmos[layout::BOOT_FLAG1] = (nibble(2) << 4) | (self.cmos[layout::BOOT_FLAG1] & 0x0F);
        Ok(())
    }

    /// Whether SeaBIOS checks a floppy's boot signature (0x38 bit 0 clear; QEMU's default).
    pub fn set_floppy_signature_check(&mut self, check: bool) {
        self.cmos[layout::BOOT_FLAG1] = (self.cmos[layout::BOOT_FLAG1] & !1) | u8::from(!check);
    }

    /// The floppy drive types (0x10) and the floppy bits of the equipment byte.
    pub fn set_floppy_types(&mut self, drive_a: FloppyType, drive_b: FloppyType) {
        self.cmos[layout::FLOPPY_TYPES] = ((drive_a as u8) << 4) | drive_b as u8;
        let drives = [drive_a, drive_b]
            .iter()
            .filter(|&&t| t != FloppyType::None)
            .count();
        let floppy_bits = match drives {
            0 => 0x00,
            1 => 0x01,
            _ => 0x41,
        };
        self.cmos[layout::EQUIPMENT] = (self.cmos[layout::EQUIPMENT] & !0xC1) | floppy_bits;
        self.update_checksum();
    }

    /// The equipment byte's coprocessor (bit 1) and PS/2 mouse (bit 2) flags; QEMU sets both.
    pub fn set_equipment(&mut self, fpu: bool, ps2_mouse: bool) {
        let bits = (u8::from(fpu) << 1) | (u8::from(ps2_mouse) << 2);
        self.cmos[layout::EQUIPMENT] = (self.cmos[layout::EQUIPMENT] & !0x06) | bits;
        self.update_checksum();
    }

    /// Describe hard disk 0 or 1 (the first IDE channel) as QEMU does: type 47 with a
    /// user-defined parameter block, or nothing.
    pub fn set_hard_disk(
        &mut self,
        drive: usize,
        geometry: Option<DiskGeometry>,
    ) -> Result<(), CmosError> {
        let (type_at, params_at, nibble_mask) = match drive {
            0 => (layout::DISK0_TYPE, layout::DISK0_PARAMS, 0xF0),
            1 => (layout::DISK1_TYPE, layout::DISK1_PARAMS, 0x0F),
            _ => {
                return Err(CmosError::NoSuchDrive {
                    kind: "hard disk",
                    drive,
                    slots: 2,
                });
            }
        };
        let mut params = [0u8; 9];
        match geometry {
            Some(g) => {
                let [cyl_low, cyl_high] = g.cylinders.to_le_bytes();
                params = [
                    cyl_low,
                    cyl_high,
                    g.heads,
                    0xFF, // write precompensation: none
                    0xFF,
                    0xC0 | (u8::from(g.heads > 8) << 3), // control byte
                    cyl_low,                             // landing zone
                    cyl_high,
                    g.sectors,
                ];
                self.cmos[type_at] = 47;
                self.cmos[layout::DISK_DATA] |= nibble_mask;
            }
            None => {
                self.cmos[type_at] = 0;
                self.cmos[layout::DISK_DATA] &= !nibble_mask;
            }
        }
        self.cmos[params_at..params_at + params.len()].copy_from_slice(&params);
        self.update_checksum();
        Ok(())
    }

    /// The CHS translation of ATA drive 0-3 (two bits each in 0x39).
    pub fn set_disk_translation(
        &mut self,
        drive: usize,
        translation: DiskTranslation,
    ) -> Result<(), CmosError> {
        if drive >= 4 {
            return Err(CmosError::NoSuchDrive {
                kind: "ATA translation",
                drive,
                slots: 4,
            });
        }
        let shift = 2 * drive;
        let byte = &mut self.cmos[layout::DISK_TRANSLATION];
        *byte = (*byte & !(0x03 << shift)) | ((translation as u8) << shift);
        Ok(())
    }

    /// The CPU count SeaBIOS falls back on without fw_cfg (0x5F holds count - 1, saturating).
    pub fn set_cpu_count(&mut self, cpus: u32) {
        self.cmos[layout::SMP_COUNT] = u8::try_from(cpus.saturating_sub(1)).unwrap_or(u8::MAX);
    }

    /// The RTC's current time in seconds since the Unix epoch.
    pub fn guest_time_unix_secs(&self) -> i64 {
        let now = self.clock.now();
        if self.updating() {
            secs_of(self.divider_time(now))
        } else {
            self.register_secs()
        }
    }

    /// How far the guest has moved the RTC from the board's base time (plus elapsed virtual
    /// time), in whole seconds: what Xen calls the RTC time offset.
    pub fn guest_time_offset_secs(&self) -> i64 {
        let now = self.clock.now();
        let guest = if self.updating() {
            self.divider_time(now)
        } else {
            i128::from(self.register_secs()) * NS_PER_SEC
        };
        let reference =
            i128::from(self.base_secs) * NS_PER_SEC + i128::from(now) - i128::from(self.base_clock);
        secs_of(guest - reference)
    }

    // ---- time keeping ----

    fn chain_running(&self) -> bool {
        self.cmos[REG_A] & A_DIVIDER == A_DIVIDER_32K
    }

    fn updating(&self) -> bool {
        self.chain_running() && self.cmos[REG_B] & B_SET == 0
    }

    fn divider_time(&self, now: Nanos) -> i128 {
        i128::from(now) + self.offset
    }

    fn binary(&self) -> bool {
        self.cmos[REG_B] & B_BINARY != 0
    }

    fn hour_24(&self) -> bool {
        self.cmos[REG_B] & B_24H != 0
    }

    /// The periodic rate in divider ticks, or None when the rate select is 0.
    fn period_ticks(&self) -> Option<i128> {
        match self.cmos[REG_A] & A_RATE {
            0 => None,
            // On the 32.768 kHz time base rates 1 and 2 repeat rates 8 and 9.
            1 => Some(128),
            2 => Some(256),
            rate => Some(1 << (rate - 1)),
        }
    }

    /// Encode 0-99 in the current data mode.
    fn encode(&self, v: u32) -> u8 {
        let v = (v % 100) as u8;
        if self.binary() {
            v
        } else {
            ((v / 10) << 4) | (v % 10)
        }
    }

    /// Decode a register leniently (BCD nibbles above 9 count for what they weigh).
    fn decode(&self, b: u8) -> i64 {
        if self.binary() {
            i64::from(b)
        } else {
            i64::from(b >> 4) * 10 + i64::from(b & 0x0F)
        }
    }

    fn encode_hour(&self, h: u32) -> u8 {
        if self.hour_24() {
            self.encode(h)
        } else {
            let h12 = if h.is_multiple_of(12) { 12 } else { h % 12 };
            self.encode(h12) | if h >= 12 { HOUR_PM } else { 0 }
        }
    }

    /// The alarm byte's meaning: don't care, a value the register byte can take, or None if
    /// no time ever produces that byte (the chip compares bytes, so it never matches).
    fn alarm_field(&self, b: u8, limit: u32) -> Option<AlarmField> {
        if b & 0xC0 == 0xC0 {
            return Some(AlarmField::Any);
        }
        let v = u32::try_from(self.decode(b)).ok()?;
        (v < limit && self.encode(v) == b).then_some(AlarmField::Is(v))
    }

    fn alarm_hour(&self, b: u8) -> Option<AlarmField> {
        if b & 0xC0 == 0xC0 || self.hour_24() {
            return self.alarm_field(b, 24);
        }
        (0..24)
            .find(|&h| self.encode_hour(h) == b)
            .map(AlarmField::Is)
    }

    fn alarm(&self) -> Option<Alarm> {
        Some(Alarm {
            hour: self.alarm_hour(self.cmos[HOURS_ALARM])?,
            minute: self.alarm_field(self.cmos[MINUTES_ALARM], 60)?,
            second: self.alarm_field(self.cmos[SECONDS_ALARM], 60)?,
        })
    }

    /// Write the time `secs` into the clock registers in the current format.
    fn latch_time(&mut self, secs: i64) {
        let secs = secs.clamp(-SECS_LIMIT, SECS_LIMIT);
        let days = secs.div_euclid(SECS_PER_DAY);
        // Below 86,400: fits a u32.
        let tod = secs.rem_euclid(SECS_PER_DAY) as u32;
        let (year, month, day) = civil_from_days(days);
        // 1970-01-01 was a Thursday; the register counts Sunday as 1.
        let weekday = (days + 4).rem_euclid(7) as u32 + 1;
        self.cmos[SECONDS] = self.encode(tod % 60);
        self.cmos[MINUTES] = self.encode(tod / 60 % 60);
        self.cmos[HOURS] = self.encode_hour(tod / 3600);
        self.cmos[DAY_OF_WEEK] = self.encode(weekday);
        self.cmos[DAY_OF_MONTH] = self.encode(day);
        self.cmos[MONTH] = self.encode(month);
        self.cmos[YEAR] = self.encode(year.rem_euclid(100) as u32);
        let century = year.div_euclid(100);
        self.cmos[CENTURY] = if self.binary() {
            century.rem_euclid(256) as u8
        } else {
            self.encode(century.rem_euclid(100) as u32)
        };
    }

    /// Bring the clock registers up to date while the clock updates.
    fn latch_now(&mut self, now: Nanos) {
        if self.updating() {
            self.latch_time(secs_of(self.divider_time(now)));
        }
    }

    /// The time the clock registers hold, normalising out-of-range values.
    fn register_secs(&self) -> i64 {
        let c = &self.cmos;
        let second = self.decode(c[SECONDS]);
        let minute = self.decode(c[MINUTES]);
        let hour_value = self.decode(c[HOURS] & !HOUR_PM);
        let hour = if self.hour_24() {
            hour_value
        } else {
            hour_value % 12 + if c[HOURS] & HOUR_PM != 0 { 12 } else { 0 }
        };
        let day = self.decode(c[DAY_OF_MONTH]);
        let month = self.decode(c[MONTH]);
        let year = self.decode(c[CENTURY]) * 100 + self.decode(c[YEAR]);
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
            debug!(
                "rtc: normalising out-of-range date/time registers {:02x?}",
                &c[..10]
            );
        }
        let months = year * 12 + month - 1;
        let days = days_from_civil(months.div_euclid(12), months.rem_euclid(12) + 1, 1) + day - 1;
        days * SECS_PER_DAY + hour * 3600 + minute * 60 + second
    }

    /// Restart divider time from the clock registers with sub-second `phase`.
    fn set_from_registers(&mut self, now: Nanos, phase: i128) {
        let secs = self.register_secs().clamp(-SECS_LIMIT, SECS_LIMIT);
        self.offset = i128::from(secs) * NS_PER_SEC + phase - i128::from(now);
    }

    fn update_in_progress(&self, now: Nanos) -> bool {
        self.updating()
            && ticks(self.divider_time(now)).rem_euclid(TICKS_PER_SEC) >= TICKS_PER_SEC - UIP_TICKS
    }

    // ---- interrupts ----

    /// Account in register C for every event between the last sync and `now`. The state
    /// that decides them has not changed in between: every change syncs first.
    fn sync(&mut self, now: Nanos) {
        if now <= self.synced_to {
            return;
        }
        let from = self.synced_to;
        self.synced_to = now;
        if !self.chain_running() {
            return;
        }
        let (d0, d1) = (self.divider_time(from), self.divider_time(now));
        let mut flags = 0;
        if let Some(p) = self.period_ticks()
            && ticks(d1).div_euclid(p) > ticks(d0).div_euclid(p)
        {
            flags |= C_PF;
        }
        if self.cmos[REG_B] & B_SET == 0 {
            let (s0, s1) = (secs_of(d0), secs_of(d1));
            if s1 > s0 {
                flags |= C_UF;
                if self
                    .alarm()
                    .and_then(|a| a.next_after(s0))
                    .is_some_and(|t| t <= s1)
                {
                    flags |= C_AF;
                }
            }
        }
        self.cmos[REG_C] |= flags;
    }

    fn irq_pending(&self) -> bool {
        self.cmos[REG_C] & self.cmos[REG_B] & C_FLAGS != 0
    }

    /// Drive IRQ 8 from IRQF and arm the timer for the next enabled event, if IRQF is clear.
    fn refresh(&mut self, now: Nanos) {
        let pending = self.irq_pending();
        if pending != self.irq_level {
            self.irq_level = pending;
            self.irq.set_level(pending);
        }
        match if pending { None } else { self.next_event(now) } {
            Some(deadline) => self.timer.arm(deadline),
            None => self.timer.cancel(),
        }
    }

    /// Clock time of the next event whose interrupt is enabled.
    fn next_event(&self, now: Nanos) -> Option<Nanos> {
        if !self.chain_running() {
            return None;
        }
        let b = self.cmos[REG_B];
        let d = self.divider_time(now);
        let mut next: Option<i128> = None;
        let consider = |next: &mut Option<i128>, t: i128| {
            *next = Some(next.map_or(t, |n| n.min(t)));
        };
        if b & B_PIE != 0
            && let Some(p) = self.period_ticks()
        {
            let tick = (ticks(d).div_euclid(p) + 1) * p;
            consider(&mut next, ceil_div(tick * NS_PER_SEC, TICKS_PER_SEC));
        }
        if b & B_SET == 0 {
            let next_second = (d.div_euclid(NS_PER_SEC) + 1) * NS_PER_SEC;
            if b & B_UIE != 0 {
                consider(&mut next, next_second);
            }
            // An alarm lands on an update, never before the next one: skip the search when
            // something else comes first anyway.
            if b & B_AIE != 0
                && next.is_none_or(|n| n > next_second)
                && let Some(t) = self.alarm().and_then(|a| a.next_after(secs_of(d)))
            {
                consider(&mut next, i128::from(t) * NS_PER_SEC);
            }
        }
        u64::try_from(next? - self.offset).ok()
    }

    // ---- guest accesses ----

    fn read_data(&mut self) -> u8 {
        let now = self.clock.now();
        let index = usize::from(self.index);
        match index {
            SECONDS | MINUTES | HOURS | DAY_OF_WEEK | DAY_OF_MONTH | MONTH | YEAR | CENTURY
            | PS2_CENTURY => {
                self.latch_now(now);
                self.cmos[if index == PS2_CENTURY { CENTURY } else { index }]
            }
            REG_A => {
                let uip = if self.update_in_progress(now) {
                    A_UIP
                } else {
                    0
                };
                self.cmos[REG_A] | uip
            }
            REG_C => {
                self.sync(now);
                let irqf = if self.irq_pending() { C_IRQF } else { 0 };
                let value = self.cmos[REG_C] | irqf;
                self.cmos[REG_C] = 0;
                self.refresh(now);
                value
            }
            REG_D => D_VRT,
            _ => self.cmos.get(index).copied().unwrap_or(0xFF),
        }
    }

    fn write_data(&mut self, value: u8) {
        let now = self.clock.now();
        let index = usize::from(self.index);
        match index {
            SECONDS_ALARM | MINUTES_ALARM | HOURS_ALARM => {
                self.sync(now);
                self.cmos[index] = value;
                self.refresh(now);
            }
            SECONDS | MINUTES | HOURS | DAY_OF_WEEK | DAY_OF_MONTH | MONTH | YEAR | CENTURY
            | PS2_CENTURY => {
                let index = if index == PS2_CENTURY { CENTURY } else { index };
                if self.updating() {
                    // A counter written while the clock runs: the others keep counting and
                    // the divider keeps its phase.
                    self.sync(now);
                    self.latch_now(now);
                    self.cmos[index] = value;
                    let phase = self.divider_time(now).rem_euclid(NS_PER_SEC);
                    self.set_from_registers(now, phase);
                    self.refresh(now);
                } else {
                    self.cmos[index] = value;
                }
            }
            // UIP is read-only.
            REG_A => self.write_control(now, value & !A_UIP, self.cmos[REG_B]),
            REG_B => {
                // Setting SET aborts updates and clears UIE (DS12887).
                let b = if value & B_SET != 0 {
                    value & !B_UIE
                } else {
                    value
                };
                self.write_control(now, self.cmos[REG_A], b);
            }
            REG_C | REG_D => {
                debug!("rtc: write {value:#04x} to read-only register {index:#x} ignored")
            }
            _ => {
                if let Some(byte) = self.cmos.get_mut(index) {
                    *byte = value;
                }
            }
        }
    }

    /// A write to register A or B: the divider and SET decide whether the clock runs.
    fn write_control(&mut self, now: Nanos, a: u8, b: u8) {
        self.sync(now);
        let was_running = self.chain_running();
        let was_updating = self.updating();
        let phase = self.divider_time(now).rem_euclid(NS_PER_SEC);
        // Leave the registers holding the time, in the format it was kept in, before the
        // format or the running state changes.
        self.latch_now(now);
        self.cmos[REG_A] = a;
        self.cmos[REG_B] = b;
        if self.chain_running() {
            if !was_running {
                // Out of reset or oscillator start: the first update comes half a second on.
                self.set_from_registers(now, HALF_SECOND);
            } else if !was_updating && self.updating() {
                self.set_from_registers(now, phase);
            }
        }
        self.refresh(now);
    }
}

impl BusDevice for Mc146818 {
    fn read(&mut self, at: BusAddress, data: &mut [u8]) {
        let Some(byte) = data.first_mut() else {
            return;
        };
        // The index port is write-only on the PIIX; QEMU reads it as 0xFF.
        *byte = if at.offset & 1 == 0 {
            0xFF
        } else {
            self.read_data()
        };
    }

    fn write(&mut self, at: BusAddress, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        if at.offset & 1 == 0 {
            self.nmi_masked = value & 0x80 != 0;
            self.index = value & 0x7F;
        } else {
            self.write_data(value);
        }
    }

    fn access_sizes(&self) -> AccessSizes {
        AccessSizes::BYTE
    }
}

impl TimerTarget for Mc146818 {
    fn timer_expired(&mut self, _token: u32, now: Nanos) {
        self.sync(now);
        self.refresh(now);
    }
}

impl Snapshot for Mc146818 {
    fn snapshot_id(&self) -> &'static str {
        "mc146818"
    }

    fn snapshot_version(&self) -> u16 {
        1
    }

    fn save_state(&self, w: &mut StateWriter) {
        w.bytes(&self.cmos);
        w.u8(self.index);
        w.bool(self.nmi_masked);
        w.i64((self.offset >> 64) as i64);
        w.u64(self.offset as u64);
        w.u64(self.synced_to);
        w.i64(self.base_secs);
        w.u64(self.base_clock);
    }

    fn restore_state(
        &mut self,
        r: &mut StateReader<'_>,
        _version: u16,
    ) -> Result<(), SnapshotError> {
        let mut cmos = [0u8; CMOS_SIZE];
        r.bytes(&mut cmos)?;
        let index = r.u8_below(0x80)?;
        let nmi_masked = r.bool()?;
        let offset_high = r.i64()?;
        let offset_low = r.u64()?;
        let offset = (i128::from(offset_high) << 64) | i128::from(offset_low);
        let synced_to = r.u64()?;
        let base_secs = r.i64()?;
        let base_clock = r.u64()?;
        if cmos[REG_A] & A_UIP != 0 {
            return Err(SnapshotError::Invalid(
                "register A holds UIP, which is never stored".into(),
            ));
        }
        if cmos[REG_C] & !C_FLAGS != 0 {
            return Err(SnapshotError::Invalid(format!(
                "register C holds {:#04x}: only PF, AF and UF are stored",
                cmos[REG_C]
            )));
        }
        if cmos[REG_D] != D_VRT {
            return Err(SnapshotError::Invalid(format!(
                "register D holds {:#04x}, not VRT",
                cmos[REG_D]
            )));
        }
        if !(-OFFSET_LIMIT..=OFFSET_LIMIT).contains(&offset) {
            return Err(SnapshotError::Invalid(format!(
                "divider offset {offset} ns is out of range"
            )));
        }
        if !(-SECS_LIMIT..=SECS_LIMIT).contains(&base_secs) {
            return Err(SnapshotError::Invalid(format!(
                "base time {base_secs} s is out of range"
            )));
        }
        self.cmos = cmos;
        self.index = index;
        self.nmi_masked = nmi_masked;
        self.offset = offset;
        self.synced_to = synced_to;
        self.base_secs = base_secs;
        self.base_clock = base_clock;
        self.irq_level = self.irq_pending();
        self.irq.set_level(self.irq_level);
        let now = self.clock.now();
        self.refresh(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{Bus, BusKind, SharedDevice};
    use crate::clock::NANOS_PER_SEC;
    use crate::irq::LatchedLine;
    use crate::snapshot;

    const SEC: Nanos = NANOS_PER_SEC;
    const MS: Nanos = 1_000_000;
    /// 2026-11-24 16:10:45 UTC, a Tuesday.
    const NOV_24_2026: i64 = 1_795_536_645;

    struct Rig {
        clock: Clock,
        line: Arc<LatchedLine>,
        rtc: Arc<Mutex<Mc146818>>,
        bus: Bus,
    }

    fn rig_at(clock_start: Nanos, base: i64) -> Rig {
        let clock = Clock::new(clock_start);
        let line = Arc::new(LatchedLine::new());
        let rtc = Mc146818::new_shared(&clock, line.clone(), base);
        let bus = Bus::new(BusKind::Pio);
        bus.insert("rtc", PORT_BASE, PORT_COUNT, rtc.clone() as SharedDevice)
            .unwrap();
        Rig {
            clock,
            line,
            rtc,
            bus,
        }
    }

    fn rig(base: i64) -> Rig {
        rig_at(0, base)
    }

    impl Rig {
        fn read(&self, reg: u8) -> u8 {
            self.bus.write_value(0x70, 1, u64::from(reg));
            self.bus.read_value(0x71, 1) as u8
        }

        fn write(&self, reg: u8, value: u8) {
            self.bus.write_value(0x70, 1, u64::from(reg));
            self.bus.write_value(0x71, 1, u64::from(value));
        }

        fn at(&self, t: Nanos) {
            self.clock.advance_to(t);
        }

        /// Seconds, minutes, hours, weekday, day, month, year, century.
        fn time(&self) -> [u8; 8] {
            [0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32].map(|r| self.read(r))
        }

        /// Play a guest whose IRQ 8 handler reads register C, until `until`; the times at
        /// which the interrupt was taken.
        fn serve_until(&self, until: Nanos) -> Vec<Nanos> {
            let mut taken = Vec::new();
            loop {
                let next = self.clock.next_deadline().filter(|&d| d <= until);
                self.clock.advance_to(next.unwrap_or(until));
                if self.line.level() {
                    taken.push(self.clock.now());
                    assert_ne!(self.read(0x0C) & C_IRQF, 0, "the line is up without IRQF");
                    assert!(!self.line.level(), "reading register C lowers IRQ 8");
                }
                if next.is_none() {
                    return taken;
                }
            }
        }
    }

    #[test]
    fn known_date_reads_in_bcd_with_weekday_and_century() {
        let r = rig(NOV_24_2026);
        assert_eq!(r.time(), [0x45, 0x10, 0x16, 0x03, 0x24, 0x11, 0x26, 0x20]);
        assert_eq!(r.read(0x37), 0x20, "the PS/2 century byte aliases 0x32");
        assert_eq!(r.read(0x0A), 0x26);
        assert_eq!(r.read(0x0B), 0x02);
        assert_eq!(r.read(0x0D), 0x80);
        assert_eq!(r.rtc.lock().unwrap().guest_time_unix_secs(), NOV_24_2026);
    }

    #[test]
    fn binary_mode_reads_plain_numbers() {
        let r = rig(NOV_24_2026);
        r.write(0x0B, B_BINARY | B_24H);
        assert_eq!(r.time(), [45, 10, 16, 3, 24, 11, 26, 20]);
        r.at(15 * SEC);
        assert_eq!(r.time(), [0, 11, 16, 3, 24, 11, 26, 20]);
    }

    #[test]
    fn twelve_hour_mode_sets_pm_in_bit_7() {
        let midnight = NOV_24_2026 - (16 * 3600 + 10 * 60 + 45);
        let cases = [
            (0, 0x12, 12),                    // 12 AM
            (3600, 0x01, 1),                  // 1 AM
            (12 * 3600 - 1, 0x11, 11),        // 11:59:59 AM
            (12 * 3600, 0x92, 0x80 | 12),     // 12 PM
            (16 * 3600, 0x84, 0x80 | 4),      // 4 PM
            (24 * 3600 - 1, 0x91, 0x80 | 11), // 11:59:59 PM
        ];
        for (tod, bcd, binary) in cases {
            let r = rig(midnight + tod);
            r.write(0x0B, 0);
            assert_eq!(r.read(0x04), bcd, "BCD hour at {tod} s");
            r.write(0x0B, B_BINARY);
            assert_eq!(r.read(0x04), binary, "binary hour at {tod} s");
            r.write(0x0B, B_24H);
            assert_eq!(
                r.read(0x04),
                r.rtc.lock().unwrap().encode(tod as u32 / 3600)
            );
        }
        // 11:59:59 AM rolls to 12 PM, 11:59:59 PM to 12 AM the next day.
        let r = rig(midnight + 12 * 3600 - 1);
        r.write(0x0B, 0);
        r.at(SEC);
        assert_eq!(r.read(0x04), 0x92);
        let r = rig(midnight + 24 * 3600 - 1);
        r.write(0x0B, 0);
        r.at(SEC);
        assert_eq!(
            (r.read(0x04), r.read(0x07), r.read(0x06)),
            (0x12, 0x25, 0x04)
        );
    }

    #[test]
    fn twelve_hour_time_written_under_set_is_taken_as_pm() {
        let r = rig(NOV_24_2026);
        r.write(0x0B, B_SET);
        r.write(0x04, 0x87); // 7 PM
        r.write(0x0B, 0);
        assert_eq!(r.read(0x04), 0x87);
        r.write(0x0B, B_24H);
        assert_eq!(r.read(0x04), 0x19);
    }

    fn after(base: i64, secs: u64) -> [u8; 8] {
        let r = rig(base);
        r.at(secs * SEC);
        r.time()
    }

    #[test]
    fn rollovers_of_month_leap_day_year_and_century() {
        // 2024-02-28 23:59:59, a Wednesday.
        assert_eq!(
            after(1_709_164_799, 1),
            [0x00, 0x00, 0x00, 0x05, 0x29, 0x02, 0x24, 0x20]
        );
        assert_eq!(
            after(1_709_164_799, 86_401),
            [0x00, 0x00, 0x00, 0x06, 0x01, 0x03, 0x24, 0x20]
        );
        // 2026-01-31 23:59:59 → Sunday 2026-02-01.
        assert_eq!(
            after(1_769_903_999, 1),
            [0x00, 0x00, 0x00, 0x01, 0x01, 0x02, 0x26, 0x20]
        );
        // 2026-12-31 23:59:59 → Friday 2027-01-01.
        assert_eq!(
            after(1_798_761_599, 1),
            [0x00, 0x00, 0x00, 0x06, 0x01, 0x01, 0x27, 0x20]
        );
        // 2099-12-31 23:59:59 → Friday 2100-01-01: the century register moves.
        assert_eq!(
            after(4_102_444_799, 1),
            [0x00, 0x00, 0x00, 0x06, 0x01, 0x01, 0x00, 0x21]
        );
        // 2100 is not a leap year: 2100-02-28 23:59:59 → Monday 2100-03-01.
        assert_eq!(
            after(4_107_542_399, 1),
            [0x00, 0x00, 0x00, 0x02, 0x01, 0x03, 0x00, 0x21]
        );
    }

    #[test]
    fn calendar_round_trips_over_many_days() {
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, i64::from(m), i64::from(d)), days);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn set_freezes_time_and_written_time_runs_with_the_old_phase() {
        let r = rig(NOV_24_2026);
        r.write(0x0B, B_UIE | B_24H);
        r.at(2300 * MS);
        r.write(0x0B, B_SET | B_UIE | B_24H);
        assert_eq!(r.read(0x0B), B_SET | B_24H, "setting SET clears UIE");
        assert_eq!(r.read(0x00), 0x47);
        r.at(5999 * MS);
        assert_eq!(r.read(0x00), 0x47, "no updates while SET");
        assert_eq!(r.read(0x0A) & A_UIP, 0, "no UIP while SET");
        r.at(5300 * MS);
        for (reg, v) in [
            (0x00, 0x00),
            (0x02, 0x00),
            (0x04, 0x08),
            (0x07, 0x15),
            (0x08, 0x06),
            (0x09, 0x30),
        ] {
            r.write(reg, v);
        }
        r.at(6300 * MS);
        r.write(0x0B, B_24H);
        // Saturday 2030-06-15 08:00:00; the divider kept counting, so the next update
        // comes at the next whole second of the old phase, 7.0 s.
        assert_eq!(r.time(), [0x00, 0x00, 0x08, 0x07, 0x15, 0x06, 0x30, 0x20]);
        r.at(7 * SEC - 1);
        assert_eq!(r.read(0x00), 0x00);
        r.at(7 * SEC);
        assert_eq!(r.read(0x00), 0x01);
        let rtc = r.rtc.lock().unwrap();
        assert_eq!(rtc.guest_time_unix_secs(), 1_907_740_801);
        assert_eq!(
            rtc.guest_time_offset_secs(),
            1_907_740_801 - (NOV_24_2026 + 7)
        );
    }

    #[test]
    fn writing_a_counter_while_running_keeps_the_others_counting() {
        let r = rig(NOV_24_2026);
        r.at(2500 * MS);
        r.write(0x02, 0x30); // minutes
        assert_eq!(r.time()[..3], [0x47, 0x30, 0x16]);
        r.at(3 * SEC);
        assert_eq!(
            r.time()[..3],
            [0x48, 0x30, 0x16],
            "phase kept: update at 3.0 s"
        );
    }

    #[test]
    fn uip_is_set_only_in_the_244us_before_each_update() {
        let r = rig(NOV_24_2026);
        r.at(SEC - 245_000);
        assert_eq!(r.read(0x0A), 0x26);
        r.at(SEC - 244_000);
        assert_eq!(r.read(0x0A), 0x26 | A_UIP);
        assert_eq!(r.read(0x00), 0x45, "registers still hold the old second");
        r.at(SEC - 1);
        assert_eq!(r.read(0x0A) & A_UIP, A_UIP);
        r.at(SEC);
        assert_eq!(r.read(0x0A), 0x26);
        assert_eq!(r.read(0x00), 0x46);
        r.at(2 * SEC - 244_000);
        assert_eq!(r.read(0x0A) & A_UIP, A_UIP);
        r.write(0x0A, 0xA6);
        r.at(2 * SEC + MS);
        assert_eq!(r.read(0x0A), 0x26, "UIP is read-only");
    }

    #[test]
    fn periodic_interrupt_counts_per_virtual_second_for_every_rate() {
        let expected = [
            256, 128, 8192, 4096, 2048, 1024, 512, 256, 128, 64, 32, 16, 8, 4, 2,
        ];
        for (rate, want) in (1u8..=15).zip(expected) {
            let r = rig(NOV_24_2026);
            r.write(0x0A, A_DIVIDER_32K | rate);
            r.write(0x0B, B_PIE | B_24H);
            let taken = r.serve_until(SEC);
            assert_eq!(taken.len(), want, "rate {rate}");
            assert_eq!(
                taken.last(),
                Some(&SEC),
                "rate {rate}: periods tile the second"
            );
        }
    }

    #[test]
    fn periodic_rate_6_is_1024_hz_and_rate_15_is_2_hz() {
        let r = rig(NOV_24_2026);
        r.write(0x0B, B_PIE | B_24H);
        let taken = r.serve_until(SEC);
        assert_eq!(taken.len(), 1024);
        assert_eq!(taken[0], 976_563, "1/1024 s, rounded up to the next ns");
        for pair in taken.windows(2) {
            assert!((976_562..=976_563).contains(&(pair[1] - pair[0])));
        }
        let r = rig(NOV_24_2026);
        r.write(0x0A, 0x2F);
        r.write(0x0B, B_PIE | B_24H);
        assert_eq!(r.serve_until(SEC), vec![SEC / 2, SEC]);
    }

    #[test]
    fn pf_without_pie_needs_no_timer_and_raises_when_enabled() {
        let r = rig(NOV_24_2026);
        r.write(0x0A, 0x26);
        assert_eq!(
            r.clock.next_deadline(),
            None,
            "no interrupt enabled, no timer"
        );
        r.at(10 * MS);
        assert_eq!(
            r.read(0x0C),
            C_PF,
            "PF is set at the rate regardless of PIE"
        );
        assert_eq!(r.read(0x0C), 0);
        r.at(20 * MS);
        assert_eq!(r.line.take_rising_edges(), 0);
        r.write(0x0B, B_PIE | B_24H);
        assert!(
            r.line.level(),
            "enabling PIE with PF set raises IRQ 8 at once"
        );
        assert_eq!(r.read(0x0C), C_IRQF | C_PF);
        assert!(!r.line.level());
    }

    #[test]
    fn unacknowledged_interrupt_stops_the_timer() {
        let r = rig(NOV_24_2026);
        r.write(0x0A, 0x23); // 8192 Hz
        r.write(0x0B, B_PIE | B_24H);
        r.at(SEC);
        assert_eq!(
            r.line.take_rising_edges(),
            1,
            "one edge until register C is read"
        );
        assert!(r.line.level());
        assert_eq!(r.clock.next_deadline(), None);
        assert_eq!(r.read(0x0C), C_IRQF | C_PF | C_UF);
        assert!(r.clock.next_deadline().is_some());
    }

    #[test]
    fn update_ended_interrupt_once_per_second() {
        let r = rig(NOV_24_2026);
        r.write(0x0A, A_DIVIDER_32K); // no periodic flag to muddy register C
        r.write(0x0B, B_UIE | B_24H);
        assert_eq!(r.serve_until(3500 * MS), vec![SEC, 2 * SEC, 3 * SEC]);
        r.at(4 * SEC - 1);
        assert!(!r.line.level());
        r.at(4 * SEC);
        assert!(r.line.level());
        assert_eq!(r.read(0x0C), C_IRQF | C_UF);
        assert_eq!(r.read(0x00), 0x49);
    }

    #[test]
    fn alarm_fires_when_the_time_matches() {
        let r = rig(NOV_24_2026);
        r.write(0x0A, A_DIVIDER_32K);
        r.write(0x01, 0x50);
        r.write(0x03, 0x10);
        r.write(0x05, 0x16);
        r.write(0x0B, B_AIE | B_24H);
        r.at(5 * SEC - 1);
        assert!(!r.line.level());
        r.at(5 * SEC);
        assert!(r.line.level());
        assert_eq!(r.read(0x0C), C_IRQF | C_AF | C_UF);
        // And again the next day, not before.
        assert_eq!(
            r.serve_until(5 * SEC + 86_400 * SEC),
            vec![5 * SEC + 86_400 * SEC]
        );
    }

    #[test]
    fn alarm_dont_care_values_repeat_it() {
        // Hours and minutes don't care, seconds 00: every minute.
        let r = rig(NOV_24_2026);
        r.write(0x0A, A_DIVIDER_32K);
        r.write(0x01, 0x00);
        r.write(0x03, 0xFF);
        r.write(0x05, 0xC0);
        r.write(0x0B, B_AIE | B_24H);
        assert_eq!(
            r.serve_until(140 * SEC),
            vec![15 * SEC, 75 * SEC, 135 * SEC]
        );
        // All three don't care: every second.
        let r = rig(NOV_24_2026);
        r.write(0x01, 0xC5);
        r.write(0x03, 0xD0);
        r.write(0x05, 0xFF);
        r.write(0x0B, B_AIE | B_24H);
        assert_eq!(r.serve_until(3500 * MS), vec![SEC, 2 * SEC, 3 * SEC]);
        // Hour don't care, minute 11, second 00: once an hour.
        let r = rig(NOV_24_2026);
        r.write(0x01, 0x00);
        r.write(0x03, 0x11);
        r.write(0x05, 0xC0);
        r.write(0x0B, B_AIE | B_24H);
        assert_eq!(r.serve_until(4000 * SEC), vec![15 * SEC, 3615 * SEC]);
    }

    #[test]
    fn alarm_in_12_hour_mode_and_impossible_alarms() {
        let r = rig(NOV_24_2026);
        r.write(0x0B, 0);
        r.write(0x01, 0x50);
        r.write(0x03, 0x10);
        r.write(0x05, 0x84); // 4 PM
        r.write(0x0B, B_AIE);
        assert_eq!(r.serve_until(10 * SEC), vec![5 * SEC]);
        let r = rig(NOV_24_2026);
        r.write(0x0B, 0);
        r.write(0x01, 0x50);
        r.write(0x03, 0x10);
        r.write(0x05, 0x04); // 4 AM
        r.write(0x0B, B_AIE);
        assert_eq!(r.serve_until(10 * SEC), Vec::<Nanos>::new());
        // Second 0x60 is no BCD second: the chip's byte compare never matches.
        let r = rig(NOV_24_2026);
        r.write(0x01, 0x60);
        r.write(0x03, 0xC0);
        r.write(0x05, 0xC0);
        r.write(0x0B, B_AIE | B_24H);
        assert_eq!(r.clock.next_deadline(), None);
        assert_eq!(r.serve_until(100 * SEC), Vec::<Nanos>::new());
    }

    #[test]
    fn alarm_flag_is_set_without_aie() {
        let r = rig(NOV_24_2026);
        r.write(0x0A, A_DIVIDER_32K);
        r.write(0x01, 0x50);
        r.write(0x03, 0x10);
        r.write(0x05, 0x16);
        r.at(20 * SEC);
        assert_eq!(r.read(0x0C), C_AF | C_UF);
        r.at(30 * SEC);
        assert_eq!(r.read(0x0C), C_UF);
        assert_eq!(r.line.take_rising_edges(), 0);
    }

    #[test]
    fn reading_register_c_clears_it_and_lowers_irq() {
        let r = rig(NOV_24_2026);
        r.write(0x0B, B_UIE | B_24H);
        r.at(SEC);
        assert!(r.line.level());
        assert_eq!(r.read(0x0C), C_IRQF | C_PF | C_UF);
        assert!(!r.line.level());
        assert_eq!(r.read(0x0C), 0);
        r.write(0x0C, 0xFF);
        assert_eq!(r.read(0x0C), 0, "register C is read-only");
        r.write(0x0D, 0x00);
        assert_eq!(r.read(0x0D), 0x80, "register D is read-only, VRT set");
    }

    #[test]
    fn divider_reset_holds_time_and_restarts_half_a_second_later() {
        let r = rig(NOV_24_2026);
        r.write(0x0B, B_UIE | B_24H);
        r.at(200 * MS);
        assert_eq!(r.read(0x0C), C_PF);
        r.write(0x0A, 0x76);
        assert_eq!(r.clock.next_deadline(), None, "no interrupts in reset");
        r.at(10_200 * MS);
        assert_eq!(r.time()[..3], [0x45, 0x10, 0x16]);
        assert_eq!(r.read(0x0C), 0, "no flags while the divider is held");
        assert_eq!(r.line.take_rising_edges(), 0);
        r.write(0x0A, 0x26);
        r.at(10_700 * MS - 1);
        assert_eq!(r.read(0x00), 0x45);
        assert!(!r.line.level());
        r.at(10_700 * MS);
        assert_eq!(r.read(0x00), 0x46);
        assert!(r.line.level());
    }

    #[test]
    fn stopped_oscillator_holds_time() {
        let r = rig(NOV_24_2026);
        r.write(0x0A, 0x06); // DV = 000: not the 32.768 kHz pattern
        r.at(5 * SEC);
        assert_eq!(r.read(0x00), 0x45);
        assert_eq!(r.read(0x0A) & A_UIP, 0);
        r.write(0x0A, 0x26);
        r.at(5500 * MS);
        assert_eq!(r.read(0x00), 0x46);
    }

    #[test]
    fn index_port_masks_nmi_and_reads_as_ones() {
        let r = rig(NOV_24_2026);
        assert!(!r.rtc.lock().unwrap().nmi_masked());
        r.bus.write_value(0x70, 1, 0x8F);
        assert!(r.rtc.lock().unwrap().nmi_masked());
        r.bus.write_value(0x71, 1, 0x5A);
        r.bus.write_value(0x70, 1, 0x0F);
        assert!(!r.rtc.lock().unwrap().nmi_masked());
        assert_eq!(
            r.bus.read_value(0x71, 1),
            0x5A,
            "bit 7 is not part of the index"
        );
        assert_eq!(r.bus.read_value(0x70, 1), 0xFF);
    }

    #[test]
    fn nvram_reads_back_what_was_written() {
        let r = rig(NOV_24_2026);
        let nvram = (0x0Eu8..0x80).filter(|&i| i != 0x32 && i != 0x37);
        for i in nvram.clone() {
            r.write(i, i ^ 0x5A);
        }
        for i in nvram {
            assert_eq!(r.read(i), i ^ 0x5A, "byte {i:#x}");
        }
        let mut rtc = r.rtc.lock().unwrap();
        assert_eq!(rtc.cmos(0x40), Some(0x40 ^ 0x5A));
        assert_eq!(rtc.cmos(0x80), None);
        assert_eq!(rtc.set_cmos(0x80, 0), Err(CmosError::OutOfRange(0x80)));
        assert_eq!(rtc.set_cmos(0x0B, 0), Err(CmosError::ClockRegister(0x0B)));
        assert_eq!(rtc.set_cmos(0x32, 0), Err(CmosError::ClockRegister(0x32)));
        rtc.set_cmos(0x45, 0x12).unwrap();
        assert_eq!(rtc.cmos(0x45), Some(0x12));
    }

    fn checksum_of(r: &Rig) -> u16 {
        (0x10..=0x2D).map(|i| u16::from(r.read(i))).sum()
    }

    #[test]
    fn memory_size_bytes_and_checksum() {
        let r = rig(NOV_24_2026);
        r.rtc.lock().unwrap().set_memory_size(32 << 20, 0);
        let bytes = |at: u8, n: u8| (at..at + n).map(|i| r.read(i)).collect::<Vec<_>>();
        assert_eq!(bytes(0x15, 4), [0x80, 0x02, 0x00, 0x7C]);
        assert_eq!(bytes(0x30, 2), [0x00, 0x7C]);
        assert_eq!(bytes(0x34, 2), [0x00, 0x01]);
        assert_eq!(bytes(0x5B, 3), [0, 0, 0]);
        assert_eq!(checksum_of(&r), 0x00FE);
        assert_eq!(bytes(0x2E, 2), [0x00, 0xFE]);

        r.rtc.lock().unwrap().set_memory_size(128 << 20, 0);
        assert_eq!(bytes(0x17, 2), [0xFF, 0xFF], "64 MiB of KiB saturates");
        assert_eq!(bytes(0x34, 2), [0x00, 0x07]);
        assert_eq!(
            u16::from_be_bytes([r.read(0x2E), r.read(0x2F)]),
            checksum_of(&r)
        );

        r.rtc.lock().unwrap().set_memory_size(0xE000_0000, 4 << 30);
        assert_eq!(bytes(0x17, 2), [0xFF, 0xFF]);
        assert_eq!(bytes(0x34, 2), [0x00, 0xDF]);
        assert_eq!(bytes(0x5B, 3), [0x00, 0x00, 0x01]);
        assert_eq!(
            u16::from_be_bytes([r.read(0x2E), r.read(0x2F)]),
            checksum_of(&r)
        );

        r.rtc.lock().unwrap().set_memory_size(512 << 10, u64::MAX);
        assert_eq!(bytes(0x15, 4), [0x00, 0x02, 0x00, 0x00]);
        assert_eq!(bytes(0x34, 2), [0, 0]);
        assert_eq!(bytes(0x5B, 3), [0xFF, 0xFF, 0xFF], "saturates");

        let mut rtc = r.rtc.lock().unwrap();
        rtc.set_cmos(0x20, 0x33).unwrap();
        assert_eq!(
            u16::from_be_bytes([rtc.cmos(0x2E).unwrap(), rtc.cmos(0x2F).unwrap()]),
            rtc.checksum()
        );
        assert_eq!(rtc.checksum(), 0x02 + 0x33);
    }

    #[test]
    fn boot_order_floppies_disks_and_equipment() {
        let r = rig(NOV_24_2026);
        let mut rtc = r.rtc.lock().unwrap();
        rtc.set_boot_order(&[BootDevice::CdRom, BootDevice::HardDisk, BootDevice::Floppy])
            .unwrap();
        assert_eq!((rtc.cmos(0x3D), rtc.cmos(0x38)), (Some(0x23), Some(0x10)));
        rtc.set_floppy_signature_check(false);
        assert_eq!(rtc.cmos(0x38), Some(0x11));
        rtc.set_boot_order(&[BootDevice::Network]).unwrap();
        assert_eq!((rtc.cmos(0x3D), rtc.cmos(0x38)), (Some(0x04), Some(0x01)));
        assert_eq!(
            rtc.set_boot_order(&[BootDevice::Floppy; 4]),
            Err(CmosError::TooManyBootDevices(4))
        );

        rtc.set_equipment(true, true);
        assert_eq!(rtc.cmos(0x14), Some(0x06));
        rtc.set_floppy_types(FloppyType::M1_44, FloppyType::None);
        assert_eq!((rtc.cmos(0x10), rtc.cmos(0x14)), (Some(0x40), Some(0x07)));
        rtc.set_floppy_types(FloppyType::M1_44, FloppyType::M1_2);
        assert_eq!((rtc.cmos(0x10), rtc.cmos(0x14)), (Some(0x42), Some(0x47)));

        let g = DiskGeometry {
            cylinders: 1024,
            heads: 16,
            sectors: 63,
        };
        rtc.set_hard_disk(0, Some(g)).unwrap();
        assert_eq!(rtc.cmos(0x19), Some(47));
        assert_eq!(rtc.cmos(0x12), Some(0xF0));
        let params: Vec<u8> = (0x1B..0x24).map(|i| rtc.cmos(i).unwrap()).collect();
        assert_eq!(params, [0x00, 0x04, 16, 0xFF, 0xFF, 0xC8, 0x00, 0x04, 63]);
        rtc.set_hard_disk(1, Some(g)).unwrap();
        assert_eq!(rtc.cmos(0x12), Some(0xFF));
        rtc.set_hard_disk(0, None).unwrap();
        assert_eq!(
            (rtc.cmos(0x19), rtc.cmos(0x12), rtc.cmos(0x1B)),
            (Some(0), Some(0x0F), Some(0))
        );
        assert!(rtc.set_hard_disk(2, None).is_err());
        let sum: u16 = (0x10..=0x2D).map(|i| u16::from(rtc.cmos(i).unwrap())).sum();
        assert_eq!(rtc.checksum(), sum);
        assert_eq!(rtc.cmos(0x2E).map(u16::from), Some(sum >> 8));
        assert_eq!(rtc.cmos(0x2F).map(u16::from), Some(sum & 0xFF));

        rtc.set_disk_translation(1, DiskTranslation::Lba).unwrap();
        rtc.set_disk_translation(3, DiskTranslation::Rechs).unwrap();
        assert_eq!(rtc.cmos(0x39), Some(0xC4));
        assert!(rtc.set_disk_translation(4, DiskTranslation::None).is_err());
        rtc.set_cpu_count(4);
        assert_eq!(rtc.cmos(0x5F), Some(3));
        rtc.set_cpu_count(1000);
        assert_eq!(rtc.cmos(0x5F), Some(0xFF));
    }

    #[test]
    fn reset_clears_enables_flags_and_the_shutdown_byte() {
        let r = rig(NOV_24_2026);
        r.write(0x0B, B_PIE | B_AIE | B_UIE | B_SQWE | B_24H);
        r.write(0x0F, 0x0A);
        r.at(SEC);
        assert!(r.line.level());
        r.rtc.lock().unwrap().reset();
        assert!(!r.line.level());
        assert_eq!(r.read(0x0B), B_24H);
        assert_eq!(r.read(0x0C), 0);
        assert_eq!(r.read(0x0F), 0);
        assert_eq!(r.read(0x00), 0x46, "time survives reset");
        r.write(0x0F, 0xFE);
        r.rtc.lock().unwrap().reset();
        assert_eq!(r.read(0x0F), 0xFE, "S3 resume survives reset");
    }

    #[test]
    fn snapshot_round_trip_keeps_time_and_pending_interrupts() {
        let a = rig(NOV_24_2026);
        a.write(0x0A, 0x2F); // 2 Hz
        a.write(0x0B, B_PIE | B_UIE | B_24H);
        a.write(0x50, 0x77);
        assert_eq!(a.serve_until(700 * MS), vec![500 * MS]);
        a.bus.write_value(0x70, 1, 0x80 | 0x50);

        // The restoring board's clock has kept its time; its RTC started elsewhere.
        let b = rig_at(700 * MS, 0);
        {
            let (ra, mut rb) = (a.rtc.lock().unwrap(), b.rtc.lock().unwrap());
            snapshot::check_round_trip(&*ra, &mut *rb).unwrap();
            assert!(rb.nmi_masked());
        }
        assert_eq!(
            b.clock.next_deadline(),
            Some(SEC),
            "the armed timer is re-armed"
        );
        assert_eq!(b.bus.read_value(0x71, 1), 0x77, "the index survives");
        assert_eq!(b.time(), a.time());
        for r in [&a, &b] {
            r.at(SEC);
            assert!(r.line.level());
            assert_eq!(r.read(0x0C), C_IRQF | C_PF | C_UF);
            assert_eq!(r.read(0x00), 0x46);
        }
        assert_eq!(b.serve_until(2 * SEC), vec![1500 * MS, 2 * SEC]);

        // A snapshot taken with IRQ 8 up restores with IRQ 8 up.
        a.at(2500 * MS);
        assert!(a.line.level());
        let c = rig_at(2500 * MS, 0);
        snapshot::restore(
            &mut *c.rtc.lock().unwrap(),
            &snapshot::save(&*a.rtc.lock().unwrap()),
        )
        .unwrap();
        assert!(c.line.level());
        // Raised by PF at 1.5 s; the update at 2.0 s added UF while IRQF was already up.
        assert_eq!(c.read(0x0C), C_IRQF | C_PF | C_UF);
        assert!(!c.line.level());
    }

    #[test]
    fn hostile_snapshot_is_refused_without_change() {
        let r = rig(NOV_24_2026);
        let before = snapshot::save(&*r.rtc.lock().unwrap());
        let corruptions: [fn(&mut Mc146818); 6] = [
            |m| m.cmos[REG_C] = 0x0F,
            |m| m.cmos[REG_C] = C_IRQF,
            |m| m.cmos[REG_A] |= A_UIP,
            |m| m.index = 0x80,
            |m| m.offset = i128::MAX,
            |m| m.base_secs = i64::MIN,
        ];
        for corrupt in corruptions {
            let evil = rig(NOV_24_2026);
            let blob = {
                let mut m = evil.rtc.lock().unwrap();
                corrupt(&mut m);
                snapshot::save(&*m)
            };
            let mut rtc = r.rtc.lock().unwrap();
            assert!(matches!(
                snapshot::restore(&mut *rtc, &blob),
                Err(SnapshotError::Invalid(_))
            ));
            assert_eq!(snapshot::save(&*rtc), before);
        }
    }

    #[test]
    fn any_port_any_value_any_time_never_panics() {
        let r = rig(NOV_24_2026);
        for index in 0..=255u64 {
            for value in 0..=255u64 {
                r.bus.write_value(0x70, 1, index);
                r.bus.write_value(0x71, 1, value);
                r.bus.read_value(0x71, 1);
                r.bus.read_value(0x70, 1);
            }
            r.clock.advance_by(7_777_777);
        }
        // Random wide accesses, register values and clock jumps (days at a time).
        let mut seed = 0x1234_5678_9ABC_DEF0u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..100_000 {
            let v = next();
            let size = 1 << (v % 4);
            let port = 0x6F + (v >> 8) % 4;
            if v & 0x10000 != 0 {
                r.bus.write_value(port, size as usize, next());
            } else {
                r.bus.read_value(port, size as usize);
            }
            match (v >> 20) % 64 {
                0 => r.clock.advance_by(next() % (3 * 86_400 * SEC)),
                1..=8 => r.clock.advance_by(next() % SEC),
                _ => {}
            }
            if r.line.level() && v & 0x200000 != 0 {
                r.read(0x0C);
            }
        }
        for base in [i64::MIN, i64::MAX, 0, -1] {
            let r = rig(base);
            for mode in [0, B_BINARY, B_24H, B_BINARY | B_24H] {
                r.write(0x0B, mode);
                for reg in 0..0x80 {
                    r.read(reg);
                }
                r.write(0x0B, mode | B_SET);
                r.write(0x32, 0xFF);
                r.write(0x09, 0xFF);
                r.write(0x08, 0xFF);
                r.write(0x07, 0xFF);
                r.write(0x0B, mode | B_AIE | B_UIE | B_PIE);
                r.clock.advance_by(2 * SEC);
                r.time();
                r.read(0x0C);
            }
        }
    }
}
