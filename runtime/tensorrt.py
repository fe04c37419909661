"""TensorRT's view of a model: does its ONNX parser accept it, how many layers, how much memory.

Coded against the Python API that ``tensorrt`` and ``tensorrt_rtx`` share (``tensorrt`` first).
Engines are built ahead of time and never run: tensorrt-rtx builds on a machine without a GPU,
which is what lets the benchmarks and tests report TensorRT figures anywhere.

>>> from optgraph.runtime import tensorrt
>>> tensorrt.parse("model.onnx").num_layers
>>> r = tensorrt.build("model.onnx", dims={"batch": 8})
>>> r.ok, r.num_layers, r.activation_bytes, r.weights_bytes
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import time
import warnings as py_warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

from optgraph.ir.errors import OptGraphError

if TYPE_CHECKING:
    from optgraph.runtime.engine import EngineReport

ModelSource = str | os.PathLike[str] | bytes

class TensorRTUnavailableError(OptGraphError):
    """Neither ``tensorrt`` nor ``tensorrt_rtx`` can be imported."""


@functools.cache
def _load() -> ModuleType | None:
    for name in ("tensorrt", "tensorrt_rtx"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def available() -> bool:
    """Whether a TensorRT Python package is installed."""
    return _load() is not None


def trt() -> ModuleType:
    """The TensorRT module (``tensorrt`` or ``tensorrt_rtx``), or a one-line error saying what to install."""
    module = _load()
    if module is None:
        raise TensorRTUnavailableError("TensorRT is not installed: pip install tensorrt-rtx "
                                       "(builds engines without a GPU) or tensorrt")
    return module


def flavor() -> str:
    """``"tensorrt <version>"`` or ``"tensorrt_rtx <version>"``, for reports."""
    module = trt()
    return f"{module.__name__} {module.__version__}"


@dataclass
class ParseResult:
    """What TensorRT's ONNX parser made of a model; ``errors`` are one line per parser error."""

    ok: bool
    num_layers: int
    errors: list[str] = field(default_factory=list)


@dataclass
class BuildResult:
    """An ahead-of-time engine build. Memory figures are None when the build log did not report them."""

    ok: bool
    num_layers: int
    activation_bytes: int | None
    weights_bytes: int | None
    seconds: float
    engine_bytes: int | None = None
    errors: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    report: EngineReport | None = None  # the engine layer by layer (from the DETAILED build log)
    engine: bytes | None = None  # the serialized engine, when asked for
    warnings: list[str] = field(default_factory=list)


def _make_logger(module: ModuleType, lines: list[str], errors: list[str]) -> Any:
    class _Capture(module.ILogger):  # type: ignore[name-defined,misc]
        """Keeps every message: the memory totals only appear in the builder's log."""

        def __init__(self) -> None:
            module.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            lines.append(f"[{severity.name}] {msg}")
            if severity in (module.Logger.ERROR, module.Logger.INTERNAL_ERROR):
                errors.append(msg)

    return _Capture()


def _parser_errors(parser: Any) -> list[str]:
    out = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        where = f"{e.node_name()} [{e.node_operator()}]: " if e.node_name() or e.node_operator() else ""
        out.append(where + " | ".join(x.strip() for x in e.desc().splitlines() if x.strip()))
    return out


class _Session:
    """A builder, network and parser sharing one capturing logger (TensorRT wants them kept alive together)."""

    def __init__(self, source: ModelSource, *, strongly_typed: bool = False) -> None:
        self.trt = trt()
        self.lines: list[str] = []
        self.log_errors: list[str] = []
        self.logger = _make_logger(self.trt, self.lines, self.log_errors)
        self.builder = self.trt.Builder(self.logger)
        flags = 0
        if hasattr(self.trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT < 10 needs it
            flags = 1 << int(self.trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        if strongly_typed and hasattr(self.trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            flags |= 1 << int(self.trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        self.network = self.builder.create_network(flags)
        self.parser = self.trt.OnnxParser(self.network, self.logger)
        if isinstance(source, bytes):
            self.ok = bool(self.parser.parse(source))
        else:
            path = os.fspath(source)
            if not os.path.isfile(path):
                raise OptGraphError(f"cannot read '{path}': no such file")
            self.ok = bool(self.parser.parse_from_file(path))  # from the file: external data resolves
        self.errors = _parser_errors(self.parser) if not self.ok else []
        if not self.ok and not self.errors:
            self.errors = list(self.log_errors) or ["the ONNX parser failed without an error message"]


def parse(model: ModelSource) -> ParseResult:
    """Parse a model file (or serialized bytes without external data) with TensorRT's ONNX parser."""
    s = _Session(model)
    return ParseResult(s.ok, s.network.num_layers, s.errors)


Profile = Mapping[str, tuple[Sequence[int], Sequence[int], Sequence[int]]]  # input -> (min, opt, max)


class ShapeError(OptGraphError):
    """A dynamic input without a shape for the optimization profile."""


def _profile_shape(tensor: Any, shapes: Mapping[str, Sequence[int]], dims: Mapping[str, int],
                   strict: bool) -> tuple[int, ...]:
    if tensor.name in shapes:
        return tuple(shapes[tensor.name])
    out = []
    for i, d in enumerate(tensor.shape):
        if d >= 0:
            out.append(d)
            continue
        name = tensor.get_dimension_name(i) or ""
        if name in dims:
            out.append(dims[name])
        elif strict:
            what = f"dim '{name}'" if name else f"dim {i}"
            raise ShapeError(f"input '{tensor.name}' has a dynamic {what}: give --shapes {tensor.name}:DIMS, "
                             f"--min/--opt/--max {tensor.name}:DIMS" + (f" or --dim {name}=SIZE" if name else ""))
        else:
            out.append(1)
    return tuple(out)


def _timing_cache_key() -> bytes:
    return f"optgraph timing cache for {flavor()}\n".encode()


def build(model: ModelSource, *, shapes: Mapping[str, Sequence[int]] | None = None,
          dims: Mapping[str, int] | None = None, profiles: Sequence[Profile] = (),
          optimization_level: int | None = None, workspace_bytes: int | None = None,
          aux_streams: int | None = None, timing_cache: str | os.PathLike[str] | None = None,
          strongly_typed: bool = True, strict_shapes: bool = False, keep_log: bool = True,
          keep_engine: bool = False) -> BuildResult:
    """Build an engine ahead of time: its layer count, memory totals and DETAILED engine report.

    Dynamic inputs get one optimization profile per entry of ``profiles`` (input name -> min, opt,
    max); without any, a one-point profile: the shape in ``shapes`` (by input name), else each
    symbolic dim from ``dims`` (by dim_param name), else 1 (``strict_shapes``: an error instead).
    The network is strongly typed (the graph's Casts and Q/DQ decide each layer's precision).
    ``timing_cache`` is loaded when it exists and matches this TensorRT, and saved after the
    build; a cache from another TensorRT is a warning in ``warnings`` and is rebuilt.
    ``aux_streams`` caps the auxiliary streams TensorRT may run parallel branches on (None: its own
    heuristic); 0 runs every layer on one stream, which lets activations share memory.
    """
    from optgraph.runtime import engine as engine_report

    start = time.perf_counter()
    s = _Session(model, strongly_typed=strongly_typed)
    if not s.ok:
        return BuildResult(False, s.network.num_layers, None, None, time.perf_counter() - start,
                           errors=s.errors, log=s.lines if keep_log else [])
    config = s.builder.create_builder_config()
    config.profiling_verbosity = s.trt.ProfilingVerbosity.DETAILED
    if optimization_level is not None:
        config.builder_optimization_level = optimization_level
    if aux_streams is not None:
        config.max_aux_streams = aux_streams
    if workspace_bytes is not None:
        config.set_memory_pool_limit(s.trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    warnings: list[str] = []
    cache = _load_timing_cache(config, timing_cache, warnings) if timing_cache is not None else None
    inputs = [s.network.get_input(i) for i in range(s.network.num_inputs)]
    dynamic = [t for t in inputs if -1 in tuple(t.shape)]
    if dynamic:
        if not profiles:
            one = {t.name: (_profile_shape(t, shapes or {}, dims or {}, strict_shapes),) * 3 for t in dynamic}
            profiles = [one]
        for k, given in enumerate(profiles):
            missing = [t.name for t in dynamic if t.name not in given]
            if missing:
                raise ShapeError(f"profile {k + 1} has no shapes for dynamic input '{missing[0]}'")
            profile = s.builder.create_optimization_profile()
            for t in dynamic:
                lo, opt, hi = (tuple(x) for x in given[t.name])
                (profile.set_shape_input if t.is_shape_tensor else profile.set_shape)(t.name, lo, opt, hi)
            config.add_optimization_profile(profile)
    engine = s.builder.build_serialized_network(s.network, config)
    seconds = time.perf_counter() - start
    if engine is not None and timing_cache is not None:
        _save_timing_cache(config, cache, timing_cache)
    errors = list(s.log_errors)
    if engine is None and not errors:
        errors = ["the engine build failed without an error message"]
    report = engine_report.parse_build_log(s.lines)
    report.build_seconds, report.flavor = seconds, flavor()
    return BuildResult(engine is not None, s.network.num_layers, report.activation_bytes, report.weights_bytes,
                       seconds, engine_bytes=engine.nbytes if engine is not None else None,
                       errors=errors, log=s.lines if keep_log else [], report=report,
                       engine=bytes(engine) if engine is not None and keep_engine else None, warnings=warnings)


def _load_timing_cache(config: Any, path: str | os.PathLike[str], warnings: list[str]) -> Any:
    """The timing cache in ``path`` when it is this TensorRT's (TensorRT-RTX accepts the calls but
    tunes its kernels when the engine first runs, so its cache stays nearly empty)."""
    data = b""
    if os.path.isfile(path):
        with open(path, "rb") as f:
            blob = f.read()
        key = _timing_cache_key()
        if blob.startswith(key):
            data = blob[len(key):]
        else:
            warnings.append(f"timing cache '{os.fspath(path)}' is from another TensorRT; rebuilding it")
    with _no_deprecation_warnings():
        cache = config.create_timing_cache(data)
        if cache is None and data:
            warnings.append(f"timing cache '{os.fspath(path)}' is unreadable; rebuilding it")
            cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


@contextlib.contextmanager
def _no_deprecation_warnings() -> Iterator[None]:
    """TensorRT-RTX marks the timing-cache calls deprecated (they are no-ops there)."""
    with py_warnings.catch_warnings():
        py_warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _save_timing_cache(config: Any, cache: Any, path: str | os.PathLike[str]) -> None:
    from optgraph.ir.serde import write_atomic

    with _no_deprecation_warnings():
        blob = config.get_timing_cache().serialize()
    write_atomic(os.fspath(path), _timing_cache_key() + bytes(blob))
