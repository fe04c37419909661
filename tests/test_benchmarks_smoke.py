"""benchmarks/compare.py end to end on one tiny model with optgraph and onnxoptimizer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from optgraph.passes.testing.networks import synthetic

COMPARE = Path(__file__).resolve().parent.parent / "benchmarks" / "compare.py"
sys.path.insert(0, str(COMPARE.parent))
import common  # noqa: E402  (benchmarks/common.py)

sys.path.remove(str(COMPARE.parent))

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxoptimizer")
pytest.importorskip("matplotlib")


def test_compare_quick_on_a_tiny_model(tmp_path: Path) -> None:
    model = tmp_path / "tiny.onnx"
    onnx.save(synthetic(60), model)
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, str(COMPARE), "--quick", "--models", str(model),
                        "--tools", "optgraph", "onnxoptimizer", "--timeout", "120", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    results = json.loads((out / "compare.json").read_text())["tiny"]
    assert set(results) == {"original", "optgraph", "onnxoptimizer"}
    for tool in ("optgraph", "onnxoptimizer"):
        r = results[tool]
        assert "error" not in r, r
        assert r["equivalent"] is True, r["oracle"]
        assert r["nodes"] > 0 and r["seconds"] > 0 and r["latency_off_ms"] > 0
    assert results["optgraph"]["nodes"] <= results["original"]["nodes"]
    table = (out / "compare.md").read_text()
    assert "| optgraph |" in table and "| onnxoptimizer |" in table and "Machine:" in table
    assert (out / "compare.png").stat().st_size > 0


def test_compare_reports_a_wrong_result(tmp_path: Path) -> None:
    """The measurement half must catch a tool whose output differs: feed it a deliberately altered model."""
    original = tmp_path / "orig.onnx"
    proto = synthetic(60)
    onnx.save(proto, original)
    broken = onnx.ModelProto()
    broken.CopyFrom(proto)
    relu = next(n for n in broken.graph.node if n.op_type == "Relu")
    relu.op_type = "Sigmoid"  # a wrong rewrite: same graph shape, different numbers
    bad = tmp_path / "bad.onnx"
    onnx.save(broken, bad)
    r = common.run_child(str(COMPARE), ["measure", str(original), str(bad), "0.05"], 120)
    assert r["equivalent"] is False, r
    assert "differs" in r["oracle"]


def test_node_count_expands_function_calls() -> None:
    """A tool must not look smaller by wrapping nodes into model-local functions."""
    from onnx import TensorProto, helper

    body = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])]
    fn = helper.make_function("local", "ConvRelu", ["x", "w"], ["y"], body, [helper.make_opsetid("", 17)])
    then = helper.make_graph([helper.make_node("Identity", ["a"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("ConvRelu", ["a", "w"], ["b"], domain="local"),
             helper.make_node("ConvRelu", ["b", "w"], ["c"], domain="local"),
             helper.make_node("If", ["cond"], ["d"], then_branch=then, else_branch=then)]
    graph = helper.make_graph(nodes, "g", [], [])
    model = helper.make_model(graph, functions=[fn], opset_imports=[helper.make_opsetid("", 17),
                                                                   helper.make_opsetid("local", 1)])
    assert common.count_nodes(model) == 2 * 2 + 1 + 2 * 1


def test_large_and_scale_benchmarks_on_tiny_models(tmp_path: Path) -> None:
    """benchmarks/large.py (external-data model, three modes) and benchmarks/scale.py (phases and
    per-pass CPU of the synthetic model) end to end at toy sizes."""
    bench = COMPARE.parent
    p = subprocess.run([sys.executable, str(bench / "large.py"), "--layers", "3", "--size", "64", "--repeat", "1",
                        "--scratch", str(tmp_path / "large"), "--out", str(tmp_path / "large.md")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    large = (tmp_path / "large.md").read_text()
    assert "| round trip |" in large and "| default |" in large and "peak RSS" in large
    assert not (tmp_path / "large").exists()  # the generated model is deleted afterwards
    onnx.save(synthetic(200), tmp_path / "synthetic-200.onnx")
    p = subprocess.run([sys.executable, str(bench / "scale.py"), "--nodes", "200", "--repeat", "1",
                        "--models", str(tmp_path), "--out", str(tmp_path / "scale.md")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    scale = (tmp_path / "scale.md").read_text()
    assert "| passes |" in scale and "| fuse-conv-bn |" in scale and "`optgraph --version`" in scale
def test_memory_plan_beside_tensorrt_table_on_the_example(tmp_path: Path) -> None:
    sys.path.insert(0, str(COMPARE.parent))
    try:
        import memory  # benchmarks/memory.py
    finally:
        sys.path.remove(str(COMPARE.parent))
    example = COMPARE.parent.parent / "examples" / "inception_mini.onnx"
    row = memory.plan_and_build(example, tmp_path, build=False, sizes={"N": 2})
    assert row.planned[0] > 0 and row.nodes[1] < row.nodes[0] and row.tensorrt == (None, None)
    table = "\n".join(memory.versus_table([row]))
    assert "| inception_mini | 175 |" in table and "n/a" in table
