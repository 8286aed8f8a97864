//! What the firmware-less boot routes share (direct Linux, `direct_linux.rs`, and multiboot,
//! `multiboot.rs`): the board's memory map as a kernel is told it, the images placed in RAM,
//! and a CPU put straight into flat 32-bit protected mode at the kernel's entry point.
//!
//! A prepared [`DirectBoot`] is applied at power-on and again after every machine reset: no
//! firmware runs to load the kernel a second time, and the guest has overwritten its images by
//! then (QEMU keeps such images as ROM blobs and copies them back at reset, the same idea).

use super::board::RamLayout;
use devices::firmware::fw_cfg::{E820Entry, E820Kind};
use translator::Cpu;
use translator::state::Segment;
use translator::state::{TableReg, cr0, flag, reg, sreg};

/// The GDT the kernel is entered with: null, null, then flat code at 0x10 and flat data at
/// 0x18 (Linux's __BOOT_CS/__BOOT_DS; multiboot accepts any flat selectors).
pub const GDT_ADDR: u64 = 0x6000;
pub const BOOT_CS: u16 = 0x10;
pub const BOOT_DS: u16 = 0x18;
const GDT: [u64; 4] = [0, 0, 0x00CF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF];

/// Low RAM ends at the VGA window; 0xA0000-0xFFFFF is the VGA window and the BIOS area.
pub const LOW_RAM_END: u64 = 0xA_0000;
pub const HIGH_RAM_START: u64 = 0x10_0000;
/// A stack for kernels that push before setting up their own (neither protocol promises one).
pub const KERNEL_STACK_TOP: u32 = GDT_ADDR as u32;

/// The memory map a kernel is given: RAM below the VGA window, the VGA window and BIOS area
/// reserved (on this board 0xC0000-0xFFFFF is RAM, but it is the option-ROM and BIOS shadow,
/// as on every PC), RAM from 1 MiB to the end of RAM, then the firmware ROM below 4 GiB. The
/// PCI hole between RAM and the ROM is left out, as real firmware does.
pub fn e820_map(ram: u64, rom_len: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            address: 0,
            length: LOW_RAM_END,
            kind: E820Kind::Ram,
        },
        E820Entry {
            address: LOW_RAM_END,
            length: HIGH_RAM_START - LOW_RAM_END,
            kind: E820Kind::Reserved,
        },
        E820Entry {
            address: HIGH_RAM_START,
            length: ram - HIGH_RAM_START,
            kind: E820Kind::Ram,
        },
    ];
    if rom_len > 0 {
        map.push(E820Entry {
            address: (1 << 32) - rom_len,
            length: rom_len,
            kind: E820Kind::Reserved,
        });
    }
    map
}

/// The e820 entry for RAM above 4 GiB, if the layout has any.
pub fn high_ram(layout: RamLayout) -> Option<E820Entry> {
    (layout.above_4g > 0).then_some(E820Entry {
        address: 1 << 32,
        length: layout.above_4g,
        kind: E820Kind::Ram,
    })
}

/// Whether `[start, start + len)` is RAM the kernel may be loaded into: below the VGA window
/// or between 1 MiB and the end of RAM.
pub fn in_ram(start: u64, len: u64, ram: u64) -> bool {
    let Some(end) = start.checked_add(len) else {
        return false;
    };
    end <= LOW_RAM_END || (start >= HIGH_RAM_START && end <= ram)
}

/// The images and the entry state of a kernel booted without firmware.
#[derive(Debug, Default)]
pub struct DirectBoot {
    /// Bytes to copy into RAM; every range was checked with [`in_ram`].
    pub blobs: Vec<(u64, Vec<u8>)>,
    /// Ranges to clear (BSS), also checked.
    pub zero: Vec<(u64, u64)>,
    pub entry: u32,
    pub eax: u32,
    pub ebx: u32,
    pub esi: u32,
    pub esp: u32,
}

impl DirectBoot {
    /// Place the images and enter the kernel: protected mode, paging off, interrupts off,
    /// flat 4 GiB segments from the GDT at [`GDT_ADDR`], the other general registers zero.
    pub fn enter(&self, cpu: &mut Cpu) {
        let ram = cpu.mem.as_mut_slice();
        let mut gdt = Vec::with_capacity(GDT.len() * 8);
        for d in GDT {
            gdt.extend_from_slice(&d.to_le_bytes());
        }
        let placed = std::iter::once((GDT_ADDR, gdt.as_slice()))
            .chain(self.blobs.iter().map(|(a, b)| (*a, b.as_slice())));
        for (addr, bytes) in placed {
            let range = usize::try_from(addr)
                .ok()
                .and_then(|a| ram.get_mut(a..a.checked_add(bytes.len())?));
            match range {
                Some(dst) => dst.copy_from_slice(bytes),
                None => log::error!("image at {addr:#x} does not fit in RAM"),
            }
        }
        for &(addr, len) in &self.zero {
            let range = usize::try_from(addr)
                .ok()
                .zip(usize::try_from(len).ok())
                .and_then(|(a, l)| ram.get_mut(a..a.checked_add(l)?));
            if let Some(dst) = range {
                dst.fill(0);
            }
        }

        cpu.regs = [0; 16];
        cpu.regs[reg::RAX] = u64::from(self.eax);
        cpu.regs[reg::RBX] = u64::from(self.ebx);
        cpu.regs[reg::RSI] = u64::from(self.esi);
        cpu.regs[reg::RSP] = u64::from(self.esp);
        for (i, s) in cpu.segs.iter_mut().enumerate() {
            *s = if i == sreg::CS {
                Segment::flat32(BOOT_CS, true)
            } else {
                Segment::flat32(BOOT_DS, false)
            };
        }
        cpu.gdtr = TableReg {
            base: GDT_ADDR,
            limit: (GDT.len() * 8 - 1) as u16,
        };
        // No IDT: an exception before the kernel loads its own shuts the machine down at
        // once instead of running through whatever sits at address 0.
        cpu.idtr = TableReg { base: 0, limit: 0 };
        cpu.cr0 = cr0::PE | cr0::ET;
        cpu.cr3 = 0;
        cpu.cr4 = 0;
        cpu.cpl = 0;
        cpu.set_rflags(flag::FIXED1);
        cpu.rip = u64::from(self.entry);
        cpu.halted = false;
        cpu.flush_translations();
        log::info!(
            "entering the kernel at {:#x} (eax {:#x} ebx {:#x} esi {:#x})",
            self.entry,
            self.eax,
            self.ebx,
            self.esi
        );
    }
}

/// A ROM for `-bios none`: the board always maps a firmware window, so it gets 64 KiB whose
/// reset vector halts (`hlt; jmp $-1`) — nothing runs there, as resets re-enter the kernel.
pub fn no_firmware_rom() -> Vec<u8> {
    let mut rom = vec![0u8; 0x1_0000];
    rom[0xFFF0..0xFFF3].copy_from_slice(&[0xF4, 0xEB, 0xFD]);
    rom
}

#[cfg(test)]
mod tests {
    use super::*;
    use translator::{NullBus, PhysMem, RunExit};

    #[test]
    fn the_map_has_the_holes_of_the_board() {
        let map = e820_map(64 << 20, 0x4_0000);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820Kind::Ram)
            .map(|e| e.length)
            .sum();
        assert_eq!(ram, (64 << 20) - 0x6_0000);
        assert!(!in_ram(0x9_F000, 0x2000, 64 << 20), "crosses into VGA");
        assert!(!in_ram(0xF_0000, 0x10, 64 << 20), "BIOS area");
        assert!(in_ram(0x10_0000, 63 << 20, 64 << 20));
        assert!(!in_ram(0x10_0000, (63 << 20) + 1, 64 << 20));
        assert!(!in_ram(u64::MAX - 1, 4, 64 << 20));
    }

    #[test]
    fn the_kernel_runs_in_flat_protected_mode() {
        // mov eax, [0x200000]; mov [0x200004], eax; mov ebx, cr0; hlt
        let code = [
            0xA1, 0x00, 0x00, 0x20, 0x00, 0xA3, 0x04, 0x00, 0x20, 0x00, 0x0F, 0x20, 0xC3, 0xF4,
        ];
        let boot = DirectBoot {
            blobs: vec![(0x10_0000, code.to_vec()), (0x20_0000, vec![1, 2, 3, 4])],
            zero: vec![],
            entry: 0x10_0000,
            eax: 0x2BAD_B002,
            ebx: 0x9000,
            esi: 0,
            esp: KERNEL_STACK_TOP,
        };
        let mut cpu = Cpu::new(PhysMem::new(4 << 20));
        boot.enter(&mut cpu);
        assert_eq!(cpu.code_bitness(), 32);
        assert_eq!(cpu.run(&mut NullBus, 100), RunExit::Halted);
        assert_eq!(cpu.mem.as_slice()[0x20_0004..0x20_0008], [1, 2, 3, 4]);
        assert_eq!(cpu.regs[reg::RBX] as u32 & 0x8000_0001, 1, "PE on, PG off");
        assert_eq!(cpu.rflags() & flag::IF, 0);
    }
}
