"""Large models in bounded memory: a chain of big MatMul weights held as external data.

    python benchmarks/large.py [--layers 44] [--size 4096] [--scratch /tmp/optgraph-large] [--repeat 3]
                               [--out docs/benchmarks/large.md] [--keep]

The model (``--layers`` MatMul layers with ``--size`` x ``--size`` fp32 weights, each followed by an
Identity the default pipeline removes; 44 x 4096 x 4096 is 2.95 GB) is generated into the scratch
folder, never committed, and deleted afterwards unless ``--keep``. Each mode runs ``--repeat`` times
in a fresh process (imports included); the table shows the median wall time and the largest peak
RSS, measured by the parent with ``wait4``:

- ``cp``: ``cp`` of the model and its data file (what a round trip is compared with);
- ``round trip``: ``optgraph run M -o O --passes none``;
- ``default``: ``optgraph run M -o O`` (the default pipeline).

Targets: round trip within 2x of ``cp``; ``default`` within 3x of the round trip, with a peak RSS
of at most 300 MB plus the tensors a pass rewrites (none here: only the Identity nodes change).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import common
import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["onnx", "numpy", "protobuf"]
RSS_BUDGET_MB = 300
ROUNDTRIP_RATIO, DEFAULT_RATIO = 2.0, 3.0


def generate(folder: Path, layers: int, size: int) -> Path:
    """Write ``large.onnx`` + ``large.onnx.data`` into ``folder`` one weight at a time (bounded memory)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "large.onnx"
    location = path.name + ".data"
    rng = np.random.default_rng(0)
    graph = onnx.helper.make_graph([], "large", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, size])],
                                   [])
    prev = "x"
    with open(folder / location, "wb") as data:
        for i in range(layers):
            w = rng.standard_normal((size, size), dtype=np.float32) * np.float32(1 / size**0.5)
            offset = data.tell()
            data.write(w.tobytes())
            t = onnx.TensorProto(name=f"w{i}", data_type=onnx.TensorProto.FLOAT, dims=w.shape,
                                 data_location=onnx.TensorProto.EXTERNAL)
            for k, v in (("location", location), ("offset", str(offset)), ("length", str(w.nbytes))):
                t.external_data.add(key=k, value=v)
            graph.initializer.append(t)
            graph.node.append(onnx.helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"], name=f"matmul{i}"))
            graph.node.append(onnx.helper.make_node("Identity", [f"m{i}"], [f"h{i}"], name=f"identity{i}"))
            prev = f"h{i}"
    graph.output.append(onnx.helper.make_tensor_value_info(prev, onnx.TensorProto.FLOAT, [1, size]))
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())
    return path


# Runs the command under a small parent so that the peak RSS is the command's own, not that of a
# fork of this (larger) process; prints "seconds cpu_seconds maxrss_kib".
_TIMER = """
import os, sys, time
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(time.perf_counter() - t0, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, file=sys.stderr)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measure(cmd: list[str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user + system) and peak RSS (MB) of ``cmd`` run as a fresh process."""
    p = subprocess.run([sys.executable, "-c", _TIMER, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True)
    lines = p.stderr.strip().splitlines()
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit {p.returncode}: {p.stderr.strip()[-300:]}")
    seconds, cpu, rss_kib = lines[-1].split()
    return float(seconds), float(cpu), int(rss_kib) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=44)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode (median time, max RSS)")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/optgraph-large"))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "large.md")
    parser.add_argument("--keep", action="store_true", help="keep the generated model and outputs")
    args = parser.parse_args(argv)

    src = args.scratch / "in" / "large.onnx"
    if not src.exists():
        print(f"generating {src} ...", flush=True)
        generate(src.parent, args.layers, args.size)
    out = args.scratch / "out"
    out.mkdir(parents=True, exist_ok=True)
    optgraph = [sys.executable, "-m", "optgraph.runtime.cli"]
    modes = {
        "cp": ["cp", str(src), str(src) + ".data", str(out)],
        "round trip": [*optgraph, "run", str(src), "-o", str(out / "rt.onnx"), "--passes", "none", "-q"],
        "default": [*optgraph, "run", str(src), "-o", str(out / "default.onnx"), "-q"],
    }
    rows: dict[str, tuple[float, float, float]] = {}
    try:
        for mode, cmd in modes.items():
            runs = [measure(cmd) for _ in range(args.repeat)]
            for f in out.iterdir():  # outputs go before the next mode: the disk holds two copies at most
                f.unlink()
            rows[mode] = (common.median([r[0] for r in runs]), common.median([r[1] for r in runs]),
                          max(r[2] for r in runs))
            print(mode, f"{rows[mode][0]:.2f} s", f"{rows[mode][1]:.2f} s CPU", f"{rows[mode][2]:.0f} MB", flush=True)
        data_bytes = (src.parent / (src.name + ".data")).stat().st_size
        text = render(rows, args, data_bytes)
    finally:
        if not args.keep:
            shutil.rmtree(args.scratch, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


def render(rows: dict[str, tuple[float, float, float]], args: argparse.Namespace, data_bytes: int) -> str:
    cp, rt, de = rows["cp"][0], rows["round trip"][0], rows["default"][0]
    lines = [
        "# Large models: external data in bounded memory",
        "",
        f"`python benchmarks/large.py --layers {args.layers} --size {args.size}`: {args.layers} MatMul layers with "
        f"{args.size}x{args.size} fp32 weights, each followed by an Identity, {data_bytes / 1e9:.2f} GB of "
        f"external data. Each mode is a fresh process (imports included): median wall and CPU (user + system) "
        f"seconds of {args.repeat} runs, largest peak RSS; the page cache is warm for every mode.",
        "",
        common.machine_header(PACKAGES).rstrip(),
        "",
        "| mode | command | wall s | vs cp | CPU s | peak RSS (MB) |",
        "|---|---|---:|---:|---:|---:|",
        *(f"| {mode} | {what} | {rows[mode][0]:.2f} | {rows[mode][0] / cp:.2f}x | {rows[mode][1]:.2f} | "
          f"{rows[mode][2]:.0f} |" for mode, what in (("cp", "`cp` of the model and its data file"),
                                                      ("round trip", "`optgraph run --passes none`"),
                                                      ("default", "`optgraph run` (default pipeline)"))),
        "",
        f"- Round trip within {ROUNDTRIP_RATIO:g}x of cp: {'met' if rt <= ROUNDTRIP_RATIO * cp else 'missed'} "
        f"({rt / cp:.2f}x).",
        f"- default within {DEFAULT_RATIO:g}x of the round trip: {'met' if de <= DEFAULT_RATIO * rt else 'missed'} "
        f"({de / rt:.2f}x).",
        f"- default peak RSS at most {RSS_BUDGET_MB} MB (no pass rewrites a weight here): "
        f"{'met' if rows['default'][2] <= RSS_BUDGET_MB else 'missed'} ({rows['default'][2]:.0f} MB).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
