"""MediaPipe selfie segmentation (selfie_segmentation.tflite, 256x256) -> Likeness safetensors.

Upstream: npm @mediapipe/selfie_segmentation@0.1.1675465747, package/selfie_segmentation.tflite
(Apache-2.0). The graph stores its weights as float16 constants, each followed by a DEQUANTIZE op
to float32; the math is CONV_2D / DEPTHWISE_CONV_2D / HARD_SWISH / RELU / AVERAGE_POOL_2D / LOGISTIC /
MUL / ADD / RESIZE_BILINEAR and one MediaPipe custom op, `Convolution2DTransposeBias` (the final
2x2 stride-2 transposed convolution with bias).

Tensor names keep the TFLite layer names so the candle port (crates/engine/src/models/selfie.rs)
can be read side by side with the graph: `conv2d_5/Kernel` -> `conv2d_5.weight`, `.../Bias` ->
`.bias`, `segment/Kernel` -> `segment.weight`. Layouts (see crates/engine/src/nn.rs):
  CONV_2D kernel OHWI -> [out, in, kh, kw]; DEPTHWISE_CONV_2D kernel [1, kh, kw, c] -> [c, 1, kh, kw];
  Convolution2DTransposeBias kernel OHWI [out, kh, kw, in] -> [in, out, kh, kw] (no spatial flip:
  output[y*s + ky, x*s + kx, o] += input[y, x, i] * kernel[o, ky, kx, i], as candle's
  conv_transpose2d with weight[i, o, ky, kx]).
float16 values are widened to float32 exactly (every float16 is a float32).
"""
from __future__ import annotations

import pathlib

import numpy as np
import tflite

from .tflite_graph import const, layer, op_kind, open_graph

_WEIGHT_TYPES = (tflite.TensorType.FLOAT32, tflite.TensorType.FLOAT16)


def convert(path: pathlib.Path) -> dict[str, np.ndarray]:
    model, graph = open_graph(path)
    # DEQUANTIZE output tensor index -> its float16 source tensor index.
    source: dict[int, int] = {}
    out: dict[str, np.ndarray] = {}

    def weight(index: int) -> tuple[str, np.ndarray]:
        return const(model, graph, source.get(index, index), _WEIGHT_TYPES)

    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        kind = op_kind(model, op)
        if kind == "DEQUANTIZE":
            source[op.Outputs(0)] = op.Inputs(0)
        elif kind in ("CONV_2D", "DEPTHWISE_CONV_2D", "CUSTOM:Convolution2DTransposeBias"):
            kname, kernel = weight(op.Inputs(1))
            bname, bias = weight(op.Inputs(2))
            if kind == "CONV_2D":
                w = kernel.transpose(0, 3, 1, 2)  # OHWI -> OIHW
            elif kind == "DEPTHWISE_CONV_2D":
                if kernel.shape[0] != 1:
                    raise ValueError(f"{kname}: depth multiplier other than 1 is not supported")
                w = kernel.transpose(3, 0, 1, 2)  # 1HWC -> C1HW
            else:
                w = kernel.transpose(3, 0, 1, 2)  # OHWI -> IOHW
            out[f"{layer(kname)}.weight"] = w
            out[f"{layer(bname)}.bias"] = bias.reshape(-1)
        elif kind in ("RELU", "HARD_SWISH", "AVERAGE_POOL_2D", "LOGISTIC", "MUL", "ADD", "RESIZE_BILINEAR"):
            continue
        else:
            raise ValueError(f"operator {kind} is not part of the selfie segmentation graph this converter knows")
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}
