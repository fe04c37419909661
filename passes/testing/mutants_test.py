"""The mutation helpers fail when they should."""

from __future__ import annotations

import pytest
from onnx import parser

from optgraph.passes import PassResult
from optgraph.passes.cleanup import dce
from optgraph.passes.testing import models
from optgraph.passes.testing.mutants import assert_idempotent, assert_mutant_caught

MODEL = """<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x) => (float[2] y) {
  y = Relu(x)
}"""


def test_a_correct_pass_is_not_reported_as_caught() -> None:
    with pytest.raises(AssertionError, match="no model from the strategy caught"):
        assert_mutant_caught("remove-dead", models(ops=["activation"], max_nodes=4), max_examples=3)


def test_a_pass_that_rewrites_its_own_output_is_not_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dce.DeadCodeElimination, "run", lambda self, model, ctx: PassResult(True, {"always": 1}))
    with pytest.raises(AssertionError, match="still rewrites"):
        assert_idempotent("remove-dead", parser.parse_model(MODEL))
