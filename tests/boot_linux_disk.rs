//! The kernel and initramfs of `boot_linux`, this time from an IDE disk image: SeaBIOS reads
//! the MBR, syslinux's boot code loads the kernel and initramfs from a FAT16 partition through
//! BIOS disk services, and Linux's own ata_piix driver then reads and writes the same disk.
//! Needs `tests/guests/fetch.sh seabios linux-disk` (as root the first time: it installs
//! syslinux, mtools, dosfstools and fdisk); the tests run it. The image's layout is described
//! in `tests/guests/disk-image.sh`.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;
use support::{Guest, boot_limit, fetch};

/// A sector in the image's spare area (after the partition), zeros as built.
const SPARE_SECTOR: u64 = 60000;
const SECTORS: u64 = 65536;

const STEP: Duration = Duration::from_secs(180);

/// Both tests ask for the image; fetching it once keeps two builds from racing.
fn disk_image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        fetch("seabios");
        fetch("linux-disk")
            .pop()
            .expect("fetch.sh printed the image path")
    })
}

fn boot(image: &Path, snapshot: bool, cdrom: Option<&Path>, memory: &str) -> Guest {
    let mut drive = format!("file={},format=raw,if=ide", image.display());
    if snapshot {
        drive.push_str(",snapshot=on");
    }
    let mut args: Vec<std::ffi::OsString> = [
        "run",
        "-m",
        memory,
        "-nographic",
        "-no-reboot",
        "-drive",
        &drive,
    ]
    .map(Into::into)
    .to_vec();
    if let Some(cd) = cdrom {
        args.extend(["-cdrom".into(), cd.into()]);
    }
    let mut guest = Guest::start(args);
    guest.expect("SYSLINUX", Duration::from_secs(120));
    guest.expect("Loading /modules.gz", boot_limit());
    let ready = guest.expect("VIREO-READY", boot_limit());
    println!("VIREO-READY through SeaBIOS and syslinux after {ready:?}");
    guest
}

/// Loads the disk modules shipped in the image's second initramfs archive (sd_mod and sr_mod
/// among them) and waits until the kernel has read the partition table through ata_piix.
fn attach_disk(guest: &mut Guest) {
    guest.send(
        "for m in $(cat /lib/modules/disk/order); do busybox insmod /lib/modules/disk/$m.ko; done\n",
    );
    guest.expect("sda: sda1", STEP);
    guest.expect("[sda] Attached SCSI disk", STEP);
    let console = guest.console();
    assert!(
        console.contains(&format!("[sda] {SECTORS} 512-byte logical blocks")),
        "{console}"
    );
}

/// The MD5 of `bytes` as `md5sum` on the host prints it, to compare with busybox's in the guest.
fn host_md5(bytes: &[u8]) -> String {
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run md5sum (coreutils)");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..32].to_string()
}

fn sector(image: &[u8], n: u64) -> &[u8] {
    &image[(n * 512) as usize..((n + 1) * 512) as usize]
}

#[test]
fn debian_kernel_boots_from_the_ide_disk_through_syslinux() {
    let image = disk_image();
    let original = std::fs::read(image).unwrap();
    assert_eq!(original.len() as u64, SECTORS * 512);
    // 5 GiB: 3 GiB below the PCI hole and 2 GiB from 4 GiB up, in the map SeaBIOS builds from
    // fw_cfg and CMOS and hands the kernel (a non-PAE kernel then uses the low 3 GiB).
    let mut guest = boot(image, true, None, "5G");
    for line in [
        "BIOS-e820: [mem 0x0000000000100000-0x00000000bfffdfff] usable",
        "BIOS-e820: [mem 0x0000000100000000-0x000000017fffffff] usable",
    ] {
        assert!(
            guest.console().contains(line),
            "no {line:?}:\n{}",
            guest.console()
        );
    }
    guest.send("echo answer=$((6*7))\n");
    guest.expect("answer=42", STEP);

    // The guest's driver reads what the host wrote: 16 MiB through bus-master DMA.
    attach_disk(&mut guest);
    let md5 = host_md5(&original[..16 << 20]);
    guest.send("busybox dd if=/dev/sda bs=64k count=256 2>/dev/null | busybox md5sum\n");
    guest.expect(&format!("{md5}  -"), STEP);

    // With snapshot=on a write is read back by the guest (after dropping its cache) but the
    // image file keeps its zeros.
    guest.send(&format!(
        "echo vireo-$((6*7))-overlay | busybox dd of=/dev/sda bs=512 seek={SPARE_SECTOR} conv=notrunc,fsync; \
         busybox blockdev --flushbufs /dev/sda; \
         busybox dd if=/dev/sda bs=512 skip={SPARE_SECTOR} count=1 2>/dev/null | busybox head -n 1\n"
    ));
    guest.expect("vireo-42-overlay", STEP);

    guest.send("reboot -f\n");
    let status = guest.wait_exit(STEP);
    assert!(status.success(), "exit status {status}");
    let after = std::fs::read(image).unwrap();
    assert!(
        after == original,
        "snapshot=on let a guest write reach {}",
        image.display()
    );
}

/// Also reads the untouched image as a CD-ROM through ata_piix's ATAPI path (sr_mod), all of
/// it, in 2048-byte sectors.
#[test]
fn guest_writes_reach_the_image_without_snapshot() {
    let dir = tempfile_dir();
    let copy = dir.join("disk.img");
    std::fs::copy(disk_image(), &copy).unwrap();
    let original = std::fs::read(&copy).unwrap();

    let mut guest = boot(&copy, false, Some(disk_image()), "256");
    attach_disk(&mut guest);
    guest.expect("[sr0] scsi3-mmc drive", STEP);
    guest.send("busybox dd if=/dev/sr0 bs=64k 2>/dev/null | busybox md5sum\n");
    guest.expect(&format!("{}  -", host_md5(&original)), STEP);
    guest.send(&format!(
        "echo vireo-$((6*7))-written | busybox dd of=/dev/sda bs=512 seek={SPARE_SECTOR} conv=notrunc,fsync; \
         busybox sync; echo synced-$((1+1))\n"
    ));
    guest.expect("synced-2", STEP);
    guest.send("reboot -f\n");
    let status = guest.wait_exit(STEP);
    assert!(status.success(), "exit status {status}");

    let after = std::fs::read(&copy).unwrap();
    assert_eq!(after.len(), original.len(), "the image keeps its size");
    let mut expected = b"vireo-42-written\n".to_vec();
    expected.resize(512, 0);
    let written = sector(&after, SPARE_SECTOR);
    assert!(
        written == &expected[..],
        "sector {SPARE_SECTOR} of the image starts {:?}",
        String::from_utf8_lossy(&written[..32])
    );
    // Nothing else changed: no stray writes elsewhere on the disk.
    for n in (0..SECTORS).filter(|&n| n != SPARE_SECTOR) {
        assert!(
            sector(&after, n) == sector(&original, n),
            "sector {n} changed"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A directory under target/ for this test's copy of the image, left behind when the test
/// fails (to look at) and replaced by the next run.
fn tempfile_dir() -> PathBuf {
    let dir = support::root().join("target/guests/tmp/disk-write");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
