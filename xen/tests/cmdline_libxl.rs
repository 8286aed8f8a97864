//! The command-line parser on the command lines libxl 4.17 really passes (captured on the Xen
//! testbed, `shared/xen-testbed/captured/`) and on the variants libxl builds for other guest
//! configs (`libxl__build_device_model_args_new`).

use std::path::{Path, PathBuf};

use xen::cmdline::{
    CmdlineError, DmConfig, IdeDrive, Incoming, MachineKind, Media, QmpListen, QmpSocket, RunAs,
    SerialBackend, Smp, Vga,
};

/// `captured/dm-argv-hvmfake.txt`, argv[1..], verbatim (`vga` left at libxl's default: Cirrus).
const HVMFAKE: &[&str] = &[
    "-xen-domid",
    "1",
    "-no-shutdown",
    "-chardev",
    "socket,id=libxl-cmd,path=/var/run/xen/qmp-libxl-1,server=on,wait=off",
    "-mon",
    "chardev=libxl-cmd,mode=control",
    "-chardev",
    "socket,id=libxenstat-cmd,path=/var/run/xen/qmp-libxenstat-1,server=on,wait=off",
    "-mon",
    "chardev=libxenstat-cmd,mode=control",
    "-nodefaults",
    "-no-user-config",
    "-name",
    "hvmfake",
    "-vnc",
    "none",
    "-display",
    "none",
    "-serial",
    "file:/job/results/hvmfake-serial.log",
    "-device",
    "cirrus-vga,vgamem_mb=8",
    "-boot",
    "order=c",
    "-net",
    "none",
    "-machine",
    "xenfv,suppress-vmdesc=on",
    "-m",
    "56",
];

/// `captured/qmp-transcript-fake-dm.txt`'s argv line (guest `hvmown`), argv[1..].
const HVMOWN: &[&str] = &[
    "-xen-domid",
    "1",
    "-no-shutdown",
    "-chardev",
    "socket,id=libxl-cmd,path=/var/run/xen/qmp-libxl-1,server=on,wait=off",
    "-mon",
    "chardev=libxl-cmd,mode=control",
    "-chardev",
    "socket,id=libxenstat-cmd,path=/var/run/xen/qmp-libxenstat-1,server=on,wait=off",
    "-mon",
    "chardev=libxenstat-cmd,mode=control",
    "-nodefaults",
    "-no-user-config",
    "-name",
    "hvmown",
    "-vnc",
    "none",
    "-display",
    "none",
    "-serial",
    "file:/job/results/hvmown-serial.log",
    "-device",
    "cirrus-vga,vgamem_mb=8",
    "-boot",
    "order=c",
    "-net",
    "none",
    "-machine",
    "xenfv,suppress-vmdesc=on",
    "-m",
    "56",
];

fn with(base: &[&str], from: &str, to: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut replaced = false;
    let mut skip = 0;
    for (i, a) in base.iter().enumerate() {
        if skip > 0 {
            skip -= 1;
            continue;
        }
        if !replaced && *a == from {
            out.extend(to.iter().map(|s| s.to_string()));
            replaced = true;
            // `from` is an option followed by its value.
            skip = usize::from(i + 1 < base.len());
            continue;
        }
        out.push(a.to_string());
    }
    assert!(replaced, "{from} not in the base command line");
    out
}

/// The captured argv with `vga="stdvga"` (libxl: `-device VGA,vgamem_mb=<videoram/1024>`).
fn stdvga(base: &[&str]) -> Vec<String> {
    let v: Vec<String> = base
        .iter()
        .map(|a| {
            if a.starts_with("cirrus-vga") {
                "VGA,vgamem_mb=16".to_string()
            } else {
                a.to_string()
            }
        })
        .collect();
    v
}

fn qmp(id: &str, path: &str) -> QmpSocket {
    QmpSocket {
        id: id.to_string(),
        listen: QmpListen::Path(PathBuf::from(path)),
    }
}

#[test]
fn captured_default_vga_is_refused_naming_stdvga() {
    for argv in [HVMFAKE, HVMOWN] {
        let err = DmConfig::parse(argv).unwrap_err();
        assert_eq!(
            err,
            CmdlineError::CirrusVga {
                value: "cirrus-vga,vgamem_mb=8".to_string()
            }
        );
        assert_eq!(err.option(), "-device");
        let msg = err.to_string();
        assert!(msg.contains("vga=\"stdvga\""), "{msg}");
        assert!(msg.contains("cirrus-vga"), "{msg}");
    }
}

#[test]
fn captured_command_line_with_stdvga() {
    let cfg = DmConfig::parse(stdvga(HVMFAKE)).unwrap();
    assert_eq!(cfg.domid, Some(1));
    assert_eq!(cfg.name.as_deref(), Some("hvmfake"));
    assert_eq!(cfg.machine.kind, MachineKind::Xenfv);
    assert_eq!(cfg.machine.max_ram_below_4g, None);
    assert!(cfg.xen_platform);
    assert_eq!(cfg.ram_mib, Some(56));
    assert_eq!(
        cfg.smp,
        Smp {
            cpus: 1,
            max_cpus: 1
        }
    );
    assert_eq!(
        cfg.qmp,
        vec![
            qmp("libxl-cmd", "/var/run/xen/qmp-libxl-1"),
            qmp("libxenstat-cmd", "/var/run/xen/qmp-libxenstat-1"),
        ]
    );
    assert_eq!(
        cfg.serials,
        vec![SerialBackend::File(PathBuf::from(
            "/job/results/hvmfake-serial.log"
        ))]
    );
    assert_eq!(cfg.vga, Vga::Std { vgamem_mb: 16 });
    assert_eq!(cfg.boot_order.as_deref(), Some("c"));
    assert!(cfg.drives.is_empty());
    assert!(cfg.acpi);
    assert!(cfg.no_shutdown);
    assert!(!cfg.start_paused);
    assert!(!cfg.restrict);
    assert_eq!(cfg.incoming, None);
    assert_eq!(cfg.run_as, None);
    assert!(!cfg.is_probe());
    assert_eq!(cfg.ignored, vec!["-machine suppress-vmdesc=on".to_string()]);

    let own = DmConfig::parse(stdvga(HVMOWN)).unwrap();
    assert_eq!(own.name.as_deref(), Some("hvmown"));
}

#[test]
fn vga_none_has_no_display_device() {
    // vga="none": libxl passes no -device for the display at all.
    let argv: Vec<&str> = HVMFAKE
        .iter()
        .copied()
        .filter(|a| *a != "-device" && !a.starts_with("cirrus-vga"))
        .collect();
    let cfg = DmConfig::parse(&argv).unwrap();
    assert_eq!(cfg.vga, Vga::None);
}

#[test]
fn argv0_is_skipped_by_parse_argv() {
    let mut argv = vec!["/usr/local/bin/vireo-xen-dm".to_string()];
    argv.extend(stdvga(HVMFAKE));
    assert_eq!(
        DmConfig::parse_argv(&argv).unwrap(),
        DmConfig::parse(stdvga(HVMFAKE)).unwrap()
    );
}

/// Reads the capture itself when the shared folder is beside the repository (CI) or at its
/// usual place, and checks that it still is what this file embeds.
#[test]
fn embedded_copy_matches_the_capture_file_when_present() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        std::env::var_os("VIREO_SHARED").map(PathBuf::from),
        Some(manifest.join("../../shared")),
        Some(PathBuf::from("/work/shared")),
    ];
    let Some(text) = candidates.iter().flatten().find_map(|d| {
        std::fs::read_to_string(d.join("xen-testbed/captured/dm-argv-hvmfake.txt")).ok()
    }) else {
        eprintln!("capture not found; the embedded copy is used alone");
        return;
    };
    let argv: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("argv["))
        .filter_map(|l| l.split_once("]="))
        .map(|(_, v)| v.to_string())
        .collect();
    assert_eq!(argv.len(), HVMFAKE.len() + 1);
    assert_eq!(&argv[1..], HVMFAKE);
    assert!(matches!(
        DmConfig::parse_argv(&argv),
        Err(CmdlineError::CirrusVga { .. })
    ));
}

#[test]
fn typical_default_guest_from_the_spec_refuses_each_unsupported_feature_by_name() {
    // The typical command line of spec section 5.1, one unsupported feature at a time.
    let base: Vec<&str> = vec![
        "-xen-domid",
        "5",
        "-no-shutdown",
        "-chardev",
        "socket,id=libxl-cmd,path=/var/run/xen/qmp-libxl-5,server=on,wait=off",
        "-mon",
        "chardev=libxl-cmd,mode=control",
        "-chardev",
        "socket,id=libxenstat-cmd,path=/var/run/xen/qmp-libxenstat-5,server=on,wait=off",
        "-mon",
        "chardev=libxenstat-cmd,mode=control",
        "-nodefaults",
        "-no-user-config",
        "-name",
        "guest",
        "-vnc",
        "127.0.0.1:0,to=99",
        "-display",
        "none",
        "-serial",
        "pty",
        "-device",
        "cirrus-vga,vgamem_mb=8",
        "-boot",
        "order=cda",
        "-usb",
        "-usbdevice",
        "tablet",
        "-smp",
        "2,maxcpus=2",
        "-device",
        "rtl8139,id=nic0,netdev=net0,mac=00:16:3e:12:34:56",
        "-netdev",
        "type=tap,id=net0,ifname=vif5.0-emu,br=xenbr0,script=no,downscript=no",
        "-machine",
        "xenfv,suppress-vmdesc=on",
        "-m",
        "1016",
        "-drive",
        "file=/dev/vg/guest,if=ide,index=0,media=disk,format=raw,cache=writeback",
    ];
    let err = DmConfig::parse(&base).unwrap_err();
    assert_eq!(err.option(), "-vnc");
    assert!(err.to_string().contains("vnc=0"), "{err}");

    let mut argv = with(&base, "-vnc", &["-vnc", "none"]);
    let err = DmConfig::parse(&argv).unwrap_err();
    assert_eq!(err.option(), "-serial");
    assert!(err.to_string().contains("pty"), "{err}");

    argv = with(
        &argv.iter().map(String::as_str).collect::<Vec<_>>(),
        "-serial",
        &["-serial", "file:/var/log/guest-serial.log"],
    );
    let err = DmConfig::parse(&argv).unwrap_err();
    assert!(matches!(err, CmdlineError::CirrusVga { .. }), "{err}");

    let argv: Vec<String> = argv
        .iter()
        .map(|a| {
            if a.starts_with("cirrus-vga") {
                "VGA,vgamem_mb=16".to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    let err = DmConfig::parse(&argv).unwrap_err();
    assert_eq!(err.option(), "-usb");

    let argv: Vec<String> = argv.iter().filter(|a| *a != "-usb").cloned().collect();
    let err = DmConfig::parse(&argv).unwrap_err();
    assert_eq!(err.option(), "-usbdevice");

    let argv = with(
        &argv.iter().map(String::as_str).collect::<Vec<_>>(),
        "-usbdevice",
        &[],
    );
    let err = DmConfig::parse(&argv).unwrap_err();
    assert_eq!(err.option(), "-device");
    assert!(err.to_string().contains("rtl8139"), "{err}");
    assert!(err.to_string().contains("type=vif"), "{err}");

    // The same guest with a PV-only NIC: libxl passes -net none instead.
    let at = argv.iter().position(|a| a.starts_with("rtl8139")).unwrap();
    let mut argv = argv;
    argv.drain(at - 1..=at);
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let err = DmConfig::parse(&refs).unwrap_err();
    assert_eq!(err.option(), "-netdev");
    let argv = with(&refs, "-netdev", &["-net", "none"]);
    let cfg = DmConfig::parse(&argv).unwrap();
    assert_eq!(cfg.domid, Some(5));
    assert_eq!(
        cfg.smp,
        Smp {
            cpus: 2,
            max_cpus: 2
        }
    );
    assert_eq!(cfg.ram_mib, Some(1016));
    assert_eq!(cfg.boot_order.as_deref(), Some("cda"));
    assert_eq!(
        cfg.drives,
        vec![IdeDrive {
            bus: 0,
            unit: 0,
            media: Media::Disk,
            file: Some(PathBuf::from("/dev/vg/guest")),
            read_only: false,
            id: None,
        }]
    );
    assert!(cfg.ignored.iter().any(|i| i == "-drive cache=writeback"));
}

fn minimal() -> Vec<&'static str> {
    vec![
        "-xen-domid",
        "7",
        "-no-shutdown",
        "-chardev",
        "socket,id=libxl-cmd,path=/var/run/xen/qmp-libxl-7,server=on,wait=off",
        "-mon",
        "chardev=libxl-cmd,mode=control",
        "-nodefaults",
        "-no-user-config",
        "-name",
        "g",
        "-vnc",
        "none",
        "-display",
        "none",
        "-device",
        "VGA,vgamem_mb=16",
        "-boot",
        "order=dc",
        "-net",
        "none",
        "-machine",
        "xenfv,suppress-vmdesc=on",
        "-m",
        "240",
    ]
}

fn plus(extra: &[&str]) -> Result<DmConfig, CmdlineError> {
    let mut v = minimal();
    v.extend_from_slice(extra);
    DmConfig::parse(&v)
}

#[test]
fn disks_and_the_libxl_cdrom_form() {
    let cfg = plus(&[
        "-drive",
        "file=/srv/boot.img,if=ide,index=0,media=disk,format=raw,cache=writeback",
        "-drive",
        "file=/srv/data,,v2.img,if=ide,index=1,media=disk,format=raw,cache=writeback",
        "-drive",
        "if=none,readonly=on,id=ide-5632,file=/srv/cd.iso,format=raw",
        "-device",
        "ide-cd,id=ide-5632,drive=ide-5632,bus=ide.1,unit=0",
        "-drive",
        "if=none,readonly=on,id=ide-5696",
        "-device",
        "ide-cd,id=ide-5696,drive=ide-5696,bus=ide.1,unit=1",
    ])
    .unwrap();
    let files: Vec<_> = cfg
        .drives
        .iter()
        .map(|d| {
            (
                d.index(),
                d.media,
                d.file.clone(),
                d.read_only,
                d.id.clone(),
            )
        })
        .collect();
    assert_eq!(
        files,
        vec![
            (
                0,
                Media::Disk,
                Some(PathBuf::from("/srv/boot.img")),
                false,
                None
            ),
            (
                1,
                Media::Disk,
                Some(PathBuf::from("/srv/data,v2.img")),
                false,
                None
            ),
            (
                2,
                Media::Cdrom,
                Some(PathBuf::from("/srv/cd.iso")),
                true,
                Some("ide-5632".to_string())
            ),
            (3, Media::Cdrom, None, true, Some("ide-5696".to_string())),
        ]
    );
}

#[test]
fn older_cdrom_form_and_unindexed_drives() {
    let cfg = plus(&[
        "-drive",
        "file=/srv/a.img,if=ide,media=disk,format=raw",
        // libxl before 4.15: `if=ide,index=%d,readonly=on,media=cdrom,id=ide-%i[,file,format]`.
        "-drive",
        "if=ide,index=0,readonly=on,media=cdrom,id=ide-768,file=/srv/cd.iso,format=raw",
    ])
    .unwrap();
    assert_eq!(cfg.drives[0].id.as_deref(), Some("ide-768"));
    // The indexed CD-ROM keeps index 0; the unindexed disk takes the first free slot.
    assert_eq!(cfg.drives[0].media, Media::Cdrom);
    assert!(cfg.drives[0].read_only);
    assert_eq!(cfg.drives[1].index(), 1);
    assert_eq!(cfg.drives[1].file, Some(PathBuf::from("/srv/a.img")));
}

#[test]
fn drive_errors_name_the_problem() {
    let e = plus(&[
        "-drive",
        "file=/a.qcow2,if=ide,index=0,media=disk,format=qcow2",
    ])
    .unwrap_err();
    assert_eq!(e.option(), "-drive");
    assert!(e.to_string().contains("format=qcow2"), "{e}");
    let e = plus(&["-drive", "file=/a,if=ide,index=4,media=disk,format=raw"]).unwrap_err();
    assert!(e.to_string().contains("index"), "{e}");
    let e = plus(&[
        "-drive",
        "file=/a,if=ide,index=0,format=raw",
        "-drive",
        "file=/b,if=ide,index=0,format=raw",
    ])
    .unwrap_err();
    assert!(e.to_string().contains("already taken"), "{e}");
    let e = plus(&["-drive", "file=/a,if=virtio"]).unwrap_err();
    assert!(e.to_string().contains("if=virtio"), "{e}");
    let e = plus(&["-device", "ide-hd,drive=nope,bus=ide.0,unit=0"]).unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    let e = plus(&["-drive", "if=ide,index=0,media=disk"]).unwrap_err();
    assert!(e.to_string().contains("file="), "{e}");
    let e = plus(&["-drive", "file=/a,if=ide,index=0,format=raw,werror=stop"]).unwrap_err();
    assert!(e.to_string().contains("werror=stop"), "{e}");
}

#[test]
fn dm_restrict_form() {
    // dm_restrict=1: libxl pre-opens the QMP socket, starts paused, and de-privileges us.
    let cfg = DmConfig::parse([
        "-xen-domid",
        "3",
        "-no-shutdown",
        "-chardev",
        "socket,id=libxl-cmd,fd=17,server=on,wait=off",
        "-S",
        "-mon",
        "chardev=libxl-cmd,mode=control",
        "-nodefaults",
        "-no-user-config",
        "-name",
        "r",
        "-vnc",
        "none",
        "-display",
        "none",
        "-device",
        "VGA,vgamem_mb=16",
        "-boot",
        "order=c",
        "-net",
        "none",
        "-xen-domid-restrict",
        "-run-with",
        "chroot=/var/run/xen/qemu-root-3",
        "-machine",
        "xenfv,suppress-vmdesc=on,max-ram-below-4g=4026531840",
        "-m",
        "1024",
        "-runas",
        "xen-qemuuser-range-base",
    ])
    .unwrap();
    assert_eq!(
        cfg.qmp,
        vec![QmpSocket {
            id: "libxl-cmd".to_string(),
            listen: QmpListen::Fd(17)
        }]
    );
    assert!(cfg.start_paused);
    assert!(cfg.restrict);
    assert_eq!(cfg.machine.max_ram_below_4g, Some(0xF000_0000));
    assert_eq!(
        cfg.run_as,
        Some(RunAs {
            user: Some("xen-qemuuser-range-base".to_string()),
            chroot: Some(PathBuf::from("/var/run/xen/qemu-root-3")),
        })
    );
}

#[test]
fn libxl_probe_instance() {
    let cfg = DmConfig::parse([
        "-S",
        "-no-user-config",
        "-nodefaults",
        "-nographic",
        "-machine",
        "none,accel=xen",
        "-chardev",
        "socket,id=libxl-cmd,fd=5,server=on,wait=off",
        "-mon",
        "chardev=libxl-cmd,mode=control",
    ])
    .unwrap();
    assert!(cfg.is_probe());
    assert_eq!(cfg.domid, None);
    assert!(!cfg.xen_platform);
    assert_eq!(cfg.qmp.len(), 1);
}

#[test]
fn restore_passes_the_state_descriptor() {
    let cfg = plus(&["-incoming", "fd:9"]).unwrap();
    assert_eq!(cfg.incoming, Some(Incoming::Fd(9)));
    // The descriptor is reopened through /proc/self/fd: try it on one this test owns.
    let path = std::env::temp_dir().join(format!("vireo-incoming-{}", std::process::id()));
    std::fs::write(&path, b"saved device state").unwrap();
    let f = std::fs::File::open(&path).unwrap();
    let n = std::os::fd::AsRawFd::as_raw_fd(&f);
    let mut data = Vec::new();
    std::io::Read::read_to_end(&mut Incoming::Fd(n).open().unwrap(), &mut data).unwrap();
    assert_eq!(data, b"saved device state");
    drop(f);
    std::fs::remove_file(&path).unwrap();
    let e = plus(&["-incoming", "tcp:0:4444"]).unwrap_err();
    assert_eq!(e.option(), "-incoming");
}

#[test]
fn machine_variants() {
    let mut v = minimal();
    let m = v
        .iter()
        .position(|a| *a == "xenfv,suppress-vmdesc=on")
        .unwrap();
    v[m] = "pc,accel=xen,suppress-vmdesc=on";
    let cfg = DmConfig::parse(&v).unwrap();
    assert_eq!(cfg.machine.kind, MachineKind::PcXen);
    assert!(!cfg.xen_platform);
    v.extend(["-device", "xen-platform"]);
    assert!(DmConfig::parse(&v).unwrap().xen_platform);

    v[m] = "pc";
    let e = DmConfig::parse(&v).unwrap_err();
    assert!(e.to_string().contains("accel=xen"), "{e}");
    v[m] = "q35,accel=xen";
    assert!(DmConfig::parse(&v).unwrap_err().to_string().contains("q35"));
    v[m] = "xenfv,igd-passthru=on";
    assert!(DmConfig::parse(&v).unwrap_err().to_string().contains("IGD"));

    let e = plus(&["-device", "xen-platform"]).unwrap_err();
    assert!(e.to_string().contains("already"), "{e}");

    let no_machine: Vec<&str> = minimal()
        .into_iter()
        .filter(|a| *a != "-machine" && *a != "xenfv,suppress-vmdesc=on")
        .collect();
    assert_eq!(
        DmConfig::parse(&no_machine).unwrap_err(),
        CmdlineError::Missing {
            option: "-machine".to_string()
        }
    );
    let no_domid: Vec<&str> = minimal()
        .into_iter()
        .filter(|a| *a != "-xen-domid" && *a != "7")
        .collect();
    assert_eq!(
        DmConfig::parse(&no_domid).unwrap_err().option(),
        "-xen-domid"
    );
}

#[test]
fn options_that_tune_nothing_we_emulate_are_ignored_and_listed() {
    let cfg = plus(&[
        "-k",
        "en-us",
        "-rtc",
        "base=localtime",
        "-cpu",
        "host",
        "-trace",
        "events=/tmp/ev",
        "-global",
        "PIIX4_PM.disable_s3=1",
        "-smp",
        "2,maxcpus=4,sockets=1,cores=4",
    ])
    .unwrap();
    for want in [
        "-k en-us",
        "-rtc base=localtime",
        "-cpu host",
        "-trace events=/tmp/ev",
        "-global PIIX4_PM.disable_s3=1",
        "-smp cores=4",
    ] {
        assert!(
            cfg.ignored.iter().any(|i| i == want),
            "{want} not in {:?}",
            cfg.ignored
        );
    }
    assert_eq!(
        cfg.smp,
        Smp {
            cpus: 2,
            max_cpus: 4
        }
    );
}

#[test]
fn refused_options_name_themselves() {
    let cases: &[(&[&str], &str)] = &[
        (&["-usb"], "-usb"),
        (&["-kernel", "/boot/vmlinuz"], "-kernel"),
        (&["-spice", "port=6000"], "-spice"),
        (&["-device", "qxl-vga,vram_size_mb=64"], "-device"),
        (
            &["-device", "e1000,id=nic0,netdev=net0,mac=00:16:3e:00:00:01"],
            "-device",
        ),
        (&["-device", "ahci,id=ahci0"], "-device"),
        (&["-device", "lsi53c895a"], "-device"),
        (&["-device", "xen-pvdevice,device-id=0xc000"], "-device"),
        (&["-device", "piix3-usb-uhci,id=usb"], "-device"),
        (&["-device", "intel-hda"], "-device"),
        (&["-global", "VGA.foo=1"], "-global"),
        (&["-chardev", "pty,id=libxl-channel0"], "-chardev"),
        (
            &[
                "-chardev",
                "socket,id=libxl-channel1,path=/run/ch,server=on,wait=off",
            ],
            "-chardev",
        ),
        (&["-mon", "chardev=nope,mode=control"], "-mon"),
        (&["-vga", "cirrus"], "-device"),
        (&["-serial", "tcp:localhost:4555"], "-serial"),
        (&["-frobnicate"], "-frobnicate"),
        (&["-display", "sdl"], "-display"),
        (&["-monitor", "stdio"], "-monitor"),
        // COLO replication disks, SCSI (sd*) disks, AHCI disks as libxl spells them.
        (
            &[
                "-drive",
                "if=ide,index=0,media=disk,cache=writeback,driver=quorum,id=colo1",
            ],
            "-drive",
        ),
        (
            &[
                "-drive",
                "file=/d,if=scsi,bus=0,unit=0,format=raw,cache=writeback",
            ],
            "-drive",
        ),
        (
            &[
                "-drive",
                "file=/d,if=none,id=ahcidisk-0,format=raw,cache=writeback",
                "-device",
                "ide-hd,bus=ahci0.0,unit=0,drive=ahcidisk-0",
            ],
            "-device",
        ),
    ];
    for (extra, option) in cases {
        let err = plus(extra).unwrap_err();
        assert_eq!(err.option(), *option, "{extra:?}: {err}");
    }
    // A second display adapter.
    let e = plus(&["-vga", "std"]).unwrap_err();
    assert!(e.to_string().contains("already"), "{e}");
}

#[test]
fn serial_backends() {
    let cfg = plus(&[
        "-serial",
        "file:/tmp/s0",
        "-serial",
        "unix:/tmp/s1.sock,server=on,wait=off",
        "-serial",
        "null",
        "-serial",
        "stdio",
    ])
    .unwrap();
    assert_eq!(
        cfg.serials,
        vec![
            SerialBackend::File(PathBuf::from("/tmp/s0")),
            SerialBackend::UnixServer {
                path: PathBuf::from("/tmp/s1.sock"),
                wait: false
            },
            SerialBackend::Null,
            SerialBackend::Stdio,
        ]
    );
    assert!(plus(&["-serial", "none"]).unwrap().serials.is_empty());
}

#[test]
fn legacy_qmp_and_double_dash_spellings() {
    let cfg = plus(&[
        "--qmp",
        "unix:/run/xen/qmp-old,server,nowait",
        "--no-acpi",
        "--S",
    ])
    .unwrap();
    assert_eq!(cfg.qmp.len(), 2);
    assert_eq!(
        cfg.qmp[1].listen,
        QmpListen::Path(PathBuf::from("/run/xen/qmp-old"))
    );
    assert!(!cfg.acpi);
    assert!(cfg.start_paused);
}

#[test]
fn bad_values_never_panic() {
    let cases: &[&[&str]] = &[
        &["-xen-domid"],
        &["-m", "0"],
        &["-m", "lots"],
        &["-m", "99999999999999999999999"],
        &["-smp", "0"],
        &["-smp", "4,maxcpus=2"],
        &["-smp", "500"],
        &["-device", ""],
        &["-device", ",,,"],
        &["-device", "VGA,vgamem_mb=0"],
        &["-device", "VGA,vgamem_mb=x"],
        &["-drive", ""],
        &["-drive", "=x"],
        &["-chardev", "socket"],
        &["-chardev", "socket,id=a,path=/p,server=maybe,wait=off"],
        &["-boot", "order=xyz"],
        &["-incoming", "fd:-1"],
        &["-machine", "xenfv,max-ram-below-4g=8G"],
        &["-global", "nothing"],
        &["stray"],
    ];
    for extra in cases {
        assert!(plus(extra).is_err(), "{extra:?} was accepted");
    }
    for bad_domid in ["0", "-1", "32752", "x", "4294967296"] {
        let mut v = minimal();
        v[1] = bad_domid;
        assert_eq!(DmConfig::parse(&v).unwrap_err().option(), "-xen-domid");
    }
}
