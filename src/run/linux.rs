//! `-kernel`/`-initrd`/`-append` the way QEMU's `pc` does it: the bzImage is split into its
//! real-mode setup and protected-mode parts, the setup header patched (Linux x86 boot protocol,
//! Documentation/arch/x86/boot.rst), and everything published through fw_cfg; SeaBIOS runs
//! QEMU's `linuxboot_dma.bin` option ROM (Debian's qemu-system-data), which loads the pieces
//! and jumps to the setup code.

use devices::firmware::fw_cfg::{FwCfg, KernelLoadAddrs, LINUX_CMDLINE_ADDR, LINUX_SETUP_ADDR};

pub const LINUXBOOT_ROM: &str = "/usr/share/qemu/linuxboot_dma.bin";
const ROM_NAME: &str = "genroms/linuxboot_dma.bin";

/// Setup header offsets (boot protocol).
mod hdr {
    pub const SETUP_SECTS: usize = 0x1F1;
    pub const BOOT_FLAG: usize = 0x1FE;
    pub const HEADER: usize = 0x202;
    pub const VERSION: usize = 0x206;
    pub const TYPE_OF_LOADER: usize = 0x210;
    pub const LOADFLAGS: usize = 0x211;
    pub const RAMDISK_IMAGE: usize = 0x218;
    pub const RAMDISK_SIZE: usize = 0x21C;
    pub const HEAP_END_PTR: usize = 0x224;
    pub const CMD_LINE_PTR: usize = 0x228;
    pub const INITRD_ADDR_MAX: usize = 0x22C;
    pub const CMDLINE_SIZE: usize = 0x238;
}

const LOADED_HIGH: u8 = 0x01;
const CAN_USE_HEAP: u8 = 0x80;
/// What QEMU keeps free below the top of low RAM for ACPI tables (initrd goes under it).
const ACPI_DATA_SIZE: u64 = 0x2_0000 + 0x8000;

#[derive(Debug, PartialEq, Eq)]
pub enum LinuxError {
    TooSmall(usize),
    NotBzImage,
    OldProtocol(u16),
    CmdlineTooLong { len: usize, max: usize },
    InitrdTooLarge { size: usize, max: u64 },
    NoOptionRom(String),
}

impl std::fmt::Display for LinuxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinuxError::TooSmall(n) => write!(f, "{n} bytes is too small for a Linux kernel"),
            LinuxError::NotBzImage => {
                write!(f, "not a Linux bzImage (no \"HdrS\" setup header)")
            }
            LinuxError::OldProtocol(v) => write!(
                f,
                "boot protocol {}.{:02} is too old (2.02 or later, loaded high)",
                v >> 8,
                v & 0xFF
            ),
            LinuxError::CmdlineTooLong { len, max } => {
                write!(f, "command line of {len} bytes, the kernel takes {max}")
            }
            LinuxError::InitrdTooLarge { size, max } => {
                write!(f, "initrd of {size} bytes does not fit below {max:#x}")
            }
            LinuxError::NoOptionRom(p) => write!(
                f,
                "{p} is missing: it loads the kernel (apt-get install qemu-system-data)"
            ),
        }
    }
}

impl std::error::Error for LinuxError {}

/// A checked bzImage with its initrd and command line.
pub struct LinuxImage {
    image: Vec<u8>,
    initrd: Option<Vec<u8>>,
    cmdline: String,
    setup_size: usize,
    protocol: u16,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

impl LinuxImage {
    pub fn parse(
        image: Vec<u8>,
        initrd: Option<Vec<u8>>,
        cmdline: String,
    ) -> Result<LinuxImage, LinuxError> {
        if image.len() < 0x1000 {
            return Err(LinuxError::TooSmall(image.len()));
        }
        if &image[hdr::HEADER..hdr::HEADER + 4] != b"HdrS" || le16(&image, hdr::BOOT_FLAG) != 0xAA55
        {
            return Err(LinuxError::NotBzImage);
        }
        let protocol = le16(&image, hdr::VERSION);
        if protocol < 0x202 || image[hdr::LOADFLAGS] & LOADED_HIGH == 0 {
            return Err(LinuxError::OldProtocol(protocol));
        }
        let sects = match image[hdr::SETUP_SECTS] {
            0 => 4,
            n => usize::from(n),
        };
        let setup_size = (sects + 1) * 512;
        if setup_size >= image.len() {
            return Err(LinuxError::TooSmall(image.len()));
        }
        let max = if protocol >= 0x206 {
            le32(&image, hdr::CMDLINE_SIZE) as usize
        } else {
            255
        };
        if cmdline.len() > max {
            return Err(LinuxError::CmdlineTooLong {
                len: cmdline.len(),
                max,
            });
        }
        if !std::path::Path::new(LINUXBOOT_ROM).exists() {
            return Err(LinuxError::NoOptionRom(LINUXBOOT_ROM.to_string()));
        }
        Ok(LinuxImage {
            image,
            initrd,
            cmdline,
            setup_size,
            protocol,
        })
    }

    /// Patch the header for `ram_below_4g` and publish kernel, initrd, command line and the
    /// loader option ROM (first in the boot order) through fw_cfg.
    pub fn publish(&self, fw: &mut FwCfg, ram_below_4g: u64) -> anyhow::Result<()> {
        let mut setup = self.image[..self.setup_size].to_vec();
        let kernel = self.image[self.setup_size..].to_vec();
        setup[hdr::TYPE_OF_LOADER] = 0xB0; // QEMU's loader ID
        setup[hdr::LOADFLAGS] |= CAN_USE_HEAP;
        put32(&mut setup, hdr::CMD_LINE_PTR, LINUX_CMDLINE_ADDR);
        setup[hdr::HEAP_END_PTR..hdr::HEAP_END_PTR + 2].copy_from_slice(
            &((LINUX_CMDLINE_ADDR - LINUX_SETUP_ADDR - 0x200) as u16).to_le_bytes(),
        );
        let mut initrd_addr = 0u32;
        if let Some(initrd) = &self.initrd {
            let addr_max = if self.protocol >= 0x203 {
                u64::from(le32(&setup, hdr::INITRD_ADDR_MAX))
            } else {
                0x37FF_FFFF
            };
            let top = addr_max.min(ram_below_4g.saturating_sub(ACPI_DATA_SIZE + 1));
            let size = initrd.len() as u64;
            let start = top
                .checked_sub(size)
                .filter(|&s| s >= 0x100_0000 + kernel.len() as u64)
                .ok_or(LinuxError::InitrdTooLarge {
                    size: initrd.len(),
                    max: top,
                })?
                & !0xFFF;
            initrd_addr = start as u32;
            put32(&mut setup, hdr::RAMDISK_IMAGE, initrd_addr);
            put32(&mut setup, hdr::RAMDISK_SIZE, initrd.len() as u32);
        }
        fw.set_kernel(
            setup,
            kernel,
            self.initrd.clone(),
            &self.cmdline,
            KernelLoadAddrs::modern(initrd_addr),
        )?;
        let rom = std::fs::read(LINUXBOOT_ROM)
            .map_err(|_| LinuxError::NoOptionRom(LINUXBOOT_ROM.to_string()))?;
        fw.add_file(ROM_NAME, rom)?;
        fw.set_boot_order(&[format!("/rom@{ROM_NAME}")])?;
        Ok(())
    }
}
