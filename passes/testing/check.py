"""``check_pass``: run a pass on a model and prove the result is valid and equivalent."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import onnx

from optgraph import ir
from optgraph.passes.base import Pass
from optgraph.passes.manager import PassManager, Report, run_passes
from optgraph.passes.testing.oracle import assert_equivalent

FULL_CHECK_BYTES = 16 << 20  # onnx's full check re-infers every shape: skip it on big models


def check_pass(spec_or_pass: str | Pass | type[Pass], model_proto: onnx.ModelProto, *, n_inputs: int = 3,
               seed: int = 0, dims: Mapping[str, int] | None = None) -> tuple[onnx.ModelProto, Report]:
    """Run a pipeline spec (``"fuse,dce"``) or a pass on a copy of ``model_proto``, with the IR
    verifier after every pass; check the result with onnx.checker (full check, when small) and the
    equivalence oracle. Returns the rewritten model and the report; raises AssertionError."""
    model = ir.from_proto(copy.deepcopy(model_proto))  # the IR keeps referring to the proto it loaded
    if isinstance(spec_or_pass, str):
        report = run_passes(model, spec_or_pass, verify_each=True)
    else:
        p = spec_or_pass() if isinstance(spec_or_pass, type) else spec_or_pass
        report = PassManager([p], verify_each=True).run(model)
    rewritten = ir.to_proto(model)
    if rewritten.ByteSize() <= FULL_CHECK_BYTES:
        try:
            onnx.checker.check_model(rewritten, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise AssertionError(f"the rewritten model fails onnx.checker: {first}") from e
    assert_equivalent(model_proto, rewritten, n_inputs=n_inputs, seed=seed, dims=dims)
    return rewritten, report
