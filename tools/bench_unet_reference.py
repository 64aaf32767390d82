#!/usr/bin/env python3
"""Reference side of `cargo bench -p likeness-engine --bench unet`: diffusers' UNet2DConditionModel with the
full-size Stable Diffusion 1.5 inpainting config (9 input channels) on random weights, float32, CPU, 2 threads,
batch 2 (classifier-free guidance), context 2 x 77 x 768.

It serves one UNet call per request so that the bench can alternate its calls with ours (on a shared machine
both sides then see the same load). Protocol, one JSON object per line on stdout:
- after building the model and one warm-up call: {"ready": true, "torch": ..., "threads": ..., "attention": ...}
- for each line `run` on stdin: {"wall_s": seconds, "cpu_s": user + system seconds of this process}
- for the line `done` (or end of input): {"peak_mib": this process's peak resident memory (VmHWM)}, then exit.

Needs torch and diffusers (the bench passes `$LIKENESS_BENCH_PYTHON`).

Usage: python tools/bench_unet_reference.py --latent 32 [--threads 2]
"""
import argparse
import json
import sys
import time

import torch
from diffusers import UNet2DConditionModel

SD15_INPAINT = dict(
    sample_size=64,
    in_channels=9,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=768,
    norm_num_groups=32,
)


def vm_hwm_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def say(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latent", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    m = UNet2DConditionModel(**SD15_INPAINT).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 9, a.latent, a.latent, generator=g)
    ctx = torch.randn(2, 77, 768, generator=g)
    t = torch.tensor(500.0)
    m(x, t, encoder_hidden_states=ctx)  # warm-up
    say({
        "ready": True,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "attention": "SDPA (diffusers AttnProcessor2_0)",
    })
    for line in sys.stdin:
        if line.strip() != "run":
            break
        s, c = time.perf_counter(), time.process_time()
        m(x, t, encoder_hidden_states=ctx)
        say({"wall_s": time.perf_counter() - s, "cpu_s": time.process_time() - c})
    say({"peak_mib": vm_hwm_mib()})


if __name__ == "__main__":
    main()
