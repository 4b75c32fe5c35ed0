#!/bin/sh
# Copies a fixed subset of /sys and /proc into a plain directory tree with the same relative
# paths ($T/sys/..., $T/proc/...), for the agent's topology/inventory reader tests.
# POSIX sh: runs under busybox sh (in the test guest), dash and bash (on a host).
#
#   capture.sh --to DIR   write the tree to DIR
#   capture.sh            (guest) print the tree as base64 of a tar.gz between the lines
#                         HVAGENT-CAPTURE-BEGIN and HVAGENT-CAPTURE-END
#
# Layout rules (see agent/tests/fixtures/README.md):
# - every file is read with cat (sysfs files claim 4096 bytes, so no cp/tar on them);
#   files that cannot be read (EIO, EACCES, EINVAL, write-only) are left out silently;
# - /sys/class/net/<if>, /sys/block/<dev>, /sys/bus/pci/devices/<addr> (symlinks in sysfs)
#   become plain directories; their `device` link becomes a plain directory too, present
#   only when the real one is (so "has device/" == physical device); device/uevent is
#   always copied so that the directory is never empty (git does not keep empty dirs);
# - `driver` links stay symlinks, with the real readlink target string (it dangles in the
#   tree; its basename is the driver name).
set -u

if [ "${1:-}" = --to ]; then
    [ $# -eq 2 ] || { echo "usage: $0 [--to DIR]" >&2; exit 2; }
    T=$2
    guest=
else
    T=/tmp/hvagent-capture
    guest=1
    rm -rf "$T"
fi
mkdir -p "$T"

# cp1 PATH...: copy each existing, readable file to $T/PATH.
cp1() {
    for f in "$@"; do
        [ -f "$f" ] || continue
        cat "$f" >"$T/.tmp" 2>/dev/null || continue
        mkdir -p "$T${f%/*}" && mv "$T/.tmp" "$T$f"
    done
    rm -f "$T/.tmp"
}

# each DIRGLOB NAME...: cp1 DIR/NAME for every directory DIR that DIRGLOB matches.
each() {
    pattern=$1
    shift
    for d in $pattern; do
        [ -d "$d" ] || continue
        for n in "$@"; do cp1 "$d/$n"; done
    done
}

# ln1 LINK: recreate the symlink LINK in the tree with the same target string.
ln1() {
    [ -L "$1" ] || return 0
    mkdir -p "$T${1%/*}"
    ln -sfn "$(readlink "$1")" "$T$1"
}

# devdir DIR: DIR/device exists -> make $T/DIR/device a directory (with uevent in it).
devdir() {
    [ -e "$1/device" ] || return 0
    mkdir -p "$T$1/device"
    cp1 "$1/device/uevent"
}

cp1 /proc/cpuinfo /proc/meminfo /proc/cmdline

C=/sys/devices/system/cpu
each $C online offline possible present isolated kernel_max
each $C/smt control active
cp1 $C/vulnerabilities/*
each "$C/cpu[0-9]*" online
each "$C/cpu[0-9]*/topology" physical_package_id die_id core_id cluster_id \
    thread_siblings_list core_siblings_list core_cpus_list package_cpus_list
each "$C/cpu[0-9]*/cache/index*" level type size shared_cpu_list ways_of_associativity \
    coherency_line_size id
each "$C/cpu[0-9]*/cpufreq" cpuinfo_max_freq cpuinfo_min_freq base_frequency

N=/sys/devices/system/node
each $N online possible has_memory has_cpu
each "$N/node*" cpulist meminfo distance
each "$N/node*/hugepages/hugepages-*" nr_hugepages free_hugepages surplus_hugepages
each "/sys/kernel/mm/hugepages/hugepages-*" nr_hugepages free_hugepages resv_hugepages \
    surplus_hugepages

each "/sys/devices/system/edac/mc/mc*" mc_name size_mb ce_count ue_count
each "/sys/devices/system/edac/mc/mc*/dimm*" dimm_edac_mode dimm_mem_type size

for d in /sys/block/*; do
    [ -d "$d" ] || continue
    cp1 "$d/size" "$d/removable" "$d/ro" "$d/queue/rotational" "$d/queue/logical_block_size"
    devdir "$d"
    cp1 "$d/device/model" "$d/device/vendor"
    ln1 "$d/device/driver"
done

for d in /sys/class/net/*; do
    [ -d "$d" ] || continue
    cp1 "$d/address" "$d/mtu" "$d/speed" "$d/operstate" "$d/carrier" "$d/type" "$d/duplex"
    devdir "$d"
    cp1 "$d/device/numa_node" "$d/device/sriov_totalvfs" "$d/device/sriov_numvfs" \
        "$d/device/vendor" "$d/device/device"
    ln1 "$d/device/driver"
done

for d in /sys/bus/pci/devices/*; do
    [ -d "$d" ] || continue
    cp1 "$d/class" "$d/vendor" "$d/device" "$d/numa_node" "$d/subsystem_vendor" \
        "$d/subsystem_device"
    ln1 "$d/driver"
done

for d in /sys/class/infiniband/*; do
    [ -d "$d" ] || continue
    mkdir -p "$T$d"
    cp1 "$d/node_type"
    # keep the directory in git even if node_type is missing
    [ -f "$T$d/node_type" ] || : >"$T$d/.keep"
done

cp1 /sys/module/kvm_intel/parameters/nested /sys/module/kvm_amd/parameters/nested

if [ -n "$guest" ]; then
    echo HVAGENT-CAPTURE-BEGIN
    (cd "$T" && tar -czf - sys proc) | base64
    echo HVAGENT-CAPTURE-END
fi
