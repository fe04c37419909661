"""The `fuse` group as users run it: the bundled example through the command line, random graphs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import onnx
from hypothesis import given

from optgraph.passes.testing import check_pass, models
from optgraph.runtime.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "inception_mini.onnx"
ORT_NEWEST = 26


def test_bundled_example_folds_every_bn_and_fuses_branches(tmp_path: Path) -> None:
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    assert main(["run", str(EXAMPLE), "-o", str(out), "--passes", "fuse", "--report", str(report), "--check"]) == 0
    totals = json.loads(report.read_text())["totals"]
    bns = sum(n.op_type == "BatchNormalization" for n in onnx.load(EXAMPLE).graph.node)
    assert totals["bn-into-conv"] == bns > 0 and totals["conv-act"] > 0
    assert "horizontal-conv1x1" not in totals  # the group fuses no branch that would need a Split
    assert Counter(n.op_type for n in onnx.load(out).graph.node)["BatchNormalization"] == 0
    spec = "fuse-conv-bn,fuse-horizontal{split=true},eliminate-concat,fuse-conv-act"
    assert main(["run", str(EXAMPLE), "-o", str(out), "--passes", spec, "--report", str(report), "--check"]) == 0
    totals = json.loads(report.read_text())["totals"]
    assert totals["horizontal-conv1x1"] > 0
    assert Counter(n.op_type for n in onnx.load(out).graph.node)["Split"] == totals["horizontal-conv1x1"]
    assert main(["verify", str(EXAMPLE), str(out)]) == 0


@given(models(motifs=["parallel_convs", "conv_bn_act", "concat_split", "nested_concat", "shared_weights",
                      "graph_output_inside", "parallel_matmuls", "scaled_layer"],
              ops=["conv", "activation", "batchnorm", "gemm", "matmul"], opsets=range(11, ORT_NEWEST + 1),
              max_nodes=20))
def test_random_graphs_through_the_group_stay_equivalent(model: onnx.ModelProto) -> None:
    check_pass("fuse", model)


def test_output_is_byte_identical_across_runs(tmp_path: Path) -> None:
    outs = [tmp_path / "a.onnx", tmp_path / "b.onnx"]
    for out in outs:
        assert main(["run", str(EXAMPLE), "-o", str(out), "--passes", "fuse", "--quiet"]) == 0
    assert outs[0].read_bytes() == outs[1].read_bytes()
