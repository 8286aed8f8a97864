#!/usr/bin/env bash
# End-to-end test of a Xen device model (Vireo's vireo-xen-dm) on the real Xen testbed of
# ../shared/xen-testbed (Xen 4.17 + Debian dom0 inside QEMU/TCG). See tests/xen/README.md.
#
#   tests/xen/e2e.sh [DM]                  testbed run; DM = path of the device model binary
#                                          (default target/release/vireo-xen-dm), or "qemu-xen"
#                                          (Debian's real qemu-xen in dom0: the reference), or
#                                          "fake" (the testbed's fake-dm.py: start-up plumbing only)
#   tests/xen/e2e.sh --check-image-with-qemu
#                                          boots the images under the host's qemu-system-i386 only
# Options:  --modes LIST   comma list of boot-stdvga, boot-none, destroy, save-restore (default all),
#                          ref-boot-stdvga, ref-boot-none (the same boot with qemu-xen, for comparison)
#           --wait S       seconds to wait for each guest marker (default 400; qemu-xen took 10-140 s)
#           --results DIR  where results go (default target/xen-e2e/results)
#           --disk-backend qdisk|phy  PV backend libxl sets up beside the emulated disk (default qdisk)
#           --cfg-extra FILE  extra xl config lines for every guest (e.g. device_model_args=[...])
# Env:      SHARED_DIR (default <repo>/../shared), OUT (testbed build, as in the testbed scripts),
#           plus run.sh's knobs (MEM, SMP, DOM0_MEM, TIMEOUT, ...).
# Exit status 0 only if every check passed; the last line is "xen-e2e: N passed, M failed".
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BASE=$ROOT/target/xen-e2e

MODE=testbed
DM=$ROOT/target/release/vireo-xen-dm
MODES=boot-stdvga,boot-none,destroy,save-restore
WAIT_S=400
DISK_BACKEND=qdisk
CFG_EXTRA=
RESULTS=$BASE/results
while [ $# -gt 0 ]; do
    case "$1" in
        --check-image-with-qemu) MODE=qemu ;;
        --modes) MODES=$2; shift ;;
        --modes=*) MODES=${1#*=} ;;
        --wait) WAIT_S=$2; shift ;;
        --wait=*) WAIT_S=${1#*=} ;;
        --results) RESULTS=$2; shift ;;
        --results=*) RESULTS=${1#*=} ;;
        --disk-backend) DISK_BACKEND=$2; shift ;;
        --disk-backend=*) DISK_BACKEND=${1#*=} ;;
        --cfg-extra) CFG_EXTRA=$2; shift ;;
        --cfg-extra=*) CFG_EXTRA=${1#*=} ;;
        --dm) DM=$2; shift ;;
        --dm=*) DM=${1#*=} ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        -*) echo "e2e: unknown option $1" >&2; exit 2 ;;
        *) DM=$1 ;;
    esac
    shift
done

"$HERE/build-boot-image.sh" "$BASE" >/dev/null
IMG=$BASE/boot.img
IMG_WAIT=$BASE/boot-wait.img

passed=0; failed=0
check() { # check DESCRIPTION COMMAND...
    local what=$1; shift
    if "$@"; then echo "PASS $what"; passed=$((passed + 1))
    else echo "FAIL $what"; failed=$((failed + 1)); fi
}
finish() {
    echo "xen-e2e: $passed passed, $failed failed"
    [ "$failed" = 0 ] && [ "$passed" -gt 0 ]
}

# ---------------------------------------------------------------------------------------------
# Oracle 1: the images under the host's own QEMU (TCG, Debian's SeaBIOS, QEMU's PIIX3 IDE and
# PIIX4 PM). Nothing of Vireo is involved: this proves the images, not the device model.
# ---------------------------------------------------------------------------------------------
if [ "$MODE" = qemu ]; then
    if ! command -v qemu-system-i386 >/dev/null 2>&1; then
        echo "e2e: installing qemu-system-x86 (for qemu-system-i386)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y qemu-system-x86 >/dev/null
    fi
    Q=$RESULTS/qemu; rm -rf "$Q"; mkdir -p "$Q"
    runq() { # runq IMAGE TAG SECONDS -> sets qrc, qsecs
        local t0; t0=$(date +%s.%N)
        set +e
        timeout "$3" qemu-system-i386 -machine pc -display none -no-reboot -monitor none \
            -drive "file=$1,format=raw,if=ide" \
            -debugcon "file:$Q/$2-debugcon.log" -serial "file:$Q/$2-serial.log" \
            </dev/null >"$Q/$2-qemu.log" 2>&1
        qrc=$?
        set -e
        qsecs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b-a}')
    }
    has() { grep -q "$2" "$1" 2>/dev/null; }
    lacks() { ! grep -q "$2" "$1" 2>/dev/null; }
    count_ge() { [ "$(grep -c "$2" "$1" 2>/dev/null || true)" -ge "$3" ]; }

    cp "$IMG" "$Q/boot.img"   # a copy: QEMU opens it read-write
    runq "$Q/boot.img" boot 60
    echo "boot.img: qemu exit status $qrc after ${qsecs}s"
    check "boot.img: QEMU exits by itself (ACPI S5 poweroff) within 60 s" [ "$qrc" = 0 ]
    for log in debugcon serial; do
        check "boot.img: $log shows 'boot sector running'" has "$Q/boot-$log.log" 'VIREO-E2E: boot sector running'
        check "boot.img: $log shows 'DMA read OK VIREO-E2E-PAYLOAD'" has "$Q/boot-$log.log" 'VIREO-E2E: DMA read OK VIREO-E2E-PAYLOAD sectors=16'
        check "boot.img: $log shows no FAIL/poweroff failed" lacks "$Q/boot-$log.log" 'FAIL\|poweroff failed'
    done

    cp "$IMG_WAIT" "$Q/boot-wait.img"
    runq "$Q/boot-wait.img" wait 8
    echo "boot-wait.img: qemu ended with status $qrc after ${qsecs}s (124 = stopped by timeout, expected)"
    check "boot-wait.img: still running after 8 s (no poweroff)" [ "$qrc" = 124 ]
    for log in debugcon serial; do
        check "boot-wait.img: $log shows 'DMA read OK'" has "$Q/wait-$log.log" 'VIREO-E2E: DMA read OK'
        check "boot-wait.img: $log shows >= 3 heartbeats" count_ge "$Q/wait-$log.log" 'VIREO-E2E: heartbeat 000' 3
    done

    # The check must be able to fail: a copy with sector 9's sequence word damaged.
    cp "$IMG" "$Q/bad.img"
    printf 'XX' | dd of="$Q/bad.img" bs=1 seek=$((9 * 512 + 510)) conv=notrunc status=none
    runq "$Q/bad.img" bad 6
    check "damaged image: reports 'FAIL data', never 'DMA read OK'" \
        bash -c "grep -q 'VIREO-E2E: FAIL data' '$Q/bad-debugcon.log' && ! grep -q 'DMA read OK' '$Q/bad-debugcon.log'"
    echo "logs in $Q"
    finish
    exit
fi

# ---------------------------------------------------------------------------------------------
# Oracle 2 / the real test: the testbed.
# ---------------------------------------------------------------------------------------------
SHARED=${SHARED_DIR:-$ROOT/../shared}
TESTBED=$SHARED/xen-testbed
if [ ! -x "$TESTBED/run.sh" ]; then
    echo "e2e: error: the Xen testbed is missing: expected $TESTBED/run.sh" >&2
    echo "e2e:        ../shared (the steering repository's reference data) must sit beside this" >&2
    echo "e2e:        checkout, or set SHARED_DIR to its path." >&2
    exit 2
fi
case "$DM" in
    qemu-xen|fake) ;;
    *)
        if [ ! -x "$DM" ]; then
            echo "e2e: error: device model $DM not found or not executable" >&2
            echo "e2e:        build it (cargo build --release --bin vireo-xen-dm) or pass its path," >&2
            echo "e2e:        'qemu-xen' (the real qemu-xen in dom0) or 'fake' (fake-dm.py)" >&2
            exit 2
        fi ;;
esac

OUT=${OUT:-${XDG_CACHE_HOME:-$HOME/.cache}/xen-testbed}; export OUT
if [ ! -e "$OUT/rootfs.img" ]; then
    echo "e2e: building the testbed into $OUT (root and Debian packages needed; ~2 min)" >&2
    "$TESTBED/build.sh"
fi

JOB=$BASE/job
rm -rf "$JOB"; mkdir -p "$JOB/disks"
cp "$IMG" "$IMG_WAIT" "$JOB/"
case "$DM" in
    qemu-xen) echo /usr/libexec/xen-qemu-system-i386 > "$JOB/dm-target" ;;
    fake) echo /usr/local/bin/fake-dm.py > "$JOB/dm-target" ;;
    *) install -m 755 "$DM" "$JOB/dm.bin"; echo /job/dm.bin > "$JOB/dm-target" ;;
esac
echo "$MODES" > "$JOB/modes"
echo "$WAIT_S" > "$JOB/wait_s"
echo "$DISK_BACKEND" > "$JOB/disk_backend"
[ -n "$CFG_EXTRA" ] && cp "$CFG_EXTRA" "$JOB/guest.cfg-extra"

# The device model libxl starts: logs its argv (the exact qemu-xen command line libxl built),
# then becomes the real device model (same pid, same fds).
cat > "$JOB/dm" <<'EOS'
#!/bin/sh
name=unknown; prev=
for a in "$@"; do [ "$prev" = -name ] && name=$a; prev=$a; done
{ printf '%s' "$0"; printf ' %s' "$@"; echo; } > "/job/results/$name-dm-argv.txt"
exec "$(cat /job/dm-target)" "$@"
EOS
chmod 755 "$JOB/dm"

# Runs as root in dom0 once the toolstack is up (testbed-init runs /job/run.sh).
cat > "$JOB/run.sh" <<'EOS'
#!/bin/bash
set -u
R=/job/results; mkdir -p "$R"
MODES=$(cat /job/modes); WAIT_S=$(cat /job/wait_s); DISK_BACKEND=$(cat /job/disk_backend)
# libxl picks the "phy" PV backend for a raw file (loop device + xen-blkback, which the testbed
# does not load) and then waits 10 s for it and fails. "qdisk" is served by the device model
# itself, and libxl does not wait for it. The emulated IDE disk is the same -drive either way.
if [ "$DISK_BACKEND" = phy ]; then modprobe xen-blkback || echo "E2E modprobe xen-blkback failed"; DISK_BACKEND_SPEC=
else DISK_BACKEND_SPEC="backendtype=$DISK_BACKEND,"; fi
DMESG=$R/xl-dmesg.txt
up() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(up)" 'BEGIN{printf "%.1f", b-a}'; }
elapsed_lt() { awk -v a="$1" -v b="$(up)" -v l="$2" 'BEGIN{exit !((b-a) < l)}'; }
P=0; F=0
check() { local what=$1; shift; if "$@"; then echo "E2E CHECK PASS $what"; P=$((P + 1)); else echo "E2E CHECK FAIL $what"; F=$((F + 1)); fi; }
drain() { xl dmesg -c >> "$DMESG" 2>/dev/null; }
gline() { grep -E "^\(d$1\) .*($2)" "$DMESG" "${@:3}"; }   # guest $1's lines matching ERE $2 (grep options after)
gts() { gline "$1" "$2" | head -1 | sed -n 's/^(d[0-9]*) \[ *\([0-9.]*\)\].*/\1/p'; }  # Xen timestamp
exists() { xl list "$1" >/dev/null 2>&1; }
pid_gone() { ! kill -0 "$1" 2>/dev/null; }
wait_until() { # wait_until SECONDS COMMAND...: polls every second
    local t0; t0=$(up)
    while elapsed_lt "$t0" "$1"; do "${@:2}" && return 0; sleep 1; done
    "${@:2}"
}

cfg() { # cfg NAME VGA IMAGE
    cp "/job/$3" "/job/disks/$1.img"
    cat > "/root/$1.cfg" <<EOC
name="$1"
type="hvm"
memory=64
vcpus=1
device_model_version="qemu-xen"
device_model_override="/job/dm"
vnc=0
sdl=0
vga="$2"
serial="file:$R/$1-serial.log"
disk=['format=raw,vdev=hda,access=rw,${DISK_BACKEND_SPEC}target=/job/disks/$1.img']
boot="c"
on_poweroff="destroy"
on_crash="preserve"
EOC
    [ -f /job/guest.cfg-extra ] && cat /job/guest.cfg-extra >> "/root/$1.cfg"
}

create() { # create NAME: sets domid, dmpid, t_create (uptime at xl create start)
    drain; t_create=$(up)
    xl -vvv create "/root/$1.cfg" > "$R/$1-xl-create.log" 2>&1; local rc=$?
    echo "E2E $1: xl create rc=$rc in $(since "$t_create")s"
    [ $rc = 0 ] || grep -E 'libxl: error|startup timed out' "$R/$1-xl-create.log" | head -5 | sed "s/^/E2E $1: /"
    check "$1: xl create succeeds" [ $rc = 0 ]
    domid=$(xl domid "$1" 2>/dev/null); dmpid=
    [ -n "$domid" ] || return 1
    dmpid=$(xenstore-read "/local/domain/$domid/image/device-model-pid" 2>/dev/null)
    echo "E2E $1: domid=$domid dm pid=$dmpid state=$(xenstore-read /local/domain/0/device-model/$domid/state 2>&1)"
    [ $rc = 0 ]
}

# Guest line that ends the wait for the boot marker early (failure or no disk).
# ("Boot failed" is not final: SeaBIOS under Xen tries the floppy first, then the disk.)
STOP='VIREO-E2E: (FAIL|poweroff failed)|No bootable device'

pci_report() { # pci_report NAME DOMID: what hvmloader and SeaBIOS saw on the bus
    gline "$2" 'pci dev|PCI devices|ata[0-9]|Booting from|VGA|Found .* serial' > "$R/$1-pci.txt"
    sed "s/^/E2E $1: guest: /" "$R/$1-pci.txt"
    check "$1: hvmloader assigned the IDE bus-master BAR (pci dev 01:1 bar 20)" gline "$2" 'pci dev 01:1 bar 20' -q
    check "$1: SeaBIOS found PCI devices" gline "$2" 'Found [1-9][0-9]* PCI devices' -q
}

boot_test() { # boot_test VGA [NAME-PREFIX]
    local name=${2:-e2e}-boot-$1
    echo "E2E ===== $name: guest boots boot.img with vga=\"$1\", must print the DMA marker and power off"
    cfg "$name" "$1" boot.img
    create "$name" || { xl destroy "$name" 2>/dev/null; return; }
    local t_up; t_up=$(up)
    local t0=$t_create st=none mem= m
    while elapsed_lt "$t0" "$WAIT_S"; do
        # the DM's memory, sampled while it lives (it is gone soon after the poweroff)
        m=$(awk '/^(VmHWM|VmRSS):/{printf "%s %s %s  ", $1, $2, $3}' /proc/$dmpid/status 2>/dev/null); [ -n "$m" ] && mem=$m
        drain
        if gline "$domid" 'VIREO-E2E: DMA read OK' -q; then st=ok; break; fi
        if gline "$domid" "$STOP" -q; then st=stop; break; fi
        exists "$name" || { drain; st=gone; gline "$domid" 'VIREO-E2E: DMA read OK' -q && st=ok; break; }
        sleep 1
    done
    local t_seen t_seen_up; t_seen=$(since "$t0"); t_seen_up=$(since "$t_up")
    echo "E2E $name: marker wait ended ($st) ${t_seen}s after xl create started, ${t_seen_up}s after it returned"
    gline "$domid" 'VIREO-E2E|Booting from|No bootable|Boot failed' | sed "s/^/E2E $name: guest: /"
    check "$name: 'VIREO-E2E: boot sector running' in xl dmesg (port 0xE9)" gline "$domid" 'VIREO-E2E: boot sector running' -q
    check "$name: 'VIREO-E2E: DMA read OK' in xl dmesg (port 0xE9)" [ $st = ok ]
    local t_hvm t_boot t_mark
    t_hvm=$(gts "$domid" 'HVM Loader'); t_boot=$(gts "$domid" 'Booting from'); t_mark=$(gts "$domid" 'VIREO-E2E: DMA read OK')
    [ -n "$t_hvm" ] && [ -n "$t_mark" ] && echo "E2E TIME $name: hvmloader start -> DMA marker $(awk -v a="$t_hvm" -v b="$t_mark" 'BEGIN{printf "%.1f", b-a}')s (Xen timestamps)"
    [ -n "$t_hvm" ] && [ -n "$t_boot" ] && echo "E2E TIME $name: hvmloader start -> SeaBIOS 'Booting from' $(awk -v a="$t_hvm" -v b="$t_boot" 'BEGIN{printf "%.1f", b-a}')s"
    [ $st = ok ] && echo "E2E TIME $name: xl create start -> DMA marker seen ${t_seen}s, after xl create returned ${t_seen_up}s (dom0 clock, 1 s polling)"
    echo "E2E $name: dm memory (last sample before the marker): $mem"
    local t_off; t_off=$(up)
    if [ $st = ok ]; then
        wait_until 90 bash -c "! xl list $name >/dev/null 2>&1"
        check "$name: the domain shuts down by itself (PM1a S5 poweroff)" pid_gone_dom "$name"
        echo "E2E TIME $name: DMA marker -> domain gone $(since "$t_off")s"
    else
        check "$name: the domain shuts down by itself (PM1a S5 poweroff)" false
    fi
    drain
    check "$name: no 'poweroff failed'" bash -c "! grep -qE '^\(d$domid\) .*poweroff failed' $DMESG"
    pci_report "$name" "$domid"
    check "$name: serial log has 'boot sector running'" grep -q 'VIREO-E2E: boot sector running' "$R/$name-serial.log"
    check "$name: serial log has 'DMA read OK'" grep -q 'VIREO-E2E: DMA read OK' "$R/$name-serial.log"
    if exists "$name"; then xl destroy "$name" > "$R/$name-xl-destroy.log" 2>&1; fi
    [ -n "$dmpid" ] && check "$name: device model process (pid $dmpid) ended" wait_until 30 pid_gone "$dmpid"
}
pid_gone_dom() { ! exists "$1"; }

dm_log_clean() { # dm_log_clean NAME: no Rust panic / abort in the DM's stderr log
    ! grep -qE 'panicked at|RUST_BACKTRACE|Aborted|Segmentation' "/var/log/xen/qemu-dm-$1.log" 2>/dev/null
}

destroy_test() {
    local name=e2e-destroy
    echo "E2E ===== $name: a running guest is destroyed; the device model must end"
    cfg "$name" stdvga boot-wait.img
    create "$name" || { xl destroy "$name" 2>/dev/null; return; }
    sleep 10
    check "$name: device model (pid $dmpid) alive while the guest runs" kill -0 "$dmpid"
    check "$name: domain still exists after 10 s" exists "$name"
    local t0; t0=$(up)
    xl -vvv destroy "$name" > "$R/$name-xl-destroy.log" 2>&1; local rc=$?
    echo "E2E $name: xl destroy rc=$rc in $(since "$t0")s"
    check "$name: xl destroy succeeds" [ $rc = 0 ]
    check "$name: device model process ended within 15 s" wait_until 15 pid_gone "$dmpid"
    check "$name: domain gone" pid_gone_dom "$name"
    check "$name: xenstore device-model/$domid removed" bash -c "! xenstore-exists /local/domain/0/device-model/$domid"
    check "$name: no panic/abort in the device model log" dm_log_clean "$name"
}

save_restore_test() {
    local name=e2e-save
    echo "E2E ===== $name: xl save / xl restore of a guest in its heartbeat loop"
    cfg "$name" stdvga boot-wait.img
    create "$name" || { xl destroy "$name" 2>/dev/null; return; }
    local t0; t0=$(up); local n=0
    while elapsed_lt "$t0" "$WAIT_S"; do
        drain; n=$(gline "$domid" 'VIREO-E2E: heartbeat' | wc -l)
        [ "$n" -ge 3 ] && break
        gline "$domid" "$STOP" -q && break
        sleep 1
    done
    check "$name: 3 heartbeats before save" [ "$n" -ge 3 ]
    [ "$n" -ge 3 ] || { gline "$domid" 'VIREO-E2E|No bootable|Boot failed' | sed "s/^/E2E $name: guest: /"; xl destroy "$name"; return; }
    local before; before=$(gline "$domid" 'VIREO-E2E: heartbeat' | tail -1 | sed 's/.*heartbeat //')
    echo "E2E $name: last heartbeat before save: $before"
    local olddom=$domid olddm=$dmpid
    t0=$(up); xl -vvv save "$name" /tmp/$name.save > "$R/$name-xl-save.log" 2>&1; local rc=$?
    echo "E2E TIME $name: xl save rc=$rc in $(since "$t0")s ($(stat -c %s /tmp/$name.save 2>/dev/null) bytes)"
    check "$name: xl save succeeds" [ $rc = 0 ]
    check "$name: the saved domain's device model ended" wait_until 15 pid_gone "$olddm"
    [ $rc = 0 ] || return
    drain
    t0=$(up); xl -vvv restore /tmp/$name.save > "$R/$name-xl-restore.log" 2>&1; rc=$?
    echo "E2E TIME $name: xl restore rc=$rc in $(since "$t0")s"
    check "$name: xl restore succeeds" [ $rc = 0 ]
    domid=$(xl domid "$name" 2>/dev/null)
    [ -n "$domid" ] || return
    dmpid=$(xenstore-read "/local/domain/$domid/image/device-model-pid" 2>/dev/null)
    echo "E2E $name: restored as domid=$domid dm pid=$dmpid"
    local after=
    t0=$(up)
    while elapsed_lt "$t0" 90; do
        drain; after=$(gline "$domid" 'VIREO-E2E: heartbeat' | tail -1 | sed 's/.*heartbeat //')
        [ -n "$after" ] && [ $((16#$after)) -ge $((16#$before + 2)) ] && break
        sleep 1
    done
    echo "E2E $name: heartbeat after restore: ${after:-none} (waited $(since "$t0")s)"
    check "$name: heartbeats continue after restore (counter $before -> ${after:-none})" \
        bash -c "[ -n '$after' ] && [ $((16#${after:-0})) -gt $((16#$before)) ]"
    check "$name: the restored guest did not reboot" bash -c "! grep -qE '^\(d$domid\) .*boot sector running' $DMESG"
    check "$name: no panic/abort in the device model log" dm_log_clean "$name"
    xl -vvv destroy "$name" > "$R/$name-xl-destroy.log" 2>&1
    check "$name: xl destroy of the restored guest" wait_until 15 pid_gone "$dmpid"
    rm -f /tmp/$name.save
}

echo "E2E modes=$MODES wait_s=$WAIT_S dm=$(cat /job/dm-target)"
xl dmesg -c > "$R/xl-dmesg-boot.txt"
for m in ${MODES//,/ }; do
    case "$m" in
        boot-stdvga) boot_test stdvga ;;
        boot-none) boot_test none ;;
        destroy) destroy_test ;;
        save-restore) save_restore_test ;;
        # The same guest served by Debian's qemu-xen in this same testbed boot: the reference
        # for docs/performance.md's side-by-side (its checks count like ours).
        ref-boot-stdvga|ref-boot-none)
            own=$(cat /job/dm-target); echo /usr/libexec/xen-qemu-system-i386 > /job/dm-target
            boot_test "${m#ref-boot-}" qemu-xen
            echo "$own" > /job/dm-target ;;
        *) echo "E2E CHECK FAIL unknown mode $m" ;;
    esac
done
drain
xl list
cp -r /var/log/xen "$R/" 2>/dev/null
echo "E2E RESULT: $P passed, $F failed"
[ "$F" = 0 ]
EOS
chmod 755 "$JOB/run.sh"

echo "e2e: testbed run: dm=$DM modes=$MODES wait=${WAIT_S}s results=$RESULTS"
t0=$(date +%s)
set +e
RESULTS=$RESULTS "$TESTBED/run.sh" "$JOB"
rc=$?
set -e
echo "e2e: testbed run took $(( $(date +%s) - t0 ))s (status $rc)"
OUTLOG=$RESULTS/output.log
if [ ! -f "$OUTLOG" ]; then
    echo "e2e: error: no output.log from the testbed run (see $RESULTS/serial.log)" >&2
    failed=1; finish; exit 1
fi
grep -E '^E2E (TIME|=====)' "$OUTLOG" || true
while read -r line; do
    case "$line" in
        "E2E CHECK PASS "*) echo "PASS ${line#E2E CHECK PASS }"; passed=$((passed + 1)) ;;
        "E2E CHECK FAIL "*) echo "FAIL ${line#E2E CHECK FAIL }"; failed=$((failed + 1)) ;;
    esac
done < "$OUTLOG"
[ "$rc" = 0 ] || [ "$failed" -gt 0 ] || { echo "FAIL testbed job status $rc"; failed=$((failed + 1)); }
echo "e2e: full log $OUTLOG; guest serial, xl logs and dm argv in $RESULTS/results"
finish
