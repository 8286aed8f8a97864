//! qemu-xen's command line, as libxl builds it, parsed into a typed [`DmConfig`].
//!
//! libxl starts the device model (`device_model_override=`) with the arguments it would give
//! qemu-xen (`libxl__build_device_model_args_new`). Vireo accepts that whole command line: what
//! it implements becomes a field of [`DmConfig`]; what it does not implement yet is refused
//! with a [`CmdlineError`] naming the option (libxl copies our stderr to
//! `/var/log/xen/qemu-dm-<name>.log`, where the user finds it); options that only tune
//! something Vireo does not emulate (or that Xen emulates) are logged and ignored, and listed
//! in [`DmConfig::ignored`].
//!
//! Option values use QEMU's `key=value,key=value` syntax: a literal comma inside a value is
//! written `,,`; for the options that have one, the first element may omit its key (`-device
//! VGA,...` means `driver=VGA`); a bare `key` means `key=on` and `nowait` means `wait=off`
//! (QEMU's legacy spellings). A property we do not know is refused, never dropped: a silently
//! ignored property could change what the guest sees. Options may be spelt `-opt` or `--opt`.
//!
//! | option | handling |
//! |---|---|
//! | `-xen-domid N` | [`DmConfig::domid`]; required except for libxl's probe (`-machine none`) |
//! | `-xen-domid-restrict` | [`DmConfig::restrict`] |
//! | `-xen-attach` | refused: attaching to a PV domain's backends is not an HVM device model's job |
//! | `-no-shutdown` | [`DmConfig::no_shutdown`] (libxl always passes it; Vireo never exits on guest poweroff) |
//! | `-chardev socket,id=I,path=P\|fd=N,server=on,wait=off` | a QMP socket when a `-mon` names it |
//! | `-chardev` of any other kind, or one no `-mon` uses (libxl `channel=[...]`) | refused |
//! | `-mon chardev=I,mode=control` | [`DmConfig::qmp`]; `mode=readline` (HMP) refused |
//! | `-qmp unix:P,server=on,wait=off` | legacy spelling of the above |
//! | `-nodefaults`, `-no-user-config` | accepted: Vireo never adds default devices nor reads a config file |
//! | `-name N[,...]` | [`DmConfig::name`] |
//! | `-vnc none` | accepted; any VNC display is refused (set `vnc=0`): Vireo has no VNC server yet |
//! | `-display none`, `-nographic` | accepted; any other display (SDL, GTK) is refused |
//! | `-k MAP` | ignored: the keymap tunes the VNC server, which Vireo has not |
//! | `-serial none\|null\|stdio\|file:P\|unix:P,server=on[,wait=off]` | [`DmConfig::serials`] (one per COM port, in order); other backends (`pty`, `tcp:`, `vc`…) refused |
//! | `-device VGA[,vgamem_mb=N]`, `-vga std\|none` | [`DmConfig::vga`] |
//! | `-device cirrus-vga`, `-vga cirrus` | refused with [`CmdlineError::CirrusVga`], naming `vga="stdvga"` |
//! | `-device ide-hd\|ide-cd,drive=I,bus=ide.B,unit=U` | joins a `-drive if=none,id=I` into [`DmConfig::drives`] |
//! | `-device xen-platform` | adds the Xen platform device to `-machine pc,accel=xen` |
//! | `-device` anything else (`rtl8139`, `e1000`, `qxl-vga`, `ahci`, `lsi53c895a`, USB, sound, `xen-pvdevice`…) | refused |
//! | `-drive file=P,if=ide\|none,index=N,media=disk\|cdrom,format=raw,readonly=on,id=I` | [`DmConfig::drives`]; `cache=` and `aio=` ignored (host-side tuning); formats other than raw refused |
//! | `-boot [order=]ORDER[,...]` | [`DmConfig::boot_order`] |
//! | `-net none` | accepted; any other `-net`, and every `-netdev`, refused (emulated NICs: use a PV `type=vif` NIC) |
//! | `-machine xenfv[,suppress-vmdesc=on][,max-ram-below-4g=B]`, `-machine pc,accel=xen`, `-machine none,accel=xen` | [`DmConfig::machine`]; `suppress-vmdesc` ignored (a QEMU migration-stream detail); `igd-passthru=on` refused |
//! | `-accel xen` | accepted; any other accelerator refused |
//! | `-m [size=]N[K\|M\|G\|T]` | [`DmConfig::ram_mib`] |
//! | `-smp [cpus=]N[,maxcpus=M]` | [`DmConfig::smp`]; topology (`sockets=`…) ignored: the vCPUs are Xen's |
//! | `-no-acpi` | [`DmConfig::acpi`] = false (no PIIX4 PM function) |
//! | `-S` | [`DmConfig::start_paused`] |
//! | `-incoming fd:N` | [`DmConfig::incoming`]; other migration URIs refused |
//! | `-runas U`, `-run-with user=U,chroot=D`, `-chroot D` | [`DmConfig::run_as`] |
//! | `-global PIIX4_PM.disable_s3=…`, `-global PIIX4_PM.disable_s4=…` | ignored: under Xen the ACPI tables (and their sleep states) come from hvmloader |
//! | `-global` anything else | refused |
//! | `-trace …`, `-msg …`, `-D FILE`, `-d ITEMS` | ignored (QEMU's own tracing and logging) |
//! | `-rtc …`, `-cpu …` | ignored: the RTC and the CPUs are Xen's |
//! | `-usb`, `-usbdevice`, `-kernel`, `-initrd`, `-append`, `-spice`, `-soundhw`, `-monitor`, `-daemonize` | refused |
//! | anything else | refused ([`CmdlineError::UnknownOption`]) |
//!
//! The parser checks the command line only; whether the board can provide, say, a second
//! serial port is the board's call.

use std::collections::BTreeSet;
use std::path::PathBuf;

use thiserror::Error;

/// The largest domain id of a real domain (`DOMID_FIRST_RESERVED` is 0x7FF0).
pub const DOMID_MAX: u32 = 0x7FEF;
/// Xen's limit on HVM vCPUs (`HVM_MAX_VCPUS`).
pub const MAX_VCPUS: u32 = 128;
/// IDE channels (primary, secondary) times units per channel (master, slave).
pub const IDE_SLOTS: u32 = 4;

/// Why a command line was refused. Every variant names the option at fault.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CmdlineError {
    #[error("option {option} needs a value")]
    MissingValue { option: String },
    #[error("unknown option {option}")]
    UnknownOption { option: String },
    #[error("{option} {value}: not supported by Vireo yet: {why}")]
    Unsupported {
        option: String,
        value: String,
        why: String,
    },
    #[error("{option} {value}: {why}")]
    Invalid {
        option: String,
        value: String,
        why: String,
    },
    #[error(
        "-device {value}: Cirrus VGA (libxl's default vga) is not emulated by Vireo yet; \
         set vga=\"stdvga\" (or vga=\"none\") in the guest's xl config"
    )]
    CirrusVga { value: String },
    #[error("{option} is required")]
    Missing { option: String },
}

impl CmdlineError {
    /// The option the error is about (`-device`, `-xen-domid`…).
    pub fn option(&self) -> &str {
        match self {
            CmdlineError::MissingValue { option }
            | CmdlineError::UnknownOption { option }
            | CmdlineError::Unsupported { option, .. }
            | CmdlineError::Invalid { option, .. }
            | CmdlineError::Missing { option } => option,
            CmdlineError::CirrusVga { .. } => "-device",
        }
    }
}

fn unsupported(option: &str, value: &str, why: impl Into<String>) -> CmdlineError {
    CmdlineError::Unsupported {
        option: option.to_string(),
        value: value.to_string(),
        why: why.into(),
    }
}

fn invalid(option: &str, value: &str, why: impl Into<String>) -> CmdlineError {
    CmdlineError::Invalid {
        option: option.to_string(),
        value: value.to_string(),
        why: why.into(),
    }
}

/// Where a QMP monitor listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QmpListen {
    /// A socket path we bind (libxl's normal case: `/var/run/xen/qmp-libxl-<domid>`).
    Path(PathBuf),
    /// A listening socket libxl created and passed as this descriptor (`dm_restrict=1`).
    Fd(i32),
}

/// One QMP monitor: a `-chardev socket,...,server=on` named by a `-mon ...,mode=control`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpSocket {
    /// The chardev id (`libxl-cmd`, `libxenstat-cmd`), reported by `query-chardev`.
    pub id: String,
    pub listen: QmpListen,
}

/// The host side of one emulated serial port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialBackend {
    /// The port exists; output is discarded, no input (`null`).
    Null,
    /// Output appended to a file (`file:PATH`).
    File(PathBuf),
    /// The DM's stdin/stdout (`stdio`); under libxl stdout is the qemu-dm log.
    Stdio,
    /// A listening Unix socket (`unix:PATH,server=on`); `wait` = block start-up until a
    /// client connects.
    UnixServer { path: PathBuf, wait: bool },
}

/// The display adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vga {
    /// `vga="none"`: no display adapter.
    None,
    /// `vga="stdvga"`: the standard VGA with Bochs VBE extensions, `vgamem_mb` MiB of VRAM.
    Std { vgamem_mb: u32 },
}

/// QEMU's default VRAM for `-device VGA` without `vgamem_mb`.
pub const STD_VGA_DEFAULT_MB: u32 = 16;

/// What an IDE drive presents to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    Disk,
    Cdrom,
}

/// One IDE drive on the PIIX3 IDE controller. The image format is always raw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdeDrive {
    /// 0 = primary channel, 1 = secondary.
    pub bus: u8,
    /// 0 = master, 1 = slave.
    pub unit: u8,
    pub media: Media,
    /// The image; `None` is an empty CD-ROM drive.
    pub file: Option<PathBuf>,
    pub read_only: bool,
    /// The drive's id (libxl names CD-ROMs `ide-<devno>` and changes media by that id).
    pub id: Option<String>,
}

impl IdeDrive {
    /// QEMU's `index=` numbering: bus * 2 + unit.
    pub fn index(&self) -> u32 {
        u32::from(self.bus) * 2 + u32::from(self.unit)
    }
}

/// The machine type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineKind {
    /// `xenfv`: i440FX + PIIX3 + the Xen platform PCI device.
    Xenfv,
    /// `pc,accel=xen` (libxl with `xen_platform_pci=0`): the same without the platform device.
    PcXen,
    /// `none,accel=xen`: libxl's probe instance (no guest, QMP only).
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Machine {
    pub kind: MachineKind,
    /// `max-ram-below-4g=`: the top of guest RAM below 4 GiB, in bytes.
    pub max_ram_below_4g: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Smp {
    /// vCPUs online at start.
    pub cpus: u32,
    /// vCPUs the domain may ever have; the ioreq server binds one event channel per vCPU up
    /// to this count.
    pub max_cpus: u32,
}

/// `-incoming`: restore device state at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// Read the saved device state from this inherited descriptor (`fd:N`).
    Fd(i32),
}

impl Incoming {
    /// Open the saved device state. libxl passes a regular file it opened (checked on the
    /// testbed: `xl restore` gave fd 15), so reopening it through `/proc/self/fd` reads the
    /// same bytes without taking ownership of a raw descriptor (which needs `unsafe`).
    pub fn open(&self) -> std::io::Result<std::fs::File> {
        match self {
            Incoming::Fd(n) => std::fs::File::open(format!("/proc/self/fd/{n}")),
        }
    }
}

/// De-privileging requested by libxl (`dm_restrict=1`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunAs {
    pub user: Option<String>,
    pub chroot: Option<PathBuf>,
}

/// Everything the command line asked for that Vireo acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmConfig {
    /// The guest's domain id; `None` only for the probe machine.
    pub domid: Option<u32>,
    pub name: Option<String>,
    pub machine: Machine,
    /// Whether the Xen platform PCI device is present (always with `xenfv`).
    pub xen_platform: bool,
    /// Guest RAM in MiB (`-m`), as libxl computes it (`maxmem - videoram`).
    pub ram_mib: Option<u64>,
    pub smp: Smp,
    /// QMP monitors, in command-line order.
    pub qmp: Vec<QmpSocket>,
    /// Serial ports COM1, COM2… in order.
    pub serials: Vec<SerialBackend>,
    pub vga: Vga,
    /// IDE drives, sorted by index.
    pub drives: Vec<IdeDrive>,
    /// Boot order letters (`c` disk, `d` CD-ROM, `a` floppy, `n` network); libxl's default is `cda`.
    pub boot_order: Option<String>,
    /// Whether the PIIX4 ACPI PM function is present (`-no-acpi` removes it).
    pub acpi: bool,
    /// `-S`: stay paused after start-up until QMP `cont`.
    pub start_paused: bool,
    pub incoming: Option<Incoming>,
    pub no_shutdown: bool,
    /// `-xen-domid-restrict`: drop the privilege to touch other domains once set up.
    pub restrict: bool,
    pub run_as: Option<RunAs>,
    /// Options that were accepted but have no effect (already logged), for diagnostics.
    pub ignored: Vec<String>,
}

impl DmConfig {
    /// Parse the arguments after the program name.
    pub fn parse<I, S>(args: I) -> Result<DmConfig, CmdlineError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let args: Vec<String> = args.into_iter().map(|a| a.as_ref().to_string()).collect();
        Parser::default().run(&args)
    }

    /// Parse a whole `argv`, skipping `argv[0]`.
    pub fn parse_argv<I, S>(argv: I) -> Result<DmConfig, CmdlineError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        DmConfig::parse(argv.into_iter().skip(1))
    }

    /// Whether this is libxl's probe instance (`-machine none`), which runs no guest.
    pub fn is_probe(&self) -> bool {
        self.machine.kind == MachineKind::None
    }
}

/// A QEMU option value split into `key=value` items.
struct Opts {
    option: String,
    raw: String,
    items: Vec<(String, String)>,
}

impl Opts {
    /// Split `raw` at single commas (`,,` is a literal comma). With `implied`, a first item
    /// without `=` is the value of that key.
    fn parse(option: &str, raw: &str, implied: Option<&str>) -> Result<Opts, CmdlineError> {
        let mut parts = Vec::new();
        let mut cur = String::new();
        let mut chars = raw.chars().peekable();
        while let Some(c) = chars.next() {
            if c == ',' {
                if chars.peek() == Some(&',') {
                    chars.next();
                    cur.push(',');
                } else {
                    parts.push(std::mem::take(&mut cur));
                }
            } else {
                cur.push(c);
            }
        }
        parts.push(cur);
        let mut items = Vec::with_capacity(parts.len());
        for (i, part) in parts.into_iter().enumerate() {
            if let Some((k, v)) = part.split_once('=') {
                if k.is_empty() {
                    return Err(invalid(option, raw, "empty property name"));
                }
                items.push((k.to_string(), v.to_string()));
            } else if i == 0 && implied.is_some() {
                if part.is_empty() {
                    return Err(invalid(option, raw, "empty value"));
                }
                items.push((implied.unwrap_or_default().to_string(), part));
            } else if part.is_empty() {
                // A trailing comma: QEMU tolerates it.
                continue;
            } else if part == "nowait" {
                items.push(("wait".to_string(), "off".to_string()));
            } else {
                items.push((part, "on".to_string()));
            }
        }
        Ok(Opts {
            option: option.to_string(),
            raw: raw.to_string(),
            items,
        })
    }

    /// Remove and return the last value of `key` (QEMU keeps the last of repeated keys).
    fn take(&mut self, key: &str) -> Option<String> {
        let mut found = None;
        self.items.retain(|(k, v)| {
            if k == key {
                found = Some(v.clone());
                false
            } else {
                true
            }
        });
        found
    }

    fn take_bool(&mut self, key: &str) -> Result<Option<bool>, CmdlineError> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => parse_bool(&v)
                .map(Some)
                .ok_or_else(|| self.invalid(format!("{key}={v}: expected on or off"))),
        }
    }

    fn take_u32(&mut self, key: &str) -> Result<Option<u32>, CmdlineError> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => parse_u32(&v)
                .map(Some)
                .ok_or_else(|| self.invalid(format!("{key}={v}: expected a number"))),
        }
    }

    fn invalid(&self, why: impl Into<String>) -> CmdlineError {
        invalid(&self.option, &self.raw, why)
    }

    fn unsupported(&self, why: impl Into<String>) -> CmdlineError {
        unsupported(&self.option, &self.raw, why)
    }

    /// Refuse any property nobody took.
    fn finish(self) -> Result<(), CmdlineError> {
        match self.items.first() {
            None => Ok(()),
            Some((k, v)) => Err(unsupported(
                &self.option,
                &self.raw,
                format!("property {k}={v} is not supported"),
            )),
        }
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "on" | "yes" | "true" | "y" => Some(true),
        "off" | "no" | "false" | "n" => Some(false),
        _ => None,
    }
}

fn parse_u32(v: &str) -> Option<u32> {
    if let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16).ok()
    } else {
        v.parse().ok()
    }
}

/// A size with an optional K/M/G/T suffix; `default_shift` applies to a bare number (QEMU's
/// `-m` counts MiB, `max-ram-below-4g` bytes).
fn parse_size(v: &str, default_shift: u32) -> Option<u64> {
    let (digits, shift) = match v.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'B' => 0,
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return None,
            };
            (&v[..i], shift)
        }
        _ => (v, default_shift),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1u64 << shift)
}

/// A chardev as declared, before `-mon` says what it is for.
#[derive(Debug, Clone)]
enum ChardevSpec {
    ServerSocket(QmpListen),
}

#[derive(Debug, Clone)]
struct PendingChardev {
    id: String,
    raw: String,
    spec: ChardevSpec,
}

/// A `-drive if=none` waiting for the `-device ide-hd/ide-cd` that places it.
#[derive(Debug, Clone)]
struct LooseDrive {
    id: String,
    file: Option<PathBuf>,
    read_only: bool,
    media: Option<Media>,
    raw: String,
}

/// A `-drive if=ide` without `index=`, placed after the explicit ones.
#[derive(Debug, Clone)]
struct UnplacedDrive {
    drive: IdeDrive,
    raw: String,
}

#[derive(Default)]
struct Parser {
    domid: Option<u32>,
    name: Option<String>,
    machine: Option<Machine>,
    accel_xen: bool,
    explicit_platform: bool,
    ram_mib: Option<u64>,
    smp: Option<Smp>,
    chardevs: Vec<PendingChardev>,
    monitors: Vec<(String, String)>,
    legacy_qmp: Vec<QmpSocket>,
    serials: Vec<SerialBackend>,
    vga: Option<(Vga, String)>,
    drives: Vec<IdeDrive>,
    unplaced: Vec<UnplacedDrive>,
    loose: Vec<LooseDrive>,
    boot_order: Option<String>,
    no_acpi: bool,
    start_paused: bool,
    incoming: Option<Incoming>,
    no_shutdown: bool,
    restrict: bool,
    run_as: Option<RunAs>,
    ignored: Vec<String>,
}

/// Options that take a value.
const WITH_VALUE: &[&str] = &[
    "-xen-domid",
    "-chardev",
    "-mon",
    "-qmp",
    "-name",
    "-vnc",
    "-display",
    "-k",
    "-serial",
    "-device",
    "-vga",
    "-boot",
    "-net",
    "-netdev",
    "-machine",
    "-M",
    "-accel",
    "-m",
    "-drive",
    "-smp",
    "-incoming",
    "-runas",
    "-run-with",
    "-chroot",
    "-global",
    "-trace",
    "-msg",
    "-D",
    "-d",
    "-rtc",
    "-cpu",
    "-usbdevice",
    "-kernel",
    "-initrd",
    "-append",
    "-spice",
    "-soundhw",
    "-monitor",
];

impl Parser {
    fn run(mut self, args: &[String]) -> Result<DmConfig, CmdlineError> {
        let mut i = 0;
        while i < args.len() {
            let arg = &args[i];
            i += 1;
            let opt = match arg.strip_prefix("--") {
                Some(rest) if !rest.is_empty() => format!("-{rest}"),
                _ => arg.clone(),
            };
            if !opt.starts_with('-') || opt == "-" {
                // QEMU reads a lone word as a disk image (`-hda`); libxl never passes one.
                return Err(unsupported(
                    "(image)",
                    arg,
                    "a bare disk image argument; use -drive",
                ));
            }
            let value = if WITH_VALUE.contains(&opt.as_str()) {
                let v = args
                    .get(i)
                    .ok_or_else(|| CmdlineError::MissingValue {
                        option: opt.clone(),
                    })?
                    .clone();
                i += 1;
                Some(v)
            } else {
                None
            };
            self.option(&opt, value.as_deref().unwrap_or_default())?;
        }
        self.finish()
    }

    fn ignore(&mut self, option: &str, value: &str, why: &str) {
        let shown = if value.is_empty() {
            option.to_string()
        } else {
            format!("{option} {value}")
        };
        log::info!("ignoring {shown}: {why}");
        self.ignored.push(shown);
    }

    fn option(&mut self, opt: &str, v: &str) -> Result<(), CmdlineError> {
        match opt {
            "-xen-domid" => {
                let domid = parse_u32(v)
                    .filter(|d| (1..=DOMID_MAX).contains(d))
                    .ok_or_else(|| {
                        invalid(
                            opt,
                            v,
                            format!("expected a guest domain id, 1 to {DOMID_MAX}"),
                        )
                    })?;
                self.domid = Some(domid);
            }
            "-xen-domid-restrict" => self.restrict = true,
            "-xen-attach" => {
                return Err(unsupported(
                    opt,
                    "",
                    "attaching to a PV domain's backends is not an HVM device model's job",
                ));
            }
            "-no-shutdown" => self.no_shutdown = true,
            "-chardev" => self.chardev(v)?,
            "-mon" => self.mon(v)?,
            "-qmp" => self.legacy_qmp(v)?,
            "-nodefaults" | "-no-user-config" => {}
            "-name" => {
                let mut o = Opts::parse(opt, v, Some("guest"))?;
                self.name = o.take("guest");
                // Host-side niceties: thread and process names.
                o.take("process");
                o.take("debug-threads");
                o.finish()?;
            }
            "-vnc" => {
                if v != "none" {
                    return Err(unsupported(
                        opt,
                        v,
                        "Vireo has no VNC server yet; set vnc=0 in the guest's xl config",
                    ));
                }
            }
            "-display" => {
                let mut o = Opts::parse(opt, v, Some("type"))?;
                if o.take("type").as_deref() != Some("none") {
                    return Err(unsupported(
                        opt,
                        v,
                        "only -display none; set sdl=0 in the guest's xl config",
                    ));
                }
                o.finish()?;
            }
            "-nographic" => {}
            "-k" => self.ignore(
                opt,
                v,
                "the keymap only tunes a VNC server, which Vireo has not",
            ),
            "-serial" => self.serial(v)?,
            "-device" => self.device(v)?,
            "-vga" => {
                let vga = match v {
                    "std" => Vga::Std {
                        vgamem_mb: STD_VGA_DEFAULT_MB,
                    },
                    "none" => Vga::None,
                    "cirrus" => {
                        return Err(CmdlineError::CirrusVga {
                            value: format!("(-vga {v})"),
                        });
                    }
                    _ => return Err(unsupported(opt, v, "only -vga std or -vga none")),
                };
                self.set_vga(vga, &format!("-vga {v}"))?;
            }
            "-boot" => {
                let mut o = Opts::parse(opt, v, Some("order"))?;
                if let Some(order) = o.take("order") {
                    if order.is_empty() || !order.chars().all(|c| "abcdnp".contains(c)) {
                        return Err(invalid(opt, v, "boot order letters are a, b, c, d, n"));
                    }
                    self.boot_order = Some(order);
                }
                // Boot menu and splash belong to the firmware hvmloader loads, not to us.
                for key in [
                    "once",
                    "menu",
                    "splash",
                    "splash-time",
                    "reboot-timeout",
                    "strict",
                ] {
                    if let Some(val) = o.take(key) {
                        self.ignore(opt, &format!("{key}={val}"), "a firmware boot-menu setting");
                    }
                }
                o.finish()?;
            }
            "-net" => {
                if v != "none" {
                    return Err(unsupported(
                        opt,
                        v,
                        "emulated network cards are not available yet; give the guest a PV NIC \
                         (type=vif in its vif= entry)",
                    ));
                }
            }
            "-netdev" => {
                return Err(unsupported(
                    opt,
                    v,
                    "emulated network cards are not available yet; give the guest a PV NIC \
                     (type=vif in its vif= entry)",
                ));
            }
            "-machine" | "-M" => self.machine(opt, v)?,
            "-accel" => {
                let mut o = Opts::parse(opt, v, Some("accel"))?;
                if o.take("accel").as_deref() != Some("xen") {
                    return Err(unsupported(opt, v, "Vireo is a Xen device model: only xen"));
                }
                o.finish()?;
                self.accel_xen = true;
            }
            "-m" => {
                let mut o = Opts::parse(opt, v, Some("size"))?;
                let size = o.take("size").ok_or_else(|| o.invalid("no size"))?;
                let bytes = parse_size(&size, 20)
                    .filter(|b| *b >= 1 << 20)
                    .ok_or_else(|| o.invalid("expected a RAM size such as 1016 (MiB) or 2G"))?;
                o.finish()?;
                self.ram_mib = Some(bytes >> 20);
            }
            "-drive" => self.drive(v)?,
            "-smp" => self.smp(v)?,
            "-no-acpi" => self.no_acpi = true,
            "-S" => self.start_paused = true,
            "-incoming" => {
                let fd = v
                    .strip_prefix("fd:")
                    .and_then(|n| n.parse::<i32>().ok())
                    .filter(|n| *n >= 0);
                match fd {
                    Some(fd) => self.incoming = Some(Incoming::Fd(fd)),
                    None => {
                        return Err(unsupported(
                            opt,
                            v,
                            "only fd:N (the device state libxl opened for us)",
                        ));
                    }
                }
            }
            "-runas" => {
                self.run_as.get_or_insert_with(RunAs::default).user = Some(v.to_string());
            }
            "-chroot" => {
                self.run_as.get_or_insert_with(RunAs::default).chroot = Some(PathBuf::from(v));
            }
            "-run-with" => {
                let mut o = Opts::parse(opt, v, None)?;
                let user = o.take("user");
                let chroot = o.take("chroot").map(PathBuf::from);
                o.finish()?;
                let r = self.run_as.get_or_insert_with(RunAs::default);
                if user.is_some() {
                    r.user = user;
                }
                if chroot.is_some() {
                    r.chroot = chroot;
                }
            }
            "-global" => {
                let (prop, _) = v
                    .split_once('=')
                    .ok_or_else(|| invalid(opt, v, "expected DRIVER.PROPERTY=VALUE"))?;
                match prop {
                    "PIIX4_PM.disable_s3" | "PIIX4_PM.disable_s4" => self.ignore(
                        opt,
                        v,
                        "under Xen the ACPI tables and their sleep states come from hvmloader",
                    ),
                    _ => return Err(unsupported(opt, v, "this global property is not known")),
                }
            }
            "-trace" | "-msg" | "-D" | "-d" => self.ignore(
                opt,
                v,
                "QEMU's own tracing and logging; Vireo uses RUST_LOG",
            ),
            "-rtc" => self.ignore(opt, v, "the RTC is Xen's"),
            "-cpu" => self.ignore(opt, v, "the vCPUs are Xen's"),
            "-usb" | "-usbdevice" => {
                return Err(unsupported(
                    opt,
                    v,
                    "USB is not emulated yet; remove usb= and usbdevice= from the guest's xl config",
                ));
            }
            "-kernel" | "-initrd" | "-append" => {
                return Err(unsupported(opt, v, "direct kernel boot is not available"));
            }
            "-spice" => return Err(unsupported(opt, v, "SPICE is not available")),
            "-soundhw" => return Err(unsupported(opt, v, "sound is not emulated")),
            "-monitor" => {
                return Err(unsupported(opt, v, "the human monitor (HMP); use QMP"));
            }
            "-daemonize" => {
                return Err(unsupported(opt, v, "libxl runs the device model itself"));
            }
            _ => {
                return Err(CmdlineError::UnknownOption {
                    option: opt.to_string(),
                });
            }
        }
        Ok(())
    }

    fn chardev(&mut self, v: &str) -> Result<(), CmdlineError> {
        let opt = "-chardev";
        let mut o = Opts::parse(opt, v, Some("backend"))?;
        let backend = o.take("backend").ok_or_else(|| o.invalid("no backend"))?;
        let id = o.take("id").ok_or_else(|| o.invalid("no id="))?;
        if self.chardevs.iter().any(|c| c.id == id) {
            return Err(o.invalid(format!("duplicate chardev id {id}")));
        }
        if backend != "socket" {
            return Err(o.unsupported(format!(
                "{backend} chardevs (libxl channel=[...]) are not available"
            )));
        }
        let path = o.take("path");
        let fd = o.take("fd");
        let server = o.take_bool("server")?.unwrap_or(false);
        let wait = o.take_bool("wait")?.unwrap_or(true);
        // A listening socket that nobody waits on: the socket is a host detail.
        o.take("nodelay");
        o.finish()?;
        if !server {
            return Err(unsupported(opt, v, "only server=on sockets"));
        }
        if wait {
            return Err(unsupported(
                opt,
                v,
                "a server that waits for its first client (wait=on); use wait=off",
            ));
        }
        let listen = match (path, fd) {
            (Some(p), None) if !p.is_empty() => QmpListen::Path(PathBuf::from(p)),
            (None, Some(fd)) => match fd.parse::<i32>() {
                Ok(n) if n >= 0 => QmpListen::Fd(n),
                _ => return Err(invalid(opt, v, format!("fd={fd}: expected a descriptor"))),
            },
            _ => {
                return Err(invalid(
                    opt,
                    v,
                    "a socket needs exactly one of path= or fd=",
                ));
            }
        };
        self.chardevs.push(PendingChardev {
            id,
            raw: v.to_string(),
            spec: ChardevSpec::ServerSocket(listen),
        });
        Ok(())
    }

    fn mon(&mut self, v: &str) -> Result<(), CmdlineError> {
        let mut o = Opts::parse("-mon", v, Some("chardev"))?;
        let chardev = o.take("chardev").ok_or_else(|| o.invalid("no chardev="))?;
        let mode = o.take("mode").unwrap_or_else(|| "readline".to_string());
        // Pretty-printing only changes whitespace in replies.
        o.take_bool("pretty")?;
        o.finish()?;
        if mode != "control" {
            return Err(unsupported(
                "-mon",
                v,
                "only mode=control (QMP); the human monitor is not available",
            ));
        }
        self.monitors.push((chardev, v.to_string()));
        Ok(())
    }

    fn legacy_qmp(&mut self, v: &str) -> Result<(), CmdlineError> {
        let opt = "-qmp";
        let Some(rest) = v.strip_prefix("unix:") else {
            return Err(unsupported(opt, v, "only unix:PATH,server=on,wait=off"));
        };
        let mut o = Opts::parse(opt, rest, Some("path"))?;
        let path = o.take("path").filter(|p| !p.is_empty());
        let server = o.take_bool("server")?.unwrap_or(false);
        let wait = o.take_bool("wait")?.unwrap_or(true);
        o.finish()?;
        let (Some(path), true, false) = (path, server, wait) else {
            return Err(unsupported(opt, v, "only unix:PATH,server=on,wait=off"));
        };
        let n = self.legacy_qmp.len();
        self.legacy_qmp.push(QmpSocket {
            id: format!("compat_monitor{n}"),
            listen: QmpListen::Path(PathBuf::from(path)),
        });
        Ok(())
    }

    fn serial(&mut self, v: &str) -> Result<(), CmdlineError> {
        let opt = "-serial";
        let backend = if v == "none" {
            // No port for this index (and, in QEMU, no default port either).
            return Ok(());
        } else if v == "null" {
            SerialBackend::Null
        } else if v == "stdio" {
            SerialBackend::Stdio
        } else if let Some(path) = v.strip_prefix("file:") {
            if path.is_empty() {
                return Err(invalid(opt, v, "no file name"));
            }
            SerialBackend::File(PathBuf::from(path))
        } else if let Some(rest) = v.strip_prefix("unix:") {
            let mut o = Opts::parse(opt, rest, Some("path"))?;
            let path = o.take("path").filter(|p| !p.is_empty());
            let server = o.take_bool("server")?.unwrap_or(false);
            let wait = o.take_bool("wait")?.unwrap_or(true);
            o.finish()?;
            match (path, server) {
                (Some(path), true) => SerialBackend::UnixServer {
                    path: PathBuf::from(path),
                    wait,
                },
                _ => return Err(unsupported(opt, v, "only unix:PATH,server=on sockets")),
            }
        } else {
            let why = if v == "pty" {
                "a pseudo-terminal serial port is not available yet; use serial=\"file:PATH\" \
                 or serial=\"unix:PATH,server=on,wait=off\""
            } else {
                "this serial backend is not available; use file:PATH, unix:PATH,server=on, \
                 stdio, null or none"
            };
            return Err(unsupported(opt, v, why));
        };
        self.serials.push(backend);
        Ok(())
    }

    fn set_vga(&mut self, vga: Vga, from: &str) -> Result<(), CmdlineError> {
        if let Some((_, earlier)) = &self.vga {
            return Err(invalid(
                from.split(' ').next().unwrap_or("-device"),
                from,
                format!("a display adapter was already given ({earlier})"),
            ));
        }
        self.vga = Some((vga, from.to_string()));
        Ok(())
    }

    fn device(&mut self, v: &str) -> Result<(), CmdlineError> {
        let opt = "-device";
        let mut o = Opts::parse(opt, v, Some("driver"))?;
        let driver = o.take("driver").ok_or_else(|| o.invalid("no driver"))?;
        match driver.as_str() {
            "VGA" => {
                let mb = o.take_u32("vgamem_mb")?.unwrap_or(STD_VGA_DEFAULT_MB);
                if !(1..=512).contains(&mb) {
                    return Err(o.invalid("vgamem_mb must be 1 to 512"));
                }
                o.take("id");
                o.finish()?;
                self.set_vga(Vga::Std { vgamem_mb: mb }, &format!("-device {v}"))?;
            }
            "cirrus-vga" => {
                return Err(CmdlineError::CirrusVga {
                    value: v.to_string(),
                });
            }
            "xen-platform" => {
                o.take("id");
                o.finish()?;
                if self.explicit_platform {
                    return Err(invalid(opt, v, "the Xen platform device was already given"));
                }
                self.explicit_platform = true;
            }
            "ide-hd" | "ide-cd" => {
                let media = if driver == "ide-cd" {
                    Media::Cdrom
                } else {
                    Media::Disk
                };
                let drive_id = o.take("drive");
                let bus = o.take("bus");
                let unit = o.take_u32("unit")?;
                o.take("id");
                o.finish()?;
                let bus = match bus.as_deref() {
                    Some("ide.0") => 0u8,
                    Some("ide.1") => 1u8,
                    _ => {
                        return Err(unsupported(
                            opt,
                            v,
                            "only bus=ide.0 or bus=ide.1 (the PIIX3 IDE channels)",
                        ));
                    }
                };
                let unit = match unit {
                    Some(u @ 0..=1) => u as u8,
                    None => 0,
                    Some(_) => return Err(invalid(opt, v, "unit must be 0 or 1")),
                };
                let drive = match drive_id {
                    Some(id) => {
                        let pos = self.loose.iter().position(|d| d.id == id).ok_or_else(|| {
                            invalid(opt, v, format!("no -drive if=none,id={id} before it"))
                        })?;
                        let d = self.loose.remove(pos);
                        if d.media.is_some_and(|m| m != media) {
                            return Err(invalid(
                                opt,
                                v,
                                format!("the media= of drive {id} ({}) disagrees", d.raw),
                            ));
                        }
                        IdeDrive {
                            bus,
                            unit,
                            media,
                            file: d.file,
                            read_only: d.read_only || media == Media::Cdrom,
                            id: Some(d.id),
                        }
                    }
                    None if media == Media::Cdrom => IdeDrive {
                        bus,
                        unit,
                        media,
                        file: None,
                        read_only: true,
                        id: None,
                    },
                    None => return Err(invalid(opt, v, "a hard disk needs drive=")),
                };
                self.place_drive(drive, v)?;
            }
            "cirrus-vga-legacy" | "qxl-vga" | "qxl" | "virtio-vga" | "bochs-display" => {
                return Err(o.unsupported("only VGA (vga=\"stdvga\") or none"));
            }
            "rtl8139" | "e1000" | "e1000e" | "ne2k_pci" | "pcnet" | "virtio-net-pci" => {
                return Err(o.unsupported(
                    "emulated network cards are not available yet; give the guest a PV NIC \
                     (type=vif in its vif= entry)",
                ));
            }
            "ahci" | "ide-drive" | "lsi53c895a" | "scsi-hd" | "scsi-cd" => {
                return Err(o.unsupported(
                    "only IDE disks on the PIIX3 controller (hdtype=ahci and sd* disks are not \
                     available)",
                ));
            }
            "xen-pvdevice" => {
                return Err(o.unsupported(
                    "the XenServer vendor device (xen_platform_pci vendor device) is not available",
                ));
            }
            "xen-pci-passthrough" => {
                return Err(o.unsupported("PCI pass-through is not available"));
            }
            d if d.contains("usb") => {
                return Err(o.unsupported(
                    "USB is not emulated yet; remove usb= and usbdevice= from the guest's xl config",
                ));
            }
            "intel-hda" | "hda-duplex" | "hda-output" | "ac97" | "es1370" | "sb16" => {
                return Err(o.unsupported("sound is not emulated"));
            }
            _ => return Err(o.unsupported(format!("device {driver} is not emulated"))),
        }
        Ok(())
    }

    fn place_drive(&mut self, drive: IdeDrive, raw: &str) -> Result<(), CmdlineError> {
        if let Some(other) = self
            .drives
            .iter()
            .find(|d| d.bus == drive.bus && d.unit == drive.unit)
        {
            return Err(invalid(
                "-drive",
                raw,
                format!(
                    "IDE bus {} unit {} is already taken by {}",
                    drive.bus,
                    drive.unit,
                    other
                        .file
                        .as_ref()
                        .map(|f| f.display().to_string())
                        .unwrap_or_else(|| "an empty CD-ROM drive".to_string())
                ),
            ));
        }
        self.drives.push(drive);
        Ok(())
    }

    fn drive(&mut self, v: &str) -> Result<(), CmdlineError> {
        let opt = "-drive";
        let mut o = Opts::parse(opt, v, None)?;
        let file = o.take("file").filter(|f| !f.is_empty()).map(PathBuf::from);
        let iface = o.take("if").unwrap_or_else(|| "ide".to_string());
        let index = o.take_u32("index")?;
        let media = match o.take("media").as_deref() {
            None => None,
            Some("disk") => Some(Media::Disk),
            Some("cdrom") => Some(Media::Cdrom),
            Some(m) => return Err(o.invalid(format!("media={m}: expected disk or cdrom"))),
        };
        let format = o.take("format");
        let read_only = o.take_bool("readonly")?.unwrap_or(false);
        let id = o.take("id");
        for key in ["cache", "aio", "discard", "detect-zeroes"] {
            if let Some(val) = o.take(key) {
                self.ignore(opt, &format!("{key}={val}"), "host-side I/O tuning");
            }
        }
        if let Some(snap) = o.take_bool("snapshot")?
            && snap
        {
            return Err(o.unsupported("snapshot=on (temporary overlays) is not available"));
        }
        o.finish()?;
        match format.as_deref() {
            None | Some("raw") => {}
            Some(f) => {
                return Err(unsupported(
                    opt,
                    v,
                    format!("format={f}: only raw images; convert it or use a PV disk"),
                ));
            }
        }
        if format.is_none() && file.is_some() {
            log::info!("-drive {v}: no format= given, reading the image as raw");
        }
        if file.is_none() && media != Some(Media::Cdrom) && iface != "none" {
            return Err(invalid(opt, v, "a disk needs file="));
        }
        match iface.as_str() {
            "ide" => {
                let media = media.unwrap_or(Media::Disk);
                let drive = IdeDrive {
                    bus: 0,
                    unit: 0,
                    media,
                    file,
                    read_only: read_only || media == Media::Cdrom,
                    id,
                };
                match index {
                    Some(n) if n < IDE_SLOTS => self.place_drive(
                        IdeDrive {
                            bus: (n / 2) as u8,
                            unit: (n % 2) as u8,
                            ..drive
                        },
                        v,
                    )?,
                    Some(_) => {
                        return Err(unsupported(
                            opt,
                            v,
                            "index must be 0 to 3: only four IDE drives are emulated \
                             (libxl gives further disks to PV drivers only)",
                        ));
                    }
                    None => self.unplaced.push(UnplacedDrive {
                        drive,
                        raw: v.to_string(),
                    }),
                }
            }
            "none" => {
                let id = id.ok_or_else(|| invalid(opt, v, "if=none needs id="))?;
                if index.is_some() {
                    return Err(invalid(opt, v, "index= has no meaning with if=none"));
                }
                self.loose.push(LooseDrive {
                    id,
                    file,
                    read_only,
                    media,
                    raw: v.to_string(),
                });
            }
            other => {
                return Err(unsupported(
                    opt,
                    v,
                    format!("if={other}: only IDE drives (if=ide, or if=none with -device ide-*)"),
                ));
            }
        }
        Ok(())
    }

    fn smp(&mut self, v: &str) -> Result<(), CmdlineError> {
        let opt = "-smp";
        let mut o = Opts::parse(opt, v, Some("cpus"))?;
        let cpus = o.take_u32("cpus")?;
        let max = o.take_u32("maxcpus")?;
        for key in ["sockets", "dies", "clusters", "cores", "threads"] {
            if let Some(val) = o.take(key) {
                self.ignore(opt, &format!("{key}={val}"), "the vCPU topology is Xen's");
            }
        }
        o.finish()?;
        let max = max.or(cpus).unwrap_or(1);
        let cpus = cpus.unwrap_or(max);
        if cpus == 0 || max > MAX_VCPUS || cpus > max {
            return Err(invalid(
                opt,
                v,
                format!("need 1 <= cpus <= maxcpus <= {MAX_VCPUS}"),
            ));
        }
        self.smp = Some(Smp {
            cpus,
            max_cpus: max,
        });
        Ok(())
    }

    fn machine(&mut self, opt: &str, v: &str) -> Result<(), CmdlineError> {
        let mut o = Opts::parse(opt, v, Some("type"))?;
        let kind = match o.take("type").as_deref() {
            Some("xenfv" | "xenfv-4.2" | "xenfv-3.1") => Some(MachineKind::Xenfv),
            Some("pc") => Some(MachineKind::PcXen),
            Some("none") => Some(MachineKind::None),
            Some(t) if t.starts_with("pc-i440fx") => Some(MachineKind::PcXen),
            Some(t) => {
                return Err(o.unsupported(format!(
                    "machine {t}: only xenfv, pc,accel=xen or none,accel=xen"
                )));
            }
            None => self.machine.map(|m| m.kind),
        };
        match o.take("accel").as_deref() {
            None => {}
            Some("xen") => self.accel_xen = true,
            Some(a) => {
                return Err(o.unsupported(format!(
                    "accel={a}: Vireo is a Xen device model: only accel=xen"
                )));
            }
        }
        if let Some(sv) = o.take("suppress-vmdesc") {
            self.ignore(
                opt,
                &format!("suppress-vmdesc={sv}"),
                "a QEMU migration-stream detail",
            );
        }
        let below = match o.take("max-ram-below-4g") {
            None => None,
            Some(s) => Some(
                parse_size(&s, 0)
                    .filter(|b| *b <= 1 << 32)
                    .ok_or_else(|| o.invalid("max-ram-below-4g: expected a size up to 4G"))?,
            ),
        };
        if o.take_bool("igd-passthru")? == Some(true) {
            return Err(o.unsupported("IGD pass-through is not available"));
        }
        if o.take_bool("usb")? == Some(true) {
            return Err(o.unsupported("USB is not emulated yet"));
        }
        o.finish()?;
        let Some(kind) = kind else {
            return Err(invalid(opt, v, "no machine type"));
        };
        let max_ram_below_4g = below.or(self.machine.and_then(|m| m.max_ram_below_4g));
        self.machine = Some(Machine {
            kind,
            max_ram_below_4g,
        });
        Ok(())
    }

    fn finish(mut self) -> Result<DmConfig, CmdlineError> {
        let machine = self.machine.ok_or_else(|| CmdlineError::Missing {
            option: "-machine".to_string(),
        })?;
        if machine.kind != MachineKind::Xenfv && !self.accel_xen {
            return Err(unsupported(
                "-machine",
                match machine.kind {
                    MachineKind::PcXen => "pc",
                    _ => "none",
                },
                "without accel=xen this is not a Xen machine",
            ));
        }
        if machine.kind != MachineKind::None && self.domid.is_none() {
            return Err(CmdlineError::Missing {
                option: "-xen-domid".to_string(),
            });
        }
        let xen_platform = match (machine.kind, self.explicit_platform) {
            (MachineKind::Xenfv, true) => {
                return Err(invalid(
                    "-device",
                    "xen-platform",
                    "-machine xenfv already has the Xen platform device",
                ));
            }
            (MachineKind::Xenfv, false) => true,
            (_, explicit) => explicit,
        };

        // Drives without index= take the free slots in order, as QEMU does.
        for u in std::mem::take(&mut self.unplaced) {
            let free = (0..IDE_SLOTS).find(|n| !self.drives.iter().any(|d| d.index() == *n));
            let Some(n) = free else {
                return Err(unsupported(
                    "-drive",
                    &u.raw,
                    "all four IDE slots are taken",
                ));
            };
            self.drives.push(IdeDrive {
                bus: (n / 2) as u8,
                unit: (n % 2) as u8,
                ..u.drive
            });
        }
        self.drives.sort_by_key(IdeDrive::index);
        for d in &self.loose {
            log::warn!(
                "-drive {}: no -device uses it; the guest will not see it",
                d.raw
            );
            self.ignored.push(format!("-drive {}", d.raw));
        }

        let mut qmp = Vec::new();
        let mut used = BTreeSet::new();
        for (chardev, raw) in &self.monitors {
            let c = self
                .chardevs
                .iter()
                .find(|c| &c.id == chardev)
                .ok_or_else(|| invalid("-mon", raw, format!("no -chardev id={chardev}")))?;
            if !used.insert(chardev.clone()) {
                return Err(invalid(
                    "-mon",
                    raw,
                    format!("chardev {chardev} already has a monitor"),
                ));
            }
            let ChardevSpec::ServerSocket(listen) = &c.spec;
            qmp.push(QmpSocket {
                id: c.id.clone(),
                listen: listen.clone(),
            });
        }
        if let Some(c) = self.chardevs.iter().find(|c| !used.contains(&c.id)) {
            return Err(unsupported(
                "-chardev",
                &c.raw,
                "a socket that is not a QMP monitor (libxl channel=[...]) is not available",
            ));
        }
        qmp.extend(self.legacy_qmp);

        let vga = match self.vga {
            Some((vga, _)) => vga,
            None => Vga::None,
        };
        let smp = self.smp.unwrap_or(Smp {
            cpus: 1,
            max_cpus: 1,
        });
        Ok(DmConfig {
            domid: self.domid,
            name: self.name,
            machine,
            xen_platform,
            ram_mib: self.ram_mib,
            smp,
            qmp,
            serials: self.serials,
            vga,
            drives: self.drives,
            boot_order: self.boot_order,
            acpi: !self.no_acpi,
            start_paused: self.start_paused,
            incoming: self.incoming,
            no_shutdown: self.no_shutdown,
            restrict: self.restrict,
            run_as: self.run_as,
            ignored: self.ignored,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opts_split_honours_doubled_commas_and_implied_keys() {
        let mut o = Opts::parse("-drive", "file=/a,,b.img,if=ide", None).unwrap();
        assert_eq!(o.take("file").as_deref(), Some("/a,b.img"));
        assert_eq!(o.take("if").as_deref(), Some("ide"));
        o.finish().unwrap();
        let mut o = Opts::parse("-device", "VGA,vgamem_mb=16", Some("driver")).unwrap();
        assert_eq!(o.take("driver").as_deref(), Some("VGA"));
        assert_eq!(o.take_u32("vgamem_mb").unwrap(), Some(16));
        let mut o = Opts::parse(
            "-chardev",
            "socket,id=x,path=/p,server,nowait",
            Some("backend"),
        )
        .unwrap();
        assert_eq!(o.take_bool("server").unwrap(), Some(true));
        assert_eq!(o.take_bool("wait").unwrap(), Some(false));
    }

    #[test]
    fn unknown_property_is_refused_with_its_name() {
        let o = Opts::parse("-device", "VGA,bogus=1", Some("driver")).unwrap();
        let mut o = o;
        o.take("driver");
        let err = o.finish().unwrap_err();
        assert!(err.to_string().contains("bogus=1"), "{err}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("56", 20), Some(56 << 20));
        assert_eq!(parse_size("2G", 20), Some(2 << 30));
        assert_eq!(parse_size("4026531840", 0), Some(0xF000_0000));
        assert_eq!(parse_size("", 20), None);
        assert_eq!(parse_size("12Q", 20), None);
        assert_eq!(parse_size("-1", 20), None);
        assert_eq!(parse_size("99999999999999999999", 0), None);
        assert_eq!(parse_size("18446744073709551615T", 0), None);
    }
}
