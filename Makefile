# The two set-up commands of the README, on a fresh Debian 12 machine as root:
#   make run    installs missing host packages, starts virtlogd/libvirtd, builds, runs hvagent
#   make test   the same preparation, then every check and test CI runs
# Both are idempotent and quick on a warm machine.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
CONFIG ?=

# scripts/host-packages.sh installs the missing ones (and why qemu-utils may be downgraded).
APT_PACKAGES := qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev \
	pkg-config numactl util-linux busybox-static cpio syslinux syslinux-common extlinux mtools \
	dosfstools fdisk openssl ca-certificates ovmf swtpm swtpm-tools
# What `make deb` needs beside the build: dpkg-shlibdeps (dpkg-dev) and strip (binutils).
DEB_PACKAGES := dpkg-dev binutils
PY_MODULES := grpc grpc_health grpc_reflection google.protobuf placement.wsgi keystone.server.wsgi
PY_PACKAGES := grpcio grpcio-health-checking grpcio-reflection protobuf openstack-placement keystone

.PHONY: run test host packages packages-fresh libvirtd hugepages python images build check fuzz-smoke fuzz deb

run: host build
	./target/release/hvagent $(if $(CONFIG),--config $(CONFIG))

# The tests also need promtool (Debian ships it in the prometheus package) to check a real scrape
# and the alerting rules; tests/tests/operators_kit.rs builds, checks (lintian) and installs the
# Debian package and reads its man page (man-db); tests/tests/migration.rs pings a migrated
# guest at its address on both nodes (iputils-ping).
test: APT_PACKAGES += prometheus lintian man-db iputils-ping $(DEB_PACKAGES)
test: packages-fresh host hugepages python images check fuzz-smoke
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

build:
	$(CARGO) build --release --bins

# The Debian package: target/debian/hvagent_<version>-<DEB_REVISION>_amd64.deb
# (packaging/deb/build.sh; docs/operations.md, "The Debian package").
deb: APT_PACKAGES += $(DEB_PACKAGES)
deb: packages
	CARGO=$(CARGO) ./packaging/deb/build.sh

check:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

host: packages libvirtd

packages:
	@./scripts/host-packages.sh $(APT_PACKAGES)

# What a fresh machine would ask apt for (every package missing), simulated: a package step that
# cannot resolve fails here, not on a newcomer's first `make run`.
packages-fresh:
	@./scripts/host-packages.sh --simulate-fresh $(APT_PACKAGES)

# No systemd on the build machines: start the daemons by hand when they are not running.
# libvirtd finds hugetlbfs mounts when it starts: mount first, restart one that started without.
# /dev/kvm as udev leaves it on Debian (0660 root:kvm): without udev it is 0600 root, and then
# libvirtd's capability cache (probed with KVM) never matches "KVM not accessible to the qemu
# user", so libvirtd re-probes QEMU on every define/create/capabilities call (seconds each).
# libvirtd runs swtpm as qemu.conf's swtpm_user (Debian: tss) once that user exists; one started
# before swtpm-tools made it ran swtpm as root, whose first TPM guest left swtpm's local CA
# (/var/lib/swtpm-localca) owned by root, and then every TPM guest's start fails under tss
# ("Need read/write rights on /var/lib/swtpm-localca/.lock.swtpm-localca for user tss"): the
# directory goes back to tss:root, as swtpm-tools' postinst made it.
libvirtd:
	@if [ -c /dev/kvm ] && getent group kvm >/dev/null; then chgrp kvm /dev/kvm && chmod 0660 /dev/kvm; fi
	@pgrep -x virtlogd >/dev/null || virtlogd -d
	@if ! mountpoint -q /dev/hugepages; then \
	  if mkdir -p /dev/hugepages && mount -t hugetlbfs hugetlbfs /dev/hugepages; then \
	    if pkill -x libvirtd; then \
	      for i in $$(seq 50); do pgrep -x libvirtd >/dev/null || break; sleep 0.2; done; \
	    fi; \
	  else echo "warning: cannot mount hugetlbfs on /dev/hugepages: hugepage-backed guests will not start" >&2; fi; \
	fi
	@if getent passwd tss >/dev/null && [ -d /var/lib/swtpm-localca ]; then chown -R tss:root /var/lib/swtpm-localca; fi
	@if ! pgrep -x libvirtd >/dev/null; then rm -f /run/libvirtd.pid; libvirtd -d; fi
	@for i in $$(seq 50); do virsh -c qemu:///system version >/dev/null 2>&1 && exit 0; sleep 0.2; done; \
	  echo "libvirtd did not answer on qemu:///system" >&2; exit 1

# The placement tests back guests with real 2 MiB hugepages: keep at least HUGEPAGES of them.
HUGEPAGES ?= 512
hugepages:
	@have=$$(cat /proc/sys/vm/nr_hugepages); \
	if [ "$$have" -lt $(HUGEPAGES) ]; then \
	  echo $(HUGEPAGES) > /proc/sys/vm/nr_hugepages || true; \
	  echo "2 MiB hugepages: $$(cat /proc/sys/vm/nr_hugepages) (wanted $(HUGEPAGES))"; \
	fi

python:
	@python3 -c "$(foreach m,$(PY_MODULES),import $(m);)" 2>/dev/null || \
	  python3 -m pip install --quiet --disable-pip-version-check --break-system-packages $(PY_PACKAGES)

images:
	CARGO=$(CARGO) ./images/build.sh

# The fuzz targets (agent/fuzz, outside the workspace: cargo-fuzz builds them with its own
# flags) over their committed corpora plus FUZZ_SECONDS of new inputs each. The machines have
# one stable toolchain: RUSTC_BOOTSTRAP lets it take the unstable flags cargo-fuzz passes. A
# debug build without sanitizer keeps the smoke run quick to build; `make fuzz` is the long
# run (docs/security.md). New inputs go to a scratch directory, never into the committed corpus.
FUZZ_TARGETS := parse_flavor read_intent load_config validate_request image_header
FUZZ_SECONDS ?= 15
FUZZ_FLAGS ?= --dev --sanitizer none
fuzz-smoke:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	@scratch=$$(mktemp -d); trap 'rm -rf "$$scratch"' EXIT; \
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p "$$scratch/$$t" agent/fuzz/corpus/$$t; \
	  (cd agent && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $(FUZZ_FLAGS) $$t "$$scratch/$$t" fuzz/corpus/$$t \
	    -- -max_total_time=$(FUZZ_SECONDS) >"$$scratch/$$t.log" 2>&1) \
	    || { tail -n 60 "$$scratch/$$t.log"; echo "fuzz target $$t failed" >&2; exit 1; }; \
	  grep -E '^Done [0-9]+ runs' "$$scratch/$$t.log" | sed "s/^/fuzz $$t: /"; \
	done

fuzz: FUZZ_SECONDS = 600
fuzz: FUZZ_FLAGS =
fuzz: fuzz-smoke
