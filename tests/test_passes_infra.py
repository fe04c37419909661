"""The pass contract, registry, plugins, pipeline parser and pass manager."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from onnx import parser

from optgraph import ir
from optgraph.passes import (Analysis, Pass, PassContext, PassManager, PassResult, PipelineError, counter,
                             parse_pipeline, register, register_group, registry)
from optgraph.passes.manager import FixedPoint, PassFailure

MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3] x) => (float[2, 3] y) {
  a = Relu(x)
  b = Relu(a)
  c = Relu(b)
  y = Relu(c)
}
"""


def model() -> ir.Model:
    return ir.from_proto(parser.parse_model(MODEL))


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Register test passes into copies of the registry tables, so nothing leaks."""
    monkeypatch.setattr(registry, "_PASSES", dict(registry._PASSES))
    monkeypatch.setattr(registry, "_GROUPS", dict(registry._GROUPS))
    yield


class RemoveOneRelu(Pass):
    """Removes the first Relu it finds (so repeated runs keep changing the graph)."""

    name = "test-remove-one-relu"
    description = "remove one Relu"

    @dataclass
    class Options:
        limit: int = 1
        verbose: bool = False

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        stats = counter()
        for node in model.graph:
            if node.op_type == "Relu" and stats["removed"] < self.options.limit:
                model.graph.replace_value(node.output, node.inputs[0])
                model.graph.remove(node)
                stats["removed"] += 1
        return PassResult(bool(stats), stats)


def test_register_and_parse_with_typed_options(scratch_registry: None) -> None:
    register(RemoveOneRelu)
    (step,) = parse_pipeline("test-remove-one-relu{limit=2, verbose=true}")
    assert isinstance(step, RemoveOneRelu)
    assert step.options.limit == 2 and step.options.verbose is True


@pytest.mark.parametrize("spec, message", [
    ("nope", "unknown pass or group 'nope'"),
    ("remove-dead{x=1}", "has no option 'x'"),
    ("test-remove-one-relu{limit=many}", "expected a number"),
    ("test-remove-one-relu{limit}", "must be key=value"),
    ("dce,,fuse", "empty item"),
    ("remove-dead{", "unbalanced"),
    ("dce{x=1}", "is a group"),
])
def test_pipeline_errors(spec: str, message: str, scratch_registry: None) -> None:
    register(RemoveOneRelu)
    with pytest.raises(PipelineError, match=message):
        parse_pipeline(spec)


def test_unknown_name_error_lists_valid_names() -> None:
    with pytest.raises(PipelineError) as e:
        parse_pipeline("fusee")
    for name in ("remove-dead", "dce", "fuse", "default", "none"):
        assert name in str(e.value)


def test_none_is_empty() -> None:
    assert parse_pipeline("none") == []


def test_register_rejects_bad_passes(scratch_registry: None) -> None:
    class NoName(Pass):
        description = "x"

    with pytest.raises(TypeError):
        register(NoName)

    class Clash(Pass):
        name = "remove-dead"
        description = "clash"

    with pytest.raises(ValueError, match="taken"):
        register(Clash)


def test_fixed_point_converges_and_reports(scratch_registry: None) -> None:
    register(RemoveOneRelu)
    register_group("test-loop", ["test-remove-one-relu"], "loop", fixed_point=True, max_iterations=10)
    steps = parse_pipeline("test-loop")
    assert isinstance(steps[0], FixedPoint)
    m = model()
    report = PassManager(steps, verify_each=True).run(m)
    assert report.converged == {"test-loop": True}
    assert report.iterations["test-loop"] == 5  # 4 removals, then one quiet iteration
    assert report.totals() == {"removed": 4}
    assert report.nodes_before == 4 and report.ops_after == {"Identity": 1}  # y = x needs one Identity
    assert [o.name for o in m.graph.outputs] == ["y"]
    d = report.to_dict()
    assert d["passes"][0]["name"] == "test-remove-one-relu" and d["passes"][0]["iteration"] == 1


def test_fixed_point_does_not_rerun_members_that_saw_the_current_model(scratch_registry: None) -> None:
    """Members after an iteration's last change already ran on that model: the confirming
    iteration stops at the pass that made the last change (and the result is the same)."""

    class Quiet(Pass):
        name = "test-quiet"
        description = "changes nothing"

        def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
            return PassResult(False, {})

    class Later(Quiet):
        name = "test-quiet-later"

    register(Quiet)
    register(RemoveOneRelu)
    register(Later)
    register_group("test-loop", ["test-quiet", "test-remove-one-relu", "test-quiet-later"], "loop",
                   fixed_point=True, max_iterations=10)
    report = PassManager(parse_pipeline("test-loop")).run(model())
    runs = [(p.name, p.iteration) for p in report.passes]
    # 4 iterations remove a Relu each; the 5th runs test-quiet and test-remove-one-relu only
    assert runs[-3:] == [("test-quiet-later", 4), ("test-quiet", 5), ("test-remove-one-relu", 5)]
    assert len(runs) == 4 * 3 + 2
    assert report.converged == {"test-loop": True} and report.iterations["test-loop"] == 5
    assert report.totals() == {"removed": 4}


def test_non_convergence_is_reported(scratch_registry: None) -> None:
    register(RemoveOneRelu)
    register_group("test-short", ["test-remove-one-relu"], "loop", fixed_point=True, max_iterations=2)
    report = PassManager(parse_pipeline("test-short")).run(model())
    assert report.converged == {"test-short": False}
    assert report.iterations["test-short"] == 2


def test_verify_each_names_the_broken_pass(scratch_registry: None) -> None:
    @register
    class Corrupt(Pass):
        name = "test-corrupt"
        description = "breaks a use list"

        def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
            node = next(iter(model.graph))
            node.inputs[0]._uses.clear()  # a bug a pass could make by bypassing the API
            return PassResult(True)

    with pytest.raises(ir.VerificationError, match="after pass 'test-corrupt'"):
        PassManager(parse_pipeline("test-corrupt"), verify_each=True).run(model())


def test_analysis_cache_is_dropped_unless_preserved(scratch_registry: None) -> None:
    calls = []

    class CountNodes(Analysis[int]):
        name = "test-count"

        def compute(self, model: ir.Model, ctx: PassContext) -> int:
            calls.append(1)
            return len(model.graph)

    seen = []

    @register
    class Reader(Pass):
        name = "test-reader"
        description = "reads the analysis"
        kind = "analysis"

        def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
            seen.append(ctx.get(CountNodes))
            ctx.get(CountNodes)  # cached: no second compute
            return PassResult(False)

    register(RemoveOneRelu)
    PassManager(parse_pipeline("test-reader,test-reader,test-remove-one-relu,test-reader")).run(model())
    assert seen == [4, 4, 3] and len(calls) == 2

    RemoveOneRelu.preserves = frozenset({CountNodes})
    try:
        calls.clear(), seen.clear()
        PassManager(parse_pipeline("test-reader,test-remove-one-relu,test-reader")).run(model())
        assert seen == [4, 4] and len(calls) == 1  # preserved (wrongly, on purpose) -> stale value kept
    finally:
        RemoveOneRelu.preserves = frozenset()


def test_pipeline_is_deterministic() -> None:
    outs = []
    for _ in range(2):
        m = model()
        PassManager(parse_pipeline("default")).run(m)
        outs.append(ir.to_proto(m).SerializeToString())
    assert outs[0] == outs[1]


# ------------------------------------------------------------------------------------------------
# plugins: a real package installed with pip, found through its entry point


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("site")
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--target", str(site), str(root / "examples" / "plugin")], check=True)
    broken = site / "broken_plugin-0.1.dist-info"
    broken.mkdir()
    (broken / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (broken / "entry_points.txt").write_text("[optgraph.passes]\nbroken = no_such_module_here:Pass\n")
    return site


def _optgraph(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(site))
    return subprocess.run([sys.executable, "-m", "optgraph.runtime.cli", *args], capture_output=True,
                          text=True, env=env)


def test_plugin_pass_is_listed_and_runs(plugin_site: Path, tmp_path: Path) -> None:
    proto = parser.parse_model(MODEL)
    proto.graph.node[0].doc_string = "File foo.py, line 3"
    src = tmp_path / "m.onnx"
    src.write_bytes(proto.SerializeToString())
    listed = _optgraph(plugin_site, "list")
    assert listed.returncode == 0
    assert "strip-doc-strings" in listed.stdout
    # the broken plugin is one warning line, and everything else still works
    assert "plugin 'broken' (no_such_module_here:Pass) failed to load" in listed.stderr
    assert len(listed.stderr.strip().splitlines()) == 1
    ran = _optgraph(plugin_site, "run", str(src), "-o", str(tmp_path / "o.onnx"), "--passes", "strip-doc-strings")
    assert ran.returncode == 0, ran.stderr
    assert "doc_strings_removed=1" in ran.stdout
    import onnx

    assert onnx.load(str(tmp_path / "o.onnx")).graph.node[0].doc_string == ""


def test_without_the_plugin_its_pass_is_unknown(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    src.write_bytes(parser.parse_model(MODEL).SerializeToString())
    proc = subprocess.run([sys.executable, "-m", "optgraph.runtime.cli", "run", str(src), "-o",
                           str(tmp_path / "o.onnx"), "--passes", "strip-doc-strings"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown pass or group 'strip-doc-strings'" in proc.stderr


# ------------------------------------------------------------------------------------------------
# analyses keyed by class


class Base(Analysis[int]):
    name = "test-base"

    def compute(self, model: ir.Model, ctx: PassContext) -> int:
        order.append("base")
        return len(model.graph)


class Derived(Analysis[int]):
    name = "test-derived"
    requires = frozenset({Base})

    def compute(self, model: ir.Model, ctx: PassContext) -> int:
        order.append("derived")
        return 2 * len(model.graph)


order: list[str] = []


def test_preserves_must_name_analysis_classes(scratch_registry: None) -> None:
    class Stringly(Pass):
        name = "test-stringly"
        description = "preserves by name"
        preserves = frozenset({"shapes"})  # type: ignore[arg-type]

    with pytest.raises(TypeError, match="frozenset of Analysis classes"):
        register(Stringly)


def test_preserving_an_analysis_needs_what_it_requires(scratch_registry: None) -> None:
    class Half(Pass):
        name = "test-half"
        description = "keeps the derived analysis but not its base"
        preserves = frozenset({Derived})

    with pytest.raises(TypeError, match="add Base"):
        register(Half)
    Half.preserves = frozenset({Derived, Base})
    register(Half)


def test_requires_must_name_analysis_classes() -> None:
    with pytest.raises(TypeError, match="requires"):
        class Bad(Analysis[int]):  # noqa: F841
            name = "test-bad"
            requires = frozenset({"test-base"})  # type: ignore[arg-type]


def test_requirements_come_first_and_dropping_one_drops_its_dependents() -> None:
    ctx = PassContext()
    ctx.bind(model())
    order.clear()
    assert ctx.get(Derived) == 8 and order == ["base", "derived"]
    ctx.invalidate(frozenset({Base}))  # Derived is not preserved
    assert ctx.get(Derived) == 8 and order == ["base", "derived", "derived"]
    ctx.invalidate(frozenset({Derived}))  # Derived is, but what it read is not: both go
    ctx.get(Derived)
    assert order[3:] == ["base", "derived"]


def test_a_crashing_pass_is_named(scratch_registry: None) -> None:
    @register
    class Crash(Pass):
        name = "test-crash"
        description = "fails on purpose"

        def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
            raise KeyError("deliberate")

    manager = PassManager(parse_pipeline("test-crash"))
    with pytest.raises(PassFailure, match="pass 'test-crash' failed: KeyError") as caught:
        manager.run(model())
    assert isinstance(caught.value.__cause__, KeyError) and type(manager.failed) is Crash


def test_infer_shapes_reports_its_annotation_without_driving_a_fixed_point(scratch_registry: None) -> None:
    register_group("test-annotate", ["infer-shapes"], "annotate", fixed_point=True)
    report = PassManager(parse_pipeline("test-annotate")).run(model())
    assert report.passes[0].changed and report.passes[0].stats == {"values_typed": 3}
    assert report.converged == {"test-annotate": True} and report.iterations == {"test-annotate": 1}
