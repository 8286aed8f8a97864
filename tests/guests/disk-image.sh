#!/usr/bin/env bash
# Builds a bootable raw disk image from the guest `fetch.sh linux` leaves in DIR: an MBR with
# syslinux's boot code, one bootable FAT16 partition holding syslinux, the kernel (vmlinuz),
# the initramfs unchanged (initrd.gz) and a second cpio archive with the kernel's IDE disk
# modules (modules.gz), which syslinux appends to the first. Debian's 686 kernel has libata,
# ata_piix and sd_mod as modules, and the busybox /init loads none; with them in the initramfs
# a test can `insmod` them and reach the disk as /dev/sda. Everything is built in image files
# (sfdisk, mkfs.fat, mtools, `syslinux --install` through mtools): no loop device, no mount.
#
# Usage: tests/guests/disk-image.sh DIR      (fetch.sh linux-disk runs it with target/guests/linux)
# Writes DIR/disk.img (rebuilt when the kernel, the initramfs or this script is newer) and prints
# its path. Layout, in 512-byte sectors, which tests rely on:
#   0             MBR: syslinux mbr.bin, one partition entry (type 0x0e, bootable)
#   2048..51199   the FAT16 partition (24 MiB)
#   51200..65535  spare, zeros: tests write here to see guest writes reach the image
set -euo pipefail
dir=$(cd "${1:?usage: disk-image.sh DIR}" && pwd)
img="$dir/disk.img"
kernel="$dir/vmlinuz"
initrd="$dir/initramfs.cpio.gz"
for f in "$kernel" "$initrd"; do
    [ -s "$f" ] || { echo "disk-image.sh: error: $f missing (run tests/guests/fetch.sh linux)" >&2; exit 1; }
done

if [ -s "$img" ] && [ "$img" -nt "$kernel" ] && [ "$img" -nt "$initrd" ] && [ "$img" -nt "$0" ]; then
    echo "$img"
    exit 0
fi

need() { # need COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 && return
    if [ "$(id -u)" != 0 ]; then
        echo "disk-image.sh: error: $1 missing and we are not root: apt-get install $2" >&2
        exit 1
    fi
    echo "disk-image.sh: installing $2 with apt-get" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y "$2" >/dev/null 2>&1 || {
        apt-get update >/dev/null 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y "$2" >/dev/null
    }
}
need sfdisk fdisk
need mkfs.fat dosfstools
need mcopy mtools
need syslinux syslinux
need cpio cpio
mbr=/usr/lib/syslinux/mbr/mbr.bin
[ -f "$mbr" ] || need /usr/lib/syslinux/mbr/mbr.bin syslinux-common

# The kernel's release string, from the bzImage header (setup header field kernel_version at
# 0x20E: an offset from 0x200 to a NUL-terminated string starting with the release).
voff=$(od -An -tu2 -j 526 -N 2 "$kernel" | tr -d ' ')
release=$(dd if="$kernel" bs=1 skip=$((voff + 512)) count=64 2>/dev/null | tr '\0' '\n' | head -n1 | cut -d' ' -f1)
[ -n "$release" ] || { echo "disk-image.sh: error: no version string in $kernel" >&2; exit 1; }

work=$(mktemp -d "$dir/disk.XXXXXX")
trap 'rm -rf "$work"' EXIT

deb=$(ls "$dir"/deb/linux-image-"$release"_*_i386.deb 2>/dev/null | head -n1 || true)
if [ -z "$deb" ]; then
    mkdir -p "$dir/deb"
    (cd "$dir/deb" && apt-get download "linux-image-$release:i386" >/dev/null)
    deb=$(ls "$dir"/deb/linux-image-"$release"_*_i386.deb | head -n1)
fi
dpkg -x "$deb" "$work/x"
kmod="$work/x/lib/modules/$release/kernel"

# Dependencies before their users (from each module's `depends=`). crc-t10dif and
# crc64-rocksoft fall back to table code when no crypto driver is loaded.
order="lib/crc64 lib/crc64-rocksoft crypto/crct10dif_common lib/crc-t10dif block/t10-pi
drivers/scsi/scsi_common drivers/scsi/scsi_mod drivers/ata/libata drivers/ata/ata_piix
drivers/scsi/sd_mod drivers/cdrom/cdrom drivers/scsi/sr_mod"
mkdir -p "$work/m/lib/modules/disk"
: >"$work/m/lib/modules/disk/order"
for m in $order; do
    name=$(basename "$m")
    cp "$kmod/$m.ko" "$work/m/lib/modules/disk/$name.ko"
    echo "$name" >>"$work/m/lib/modules/disk/order"
done
(cd "$work/m" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -9n) >"$work/modules.gz"

cat >"$work/syslinux.cfg" <<'CFG'
SERIAL 0 115200
PROMPT 0
TIMEOUT 0
DEFAULT linux
LABEL linux
  LINUX /vmlinuz
  INITRD /initrd.gz,/modules.gz
  APPEND console=ttyS0 panic=-1 vbench=0
CFG

part_start=2048
part_sectors=49152
total_sectors=65536

part="$work/part.img"
mkfs.fat -C -F 16 -h "$part_start" -i 56495245 -n VIREO "$part" $((part_sectors / 2)) >/dev/null
export MTOOLS_SKIP_CHECK=1
mcopy -i "$part" "$kernel" ::/vmlinuz
mcopy -i "$part" "$initrd" ::/initrd.gz
mcopy -i "$part" "$work/modules.gz" ::/modules.gz
mcopy -i "$part" "$work/syslinux.cfg" ::/syslinux.cfg
syslinux --install "$part"

disk="$work/disk.img"
truncate -s $((total_sectors * 512)) "$disk"
printf 'label: dos\nlabel-id: 0x56495245\nunit: sectors\nstart=%d, size=%d, type=e, bootable\n' \
    "$part_start" "$part_sectors" | sfdisk --no-reread --no-tell-kernel -q "$disk" >/dev/null
dd if="$mbr" of="$disk" bs=440 count=1 conv=notrunc status=none
dd if="$part" of="$disk" bs=512 seek="$part_start" conv=notrunc status=none
mv "$disk" "$img"
echo "$img"
