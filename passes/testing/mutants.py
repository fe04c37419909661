"""Tests that can fail: a pass broken on purpose must be caught, and a pass run twice must find
nothing left to do.

    def test_a_broken_fold_is_caught(monkeypatch):
        monkeypatch.setattr(my_pass, "helper", wrong_helper)
        assert_mutant_caught("my-pass", models(motifs=["conv_bn_act"], ops=[]))
"""

from __future__ import annotations

import re

import onnx
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.strategies import SearchStrategy

from optgraph.passes.testing.check import check_pass

CAUGHT = re.compile("differs|fails")
"""What check_pass says when a rewrite changed results or made an invalid model."""


def assert_mutant_caught(spec: str, strategy: SearchStrategy[onnx.ModelProto], *, max_examples: int = 60) -> None:
    """Assert that ``check_pass(spec)`` fails on some model drawn from ``strategy``: call it while
    the pass is broken on purpose (monkeypatch). Examples are generated in a fixed order and not
    shrunk: the failure is what matters, not its smallest form."""

    @settings(max_examples=max_examples, phases=[Phase.generate], database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def prop(model: onnx.ModelProto) -> None:
        check_pass(spec, model)

    try:
        prop()
    except AssertionError as e:
        if CAUGHT.search(str(e)):
            return
        raise
    raise AssertionError(f"no model from the strategy caught the broken '{spec}' in {max_examples} examples")


def assert_idempotent(spec: str, model: onnx.ModelProto) -> onnx.ModelProto:
    """Check ``spec`` on ``model``, then on its own output, where it must find nothing to do
    (its report's stats are empty). Returns the first output."""
    out, _ = check_pass(spec, model)
    _, report = check_pass(spec, out)
    assert report.totals() == {}, f"a second run of '{spec}' still rewrites: {report.totals()}"
    return out
