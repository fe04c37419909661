"""Load + save round trip of the 64k-node synthetic model: optgraph against onnx, onnx_ir and graphsurgeon.

    python benchmarks/roundtrip.py [--nodes 64000] [--repeat 5] [--out docs/benchmarks/roundtrip.md]

Each run is a fresh process timing only the round trip (imports excluded); the table shows the
median of ``--repeat`` runs and the ratio to onnx.load + onnx.save. Target: optgraph <= 2x.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import common
import models

from optgraph.ir import progress

ROOT = Path(__file__).resolve().parent.parent
TARGET_RATIO = 2.0


def _optgraph(src: str, dst: str) -> None:
    from optgraph import ir

    ir.save(ir.load(src), dst)


def _onnx(src: str, dst: str) -> None:
    import onnx

    onnx.save(onnx.load(src), dst)


def _onnx_ir(src: str, dst: str) -> None:
    import onnx_ir

    onnx_ir.save(onnx_ir.load(src), dst)


def _graphsurgeon(src: str, dst: str) -> None:
    import onnx
    import onnx_graphsurgeon as gs

    onnx.save(gs.export_onnx(gs.import_onnx(onnx.load(src))), dst)


TOOLS: dict[str, tuple[str, Callable[[str, str], None]]] = {
    "onnx": ("onnx.load + onnx.save", _onnx),
    "optgraph": ("optgraph.ir.load + optgraph.ir.save", _optgraph),
    "onnx_ir": ("onnx_ir.load + onnx_ir.save", _onnx_ir),
    "graphsurgeon": ("gs.import_onnx + gs.export_onnx + onnx.save", _graphsurgeon),
}
PACKAGES = ["onnx", "onnx-ir", "onnx-graphsurgeon", "protobuf"]


def child(tool: str, src: str, dst: str) -> None:
    import onnx  # every tool needs it: import before the clock starts

    fn = TOOLS[tool][1]
    _warm_imports(tool)
    t0 = time.perf_counter()
    fn(src, dst)
    seconds = time.perf_counter() - t0
    common.emit({"seconds": seconds, "nodes": common.count_nodes(onnx.load(dst)),
                 "rss_mb": common.peak_rss_mb()})


def _warm_imports(tool: str) -> None:
    """Import the tool's modules outside the timed region."""
    if tool == "optgraph":
        import optgraph.ir  # noqa: F401
    elif tool == "onnx_ir":
        import onnx_ir  # noqa: F401
    elif tool == "graphsurgeon":
        import onnx_graphsurgeon  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(*argv[1:4])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=64_000, help="size of the synthetic model")
    parser.add_argument("--repeat", type=int, default=5, help="runs per tool (the median is reported)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds before a run counts as a timeout")
    parser.add_argument("--models", type=Path, default=models.DEFAULT_OUT, help="where the model is exported")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "roundtrip.md")
    args = parser.parse_args(argv)

    src = args.models / f"synthetic-{args.nodes}.onnx"
    if not src.exists():
        models.build([f"synthetic-{args.nodes}"], [], args.models)
    rows: dict[str, dict[str, float | str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for tool in progress.track(TOOLS, "benchmark: round trips"):
            runs, error = [], ""
            for _ in range(args.repeat):
                r = common.run_child(__file__, [tool, str(src), str(Path(tmp) / f"{tool}.onnx")], args.timeout)
                if "error" in r:
                    error = r["error"]
                    break
                runs.append(r)
            if error:
                rows[tool] = {"error": error}
            else:
                rows[tool] = {"seconds": common.median([r["seconds"] for r in runs]),
                              "rss_mb": max(r["rss_mb"] for r in runs), "nodes": runs[0]["nodes"]}
            print(tool, rows[tool], flush=True)
    text = render(rows, src, args.repeat)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


def render(rows: dict[str, dict[str, float | str]], src: Path, repeat: int) -> str:
    base = rows["onnx"].get("seconds")
    size = src.stat().st_size / 1e6
    lines = [
        "# Round trip: load + save",
        "",
        f"`python benchmarks/roundtrip.py` on `{src.name}` ({rows['onnx'].get('nodes', '?')} nodes, {size:.1f} MB),",
        f"the synthetic conv-bn-relu + 1x1 branches + concat model. Each run is a fresh process; the",
        f"time covers the load and the save only (imports excluded); median of {repeat} runs. Target:",
        f"optgraph <= {TARGET_RATIO:g}x onnx.load + onnx.save.",
        "",
        common.machine_header(PACKAGES).rstrip(),
        "",
        "| tool | what runs | seconds | vs onnx | peak RSS (MB) |",
        "|---|---|---:|---:|---:|",
    ]
    for tool, (what, _) in TOOLS.items():
        r = rows[tool]
        if "error" in r:
            lines.append(f"| {tool} | {what} | {r['error']} | | |")
            continue
        ratio = f"{r['seconds'] / base:.2f}x" if isinstance(base, float) else "?"
        lines.append(f"| {tool} | {what} | {r['seconds']:.2f} | {ratio} | {r['rss_mb']:.0f} |")
    og, ox = rows["optgraph"].get("seconds"), base
    if isinstance(og, float) and isinstance(ox, float):
        verdict = "meets" if og <= TARGET_RATIO * ox else "misses"
        lines += ["", f"optgraph {verdict} the target: {og / ox:.2f}x onnx.load + onnx.save."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
