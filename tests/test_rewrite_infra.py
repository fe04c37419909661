"""Infrastructure behaviour the rewrite passes rely on: replacements keep what is known of a
value's type, and pipelines run with the cycle collector paused."""

from __future__ import annotations

import gc

import onnx
from onnx import parser

from optgraph import ir
from optgraph.passes import PassContext, PassManager, PassResult
from optgraph.passes.base import Pass


def test_replace_value_passes_the_type_on_to_a_new_node_output() -> None:
    model = ir.from_proto(parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 3] x) => (float[N, 3] y) { a = Relu(x)  y = Neg(a) }"""))
    g = model.graph
    relu = next(iter(g))
    relu.output.dtype, relu.output.shape = onnx.TensorProto.FLOAT, ("N", 3)
    new = g.make_node("Abs", [relu.inputs[0]], before=relu).output
    assert new.shape is None and not new.dtype
    g.replace_value(relu.output, new)
    assert (new.dtype, new.shape) == (onnx.TensorProto.FLOAT, ("N", 3))
    # a value that already knows its type keeps it; graph inputs are never retyped
    x = g.inputs[0]
    before = (x.dtype, x.shape)
    g.replace_value(new, x)
    assert (x.dtype, x.shape) == before


def test_pipeline_runs_with_gc_paused_and_restores_it() -> None:
    seen = []

    class Probe(Pass):
        name = "probe-gc"
        description = "records whether the collector runs"

        def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
            seen.append(gc.isenabled())
            return PassResult(False)

    model = ir.from_proto(parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) { y = Relu(x) }"""))
    assert gc.isenabled()
    PassManager([Probe()]).run(model)
    assert seen == [False] and gc.isenabled()
