#!/usr/bin/env bash
# Fetches and builds the guests the root package's boot tests use. Everything it builds goes to
# target/guests/ (ignored by git) and is reused; packages come from Debian with apt-get (needs
# root when something is missing).
#
# Usage: tests/guests/fetch.sh [seabios|boot-image|linux|linux-disk|multiboot|all]...   (default: seabios boot-image)
#   seabios     Debian's seabios (bios-256k.bin, vgabios-stdvga.bin) in /usr/share/seabios
#   boot-image  target/guests/boot.img: the 64 KiB IDE boot disk assembled from the end-to-end
#               boot sector (tests/xen/boot.asm: markers on 0xE9 and COM1, a bus-master DMA
#               read, poweroff through PIIX4 PM1a)
#   linux       target/guests/linux/: Debian's i386 kernel (linux-image-*-686, vmlinuz), vbench
#               (tests/guests/bench/vbench.c, gcc -m32 -static -O2) and an initramfs from
#               busybox-static (i386) whose /init prints VIREO-READY, runs `vbench N` (N from
#               `vbench=N` on the kernel command line, default 200, 0 skips it) and then a shell
#               on ttyS0; also qemu-system-data's linuxboot_dma.bin for -kernel through SeaBIOS.
#               Prints vmlinuz, initramfs.cpio.gz and vbench, in that order.
#   linux-disk  target/guests/linux/disk.img: that kernel and initramfs on a raw IDE disk image
#               booted by syslinux (MBR + FAT16 partition), built by tests/guests/disk-image.sh
#   multiboot   target/guests/multiboot/{mb.elf,mb-aout.bin}: the multiboot test kernel
#               (tests/guests/multiboot/) as an ELF (nasm + ld) and in a.out-kludge form (nasm)
# Prints the paths it produced, one per line.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT="$ROOT/target/guests"
mkdir -p "$OUT"

apt_install() {
    if [ "$(id -u)" != 0 ]; then
        echo "fetch.sh: error: $* missing and we are not root: apt-get install $*" >&2
        exit 1
    fi
    echo "fetch.sh: installing $* with apt-get" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" >/dev/null 2>&1 || {
        apt-get update >/dev/null 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" >/dev/null
    }
}

seabios() {
    [ -f /usr/share/seabios/bios-256k.bin ] && [ -f /usr/share/seabios/vgabios-stdvga.bin ] ||
        apt_install seabios
    echo /usr/share/seabios/bios-256k.bin
}

boot_image() {
    command -v nasm >/dev/null 2>&1 || apt_install nasm
    local src="$ROOT/tests/xen/boot.asm"
    if [ ! -f "$src" ]; then
        # Until the Xen end-to-end branch is merged, take the file from it.
        src="$OUT/boot.asm"
        git -C "$ROOT" show dev/xene2e:tests/xen/boot.asm >"$src" 2>/dev/null || {
            echo "fetch.sh: error: tests/xen/boot.asm not found (nor on branch dev/xene2e)" >&2
            exit 1
        }
    fi
    nasm -f bin -o "$OUT/boot.img.tmp" "$src"
    mv "$OUT/boot.img.tmp" "$OUT/boot.img"
    echo "$OUT/boot.img"
}

# The in-guest benchmark: a static i386 program, so the host runs the very same binary to get
# the checksum the guest must reproduce.
vbench() {
    local dir="$1" src="$HERE/bench/vbench.c"
    [ -x "$dir/vbench" ] && [ "$dir/vbench" -nt "$src" ] && return 0
    command -v gcc >/dev/null 2>&1 || apt_install gcc
    local probe="$dir/probe32"
    if ! printf 'int main(void){return 0;}\n' | gcc -m32 -static -x c -o "$probe" - 2>/dev/null; then
        apt_install gcc-multilib
    fi
    rm -f "$probe"
    gcc -m32 -static -O2 -Wall -Wextra -Werror -o "$dir/vbench.tmp" "$src"
    mv "$dir/vbench.tmp" "$dir/vbench"
}

linux() {
    local dir="$OUT/linux"
    mkdir -p "$dir"
    [ -f /usr/share/qemu/linuxboot_dma.bin ] || apt_install qemu-system-data
    if [ ! -f "$dir/vmlinuz" ] || [ ! -f "$dir/busybox" ]; then
        if ! dpkg --print-foreign-architectures | grep -qx i386; then
            [ "$(id -u)" = 0 ] || { echo "fetch.sh: error: need root for dpkg --add-architecture i386" >&2; exit 1; }
            dpkg --add-architecture i386
            apt-get update >/dev/null 2>&1 || true
        fi
        local dl="$dir/deb"
        mkdir -p "$dl"
        local kpkg
        kpkg=$(apt-cache depends linux-image-686:i386 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
        [ -n "$kpkg" ] || { apt-get update >/dev/null 2>&1 || true; kpkg=$(apt-cache depends linux-image-686:i386 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'); }
        (cd "$dl" && apt-get download "${kpkg%:i386}:i386" busybox-static:i386 >/dev/null)
        rm -rf "$dir/x" && mkdir -p "$dir/x"
        for deb in "$dl"/*.deb; do dpkg -x "$deb" "$dir/x"; done
        cp "$(ls "$dir"/x/boot/vmlinuz-* | head -n1)" "$dir/vmlinuz"
        cp "$dir/x/bin/busybox" "$dir/busybox"
        rm -rf "$dir/x"
    fi
    vbench "$dir"
    if [ ! -s "$dir/initramfs.cpio.gz" ] || [ "$HERE/fetch.sh" -nt "$dir/initramfs.cpio.gz" ] ||
        [ "$dir/vbench" -nt "$dir/initramfs.cpio.gz" ]; then
        command -v cpio >/dev/null 2>&1 || apt_install cpio
        local root="$dir/rootfs"
        rm -rf "$root" && mkdir -p "$root"/{bin,sbin,proc,sys,dev,tmp,etc}
        cp "$dir/busybox" "$root/bin/busybox"
        cp "$dir/vbench" "$root/bin/vbench"
        for a in sh mount uname cat echo head ls poweroff reboot sleep; do ln -sf busybox "$root/bin/$a"; done
        cat >"$root/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo VIREO-READY
rounds=200
for arg in $(cat /proc/cmdline); do
    case "$arg" in vbench=*) rounds=${arg#vbench=} ;; esac
done
[ "$rounds" = 0 ] || /bin/vbench "$rounds"
exec /bin/sh </dev/ttyS0 >/dev/ttyS0 2>&1
INIT
        chmod +x "$root/init"
        (cd "$root" && find . | cpio -o -H newc --quiet | gzip -9) >"$dir/initramfs.cpio.gz.tmp"
        mv "$dir/initramfs.cpio.gz.tmp" "$dir/initramfs.cpio.gz"
        rm -rf "$root"
    fi
    echo "$dir/vmlinuz"
    echo "$dir/initramfs.cpio.gz"
    echo "$dir/vbench"
}

multiboot() {
    command -v nasm >/dev/null 2>&1 || apt_install nasm
    command -v ld >/dev/null 2>&1 || apt_install binutils
    local src="$ROOT/tests/guests/multiboot" dir="$OUT/multiboot"
    mkdir -p "$dir"
    # Per-process temporaries: tests run this step concurrently; the renames are atomic.
    local tmp="$dir/tmp.$$"
    mkdir -p "$tmp"
    nasm -f elf32 -I "$src/" -o "$tmp/elf.o" "$src/elf.asm"
    ld -m elf_i386 -T "$src/elf.ld" -o "$tmp/mb.elf" "$tmp/elf.o"
    nasm -f bin -I "$src/" -o "$tmp/mb-aout.bin" "$src/aout.asm"
    mv "$tmp/mb.elf" "$dir/mb.elf"
    mv "$tmp/mb-aout.bin" "$dir/mb-aout.bin"
    rm -rf "$tmp"
    echo "$dir/mb.elf"
    echo "$dir/mb-aout.bin"
}

[ $# -gt 0 ] || set -- seabios boot-image
for what in "$@"; do
    case "$what" in
        seabios) seabios ;;
        boot-image) boot_image ;;
        linux) linux ;;
        linux-disk) linux >/dev/null; "$HERE/disk-image.sh" "$OUT/linux" ;;
        multiboot) multiboot ;;
        all) seabios; boot_image; linux; "$HERE/disk-image.sh" "$OUT/linux"; multiboot ;;
        *) echo "fetch.sh: unknown guest '$what' (seabios, boot-image, linux, linux-disk, multiboot, all)" >&2; exit 2 ;;
    esac
done
