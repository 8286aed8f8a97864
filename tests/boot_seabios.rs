//! SeaBIOS on the `pc` board: Debian's `bios-256k.bin` prints its banner on the debug console,
//! enumerates PCI, finds the IDE disk and boots its first sector; the boot sector reads more
//! sectors by bus-master DMA, says so on COM1 and powers the machine off through PIIX4 PM.
//!
//! Needs Debian's seabios and nasm: `tests/guests/fetch.sh` installs them (as root) and builds
//! the disk. Run in release: `cargo test --release --test boot_seabios -- --nocapture`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{boot_sector, fetch, root};

fn read(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

#[test]
fn seabios_boots_an_ide_disk_that_dmas_and_powers_off() {
    fetch("seabios");
    let image = fetch("boot-image").pop().expect("boot image path");
    let dir = root().join("target/guests/out");
    std::fs::create_dir_all(&dir).unwrap();
    let serial = dir.join("boot_seabios.serial");
    let debug = dir.join("boot_seabios.debugcon");
    let _ = std::fs::remove_file(&serial);
    let _ = std::fs::remove_file(&debug);

    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vireo"))
        .args(["run", "-m", "64", "-display", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-debugcon")
        .arg(format!("file:{}", debug.display()))
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=ide,snapshot=on",
            image.display()
        ))
        .env("RUST_LOG", "vireo=info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vireo");

    let mut banner_at = None;
    let status = loop {
        if banner_at.is_none() && read(&debug).contains("SeaBIOS (version") {
            banner_at = Some(start.elapsed());
        }
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "no poweroff within 60 s\n--- debugcon (tail) ---\n{}\n--- serial ---\n{}",
                tail(&read(&debug), 2000),
                read(&serial)
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let total = start.elapsed();
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let debug_text = read(&debug);
    let serial_text = read(&serial);
    let banner_at = banner_at.or_else(|| debug_text.contains("SeaBIOS (version").then_some(total));
    println!(
        "vireo: SeaBIOS banner after {:?}, poweroff after {total:?}",
        banner_at
    );

    assert!(
        debug_text.contains("SeaBIOS (version"),
        "no SeaBIOS banner on the debug console:\n{}",
        tail(&debug_text, 2000)
    );
    // PCI enumeration through our configuration space: the IDE and PM functions and the VGA.
    for id in [
        "id=8086:1237",
        "id=8086:7000",
        "id=8086:7010",
        "id=8086:7113",
        "id=1234:1111",
    ] {
        assert!(debug_text.contains(id), "SeaBIOS did not find {id}");
    }
    assert!(
        debug_text.contains("Booting from Hard Disk"),
        "{}",
        tail(&debug_text, 2000)
    );
    assert!(
        serial_text.contains("VIREO-E2E: boot sector running"),
        "serial: {serial_text}"
    );
    assert!(
        serial_text.contains("VIREO-E2E: DMA read OK"),
        "serial: {serial_text}"
    );
    assert!(!serial_text.contains("FAIL"), "serial: {serial_text}");
    assert!(status.success(), "exit status {status}; stderr:\n{stderr}");
    assert!(
        stderr.contains("powered off"),
        "the guest did not power off through the PM (stderr: {stderr})"
    );
}

fn tail(s: &str, n: usize) -> &str {
    let mut i = s.len().saturating_sub(n);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

/// Boot `image` with `-no-reboot`; returns (exit status, serial output, stderr).
fn run_no_reboot(image: &Path, tag: &str) -> (std::process::ExitStatus, String, String) {
    fetch("seabios");
    let serial = root().join(format!("target/guests/out/{tag}.serial"));
    let _ = std::fs::remove_file(&serial);
    let out = Command::new(env!("CARGO_BIN_EXE_vireo"))
        .args(["run", "-m", "32", "-display", "none", "-no-reboot"])
        .args(["-max-seconds", "60"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-drive")
        .arg(format!("file={},format=raw,snapshot=on", image.display()))
        .env("RUST_LOG", "vireo=info")
        .stdin(Stdio::null())
        .output()
        .expect("run vireo");
    (
        out.status,
        read(&serial),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn reset_through_0xcf9_ends_the_run_with_no_reboot() {
    #[rustfmt::skip]
    let code = [
        0xBA, 0xF8, 0x03, 0xB0, b'R', 0xEE, // mov dx, 0x3F8; mov al, 'R'; out dx, al
        0xBA, 0xF9, 0x0C, 0xB0, 0x06, 0xEE, // mov dx, 0xCF9; mov al, 6; out dx, al
        0xF4, 0xEB, 0xFD,                   // hlt; jmp hlt
    ];
    let image = boot_sector("reset-cf9.img", &code);
    let (status, serial, stderr) = run_no_reboot(&image, "reset-cf9");
    assert_eq!(serial, "R");
    assert!(status.success(), "status {status}: {stderr}");
    assert!(stderr.contains("reset"), "{stderr}");
}

#[test]
fn triple_fault_dumps_the_registers_and_ends_the_run_with_no_reboot() {
    #[rustfmt::skip]
    let code = [
        0xBA, 0xF8, 0x03, 0xB0, b'T', 0xEE, // print 'T' on COM1
        0x31, 0xC0, 0x8E, 0xD8,             // xor ax, ax; mov ds, ax
        0x0F, 0x01, 0x1E, 0x40, 0x7C,       // lidt [0x7C40]: limit 0
        0xCC,                               // int3: #GP, #DF, shutdown
        0xF4,
    ];
    let image = boot_sector("triple-fault.img", &code);
    let (status, serial, stderr) = run_no_reboot(&image, "triple-fault");
    assert_eq!(serial, "T");
    assert!(status.success(), "status {status}: {stderr}");
    assert!(stderr.contains("triple fault"), "{stderr}");
    assert!(stderr.contains("EIP="), "{stderr}");
}

/// A minimal El Torito CD image: the boot record volume descriptor at sector 17, the boot
/// catalog at 18 (a validation entry and a no-emulation default entry) and `code` at 19,
/// loaded at 0000:7C00 as one 512-byte virtual sector.
fn el_torito_iso(name: &str, code: &[u8]) -> PathBuf {
    const SECTOR: usize = 2048;
    let mut iso = vec![0u8; 20 * SECTOR];
    // Primary volume descriptor (sector 16) and the set terminator are what readers expect.
    let pvd = &mut iso[16 * SECTOR..17 * SECTOR];
    pvd[0] = 1;
    pvd[1..6].copy_from_slice(b"CD001");
    pvd[6] = 1;
    let brvd = &mut iso[17 * SECTOR..18 * SECTOR];
    brvd[0] = 0;
    brvd[1..6].copy_from_slice(b"CD001");
    brvd[6] = 1;
    let spec = b"EL TORITO SPECIFICATION";
    brvd[7..7 + spec.len()].copy_from_slice(spec);
    brvd[0x47..0x4B].copy_from_slice(&18u32.to_le_bytes());
    let cat = &mut iso[18 * SECTOR..19 * SECTOR];
    cat[0] = 1; // validation entry, platform 0 (x86)
    cat[0x1E] = 0x55;
    cat[0x1F] = 0xAA;
    // The validation entry's 16-bit words sum to zero.
    let sum = cat[..32].chunks(2).fold(0u16, |s, w| {
        s.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
    });
    cat[0x1C..0x1E].copy_from_slice(&0u16.wrapping_sub(sum).to_le_bytes());
    cat[0x20] = 0x88; // bootable, no emulation
    cat[0x26..0x28].copy_from_slice(&1u16.to_le_bytes()); // one 512-byte sector
    cat[0x28..0x2C].copy_from_slice(&19u32.to_le_bytes());
    iso[19 * SECTOR..19 * SECTOR + code.len()].copy_from_slice(code);
    let dir = root().join("target/guests/out");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, iso).unwrap();
    path
}

#[test]
fn seabios_boots_an_el_torito_cdrom_over_atapi() {
    #[rustfmt::skip]
    let code = [
        0xBA, 0xF8, 0x03, 0xB0, b'C', 0xEE, // print 'C' on COM1
        0xBA, 0xF9, 0x0C, 0xB0, 0x06, 0xEE, // reset through 0xCF9: ends the -no-reboot run
        0xF4, 0xEB, 0xFD,
    ];
    let iso = el_torito_iso("boot.iso", &code);
    fetch("seabios");
    let serial = root().join("target/guests/out/cdrom.serial");
    let debug = root().join("target/guests/out/cdrom.debugcon");
    let _ = std::fs::remove_file(&serial);
    let out = Command::new(env!("CARGO_BIN_EXE_vireo"))
        .args([
            "run",
            "-m",
            "32",
            "-display",
            "none",
            "-no-reboot",
            "-boot",
            "d",
        ])
        .args(["-max-seconds", "60"])
        .arg("-cdrom")
        .arg(&iso)
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-debugcon")
        .arg(format!("file:{}", debug.display()))
        .stdin(Stdio::null())
        .output()
        .expect("run vireo");
    let debug_text = read(&debug);
    assert!(
        debug_text.contains("Booting from DVD/CD"),
        "{}",
        tail(&debug_text, 2000)
    );
    assert_eq!(read(&serial), "C", "{}", tail(&debug_text, 2000));
    assert!(out.status.success(), "status {}", out.status);
}
