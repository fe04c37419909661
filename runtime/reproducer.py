"""Crash reproducers: when a pass fails, ``optgraph run --reproducer DIR`` saves the input model
and the pipeline that failed, so the failure reruns with one command (``DIR/README.txt``)."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil

from optgraph.passes.base import Pass


def pass_spec(p: Pass) -> str:
    """The pipeline item that makes this pass again: its name and its non-default options."""
    given = {f.name: getattr(p.options, f.name) for f in dataclasses.fields(p.options)
             if getattr(p.options, f.name) != _default(f)}
    body = ",".join(f"{k}={_text(v)}" for k, v in given.items())
    return f"{type(p).name}{{{body}}}" if body else type(p).name


def _default(f: dataclasses.Field) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING


def _text(v: object) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (tuple, list, frozenset)):
        return ";".join(map(str, v))
    return str(v)


def save(folder: str, model_path: str, pipeline: str, failed: Pass, error: BaseException) -> None:
    """Write ``model.onnx`` (the input, byte for byte), ``pipeline.txt`` and ``reproducer.json``."""
    os.makedirs(folder, exist_ok=True)
    shutil.copyfile(model_path, os.path.join(folder, "model.onnx"))
    with open(os.path.join(folder, "pipeline.txt"), "w") as f:
        f.write(pipeline + "\n")
    model = shlex.quote(os.path.join(folder, "model.onnx"))
    command = f"optgraph run {model} -o /tmp/out.onnx --passes {shlex.quote(pipeline)} --debug"
    info = {"pipeline": pipeline, "failed_pass": pass_spec(failed), "error": f"{type(error).__name__}: {error}",
            "command": command}
    with open(os.path.join(folder, "reproducer.json"), "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    with open(os.path.join(folder, "README.txt"), "w") as f:
        f.write(f"Pass '{pass_spec(failed)}' failed: {info['error']}\nRerun: {command}\n")
