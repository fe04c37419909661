"""Reading values as constants, however the exporter spelled them.

A constant may be an initializer, a Constant node (``value`` or any of ``value_float(s)``,
``value_int(s)``, ``value_string(s)``), or either of those behind Identity nodes (PyTorch's legacy
exporter shares equal tensors that way). An initializer that is also a graph input is *not* a
constant: the caller may override it.
"""

from __future__ import annotations

import numpy as np
import onnx

from optgraph.ir.core import Value
from optgraph.ir.tensor import Tensor

_CONSTANT_FORMS = {
    "value_float": np.float32, "value_floats": np.float32,
    "value_int": np.int64, "value_ints": np.int64,
}


def constant_tensor(value: Value | None) -> Tensor | None:
    """The constant ``value`` always holds, or None when it is not a known constant."""
    seen = 0
    while value is not None and seen < 64:
        if value.const is not None:
            return None if value.is_graph_input else value.const
        node = value.producer
        if node is None or node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type == "Identity":
            value = node.inputs[0]
            seen += 1
            continue
        if node.op_type != "Constant":
            return None
        return _constant_node_tensor(node)
    return None


def constant_array(value: Value | None) -> np.ndarray | None:
    """Like constant_tensor, decoded to a read-only numpy array."""
    t = constant_tensor(value)
    return None if t is None else t.numpy()


def _constant_node_tensor(node) -> Tensor | None:  # type: ignore[no-untyped-def]
    attrs = node.attrs
    if "value" in attrs:
        return attrs["value"].value
    for key, dtype in _CONSTANT_FORMS.items():
        if key in attrs:
            return Tensor.from_array(np.array(attrs[key].value, dtype=dtype))
    for key in ("value_string", "value_strings"):
        if key in attrs:
            return Tensor(onnx.numpy_helper.from_array(np.array(attrs[key].value, dtype=object)))
    return None  # sparse_value: not decoded
