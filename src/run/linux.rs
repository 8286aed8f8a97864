//! The Linux bzImage (x86 boot protocol, Documentation/arch/x86/boot.rst): parsing and checks
//! both `-kernel` routes share, and the fw_cfg route itself.
//!
//! The fw_cfg route is QEMU's `pc` way and our default: the bzImage is split into its real-mode
//! setup and protected-mode parts, the setup header patched, and everything published through
//! fw_cfg; SeaBIOS runs QEMU's `linuxboot_dma.bin` option ROM (Debian's qemu-system-data), which
//! loads the pieces and jumps to the setup code. The direct route (`-bios none`,
//! `direct_linux.rs`) builds the zero page itself and enters the 32-bit entry point.

use devices::firmware::fw_cfg::{FwCfg, KernelLoadAddrs, LINUX_CMDLINE_ADDR, LINUX_SETUP_ADDR};

pub const LINUXBOOT_ROM: &str = "/usr/share/qemu/linuxboot_dma.bin";
const ROM_NAME: &str = "genroms/linuxboot_dma.bin";

/// Setup header offsets (boot protocol).
pub mod hdr {
    pub const SETUP_SECTS: usize = 0x1F1;
    pub const SYSSIZE: usize = 0x1F4;
    pub const BOOT_FLAG: usize = 0x1FE;
    /// The jump instruction's displacement byte: the header ends at 0x202 plus this.
    pub const JUMP_LEN: usize = 0x201;
    pub const HEADER: usize = 0x202;
    pub const VERSION: usize = 0x206;
    pub const TYPE_OF_LOADER: usize = 0x210;
    pub const LOADFLAGS: usize = 0x211;
    pub const CODE32_START: usize = 0x214;
    pub const RAMDISK_IMAGE: usize = 0x218;
    pub const RAMDISK_SIZE: usize = 0x21C;
    pub const HEAP_END_PTR: usize = 0x224;
    pub const CMD_LINE_PTR: usize = 0x228;
    pub const INITRD_ADDR_MAX: usize = 0x22C;
    pub const CMDLINE_SIZE: usize = 0x238;
    pub const PREF_ADDRESS: usize = 0x258;
    pub const INIT_SIZE: usize = 0x260;
}

pub const LOADED_HIGH: u8 = 0x01;
const CAN_USE_HEAP: u8 = 0x80;
/// What QEMU keeps free below the top of low RAM for ACPI tables (initrd goes under it).
const ACPI_DATA_SIZE: u64 = 0x2_0000 + 0x8000;
/// Where the protected-mode kernel is loaded (and where a bzImage without a preference
/// decompresses from).
pub const KERNEL_LOAD_ADDR: u64 = 0x10_0000;
/// A non-relocatable kernel decompresses to 16 MiB at the latest (LOAD_PHYSICAL_ADDR); the
/// initrd must stay clear of `max(pref_address, this) + init_size`.
const DEFAULT_PREF_ADDRESS: u64 = 0x100_0000;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinuxError {
    #[error("{0} bytes is too small for a Linux kernel")]
    TooSmall(usize),
    #[error("truncated bzImage: its header says {expected} bytes, the file has {actual}")]
    Truncated { expected: usize, actual: usize },
    #[error("neither a Linux bzImage (no \"HdrS\" setup header) nor a multiboot kernel")]
    NotBzImage,
    #[error("boot protocol {}.{:02} is too old (2.02 or later, loaded high)", .0 >> 8, .0 & 0xFF)]
    OldProtocol(u16),
    #[error("command line of {len} bytes, the kernel takes {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("initrd of {size} bytes does not fit between {low:#x} and {top:#x}")]
    InitrdTooLarge { size: usize, low: u64, top: u64 },
    #[error("the kernel's {size} bytes do not fit between 1 MiB and the end of RAM ({ram:#x})")]
    KernelTooLarge { size: usize, ram: u64 },
    #[error("{0} is missing: it loads the kernel (apt-get install qemu-system-data)")]
    NoOptionRom(String),
}

/// Whether `image` carries a Linux setup header (then it is booted as a bzImage, not tried as
/// a multiboot kernel — QEMU's order).
pub fn has_setup_header(image: &[u8]) -> bool {
    image.get(hdr::HEADER..hdr::HEADER + 4) == Some(b"HdrS")
}

/// A checked bzImage with its initrd and command line.
pub struct LinuxImage {
    image: Vec<u8>,
    initrd: Option<Vec<u8>>,
    cmdline: String,
    setup_size: usize,
    protocol: u16,
}

pub fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub fn put32(b: &mut [u8], at: usize, v: u32) {
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
        if !has_setup_header(&image) || le16(&image, hdr::BOOT_FLAG) != 0xAA55 {
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
            return Err(LinuxError::Truncated {
                expected: setup_size + 1,
                actual: image.len(),
            });
        }
        // syssize (in 16-byte paragraphs) is reliable from protocol 2.04 on.
        if protocol >= 0x204 {
            let expected = setup_size + le32(&image, hdr::SYSSIZE) as usize * 16;
            if image.len() < expected {
                return Err(LinuxError::Truncated {
                    expected,
                    actual: image.len(),
                });
            }
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
        Ok(LinuxImage {
            image,
            initrd,
            cmdline,
            setup_size,
            protocol,
        })
    }

    /// The real-mode setup code with the setup header (sector 0 included).
    pub fn setup(&self) -> &[u8] {
        &self.image[..self.setup_size]
    }

    /// The protected-mode kernel, loaded at [`KERNEL_LOAD_ADDR`].
    pub fn protected_mode(&self) -> &[u8] {
        &self.image[self.setup_size..]
    }

    pub fn initrd(&self) -> Option<&[u8]> {
        self.initrd.as_deref()
    }

    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// The setup header as it sits in the image: from 0x1F1 to its end, which the jump at
    /// 0x200 gives (boot.rst, "the 64-bit boot protocol" copies exactly this).
    pub fn setup_header(&self) -> &[u8] {
        let end = (hdr::HEADER + usize::from(self.image[hdr::JUMP_LEN])).min(0x1000);
        &self.image[hdr::SETUP_SECTS..end.max(hdr::HEADER + 4)]
    }

    /// Where the initrd goes: as high as possible below `initrd_addr_max` and `top` (exclusive),
    /// page-aligned, above everything the kernel occupies while it decompresses.
    pub fn initrd_address(&self, top: u64) -> Result<Option<u32>, LinuxError> {
        let Some(initrd) = &self.initrd else {
            return Ok(None);
        };
        let addr_max = if self.protocol >= 0x203 {
            u64::from(le32(&self.image, hdr::INITRD_ADDR_MAX))
        } else {
            0x37FF_FFFF
        };
        let top = (addr_max + 1).min(top);
        let mut low = KERNEL_LOAD_ADDR + self.protected_mode().len() as u64;
        if self.protocol >= 0x20A {
            let pref = u64::from(le32(&self.image, hdr::PREF_ADDRESS)).max(DEFAULT_PREF_ADDRESS);
            low = low.max(pref + u64::from(le32(&self.image, hdr::INIT_SIZE)));
        }
        let size = initrd.len() as u64;
        top.checked_sub(size)
            .map(|s| s & !0xFFF)
            .filter(|&s| s >= low)
            .map(|s| Some(s as u32))
            .ok_or(LinuxError::InitrdTooLarge {
                size: initrd.len(),
                low,
                top,
            })
    }

    /// The fw_cfg route needs QEMU's loader option ROM.
    pub fn check_option_rom() -> Result<(), LinuxError> {
        if std::path::Path::new(LINUXBOOT_ROM).exists() {
            Ok(())
        } else {
            Err(LinuxError::NoOptionRom(LINUXBOOT_ROM.to_string()))
        }
    }

    /// Patch the header for `ram_below_4g` and publish kernel, initrd, command line and the
    /// loader option ROM (first in the boot order) through fw_cfg.
    pub fn publish(&self, fw: &mut FwCfg, ram_below_4g: u64) -> anyhow::Result<()> {
        let mut setup = self.setup().to_vec();
        setup[hdr::TYPE_OF_LOADER] = 0xB0; // QEMU's loader ID
        setup[hdr::LOADFLAGS] |= CAN_USE_HEAP;
        put32(&mut setup, hdr::CMD_LINE_PTR, LINUX_CMDLINE_ADDR);
        setup[hdr::HEAP_END_PTR..hdr::HEAP_END_PTR + 2].copy_from_slice(
            &((LINUX_CMDLINE_ADDR - LINUX_SETUP_ADDR - 0x200) as u16).to_le_bytes(),
        );
        let top = ram_below_4g.saturating_sub(ACPI_DATA_SIZE);
        let initrd_addr = self.initrd_address(top)?.unwrap_or(0);
        if let Some(initrd) = &self.initrd {
            put32(&mut setup, hdr::RAMDISK_IMAGE, initrd_addr);
            put32(&mut setup, hdr::RAMDISK_SIZE, initrd.len() as u32);
        }
        fw.set_kernel(
            setup,
            self.protected_mode().to_vec(),
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal bzImage: protocol 2.15, 4 setup sectors, `pm` bytes of protected-mode code.
    pub(crate) fn fake_bzimage(pm: usize) -> Vec<u8> {
        let mut img = vec![0u8; 5 * 512 + pm];
        img[hdr::SETUP_SECTS] = 4;
        img[hdr::BOOT_FLAG..hdr::BOOT_FLAG + 2].copy_from_slice(&0xAA55u16.to_le_bytes());
        img[0x200] = 0xEB;
        img[hdr::JUMP_LEN] = 0x66; // header to 0x268
        img[hdr::HEADER..hdr::HEADER + 4].copy_from_slice(b"HdrS");
        img[hdr::VERSION..hdr::VERSION + 2].copy_from_slice(&0x20Fu16.to_le_bytes());
        img[hdr::LOADFLAGS] = LOADED_HIGH;
        put32(&mut img, hdr::SYSSIZE, (pm / 16) as u32);
        put32(&mut img, hdr::CODE32_START, 0x10_0000);
        put32(&mut img, hdr::INITRD_ADDR_MAX, 0x7FFF_FFFF);
        put32(&mut img, hdr::CMDLINE_SIZE, 2047);
        put32(&mut img, hdr::PREF_ADDRESS, 0x100_0000);
        put32(&mut img, hdr::INIT_SIZE, 0x80_0000);
        img
    }

    #[test]
    fn a_bzimage_parses_and_its_header_is_found() {
        let k = LinuxImage::parse(fake_bzimage(0x2000), None, "console=ttyS0".into()).unwrap();
        assert_eq!(k.setup().len(), 5 * 512);
        assert_eq!(k.protected_mode().len(), 0x2000);
        assert_eq!(k.setup_header().len(), 0x268 - 0x1F1);
        assert_eq!(k.initrd_address(64 << 20), Ok(None));
    }

    #[test]
    fn truncated_and_foreign_images_are_refused() {
        let mut img = fake_bzimage(0x2000);
        img.truncate(img.len() - 16);
        assert_eq!(
            LinuxImage::parse(img, None, String::new()).err(),
            Some(LinuxError::Truncated {
                expected: 5 * 512 + 0x2000,
                actual: 5 * 512 + 0x2000 - 16
            })
        );
        // Setup sectors reaching past the end of the file.
        let mut img = fake_bzimage(0x2000);
        img[hdr::SETUP_SECTS] = 30;
        assert!(matches!(
            LinuxImage::parse(img, None, String::new()),
            Err(LinuxError::Truncated { .. })
        ));
        assert_eq!(
            LinuxImage::parse(vec![0; 0x2000], None, String::new()).err(),
            Some(LinuxError::NotBzImage)
        );
        assert_eq!(
            LinuxImage::parse(vec![0; 10], None, String::new()).err(),
            Some(LinuxError::TooSmall(10))
        );
        let long = "x".repeat(2048);
        assert!(matches!(
            LinuxImage::parse(fake_bzimage(0x2000), None, long),
            Err(LinuxError::CmdlineTooLong {
                len: 2048,
                max: 2047
            })
        ));
    }

    #[test]
    fn the_initrd_goes_high_but_clear_of_the_decompressing_kernel() {
        let k =
            LinuxImage::parse(fake_bzimage(0x2000), Some(vec![1; 0x1800]), String::new()).unwrap();
        // Page-aligned, ending at or below the top.
        assert_eq!(k.initrd_address(64 << 20), Ok(Some((64 << 20) - 0x2000)));
        // The kernel decompresses to [16 MiB, 24 MiB): an initrd must stay above that.
        assert!(matches!(
            k.initrd_address(0x180_0000 + 0x1000),
            Err(LinuxError::InitrdTooLarge {
                low: 0x180_0000,
                ..
            })
        ));
        assert_eq!(k.initrd_address(0x180_0000 + 0x2000), Ok(Some(0x180_0000)));
    }
}
