"""Pass prerequisites (``Pass.requires``): run once, only when needed, reported; `fuse,dce` on its own."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from onnx import parser

from optgraph import ir
from optgraph.passes import Pass, PassContext, PassResult, PipelineError, parse_pipeline, register, registry
from optgraph.passes.manager import PassManager, prerequisites
from optgraph.passes.testing.golden import assert_rewrites_to

MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3] x) => (float[2, 3] y) { a = Relu(x)  y = Relu(a) }
"""


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(registry, "_PASSES", dict(registry._PASSES))
    monkeypatch.setattr(registry, "_GROUPS", dict(registry._GROUPS))
    monkeypatch.setattr("optgraph.passes.manager._PREREQUISITES", {})
    yield


class Setup(Pass):
    name = "test-setup"
    description = "a prerequisite that records each run"
    runs: list[int] = []

    @dataclass
    class Options:
        level: int = 1

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        Setup.runs.append(self.options.level)
        return PassResult(False, {"setups": 1})

    def covers(self, required: Pass) -> bool:
        return isinstance(required, Setup) and self.options.level >= required.options.level


class NeedsSetup(Pass):
    name = "test-needs-setup"
    description = "requires test-setup"
    requires = ("test-setup",)

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        return PassResult(False)


class NeedsMore(NeedsSetup):
    name = "test-needs-more"
    requires = ("test-setup{level=2}",)


def run(spec: str) -> list[tuple[str, str | None]]:
    Setup.runs = []
    report = PassManager(parse_pipeline(spec)).run(ir.from_proto(parser.parse_model(MODEL)))
    return [(r.name, r.required_by) for r in report.passes]


def test_prerequisite_runs_once_before_the_first_pass_needing_it(scratch_registry: None) -> None:
    for cls in (Setup, NeedsSetup, NeedsMore):
        register(cls)
    assert run("test-needs-setup,test-needs-setup") == [
        ("test-setup", "test-needs-setup"), ("test-needs-setup", None), ("test-needs-setup", None)]
    assert Setup.runs == [1]


def test_prerequisite_already_covered_by_an_earlier_step_is_not_run(scratch_registry: None) -> None:
    for cls in (Setup, NeedsSetup, NeedsMore):
        register(cls)
    assert run("test-setup{level=2},test-needs-setup") == [("test-setup", None), ("test-needs-setup", None)]
    # level 1 does not cover level 2: the stronger one runs as well, once
    assert run("test-needs-setup,test-needs-more,test-needs-more") == [
        ("test-setup", "test-needs-setup"), ("test-needs-setup", None),
        ("test-setup", "test-needs-more"), ("test-needs-more", None), ("test-needs-more", None)]
    assert Setup.runs == [1, 2]


def test_bad_requirements_fail_when_the_pipeline_is_parsed(scratch_registry: None) -> None:
    class Unknown(NeedsSetup):
        name = "test-needs-unknown"
        requires = ("no-such-pass",)

    class Loop(NeedsSetup):
        name = "test-loop-a"
        requires = ("test-loop-b",)

    class LoopBack(NeedsSetup):
        name = "test-loop-b"
        requires = ("test-loop-a",)

    for cls in (Unknown, Loop, LoopBack):
        register(cls)
    with pytest.raises(PipelineError, match="no-such-pass"):
        parse_pipeline("test-needs-unknown")
    with pytest.raises(PipelineError, match="test-loop-a -> test-loop-b -> test-loop-a"):
        parse_pipeline("test-loop-a")


def test_full_fold_covers_the_weights_only_fold_not_the_reverse() -> None:
    (full,) = parse_pipeline("fold-constants")
    (weights,) = parse_pipeline("fold-constants{shapes=false}")
    (capped,) = parse_pipeline("fold-constants{size_limit=10}")
    assert full.covers(weights) and full.covers(full) and weights.covers(weights)
    assert not weights.covers(full) and not capped.covers(weights)


def test_fusions_require_weight_folding_and_dce_requires_full_folding() -> None:
    for name in ("fuse-pad-conv", "fuse-conv-bn", "fuse-input-scale", "fuse-horizontal"):
        (fold,) = prerequisites(registry.get(name))
        assert fold.name == "fold-constants" and not fold.options.shapes
    for name in ("remove-noops", "simplify-layout", "merge-slices"):  # shape computations too
        (fold,) = prerequisites(registry.get(name))
        assert fold.options.shapes
    # the default pipeline folds before it fuses: nothing runs as a prerequisite there
    report = PassManager(parse_pipeline("default")).run(ir.from_proto(parser.parse_model(MODEL)))
    assert not [r for r in report.passes if r.required_by]


# A legacy-export shape: the BN scale reaches the graph through a Transpose and Reshape of an
# initializer, the conv weight through a Constant node. The fusion sees them only once folded.
CONV_BN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 2, 4, 4] x) => (float[1, 2, 4, 4] y)
<float[2, 1] s_t = {2.0, 4.0}, float[2] b = {0.5, -0.5}, float[2] m = {0.0, 1.0}, float[2] v = {1.0, 3.0}> {
  w = Constant <value = float[2, 2, 1, 1] {1.0, 2.0, 3.0, 4.0}> ()
  c = Conv(x, w)
  s2 = Transpose <perm = [1, 0]> (s_t)
  shape = Constant <value = int64[1] {2}> ()
  s = Reshape(s2, shape)
  y = BatchNormalization(c, s, b, m, v)
}
"""


def test_fuse_folds_a_bn_whose_parameters_are_behind_a_transpose() -> None:
    report = assert_rewrites_to("fuse", CONV_BN, """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 2, 4, 4] x) => (float[1, 2, 4, 4] y)
        <float[2, 2, 1, 1] w = {1.99999, 3.99998, 6.928192, 9.237589}, float[2] b = {0.5, -2.809397}> { y = Conv(x, w, b) }
    """)
    assert report.totals()["bn-into-conv"] == 1
    # simplify-layout, first in `fuse`, asks for the full fold, which covers the fusions' weight folding
    assert [(r.name, r.required_by) for r in report.passes if r.required_by] == [("fold-constants", "simplify-layout")]


def test_fuse_folds_shape_computations_for_its_layout_fusion_and_leaves_no_ops_to_dce() -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 6] x) => (float[1, 6] y) {
      s = Shape(x)
      r = Reshape(x, s)
      y = Relu(r)
    }
    """
    assert_rewrites_to("fuse", text, """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 6] x) => (float[1, 6] y) <int64[2] s = {1, 6}> { r = Reshape(x, s)  y = Relu(r) }
    """)
    assert_rewrites_to("dce", text, """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 6] x) => (float[1, 6] y) { y = Relu(x) }
    """)


def test_fuse_collapses_a_reshape_chain_whose_targets_are_shape_computations() -> None:
    """Swin's window partitions: Reshape targets computed from Shape, static once folded."""
    assert_rewrites_to("fuse,dce", """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 3, 4] x) => (float[2, 3, 4] y) {
          s = Shape(x)
          i0 = Constant <value = int64[1] {0}> ()
          i1 = Constant <value = int64[1] {1}> ()
          i2 = Constant <value = int64[1] {2}> ()
          n = Gather(s, i0)
          c3 = Gather(s, i1)
          c4 = Gather(s, i2)
          twelve = Mul(c3, c4)
          t1 = Concat <axis = 0> (n, twelve)
          a = Reshape(x, t1)
          t2 = Constant <value = int64[3] {2, 3, 4}> ()
          b = Reshape(a, t2)
          y = Relu(b)
        }
    """, """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 3, 4] x) => (float[2, 3, 4] y) { y = Relu(x) }
    """)
