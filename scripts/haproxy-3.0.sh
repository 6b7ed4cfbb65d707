#!/usr/bin/env bash
# Gets Debian 13 (trixie)'s HAProxy 3.0 without touching the system's packages:
# a temporary apt sources list and package lists in a temp dir, `apt-get
# download` of haproxy and the libraries it needs, each .deb unpacked with
# `dpkg-deb -x` into a cache dir, and a wrapper that runs the unpacked binary
# through the unpacked dynamic loader and libc (trixie's libc is newer than
# bookworm's). Prints the wrapper's path last; does nothing but that when the
# cache already holds a working 3.0.
#
#   SHARDMAP_HAPROXY=$(bash scripts/haproxy-3.0.sh) go test ./e2e/
#
# Cache: $SHARDMAP_HAPROXY30_CACHE, else ${XDG_CACHE_HOME:-$HOME/.cache}/shardmap/haproxy-3.0.
# Mirror: the host of the first Debian mirror in /etc/apt (deb.debian.org if none).
# Needs apt-get, apt-cache, dpkg-deb; root, or a user apt can download as.
set -euo pipefail

if [ -z "${SHARDMAP_HAPROXY30_CACHE:-}" ] && [ -z "${XDG_CACHE_HOME:-}" ] && [ -z "${HOME:-}" ]; then
  echo "haproxy-3.0.sh: set HOME, XDG_CACHE_HOME or SHARDMAP_HAPROXY30_CACHE (where to keep haproxy 3.0)" >&2
  exit 1
fi
cache="${SHARDMAP_HAPROXY30_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/shardmap/haproxy-3.0}"
wrapper="$cache/haproxy"

works() {
  local v
  [ -x "$wrapper" ] || return 1
  v="$("$wrapper" -v 2>/dev/null)" || return 1
  case "$v" in "HAProxy version 3.0."*) return 0 ;; *) return 1 ;; esac
}

if works; then
  echo "$wrapper"
  exit 0
fi

# One fetch at a time per cache (two test runs may start together).
mkdir -p "$(dirname "$cache")"
exec 9>"$cache.lock"
flock -w 600 9 || { echo "haproxy-3.0.sh: another fetch has held the cache's lock for 10 minutes" >&2; exit 1; }
if works; then
  echo "$wrapper"
  exit 0
fi

for tool in apt-get apt-cache dpkg-deb; do
  command -v "$tool" >/dev/null 2>&1 || { echo "haproxy-3.0.sh: needs $tool (a Debian system)" >&2; exit 1; }
done
arch="$(dpkg --print-architecture)"
case "$arch" in
  amd64) loader=ld-linux-x86-64.so.2 multiarch=x86_64-linux-gnu ;;
  arm64) loader=ld-linux-aarch64.so.1 multiarch=aarch64-linux-gnu ;;
  *) echo "haproxy-3.0.sh: architecture $arch is not supported (amd64, arm64)" >&2; exit 1 ;;
esac

# The mirror the system already uses for Debian (deb822 .sources or one-line .list).
mirror="$(
  { cat /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -n 's/^URIs:[[:space:]]*//p' | tr ' ' '\n'
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]\+\).*/\2/p'
  } | grep -v security | grep -E '^(https?|ftp)://[^/]+/(.*/)?debian(/[0-9]{8}T[0-9]{6}Z)?/?$' | head -1 || true
)"
mirror="${mirror%/}"
[ -n "$mirror" ] || mirror="http://deb.debian.org/debian"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$keyring" ] || { echo "haproxy-3.0.sh: $keyring missing (apt-get install debian-archive-keyring)" >&2; exit 1; }

tmp="$(mktemp -d "${TMPDIR:-/tmp}/shardmap-haproxy30.XXXXXX")"
trap 'rm -rf "$tmp" "$cache.new"' EXIT
mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/debs"
chmod 755 "$tmp"
cat >"$tmp/trixie.sources" <<EOF
Types: deb
URIs: $mirror
Suites: trixie
Components: main
Architectures: $arch
Signed-By: $keyring
EOF

apt_opts=(
  -o "Dir::Etc::SourceList=$tmp/trixie.sources"
  -o Dir::Etc::SourceParts=/dev/null
  -o Dir::Etc::Preferences=/dev/null
  -o Dir::Etc::PreferencesParts=/dev/null
  -o "Dir::State::Lists=$tmp/lists"
  -o "Dir::Cache=$tmp/cache"
  -o "Dir::Cache::pkgcache=$tmp/cache/pkgcache.bin"
  -o "Dir::Cache::srcpkgcache=$tmp/cache/srcpkgcache.bin"
  -o Acquire::Languages=none
  -o APT::Sandbox::User=root
  -o "APT::Architecture=$arch"
  -o "APT::Architectures=$arch"
)
# The sandbox user must not matter: files land in $tmp, which only we use.
[ "$(id -u)" -eq 0 ] || apt_opts+=(-o Debug::NoLocking=1)

echo "haproxy-3.0.sh: reading trixie's package list from $mirror" >&2
apt-get "${apt_opts[@]}" -qq update >&2

# haproxy and, recursively, the libraries (lib*, zlib1g) it depends on; other
# dependencies (adduser, debconf, ...) are for installing, not for running.
declare -A seen=()
queue=(haproxy)
pkgs=()
while [ ${#queue[@]} -gt 0 ]; do
  p="${queue[0]}"
  queue=("${queue[@]:1}")
  [ -n "${seen[$p]:-}" ] && continue
  seen[$p]=1
  pkgs+=("$p")
  while read -r dep; do
    case "$dep" in
      lib* | zlib1g) [ -z "${seen[$dep]:-}" ] && queue+=("$dep") ;;
    esac
  done < <(apt-cache "${apt_opts[@]}" depends --no-recommends --no-suggests --no-conflicts \
             --no-breaks --no-replaces --no-enhances "$p" |
           sed -n 's/^ *|\?\(Pre\)\?Depends: \([^<>: ]\+\).*/\2/p' | sort -u)
done

echo "haproxy-3.0.sh: downloading ${pkgs[*]}" >&2
(cd "$tmp/debs" && apt-get "${apt_opts[@]}" -qq download "${pkgs[@]}" >&2)

rm -rf "$cache.new"
mkdir -p "$cache.new/root"
for deb in "$tmp"/debs/*.deb; do
  dpkg-deb -x "$deb" "$cache.new/root"
done

root="$cache/root"
bin="$root/usr/sbin/haproxy"
ld=""
for d in lib64 "lib/$multiarch" lib usr/lib64 "usr/lib/$multiarch" usr/lib; do
  if [ -e "$cache.new/root/$d/$loader" ]; then ld="$root/$d/$loader"; break; fi
done
[ -n "$ld" ] || { echo "haproxy-3.0.sh: $loader not found in the unpacked libc6" >&2; exit 1; }
libdirs="$(cd "$cache.new/root" && find . -name '*.so*' \( -type f -o -type l \) -printf '%h\n' | grep -v /share/ | sort -u |
  sed "s|^\.|$root|" | paste -sd: -)"

cat >"$cache.new/haproxy" <<EOF
#!/bin/sh
# Debian 13's HAProxy 3.0 with its own loader and libraries (written by scripts/haproxy-3.0.sh).
exec "$ld" --library-path "$libdirs" "$bin" "\$@"
EOF
chmod 755 "$cache.new/haproxy"

rm -rf "$cache"
mv "$cache.new" "$cache"

# Every library must come from the cache: one taken from the system would hide
# a missing package here and break on a machine without it.
if outside="$("$ld" --library-path "$libdirs" --list "$bin" 2>&1 | grep -E 'not found|=> /' | grep -v "=> $root/")"; then
  echo "haproxy-3.0.sh: libraries not unpacked from trixie:" >&2
  echo "$outside" >&2
  exit 1
fi

if ! works; then
  echo "haproxy-3.0.sh: the unpacked haproxy does not run:" >&2
  "$wrapper" -v >&2 || true
  "$ld" --library-path "$libdirs" --list "$bin" >&2 || true
  exit 1
fi
"$wrapper" -v | sed -n 1p >&2
echo "$wrapper"
