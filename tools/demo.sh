#!/usr/bin/env bash
# Builds the `likeness` command and makes a headshot from the bundled sample photo with the bundled
# models: out/grace_hopper_512x512-portrait.png (then -2, -3... on later runs; nothing is overwritten).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
cargo build --release --locked -p likeness-cli
target/release/likeness generate assets/photos/grace_hopper_512x512.jpg --out out --preset portrait "$@"
