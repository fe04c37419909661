"""Small models in ONNX text syntax shared by the IR tests, and a loader for them."""

from __future__ import annotations

import onnx
import onnx.parser

from optgraph import ir

CHAIN = """
<ir_version: 8, opset_import: ["" : 17]>
chain (float[N, 4] X) => (float[N, 4] Y) {
  A = Relu(X)
  B = Add(A, A)
  Y = Mul(B, X)
}
"""

BRANCHES = """
<ir_version: 8, opset_import: ["" : 17]>
branches (bool c, float[N, 2] X) => (float[N, 2] Y) {
  A = Neg(X)
  B = Relu(X)
  Y = If(c) <then_branch = then_g () => (float[N, 2] t) { t = Add(B, A) },
             else_branch = else_g () => (float[N, 2] e) { e = Identity(A) }>
}
"""

LOOP = """
<ir_version: 8, opset_import: ["" : 17]>
looped (float[2] X) => (float[2] Y) {
  W = Relu(X)
  trips = Constant <value = int64 {3}> ()
  go = Constant <value = bool {1}> ()
  Y = Loop(trips, go, X) <body = body (int64 i, bool cin, float[2] acc) => (bool cout, float[2] next) {
    cout = Identity(cin)
    next = Add(acc, W)
  }>
}
"""

FUNCTIONS = """
<ir_version: 8, opset_import: ["" : 17, "local" : 1], producer_name: "tests", doc_string: "with functions">
calls (float[N, 3] X) => (float[N, 3] Y) {
  A = local.leaky <alpha: float = 0.25> (X)
  Y = local.leaky <alpha: float = 0.5> (A)
}
<domain: "local", opset_import: ["" : 17]>
leaky <alpha> (x) => (y) {
  z = LeakyRelu <alpha: float = @alpha> (x)
  y = Identity(z)
}
"""


def load_text(text: str) -> ir.Model:
    return ir.from_bytes(onnx.parser.parse_model(text).SerializeToString())
