"""Generates the bundled studio backdrops in assets/backdrops/ (our own work, CC0).

Each backdrop is painted-canvas style: a base colour, a few octaves of smooth value noise for the
mottling, a soft light spot behind where the head sits, a gentle vignette and a little grain
against banding. Deterministic (fixed seeds); run from the repository root:

    /work/pyenv/bin/python tools/make_backdrops.py
"""

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 2048
OUT = Path(__file__).resolve().parent.parent / "assets" / "backdrops"

# name: (seed, base colour, mottle colour shift, mottle strength, light spot gain, vignette)
BACKDROPS = {
    "mottled-grey": (11, (138, 140, 143), (10, 10, 12), 0.10, 0.22, 0.28),
    "warm-beige": (23, (205, 187, 163), (14, 9, 4), 0.07, 0.14, 0.22),
    "blue-grey": (37, (104, 120, 138), (6, 9, 14), 0.09, 0.22, 0.30),
    "soft-dark": (41, (44, 46, 50), (7, 7, 9), 0.12, 0.55, 0.35),
}


def value_noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    """Smooth noise in [-1, 1]: a random `cells` grid upsampled bicubically to SIZE."""
    grid = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
    img = Image.fromarray(grid, mode="F").resize((SIZE, SIZE), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32)


def make(seed, base, shift, mottle, spot, vignette) -> Image.Image:
    rng = np.random.default_rng(seed)
    noise = sum(w * value_noise(rng, c) for c, w in ((4, 0.45), (9, 0.3), (19, 0.17), (41, 0.08)))
    tint = value_noise(rng, 5)
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    # Light spot behind the head (upper centre), vignette toward the corners.
    r2 = ((x - 0.5) / 0.55) ** 2 + ((y - 0.38) / 0.5) ** 2
    light = 1.0 + spot * np.exp(-r2 * 1.6) - vignette * np.clip(((x - 0.5) ** 2 + (y - 0.45) ** 2) / 0.5, 0, 1)
    base = np.array(base, np.float32)
    shift = np.array(shift, np.float32)
    rgb = base[None, None, :] * (1.0 + mottle * noise[..., None]) + shift[None, None, :] * tint[..., None]
    rgb = rgb * light[..., None]
    rgb += rng.normal(0.0, 0.6, rgb.shape).astype(np.float32)
    return Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, params in BACKDROPS.items():
        path = OUT / f"{name}.jpg"
        make(*params).save(path, quality=88, optimize=True, subsampling=2)
        print(f"{path.name}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
