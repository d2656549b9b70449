#!/usr/bin/env bash
# The packaging test (docs/packaging.md), as root: builds the packages from debug binaries
# (scripts/package --debug --fast), then
#   1. lintian: no errors on the .debs (explained warnings are in docs/packaging.md),
#   2. rpmlint: no errors on the .rpms,
#   3. rpm -qpl / --configfiles / --requires / --scripts list what is expected,
#   4. installs the .debs with dpkg into a copy of a fresh Debian 12 minbase root (debootstrap,
#      cached under $CAIRN_CACHE, made once), runs the installed binaries' --version there and
#      checks conffiles, the cairn user and the upgrade path (postinst restarts, prerm does not
#      stop, on upgrade), then `systemd-analyze verify --root` on the installed units.
# Usage: packaging/tests/run.sh [--no-build]
set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
cache=${CAIRN_CACHE:-$top/.cache}
out=$top/target/packages
fail() { echo "packaging test: FAIL: $*" >&2; exit 1; }
step() { printf '\n--- %s\n' "$*"; }

step "scripts/package --debug --fast $*"
scripts/package --debug --fast "$@"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
debs=("$out"/*.deb) rpms=("$out"/*.rpm)
[ ${#debs[@]} -eq 3 ] || fail "expected 3 .debs, got ${debs[*]}"
[ ${#rpms[@]} -eq 3 ] || fail "expected 3 .rpms, got ${rpms[*]}"

step lintian
lintian --fail-on error --suppress-tags-from-file packaging/lintian-overrides.txt "${debs[@]}" \
  || fail "lintian errors"

step rpmlint
rpmlint -c packaging/rpmlint.toml "${rpms[@]}" || fail "rpmlint errors"

step "rpm -qp"
expect_files() {
  local rpm=$1; shift
  local listed; listed=$(rpm -qpl "$rpm")
  for f in "$@"; do grep -qx "$f" <<<"$listed" || fail "$rpm lacks $f"; done
}
rpm_of() { echo "$out/$1-$version-1.x86_64.rpm"; }
expect_files "$(rpm_of cairn-agent)" /usr/bin/cairn-agent /usr/bin/cairn-supervisor \
  /usr/libexec/cairn/cairn-agent-start /usr/lib/systemd/system/cairn-agent.service \
  /etc/cairn/agent.toml /usr/share/man/man1/cairn-agent.1.gz /usr/share/licenses/cairn-agent/LICENSE
expect_files "$(rpm_of cairn-master)" /usr/bin/cairn-master \
  /usr/lib/systemd/system/cairn-master.service /etc/cairn/master.toml \
  /usr/share/man/man1/cairn-master.1.gz
expect_files "$(rpm_of cairn)" /usr/bin/cairn /usr/share/man/man1/cairn.1.gz
for r in "${rpms[@]}"; do
  rpm -qpl "$r" | grep -Ev '^/(usr|etc/cairn)/' && fail "$r installs outside /usr and /etc/cairn"
done
rpm -qp --configfiles "$(rpm_of cairn-agent)" | grep -qx /etc/cairn/agent.toml || fail "agent.toml not %config"
rpm -qp --configfiles "$(rpm_of cairn-master)" | grep -qx /etc/cairn/master.toml || fail "master.toml not %config"
rpm -qp --requires "$(rpm_of cairn-agent)" | grep -q '^libseccomp' || fail "agent rpm does not require libseccomp"
rpm -qp --requires "${rpms[@]}" | grep -qi zookeeper && fail "a package requires zookeeper"
rpm -qp --scripts "$(rpm_of cairn-agent)" | grep -q 'try-restart cairn-agent.service' || fail "agent rpm: no try-restart on upgrade"
rpm -qp --scripts "$(rpm_of cairn-master)" | grep -q 'useradd -r -g cairn' || fail "master rpm: no user"
rpm -qpl "$(rpm_of cairn-agent)"

step "dpkg-deb fields"
dpkg-deb -f "$out/cairn-agent_${version}-1_amd64.deb" Depends | grep -q libseccomp2 || fail "agent deb: no libseccomp2"
dpkg-deb -f "${debs[@]/%/}" Depends 2>/dev/null | grep -qi zookeeper && fail "a deb depends on zookeeper"
for d in "${debs[@]}"; do
  dpkg-deb -c "$d" | awk '{print $6}' | grep -Ev '^\./(usr|etc/cairn)(/|$)|^\./(etc)?/?$' && fail "$d installs outside /usr and /etc/cairn"
done
tmp=$(mktemp -d /tmp/cairn-pkg.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
dpkg-deb -e "$out/cairn-agent_${version}-1_amd64.deb" "$tmp/agent-control"
grep -q 'deb-systemd-invoke restart' "$tmp/agent-control/postinst" || fail "agent postinst does not restart"
if grep -q 'deb-systemd-invoke stop' "$tmp/agent-control/prerm" 2>/dev/null \
  && ! grep -q 'remove' "$tmp/agent-control/prerm"; then
  fail "agent prerm stops the agent on upgrade"
fi
grep -qx /etc/cairn/agent.toml "$tmp/agent-control/conffiles" || fail "agent.toml not a conffile"

step "install into a fresh Debian root"
base=$cache/debootstrap-bookworm-minbase
if [ ! -x "$base/usr/bin/dpkg" ]; then
  mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
  mirror=${mirror:-http://deb.debian.org/debian}
  echo "debootstrap (once) from $mirror into $base"
  rm -rf "$base.tmp"
  debootstrap --variant=minbase --include=adduser,libseccomp2,init-system-helpers \
    bookworm "$base.tmp" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || fail "debootstrap failed, see $cache/debootstrap.log"
  mv "$base.tmp" "$base"
fi
root=$tmp/root
cp -a "$base" "$root"
cp "${debs[@]}" "$root/tmp/"
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
in_root sh -c 'dpkg -i /tmp/*.deb' || fail "dpkg -i failed"
in_root cairn-agent --version | tee -a /dev/stderr | grep -q "$version" || fail "cairn-agent --version"
in_root cairn-master --version | tee -a /dev/stderr | grep -q "$version" || fail "cairn-master --version"
in_root cairn --version | tee -a /dev/stderr | grep -q "$version" || fail "cairn --version"
[ -x "$root/usr/bin/cairn-supervisor" ] || fail "cairn-supervisor not next to cairn-agent"
in_root getent passwd cairn || fail "no cairn user"
in_root dpkg-query -W -f='${Conffiles}\n' cairn-agent cairn-master | tee -a /dev/stderr \
  | grep -c '/etc/cairn/' | grep -qx 2 || fail "conffiles"
# The installed configs parse: --version does not read them, the agent's offer dry run does.
in_root cairn-agent --help >/dev/null
# Reinstalling (the upgrade path of dpkg: prerm upgrade, postinst configure <old>) succeeds.
in_root sh -c 'dpkg -i /tmp/*.deb' >/dev/null || fail "reinstall (upgrade) failed"
# Nothing outside /usr, /etc/cairn and dpkg/adduser's own files changed (immutable hosts).
[ ! -e "$root/var/lib/cairn" ] || ls -la "$root/var/lib/cairn"
in_root sh -c 'dpkg -r cairn-agent cairn-master cairn && dpkg -P cairn-agent cairn-master cairn' >/dev/null \
  || fail "remove/purge failed"
in_root sh -c 'dpkg -i /tmp/*.deb' >/dev/null

step "systemd-analyze verify"
# minbase has no systemd: borrow the host's stock units (targets) so dependencies resolve.
cp -rn /lib/systemd/system/. "$root/usr/lib/systemd/system/"
SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no --root="$root" \
  cairn-agent.service cairn-master.service 2>&1 | tee "$tmp/verify.log"
grep -v -e 'Failed to prepare filename' -e '^$' "$tmp/verify.log" | grep -q . \
  && fail "systemd-analyze verify reported problems"

step "upgrade: a running task survives the agent package's upgrade"
packaging/tests/upgrade.sh || fail "upgrade survival"

echo
echo "packaging test: ok"
