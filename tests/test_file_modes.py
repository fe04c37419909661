"""Written files get the mode a plain open() gives under the umask; an overwritten file keeps its mode."""

from __future__ import annotations

import os
import stat

import pytest

from optgraph import ir
from optgraph.ir.serde import write_atomic

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "inception_mini.onnx")


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_new_model_and_data_files_follow_the_umask(tmp_path, umask_022):
    out = str(tmp_path / "m.onnx")
    ir.save(ir.load(EXAMPLE), out, external_data=True)
    assert _mode(out) == 0o644
    assert _mode(out + ".data") == 0o644


def test_overwriting_keeps_the_old_mode(tmp_path, umask_022):
    out = str(tmp_path / "m.onnx")
    ir.save(ir.load(EXAMPLE), out)
    os.chmod(out, 0o640)
    ir.save(ir.load(EXAMPLE), out)
    assert _mode(out) == 0o640


def test_write_atomic(tmp_path, umask_022):
    path = str(tmp_path / "blob.bin")
    write_atomic(path, b"abc")
    assert open(path, "rb").read() == b"abc" and _mode(path) == 0o644
    assert os.listdir(tmp_path) == ["blob.bin"]
