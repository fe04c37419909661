"""The built-in passes and groups. Importing a pass module registers its passes."""

from optgraph.passes import dce, fuse_conv_act, fuse_conv_bn  # noqa: F401
from optgraph.passes import cse, fold, noops, shapes, tensorrt_ready  # noqa: F401
from optgraph.passes import memory_plan  # noqa: F401  (the plan-memory analysis; in no group)
from optgraph.passes.registry import register_group

register_group("dce", ["remove-noops", "remove-dead"], "Remove dead nodes, no-ops and unused constants")
register_group("fuse", ["fuse-conv-bn", "fuse-conv-act"], "Fuse layers: conv+bn+activation, parallel branches, concats")
# The order and why: docs/pipeline.md. Shapes first (the others read them), folding before the
# no-op checks (they need constant operands), CSE after both (they expose duplicates), fusion on
# the simplified graph, dead code last; repeated until an iteration changes nothing.
register_group("default", ["infer-shapes", "fold-constants", "remove-noops", "cse", "tensorrt-ready", "fuse",
                           "remove-dead"], "The standard optimization pipeline: the smallest equivalent graph",
               fixed_point=True)
