"""Calibration: per-tensor activation statistics from real data, and the ranges INT8 and the
data-driven fp16 mode derive from them.

Statistics come from onnxruntime running a copy of the model whose float intermediate tensors (all
of them, or the ones the caller names: the inputs quantize-int8 will read) are graph outputs,
batch by batch; only per-tensor aggregates are kept (max |x| and a histogram of |x|), so memory is
tensors x bins whatever the number of samples.

One pass, and identical statistics for any batch split of the same samples: the histogram grid is
a power of two wide (``GRID`` bins of width 2**e, e the smallest that holds the running max), so
|x| * 2**-e is exact and an element's bin depends only on its value and e. When a batch raises the
max, e grows and adjacent bins merge in groups of 2**k, which is exactly the histogram the new grid
would have counted. The final grid therefore depends only on the overall max, and the data spans
at least ``GRID / 2`` = 2048 of its bins.

Methods, all from the same histogram (ranges are symmetric: one threshold ``t``, scale ``t/127``):
``minmax`` (t = max |x|), ``percentile`` (the bin edge below which ``percentile`` % of |x| lie),
``entropy`` (TensorRT's KL-divergence search over 128-level quantizations of the histogram head,
on the histogram resampled to TensorRT's 2048 bins over [0, max |x|]),
``mse`` (the threshold with the least expected squared int8 error), ``auto`` (per tensor, whichever
of the others has the least expected squared error).
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from optgraph import ir
from optgraph.ir import progress
from optgraph.ir.serde import write_atomic

GRID = 4096  # histogram bins on the power-of-two grid; the data spans at least half of them
ENTROPY_BINS = 2048  # TensorRT's entropy calibration histogram: 2048 bins on [0, max |x|]
OUTPUT_BUDGET = 256 << 20  # bytes of exposed tensors per onnxruntime run
METHODS = ("minmax", "percentile", "entropy", "mse", "auto")
Feed = dict[str, np.ndarray]


class CalibrationError(ir.OptGraphError):
    """Calibration data missing, unreadable or not matching the model."""


# --- data -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageOptions:
    """How a folder of images becomes one input: resized to ``size`` (H, W), scaled to [0, 1],
    normalized by ``mean``/``std`` per channel, in ``channels`` order and ``layout``."""

    size: tuple[int, int] = (224, 224)
    layout: str = "NCHW"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    channels: str = "RGB"


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}


def _batches(arrays: Mapping[str, np.ndarray], batch: int) -> Iterator[Feed]:
    n = min(len(a) for a in arrays.values())
    for i in range(0, n, batch):
        yield {k: a[i:i + batch] for k, a in arrays.items()}


def _npz(path: Path, inputs: Sequence[str]) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        missing = [n for n in inputs if n not in data.files]
        if missing:
            raise CalibrationError(f"{path}: no array for input(s) {', '.join(missing)} (has {', '.join(data.files)})")
        return {n: data[n] for n in inputs}


def _image(path: Path, opt: ImageOptions) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as im:
        rgb = im.convert("RGB").resize((opt.size[1], opt.size[0]), Image.BILINEAR)
    x = np.asarray(rgb, dtype=np.float32) / 255.0
    x = (x - np.asarray(opt.mean, np.float32)) / np.asarray(opt.std, np.float32)
    if opt.channels == "BGR":
        x = x[..., ::-1]
    return np.ascontiguousarray(x.transpose(2, 0, 1) if opt.layout == "NCHW" else x)


def source(spec: str, inputs: Sequence[str], *, batch: int = 16, images: ImageOptions | None = None
           ) -> Callable[[], Iterable[Feed]]:
    """A re-iterable calibration data source from ``spec``: a ``.npz`` (arrays keyed by input name,
    samples on the first axis), a folder of ``.npy``/``.npz`` files (one batch each; ``.npy`` only
    for single-input models), a folder of images (single-input models), or ``module:function``
    returning an iterable of feed dicts."""
    path = Path(spec)
    if path.is_file() and path.suffix == ".npz":
        return lambda: _batches(_npz(path, inputs), batch)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        arrays = [p for p in files if p.suffix in (".npy", ".npz")]
        pictures = [p for p in files if p.suffix.lower() in _IMAGE_SUFFIXES]
        if arrays:
            if any(p.suffix == ".npy" for p in arrays) and len(inputs) != 1:
                raise CalibrationError(f"{spec}: .npy files need a single-input model (this one has {len(inputs)})")
            return lambda: ({inputs[0]: np.load(p)} if p.suffix == ".npy" else _npz(p, inputs) for p in arrays)
        if pictures:
            if len(inputs) != 1:
                raise CalibrationError(f"{spec}: images need a single-input model (this one has {len(inputs)})")
            opt = images or ImageOptions()
            return lambda: ({inputs[0]: np.stack([_image(p, opt) for p in pictures[i:i + batch]])}
                            for i in range(0, len(pictures), batch))
        raise CalibrationError(f"{spec}: no .npy, .npz or image files in the folder")
    if ":" in spec and not path.exists():
        module, _, name = spec.partition(":")
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise CalibrationError(f"{spec}: cannot load the data function ({e})") from None
        return lambda: fn()
    if not path.exists():
        raise CalibrationError(f"{spec}: calibration data does not exist")
    raise CalibrationError(f"{spec}: not a .npz file, a folder or module:function")


def limit(data: Callable[[], Iterable[Feed]], samples: int | None) -> Callable[[], Iterable[Feed]]:
    """``data`` cut to its first ``samples`` samples (all of them when None)."""
    if samples is None:
        return data

    def cut() -> Iterator[Feed]:
        left = samples
        for feed in data():
            if left <= 0:
                return
            n = min(len(a) for a in feed.values())
            yield {k: a[:left] for k, a in feed.items()} if n > left else feed
            left -= n
    return cut


# --- statistics -----------------------------------------------------------------------------
@dataclass
class Stats:
    """Per-tensor max |x| and histogram of |x| in bins of ``width`` (from 0 to the bin holding max |x|)."""

    amax: dict[str, float] = field(default_factory=dict)
    hist: dict[str, np.ndarray] = field(default_factory=dict)
    width: dict[str, float] = field(default_factory=dict)
    memo: dict[tuple[str, str, float], float] = field(default_factory=dict, repr=False)  # thresholds found


def _float_tensors(model: onnx.ModelProto) -> list[str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    floats = {v.name for v in (*g.input, *g.value_info, *g.output) if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    inits = {t.name for t in g.initializer}
    seen: list[str] = []
    for v in g.input:
        if v.name in floats and v.name not in inits:
            seen.append(v.name)
    for node in g.node:
        seen.extend(o for o in node.output if o in floats and o not in seen)
    return seen


def _session(model: onnx.ModelProto, names: Sequence[str]):  # type: ignore[no-untyped-def]
    import onnxruntime as ort
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                              for n in names if n not in have)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _exponent(top: float) -> int:
    """The smallest e with top < GRID * 2**e (exact: from the float's own exponent)."""
    return int(np.frexp(np.float32(top))[1]) - int(np.log2(GRID))


class _Histogram:
    """One tensor's |x| counts on the power-of-two grid, merged exactly when the max grows."""

    __slots__ = ("counts", "exp", "top")

    def __init__(self) -> None:
        self.counts = np.zeros(GRID, np.int64)
        self.exp: int | None = None
        self.top = 0.0

    def add(self, a: np.ndarray) -> None:
        x = np.abs(a.reshape(-1).astype(np.float32, copy=False))
        top = float(x.max()) if x.size else 0.0
        if not np.isfinite(top):
            x = x[np.isfinite(x)]  # inf and nan have no bin
            top = float(x.max()) if x.size else 0.0
        if top == 0.0:
            self.counts[0] += x.size  # zeros are bin 0 on any grid
            return
        self.top = max(self.top, top)
        exp = _exponent(self.top)
        if self.exp is not None and exp > self.exp:
            k = exp - self.exp
            merged = np.zeros(GRID, np.int64)
            if (1 << k) < GRID:
                merged[:GRID >> k] = self.counts.reshape(-1, 1 << k).sum(axis=1)
            else:
                merged[0] = self.counts.sum()
            self.counts = merged
        self.exp = exp if self.exp is None else max(self.exp, exp)
        np.multiply(x, np.float32(2.0 ** -self.exp), out=x)  # exact: a power of two
        self.counts += np.bincount(x.astype(np.intp), minlength=GRID)


def fixed_batch(session: Any) -> int | None:
    """The batch an onnxruntime session's inputs fix (exported models: 1), None when it is free."""
    fixed = [i.shape[0] for i in session.get_inputs() if i.shape and isinstance(i.shape[0], int)]
    return min(fixed) if fixed else None


def split(feed: Feed, size: int) -> Iterator[Feed]:
    """``feed`` in slices of ``size`` samples (arrays without a sample axis are passed whole)."""
    total = min((len(a) for a in feed.values() if np.ndim(a)), default=0)
    for start in range(0, max(total, 1), size):
        yield {n: a[start:start + size] if np.ndim(a) else a for n, a in feed.items()}


def collect(model: onnx.ModelProto, data: Callable[[], Iterable[Feed]], *, histograms: bool = True,
            names: Sequence[str] | None = None) -> Stats:
    """Statistics of the float tensors of ``model`` (graph inputs and node outputs; only ``names``
    when given) on ``data``, in one pass."""
    floats = _float_tensors(model)
    if names is not None:
        wanted = set(names)
        floats = [n for n in floats if n in wanted]
    session = _session(model, floats)
    inputs = [i.name for i in session.get_inputs()]
    # Batches are run in slices: of the model's batch when it is fixed (exported models: 1), else
    # of as many samples as keep the exposed outputs within OUTPUT_BUDGET (measured on one sample).
    fixed = fixed_batch(session)
    per_sample = 0
    hists = {n: _Histogram() for n in floats}
    count = 0
    for feed in progress.track(data(), "calibration (batches)"):
        count += 1
        missing = [n for n in inputs if n not in feed]
        if missing:
            raise CalibrationError(f"calibration data has no array for input(s) {', '.join(missing)}")
        arrays = {n: np.asarray(feed[n]) for n in inputs}
        total = min((len(a) for a in arrays.values() if a.ndim), default=0)
        start = 0
        while True:
            step = fixed or (max(1, OUTPUT_BUDGET // per_sample) if per_sample else 1)
            part = slice(start, start + step) if total else slice(None)
            try:
                outs = session.run(floats, {n: a[part] if a.ndim else a for n, a in arrays.items()})
            except Exception as e:  # onnxruntime raises its own types for bad shapes and dtypes
                raise CalibrationError(f"calibration data does not fit the model: {str(e).splitlines()[0]}") from None
            if total and not per_sample:
                per_sample = max(1, sum(a.nbytes for a in outs) // max(1, min(step, total - start)))
            for n, a in zip(floats, outs):
                if not a.size:
                    continue
                if histograms:
                    hists[n].add(a)
                else:
                    hists[n].top = max(hists[n].top, float(np.abs(a).max()))
            del outs
            start += step
            if start >= total:
                break
    if not count:
        raise CalibrationError("calibration data is empty")
    stats = Stats(amax={n: h.top for n, h in hists.items()})
    if histograms:
        for n, h in hists.items():
            if h.exp is not None and h.top > 0:
                width = 2.0 ** h.exp
                stats.hist[n] = h.counts[:int(np.floor(h.top / width)) + 1].copy()
                stats.width[n] = width
    return stats


def max_abs(model: onnx.ModelProto, data: Callable[[], Iterable[Feed]]) -> dict[str, float]:
    """Max |x| per float tensor on ``data`` (no histograms): the ranges the data-driven fp16 mode
    compares with its margin (``PassContext.ranges``)."""
    return collect(model, data, histograms=False).amax


# --- ranges ---------------------------------------------------------------------------------
def _sq_error(hist: np.ndarray, width: float, thresholds: np.ndarray) -> np.ndarray:
    """Expected squared int8 error (per sample, bin centres standing for their bin) for each threshold."""
    x = (np.arange(len(hist)) + 0.5) * width
    scale = thresholds[:, None] / 127.0
    q = np.minimum(np.round(x[None, :] / scale), 127.0) * scale
    return ((x[None, :] - q) ** 2 * hist[None, :]).sum(axis=1) / max(hist.sum(), 1)


def _percentile(hist: np.ndarray, width: float, pct: float) -> float:
    cum = np.cumsum(hist)
    i = int(np.searchsorted(cum, cum[-1] * pct / 100.0))
    return min(i + 1, len(hist)) * width


def _xlogx(x: np.ndarray) -> np.ndarray:
    return x * np.log(np.where(x > 0, x, 1.0))


def _entropy(hist: np.ndarray, width: float, levels: int = 128) -> float:
    """TensorRT's entropy calibration: the threshold whose ``levels``-level quantization of the
    clipped histogram (outliers folded into the last bin, empty quantized bins smoothed) has the
    least KL divergence from it. Every candidate length i is scored at once from cumulative sums
    (O(levels) each) rather than by building both distributions."""
    h = hist.astype(np.float64)
    total = h.sum()
    if total == 0:
        return len(h) * width
    n = len(h)
    ch, cnz, chl = (np.concatenate([[0.0], np.cumsum(a)]) for a in (h, (h != 0).astype(np.float64), _xlogx(h)))
    i = np.arange(levels, n + 1)
    tail = total - ch[i]
    last = h[i - 1] + tail  # the clipped distribution's last bin
    starts = (np.arange(levels + 1)[None, :] * i[:, None] + levels - 1) // levels  # group k: bins starts[k]..starts[k+1]
    mass = ch[starts[:, 1:]] - ch[starts[:, :-1]]
    filled = cnz[starts[:, 1:]] - cnz[starts[:, :-1]]
    filled[:, -1] += (last != 0).astype(np.float64) - (h[i - 1] != 0)
    p_mass = mass.copy()
    p_mass[:, -1] += tail
    q_sum = np.maximum(ch[i], 1e-300)
    q = np.where(mass > 0, mass / np.maximum(filled, 1) / q_sum[:, None], 1e-4)  # smoothing, as TensorRT
    plogp = (chl[i - 1] + _xlogx(last)) / total - np.log(total)
    plogq = (np.where(p_mass > 0, p_mass * np.log(q), 0.0)).sum(axis=1) / total
    best = int(np.argmin(plogp - plogq))
    return (i[best] + 0.5) * width if i[best] < n else n * width


def _resample(hist: np.ndarray, width: float, top: float, bins: int) -> tuple[np.ndarray, float]:
    """``hist`` as ``bins`` equal bins on [0, top] (counts split in proportion within a bin)."""
    cum = np.concatenate([[0.0], np.cumsum(hist, dtype=np.float64)])
    edges = np.linspace(0.0, top, bins + 1) / width
    return np.diff(np.interp(edges, np.arange(len(hist) + 1), cum)), top / bins


def _mse(hist: np.ndarray, width: float) -> float:
    candidates = np.arange(16, len(hist) + 1, max(8, len(hist) // 256)) * width  # ~256 thresholds
    return float(candidates[int(np.argmin(_sq_error(hist, width, candidates)))])


def _pick(stats: Stats, name: str, method: str, percentile: float) -> float:
    """One tensor's threshold by percentile, entropy or mse (remembered: auto reuses it), at most
    max |x| (the last bin reaches past it)."""
    key = (name, method, percentile)
    if key not in stats.memo:
        hist, width = stats.hist[name], stats.width[name]
        t = (_percentile(hist, width, percentile) if method == "percentile"
             else _entropy(*_resample(hist, width, stats.amax[name], ENTROPY_BINS)) if method == "entropy"
             else _mse(hist, width))
        stats.memo[key] = min(stats.amax[name], float(t))
    return stats.memo[key]


def ranges(stats: Stats, method: str = "entropy", *, percentile: float = 99.99) -> dict[str, float]:
    """The symmetric threshold of every tensor by ``method`` (one of ``METHODS``)."""
    if method not in METHODS:
        raise CalibrationError(f"unknown calibration method {method!r} (one of {', '.join(METHODS)})")
    out: dict[str, float] = {}
    for name, top in stats.amax.items():
        if top <= 0 or name not in stats.hist or method == "minmax":
            out[name] = top
        elif method == "auto":
            cands = np.array([top, *(_pick(stats, name, m, percentile) for m in ("percentile", "entropy", "mse"))])
            out[name] = float(cands[int(np.argmin(_sq_error(stats.hist[name], stats.width[name], cands)))])
        else:
            out[name] = _pick(stats, name, method, percentile)
    return out


# --- cache ----------------------------------------------------------------------------------
def save_cache(path: str | os.PathLike[str], method: str, table: Mapping[str, float]) -> None:
    """Write the ranges as JSON (sorted, so the same ranges give the same bytes)."""
    text = json.dumps({"method": method, "ranges": dict(sorted(table.items()))}, indent=1) + "\n"
    write_atomic(os.fspath(path), text.encode())


def load_cache(path: str | os.PathLike[str], method: str) -> dict[str, float]:
    """The ranges of a cache written by ``save_cache`` with the same ``method``."""
    try:
        data = json.loads(Path(path).read_text())
        if data["method"] != method:
            raise CalibrationError(f"{path}: cache was made with method {data['method']!r}, not {method!r}")
        return {str(k): float(v) for k, v in data["ranges"].items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CalibrationError(f"{path}: unreadable calibration cache ({e})") from None
