"""optgraph's in-memory graph: load ONNX, rewrite it, write it back.

>>> from optgraph import ir
>>> model = ir.load("model.onnx")
>>> for node in model.graph: ...
>>> ir.save(model, "out.onnx")
"""

from optgraph.ir.constants import constant_array, constant_tensor
from optgraph.ir.core import AT, Attr, Function, Graph, Model, Node, Value
from optgraph.ir.errors import InvalidModelError, OptGraphError, VerificationError
from optgraph.ir.interop import from_graphsurgeon, to_graphsurgeon, to_networkx
from optgraph.ir.rewriter import Rewriter
from optgraph.ir.serde import from_bytes, from_proto, load, save, to_proto
from optgraph.ir.tensor import Tensor, itemsize
from optgraph.ir.verify import verify

__all__ = [
    "AT", "Attr", "Function", "Graph", "InvalidModelError", "Model", "Node", "OptGraphError", "Rewriter",
    "Tensor", "Value", "VerificationError", "constant_array", "constant_tensor", "from_bytes", "from_graphsurgeon",
    "from_proto", "itemsize", "load", "save", "to_graphsurgeon", "to_networkx", "to_proto", "verify",
]
