//! Multiboot v1 kernels (the Multiboot Specification 0.6.96) from `-kernel`, loaded without
//! firmware: ELF32 program headers, or the a.out-kludge addresses when the header's flag 16 is
//! set; `-initrd` names the modules (comma-separated, `,,` for a comma in a name, each file
//! name optionally followed by a space and the module's command line, as QEMU reads it); the
//! information structure gives mem_lower/mem_upper, the memory map, the command line
//! (`<kernel path> <-append>`, as QEMU and GRUB pass it), the modules and the boot loader name.
//!
//! Always direct, firmware or not: the kernel is entered in flat 32-bit protected mode with
//! EAX = 0x2BADB002 and EBX = the information structure. With the default firmware the ROM is
//! mapped but never runs, so a kernel that calls the BIOS finds none set up (QEMU goes through
//! SeaBIOS and its multiboot option ROM instead; nothing a multiboot kernel is promised
//! differs).

use devices::firmware::fw_cfg::{E820Entry, E820Kind};

use super::direct::{self, DirectBoot, KERNEL_STACK_TOP};

pub const HEADER_MAGIC: u32 = 0x1BAD_B002;
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
/// The header lies wholly within the image's first 8 KiB, 4-byte aligned.
const SEARCH_LEN: usize = 8192;
/// Where the information structure, memory map, module list and strings go.
pub const INFO_ADDR: u64 = 0x9000;
pub const LOADER_NAME: &str = "vireo";

/// Header flags. Bits 0-15 are requirements a loader must refuse if it does not know them.
mod want {
    pub const PAGE_ALIGN: u32 = 1 << 0;
    pub const MEMORY_INFO: u32 = 1 << 1;
    pub const VIDEO_MODE: u32 = 1 << 2;
    pub const AOUT_KLUDGE: u32 = 1 << 16;
    pub const KNOWN_REQUIRED: u32 = PAGE_ALIGN | MEMORY_INFO | VIDEO_MODE;
}

/// Information structure flags and offsets.
mod info {
    pub const MEM: u32 = 1 << 0;
    pub const CMDLINE: u32 = 1 << 2;
    pub const MODS: u32 = 1 << 3;
    pub const MMAP: u32 = 1 << 6;
    pub const LOADER_NAME: u32 = 1 << 9;
    pub const FLAGS: usize = 0;
    pub const MEM_LOWER: usize = 4;
    pub const MEM_UPPER: usize = 8;
    pub const CMDLINE_PTR: usize = 16;
    pub const MODS_COUNT: usize = 20;
    pub const MODS_ADDR: usize = 24;
    pub const MMAP_LENGTH: usize = 44;
    pub const MMAP_ADDR: usize = 48;
    pub const LOADER_NAME_PTR: usize = 64;
    /// Up to and including the framebuffer fields, rounded up.
    pub const SIZE: usize = 128;
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MultibootError {
    #[error(
        "multiboot header at offset {offset:#x} has a bad checksum (magic + flags + checksum = {sum:#x}, not 0)"
    )]
    BadChecksum { offset: usize, sum: u32 },
    #[error("multiboot header requires features {0:#x} this loader does not know")]
    UnsupportedFlags(u32),
    #[error("not an ELF32 i386 executable (and no a.out-kludge addresses, flag 16): {0}")]
    BadElf(String),
    #[error("multiboot a.out-kludge addresses: {0}")]
    BadAout(String),
    #[error("kernel segment {start:#x}-{end:#x} is outside RAM (1 MiB to {ram:#x})")]
    OutsideRam { start: u64, end: u64, ram: u64 },
    #[error("modules need {need} bytes from {start:#x}, RAM ends at {ram:#x}")]
    ModulesDoNotFit { need: u64, start: u64, ram: u64 },
    #[error("module {path}: {reason}")]
    Module { path: String, reason: String },
    #[error("the multiboot information ({0} bytes with its strings) does not fit below 0xA0000")]
    InfoTooLarge(usize),
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// The multiboot header's offset and flags: `Ok(None)` when there is no magic at all, an error
/// when the only candidates have bad checksums.
pub fn find_header(image: &[u8]) -> Result<Option<(usize, u32)>, MultibootError> {
    let mut bad = None;
    let end = image.len().min(SEARCH_LEN);
    for offset in (0..end.saturating_sub(11)).step_by(4) {
        if le32(image, offset) != Some(HEADER_MAGIC) {
            continue;
        }
        let (Some(flags), Some(sum)) = (le32(image, offset + 4), le32(image, offset + 8)) else {
            continue;
        };
        let total = HEADER_MAGIC.wrapping_add(flags).wrapping_add(sum);
        if total == 0 {
            return Ok(Some((offset, flags)));
        }
        bad.get_or_insert(MultibootError::BadChecksum { offset, sum: total });
    }
    bad.map_or(Ok(None), Err)
}

/// A piece of the kernel: `data` at `addr`, zero-filled up to `memsz`.
#[derive(Debug, PartialEq, Eq)]
struct Segment {
    addr: u64,
    data: Vec<u8>,
    memsz: u64,
}

/// A checked multiboot kernel.
#[derive(Debug)]
pub struct MultibootKernel {
    segments: Vec<Segment>,
    entry: u32,
}

/// One boot module: its `-initrd` entry (file name and arguments) and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub string: String,
    pub data: Vec<u8>,
}

/// Split `-initrd` into module entries: commas separate, `,,` is a literal comma.
pub fn split_module_list(list: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = list.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ',' if chars.peek() == Some(&',') => {
                chars.next();
                current.push(',');
            }
            ',' => out.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    out.push(current);
    out
}

/// Read the modules `-initrd` names; a missing or unreadable file is an error.
pub fn load_modules(list: &str) -> Result<Vec<Module>, MultibootError> {
    split_module_list(list)
        .into_iter()
        .map(|string| {
            let path = string.split(' ').next().unwrap_or_default().to_string();
            if path.is_empty() {
                return Err(MultibootError::Module {
                    path: string.clone(),
                    reason: "empty file name in the module list".into(),
                });
            }
            let data = std::fs::read(&path).map_err(|e| MultibootError::Module {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            Ok(Module { string, data })
        })
        .collect()
}

impl MultibootKernel {
    /// Parse a kernel whose multiboot header is at `offset` with `flags`.
    pub fn parse(image: &[u8], offset: usize, flags: u32) -> Result<Self, MultibootError> {
        let unknown = flags & 0xFFFF & !want::KNOWN_REQUIRED;
        if unknown != 0 {
            return Err(MultibootError::UnsupportedFlags(unknown));
        }
        if flags & want::VIDEO_MODE != 0 {
            log::warn!("multiboot: the kernel asks for a video mode; it gets no video information");
        }
        if flags & want::AOUT_KLUDGE != 0 {
            Self::parse_aout(image, offset)
        } else {
            Self::parse_elf(image)
        }
    }

    fn parse_aout(image: &[u8], offset: usize) -> Result<Self, MultibootError> {
        let bad = |s: &str| MultibootError::BadAout(s.to_string());
        let field =
            |i: usize| le32(image, offset + 12 + 4 * i).ok_or_else(|| bad("header truncated"));
        let (header_addr, load_addr, load_end, bss_end, entry) =
            (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
        let before = header_addr
            .checked_sub(load_addr)
            .ok_or_else(|| bad("header_addr is below load_addr"))?;
        let file_start = (offset as u64)
            .checked_sub(u64::from(before))
            .ok_or_else(|| bad("load_addr lies before the start of the file"))?
            as usize;
        let len = if load_end == 0 {
            image.len() - file_start
        } else {
            load_end
                .checked_sub(load_addr)
                .ok_or_else(|| bad("load_end_addr is below load_addr"))? as usize
        };
        let data = image
            .get(file_start..file_start + len)
            .ok_or_else(|| bad("load_end_addr lies past the end of the file"))?
            .to_vec();
        let memsz = if bss_end == 0 {
            len as u64
        } else {
            u64::from(bss_end)
                .checked_sub(u64::from(load_addr))
                .filter(|&m| m >= len as u64)
                .ok_or_else(|| bad("bss_end_addr is below load_end_addr"))?
        };
        Ok(MultibootKernel {
            segments: vec![Segment {
                addr: u64::from(load_addr),
                data,
                memsz,
            }],
            entry,
        })
    }

    fn parse_elf(image: &[u8]) -> Result<Self, MultibootError> {
        let bad = |s: &str| MultibootError::BadElf(s.to_string());
        if image.get(..4) != Some(b"\x7FELF") {
            return Err(bad("no ELF magic"));
        }
        if image.get(4..6) != Some(&[1, 1]) {
            return Err(bad("not 32-bit little-endian"));
        }
        let truncated = || bad("header truncated");
        if le16(image, 16).ok_or_else(truncated)? != 2
            || le16(image, 18).ok_or_else(truncated)? != 3
        {
            return Err(bad("not an i386 executable (e_type 2, e_machine 3)"));
        }
        let entry = le32(image, 24).ok_or_else(truncated)?;
        let phoff = le32(image, 28).ok_or_else(truncated)? as usize;
        let phentsize = usize::from(le16(image, 42).ok_or_else(truncated)?);
        let phnum = usize::from(le16(image, 44).ok_or_else(truncated)?);
        if phentsize < 32 {
            return Err(bad("program header entries under 32 bytes"));
        }
        let mut segments = Vec::new();
        let mut entry_phys = entry;
        for i in 0..phnum {
            let ph = phoff + i * phentsize;
            let f = |o: usize| le32(image, ph + o).ok_or_else(|| bad("program headers truncated"));
            let (ptype, off, vaddr, paddr, filesz, memsz) =
                (f(0)?, f(4)?, f(8)?, f(12)?, f(16)?, f(20)?);
            if ptype != 1 || memsz == 0 {
                continue;
            }
            if filesz > memsz {
                return Err(bad("a segment's file size exceeds its memory size"));
            }
            let data = image
                .get(off as usize..off as usize + filesz as usize)
                .ok_or_else(|| bad("a segment's data lies past the end of the file"))?
                .to_vec();
            // The entry point is a virtual address: loaders run it at the physical address
            // of the segment that holds it.
            if (u64::from(vaddr)..u64::from(vaddr) + u64::from(memsz)).contains(&u64::from(entry)) {
                entry_phys = entry - vaddr + paddr;
            }
            segments.push(Segment {
                addr: u64::from(paddr),
                data,
                memsz: u64::from(memsz),
            });
        }
        if segments.is_empty() {
            return Err(bad("no loadable segment"));
        }
        Ok(MultibootKernel {
            segments,
            entry: entry_phys,
        })
    }

    /// Lay out kernel, modules and information for a board with `ram` bytes and map `e820`.
    pub fn prepare(
        &self,
        cmdline: &str,
        modules: &[Module],
        ram: u64,
        e820: &[E820Entry],
    ) -> Result<DirectBoot, MultibootError> {
        let mut boot = DirectBoot {
            entry: self.entry,
            eax: BOOTLOADER_MAGIC,
            ebx: INFO_ADDR as u32,
            esp: KERNEL_STACK_TOP,
            ..DirectBoot::default()
        };
        let mut kernel_end = direct::HIGH_RAM_START;
        for s in &self.segments {
            let end = s.addr + s.memsz;
            if s.addr < direct::HIGH_RAM_START || end > ram {
                return Err(MultibootError::OutsideRam {
                    start: s.addr,
                    end,
                    ram,
                });
            }
            kernel_end = kernel_end.max(end);
            boot.blobs.push((s.addr, s.data.clone()));
            if s.memsz > s.data.len() as u64 {
                boot.zero
                    .push((s.addr + s.data.len() as u64, s.memsz - s.data.len() as u64));
            }
        }

        // Modules page-aligned after the kernel (always: flag 0 asks for that, and it costs
        // nothing when the kernel did not ask).
        let first = kernel_end.next_multiple_of(4096);
        let mut at = first;
        let mut mod_list = Vec::new();
        for m in modules {
            let end = at + m.data.len() as u64;
            if end > ram {
                return Err(MultibootError::ModulesDoNotFit {
                    need: end - first,
                    start: first,
                    ram,
                });
            }
            boot.blobs.push((at, m.data.clone()));
            mod_list.push((at, end));
            at = end.next_multiple_of(4096);
        }

        // The information area: structure, memory map, module list, then the strings.
        let mut area = vec![0u8; info::SIZE];
        let mmap_at = area.len();
        for e in e820 {
            area.extend_from_slice(&20u32.to_le_bytes());
            area.extend_from_slice(&e.address.to_le_bytes());
            area.extend_from_slice(&e.length.to_le_bytes());
            area.extend_from_slice(&(e.kind as u32).to_le_bytes());
        }
        let mmap_len = area.len() - mmap_at;
        let mods_at = area.len();
        area.resize(mods_at + 16 * modules.len(), 0);
        let add_string = |area: &mut Vec<u8>, s: &str| {
            let at = INFO_ADDR + area.len() as u64;
            area.extend_from_slice(s.as_bytes());
            area.push(0);
            at as u32
        };
        let cmdline_at = add_string(&mut area, cmdline);
        let name_at = add_string(&mut area, LOADER_NAME);
        for (i, (m, (start, end))) in modules.iter().zip(&mod_list).enumerate() {
            let s = add_string(&mut area, &m.string);
            let e = mods_at + 16 * i;
            put32(&mut area, e, *start as u32);
            put32(&mut area, e + 4, *end as u32);
            put32(&mut area, e + 8, s);
        }
        if INFO_ADDR + area.len() as u64 > direct::LOW_RAM_END {
            return Err(MultibootError::InfoTooLarge(area.len()));
        }
        let upper_end = e820
            .iter()
            .find(|e| e.kind == E820Kind::Ram && e.address == direct::HIGH_RAM_START)
            .map_or(direct::HIGH_RAM_START, |e| e.address + e.length);
        put32(
            &mut area,
            info::FLAGS,
            info::MEM | info::CMDLINE | info::MODS | info::MMAP | info::LOADER_NAME,
        );
        put32(
            &mut area,
            info::MEM_LOWER,
            (direct::LOW_RAM_END >> 10) as u32,
        );
        put32(
            &mut area,
            info::MEM_UPPER,
            ((upper_end - direct::HIGH_RAM_START) >> 10) as u32,
        );
        put32(&mut area, info::CMDLINE_PTR, cmdline_at);
        put32(&mut area, info::MODS_COUNT, modules.len() as u32);
        put32(
            &mut area,
            info::MODS_ADDR,
            (INFO_ADDR as usize + mods_at) as u32,
        );
        put32(&mut area, info::MMAP_LENGTH, mmap_len as u32);
        put32(
            &mut area,
            info::MMAP_ADDR,
            (INFO_ADDR as usize + mmap_at) as u32,
        );
        put32(&mut area, info::LOADER_NAME_PTR, name_at);
        boot.blobs.push((INFO_ADDR, area));
        Ok(boot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use translator::{Cpu, PhysMem};

    /// A flag-16 kernel: header at 0 with load_addr 0x100000, `body` after the 32-byte
    /// header and `bss` bytes of BSS.
    fn aout_kernel(body: &[u8], bss: u32) -> Vec<u8> {
        let flags = want::AOUT_KLUDGE | want::PAGE_ALIGN | want::MEMORY_INFO;
        let mut img = Vec::new();
        for v in [
            HEADER_MAGIC,
            flags,
            0u32.wrapping_sub(HEADER_MAGIC.wrapping_add(flags)),
            0x10_0000,
            0x10_0000,
            0x10_0020 + body.len() as u32,
            0x10_0020 + body.len() as u32 + bss,
            0x10_0020,
        ] {
            img.extend_from_slice(&v.to_le_bytes());
        }
        img.extend_from_slice(body);
        img
    }

    /// An ELF32 executable with one PT_LOAD of `code` at `paddr`, the multiboot header inside.
    fn elf_kernel(paddr: u32, memsz_extra: u32) -> Vec<u8> {
        let mut img = vec![0u8; 0x80];
        img[..6].copy_from_slice(b"\x7FELF\x01\x01");
        img[16..18].copy_from_slice(&2u16.to_le_bytes());
        img[18..20].copy_from_slice(&3u16.to_le_bytes());
        put32(&mut img, 24, paddr + 0x80); // entry (vaddr == paddr)
        put32(&mut img, 28, 0x34);
        img[42..44].copy_from_slice(&32u16.to_le_bytes());
        img[44..46].copy_from_slice(&1u16.to_le_bytes());
        let ph = 0x34;
        let filesz = 0x80 + 12 + 1;
        for (o, v) in [
            (0, 1),
            (4, 0),
            (8, paddr),
            (12, paddr),
            (16, filesz),
            (20, filesz + memsz_extra),
        ] {
            put32(&mut img, ph + o, v);
        }
        // Multiboot header at 0x80 (flags 0), then HLT.
        for v in [HEADER_MAGIC, 0, 0u32.wrapping_sub(HEADER_MAGIC)] {
            img.extend_from_slice(&v.to_le_bytes());
        }
        img.push(0xF4);
        img
    }

    fn read32(m: &[u8], at: u32) -> u32 {
        le32(m, at as usize).unwrap()
    }

    fn cstr(m: &[u8], at: u32) -> String {
        let s = &m[at as usize..];
        String::from_utf8_lossy(&s[..s.iter().position(|&b| b == 0).unwrap()]).into_owned()
    }

    #[test]
    fn an_aout_kludge_kernel_gets_its_info_modules_and_bss() {
        let img = aout_kernel(&[0xF4; 8], 0x100);
        let (offset, flags) = find_header(&img).unwrap().unwrap();
        let k = MultibootKernel::parse(&img, offset, flags).unwrap();
        let ram = 32 << 20;
        let e820 = direct::e820_map(ram, 0x4_0000);
        let mods = [
            Module {
                string: "a.bin arg=1".into(),
                data: vec![0x5A; 5000],
            },
            Module {
                string: "b.bin".into(),
                data: vec![0xA5; 3],
            },
        ];
        let boot = k.prepare("/k.elf hello world", &mods, ram, &e820).unwrap();
        let mut cpu = Cpu::new(PhysMem::new(ram as usize));
        cpu.mem.as_mut_slice()[0x10_0028..0x10_0128].fill(0xEE);
        boot.enter(&mut cpu);
        assert_eq!(cpu.rip, 0x10_0020);
        assert_eq!(cpu.regs[0], 0x2BAD_B002);
        assert_eq!(cpu.regs[3], INFO_ADDR);
        let m = cpu.mem.as_slice();
        assert_eq!(m[0x10_0020..0x10_0028], [0xF4; 8]);
        assert!(
            m[0x10_0028..0x10_0128].iter().all(|&b| b == 0),
            "BSS cleared"
        );
        let i = INFO_ADDR as u32;
        assert_eq!(read32(m, i), 0x24D);
        assert_eq!(read32(m, i + 4), 640);
        assert_eq!(read32(m, i + 8), 31 * 1024);
        assert_eq!(cstr(m, read32(m, i + 16)), "/k.elf hello world");
        assert_eq!(cstr(m, read32(m, i + 64)), "vireo");
        assert_eq!(read32(m, i + 20), 2);
        let mods_addr = read32(m, i + 24);
        let (s0, e0) = (read32(m, mods_addr), read32(m, mods_addr + 4));
        assert_eq!((s0, e0), (0x10_1000, 0x10_1000 + 5000));
        assert_eq!(cstr(m, read32(m, mods_addr + 8)), "a.bin arg=1");
        assert!(m[s0 as usize..e0 as usize].iter().all(|&b| b == 0x5A));
        assert_eq!(read32(m, mods_addr + 16), 0x10_3000, "page-aligned");
        assert_eq!(read32(m, i + 44), 4 * 24);
        let mmap = read32(m, i + 48);
        assert_eq!(read32(m, mmap), 20);
        assert_eq!(read32(m, mmap + 24 + 4), 0xA_0000);
        assert_eq!(read32(m, mmap + 24 + 20), 2, "reserved");
    }

    #[test]
    fn elf_segments_load_at_their_physical_address() {
        let img = elf_kernel(0x20_0000, 0x40);
        let (offset, flags) = find_header(&img).unwrap().unwrap();
        assert_eq!(offset, 0x80);
        let k = MultibootKernel::parse(&img, offset, flags).unwrap();
        assert_eq!(k.entry, 0x20_0080);
        let boot = k
            .prepare("", &[], 16 << 20, &direct::e820_map(16 << 20, 0))
            .unwrap();
        assert_eq!(boot.zero, vec![(0x20_0000 + 0x8D, 0x40)]);
    }

    #[test]
    fn bad_kernels_are_refused() {
        let mut img = aout_kernel(&[0xF4], 0);
        img[8] ^= 1;
        assert!(matches!(
            find_header(&img),
            Err(MultibootError::BadChecksum { offset: 0, .. })
        ));
        assert_eq!(find_header(&[0u8; 64]), Ok(None));

        let img = elf_kernel(0x20_0000, 0);
        let k = MultibootKernel::parse(&img, 0x80, 0).unwrap();
        assert!(matches!(
            k.prepare("", &[], 2 << 20, &direct::e820_map(2 << 20, 0)),
            Err(MultibootError::OutsideRam {
                start: 0x20_0000,
                ..
            })
        ));
        let low = elf_kernel(0x8000, 0);
        let k = MultibootKernel::parse(&low, 0x80, 0).unwrap();
        assert!(matches!(
            k.prepare("", &[], 16 << 20, &direct::e820_map(16 << 20, 0)),
            Err(MultibootError::OutsideRam { .. })
        ));
        let mut trunc = elf_kernel(0x20_0000, 0);
        trunc.truncate(0x60);
        assert!(matches!(
            MultibootKernel::parse(&trunc, 0, 0),
            Err(MultibootError::BadElf(_))
        ));
        assert_eq!(
            MultibootKernel::parse(&img, 0x80, 1 << 3).err(),
            Some(MultibootError::UnsupportedFlags(1 << 3))
        );
    }

    #[test]
    fn module_lists_split_like_qemu_and_missing_files_fail() {
        assert_eq!(
            split_module_list("a.bin x=1,b,,c.bin,d"),
            ["a.bin x=1", "b,c.bin", "d"]
        );
        let err = load_modules("/nonexistent/vireo-module arg").unwrap_err();
        assert!(
            matches!(&err, MultibootError::Module { path, .. } if path == "/nonexistent/vireo-module"),
            "{err}"
        );
        assert!(load_modules("a,").is_err());
    }
}
