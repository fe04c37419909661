"""The random-model strategies: valid, runnable, rich in the patterns passes target, and able to
catch a broken pass through check_pass."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np
import onnx
import pytest
from hypothesis import assume, given, settings

from optgraph import ir
from optgraph.passes import Pass, PassContext, PassResult, counter, register, registry
from optgraph.passes.testing import MOTIFS, check_pass, compare, models
from optgraph.passes.testing.strategies import GraphBuilder, activation

# ------------------------------------------------------------------------------------------------
# structure helpers (plain proto walks, independent of the IR under test)


class _Index:
    def __init__(self, m: onnx.ModelProto) -> None:
        g = m.graph
        self.nodes = list(g.node)
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in dict.fromkeys(n.input):
                self.consumers.setdefault(i, []).append(n)
        self.inits = {t.name for t in g.initializer}
        self.outputs = [o.name for o in g.output]

    def op(self, name: str) -> str:
        n = self.producer.get(name)
        return n.op_type if n is not None else ""

    def users(self, name: str, *ops: str) -> list[onnx.NodeProto]:
        return [n for n in self.consumers.get(name, []) if not ops or n.op_type in ops]

    def is_const(self, name: str) -> bool:
        if name in self.inits:
            return True
        n = self.producer.get(name)
        return n is not None and (n.op_type == "Constant" or (n.op_type == "Identity" and self.is_const(n.input[0])))

    def live(self) -> set[str]:
        seen, stack = set(), list(self.outputs)
        while stack:
            v = stack.pop()
            if v in seen:
                continue
            seen.add(v)
            n = self.producer.get(v)
            if n is not None:
                stack.extend(i for i in n.input if i)
        return seen


ACTIVATIONS = {"Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "Tanh"}
NO_OPS = {"Identity", "Dropout", "Cast", "Reshape", "Transpose", "Pad", "Add", "Sub", "Mul", "Div", "Squeeze"}


def _conv_bn_pairs(x: _Index) -> int:
    return sum(1 for n in x.nodes if n.op_type == "BatchNormalization" and x.op(n.input[0]) == "Conv")


def _same_node(a: onnx.NodeProto, b: onnx.NodeProto) -> bool:
    return (a.op_type, list(a.input), [p.SerializeToString() for p in a.attribute]) == \
        (b.op_type, list(b.input), [p.SerializeToString() for p in b.attribute])


DETECTORS: dict[str, Callable[[_Index], bool]] = {
    "conv_bn_act": lambda x: _conv_bn_pairs(x) > 0,
    "conv_act": lambda x: any(n.op_type in ACTIVATIONS and x.op(n.input[0]) == "Conv" for n in x.nodes),
    "constant_params": lambda x: any(
        n.op_type in ("Conv", "BatchNormalization") and any(x.op(i) in ("Constant", "Identity") for i in n.input[1:])
        for n in x.nodes),
    "parallel_convs": lambda x: any(len(x.users(v, "Conv")) >= 2 for v in x.consumers if not x.is_const(v)),
    "parallel_matmuls": lambda x: any(len(x.users(v, "MatMul", "Gemm")) >= 2 for v in x.consumers
                                      if not x.is_const(v)),
    "nested_concat": lambda x: any(n.op_type == "Concat" and any(x.op(i) == "Concat" for i in n.input)
                                   for n in x.nodes),
    "concat_split": lambda x: any(n.op_type == "Split" and x.op(n.input[0]) == "Concat" for n in x.nodes),
    "shared_weights": lambda x: any(len(x.users(w, "Conv")) >= 2 for w in x.inits),
    "graph_output_inside": lambda x: any(x.users(o) for o in x.outputs),
    "no_op": lambda x: any(n.op_type in NO_OPS for n in x.nodes),
    "duplicate": lambda x: any(_same_node(a, b) for i, a in enumerate(x.nodes) for b in x.nodes[i + 1:]
                               if a.op_type != "Constant"),
    "constant_subgraph": lambda x: any(n.op_type not in ("Constant", "Identity") and n.input
                                       and all(x.is_const(i) for i in n.input if i) for n in x.nodes),
    "shape_chain": lambda x: any(
        n.op_type == "Reshape" and x.op(n.input[1]) == "Concat"
        and any(x.op(u) == "Unsqueeze" and x.op(x.producer[u].input[0]) == "Gather"
                for u in x.producer[n.input[1]].input) for n in x.nodes),
    "residual": lambda x: any(n.op_type == "Add" and any(x.op(i) in ("Conv", "BatchNormalization", "MatMul")
                                                         for i in n.input) for n in x.nodes),
    "dead_branch": lambda x: any(o not in x.live() for n in x.nodes for o in n.output if o),
    "scaled_layer": lambda x: any(n.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm") and x.op(n.input[0]) == "Mul"
                                  and any(x.is_const(i) for i in x.producer[n.input[0]].input) for n in x.nodes),
    "slice_chain": lambda x: any(n.op_type == "Slice" and x.op(n.input[0]) == "Slice" for n in x.nodes),
}


def test_every_motif_has_a_detector() -> None:
    assert set(DETECTORS) == set(MOTIFS)


# ------------------------------------------------------------------------------------------------
# validity


@given(models())
def test_generated_models_pass_the_checker_and_run(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version in (8, 9)
    assert 1 <= len(model.graph.node) <= 25 and model.graph.output
    assert compare(model, model, n_inputs=1)  # raises if onnxruntime cannot run the model


@pytest.mark.parametrize("opset", [11, 12, 13, 17, 18, 21])
def test_opset_specific_forms_are_valid(opset: int) -> None:
    """Clip, Split, Squeeze/Unsqueeze, ReduceMean, Pad, Dropout changed form across opsets."""
    forms = ["activation", "split", "squeeze", "unsqueeze", "reduce_mean", "pad", "dropout", "slice"]

    @settings(max_examples=8)
    @given(models(opsets=[opset], ops=forms, motifs=["no_op", "concat_split", "shape_chain"]))
    def check(model: onnx.ModelProto) -> None:
        assert model.opset_import[0].version == opset
        onnx.checker.check_model(model, full_check=True)
        assert compare(model, model, n_inputs=1)

    check()


def test_value_info_can_be_left_out() -> None:
    @settings(max_examples=5)
    @given(models(value_info=False))
    def check(model: onnx.ModelProto) -> None:
        assert not model.graph.value_info
        assert compare(model, model, n_inputs=1)

    check()


# ------------------------------------------------------------------------------------------------
# the motifs really occur


@pytest.mark.parametrize("name", sorted(MOTIFS))
def test_motif_occurs(name: str) -> None:
    """Whenever the generator says it applied the motif, its pattern is in the model."""
    seen = Counter()

    @settings(max_examples=10)
    @given(models(motifs=[name], ops=[], max_nodes=20, inputs=["image"]))
    def count(model: onnx.ModelProto) -> None:
        if name in model.doc_string.removeprefix("applied: ").split(", "):
            seen["applied"] += 1
            assert DETECTORS[name](_Index(model)), model.doc_string

    count()
    assert seen["applied"] >= 5


def _no_op_kinds(model: onnx.ModelProto) -> set[str]:
    """Which kinds of value-preserving nodes the model has (shapes from its value_info)."""
    x = _Index(model)
    g = model.graph
    types = {vi.name: vi.type.tensor_type for vi in [*g.input, *g.value_info, *g.output]}
    shape = lambda v: [d.dim_value or d.dim_param for d in types[v].shape.dim]  # noqa: E731

    def const(v: str) -> np.ndarray | None:
        if v in x.inits:
            return onnx.numpy_helper.to_array(next(t for t in g.initializer if t.name == v))
        n = x.producer.get(v)
        if n is not None and n.op_type == "Identity":
            return const(n.input[0])
        if n is not None and n.op_type == "Constant":
            a = n.attribute[0]
            return onnx.numpy_helper.to_array(a.t) if a.name == "value" else np.array(
                onnx.helper.get_attribute_value(a))
        return None

    kinds = set()
    for n in g.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        ins = [i for i in n.input if i]
        if n.op_type in ("Identity", "Dropout") and not x.is_const(n.input[0]):
            kinds.add(n.op_type)
        elif n.op_type == "Cast" and attrs["to"] == types[n.input[0]].elem_type:
            kinds.add("Cast")
        elif n.op_type == "Reshape" and shape(n.input[0]) == shape(n.output[0]):
            kinds.add("Reshape")
        elif n.op_type == "Transpose" and "perm" in attrs and attrs["perm"] == sorted(attrs["perm"]):
            kinds.add("Transpose")
        elif n.op_type == "Pad" and not np.any(attrs["pads"] if "pads" in attrs else const(n.input[1])):
            kinds.add("Pad")
        elif n.op_type == "Squeeze" and x.op(n.input[0]) == "Unsqueeze":
            kinds.add("Unsqueeze-Squeeze")
        elif n.op_type in ("Add", "Sub", "Mul", "Div") and len(ins) == 2:
            neutral = 0.0 if n.op_type in ("Add", "Sub") else 1.0
            operands = ins if n.op_type in ("Add", "Mul") else ins[1:]  # x - 0 is a no-op, 0 - x is not
            if any((c := const(i)) is not None and np.all(c == neutral) for i in operands):
                kinds.add(n.op_type)
    return kinds


def test_no_op_motif_makes_every_kind() -> None:
    kinds: set[str] = set()

    @settings(max_examples=20)
    @given(models(motifs=["no_op"], ops=[], max_nodes=12))
    def collect(model: onnx.ModelProto) -> None:
        kinds.update(_no_op_kinds(model))

    collect()
    assert kinds == {"Identity", "Dropout", "Cast", "Reshape", "Transpose", "Pad", "Unsqueeze-Squeeze",
                     "Add", "Sub", "Mul", "Div"}


def test_constant_params_use_every_spelling() -> None:
    forms: set[str] = set()

    @settings(max_examples=15)
    @given(models(motifs=["constant_params"], ops=[], inputs=["image"], max_nodes=12))
    def collect(model: onnx.ModelProto) -> None:
        x = _Index(model)
        for n in model.graph.node:
            if n.op_type in ("Conv", "BatchNormalization"):
                for i in n.input[1:]:
                    p = x.producer.get(i)
                    if p is not None and p.op_type == "Identity" and p.input[0] in x.inits:
                        forms.add("identity")
                    elif p is not None and p.op_type == "Constant":
                        forms.add(p.attribute[0].name)

    collect()
    assert forms == {"identity", "value", "value_floats"}


def test_default_mix_is_rich_in_conv_bn_pairs() -> None:
    seen = Counter()

    @settings(max_examples=50, derandomize=True)  # a count over draws: the same draws on every run
    @given(models(inputs=["image"]))
    def count(model: onnx.ModelProto) -> None:
        seen["pairs"] += _conv_bn_pairs(_Index(model))
        seen["shared"] += DETECTORS["shared_weights"](_Index(model))

    count()
    assert seen["pairs"] >= 8 and seen["shared"] >= 1, seen


def test_custom_motif_is_used() -> None:
    def swish(draw, b: GraphBuilder, v: str) -> str:  # type: ignore[no-untyped-def]
        return b.op("Mul", [v, b.op("Sigmoid", [v])])

    @settings(max_examples=5)
    @given(models(motifs={"swish": swish}, ops=[activation]))
    def check(model: onnx.ModelProto) -> None:
        assert "swish" in model.doc_string or "activation" in model.doc_string
        assert compare(model, model, n_inputs=1)

    check()
    with pytest.raises(ValueError, match="unknown motif 'nope'"):
        models(motifs=["nope"])


# ------------------------------------------------------------------------------------------------
# through the IR and through passes


@given(models())
def test_ir_round_trip_without_passes_is_equivalent(model: onnx.ModelProto) -> None:
    back = ir.to_proto(ir.from_proto(copy.deepcopy(model)))
    assert [n.op_type for n in back.graph.node] == [n.op_type for n in model.graph.node]
    assert [o.name for o in back.graph.output] == [o.name for o in model.graph.output]
    assert compare(model, back, n_inputs=2)


@given(models())
def test_dce_keeps_results(model: onnx.ModelProto) -> None:
    rewritten, report = check_pass("dce", model, n_inputs=2)
    assert report.nodes_after <= report.nodes_before
    assert len(rewritten.graph.node) == report.nodes_after


def _replace(graph: ir.Graph, node: ir.Node, op_type: str) -> None:
    new = graph.make_node(op_type, list(node.inputs), before=node)
    graph.replace_value(node.outputs[0], new.output)
    graph.remove(node)


class _ReluToSigmoid(Pass):
    """Deliberately wrong: proves check_pass catches a pass that changes results."""

    name = "test-broken-relu-to-sigmoid"
    description = "Replace Relu by Sigmoid (wrong on purpose)"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        stats = counter()
        for node in model.graph:
            if node.op_type == "Relu":
                _replace(model.graph, node, "Sigmoid")
                stats["broken"] += 1
        return PassResult(bool(stats), stats)


class _NudgeWeights(Pass):
    """Deliberately wrong by 0.1%: an error just past rtol=1e-4 must not slip through."""

    name = "test-broken-nudge-conv-weights"
    description = "Scale every Conv weight by 1.001 (wrong on purpose)"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        stats = counter()
        for node in model.graph:
            w = node.inputs[1] if node.op_type == "Conv" else None
            if w is not None and w.const is not None:
                node.set_input(1, model.graph.add_initializer(w.const.numpy() * np.float32(1.001), w.name))
                stats["broken"] += 1
        return PassResult(bool(stats), stats)


@pytest.fixture(scope="module", autouse=True)
def _broken_passes() -> Iterator[None]:
    """Register the broken passes for this module only, so `optgraph list` elsewhere never sees them."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(registry, "_PASSES", dict(registry._PASSES))
        register(_ReluToSigmoid)
        register(_NudgeWeights)
        yield


@settings(max_examples=10)
@given(models(motifs=["conv_act", "residual"], ops=["activation"], inputs=["image"]))
def test_broken_activation_pass_is_caught(model: onnx.ModelProto) -> None:
    assume(any(n.op_type == "Relu" for n in model.graph.node))
    with pytest.raises(AssertionError, match="candidate differs"):
        check_pass("test-broken-relu-to-sigmoid", model)  # by name, through the registry


@settings(max_examples=10)
@given(models(motifs=["conv_bn_act", "parallel_convs"], ops=["conv"], inputs=["image"]))
def test_slightly_wrong_weights_are_caught(model: onnx.ModelProto) -> None:
    idx = _Index(model)
    # a conv whose weight is an initializer and whose output reaches a graph output
    assume(any(n.op_type == "Conv" and n.input[1] in idx.inits and n.output[0] in idx.live() for n in idx.nodes))
    with pytest.raises(AssertionError, match="candidate differs"):
        check_pass(_NudgeWeights(), model)


def test_check_pass_reports_an_invalid_rewrite() -> None:
    class _WrongOutputType(Pass):
        name = "test-broken-output-dtype"
        description = "Declare the first output as int64 (wrong on purpose)"

        def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
            model.graph.outputs[0].dtype = onnx.TensorProto.INT64
            return PassResult(True, {"broken": 1})

    model = onnx.helper.make_model(onnx.parser.parse_graph(
        "g (float[2] x) => (float[2] y) { y = Relu(x) }"), ir_version=8,
        opset_imports=[onnx.helper.make_opsetid("", 17)])
    with pytest.raises(AssertionError, match="onnx.checker"):
        check_pass(_WrongOutputType, model)
    rewritten, report = check_pass("none", model)
    assert report.passes == [] and [n.op_type for n in rewritten.graph.node] == ["Relu"]


def test_builder_rejects_unknown_constant_form() -> None:
    with pytest.raises(ValueError, match="unknown constant form"):
        GraphBuilder(17).const(np.zeros(2, np.float32), "sparse")

