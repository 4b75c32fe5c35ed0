#!/usr/bin/env bash
# Captures sysfs/procfs trees for the agent's reader tests into agent/tests/fixtures/<name>/:
# boots the test guest (images/build.sh) under QEMU/TCG once per topology with
# hvagent.mode=capture, unpacks what guest/capture.sh prints, then captures this host.
#
#   images/capture-fixtures.sh            all fixtures
#   images/capture-fixtures.sh NAME...    only these (qemu-* names or host-firecracker)
#
# The command lines are documented in agent/tests/fixtures/README.md: keep both in sync.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
FIX=agent/tests/fixtures
cd "$ROOT" # relative paths below, so the logged command lines match the README

"$HERE/build.sh"

# Devices every guest gets: a virtio NIC (user-mode networking, nothing reachable) and the
# test disk read-only on virtio-blk, so the trees have a NIC, a disk and driver links.
# shellcheck disable=SC2054 # the commas belong to QEMU option values
DEVICES=(-netdev user,id=n0 -device virtio-net-pci,netdev=n0
    -drive file=images/out/testguest.qcow2,format=qcow2,if=virtio,readonly=on)

# capture_qemu NAME APPEND QEMU_ARG...: boot, capture, unpack into $FIX/NAME.
capture_qemu() {
    local name=$1 append=$2 start=$SECONDS
    local log=images/out/capture-$name.log
    shift 2
    local cmd=(qemu-system-x86_64 -accel tcg -nographic -no-reboot "$@" "${DEVICES[@]}"
        -kernel images/out/vmlinuz -initrd images/out/initramfs.img
        -append "console=ttyS0 panic=1 hvagent.mode=capture${append:+ $append}")
    echo "$name: ${cmd[*]}"
    # TCG with up to 16 vCPUs on 2 host cores: boot + capture take a minute or two.
    if ! timeout 600 "${cmd[@]}" </dev/null >"$log" 2>&1; then
        echo "$name: QEMU failed or timed out; last lines of $log:" >&2
        tail -n 20 "$log" >&2
        return 1
    fi
    if ! tr -d '\r' <"$log" | grep -q '^HVAGENT-CAPTURE-END$'; then
        echo "$name: no complete capture in $log" >&2
        return 1
    fi
    rm -rf "${FIX:?}/$name"
    mkdir -p "$FIX/$name"
    tr -d '\r' <"$log" |
        sed -n '/^HVAGENT-CAPTURE-BEGIN$/,/^HVAGENT-CAPTURE-END$/{/^HVAGENT-CAPTURE-/d;p}' |
        base64 -d | tar -xzf - -C "$FIX/$name" --no-same-owner -m
    echo "$name: done in $((SECONDS - start)) s"
}

capture_host() {
    local start=$SECONDS
    rm -rf "${FIX:?}/host-firecracker"
    sh "$HERE/guest/capture.sh" --to "$FIX/host-firecracker"
    echo "host-firecracker: done in $((SECONDS - start)) s"
}

run() {
    case $1 in
    qemu-2s4c2t-numa)
        # 2 sockets x 4 cores x 2 threads, node 0 = cpus 0-7, node 1 = cpus 8-15, 3 GiB
        # each, distance 21. Skylake-Server: Intel vendor and pdpe1gb (TCG warns about the
        # AVX-512 etc. features it lacks and drops them). Hugepages are reserved per node on
        # the kernel command line. The 1 GiB page goes to node 1: boot-time gigantic pages
        # need a free, 1 GiB-aligned GiB inside the node, and node 0 (guest RAM 0-3G) has
        # none: kernel in 0-1G, initrd just below 2G (QEMU loads it under initrd_addr_max),
        # node 0's own memblock data and the ACPI tables in 2-3G. Node 1 is 4-7G (above the
        # PCI hole) with 4-5G free. nokaslr keeps the kernel out of 4-5G.
        capture_qemu "$1" "nokaslr hugepagesz=2M hugepages=0:64,1:32 hugepagesz=1G hugepages=1:1" \
            -cpu Skylake-Server -m 6G -smp 16,sockets=2,cores=4,threads=2 \
            -object memory-backend-ram,id=m0,size=3G -object memory-backend-ram,id=m1,size=3G \
            -numa node,nodeid=0,cpus=0-7,memdev=m0 -numa node,nodeid=1,cpus=8-15,memdev=m1 \
            -numa dist,src=0,dst=1,val=21
        ;;
    qemu-1s8c-nosmt)
        capture_qemu "$1" "" -cpu Skylake-Server -m 1G -smp 8,sockets=1,cores=8,threads=1
        ;;
    qemu-offline-cpus)
        # 4 of 8 possible CPUs present; the guest offlines cpu3 before capturing.
        capture_qemu "$1" "hvagent.offline=3" \
            -cpu Skylake-Server -m 1G -smp cpus=4,maxcpus=8,sockets=2,cores=4,threads=1
        ;;
    host-firecracker) capture_host ;;
    *)
        echo "unknown fixture $1" >&2
        return 2
        ;;
    esac
}

if [[ $# -eq 0 ]]; then
    set -- qemu-2s4c2t-numa qemu-1s8c-nosmt qemu-offline-cpus host-firecracker
fi
for name in "$@"; do run "$name"; done
