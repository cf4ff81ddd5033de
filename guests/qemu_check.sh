#!/bin/sh
# Boot every guest under QEMU (the reference machine) and check its output
# and exit status.  Usage: qemu_check.sh [BUILD_DIR]   (default: build)
set -u
B=${1:-build}
QEMU=${QEMU:-qemu-system-i386}
QEMU_FLAGS=${QEMU_FLAGS:-}    # e.g. "-cpu pentium3"
fails=0

run() {  # run IMAGE EXPECTED_STATUS GREP_PATTERN...
    img=$1; want=$2; shift 2
    # shellcheck disable=SC2086
    out=$(timeout 20 "$QEMU" $QEMU_FLAGS -M pc -nographic -no-reboot -m 64 -net none \
          -kernel "$img" -append "guest args" \
          -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
          -serial stdio -monitor none 2>&1)
    status=$?
    ok=1
    [ "$status" -eq "$want" ] || ok=0
    for pat in "$@"; do
        printf '%s\n' "$out" | grep -qF -- "$pat" || { ok=0; echo "  missing: $pat"; }
    done
    if [ $ok = 1 ]; then
        echo "PASS $img (status $status)"
    else
        echo "FAIL $img (status $status, want $want)"
        printf '%s\n' "$out" | sed 's/^/  | /'
        fails=$((fails + 1))
    fi
}

run "$B/hello.elf" 0 "Hello from a bt_vmm guest!" "cmdline: " "guest args" "mem_upper: "
run "$B/hello_aout.bin" 0 "Hello from a bt_vmm guest (a.out kludge)!" "cmdline: " "mem_upper: "
run "$B/sensitive.elf" 0 "sensitive: 50 checks, 0 failed"
run "$B/smc.elf" 0 "smc: 8 checks, 0 failed"
run "$B/demo.elf" 0 "bt_vmm demo guest: binary-translated kernel code" "demo: done"
[ $fails -eq 0 ]
