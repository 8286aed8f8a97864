//! Linux without firmware (`-bios none -kernel bzImage`): the 32-bit boot protocol
//! (Documentation/arch/x86/boot.rst). The protected-mode kernel goes to 1 MiB, the initrd as
//! high as the kernel allows, and the zero page (`struct boot_params`) carries a copy of the
//! setup header, the command line pointer, the initrd and the e820 map. The kernel is entered
//! at 1 MiB with ESI pointing at the zero page.
//!
//! No firmware means no ACPI tables, no MP table, no SMBIOS and an empty BIOS data area: the
//! kernel runs on one CPU with the 8259 and the 8254 (it finds them without tables, as on any
//! PC) and the legacy serial ports it probes at their ISA addresses. The screen_info is left
//! zero: zero lines and columns make vgacon stand down, so nothing draws on a VGA that no
//! BIOS ever set up.

use devices::firmware::fw_cfg::E820Entry;

use super::direct::{self, DirectBoot, KERNEL_STACK_TOP};
use super::linux::{self, KERNEL_LOAD_ADDR, LinuxError, LinuxImage, hdr};

/// Where the zero page and the command line go (low RAM, clear of the kernel and the initrd).
pub const BOOT_PARAMS_ADDR: u64 = 0x7000;
pub const CMDLINE_ADDR: u64 = 0x2_0000;

/// `struct boot_params` offsets outside the setup header.
mod bp {
    pub const ALT_MEM_K: usize = 0x1E0;
    pub const E820_ENTRIES: usize = 0x1E8;
    pub const E820_TABLE: usize = 0x2D0;
    pub const E820_MAX: usize = 128;
}

/// "Undefined" in the boot protocol's loader ID table: we have no ID of our own.
const LOADER_UNDEFINED: u8 = 0xFF;

/// Lay out `k` for a board with `ram` bytes below 4 GiB and the memory map `e820`.
pub fn prepare(k: &LinuxImage, ram: u64, e820: &[E820Entry]) -> Result<DirectBoot, LinuxError> {
    let pm = k.protected_mode();
    if !direct::in_ram(KERNEL_LOAD_ADDR, pm.len() as u64, ram) {
        return Err(LinuxError::KernelTooLarge {
            size: pm.len(),
            ram,
        });
    }
    let initrd_addr = k.initrd_address(ram)?;

    let mut zp = vec![0u8; 4096];
    let header = k.setup_header();
    zp[hdr::SETUP_SECTS..hdr::SETUP_SECTS + header.len()].copy_from_slice(header);
    zp[hdr::TYPE_OF_LOADER] = LOADER_UNDEFINED;
    zp[hdr::LOADFLAGS] |= linux::LOADED_HIGH;
    linux::put32(&mut zp, hdr::CODE32_START, KERNEL_LOAD_ADDR as u32);
    linux::put32(&mut zp, hdr::CMD_LINE_PTR, CMDLINE_ADDR as u32);
    if let (Some(addr), Some(initrd)) = (initrd_addr, k.initrd()) {
        linux::put32(&mut zp, hdr::RAMDISK_IMAGE, addr);
        linux::put32(&mut zp, hdr::RAMDISK_SIZE, initrd.len() as u32);
    }
    // Extended memory in KiB above 1 MiB, for kernels that look at it before the e820 map.
    linux::put32(
        &mut zp,
        bp::ALT_MEM_K,
        ((ram - direct::HIGH_RAM_START) >> 10) as u32,
    );
    for (i, e) in e820.iter().take(bp::E820_MAX).enumerate() {
        let at = bp::E820_TABLE + i * 20;
        zp[at..at + 8].copy_from_slice(&e.address.to_le_bytes());
        zp[at + 8..at + 16].copy_from_slice(&e.length.to_le_bytes());
        linux::put32(&mut zp, at + 16, e.kind as u32);
    }
    zp[bp::E820_ENTRIES] = e820.len().min(bp::E820_MAX) as u8;

    let mut cmdline = k.cmdline().as_bytes().to_vec();
    cmdline.push(0);
    let mut blobs = vec![
        (KERNEL_LOAD_ADDR, pm.to_vec()),
        (BOOT_PARAMS_ADDR, zp),
        (CMDLINE_ADDR, cmdline),
    ];
    if let (Some(addr), Some(initrd)) = (initrd_addr, k.initrd()) {
        blobs.push((u64::from(addr), initrd.to_vec()));
    }
    Ok(DirectBoot {
        blobs,
        zero: Vec::new(),
        entry: KERNEL_LOAD_ADDR as u32,
        esp: KERNEL_STACK_TOP,
        esi: BOOT_PARAMS_ADDR as u32,
        ..DirectBoot::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::linux::tests::fake_bzimage;
    use translator::{Cpu, PhysMem};

    #[test]
    fn the_zero_page_carries_header_cmdline_initrd_and_e820() {
        let ram = 64 << 20;
        let e820 = direct::e820_map(ram, 0x1_0000);
        let k = LinuxImage::parse(
            fake_bzimage(0x2000),
            Some(vec![7; 0x3000]),
            "console=ttyS0".into(),
        )
        .unwrap();
        let boot = prepare(&k, ram, &e820).unwrap();
        let mut cpu = Cpu::new(PhysMem::new(ram as usize));
        boot.enter(&mut cpu);
        let m = cpu.mem.as_slice();
        let zp = &m[0x7000..0x8000];
        assert_eq!(&zp[hdr::HEADER..hdr::HEADER + 4], b"HdrS");
        assert_eq!(zp[hdr::TYPE_OF_LOADER], 0xFF);
        assert_eq!(linux::le32(zp, hdr::CMD_LINE_PTR), 0x2_0000);
        assert_eq!(&m[0x2_0000..0x2_000E], b"console=ttyS0\0");
        let initrd = linux::le32(zp, hdr::RAMDISK_IMAGE) as usize;
        assert_eq!(initrd, (64 << 20) - 0x3000);
        assert_eq!(linux::le32(zp, hdr::RAMDISK_SIZE), 0x3000);
        assert_eq!(m[initrd..initrd + 0x3000], [7; 0x3000]);
        assert_eq!(usize::from(zp[bp::E820_ENTRIES]), 4);
        let third = bp::E820_TABLE + 2 * 20;
        assert_eq!(zp[third..third + 8], 0x10_0000u64.to_le_bytes());
        assert_eq!(
            zp[third + 8..third + 16],
            ((64u64 << 20) - 0x10_0000).to_le_bytes()
        );
        assert_eq!(linux::le32(zp, third + 16), 1);
        // The screen_info (the first 64 bytes) says "no text console".
        assert!(zp[..0x40].iter().all(|&b| b == 0));
        assert_eq!(cpu.rip, 0x10_0000);
        assert_eq!(cpu.regs[6], 0x7000, "ESI");
        assert_eq!((cpu.regs[3], cpu.regs[5], cpu.regs[7]), (0, 0, 0));
        assert_eq!(cpu.segs[1].selector, 0x10);
        assert_eq!(cpu.segs[3].selector, 0x18);
    }

    #[test]
    fn a_kernel_or_initrd_larger_than_ram_is_refused() {
        let e820 = direct::e820_map(32 << 20, 0x1_0000);
        let k = LinuxImage::parse(fake_bzimage(0x2000), Some(vec![0; 16 << 20]), String::new())
            .unwrap();
        assert!(matches!(
            prepare(&k, 32 << 20, &e820),
            Err(LinuxError::InitrdTooLarge { .. })
        ));
        let k = LinuxImage::parse(fake_bzimage(40 << 20), None, String::new()).unwrap();
        assert!(matches!(
            prepare(&k, 32 << 20, &e820),
            Err(LinuxError::KernelTooLarge { .. })
        ));
    }
}
