#!/usr/bin/env python3
"""Reference side of `cargo bench -p likeness-engine --bench vae`: diffusers' AutoencoderKL with the full-size
Stable Diffusion VAE config on random weights, float32, CPU, 2 threads. Decodes a 64x64 latent to a 512x512
image and encodes a 512x512 image (the latent mean), `--runs` times each after one warm-up, and prints one
JSON line: {"decode_s": [...], "encode_s": [...], "torch": version}.

Usage: python tools/bench_vae_reference.py [--runs 3]
"""
import argparse
import json
import time

import torch
from diffusers import AutoencoderKL


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(2)
    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    m = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
    ).eval()
    z, img = torch.randn(1, 4, 64, 64), torch.randn(1, 3, 512, 512)
    m.decode(z)
    m.encode(img)

    def timed(f) -> list:
        out = []
        for _ in range(a.runs):
            s = time.perf_counter()
            f()
            out.append(time.perf_counter() - s)
        return out

    dec = timed(lambda: m.decode(z))
    enc = timed(lambda: m.encode(img).latent_dist.mean)
    print(json.dumps({"decode_s": dec, "encode_s": enc, "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
