"""Start-up cost: heavy dependencies are imported only by the code that uses them.

``optgraph --version`` answers without onnx or numpy; loading the passes pulls in neither
networkx, onnxruntime, matplotlib, TensorRT, torch nor onnx's reference evaluator (constant
folding imports it when it first evaluates a node). Checked in a fresh interpreter, by module
name, not by time (timings live in benchmarks/).
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["onnxruntime", "networkx", "matplotlib", "tensorrt", "tensorrt_rtx", "torch", "onnx.reference"]


def _imported_after(code: str) -> list[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_version_imports_neither_onnx_nor_numpy() -> None:
    loaded = _imported_after("from optgraph.runtime.cli import main\nmain(['--version'])")
    assert not [m for m in loaded if m.split(".")[0] in ("onnx", "numpy", *HEAVY)]


def test_passes_import_no_optional_heavy_dependency() -> None:
    loaded = set(_imported_after("import optgraph.passes, optgraph.ir.serde, optgraph.runtime.cli"))
    assert not [m for m in HEAVY if m in loaded]


def test_version_prints_the_installed_version() -> None:
    out = subprocess.run([sys.executable, "-m", "optgraph.runtime.cli", "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.startswith("optgraph ") and out.split()[1][0].isdigit()
