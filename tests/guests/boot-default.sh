#!/usr/bin/env bash
# The default guest: Debian's i386 kernel and a busybox initramfs, booted on the standalone PC
# with the serial console on this terminal (Ctrl-A x quits, Ctrl-A c is the monitor; in the
# guest `reboot -f` ends the run). Fetches what it needs (as root the first time: apt-get),
# builds Vireo in release, and passes any extra arguments to `vireo run`, e.g.
#   tests/guests/boot-default.sh -append "console=ttyS0 vbench=0"
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
tests/guests/fetch.sh seabios >/dev/null
mapfile -t linux < <(tests/guests/fetch.sh linux)
cargo build --release --bin vireo
append="console=ttyS0"
for arg in "$@"; do [ "$arg" = -append ] && append= ; done
exec target/release/vireo run -m 256 -nographic -no-reboot \
    -kernel "${linux[0]}" -initrd "${linux[1]}" ${append:+-append "$append"} "$@"
