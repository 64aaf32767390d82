"""Reading TFLite graphs for the converters: operators by name, constant tensors as float32."""
from __future__ import annotations

import pathlib

import numpy as np
import tflite

OP_NAMES = {v: k for k, v in tflite.BuiltinOperator.__dict__.items() if not k.startswith("_")}
_DTYPES = {tflite.TensorType.FLOAT32: ("<f4", "float32"), tflite.TensorType.FLOAT16: ("<f2", "float16")}


def open_graph(path: pathlib.Path):
    """The model and its first (only) subgraph."""
    model = tflite.Model.GetRootAsModel(pathlib.Path(path).read_bytes(), 0)
    return model, model.Subgraphs(0)


def op_kind(model, op) -> str:
    """The builtin operator's name, or `CUSTOM:<code>` for a custom op."""
    code = model.OperatorCodes(op.OpcodeIndex())
    kind = OP_NAMES.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
    return "CUSTOM:" + code.CustomCode().decode() if kind == "CUSTOM" else kind


def layer(name: str) -> str:
    """`conv2d_3/Kernel` -> `conv2d_3`."""
    return name.split("/")[0]


def const(model, graph, index: int, allowed=(tflite.TensorType.FLOAT32,)) -> tuple[str, np.ndarray]:
    """A constant tensor's name and value as float32 (float16 widened exactly)."""
    t = graph.Tensors(index)
    name = t.Name().decode()
    if t.Type() not in allowed:
        wanted = "/".join(_DTYPES[a][1] for a in allowed)
        raise ValueError(f"{name}: expected a {wanted} constant, got type {t.Type()}")
    raw = model.Buffers(t.Buffer()).DataAsNumpy()
    if not isinstance(raw, np.ndarray) or raw.size == 0:
        raise ValueError(f"{name}: not a constant tensor")
    shape = [int(s) for s in t.ShapeAsNumpy()]
    return name, np.frombuffer(raw.tobytes(), dtype=_DTYPES[t.Type()][0]).reshape(shape).astype(np.float32)
