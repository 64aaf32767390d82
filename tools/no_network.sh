#!/usr/bin/env bash
# Proves that Likeness opens no network connection: the whole command-line flow (generate, batch,
# jobs, export, sweep, purge, policy) runs inside a network namespace with no interfaces
# (`unshare -n`) under `strace -f -e trace=network`, and the run fails on any socket() of an
# internet or raw family (AF_INET, AF_INET6, AF_PACKET). AF_UNIX (D-Bus, X11) and AF_NETLINK are
# local. Needs root (or unprivileged user namespaces), strace and the release `likeness` binary.
#
#   tools/no_network.sh          the CLI flow
#   tools/no_network.sh --app    also the desktop app: alone to its window, then its end-to-end test (see below)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/target/release/likeness"
[ -x "$BIN" ] || { echo "no_network: $BIN is missing; run cargo build --release -p likeness-cli" >&2; exit 1; }
command -v strace >/dev/null || { echo "no_network: strace is missing; run tools/setup.sh" >&2; exit 1; }
WORK="$(mktemp -d)"
LOGS="$PWD/target/no-network"; mkdir -p "$LOGS"
trap 'rm -rf "$WORK"' EXIT

# Fails (listing them) on sockets of internet families in an strace log; prints the tally.
check_log() {
  local log="$1" what="$2"
  local bad
  bad="$(grep -E 'socket\((AF_INET|AF_INET6|AF_PACKET|PF_INET|PF_INET6|PF_PACKET)[,)]' "$log" || true)"
  local n_all n_unix
  n_all="$(grep -cE '(^|\s)socket\(' "$log" || true)"
  n_unix="$(grep -cE 'socket\((AF|PF)_UNIX' "$log" || true)"
  echo "no_network: $what: $n_all socket() calls, $n_unix AF_UNIX, $(printf '%s' "$bad" | grep -c . || true) internet"
  if [ -n "$bad" ]; then
    echo "no_network: FAIL: $what opened internet sockets:" >&2
    printf '%s\n' "$bad" | head -20 >&2
    return 1
  fi
}

# ---- the CLI flow ----
mkdir -p "$WORK/in/sub" "$WORK/data"
cp assets/photos/grace_hopper_512x512.jpg "$WORK/in/"
cp assets/photos/astronaut.png "$WORK/in/sub/"
cat > "$WORK/flow.sh" <<'FLOW'
set -euo pipefail
L="$1"; W="$2"
export LIKENESS_DATA_DIR="$W/data" LIKENESS_PASSPHRASE="no-network-test"
# No session bus in here: the key comes from the passphrase.
unset DBUS_SESSION_BUS_ADDRESS DISPLAY
ip -o link 2>/dev/null | grep -v ' lo:' && { echo "flow: the namespace has interfaces" >&2; exit 1; }
"$L" generate assets/photos/grace_hopper_512x512.jpg --out "$W/gen" --format jpg >/dev/null
"$L" batch "$W/in" --out "$W/batch" --recursive --jobs 2 >/dev/null
"$L" generate assets/photos/astronaut.png --queue >/dev/null
"$L" jobs run >/dev/null
ID="$("$L" jobs list --json | python3 -c 'import json,sys; print(next(o["id"] for j in json.load(sys.stdin)["jobs"] for o in j["outputs"]))')"
"$L" export "$ID" --to "$W/export" >/dev/null
"$L" policy show --json >/dev/null
"$L" sweep --as-of 2999-01-01T00:00:00Z >/dev/null
"$L" doctor >/dev/null
"$L" purge --all --yes >/dev/null
ls "$W/gen" "$W/batch" "$W/export" | grep -c . >/dev/null
echo "flow: generate, batch, jobs run/list, export, policy show, sweep, doctor, purge all succeeded"
FLOW
start=$(date +%s)
unshare --net -- strace -f --seccomp-bpf -qq -e trace=network -o "$LOGS/cli.strace" bash "$WORK/flow.sh" "$BIN" "$WORK"
check_log "$LOGS/cli.strace" "CLI flow ($(( $(date +%s) - start )) s)"
[ -n "$(ls "$WORK/export")" ] || { echo "no_network: nothing was exported" >&2; exit 1; }

# ---- the desktop app ----
# On its own, as users run it: to its first window in a namespace with no interface at all; not
# one internet socket may be opened.
if [ "${1:-}" = "--app" ]; then
  [ -x target/release/likeness-app ] || { echo "no_network: target/release/likeness-app is missing" >&2; exit 1; }
  LIKENESS_DATA_DIR="$WORK/appdata" LIKENESS_PASSPHRASE=no-network-test NO_AT_BRIDGE=1 \
    unshare --net -- xvfb-run -a -s "-screen 0 1280x800x24" bash -c '
      strace -f --seccomp-bpf -qq -e trace=network -o "$0" target/release/likeness-app >/dev/null 2>&1 & S=$!
      rc=0; timeout 60 xdotool search --sync --onlyvisible --name "^Likeness$" >/dev/null || rc=$?
      sleep 2
      # End the app (the child of strace); strace then exits with it.
      kill $(pgrep -P $S) 2>/dev/null; wait $S 2>/dev/null || true
      exit $rc' "$LOGS/app-alone.strace" || { echo "no_network: the app showed no window" >&2; exit 1; }
  check_log "$LOGS/app-alone.strace" "desktop app alone, to its window"
fi

# Under WebDriver:
# the WebDriver link is HTTP on localhost (selenium -> tauri-driver -> WebKitWebDriver, which drives
# the app's WebKit through its automation socket on 127.0.0.1), so the E2E runs in a namespace whose
# only interface is loopback (brought up inside it): no packet can leave the machine. strace follows
# the whole tree: every connection of every process (the app and its WebKit processes included)
# must go to 127.0.0.1 / ::1, and nothing may open a raw (AF_PACKET) socket.
if [ "${1:-}" = "--app" ]; then
  [ -x target/release/likeness-app ] || { echo "no_network: target/release/likeness-app is missing" >&2; exit 1; }
  command -v tauri-driver >/dev/null || { echo "no_network: tauri-driver is missing; run tools/setup.sh" >&2; exit 1; }
  # tests/e2e/test_e2e.py as tools/e2e.sh runs it, without the start-up benchmark (tracing slows
  # start-up; tools/e2e.sh times it untraced). Port 4444 is private to the namespace.
  cat > "$WORK/e2e.sh" <<'E2E'
set -euo pipefail
ip link set lo up
export LIKENESS_DATA_DIR="$1/e2e-data" LIKENESS_PASSPHRASE=no-network-e2e NO_AT_BRIDGE=1
xvfb-run -a -s "-screen 0 1280x800x24" bash -c '
  tauri-driver --port 4444 >"$0/tauri-driver.log" 2>&1 & TD=$!
  for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/4444) 2>/dev/null && break; sleep 0.1; done
  rc=0; .ci/venv/bin/python tests/e2e/test_e2e.py "$PWD/target/release/likeness-app" || rc=$?
  kill $TD 2>/dev/null; wait $TD 2>/dev/null || true
  exit $rc' "$1"
E2E
  e2e_rc=0
  unshare --net -- strace -f --seccomp-bpf -qq -e trace=network,execve,clone,clone3,fork,vfork -o "$LOGS/app.strace" \
    bash "$WORK/e2e.sh" "$WORK" || e2e_rc=$?
  python3 - "$LOGS/app.strace" <<'PY'
import re, sys
app, names, bad, n_inet, n_app = set(), {}, [], 0, 0
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"(\d+)\s+(.*)", line)
    if not m:
        continue
    pid, call = int(m.group(1)), m.group(2)
    e = re.match(r'execve\("([^"]+)"', call)
    if e and "= -1" not in call:
        names[pid] = e.group(1).rsplit("/", 1)[-1]
        if names[pid] == "likeness-app":
            app.add(pid)
    c = re.match(r"(clone3?|fork|vfork)\(.*\)\s*=\s*(\d+)", call)
    if c:
        child = int(c.group(2))
        names.setdefault(child, names.get(pid, "?"))
        if pid in app:
            app.add(child)
    if re.match(r"socket\((AF|PF)_PACKET\b", call):
        bad.append(f"[{names.get(pid, '?')}] {line.strip()}")
    if re.match(r"socket\((AF|PF)_INET6?\b", call):
        n_inet += 1
        n_app += pid in app
    if re.match(r"(connect|sendto|sendmsg)\(", call) and re.search(r"sa_family=AF_INET6?", call):
        if not re.search(r'inet_addr\("127\.0\.0\.1"\)|"::1"|"::ffff:127\.0\.0\.1"', call):
            bad.append(f"[{names.get(pid, '?')}] {line.strip()}")
print(f"no_network: desktop app E2E: {len(app)} app processes and threads; {n_inet} internet sockets, "
      f"{n_app} of them the app's automation link to WebKitWebDriver; every connection to 127.0.0.1 / ::1")
if not app:
    sys.exit("no_network: FAIL: the app was never started under strace")
if bad:
    print("no_network: FAIL: an internet socket in the app, or a connection beyond loopback:", *bad[:20], sep="\n", file=sys.stderr)
    sys.exit(1)
PY
  [ "$e2e_rc" = 0 ] || { echo "no_network: the end-to-end test failed (exit $e2e_rc)" >&2; exit "$e2e_rc"; }
fi
echo "no_network: ok"
