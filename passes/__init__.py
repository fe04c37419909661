"""Passes: the pass contract, the registry, the pass manager and the built-in passes.

Write a pass by subclassing Pass and decorating it with @register (see passes/cleanup/dce.py for a
short example); ship it in a plugin package through the ``optgraph.passes`` entry-point group.
"""

from optgraph.passes import builtin as _builtin  # noqa: F401  (registers the built-in passes)
from optgraph.passes.base import Analysis, Pass, PassContext, PassResult, counter
from optgraph.passes.manager import PassManager, PipelineError, Report, parse_pipeline, run_passes
from optgraph.passes.registry import get, groups, passes, register, register_group

__all__ = [
    "Analysis", "Pass", "PassContext", "PassManager", "PassResult", "PipelineError", "Report", "counter",
    "get", "groups", "parse_pipeline", "passes", "register", "register_group", "run_passes",
]
