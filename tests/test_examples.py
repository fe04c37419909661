"""The bundled example and the hand-built model builders it comes from."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections import Counter
from pathlib import Path

import onnx
import pytest

from optgraph import ir
from optgraph.passes.testing import compare
from optgraph.passes.testing.networks import inception_like, synthetic

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "inception_mini.onnx"


def test_example_script_reproduces_the_committed_file(tmp_path: Path) -> None:
    out = tmp_path / "inception_mini.onnx"
    subprocess.run([sys.executable, str(ROOT / "examples" / "make_example.py"), "-o", str(out)], check=True,
                   capture_output=True)
    assert out.read_bytes() == EXAMPLE.read_bytes(), "regenerate with: python examples/make_example.py"


def test_example_is_small_valid_and_runs() -> None:
    assert EXAMPLE.stat().st_size < 1 << 20
    model = onnx.load(EXAMPLE)
    assert 100 <= len(model.graph.node) <= 300
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    onnx.checker.check_model(model, full_check=True)
    assert compare(model, model, n_inputs=1, dims={"N": 2})


def _index(model: onnx.ModelProto) -> tuple[dict[str, onnx.NodeProto], dict[str, list[onnx.NodeProto]]]:
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return producer, consumers


def test_inception_like_structure() -> None:
    model = inception_like(blocks=2, channels=8, spatial=8)
    producer, consumers = _index(model)
    ops = Counter(n.op_type for n in model.graph.node)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    # every conv is followed by BN and Relu
    assert all([c.op_type for c in consumers[conv.output[0]]] == ["BatchNormalization"] for conv in convs)
    assert ops["BatchNormalization"] == ops["Conv"] == 1 + 2 * 6 and ops["Relu"] >= ops["Conv"]
    # parallel 1x1 convs on one input: three per block
    parallel = [v for v, users in consumers.items() if sum(u.op_type == "Conv" for u in users) == 3]
    assert len(parallel) == 2
    # four branches concatenated in order on channels; a residual Add on the second block
    concats = [n for n in model.graph.node if n.op_type == "Concat"]
    assert len(concats) == 2 and all(len(c.input) == 4 for c in concats)
    assert [producer[i].name for i in concats[0].input] == [f"block0.{b}.relu" for b in ("b1", "b2", "b3", "b4")]
    assert ops["Add"] == 1 and ops["MaxPool"] == 2
    assert [n.op_type for n in model.graph.node[-3:]] == ["GlobalAveragePool", "Flatten", "Gemm"]
    # BN parameters are not the identity
    bn_var = next(t for t in model.graph.initializer if t.name.endswith(".bn.running_var"))
    assert not (onnx.numpy_helper.to_array(bn_var) == 1).all()
    onnx.checker.check_model(model, full_check=True)


def test_inception_like_is_deterministic_and_seeded() -> None:
    a, b, c = inception_like(seed=1), inception_like(seed=1), inception_like(seed=2)
    assert a.SerializeToString() == b.SerializeToString()
    assert a.graph.initializer[0] != c.graph.initializer[0]


def test_inception_like_with_fixed_batch_runs_and_survives_the_ir() -> None:
    model = inception_like(blocks=5, channels=12, spatial=9, batch=2)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    back = ir.to_proto(ir.from_proto(copy.deepcopy(model)))
    assert compare(model, back, n_inputs=2)


def test_inception_like_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="channels"):
        inception_like(channels=2)


@pytest.mark.parametrize("target", [30, 500, 1600])
def test_synthetic_reaches_its_node_target(target: int) -> None:
    model = synthetic(target)
    n = len(model.graph.node)
    assert target - 25 <= n <= max(target, 30)
    assert Counter(n.op_type for n in model.graph.node)["Concat"] >= 1
    if target <= 500:
        onnx.checker.check_model(model, full_check=True)
        assert compare(model, model, n_inputs=1)


@pytest.mark.slow
def test_synthetic_large_sizes_stay_small_on_disk() -> None:
    model = synthetic(16_000)
    assert 15_000 <= len(model.graph.node) <= 16_000
    assert model.ByteSize() < 8 << 20
