#!/usr/bin/env bash
# Installs what shardmap runs: HAProxy and Redis from Debian's packages when
# they are missing, and with --browser also what only the tests use: Chromium
# (the demo's browser test) and systemd's systemd-analyze (the unit's check in
# e2e/deb_test.go; the package installs, it starts nothing in a container).
# Needs root (or sudo) and apt-get.
set -euo pipefail
missing=()
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ "${1:-}" = "--browser" ]; then
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
fi
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "shardmap needs ${missing[*]}; there is no apt-get here: install them with your package manager" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "shardmap needs ${missing[*]}: run as root, or: apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi
echo "installing ${missing[*]} from Debian's packages" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
