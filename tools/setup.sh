#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build and test Likeness.
# Idempotent: installs only missing packages. Needs root or sudo for apt.
set -euo pipefail

PKGS=(build-essential pkg-config libdbus-1-dev dbus dbus-x11 gnome-keyring keyutils)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "setup: Rust (cargo) is required: install it with rustup (https://rustup.rs) and run again" >&2
  exit 1
fi
