"""``optgraph build``: engines from the bundled example and tiny models (tensorrt-rtx builds without a GPU)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from optgraph.passes.testing.networks import inception_like
from optgraph.runtime import tensorrt
from optgraph.runtime.cli import main
from optgraph.runtime.tensorrt_test import conv_relu_model

pytestmark = [pytest.mark.tensorrt,
              pytest.mark.skipif(not tensorrt.available(), reason="neither tensorrt nor tensorrt_rtx imports")]
EXAMPLE = str(Path(__file__).parent.parent / "examples" / "inception_mini.onnx")


def test_build_writes_engine_and_report_accounting_every_node(tmp_path, capsys):
    engine, report = tmp_path / "m.engine", tmp_path / "r.json"
    assert main(["build", EXAMPLE, "-o", str(engine), "--dim", "N=1", "--report", str(report), "--check"]) == 0
    assert engine.stat().st_size > 0
    data = json.loads(report.read_text())
    assert data["accounting"]["accounted_share"] == 1.0 and data["accounting"]["unaccounted"] == []
    assert data["totals"]["layers"] > 0 and data["totals"]["activation_bytes"] > 0
    assert "onnx nodes:" in capsys.readouterr().out


def test_dynamic_input_without_shape_is_named(tmp_path, capsys):
    engine = tmp_path / "m.engine"
    assert main(["build", EXAMPLE, "-o", str(engine)]) == 2
    err = capsys.readouterr().err
    assert "input 'image'" in err and "--shapes" in err and err.count("\n") == 1
    assert not engine.exists()


def test_several_profiles(tmp_path):
    path = tmp_path / "c.onnx"
    onnx.save(conv_relu_model(), path)
    one, two = tmp_path / "1.engine", tmp_path / "2.engine"
    assert main(["build", str(path), "-o", str(one), "--shapes", "x:4x3x16x16", "-q"]) == 0
    assert main(["build", str(path), "-o", str(two), "-q", "--min", "x:1x3x16x16", "--max", "x:8x3x16x16",
                 "--min", "x:16x3x16x16", "--opt", "x:4x3x16x16", "--opt", "x:16x3x16x16",
                 "--max", "x:32x3x16x16"]) == 0
    assert two.stat().st_size > one.stat().st_size  # a second profile: a second set of kernels
    assert main(["build", str(path), "-o", str(two), "--min", "x:8x3x16x16", "--max", "x:1x3x16x16"]) == 2


def test_timing_cache_saved_reused_and_mismatch_is_a_warning(tmp_path, capsys):
    path, cache = tmp_path / "c.onnx", tmp_path / "timing.cache"
    onnx.save(conv_relu_model(1), path)
    args = ["build", str(path), "-o", str(tmp_path / "m.engine"), "--timing-cache", str(cache), "-q"]
    assert main(args) == 0 and cache.stat().st_size > 0
    assert main(args) == 0 and capsys.readouterr().err == ""
    cache.write_bytes(b"not a cache of this TensorRT")
    assert main(args) == 0
    assert "from another TensorRT" in capsys.readouterr().err
    assert cache.read_bytes().startswith(b"optgraph timing cache for ")


def test_parser_error_names_the_node_and_leaves_no_engine(tmp_path, capsys):
    node = helper.make_node("Frobnicate", ["x"], ["y"], name="mystery", domain="custom.ops")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom.ops", 1)])
    model.ir_version = 8
    path, engine = tmp_path / "bad.onnx", tmp_path / "bad.engine"
    onnx.save(model, path)
    assert main(["build", str(path), "-o", str(engine), "--passes", "none"]) == 2
    err = capsys.readouterr().err
    assert "mystery" in err and "Frobnicate" in err
    assert not engine.exists() and os.listdir(tmp_path) == ["bad.onnx"]


def test_fp16_model_builds_in_half_and_compare_shows_it(tmp_path, capsys):
    fp16 = tmp_path / "m16.onnx"
    assert main(["run", EXAMPLE, "-o", str(fp16), "--passes", "default,fp16", "-q"]) == 0
    report = tmp_path / "cmp.json"
    assert main(["build", EXAMPLE, "--compare", str(fp16), "--shapes", "image:1x3x32x32", "--report", str(report)]) == 0
    diff = json.loads(report.read_text())
    assert diff["a"]["precision"] == {"Float": diff["a"]["layers"]}
    assert diff["b"]["precision"].get("Half", 0) >= diff["b"]["layers"] - 2  # all but the I/O casts
    assert "fused differently" in capsys.readouterr().out


def test_one_stream_lets_parallel_branches_share_memory_and_a_report_needs_no_engine(tmp_path, capsys):
    path = tmp_path / "branches.onnx"  # an Inception block: TensorRT runs its branches on three streams
    onnx.save(inception_like(blocks=1, channels=64, spatial=56, batch=1), path)
    totals, printed = {}, {}
    for aux in (None, 0):
        report = tmp_path / f"{aux}.json"
        args = ["build", str(path), "--passes", "none", "--report", str(report)]
        assert main(args + ([] if aux is None else ["--aux-streams", str(aux)])) == 0
        data = json.loads(report.read_text())
        assert data["aux_streams"] == aux and data["engine"] is None
        totals[aux], printed[aux] = data["totals"], capsys.readouterr().out
    assert "flag: 3 streams" in printed[None] and "streams" not in printed[0]
    assert totals[None]["streams"] == 3 and totals[0]["streams"] == 1
    assert totals[0]["layers"] == totals[None]["layers"]
    assert totals[0]["activation_bytes"] * 2 < totals[None]["activation_bytes"]
    assert sorted(os.listdir(tmp_path)) == ["0.json", "None.json", "branches.onnx"]  # no engine without -o
