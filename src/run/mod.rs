//! `vireo run`: the standalone PC with the tier-0 CPU.
//!
//! The main loop runs the CPU in slices of a fixed number of instructions; between slices the
//! board does its device work (deferred DMA writes, device time from the host's monotonic
//! clock), then looks at host I/O with `mio` (a zero-timeout poll at most every few ms while
//! the guest computes, a blocking one while it halts). HLT sleeps in that poll until the next
//! timer deadline or host input, so an idle guest costs no host CPU.

pub mod board;
pub mod curses;
pub mod direct;
pub mod direct_linux;
pub mod linux;
pub mod memory;
pub mod multiboot;
pub mod options;

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use devices::block::BlockBackend;
use devices::block::overlay::CowOverlay;
use devices::block::raw::RawFile;
use devices::chardev::file::FileBackend;
use devices::chardev::stdio::StdioBackend;
use devices::chardev::{CharBackend, CharSink, NullSink};
use devices::firmware::fw_cfg::{E820Entry, E820Kind};
use devices::rtc::mc146818::BootDevice;
use devices::storage::ide::{ChannelDrives, IdeDrive};
use machines::pc::{PcConfig, PcDevices, PcPlatform, PcPlatformConfig};
use mio::{Events, Poll, Token};
use translator::{Cpu, RunExit, TscClock};

use board::{Board, RamLayout};
use memory::DmaRam;
pub use options::Options;
use options::{CharDev, OptionError};

pub const DEFAULT_BIOS: &str = "/usr/share/seabios/bios-256k.bin";
pub const DEFAULT_VGA_BIOS: &str = "/usr/share/seabios/vgabios-stdvga.bin";

const STDIN_TOKEN: Token = Token(0);
/// Ctrl-A, the escape for Ctrl-A x (quit) as in QEMU's `-nographic`.
const ESCAPE: u8 = 0x01;
/// How often host I/O is polled while the guest computes.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// How many instructions the next slice runs: up to the next timer deadline at the speed
/// the CPU has shown, between a quarter and four times the `--slice` knob. Leaving and
/// re-entering the CPU costs a block lookup and the device work between slices (vbench
/// ran 7% faster with four times longer slices), while a slice that ran far past a timer's
/// deadline would deliver its interrupt late (the boot with fixed 200 000-instruction
/// slices was 3.5% slower).
struct SlicePace {
    base: u64,
    /// Instructions per microsecond in the last slice, and where it started.
    per_us: u64,
    last: Option<(u64, u64)>,
}

impl SlicePace {
    fn new(base: u64) -> Self {
        SlicePace {
            base,
            per_us: 0,
            last: None,
        }
    }

    fn next(&mut self, deadline: Option<u64>, now_ns: u64, icount: u64) -> u64 {
        if let Some((t0, i0)) = self.last
            && now_ns > t0
            && let Some(rate) = icount.wrapping_sub(i0).checked_div((now_ns - t0) / 1000)
        {
            self.per_us = rate;
        }
        self.last = Some((now_ns, icount));
        let (lo, hi) = ((self.base / 4).max(1000), self.base.saturating_mul(4));
        match deadline {
            Some(d) if self.per_us > 0 => {
                let until = d.saturating_sub(now_ns) / 1000;
                until.saturating_mul(self.per_us).clamp(lo, hi)
            }
            Some(_) => self.base,
            None => hi,
        }
    }
}
/// The longest a halted guest sleeps without looking again (no timer armed, IF clear...).
const MAX_SLEEP: Duration = Duration::from_millis(200);
/// The nominal time-stamp counter rate the guest sees (a 1 GHz P6).
const TSC_HZ: u64 = 1_000_000_000;

/// How `-kernel` boots.
enum KernelBoot {
    /// A bzImage published through fw_cfg for the firmware's loader option ROM (QEMU's way).
    FwCfg(linux::LinuxImage),
    /// Loaded here and entered without firmware: Linux with `-bios none`, or multiboot.
    Direct(direct::DirectBoot),
}

/// Everything decided from the command line, checked before the guest starts.
struct Plan {
    ram: u64,
    bios: Vec<u8>,
    vga: Option<Option<Vec<u8>>>,
    ide: [ChannelDrives; 2],
    boot: Vec<BootDevice>,
    serial: CharDev,
    /// `-display curses`: the terminal shows the VGA text screen and types on the keyboard.
    curses: bool,
    /// `-jit`, when given (otherwise the CPU's default, which `VIREO_JIT` may set).
    jit: Option<translator::JitMode>,
    debugcon: CharDev,
    kernel: Option<KernelBoot>,
    no_reboot: bool,
    slice: u64,
    max_time: Option<Duration>,
}

fn read_file(what: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

fn open_drive(spec: &options::DriveSpec) -> Result<IdeDrive> {
    let raw = RawFile::open(&spec.file, spec.cdrom)
        .with_context(|| format!("cannot open disk image {}", spec.file.display()))?;
    let backend: Box<dyn BlockBackend> = if spec.snapshot {
        Box::new(CowOverlay::new(Box::new(raw)).with_context(|| {
            format!("cannot make a snapshot overlay for {}", spec.file.display())
        })?)
    } else {
        Box::new(raw)
    };
    Ok(if spec.cdrom {
        IdeDrive::cdrom(Some(backend))
    } else {
        IdeDrive::disk(backend)
    })
}

fn plan(o: &Options) -> Result<Plan> {
    let ram = options::parse_memory(&o.memory)?;
    if let Some(smp) = &o.smp {
        let n = smp.split(',').next().unwrap_or("");
        if n != "1" && n != "cpus=1" {
            return Err(OptionError::BadSmp(smp.clone()).into());
        }
    }
    let curses = match o.display.as_deref() {
        None | Some("none") => false,
        Some("curses") => true,
        Some(d) => return Err(OptionError::BadDisplay(d.to_string()).into()),
    };
    if curses && o.nographic {
        bail!("-nographic and -display curses both want the terminal: choose one");
    }
    if curses && o.vga.as_deref() == Some("none") {
        bail!("-display curses shows the VGA's text screen: it needs -vga std");
    }
    let serial = match (&o.serial, o.nographic) {
        (Some(s), _) => options::parse_serial(s)?,
        (None, true) => CharDev::Stdio,
        (None, false) => CharDev::None,
    };
    if curses && serial == CharDev::Stdio {
        bail!("-serial stdio and -display curses both want the terminal: choose one");
    }
    let debugcon = match &o.debugcon {
        Some(s) => options::parse_debugcon(s)?,
        None => CharDev::None,
    };
    let no_firmware = o.bios.as_deref() == Some(Path::new("none"));
    let bios_path = o
        .bios
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BIOS));
    let bios = if no_firmware {
        if o.kernel.is_none() {
            bail!("-bios none enters a kernel directly: it needs -kernel");
        }
        direct::no_firmware_rom()
    } else {
        read_file("BIOS", &bios_path).with_context(|| {
            if o.bios.is_none() {
                "Debian's SeaBIOS is the default firmware: apt-get install seabios".to_string()
            } else {
                "check -bios".to_string()
            }
        })?
    };
    if bios.is_empty()
        || !bios.len().is_multiple_of(0x1_0000)
        || bios.len() > machines::pc::MAX_BIOS_SIZE
    {
        bail!(
            "BIOS image {} is {} bytes: expected a multiple of 64 KiB up to 16 MiB",
            bios_path.display(),
            bios.len()
        );
    }
    let vga = match o.vga.as_deref() {
        None | Some("std") => {
            let rom = std::fs::read(DEFAULT_VGA_BIOS).ok();
            if rom.is_none() {
                log::warn!("{DEFAULT_VGA_BIOS} not found: the VGA has no BIOS ROM");
            }
            Some(rom)
        }
        Some("none") => None,
        Some(v) => return Err(OptionError::BadVga(v.to_string()).into()),
    };

    let mut slots: [Option<IdeDrive>; 4] = [None, None, None, None];
    let mut specs = Vec::new();
    for d in &o.drives {
        specs.push(options::parse_drive(d)?);
    }
    if let Some(cd) = &o.cdrom {
        specs.push(options::DriveSpec {
            file: cd.clone(),
            cdrom: true,
            snapshot: false,
            index: Some(2),
        });
    }
    for spec in &specs {
        let index = match spec.index {
            Some(i) => i,
            None => slots
                .iter()
                .position(Option::is_none)
                .ok_or(OptionError::DriveSlot(4))?,
        };
        if slots[index].is_some() {
            return Err(OptionError::DriveSlot(index).into());
        }
        slots[index] = Some(open_drive(spec)?);
    }
    let [a, b, c, d] = slots;
    let ide = [[a, b], [c, d]];

    let letters = match &o.boot {
        Some(b) => options::parse_boot(b)?,
        None => vec!['c', 'a', 'd'],
    };
    let boot = letters
        .iter()
        .take(3)
        .map(|c| match c {
            'a' => BootDevice::Floppy,
            'd' => BootDevice::CdRom,
            'n' => BootDevice::Network,
            _ => BootDevice::HardDisk,
        })
        .collect();

    if o.kernel.is_none() && (o.initrd.is_some() || o.append.is_some()) {
        return Err(OptionError::NeedsKernel.into());
    }
    let kernel = match &o.kernel {
        Some(k) => Some(plan_kernel(o, k, ram, bios.len() as u64, no_firmware)?),
        None => None,
    };

    Ok(Plan {
        ram,
        bios,
        vga,
        ide,
        boot,
        serial,
        curses,
        jit: o.jit.as_deref().map(options::parse_jit).transpose()?,
        debugcon,
        kernel,
        no_reboot: o.no_reboot,
        slice: o.slice.max(1000),
        max_time: o
            .max_seconds
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64),
    })
}

/// Check and lay out `-kernel` (with `-initrd` and `-append`) before the guest starts. Errors
/// are one line: they name the option and say what is wrong.
fn plan_kernel(
    o: &Options,
    path: &Path,
    ram: u64,
    rom_len: u64,
    no_firmware: bool,
) -> Result<KernelBoot> {
    let image = std::fs::read(path)
        .map_err(|e| anyhow!("-kernel {}: cannot read it: {e}", path.display()))?;
    let append = o.append.clone().unwrap_or_default();
    let layout = RamLayout::for_size(ram);
    let mut e820 = direct::e820_map(layout.below_4g, rom_len);
    e820.extend(direct::high_ram(layout));
    let ram = layout.below_4g;
    let bad_kernel = |e: &dyn std::fmt::Display| anyhow!("-kernel {}: {e}", path.display());
    // A setup header makes it Linux, whatever else it carries (QEMU's order).
    if !linux::has_setup_header(&image) {
        match multiboot::find_header(&image).map_err(|e| bad_kernel(&e))? {
            Some((offset, flags)) => {
                let k = multiboot::MultibootKernel::parse(&image, offset, flags)
                    .map_err(|e| bad_kernel(&e))?;
                let modules = match &o.initrd {
                    Some(list) => multiboot::load_modules(&list.to_string_lossy())
                        .map_err(|e| anyhow!("-initrd: {e}"))?,
                    None => Vec::new(),
                };
                let cmdline = if append.is_empty() {
                    path.display().to_string()
                } else {
                    format!("{} {append}", path.display())
                };
                let boot = k
                    .prepare(&cmdline, &modules, ram, &e820)
                    .map_err(|e| bad_kernel(&e))?;
                return Ok(KernelBoot::Direct(boot));
            }
            None => return Err(bad_kernel(&linux::LinuxError::NotBzImage)),
        }
    }
    let initrd = match &o.initrd {
        Some(p) => Some(
            std::fs::read(p)
                .map_err(|e| anyhow!("-initrd {}: cannot read it: {e}", p.display()))?,
        ),
        None => None,
    };
    let image = linux::LinuxImage::parse(image, initrd, append).map_err(|e| bad_kernel(&e))?;
    if no_firmware {
        let boot = direct_linux::prepare(&image, ram, &e820).map_err(|e| bad_kernel(&e))?;
        Ok(KernelBoot::Direct(boot))
    } else {
        linux::LinuxImage::check_option_rom().map_err(|e| bad_kernel(&e))?;
        Ok(KernelBoot::FwCfg(image))
    }
}

/// Puts the terminal in raw mode (so Ctrl-A and Ctrl-C reach the guest) and restores it.
struct RawTerminal {
    saved: Option<String>,
}

impl RawTerminal {
    fn enter() -> RawTerminal {
        if !io::stdin().is_terminal() {
            return RawTerminal { saved: None };
        }
        let saved = Command::new("stty")
            .arg("-g")
            .stdin(Stdio::inherit())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        if saved.is_some() {
            let _ = Command::new("stty")
                .args(["raw", "-echo"])
                .stdin(Stdio::inherit())
                .status();
        }
        RawTerminal { saved }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(s) = &self.saved {
            let _ = Command::new("stty").arg(s).stdin(Stdio::inherit()).status();
        }
    }
}

fn debugcon_writer(dev: &CharDev) -> Result<Box<dyn Write + Send>> {
    Ok(match dev {
        CharDev::None => Box::new(io::sink()),
        CharDev::Stdio => Box::new(io::stdout()),
        CharDev::Stderr => Box::new(io::stderr()),
        CharDev::File(p) => Box::new(
            std::fs::File::create(p)
                .with_context(|| format!("cannot create debugcon file {}", p.display()))?,
        ),
    })
}

fn dump_registers(cpu: &mut Cpu) -> String {
    let r = &cpu.regs;
    let mut s = format!(
        "EAX={:08x} EBX={:08x} ECX={:08x} EDX={:08x} ESI={:08x} EDI={:08x} EBP={:08x} ESP={:08x}\n",
        r[0], r[3], r[1], r[2], r[6], r[7], r[5], r[4]
    );
    let flags = cpu.rflags();
    s += &format!(
        "EIP={:08x} EFL={:08x} CPL={} CR0={:08x} CR2={:08x} CR3={:08x} CR4={:08x}\n",
        cpu.rip, flags, cpu.cpl, cpu.cr0, cpu.cr2, cpu.cr3, cpu.cr4
    );
    for (name, seg) in ["ES", "CS", "SS", "DS", "FS", "GS"]
        .iter()
        .zip(cpu.segs.iter())
    {
        s += &format!(
            "{name} ={:04x} {:08x} {:08x} {:04x}\n",
            seg.selector, seg.base, seg.limit, seg.attr
        );
    }
    s += &format!(
        "GDT={:08x} {:04x} IDT={:08x} {:04x} last fault {:?} icount {}\n",
        cpu.gdtr.base, cpu.gdtr.limit, cpu.idtr.base, cpu.idtr.limit, cpu.last_fault, cpu.icount
    );
    s
}

/// The Ctrl-A c monitor: a line editor on the serial console's terminal with `info registers`
/// and `quit`.
struct Monitor {
    active: bool,
    line: Vec<u8>,
    out: Box<dyn CharSink>,
}

impl Monitor {
    const PROMPT: &'static [u8] = b"(vireo) ";
    const MAX_LINE: usize = 256;

    fn toggle(&mut self) {
        self.active = !self.active;
        self.line.clear();
        if self.active {
            self.out
                .write(b"\r\nVireo monitor (info registers, quit; Ctrl-A c leaves)\r\n");
            self.out.write(Self::PROMPT);
        } else {
            self.out.write(b"\r\n");
        }
    }

    /// One typed byte; true when the user asked to quit.
    fn input(&mut self, byte: u8, cpu: &mut Cpu) -> bool {
        match byte {
            b'\r' | b'\n' => {
                self.out.write(b"\r\n");
                let line = String::from_utf8_lossy(&self.line).trim().to_string();
                self.line.clear();
                match line.as_str() {
                    "" => {}
                    "quit" | "q" => return true,
                    "info registers" | "info r" => {
                        let text = dump_registers(cpu).replace('\n', "\r\n");
                        self.out.write(text.as_bytes());
                    }
                    other => {
                        self.out
                            .write(format!("unknown command: {other}\r\n").as_bytes());
                    }
                }
                self.out.write(Self::PROMPT);
            }
            0x7F | 0x08 if self.line.pop().is_some() => {
                self.out.write(b"\x08 \x08");
            }
            b if (0x20..0x7F).contains(&b) && self.line.len() < Self::MAX_LINE => {
                self.line.push(b);
                self.out.write(&[b]);
            }
            _ => {}
        }
        false
    }
}

/// Run the machine until it powers off, exits through the test port, resets with
/// `-no-reboot`, or the user quits. Returns the process exit status.
pub fn run(o: &Options) -> Result<i32> {
    let plan = plan(o)?;
    let start = Instant::now();
    let now_ns = move || u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);

    let mut stdio_backend: Option<StdioBackend> = None;
    let serial_sink: Box<dyn CharSink> = match &plan.serial {
        CharDev::None => Box::new(NullSink),
        CharDev::Stdio => {
            let b = StdioBackend::new().context("serial on stdio")?;
            let sink = b.sink();
            stdio_backend = Some(b);
            sink
        }
        CharDev::Stderr => bail!("-serial stderr is not supported"),
        CharDev::File(p) => FileBackend::create(p)
            .with_context(|| format!("-serial file:{}", p.display()))?
            .sink(),
    };
    let mut display = None;
    if plan.curses {
        let b = StdioBackend::new().context("-display curses")?;
        display = Some(curses::CursesDisplay::new(b.sink()));
        stdio_backend = Some(b);
    }
    let mut keys = curses::KeyDecoder::default();

    let dma = Arc::new(DmaRam::new());
    let layout = RamLayout::for_size(plan.ram);
    let below_4g = layout.below_4g;
    let pc = PcDevices::new(
        PcConfig {
            ram_below_4g: below_4g,
            ram_above_4g: layout.above_4g,
            cpus: 1,
            rtc_base_unix_secs: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            serial: serial_sink,
            debugcon: debugcon_writer(&plan.debugcon)?,
        },
        dma.clone(),
    )
    .context("building the PC")?;
    let bios_len = plan.bios.len() as u64;
    let platform = PcPlatform::new(
        &pc,
        PcPlatformConfig {
            bios: plan.bios,
            ide: plan.ide,
            vga: plan.vga,
        },
        dma.clone(),
    )
    .context("building the PC platform")?;
    {
        let mut rtc = pc.rtc.lock().unwrap_or_else(|e| e.into_inner());
        rtc.set_boot_order(&plan.boot)
            .map_err(|e| anyhow::anyhow!("boot order: {e}"))?;
    }
    {
        let mut fw = pc.fw_cfg.lock().unwrap_or_else(|e| e.into_inner());
        let mut e820 = vec![
            E820Entry {
                address: 0,
                length: below_4g,
                kind: E820Kind::Ram,
            },
            E820Entry {
                address: (1 << 32) - bios_len,
                length: bios_len,
                kind: E820Kind::Reserved,
            },
        ];
        e820.extend(direct::high_ram(layout));
        fw.set_e820(&e820).context("fw_cfg e820")?;
        if let Some(KernelBoot::FwCfg(k)) = &plan.kernel {
            k.publish(&mut fw, below_4g)
                .context("publishing the kernel through fw_cfg")?;
        }
    }

    let clock = pc.clock.clone();
    let mut board = Board::new(
        pc,
        platform,
        Box::new(move |pc: &PcDevices| pc.clock.advance_to(now_ns())),
    );
    let mem = board.build_memory(layout).with_context(|| {
        format!(
            "cannot allocate {} MiB of guest RAM on this host",
            plan.ram >> 20
        )
    })?;
    let mut cpu = Cpu::new(mem);
    // The PIT, RTC and ACPI timer run on host time; so must the TSC, or the kernel finds its
    // clock sources disagreeing (and a halted guest's TSC would stand still).
    cpu.tsc_clock = TscClock::host(TSC_HZ);
    if let Some(mode) = plan.jit {
        cpu.jit.mode = mode;
    }
    let direct_boot = match &plan.kernel {
        Some(KernelBoot::Direct(d)) => Some(d),
        _ => None,
    };
    // Without firmware to load it again, every reset (power-on included) re-enters the kernel.
    let reset = |board: &mut Board, cpu: &mut Cpu| {
        board.reset(cpu);
        if let Some(d) = direct_boot {
            d.enter(cpu);
        }
    };
    if let Some(d) = direct_boot {
        d.enter(&mut cpu);
    }

    let mut poll = Poll::new().context("mio poll")?;
    let mut events = Events::with_capacity(16);
    if let Some(b) = stdio_backend.as_mut() {
        b.register(poll.registry(), STDIN_TOKEN)
            .context("registering stdin")?;
    }
    let _raw = stdio_backend.as_ref().map(|_| RawTerminal::enter());
    let mut escape = false;
    let mut monitor = Monitor {
        active: false,
        line: Vec::new(),
        out: match stdio_backend.as_ref() {
            Some(b) => b.sink(),
            None => Box::new(NullSink),
        },
    };
    let mut quit = false;
    let mut last_poll = Instant::now();
    let mut a20_open = true;

    let mut pace = SlicePace::new(plan.slice);
    let status = loop {
        let slice = pace.next(clock.next_deadline(), now_ns(), cpu.icount);
        let exit = cpu.run(&mut board, slice);

        // Device work with RAM lent to the devices.
        board.refresh_mappings();
        dma.lend(&mut cpu);
        if board.has_deferred() {
            board.run_deferred();
        }
        clock.advance_to(now_ns());
        dma.give_back(&mut cpu);

        if let Some(max) = plan.max_time
            && start.elapsed() >= max
        {
            let post = board
                .pc
                .post
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .last();
            eprintln!(
                "vireo: time limit reached; POST code {post:#04x}; CPU state:\n{}",
                dump_registers(&mut cpu)
            );
            break 124;
        }
        let signals = board.pc.signals.clone();
        // Only on a change: the CPU drops its translations when the gate moves.
        let a20 = signals.a20();
        if a20 != a20_open {
            a20_open = a20;
            cpu.set_a20(a20);
        }
        if let Some(s) = signals.exit_status() {
            log::info!("guest wrote the test exit port: status {s}");
            break s;
        }
        if board.platform.power.take_poweroff() {
            log::info!("guest powered off (ACPI S5)");
            break 0;
        }
        if exit == RunExit::Shutdown || board.triple_fault {
            board.triple_fault = false;
            eprintln!(
                "vireo: triple fault; CPU state:\n{}",
                dump_registers(&mut cpu)
            );
            if plan.no_reboot {
                break 0;
            }
            reset(&mut board, &mut cpu);
            continue;
        }
        if signals.take_reset() {
            log::info!("guest reset the machine");
            if plan.no_reboot {
                break 0;
            }
            reset(&mut board, &mut cpu);
            continue;
        }

        // Host I/O: a blocking wait when halted, otherwise a periodic non-blocking look.
        let if_set = cpu.rflags() & (1 << 9) != 0;
        let halted = exit == RunExit::Halted
            && !(if_set
                && board
                    .pc
                    .pic
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .interrupt_pending());
        let timeout = if halted {
            let now = now_ns();
            let wait = clock
                .next_deadline()
                .map_or(MAX_SLEEP, |d| Duration::from_nanos(d.saturating_sub(now)));
            let wait = wait.min(MAX_SLEEP);
            Some(if display.is_some() {
                wait.min(curses::REFRESH)
            } else {
                wait
            })
        } else if last_poll.elapsed() >= POLL_INTERVAL {
            Some(Duration::ZERO)
        } else {
            None
        };
        if let Some(timeout) = timeout {
            last_poll = Instant::now();
            if let Some(b) = stdio_backend.as_mut() {
                if let Err(e) = poll.poll(&mut events, Some(timeout))
                    && e.kind() != io::ErrorKind::Interrupted
                {
                    return Err(e).context("polling host I/O");
                }
                if !events.is_empty() {
                    b.handle_ready();
                }
                if b.has_input() || !events.is_empty() {
                    let com1 = board.pc.com1.clone();
                    let i8042 = board.pc.i8042.clone();
                    let to_keyboard = display.is_some();
                    let keys = &mut keys;
                    let cpu = &mut cpu;
                    // Into the guest's keyboard or its first serial port, whichever the
                    // terminal is attached to.
                    let mut guest_input = |byte: u8| {
                        if to_keyboard {
                            let mut kbc = i8042.lock().unwrap_or_else(|e| e.into_inner());
                            for stroke in keys.feed(byte) {
                                for (key, pressed) in stroke.events() {
                                    kbc.key_event(key, pressed);
                                }
                            }
                        } else {
                            com1.lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .receive(&[byte]);
                        }
                    };
                    // Room for one more byte: a keystroke with both modifiers is up to 10
                    // scan-code bytes in the keyboard's 16-byte buffer.
                    let has_room = || {
                        if to_keyboard {
                            i8042
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .keyboard()
                                .pending()
                                <= 4
                        } else {
                            com1.lock().unwrap_or_else(|e| e.into_inner()).rx_space() > 0
                        }
                    };
                    b.pump_input(&mut |bytes| {
                        let mut taken = 0;
                        for &byte in bytes {
                            if !monitor.active && !has_room() {
                                break;
                            }
                            taken += 1;
                            if escape {
                                escape = false;
                                match byte {
                                    b'x' | b'X' => quit = true,
                                    b'c' | b'C' => monitor.toggle(),
                                    ESCAPE if !monitor.active => guest_input(ESCAPE),
                                    _ => {}
                                }
                            } else if byte == ESCAPE {
                                escape = true;
                            } else if monitor.active {
                                if monitor.input(byte, cpu) {
                                    quit = true;
                                }
                            } else {
                                guest_input(byte);
                            }
                        }
                        taken
                    });
                }
            } else if halted {
                std::thread::sleep(timeout);
            }
            if let Some(d) = display.as_mut() {
                // A lone Escape: no sequence followed it within a poll.
                let strokes = if events.is_empty() {
                    keys.flush()
                } else {
                    Vec::new()
                };
                if !strokes.is_empty() {
                    let mut kbc = board.pc.i8042.lock().unwrap_or_else(|e| e.into_inner());
                    for stroke in strokes {
                        for (key, pressed) in stroke.events() {
                            kbc.key_event(key, pressed);
                        }
                    }
                }
                if let Some(vga) = board.platform.vga.as_ref() {
                    d.tick(&vga.lock().unwrap_or_else(|e| e.into_inner()));
                }
            }
            if quit {
                break 0;
            }
        }
    };
    if let Ok(path) = std::env::var("VIREO_JIT_DUMP")
        && let Some((base, code)) = cpu.jit.code_snapshot()
    {
        // For docs/performance.md's profile of emitted code: `perf script` addresses minus
        // `base` index into this file.
        match std::fs::write(&path, code) {
            Ok(()) => log::warn!(
                "jit: code cache ({} bytes at {base:#x}) written to {path}",
                code.len()
            ),
            Err(e) => log::warn!("jit: VIREO_JIT_DUMP {path}: {e}"),
        }
    }
    let jit = cpu.jit.stats;
    log::info!(
        "CPU: {} instructions; JIT ({:?}): {} blocks compiled ({} ops inline, {} called), {} runs of compiled blocks, {} code-cache flushes; links: {} set, {} static ({} undone)",
        cpu.icount,
        cpu.jit.mode,
        jit.compiled,
        jit.inline_ops,
        jit.called_ops,
        jit.entries,
        jit.flushes,
        jit.links,
        jit.static_links,
        jit.static_unlinks
    );
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::SlicePace;

    #[test]
    fn slices_end_near_the_next_deadline_within_their_bounds() {
        let mut p = SlicePace::new(50_000);
        // No speed seen yet: the knob's slice.
        assert_eq!(p.next(Some(1_000_000), 0, 0), 50_000);
        // 100 000 instructions in 100 us: 1000 per us. A deadline 30 us away: 30 000.
        assert_eq!(p.next(Some(130_000), 100_000, 100_000), 30_000);
        // One 1 ms away: 1 000 000, held to four times the knob.
        assert_eq!(p.next(Some(1_200_000), 200_000, 200_000), 200_000);
        // One already due, or no timer armed: a quarter of the knob, or four times it.
        assert_eq!(p.next(Some(250_000), 300_000, 300_000), 12_500);
        assert_eq!(p.next(None, 400_000, 400_000), 200_000);
        // After a halted slice (time passed, no instructions) the speed is unknown: the
        // knob's slice again.
        assert_eq!(p.next(Some(10_000_000), 5_400_000, 400_000), 50_000);
    }
}
