"""TensorRT wrapper: parse/build a tiny conv model ahead of time (tensorrt-rtx needs no GPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optgraph.ir.errors import OptGraphError
from optgraph.runtime import tensorrt
from optgraph.runtime.engine import parse_build_log

needs_trt = [pytest.mark.tensorrt,
             pytest.mark.skipif(not tensorrt.available(), reason="neither tensorrt nor tensorrt_rtx imports")]


def conv_relu_model(batch: int | str = "N") -> onnx.ModelProto:
    """x[batch,3,16,16] -> Conv(8 filters, 3x3) -> Relu: two TensorRT layers, 864 bytes of weights."""
    w = numpy_helper.from_array(np.random.default_rng(0).random((8, 3, 3, 3), dtype=np.float32), "W")
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["y"], ["z"])]
    graph = helper.make_graph(nodes, "conv_relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 16, 16])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture
def conv_path(tmp_path: Path) -> Path:
    path = tmp_path / "conv.onnx"
    onnx.save(conv_relu_model(), path)
    return path


def test_memory_log_parser_on_sample_lines() -> None:
    lines = [
        "[INFO] Total Host Persistent Memory: 80 bytes",
        "[INFO] Max Scratch Memory: 8203264 bytes",
        "[INFO] Total Activation Memory: 8203264 bytes",
        "[INFO] Total Weights Memory: 1120 bytes",
        "[INFO] [MemUsageStats] Peak memory usage of TRT CPU/GPU memory allocators: CPU 0 MiB, GPU 0 MiB",
    ]
    r = parse_build_log(lines)
    assert (r.activation_bytes, r.weights_bytes, r.scratch_bytes) == (8203264, 1120, 8203264)
    # Older releases print the number alone; a later report overrides an earlier one.
    r = parse_build_log(["[TRT] Total Activation Memory: 33554432", "Total Activation Memory: 512 bytes"])
    assert (r.activation_bytes, r.weights_bytes) == (512, None)
    r = parse_build_log(["Total Host Persistent Memory: 80 bytes"])
    assert (r.activation_bytes, r.weights_bytes) == (None, None)


def test_missing_tensorrt_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, conv_path: Path) -> None:
    monkeypatch.setattr(tensorrt, "_load", lambda: None)
    assert not tensorrt.available()
    with pytest.raises(tensorrt.TensorRTUnavailableError, match="pip install tensorrt-rtx"):
        tensorrt.parse(conv_path)
    assert issubclass(tensorrt.TensorRTUnavailableError, OptGraphError)


class TestWithTensorRT:
    pytestmark = needs_trt

    def test_parse_counts_layers(self, conv_path: Path) -> None:
        r = tensorrt.parse(conv_path)
        assert r.ok and r.errors == []
        assert r.num_layers == 2  # Conv, Relu

    def test_parse_bytes_matches_file(self, conv_path: Path) -> None:
        assert tensorrt.parse(conv_path.read_bytes()).num_layers == 2

    def test_parse_resolves_external_data(self, tmp_path: Path) -> None:
        path = tmp_path / "ext.onnx"
        onnx.save(conv_relu_model(), path, save_as_external_data=True, all_tensors_to_one_file=True,
                  location="ext.bin", size_threshold=0)
        assert (tmp_path / "ext.bin").exists()
        assert tensorrt.parse(path).ok

    def test_parse_reports_rejected_node(self, tmp_path: Path) -> None:
        model = conv_relu_model()
        model.graph.node[1].op_type = "NoSuchOp"
        model.graph.node[1].domain = "com.example"
        model.opset_import.append(helper.make_opsetid("com.example", 1))
        path = tmp_path / "bad.onnx"
        onnx.save(model, path)
        r = tensorrt.parse(path)
        assert not r.ok
        assert r.errors and any("NoSuchOp" in e for e in r.errors)

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(OptGraphError, match="no such file"):
            tensorrt.parse(tmp_path / "absent.onnx")

    def test_build_reports_layers_and_memory(self, conv_path: Path) -> None:
        r = tensorrt.build(conv_path)
        assert r.ok, r.errors
        assert r.num_layers == 2
        assert r.weights_bytes is not None and r.weights_bytes >= 8 * 3 * 3 * 3 * 4
        assert r.activation_bytes is not None and r.activation_bytes > 0
        assert r.engine_bytes and r.seconds > 0
        assert any("Total Activation Memory" in line for line in r.log)

    def test_dynamic_dims_drive_the_profile(self, conv_path: Path) -> None:
        one = tensorrt.build(conv_path, keep_log=False)
        by_dim = tensorrt.build(conv_path, dims={"N": 64}, keep_log=False)
        by_shape = tensorrt.build(conv_path, shapes={"x": (64, 3, 16, 16)}, keep_log=False)
        assert one.ok and by_dim.ok and by_shape.ok
        assert one.log == []
        assert by_dim.activation_bytes == by_shape.activation_bytes
        assert by_dim.activation_bytes > one.activation_bytes  # type: ignore[operator]

    def test_static_model_builds_without_profile(self, tmp_path: Path) -> None:
        path = tmp_path / "static.onnx"
        onnx.save(conv_relu_model(batch=2), path)
        assert tensorrt.build(path).ok

    def test_build_of_unparsable_model_fails_cleanly(self, tmp_path: Path) -> None:
        model = conv_relu_model()
        model.graph.node[0].op_type = "NoSuchOp"
        path = tmp_path / "bad.onnx"
        onnx.save(model, path)
        r = tensorrt.build(path)
        assert not r.ok and r.errors and r.activation_bytes is None
