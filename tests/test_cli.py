"""The command line: exit codes, one-line errors, atomic output, untouched input, bad inputs."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper, parser

from optgraph.runtime.cli import main

SMALL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 3] x) => (float[N, 3] y) {
  w = Constant <value = float[3] {1.0, 2.0, 3.0}> ()
  a = Mul(x, w)
  dead = Sigmoid(a)
  y = Relu(a)
}
"""


def write(path: Path, text: str = SMALL) -> Path:
    path.write_bytes(parser.parse_model(text).SerializeToString())
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_failure(code: int, err: str, folder: Path, before: set[str]) -> None:
    """Exit 2, one line on stderr, no traceback, nothing new left in the folder."""
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and err.startswith("optgraph: error: ")
    assert set(os.listdir(folder)) == before, "a partial output or temp file was left behind"


def test_run_round_trip_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = write(tmp_path / "m.onnx")
    before = digest(model)
    code, out, _ = run_cli(capsys, "run", str(model), "-o", str(tmp_path / "o.onnx"), "--passes", "dce",
                           "--report", str(tmp_path / "r.json"))
    assert code == 0
    assert digest(model) == before
    result = onnx.load(str(tmp_path / "o.onnx"))
    assert [n.op_type for n in result.graph.node] == ["Mul", "Relu"]  # dce folds the Constant (remove-noops needs it)
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    assert report["nodes_before"] == 4 and report["nodes_after"] == 2
    (dead,) = [p for p in report["passes"] if p["name"] == "remove-dead"]
    assert dead["stats"] == {"nodes_removed": 1} and dead["seconds"] >= 0


def test_same_input_gives_identical_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = write(tmp_path / "m.onnx")
    for name in ("a.onnx", "b.onnx"):
        assert run_cli(capsys, "run", str(model), "-o", str(tmp_path / name))[0] == 0
    assert digest(tmp_path / "a.onnx") == digest(tmp_path / "b.onnx")


def test_unknown_pass_lists_valid_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = write(tmp_path / "m.onnx")
    before = set(os.listdir(tmp_path))
    code, _, err = run_cli(capsys, "run", str(model), "-o", str(tmp_path / "o.onnx"), "--passes", "dce,fusee")
    assert_clean_failure(code, err, tmp_path, before)
    assert "'fusee'" in err and "remove-dead" in err and "default" in err


def test_usage_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "run")
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_output_equal_to_input_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = write(tmp_path / "m.onnx")
    before, files = digest(model), set(os.listdir(tmp_path))
    code, _, err = run_cli(capsys, "run", str(model), "-o", str(model))
    assert_clean_failure(code, err, tmp_path, files)
    assert digest(model) == before


def test_list_shows_passes_and_groups(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    assert "remove-dead" in out and "default" in out and "fixed point" in out


def test_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = write(tmp_path / "m.onnx")
    code, out, _ = run_cli(capsys, "info", str(model))
    assert code == 0
    assert "x: FLOAT ['N', 3]" in out and "Relu" in out and "{'': 17}" in out


def test_unknown_domain_passes_through(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17, "acme.ops" : 1]>
    g (float[2, 3] x) => (float[2, 3] y, float[2, 3] z) {
      a = acme.ops.Frobnicate <mode = "fast", k = 3> (x)
      unused = acme.ops.Probe(a)
      y = Relu(a)
      z = Neg(a)
    }
    """
    model = write(tmp_path / "m.onnx", text)
    assert run_cli(capsys, "run", str(model), "-o", str(tmp_path / "o.onnx"))[0] == 0
    out = onnx.load(str(tmp_path / "o.onnx"))
    custom = [n for n in out.graph.node if n.domain == "acme.ops"]
    original = [n for n in onnx.load(str(model)).graph.node if n.domain == "acme.ops"]
    assert custom == original  # kept byte for byte, the unused one too
    assert [o.name for o in out.graph.output] == ["y", "z"]


# ------------------------------------------------------------------------------------------------
# bad inputs: each is one line, exit 2, no output, input untouched


def _bad_cases(tmp: Path) -> dict[str, Path]:
    cases: dict[str, Path] = {}
    (tmp / "text.onnx").write_text("this is not a model\n")
    cases["not onnx"] = tmp / "text.onnx"
    good = parser.parse_model(SMALL).SerializeToString()
    (tmp / "trunc.onnx").write_bytes(good[: len(good) // 2])
    cases["truncated"] = tmp / "trunc.onnx"
    (tmp / "empty.onnx").write_bytes(b"")
    cases["empty file"] = tmp / "empty.onnx"
    cases["cycle"] = write(tmp / "cycle.onnx", """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) {
          a = Add(x, b)
          b = Relu(a)
          y = Identity(b)
        }""")
    cases["produced twice"] = write(tmp / "twice.onnx", """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) {
          y = Relu(x)
          y = Sigmoid(x)
        }""")
    cases["undefined input"] = write(tmp / "undef.onnx", """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) {
          y = Add(x, ghost)
        }""")
    for name, location, offset, length in [
        ("dotdot", "../outside.bin", 0, 8),
        ("absolute", "/etc/passwd", 0, 8),
        ("past end", "w.bin", 0, 4096),
        ("bad offset", "w.bin", 100, 8),
        ("missing file", "nowhere.bin", 0, 8),
        ("symlink", "link.bin", 0, 8),
        ("hardlink", "hard.bin", 0, 8),
    ]:
        folder = tmp / name.replace(" ", "_")
        folder.mkdir()
        (folder / "w.bin").write_bytes(np.arange(2, dtype=np.float32).tobytes())
        (tmp / "outside.bin").write_bytes(b"secret!!")
        if name == "symlink":
            os.symlink(tmp / "outside.bin", folder / "link.bin")
        if name == "hardlink":
            os.link(tmp / "outside.bin", folder / "hard.bin")
        w = numpy_helper.from_array(np.zeros(2, np.float32), "w")
        w.ClearField("raw_data")
        w.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
            w.external_data.add(key=k, value=v)
        graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                                  [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])], [w])
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        (folder / "m.onnx").write_bytes(m.SerializeToString())
        cases[f"external data: {name}"] = folder / "m.onnx"
    return cases


BAD = ["not onnx", "truncated", "empty file", "cycle", "produced twice", "undefined input",
       "external data: dotdot", "external data: absolute", "external data: past end",
       "external data: bad offset", "external data: missing file", "external data: symlink",
       "external data: hardlink"]


@pytest.mark.parametrize("case", BAD)
@pytest.mark.parametrize("command", ["run", "info"])
def test_bad_input(case: str, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _bad_cases(tmp_path)[case]
    before_hash, before_files = digest(path), set(os.listdir(path.parent))
    argv = [command, str(path)] + (["-o", str(path.parent / "out.onnx")] if command == "run" else [])
    code, _, err = run_cli(capsys, *argv)
    assert_clean_failure(code, err, path.parent, before_files)
    assert digest(path) == before_hash
    if case == "cycle":
        assert "cycle" in err
    if case == "produced twice":
        assert "'y'" in err


def test_bad_input_through_console_script(tmp_path: Path) -> None:
    """The installed entry point prints one line and no traceback (and --debug shows one)."""
    path = _bad_cases(tmp_path)["truncated"]
    cmd = [sys.executable, "-m", "optgraph.runtime.cli", "run", str(path), "-o", str(tmp_path / "o.onnx")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    proc = subprocess.run([*cmd, "--debug"], capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "InvalidModelError" in proc.stderr
    assert not (tmp_path / "o.onnx").exists()


# ------------------------------------------------------------------------------------------------
# verification: verify, --check and --check-each


def test_verify_equivalent_and_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write(tmp_path / "a.onnx")
    assert run_cli(capsys, "run", str(a), "-o", str(tmp_path / "b.onnx"))[0] == 0
    code, out, _ = run_cli(capsys, "verify", str(a), str(tmp_path / "b.onnx"))
    assert code == 0 and out.startswith("equivalent")
    c = write(tmp_path / "c.onnx", SMALL.replace("2.0", "2.5"))
    code, out, _ = run_cli(capsys, "verify", str(a), str(c))
    assert code == 1 and out.startswith("mismatch") and "'y'" in out


@pytest.fixture
def breaking_pass(monkeypatch: pytest.MonkeyPatch) -> str:
    """A registered pass that changes results (Relu -> Abs), for the checking options."""
    from optgraph.passes import Pass, PassContext, PassResult, register, registry

    monkeypatch.setattr(registry, "_PASSES", dict(registry._PASSES))

    @register
    class ReluToAbs(Pass):
        name = "test-relu-to-abs"
        description = "wrong on purpose"

        def run(self, model: object, ctx: PassContext) -> PassResult:
            changed = False
            for node in model.graph:  # type: ignore[attr-defined]
                if node.op_type == "Relu":
                    node.op_type, changed = "Abs", True
            return PassResult(changed, {"broken": int(changed)})

    return ReluToAbs.name


def test_check_refuses_to_write_a_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           breaking_pass: str) -> None:
    model = write(tmp_path / "m.onnx")
    out = tmp_path / "o.onnx"
    code, _, err = run_cli(capsys, "run", str(model), "-o", str(out), "--passes", breaking_pass, "--check")
    assert code == 1 and "mismatch" in err and not out.exists()
    code, _, _ = run_cli(capsys, "run", str(model), "-o", str(out), "--passes", "dce", "--check")
    assert code == 0 and out.exists()


def test_check_each_names_the_first_bad_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             breaking_pass: str) -> None:
    model = write(tmp_path / "m.onnx")
    out = tmp_path / "o.onnx"
    code, _, err = run_cli(capsys, "run", str(model), "-o", str(out), "--passes", f"dce,{breaking_pass},dce",
                           "--check-each")
    assert code == 1 and f"pass '{breaking_pass}' changed the results" in err and not out.exists()
