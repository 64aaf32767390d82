#!/bin/sh
# Runs the real Secret Service keyring test inside a private D-Bus session with an unlocked
# gnome-keyring (needs: dbus, dbus-x11, gnome-keyring). Usage, from the repository root:
#   crates/core/tests/run_secret_service.sh
# A fresh XDG_DATA_HOME each run: an old login.keyring made with another password stays locked.
set -eu
if [ "${1:-}" = "--inner" ]; then
    shift
    printf 'likeness-test' | gnome-keyring-daemon --unlock --components=secrets >/dev/null
    exec "$@"
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -m 700 "$tmp/run" "$tmp/data"
export XDG_RUNTIME_DIR="$tmp/run" XDG_DATA_HOME="$tmp/data" LIKENESS_TEST_SECRET_SERVICE=1
cargo test --release -p likeness-core --test core --no-run
dbus-run-session -- "$0" --inner cargo test --release -p likeness-core --test core keys::os_keyring -- --exact --nocapture
