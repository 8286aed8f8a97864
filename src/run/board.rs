//! The `pc` board as the CPU sees it: guest RAM and ROM in [`PhysMem`], the firmware at the
//! top of 4 GiB and its low alias, and the [`CpuBus`] that routes ports to the port bus,
//! everything else to the MMIO bus, and INTR to the 8259 pair.
//!
//! Memory map (below 4 GiB only for now):
//!
//! | range | what |
//! |---|---|
//! | 0 – 0x9FFFF | RAM |
//! | 0xA0000 – 0xBFFFF | VGA window (MMIO bus) |
//! | 0xC0000 – 0xDFFFF | RAM: option ROM shadow (SeaBIOS copies the VGA BIOS there) |
//! | 0xE0000 – 0xFFFFF | RAM loaded with the firmware's last 128 KiB (the low alias, shadowed) |
//! | 0x100000 – RAM end | RAM |
//! | RAM end – 4 GiB - BIOS size | PCI memory (MMIO bus: BARs SeaBIOS assigns) |
//! | 4 GiB - BIOS size – 4 GiB | firmware ROM (MMIO bus) |
//!
//! DMA: devices reach RAM only between CPU slices (see `memory.rs`), so port writes that start
//! a DMA transfer — an IDE bus-master START, an ATA DMA command, the fw_cfg DMA address — are
//! queued and performed right after the slice. Until then the device looks busy (ATA BSY, bus
//! master ACTIVE), which is what a real transfer in flight looks like.

use std::sync::{Arc, Mutex};

use devices::bus::Bus;
use devices::firmware::fw_cfg::{FW_CFG_DMA_IO_BASE, FW_CFG_DMA_LEN};
use devices::storage::ide::{
    PRIMARY_CMD_BASE, PRIMARY_CTL_BASE, SECONDARY_CMD_BASE, SECONDARY_CTL_BASE,
};
use machines::pc::{BIOS_LOW_ALIAS_BASE, PcDevices, PcPlatform};
use translator::{Cpu, CpuBus, PhysMem};

/// ATA opcodes that move data by DMA (READ/WRITE DMA, with and without retry, and EXT).
const ATA_DMA_COMMANDS: [u8; 6] = [0xC8, 0xC9, 0xCA, 0xCB, 0x25, 0x35];
const ATA_BSY: u32 = 0x80;
const BM_ACTIVE: u32 = 0x01;
const BM_INTERRUPT: u32 = 0x04;

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

const FOUR_GIB: u64 = 1 << 32;

/// Where `-m` RAM goes: below the PCI hole, and the rest from 4 GiB up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamLayout {
    pub below_4g: u64,
    pub above_4g: u64,
}

impl RamLayout {
    /// QEMU's split for the i440FX `pc` machine, so firmware and guests see the same map: up to
    /// 3.5 GiB all RAM sits below the hole; from there on the low part stops at 3 GiB (a
    /// gigabyte boundary, which hosts map with large pages) and the rest starts at 4 GiB.
    pub fn for_size(ram: u64) -> RamLayout {
        const LOWMEM_MAX: u64 = 0xE000_0000;
        const LOWMEM_SPLIT: u64 = 0xC000_0000;
        if ram >= LOWMEM_MAX {
            RamLayout {
                below_4g: LOWMEM_SPLIT,
                above_4g: ram - LOWMEM_SPLIT,
            }
        } else {
            RamLayout {
                below_4g: ram,
                above_4g: 0,
            }
        }
    }
}

/// The board: devices, and what the CPU's port and MMIO accesses need.
pub struct Board {
    pub pc: PcDevices,
    pub platform: PcPlatform,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    /// Port writes waiting for RAM to be lent to the devices, in guest order.
    deferred: Vec<(u16, u8, u32)>,
    /// Channels (0, 1) with a deferred write: their status reads BSY until it is done.
    deferred_channels: [bool; 2],
    /// The IDE bus-master ports (BAR4), refreshed every slice.
    bm_ports: Option<(u64, u64)>,
    /// The CPU shut down (triple fault) in the last slice.
    pub triple_fault: bool,
    /// Called to advance device time to the host's before an access (timers read mid-slice).
    pub sync_time: Box<dyn FnMut(&PcDevices)>,
}

impl Board {
    pub fn new(
        pc: PcDevices,
        platform: PcPlatform,
        sync_time: Box<dyn FnMut(&PcDevices)>,
    ) -> Board {
        let pio = pc.pio.clone();
        let mmio = pc.mmio.clone();
        Board {
            pc,
            platform,
            pio,
            mmio,
            deferred: Vec::new(),
            deferred_channels: [false; 2],
            bm_ports: None,
            triple_fault: false,
            sync_time,
        }
    }

    /// Guest RAM laid out as `ram` says, with the VGA window, the PCI hole and the firmware's
    /// low alias in place; `None` when the host cannot provide that much memory.
    pub fn build_memory(&self, ram: RamLayout) -> Option<PhysMem> {
        let size = if ram.above_4g > 0 {
            FOUR_GIB + ram.above_4g
        } else {
            ram.below_4g
        };
        let mut mem = PhysMem::try_new(usize::try_from(size).ok()?)?;
        self.load_low_alias(&mut mem);
        mem.set_mmio(0xA_0000, 0xC_0000);
        if ram.above_4g > 0 {
            // The PCI hole and the firmware ROM at the top: the bus's, not RAM.
            mem.set_mmio(ram.below_4g, FOUR_GIB);
        }
        Some(mem)
    }

    /// (Re)load the firmware's low alias: at power-on and at every reset, as the shadow RAM
    /// SeaBIOS wrote there is not what the ROM holds.
    pub fn load_low_alias(&self, mem: &mut PhysMem) {
        let alias = self.platform.bios_low_alias();
        let start = BIOS_LOW_ALIAS_BASE as usize + 0x2_0000 - alias.len();
        if let Some(dst) = mem.as_mut_slice().get_mut(start..start + alias.len()) {
            dst.copy_from_slice(&alias);
        }
    }

    /// Between slices: refresh what the deferral needs to know about the guest's mappings.
    pub fn refresh_mappings(&mut self) {
        self.bm_ports = PcPlatform::ide_bus_master_ports(&self.pc);
    }

    pub fn has_deferred(&self) -> bool {
        !self.deferred.is_empty()
    }

    /// Perform the deferred port writes. RAM must be lent to the devices ([`DmaRam::lend`]).
    pub fn run_deferred(&mut self) {
        for (port, size, value) in std::mem::take(&mut self.deferred) {
            self.pio
                .write_value(u64::from(port), usize::from(size), u64::from(value));
        }
        self.deferred_channels = [false; 2];
    }

    /// Machine reset: devices, A20 (open), the low alias and the CPU.
    pub fn reset(&mut self, cpu: &mut Cpu) {
        self.deferred.clear();
        self.deferred_channels = [false; 2];
        self.pc.reset();
        lock(&self.platform.port92).reset();
        use devices::system::SystemControl;
        self.pc.signals.set_a20(true);
        self.load_low_alias(&mut cpu.mem);
        cpu.set_a20(true);
        cpu.reset();
        cpu.flush_translations();
    }

    /// Which IDE channel a port of the command or control block belongs to.
    fn ide_channel(port: u64) -> Option<usize> {
        if (PRIMARY_CMD_BASE..PRIMARY_CMD_BASE + 8).contains(&port) || port == PRIMARY_CTL_BASE {
            Some(0)
        } else if (SECONDARY_CMD_BASE..SECONDARY_CMD_BASE + 8).contains(&port)
            || port == SECONDARY_CTL_BASE
        {
            Some(1)
        } else {
            None
        }
    }

    /// The bus-master channel and register offset (0-7) for `port`, if it is in BAR4.
    fn bm_register(&self, port: u64) -> Option<(usize, u64)> {
        let (base, size) = self.bm_ports?;
        let off = port.checked_sub(base)?;
        (off < size).then_some(((off / 8) as usize, off % 8))
    }

    fn is_fw_cfg_dma(port: u64) -> bool {
        (FW_CFG_DMA_IO_BASE..FW_CFG_DMA_IO_BASE + FW_CFG_DMA_LEN).contains(&port)
    }

    /// Whether this write can start a DMA transfer (or must stay behind one already queued).
    fn must_defer(&self, port: u64, value: u32) -> bool {
        if Self::is_fw_cfg_dma(port) {
            return true;
        }
        if let Some(ch) = Self::ide_channel(port) {
            if self.deferred_channels[ch] {
                return true;
            }
            let cmd_reg = if ch == 0 {
                PRIMARY_CMD_BASE + 7
            } else {
                SECONDARY_CMD_BASE + 7
            };
            return port == cmd_reg && ATA_DMA_COMMANDS.contains(&(value as u8));
        }
        if let Some((ch, off)) = self.bm_register(port) {
            if self.deferred_channels[ch] {
                return true;
            }
            // START is bit 0 of the command register at offset 0 (a wider write from offset 0
            // carries it in its low byte too).
            return off == 0 && value & 1 != 0;
        }
        false
    }

    fn defer_channel(&self, port: u64) -> Option<usize> {
        Self::ide_channel(port).or_else(|| self.bm_register(port).map(|(ch, _)| ch))
    }
}

impl CpuBus for Board {
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        data.fill(0xFF);
        self.mmio.read(addr, data);
    }

    fn mmio_write(&mut self, addr: u64, data: &[u8]) {
        self.mmio.write(addr, data);
    }

    fn io_read(&mut self, port: u16, size: u8) -> u32 {
        (self.sync_time)(&self.pc);
        let p = u64::from(port);
        let value = self.pio.read_value(p, usize::from(size)) as u32;
        if self.deferred.is_empty() {
            return value;
        }
        if let Some(ch) = Self::ide_channel(p)
            && self.deferred_channels[ch]
        {
            let status = if ch == 0 {
                [PRIMARY_CMD_BASE + 7, PRIMARY_CTL_BASE]
            } else {
                [SECONDARY_CMD_BASE + 7, SECONDARY_CTL_BASE]
            };
            if status.contains(&p) {
                return ATA_BSY;
            }
        }
        if let Some((ch, 2)) = self.bm_register(p)
            && self.deferred_channels[ch]
        {
            return (value | BM_ACTIVE) & !BM_INTERRUPT;
        }
        value
    }

    fn io_write(&mut self, port: u16, size: u8, value: u32) {
        (self.sync_time)(&self.pc);
        let p = u64::from(port);
        if self.must_defer(p, value) {
            if let Some(ch) = self.defer_channel(p) {
                self.deferred_channels[ch] = true;
            }
            // Bounded: a guest that floods the queue within one slice loses the excess.
            if self.deferred.len() < 4096 {
                self.deferred.push((port, size, value));
            } else {
                log::warn!("deferred port write queue full; dropping write to {port:#x}");
            }
            return;
        }
        self.pio.write_value(p, usize::from(size), u64::from(value));
    }

    fn intr_pending(&mut self) -> bool {
        lock(&self.pc.pic).interrupt_pending()
    }

    fn intr_ack(&mut self) -> u8 {
        lock(&self.pc.pic).acknowledge()
    }

    // Devices move the PIC's inputs only inside bus calls (ports, MMIO, `sync_time`) and
    // between slices, and this board has no NMI source: INTR is the only event.
    fn events_pending(&mut self) -> bool {
        lock(&self.pc.pic).interrupt_pending()
    }

    fn shutdown(&mut self) {
        self.triple_fault = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::memory::DmaRam;
    use devices::chardev::NullSink;
    use devices::guest_memory::GuestMemory;
    use machines::pc::{PcConfig, PcPlatformConfig};

    #[test]
    fn ram_splits_around_the_pci_hole_as_qemu_pc_does() {
        let gib = 1u64 << 30;
        assert_eq!(
            RamLayout::for_size((3584 << 20) - 4096),
            RamLayout {
                below_4g: (3584 << 20) - 4096,
                above_4g: 0
            }
        );
        assert_eq!(
            RamLayout::for_size(3584 << 20),
            RamLayout {
                below_4g: 3 * gib,
                above_4g: 512 << 20
            }
        );
        assert_eq!(
            RamLayout::for_size(8 * gib),
            RamLayout {
                below_4g: 3 * gib,
                above_4g: 5 * gib
            }
        );
    }

    #[test]
    fn high_ram_is_ram_and_the_hole_is_the_bus() {
        let b = board(Arc::new(DmaRam::new()));
        let mem = b.build_memory(RamLayout::for_size(5 << 30)).unwrap();
        assert!(mem.is_backed((3 << 30) - 1));
        assert!(!mem.is_backed(3 << 30));
        assert!(!mem.is_backed((1 << 32) - 1));
        assert!(mem.is_backed(1 << 32));
        assert!(mem.is_backed((1 << 32) + (2 << 30) - 1));
        assert!(!mem.is_backed((1 << 32) + (2 << 30)));
    }

    fn board(dma: Arc<DmaRam>) -> Board {
        let pc = PcDevices::new(
            PcConfig {
                ram_below_4g: 16 << 20,
                ram_above_4g: 0,
                cpus: 1,
                rtc_base_unix_secs: 0,
                serial: Box::new(NullSink),
                debugcon: Box::new(std::io::sink()),
            },
            dma.clone(),
        )
        .unwrap();
        let mut bios = vec![0u8; 0x4_0000];
        bios[0x3_FFF0] = 0xF4; // HLT at the reset vector
        bios[0x2_0000] = 0xAB; // first byte of the low alias
        let platform = PcPlatform::new(
            &pc,
            PcPlatformConfig {
                bios,
                ide: [[None, None], [None, None]],
                vga: None,
            },
            dma,
        )
        .unwrap();
        Board::new(pc, platform, Box::new(|_| {}))
    }

    #[test]
    fn rom_at_the_top_of_4g_and_its_low_alias_in_ram() {
        let dma = Arc::new(DmaRam::new());
        let mut b = board(dma);
        let mem = b.build_memory(RamLayout::for_size(16 << 20)).unwrap();
        assert_eq!(mem.as_slice()[0xE_0000], 0xAB);
        assert!(!mem.is_backed(0xA_0000) && !mem.is_backed(0xB_FFFF));
        assert!(mem.is_backed(0xC_0000));
        let mut byte = [0u8; 1];
        b.mmio_read(0xFFFF_FFF0, &mut byte);
        assert_eq!(byte, [0xF4]);
        b.mmio_write(0xFFFF_FFF0, &[0]);
        b.mmio_read(0xFFFF_FFF0, &mut byte);
        assert_eq!(byte, [0xF4], "ROM writes are dropped");
        let mut cpu = Cpu::new(mem);
        assert_eq!(cpu.run(&mut b, 10), translator::RunExit::Halted);
    }

    #[test]
    fn dma_starting_writes_wait_for_the_slice_end_and_look_busy() {
        let dma = Arc::new(DmaRam::new());
        let mut b = board(dma.clone());
        // fw_cfg DMA: the address write is queued, not performed.
        b.io_write(0x518, 4, 0x0010_0000u32.swap_bytes());
        assert!(b.has_deferred());
        // An ATA DMA command on the primary channel: BSY until the slice ends.
        b.io_write(0x1F7, 1, 0xC8);
        assert_eq!(b.io_read(0x1F7, 1) & 0x80, 0x80);
        assert_eq!(b.io_read(0x3F6, 1) & 0x80, 0x80);
        // A plain register write on an idle device goes straight through.
        b.io_write(0x3FF, 1, 0x5A);
        assert_eq!(b.io_read(0x3FF, 1), 0x5A);
        let mut cpu = Cpu::new(b.build_memory(RamLayout::for_size(16 << 20)).unwrap());
        dma.lend(&mut cpu);
        b.run_deferred();
        dma.give_back(&mut cpu);
        assert!(!b.has_deferred());
        assert_ne!(
            b.io_read(0x1F7, 1),
            0x80,
            "no drive: the status is not BSY any more"
        );
        // The fw_cfg DMA ran against guest RAM (a zero control word: nothing to do, but the
        // device read it without an error being logged as unmapped).
        assert!(
            dma.read(0, &mut [0u8; 4]).is_err(),
            "RAM is back with the CPU"
        );
    }
}
