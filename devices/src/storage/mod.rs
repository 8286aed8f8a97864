//! Disk controllers.
//!
//! - [`ide`]: the PIIX3 IDE function (legacy channels, bus-master DMA) with ATA disks and
//!   ATAPI CD-ROMs.
//! - [`atapi`]: the CD/DVD-ROM command set the IDE PACKET command carries.

pub mod atapi;
pub mod ide;

pub use ide::{DriveKind, IdeDrive, IdeHandle, PIIX3_IDE_BDF, Piix3Ide};
