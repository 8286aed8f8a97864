//! Debian's i386 kernel entered directly (`-bios none`: the 32-bit boot protocol, our zero page
//! and e820 map, no firmware, no ACPI or MP tables) to the busybox shell on ttyS0, then
//! rebooted: the reset enters the kernel again.
//!
//! Slow on the tier-0 CPU, so ignored by default:
//! `cargo test --release --test boot_linux_direct -- --ignored --nocapture`.
//! Needs `tests/guests/fetch.sh linux` (as root the first time: Debian packages).

mod support;

use std::ffi::OsStr;
use std::time::Duration;

use support::{Guest, fetch};

#[test]
#[ignore = "slow on the tier-0 CPU: a minute or more; run with --ignored"]
fn debian_i386_kernel_boots_without_firmware_to_a_busybox_shell() {
    let paths = fetch("linux");
    let (kernel, initrd) = (&paths[0], &paths[1]);
    let limit = Duration::from_secs(
        std::env::var("VIREO_LINUX_BOOT_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(900),
    );
    let args: Vec<&OsStr> = [
        "-m",
        "256",
        "-nographic",
        "-bios",
        "none",
        "-append",
        "console=ttyS0 panic=-1",
    ]
    .iter()
    .map(OsStr::new)
    .chain([
        OsStr::new("-kernel"),
        kernel.as_os_str(),
        OsStr::new("-initrd"),
        initrd.as_os_str(),
    ])
    .collect();
    let mut guest = Guest::start(&args);
    let Some(ready) = guest.wait_for("VIREO-READY", limit) else {
        panic!(
            "no ready marker within {limit:?}; console:\n{}",
            guest.console()
        );
    };
    println!("VIREO-READY after {ready:?}");
    let console = guest.console();
    // Our e820 map, as the kernel read it from the zero page.
    for line in [
        "BIOS-e820: [mem 0x0000000000000000-0x000000000009ffff] usable",
        "BIOS-e820: [mem 0x00000000000a0000-0x00000000000fffff] reserved",
        "BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable",
        "BIOS-e820: [mem 0x00000000ffff0000-0x00000000ffffffff] reserved",
        "Kernel command line: console=ttyS0 panic=-1",
    ] {
        assert!(console.contains(line), "no {line:?} in:\n{console}");
    }
    // The initrd was found where the zero page said (it unpacked: /init ran and printed).
    assert!(console.contains("RAMDISK: [mem 0x"), "{console}");

    guest.type_line("uname -m; echo answer=$((6*7))");
    assert!(
        guest
            .wait_for("answer=42", Duration::from_secs(120))
            .is_some(),
        "{}",
        guest.console()
    );
    assert!(guest.console().contains("i686"), "{}", guest.console());
    // No ACPI: the reboot goes through the keyboard controller's reset line, and without
    // firmware to load it again the board re-enters the kernel from its saved images.
    guest.type_line("reboot -f");
    let deadline = std::time::Instant::now() + limit;
    while guest.console().matches("VIREO-READY").count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no second boot within {limit:?}; console:\n{}",
            guest.console()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(guest.console().matches("Linux version").count(), 2);
    guest.type_line("echo again=$((6*7))");
    assert!(
        guest
            .wait_for("again=42", Duration::from_secs(120))
            .is_some(),
        "{}",
        guest.console()
    );
}
