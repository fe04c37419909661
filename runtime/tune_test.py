"""``optgraph tune``: the search, the cost model and Spearman without TensorRT, and one real run with it."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from optgraph import ir
from optgraph.passes import parse_pipeline
from optgraph.passes.manager import FixedPoint
from optgraph.passes.testing.strategies import GraphBuilder
from optgraph.runtime import tensorrt, tune
from optgraph.runtime.cli import main

EXAMPLE = str(Path(__file__).parent.parent / "examples" / "inception_mini.onnx")


def flat(steps: list) -> list[tuple[str, str, bool]]:
    out = []
    for s in steps:
        if isinstance(s, FixedPoint):
            out += [(n, o, True) for n, o, _ in flat(s.steps)]
        else:
            out.append((type(s).name, repr(s.options), False))
    return out


def test_the_default_choices_are_the_default_pipeline():
    assert flat(tune.steps(*tune.DEFAULT.pipeline())) == flat(parse_pipeline("default"))
    assert tune.DEFAULT.label() == "default"


def test_choices_change_the_pipeline_as_labelled():
    c = tune.Choices(horizontal="split", min_branches=3, conv_act="inside", layout=False, order="fuse-first")
    loop, after = c.pipeline()
    assert after == ""
    assert "fuse-horizontal{split=true,min_branches=3}" in loop and "simplify-layout" not in loop
    assert loop.index("fuse-conv-bn") < loop.index("fold-constants")  # fusions first
    assert loop.endswith(",fuse-conv-act,remove-dead")
    assert c.label() == "horizontal=split min_branches=3 conv_act=inside layout=off order=fuse-first"
    off = tune.Choices(horizontal="off", conv_act="off").pipeline()
    assert "fuse-horizontal" not in off[0] and off[1] == ""


def test_spearman_matches_the_textbook_values():
    assert list(tune.ranks([10, 20, 20, 5])) == [2.0, 3.5, 3.5, 1.0]
    assert tune.spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert tune.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # 1 - 6 * sum(d^2) / (n (n^2 - 1)) without ties: d = (0, -2, 1, 1, 0) -> 1 - 6*6/120 = 0.7
    assert tune.spearman([1, 2, 3, 4, 5], [1, 4, 2, 3, 5]) == pytest.approx(0.7)
    assert tune.spearman([1, 2], [1, 2]) is None  # too few pairs
    assert tune.spearman([1, 2, 3], [5, 5, 5]) is None  # a constant side
    assert tune.spearman([1, 2, 3, None, 4], [3, 2, 1, 9, math.inf]) == pytest.approx(-1.0)  # unusable pairs left out


def test_objectives_parse_and_weigh_relative_to_the_base():
    assert tune.parse_objective("layers") == {"layers": 1.0}
    assert tune.parse_objective("layers=1,memory=0.5") == {"layers": 1.0, "memory": 0.5}
    for bad in ("speed", "layers=-1", "layers=x", "memory=0", "layers,layers", ""):
        with pytest.raises(tune.TuneError, match="--objective"):
            tune.parse_objective(bad)
    base = {"layers": 100, "kernels": 0, "memory": 1000}
    w = tune.parse_objective("layers=1,kernels=1,memory=2")
    assert tune.objective(base, base, w) == pytest.approx(0.25 * (1 + 0 + 2))
    assert tune.objective({"layers": 50, "kernels": 2, "memory": 500}, base, w) == pytest.approx(0.25 * (0.5 + 2 + 1))
    assert tune.objective({"layers": 50, "kernels": 2, "memory": None}, base, w) == math.inf


def test_the_cost_model_fuses_activations_into_their_producer_and_charges_split_copies():
    b = GraphBuilder(17)
    x = b.input((1, 8, 4, 4), name="x")
    w = b.const(b.weight([12, 8, 1, 1]))
    y = b.op("Relu", [b.op("Conv", [x, w], kernel_shape=[1, 1])])  # one layer
    parts = b.op("Split", [y, b.const(np.array([4, 4, 4], np.int64))], axis=1, outputs=3)
    s = b.op("Sigmoid", [parts[0]])
    flat_ = b.op("Reshape", [b.op("Add", [s, parts[1]]), b.const(np.array([1, -1], np.int64))])  # Reshape: free
    b.mark_output(flat_)
    mean = b.op("ReduceMean", [parts[2]], axes=[2, 3], keepdims=1)
    b.mark_output(b.op("Mul", [parts[2], mean]))  # a broadcasting scale: its own kernel
    est = tune.estimate(ir.from_proto(b.build()))
    # Conv+Relu 1, Split 3 copies, Sigmoid and the same-shape Add fused, ReduceMean 1, Mul 1
    assert est == {"layers": 6, "kernels": 4, "streams": 1}


def test_the_cost_model_counts_parallel_branches_as_streams():
    b = GraphBuilder(17)
    x = b.input((1, 8, 4, 4), name="x")
    branches = [b.op("Conv", [x, b.const(b.weight([4, 8, 1, 1]))], kernel_shape=[1, 1]) for _ in range(3)]
    b.mark_output(b.op("Concat", [*branches, b.op("Relu", [x])], axis=1))  # the Relu is elementwise: no stream
    est = tune.estimate(ir.from_proto(b.build()))
    assert est["streams"] == 3 and est["layers"] == 4


def fake_builder(calls: list[str]) -> tune.Builder:
    """Engine figures from the ONNX file: nodes as layers, Splits as kernels, file size as memory."""
    def build(path: str, aux_streams: int | None) -> dict:
        calls.append(path)
        model = ir.load(path)
        ops = [n.op_type for n in model.graph]
        return {"ok": True, "layers": len(ops), "kernels": ops.count("Split"), "memory": os.path.getsize(path),
                "seconds": 0.0}
    return build


def run_search(seed: int, builds: int = 4) -> tuple[tune.Result, list[str]]:
    calls: list[str] = []
    search = tune.Search(EXAMPLE, weights={"layers": 1.0}, builder=fake_builder(calls), builds=builds, seed=seed)
    try:
        return search.run(), calls
    finally:
        search.close()
        assert not os.path.exists(search.folder)


def test_the_search_is_reproducible_keeps_the_budget_and_builds_each_graph_once():
    first, calls = run_search(seed=3)
    again, _ = run_search(seed=3)
    key = lambda r: [(c.label, c.sha256, c.built, c.objective) for c in r.candidates]  # noqa: E731
    assert key(first) == key(again)
    assert len(calls) == first.builds <= 4
    built = [c for c in first.candidates if c.built]
    assert len({(c.sha256, c.aux_streams) for c in built}) == len(built)  # one build per graph and stream setting
    assert first.candidates[0].label == "original" and first.candidates[0].objective == 1.0
    assert [c.label for c in first.candidates[1:3]] == ["default", "aux_streams=0"]
    assert first.best.objective == min(c.objective for c in built)
    assert first.best.objective < 1.0  # default alone removes nodes from the example
    for c in first.candidates:
        if c.duplicate_of is not None:
            twin = first.candidates[c.duplicate_of]
            assert c.sha256 == twin.sha256 and c.duplicate_of < c.id
    assert key(run_search(seed=4)[0]) != key(first)  # the seed matters


def test_the_stream_setting_is_searched_as_a_build_of_its_own():
    """Parallel branches on one stream share memory: the same graph built with --aux-streams 0 is
    a candidate of its own, and the winner's spec records the setting it was measured with."""
    def builder(path: str, aux_streams: int | None) -> dict:
        model = ir.load(path)
        return {"ok": True, "layers": len(list(model.graph)), "kernels": 0,
                "memory": 1000 if aux_streams == 0 else 3000, "seconds": 0.0}

    search = tune.Search(EXAMPLE, weights={"memory": 1.0}, builder=builder, builds=12, seed=0)
    try:
        result = search.run()
    finally:
        search.close()
    assert result.best.aux_streams == 0 and result.best.objective == pytest.approx(1 / 3)
    assert result.best.spec()["build"] == {"aux_streams": 0}
    assert "--aux-streams 0" in result.best.build_hint("m.onnx")
    built = [c for c in result.candidates if c.built]
    assert len({(c.sha256, c.aux_streams) for c in built}) == len(built)
    assert len({c.sha256 for c in built}) < len(built)  # one graph, built once per stream setting


def test_replay_runs_the_winning_spec(tmp_path):
    spec = tmp_path / "spec.json"
    c = tune.Candidate(1, "default", *tune.DEFAULT.pipeline(), tune.DEFAULT)
    spec.write_text(json.dumps(c.spec()))
    replayed, ran = tmp_path / "r.onnx", tmp_path / "d.onnx"
    assert main(["tune", EXAMPLE, "-o", str(replayed), "--replay", str(spec), "-q"]) == 0
    assert main(["run", EXAMPLE, "-o", str(ran), "-q"]) == 0
    assert replayed.read_bytes() == ran.read_bytes()
    spec.write_text('{"format": "something else"}')
    assert main(["tune", EXAMPLE, "-o", str(tmp_path / "x.onnx"), "--replay", str(spec)]) == 2


def test_missing_tensorrt_and_bad_options_are_one_line_exit_2(tmp_path, capsys, monkeypatch):
    out = tmp_path / "best.onnx"
    assert main(["tune", EXAMPLE, "-o", str(out), "--objective", "speed"]) == 2
    assert "--objective" in capsys.readouterr().err
    assert main(["tune", str(tmp_path / "missing.onnx"), "-o", str(out)]) == 2
    capsys.readouterr()
    monkeypatch.setattr(tensorrt, "_load", lambda: None)
    assert main(["tune", EXAMPLE, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("optgraph: error: TensorRT is not installed") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.tensorrt
@pytest.mark.skipif(not tensorrt.available(), reason="neither tensorrt nor tensorrt_rtx imports")
def test_tune_the_example_with_tensorrt(tmp_path, capsys):
    out = tmp_path / "best.onnx"
    assert main(["tune", EXAMPLE, "-o", str(out), "--builds", "4", "--objective", "layers=1,memory=0.5",
                 "--check", "--inputs", "1"]) == 0
    files = tune.outputs(str(out))
    data = json.loads(Path(files["json"]).read_text())
    assert data["builds"] <= 4 and data["dims"] == {"N": 1}
    rows = data["candidates"]
    assert rows[0]["label"] == "original" and rows[0]["objective"] == 1.0 and rows[0]["measured"]["layers"] > 0
    best = rows[data["best"]]
    assert best["objective"] <= 1.0 and best["objective"] == min(r["objective"] for r in rows if r["built"])
    assert json.loads(Path(files["spec"]).read_text())["label"] == best["label"]
    assert "| # | choices |" in Path(files["md"]).read_text()
    assert Path(files["png"]).stat().st_size > 0 and out.stat().st_size > 0
    printed = capsys.readouterr().out
    assert "best #" in printed and "check: the winner matches the input" in printed
    assert sorted(r["build_index"] for r in rows if r["built"]) == list(range(1, data["builds"] + 1))


def test_the_cost_model_fuses_silu_into_its_conv():
    b = GraphBuilder(17)
    x = b.input((1, 8, 4, 4), name="x")
    y = b.op("Conv", [x, b.const(b.weight([8, 8, 3, 3]))], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    b.mark_output(b.op("Mul", [y, b.op("Sigmoid", [y])]))  # y has two readers, both inside the unit
    assert tune.estimate(ir.from_proto(b.build())) == {"layers": 1, "kernels": 0, "streams": 1}


def test_a_time_budget_stops_the_search_and_failed_builds_are_recorded():
    calls: list[str] = []
    good = fake_builder(calls)

    def original_fails(path: str, aux_streams: int | None) -> dict:
        if not calls:
            calls.append(path)
            return {"ok": False, "seconds": 0.0, "error": "In node 0 (parse): unsupported"}
        return good(path, aux_streams)

    search = tune.Search(EXAMPLE, weights={"layers": 1.0}, builder=original_fails, builds=50, seconds=1e-3)
    try:
        result = search.run()
    finally:
        search.close()
    assert result.stopped == "seconds" and result.builds == 3  # the three seeds, then time is up
    original, default = result.candidates[:2]
    assert original.built and not original.measured and original.error.startswith("In node 0")
    assert result.best is default and default.objective == 1.0  # the first engine built is the reference
