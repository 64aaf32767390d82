#!/usr/bin/env python3
"""The whole 4-step SD-Turbo generative job on this machine's CPU, timed through the real CLI.

1. Builds a full-size SD-Turbo diffusers folder (the SD 2.1 UNet, the OpenCLIP ViT-H text encoder as
   `CLIPTextModel`, the SD VAE) with torch's default random initialisation, saved as fp16 safetensors
   (about 2.6 GB) under `--model-dir` (reused if it is already there). The folder has no tokenizer, so
   the app's bundled CLIP tokenizer is used, as for a real import that brings none.
2. Runs `likeness generate PHOTO --look generative --model DIR --quality high` (Turbo's
   4 unguided steps at 512 px) `--runs` times, each into a fresh output folder and data folder, and
   prints each run's wall time and the median.

Random weights make a meaningless picture but the same work as the published model: same shapes, same
steps, same VAE encode / decode, same face-keeping blend. Needs torch, diffusers and transformers
(`$LIKENESS_BENCH_PYTHON` as for the other benches) and a release build of the CLI
(`cargo build --release -p likeness-cli`).

Usage: python tools/bench_turbo_job.py [--runs 2] [--model-dir target/bench/sd-turbo-random] [-- extra args]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools", "fixtures"))


def build(model_dir: str) -> None:
    import torch
    from diffusers import AutoencoderKL

    import sd_import as sdi

    torch.manual_seed(0)
    with torch.no_grad():
        u, v, te = sdi.real_unet("sd-turbo"), AutoencoderKL(**sdi.REAL_VAE), sdi.real_clip(sdi.OPENCLIP_H)
    parent, name = os.path.split(os.path.abspath(model_dir))
    os.makedirs(parent, exist_ok=True)
    sdi.OUT = parent
    sdi.diffusers_folder(name, u, v, te, variant="fp16", name_or_path="stabilityai/sd-turbo")
    shutil.rmtree(os.path.join(model_dir, "tokenizer"), ignore_errors=True)
    index_path = os.path.join(model_dir, "model_index.json")
    with open(index_path) as f:
        index = json.load(f)
    index.pop("tokenizer", None)
    with open(index_path, "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--model-dir", default=os.path.join(ROOT, "target", "bench", "sd-turbo-random"))
    ap.add_argument("--photo", default=os.path.join(ROOT, "assets", "photos", "grace_hopper_512x512.jpg"))
    ap.add_argument("extra", nargs="*")
    a = ap.parse_args()
    if not os.path.isfile(os.path.join(a.model_dir, "model_index.json")):
        t = time.perf_counter()
        build(a.model_dir)
        print(f"built {a.model_dir} in {time.perf_counter() - t:.0f} s", flush=True)
    cli = os.path.join(ROOT, "target", "release", "likeness")
    times = []
    for i in range(a.runs):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [cli, "generate", a.photo, "--look", "generative", "--model", a.model_dir,
                   "--quality", "high", "--out", os.path.join(tmp, "out"), "--data-dir", os.path.join(tmp, "data"),
                   "--json", *a.extra]
            # A throwaway data folder: without a keyring (headless), its key is sealed by a passphrase.
            env = dict(os.environ)
            env.setdefault("LIKENESS_PASSPHRASE", "likeness-bench")
            t = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True, env=env)
            dt = time.perf_counter() - t
            if r.returncode != 0:
                sys.exit(f"run {i + 1} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
            times.append(dt)
            print(f"run {i + 1}: {dt:.1f} s  {r.stdout.strip()[:300]}", flush=True)
    times.sort()
    print(f"whole 4-step SD-Turbo job, CPU, median of {len(times)}: {times[len(times) // 2]:.1f} s")


if __name__ == "__main__":
    main()
