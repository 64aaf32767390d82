#!/usr/bin/env bash
# Benchmarks: our models vs their reference runtimes (onnxruntime / TFLite from PyPI) in one run,
# and the whole headshot from a 12-megapixel JPEG, stage by stage. Prints medians and ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q numpy safetensors onnxruntime ai-edge-litert
fi
export LIKENESS_BENCH_PYTHON="$PWD/.venv/bin/python"
cargo bench --locked -p likeness-engine --bench headshot
