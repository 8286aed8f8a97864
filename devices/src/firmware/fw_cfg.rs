//! QEMU's firmware configuration interface (fw_cfg), as SeaBIOS, OVMF and Linux use it on x86.
//!
//! The host publishes numbered *items* (selectors below 0x20, and arch-local ones from 0x8000)
//! and named *files* (selectors from 0x20 upward, listed in the directory item 0x19). The guest
//! picks one with the selector register and reads it byte by byte through the data register,
//! or through the DMA interface, which copies to guest memory in one go.
//!
//! Registration (port I/O; one device, told apart by `BusAddress.base`):
//! - [`FW_CFG_IO_BASE`] (0x510), length [`FW_CFG_CTL_LEN`] (2): offset 0 is the selector
//!   (16-bit writes, little-endian), offset 1 the data register (byte reads).
//! - [`FW_CFG_DMA_IO_BASE`] (0x514), length [`FW_CFG_DMA_LEN`] (8): the DMA address register,
//!   written big-endian (high half at 0x514, low half at 0x518, or one 64-bit write at 0x514);
//!   reads return the signature "QEMU CFG". Register it only when the device has guest memory.
//!
//! Widths, as QEMU's `fwcfg` and `fwcfg.dma` regions accept them (QEMU 2.4 and later):
//! - A byte read at 0x510 or 0x511 reads the data register (QEMU's combined port decodes data
//!   reads at either address) and advances the offset; past the end of the item it reads 0.
//! - A 16-bit write at 0x510 selects an item and rewinds the offset to 0.
//! - A byte write at 0x510 or 0x511 is ignored: writing items through the data register was
//!   removed in QEMU 2.4, and none of our items is writable. It is logged at debug level.
//! - A 16-bit read at 0x510 is not an access QEMU accepts; it reads 0 and has no effect.
//! - The DMA register takes 32-bit writes at offsets 0 and 4 and a 64-bit write at offset 0;
//!   other writes are ignored. Reads of any width return the matching signature bytes.
//!
//! A 32-bit write at 0x510 reaches the device as a 16-bit write (the bus splits an access at
//! the end of the 2-byte range), so it selects, where QEMU would drop it; no firmware does it.
//!
//! A new device publishes what QEMU's PC boards always do: the signature "QEMU", FW_CFG_ID
//! (traditional interface, plus DMA when it has guest memory), a zero UUID, NOGRAPHIC and
//! BOOT_MENU of 0, IRQ0_OVERRIDE of 1, and the file "etc/boot-fail-wait" = -1 (selector 0x20).
//! The board adds the rest through the setters ([`FwCfg::set_e820`], [`FwCfg::set_kernel`], ...).
//!
//! Items and files are host-provided configuration, not device state: a snapshot holds the
//! selector, the read offset and the DMA address latch, and the board rebuilds the same
//! configuration before it restores one.

use std::collections::BTreeMap;
use std::sync::Arc;

use log::{debug, warn};
use thiserror::Error;

use crate::bus::{AccessSizes, BusAddress, BusDevice};
use crate::guest_memory::GuestMemory;
use crate::snapshot::{Snapshot, SnapshotError, StateReader, StateWriter};

/// Port of the selector (and, one above it, the data register).
pub const FW_CFG_IO_BASE: u64 = 0x510;
/// Length of the selector/data range.
pub const FW_CFG_CTL_LEN: u64 = 2;
/// Port of the DMA address register.
pub const FW_CFG_DMA_IO_BASE: u64 = 0x514;
/// Length of the DMA range (one 64-bit address).
pub const FW_CFG_DMA_LEN: u64 = 8;

// Selector keys, from QEMU's include/standard-headers/linux/qemu_fw_cfg.h.
pub const FW_CFG_SIGNATURE: u16 = 0x00;
pub const FW_CFG_ID: u16 = 0x01;
pub const FW_CFG_UUID: u16 = 0x02;
pub const FW_CFG_RAM_SIZE: u16 = 0x03;
pub const FW_CFG_NOGRAPHIC: u16 = 0x04;
pub const FW_CFG_NB_CPUS: u16 = 0x05;
pub const FW_CFG_MACHINE_ID: u16 = 0x06;
pub const FW_CFG_KERNEL_ADDR: u16 = 0x07;
pub const FW_CFG_KERNEL_SIZE: u16 = 0x08;
pub const FW_CFG_KERNEL_CMDLINE: u16 = 0x09;
pub const FW_CFG_INITRD_ADDR: u16 = 0x0a;
pub const FW_CFG_INITRD_SIZE: u16 = 0x0b;
pub const FW_CFG_BOOT_DEVICE: u16 = 0x0c;
pub const FW_CFG_NUMA: u16 = 0x0d;
pub const FW_CFG_BOOT_MENU: u16 = 0x0e;
pub const FW_CFG_MAX_CPUS: u16 = 0x0f;
pub const FW_CFG_KERNEL_ENTRY: u16 = 0x10;
pub const FW_CFG_KERNEL_DATA: u16 = 0x11;
pub const FW_CFG_INITRD_DATA: u16 = 0x12;
pub const FW_CFG_CMDLINE_ADDR: u16 = 0x13;
pub const FW_CFG_CMDLINE_SIZE: u16 = 0x14;
pub const FW_CFG_CMDLINE_DATA: u16 = 0x15;
pub const FW_CFG_SETUP_ADDR: u16 = 0x16;
pub const FW_CFG_SETUP_SIZE: u16 = 0x17;
pub const FW_CFG_SETUP_DATA: u16 = 0x18;
pub const FW_CFG_FILE_DIR: u16 = 0x19;
pub const FW_CFG_FILE_FIRST: u16 = 0x20;
/// Selector flag QEMU reserved for writes; lookups ignore it.
pub const FW_CFG_WRITE_CHANNEL: u16 = 0x4000;
/// Selector flag for architecture-specific items.
pub const FW_CFG_ARCH_LOCAL: u16 = 0x8000;
/// The index bits of a selector.
pub const FW_CFG_ENTRY_MASK: u16 = !(FW_CFG_WRITE_CHANNEL | FW_CFG_ARCH_LOCAL);
/// What QEMU stores as "nothing selected".
pub const FW_CFG_INVALID: u16 = 0xffff;

// x86 arch-local items (QEMU hw/i386/fw_cfg.h, SeaBIOS src/fw/paravirt.c).
pub const FW_CFG_ACPI_TABLES: u16 = FW_CFG_ARCH_LOCAL;
pub const FW_CFG_SMBIOS_ENTRIES: u16 = FW_CFG_ARCH_LOCAL + 1;
pub const FW_CFG_IRQ0_OVERRIDE: u16 = FW_CFG_ARCH_LOCAL + 2;
pub const FW_CFG_E820_TABLE: u16 = FW_CFG_ARCH_LOCAL + 3;
pub const FW_CFG_HPET: u16 = FW_CFG_ARCH_LOCAL + 4;

/// FW_CFG_ID feature bits.
pub const FW_CFG_VERSION: u32 = 0x01;
pub const FW_CFG_VERSION_DMA: u32 = 0x02;

/// FWCfgDmaAccess control bits.
pub const FW_CFG_DMA_CTL_ERROR: u32 = 0x01;
pub const FW_CFG_DMA_CTL_READ: u32 = 0x02;
pub const FW_CFG_DMA_CTL_SKIP: u32 = 0x04;
pub const FW_CFG_DMA_CTL_SELECT: u32 = 0x08;
pub const FW_CFG_DMA_CTL_WRITE: u32 = 0x10;

/// "QEMU CFG" read big-endian from the DMA register.
pub const FW_CFG_DMA_SIGNATURE: u64 = 0x5145_4d55_2043_4647;

/// Longest file name, without the NUL that ends it in the directory's 56-byte field.
pub const FW_CFG_MAX_FILE_NAME: usize = 55;
/// How many files the device holds. QEMU allocates 0x20 slots by default; firmware only
/// walks the directory's count, so a larger bound costs nothing but directory bytes.
pub const FW_CFG_MAX_FILES: usize = 1024;

/// Size of FWCfgDmaAccess: be32 control, be32 length, be64 address.
const DMA_ACCESS_LEN: usize = 16;
/// Size of one directory entry: be32 size, be16 select, be16 reserved, char name[56].
const DIR_ENTRY_LEN: usize = 64;
/// DMA copies go to guest memory at most this much at a time.
const DMA_CHUNK: usize = 64 * 1024;
/// Source of the zeros a read past the end of an item stores.
static ZEROS: [u8; 4096] = [0; 4096];

/// QEMU's addresses for a protocol ≥ 2.02 bzImage loaded high (hw/i386/x86.c).
pub const LINUX_SETUP_ADDR: u32 = 0x1_0000;
pub const LINUX_CMDLINE_ADDR: u32 = 0x2_0000;
pub const LINUX_KERNEL_ADDR: u32 = 0x10_0000;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FwCfgError {
    #[error("fw_cfg key {0:#06x} is owned by the device or is not an item key")]
    ReservedKey(u16),
    #[error("fw_cfg file name {0:?} must be 1 to 55 bytes with no NUL")]
    InvalidFileName(String),
    #[error("fw_cfg file {0:?} already exists")]
    DuplicateFile(String),
    #[error("fw_cfg holds at most {0} files")]
    TooManyFiles(usize),
    #[error("fw_cfg {what} of {len} bytes is too large (items are below 4 GiB)")]
    TooLarge { what: String, len: usize },
    #[error("fw_cfg {0} contains a byte it cannot carry (NUL, or a newline in a boot entry)")]
    InvalidString(&'static str),
}

/// Types of e820 ranges (ACPI "address range types").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Kind {
    Ram = 1,
    Reserved = 2,
    Acpi = 3,
    Nvs = 4,
    Unusable = 5,
}

/// One entry of the "etc/e820" file. QEMU publishes RAM and reserved ranges; SeaBIOS ignores
/// other types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub address: u64,
    pub length: u64,
    pub kind: E820Kind,
}

impl E820Entry {
    /// Bytes of one entry in the file: le64 address, le64 length, le32 type, packed.
    pub const SIZE: usize = 20;

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.address.to_le_bytes());
        out.extend_from_slice(&self.length.to_le_bytes());
        out.extend_from_slice(&(self.kind as u32).to_le_bytes());
    }
}

/// Where the Linux boot option ROM (linuxboot_dma.bin) copies the pieces of a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelLoadAddrs {
    /// Real-mode setup (QEMU's `real_addr`).
    pub setup: u32,
    /// Protected-mode kernel (QEMU's `prot_addr`).
    pub kernel: u32,
    pub cmdline: u32,
    /// Ignored without an initrd. QEMU puts it at `(initrd_max - size) & !4095`, which needs
    /// the kernel header and the RAM size, so the loader computes it.
    pub initrd: u32,
}

impl KernelLoadAddrs {
    /// QEMU's addresses for a modern (boot protocol ≥ 2.02, loaded high) kernel.
    pub fn modern(initrd: u32) -> KernelLoadAddrs {
        KernelLoadAddrs {
            setup: LINUX_SETUP_ADDR,
            kernel: LINUX_KERNEL_ADDR,
            cmdline: LINUX_CMDLINE_ADDR,
            initrd,
        }
    }
}

#[derive(Debug)]
struct FileEntry {
    name: String,
    select: u16,
}

/// What a DMA descriptor asks for, in QEMU's priority order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DmaOp {
    Read,
    Write,
    Skip,
}

/// The fw_cfg device. Build it, publish items and files, then put it on the port bus.
pub struct FwCfg {
    ctl_base: u64,
    dma_base: u64,
    memory: Option<Arc<dyn GuestMemory>>,
    /// By selector with the write-channel bit cleared (the arch-local bit kept).
    items: BTreeMap<u16, Vec<u8>>,
    /// In selector order, which is the directory's order.
    files: Vec<FileEntry>,
    selector: u16,
    offset: u32,
    dma_addr: u64,
}

/// The table slot a selector names: QEMU drops the write-channel bit when it looks an item up.
fn slot(key: u16) -> u16 {
    key & (FW_CFG_ARCH_LOCAL | FW_CFG_ENTRY_MASK)
}

fn check_len(what: &str, len: usize) -> Result<u32, FwCfgError> {
    // QEMU asserts len < UINT32_MAX: the offset register is 32 bits wide.
    u32::try_from(len)
        .ok()
        .filter(|&l| l < u32::MAX)
        .ok_or_else(|| FwCfgError::TooLarge {
            what: what.to_string(),
            len,
        })
}

impl FwCfg {
    /// A device with the DMA interface, doing DMA through `memory`, at the standard ports.
    pub fn new(memory: Arc<dyn GuestMemory>) -> FwCfg {
        FwCfg::build(Some(memory))
    }

    /// A device with only the selector and data registers (FW_CFG_ID says so); do not
    /// register the DMA range.
    pub fn without_dma() -> FwCfg {
        FwCfg::build(None)
    }

    fn build(memory: Option<Arc<dyn GuestMemory>>) -> FwCfg {
        let features = FW_CFG_VERSION
            | if memory.is_some() {
                FW_CFG_VERSION_DMA
            } else {
                0
            };
        let mut dev = FwCfg {
            ctl_base: FW_CFG_IO_BASE,
            dma_base: FW_CFG_DMA_IO_BASE,
            memory,
            items: BTreeMap::new(),
            files: Vec::new(),
            selector: FW_CFG_SIGNATURE,
            offset: 0,
            dma_addr: 0,
        };
        // What QEMU's common realize and x86 arch code always publish.
        dev.items.insert(FW_CFG_SIGNATURE, b"QEMU".to_vec());
        dev.items.insert(FW_CFG_ID, features.to_le_bytes().to_vec());
        dev.items.insert(FW_CFG_UUID, vec![0; 16]);
        dev.items
            .insert(FW_CFG_NOGRAPHIC, 0u16.to_le_bytes().to_vec());
        dev.items
            .insert(FW_CFG_BOOT_MENU, 0u16.to_le_bytes().to_vec());
        dev.items
            .insert(FW_CFG_IRQ0_OVERRIDE, 1u32.to_le_bytes().to_vec());
        dev.items
            .insert(FW_CFG_FILE_DIR, 0u32.to_be_bytes().to_vec());
        // -1: SeaBIOS waits forever rather than rebooting when nothing boots.
        dev.set_file("etc/boot-fail-wait", u32::MAX.to_le_bytes().to_vec())
            .expect("a fresh device has room for its first file");
        dev
    }

    /// Use other ports than 0x510 and 0x514 (the device tells its ranges apart by base).
    pub fn with_bases(mut self, ctl_base: u64, dma_base: u64) -> FwCfg {
        self.ctl_base = ctl_base;
        self.dma_base = dma_base;
        self
    }

    /// Whether the DMA interface is present.
    pub fn dma_enabled(&self) -> bool {
        self.memory.is_some()
    }

    /// Machine reset: QEMU selects the signature item; the DMA address latch is cleared too, so
    /// a firmware that writes only the low half (SeaBIOS) is not misled by a stale high half.
    pub fn reset(&mut self) {
        self.select(FW_CFG_SIGNATURE);
        self.dma_addr = 0;
    }

    // ---- configuration -------------------------------------------------------------------

    /// Publish (or replace) a numbered item. Keys the device owns (signature, ID, directory),
    /// file selectors and keys with the write-channel bit are refused.
    pub fn add_item(&mut self, key: u16, bytes: Vec<u8>) -> Result<(), FwCfgError> {
        let index = key & FW_CFG_ENTRY_MASK;
        let owned = key == FW_CFG_SIGNATURE || key == FW_CFG_ID || key == FW_CFG_FILE_DIR;
        if owned || key & FW_CFG_WRITE_CHANNEL != 0 || index >= FW_CFG_FILE_FIRST {
            return Err(FwCfgError::ReservedKey(key));
        }
        check_len(&format!("item {key:#06x}"), bytes.len())?;
        self.items.insert(key, bytes);
        Ok(())
    }

    /// Publish a new file and return its selector. Selectors are handed out from 0x20 upward
    /// in the order files are added and never move. (QEMU sorts its directory by name and
    /// numbers the slots in that order; firmware looks files up by name, so the order carries
    /// no meaning.)
    pub fn add_file(&mut self, name: &str, bytes: Vec<u8>) -> Result<u16, FwCfgError> {
        if self.file_selector(name).is_some() {
            return Err(FwCfgError::DuplicateFile(name.to_string()));
        }
        self.set_file(name, bytes)
    }

    /// Publish a file, replacing the contents of an existing one of that name (QEMU's
    /// `fw_cfg_modify_file`); returns its selector.
    pub fn set_file(&mut self, name: &str, bytes: Vec<u8>) -> Result<u16, FwCfgError> {
        if name.is_empty() || name.len() > FW_CFG_MAX_FILE_NAME || name.contains('\0') {
            return Err(FwCfgError::InvalidFileName(name.to_string()));
        }
        check_len(&format!("file {name:?}"), bytes.len())?;
        let select = match self.file_selector(name) {
            Some(select) => select,
            None => {
                if self.files.len() >= FW_CFG_MAX_FILES {
                    return Err(FwCfgError::TooManyFiles(FW_CFG_MAX_FILES));
                }
                // Bounded by FW_CFG_MAX_FILES, far below the 0x3fff index limit.
                let select = FW_CFG_FILE_FIRST + self.files.len() as u16;
                self.files.push(FileEntry {
                    name: name.to_string(),
                    select,
                });
                select
            }
        };
        self.items.insert(select, bytes);
        self.rebuild_directory();
        Ok(select)
    }

    fn rebuild_directory(&mut self) {
        let mut dir = Vec::with_capacity(4 + self.files.len() * DIR_ENTRY_LEN);
        dir.extend_from_slice(&(self.files.len() as u32).to_be_bytes());
        for f in &self.files {
            let size = self.items.get(&f.select).map_or(0, Vec::len);
            dir.extend_from_slice(&(size as u32).to_be_bytes());
            dir.extend_from_slice(&f.select.to_be_bytes());
            dir.extend_from_slice(&0u16.to_be_bytes());
            let mut name = [0u8; 56];
            name[..f.name.len()].copy_from_slice(f.name.as_bytes());
            dir.extend_from_slice(&name);
        }
        self.items.insert(FW_CFG_FILE_DIR, dir);
    }

    /// FW_CFG_RAM_SIZE: le64 bytes of RAM.
    pub fn set_ram_size(&mut self, bytes: u64) {
        self.items
            .insert(FW_CFG_RAM_SIZE, bytes.to_le_bytes().to_vec());
    }

    /// FW_CFG_NB_CPUS and "etc/boot-cpus" (le16 CPUs running at boot; SeaBIOS waits for that
    /// many APs) and FW_CFG_MAX_CPUS (le16; on x86 QEMU passes the APIC ID limit, one more
    /// than the highest APIC ID, which equals the CPU count with one thread per APIC ID).
    pub fn set_cpu_count(&mut self, boot_cpus: u16, max_cpus: u16) -> Result<(), FwCfgError> {
        self.items
            .insert(FW_CFG_NB_CPUS, boot_cpus.to_le_bytes().to_vec());
        self.items
            .insert(FW_CFG_MAX_CPUS, max_cpus.to_le_bytes().to_vec());
        self.set_file("etc/boot-cpus", boot_cpus.to_le_bytes().to_vec())?;
        Ok(())
    }

    /// FW_CFG_NUMA: le64 node count, one le64 node per APIC ID below FW_CFG_MAX_CPUS, then one
    /// le64 memory size per node. Without it SeaBIOS reads zeros: no NUMA.
    pub fn set_numa(
        &mut self,
        node_of_apic_id: &[u64],
        node_mem: &[u64],
    ) -> Result<(), FwCfgError> {
        let words = 1 + node_of_apic_id.len() + node_mem.len();
        let len = words.checked_mul(8).ok_or_else(|| FwCfgError::TooLarge {
            what: "NUMA table".into(),
            len: usize::MAX,
        })?;
        check_len("NUMA table", len)?;
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&(node_mem.len() as u64).to_le_bytes());
        for v in node_of_apic_id.iter().chain(node_mem) {
            out.extend_from_slice(&v.to_le_bytes());
        }
        self.items.insert(FW_CFG_NUMA, out);
        Ok(())
    }

    /// FW_CFG_BOOT_MENU: le16, whether firmware offers its boot menu.
    pub fn set_boot_menu(&mut self, enabled: bool) {
        self.items
            .insert(FW_CFG_BOOT_MENU, u16::from(enabled).to_le_bytes().to_vec());
    }

    /// "etc/boot-menu-wait": le16 milliseconds the boot menu prompt waits.
    pub fn set_boot_menu_wait(&mut self, ms: u16) -> Result<u16, FwCfgError> {
        self.set_file("etc/boot-menu-wait", ms.to_le_bytes().to_vec())
    }

    /// "etc/boot-fail-wait": le32 seconds before rebooting when nothing boots; `None` is -1,
    /// never (the default).
    pub fn set_boot_fail_wait(&mut self, secs: Option<u16>) -> Result<u16, FwCfgError> {
        let v = secs.map_or(u32::MAX, u32::from);
        self.set_file("etc/boot-fail-wait", v.to_le_bytes().to_vec())
    }

    /// FW_CFG_UUID: the 16 bytes of the machine UUID (zero by default).
    pub fn set_uuid(&mut self, uuid: [u8; 16]) {
        self.items.insert(FW_CFG_UUID, uuid.to_vec());
    }

    /// FW_CFG_IRQ0_OVERRIDE: le32; 1 (the default) tells SeaBIOS's ACPI/MP tables that the PIT
    /// on ISA IRQ 0 is wired to GSI 2 of the IOAPIC.
    pub fn set_irq0_override(&mut self, enabled: bool) {
        self.items.insert(
            FW_CFG_IRQ0_OVERRIDE,
            u32::from(enabled).to_le_bytes().to_vec(),
        );
    }

    /// "etc/e820": the memory map, RAM and reservations, as QEMU's x86 boards publish it.
    pub fn set_e820(&mut self, entries: &[E820Entry]) -> Result<u16, FwCfgError> {
        let len =
            entries
                .len()
                .checked_mul(E820Entry::SIZE)
                .ok_or_else(|| FwCfgError::TooLarge {
                    what: "e820 table".into(),
                    len: usize::MAX,
                })?;
        check_len("e820 table", len)?;
        let mut out = Vec::with_capacity(len);
        for e in entries {
            e.encode(&mut out);
        }
        self.set_file("etc/e820", out)
    }

    /// "bootorder": OpenFirmware device paths, one per line, the last ended by NUL instead of a
    /// newline; an empty list is an empty file. (QEMU's `-boot strict=on` is a last entry
    /// "HALT".)
    pub fn set_boot_order<S: AsRef<str>>(&mut self, paths: &[S]) -> Result<u16, FwCfgError> {
        let mut out = Vec::new();
        for p in paths {
            let p = p.as_ref();
            if p.contains(['\n', '\0']) {
                return Err(FwCfgError::InvalidString("boot order entry"));
            }
            out.extend_from_slice(p.as_bytes());
            out.push(b'\n');
        }
        if let Some(last) = out.last_mut() {
            *last = 0;
        }
        self.set_file("bootorder", out)
    }

    /// Publish a Linux kernel for direct boot, split as QEMU does: `setup` is the real-mode
    /// part (the first `(setup_sects + 1) * 512` bytes, header already patched by the loader),
    /// `kernel` the protected-mode rest. Sets KERNEL_ADDR/SIZE/DATA, SETUP_ADDR/SIZE/DATA,
    /// CMDLINE_ADDR/SIZE/DATA (the command line with its NUL; SIZE counts it) and, with an
    /// initrd, INITRD_ADDR/SIZE/DATA. Sizes and addresses are le32.
    pub fn set_kernel(
        &mut self,
        setup: Vec<u8>,
        kernel: Vec<u8>,
        initrd: Option<Vec<u8>>,
        cmdline: &str,
        at: KernelLoadAddrs,
    ) -> Result<(), FwCfgError> {
        if cmdline.contains('\0') {
            return Err(FwCfgError::InvalidString("kernel command line"));
        }
        let setup_len = check_len("kernel setup", setup.len())?;
        let kernel_len = check_len("kernel", kernel.len())?;
        let mut cmd = cmdline.as_bytes().to_vec();
        cmd.push(0);
        let cmd_len = check_len("kernel command line", cmd.len())?;
        let initrd_len = match &initrd {
            Some(i) => Some(check_len("initrd", i.len())?),
            None => None,
        };
        let le = |v: u32| v.to_le_bytes().to_vec();
        self.items.insert(FW_CFG_KERNEL_ADDR, le(at.kernel));
        self.items.insert(FW_CFG_KERNEL_SIZE, le(kernel_len));
        self.items.insert(FW_CFG_KERNEL_DATA, kernel);
        self.items.insert(FW_CFG_SETUP_ADDR, le(at.setup));
        self.items.insert(FW_CFG_SETUP_SIZE, le(setup_len));
        self.items.insert(FW_CFG_SETUP_DATA, setup);
        self.items.insert(FW_CFG_CMDLINE_ADDR, le(at.cmdline));
        self.items.insert(FW_CFG_CMDLINE_SIZE, le(cmd_len));
        self.items.insert(FW_CFG_CMDLINE_DATA, cmd);
        match (initrd, initrd_len) {
            (Some(data), Some(len)) => {
                self.items.insert(FW_CFG_INITRD_ADDR, le(at.initrd));
                self.items.insert(FW_CFG_INITRD_SIZE, le(len));
                self.items.insert(FW_CFG_INITRD_DATA, data);
            }
            _ => {
                for key in [FW_CFG_INITRD_ADDR, FW_CFG_INITRD_SIZE, FW_CFG_INITRD_DATA] {
                    self.items.remove(&key);
                }
            }
        }
        Ok(())
    }

    // ---- inspection (tests, monitor) -------------------------------------------------------

    /// The bytes of a numbered item or file selector, if published.
    pub fn item(&self, key: u16) -> Option<&[u8]> {
        self.items.get(&slot(key)).map(Vec::as_slice)
    }

    /// The selector of a file.
    pub fn file_selector(&self, name: &str) -> Option<u16> {
        self.files.iter().find(|f| f.name == name).map(|f| f.select)
    }

    /// The contents of a file.
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        self.file_selector(name).and_then(|s| self.item(s))
    }

    /// The selector last written (by the register or a DMA select).
    pub fn selector(&self) -> u16 {
        self.selector
    }

    /// The read offset into the selected item.
    pub fn offset(&self) -> u32 {
        self.offset
    }

    // ---- guest interface -------------------------------------------------------------------

    fn select(&mut self, key: u16) {
        debug!("fw_cfg: select {key:#06x}");
        self.selector = key;
        self.offset = 0;
    }

    fn read_data_byte(&mut self) -> u8 {
        match self.items.get(&slot(self.selector)) {
            Some(data) => match data.get(self.offset as usize) {
                Some(&b) => {
                    // An item is shorter than u32::MAX, so the offset stays in range.
                    self.offset = self.offset.saturating_add(1);
                    b
                }
                None => 0,
            },
            None => 0,
        }
    }

    /// Run the FWCfgDmaAccess at the latched address, as QEMU's `fw_cfg_dma_transfer` does,
    /// and write the resulting control word (0, or the error bit) back over its control field.
    fn dma_transfer(&mut self) {
        let access = std::mem::take(&mut self.dma_addr);
        let Some(mem) = self.memory.clone() else {
            return;
        };
        let mut raw = [0u8; DMA_ACCESS_LEN];
        if let Err(e) = mem.read(access, &mut raw) {
            debug!("fw_cfg: DMA descriptor at {access:#x} unreadable: {e}");
            self.dma_write_control(&*mem, access, FW_CFG_DMA_CTL_ERROR);
            return;
        }
        let word = |i: usize| u32::from_be_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
        let control = word(0);
        let mut length = word(4);
        let mut address = u64::from(word(8)) << 32 | u64::from(word(12));
        debug!("fw_cfg: DMA control {control:#x} length {length:#x} address {address:#x}");

        if control & FW_CFG_DMA_CTL_SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        let op = if control & FW_CFG_DMA_CTL_READ != 0 {
            DmaOp::Read
        } else if control & FW_CFG_DMA_CTL_WRITE != 0 {
            DmaOp::Write
        } else if control & FW_CFG_DMA_CTL_SKIP != 0 {
            DmaOp::Skip
        } else {
            length = 0;
            DmaOp::Skip
        };

        let mut status = 0;
        while length > 0 && status & FW_CFG_DMA_CTL_ERROR == 0 {
            let item = self.items.get(&slot(self.selector));
            let offset = self.offset as usize;
            let available = item.map_or(0, |d| d.len().saturating_sub(offset));
            let len = if available == 0 {
                // Nothing (left) to transfer: a read stores zeros for the whole rest, a write
                // has nowhere to go, a skip does nothing. The offset stays at the end.
                match op {
                    DmaOp::Read => {
                        if let Err(e) = zero_guest(&*mem, address, u64::from(length)) {
                            debug!("fw_cfg: DMA zero fill failed: {e}");
                            status |= FW_CFG_DMA_CTL_ERROR;
                        }
                    }
                    DmaOp::Write => status |= FW_CFG_DMA_CTL_ERROR,
                    DmaOp::Skip => {}
                }
                length
            } else {
                // `available` fits u32 because items are shorter than u32::MAX.
                let len = length.min(u32::try_from(available).unwrap_or(u32::MAX));
                let end = offset + len as usize;
                match op {
                    DmaOp::Read => {
                        let data = item.map_or(&[][..], |d| &d[offset..end]);
                        if let Err(e) = copy_to_guest(&*mem, address, data) {
                            debug!("fw_cfg: DMA read to guest failed: {e}");
                            status |= FW_CFG_DMA_CTL_ERROR;
                        }
                    }
                    DmaOp::Write => {
                        // No item is writable (QEMU allows it only for a few it marks so).
                        debug!(
                            "fw_cfg: DMA write to read-only item {:#06x} refused",
                            self.selector
                        );
                        status |= FW_CFG_DMA_CTL_ERROR;
                    }
                    DmaOp::Skip => {}
                }
                // QEMU moves the offset over the whole span even when the copy failed.
                self.offset = self.offset.saturating_add(len);
                len
            };
            address = address.wrapping_add(u64::from(len));
            length -= len;
        }
        self.dma_write_control(&*mem, access, status);
    }

    fn dma_write_control(&self, mem: &dyn GuestMemory, access: u64, status: u32) {
        if let Err(e) = mem.write(access, &status.to_be_bytes()) {
            debug!("fw_cfg: DMA status write to {access:#x} failed: {e}");
        }
    }

    fn write_dma_register(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (0, 4) => {
                let high = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                self.dma_addr = u64::from(high) << 32;
            }
            (4, 4) => {
                let low = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                self.dma_addr |= u64::from(low);
                self.dma_transfer();
            }
            (0, 8) => {
                let mut b = [0u8; 8];
                b.copy_from_slice(data);
                self.dma_addr = u64::from_be_bytes(b);
                self.dma_transfer();
            }
            (offset, len) => {
                debug!("fw_cfg: {len}-byte write at DMA offset {offset} ignored");
            }
        }
    }
}

/// Copy `data` to guest memory at `addr`, a bounded chunk at a time.
fn copy_to_guest(
    mem: &dyn GuestMemory,
    addr: u64,
    data: &[u8],
) -> Result<(), crate::guest_memory::GuestMemoryError> {
    let mut at = addr;
    for chunk in data.chunks(DMA_CHUNK) {
        mem.write(at, chunk)?;
        at = at.wrapping_add(chunk.len() as u64);
    }
    Ok(())
}

/// Store `len` zero bytes at `addr` without allocating `len` bytes.
fn zero_guest(
    mem: &dyn GuestMemory,
    addr: u64,
    len: u64,
) -> Result<(), crate::guest_memory::GuestMemoryError> {
    let mut at = addr;
    let mut left = len;
    while left > 0 {
        let n = left.min(ZEROS.len() as u64);
        mem.write(at, &ZEROS[..n as usize])?;
        at = at.wrapping_add(n);
        left -= n;
    }
    Ok(())
}

impl BusDevice for FwCfg {
    fn read(&mut self, at: BusAddress, data: &mut [u8]) {
        if at.base == self.ctl_base {
            if data.len() == 1 {
                data[0] = self.read_data_byte();
            } else {
                debug!(
                    "fw_cfg: {}-byte read at {:#x} is not a valid access; reads 0",
                    data.len(),
                    at.absolute()
                );
                data.fill(0);
            }
        } else if at.base == self.dma_base {
            if self.memory.is_none() {
                return;
            }
            let sig = FW_CFG_DMA_SIGNATURE.to_be_bytes();
            for (i, b) in data.iter_mut().enumerate() {
                let pos = at.offset.checked_add(i as u64);
                *b = pos
                    .and_then(|p| usize::try_from(p).ok())
                    .and_then(|p| sig.get(p).copied())
                    .unwrap_or(0);
            }
        } else {
            warn!("fw_cfg: read at unknown base {:#x}", at.base);
        }
    }

    fn write(&mut self, at: BusAddress, data: &[u8]) {
        if at.base == self.ctl_base {
            match (at.offset, data.len()) {
                (0, 2) => self.select(u16::from_le_bytes([data[0], data[1]])),
                (offset, len) => debug!(
                    "fw_cfg: {len}-byte write at {:#x} ignored (offset {offset})",
                    at.absolute()
                ),
            }
        } else if at.base == self.dma_base {
            if self.memory.is_none() {
                return;
            }
            self.write_dma_register(at.offset, data);
        } else {
            warn!("fw_cfg: write at unknown base {:#x}", at.base);
        }
    }

    fn access_sizes(&self) -> AccessSizes {
        // The data register is read a byte at a time, the selector takes 16 bits and the DMA
        // register 32 or 64; QEMU accepts or rejects each width, so the device sees them all.
        AccessSizes::ANY
    }
}

impl Snapshot for FwCfg {
    fn snapshot_id(&self) -> &'static str {
        "fw-cfg"
    }

    fn snapshot_version(&self) -> u16 {
        1
    }

    fn save_state(&self, w: &mut StateWriter) {
        w.u16(self.selector);
        w.u32(self.offset);
        w.u64(self.dma_addr);
    }

    fn restore_state(
        &mut self,
        r: &mut StateReader<'_>,
        _version: u16,
    ) -> Result<(), SnapshotError> {
        // Any selector and offset are safe: reads past an item's end return 0.
        let selector = r.u16()?;
        let offset = r.u32()?;
        let dma_addr = r.u64()?;
        self.selector = selector;
        self.offset = offset;
        self.dma_addr = dma_addr;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{Bus, BusKind};
    use crate::guest_memory::MappedRam;
    use crate::snapshot::{check_round_trip, restore, save};
    use std::sync::Mutex;

    const CTL: u64 = FW_CFG_IO_BASE;
    const DATA: u64 = FW_CFG_IO_BASE + 1;
    const DMA_HIGH: u64 = FW_CFG_DMA_IO_BASE;
    const DMA_LOW: u64 = FW_CFG_DMA_IO_BASE + 4;
    const RAM_SIZE: usize = 0x10000;

    struct Rig {
        bus: Bus,
        dev: Arc<Mutex<FwCfg>>,
        ram: Arc<MappedRam>,
    }

    fn rig_with(configure: impl FnOnce(&mut FwCfg)) -> Rig {
        let ram = Arc::new(MappedRam::new(&[(0, RAM_SIZE)]).unwrap());
        let mut dev = FwCfg::new(ram.clone());
        configure(&mut dev);
        let dev = Arc::new(Mutex::new(dev));
        let bus = Bus::new(BusKind::Pio);
        bus.insert("fw_cfg", FW_CFG_IO_BASE, FW_CFG_CTL_LEN, dev.clone())
            .unwrap();
        bus.insert(
            "fw_cfg.dma",
            FW_CFG_DMA_IO_BASE,
            FW_CFG_DMA_LEN,
            dev.clone(),
        )
        .unwrap();
        Rig { bus, dev, ram }
    }

    fn rig() -> Rig {
        rig_with(|_| {})
    }

    impl Rig {
        fn select(&self, key: u16) {
            self.bus.write_value(CTL, 2, u64::from(key));
        }

        fn read_bytes(&self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.bus.read_value(DATA, 1) as u8).collect()
        }

        fn read_item(&self, key: u16, n: usize) -> Vec<u8> {
            self.select(key);
            self.read_bytes(n)
        }

        /// Lay out a FWCfgDmaAccess at `at` and start it the way SeaBIOS does: the guest's
        /// `outl(cpu_to_be32(addr), 0x518)`, after a high half of zero.
        fn dma(&self, at: u64, control: u32, length: u32, address: u64) -> u32 {
            let mut desc = Vec::new();
            desc.extend_from_slice(&control.to_be_bytes());
            desc.extend_from_slice(&length.to_be_bytes());
            desc.extend_from_slice(&address.to_be_bytes());
            self.ram.write(at, &desc).unwrap();
            self.bus
                .write_value(DMA_HIGH, 4, u64::from(((at >> 32) as u32).swap_bytes()));
            self.bus
                .write_value(DMA_LOW, 4, u64::from((at as u32).swap_bytes()));
            self.control(at)
        }

        fn control(&self, at: u64) -> u32 {
            let mut b = [0u8; 4];
            self.ram.read(at, &mut b).unwrap();
            u32::from_be_bytes(b)
        }

        fn mem(&self, at: u64, n: usize) -> Vec<u8> {
            let mut v = vec![0u8; n];
            self.ram.read(at, &mut v).unwrap();
            v
        }
    }

    fn parse_dir(dir: &[u8]) -> Vec<(u32, u16, String)> {
        let count = u32::from_be_bytes(dir[..4].try_into().unwrap()) as usize;
        assert_eq!(dir.len(), 4 + count * 64);
        (0..count)
            .map(|i| {
                let e = &dir[4 + i * 64..4 + (i + 1) * 64];
                let size = u32::from_be_bytes(e[0..4].try_into().unwrap());
                let select = u16::from_be_bytes(e[4..6].try_into().unwrap());
                assert_eq!(&e[6..8], &[0, 0], "reserved field");
                let name = &e[8..];
                let end = name.iter().position(|&b| b == 0).unwrap();
                assert!(name[end..].iter().all(|&b| b == 0), "NUL padded");
                (
                    size,
                    select,
                    String::from_utf8(name[..end].to_vec()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn signature_through_the_data_port() {
        let r = rig();
        assert_eq!(r.read_item(FW_CFG_SIGNATURE, 4), b"QEMU");
        // Past the end reads 0 and stays there.
        assert_eq!(r.read_bytes(3), [0, 0, 0]);
        assert_eq!(r.dev.lock().unwrap().offset(), 4);
        // QEMU's combined port decodes data reads at 0x510 too.
        r.select(FW_CFG_SIGNATURE);
        assert_eq!(r.bus.read_value(CTL, 1) as u8, b'Q');
        assert_eq!(r.bus.read_value(DATA, 1) as u8, b'E');
    }

    #[test]
    fn reset_selects_the_signature() {
        let r = rig();
        r.select(FW_CFG_ID);
        r.read_bytes(2);
        r.dev.lock().unwrap().reset();
        assert_eq!(r.read_bytes(4), b"QEMU");
    }

    #[test]
    fn signature_through_the_dma_register() {
        let r = rig();
        let sig: Vec<u8> = (0..8)
            .map(|i| r.bus.read_value(DMA_HIGH + i, 1) as u8)
            .collect();
        assert_eq!(sig, b"QEMU CFG");
        // Read as a big-endian 64-bit value, it is the constant QEMU documents.
        let hi = (r.bus.read_value(DMA_HIGH, 4) as u32).swap_bytes();
        let lo = (r.bus.read_value(DMA_LOW, 4) as u32).swap_bytes();
        assert_eq!(u64::from(hi) << 32 | u64::from(lo), FW_CFG_DMA_SIGNATURE);
        assert_eq!(FW_CFG_DMA_SIGNATURE.to_be_bytes(), *b"QEMU CFG");
        assert_eq!(
            r.bus.read_value(DMA_HIGH + 2, 2) as u16,
            u16::from_le_bytes(*b"MU")
        );
    }

    #[test]
    fn id_reports_traditional_and_dma_interfaces() {
        let r = rig();
        assert_eq!(r.read_item(FW_CFG_ID, 4), 3u32.to_le_bytes());
        let mut plain = FwCfg::without_dma();
        assert!(!plain.dma_enabled());
        assert_eq!(plain.item(FW_CFG_ID).unwrap(), 1u32.to_le_bytes());
        // Without DMA the range decodes nothing: the bus's ones stay.
        let mut b = [0xffu8; 4];
        plain.read(
            BusAddress {
                base: FW_CFG_DMA_IO_BASE,
                offset: 0,
            },
            &mut b,
        );
        assert_eq!(b, [0xff; 4]);
    }

    #[test]
    fn byte_writes_and_word_reads_do_nothing() {
        let r = rig();
        r.select(FW_CFG_SIGNATURE);
        r.read_bytes(1);
        r.bus.write_value(CTL, 1, 0x01);
        r.bus.write_value(DATA, 1, 0x55);
        let d = r.dev.lock().unwrap();
        assert_eq!((d.selector(), d.offset()), (FW_CFG_SIGNATURE, 1));
        drop(d);
        assert_eq!(r.bus.read_value(CTL, 2), 0);
        assert_eq!(r.read_bytes(1), b"E");
        assert_eq!(
            r.dev.lock().unwrap().item(FW_CFG_SIGNATURE).unwrap(),
            b"QEMU"
        );
    }

    #[test]
    fn directory_lists_the_files_added_and_each_reads_back() {
        let r = rig_with(|d| {
            assert_eq!(d.add_file("etc/one", vec![1, 2, 3]).unwrap(), 0x21);
            assert_eq!(
                d.add_file("opt/two", (0..200).map(|i| i as u8).collect()),
                Ok(0x22)
            );
            let long = "x".repeat(FW_CFG_MAX_FILE_NAME);
            assert_eq!(d.add_file(&long, vec![]), Ok(0x23));
        });
        r.select(FW_CFG_FILE_DIR);
        let count = u32::from_be_bytes(r.read_bytes(4).try_into().unwrap());
        assert_eq!(count, 4);
        let rest = r.read_bytes(count as usize * 64);
        let mut dir = count.to_be_bytes().to_vec();
        dir.extend_from_slice(&rest);
        let entries = parse_dir(&dir);
        let names: Vec<_> = entries.iter().map(|e| e.2.as_str()).collect();
        assert_eq!(
            names,
            ["etc/boot-fail-wait", "etc/one", "opt/two", &"x".repeat(55)]
        );
        assert_eq!(entries[0], (4, 0x20, "etc/boot-fail-wait".into()));
        assert_eq!(r.read_item(entries[0].1, 4), u32::MAX.to_le_bytes());
        assert_eq!((entries[1].0, entries[1].1), (3, 0x21));
        assert_eq!(r.read_item(0x21, 4), [1, 2, 3, 0]);
        assert_eq!((entries[2].0, entries[2].1), (200, 0x22));
        let two = r.read_item(0x22, 200);
        assert_eq!(two, (0..200).map(|i| i as u8).collect::<Vec<_>>());
        assert_eq!(r.read_bytes(1), [0]);
        assert_eq!(entries[3].0, 0);
    }

    #[test]
    fn file_rules_are_enforced() {
        let mut d = FwCfg::without_dma();
        assert_eq!(
            d.add_file(&"y".repeat(56), vec![]),
            Err(FwCfgError::InvalidFileName("y".repeat(56)))
        );
        assert!(matches!(
            d.add_file("", vec![]),
            Err(FwCfgError::InvalidFileName(_))
        ));
        assert!(matches!(
            d.add_file("a\0b", vec![]),
            Err(FwCfgError::InvalidFileName(_))
        ));
        d.add_file("a", vec![1]).unwrap();
        assert_eq!(
            d.add_file("a", vec![2]),
            Err(FwCfgError::DuplicateFile("a".into()))
        );
        // set_file replaces in place, keeping the selector, and the directory follows.
        assert_eq!(d.set_file("a", vec![2, 3]), Ok(0x21));
        let dir = parse_dir(d.item(FW_CFG_FILE_DIR).unwrap());
        assert_eq!(dir[1], (2, 0x21, "a".into()));
        for i in d.files.len()..FW_CFG_MAX_FILES {
            d.add_file(&format!("f{i}"), vec![]).unwrap();
        }
        assert_eq!(
            d.add_file("one-too-many", vec![]),
            Err(FwCfgError::TooManyFiles(FW_CFG_MAX_FILES))
        );
        for key in [
            FW_CFG_SIGNATURE,
            FW_CFG_ID,
            FW_CFG_FILE_DIR,
            0x20,
            0x4003,
            0x8020,
        ] {
            assert_eq!(d.add_item(key, vec![1]), Err(FwCfgError::ReservedKey(key)));
        }
        d.add_item(FW_CFG_HPET, vec![9]).unwrap();
        assert_eq!(d.item(FW_CFG_HPET), Some(&[9u8][..]));
    }

    #[test]
    fn arch_local_items_and_the_write_channel_bit() {
        let r = rig_with(|d| d.add_item(FW_CFG_E820_TABLE, vec![7, 8]).unwrap());
        assert_eq!(r.read_item(FW_CFG_E820_TABLE, 3), [7, 8, 0]);
        // The same index without the arch bit is another (absent) item.
        assert_eq!(
            r.read_item(FW_CFG_E820_TABLE & FW_CFG_ENTRY_MASK, 2),
            [0, 0]
        );
        // Lookups ignore the write-channel bit.
        assert_eq!(
            r.read_item(FW_CFG_SIGNATURE | FW_CFG_WRITE_CHANNEL, 2),
            b"QE"
        );
        assert_eq!(r.read_item(FW_CFG_INVALID, 2), [0, 0]);
        assert_eq!(r.read_item(FW_CFG_IRQ0_OVERRIDE, 4), 1u32.to_le_bytes());
    }

    #[test]
    fn dma_select_read_then_skip_and_read() {
        let payload: Vec<u8> = (0..100).map(|i| (i * 3) as u8).collect();
        let p = payload.clone();
        let r = rig_with(move |d| {
            d.add_file("etc/payload", p).unwrap();
        });
        let sel = r.dev.lock().unwrap().file_selector("etc/payload").unwrap();
        let ctl = u32::from(sel) << 16 | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_READ;
        assert_eq!(r.dma(0x1000, ctl, 40, 0x2000), 0);
        assert_eq!(r.mem(0x2000, 40), &payload[..40]);
        assert_eq!(r.dev.lock().unwrap().offset(), 40);
        // Skip 10, then read on from where the skip left off.
        assert_eq!(r.dma(0x1000, FW_CFG_DMA_CTL_SKIP, 10, 0x2000), 0);
        assert_eq!(r.dma(0x1010, FW_CFG_DMA_CTL_READ, 50, 0x3000), 0);
        assert_eq!(r.mem(0x3000, 50), &payload[50..]);
        // The latch was consumed: a low-only write finds a high half of zero.
        assert_eq!(r.dev.lock().unwrap().dma_addr, 0);
        // A select with neither read, write nor skip transfers nothing but still selects.
        assert_eq!(
            r.dma(
                0x1000,
                u32::from(FW_CFG_ID) << 16 | FW_CFG_DMA_CTL_SELECT,
                8,
                0x4000
            ),
            0
        );
        assert_eq!(r.mem(0x4000, 4), [0; 4]);
        assert_eq!(r.read_bytes(4), 3u32.to_le_bytes());
    }

    #[test]
    fn dma_signature_read_and_64_bit_register_write() {
        let r = rig();
        let ctl = u32::from(FW_CFG_SIGNATURE) << 16 | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_READ;
        let mut desc = Vec::new();
        desc.extend_from_slice(&ctl.to_be_bytes());
        desc.extend_from_slice(&4u32.to_be_bytes());
        desc.extend_from_slice(&0x500u64.to_be_bytes());
        r.ram.write(0x800, &desc).unwrap();
        // One 64-bit big-endian write (an MMIO-style access; the port bus passes it whole).
        r.bus.write(DMA_HIGH, &0x800u64.to_be_bytes());
        assert_eq!(r.control(0x800), 0);
        assert_eq!(r.mem(0x500, 4), b"QEMU");
    }

    #[test]
    fn dma_high_half_is_used() {
        let ram = Arc::new(MappedRam::new(&[(0, 0x1000), (0x1_0000_0000, 0x1000)]).unwrap());
        let mut d = FwCfg::new(ram.clone());
        let mut desc = Vec::new();
        let ctl = u32::from(FW_CFG_SIGNATURE) << 16 | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_READ;
        desc.extend_from_slice(&ctl.to_be_bytes());
        desc.extend_from_slice(&4u32.to_be_bytes());
        desc.extend_from_slice(&0x1_0000_0100u64.to_be_bytes());
        ram.write(0x1_0000_0010, &desc).unwrap();
        let dma = |offset| BusAddress {
            base: FW_CFG_DMA_IO_BASE,
            offset,
        };
        d.write(dma(0), &1u32.to_be_bytes());
        d.write(dma(4), &0x10u32.to_be_bytes());
        let mut out = [0u8; 4];
        ram.read(0x1_0000_0100, &mut out).unwrap();
        assert_eq!(&out, b"QEMU");
        ram.read(0x1_0000_0010, &mut out).unwrap();
        assert_eq!(out, [0; 4]);
        // Writes of other widths or offsets do not touch the latch.
        d.write(dma(0), &[1, 2]);
        d.write(dma(2), &[0; 4]);
        d.write(dma(4), &[0; 8]);
        assert_eq!(d.dma_addr, 0);
    }

    #[test]
    fn dma_read_past_the_end_stores_zeros() {
        let r = rig();
        r.ram.write(0x2000, &[0xaa; 16]).unwrap();
        let ctl = u32::from(FW_CFG_SIGNATURE) << 16 | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_READ;
        assert_eq!(r.dma(0x1000, ctl, 12, 0x2000), 0);
        assert_eq!(
            r.mem(0x2000, 16),
            [
                b'Q', b'E', b'M', b'U', 0, 0, 0, 0, 0, 0, 0, 0, 0xaa, 0xaa, 0xaa, 0xaa
            ]
        );
        assert_eq!(r.dev.lock().unwrap().offset(), 4);
        // An absent item reads as all zeros.
        r.ram.write(0x2000, &[0xaa; 8]).unwrap();
        assert_eq!(
            r.dma(
                0x1000,
                0x1234 << 16 | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_READ,
                8,
                0x2000
            ),
            0
        );
        assert_eq!(r.mem(0x2000, 8), [0; 8]);
    }

    #[test]
    fn dma_to_unmapped_memory_or_of_huge_length_sets_the_error_bit() {
        let r = rig();
        let ctl = u32::from(FW_CFG_SIGNATURE) << 16 | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_READ;
        assert_eq!(r.dma(0x1000, ctl, 4, 0x10_0000), FW_CFG_DMA_CTL_ERROR);
        assert_eq!(r.dma(0x1000, ctl, 4, u64::MAX - 1), FW_CFG_DMA_CTL_ERROR);
        // 4 GiB - 1 into the last 0x800 bytes of RAM: the item and zeros up to the end of RAM
        // land, then the error bit; nothing of that size is allocated.
        r.ram
            .write(RAM_SIZE as u64 - 0x800, &[0xaa; 0x800])
            .unwrap();
        assert_eq!(
            r.dma(0x1000, ctl, u32::MAX, RAM_SIZE as u64 - 0x800),
            FW_CFG_DMA_CTL_ERROR
        );
        let tail = r.mem(RAM_SIZE as u64 - 0x800, 0x800);
        assert_eq!(&tail[..4], b"QEMU");
        assert!(tail[4..].iter().all(|&b| b == 0));
        // Skips of any length never touch memory.
        assert_eq!(
            r.dma(
                0x1000,
                ctl & !FW_CFG_DMA_CTL_READ | FW_CFG_DMA_CTL_SKIP,
                u32::MAX,
                0
            ),
            0
        );
        // A descriptor outside RAM: nothing to report to, nothing breaks, the latch clears.
        r.bus
            .write_value(DMA_LOW, 4, u64::from(0x0080_0000u32.swap_bytes()));
        assert_eq!(r.dev.lock().unwrap().dma_addr, 0);
        // A descriptor straddling the end of RAM is unreadable: error written where it can be.
        r.bus
            .write_value(DMA_LOW, 4, u64::from((RAM_SIZE as u32 - 8).swap_bytes()));
        assert_eq!(r.control(RAM_SIZE as u64 - 8), FW_CFG_DMA_CTL_ERROR);
    }

    #[test]
    fn dma_writes_are_rejected() {
        let r = rig_with(|d| {
            d.add_file("etc/ro", vec![1, 2, 3, 4]).unwrap();
        });
        let sel = r.dev.lock().unwrap().file_selector("etc/ro").unwrap();
        r.ram.write(0x2000, &[9; 4]).unwrap();
        let ctl = u32::from(sel) << 16 | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_WRITE;
        assert_eq!(r.dma(0x1000, ctl, 4, 0x2000), FW_CFG_DMA_CTL_ERROR);
        assert_eq!(r.dev.lock().unwrap().file("etc/ro").unwrap(), [1, 2, 3, 4]);
        // Past the end, too; a zero-length write has nothing to refuse.
        assert_eq!(r.dma(0x1000, ctl, 8, 0x2000), FW_CFG_DMA_CTL_ERROR);
        assert_eq!(r.dma(0x1000, ctl, 0, 0x2000), 0);
        // READ wins over WRITE when both are set, as in QEMU.
        assert_eq!(r.dma(0x1000, ctl | FW_CFG_DMA_CTL_READ, 4, 0x3000), 0);
        assert_eq!(r.mem(0x3000, 4), [1, 2, 3, 4]);
    }

    #[test]
    fn e820_file_layout_is_byte_exact() {
        let mut d = FwCfg::without_dma();
        let sel = d
            .set_e820(&[
                E820Entry {
                    address: 0,
                    length: 0x9fc00,
                    kind: E820Kind::Ram,
                },
                E820Entry {
                    address: 0xfeff_c000,
                    length: 0x4000,
                    kind: E820Kind::Reserved,
                },
            ])
            .unwrap();
        let expected: Vec<u8> = [
            &[0u8; 8][..],
            &[0x00, 0xfc, 0x09, 0, 0, 0, 0, 0],
            &[1, 0, 0, 0],
            &[0x00, 0xc0, 0xff, 0xfe, 0, 0, 0, 0],
            &[0x00, 0x40, 0, 0, 0, 0, 0, 0],
            &[2, 0, 0, 0],
        ]
        .concat();
        assert_eq!(d.file("etc/e820").unwrap(), expected);
        assert_eq!(d.item(sel).unwrap().len(), 2 * E820Entry::SIZE);
        // Replacing the table keeps its selector.
        assert_eq!(d.set_e820(&[]), Ok(sel));
        assert_eq!(d.file("etc/e820").unwrap(), []);
    }

    #[test]
    fn machine_items_have_qemu_sizes() {
        let mut d = FwCfg::without_dma();
        d.set_ram_size(0x1_2000_0000);
        d.set_cpu_count(2, 4).unwrap();
        d.set_boot_menu(true);
        d.set_boot_menu_wait(2500).unwrap();
        d.set_boot_fail_wait(Some(5)).unwrap();
        d.set_numa(&[0, 0, 1, 1], &[0x1000, 0x2000]).unwrap();
        d.set_uuid([0x11; 16]);
        d.set_irq0_override(false);
        assert_eq!(
            d.item(FW_CFG_RAM_SIZE).unwrap(),
            0x1_2000_0000u64.to_le_bytes()
        );
        assert_eq!(d.item(FW_CFG_NB_CPUS).unwrap(), [2, 0]);
        assert_eq!(d.item(FW_CFG_MAX_CPUS).unwrap(), [4, 0]);
        assert_eq!(d.file("etc/boot-cpus").unwrap(), [2, 0]);
        assert_eq!(d.item(FW_CFG_BOOT_MENU).unwrap(), [1, 0]);
        assert_eq!(d.file("etc/boot-menu-wait").unwrap(), 2500u16.to_le_bytes());
        assert_eq!(d.file("etc/boot-fail-wait").unwrap(), 5u32.to_le_bytes());
        let numa: Vec<u8> = [2u64, 0, 0, 1, 1, 0x1000, 0x2000]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(d.item(FW_CFG_NUMA).unwrap(), numa);
        assert_eq!(d.item(FW_CFG_UUID).unwrap(), [0x11; 16]);
        assert_eq!(d.item(FW_CFG_IRQ0_OVERRIDE).unwrap(), [0; 4]);
        assert_eq!(d.item(FW_CFG_NOGRAPHIC).unwrap(), [0, 0]);
        // Calling a file setter again replaces, it does not collide.
        d.set_cpu_count(1, 1).unwrap();
        assert_eq!(d.file("etc/boot-cpus").unwrap(), [1, 0]);
    }

    #[test]
    fn boot_order_is_newline_separated_and_nul_terminated() {
        let mut d = FwCfg::without_dma();
        d.set_boot_order(&["/pci@i0cf8/ide@1,1/drive@0/disk@0", "HALT"])
            .unwrap();
        assert_eq!(
            d.file("bootorder").unwrap(),
            b"/pci@i0cf8/ide@1,1/drive@0/disk@0\nHALT\0"
        );
        d.set_boot_order::<String>(&[]).unwrap();
        assert_eq!(d.file("bootorder").unwrap(), b"");
        assert_eq!(
            d.set_boot_order(&["a\nb".to_string()]),
            Err(FwCfgError::InvalidString("boot order entry"))
        );
    }

    #[test]
    fn kernel_items_for_direct_boot() {
        let r = rig_with(|d| {
            d.set_kernel(
                vec![0x5a; 1024],
                vec![0xc3; 3000],
                Some(vec![7; 100]),
                "console=ttyS0",
                KernelLoadAddrs::modern(0x7ff_f000),
            )
            .unwrap();
        });
        let le32 = |v: u32| v.to_le_bytes().to_vec();
        assert_eq!(r.read_item(FW_CFG_KERNEL_ADDR, 4), le32(0x10_0000));
        assert_eq!(r.read_item(FW_CFG_KERNEL_SIZE, 4), le32(3000));
        assert_eq!(r.read_item(FW_CFG_SETUP_ADDR, 4), le32(0x1_0000));
        assert_eq!(r.read_item(FW_CFG_SETUP_SIZE, 4), le32(1024));
        assert_eq!(r.read_item(FW_CFG_CMDLINE_ADDR, 4), le32(0x2_0000));
        assert_eq!(r.read_item(FW_CFG_CMDLINE_SIZE, 4), le32(14));
        assert_eq!(r.read_item(FW_CFG_CMDLINE_DATA, 15), b"console=ttyS0\0\0");
        assert_eq!(r.read_item(FW_CFG_INITRD_ADDR, 4), le32(0x7ff_f000));
        assert_eq!(r.read_item(FW_CFG_INITRD_SIZE, 4), le32(100));
        // The option ROM pulls the big pieces by DMA.
        let ctl = u32::from(FW_CFG_KERNEL_DATA) << 16 | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_READ;
        assert_eq!(r.dma(0x100, ctl, 3000, 0x4000), 0);
        assert!(r.mem(0x4000, 3000).iter().all(|&b| b == 0xc3));
        let ctl = u32::from(FW_CFG_SETUP_DATA) << 16 | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_READ;
        assert_eq!(r.dma(0x100, ctl, 1024, 0x8000), 0);
        assert!(r.mem(0x8000, 1024).iter().all(|&b| b == 0x5a));
        let ctl = u32::from(FW_CFG_INITRD_DATA) << 16 | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_READ;
        assert_eq!(r.dma(0x100, ctl, 100, 0x9000), 0);
        assert_eq!(r.mem(0x9000, 100), [7; 100]);
        // Without an initrd the initrd items go away.
        let mut d = r.dev.lock().unwrap();
        d.set_kernel(vec![1], vec![2], None, "", KernelLoadAddrs::modern(0))
            .unwrap();
        assert_eq!(d.item(FW_CFG_INITRD_SIZE), None);
        assert_eq!(d.item(FW_CFG_CMDLINE_DATA).unwrap(), [0]);
        assert_eq!(
            d.set_kernel(vec![], vec![], None, "a\0b", KernelLoadAddrs::modern(0)),
            Err(FwCfgError::InvalidString("kernel command line"))
        );
    }

    #[test]
    fn snapshot_round_trip_mid_read_continues() {
        let payload: Vec<u8> = (0..64).collect();
        let p = payload.clone();
        let r = rig_with(move |d| {
            d.add_file("etc/data", p).unwrap();
        });
        let sel = r.dev.lock().unwrap().file_selector("etc/data").unwrap();
        assert_eq!(r.read_item(sel, 10), &payload[..10]);
        r.bus.write_value(DMA_HIGH, 4, 0x0100_0000); // latch high half = 1 (big-endian)

        let other = rig_with(|d| {
            d.add_file("etc/data", (0..64).collect()).unwrap();
        });
        {
            let a = r.dev.lock().unwrap();
            let mut b = other.dev.lock().unwrap();
            check_round_trip(&*a, &mut *b).unwrap();
            assert_eq!(b.dma_addr, 1 << 32);
        }
        // Reading continues at offset 10 on the restored device.
        let next: Vec<u8> = (0..5)
            .map(|_| other.bus.read_value(DATA, 1) as u8)
            .collect();
        assert_eq!(next, &payload[10..15]);
        // And a restored latch combines with the low half.
        let blob = save(&*r.dev.lock().unwrap());
        let mut fresh = FwCfg::without_dma();
        restore(&mut fresh, &blob).unwrap();
        assert_eq!((fresh.selector(), fresh.offset()), (sel, 10));
    }

    /// xorshift64*: deterministic values for the robustness sweep.
    fn rng(state: &mut u64) -> u64 {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    #[test]
    fn any_access_at_any_width_never_panics() {
        let r = rig_with(|d| {
            d.add_file("etc/x", vec![1; 300]).unwrap();
            d.set_e820(&[]).unwrap();
        });
        let mut s = 0x1234_5678_9abc_def0u64;
        let widths = [1usize, 2, 4, 8];
        for round in 0..20_000 {
            let port = 0x50e + rng(&mut s) % 0x10;
            let width = widths[(rng(&mut s) % 4) as usize];
            let value = match round % 4 {
                0 => rng(&mut s),
                1 => u64::MAX,
                2 => 0,
                _ => {
                    // A random descriptor in RAM, its address written where DMA_LOW expects.
                    let at = rng(&mut s) % RAM_SIZE as u64;
                    let mut desc = [0u8; 16];
                    desc.iter_mut().for_each(|b| *b = rng(&mut s) as u8);
                    if rng(&mut s) & 1 == 0 {
                        desc[8..16].copy_from_slice(&(rng(&mut s) % RAM_SIZE as u64).to_be_bytes());
                    }
                    let _ = r.ram.write(at, &desc);
                    u64::from((at as u32).swap_bytes())
                }
            };
            if rng(&mut s) & 1 == 0 {
                r.bus.write_value(port, width, value);
            } else {
                r.bus.read_value(port, width);
            }
        }
        // Still a working device afterwards.
        assert_eq!(r.read_item(FW_CFG_SIGNATURE, 4), b"QEMU");
    }
}
