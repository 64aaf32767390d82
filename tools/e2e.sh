#!/usr/bin/env bash
# End-to-end test of the desktop app in a real window (Xvfb + tauri-driver + WebKitWebDriver), then
# the start-up benchmark. Needs the release build of likeness-app (`cargo build --release -p
# likeness-app --bins`), the bench example (built by `cargo test --workspace --release`, or
# `cargo build --release -p likeness-app --example startup_bench`) and the selenium venv (tools/setup.sh).
# A private data folder and passphrase each run; inside tools/test.sh's D-Bus session.
set -euo pipefail
cd "$(dirname "$0")/.."
APP="$PWD/target/release/likeness-app"
[ -x "$APP" ] || { echo "e2e: $APP is missing; run cargo build --release -p likeness-app --bins" >&2; exit 1; }
command -v tauri-driver >/dev/null || { echo "e2e: tauri-driver is missing; run tools/setup.sh" >&2; exit 1; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export LIKENESS_DATA_DIR="$WORK/data" LIKENESS_PASSPHRASE="likeness-e2e" NO_AT_BRIDGE=1
rm -rf target/e2e-screenshots

# A free pair of ports for tauri-driver and WebKitWebDriver (other test runs on this machine may
# hold the defaults, 4444/4445): LIKENESS_E2E_PORT, else a random free one.
free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
PORT="${LIKENESS_E2E_PORT:-}"
if [ -z "$PORT" ]; then
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 20000))
    if free "$p" && free "$((p + 1))"; then PORT=$p; break; fi
  done
fi
[ -n "$PORT" ] || { echo "e2e: no free port found; set LIKENESS_E2E_PORT" >&2; exit 1; }
export LIKENESS_E2E_PORT="$PORT" TAURI_DRIVER_URL="http://127.0.0.1:$PORT"

run() {
  xvfb-run -a -s "-screen 0 1280x800x24" bash -c '
    tauri-driver --port "$LIKENESS_E2E_PORT" --native-port "$((LIKENESS_E2E_PORT + 1))" >target/e2e-tauri-driver.log 2>&1 & TD=$!
    for i in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$LIKENESS_E2E_PORT") 2>/dev/null && break; sleep 0.1; done
    rc=0
    .ci/venv/bin/python tests/e2e/test_e2e.py "$0" || rc=$?
    kill $TD 2>/dev/null; wait $TD 2>/dev/null || true
    # Start-up: median time to the page'"'"'s first command over 5 launches (target < 2 s).
    target/release/examples/startup_bench "$0" 5 || rc=$?
    exit $rc' "$APP"
}

if [ -n "${DBUS_SESSION_BUS_ADDRESS:-}" ]; then
  run
else
  # On its own: a private session bus with a fresh, unlocked keyring (as tools/test.sh does).
  XDG_RUNTIME_DIR="$WORK/run" XDG_DATA_HOME="$WORK/xdg"
  mkdir -m 700 "$XDG_RUNTIME_DIR" "$XDG_DATA_HOME"
  export XDG_RUNTIME_DIR XDG_DATA_HOME
  dbus-run-session -- bash -c 'eval "$(printf likeness-e2e | gnome-keyring-daemon --unlock --components=secrets)" >/dev/null; exec "$0"' "$0"
fi
