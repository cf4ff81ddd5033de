#!/bin/sh
# Boot testos under QEMU in its three configurations and check the output,
# the exit status and (with a disk) that the disk image comes back
# unchanged.  Usage: testos/qemu_check.sh [BUILD_DIR]   (default: build)
set -u
B=${1:-build}
QEMU=${QEMU:-qemu-system-i386}
QEMU_FLAGS=${QEMU_FLAGS:-}    # e.g. "-cpu pentium"
KERNEL=$B/testos.elf
fails=0
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT

# check NAME STATUS WANT_STATUS OUTPUT_FILE PATTERN...
check() {
    name=$1; status=$2; want=$3; out=$4; shift 4
    ok=1
    [ "$status" -eq "$want" ] || ok=0
    for pat in "$@"; do
        grep -qaF -- "$pat" "$out" || { ok=0; echo "  missing: $pat"; }
    done
    if [ $ok = 1 ]; then
        echo "PASS testos $name (status $status)"
    else
        echo "FAIL testos $name (status $status, want $want)"
        sed 's/^/  | /' "$out"
        fails=$((fails + 1))
    fi
}

qemu() {  # qemu APPEND EXTRA_ARGS...
    app=$1; shift
    # shellcheck disable=SC2086
    timeout 30 "$QEMU" $QEMU_FLAGS -M pc -nographic -no-reboot -m 64 -net none \
        -kernel "$KERNEL" -append "$app" \
        -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
        -serial stdio -monitor none "$@"
}

# 1. Default run, no disk.
qemu "" </dev/null >"$tmp/1.txt" 2>&1
check "default" $? 0 "$tmp/1.txt" "testos: booting" "disk: none" "ok   forkwait" \
    "forkwait: 200 children forked and reaped, 0 bad statuses" "tests, 0 failed"

# 2. With a 1 MiB raw disk of random bytes: the last sectors are
#    overwritten, verified and restored.
head -c 1048576 /dev/urandom >"$tmp/disk.img"
cp "$tmp/disk.img" "$tmp/disk.orig"
qemu "" -drive "file=$tmp/disk.img,format=raw,if=ide,index=0" </dev/null >"$tmp/2.txt" 2>&1
st=$?
if ! cmp -s "$tmp/disk.img" "$tmp/disk.orig"; then
    echo "  the disk image was not restored" >>"$tmp/2.txt"
    st=99
fi
check "disk" $st 0 "$tmp/2.txt" "2048 sectors" "ok   disk_rw" "tests, 0 failed"

# 3. The shell, fed through the serial port.  With -nographic SeaBIOS
#    uses COM1 as its console and may swallow the first byte of input,
#    hence the leading empty line.
printf '\necho hi there\nforkwait 20\nps\nticks\nexit\n' |
    qemu "shell" >"$tmp/3.txt" 2>&1
check "shell" $? 0 "$tmp/3.txt" "testos> echo hi there" "hi there" \
    "forkwait: 20 children forked and reaped, 0 bad statuses" "PID  PPID" "ticks: " "bye"

[ $fails -eq 0 ]
