import json

import numpy as np
import onnx

from optgraph.passes.precision import trained
from optgraph.runtime.cli import main


def test_quantize_command(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    t = trained.tabular_mlp()
    model, data, out, cache = (str(tmp_path / n) for n in ("m.onnx", "d.npz", "q.onnx", "c.json"))
    onnx.save(t.model, model)
    np.savez(data, x=t.x_train)
    assert main(["quantize", model, "-o", out, "--calib", data, "--samples", "100", "--cache", cache, "--check"]) == 0
    err = capsys.readouterr().err
    assert "top-1 agreement" in err and "of 100" in err
    q = onnx.load(out)
    assert [n.op_type for n in q.graph.node].count("QuantizeLinear") == 3
    assert json.loads(open(cache).read())["method"] == "mse"
    # the cache is reused: no data needed
    assert main(["quantize", model, "-o", str(tmp_path / "q2.onnx"), "--cache", cache]) == 0
    assert open(tmp_path / "q2.onnx", "rb").read() == open(out, "rb").read()


def test_quantize_refuses_without_data(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    model, out = str(tmp_path / "m.onnx"), tmp_path / "q.onnx"
    onnx.save(trained.tabular_mlp().model, model)
    assert main(["quantize", model, "-o", str(out)]) == 2
    assert main(["quantize", model, "-o", str(out), "--calib", str(tmp_path / "none.npz")]) == 2
    err = capsys.readouterr().err
    assert "--calib" in err and "does not exist" in err and "Traceback" not in err
    assert not out.exists()


def test_quantize_and_check_a_fixed_batch_model(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    # exported models fix the batch at 1: calibration and --check feed batches of 4 one sample at a time
    t = trained.tabular_mlp()
    proto = onnx.ModelProto()
    proto.CopyFrom(t.model)
    for v in (proto.graph.input[0], proto.graph.output[0]):
        v.type.tensor_type.shape.dim[0].dim_value = 1
    model, data, out = (str(tmp_path / n) for n in ("m.onnx", "d.npz", "q.onnx"))
    onnx.save(proto, model)
    np.savez(data, x=t.x_train)
    assert main(["quantize", model, "-o", out, "--calib", data, "--samples", "12", "--batch", "4", "--check"]) == 0
    assert "top-1 agreement" in capsys.readouterr().err
