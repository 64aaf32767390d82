#!/usr/bin/env bash
# Runs every test of Likeness (the README's test command; .ci/run calls exactly this).
# One release build is shared by all tests: candle is ~15x slower unoptimised.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh

# The real OS keyring: a private D-Bus session with an unlocked gnome-keyring (Secret Service),
# and a fresh keyring folder so an old login.keyring never leaves it locked.
XDG_RUNTIME_DIR="$(mktemp -d)"; XDG_DATA_HOME="$(mktemp -d)"; chmod 700 "$XDG_RUNTIME_DIR"
export XDG_RUNTIME_DIR XDG_DATA_HOME
trap 'rm -rf "$XDG_RUNTIME_DIR" "$XDG_DATA_HOME"' EXIT

dbus-run-session -- bash -c '
  set -euo pipefail
  eval "$(printf likeness-ci | gnome-keyring-daemon --unlock --components=secrets)" >/dev/null
  export LIKENESS_TEST_SECRET_SERVICE=1
  # Real full-disk tests mount a small tmpfs: only root can (CI runs as root).
  if [ "$(id -u)" = 0 ]; then export LIKENESS_TEST_TMPFS=1; fi
  npx vitest run
  cargo test --workspace --release --locked
  # No HTTP / socket / TLS client in the dependency tree (deny.toml).
  PATH="$PWD/.ci/venv/bin:$PATH" cargo deny --locked check bans
  # The E2E drives the app as shipped: rebuild it without the mock runtime the tests compiled in.
  # Exactly the cargo command `tauri build` runs, so tools/deb_test.sh bundles this build as it is.
  cargo build --release --locked --bins --features tauri/custom-protocol
  tools/e2e.sh
  # The CLI flow, the app alone and its E2E again, each in a network namespace under strace.
  tools/no_network.sh --app
  # The signed .deb from this release build: install, run, open the window, purge.
  tools/deb_test.sh
'
