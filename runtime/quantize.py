"""``optgraph quantize``: optimize, calibrate on real data, insert INT8 Q/DQ (``quantize-int8``)
and write the model; ``--check`` compares it with the original on the calibration data."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy as np

from optgraph import ir


class QuantizeCommandError(ir.OptGraphError):
    """Bad arguments to ``optgraph quantize``."""


def _check(original: Any, quantized: Any, data: Any) -> str:
    """Top-1 agreement (for outputs with a class axis) and max abs error of the first output."""
    from optgraph.passes.precision.calibration import fixed_batch, split
    from optgraph.passes.testing.oracle import make_session
    a, b = make_session(original), make_session(quantized)
    names = [i.name for i in a.get_inputs()]
    step = fixed_batch(a)
    agree = total = 0
    err = 0.0
    for whole in data():
        for feed in split(whole, step) if step else [whole]:
            ra = a.run(None, {n: feed[n] for n in names})[0]
            rb = b.run(None, {n: feed[n] for n in names})[0]
            err = max(err, float(np.abs(ra.astype(np.float64) - rb).max()) if ra.size else 0.0)
            if ra.ndim == 2 and ra.shape[1] > 1:
                agree += int((ra.argmax(1) == rb.argmax(1)).sum())
                total += len(ra)
    top1 = f"top-1 agreement {100.0 * agree / total:.2f}% of {total}, " if total else ""
    return f"check: {top1}max abs error {err:.4g}"


def cmd_quantize(args: argparse.Namespace) -> int:
    from optgraph.passes import PassManager, parse_pipeline
    from optgraph.passes.base import PassContext
    from optgraph.passes.precision import calibration, quantize

    if not os.path.exists(args.model):
        raise QuantizeCommandError(f"'{args.model}' does not exist")
    if not args.calib and not (args.cache and os.path.exists(args.cache)):
        raise calibration.CalibrationError("quantize needs --calib DATA (or an existing --cache): INT8 scales "
                                           "from random data would be arbitrary")
    original = ir.to_proto(ir.load(args.model))
    model = ir.load(args.model)
    if args.passes != "none":
        PassManager(parse_pipeline(args.passes)).run(model)
    optimized = ir.to_proto(model)
    inputs = [v.name for v in model.graph.inputs if v.const is None]
    data = None
    if args.calib:
        data = calibration.limit(calibration.source(args.calib, inputs, batch=args.batch), args.samples)
    if args.cache and os.path.exists(args.cache):
        table = calibration.load_cache(args.cache, args.method)
    else:
        assert data is not None
        stats = calibration.collect(optimized, data, names=quantize.calibrated_tensors(model))
        table = calibration.ranges(stats, args.method, percentile=args.percentile)
        if args.cache:
            calibration.save_cache(args.cache, args.method, table)
    ctx = PassContext()
    ctx.ranges = table
    spec = "quantize-int8" + (f"{{exclude={args.exclude}}}" if args.exclude else "")
    if args.fp16_rest:
        spec += ",fp16"
    report = PassManager(parse_pipeline(spec), ctx=ctx).run(model)
    ir.save(model, args.output)
    totals = report.totals()
    print(f"quantize: {totals.get('layers_quantized', 0)} layers, {totals.get('weights_quantized', 0)} weights, "
          f"{totals.get('activations_quantized', 0)} activations quantized ({args.method}); wrote {args.output}",
          file=sys.stderr)
    if args.check:
        if data is None:
            raise QuantizeCommandError("--check needs --calib DATA")
        print(_check(original, ir.to_proto(model), data), file=sys.stderr)
    return 0


def add_command(sub: Any) -> None:
    from optgraph.passes.precision.calibration import METHODS

    p = sub.add_parser("quantize", help="INT8 explicit quantization (Q/DQ) calibrated on real data")
    p.add_argument("model", help="the ONNX model")
    p.add_argument("-o", "--output", required=True, help="where to write the quantized model")
    p.add_argument("--calib", metavar="DATA",
                   help=".npz (arrays by input name), folder of .npy/.npz or images, or module:function")
    p.add_argument("--method", choices=METHODS, default="mse", help="how ranges are chosen (default: mse)")
    p.add_argument("--percentile", type=float, default=99.99, help="for --method percentile")
    p.add_argument("--samples", type=int, metavar="N", help="calibrate on the first N samples")
    p.add_argument("--batch", type=int, default=16, help="calibration batch size for .npz and images")
    p.add_argument("--cache", metavar="FILE", help="calibration cache JSON: reused when present, else written")
    p.add_argument("--exclude", metavar="NODE_REGEX", help="nodes (by name, re.search) left in float")
    p.add_argument("--fp16-rest", action="store_true", help="run the fp16 pass on what stays float")
    p.add_argument("--passes", default="default", help="pipeline to run first (default: default; 'none')")
    p.add_argument("--check", action="store_true", help="compare with the original on the calibration data")
    p.set_defaults(func=cmd_quantize)
