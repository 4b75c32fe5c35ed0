#!/bin/bash
# node2.sh start|stop|exec CMD...|relibvirtd|status
# A second libvirtd ("node2") on this machine, for the live migration tests (tests/tests/
# migration.rs): its own network namespace (a veth to the root namespace), its own mount
# namespace with its own /run/libvirt (tmpfs), /var/lib/libvirt, /etc/libvirt (a copy with
# another host_uuid), /var/log/libvirt and /var/cache/libvirt; it listens on
# qemu+tcp://$NODE_IP/system. The main libvirtd is never touched.
# Environment: HVNODE2_STATE (the state directory), HVNODE2_NET (the /24's first three octets).
set -euo pipefail

NS=hvnode2
STATE=${HVNODE2_STATE:-/tmp/hvnode2}
NET=${HVNODE2_NET:-10.78.0}
HOST_IP=$NET.1
NODE_IP=$NET.2
VETH_HOST=hvn2h
VETH_NODE=hvn2n
NODE_UUID=6e6f6465-0002-4000-8000-000000000002
# The cgroup partition of node2's guests (the target agent's [libvirt] partition = "/hvnode2").
PARTITION=hvnode2.partition

libvirtd_pid() { [ -s "$STATE/libvirtd.pid" ] && cat "$STATE/libvirtd.pid"; }

# Run a command inside node2's mount + network namespaces (those of its libvirtd).
in_node() {
    local pid
    pid=$(libvirtd_pid) || { echo "node2 not running" >&2; return 1; }
    nsenter -t "$pid" -m -n -- "$@"
}

start() {
    if pid=$(libvirtd_pid) && kill -0 "$pid" 2>/dev/null; then
        echo "node2 already running (libvirtd pid $pid)"; return 0
    fi
    rm -rf "$STATE"
    mkdir -p "$STATE"/{etc,varlib,log,cache}
    # /etc/libvirt: a copy without the main node's persistent domains, networks, secrets.
    cp -a /etc/libvirt/. "$STATE/etc/"
    rm -rf "$STATE/etc/qemu" "$STATE/etc/secrets" "$STATE/etc/storage" "$STATE/etc/nwfilter"
    mkdir -p "$STATE/etc/qemu/networks/autostart" "$STATE/etc/secrets"
    chmod 700 "$STATE/etc/secrets"
    cat >>"$STATE/etc/libvirtd.conf" <<EOF

# node2 (tests/scripts/node2.sh)
host_uuid = "$NODE_UUID"
listen_tcp = 1
listen_tls = 0
auth_tcp = "none"
listen_addr = "$NODE_IP"
EOF
    # /var/lib/libvirt: the same skeleton, owned as the packages own it.
    mkdir -p "$STATE/varlib"/{boot,images,sanlock,swtpm,qemu}
    chown libvirt-qemu:libvirt-qemu "$STATE/varlib/qemu"
    chmod 750 "$STATE/varlib/qemu"
    mkdir -p "$STATE/log/qemu"

    # node2's guests go under their own cgroup partition (<resource><partition>/node2), so
    # they never share a machine/qemu-ID-NAME.libvirt-qemu cgroup with the main libvirtd's
    # (both count domain IDs from 1). Without systemd, libvirt wants the partition to exist.
    for c in /sys/fs/cgroup/*/; do mkdir -p "${c}$PARTITION"; done
    if [ -d /sys/fs/cgroup/cpuset ]; then
        cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/$PARTITION/cpuset.cpus"
        cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/$PARTITION/cpuset.mems"
    fi

    ip netns add "$NS"
    ip link add "$VETH_HOST" type veth peer name "$VETH_NODE"
    ip link set "$VETH_NODE" netns "$NS"
    ip addr add "$HOST_IP/24" dev "$VETH_HOST"
    ip link set "$VETH_HOST" up
    ip -n "$NS" addr add "$NODE_IP/24" dev "$VETH_NODE"
    ip -n "$NS" link set "$VETH_NODE" up
    ip -n "$NS" link set lo up

    # unshare -m --propagation private: a mount namespace whose bind mounts never leak into the
    # root namespace; the daemons keep it alive and it vanishes with the last process in it.
    # Not `ip netns exec`: it remounts /sys for the netns and so hides /sys/fs/cgroup, and
    # libvirtd then runs guests without any cgroup (no cpuset.mems, no memory limits). Here
    # the new sysfs is mounted by hand and the cgroup hierarchies are bound back onto it.
    nsenter --net=/run/netns/"$NS" -- unshare -m --propagation private -- bash -euc '
        S=$1
        mkdir -p "$S/cg"
        mount --rbind /sys/fs/cgroup "$S/cg"
        mount -t sysfs node2 /sys
        mount --rbind "$S/cg" /sys/fs/cgroup
        umount -l "$S/cg"
        # The main libvirtd socket stays reachable from node2 (for p2p migration back):
        # qemu+unix:///system?socket=$S/main-run/libvirt-sock
        mkdir -p "$S/main-run" && mount --bind /run/libvirt "$S/main-run"
        mount -t tmpfs -o mode=755 tmpfs /run/libvirt
        mount --bind "$S/etc" /etc/libvirt
        mount --bind "$S/varlib" /var/lib/libvirt
        mount --bind "$S/log" /var/log/libvirt
        mkdir -p /var/cache/libvirt && mount --bind "$S/cache" /var/cache/libvirt
        virtlogd -d -p "$S/virtlogd.pid"
        libvirtd -d -l -p "$S/libvirtd.pid"
    ' node2-init "$STATE"
    for _ in $(seq 50); do
        in_node virsh -c qemu:///system version >/dev/null 2>&1 && break
        sleep 0.2
    done
    in_node virsh -c qemu:///system version >/dev/null
    echo "node2 up: libvirtd pid $(libvirtd_pid), qemu+tcp://$NODE_IP/system"
}

stop() {
    if pid=$(libvirtd_pid) && kill -0 "$pid" 2>/dev/null; then
        for d in $(in_node virsh -c qemu:///system list --all --name 2>/dev/null); do
            in_node virsh -c qemu:///system destroy "$d" >/dev/null 2>&1 || true
            in_node virsh -c qemu:///system undefine "$d" --nvram >/dev/null 2>&1 || \
                in_node virsh -c qemu:///system undefine "$d" >/dev/null 2>&1 || true
        done
    fi
    for f in libvirtd virtlogd; do
        if [ -s "$STATE/$f.pid" ]; then
            p=$(cat "$STATE/$f.pid")
            kill "$p" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$p" 2>/dev/null || true
        fi
    done
    # Anything else still in the network namespace (a qemu left by a killed libvirtd, also
    # when libvirtd itself vanished: another test's pkill).
    if ip netns list | grep -w "$NS" >/dev/null; then
        for p in $(ip netns pids "$NS"); do kill -9 "$p" 2>/dev/null || true; done
        sleep 0.3
        ip netns del "$NS"
    fi
    ip link del "$VETH_HOST" 2>/dev/null || true
    for c in /sys/fs/cgroup/*/$PARTITION; do
        [ -d "$c" ] || continue
        find "$c" -mindepth 1 -depth -type d -exec rmdir {} + 2>/dev/null || true
        rmdir "$c" 2>/dev/null || echo "left: $c" >&2
    done
    rm -rf "$STATE"
    echo "node2 stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    exec) shift; in_node "$@" ;;
    # Start node2's libvirtd again in the namespaces it had (after it was killed).
    relibvirtd)
        vpid=$(cat "$STATE/virtlogd.pid")
        nsenter -t "$vpid" -m -n -- libvirtd -d -l -p "$STATE/libvirtd.pid"
        for _ in $(seq 50); do in_node virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.2; done ;;
    status) pid=$(libvirtd_pid) && kill -0 "$pid" && echo "running $pid" ;;
    *) echo "usage: $0 start|stop|exec CMD...|status" >&2; exit 2 ;;
esac
