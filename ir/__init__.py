"""optgraph's in-memory graph: load ONNX, rewrite it, write it back.

>>> from optgraph import ir
>>> model = ir.load("model.onnx")
>>> for node in model.graph: ...
>>> ir.save(model, "out.onnx")

The names below are imported on first use, so that ``import optgraph.ir`` (and the command line's
start, ``optgraph --version``) does not pay for onnx, numpy or networkx until they are needed.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optgraph.ir.constants import constant_array, constant_tensor
    from optgraph.ir.core import AT, Attr, Function, Graph, Model, Node, Value
    from optgraph.ir.errors import InvalidModelError, OptGraphError, VerificationError
    from optgraph.ir.interop import from_graphsurgeon, to_graphsurgeon, to_networkx
    from optgraph.ir.rewriter import Rewriter
    from optgraph.ir.serde import from_bytes, from_proto, load, save, to_proto
    from optgraph.ir.tensor import Tensor, itemsize
    from optgraph.ir.verify import verify

_WHERE = {
    "constants": ["constant_array", "constant_tensor"],
    "core": ["AT", "Attr", "Function", "Graph", "Model", "Node", "Value"],
    "errors": ["InvalidModelError", "OptGraphError", "VerificationError"],
    "interop": ["from_graphsurgeon", "to_graphsurgeon", "to_networkx"],
    "rewriter": ["Rewriter"],
    "serde": ["from_bytes", "from_proto", "load", "save", "to_proto"],
    "tensor": ["Tensor", "itemsize"],
    "verify": ["verify"],
}
_MODULE = {name: module for module, names in _WHERE.items() for name in names}

__all__ = sorted(_MODULE)


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # Importing the submodule optgraph.ir.verify binds it here as ``verify``; the package's
        # ``verify`` is the function (as when this file imported it eagerly).
        if not (isinstance(value, types.ModuleType) and name in _MODULE):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    module = _MODULE.get(name)
    if module is None:
        raise AttributeError(f"module 'optgraph.ir' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"optgraph.ir.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
