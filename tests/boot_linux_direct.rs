//! Debian's i386 kernel entered directly (`-bios none`: the 32-bit boot protocol, our zero page
//! and e820 map, no firmware, no ACPI or MP tables) to the busybox shell on ttyS0, then
//! rebooted: the reset enters the kernel again. Needs `tests/guests/fetch.sh linux` (as root
//! the first time: Debian packages); the test runs it.

mod support;

use std::time::Duration;
use support::{Guest, boot_limit, fetch};

#[test]
fn debian_i386_kernel_boots_without_firmware_to_a_busybox_shell() {
    let paths = fetch("linux");
    let (kernel, initrd) = (&paths[0], &paths[1]);
    let mut args: Vec<&std::ffi::OsStr> = ["run", "-m", "256", "-nographic", "-bios", "none"]
        .iter()
        .map(std::ffi::OsStr::new)
        .collect();
    args.extend([
        "-append".as_ref(),
        "console=ttyS0 panic=-1 vbench=0".as_ref(),
        "-kernel".as_ref(),
        kernel.as_os_str(),
        "-initrd".as_ref(),
        initrd.as_os_str(),
    ]);
    let mut guest = Guest::start(args);
    guest.expect("VIREO-READY", boot_limit());
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

    guest.send("uname -m; echo answer=$((6*7))\n");
    guest.expect("answer=42", Duration::from_secs(120));
    assert!(guest.console().contains("i686"), "{}", guest.console());
    // No ACPI: the reboot goes through the keyboard controller's reset line, and without
    // firmware to load it again the board re-enters the kernel from its saved images.
    guest.send("reboot -f\n");
    guest.expect_nth("VIREO-READY", 2, boot_limit());
    assert_eq!(guest.console().matches("Linux version").count(), 2);
    guest.send("echo again=$((6*7))\n");
    guest.expect("again=42", Duration::from_secs(120));
}
