#!/usr/bin/env bash
# Benchmark, not a test: boots the same Debian i386 kernel + initramfs (tests/guests/fetch.sh
# linux) under QEMU's TCG and under Vireo, interleaved, RUNS times each, and prints a markdown
# table of medians: wall time from the emulator's start to the guest's VIREO-READY line, and the
# time vbench (tests/guests/bench/vbench.c) reports inside the guest (the guest's own
# CLOCK_MONOTONIC), with the ratios Vireo / QEMU; also vbench's native time at the same size.
# Every guest checksum is checked against the native run's.
#
# Usage: tests/guests/compare-qemu.sh [-n ROUNDS] [-r RUNS] [-c QEMU_CPU] [-j JIT] [-t TIMEOUT_SECS]
#   -n  vbench rounds (default 200: ~50 ms natively, a few seconds under Vireo's tier 0)
#   -r  boots per emulator (default 3)
#   -c  QEMU -cpu model (default: QEMU's own default, qemu32, which offers SSE2, so the guest's
#       libc takes its SSE2 copy routines there; `-c pentium2`, without SSE like Vireo's CPU,
#       makes both run the same code)
#   -j  Vireo's -jit mode: auto (default: tier 0 plus the JIT), off (tier 0 only) or always
#   -t  limit for one boot (default 900 s)
# Environment: VIREO=path to the vireo binary (default: cargo build --release, then
# ${CARGO_TARGET_DIR:-target}/release/vireo). Needs root the first time (apt-get install
# qemu-system-x86, and what fetch.sh installs).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

rounds=200 runs=3 qemu_cpu="" limit=900 jit=auto
while getopts "n:r:c:j:t:h" opt; do
    case "$opt" in
        n) rounds=$OPTARG ;;
        r) runs=$OPTARG ;;
        c) qemu_cpu=$OPTARG ;;
        j) jit=$OPTARG ;;
        t) limit=$OPTARG ;;
        *) sed -n '2,20p' "$0" >&2; exit 2 ;;
    esac
done

log() { echo "compare-qemu: $*" >&2; }

if ! command -v qemu-system-i386 >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || { log "error: qemu-system-i386 missing: apt-get install qemu-system-x86"; exit 1; }
    log "installing qemu-system-x86 with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y qemu-system-x86 >/dev/null 2>&1 || {
        apt-get update >/dev/null 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y qemu-system-x86 >/dev/null
    }
fi

mapfile -t paths < <("$HERE/fetch.sh" seabios linux)
kernel=${paths[1]} initrd=${paths[2]} vbench=${paths[3]}

if [ -z "${VIREO:-}" ]; then
    (cd "$ROOT" && cargo build --release --quiet --bin vireo)
    VIREO=${CARGO_TARGET_DIR:-$ROOT/target}/release/vireo
fi
[ -x "$VIREO" ] || { log "error: no vireo binary at $VIREO"; exit 1; }

append="console=ttyS0 panic=-1 vbench=$rounds"
common=(-m 256 -nographic -no-reboot -kernel "$kernel" -initrd "$initrd" -append "$append")
qemu_cmd=(qemu-system-i386 -accel tcg,thread=single ${qemu_cpu:+-cpu "$qemu_cpu"} "${common[@]}")
vireo_cmd=("$VIREO" run -jit "$jit" "${common[@]}")

# The native checksum and time (median of RUNS) of the very binary the guest runs.
native_sum="" native_ms=()
for ((i = 0; i < runs; i++)); do
    line=$("$vbench" "$rounds" | grep '^VBENCH ')
    native_sum=$(sed -n 's/.* checksum=\([^ ]*\).*/\1/p' <<<"$line")
    native_ms+=("$(sed -n 's/.* time_ms=\([^ ]*\).*/\1/p' <<<"$line")")
done

# One boot: prints "READY_SECONDS GUEST_MS CHECKSUM WALL_MS PEAK_RSS_KB". Lines are timestamped as they
# arrive (EPOCHREALTIME, no fork per line); WALL_MS is the host's time from VIREO-READY to the
# VBENCH line, which bounds the guest clock's figure from above (a guest clock that ran slow
# would flatter the emulator). The emulator is killed once vbench has reported, after its peak
# resident memory (VmHWM) is read.
boot() {
    local start ready="" ready_at="" wall line now deadline fd pid hwm
    start=$EPOCHREALTIME
    deadline=$((${start%.*} + limit))
    exec {fd}< <(exec "$@" </dev/null 2>/dev/null)
    pid=$!
    while :; do
        now=${EPOCHREALTIME%.*}
        if ((now >= deadline)) || ! IFS= read -r -t $((deadline - now)) -u "$fd" line; then
            kill "$pid" 2>/dev/null || true
            exec {fd}<&-
            log "error: $1: no VBENCH line within ${limit}s (ready: ${ready:-never})"
            return 1
        fi
        line=${line%$'\r'}
        if [ -z "$ready" ] && [ "$line" = VIREO-READY ]; then
            ready_at=$EPOCHREALTIME
            ready=$(awk -v a="$start" -v b="$ready_at" 'BEGIN { printf "%.2f", b - a }')
        elif [[ $line == "VBENCH "* ]]; then
            hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)
            kill "$pid" 2>/dev/null || true
            exec {fd}<&-
            wait "$pid" 2>/dev/null || true
            wall=$(awk -v a="$ready_at" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", (b - a) * 1000 }')
            echo "$ready $(sed -n 's/.* time_ms=\([^ ]*\).*/\1/p' <<<"$line") $(sed -n 's/.* checksum=\([^ ]*\).*/\1/p' <<<"$line") $wall ${hwm:-0}"
            return 0
        fi
    done
}

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
secs() { awk -v ms="$1" 'BEGIN { printf "%.2f", ms / 1000 }'; }

load_before=$(uptime)
q_ready=() q_ms=() q_wall=() q_rss=() v_ready=() v_ms=() v_wall=() v_rss=() bad=0
for ((i = 1; i <= runs; i++)); do
    # Alternate which emulator goes first so drift in the machine's load hits both alike.
    order=(qemu vireo)
    ((i % 2)) || order=(vireo qemu)
    for emu in "${order[@]}"; do
        if [ "$emu" = qemu ]; then r=$(boot "${qemu_cmd[@]}"); else r=$(boot "${vireo_cmd[@]}"); fi
        read -r ready ms sum wall rss <<<"$r"
        log "run $i $emu: ready ${ready}s, vbench ${ms} ms (host: ${wall} ms), checksum $sum"
        if [ "$sum" != "$native_sum" ]; then
            log "error: $emu computed checksum $sum, the host CPU $native_sum"
            bad=1
        fi
        if [ "$emu" = qemu ]; then
            q_ready+=("$ready") q_ms+=("$ms") q_wall+=("$wall") q_rss+=("$rss")
        else
            v_ready+=("$ready") v_ms+=("$ms") v_wall+=("$wall") v_rss+=("$rss")
        fi
    done
done
load_after=$(uptime)

mqr=$(median "${q_ready[@]}") mvr=$(median "${v_ready[@]}")
mqm=$(median "${q_ms[@]}") mvm=$(median "${v_ms[@]}") mnm=$(median "${native_ms[@]}")
mqw=$(median "${q_wall[@]}") mvw=$(median "${v_wall[@]}")
mqs=$(median "${q_rss[@]}") mvs=$(median "${v_rss[@]}")
mib() { awk -v kb="$1" 'BEGIN { printf "%.0f", kb / 1024 }'; }
echo "$(date -u '+%Y-%m-%d %H:%M UTC'): $runs boots each, interleaved; vbench $rounds rounds;" \
    "QEMU $(qemu-system-i386 --version | sed -n '1s/.*version \([^ ]*\).*/\1/p') -accel tcg,thread=single${qemu_cpu:+ -cpu $qemu_cpu}"
echo "load before: ${load_before##*load average: }; after: ${load_after##*load average: }"
echo
echo "| measure (median of $runs) | Vireo (-jit $jit) | QEMU TCG | Vireo / QEMU |"
echo "|---|---:|---:|---:|"
echo "| start → VIREO-READY | ${mvr} s | ${mqr} s | $(ratio "$mvr" "$mqr") |"
echo "| vbench $rounds rounds, guest clock | $(secs "$mvm") s | $(secs "$mqm") s | $(ratio "$mvm" "$mqm") |"
echo "| VIREO-READY → VBENCH line, host clock (vbench + its start) | $(secs "$mvw") s | $(secs "$mqw") s | $(ratio "$mvw" "$mqw") |"
echo "| vbench $rounds rounds, native (host, same binary) | $(secs "$mnm") s | | |"
echo "| peak resident memory of the process | $(mib "$mvs") MiB | $(mib "$mqs") MiB | $(ratio "$mvs" "$mqs") |"
echo "| slowdown vs native | $(ratio "$mvm" "$mnm")× | $(ratio "$mqm" "$mnm")× | |"
echo
echo "all runs — Vireo ready: ${v_ready[*]} s; vbench: ${v_ms[*]} ms (host: ${v_wall[*]} ms)"
echo "all runs — QEMU ready: ${q_ready[*]} s; vbench: ${q_ms[*]} ms (host: ${q_wall[*]} ms)"
echo "checksum: $native_sum $([ "$bad" = 0 ] && echo "(all guests equal the native run)" || echo "(MISMATCH, see above)")"
exit "$bad"
