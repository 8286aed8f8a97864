#!/usr/bin/env bash
# The whole test suite, as CI runs it (README's test command; .ci/run calls this).
# Release builds throughout: the CPU conformance and boot tests need an optimised interpreter,
# and one profile means one compilation.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d ../shared/conformance ]; then
    echo "error: ../shared (the steering repository's reference data) must sit beside this checkout;" >&2
    echo "       the CPU conformance tests read ../shared/conformance and the Xen test ../shared/xen-testbed." >&2
    exit 1
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings
cargo test --workspace --release

# Vireo as the device model of a real Xen HVM guest: Xen 4.17 and a Debian dom0 nested in
# QEMU (TCG), built from Debian's packages by ../shared/xen-testbed. Needs root.
if [ "${VIREO_SKIP_XEN_E2E:-0}" = 1 ]; then
    echo "NOTE: the Xen end-to-end test was skipped (VIREO_SKIP_XEN_E2E=1); CI never sets this." >&2
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "error: the Xen end-to-end test needs root (it boots the Xen testbed); run as root," >&2
    echo "       or set VIREO_SKIP_XEN_E2E=1 to run everything else." >&2
    exit 1
fi
need=()
for tool in qemu-system-x86_64:qemu-system-x86 qemu-system-i386:qemu-system-x86 debootstrap:debootstrap \
    mkfs.ext4:e2fsprogs cpio:cpio nasm:nasm; do
    command -v "${tool%%:*}" > /dev/null || need+=("${tool##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    # A mirror caught mid-sync fails one index (seen: bookworm-security i386): install from
    # what did update rather than give up.
    apt-get update -q || echo "warning: apt-get update reported errors; installing anyway" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
fi
cargo build --release --bin vireo-xen-dm
tests/xen/e2e.sh --check-image-with-qemu
SHARED_DIR="$(cd ../shared && pwd)" tests/xen/e2e.sh target/release/vireo-xen-dm
