#!/usr/bin/env bash
# Installs the Debian packages named as arguments that are not installed yet (the Makefile's
# `packages` step). With --simulate-fresh every package counts as missing and apt-get only
# simulates (-s) the install: that is what a fresh machine would ask apt for, so a resolution
# problem (held or broken packages) fails `make test` here instead of a newcomer's first run.
#
# QEMU: some machine images carry qemu-utils from bookworm-backports (QEMU 10) while Debian 12's
# qemu-system-x86 is QEMU 7.2, and the two share qemu-system-common's helpers: apt cannot install
# qemu-system-x86 beside the backports qemu-utils ("held broken packages"). Whenever
# qemu-system-x86 is to be installed, qemu-utils is asked for from the release itself
# (qemu-utils/bookworm, a downgrade where backports is installed).
#
# No `cmd | grep -q` here: under pipefail, grep -q exits at its first match, the writer dies of
# SIGPIPE and the pipeline fails although the text matched (that hid the downgrade before).
set -euo pipefail

simulate=false
if [[ ${1:-} == --simulate-fresh ]]; then
  simulate=true
  shift
fi

installed() {
  local status
  status=$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) || return 1
  [[ $status == "install ok installed" ]]
}

missing=()
for p in "$@"; do
  if $simulate || ! installed "$p"; then missing+=("$p"); fi
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

# qemu-system-x86 and qemu-utils come from the same QEMU release.
if [[ " ${missing[*]} " == *" qemu-system-x86 "* && " ${missing[*]} " != *" qemu-utils "* ]]; then
  missing+=(qemu-utils)
fi

echo "installing: ${missing[*]}"
# `make test` runs this twice (the simulation, then the install): lists refreshed within the
# hour are used as they are rather than fetched again.
if [[ -z $(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages' -mmin -60 -print -quit 2>/dev/null) ]]; then
  apt-get update -qq
fi

codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
policy=$(apt-cache policy qemu-utils)
pkgs=()
for p in "${missing[@]}"; do
  if [[ $p == qemu-utils && -n $codename && $policy == *"~bpo"* ]]; then
    p="qemu-utils/$codename"
  fi
  pkgs+=("$p")
done

apt_args=(-y -qq --no-install-recommends --allow-downgrades)
if $simulate; then
  echo "simulating a fresh machine: apt-get -s install ${pkgs[*]}"
  if ! out=$(DEBIAN_FRONTEND=noninteractive apt-get -s install "${apt_args[@]}" "${pkgs[@]}" 2>&1); then
    printf '%s\n' "$out" | tail -n 30 >&2
    echo "apt cannot install the packages a fresh machine needs (see above)" >&2
    exit 1
  fi
  echo "a fresh machine's install resolves: $(printf '%s\n' "$out" | grep -c '^Inst ') packages to install"
else
  DEBIAN_FRONTEND=noninteractive apt-get install "${apt_args[@]}" "${pkgs[@]}"
fi
