#!/usr/bin/env bash
# `make deb`: builds target/debian/hvagent_<version>_amd64.deb with dpkg-deb from a staged tree:
# the two binaries (profile `deb`, stripped), the systemd unit with /usr/bin paths, the
# commented default /etc/hvagent/hvagent.toml (a conffile), tmpfiles.d for /run/hvagent, man
# pages and completions (rendered by packaging/gen from the clap definitions and
# docs/operations.md), the docs with the Prometheus rules and the Grafana dashboard, and the
# maintainer scripts beside this file. docs/operations.md ("The Debian package") says what
# install, upgrade, remove and purge do.
#
# Environment: CARGO (cargo), DEB_REVISION (1: the Debian revision after the crate's version),
# DEB_MAINTAINER (the Maintainer field), DEB_PROFILE (deb: the cargo profile the binaries are
# built with; the package test uses `dev`, the binaries `cargo test` has built already, so that
# checking the packaging costs no second optimised build).
set -euo pipefail
cd "$(dirname "$0")/../.."
CARGO=${CARGO:-cargo}
profile=${DEB_PROFILE:-deb}
# cargo puts the dev profile's output in target/debug, every other profile's under its name.
bin_dir=target/$([[ $profile == dev ]] && echo debug || echo "$profile")
here=packaging/deb

upstream=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
[[ -n $upstream ]] || { echo "no [workspace.package] version in Cargo.toml" >&2; exit 1; }
version="$upstream-${DEB_REVISION:-1}"
maintainer=${DEB_MAINTAINER:-"hvagent maintainers <maintainers@users.noreply.r-seed-05632793.example>"}
out=target/debian
stage="$out/hvagent_${version}_amd64"
deb="$out/hvagent_${version}_amd64.deb"

"$CARGO" build --profile "$profile" -p hvagent -p hvctl --bins
gen="$out/gen"
rm -rf "$gen" "$stage"
"$CARGO" run --quiet -p hvagent-packaging -- "$gen"

# dpkg-deb takes owners from --root-owner-group and modes from the tree: set every mode.
umask 022
install -d "$stage/DEBIAN" "$stage/usr/bin" "$stage/lib/systemd/system" "$stage/etc/hvagent" \
  "$stage/usr/lib/tmpfiles.d" "$stage/usr/share/doc/hvagent" "$stage/usr/share/lintian/overrides"
for bin in hvagent hvctl; do
  install -m 0755 "$bin_dir/$bin" "$stage/usr/bin/$bin"
  # What dh_strip does: no symbols, no .comment/.note sections.
  strip --remove-section=.comment --remove-section=.note --strip-unneeded "$stage/usr/bin/$bin"
done

# The repository's unit, with the package's paths and without its install-by-hand comment.
sed -e '/^# Install:/,/^#   systemctl daemon-reload/d' \
  -e 's|/usr/local/bin/hvagent|/usr/bin/hvagent|g' \
  -e '/^Description=/a Documentation=man:hvagent(8) man:hvagent.toml(5) file:///usr/share/doc/hvagent/operations.md' \
  systemd/hvagent.service \
  > "$stage/lib/systemd/system/hvagent.service"
if grep -q /usr/local "$stage/lib/systemd/system/hvagent.service"; then
  echo "the unit still names /usr/local" >&2; exit 1
fi
chmod 0644 "$stage/lib/systemd/system/hvagent.service"
install -m 0644 "$gen/hvagent.toml" "$stage/etc/hvagent/hvagent.toml"
install -m 0644 "$here/tmpfiles.conf" "$stage/usr/lib/tmpfiles.d/hvagent.conf"

for page in "$gen"/man/*.[0-9]; do
  section=${page##*.}
  install -d "$stage/usr/share/man/man$section"
  gzip -9n -c "$page" > "$stage/usr/share/man/man$section/$(basename "$page").gz"
  chmod 0644 "$stage/usr/share/man/man$section/$(basename "$page").gz"
done

install -d "$stage/usr/share/bash-completion/completions" "$stage/usr/share/zsh/vendor-completions" \
  "$stage/usr/share/fish/vendor_completions.d"
for cmd in hvctl hvagent; do
  install -m 0644 "$gen/completions/bash/$cmd.bash" "$stage/usr/share/bash-completion/completions/$cmd"
  install -m 0644 "$gen/completions/zsh/_$cmd" "$stage/usr/share/zsh/vendor-completions/_$cmd"
  install -m 0644 "$gen/completions/fish/$cmd.fish" "$stage/usr/share/fish/vendor_completions.d/$cmd.fish"
done

doc="$stage/usr/share/doc/hvagent"
install -m 0644 "$here/copyright" "$doc/copyright"
install -m 0644 README.md docs/*.md "$doc/"
install -d "$doc/prometheus" "$doc/grafana"
install -m 0644 docs/prometheus/alerts.yml "$doc/prometheus/"
install -m 0644 docs/grafana/hvagent.json "$doc/grafana/"
# The changelog's date is the last commit's, so a rebuild of the same tree is the same file.
date=$(git log -1 --format=%cD 2>/dev/null || date -R)
printf 'hvagent (%s) unstable; urgency=medium\n\n  * Built from the hvagent repository (make deb).\n\n -- %s  %s\n' \
  "$version" "$maintainer" "$date" | gzip -9n > "$doc/changelog.Debian.gz"
chmod 0644 "$doc/changelog.Debian.gz"
install -m 0644 "$here/lintian-overrides" "$stage/usr/share/lintian/overrides/hvagent"

for script in postinst prerm postrm; do
  install -m 0755 "$here/maintainer/$script" "$stage/DEBIAN/$script"
done
echo /etc/hvagent/hvagent.toml > "$stage/DEBIAN/conffiles"
chmod 0644 "$stage/DEBIAN/conffiles"

# Shared-library dependencies (libc6, libvirt0, ...) as dh_shlibdeps finds them: dpkg-shlibdeps
# wants a debian/control naming the package.
shlib_dir=$(mktemp -d)
trap 'rm -rf "$shlib_dir"' EXIT
mkdir "$shlib_dir/debian"
printf 'Source: hvagent\n\nPackage: hvagent\nArchitecture: amd64\n' > "$shlib_dir/debian/control"
shlibs=$(cd "$shlib_dir" && dpkg-shlibdeps -O "-e$OLDPWD/$stage/usr/bin/hvagent" "-e$OLDPWD/$stage/usr/bin/hvctl")
shlibs=${shlibs#shlibs:Depends=}

(cd "$stage" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) \
  > "$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/md5sums"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s|@VERSION@|$version|" -e "s|@MAINTAINER@|$maintainer|" -e "s|@INSTALLED_SIZE@|$size|" \
  -e "s|@SHLIBS@|$shlibs|" "$here/control.in" > "$stage/DEBIAN/control"
chmod 0644 "$stage/DEBIAN/control"

dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
