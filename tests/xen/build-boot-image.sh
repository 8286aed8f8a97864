#!/usr/bin/env bash
# Assembles tests/xen/boot.asm into the two raw 64 KiB disk images the Xen end-to-end test boots:
#   target/xen-e2e/boot.img       DMA check, then ACPI S5 poweroff
#   target/xen-e2e/boot-wait.img  DMA check, then a heartbeat line about once a second (xl save/restore)
# Usage: tests/xen/build-boot-image.sh [OUTDIR]     (default: <repo>/target/xen-e2e)
# Installs nasm with apt-get when it is missing (Debian; needs root).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUTDIR=${1:-$ROOT/target/xen-e2e}

if ! command -v nasm >/dev/null 2>&1; then
    echo "build-boot-image: nasm missing, installing it with apt-get" >&2
    if [ "$(id -u)" != 0 ]; then
        echo "build-boot-image: error: nasm is not installed and we are not root (apt-get install nasm)" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y nasm >/dev/null 2>&1 || {
        apt-get update >/dev/null 2>&1
        DEBIAN_FRONTEND=noninteractive apt-get install -y nasm >/dev/null
    }
fi

mkdir -p "$OUTDIR"
nasm -f bin -o "$OUTDIR/boot.img" "$HERE/boot.asm"
nasm -f bin -DWAIT -o "$OUTDIR/boot-wait.img" "$HERE/boot.asm"
for img in "$OUTDIR/boot.img" "$OUTDIR/boot-wait.img"; do
    size=$(stat -c %s "$img")
    sig=$(od -An -tx1 -j510 -N2 "$img" | tr -d ' ')
    if [ "$size" != 65536 ] || [ "$sig" != 55aa ]; then
        echo "build-boot-image: error: $img is $size bytes, boot signature '$sig'" >&2
        exit 1
    fi
done
echo "$OUTDIR/boot.img"
echo "$OUTDIR/boot-wait.img"
