"""The built-in passes and groups. Importing a pass module registers its passes."""

from optgraph.passes import dce, fuse_conv_act, fuse_conv_bn  # noqa: F401
from optgraph.passes.registry import register_group

register_group("dce", ["remove-dead"], "Remove dead nodes, no-ops and unused constants")
register_group("fuse", ["fuse-conv-bn", "fuse-conv-act"], "Fuse layers: conv+bn+activation, parallel branches, concats")
register_group("default", ["dce"], "The standard optimization pipeline", fixed_point=True)
