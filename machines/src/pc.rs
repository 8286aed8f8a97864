//! The PC's legacy devices at their ISA addresses, wired to the 8259 pair.
//!
//! This is the device half of the `pc` board: what a standalone machine, the benchmark and the
//! random-access test all need. The port map and IRQs are the PC/AT's (and QEMU's `pc`):
//!
//! | ports | device | IRQ |
//! |---|---|---|
//! | 0x20, 0xA0, 0x4D0 | 8259A pair + ELCR | — |
//! | 0x40–0x43, 0x61 | 8254 PIT, port B | 0 |
//! | 0x60, 0x64 | 8042 | 1, 12 |
//! | 0x70–0x71 | MC146818 RTC/CMOS | 8 |
//! | 0x80 | POST code | — |
//! | 0xE9, 0x402 | debug console | — |
//! | 0xF4 | test exit | — |
//! | 0x3F8–0x3FF | 16550A (COM1) | 4 |
//! | 0x510, 0x514 | fw_cfg | — |
//! | 0xCF8–0xCFF | PCI configuration mechanism #1, reset control 0xCF9 | — |

use std::io::Write;
use std::sync::{Arc, Mutex};

use devices::acpi::piix4_pm::{
    APM_CNT_PORT, APM_PORT_COUNT, GPE0_BASE, GPE0_LEN, PIIX4_PM_BDF, Piix4Pm, Piix4PmConfig,
    PmIoMapper, PmIoScope, PowerSignals, SCI_IRQ,
};
use devices::bus::{AccessSizes, Bus, BusAddress, BusDevice, BusError, BusKind};
use devices::chardev::CharSink;
use devices::chipset::port92::{PORT92, PORT92_LEN, Port92};
use devices::clock::Clock;
use devices::debug::debugcon::{DEBUGCON_PORT, Debugcon, SEABIOS_DEBUG_PORT};
use devices::debug::exit_port::{EXIT_PORT, ExitPort};
use devices::debug::post_code::{POST_CODE_PORT, PostCode};
use devices::display::vga::{Vga, VgaConfig, VgaError};
use devices::firmware::fw_cfg::{
    FW_CFG_CTL_LEN, FW_CFG_DMA_IO_BASE, FW_CFG_DMA_LEN, FW_CFG_IO_BASE, FwCfg, FwCfgError,
};
use devices::guest_memory::GuestMemory;
use devices::input::i8042::{DATA_PORT, I8042, STATUS_PORT};
use devices::interrupt::pic8259::PicPair;
use devices::pci::Bdf;
use devices::pci::PciError;
use devices::pci::config_io::{CONFIG_IO_BASE, CONFIG_IO_LEN, PciConfigIo};
use devices::pci::i440fx::{I440FX_BDF, I440fx};
use devices::pci::piix3::{NUM_ISA_IRQS, PIIX3_BDF, Piix3, PirqRouter};
use devices::pci::root::PciRoot;
use devices::rtc::mc146818::{self, Mc146818};
use devices::serial::uart16550::{COM1_BASE, UART_PORT_COUNT, Uart16550};
use devices::snapshot::{self, SnapshotError};

use crate::device_state::SnapshotDevice;
use devices::storage::ide::{ChannelDrives, IdeHandle, PIIX3_IDE_BDF, Piix3Ide};
use devices::system::SystemSignals;
use devices::timer::pit8254::{PIT_BASE, PORT_B_BASE, Pit8254};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PcError {
    #[error("wiring the port bus: {0}")]
    Bus(#[from] BusError),
    #[error("building PCI: {0}")]
    Pci(#[from] PciError),
    #[error("configuring fw_cfg: {0}")]
    FwCfg(#[from] FwCfgError),
    #[error("building the VGA: {0}")]
    Vga(#[from] VgaError),
    #[error("BIOS image of {0} bytes: it must be a non-empty multiple of 64 KiB, at most 16 MiB")]
    BiosSize(usize),
    #[error("restoring {device}: {source}")]
    Restore {
        device: &'static str,
        source: SnapshotError,
    },
}

/// What the legacy devices are told about the machine.
pub struct PcConfig {
    pub ram_below_4g: u64,
    pub ram_above_4g: u64,
    pub cpus: u16,
    /// The RTC's starting time, seconds since the Unix epoch.
    pub rtc_base_unix_secs: i64,
    /// Where COM1's transmitted bytes go.
    pub serial: Box<dyn CharSink>,
    /// Where the debug console's bytes go (0xE9 and 0x402).
    pub debugcon: Box<dyn Write + Send>,
}

/// The legacy devices on one port bus. Fields are public: a board reaches into the devices it
/// needs (the PIC for INTR, the UART for host input, the 8042 for key presses).
pub struct PcDevices {
    pub clock: Clock,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub signals: Arc<SystemSignals>,
    pub pic: Arc<Mutex<PicPair>>,
    pub pit: Arc<Mutex<Pit8254>>,
    pub rtc: Arc<Mutex<Mc146818>>,
    pub i8042: Arc<Mutex<I8042>>,
    pub com1: Arc<Mutex<Uart16550>>,
    pub pci: PciRoot,
    pub host_bridge: Arc<Mutex<I440fx>>,
    pub fw_cfg: Arc<Mutex<FwCfg>>,
    pub post: Arc<Mutex<PostCode>>,
    pub debugcon: Arc<Mutex<Debugcon>>,
    pub exit: Arc<Mutex<ExitPort>>,
}

impl PcDevices {
    pub fn new(config: PcConfig, memory: Arc<dyn GuestMemory>) -> Result<PcDevices, PcError> {
        let clock = Clock::new(0);
        let pio = Arc::new(Bus::new(BusKind::Pio));
        let mmio = Arc::new(Bus::new(BusKind::Mmio));
        let signals = Arc::new(SystemSignals::new());

        let pic = PicPair::new_shared();
        PicPair::register(&pic, &pio)?;
        let irq = |n: u8| PicPair::input(&pic, n);

        let pit = Pit8254::new_shared(&clock, irq(0));
        pio.insert("pit", PIT_BASE, 4, pit.clone())?;
        pio.insert("port-b", PORT_B_BASE, 1, pit.clone())?;

        let rtc = Mc146818::new_shared(&clock, irq(mc146818::IRQ), config.rtc_base_unix_secs);
        {
            let mut rtc = rtc.lock().unwrap_or_else(|e| e.into_inner());
            rtc.set_memory_size(config.ram_below_4g, config.ram_above_4g);
            rtc.set_cpu_count(u32::from(config.cpus));
        }
        pio.insert(
            "rtc",
            mc146818::PORT_BASE,
            mc146818::PORT_COUNT,
            rtc.clone(),
        )?;

        let i8042 = Arc::new(Mutex::new(I8042::new(irq(1), irq(12), signals.clone())));
        pio.insert("i8042-data", DATA_PORT, 1, i8042.clone())?;
        pio.insert("i8042-cmd", STATUS_PORT, 1, i8042.clone())?;

        let com1 = Uart16550::new_shared(&clock, irq(4), config.serial);
        pio.insert("com1", COM1_BASE, UART_PORT_COUNT, com1.clone())?;

        let mut fw = FwCfg::new(memory);
        fw.set_ram_size(config.ram_below_4g + config.ram_above_4g);
        fw.set_cpu_count(config.cpus, config.cpus)?;
        let fw_cfg = Arc::new(Mutex::new(fw));
        pio.insert("fw_cfg", FW_CFG_IO_BASE, FW_CFG_CTL_LEN, fw_cfg.clone())?;
        pio.insert(
            "fw_cfg-dma",
            FW_CFG_DMA_IO_BASE,
            FW_CFG_DMA_LEN,
            fw_cfg.clone(),
        )?;

        // PCI INTx reaches the 8259 through the PIIX3's PIRQ routing registers.
        let isa_irqs = (0..NUM_ISA_IRQS as u8).map(irq).collect();
        let router = PirqRouter::new(isa_irqs)?;
        let pci = PciRoot::new(pio.clone(), mmio.clone(), router.clone());
        let host_bridge = pci.add(I440FX_BDF, I440fx::new())?;
        pci.add(PIIX3_BDF, Piix3::new(router))?;
        let config_io = PciConfigIo::new(pci.clone(), signals.clone());
        pio.insert(
            "pci-config",
            CONFIG_IO_BASE,
            CONFIG_IO_LEN,
            Arc::new(Mutex::new(config_io)),
        )?;

        let post = Arc::new(Mutex::new(PostCode::new()));
        pio.insert("post", POST_CODE_PORT, 1, post.clone())?;
        let debugcon = Arc::new(Mutex::new(Debugcon::new(config.debugcon)));
        pio.insert("debugcon", DEBUGCON_PORT, 1, debugcon.clone())?;
        pio.insert("debugcon-seabios", SEABIOS_DEBUG_PORT, 1, debugcon.clone())?;
        let exit = Arc::new(Mutex::new(ExitPort::new(signals.clone())));
        pio.insert("test-exit", EXIT_PORT, 1, exit.clone())?;

        Ok(PcDevices {
            clock,
            pio,
            mmio,
            signals,
            pic,
            pit,
            rtc,
            i8042,
            com1,
            pci,
            host_bridge,
            fw_cfg,
            post,
            debugcon,
            exit,
        })
    }

    /// Every device with state, by a stable name, for whole-set save and restore.
    fn stateful(&self) -> Vec<(&'static str, Arc<Mutex<dyn SnapshotDevice>>)> {
        vec![
            ("pic", self.pic.clone()),
            ("pit", self.pit.clone()),
            ("rtc", self.rtc.clone()),
            ("i8042", self.i8042.clone()),
            ("com1", self.com1.clone()),
            ("fw_cfg", self.fw_cfg.clone()),
            ("post", self.post.clone()),
            ("debugcon", self.debugcon.clone()),
            ("test-exit", self.exit.clone()),
        ]
    }

    /// Each device's state blob, in a fixed order.
    pub fn save_all(&self) -> Vec<(&'static str, Vec<u8>)> {
        let mut blobs: Vec<_> = self
            .stateful()
            .into_iter()
            .map(|(name, dev)| {
                let dev = dev.lock().unwrap_or_else(|e| e.into_inner());
                (name, snapshot::save(&*dev))
            })
            .collect();
        blobs.push(("pci", snapshot::save(&self.pci)));
        blobs
    }

    /// Restore every device from blobs made by [`PcDevices::save_all`].
    pub fn restore_all(&self, blobs: &[(&'static str, Vec<u8>)]) -> Result<(), PcError> {
        for (name, dev) in self.stateful() {
            let blob = blobs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, b)| b.as_slice())
                .unwrap_or(&[]);
            let mut dev = dev.lock().unwrap_or_else(|e| e.into_inner());
            snapshot::restore(&mut *dev, blob).map_err(|source| PcError::Restore {
                device: name,
                source,
            })?;
        }
        let blob = blobs
            .iter()
            .find(|(n, _)| *n == "pci")
            .map(|(_, b)| b.as_slice())
            .unwrap_or(&[]);
        let mut pci = self.pci.clone();
        snapshot::restore(&mut pci, blob).map_err(|source| PcError::Restore {
            device: "pci",
            source,
        })
    }
}

/// Where the standard VGA sits, as in QEMU's `pc` (and the classic Xen layout).
pub const VGA_BDF: Bdf = Bdf::from_devfn(0, 2 << 3);

/// The firmware ROM's low alias: the last 128 KiB of the image appear below 1 MiB.
pub const BIOS_LOW_ALIAS_BASE: u64 = 0xE_0000;
pub const BIOS_LOW_ALIAS_LEN: u64 = 0x2_0000;
/// The largest firmware image accepted (QEMU's `pc` allows up to 16 MiB of flash).
pub const MAX_BIOS_SIZE: usize = 16 << 20;

/// Read-only memory on the MMIO bus: the firmware image at the top of 4 GiB. Writes are
/// dropped (logged at debug level: SeaBIOS probes nothing there, a stray write is a guest bug).
pub struct Rom {
    data: Vec<u8>,
}

impl Rom {
    pub fn new(data: Vec<u8>) -> Rom {
        Rom { data }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn data(&self) -> &[u8] {
        &self.data
    }
}

impl BusDevice for Rom {
    fn read(&mut self, at: BusAddress, data: &mut [u8]) {
        let start = usize::try_from(at.offset).unwrap_or(usize::MAX);
        for (i, b) in data.iter_mut().enumerate() {
            *b = start
                .checked_add(i)
                .and_then(|a| self.data.get(a))
                .copied()
                .unwrap_or(0xFF);
        }
    }

    fn write(&mut self, at: BusAddress, data: &[u8]) {
        log::debug!(
            "write of {} bytes to ROM at {:#x} dropped",
            data.len(),
            at.absolute()
        );
    }

    fn access_sizes(&self) -> AccessSizes {
        AccessSizes::ANY
    }
}

/// What the standalone PC adds to the legacy set.
pub struct PcPlatformConfig {
    /// The firmware image (SeaBIOS's `bios-256k.bin`), mapped at the top of 4 GiB.
    pub bios: Vec<u8>,
    /// The PIIX3 IDE drives: (master, slave) of the primary and the secondary channel.
    pub ide: [ChannelDrives; 2],
    /// `None`: no display adapter. `Some(rom)`: the standard VGA, with `rom` (Debian's
    /// `vgabios-stdvga.bin`) as its expansion ROM when given.
    pub vga: Option<Option<Vec<u8>>>,
}

/// The rest of QEMU's `pc` around [`PcDevices`]: PIIX3 IDE at 00:01.1 (ISA IRQ 14/15),
/// PIIX4 PM at 00:01.3 (SCI on ISA IRQ 9, its whole I/O block where PMBA puts it, GPE0 at
/// 0xAFE0, APM at 0xB2), the standard VGA at 00:02.0 (legacy ports and the 0xA0000 window),
/// port 0x92 and the firmware ROM at `4 GiB - len` on the MMIO bus.
///
/// The low alias of the firmware (0xE0000–0xFFFFF) is RAM the board fills from
/// [`PcPlatform::bios_low_alias`]: the i440FX PAM registers are not modelled, so the
/// region is always writable shadow RAM, which is the state SeaBIOS puts it in anyway.
pub struct PcPlatform {
    pub ide: IdeHandle,
    pub vga: Option<Arc<Mutex<Vga>>>,
    pub pm: Arc<Mutex<Piix4Pm>>,
    /// Keeps the PM I/O block where the guest's PMBA puts it.
    pub pm_io: Arc<PmIoMapper>,
    /// S5 (and S4) requests from the PM, latched for the main loop.
    pub power: Arc<PowerSignals>,
    pub port92: Arc<Mutex<Port92>>,
    pub bios: Arc<Mutex<Rom>>,
    pub bios_base: u64,
}

impl PcPlatform {
    /// Add the platform devices to `pc`'s buses. `memory` is what the IDE DMA engine uses.
    pub fn new(
        pc: &PcDevices,
        config: PcPlatformConfig,
        memory: Arc<dyn GuestMemory>,
    ) -> Result<PcPlatform, PcError> {
        let bios_len = config.bios.len();
        if bios_len == 0 || !bios_len.is_multiple_of(0x1_0000) || bios_len > MAX_BIOS_SIZE {
            return Err(PcError::BiosSize(bios_len));
        }
        let irq = |n: u8| PicPair::input(&pc.pic, n);

        let [primary, secondary] = config.ide;
        let ide = Piix3Ide::new(memory, irq(14), irq(15), primary, secondary);
        ide.register_legacy_ports(&pc.pio)?;
        let ide_handle = ide.handle();
        pc.pci.add(PIIX3_IDE_BDF, ide)?;

        let power = Arc::new(PowerSignals::new());
        let mut pm = Piix4Pm::new(Piix4PmConfig::pc(), &pc.clock, irq(SCI_IRQ), power.clone());
        let pm_io = pm.attach_io(pc.pio.clone(), PmIoScope::Full);
        pc.pio.insert("gpe0", GPE0_BASE, GPE0_LEN, pm.gpe_block())?;
        pc.pio
            .insert("apm", APM_CNT_PORT, APM_PORT_COUNT, pm.apm_ports())?;
        let pm = pc.pci.add(PIIX4_PM_BDF, pm)?;

        let vga = match config.vga {
            None => None,
            Some(rom) => {
                let vga = Vga::new_shared(VgaConfig {
                    rom,
                    ..VgaConfig::default()
                })?;
                Vga::register_legacy(&vga, &pc.pio, &pc.mmio)?;
                pc.pci.add_function(VGA_BDF, vga.clone())?;
                Some(vga)
            }
        };

        let port92 = Arc::new(Mutex::new(Port92::new(pc.signals.clone())));
        pc.pio
            .insert("port92", PORT92, PORT92_LEN, port92.clone())?;

        let bios_base = (1u64 << 32) - bios_len as u64;
        let bios = Arc::new(Mutex::new(Rom::new(config.bios)));
        pc.mmio
            .insert("bios", bios_base, bios_len as u64, bios.clone())?;

        Ok(PcPlatform {
            ide: ide_handle,
            vga,
            pm,
            pm_io,
            power,
            port92,
            bios,
            bios_base,
        })
    }

    /// The bytes that belong at [`BIOS_LOW_ALIAS_BASE`]: the image's last 128 KiB.
    pub fn bios_low_alias(&self) -> Vec<u8> {
        let rom = self.bios.lock().unwrap_or_else(|e| e.into_inner());
        let data = rom.data();
        data[data.len().saturating_sub(BIOS_LOW_ALIAS_LEN as usize)..].to_vec()
    }

    /// The I/O ports of the IDE bus-master block, where the guest mapped BAR4 (if it did).
    pub fn ide_bus_master_ports(pc: &PcDevices) -> Option<(u64, u64)> {
        pc.pci
            .mapped_regions(PIIX3_IDE_BDF)
            .into_iter()
            .find(|r| r.index == devices::storage::ide::BMIBA_BAR && r.space == BusKind::Pio)
            .map(|r| (r.base, r.size))
    }
}

impl PcDevices {
    /// A machine reset (8042 pulse, 0xCF9, port 0x92, triple fault): every device to its
    /// power-on state; the RTC keeps its time and CMOS, as on real hardware.
    pub fn reset(&self) {
        fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
            m.lock().unwrap_or_else(|e| e.into_inner())
        }
        lock(&self.pic).reset();
        lock(&self.pit).reset();
        lock(&self.i8042).reset();
        lock(&self.com1).reset();
        lock(&self.fw_cfg).reset();
        self.pci.reset();
    }
}
