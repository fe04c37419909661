"""The default pipeline as a whole: equivalent on random models, deterministic to the byte,
convergent, and its order as documented in docs/pipeline.md."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given

from optgraph import ir
from optgraph.passes import groups, run_passes
from optgraph.passes.testing.check import check_pass
from optgraph.passes.testing.networks import inception_like
from optgraph.passes.testing.strategies import models

DOCS = Path(__file__).resolve().parent.parent / "docs" / "pipeline.md"


@given(models())
def test_default_is_equivalent_on_random_models(model) -> None:  # type: ignore[no-untyped-def]
    _, report = check_pass("default", model)
    assert report.converged["simplify"]


def test_same_input_gives_byte_identical_output(tmp_path: Path) -> None:
    proto = inception_like(blocks=2)
    outputs = []
    for k in range(2):
        model = ir.from_proto(proto)
        run_passes(model, "default")
        path = tmp_path / f"out{k}.onnx"
        ir.save(model, path)
        outputs.append(path.read_bytes())
        proto = inception_like(blocks=2)  # the IR keeps referring to the proto it loaded
    assert outputs[0] == outputs[1]


def test_documented_order_is_the_registered_one() -> None:
    text = DOCS.read_text()
    assert groups()["simplify"].fixed_point
    for name in ("simplify", "default"):
        assert f"{name} = " + " -> ".join(groups()[name].members) in text
