#!/usr/bin/env bash
# Builds the `likeness` command and makes a headshot from the bundled sample photo with the bundled
# models: out/grace_hopper_512x512-portrait.png (then -2, -3... on later runs; nothing is overwritten).
# Extra arguments go to `likeness generate` (e.g. --background white --preset passport-eu).
#
# The demo uses a throwaway library (a temporary data folder, purged at the end together with its
# key), so it works on a headless machine too: without an OS keyring it sets a random
# LIKENESS_PASSPHRASE for this run only. Your own library is not touched.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
cargo build --release --locked -p likeness-cli

data="$(mktemp -d)"
export LIKENESS_DATA_DIR="$data"
if [ -z "${LIKENESS_PASSPHRASE:-}" ]; then
  LIKENESS_PASSPHRASE="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  export LIKENESS_PASSPHRASE
fi
cleanup() { target/release/likeness purge --all --yes >/dev/null 2>&1 || true; rm -rf "$data"; }
trap cleanup EXIT

target/release/likeness generate assets/photos/grace_hopper_512x512.jpg --out out --preset portrait "$@"
