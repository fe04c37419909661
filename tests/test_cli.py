"""The command line: exit codes, one-line errors, atomic output, untouched input, bad inputs."""

from __future__ import annotations

import hashlib
import json
import os
import re
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


# ------------------------------------------------------------------------------------------------
# small gaps: onnxruntime's own log lines, plugins that fail half-way


RESHAPE_TO_16 = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3] x) => (float[4, 4] y) {
  s = Constant <value = int64[2] {4, 4}> ()
  y = Reshape(x, s)
}
"""


def test_onnxruntime_log_lines_do_not_leak(tmp_path: Path) -> None:
    """A reference that fails in onnxruntime gives optgraph's one line, not ORT's raw log first
    (a subprocess: ORT writes its log to the process's stderr, below capsys)."""
    bad, good = write(tmp_path / "bad.onnx", RESHAPE_TO_16), write(tmp_path / "good.onnx")
    done = subprocess.run([sys.executable, "-m", "optgraph.runtime.cli", "verify", str(bad), str(good)],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith("optgraph: error: ") and len(done.stderr.splitlines()) == 1, done.stderr


class _FakeEntryPoint:
    name, value = "half", "half_plugin:Pass"

    def load(self) -> object:
        from optgraph.passes import Pass, register

        @register
        class Registered(Pass):
            name = "test-half-registered"
            description = "registered by a plugin that then fails"

        raise ImportError("the rest of the plugin is missing")


def test_a_failing_plugin_registers_nothing(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
                                            ) -> None:
    from optgraph.passes import registry

    monkeypatch.setattr(registry, "_PASSES", dict(registry._PASSES))
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.setattr(registry.importlib.metadata, "entry_points", lambda group: [_FakeEntryPoint()])
    code, out, err = run_cli(capsys, "list")
    assert code == 0 and "test-half-registered" not in out
    assert err.count("optgraph:") == 1 and err.startswith("optgraph: warning: plugin 'half'"), err


# ------------------------------------------------------------------------------------------------
# a reference that disagrees with itself is named, not blamed on a pass

TRAINING_DROPOUT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[4, 8] x) => (float[4, 8] y) {
  r = Constant <value = float {0.5}> ()
  t = Constant <value = bool {1}> ()
  one = Constant <value = float {1.0}> ()
  a = Mul(x, one)
  d = Dropout(a, r, t)
  y = Relu(d)
}
"""

RANDOM_LIKE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[4, 8] x) => (float[4, 8] y) {
  n = RandomNormalLike <dtype = 1> (x)
  y = Add(x, n)
}
"""


@pytest.mark.parametrize(("text", "op", "how"), [
    (TRAINING_DROPOUT, "Dropout", "verify"), (TRAINING_DROPOUT, "Dropout", "check"),
    (TRAINING_DROPOUT, "Dropout", "check-each"), (RANDOM_LIKE, "RandomNormalLike", "verify"),
    (RANDOM_LIKE.replace("RandomNormalLike <dtype = 1>", "RandomUniformLike <dtype = 1, seed = 1.0>"),
     "RandomUniformLike", "check")])
def test_nondeterministic_reference_is_named(text: str, op: str, how: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    model, out = write(tmp_path / "m.onnx", text), tmp_path / "o.onnx"
    argv = ["verify", str(model), str(model)] if how == "verify" else \
        ["run", str(model), "-o", str(out), f"--{how}"]
    code, stdout, err = run_cli(capsys, *argv)
    assert code == 2 and not out.exists(), (stdout, err)
    assert err.startswith("optgraph: error: the reference model is not deterministic") and f"ops: {op}" in err, err
    assert len(err.splitlines()) == 1 and "changed the results" not in err and "mismatch" not in stdout + err


def test_training_dropout_is_named_in_the_oracle() -> None:
    from optgraph.passes.testing.oracle import NondeterministicReference, compare, random_ops

    model = parser.parse_model(TRAINING_DROPOUT)
    assert random_ops(model) == [("Dropout (training_mode)", "")]
    assert random_ops(parser.parse_model(TRAINING_DROPOUT.replace("bool {1}", "bool {0}"))) == []
    with pytest.raises(NondeterministicReference, match="Dropout"):
        compare(model, model)


# ------------------------------------------------------------------------------------------------
# --data: the check on real inputs

CLIPPED = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 3] x) => (float[N, 3] y) {
  lo = Constant <value = float {-LIMIT}> ()
  hi = Constant <value = float {LIMIT}> ()
  y = Clip(x, lo, hi)
}
"""


def test_data_feeds_the_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two models that differ only beyond |x| = 10, which random normal inputs never reach."""
    a = write(tmp_path / "a.onnx", CLIPPED.replace("LIMIT", "100.0"))
    b = write(tmp_path / "b.onnx", CLIPPED.replace("LIMIT", "10.0"))
    data = tmp_path / "inputs.npz"
    np.savez(data, x=np.linspace(-50, 50, 30, dtype=np.float32).reshape(10, 3))
    assert run_cli(capsys, "verify", str(a), str(b))[0] == 0
    code, out, _ = run_cli(capsys, "verify", str(a), str(b), "--data", str(data))
    assert code == 1 and "(batch 0)" in out, out
    code, out, _ = run_cli(capsys, "run", str(a), "-o", str(tmp_path / "o.onnx"), "--check", "--data", str(data))
    assert code == 0 and "equivalent on 1 batch(es) of data" in out, out
    np.savez(tmp_path / "wrong.npz", z=np.zeros((2, 3), np.float32))
    before = set(os.listdir(tmp_path))
    code, _, err = run_cli(capsys, "verify", str(a), str(b), "--data", str(tmp_path / "wrong.npz"))
    assert_clean_failure(code, err, tmp_path, before)
    assert "no array for input(s) x" in err


# ------------------------------------------------------------------------------------------------
# the summary: counts that match the file, fused units by pattern, model size, wall time

TWO_CONV_RELU = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 2, 8, 8] x) => (float[1, 2, 8, 8] y) {
  w = Constant <value = float[2, 2, 1, 1] {1.0, 0.5, -0.5, 1.0}> ()
  w3 = Constant <value = float[2, 2, 3, 3] {0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9}> ()
  i = Identity(x)
  c1 = Conv(i, w)
  r1 = Relu(c1)
  c2 = Conv <pads = [1, 1, 1, 1]> (r1, w3)
  r2 = Relu(c2)
  c3 = Conv(r2, w)
  y = Relu(c3)
}
"""


def test_summary_counts_match_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, out, report = write(tmp_path / "m.onnx", TWO_CONV_RELU), tmp_path / "o.onnx", tmp_path / "r.json"
    code, text, _ = run_cli(capsys, "run", str(model), "-o", str(out), "--report", str(report))
    assert code == 0
    written = onnx.load(str(out))
    top = len(written.graph.node)
    fused = [n.op_type for n in written.graph.node if n.domain == "optgraph"]
    assert len(fused) == 3 and len(set(fused)) == 2  # two signatures, one pattern
    inlined = sum(len(f.node) for f in written.functions for n in written.graph.node if n.op_type == f.name) + \
        sum(n.domain != "optgraph" for n in written.graph.node)
    rows = {line.split("  ")[0].strip(): line.split()[-2:] for line in text.splitlines() if "  " in line}
    assert rows["top-level nodes"] == ["9", str(top)]  # Constants count until they become initializers
    assert rows["ops, function bodies inlined"] == ["9", str(inlined)] and inlined == 6
    assert rows["ConvRelu (fused)"] == ["0", "3"] and not any("_" in r for r in rows if "fused" in r)
    assert rows["Conv"] == ["3", "0"] and rows["Identity"] == ["1", "0"]
    assert re.search(rf"^model size +{model.stat().st_size} B +{out.stat().st_size} B *$", text, re.M), text
    assert re.search(r"^time: [0-9.]+ s in passes, [0-9.]+ s wall$", text, re.M), text
    data = json.loads(report.read_text())
    assert data["after"]["top_level_nodes"] == top and data["after"]["ops"]["ConvRelu (fused)"] == 3
    assert data["size_after"] == out.stat().st_size and data["wall_seconds"] >= data["seconds"]


# ------------------------------------------------------------------------------------------------
# --shape / --static: a model with its sizes fixed and what became constant folded

DYNAMIC = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, 3, H, W] x) => (float[batch, features] y) {
  s = Shape(x)
  z = Constant <value = int64[1] {0}> ()
  b = Gather(s, z)
  m1 = Constant <value = int64[1] {-1}> ()
  t = Concat <axis = 0> (b, m1)
  f = Reshape(x, t)
  y = Relu(f)
}
"""


@pytest.mark.parametrize("sizes", [["--shape", "x:2x3x4x4"],
                                   ["--dim", "batch=2", "--dim", "H=4", "--dim", "W=4", "--static"]])
def test_static_shapes_are_written_and_folded(sizes: list[str], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    model, out = write(tmp_path / "m.onnx", DYNAMIC), tmp_path / "o.onnx"
    code, _, err = run_cli(capsys, "run", str(model), "-o", str(out), "--check", *sizes)
    assert code == 0, err
    written = onnx.load(str(out))
    dims = lambda vi: [d.dim_value or d.dim_param for d in vi.type.tensor_type.shape.dim]  # noqa: E731
    assert dims(written.graph.input[0]) == [2, 3, 4, 4]
    assert dims(written.graph.output[0]) == [2, 48]  # 'features' was named by no input: inferred
    assert [n.op_type for n in written.graph.node] == ["Reshape", "Relu"]  # Shape/Gather/Concat folded


@pytest.mark.parametrize(("sizes", "message"), [
    (["--dim", "batch=2", "--static"], "--static: input 'x' has no size for dim 2 ('H'), dim 3 ('W')"),
    (["--shape", "image:1x3x4x4"], "--shape names no graph input: image"),
    (["--shape", "x:1x3x4"], "rank 3, but the input has rank 4"),
    (["--shape", "x:1x4x4x4"], "dim 1 is 3 in the model, not 4"),
    (["--shape", "x:1x3xfour"], "--shape expects NAME:DIMS"),
])
def test_static_shape_errors(sizes: list[str], message: str, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    model = write(tmp_path / "m.onnx", DYNAMIC)
    before = set(os.listdir(tmp_path))
    code, _, err = run_cli(capsys, "run", str(model), "-o", str(tmp_path / "o.onnx"), *sizes)
    assert_clean_failure(code, err, tmp_path, before)
    assert message in err, err


# ------------------------------------------------------------------------------------------------
# progress: drawn on a terminal, never into pipes or with -q


def _in_terminal(*argv: str) -> tuple[int, str]:
    """Run optgraph with stdout and stderr on a pseudo-terminal; everything it drew."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "optgraph.runtime.cli", *argv], stdin=slave, stdout=slave,
                            stderr=slave, env=dict(os.environ, TERM="xterm", COLUMNS="120"))
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return proc.wait(), b"".join(chunks).decode(errors="replace")


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_progress_on_a_terminal_only(tmp_path: Path) -> None:
    model = write(tmp_path / "m.onnx")
    argv = ["run", str(model), "-o", str(tmp_path / "o.onnx"), "--check"]
    code, drawn = _in_terminal(*argv)
    assert code == 0 and "check: running both models" in drawn and "running passes" in drawn, drawn
    code, drawn = _in_terminal(*argv, "-q")
    assert code == 0 and drawn == ""
    piped = subprocess.run([sys.executable, "-m", "optgraph.runtime.cli", *argv], capture_output=True, text=True)
    assert piped.returncode == 0 and piped.stderr == "" and "running" not in piped.stdout


# ------------------------------------------------------------------------------------------------
# small gaps closed earlier: --version, empty --passes, --inputs 0, -o -, a closed pipe


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0 and capsys.readouterr().out.startswith("optgraph ")


@pytest.mark.parametrize(("extra", "message"), [(["--passes", ""], "--passes is empty"),
                                                (["--check", "--inputs", "0"], "expected a count of at least 1")])
def test_empty_requests_are_errors(extra: list[str], message: str, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    model = write(tmp_path / "m.onnx")
    before = set(os.listdir(tmp_path))
    code, _, err = run_cli(capsys, "run", str(model), "-o", str(tmp_path / "o.onnx"), *extra)
    assert_clean_failure(code, err, tmp_path, before)
    assert message in err


def test_output_to_stdout_and_closed_pipe(tmp_path: Path) -> None:
    model = write(tmp_path / "m.onnx")
    cli = [sys.executable, "-m", "optgraph.runtime.cli"]
    done = subprocess.run([*cli, "run", str(model), "-o", "-"], capture_output=True, cwd=tmp_path)
    assert done.returncode == 0 and not (tmp_path / "-").exists()
    assert onnx.load_from_string(done.stdout).graph.output[0].name == "y"
    assert b"top-level nodes" in done.stderr  # the summary goes to stderr when stdout holds the model
    piped = subprocess.run(f"{' '.join(cli)} list | head -1", shell=True, capture_output=True, text=True)
    assert piped.stdout == "passes:\n" and piped.stderr == ""
def test_a_failing_pass_leaves_a_reproducer(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A plugin-style pass that crashes: the error names it, --reproducer saves what reruns it."""
    from dataclasses import dataclass

    from optgraph.passes import Pass, PassContext, PassResult, register, registry

    monkeypatch.setattr(registry, "_PASSES", dict(registry._PASSES))

    @register
    class Crash(Pass):
        name = "test-crash"
        description = "fails on purpose"

        @dataclass
        class Options:
            after: int = 0

        def run(self, model: object, ctx: PassContext) -> PassResult:
            raise ZeroDivisionError("deliberate")

    model = write(tmp_path / "m.onnx")
    out, folder = tmp_path / "o.onnx", tmp_path / "repro"
    spec = "dce,test-crash{after=2},dce"
    code, _, err = run_cli(capsys, "run", str(model), "-o", str(out), "--passes", spec, "--reproducer", str(folder))
    assert code == 3 and "pass 'test-crash' failed: ZeroDivisionError: deliberate" in err and not out.exists()
    assert f"reproducer saved in {folder}" in err
    assert (folder / "model.onnx").read_bytes() == model.read_bytes()
    assert (folder / "pipeline.txt").read_text().strip() == spec
    info = json.loads((folder / "reproducer.json").read_text())
    assert info["failed_pass"] == "test-crash{after=2}" and "ZeroDivisionError" in info["error"]
    code, _, err = run_cli(capsys, "run", str(folder / "model.onnx"), "-o", str(out), "--passes",
                           (folder / "pipeline.txt").read_text().strip())
    assert code == 3 and "pass 'test-crash' failed" in err
