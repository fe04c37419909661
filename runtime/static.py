"""Fixing input sizes: ``optgraph run --shape input:1x3x224x224`` and ``--dim batch=1 --static``.

The user's sizes replace the graph inputs' symbolic and unknown dimensions; every value of the
model whose dims use the same symbols gets the sizes too, and other symbolic dims of inner values
are forgotten so shape inference recomputes them from the now static inputs. The pipeline that
runs next (``fold-constants`` in ``default``) then folds what became constant: ``Shape`` ops,
the arithmetic on them, the ``Reshape``/``Expand`` targets they fed; afterwards graph outputs
whose dims no input named get the sizes inference finds. This changes the model's signature on
purpose, as onnxsim's input-shape override does; nothing else does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from optgraph import ir


class ShapeOptionError(ir.OptGraphError):
    """A --shape/--static request that does not fit the model (exit 2)."""


def parse_shape(text: str, flag: str = "--shape") -> tuple[str, tuple[int, ...]]:
    """``name:1x3x224x224`` -> (``name``, (1, 3, 224, 224)); the name may itself contain colons."""
    name, sep, dims = text.rpartition(":")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or any(d < 0 for d in shape):
        raise ShapeOptionError(f"{flag} expects NAME:DIMS such as input:1x3x224x224, got '{text}'")
    return name, shape


def make_static(model: ir.Model, shapes: Mapping[str, Sequence[int]], dims: Mapping[str, int], *,
                require_static: bool) -> dict[str, int]:
    """Give the graph inputs the sizes of ``shapes`` (by input) and ``dims`` (by dim_param).

    Returns every symbol -> size now fixed (``dims`` plus the symbols ``shapes`` replaced), for the
    oracle and the planner. With ``require_static`` every graph input must end up fully static.
    """
    inputs = {v.name: v for v in model.graph.inputs if v.const is None}
    unknown = sorted(set(shapes) - set(inputs))
    if unknown:
        raise ShapeOptionError(f"--shape names no graph input: {', '.join(unknown)} "
                               f"(inputs: {', '.join(inputs) or 'none'})")
    fixed = dict(dims)
    for name, shape in shapes.items():
        declared = inputs[name].shape
        if declared is not None and len(declared) != len(shape):
            raise ShapeOptionError(f"--shape {name}: rank {len(shape)}, but the input has rank {len(declared)}")
        for axis, (old, new) in enumerate(zip(declared or (None,) * len(shape), shape)):
            if isinstance(old, int) and old != new:
                raise ShapeOptionError(f"--shape {name}: dim {axis} is {old} in the model, not {new}")
            if isinstance(old, str):
                if fixed.setdefault(old, new) != new:
                    raise ShapeOptionError(f"--shape {name}: dim {axis} ('{old}') is given as both "
                                           f"{fixed[old]} and {new}")
    for name, v in inputs.items():
        if name in shapes:
            v.shape = tuple(shapes[name])
        elif v.shape is not None:
            v.shape = tuple(fixed.get(d, d) if isinstance(d, str) else d for d in v.shape)
        if require_static and (v.shape is None or not all(isinstance(d, int) for d in v.shape)):
            missing = "unknown rank" if v.shape is None else ", ".join(
                f"dim {i} ({d!r})" for i, d in enumerate(v.shape) if not isinstance(d, int))
            raise ShapeOptionError(f"--static: input '{name}' has no size for {missing}; "
                                   f"give --shape {name}:DIMS or --dim NAME=SIZE")
    for g in model.all_graphs(functions=False):
        interface = g is model.graph
        for v in [*g.outputs, *(o for n in g for o in n.outputs if o is not None)]:
            if v.shape is None or all(isinstance(d, int) for d in v.shape):
                continue
            keep_symbols = interface and v.is_graph_output  # outputs keep names no input fixes
            v.shape = tuple(fixed.get(d, d if keep_symbols else None) if isinstance(d, str) else d
                            for d in v.shape)
    return fixed


def fix_outputs(model: ir.Model) -> None:
    """Give graph outputs whose dims no input size named (``float[1, features]``) the sizes shape
    inference now finds. Graph outputs are the interface the passes never re-type, so this runs
    once, after the pipeline; a model onnx cannot infer (past 2 GB) keeps its output names."""
    import onnx

    pending = {v.name: v for v in model.graph.outputs
               if v.shape is not None and not all(isinstance(d, int) for d in v.shape)}
    if not pending:
        return
    proto = ir.to_proto(model)
    for vi in proto.graph.output:
        if vi.name in pending:
            vi.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is best effort here; the names stay
        return
    for vi in inferred.graph.output:
        v = pending.get(vi.name)
        dims = vi.type.tensor_type.shape.dim
        static = all(d.HasField("dim_value") for d in dims)
        if v is not None and v.shape is not None and len(dims) == len(v.shape) and static:
            v.shape = tuple(d.dim_value for d in dims)
