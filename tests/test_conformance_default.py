"""ONNX's own node test cases still compute their expected outputs after the ``default`` pipeline.

Each case of ``onnx.backend.test.case.node`` (one op, its inputs, its expected outputs) goes through
``default`` with the verifier after every pass; where onnxruntime runs the original and agrees
with the expected outputs, the optimized model must agree too (the case's own rtol/atol). This is
what catches a pass that misreads an op at some opset: the cases cover every op version.

CI runs every 10th case (offset from tests/test_conformance.py's sample, so the two cover
different cases); the full sweep is marked slow: ``pytest -m slow tests/test_conformance_default.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from test_conformance import _node_cases, _run, assert_outputs_close

from optgraph import ir
from optgraph.passes import run_passes

SAMPLE_EVERY = 10
SAMPLE_OFFSET = 5


def _sample() -> list[str]:
    return sorted(_node_cases())[SAMPLE_OFFSET::SAMPLE_EVERY]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case_name" in metafunc.fixturenames:
        names = _sample() if metafunc.function.__name__ == "test_default_sample" else sorted(_node_cases())
        metafunc.parametrize("case_name", names, ids=names)


def optimized(model: onnx.ModelProto) -> onnx.ModelProto:
    m = ir.from_proto(model)
    run_passes(m, "default", verify_each=True)
    return ir.to_proto(m)


def with_constant_inputs(model: onnx.ModelProto, inputs: list[Any]) -> onnx.ModelProto | None:
    """The case with its inputs made initializers and an Identity before each output, so that
    ``default`` folds the op itself; None when an input is not a tensor."""
    if not all(isinstance(x, (np.ndarray, np.generic)) for x in inputs):
        return None
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for vi, x in zip(list(g.input), inputs):
        g.initializer.append(onnx.numpy_helper.from_array(np.asarray(x), vi.name))
    del g.input[:]
    outputs = {o.name for o in g.output}
    for node in g.node:
        for i, name in enumerate(node.output):
            if name in outputs:
                node.output[i] = name + "_before_output"
    g.node.extend(onnx.helper.make_node("Identity", [o.name + "_before_output"], [o.name]) for o in g.output)
    if not any(o.domain in ("", "ai.onnx") for o in m.opset_import):
        m.opset_import.add(domain="", version=13)
    return m


def check_default(case: Any, *, constant_inputs: bool) -> None:
    (inputs, expected), = case.data_sets
    model = with_constant_inputs(case.model, inputs) if constant_inputs else case.model
    if model is None:
        pytest.skip("an input is not a tensor")
    data = model.SerializeToString()
    feeds = [] if constant_inputs else inputs
    try:
        reference = _run(data, model, feeds)
        assert_outputs_close(expected, reference, case.rtol, case.atol)
    except Exception as e:  # noqa: BLE001 - what onnxruntime cannot do is not ours to test
        why = str(e).splitlines()[0][:200] if str(e) else repr(e)
        pytest.skip(f"onnxruntime does not reproduce the case: {why}")
    result = optimized(onnx.load_from_string(data))
    assert_outputs_close(expected, _run(result.SerializeToString(), result, feeds), case.rtol, case.atol)


@pytest.mark.parametrize("constant_inputs", [False, True], ids=["inputs", "constants"])
def test_default_sample(case_name: str, constant_inputs: bool) -> None:
    check_default(_node_cases()[case_name], constant_inputs=constant_inputs)


@pytest.mark.slow
@pytest.mark.parametrize("constant_inputs", [False, True], ids=["inputs", "constants"])
def test_default_all(case_name: str, constant_inputs: bool) -> None:
    check_default(_node_cases()[case_name], constant_inputs=constant_inputs)


def test_constant_variant_folds_the_op() -> None:
    case = _node_cases()["test_reduce_mean_default_axes_keepdims_example"]
    (inputs, _), = case.data_sets
    result = optimized(with_constant_inputs(case.model, inputs))  # type: ignore[arg-type]
    assert [n.op_type for n in result.graph.node] == ["Identity"]


def test_a_wrong_fold_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep must notice a folding bug: here every folded float result is off by 1%."""
    from optgraph.passes.cleanup import fold

    reference = fold._reference

    def skewed(*args: Any) -> list:
        return [r * 1.01 if r.dtype.kind == "f" else r for r in reference(*args)]

    monkeypatch.setattr(fold, "_reference", skewed)
    with pytest.raises(AssertionError):
        check_default(_node_cases()["test_reduce_mean_default_axes_keepdims_example"], constant_inputs=True)
