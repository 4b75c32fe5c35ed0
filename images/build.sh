#!/usr/bin/env bash
# Builds the small hvagent test guest from Debian packages only (see README.md):
#   out/vmlinuz        Debian cloud kernel
#   out/initramfs.img  busybox-static + guest/init + guest/capture.sh + virtio modules + the
#                      probe (images/probe, built here as a static binary) + qemu-ga with
#                      the shared libraries it needs, from the Debian packages below
#   out/testguest.qcow2     BIOS-bootable disk (MBR + FAT + syslinux) holding the two above
#   out/testguest-uefi.qcow2           UEFI-bootable disk (GPT + EFI system partition) with
#                                      Debian's signed boot chain: shim -> GRUB -> the same
#                                      (signed) kernel and initramfs; boots under Secure Boot
#   out/testguest-uefi-unsigned.qcow2  the same with the kernel's signature removed: Secure
#                                      Boot refuses it (GRUB says so on the console), plain
#                                      UEFI boots it
# Idempotent: each output is rebuilt only when missing or older than one of its inputs.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=$HERE/out
CACHE=$OUT/cache
SELF=$HERE/build.sh
# Kernel modules put into the initramfs (the cloud kernel builds virtio as modules). With
# them the guest has a NIC and a disk with driver links, which the sysfs fixtures want;
# button and evdev let acpid see the ACPI power button.
# virtio_console gives the guest agent its port (/dev/virtio-ports/org.qemu.guest_agent.0).
MODULES=(virtio_pci virtio_net virtio_blk virtio_console vfat nls_cp437 nls_ascii button evdev)
# Loaded only when the guest booted through UEFI (a BIOS guest has no EFI variables; there
# insmod would fail): efivarfs, for the SecureBoot variable and the NVRAM test variable.
EFI_MODULES=(efivarfs)
# The guest agent and the packages holding every shared library it needs, directly or not:
# the libraries are looked up by their NEEDED entries in these packages only, never on the
# build host (whose libraries need not be the guest's).
QGA_PACKAGES=(qemu-guest-agent libc6 libglib2.0-0 libpcre2-8-0 libnuma1 libudev1 liburing2)
# Where the guest's dynamic loader finds them (Debian's multiarch library directory, one of
# the loader's built-in paths: no ld.so.cache needed).
QGA_LIBDIR=/lib/x86_64-linux-gnu
DISK_MIB=64
PART_START=2048 # first sector of the FAT partition (1 MiB alignment)
# The UEFI disks' GPT identifiers: fixed, so that every build's disk has the same identity
# (sfdisk would draw random ones).
GPT_DISK_GUID=5D9E5C4B-3F0A-4C1E-9B7A-6E2F1D0C8A11
GPT_ESP_GUID=0F6B2A3C-8D4E-4B5F-A1C2-7E8D9F0A1B2C

log() { printf 'build.sh: %s\n' "$*" >&2; }

# newer TARGET INPUT...: true if TARGET exists and is newer than every INPUT.
newer() {
    local target=$1 input
    shift
    [[ -e $target ]] || return 1
    for input in "$@"; do [[ $target -nt $input ]] || return 1; done
}

# apt_run CMD...: runs an apt command; on failure refreshes the package lists once and
# retries (a fresh CI machine may have no lists yet).
apt_run() {
    "$@" && return 0
    log "retrying after apt-get update: $*"
    apt-get update -qq >&2
    "$@"
}

# deb PACKAGE: prints the path of PACKAGE's .deb in the cache, downloading it if absent.
deb() {
    local pkg=$1 f
    f=$(compgen -G "$CACHE/${pkg}_*.deb" | sort -V | tail -n1 || true)
    if [[ -z $f ]]; then
        log "downloading $pkg"
        # Sandbox::User=root: the cache dir is root's; avoids apt's "unsandboxed" warning.
        (cd "$CACHE" && apt_run apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2)
        f=$(compgen -G "$CACHE/${pkg}_*.deb" | sort -V | tail -n1)
    fi
    printf '%s\n' "$f"
}

# The metapackage linux-image-cloud-amd64 depends on the versioned kernel package.
kernel_pkg() {
    apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-.*-cloud-amd64$/ { print $2; exit }'
}

# extract DEB: unpacks DEB once into $CACHE/<deb name>/ and prints that directory.
extract() {
    local dir
    dir=$CACHE/$(basename "$1" .deb)
    if ! newer "$dir/.done" "$1"; then
        rm -rf "$dir"
        dpkg -x "$1" "$dir"
        touch "$dir/.done"
    fi
    printf '%s\n' "$dir"
}

# le32 N: N as 4 little-endian bytes, for printf.
le32() { printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($1 & 255)) $(($1 >> 8 & 255)) $(($1 >> 16 & 255)) $(($1 >> 24 & 255)); }

# pe_cert_table FILE: prints the offset and size of FILE's certificate table (PE data
# directory entry 4, where an Authenticode signature lives; "0 0" when unsigned), then the
# file offset of that entry. Read with od: no PE tool (sbsigntool, python) needed.
pe_cert_table() {
    local pe magic dir
    pe=$(od -An -t u4 -j 60 -N 4 "$1" | tr -d ' ')
    [[ $(od -An -t x4 -j "$pe" -N 4 "$1" | tr -d ' ') == 00004550 ]] || {
        log "$1 is not a PE file"
        return 1
    }
    # The optional header follows the 4-byte signature and the 20-byte COFF header; its data
    # directories start at byte 112 (PE32+, magic 0x20b) or 96 (PE32), 8 bytes an entry.
    magic=$(od -An -t u2 -j $((pe + 24)) -N 2 "$1" | tr -d ' ')
    if ((magic == 0x20b)); then dir=$((pe + 24 + 112 + 4 * 8)); else dir=$((pe + 24 + 96 + 4 * 8)); fi
    printf '%s %s\n' "$(od -An -t u4 -j "$dir" -N 8 "$1" | xargs)" "$dir"
}

# esp_disk KERNEL OUTPUT: writes OUTPUT, a qcow2 GPT disk whose one partition is an EFI system
# partition holding Debian's signed shim at the removable-media boot path EFI/BOOT/BOOTX64.EFI
# (firmware with empty boot entries, as a fresh NVRAM has, boots it), Debian's signed GRUB
# beside it (shim loads grubx64.efi from its own directory), GRUB's grub.cfg, KERNEL as
# /vmlinuz and the initramfs. No mount, no loop device: sfdisk writes the GPT into the image
# file, mtools the FAT file system at the partition's offset.
esp_disk() {
    local kernel=$1 output=$2 raw offset part_sectors img
    raw=$OUT/$(basename "$output" .qcow2).raw
    offset=$((PART_START * 512))
    # The backup GPT takes the disk's last 33 sectors.
    part_sectors=$((DISK_MIB * 2048 - PART_START - 33))
    rm -f "$raw"
    truncate -s "${DISK_MIB}M" "$raw"
    printf '%s\n' 'label: gpt' "label-id: $GPT_DISK_GUID" \
        "start=$PART_START, size=$part_sectors, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=$GPT_ESP_GUID, name=ESP" |
        sfdisk --quiet --no-reread --no-tell-kernel "$raw"
    export MTOOLS_SKIP_CHECK=1
    img="$raw@@$offset"
    # FAT32, as the UEFI specification asks of a system partition; a fixed volume serial (-N)
    # for reproducible bytes.
    mformat -i "$img" -F -T "$part_sectors" -h 64 -s 32 -H "$PART_START" -N 48564147 -v HVAGENT-ESP ::
    mmd -i "$img" ::/EFI ::/EFI/BOOT ::/EFI/debian
    mcopy -i "$img" "$shim_efi" ::/EFI/BOOT/BOOTX64.EFI
    mcopy -i "$img" "$grub_efi" ::/EFI/BOOT/grubx64.efi
    mcopy -i "$img" "$OUT/grub.cfg" ::/EFI/debian/grub.cfg
    mcopy -i "$img" "$kernel" ::/vmlinuz
    mcopy -i "$img" "$OUT/initramfs.img" ::/initramfs.img
    qemu-img convert -f raw -O qcow2 "$raw" "$output.tmp"
    mv "$output.tmp" "$output"
    rm -f "$raw"
}

mkdir -p "$CACHE"

# --- kernel ------------------------------------------------------------------------------
# The resolved name is remembered in the cache: apt-cache takes 1.5 s per call here (the
# image disables apt's binary cache). `build.sh --refresh` resolves it again.
if [[ ${1:-} == --refresh ]]; then rm -f "$CACHE/kernel-package"; fi
if [[ ! -s $CACHE/kernel-package ]]; then
    kpkg=$(kernel_pkg)
    if [[ -z $kpkg ]]; then
        apt-get update -qq >&2
        kpkg=$(kernel_pkg)
    fi
    [[ -n $kpkg ]] || { log "cannot resolve the package linux-image-cloud-amd64 depends on"; exit 1; }
    echo "$kpkg" >"$CACHE/kernel-package"
fi
kpkg=$(cat "$CACHE/kernel-package")
kdeb=$(deb "$kpkg")
kdir=$(extract "$kdeb")
if ! newer "$OUT/vmlinuz" "$kdeb"; then
    log "vmlinuz from $(basename "$kdeb")"
    cp "$kdir"/boot/vmlinuz-* "$OUT/vmlinuz"
fi

# --- probe -------------------------------------------------------------------------------
# Statically linked (the initramfs has no C library): with --target, RUSTFLAGS reach only
# the probe and its dependencies, not build scripts or the workspace's other builds. A no-op
# when nothing changed (cargo decides).
TARGET=x86_64-unknown-linux-gnu
REPO=$(cd "$HERE/.." && pwd)
# The target directory is set, not inherited: the binary must be where $probe says.
probe=$REPO/target/$TARGET/release/hvagent-probe
(cd "$REPO" && CARGO_TARGET_DIR=$REPO/target RUSTFLAGS="-C target-feature=+crt-static" \
    "${CARGO:-cargo}" build --quiet --release -p hvagent-probe --target "$TARGET")

# --- initramfs ---------------------------------------------------------------------------
bbdeb=$(deb busybox-static)
qga_debs=()
for pkg in "${QGA_PACKAGES[@]}"; do qga_debs+=("$(deb "$pkg")"); done
init_inputs=("$SELF" "$kdeb" "$bbdeb" "${qga_debs[@]}" "$HERE/guest/init" "$HERE/guest/capture.sh" "$probe")
if ! newer "$OUT/initramfs.img" "${init_inputs[@]}"; then
    log "initramfs.img"
    bbdir=$(extract "$bbdeb")
    root=$OUT/initramfs.root
    rm -rf "$root"
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,root,lib/modules}
    cp "$bbdir/bin/busybox" "$root/bin/busybox"
    # Same links as `busybox --install -s`, but made on the host: --list-full prints each
    # applet's install path (bin/sh, sbin/poweroff, usr/bin/base64, ...).
    for applet in $("$root/bin/busybox" --list-full); do
        [[ -e $root/$applet ]] || ln -s /bin/busybox "$root/$applet"
    done
    # The kernel opens /dev/console before running /init; without the node it warns and
    # /init starts without stdio (it reopens /dev/console after mounting devtmpfs anyway).
    if [[ $EUID -eq 0 ]]; then mknod -m 600 "$root/dev/console" c 5 1; fi
    install -m 755 "$HERE/guest/init" "$root/init"
    install -m 755 "$HERE/guest/capture.sh" "$root/capture.sh"
    install -m 755 "$probe" "$root/probe"

    # Modules with their dependencies (from each .ko's modinfo "depends=" field; the
    # package ships no modules.dep), listed dependencies first in lib/modules/load-order.
    declare -A seen=()
    order=()
    add_module() {
        local name=$1 ko dep
        [[ -z ${seen[$name]:-} ]] || return 0
        seen[$name]=1
        ko=$(find "$kdir/lib/modules" -name "$name.ko" -print -quit)
        [[ -n $ko ]] || { log "module $name not found"; exit 1; }
        for dep in $(grep -a -o -m1 'depends=[A-Za-z0-9_,-]*' "$ko" | cut -d= -f2 | tr , ' ' || true); do
            add_module "$dep"
        done
        cp "$ko" "$root/lib/modules/"
        order+=("$name")
    }
    for m in "${MODULES[@]}"; do add_module "$m"; done
    printf '%s\n' "${order[@]}" >"$root/lib/modules/load-order"
    order=()
    for m in "${EFI_MODULES[@]}"; do add_module "$m"; done
    printf '%s\n' "${order[@]}" >"$root/lib/modules/efi-load-order"

    # The guest agent: /usr/sbin/qemu-ga, its ELF interpreter, and the libraries its NEEDED
    # entries name, recursively, each found in the unpacked QGA_PACKAGES and copied (symlinks
    # resolved inside the unpacked tree) into QGA_LIBDIR under its soname.
    qga_dirs=()
    for f in "${qga_debs[@]}"; do qga_dirs+=("$(extract "$f")"); done
    # in_debs NAME: the file NAME (a soname or loader name) in the unpacked packages,
    # following symlinks within the package that holds it.
    in_debs() {
        local d f t
        for d in "${qga_dirs[@]}"; do
            for f in "$d/lib/x86_64-linux-gnu/$1" "$d/usr/lib/x86_64-linux-gnu/$1"; do
                [[ -e $f || -L $f ]] || continue
                while [[ -L $f ]]; do
                    t=$(readlink "$f")
                    if [[ $t == /* ]]; then f=$d$t; else f=$(dirname "$f")/$t; fi
                done
                [[ -f $f ]] && { printf '%s\n' "$f"; return 0; }
            done
        done
        log "$1 is in none of: ${QGA_PACKAGES[*]}"
        return 1
    }
    declare -A have_lib=()
    add_needed() {
        local so f
        for so in $(readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
            [[ -z ${have_lib[$so]:-} ]] || continue
            have_lib[$so]=1
            f=$(in_debs "$so") || exit 1
            install -D -m 755 "$f" "$root$QGA_LIBDIR/$so"
            add_needed "$f"
        done
    }
    qga=${qga_dirs[0]}/usr/sbin/qemu-ga
    install -D -m 755 "$qga" "$root/usr/sbin/qemu-ga"
    interp=$(readelf -l "$qga" | sed -n 's/.*interpreter: \(.*\)\]/\1/p')
    install -D -m 755 "$(in_debs "$(basename "$interp")")" "$root$interp"
    add_needed "$qga"

    (cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) |
        gzip -9n >"$OUT/initramfs.img.tmp"
    mv "$OUT/initramfs.img.tmp" "$OUT/initramfs.img"
    rm -rf "$root"
fi

# --- disk image --------------------------------------------------------------------------
if ! newer "$OUT/testguest.qcow2" "$SELF" "$OUT/vmlinuz" "$OUT/initramfs.img"; then
    log "testguest.qcow2"
    raw=$OUT/disk.raw
    offset=$((PART_START * 512))
    part_sectors=$((DISK_MIB * 2048 - PART_START))
    rm -f "$raw"
    truncate -s "${DISK_MIB}M" "$raw"
    # MBR: syslinux boot code (440 bytes), then one partition entry and the signature.
    # The entry is active (0x80), type 0x0c (FAT32 LBA; FAT16 in it is fine for syslinux),
    # CHS fields set to the "use LBA" maximum (fe ff ff).
    dd if=/usr/lib/syslinux/mbr/mbr.bin of="$raw" conv=notrunc status=none
    # shellcheck disable=SC2059 # the format string is made of escapes on purpose
    printf "\\x80\\xfe\\xff\\xff\\x0c\\xfe\\xff\\xff$(le32 $PART_START)$(le32 $part_sectors)" |
        dd of="$raw" bs=1 seek=446 conv=notrunc status=none
    printf '\x55\xaa' | dd of="$raw" bs=1 seek=510 conv=notrunc status=none

    # FAT file system inside the partition, written through mtools' image@@offset syntax
    # (no mount, no loop device). -H: hidden sectors = partition start, for the boot sector.
    export MTOOLS_SKIP_CHECK=1
    img="$raw@@$offset"
    mformat -i "$img" -T "$part_sectors" -h 64 -s 32 -H "$PART_START" -v HVAGENT ::
    syslinux --offset "$offset" --install "$raw"
    # no_timer_check: under TCG on a loaded host the kernel's IO-APIC timer check can miss its
    # ticks and panic ("IO-APIC + timer doesn't work!"); the emulated timer is fine.
    cat >"$OUT/syslinux.cfg" <<'EOF'
SERIAL 0 115200
DEFAULT hvagent
PROMPT 0
TIMEOUT 0
LABEL hvagent
  LINUX /vmlinuz
  INITRD /initramfs.img
  APPEND console=ttyS0 no_timer_check
EOF
    mcopy -o -i "$img" "$OUT/syslinux.cfg" "$OUT/vmlinuz" "$OUT/initramfs.img" ::/
    rm -f "$OUT/syslinux.cfg"
    qemu-img convert -f raw -O qcow2 "$raw" "$OUT/testguest.qcow2.tmp"
    mv "$OUT/testguest.qcow2.tmp" "$OUT/testguest.qcow2"
    rm -f "$raw"
fi

# --- UEFI disk images --------------------------------------------------------------------
# Debian's Secure Boot chain: shim signed by Microsoft's UEFI CA (the key OVMF's ".ms" variable
# templates enrol), which trusts Debian's key, which signed GRUB and the kernel.
shimdeb=$(deb shim-signed)
grubdeb=$(deb grub-efi-amd64-signed)
shim_efi=$(extract "$shimdeb")/usr/lib/shim/shimx64.efi.signed
grub_efi=$(extract "$grubdeb")/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed
uefi_inputs=("$SELF" "$OUT/vmlinuz" "$OUT/initramfs.img" "$shimdeb" "$grubdeb")
if ! newer "$OUT/testguest-uefi.qcow2" "${uefi_inputs[@]}" ||
    ! newer "$OUT/testguest-uefi-unsigned.qcow2" "${uefi_inputs[@]}"; then
    # Debian 12 ships sfdisk in its own package, not in util-linux.
    command -v sfdisk >/dev/null || { log "sfdisk not found: apt-get install fdisk"; exit 1; }
    # The signed image is pointless with an unsigned kernel: stop if Debian's is not signed.
    read -r cert_off cert_size cert_dir < <(pe_cert_table "$OUT/vmlinuz")
    if ((cert_size == 0)); then
        log "$OUT/vmlinuz has no Authenticode signature (PE certificate table empty)"
        exit 1
    fi
    # No menu, so no timeout: load the kernel, and if GRUB refuses it (under Secure Boot shim
    # checks its signature; GRUB prints "error: bad shim signature.") say so on the console
    # and power off rather than wait at a prompt. OVMF copies the EFI console to the serial
    # port, where the kernel's console=ttyS0 goes on. `boot` returns only if it failed.
    cat >"$OUT/grub.cfg" <<'EOF'
if ! linux /vmlinuz console=ttyS0 no_timer_check; then
    echo "hvagent.boot=refused: kernel signature"
    halt
fi
initrd /initramfs.img
boot
echo "hvagent.boot=failed"
halt
EOF
    log "testguest-uefi.qcow2 (kernel signature: $cert_size bytes at $cert_off)"
    esp_disk "$OUT/vmlinuz" "$OUT/testguest-uefi.qcow2"
    # The kernel without its signature: the certificate table is the file's tail (checked),
    # so zero its data-directory entry and cut the file there. The image hash the signature
    # covered is unchanged, but nothing vouches for it any more.
    unsigned=$OUT/vmlinuz-unsigned
    if ((cert_off + cert_size != $(stat -c %s "$OUT/vmlinuz"))); then
        log "the kernel's certificate table is not at the end of the file"
        exit 1
    fi
    cp "$OUT/vmlinuz" "$unsigned"
    dd if=/dev/zero of="$unsigned" bs=1 seek="$cert_dir" count=8 conv=notrunc status=none
    truncate -s "$cert_off" "$unsigned"
    log "testguest-uefi-unsigned.qcow2"
    esp_disk "$unsigned" "$OUT/testguest-uefi-unsigned.qcow2"
    rm -f "$unsigned" "$OUT/grub.cfg"
fi

log "up to date: $OUT/{vmlinuz,initramfs.img,testguest.qcow2,testguest-uefi.qcow2,testguest-uefi-unsigned.qcow2}"
