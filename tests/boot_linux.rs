//! Debian's i386 kernel through `-kernel/-initrd/-append` (fw_cfg and SeaBIOS's linuxboot
//! option ROM) to the busybox shell on ttyS0. Needs `tests/guests/fetch.sh seabios linux`
//! (as root the first time: it downloads Debian's linux-image-*-686 and busybox-static for
//! i386); the test runs it.

mod support;

use std::time::Duration;
use support::{Guest, boot_limit, fetch};

#[test]
fn debian_i386_kernel_boots_to_a_busybox_shell() {
    fetch("seabios");
    let paths = fetch("linux");
    let (kernel, initrd) = (&paths[0], &paths[1]);
    let mut guest = Guest::start(
        ["run", "-m", "256", "-nographic", "-no-reboot", "-kernel"]
            .iter()
            .map(std::ffi::OsStr::new)
            .chain([kernel.as_os_str(), "-initrd".as_ref(), initrd.as_os_str()])
            .chain(["-append".as_ref(), "console=ttyS0 panic=-1".as_ref()]),
    );
    guest.expect("VIREO-READY", boot_limit());
    guest.send("uname -m; echo answer=$((6*7)); head -n 5 /proc/cpuinfo; echo done=$((1+1))\n");
    guest.expect("done=2", Duration::from_secs(120));
    guest.expect("answer=42", Duration::ZERO);
    let console = guest.console();
    assert!(console.contains("\ni686"), "{console}");
    assert!(console.contains("vendor_id\t: "), "{console}");
    guest.send("reboot -f\n");
    let status = guest.wait_exit(Duration::from_secs(120));
    assert!(status.success(), "exit status {status}");
}
