//! `vireo run`'s command line, in QEMU's words.

use std::path::PathBuf;

/// Boot a PC (i440FX/PIIX3, SeaBIOS, IDE, VGA, COM1) with the tier-0 CPU.
///
/// Options take QEMU's single-dash spelling (`-m 256 -bios FILE -nographic`) as well as
/// `--m`, `--bios`...
#[derive(clap::Args, Debug, Default)]
pub struct Options {
    /// Guest RAM: MiB, or with a suffix (`256M`, `1G`). 16 MiB to 63 GiB; from 3.5 GiB on,
    /// 3 GiB sit below the PCI hole and the rest above 4 GiB (PAE guests reach it).
    #[arg(short = 'm', long = "m", value_name = "SIZE", default_value = "128")]
    pub memory: String,
    /// Firmware image mapped at the top of 4 GiB [default: /usr/share/seabios/bios-256k.bin].
    /// `none`: no firmware runs; `-kernel` is loaded and entered directly.
    #[arg(long, value_name = "FILE|none")]
    pub bios: Option<PathBuf>,
    /// A kernel to boot. A Linux bzImage goes through fw_cfg and the firmware's loader, or
    /// with `-bios none` straight to its 32-bit entry (boot protocol, zero page, e820). A
    /// multiboot v1 kernel (ELF32 or a.out kludge) is always loaded and entered directly.
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk for a Linux `-kernel`; for a multiboot kernel the modules:
    /// `FILE[ ARGS][,FILE[ ARGS]]...` (`,,` for a comma in a name).
    #[arg(long, value_name = "FILE|MODULES")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line for `-kernel`.
    #[arg(long, value_name = "CMDLINE")]
    pub append: Option<String>,
    /// A disk: `file=PATH[,format=raw][,if=ide][,media=disk|cdrom][,snapshot=on][,index=N]`.
    #[arg(long = "drive", value_name = "SPEC")]
    pub drives: Vec<String>,
    /// A CD-ROM image on the secondary master (`-drive file=PATH,media=cdrom,index=2`).
    #[arg(long, value_name = "FILE")]
    pub cdrom: Option<PathBuf>,
    /// Boot order: `c` disk, `d` CD-ROM, `n` network, `a` floppy (`order=dc` or `dc`).
    #[arg(long, value_name = "ORDER")]
    pub boot: Option<String>,
    /// COM1: `stdio`, `file:PATH` or `none` [default: none, stdio with -nographic].
    #[arg(long, value_name = "DEV")]
    pub serial: Option<String>,
    /// No display; COM1 on stdio (as QEMU's `-nographic`).
    #[arg(long)]
    pub nographic: bool,
    /// `none` (no display; the VGA is there for the guest all the same) or `curses` (the VGA
    /// text screen on this terminal, keys to the guest's PS/2 keyboard).
    #[arg(long, value_name = "TYPE")]
    pub display: Option<String>,
    /// `std` (default) or `none`.
    #[arg(long, value_name = "TYPE")]
    pub vga: Option<String>,
    /// Exit instead of rebooting when the guest resets.
    #[arg(long = "no-reboot")]
    pub no_reboot: bool,
    /// Number of CPUs: only 1.
    #[arg(long, value_name = "N")]
    pub smp: Option<String>,
    /// The debug console (ports 0xE9 and 0x402, where SeaBIOS logs): `file:PATH`, `stdio`,
    /// `stderr` or `none` [default: none].
    #[arg(long, value_name = "DEV")]
    pub debugcon: Option<String>,
    /// Stop after this many seconds, dump the CPU state and exit with status 124 (tests).
    #[arg(long = "max-seconds", value_name = "SECS", hide = true)]
    pub max_seconds: Option<f64>,
    /// The CPU's tiers: `auto` (hot blocks compiled to host code, the default), `off` (the
    /// tier-0 interpreter only) or `always` (every block compiled first; for tests).
    /// Overrides `VIREO_JIT`.
    #[arg(long, value_name = "MODE")]
    pub jit: Option<String>,
    /// Instructions per CPU time slice between device work (a tuning knob: slices run from a
    /// quarter to four times it, ending near the next timer deadline).
    #[arg(long, value_name = "N", default_value_t = 50_000, hide = true)]
    pub slice: u64,
}

/// Options QEMU spells with one dash; `vireo run` rewrites them to clap's `--name`.
pub const QEMU_LONG_OPTIONS: &[&str] = &[
    "bios",
    "kernel",
    "initrd",
    "append",
    "drive",
    "cdrom",
    "boot",
    "serial",
    "nographic",
    "display",
    "vga",
    "no-reboot",
    "smp",
    "debugcon",
    "jit",
    "slice",
    "max-seconds",
];

/// Rewrite `-bios` to `--bios` (for the options above), leaving option values alone.
pub fn qemu_style_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut after_value_option = false;
    for a in args {
        if !after_value_option
            && let Some(name) = a.strip_prefix('-')
            && !name.starts_with('-')
            && QEMU_LONG_OPTIONS.contains(&name)
        {
            after_value_option = !matches!(name, "nographic" | "no-reboot");
            out.push(format!("--{name}"));
            continue;
        }
        after_value_option = false;
        out.push(a);
    }
    out
}

#[derive(Debug, PartialEq, Eq)]
pub enum OptionError {
    BadMemory(String),
    MemoryRange(String),
    BadDrive { spec: String, reason: String },
    DriveSlot(usize),
    BadSerial(String),
    BadDebugcon(String),
    BadDisplay(String),
    BadJit(String),
    BadVga(String),
    BadSmp(String),
    BadBoot(String),
    NeedsKernel,
}

impl std::fmt::Display for OptionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OptionError::BadMemory(v) => {
                write!(f, "-m {v}: not a size (MiB, or a number with M or G)")
            }
            OptionError::MemoryRange(v) => write!(
                f,
                "-m {v}: out of range (16 MiB to 63 GiB, what a 36-bit PAE address space holds above the hole)"
            ),
            OptionError::BadDrive { spec, reason } => write!(f, "-drive {spec}: {reason}"),
            OptionError::DriveSlot(v) => {
                write!(f, "too many IDE drives (4 at most) or two on index {v}")
            }
            OptionError::BadSerial(v) => {
                write!(f, "-serial {v}: expected stdio, file:PATH or none")
            }
            OptionError::BadDebugcon(v) => write!(
                f,
                "-debugcon {v}: expected file:PATH, stdio, stderr or none"
            ),
            OptionError::BadDisplay(v) => write!(f, "-display {v}: expected none or curses"),
            OptionError::BadJit(v) => write!(f, "-jit {v}: expected auto, off or always"),
            OptionError::BadVga(v) => write!(f, "-vga {v}: expected std or none"),
            OptionError::BadSmp(v) => write!(f, "-smp {v}: only one CPU is supported"),
            OptionError::BadBoot(v) => write!(
                f,
                "-boot {v}: expected letters from a, c, d, n (e.g. order=dc)"
            ),
            OptionError::NeedsKernel => write!(f, "-initrd and -append need -kernel"),
        }
    }
}

impl std::error::Error for OptionError {}

const MIN_RAM: u64 = 16 << 20;
/// The CPU's physical address space is 64 GiB (PAE, 36 bits) and RAM above 4 GiB starts
/// after a 1 GiB hole.
const MAX_RAM: u64 = 63 << 30;

/// Parse `-m`: plain numbers are MiB as in QEMU.
pub fn parse_memory(s: &str) -> Result<u64, OptionError> {
    let bad = || OptionError::BadMemory(s.to_string());
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(bad()),
            };
            (&t[..i], mult)
        }
        _ => (t, 1 << 20),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let bytes = n.checked_mul(mult).ok_or_else(bad)?;
    if !(MIN_RAM..=MAX_RAM).contains(&bytes) {
        return Err(OptionError::MemoryRange(s.to_string()));
    }
    Ok(bytes & !0xFFF)
}

/// Parse `-jit`.
pub fn parse_jit(s: &str) -> Result<translator::JitMode, OptionError> {
    match s {
        "auto" | "on" => Ok(translator::JitMode::Auto),
        "off" => Ok(translator::JitMode::Off),
        "always" => Ok(translator::JitMode::Always),
        _ => Err(OptionError::BadJit(s.to_string())),
    }
}

/// One `-drive`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveSpec {
    pub file: PathBuf,
    pub cdrom: bool,
    pub snapshot: bool,
    pub index: Option<usize>,
}

pub fn parse_drive(spec: &str) -> Result<DriveSpec, OptionError> {
    let bad = |reason: &str| OptionError::BadDrive {
        spec: spec.to_string(),
        reason: reason.to_string(),
    };
    let mut file = None;
    let mut cdrom = false;
    let mut snapshot = false;
    let mut index = None;
    for part in spec.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| bad("expected key=value"))?;
        match (k, v) {
            ("file", v) if !v.is_empty() => file = Some(PathBuf::from(v)),
            ("format", "raw") | ("if", "ide") | ("media", "disk") => {}
            ("format", _) => return Err(bad("only format=raw is supported")),
            ("if", _) => return Err(bad("only if=ide is supported")),
            ("media", "cdrom") => cdrom = true,
            ("media", _) => return Err(bad("media is disk or cdrom")),
            ("snapshot", "on") => snapshot = true,
            ("snapshot", "off") => snapshot = false,
            ("index", v) => {
                let i: usize = v.parse().map_err(|_| bad("index is 0 to 3"))?;
                if i > 3 {
                    return Err(bad("index is 0 to 3"));
                }
                index = Some(i);
            }
            _ => return Err(bad(&format!("unknown or bad option {k}={v}"))),
        }
    }
    Ok(DriveSpec {
        file: file.ok_or_else(|| bad("file= is required"))?,
        cdrom,
        snapshot,
        index,
    })
}

/// Where COM1 (or the debug console) goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CharDev {
    None,
    Stdio,
    Stderr,
    File(PathBuf),
}

pub fn parse_serial(s: &str) -> Result<CharDev, OptionError> {
    match s {
        "stdio" | "mon:stdio" => Ok(CharDev::Stdio),
        "none" | "null" => Ok(CharDev::None),
        _ => match s.strip_prefix("file:") {
            Some(p) if !p.is_empty() => Ok(CharDev::File(PathBuf::from(p))),
            _ => Err(OptionError::BadSerial(s.to_string())),
        },
    }
}

pub fn parse_debugcon(s: &str) -> Result<CharDev, OptionError> {
    match s {
        "stderr" => Ok(CharDev::Stderr),
        _ => parse_serial(s).map_err(|_| OptionError::BadDebugcon(s.to_string())),
    }
}

/// `-boot order=dc`, `-boot dc`, `-boot once=d` (treated as order).
pub fn parse_boot(s: &str) -> Result<Vec<char>, OptionError> {
    let bad = || OptionError::BadBoot(s.to_string());
    let mut order = Vec::new();
    for part in s.split(',') {
        let letters = match part.split_once('=') {
            Some(("order" | "once", v)) => v,
            Some(("menu" | "strict" | "splash-time" | "reboot-timeout", _)) => continue,
            Some(_) => return Err(bad()),
            None => part,
        };
        for c in letters.chars() {
            if !"acdn".contains(c) {
                return Err(bad());
            }
            order.push(c);
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_follow_qemu() {
        assert_eq!(parse_memory("256"), Ok(256 << 20));
        assert_eq!(parse_memory("1G"), Ok(1 << 30));
        assert_eq!(parse_memory("64M"), Ok(64 << 20));
        assert!(matches!(
            parse_memory("8"),
            Err(OptionError::MemoryRange(_))
        ));
        assert_eq!(parse_memory("5G"), Ok(5 << 30));
        assert!(matches!(
            parse_memory("64G"),
            Err(OptionError::MemoryRange(_))
        ));
        assert!(matches!(parse_memory("x"), Err(OptionError::BadMemory(_))));
        assert!(parse_memory("99999999999999999999G").is_err());
    }

    #[test]
    fn drives_parse_and_reject_unknown_keys() {
        let d = parse_drive("file=a.img,format=raw,if=ide,media=cdrom,snapshot=on").unwrap();
        assert_eq!(
            d,
            DriveSpec {
                file: "a.img".into(),
                cdrom: true,
                snapshot: true,
                index: None
            }
        );
        assert!(parse_drive("file=a.img,format=qcow2").is_err());
        assert!(parse_drive("format=raw").is_err());
        assert!(parse_drive("file=a,index=4").is_err());
        assert!(parse_drive("file=a,bogus=1").is_err());
    }

    #[test]
    fn qemu_single_dash_options_are_rewritten_but_not_values() {
        let args = [
            "vireo",
            "run",
            "-m",
            "64",
            "-append",
            "-bios",
            "-nographic",
            "-bios",
            "x",
        ];
        let out = qemu_style_args(args.iter().map(|s| s.to_string()));
        assert_eq!(
            out,
            [
                "vireo",
                "run",
                "-m",
                "64",
                "--append",
                "-bios",
                "--nographic",
                "--bios",
                "x"
            ]
        );
    }

    #[test]
    fn serial_boot_and_debugcon() {
        assert_eq!(parse_serial("stdio"), Ok(CharDev::Stdio));
        assert_eq!(
            parse_serial("file:/tmp/x"),
            Ok(CharDev::File("/tmp/x".into()))
        );
        assert!(parse_serial("tcp:1").is_err());
        assert_eq!(parse_debugcon("stderr"), Ok(CharDev::Stderr));
        assert_eq!(parse_boot("order=dc"), Ok(vec!['d', 'c']));
        assert_eq!(parse_boot("c"), Ok(vec!['c']));
        assert!(parse_boot("z").is_err());
    }
}
