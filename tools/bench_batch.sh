#!/usr/bin/env bash
# Batch throughput: photos per second on 100 twelve-megapixel JPEGs with 1 and 2 workers, the
# studio look, PNG out. Builds the CLI, makes the photos (ImageMagick) in a temporary folder, and
# runs `likeness batch` with a throwaway library for each worker count. Usage: tools/bench_batch.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-100}"
tools/setup.sh
cargo build --release --locked -p likeness-cli
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/in"
# Ten distinct 4000x3000 portraits (position, size, mirror), copied to N files.
for i in $(seq 0 9); do
  size=$((2000 + 100 * i)); flip=""; [ $((i % 2)) -eq 1 ] && flip="-flop"
  convert assets/photos/grace_hopper_512x512.jpg $flip -resize "${size}x${size}" -background '#5a6470' \
    -gravity center -extent 4000x3000 -quality 90 "$work/src$i.jpg"
done
for k in $(seq 1 "$n"); do cp "$work/src$((k % 10)).jpg" "$work/in/photo$k.jpg"; done
export LIKENESS_PASSPHRASE="bench-$$"
for jobs in 1 2; do
  data="$work/data$jobs"; out="$work/out$jobs"
  start=$(date +%s.%N)
  target/release/likeness --data-dir "$data" batch "$work/in" --out "$out" --jobs "$jobs" --json >"$work/log$jobs" || true
  end=$(date +%s.%N)
  done_n=$(grep -c '"status":"done"' "$work/log$jobs" || true)
  python3 - "$start" "$end" "$done_n" "$jobs" "$n" <<'PY'
import sys
s, e, d, j, n = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
print(f"workers={j}: {d}/{n} done in {e - s:.1f} s -> {d / (e - s):.2f} photos/s (queueing, encryption and export included)")
PY
done
