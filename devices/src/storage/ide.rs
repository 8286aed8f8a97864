//! The PIIX3 IDE controller (82371SB function 1, 8086:7010) with ATA disks and ATAPI CD-ROMs.
//!
//! ```text
//!   ports 0x1F0-0x1F7, 0x3F6 ─► primary channel   ─┬─ drive 0, drive 1 ─► block backends
//!   ports 0x170-0x177, 0x376 ─► secondary channel ─┘        │ PIO through the data port
//!   BAR4 (16 I/O ports) ─────► bus-master engines ─► PRD table walk ─► GuestMemory
//!   IRQ 14 / IRQ 15 ◄── each channel's INTRQ (gated by nIEN)
//! ```
//!
//! **Legacy mode only.** The programming interface is 0x80: both channels sit at their fixed
//! ISA addresses and interrupt on IRQ 14 and 15, and cannot be switched to native PCI mode
//! (as on the real PIIX3, whose BARs 0-3 do not exist). The board registers the four ranges
//! with [`Piix3Ide::register_legacy_ports`] (offsets are relative to 0x1F0, 0x3F6, 0x170 and
//! 0x376; 0x3F7 belongs to the floppy controller and is not claimed). The ranges decode
//! whatever the IDETIM decode-enable bits (0x41/0x43 bit 7) say, as QEMU's do; firmware
//! (SeaBIOS, hvmloader) sets those bits and Linux's `ata_piix` checks them, so a board that
//! boots a kernel without firmware calls [`Piix3Ide::enable_decode`] first.
//!
//! **Drives.** Each channel holds up to two drives selected by the DEV bit of the device
//! register. Writes to the command block reach both drives' registers, as on the cable. A
//! channel with no drive at all reads 0x7F everywhere (the D7 pull-down of a real board, which
//! Linux expects); an absent drive beside a present one reads status 0 and ignores commands,
//! which Linux's probe classifies as "no device".
//!
//! **ATA command set.** IDENTIFY DEVICE; READ/WRITE SECTORS, MULTIPLE and DMA in 28-bit and
//! 48-bit forms (LBA or CHS addressing); SET MULTIPLE MODE; READ VERIFY; SEEK; RECALIBRATE;
//! FLUSH CACHE (+EXT); SET FEATURES (transfer mode, write cache, look-ahead, defaults);
//! INITIALIZE DEVICE PARAMETERS; READ NATIVE MAX ADDRESS (+EXT); IDLE/STANDBY (+IMMEDIATE),
//! SLEEP, CHECK POWER MODE; EXECUTE DEVICE DIAGNOSTIC. ATAPI drives take IDENTIFY PACKET
//! DEVICE, PACKET (see [`super::atapi`]) and DEVICE RESET. A command the drive does not take
//! is aborted (ERR with ABRT). Software reset through SRST in the device control register
//! leaves each drive's signature in the task file (ATA 00/00, ATAPI 14/EB).
//!
//! **Errors.** A transfer outside the medium, a backend read or write error, a write to a
//! read-only image: the command ends with ERR and ABRT (ATAPI: CHECK CONDITION with sense) and
//! an interrupt, and the event is logged. The guest decides what to do; nothing panics.
//!
//! **Bus master DMA.** Each channel's engine (command, status, PRD table address) runs when
//! both the engine is started and its drive has a DMA command pending, whichever comes
//! last, synchronously inside that register write: the PRD table is walked through
//! [`GuestMemory`] and the whole transfer is done before the access returns. At most
//! [`MAX_PRD_ENTRIES`] entries are walked per start (the 4 KiB QEMU allows and Linux uses); a
//! table that ends first stops the engine without an interrupt, as the SFF-8038i status
//! encoding says (Active 0, Interrupt 0: "PRD table exhausted before the drive finished").
//! An engine whose direction bit disagrees with the command, a PRD or buffer outside RAM, or
//! a function with bus mastering disabled in its PCI command register sets the Error bit,
//! stops the engine and aborts the command with an interrupt.
//!
//! **Interrupts.** A channel's INTRQ is a level: asserted from the end of a command phase
//! until the status register is read or a command written, and masked by nIEN. This is how
//! QEMU drives IRQ 14/15 too; the 8259 (edge mode for these IRQs on a PC) sees the rising
//! edge. Every interrupt the drive raises while nIEN is clear sets the engine's Interrupt
//! status bit, which Linux's `ata_bmdma_interrupt` requires.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use log::{debug, warn};

use super::atapi::{self, AtapiState, CD_SECTOR_SIZE, Identity, Outcome, PACKET_SIZE, Sense};
use crate::block::{BlockBackend, SECTOR_SIZE};
use crate::bus::{AccessSizes, Bus, BusAddress, BusDevice, BusError};
use crate::guest_memory::GuestMemory;
use crate::irq::IrqLine;
use crate::pci::config_space::{BarKind, ConfigSpace, PciIds, command, status};
use crate::pci::{Bdf, PciFunction};
use crate::snapshot::{self, Snapshot, SnapshotError, StateReader, StateWriter};

/// Warnings a guest can trigger at will (reads past the end, bad PRD tables): the first
/// [`GUEST_WARNINGS`] of each call site in the process are logged as warnings, later ones at debug level, so a
/// guest cannot flood the log.
macro_rules! guest_warn {
    ($($arg:tt)*) => {{
        use std::sync::atomic::{AtomicU32, Ordering};
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        if n < GUEST_WARNINGS {
            warn!($($arg)*);
        } else {
            if n == GUEST_WARNINGS {
                warn!("IDE: further warnings of this kind are logged at debug level");
            }
            debug!($($arg)*);
        }
    }};
}

/// How many of each guest-triggered warning are logged as such.
const GUEST_WARNINGS: u32 = 16;

/// Where the function sits on the i440FX board: device 1 (the PIIX3), function 1.
pub const PIIX3_IDE_BDF: Bdf = Bdf::from_devfn(0, 0x09);

pub const PRIMARY_CMD_BASE: u64 = 0x1F0;
pub const PRIMARY_CTL_BASE: u64 = 0x3F6;
pub const SECONDARY_CMD_BASE: u64 = 0x170;
pub const SECONDARY_CTL_BASE: u64 = 0x376;
/// The command block: data, error/features, count, LBA low/mid/high, device, status/command.
pub const CMD_BLOCK_LEN: u64 = 8;
/// The control block: alternate status / device control.
pub const CTL_BLOCK_LEN: u64 = 1;
pub const PRIMARY_IRQ: u8 = 14;
pub const SECONDARY_IRQ: u8 = 15;
/// The bus-master registers' BAR (BMIBA, config offset 0x20).
pub const BMIBA_BAR: usize = 4;
pub const BMIBA_SIZE: u64 = 16;
/// IDE timing registers; bit 15 of each enables the channel's decode.
pub const IDETIM_PRIMARY: usize = 0x40;
pub const IDETIM_SECONDARY: usize = 0x42;
pub const IDETIM_DECODE_ENABLE: u16 = 0x8000;
/// Slave IDE timing (PIIX3 only).
pub const SIDETIM: usize = 0x44;

/// PRD entries walked per engine start: a 4 KiB table. Linux uses at most 256 entries.
pub const MAX_PRD_ENTRIES: u32 = 512;
/// Sectors per block of READ/WRITE MULTIPLE (IDENTIFY word 47).
pub const MAX_MULTIPLE: u8 = 16;

/// Status register bits.
pub mod ata_status {
    pub const BSY: u8 = 0x80;
    pub const DRDY: u8 = 0x40;
    pub const DF: u8 = 0x20;
    pub const DSC: u8 = 0x10;
    pub const DRQ: u8 = 0x08;
    pub const ERR: u8 = 0x01;
}

/// Error register bits.
pub mod ata_error {
    pub const IDNF: u8 = 0x10;
    pub const ABRT: u8 = 0x04;
}

/// Device control register bits.
pub mod device_control {
    pub const NIEN: u8 = 0x02;
    pub const SRST: u8 = 0x04;
    pub const HOB: u8 = 0x80;
}

/// Bus-master command and status register bits.
pub mod bm {
    pub const CMD_START: u8 = 0x01;
    /// Set: the engine writes memory (a device read).
    pub const CMD_TO_MEMORY: u8 = 0x08;
    pub const STATUS_ACTIVE: u8 = 0x01;
    pub const STATUS_ERROR: u8 = 0x02;
    pub const STATUS_INTERRUPT: u8 = 0x04;
    /// "Drive 0/1 DMA capable": scratch bits the BIOS sets.
    pub const STATUS_DRIVE_CAPABLE: u8 = 0x60;
}

/// ATA command opcodes.
pub mod cmd {
    pub const NOP: u8 = 0x00;
    pub const DEVICE_RESET: u8 = 0x08;
    pub const READ_SECTORS: u8 = 0x20;
    pub const READ_SECTORS_NO_RETRY: u8 = 0x21;
    pub const READ_SECTORS_EXT: u8 = 0x24;
    pub const READ_DMA_EXT: u8 = 0x25;
    pub const READ_NATIVE_MAX_EXT: u8 = 0x27;
    pub const READ_MULTIPLE_EXT: u8 = 0x29;
    pub const WRITE_SECTORS: u8 = 0x30;
    pub const WRITE_SECTORS_NO_RETRY: u8 = 0x31;
    pub const WRITE_SECTORS_EXT: u8 = 0x34;
    pub const WRITE_DMA_EXT: u8 = 0x35;
    pub const WRITE_MULTIPLE_EXT: u8 = 0x39;
    pub const WRITE_VERIFY: u8 = 0x3C;
    pub const READ_VERIFY: u8 = 0x40;
    pub const READ_VERIFY_NO_RETRY: u8 = 0x41;
    pub const READ_VERIFY_EXT: u8 = 0x42;
    pub const EXECUTE_DEVICE_DIAGNOSTIC: u8 = 0x90;
    pub const INITIALIZE_DEVICE_PARAMETERS: u8 = 0x91;
    pub const PACKET: u8 = 0xA0;
    pub const IDENTIFY_PACKET_DEVICE: u8 = 0xA1;
    pub const READ_MULTIPLE: u8 = 0xC4;
    pub const WRITE_MULTIPLE: u8 = 0xC5;
    pub const SET_MULTIPLE_MODE: u8 = 0xC6;
    pub const READ_DMA: u8 = 0xC8;
    pub const READ_DMA_NO_RETRY: u8 = 0xC9;
    pub const WRITE_DMA: u8 = 0xCA;
    pub const WRITE_DMA_NO_RETRY: u8 = 0xCB;
    pub const STANDBY_IMMEDIATE: u8 = 0xE0;
    pub const IDLE_IMMEDIATE: u8 = 0xE1;
    pub const STANDBY: u8 = 0xE2;
    pub const IDLE: u8 = 0xE3;
    pub const CHECK_POWER_MODE: u8 = 0xE5;
    pub const SLEEP: u8 = 0xE6;
    pub const FLUSH_CACHE: u8 = 0xE7;
    pub const FLUSH_CACHE_EXT: u8 = 0xEA;
    pub const IDENTIFY_DEVICE: u8 = 0xEC;
    pub const SET_FEATURES: u8 = 0xEF;
    pub const READ_NATIVE_MAX: u8 = 0xF8;
}

use ata_status::{BSY, DRDY, DRQ, DSC, ERR};

/// ATAPI interrupt reason (in the sector count register): command/data and direction.
const IREASON_COD: u8 = 0x01;
const IREASON_IO: u8 = 0x02;
/// Device register: LBA addressing, and bits 7 and 5 that read back as ones.
const DEV_LBA: u8 = 0x40;
const DEV_SELECT: u8 = 0x10;
const DEV_OBSOLETE: u8 = 0xA0;
/// What an empty channel's floating bus reads (D7 pulled down).
const EMPTY_CHANNEL: u8 = 0x7F;
/// The largest PIO block: an ATAPI byte count limit of 0xFFFE.
const MAX_BUFFER: usize = 0x10000;
/// Transfer mode values of SET FEATURES 03h: the mode class in bits 7:3.
const XFER_MWDMA: u8 = 0x20;
const XFER_UDMA: u8 = 0x40;

/// What kind of drive sits at a position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriveKind {
    /// An ATA hard disk over a block backend.
    Disk,
    /// An ATAPI CD/DVD-ROM whose medium (2048-byte blocks) may be absent.
    Cdrom,
}

/// A drive to attach: its kind, its medium and the strings it reports.
pub struct IdeDrive {
    kind: DriveKind,
    medium: Option<Box<dyn BlockBackend>>,
    model: String,
    serial: Option<String>,
    firmware: String,
}

impl IdeDrive {
    /// A hard disk over `backend` (its size, rounded down to whole sectors, is the disk's).
    pub fn disk(backend: Box<dyn BlockBackend>) -> IdeDrive {
        IdeDrive {
            kind: DriveKind::Disk,
            medium: Some(backend),
            model: "VIREO HARDDISK".into(),
            serial: None,
            firmware: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// A CD/DVD-ROM drive, with `medium` inserted or empty.
    pub fn cdrom(medium: Option<Box<dyn BlockBackend>>) -> IdeDrive {
        IdeDrive {
            kind: DriveKind::Cdrom,
            medium,
            model: "VIREO DVD-ROM".into(),
            serial: None,
            firmware: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// The model string (IDENTIFY words 27-46, 40 characters at most).
    pub fn with_model(mut self, model: &str) -> IdeDrive {
        self.model = model.chars().take(40).collect();
        self
    }

    /// The serial number (IDENTIFY words 10-19, 20 characters at most); by default one is made
    /// from the drive's position.
    pub fn with_serial(mut self, serial: &str) -> IdeDrive {
        self.serial = Some(serial.chars().take(20).collect());
        self
    }

    pub fn kind(&self) -> DriveKind {
        self.kind
    }
}

/// The drives of one channel, master first.
pub type ChannelDrives = [Option<IdeDrive>; 2];

// ---------------------------------------------------------------------------------------------
// Drive state
// ---------------------------------------------------------------------------------------------

/// The command block registers of one drive, with the previous value of each (the "high order
/// byte" a 48-bit command takes, read back with HOB set).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct TaskFile {
    feature: u8,
    count: u8,
    lba_low: u8,
    lba_mid: u8,
    lba_high: u8,
    hob_feature: u8,
    hob_count: u8,
    hob_lba_low: u8,
    hob_lba_mid: u8,
    hob_lba_high: u8,
    device: u8,
}

impl TaskFile {
    fn save(&self, w: &mut StateWriter) {
        for v in [
            self.feature,
            self.count,
            self.lba_low,
            self.lba_mid,
            self.lba_high,
            self.hob_feature,
            self.hob_count,
            self.hob_lba_low,
            self.hob_lba_mid,
            self.hob_lba_high,
            self.device,
        ] {
            w.u8(v);
        }
    }

    fn load(r: &mut StateReader<'_>) -> Result<TaskFile, SnapshotError> {
        Ok(TaskFile {
            feature: r.u8()?,
            count: r.u8()?,
            lba_low: r.u8()?,
            lba_mid: r.u8()?,
            lba_high: r.u8()?,
            hob_feature: r.u8()?,
            hob_count: r.u8()?,
            hob_lba_low: r.u8()?,
            hob_lba_mid: r.u8()?,
            hob_lba_high: r.u8()?,
            device: r.u8()?,
        })
    }

    /// The byte count limit of a PACKET command (LBA mid/high).
    fn byte_count(&self) -> u16 {
        u16::from(self.lba_mid) | u16::from(self.lba_high) << 8
    }
}

/// Where ATAPI data comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    /// A reply built by the command; `pos` bytes already sent.
    Reply { data: Vec<u8>, pos: usize },
    /// The medium, from this byte offset on.
    Medium { offset: u64 },
}

/// The command in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Idle,
    /// Data-in of the buffer (IDENTIFY); the command ends when it is drained.
    PioIn,
    /// Sector reads: the buffer holds the block before `lba`; `left` sectors follow it.
    ReadPio {
        lba: u64,
        left: u32,
        block: u32,
    },
    /// Sector writes: the buffer receives the block for `lba`; `left` sectors remain,
    /// including it.
    WritePio {
        lba: u64,
        left: u32,
        block: u32,
    },
    /// An ATA DMA command: `done` of `total` bytes moved.
    Dma {
        to_memory: bool,
        lba: u64,
        total: u64,
        done: u64,
    },
    /// Receiving the command packet.
    Packet {
        dma: bool,
        limit: u16,
    },
    /// ATAPI data-in by PIO: the buffer holds the current chunk; `left` bytes follow it.
    AtapiPio {
        src: Source,
        left: u64,
        limit: u16,
    },
    /// ATAPI data-in by DMA: `left` bytes to go.
    AtapiDma {
        src: Source,
        left: u64,
    },
}

/// Everything about a drive that a snapshot holds.
#[derive(Clone, Debug, PartialEq, Eq)]
struct DriveState {
    tf: TaskFile,
    status: u8,
    error: u8,
    /// The current command takes 48-bit addresses.
    lba48: bool,
    /// Sectors per READ/WRITE MULTIPLE block; 0 disables those commands.
    multiple: u8,
    /// The DMA mode selected by SET FEATURES (0x20|n MWDMA, 0x40|n UDMA), 0 for none.
    dma_mode: u8,
    write_cache: bool,
    standby: bool,
    /// CHS translation (INITIALIZE DEVICE PARAMETERS).
    heads: u8,
    sectors_per_track: u8,
    op: Op,
    buf: Vec<u8>,
    pos: usize,
    atapi: AtapiState,
}

impl DriveState {
    fn power_on(kind: Option<DriveKind>, default_chs: (u16, u8, u8)) -> DriveState {
        let mut st = DriveState {
            tf: TaskFile::default(),
            status: 0,
            error: 0,
            lba48: false,
            multiple: MAX_MULTIPLE,
            dma_mode: XFER_MWDMA | 2,
            write_cache: true,
            standby: false,
            heads: default_chs.1,
            sectors_per_track: default_chs.2,
            op: Op::Idle,
            buf: Vec::new(),
            pos: 0,
            atapi: AtapiState::default(),
        };
        st.reset(kind);
        st
    }

    /// A reset (power-on, hardware or software): registers, signature and diagnostic result.
    fn reset(&mut self, kind: Option<DriveKind>) {
        self.tf = TaskFile {
            count: 1,
            lba_low: 1,
            device: DEV_OBSOLETE,
            ..TaskFile::default()
        };
        if kind == Some(DriveKind::Cdrom) {
            self.tf.lba_mid = 0x14;
            self.tf.lba_high = 0xEB;
        }
        self.op = Op::Idle;
        self.buf = Vec::new();
        self.pos = 0;
        self.lba48 = false;
        self.multiple = MAX_MULTIPLE;
        self.standby = false;
        self.atapi.sense = Sense::default();
        self.atapi.unit_attention = false;
        self.atapi.locked = false;
        // Diagnostic code 01h: passed. Packet devices leave DRDY clear until a command.
        self.error = u8::from(kind.is_some());
        self.status = match kind {
            Some(DriveKind::Disk) => DRDY | DSC,
            _ => 0,
        };
    }

    fn save(&self, w: &mut StateWriter) {
        self.tf.save(w);
        w.u8(self.status);
        w.u8(self.error);
        w.bool(self.lba48);
        w.u8(self.multiple);
        w.u8(self.dma_mode);
        w.bool(self.write_cache);
        w.bool(self.standby);
        w.u8(self.heads);
        w.u8(self.sectors_per_track);
        save_op(&self.op, w);
        w.var_bytes(&self.buf);
        w.u32(self.pos as u32);
        self.atapi.save(w);
    }

    fn load(r: &mut StateReader<'_>) -> Result<DriveState, SnapshotError> {
        let st = DriveState {
            tf: TaskFile::load(r)?,
            status: r.u8()?,
            error: r.u8()?,
            lba48: r.bool()?,
            multiple: r.u8()?,
            dma_mode: r.u8()?,
            write_cache: r.bool()?,
            standby: r.bool()?,
            heads: r.u8()?,
            sectors_per_track: r.u8()?,
            op: load_op(r)?,
            buf: r.var_bytes(MAX_BUFFER)?,
            pos: r.u32()? as usize,
            atapi: AtapiState::load(r)?,
        };
        if st.pos > st.buf.len()
            || st.multiple > MAX_MULTIPLE
            || st.heads == 0
            || st.heads > 16
            || st.sectors_per_track == 0
        {
            return Err(SnapshotError::Invalid(format!(
                "IDE drive: buffer position {} of {}, multiple {}, geometry {}/{}",
                st.pos,
                st.buf.len(),
                st.multiple,
                st.heads,
                st.sectors_per_track
            )));
        }
        Ok(st)
    }
}

fn save_source(src: &Source, w: &mut StateWriter) {
    match src {
        Source::Reply { data, pos } => {
            w.u8(0);
            w.var_bytes(data);
            w.u32(*pos as u32);
        }
        Source::Medium { offset } => {
            w.u8(1);
            w.u64(*offset);
        }
    }
}

fn load_source(r: &mut StateReader<'_>) -> Result<Source, SnapshotError> {
    Ok(match r.u8_below(2)? {
        0 => {
            let data = r.var_bytes(MAX_BUFFER)?;
            let pos = r.u32()? as usize;
            if pos > data.len() {
                return Err(SnapshotError::Invalid(format!(
                    "ATAPI reply position {pos} beyond {} bytes",
                    data.len()
                )));
            }
            Source::Reply { data, pos }
        }
        _ => Source::Medium { offset: r.u64()? },
    })
}

fn save_op(op: &Op, w: &mut StateWriter) {
    match op {
        Op::Idle => w.u8(0),
        Op::PioIn => w.u8(1),
        Op::ReadPio { lba, left, block } => {
            w.u8(2);
            w.u64(*lba);
            w.u32(*left);
            w.u32(*block);
        }
        Op::WritePio { lba, left, block } => {
            w.u8(3);
            w.u64(*lba);
            w.u32(*left);
            w.u32(*block);
        }
        Op::Dma {
            to_memory,
            lba,
            total,
            done,
        } => {
            w.u8(4);
            w.bool(*to_memory);
            w.u64(*lba);
            w.u64(*total);
            w.u64(*done);
        }
        Op::Packet { dma, limit } => {
            w.u8(5);
            w.bool(*dma);
            w.u16(*limit);
        }
        Op::AtapiPio { src, left, limit } => {
            w.u8(6);
            save_source(src, w);
            w.u64(*left);
            w.u16(*limit);
        }
        Op::AtapiDma { src, left } => {
            w.u8(7);
            save_source(src, w);
            w.u64(*left);
        }
    }
}

fn load_op(r: &mut StateReader<'_>) -> Result<Op, SnapshotError> {
    let block_op = |r: &mut StateReader<'_>| -> Result<(u64, u32, u32), SnapshotError> {
        let (lba, left, block) = (r.u64()?, r.u32()?, r.u32()?);
        if block == 0 || block > u32::from(MAX_MULTIPLE) {
            return Err(SnapshotError::Invalid(format!(
                "IDE block of {block} sectors"
            )));
        }
        Ok((lba, left, block))
    };
    Ok(match r.u8_below(8)? {
        0 => Op::Idle,
        1 => Op::PioIn,
        2 => {
            let (lba, left, block) = block_op(r)?;
            Op::ReadPio { lba, left, block }
        }
        3 => {
            let (lba, left, block) = block_op(r)?;
            Op::WritePio { lba, left, block }
        }
        4 => {
            let (to_memory, lba, total, done) = (r.bool()?, r.u64()?, r.u64()?, r.u64()?);
            if done > total {
                return Err(SnapshotError::Invalid(format!(
                    "IDE DMA {done} of {total} bytes done"
                )));
            }
            Op::Dma {
                to_memory,
                lba,
                total,
                done,
            }
        }
        5 => Op::Packet {
            dma: r.bool()?,
            limit: r.u16()?,
        },
        6 => {
            let (src, left, limit) = (load_source(r)?, r.u64()?, r.u16()?);
            if limit < 2 {
                return Err(SnapshotError::Invalid(format!(
                    "ATAPI byte count limit {limit}"
                )));
            }
            Op::AtapiPio { src, left, limit }
        }
        _ => Op::AtapiDma {
            src: load_source(r)?,
            left: r.u64()?,
        },
    })
}

/// A drive position: the attached drive (if any) and its registers.
struct Drive {
    dev: Option<IdeDrive>,
    /// 0 for the master, 1 for the slave.
    unit: usize,
    serial: String,
    /// Default CHS geometry of a disk (cylinders capped at 16383, 16 heads, 63 sectors).
    chs: (u16, u8, u8),
    st: DriveState,
}

/// What a drive asks of its channel after a register access.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Irq {
    None,
    Raise,
}

impl Drive {
    fn new(dev: Option<IdeDrive>, position: usize) -> Drive {
        let serial = dev
            .as_ref()
            .and_then(|d| d.serial.clone())
            .unwrap_or_else(|| format!("VIREO{:05}", position + 1));
        let sectors = match &dev {
            Some(d) if d.kind == DriveKind::Disk => d.medium.as_ref().map_or(0, |m| m.sectors()),
            _ => 0,
        };
        let chs = default_geometry(sectors);
        let kind = dev.as_ref().map(|d| d.kind);
        Drive {
            dev,
            unit: position % 2,
            serial,
            chs,
            st: DriveState::power_on(kind, chs),
        }
    }

    fn kind(&self) -> Option<DriveKind> {
        self.dev.as_ref().map(|d| d.kind)
    }

    fn present(&self) -> bool {
        self.dev.is_some()
    }

    fn is_cdrom(&self) -> bool {
        self.kind() == Some(DriveKind::Cdrom)
    }

    fn medium(&mut self) -> Option<&mut Box<dyn BlockBackend>> {
        self.dev.as_mut().and_then(|d| d.medium.as_mut())
    }

    /// 512-byte sectors of a disk; 0 for anything else.
    fn disk_sectors(&self) -> u64 {
        match &self.dev {
            Some(IdeDrive {
                kind: DriveKind::Disk,
                medium: Some(m),
                ..
            }) => m.sectors(),
            _ => 0,
        }
    }

    /// 2048-byte blocks of an inserted CD medium.
    fn cd_blocks(&self) -> Option<u64> {
        match &self.dev {
            Some(IdeDrive {
                kind: DriveKind::Cdrom,
                medium: Some(m),
                ..
            }) => Some(m.size() / CD_SECTOR_SIZE),
            _ => None,
        }
    }

    fn power_on_reset(&mut self) {
        self.st = DriveState::power_on(self.kind(), self.chs);
    }

    fn soft_reset(&mut self) {
        let kind = self.kind();
        self.st.reset(kind);
        self.st.heads = self.chs.1;
        self.st.sectors_per_track = self.chs.2;
    }

    // ----- Command completion -----

    fn abort(&mut self) -> Irq {
        self.st.op = Op::Idle;
        self.st.status = DRDY | ERR;
        self.st.error = ata_error::ABRT;
        Irq::Raise
    }

    fn complete(&mut self) -> Irq {
        self.st.op = Op::Idle;
        self.st.status = DRDY | DSC;
        Irq::Raise
    }

    /// A packet device answering an ATA-only command: signature, then abort (ATA-4 8.27.5.2).
    fn abort_with_signature(&mut self) -> Irq {
        self.st.tf.count = 1;
        self.st.tf.lba_low = 1;
        self.st.tf.lba_mid = 0x14;
        self.st.tf.lba_high = 0xEB;
        self.abort()
    }

    // ----- Addressing -----

    /// The address in the task file: LBA 48 or 28, or CHS through the current translation.
    fn address(&self) -> Option<u64> {
        let tf = &self.st.tf;
        if tf.device & DEV_LBA != 0 {
            if self.st.lba48 {
                Some(
                    u64::from(tf.hob_lba_high) << 40
                        | u64::from(tf.hob_lba_mid) << 32
                        | u64::from(tf.hob_lba_low) << 24
                        | u64::from(tf.lba_high) << 16
                        | u64::from(tf.lba_mid) << 8
                        | u64::from(tf.lba_low),
                )
            } else {
                Some(
                    u64::from(tf.device & 0x0F) << 24
                        | u64::from(tf.lba_high) << 16
                        | u64::from(tf.lba_mid) << 8
                        | u64::from(tf.lba_low),
                )
            }
        } else {
            let cyl = u64::from(tf.lba_mid) | u64::from(tf.lba_high) << 8;
            let head = tf.device & 0x0F;
            let sector = tf.lba_low;
            let (heads, spt) = (self.st.heads, self.st.sectors_per_track);
            if sector == 0 || sector > spt || head >= heads {
                return None;
            }
            Some(
                (cyl * u64::from(heads) + u64::from(head)) * u64::from(spt) + u64::from(sector) - 1,
            )
        }
    }

    /// Write `lba` back into the task file, in the addressing mode of the command.
    fn set_address(&mut self, lba: u64) {
        let (heads, spt) = (self.st.heads, self.st.sectors_per_track);
        let lba48 = self.st.lba48;
        let tf = &mut self.st.tf;
        if tf.device & DEV_LBA != 0 {
            tf.lba_low = lba as u8;
            tf.lba_mid = (lba >> 8) as u8;
            tf.lba_high = (lba >> 16) as u8;
            if lba48 {
                tf.hob_lba_low = (lba >> 24) as u8;
                tf.hob_lba_mid = (lba >> 32) as u8;
                tf.hob_lba_high = (lba >> 40) as u8;
            } else {
                tf.device = (tf.device & 0xF0) | ((lba >> 24) as u8 & 0x0F);
            }
        } else {
            let per_cyl = u64::from(heads) * u64::from(spt);
            let cyl = lba / per_cyl;
            let rest = lba % per_cyl;
            tf.lba_mid = cyl as u8;
            tf.lba_high = (cyl >> 8) as u8;
            tf.device = (tf.device & 0xF0) | (rest / u64::from(spt)) as u8 & 0x0F;
            tf.lba_low = (rest % u64::from(spt)) as u8 + 1;
        }
    }

    /// The sector count of the command: 28-bit 0 means 256, 48-bit 0 means 65536.
    fn sector_count(&self) -> u32 {
        let tf = &self.st.tf;
        if self.st.lba48 {
            match u32::from(tf.count) | u32::from(tf.hob_count) << 8 {
                0 => 65536,
                n => n,
            }
        } else {
            match tf.count {
                0 => 256,
                n => u32::from(n),
            }
        }
    }

    fn set_count(&mut self, left: u32) {
        self.st.tf.count = left as u8;
        if self.st.lba48 {
            self.st.tf.hob_count = (left >> 8) as u8;
        }
    }

    /// The range of a read or write command, checked against the disk; `None` after
    /// aborting it.
    fn checked_range(&mut self) -> Option<(u64, u32)> {
        let count = self.sector_count();
        let Some(lba) = self.address() else {
            debug!("IDE: CHS address outside the translation");
            self.st.error = ata_error::IDNF | ata_error::ABRT;
            return None;
        };
        let total = self.disk_sectors();
        if lba.saturating_add(u64::from(count)) > total {
            guest_warn!("IDE: sectors {lba}+{count} lie beyond the {total}-sector disk");
            return None;
        }
        Some((lba, count))
    }

    // ----- IDENTIFY -----

    /// IDENTIFY (PACKET) DEVICE data. `peer_present`: the other drive of the channel exists,
    /// which word 93 reports.
    fn identify_words(&self, peer_present: bool) -> [u16; 256] {
        let mut w = [0u16; 256];
        let Some(dev) = &self.dev else {
            return w;
        };
        put_string(&mut w, 10, 20, &self.serial);
        put_string(&mut w, 23, 8, &dev.firmware);
        put_string(&mut w, 27, 40, &dev.model);
        let mwdma_selected = match self.st.dma_mode {
            m if m & 0xF8 == XFER_MWDMA => 1 << (8 + (m & 7)),
            _ => 0,
        };
        let udma_selected = match self.st.dma_mode {
            m if m & 0xF8 == XFER_UDMA => 1 << (8 + (m & 7)),
            _ => 0,
        };
        match dev.kind {
            DriveKind::Disk => {
                let total = self.disk_sectors();
                let (cyls, heads, spt) = self.chs;
                w[0] = 0x0040; // fixed disk
                w[1] = cyls;
                w[3] = u16::from(heads);
                w[6] = u16::from(spt);
                w[47] = 0x8000 | u16::from(MAX_MULTIPLE);
                w[48] = 1; // 32-bit PIO
                w[49] = 1 << 11 | 1 << 9 | 1 << 8; // IORDY, LBA, DMA
                w[50] = 0x4000;
                w[51] = 0x0200; // PIO timing mode 2
                w[52] = 0x0200;
                w[53] = 0x0007; // words 54-58, 64-70 and 88 are valid
                let (cur_heads, cur_spt) = (self.st.heads, self.st.sectors_per_track);
                let per_cyl = u64::from(cur_heads) * u64::from(cur_spt);
                let cur_cyls = (total / per_cyl).min(0xFFFF);
                let chs_capacity = cur_cyls * per_cyl;
                w[54] = cur_cyls as u16;
                w[55] = u16::from(cur_heads);
                w[56] = u16::from(cur_spt);
                w[57] = chs_capacity as u16;
                w[58] = (chs_capacity >> 16) as u16;
                if self.st.multiple != 0 {
                    w[59] = 0x0100 | u16::from(self.st.multiple);
                }
                let lba28 = total.min(0x0FFF_FFFF);
                w[60] = lba28 as u16;
                w[61] = (lba28 >> 16) as u16;
                w[63] = 0x0007 | mwdma_selected;
                w[64] = 0x0003; // PIO 3 and 4
                w[65] = 120;
                w[66] = 120;
                w[67] = 120;
                w[68] = 120;
                w[80] = 0x00F0; // ATA/ATAPI-4 to -7
                w[81] = 0x0016;
                // NOP, write cache and power management supported.
                w[82] = 1 << 14 | 1 << 5 | 1 << 3;
                w[83] = 1 << 14 | 1 << 13 | 1 << 12 | 1 << 10; // FLUSH (EXT), 48-bit
                w[84] = 1 << 14;
                w[85] = 1 << 14 | u16::from(self.st.write_cache) << 5 | 1 << 3;
                w[86] = 1 << 13 | 1 << 12 | 1 << 10;
                w[87] = 1 << 14;
                w[88] = 0x003F | udma_selected; // UDMA 0-5
                w[100] = total as u16;
                w[101] = (total >> 16) as u16;
                w[102] = (total >> 32) as u16;
                w[103] = (total >> 48) as u16;
            }
            DriveKind::Cdrom => {
                // Packet device, CD-ROM, removable, DRQ within 50 us, 12-byte packets.
                w[0] = 2 << 14 | 5 << 8 | 1 << 7 | 2 << 5;
                w[48] = 1;
                w[49] = 1 << 9 | 1 << 8; // LBA, DMA
                w[53] = 0x0007;
                w[63] = 0x0007 | mwdma_selected;
                w[64] = 0x0003;
                w[65] = 0x00B4;
                w[66] = 0x00B4;
                w[67] = 0x012C;
                w[68] = 0x00B4;
                w[71] = 30;
                w[72] = 30;
                w[80] = 0x001E; // ATA/ATAPI-1 to -4
                w[88] = 0x003F | udma_selected;
            }
        }
        w[93] = hardware_reset_result(self.unit, peer_present);
        // Integrity word: signature A5h, and a checksum making all 512 bytes sum to zero.
        w[255] = 0x00A5;
        let sum = w
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .fold(0u8, |a, b| a.wrapping_add(b));
        w[255] |= u16::from(sum.wrapping_neg()) << 8;
        w
    }

    fn start_pio_in(&mut self, data: Vec<u8>) -> Irq {
        self.st.buf = data;
        self.st.pos = 0;
        self.st.op = Op::PioIn;
        self.st.status = DRDY | DSC | DRQ;
        Irq::Raise
    }

    // ----- Commands -----

    /// Execute `opcode` (never EXECUTE DEVICE DIAGNOSTIC, which the channel runs).
    fn command(&mut self, opcode: u8, peer_present: bool) -> Irq {
        self.st.error = 0;
        self.st.standby = self.st.standby
            && matches!(
                opcode,
                cmd::CHECK_POWER_MODE | 0x98 | cmd::STANDBY | 0x96 | cmd::STANDBY_IMMEDIATE | 0x94
            );
        let cdrom = self.is_cdrom();
        match opcode {
            cmd::IDENTIFY_DEVICE if cdrom => self.abort_with_signature(),
            cmd::IDENTIFY_DEVICE => {
                let data = words_to_bytes(&self.identify_words(peer_present));
                self.start_pio_in(data)
            }
            cmd::IDENTIFY_PACKET_DEVICE if cdrom => {
                let data = words_to_bytes(&self.identify_words(peer_present));
                self.start_pio_in(data)
            }
            cmd::PACKET if cdrom => {
                if self.st.tf.feature & 0x02 != 0 {
                    // Overlapped commands are not offered (IDENTIFY PACKET word 49 bit 13).
                    return self.abort();
                }
                self.st.op = Op::Packet {
                    dma: self.st.tf.feature & 0x01 != 0,
                    limit: self.st.tf.byte_count(),
                };
                self.st.buf = vec![0; PACKET_SIZE];
                self.st.pos = 0;
                self.st.tf.count = (self.st.tf.count & !7) | IREASON_COD;
                self.st.status = DRDY | DSC | DRQ;
                // DRQ within 50 us: no interrupt before the packet.
                Irq::None
            }
            cmd::DEVICE_RESET if cdrom => {
                self.soft_reset();
                Irq::None
            }
            cmd::READ_SECTORS | cmd::READ_SECTORS_NO_RETRY | cmd::READ_SECTORS_EXT if cdrom => {
                self.abort_with_signature()
            }
            cmd::SET_FEATURES => self.set_features(),
            cmd::FLUSH_CACHE => self.flush(),
            cmd::CHECK_POWER_MODE | 0x98 => {
                self.st.tf.count = if self.st.standby { 0x00 } else { 0xFF };
                self.complete()
            }
            cmd::STANDBY_IMMEDIATE | 0x94 | cmd::STANDBY | 0x96 => {
                self.st.standby = true;
                self.complete()
            }
            cmd::IDLE_IMMEDIATE | 0x95 | cmd::IDLE | 0x97 | cmd::SLEEP | 0x99 => self.complete(),
            _ if cdrom => {
                debug!("IDE: ATAPI drive aborts ATA command {opcode:#04x}");
                self.abort()
            }
            _ => self.disk_command(opcode),
        }
    }

    fn disk_command(&mut self, opcode: u8) -> Irq {
        match opcode {
            cmd::READ_SECTORS | cmd::READ_SECTORS_NO_RETRY => self.start_read(false, 1),
            cmd::READ_SECTORS_EXT => self.start_read(true, 1),
            cmd::READ_MULTIPLE | cmd::READ_MULTIPLE_EXT if self.st.multiple == 0 => self.abort(),
            cmd::READ_MULTIPLE => self.start_read(false, u32::from(self.st.multiple)),
            cmd::READ_MULTIPLE_EXT => self.start_read(true, u32::from(self.st.multiple)),
            cmd::WRITE_SECTORS | cmd::WRITE_SECTORS_NO_RETRY | cmd::WRITE_VERIFY => {
                self.start_write(false, 1)
            }
            cmd::WRITE_SECTORS_EXT => self.start_write(true, 1),
            cmd::WRITE_MULTIPLE | cmd::WRITE_MULTIPLE_EXT if self.st.multiple == 0 => self.abort(),
            cmd::WRITE_MULTIPLE => self.start_write(false, u32::from(self.st.multiple)),
            cmd::WRITE_MULTIPLE_EXT => self.start_write(true, u32::from(self.st.multiple)),
            cmd::READ_DMA | cmd::READ_DMA_NO_RETRY => self.start_dma(false, true),
            cmd::READ_DMA_EXT => self.start_dma(true, true),
            cmd::WRITE_DMA | cmd::WRITE_DMA_NO_RETRY => self.start_dma(false, false),
            cmd::WRITE_DMA_EXT => self.start_dma(true, false),
            cmd::READ_VERIFY | cmd::READ_VERIFY_NO_RETRY | cmd::READ_VERIFY_EXT => {
                self.st.lba48 = opcode == cmd::READ_VERIFY_EXT;
                match self.checked_range() {
                    Some(_) => self.complete(),
                    None => self.abort_keep_error(),
                }
            }
            0x10..=0x1F | 0x70..=0x7F => self.complete(), // RECALIBRATE, SEEK
            cmd::FLUSH_CACHE_EXT => self.flush(),
            cmd::SET_MULTIPLE_MODE => {
                let n = self.st.tf.count;
                if n > MAX_MULTIPLE || (n != 0 && !n.is_power_of_two()) {
                    return self.abort();
                }
                self.st.multiple = n;
                self.complete()
            }
            cmd::INITIALIZE_DEVICE_PARAMETERS => {
                let spt = self.st.tf.count;
                if spt == 0 {
                    return self.abort();
                }
                self.st.heads = (self.st.tf.device & 0x0F) + 1;
                self.st.sectors_per_track = spt;
                self.complete()
            }
            cmd::READ_NATIVE_MAX | cmd::READ_NATIVE_MAX_EXT => {
                let total = self.disk_sectors();
                if total == 0 {
                    return self.abort();
                }
                self.st.lba48 = opcode == cmd::READ_NATIVE_MAX_EXT;
                let max = if self.st.lba48 {
                    total - 1
                } else {
                    (total - 1).min(0x0FFF_FFFF)
                };
                self.set_address(max);
                self.complete()
            }
            _ => {
                debug!("IDE: disk aborts command {opcode:#04x}");
                self.abort()
            }
        }
    }

    /// Abort keeping the error bits `checked_range` chose (ABRT alone by default).
    fn abort_keep_error(&mut self) -> Irq {
        let error = self.st.error | ata_error::ABRT;
        let irq = self.abort();
        self.st.error = error;
        irq
    }

    fn set_features(&mut self) -> Irq {
        let value = self.st.tf.count;
        match self.st.tf.feature {
            0x03 => {
                let mode = value & 7;
                let ok = match value >> 3 {
                    0 => mode <= 1, // PIO default (with or without IORDY)
                    1 => mode <= 4, // PIO flow control mode
                    4 => mode <= 2, // multiword DMA
                    8 => mode <= 5, // Ultra DMA
                    _ => false,
                };
                if !ok {
                    return self.abort();
                }
                if value >> 3 >= 4 {
                    self.st.dma_mode = value;
                }
                self.complete()
            }
            0x02 if !self.is_cdrom() => {
                self.st.write_cache = true;
                self.complete()
            }
            0x82 if !self.is_cdrom() => {
                self.st.write_cache = false;
                self.flush()
            }
            // Read look-ahead on/off, reverting to defaults on/off: nothing to change.
            0xAA | 0x55 | 0xCC | 0x66 => self.complete(),
            f => {
                debug!("IDE: SET FEATURES {f:#04x} not supported");
                self.abort()
            }
        }
    }

    fn flush(&mut self) -> Irq {
        if let Some(m) = self.medium()
            && !m.is_read_only()
            && let Err(e) = m.flush()
        {
            guest_warn!("IDE: flush failed: {e}");
            return self.abort();
        }
        self.complete()
    }

    fn start_read(&mut self, lba48: bool, block: u32) -> Irq {
        self.st.lba48 = lba48;
        let Some((lba, count)) = self.checked_range() else {
            return self.abort_keep_error();
        };
        self.st.op = Op::ReadPio {
            lba,
            left: count,
            block,
        };
        self.read_next_block()
    }

    /// Load the next block of a PIO read into the buffer.
    fn read_next_block(&mut self) -> Irq {
        let Op::ReadPio { lba, left, block } = self.st.op else {
            return Irq::None;
        };
        let n = left.min(block);
        let mut data = vec![0u8; n as usize * SECTOR_SIZE as usize];
        let result = match self.medium() {
            Some(m) => m.read_sectors(lba, &mut data),
            None => return self.abort(),
        };
        if let Err(e) = result {
            guest_warn!("IDE: read of sectors {lba}+{n} failed: {e}");
            return self.abort();
        }
        self.set_address(lba.saturating_add(u64::from(n)));
        self.set_count(left - n);
        self.st.op = Op::ReadPio {
            lba: lba.saturating_add(u64::from(n)),
            left: left - n,
            block,
        };
        self.st.buf = data;
        self.st.pos = 0;
        self.st.status = DRDY | DSC | DRQ;
        Irq::Raise
    }

    fn start_write(&mut self, lba48: bool, block: u32) -> Irq {
        self.st.lba48 = lba48;
        if self.medium().is_some_and(|m| m.is_read_only()) {
            guest_warn!("IDE: write to a read-only disk refused");
            return self.abort();
        }
        let Some((lba, count)) = self.checked_range() else {
            return self.abort_keep_error();
        };
        self.st.op = Op::WritePio {
            lba,
            left: count,
            block,
        };
        self.st.buf = vec![0; count.min(block) as usize * SECTOR_SIZE as usize];
        self.st.pos = 0;
        self.st.status = DRDY | DSC | DRQ;
        // The first block is requested without an interrupt.
        Irq::None
    }

    /// The host filled the buffer of a PIO write.
    fn write_block(&mut self) -> Irq {
        let Op::WritePio { lba, left, block } = self.st.op else {
            return Irq::None;
        };
        let n = left.min(block);
        let data = std::mem::take(&mut self.st.buf);
        let write_through = !self.st.write_cache;
        let result = match self.medium() {
            Some(m) => m
                .write_sectors(lba, &data)
                .and_then(|()| if write_through { m.flush() } else { Ok(()) }),
            None => return self.abort(),
        };
        if let Err(e) = result {
            guest_warn!("IDE: write of sectors {lba}+{n} failed: {e}");
            return self.abort();
        }
        let left = left - n;
        self.set_address(lba.saturating_add(u64::from(n)));
        self.set_count(left);
        if left == 0 {
            return self.complete();
        }
        self.st.op = Op::WritePio {
            lba: lba.saturating_add(u64::from(n)),
            left,
            block,
        };
        self.st.buf = vec![0; left.min(block) as usize * SECTOR_SIZE as usize];
        self.st.pos = 0;
        self.st.status = DRDY | DSC | DRQ;
        Irq::Raise
    }

    fn start_dma(&mut self, lba48: bool, to_memory: bool) -> Irq {
        self.st.lba48 = lba48;
        if !to_memory && self.medium().is_some_and(|m| m.is_read_only()) {
            guest_warn!("IDE: DMA write to a read-only disk refused");
            return self.abort();
        }
        let Some((lba, count)) = self.checked_range() else {
            return self.abort_keep_error();
        };
        self.st.op = Op::Dma {
            to_memory,
            lba,
            total: u64::from(count) * SECTOR_SIZE,
            done: 0,
        };
        self.st.status = DRDY | DSC | DRQ;
        Irq::None
    }

    // ----- ATAPI -----

    fn packet_received(&mut self) -> Irq {
        let Op::Packet { dma, limit } = self.st.op else {
            return Irq::None;
        };
        let mut cdb = [0u8; PACKET_SIZE];
        let n = self.st.buf.len().min(PACKET_SIZE);
        cdb[..n].copy_from_slice(&self.st.buf[..n]);
        let blocks = self.cd_blocks();
        let Some(dev) = &self.dev else {
            return self.abort();
        };
        let id = Identity {
            vendor: "VIREO",
            product: &dev.model,
            revision: &dev.firmware,
        };
        let outcome = atapi::execute(&cdb, &mut self.st.atapi, blocks, &id);
        let (src, len) = match outcome {
            Outcome::Done => return self.atapi_done(),
            Outcome::Check(sense) => return self.atapi_check(sense),
            Outcome::Data(data) => {
                let len = data.len() as u64;
                (Source::Reply { data, pos: 0 }, len)
            }
            Outcome::Read { lba, blocks } => (
                Source::Medium {
                    offset: lba * CD_SECTOR_SIZE,
                },
                blocks * CD_SECTOR_SIZE,
            ),
        };
        if dma {
            self.st.op = Op::AtapiDma { src, left: len };
            self.st.status = DRDY | DSC | DRQ;
            Irq::None
        } else {
            // A limit of 0 is invalid; 0xFFFF is read as 0xFFFE (the count must be even).
            let limit = match limit {
                0 | 0xFFFF => 0xFFFE,
                l => l.max(2),
            };
            self.st.op = Op::AtapiPio {
                src,
                left: len,
                limit,
            };
            self.st.buf = Vec::new();
            self.atapi_next_chunk()
        }
    }

    /// Move up to `out.len()` bytes of ATAPI data from `src` into `out`.
    fn atapi_fill(&mut self, src: &mut Source, out: &mut [u8]) -> Result<(), Sense> {
        match src {
            Source::Reply { data, pos } => {
                let n = out.len().min(data.len().saturating_sub(*pos));
                out[..n].copy_from_slice(&data[*pos..*pos + n]);
                out[n..].fill(0);
                *pos += n;
                Ok(())
            }
            Source::Medium { offset } => {
                let at = *offset;
                let result = match self.medium() {
                    Some(m) => m.read_at(at, out),
                    None => {
                        return Err(Sense::new(
                            atapi::sense_key::NOT_READY,
                            atapi::asc::MEDIUM_NOT_PRESENT,
                            1,
                        ));
                    }
                };
                if let Err(e) = result {
                    guest_warn!("ATAPI: read of {} bytes at {at:#x} failed: {e}", out.len());
                    return Err(Sense::new(
                        atapi::sense_key::MEDIUM_ERROR,
                        atapi::asc::UNRECOVERED_READ_ERROR,
                        0,
                    ));
                }
                *offset = at.saturating_add(out.len() as u64);
                Ok(())
            }
        }
    }

    fn atapi_next_chunk(&mut self) -> Irq {
        let Op::AtapiPio {
            mut src,
            left,
            limit,
        } = std::mem::replace(&mut self.st.op, Op::Idle)
        else {
            return Irq::None;
        };
        if left == 0 {
            return self.atapi_done();
        }
        let n = if left > u64::from(limit) {
            u64::from(limit & !1)
        } else {
            left
        } as usize;
        let mut chunk = vec![0u8; n];
        if let Err(sense) = self.atapi_fill(&mut src, &mut chunk) {
            return self.atapi_check(sense);
        }
        self.st.buf = chunk;
        self.st.pos = 0;
        self.st.op = Op::AtapiPio {
            src,
            left: left - n as u64,
            limit,
        };
        self.st.tf.lba_mid = n as u8;
        self.st.tf.lba_high = (n >> 8) as u8;
        self.st.tf.count = (self.st.tf.count & !7) | IREASON_IO;
        self.st.status = DRDY | DSC | DRQ;
        Irq::Raise
    }

    fn atapi_done(&mut self) -> Irq {
        self.st.op = Op::Idle;
        self.st.buf = Vec::new();
        self.st.pos = 0;
        self.st.error = 0;
        self.st.status = DRDY | DSC;
        self.st.tf.count = (self.st.tf.count & !7) | IREASON_IO | IREASON_COD;
        Irq::Raise
    }

    fn atapi_check(&mut self, sense: Sense) -> Irq {
        self.st.atapi.sense = sense;
        self.st.op = Op::Idle;
        self.st.buf = Vec::new();
        self.st.pos = 0;
        self.st.error = sense.key << 4;
        self.st.status = DRDY | ERR;
        self.st.tf.count = (self.st.tf.count & !7) | IREASON_IO | IREASON_COD;
        Irq::Raise
    }

    // ----- PIO data port -----

    fn data_in_phase(&self) -> bool {
        matches!(
            self.st.op,
            Op::PioIn | Op::ReadPio { .. } | Op::AtapiPio { .. }
        )
    }

    fn data_out_phase(&self) -> bool {
        matches!(self.st.op, Op::WritePio { .. } | Op::Packet { .. })
    }

    /// The host reads `out.len()` bytes (2 or 4) from the data port.
    fn data_read(&mut self, out: &mut [u8]) -> Irq {
        out.fill(0);
        if self.st.status & DRQ == 0 || !self.data_in_phase() {
            return Irq::None;
        }
        let pos = self.st.pos.min(self.st.buf.len());
        let n = out.len().min(self.st.buf.len() - pos);
        out[..n].copy_from_slice(&self.st.buf[pos..pos + n]);
        self.st.pos = pos + out.len();
        if self.st.pos >= self.st.buf.len() {
            self.st.status &= !DRQ;
            return self.end_of_block();
        }
        Irq::None
    }

    /// The host writes `data` (2 or 4 bytes) to the data port.
    fn data_write(&mut self, data: &[u8]) -> Irq {
        if self.st.status & DRQ == 0 || !self.data_out_phase() {
            return Irq::None;
        }
        let pos = self.st.pos.min(self.st.buf.len());
        let n = data.len().min(self.st.buf.len() - pos);
        self.st.buf[pos..pos + n].copy_from_slice(&data[..n]);
        self.st.pos = pos + data.len();
        if self.st.pos >= self.st.buf.len() {
            self.st.status &= !DRQ;
            return self.end_of_block();
        }
        Irq::None
    }

    /// The buffer of a PIO phase has been drained or filled.
    fn end_of_block(&mut self) -> Irq {
        match self.st.op {
            Op::PioIn => {
                self.st.op = Op::Idle;
                self.st.status = DRDY | DSC;
                Irq::None
            }
            Op::ReadPio { left: 0, .. } => {
                self.st.op = Op::Idle;
                self.st.status = DRDY | DSC;
                Irq::None
            }
            Op::ReadPio { .. } => self.read_next_block(),
            Op::WritePio { .. } => self.write_block(),
            Op::Packet { .. } => self.packet_received(),
            Op::AtapiPio { .. } => self.atapi_next_chunk(),
            Op::Idle | Op::Dma { .. } | Op::AtapiDma { .. } => Irq::None,
        }
    }

    // ----- DMA, as the bus-master engine sees the drive -----

    /// `Some(to_memory)` while a DMA transfer waits for the engine.
    fn dma_direction(&self) -> Option<bool> {
        match self.st.op {
            Op::Dma { to_memory, .. } => Some(to_memory),
            Op::AtapiDma { .. } => Some(true),
            _ => None,
        }
    }

    fn dma_left(&self) -> u64 {
        match &self.st.op {
            Op::Dma { total, done, .. } => total - done,
            Op::AtapiDma { left, .. } => *left,
            _ => 0,
        }
    }

    /// The drive sends `out.len()` bytes (at most what is left).
    fn dma_produce(&mut self, out: &mut [u8]) -> Result<(), ()> {
        match std::mem::replace(&mut self.st.op, Op::Idle) {
            Op::Dma {
                to_memory: true,
                lba,
                total,
                done,
            } => {
                let at = dma_offset(lba, done);
                let result = match self.medium() {
                    Some(m) => m.read_at(at, out),
                    None => return Err(()),
                };
                if let Err(e) = result {
                    guest_warn!("IDE: DMA read at byte {at:#x} failed: {e}");
                    self.st.op = Op::Dma {
                        to_memory: true,
                        lba,
                        total,
                        done,
                    };
                    return Err(());
                }
                self.st.op = Op::Dma {
                    to_memory: true,
                    lba,
                    total,
                    done: done + out.len() as u64,
                };
                Ok(())
            }
            Op::AtapiDma { mut src, left } => {
                let result = self.atapi_fill(&mut src, out);
                self.st.op = Op::AtapiDma {
                    src,
                    left: left - out.len() as u64,
                };
                result.map_err(|sense| {
                    self.st.atapi.sense = sense;
                })
            }
            other => {
                self.st.op = other;
                Err(())
            }
        }
    }

    /// The drive receives `data` (at most what is left).
    fn dma_consume(&mut self, data: &[u8]) -> Result<(), ()> {
        let Op::Dma {
            to_memory: false,
            lba,
            total,
            done,
        } = self.st.op
        else {
            return Err(());
        };
        let at = dma_offset(lba, done);
        let result = match self.medium() {
            Some(m) => m.write_at(at, data),
            None => return Err(()),
        };
        if let Err(e) = result {
            guest_warn!("IDE: DMA write at byte {at:#x} failed: {e}");
            return Err(());
        }
        self.st.op = Op::Dma {
            to_memory: false,
            lba,
            total,
            done: done + data.len() as u64,
        };
        Ok(())
    }

    /// The engine moved everything: end the command.
    fn dma_complete(&mut self) -> Irq {
        match self.st.op {
            Op::Dma {
                to_memory,
                lba,
                total,
                ..
            } => {
                let sectors = total / SECTOR_SIZE;
                self.set_address(lba.saturating_add(sectors));
                self.set_count(0);
                if !to_memory
                    && !self.st.write_cache
                    && let Some(m) = self.medium()
                    && let Err(e) = m.flush()
                {
                    guest_warn!("IDE: write-through flush failed: {e}");
                    return self.abort();
                }
                self.complete()
            }
            Op::AtapiDma { .. } => self.atapi_done(),
            _ => Irq::None,
        }
    }

    /// The transfer failed (medium error, bus error, wrong direction): end the command with
    /// an error.
    fn dma_fail(&mut self, sense: Sense) -> Irq {
        match self.st.op {
            Op::Dma { .. } => self.abort(),
            Op::AtapiDma { .. } => {
                let sense = if self.st.atapi.sense.key != 0 {
                    self.st.atapi.sense
                } else {
                    sense
                };
                self.atapi_check(sense)
            }
            _ => Irq::None,
        }
    }
}

/// The byte offset of a DMA transfer's progress; past the 64-bit range (only a corrupt
/// snapshot gets there) it saturates, and the backend's range check refuses it.
fn dma_offset(lba: u64, done: u64) -> u64 {
    lba.saturating_mul(SECTOR_SIZE).saturating_add(done)
}

/// IDENTIFY word 93, the hardware reset result (ATA/ATAPI-6 8.15.54): device number set by
/// jumper, diagnostics passed, an 80-conductor cable, and whether device 0 saw device 1
/// (PDIAG-/DASP-) or answers for it. SeaBIOS skips probing device 1 when device 0 says it
/// answers for it.
fn hardware_reset_result(unit: usize, peer_present: bool) -> u16 {
    let common = 1 << 14 | 1 << 13;
    if unit == 0 {
        let device1 = if peer_present { 0x30 } else { 0x40 };
        common | device1 | 0x08 | 0x02 | 0x01
    } else {
        common | 0x0800 | 0x0200 | 0x0100
    }
}

/// QEMU's geometry guess for a disk without a partition table to go by.
fn default_geometry(sectors: u64) -> (u16, u8, u8) {
    let cyls = (sectors / (16 * 63)).clamp(1, 16383) as u16;
    (cyls, 16, 63)
}

/// An ATA string: two characters a word, the first in the high byte, space padded.
fn put_string(words: &mut [u16; 256], first: usize, len: usize, s: &str) {
    let mut bytes = s.bytes().chain(std::iter::repeat(b' '));
    for w in words.iter_mut().skip(first).take(len / 2) {
        let hi = bytes.next().unwrap_or(b' ');
        let lo = bytes.next().unwrap_or(b' ');
        *w = u16::from(hi) << 8 | u16::from(lo);
    }
}

fn words_to_bytes(words: &[u16; 256]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

// ---------------------------------------------------------------------------------------------
// Channel
// ---------------------------------------------------------------------------------------------

/// One bus-master engine (SFF-8038i).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct BusMaster {
    command: u8,
    status: u8,
    /// PRD table base (bits 1:0 read as zero).
    table: u32,
    /// The next PRD entry to fetch.
    next_entry: u32,
    /// What is left of the current entry.
    entry_addr: u32,
    entry_left: u32,
    entry_last: bool,
    /// Entries fetched since the engine started.
    entries: u32,
}

impl BusMaster {
    fn save(&self, w: &mut StateWriter) {
        w.u8(self.command);
        w.u8(self.status);
        w.u32(self.table);
        w.u32(self.next_entry);
        w.u32(self.entry_addr);
        w.u32(self.entry_left);
        w.bool(self.entry_last);
        w.u32(self.entries);
    }

    fn load(r: &mut StateReader<'_>) -> Result<BusMaster, SnapshotError> {
        let bm = BusMaster {
            command: r.u8()?,
            status: r.u8()?,
            table: r.u32()?,
            next_entry: r.u32()?,
            entry_addr: r.u32()?,
            entry_left: r.u32()?,
            entry_last: r.bool()?,
            entries: r.u32()?,
        };
        if bm.entry_left > 0x10000 || bm.entries > MAX_PRD_ENTRIES {
            return Err(SnapshotError::Invalid(format!(
                "bus master: {} bytes left in a PRD entry, {} entries walked",
                bm.entry_left, bm.entries
            )));
        }
        Ok(bm)
    }
}

/// How a bus-master run ended.
enum DmaEnd {
    /// The drive got or sent everything; `exhausted` if the PRD table ended with it.
    Done { exhausted: bool },
    /// The PRD table ended first: the drive still waits.
    TableEnd,
    /// A PCI-side failure (memory, bus mastering disabled, direction).
    BusError,
    /// The drive failed (medium error).
    DriveError,
}

/// One IDE channel: two drive positions, their shared interrupt line and the bus-master
/// engine. Registered on the port bus at its command and control blocks.
pub struct IdeChannel {
    index: usize,
    drives: [Drive; 2],
    selected: usize,
    control: u8,
    irq_pending: bool,
    irq_level: bool,
    bm: BusMaster,
    irq: Arc<dyn IrqLine>,
    memory: Arc<dyn GuestMemory>,
    bus_master_enabled: Arc<AtomicBool>,
}

impl IdeChannel {
    fn new(
        index: usize,
        drives: ChannelDrives,
        irq: Arc<dyn IrqLine>,
        memory: Arc<dyn GuestMemory>,
        bus_master_enabled: Arc<AtomicBool>,
    ) -> IdeChannel {
        let [d0, d1] = drives;
        IdeChannel {
            index,
            drives: [Drive::new(d0, index * 2), Drive::new(d1, index * 2 + 1)],
            selected: 0,
            control: 0,
            irq_pending: false,
            irq_level: false,
            bm: BusMaster::default(),
            irq,
            memory,
            bus_master_enabled,
        }
    }

    /// The command and control block bases this channel answers at.
    pub fn bases(&self) -> (u64, u64) {
        if self.index == 0 {
            (PRIMARY_CMD_BASE, PRIMARY_CTL_BASE)
        } else {
            (SECONDARY_CMD_BASE, SECONDARY_CTL_BASE)
        }
    }

    fn empty(&self) -> bool {
        !self.drives[0].present() && !self.drives[1].present()
    }

    /// A PCI reset or power cycle: drives, engine and interrupt back to power-on.
    fn reset(&mut self) {
        for d in &mut self.drives {
            d.power_on_reset();
        }
        self.selected = 0;
        self.control = 0;
        self.bm = BusMaster::default();
        self.irq_pending = false;
        self.update_irq();
    }

    // ----- Interrupt -----

    fn raise_irq(&mut self) {
        self.irq_pending = true;
        if self.control & device_control::NIEN == 0 {
            self.bm.status |= bm::STATUS_INTERRUPT;
        }
        self.update_irq();
    }

    fn clear_irq(&mut self) {
        self.irq_pending = false;
        self.update_irq();
    }

    fn update_irq(&mut self) {
        let level = self.irq_pending && self.control & device_control::NIEN == 0;
        if level != self.irq_level {
            self.irq_level = level;
            self.irq.set_level(level);
        }
    }

    fn signal(&mut self, irq: Irq) {
        if irq == Irq::Raise {
            self.raise_irq();
        }
    }

    // ----- Command block -----

    fn read_register(&mut self, reg: u64) -> u8 {
        if self.empty() {
            return EMPTY_CHANNEL;
        }
        let hob = self.control & device_control::HOB != 0;
        let drive = &self.drives[self.selected];
        let present = drive.present();
        let tf = &drive.st.tf;
        match reg {
            // A byte read of the data port moves no data.
            0 => 0xFF,
            1 if !present => 0,
            1 if hob => tf.hob_feature,
            1 => drive.st.error,
            2 if hob => tf.hob_count,
            2 => tf.count,
            3 if hob => tf.hob_lba_low,
            3 => tf.lba_low,
            4 if hob => tf.hob_lba_mid,
            4 => tf.lba_mid,
            5 if hob => tf.hob_lba_high,
            5 => tf.lba_high,
            6 => tf.device,
            _ => {
                let status = if present { drive.st.status } else { 0 };
                self.clear_irq();
                status
            }
        }
    }

    fn write_register(&mut self, reg: u64, value: u8) {
        if self.empty() {
            return;
        }
        // Any command block write ends reading the high-order bytes.
        self.control &= !device_control::HOB;
        if reg == 7 {
            self.command(value);
            return;
        }
        if self.drives[self.selected].st.status & (BSY | DRQ) != 0 {
            debug!("IDE{}: register write while busy ignored", self.index);
            return;
        }
        for d in &mut self.drives {
            let tf = &mut d.st.tf;
            match reg {
                1 => {
                    tf.hob_feature = tf.feature;
                    tf.feature = value;
                }
                2 => {
                    tf.hob_count = tf.count;
                    tf.count = value;
                }
                3 => {
                    tf.hob_lba_low = tf.lba_low;
                    tf.lba_low = value;
                }
                4 => {
                    tf.hob_lba_mid = tf.lba_mid;
                    tf.lba_mid = value;
                }
                5 => {
                    tf.hob_lba_high = tf.lba_high;
                    tf.lba_high = value;
                }
                6 => tf.device = value | DEV_OBSOLETE,
                _ => {}
            }
        }
        if reg == 6 {
            self.selected = usize::from(value & DEV_SELECT != 0);
        }
    }

    fn command(&mut self, opcode: u8) {
        self.clear_irq();
        let unit = self.selected;
        let drive = &mut self.drives[unit];
        if !drive.present() {
            debug!(
                "IDE{}: command {opcode:#04x} to absent drive {unit}",
                self.index
            );
            return;
        }
        if drive.st.status & (BSY | DRQ) != 0 && !(opcode == cmd::DEVICE_RESET && drive.is_cdrom())
        {
            debug!(
                "IDE{}: command {opcode:#04x} while busy ignored",
                self.index
            );
            return;
        }
        if opcode == cmd::EXECUTE_DEVICE_DIAGNOSTIC {
            for d in &mut self.drives {
                if d.present() {
                    d.soft_reset();
                }
            }
            self.raise_irq();
            return;
        }
        let peer_present = self.drives[1 - unit].present();
        let irq = self.drives[unit].command(opcode, peer_present);
        self.signal(irq);
        if self.drives[unit].dma_direction().is_some() {
            self.run_dma(unit);
        }
    }

    fn data_read(&mut self, out: &mut [u8]) {
        if self.empty() {
            out.fill(EMPTY_CHANNEL);
            return;
        }
        let irq = self.drives[self.selected].data_read(out);
        self.signal(irq);
        self.start_pending_dma();
    }

    fn data_write(&mut self, data: &[u8]) {
        if self.empty() {
            return;
        }
        let irq = self.drives[self.selected].data_write(data);
        self.signal(irq);
        self.start_pending_dma();
    }

    /// An ATAPI packet that asked for DMA may be waiting for an engine already running.
    fn start_pending_dma(&mut self) {
        let unit = self.selected;
        if self.drives[unit].dma_direction().is_some() {
            self.run_dma(unit);
        }
    }

    // ----- Control block -----

    fn read_alt_status(&self) -> u8 {
        if self.empty() {
            return EMPTY_CHANNEL;
        }
        let drive = &self.drives[self.selected];
        if drive.present() { drive.st.status } else { 0 }
    }

    fn write_device_control(&mut self, value: u8) {
        if self.empty() {
            return;
        }
        let old = self.control;
        self.control = value;
        let srst = device_control::SRST;
        if value & srst != 0 && old & srst == 0 {
            // Reset asserted: both devices go busy and drop what they were doing.
            for d in &mut self.drives {
                d.st.op = Op::Idle;
                d.st.buf = Vec::new();
                d.st.pos = 0;
                d.st.status = BSY;
            }
            self.irq_pending = false;
        } else if value & srst == 0 && old & srst != 0 {
            // Reset released: diagnostics pass, signatures are posted, device 0 is selected.
            for d in &mut self.drives {
                d.soft_reset();
            }
            self.selected = 0;
        }
        let nien_cleared = old & device_control::NIEN != 0 && value & device_control::NIEN == 0;
        if nien_cleared && self.irq_pending {
            self.bm.status |= bm::STATUS_INTERRUPT;
        }
        self.update_irq();
    }

    // ----- Bus master -----

    fn bm_read(&self, reg: u64) -> u8 {
        match reg {
            0 => self.bm.command,
            2 => self.bm.status,
            4..=7 => self.bm.table.to_le_bytes()[(reg - 4) as usize],
            _ => 0,
        }
    }

    fn bm_write(&mut self, reg: u64, value: u8) {
        match reg {
            0 => {
                let was = self.bm.command & bm::CMD_START != 0;
                let start = value & bm::CMD_START != 0;
                self.bm.command = value & (bm::CMD_START | bm::CMD_TO_MEMORY);
                if start && !was {
                    self.bm.status |= bm::STATUS_ACTIVE;
                    self.bm.next_entry = self.bm.table;
                    self.bm.entry_left = 0;
                    self.bm.entry_last = false;
                    self.bm.entries = 0;
                    if let Some(unit) = self.dma_unit() {
                        self.run_dma(unit);
                    }
                } else if !start && was {
                    // Stopping the engine mid-transfer leaves the drive waiting; the host's
                    // reset recovers it, as on hardware.
                    self.bm.status &= !bm::STATUS_ACTIVE;
                }
            }
            2 => {
                let keep = self.bm.status & bm::STATUS_ACTIVE;
                let cleared = self.bm.status & !value & (bm::STATUS_ERROR | bm::STATUS_INTERRUPT);
                self.bm.status = keep | cleared | (value & bm::STATUS_DRIVE_CAPABLE);
            }
            4..=7 => {
                let mut bytes = self.bm.table.to_le_bytes();
                bytes[(reg - 4) as usize] = value;
                self.bm.table = u32::from_le_bytes(bytes) & !3;
            }
            _ => {}
        }
    }

    /// The drive with a DMA transfer waiting for the engine, the selected one first.
    fn dma_unit(&self) -> Option<usize> {
        [self.selected, 1 - self.selected]
            .into_iter()
            .find(|&u| self.drives[u].dma_direction().is_some())
    }

    /// Run the engine for `unit` if both sides are ready; see the module documentation.
    fn run_dma(&mut self, unit: usize) {
        if self.bm.status & bm::STATUS_ACTIVE == 0 {
            return;
        }
        let Some(to_memory) = self.drives[unit].dma_direction() else {
            return;
        };
        let end = if !self.bus_master_enabled.load(Ordering::Acquire) {
            guest_warn!(
                "IDE{}: DMA with bus mastering disabled in the PCI command register",
                self.index
            );
            DmaEnd::BusError
        } else if to_memory != (self.bm.command & bm::CMD_TO_MEMORY != 0) {
            guest_warn!(
                "IDE{}: bus-master direction disagrees with the drive's command",
                self.index
            );
            DmaEnd::BusError
        } else {
            self.walk_prd(unit, to_memory)
        };
        let drive = &mut self.drives[unit];
        let irq = match end {
            DmaEnd::Done { exhausted } => {
                if exhausted {
                    self.bm.status &= !bm::STATUS_ACTIVE;
                }
                drive.dma_complete()
            }
            DmaEnd::TableEnd => {
                debug!(
                    "IDE{}: PRD table ended with {} bytes to go",
                    self.index,
                    drive.dma_left()
                );
                self.bm.status &= !bm::STATUS_ACTIVE;
                Irq::None
            }
            DmaEnd::BusError => {
                self.bm.status = (self.bm.status | bm::STATUS_ERROR) & !bm::STATUS_ACTIVE;
                drive.dma_fail(Sense::new(atapi::sense_key::ABORTED_COMMAND, 0, 0))
            }
            DmaEnd::DriveError => {
                self.bm.status &= !bm::STATUS_ACTIVE;
                drive.dma_fail(Sense::new(
                    atapi::sense_key::MEDIUM_ERROR,
                    atapi::asc::UNRECOVERED_READ_ERROR,
                    0,
                ))
            }
        };
        self.signal(irq);
    }

    fn walk_prd(&mut self, unit: usize, to_memory: bool) -> DmaEnd {
        let mut chunk = Vec::new();
        loop {
            let left = self.drives[unit].dma_left();
            if left == 0 {
                return DmaEnd::Done {
                    exhausted: self.bm.entry_left == 0 && self.bm.entry_last,
                };
            }
            if self.bm.entry_left == 0 {
                if self.bm.entry_last {
                    return DmaEnd::TableEnd;
                }
                if self.bm.entries >= MAX_PRD_ENTRIES {
                    guest_warn!(
                        "IDE{}: PRD table longer than {MAX_PRD_ENTRIES} entries",
                        self.index
                    );
                    return DmaEnd::TableEnd;
                }
                let at = u64::from(self.bm.next_entry);
                let mut entry = [0u8; 8];
                if let Err(e) = self.memory.read(at, &mut entry) {
                    guest_warn!("IDE{}: PRD fetch: {e}", self.index);
                    return DmaEnd::BusError;
                }
                let addr = u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]);
                let count = u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
                self.bm.next_entry = self.bm.next_entry.wrapping_add(8);
                self.bm.entries += 1;
                self.bm.entry_addr = addr & !1;
                self.bm.entry_left = match count & 0xFFFE {
                    0 => 0x10000,
                    n => n,
                };
                self.bm.entry_last = count & 0x8000_0000 != 0;
            }
            let n = u64::from(self.bm.entry_left).min(left) as usize;
            let addr = u64::from(self.bm.entry_addr);
            chunk.resize(n, 0);
            let drive = &mut self.drives[unit];
            if to_memory {
                if drive.dma_produce(&mut chunk).is_err() {
                    return DmaEnd::DriveError;
                }
                if let Err(e) = self.memory.write(addr, &chunk) {
                    guest_warn!("IDE{}: DMA to guest memory: {e}", self.index);
                    return DmaEnd::BusError;
                }
            } else {
                if let Err(e) = self.memory.read(addr, &mut chunk) {
                    guest_warn!("IDE{}: DMA from guest memory: {e}", self.index);
                    return DmaEnd::BusError;
                }
                if drive.dma_consume(&chunk).is_err() {
                    return DmaEnd::DriveError;
                }
            }
            self.bm.entry_addr = self.bm.entry_addr.wrapping_add(n as u32);
            self.bm.entry_left -= n as u32;
        }
    }

    // ----- Media (host side) -----

    fn drive_mut(&mut self, unit: usize) -> Option<&mut Drive> {
        self.drives.get_mut(unit)
    }

    // ----- Snapshot -----

    fn save(&self, w: &mut StateWriter) {
        w.u8(self.selected as u8);
        w.u8(self.control);
        w.bool(self.irq_pending);
        self.bm.save(w);
        for d in &self.drives {
            w.u8(kind_tag(d.kind()));
            d.st.save(w);
        }
    }

    fn load(&self, r: &mut StateReader<'_>) -> Result<ChannelState, SnapshotError> {
        let selected = usize::from(r.u8_below(2)?);
        let control = r.u8()?;
        let irq_pending = r.bool()?;
        let bm = BusMaster::load(r)?;
        let mut drives = Vec::with_capacity(2);
        for (unit, d) in self.drives.iter().enumerate() {
            let saved = r.u8_below(3)?;
            let st = DriveState::load(r)?;
            let here = kind_tag(d.kind());
            if saved != here && saved != 0 {
                return Err(SnapshotError::Invalid(format!(
                    "IDE{}.{unit}: the snapshot has a {} where this machine has a {}",
                    self.index,
                    kind_name(saved),
                    kind_name(here)
                )));
            }
            drives.push((saved == 0 && here != 0, st));
        }
        let mut drives = drives.into_iter();
        let (Some(d0), Some(d1)) = (drives.next(), drives.next()) else {
            return Err(SnapshotError::Invalid("IDE channel without drives".into()));
        };
        Ok(ChannelState {
            selected,
            control,
            irq_pending,
            bm,
            drives: [d0, d1],
        })
    }

    fn apply(&mut self, state: ChannelState) {
        self.selected = state.selected;
        self.control = state.control;
        self.irq_pending = state.irq_pending;
        self.bm = state.bm;
        for (unit, (unplug, st)) in state.drives.into_iter().enumerate() {
            let d = &mut self.drives[unit];
            if unplug {
                debug!("IDE{}.{unit}: unplugged in the snapshot", self.index);
                d.dev = None;
            }
            d.st = st;
        }
        // Re-drive the line whatever it was.
        self.irq_level = self.irq_pending && self.control & device_control::NIEN == 0;
        self.irq.set_level(self.irq_level);
    }
}

/// A channel's state parsed from a snapshot, applied only once both channels parsed.
struct ChannelState {
    selected: usize,
    control: u8,
    irq_pending: bool,
    bm: BusMaster,
    /// (unplug the drive, its state)
    drives: [(bool, DriveState); 2],
}

fn kind_tag(kind: Option<DriveKind>) -> u8 {
    match kind {
        None => 0,
        Some(DriveKind::Disk) => 1,
        Some(DriveKind::Cdrom) => 2,
    }
}

fn kind_name(tag: u8) -> &'static str {
    match tag {
        0 => "empty position",
        1 => "disk",
        _ => "CD-ROM",
    }
}

impl BusDevice for IdeChannel {
    fn read(&mut self, at: BusAddress, data: &mut [u8]) {
        let (cmd_base, ctl_base) = self.bases();
        if at.base == cmd_base {
            if at.offset == 0 && data.len() >= 2 {
                self.data_read(data);
                return;
            }
            // The other registers are 8 bits wide: a wider access reads its neighbours.
            for (i, b) in data.iter_mut().enumerate() {
                *b = match at.offset + i as u64 {
                    reg @ 0..=7 => self.read_register(reg),
                    _ => 0xFF,
                };
            }
        } else if at.base == ctl_base {
            for (i, b) in data.iter_mut().enumerate() {
                *b = if at.offset + i as u64 == 0 {
                    self.read_alt_status()
                } else {
                    0xFF
                };
            }
        } else {
            debug!("IDE{}: read at unknown base {:#x}", self.index, at.base);
        }
    }

    fn write(&mut self, at: BusAddress, data: &[u8]) {
        let (cmd_base, ctl_base) = self.bases();
        if at.base == cmd_base {
            if at.offset == 0 && data.len() >= 2 {
                self.data_write(data);
                return;
            }
            for (i, &b) in data.iter().enumerate() {
                // A byte write to the data port moves no data.
                if let reg @ 1..=7 = at.offset + i as u64 {
                    self.write_register(reg, b);
                }
            }
        } else if at.base == ctl_base {
            if at.offset == 0
                && let Some(&b) = data.first()
            {
                self.write_device_control(b);
            }
        } else {
            debug!("IDE{}: write at unknown base {:#x}", self.index, at.base);
        }
    }

    /// The data port moves 16 or 32 bits at a time; the other registers are bytes, and an
    /// access spanning several is split into them here.
    fn access_sizes(&self) -> AccessSizes {
        AccessSizes::new(1, 4)
    }
}

// ---------------------------------------------------------------------------------------------
// The PCI function
// ---------------------------------------------------------------------------------------------

fn lock(channel: &Mutex<IdeChannel>) -> MutexGuard<'_, IdeChannel> {
    channel.lock().unwrap_or_else(|e| e.into_inner())
}

/// A handle on the controller's drives for the board and the Xen platform device: media
/// changes, unplugging, flushing. Cheap to clone.
#[derive(Clone)]
pub struct IdeHandle {
    channels: [Arc<Mutex<IdeChannel>>; 2],
}

impl IdeHandle {
    /// Insert `medium` into the CD-ROM drive at (`channel`, `unit`), replacing any: the guest
    /// sees a unit attention and a new-media event. Returns false if there is no CD-ROM there.
    pub fn insert_medium(
        &self,
        channel: usize,
        unit: usize,
        medium: Box<dyn BlockBackend>,
    ) -> bool {
        let Some(ch) = self.channels.get(channel) else {
            return false;
        };
        let mut ch = lock(ch);
        let Some(drive) = ch.drive_mut(unit) else {
            return false;
        };
        let Some(dev) = drive.dev.as_mut().filter(|d| d.kind == DriveKind::Cdrom) else {
            return false;
        };
        dev.medium = Some(medium);
        drive.st.atapi.medium_changed();
        true
    }

    /// Remove the medium of the CD-ROM at (`channel`, `unit`) (the host's eject, which ignores
    /// the guest's lock as QEMU's `eject -f` does). Returns the medium.
    pub fn eject_medium(&self, channel: usize, unit: usize) -> Option<Box<dyn BlockBackend>> {
        let mut ch = lock(self.channels.get(channel)?);
        let drive = ch.drive_mut(unit)?;
        let dev = drive.dev.as_mut().filter(|d| d.kind == DriveKind::Cdrom)?;
        let medium = dev.medium.take();
        drive.st.atapi.new_media = false;
        medium
    }

    /// Detach hard disks, as the Xen platform device's unplug protocol asks once the guest's
    /// PV drivers take over: all of them, or all but the primary master (`keep_primary_master`,
    /// the "auxiliary disks" unplug). CD-ROMs stay. The drives are flushed first.
    pub fn unplug_disks(&self, keep_primary_master: bool) {
        for (c, ch) in self.channels.iter().enumerate() {
            let mut ch = lock(ch);
            for unit in 0..2 {
                if keep_primary_master && c == 0 && unit == 0 {
                    continue;
                }
                let Some(drive) = ch.drive_mut(unit) else {
                    continue;
                };
                if drive.kind() != Some(DriveKind::Disk) {
                    continue;
                }
                if let Some(m) = drive.medium()
                    && let Err(e) = m.flush()
                {
                    warn!("IDE{c}.{unit}: flush before unplug failed: {e}");
                }
                debug!("IDE{c}.{unit}: disk unplugged");
                drive.dev = None;
                drive.power_on_reset();
            }
        }
    }

    /// Flush every drive's backend (at exit).
    pub fn flush_all(&self) {
        for (c, ch) in self.channels.iter().enumerate() {
            let mut ch = lock(ch);
            for unit in 0..2 {
                if let Some(m) = ch.drive_mut(unit).and_then(|d| d.medium())
                    && let Err(e) = m.flush()
                {
                    warn!("IDE{c}.{unit}: flush failed: {e}");
                }
            }
        }
    }

    /// What sits at (`channel`, `unit`).
    pub fn drive_kind(&self, channel: usize, unit: usize) -> Option<DriveKind> {
        let ch = lock(self.channels.get(channel)?);
        ch.drives.get(unit)?.kind()
    }
}

/// The PIIX3 IDE function. See the module documentation.
pub struct Piix3Ide {
    config: ConfigSpace,
    channels: [Arc<Mutex<IdeChannel>>; 2],
    bus_master_enabled: Arc<AtomicBool>,
}

impl Piix3Ide {
    /// The controller with `primary` and `secondary` drives (master, slave), interrupting on
    /// `irq14` and `irq15` (the ISA lines) and doing DMA through `memory`.
    pub fn new(
        memory: Arc<dyn GuestMemory>,
        irq14: Arc<dyn IrqLine>,
        irq15: Arc<dyn IrqLine>,
        primary: ChannelDrives,
        secondary: ChannelDrives,
    ) -> Piix3Ide {
        let mut config = ConfigSpace::new(PciIds {
            vendor_id: 0x8086,
            device_id: 0x7010,
            revision_id: 0x00,
            class_code: 0x01_01_80,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
        });
        config.set_status_bits(status::FAST_BACK_TO_BACK | status::DEVSEL_MEDIUM);
        if let Err(e) = config.add_bar(BMIBA_BAR, BarKind::Io, BMIBA_SIZE) {
            unreachable!("a 16-byte I/O BAR 4 is valid: {e}");
        }
        // IDETIM (both channels) and SIDETIM are plain read/write registers.
        config.set_write_mask(IDETIM_PRIMARY, &[0xFF; 5]);
        config.capture_power_on();
        let bus_master_enabled = Arc::new(AtomicBool::new(false));
        let ch = |index, drives, irq| {
            Arc::new(Mutex::new(IdeChannel::new(
                index,
                drives,
                irq,
                memory.clone(),
                bus_master_enabled.clone(),
            )))
        };
        Piix3Ide {
            config,
            channels: [ch(0, primary, irq14), ch(1, secondary, irq15)],
            bus_master_enabled,
        }
    }

    /// Put both channels' command and control blocks on the port bus.
    pub fn register_legacy_ports(&self, pio: &Bus) -> Result<(), BusError> {
        for (i, ch) in self.channels.iter().enumerate() {
            let (cmd_base, ctl_base) = lock(ch).bases();
            let name = if i == 0 { "ide0" } else { "ide1" };
            pio.insert(name, cmd_base, CMD_BLOCK_LEN, ch.clone())?;
            pio.insert(&format!("{name}-ctl"), ctl_base, CTL_BLOCK_LEN, ch.clone())?;
        }
        Ok(())
    }

    /// Set both channels' decode-enable bits as firmware does (SeaBIOS and hvmloader write
    /// 0x8000 to IDETIM); for boards that start a kernel without firmware.
    pub fn enable_decode(&mut self) {
        for reg in [IDETIM_PRIMARY, IDETIM_SECONDARY] {
            let v = self.config.get_u16(reg) | IDETIM_DECODE_ENABLE;
            self.config.set_u16(reg, v);
        }
    }

    /// A handle for media changes, unplugging and flushing.
    pub fn handle(&self) -> IdeHandle {
        IdeHandle {
            channels: self.channels.clone(),
        }
    }

    /// Channel 0 (primary) or 1 (secondary), for tests and boards that wire ports themselves.
    pub fn channel(&self, index: usize) -> Option<Arc<Mutex<IdeChannel>>> {
        self.channels.get(index).cloned()
    }

    fn sync_bus_master(&self) {
        let on = self.config.command() & command::BUS_MASTER != 0;
        self.bus_master_enabled.store(on, Ordering::Release);
    }
}

impl PciFunction for Piix3Ide {
    fn name(&self) -> &str {
        "ide"
    }

    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn write_config(&mut self, reg: usize, data: &[u8]) {
        self.config.write(reg, data);
        self.sync_bus_master();
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if bar != BMIBA_BAR {
            return;
        }
        for (i, b) in data.iter_mut().enumerate() {
            let off = offset + i as u64;
            if let Some(ch) = self.channels.get((off / 8) as usize) {
                *b = lock(ch).bm_read(off % 8);
            }
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != BMIBA_BAR {
            return;
        }
        for (i, &b) in data.iter().enumerate() {
            let off = offset + i as u64;
            if let Some(ch) = self.channels.get((off / 8) as usize) {
                lock(ch).bm_write(off % 8, b);
            }
        }
    }

    /// The engine's registers are bytes (the PRD address is four of them); starting the
    /// engine is a side effect of the command byte alone.
    fn bar_access_sizes(&self, _bar: usize) -> AccessSizes {
        AccessSizes::BYTE
    }

    fn reset(&mut self) {
        self.config.reset();
        self.sync_bus_master();
        for ch in &self.channels {
            lock(ch).reset();
        }
    }

    fn config_restored(&mut self) {
        self.sync_bus_master();
    }

    fn save_device_state(&self) -> Vec<u8> {
        snapshot::save(self)
    }

    fn restore_device_state(&mut self, blob: &[u8]) -> Result<(), SnapshotError> {
        snapshot::restore(self, blob)
    }
}

impl Snapshot for Piix3Ide {
    fn snapshot_id(&self) -> &'static str {
        "piix3-ide"
    }

    fn snapshot_version(&self) -> u16 {
        1
    }

    fn save_state(&self, w: &mut StateWriter) {
        for ch in &self.channels {
            lock(ch).save(w);
        }
    }

    fn restore_state(
        &mut self,
        r: &mut StateReader<'_>,
        _version: u16,
    ) -> Result<(), SnapshotError> {
        let primary = lock(&self.channels[0]).load(r)?;
        let secondary = lock(&self.channels[1]).load(r)?;
        lock(&self.channels[0]).apply(primary);
        lock(&self.channels[1]).apply(secondary);
        self.sync_bus_master();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::test_util::TempImage;
    use crate::block::{BlockError, CowOverlay, RawFile};
    use crate::bus::BusKind;
    use crate::guest_memory::MappedRam;
    use crate::irq::LatchedLine;
    use crate::pci::config_space::{BAR0, COMMAND};

    const CMD: u16 = 0x1F0;
    const CTL: u16 = 0x3F6;
    const SEC_CMD: u16 = 0x170;
    const SEC_CTL: u16 = 0x376;
    const RAM_SIZE: usize = 1 << 20;

    struct Rig {
        ide: Piix3Ide,
        pio: Bus,
        ram: Arc<MappedRam>,
        irq14: Arc<LatchedLine>,
        irq15: Arc<LatchedLine>,
    }

    impl Rig {
        fn new(primary: ChannelDrives, secondary: ChannelDrives) -> Rig {
            let ram = Arc::new(MappedRam::new(&[(0, RAM_SIZE)]).unwrap());
            let irq14 = Arc::new(LatchedLine::new());
            let irq15 = Arc::new(LatchedLine::new());
            let mut ide = Piix3Ide::new(
                ram.clone(),
                irq14.clone(),
                irq15.clone(),
                primary,
                secondary,
            );
            let pio = Bus::new(BusKind::Pio);
            ide.register_legacy_ports(&pio).unwrap();
            ide.write_config(
                COMMAND,
                &(command::IO_SPACE | command::BUS_MASTER).to_le_bytes(),
            );
            Rig {
                ide,
                pio,
                ram,
                irq14,
                irq15,
            }
        }

        fn disk(image: &TempImage) -> Rig {
            Rig::new([Some(disk(image)), None], [None, None])
        }

        fn outb(&self, port: u16, v: u8) {
            self.pio.write_value(u64::from(port), 1, u64::from(v));
        }
        fn inb(&self, port: u16) -> u8 {
            self.pio.read_value(u64::from(port), 1) as u8
        }
        fn outw(&self, port: u16, v: u16) {
            self.pio.write_value(u64::from(port), 2, u64::from(v));
        }
        fn inw(&self, port: u16) -> u16 {
            self.pio.read_value(u64::from(port), 2) as u16
        }
        fn inl(&self, port: u16) -> u32 {
            self.pio.read_value(u64::from(port), 4) as u32
        }
        fn outl(&self, port: u16, v: u32) {
            self.pio.write_value(u64::from(port), 4, u64::from(v));
        }
        fn bm_out(&mut self, off: u64, v: u8) {
            self.ide.bar_write(BMIBA_BAR, off, &[v]);
        }
        fn bm_in(&mut self, off: u64) -> u8 {
            let mut b = [0xFF];
            self.ide.bar_read(BMIBA_BAR, off, &mut b);
            b[0]
        }
        fn bm_table(&mut self, channel: u64, addr: u32) {
            for (i, b) in addr.to_le_bytes().into_iter().enumerate() {
                self.bm_out(channel * 8 + 4 + i as u64, b);
            }
        }

        /// Task-file setup and a command, 28-bit LBA, device `dev`.
        fn lba28(&self, base: u16, dev: u8, lba: u32, count: u8, command: u8) {
            self.outb(base + 6, 0xE0 | dev << 4 | (lba >> 24) as u8 & 0x0F);
            self.outb(base + 2, count);
            self.outb(base + 3, lba as u8);
            self.outb(base + 4, (lba >> 8) as u8);
            self.outb(base + 5, (lba >> 16) as u8);
            self.outb(base + 7, command);
        }

        /// The same with 48-bit addressing: high-order bytes first.
        fn lba48(&self, base: u16, dev: u8, lba: u64, count: u16, command: u8) {
            self.outb(base + 6, 0x40 | dev << 4);
            self.outb(base + 2, (count >> 8) as u8);
            self.outb(base + 3, (lba >> 24) as u8);
            self.outb(base + 4, (lba >> 32) as u8);
            self.outb(base + 5, (lba >> 40) as u8);
            self.outb(base + 2, count as u8);
            self.outb(base + 3, lba as u8);
            self.outb(base + 4, (lba >> 8) as u8);
            self.outb(base + 5, (lba >> 16) as u8);
            self.outb(base + 7, command);
        }

        fn read_words(&self, base: u16, n: usize) -> Vec<u8> {
            (0..n).flat_map(|_| self.inw(base).to_le_bytes()).collect()
        }

        fn write_words(&self, base: u16, data: &[u8]) {
            for pair in data.chunks(2) {
                self.outw(base, u16::from_le_bytes([pair[0], pair[1]]));
            }
        }

        fn identify(&self, base: u16, command: u8) -> [u16; 256] {
            self.outb(base + 7, command);
            let bytes = self.read_words(base, 256);
            let mut w = [0u16; 256];
            for (i, v) in w.iter_mut().enumerate() {
                *v = u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]);
            }
            w
        }

        fn write_prd(&self, table: u64, entries: &[(u32, u32, bool)]) {
            for (i, &(addr, len, last)) in entries.iter().enumerate() {
                let count = (len & 0xFFFF) | if last { 0x8000_0000 } else { 0 };
                self.ram.write_u32(table + 8 * i as u64, addr).unwrap();
                self.ram.write_u32(table + 8 * i as u64 + 4, count).unwrap();
            }
        }
    }

    fn disk(image: &TempImage) -> IdeDrive {
        IdeDrive::disk(Box::new(RawFile::open(image.path(), false).unwrap()))
    }

    /// Sector `n` of the test pattern: every byte depends on the sector and its offset.
    fn pattern_sector(n: u64) -> Vec<u8> {
        (0..512u64)
            .map(|i| (n * 7 + i * 13 + (i >> 8)) as u8)
            .collect()
    }

    fn patterned(tag: &str, sectors: u64) -> TempImage {
        let data: Vec<u8> = (0..sectors).flat_map(pattern_sector).collect();
        TempImage::with_data(tag, &data)
    }

    fn iso(tag: &str, blocks: u64) -> TempImage {
        let data: Vec<u8> = (0..blocks)
            .flat_map(|b| {
                let mut blk = vec![(b & 0xFF) as u8; 2048];
                blk[..8].copy_from_slice(&b.to_be_bytes());
                blk
            })
            .collect();
        TempImage::with_data(tag, &data)
    }

    fn cdrom(image: &TempImage) -> IdeDrive {
        IdeDrive::cdrom(Some(Box::new(RawFile::open(image.path(), true).unwrap())))
    }

    const READY: u8 = DRDY | DSC;

    #[test]
    fn identify_reports_size_strings_and_modes() {
        let img = TempImage::new("ide-identify", 100 << 20);
        let rig = Rig::new(
            [
                Some(disk(&img).with_model("TEST MODEL").with_serial("SN42")),
                None,
            ],
            [None, None],
        );
        let w = rig.identify(CMD, cmd::IDENTIFY_DEVICE);
        let sectors = (100u64 << 20) / 512;
        assert_eq!(w[0], 0x0040);
        assert_eq!((w[1], w[3], w[6]), (203, 16, 63), "100 MiB / (16 * 63)");
        // "TEST MODEL": 'T' 'E' in word 27, first character in the high byte.
        assert_eq!(w[27], u16::from_be_bytes(*b"TE"));
        assert_eq!(w[31], u16::from_be_bytes(*b"EL"));
        assert_eq!(w[32], 0x2020, "space padded");
        assert_eq!(w[46], 0x2020);
        assert_eq!(w[10], u16::from_be_bytes(*b"SN"));
        assert_eq!(w[11], u16::from_be_bytes(*b"42"));
        assert_eq!(u32::from(w[60]) | u32::from(w[61]) << 16, sectors as u32);
        let lba48 = (0..4).fold(0u64, |a, i| a | u64::from(w[100 + i]) << (16 * i));
        assert_eq!(lba48, sectors);
        assert_ne!(w[83] & 1 << 10, 0, "48-bit feature set");
        assert_ne!(w[86] & 1 << 10, 0, "48-bit enabled");
        assert_eq!(w[49] & 0x0300, 0x0300, "LBA and DMA");
        assert_eq!(w[63], 0x0407, "MWDMA 0-2, mode 2 selected");
        assert_eq!(w[88] & 0xFF, 0x3F, "UDMA 0-5 supported");
        assert_eq!(w[47], 0x8010);
        assert_eq!(w[93], 0x604B, "no device 1: device 0 answers for it");
        assert_eq!(
            w[93] & 0xDF61,
            0x4041,
            "SeaBIOS's test for skipping device 1"
        );
        assert_eq!(w[59], 0x0110);
        assert_eq!(w[255] & 0xFF, 0xA5);
        let sum = w
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .fold(0u8, |a, b| a.wrapping_add(b));
        assert_eq!(sum, 0, "integrity checksum");
        assert_eq!(rig.inb(CMD + 7), READY, "DRQ drops after 512 bytes");
        assert_eq!(rig.irq14.take_rising_edges(), 1);
    }

    #[test]
    fn identify_of_a_disk_beyond_lba28() {
        let img = TempImage::new("ide-identify-big", 200 << 30);
        let rig = Rig::disk(&img);
        let w = rig.identify(CMD, cmd::IDENTIFY_DEVICE);
        assert_eq!(
            u32::from(w[60]) | u32::from(w[61]) << 16,
            0x0FFF_FFFF,
            "LBA28 capacity saturates"
        );
        let lba48 = (0..4).fold(0u64, |a, i| a | u64::from(w[100 + i]) << (16 * i));
        assert_eq!(lba48, (200u64 << 30) / 512);
        assert_eq!(w[1], 16383, "CHS cylinders cap");
    }

    #[test]
    fn identify_through_the_32_bit_data_port() {
        let img = TempImage::new("ide-identify32", 1 << 20);
        let rig = Rig::disk(&img);
        rig.outb(CMD + 7, cmd::IDENTIFY_DEVICE);
        let words: Vec<u32> = (0..128).map(|_| rig.inl(CMD)).collect();
        assert_eq!(words[0] & 0xFFFF, 0x0040);
        assert_eq!(rig.inb(CMD + 7), READY);
        assert_eq!(rig.inw(CMD), 0, "no data outside a data phase");
    }

    #[test]
    fn pio_reads_and_writes_reach_the_file() {
        let img = patterned("ide-pio", 64);
        let rig = Rig::disk(&img);
        rig.lba28(CMD, 0, 5, 2, cmd::READ_SECTORS);
        for s in 5..7 {
            assert_eq!(rig.irq14.take_rising_edges(), 1, "one interrupt per sector");
            // Reading status acknowledges the interrupt, as the host does first.
            assert_eq!(rig.inb(CMD + 7), READY | DRQ);
            assert!(!rig.irq14.level());
            assert_eq!(rig.read_words(CMD, 256), pattern_sector(s));
        }
        assert_eq!(rig.inb(CMD + 7), READY);
        assert_eq!(
            rig.irq14.take_rising_edges(),
            0,
            "none after the last sector"
        );
        assert_eq!(rig.inb(CMD + 3), 7, "LBA advanced past the sectors read");
        assert_eq!(rig.inb(CMD + 2), 0);

        let data: Vec<u8> = (0..3 * 512).map(|i| (i * 3 % 256) as u8).collect();
        rig.lba28(CMD, 0, 10, 3, cmd::WRITE_SECTORS);
        assert_eq!(rig.inb(CMD + 7), READY | DRQ);
        assert_eq!(
            rig.irq14.take_rising_edges(),
            0,
            "first block without interrupt"
        );
        for (i, sector) in data.chunks(512).enumerate() {
            rig.write_words(CMD, sector);
            assert_eq!(
                rig.irq14.take_rising_edges(),
                1,
                "interrupt after block {i}"
            );
            let st = rig.inb(CMD + 7);
            if i < 2 {
                assert_eq!(st, READY | DRQ);
            } else {
                assert_eq!(st, READY);
            }
        }
        let file = img.contents();
        assert_eq!(&file[10 * 512..13 * 512], &data[..]);
        assert_eq!(&file[9 * 512..10 * 512], &pattern_sector(9)[..]);
        assert_eq!(&file[13 * 512..14 * 512], &pattern_sector(13)[..]);
    }

    #[test]
    fn lba48_reaches_beyond_128_gib_on_a_sparse_image() {
        let img = TempImage::new("ide-lba48", 200 << 30);
        let rig = Rig::disk(&img);
        let lba = 300_000_000u64; // past 2^28 sectors (128 GiB)
        let data = pattern_sector(lba);
        rig.lba48(CMD, 0, lba, 1, cmd::WRITE_SECTORS_EXT);
        rig.write_words(CMD, &data);
        assert_eq!(rig.inb(CMD + 7), READY);
        rig.lba48(CMD, 0, lba, 1, cmd::READ_SECTORS_EXT);
        assert_eq!(rig.read_words(CMD, 256), data);
        let mut raw = RawFile::open(img.path(), true).unwrap();
        let mut back = vec![0u8; 512];
        raw.read_sectors(lba, &mut back).unwrap();
        assert_eq!(back, data);
        // The task file holds the next LBA, its high bytes behind HOB.
        let next = lba + 1;
        assert_eq!(rig.inb(CMD + 3), next as u8);
        rig.outb(CTL, device_control::HOB);
        assert_eq!(rig.inb(CMD + 3), (next >> 24) as u8);
        assert_eq!(rig.inb(CMD + 4), (next >> 32) as u8);
        rig.outb(CMD + 2, 0);
        assert_eq!(rig.inb(CMD + 3), next as u8, "a register write clears HOB");
    }

    #[test]
    fn chs_addressing_and_translation() {
        let img = patterned("ide-chs", 4096);
        let rig = Rig::disk(&img);
        // Cylinder 1, head 2, sector 3 with 16 heads and 63 sectors: LBA (16 + 2) * 63 + 2.
        rig.outb(CMD + 6, 0xA0 | 2);
        rig.outb(CMD + 2, 1);
        rig.outb(CMD + 3, 3);
        rig.outb(CMD + 4, 1);
        rig.outb(CMD + 5, 0);
        rig.outb(CMD + 7, cmd::READ_SECTORS);
        assert_eq!(rig.read_words(CMD, 256), pattern_sector(1136));
        assert_eq!(rig.inb(CMD + 3), 4, "next sector in CHS terms");
        // INITIALIZE DEVICE PARAMETERS: 4 heads, 17 sectors per track.
        rig.outb(CMD + 6, 0xA0 | 3);
        rig.outb(CMD + 2, 17);
        rig.outb(CMD + 7, cmd::INITIALIZE_DEVICE_PARAMETERS);
        assert_eq!(rig.inb(CMD + 7), READY);
        rig.outb(CMD + 6, 0xA0 | 1);
        rig.outb(CMD + 2, 1);
        rig.outb(CMD + 3, 1);
        rig.outb(CMD + 4, 2);
        rig.outb(CMD + 7, cmd::READ_SECTORS);
        assert_eq!(rig.read_words(CMD, 256), pattern_sector((2 * 4 + 1) * 17));
        let w = rig.identify(CMD, cmd::IDENTIFY_DEVICE);
        assert_eq!((w[55], w[56]), (4, 17), "current translation");
        // Sector 0 does not exist in CHS.
        rig.outb(CMD + 3, 0);
        rig.outb(CMD + 7, cmd::READ_SECTORS);
        assert_eq!(rig.inb(CMD + 7), DRDY | ERR);
        assert_eq!(rig.inb(CMD + 1), ata_error::IDNF | ata_error::ABRT);
    }

    #[test]
    fn multiple_mode_transfers_blocks() {
        let img = patterned("ide-mult", 64);
        let rig = Rig::disk(&img);
        rig.outb(CMD + 2, 4);
        rig.outb(CMD + 7, cmd::SET_MULTIPLE_MODE);
        assert_eq!(rig.inb(CMD + 7), READY);
        rig.irq14.take_rising_edges();
        rig.lba28(CMD, 0, 3, 10, cmd::READ_MULTIPLE);
        let mut got = Vec::new();
        let mut blocks = 0;
        while rig.inb(CTL) & DRQ != 0 {
            assert_eq!(rig.irq14.take_rising_edges(), 1);
            rig.inb(CMD + 7);
            let n = if blocks < 2 { 4 } else { 2 };
            got.extend(rig.read_words(CMD, 256 * n));
            blocks += 1;
        }
        assert_eq!(blocks, 3, "blocks of 4, 4 and 2 sectors");
        let expect: Vec<u8> = (3..13).flat_map(pattern_sector).collect();
        assert_eq!(got, expect);

        let data: Vec<u8> = (0..6 * 512).map(|i| (i % 253) as u8).collect();
        rig.lba28(CMD, 0, 40, 6, cmd::WRITE_MULTIPLE);
        rig.write_words(CMD, &data[..4 * 512]);
        assert_eq!(rig.inb(CMD + 7), READY | DRQ);
        rig.write_words(CMD, &data[4 * 512..]);
        assert_eq!(rig.inb(CMD + 7), READY);
        assert_eq!(&img.contents()[40 * 512..46 * 512], &data[..]);
        let w = rig.identify(CMD, cmd::IDENTIFY_DEVICE);
        assert_eq!(w[59], 0x0104);

        rig.outb(CMD + 2, 3);
        rig.outb(CMD + 7, cmd::SET_MULTIPLE_MODE);
        assert_eq!(rig.inb(CMD + 7), DRDY | ERR, "3 is not a power of two");
        rig.outb(CMD + 2, 0);
        rig.outb(CMD + 7, cmd::SET_MULTIPLE_MODE);
        assert_eq!(rig.inb(CMD + 7), READY, "0 disables");
        rig.lba28(CMD, 0, 0, 1, cmd::READ_MULTIPLE);
        assert_eq!(rig.inb(CMD + 7), DRDY | ERR);
        assert_eq!(rig.inb(CMD + 1), ata_error::ABRT);
    }

    #[test]
    fn bus_master_dma_read_and_write_with_a_multi_entry_table() {
        let img = patterned("ide-dma", 64);
        let mut rig = Rig::disk(&img);
        // 4 sectors over three entries of 1000, 48 and 1000 bytes.
        rig.write_prd(
            0x1000,
            &[
                (0x10000, 1000, false),
                (0x20000, 48, false),
                (0x30000, 1000, true),
            ],
        );
        rig.bm_table(0, 0x1000);
        rig.bm_out(0, bm::CMD_TO_MEMORY);
        rig.lba28(CMD, 0, 8, 4, cmd::READ_DMA);
        assert_eq!(rig.inb(CTL), READY | DRQ, "waiting for the engine");
        assert_eq!(rig.irq14.take_rising_edges(), 0);
        rig.bm_out(0, bm::CMD_TO_MEMORY | bm::CMD_START);
        assert_eq!(
            rig.bm_in(2),
            bm::STATUS_INTERRUPT,
            "done: Active clear, Interrupt set"
        );
        assert_eq!(rig.irq14.take_rising_edges(), 1);
        assert_eq!(rig.inb(CMD + 7), READY);
        let expect: Vec<u8> = (8..12).flat_map(pattern_sector).collect();
        let mut got = vec![0u8; 2048];
        rig.ram.read(0x10000, &mut got[..1000]).unwrap();
        rig.ram.read(0x20000, &mut got[1000..1048]).unwrap();
        rig.ram.read(0x30000, &mut got[1048..]).unwrap();
        assert_eq!(got, expect);
        assert_eq!(rig.inb(CMD + 3), 12);
        rig.bm_out(0, bm::CMD_TO_MEMORY);
        rig.bm_out(2, bm::STATUS_INTERRUPT);
        assert_eq!(rig.bm_in(2), 0, "Interrupt is write-1-to-clear");

        // A write with the engine started before the command.
        let data: Vec<u8> = (0..1024).map(|i| (i * 5 % 256) as u8).collect();
        rig.ram.write(0x40000, &data[..512]).unwrap();
        rig.ram.write(0x50000, &data[512..]).unwrap();
        rig.write_prd(0x2000, &[(0x40000, 512, false), (0x50000, 512, true)]);
        rig.bm_table(0, 0x2000);
        rig.bm_out(0, bm::CMD_START);
        assert_eq!(rig.bm_in(2), bm::STATUS_ACTIVE);
        rig.lba28(CMD, 0, 30, 2, cmd::WRITE_DMA);
        assert_eq!(rig.bm_in(2), bm::STATUS_INTERRUPT);
        assert_eq!(rig.inb(CMD + 7), READY);
        assert_eq!(&img.contents()[30 * 512..32 * 512], &data[..]);

        // 48-bit DMA through a 64 KiB entry (byte count 0).
        rig.bm_out(0, 0);
        rig.bm_out(2, bm::STATUS_INTERRUPT);
        rig.write_prd(0x3000, &[(0x60000, 0, true)]);
        rig.bm_table(0, 0x3000);
        rig.lba48(CMD, 0, 0, 64, cmd::READ_DMA_EXT);
        rig.bm_out(0, bm::CMD_TO_MEMORY | bm::CMD_START);
        assert_eq!(
            rig.bm_in(2),
            bm::STATUS_ACTIVE | bm::STATUS_INTERRUPT,
            "32 KiB moved, the 64 KiB entry not exhausted"
        );
        let mut all = vec![0u8; 64 * 512];
        rig.ram.read(0x60000, &mut all).unwrap();
        assert_eq!(all, img.contents());
    }

    #[test]
    fn dma_status_follows_the_prd_table_length() {
        let img = patterned("ide-dma-status", 64);
        let mut rig = Rig::disk(&img);
        // Table longer than the transfer: Interrupt and Active both set.
        rig.write_prd(0x1000, &[(0x10000, 4096, true)]);
        rig.bm_table(0, 0x1000);
        rig.lba28(CMD, 0, 0, 1, cmd::READ_DMA);
        rig.bm_out(0, bm::CMD_TO_MEMORY | bm::CMD_START);
        assert_eq!(
            rig.bm_in(2),
            bm::STATUS_ACTIVE | bm::STATUS_INTERRUPT,
            "drive done before the table"
        );
        rig.bm_out(0, bm::CMD_TO_MEMORY);
        assert_eq!(rig.bm_in(2), bm::STATUS_INTERRUPT, "stopping clears Active");
        rig.bm_out(2, bm::STATUS_INTERRUPT | 0x60);
        assert_eq!(rig.bm_in(2), 0x60, "DMA-capable bits are read/write");
        rig.inb(CMD + 7);

        // Table shorter: Active drops, no interrupt, the drive still waits with DRQ.
        rig.irq14.take_rising_edges();
        rig.write_prd(0x1000, &[(0x10000, 512, true)]);
        rig.lba28(CMD, 0, 0, 2, cmd::READ_DMA);
        rig.bm_out(0, bm::CMD_TO_MEMORY | bm::CMD_START);
        assert_eq!(rig.bm_in(2), 0x60);
        assert_eq!(rig.irq14.take_rising_edges(), 0);
        assert_eq!(rig.inb(CTL), READY | DRQ);
        // A new table for the rest finishes the command.
        rig.write_prd(0x1000, &[(0x20000, 512, true)]);
        rig.bm_out(0, bm::CMD_TO_MEMORY);
        rig.bm_out(0, bm::CMD_TO_MEMORY | bm::CMD_START);
        assert_eq!(rig.bm_in(2), 0x60 | bm::STATUS_INTERRUPT);
        assert_eq!(rig.inb(CMD + 7), READY);
        let mut s1 = vec![0u8; 512];
        rig.ram.read(0x20000, &mut s1).unwrap();
        assert_eq!(s1, pattern_sector(1));
        rig.bm_out(0, 0);
        rig.bm_out(2, bm::STATUS_INTERRUPT);
    }

    #[test]
    fn dma_errors_set_the_error_bit_and_abort() {
        let img = patterned("ide-dma-err", 64);
        let mut rig = Rig::disk(&img);
        // A buffer outside RAM.
        rig.write_prd(0x1000, &[(0x8000_0000, 512, true)]);
        rig.bm_table(0, 0x1000);
        rig.lba28(CMD, 0, 0, 1, cmd::READ_DMA);
        rig.bm_out(0, bm::CMD_TO_MEMORY | bm::CMD_START);
        assert_eq!(rig.bm_in(2), bm::STATUS_ERROR | bm::STATUS_INTERRUPT);
        assert_eq!(rig.inb(CMD + 7), DRDY | ERR);
        assert_eq!(rig.inb(CMD + 1), ata_error::ABRT);
        rig.bm_out(0, 0);
        rig.bm_out(2, bm::STATUS_ERROR | bm::STATUS_INTERRUPT);
        assert_eq!(rig.bm_in(2), 0);

        // The engine's direction disagrees with the command.
        rig.write_prd(0x1000, &[(0x10000, 512, true)]);
        rig.lba28(CMD, 0, 0, 1, cmd::READ_DMA);
        rig.bm_out(0, bm::CMD_START);
        assert_eq!(rig.bm_in(2), bm::STATUS_ERROR | bm::STATUS_INTERRUPT);
        assert_eq!(rig.inb(CMD + 7), DRDY | ERR);
        rig.bm_out(0, 0);
        rig.bm_out(2, 0xFF);

        // Bus mastering disabled in the PCI command register.
        rig.ide
            .write_config(COMMAND, &command::IO_SPACE.to_le_bytes());
        rig.lba28(CMD, 0, 0, 1, cmd::READ_DMA);
        rig.bm_out(0, bm::CMD_TO_MEMORY | bm::CMD_START);
        assert_eq!(rig.bm_in(2) & bm::STATUS_ERROR, bm::STATUS_ERROR);
        assert_eq!(rig.inb(CMD + 7), DRDY | ERR);
        let mut ram = vec![0u8; 512];
        rig.ram.read(0x10000, &mut ram).unwrap();
        assert_eq!(ram, vec![0u8; 512], "nothing was written");
    }

    #[test]
    fn hostile_prd_tables_are_bounded() {
        let img = patterned("ide-prd-long", 64);
        let mut rig = Rig::disk(&img);
        // 4096 two-byte entries without an end: the walk stops after MAX_PRD_ENTRIES.
        for i in 0..4096u64 {
            rig.ram.write_u32(0x1000 + 8 * i, 0x80000).unwrap();
            rig.ram.write_u32(0x1000 + 8 * i + 4, 2).unwrap();
        }
        rig.bm_table(0, 0x1000);
        rig.lba28(CMD, 0, 0, 64, cmd::READ_DMA);
        rig.bm_out(0, bm::CMD_TO_MEMORY | bm::CMD_START);
        assert_eq!(rig.bm_in(2), 0, "stopped, no interrupt");
        assert_eq!(rig.inb(CTL), READY | DRQ, "the drive still waits");
        // A table at the top of the address space wraps into unmapped memory: a bus error.
        rig.bm_out(0, bm::CMD_TO_MEMORY);
        rig.bm_table(0, 0xFFFF_FFF8);
        rig.bm_out(0, bm::CMD_TO_MEMORY | bm::CMD_START);
        assert_ne!(rig.bm_in(2) & bm::STATUS_ERROR, 0);
        // Software reset recovers the drive.
        rig.outb(CTL, device_control::SRST);
        rig.outb(CTL, 0);
        assert_eq!(rig.inb(CMD + 7), READY);
    }

    #[test]
    fn srst_posts_ata_and_atapi_signatures() {
        let img = TempImage::new("ide-srst", 1 << 20);
        let cd = iso("ide-srst-cd", 16);
        let rig = Rig::new([Some(disk(&img)), Some(cdrom(&cd))], [None, None]);
        rig.outb(CMD + 6, 0xB0);
        rig.outb(CTL, device_control::SRST | device_control::NIEN);
        assert_eq!(rig.inb(CMD + 7) & BSY, BSY, "busy while reset is asserted");
        rig.outb(CTL, device_control::NIEN);
        assert_eq!(
            rig.inb(CMD + 6) & DEV_SELECT,
            0,
            "device 0 selected after reset"
        );
        assert_eq!(rig.inb(CMD + 7), READY);
        assert_eq!(rig.inb(CMD + 1), 0x01, "diagnostics passed");
        let sig = |rig: &Rig| [2, 3, 4, 5].map(|r| rig.inb(CMD + r));
        assert_eq!(sig(&rig), [1, 1, 0x00, 0x00], "ATA signature");
        rig.outb(CMD + 6, 0xB0);
        assert_eq!(sig(&rig), [1, 1, 0x14, 0xEB], "ATAPI signature");
        assert_eq!(rig.inb(CMD + 7), 0, "packet devices leave DRDY clear");
        assert_eq!(rig.inb(CMD + 1), 0x01);
        assert_eq!(rig.irq14.take_rising_edges(), 0, "no interrupt from SRST");

        // IDENTIFY DEVICE to the CD aborts and leaves the signature; IDENTIFY PACKET works.
        rig.outb(CTL, 0);
        rig.outb(CMD + 7, cmd::IDENTIFY_DEVICE);
        assert_eq!(rig.inb(CMD + 7), DRDY | ERR);
        assert_eq!(sig(&rig)[2..], [0x14, 0xEB]);
        let w = rig.identify(CMD, cmd::IDENTIFY_PACKET_DEVICE);
        assert_eq!(w[0], 0x85C0);
        assert_eq!(w[93], 0x6B00, "device 1, jumpered, PDIAG- asserted");
        rig.outb(CMD + 6, 0xA0);
        let w = rig.identify(CMD, cmd::IDENTIFY_DEVICE);
        assert_eq!(w[93], 0x603B, "device 0 saw device 1");
        rig.outb(CMD + 6, 0xB0);
        assert_eq!(w[27], u16::from_be_bytes(*b"VI"));
        // EXECUTE DEVICE DIAGNOSTIC resets both and interrupts.
        rig.irq14.take_rising_edges();
        rig.outb(CMD + 7, cmd::EXECUTE_DEVICE_DIAGNOSTIC);
        assert_eq!(rig.irq14.take_rising_edges(), 1);
        assert_eq!(rig.inb(CMD + 1), 0x01);
        assert_eq!(sig(&rig), [1, 1, 0x14, 0xEB]);
    }

    #[test]
    fn nien_masks_the_interrupt() {
        let img = TempImage::new("ide-nien", 1 << 20);
        let mut rig = Rig::disk(&img);
        rig.outb(CTL, device_control::NIEN);
        rig.outb(CMD + 7, cmd::FLUSH_CACHE);
        assert!(!rig.irq14.level());
        assert_eq!(rig.bm_in(2) & bm::STATUS_INTERRUPT, 0);
        // Unmasking a pending interrupt raises the line.
        rig.outb(CTL, 0);
        assert!(rig.irq14.level());
        assert_ne!(rig.bm_in(2) & bm::STATUS_INTERRUPT, 0);
        assert_eq!(rig.inb(CTL), READY, "alternate status does not acknowledge");
        assert!(rig.irq14.level());
        rig.inb(CMD + 7);
        assert!(!rig.irq14.level());
        // The secondary channel's line is its own.
        assert_eq!(rig.irq15.take_rising_edges(), 0);
    }

    #[test]
    fn absent_slave_and_empty_channel_read_as_linux_expects() {
        let img = TempImage::new("ide-absent", 1 << 20);
        let rig = Rig::disk(&img);
        // Linux's ata_devchk: the registers latch, so the pattern reads back...
        rig.outb(CMD + 6, 0xB0);
        for (count, lbal) in [(0x55, 0xAA), (0xAA, 0x55), (0x55, 0xAA)] {
            rig.outb(CMD + 2, count);
            rig.outb(CMD + 3, lbal);
        }
        assert_eq!((rig.inb(CMD + 2), rig.inb(CMD + 3)), (0x55, 0xAA));
        // ...but status reads 0 and, after reset, the signature is ATA: "no device".
        rig.outb(CTL, device_control::SRST);
        rig.outb(CTL, 0);
        rig.outb(CMD + 6, 0xB0);
        assert_eq!(rig.inb(CMD + 7), 0);
        assert_eq!(rig.inb(CTL), 0);
        assert_eq!(rig.inb(CMD + 1), 0);
        assert_eq!((rig.inb(CMD + 4), rig.inb(CMD + 5)), (0, 0));
        rig.irq14.take_rising_edges();
        rig.outb(CMD + 7, cmd::IDENTIFY_DEVICE);
        assert_eq!(rig.inb(CMD + 7), 0, "commands to it are ignored");
        assert_eq!(rig.irq14.take_rising_edges(), 0);
        // The master is unaffected.
        rig.outb(CMD + 6, 0xA0);
        assert_eq!(rig.inb(CMD + 7), READY);
        // A channel with no drives floats at 0x7F.
        for port in SEC_CMD..SEC_CMD + 8 {
            assert_eq!(rig.inb(port), 0x7F);
        }
        assert_eq!(rig.inb(SEC_CTL), 0x7F);
        rig.outb(SEC_CMD + 7, cmd::IDENTIFY_DEVICE);
        assert_eq!(rig.irq15.take_rising_edges(), 0);
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Class {
        None,
        Ata,
        Atapi,
    }

    /// Linux's probe (libata-sff `ata_sff_softreset`: devchk, SRST, wait, classify).
    fn linux_classify(rig: &Rig, base: u16, ctl: u16) -> [Class; 2] {
        let select = |dev: u8| rig.outb(base + 6, 0xA0 | dev << 4);
        let devchk = |dev: u8| {
            select(dev);
            for (n, l) in [(0x55, 0xAA), (0xAA, 0x55), (0x55, 0xAA)] {
                rig.outb(base + 2, n);
                rig.outb(base + 3, l);
            }
            (rig.inb(base + 2), rig.inb(base + 3)) == (0x55, 0xAA)
        };
        let present = [devchk(0), devchk(1)];
        select(0);
        rig.outb(ctl, 0x08);
        rig.outb(ctl, 0x08 | device_control::SRST);
        rig.outb(ctl, 0x08);
        assert_eq!(rig.inb(base + 7) & BSY, 0, "device 0 ready after reset");
        if present[1] {
            select(1);
            assert_eq!((rig.inb(base + 2), rig.inb(base + 3)), (1, 1));
            assert_eq!(rig.inb(base + 7) & BSY, 0);
        }
        let classify = |dev: u8, err: &mut u8| {
            select(dev);
            *err = rig.inb(base + 1);
            let (mid, high) = (rig.inb(base + 4), rig.inb(base + 5));
            let diag_failed = match *err {
                0 => true,
                1 => false,
                0x81 if dev == 0 => false,
                _ => return Class::None,
            };
            match (mid, high) {
                (0, 0) if rig.inb(base + 7) == 0 => Class::None,
                (0, 0) => Class::Ata,
                (0x14, 0xEB) => Class::Atapi,
                _ if present[usize::from(dev)] && diag_failed => Class::Ata,
                _ => Class::None,
            }
        };
        let mut err = 0;
        let c0 = classify(0, &mut err);
        let c1 = if err != 0x81 {
            classify(1, &mut err)
        } else {
            Class::None
        };
        [c0, c1]
    }

    /// SeaBIOS's `ata_detect`: which positions it finds a drive at, and of what kind.
    fn seabios_detect(rig: &Rig, base: u16, ctl: u16) -> [Class; 2] {
        let mut found = [Class::None; 2];
        let mut did_reset = false;
        for slave in 0..2u8 {
            if rig.inb(base + 7) & BSY != 0 {
                continue;
            }
            let dh = 0xA0 | slave << 4;
            rig.outb(base + 6, dh);
            rig.outb(base + 2, 0x55);
            rig.outb(base + 3, 0xAA);
            let (sc, sn, back) = (rig.inb(base + 2), rig.inb(base + 3), rig.inb(base + 6));
            if (sc, sn, back) != (0x55, 0xAA, dh) {
                continue;
            }
            if !did_reset {
                rig.outb(ctl, 0x0A | device_control::SRST);
                rig.outb(ctl, 0x0A);
                if slave == 1 {
                    rig.outb(base + 6, 0xB0);
                    assert_eq!(rig.inb(base + 6), 0xB0);
                } else {
                    rig.outb(base + 6, 0xA0);
                }
                did_reset = true;
            }
            let identify = |command: u8| -> Option<[u16; 256]> {
                rig.outb(base + 6, dh);
                rig.outb(base + 7, command);
                let st = rig.inb(base + 7);
                if st & ERR != 0 || st & DRQ == 0 {
                    return None;
                }
                let b = rig.read_words(base, 256);
                Some(std::array::from_fn(|i| {
                    u16::from_le_bytes([b[2 * i], b[2 * i + 1]])
                }))
            };
            let words = if let Some(w) = identify(cmd::IDENTIFY_PACKET_DEVICE) {
                found[usize::from(slave)] = Class::Atapi;
                w
            } else {
                if rig.inb(base + 7) == 0 {
                    continue;
                }
                let Some(w) = identify(cmd::IDENTIFY_DEVICE) else {
                    continue;
                };
                found[usize::from(slave)] = Class::Ata;
                w
            };
            rig.outb(ctl, 0x08);
            if slave == 0 && words[93] & 0xDF61 == 0x4041 {
                break;
            }
        }
        found
    }

    #[test]
    fn linux_and_seabios_probes_find_exactly_the_attached_drives() {
        let img = TempImage::new("ide-probe", 1 << 20);
        let cd = iso("ide-probe-cd", 16);
        let d = || Some(disk(&img));
        let c = || Some(cdrom(&cd));
        use Class::{Ata, Atapi, None as No};
        let cases: [(ChannelDrives, [Class; 2]); 6] = [
            ([d(), None], [Ata, No]),
            ([c(), None], [Atapi, No]),
            ([d(), c()], [Ata, Atapi]),
            ([c(), d()], [Atapi, Ata]),
            ([None, d()], [No, Ata]),
            ([None, None], [No, No]),
        ];
        for (drives, expect) in cases {
            let rig = Rig::new(drives, [None, None]);
            assert_eq!(linux_classify(&rig, CMD, CTL), expect, "Linux");
            assert_eq!(seabios_detect(&rig, CMD, CTL), expect, "SeaBIOS");
            // The empty secondary channel is empty to both.
            assert_eq!(linux_classify(&rig, SEC_CMD, SEC_CTL), [No, No]);
            assert_eq!(seabios_detect(&rig, SEC_CMD, SEC_CTL), [No, No]);
        }
    }

    /// Send a PACKET command and collect its data-in by PIO. Returns (data, status, error).
    fn packet(rig: &Rig, base: u16, cdb: &[u8], limit: u16) -> (Vec<u8>, u8, u8) {
        let mut c = [0u8; 12];
        c[..cdb.len()].copy_from_slice(cdb);
        rig.outb(base + 1, 0);
        rig.outb(base + 4, limit as u8);
        rig.outb(base + 5, (limit >> 8) as u8);
        rig.outb(base + 7, cmd::PACKET);
        assert_eq!(rig.inb(base + 7) & DRQ, DRQ, "ready for the packet");
        assert_eq!(
            rig.inb(base + 2) & 3,
            IREASON_COD,
            "interrupt reason: command"
        );
        rig.write_words(base, &c);
        let mut data = Vec::new();
        loop {
            let st = rig.inb(base + 7);
            if st & DRQ == 0 {
                assert_eq!(
                    rig.inb(base + 2) & 3,
                    IREASON_IO | IREASON_COD,
                    "completion"
                );
                return (data, st, rig.inb(base + 1));
            }
            assert_eq!(
                rig.inb(base + 2) & 3,
                IREASON_IO,
                "interrupt reason: data in"
            );
            let n = usize::from(rig.inb(base + 4)) | usize::from(rig.inb(base + 5)) << 8;
            assert!(n <= usize::from(limit.max(2)), "chunk {n} within the limit");
            let bytes = rig.read_words(base, n.div_ceil(2));
            data.extend_from_slice(&bytes[..n]);
        }
    }

    fn cd_rig(blocks: u64) -> (Rig, TempImage) {
        let cd = iso("ide-cd", blocks);
        let rig = Rig::new([None, None], [Some(cdrom(&cd)), None]);
        (rig, cd)
    }

    #[test]
    fn atapi_inquiry_capacity_and_reads() {
        let (rig, _cd) = cd_rig(64);
        let (inq, st, _) = packet(&rig, SEC_CMD, &[0x12, 0, 0, 0, 36], 0xFFFE);
        assert_eq!(st, READY);
        assert_eq!(&inq[..2], &[0x05, 0x80]);
        assert_eq!(&inq[8..13], b"VIREO");
        let (cap, _, _) = packet(&rig, SEC_CMD, &[0x25], 0xFFFE);
        assert_eq!(cap, vec![0, 0, 0, 63, 0, 0, 8, 0]);

        // READ(10) of 3 blocks with a 2048-byte limit: three data phases.
        rig.irq15.take_rising_edges();
        let (data, st, _) = packet(&rig, SEC_CMD, &[0x28, 0, 0, 0, 0, 5, 0, 0, 3], 2048);
        assert_eq!(st, READY);
        assert_eq!(data.len(), 3 * 2048);
        for (i, blk) in data.chunks(2048).enumerate() {
            assert_eq!(&blk[..8], &(5 + i as u64).to_be_bytes());
            assert!(blk[8..].iter().all(|&b| b == 5 + i as u8));
        }
        assert_eq!(
            rig.irq15.take_rising_edges(),
            4,
            "three data phases and completion"
        );
        // An odd limit splits into even chunks.
        let (data, _, _) = packet(&rig, SEC_CMD, &[0x28, 0, 0, 0, 0, 1, 0, 0, 1], 1001);
        assert_eq!(data.len(), 2048);
        assert_eq!(&data[..8], &1u64.to_be_bytes());
    }

    #[test]
    fn atapi_toc_and_sense_after_an_error() {
        let (rig, _cd) = cd_rig(64);
        let (toc, _, _) = packet(&rig, SEC_CMD, &[0x43, 0, 0, 0, 0, 0, 0, 0, 0xFF], 0xFFFE);
        assert_eq!(&toc[..4], &[0, 18, 1, 1]);
        assert_eq!(&toc[14..20], &[0xAA, 0, 0, 0, 0, 64]);
        let (msf, _, _) = packet(&rig, SEC_CMD, &[0x43, 2, 0, 0, 0, 0, 0, 0, 0xFF], 0xFFFE);
        assert_eq!(&msf[8..12], &[0, 0, 2, 0], "track 1 at 00:02:00");

        // A read past the end: CHECK CONDITION with ILLEGAL REQUEST in the error register.
        let (data, st, err) = packet(&rig, SEC_CMD, &[0x28, 0, 0, 0, 0, 63, 0, 0, 2], 0xFFFE);
        assert!(data.is_empty());
        assert_eq!(st, DRDY | ERR);
        assert_eq!(err >> 4, atapi::sense_key::ILLEGAL_REQUEST);
        let (sense, st, _) = packet(&rig, SEC_CMD, &[0x03, 0, 0, 0, 18], 0xFFFE);
        assert_eq!(st, READY);
        assert_eq!((sense[2], sense[12]), (5, atapi::asc::LBA_OUT_OF_RANGE));
        let (sense, _, _) = packet(&rig, SEC_CMD, &[0x03, 0, 0, 0, 18], 0xFFFE);
        assert_eq!(sense[2], 0);
    }

    #[test]
    fn atapi_media_change_and_empty_drive() {
        let rig = Rig::new([None, None], [Some(IdeDrive::cdrom(None)), None]);
        let (_, st, err) = packet(&rig, SEC_CMD, &[0x00], 0xFFFE);
        assert_eq!((st, err >> 4), (DRDY | ERR, atapi::sense_key::NOT_READY));
        let (sense, _, _) = packet(&rig, SEC_CMD, &[0x03, 0, 0, 0, 18], 0xFFFE);
        assert_eq!(sense[12], atapi::asc::MEDIUM_NOT_PRESENT);
        let cd = iso("ide-cd-insert", 8);
        let handle = rig.ide.handle();
        assert!(handle.insert_medium(1, 0, Box::new(RawFile::open(cd.path(), true).unwrap())));
        assert!(!handle.insert_medium(0, 0, Box::new(RawFile::open(cd.path(), true).unwrap())));
        let (_, _, err) = packet(&rig, SEC_CMD, &[0x00], 0xFFFE);
        assert_eq!(err >> 4, atapi::sense_key::UNIT_ATTENTION);
        let (_, st, _) = packet(&rig, SEC_CMD, &[0x00], 0xFFFE);
        assert_eq!(st, READY);
        assert!(handle.eject_medium(1, 0).is_some());
        let (_, st, _) = packet(&rig, SEC_CMD, &[0x00], 0xFFFE);
        assert_eq!(st, DRDY | ERR);
    }

    #[test]
    fn atapi_dma_read() {
        let (mut rig, _cd) = cd_rig(64);
        rig.write_prd(0x1000, &[(0x10000, 2048, false), (0x20000, 2048, true)]);
        rig.bm_table(1, 0x1000);
        rig.bm_out(8, bm::CMD_TO_MEMORY);
        rig.outb(SEC_CMD + 1, 1); // DMA
        rig.outb(SEC_CMD + 7, cmd::PACKET);
        rig.write_words(SEC_CMD, &[0x28, 0, 0, 0, 0, 10, 0, 0, 2, 0, 0, 0]);
        assert_eq!(rig.inb(SEC_CTL), READY | DRQ, "waiting for the engine");
        rig.irq15.take_rising_edges();
        rig.bm_out(8, bm::CMD_TO_MEMORY | bm::CMD_START);
        assert_eq!(rig.bm_in(10), bm::STATUS_INTERRUPT);
        assert_eq!(rig.irq15.take_rising_edges(), 1);
        assert_eq!(rig.inb(SEC_CMD + 7), READY);
        assert_eq!(rig.inb(SEC_CMD + 2) & 3, 3);
        let mut blk = vec![0u8; 2048];
        rig.ram.read(0x20000, &mut blk).unwrap();
        assert_eq!(&blk[..8], &11u64.to_be_bytes());
        // The primary engine was not involved.
        assert_eq!(rig.bm_in(2), 0);
    }

    #[test]
    fn atapi_commands_to_a_cd_only() {
        let img = TempImage::new("ide-disk-packet", 1 << 20);
        let rig = Rig::disk(&img);
        rig.outb(CMD + 7, cmd::PACKET);
        assert_eq!(rig.inb(CMD + 7), DRDY | ERR, "disks abort PACKET");
        rig.outb(CMD + 7, cmd::IDENTIFY_PACKET_DEVICE);
        assert_eq!(rig.inb(CMD + 7), DRDY | ERR);
        rig.outb(CMD + 7, cmd::DEVICE_RESET);
        assert_eq!(rig.inb(CMD + 1), ata_error::ABRT);
    }

    #[test]
    fn snapshot_on_overlay_keeps_the_base_file() {
        let img = patterned("ide-cow", 64);
        let original = img.contents();
        let base = RawFile::open(img.path(), true).unwrap();
        let overlay = CowOverlay::new(Box::new(base)).unwrap();
        let rig = Rig::new(
            [Some(IdeDrive::disk(Box::new(overlay))), None],
            [None, None],
        );
        let data = vec![0x5Au8; 1024];
        rig.lba28(CMD, 0, 20, 2, cmd::WRITE_SECTORS);
        rig.write_words(CMD, &data);
        assert_eq!(rig.inb(CMD + 7), READY);
        rig.lba28(CMD, 0, 19, 4, cmd::READ_SECTORS);
        let mut got = Vec::new();
        for _ in 0..4 {
            got.extend(rig.read_words(CMD, 256));
        }
        assert_eq!(&got[..512], &pattern_sector(19)[..]);
        assert_eq!(&got[512..1536], &data[..]);
        assert_eq!(&got[1536..], &pattern_sector(22)[..]);
        rig.outb(CMD + 7, cmd::FLUSH_CACHE);
        assert_eq!(rig.inb(CMD + 7), READY);
        assert_eq!(img.contents(), original, "nothing reaches the base");
    }

    #[test]
    fn reads_past_the_end_abort() {
        let img = patterned("ide-end", 64);
        let mut rig = Rig::disk(&img);
        rig.irq14.take_rising_edges();
        rig.lba28(CMD, 0, 63, 2, cmd::READ_SECTORS);
        assert_eq!(rig.inb(CMD + 7), DRDY | ERR);
        assert_eq!(rig.inb(CMD + 1), ata_error::ABRT);
        assert_eq!(rig.irq14.take_rising_edges(), 1);
        rig.lba48(CMD, 0, 1 << 40, 1, cmd::READ_SECTORS_EXT);
        assert_eq!(rig.inb(CMD + 7), DRDY | ERR);
        rig.lba28(CMD, 0, 64, 1, cmd::READ_DMA);
        assert_eq!(rig.inb(CMD + 7), DRDY | ERR);
        rig.lba28(CMD, 0, 60, 8, cmd::READ_VERIFY);
        assert_eq!(rig.inb(CMD + 7), DRDY | ERR);
        rig.lba28(CMD, 0, 60, 4, cmd::READ_VERIFY);
        assert_eq!(rig.inb(CMD + 7), READY);
        // The image shrinks under us: the backend's short read becomes ABRT too.
        std::fs::OpenOptions::new()
            .write(true)
            .open(img.path())
            .unwrap()
            .set_len(512)
            .unwrap();
        rig.lba28(CMD, 0, 10, 1, cmd::READ_SECTORS);
        assert_eq!(rig.inb(CMD + 7), DRDY | ERR);
        rig.write_prd(0x1000, &[(0x10000, 512, true)]);
        rig.bm_table(0, 0x1000);
        rig.lba28(CMD, 0, 10, 1, cmd::READ_DMA);
        rig.bm_out(0, bm::CMD_TO_MEMORY | bm::CMD_START);
        assert_eq!(rig.inb(CMD + 7), DRDY | ERR);
        assert_eq!(
            rig.bm_in(2) & bm::STATUS_ERROR,
            0,
            "a drive error, not a bus error"
        );
    }

    /// A backend whose writes fail after a while (a full disk, an I/O error).
    struct FailingWrites {
        inner: RawFile,
        writes_left: u32,
    }

    impl BlockBackend for FailingWrites {
        fn size(&self) -> u64 {
            self.inner.size()
        }
        fn is_read_only(&self) -> bool {
            false
        }
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
            self.inner.read_at(offset, buf)
        }
        fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), BlockError> {
            if self.writes_left == 0 {
                return Err(BlockError::Io {
                    op: "write",
                    offset,
                    len: buf.len(),
                    source: std::io::ErrorKind::StorageFull.into(),
                });
            }
            self.writes_left -= 1;
            self.inner.write_at(offset, buf)
        }
        fn flush(&mut self) -> Result<(), BlockError> {
            Ok(())
        }
    }

    #[test]
    fn write_failures_abort() {
        let img = patterned("ide-ro", 64);
        let original = img.contents();
        let ro = IdeDrive::disk(Box::new(RawFile::open(img.path(), true).unwrap()));
        let mut rig = Rig::new([Some(ro), None], [None, None]);
        rig.lba28(CMD, 0, 0, 1, cmd::WRITE_SECTORS);
        assert_eq!(
            rig.inb(CMD + 7),
            DRDY | ERR,
            "refused before the data phase"
        );
        assert_eq!(rig.inb(CMD + 1), ata_error::ABRT);
        rig.lba28(CMD, 0, 0, 1, cmd::WRITE_DMA);
        assert_eq!(rig.inb(CMD + 7), DRDY | ERR);
        assert_eq!(img.contents(), original);
        // Reads still work.
        rig.lba28(CMD, 0, 3, 1, cmd::READ_SECTORS);
        assert_eq!(rig.read_words(CMD, 256), pattern_sector(3));

        let failing = FailingWrites {
            inner: RawFile::open(img.path(), false).unwrap(),
            writes_left: 1,
        };
        rig = Rig::new(
            [Some(IdeDrive::disk(Box::new(failing))), None],
            [None, None],
        );
        rig.lba28(CMD, 0, 0, 2, cmd::WRITE_SECTORS);
        rig.write_words(CMD, &[1; 512]);
        assert_eq!(rig.inb(CMD + 7), READY | DRQ);
        rig.write_words(CMD, &[2; 512]);
        assert_eq!(
            rig.inb(CMD + 7),
            DRDY | ERR,
            "the second sector's write failed"
        );
        assert_eq!(
            rig.inb(CMD + 3),
            1,
            "the task file points at the failed sector"
        );
        rig.write_prd(0x1000, &[(0x10000, 512, true)]);
        rig.bm_table(0, 0x1000);
        rig.lba28(CMD, 0, 5, 1, cmd::WRITE_DMA);
        rig.bm_out(0, bm::CMD_START);
        assert_eq!(rig.inb(CMD + 7), DRDY | ERR);
        assert_eq!(rig.bm_in(2), bm::STATUS_INTERRUPT);
    }

    #[test]
    fn power_management_features_and_flush() {
        let img = TempImage::new("ide-pm", 1 << 20);
        let rig = Rig::disk(&img);
        rig.outb(CMD + 7, cmd::STANDBY_IMMEDIATE);
        rig.outb(CMD + 7, cmd::CHECK_POWER_MODE);
        assert_eq!(rig.inb(CMD + 2), 0x00, "standby");
        rig.outb(CMD + 7, cmd::IDLE_IMMEDIATE);
        rig.outb(CMD + 7, cmd::CHECK_POWER_MODE);
        assert_eq!(rig.inb(CMD + 2), 0xFF, "active or idle");
        // SET FEATURES: UDMA 2 selected, then an invalid mode aborts.
        rig.outb(CMD + 1, 0x03);
        rig.outb(CMD + 2, XFER_UDMA | 2);
        rig.outb(CMD + 7, cmd::SET_FEATURES);
        assert_eq!(rig.inb(CMD + 7), READY);
        let w = rig.identify(CMD, cmd::IDENTIFY_DEVICE);
        assert_eq!((w[63], w[88]), (0x0007, 0x043F));
        rig.outb(CMD + 1, 0x03);
        rig.outb(CMD + 2, XFER_MWDMA | 3);
        rig.outb(CMD + 7, cmd::SET_FEATURES);
        assert_eq!(rig.inb(CMD + 7), DRDY | ERR);
        // Write cache off shows in word 85.
        rig.outb(CMD + 1, 0x82);
        rig.outb(CMD + 7, cmd::SET_FEATURES);
        assert_eq!(rig.inb(CMD + 7), READY);
        let w = rig.identify(CMD, cmd::IDENTIFY_DEVICE);
        assert_eq!(w[85] & 1 << 5, 0);
        rig.outb(CMD + 7, cmd::FLUSH_CACHE_EXT);
        assert_eq!(rig.inb(CMD + 7), READY);
        rig.outb(CMD + 7, cmd::NOP);
        assert_eq!(rig.inb(CMD + 7), DRDY | ERR, "NOP always aborts");
        rig.outb(CMD + 7, 0xFF);
        assert_eq!(rig.inb(CMD + 1), ata_error::ABRT);
        rig.outb(CMD + 6, 0xE0);
        rig.outb(CMD + 7, cmd::READ_NATIVE_MAX);
        assert_eq!(rig.inb(CMD + 3), 0xFF);
        assert_eq!(rig.inb(CMD + 4), 0x07, "2047 = last sector of 1 MiB");
    }

    #[test]
    fn pci_identity_and_bar4() {
        let img = TempImage::new("ide-pci", 1 << 20);
        let mut rig = Rig::disk(&img);
        let c = rig.ide.config();
        assert_eq!((c.vendor_id(), c.device_id()), (0x8086, 0x7010));
        assert_eq!(
            c.get_u32(0x08) >> 8,
            0x01_01_80,
            "IDE, legacy mode, bus master"
        );
        assert_eq!(c.status() & status::DEVSEL_MEDIUM, status::DEVSEL_MEDIUM);
        assert_eq!(c.interrupt_pin(), 0);
        let bar4 = BAR0 + 4 * BMIBA_BAR;
        rig.ide.write_config(bar4, &0xFFFF_FFFFu32.to_le_bytes());
        assert_eq!(
            rig.ide.config().get_u32(bar4),
            0xFFFF_FFF1,
            "16 bytes of I/O"
        );
        rig.ide
            .write_config(IDETIM_PRIMARY, &0x8000u16.to_le_bytes());
        assert_eq!(rig.ide.config().get_u16(IDETIM_PRIMARY), 0x8000);
        rig.ide.enable_decode();
        assert_eq!(rig.ide.config().get_u16(IDETIM_SECONDARY), 0x8000);
        // The PRD address register drops its low two bits.
        rig.bm_table(1, 0x1234_5677);
        assert_eq!(
            [12, 13, 14, 15].map(|o| rig.bm_in(o)),
            [0x74, 0x56, 0x34, 0x12]
        );
        // A PCI reset clears the engines and the drives' state.
        rig.bm_out(2, 0x60);
        rig.ide.reset();
        assert_eq!(rig.bm_in(2), 0);
        assert_eq!(rig.ide.config().get_u16(IDETIM_PRIMARY), 0);
    }

    #[test]
    fn registers_on_a_pci_root_map_bar4() {
        use crate::pci::{PciRoot, PirqRouter};
        let img = patterned("ide-root", 64);
        let ram = Arc::new(MappedRam::new(&[(0, RAM_SIZE)]).unwrap());
        let pio = Arc::new(Bus::new(BusKind::Pio));
        let mmio = Arc::new(Bus::new(BusKind::Mmio));
        let irq = Arc::new(LatchedLine::new());
        let ide = Piix3Ide::new(
            ram.clone(),
            irq.clone(),
            Arc::new(LatchedLine::new()),
            [Some(disk(&img)), None],
            [None, None],
        );
        ide.register_legacy_ports(&pio).unwrap();
        let root = PciRoot::new(pio.clone(), mmio, PirqRouter::unconnected());
        root.add(PIIX3_IDE_BDF, ide).unwrap();
        root.config_write(PIIX3_IDE_BDF, 0x20, 4, 0xC000);
        root.config_write(PIIX3_IDE_BDF, 0x04, 2, 0x0005);
        // DMA through the mapped BAR.
        ram.write_u32(0x1000, 0x10000).unwrap();
        ram.write_u32(0x1004, 0x8000_0200).unwrap();
        pio.write_value(0xC004, 4, 0x1000);
        pio.write_value(0x1F6, 1, 0xE0);
        pio.write_value(0x1F2, 1, 1);
        pio.write_value(0x1F3, 1, 9);
        pio.write_value(0x1F4, 1, 0);
        pio.write_value(0x1F5, 1, 0);
        pio.write_value(0x1F7, 1, u64::from(cmd::READ_DMA));
        pio.write_value(0xC000, 1, 0x09);
        assert_eq!(pio.read_value(0xC002, 1), u64::from(bm::STATUS_INTERRUPT));
        assert_eq!(
            pio.read_value(0xC004, 4),
            0x1000,
            "dword read of the PRD address"
        );
        let mut s = vec![0u8; 512];
        ram.read(0x10000, &mut s).unwrap();
        assert_eq!(s, pattern_sector(9));
        assert!(irq.level());
        assert_eq!(pio.read_value(0x1F7, 1), u64::from(READY));
        assert!(!irq.level());
    }

    #[test]
    fn snapshot_round_trip_mid_pio_transfer() {
        let img = patterned("ide-snap", 64);
        let cd = iso("ide-snap-cd", 16);
        let a = Rig::new([Some(disk(&img)), None], [Some(cdrom(&cd)), None]);
        a.lba28(CMD, 0, 4, 3, cmd::READ_SECTORS);
        let first = a.read_words(CMD, 256 + 70);
        // Leave the secondary mid-way through a packet as well.
        a.outb(SEC_CMD + 4, 0x00);
        a.outb(SEC_CMD + 5, 0x08);
        a.outb(SEC_CMD + 7, cmd::PACKET);
        a.write_words(SEC_CMD, &[0x28, 0, 0, 0, 0, 2]);
        let mut b = Rig::new([Some(disk(&img)), None], [Some(cdrom(&cd)), None]);
        snapshot::check_round_trip(&a.ide, &mut b.ide).unwrap();
        assert!(b.irq14.level(), "the pending interrupt is re-driven");
        let rest = b.read_words(CMD, 3 * 256 - (256 + 70));
        let mut all = first;
        all.extend(rest);
        let expect: Vec<u8> = (4..7).flat_map(pattern_sector).collect();
        assert_eq!(all, expect, "the transfer continues after restore");
        assert_eq!(b.inb(CMD + 7), READY);
        b.write_words(SEC_CMD, &[0, 0, 1, 0, 0, 0]);
        assert_eq!(b.inb(SEC_CMD + 7), READY | DRQ);
        let blk = b.read_words(SEC_CMD, 1024);
        assert_eq!(&blk[..8], &2u64.to_be_bytes());
        assert_eq!(b.inb(SEC_CMD + 7), READY);

        // A snapshot with a disk where this machine has a CD is refused.
        let c = Rig::new([Some(disk(&img)), None], [Some(disk(&img)), None]);
        assert!(snapshot::restore(&mut b.ide, &snapshot::save(&c.ide)).is_err());
        // A disk unplugged in the snapshot is unplugged on restore.
        a.ide.handle().unplug_disks(false);
        snapshot::restore(&mut b.ide, &snapshot::save(&a.ide)).unwrap();
        assert_eq!(b.ide.handle().drive_kind(0, 0), None);
        assert_eq!(b.ide.handle().drive_kind(1, 0), Some(DriveKind::Cdrom));
        let _ = &mut b.ide;
        b.bm_out(0, 0);
    }

    #[test]
    fn snapshot_round_trip_mid_dma_and_write() {
        let img = patterned("ide-snap-dma", 64);
        let a = Rig::disk(&img);
        a.lba28(CMD, 0, 2, 2, cmd::WRITE_SECTORS);
        a.write_words(CMD, &[7u8; 300]);
        let mut b = Rig::disk(&img);
        snapshot::check_round_trip(&a.ide, &mut b.ide).unwrap();
        b.write_words(CMD, &[7u8; 212]);
        b.write_words(CMD, &[8u8; 512]);
        assert_eq!(b.inb(CMD + 7), READY);
        let file = img.contents();
        assert!(file[1024..1536].iter().all(|&x| x == 7));
        assert!(file[1536..2048].iter().all(|&x| x == 8));

        // DMA pending with the table half walked.
        let mut a = Rig::disk(&img);
        a.write_prd(0x1000, &[(0x10000, 512, true)]);
        a.bm_table(0, 0x1000);
        a.lba28(CMD, 0, 0, 2, cmd::READ_DMA);
        a.bm_out(0, bm::CMD_TO_MEMORY | bm::CMD_START);
        let mut b = Rig::disk(&img);
        snapshot::check_round_trip(&a.ide, &mut b.ide).unwrap();
        b.write_prd(0x1000, &[(0x20000, 512, true)]);
        b.bm_out(0, bm::CMD_TO_MEMORY);
        b.bm_out(0, bm::CMD_TO_MEMORY | bm::CMD_START);
        assert_eq!(b.bm_in(2), bm::STATUS_INTERRUPT);
        let mut s = vec![0u8; 512];
        b.ram.read(0x20000, &mut s).unwrap();
        assert_eq!(s, img.contents()[512..1024]);
    }

    /// xorshift64*: deterministic noise for the random test.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    const FUZZ_COMMANDS: [u8; 33] = [
        0x00, 0x08, 0x10, 0x20, 0x21, 0x24, 0x25, 0x27, 0x29, 0x30, 0x34, 0x35, 0x39, 0x40, 0x42,
        0x70, 0x90, 0x91, 0xA0, 0xA1, 0xC4, 0xC5, 0xC6, 0xC8, 0xCA, 0xE0, 0xE1, 0xE5, 0xE7, 0xEA,
        0xEC, 0xEF, 0xF8,
    ];
    const FUZZ_CDBS: [u8; 13] = [
        0x00, 0x03, 0x12, 0x1B, 0x1E, 0x25, 0x28, 0x43, 0x46, 0x4A, 0x5A, 0xA8, 0xBE,
    ];

    /// `steps` random accesses to every port, the engines and the PRD tables in RAM.
    fn random_io(rig: &mut Rig, rng: &mut Rng, steps: u32) {
        for _ in 0..steps {
            let base = if rng.below(2) == 0 { CMD } else { SEC_CMD };
            match rng.below(12) {
                0 => rig.outb(
                    base + 7,
                    FUZZ_COMMANDS[rng.below(FUZZ_COMMANDS.len() as u64) as usize],
                ),
                1 => rig.outb(base + 7, rng.next() as u8),
                2 => rig.outb(base + 1 + rng.below(6) as u16, rng.next() as u8),
                3 => rig.outb(base + 2, rng.below(4) as u8),
                4 => {
                    let _ = rig.inw(base);
                }
                5 => rig.outw(
                    base,
                    u16::from(FUZZ_CDBS[rng.below(FUZZ_CDBS.len() as u64) as usize]),
                ),
                6 => {
                    let port = base + rng.below(8) as u16;
                    match rng.below(3) {
                        0 => {
                            rig.inb(port);
                        }
                        1 => {
                            rig.inl(port);
                        }
                        _ => rig.outl(port, rng.next() as u32),
                    }
                }
                7 => {
                    let ctl = if base == CMD { CTL } else { SEC_CTL };
                    let v = [0u8, 2, 4, 0x80, rng.next() as u8][rng.below(5) as usize];
                    rig.outb(ctl, v);
                    rig.inb(ctl);
                }
                8 => {
                    let off = rng.below(16);
                    let v = match off % 8 {
                        0 => [0u8, 1, 8, 9][rng.below(4) as usize],
                        _ => rng.next() as u8,
                    };
                    rig.bm_out(off, v);
                    rig.bm_in(rng.below(16));
                }
                9 => {
                    // A PRD table somewhere in (or beyond) RAM, with random entries.
                    let table = (rng.below(RAM_SIZE as u64 + 0x1000) & !7) as u32;
                    for i in 0..rng.below(8) {
                        let addr = rng.below(RAM_SIZE as u64 + 0x10000) as u32;
                        let count = rng.next() as u32 & 0x8000_FFFF;
                        let at = u64::from(table) + 8 * i;
                        let _ = rig.ram.write_u32(at, addr);
                        let _ = rig.ram.write_u32(at + 4, count);
                    }
                    rig.bm_table(rng.below(2), table);
                }
                10 => {
                    let _ = rig.inw(base);
                    let _ = rig.inw(base);
                    rig.outw(base, rng.next() as u16);
                }
                _ => {
                    let v = if rng.below(8) == 0 { 1u16 } else { 5 };
                    rig.ide.write_config(COMMAND, &v.to_le_bytes());
                }
            }
            for ch in &rig.ide.channels {
                let ch = lock(ch);
                for d in &ch.drives {
                    assert!(d.st.buf.len() <= MAX_BUFFER);
                    assert!(d.st.pos <= d.st.buf.len() + 4);
                }
            }
        }
    }

    struct FuzzImages {
        disk: TempImage,
        small: TempImage,
        cd: TempImage,
    }

    impl FuzzImages {
        fn new() -> FuzzImages {
            FuzzImages {
                disk: patterned("ide-random", 128),
                small: patterned("ide-random2", 16),
                cd: iso("ide-random-cd", 16),
            }
        }

        fn rig(&self) -> Rig {
            Rig::new(
                [Some(disk(&self.disk)), Some(cdrom(&self.cd))],
                [
                    Some(IdeDrive::disk(Box::new(CowOverlay::in_memory(Box::new(
                        RawFile::open(self.small.path(), true).unwrap(),
                    ))))),
                    None,
                ],
            )
        }
    }

    #[test]
    fn random_accesses_never_panic() {
        let images = FuzzImages::new();
        for seed in [1u64, 0xDEAD_BEEF, 42] {
            let mut rig = images.rig();
            let mut rng = Rng(seed);
            for _ in 0..6 {
                random_io(&mut rig, &mut rng, 10_000);
                let blob = snapshot::save(&rig.ide);
                snapshot::restore(&mut rig.ide, &blob).unwrap();
                assert_eq!(snapshot::save(&rig.ide), blob);
            }
        }
    }

    /// CRC-32 (IEEE), to re-seal mutated snapshot payloads.
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
            }
        }
        !crc
    }

    #[test]
    fn hostile_snapshots_never_panic() {
        let images = FuzzImages::new();
        let mut rng = Rng(7);
        let mut source = images.rig();
        let mut restored = 0;
        for round in 0..300 {
            random_io(&mut source, &mut rng, 200);
            let mut blob = snapshot::save(&source.ide);
            // Mutate the payload (after magic, id, version and length), then re-seal it.
            let header = 4 + 1 + "piix3-ide".len() + 2 + 4;
            let payload_len = blob.len() - header - 4;
            for _ in 0..1 + rng.below(4) {
                let at = header + rng.below(payload_len as u64) as usize;
                blob[at] = match rng.below(3) {
                    0 => rng.next() as u8,
                    1 => 0xFF,
                    _ => blob[at] ^ 1,
                };
            }
            let body = blob.len() - 4;
            let crc = crc32(&blob[..body]);
            blob[body..].copy_from_slice(&crc.to_le_bytes());
            let mut target = images.rig();
            if snapshot::restore(&mut target.ide, &blob).is_ok() {
                restored += 1;
                random_io(&mut target, &mut rng, 300);
            }
            if round % 50 == 0 {
                source = images.rig();
            }
        }
        assert!(restored > 0, "some mutations are valid states");
    }
}
