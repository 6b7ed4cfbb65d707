#!/usr/bin/env bash
# Builds the Debian package of this tree with dpkg-deb (no debhelper):
# OUTDIR/shardmap_<version>_<arch>.deb, OUTDIR defaulting to bin/. Prints the
# package's path. Version: the latest tag (v1.2.3-4-gabc -> 1.2.3+4.gabc), or
# 0.0.0+git<rev> without tags (0.0.0 outside a git checkout); ".dirty" when
# tracked files have uncommitted changes.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bin}"
GO="${GO:-go}"

for c in dpkg-deb dpkg "$GO"; do
  command -v "$c" >/dev/null 2>&1 || { echo "deb.sh: needs $c" >&2; exit 1; }
done

if desc="$(git describe --tags --dirty=.dirty 2>/dev/null)"; then
  desc="${desc#v}"
  # 1.2.3-4-gabc[.dirty] -> 1.2.3+4.gabc[.dirty]
  version="$(printf '%s' "$desc" | sed -E 's/-([0-9]+)-g([0-9a-f]+)/+\1.g\2/')"
elif rev="$(git describe --always --dirty=.dirty 2>/dev/null)"; then
  version="0.0.0+git$rev"
else
  version="0.0.0" # not a git checkout
fi
case "$version" in
  [0-9]*) ;;
  *) echo "deb.sh: version $version does not start with a digit (tag it like v1.2.3)" >&2; exit 1 ;;
esac
arch="$(dpkg --print-architecture)"
goarch="$("$GO" env GOARCH)"

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
root="$stage/shardmap"

# Static binaries (no cgo): the package depends on no libc version.
mkdir -p "$root/usr/bin"
CGO_ENABLED=0 GOOS=linux GOARCH="$goarch" "$GO" build -trimpath \
  -ldflags "-X github.com/shardmap/shardmap/internal/cli.Version=$version" -o "$stage/build/" ./cmd/syncer ./cmd/mapctl
install -m 0755 "$stage/build/syncer" "$root/usr/bin/shardmap-syncer"
install -m 0755 "$stage/build/mapctl" "$root/usr/bin/mapctl"

install -D -m 0644 deploy/shardmap-syncer.service "$root/lib/systemd/system/shardmap-syncer.service"
# It may hold the Redis password: root's only (systemd reads it as root).
install -D -m 0600 deploy/shardmap-syncer.default "$root/etc/default/shardmap-syncer"
install -d -m 0750 "$root/etc/haproxy/shardmap" # owner set by postinst (dpkg-statoverride)
install -D -m 0644 deploy/topology.example.yaml "$root/usr/share/doc/shardmap/examples/topology.yaml"
install -D -m 0644 README.md "$root/usr/share/doc/shardmap/README.md"

mkdir -p "$root/DEBIAN"
install -m 0755 deploy/debian/postinst deploy/debian/postrm "$root/DEBIAN/"
printf '/etc/default/shardmap-syncer\n' >"$root/DEBIAN/conffiles"
size="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
cat >"$root/DEBIAN/control" <<CONTROL
Package: shardmap
Version: $version
Architecture: $arch
Maintainer: shardmap developers <shardmap@localhost>
Installed-Size: $size
Depends: adduser
Recommends: haproxy, redis-server
Section: net
Priority: optional
Homepage: https://github.com/shardmap/shardmap
Description: route each user to a shard with an HAProxy map kept in sync from Redis
 shardmap keeps HAProxy's user -> shard map equal to the assignments held in
 Redis, over HAProxy's Runtime API (no reloads). shardmap-syncer is the daemon
 (systemd unit shardmap-syncer.service, settings in
 /etc/default/shardmap-syncer); mapctl changes and inspects assignments and
 renders haproxy.cfg from a topology file.
CONTROL

mkdir -p "$out"
deb="$out/shardmap_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
