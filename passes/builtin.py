"""The built-in passes and groups. Importing a pass module registers its passes."""

from optgraph.passes import shapes  # noqa: F401
from optgraph.passes.cleanup import cse, dce, fold, layout, merge_slices, noops, tensorrt_ready  # noqa: F401
from optgraph.passes.fuse import concat, fuse_branch_pairs, fuse_conv_act, fuse_conv_bn, fuse_conv_sum  # noqa: F401
from optgraph.passes.fuse import fuse_horizontal, fuse_pad, fuse_scale  # noqa: F401
from optgraph.passes.memory import plan  # noqa: F401  (the plan-memory analysis; in no group)
from optgraph.passes.precision import fp16  # noqa: F401  (fp16, bf16; in no group)
from optgraph.passes.precision import quantize  # noqa: F401  (quantize-int8: needs calibration; in no group)
from optgraph.passes.registry import register_group

register_group("dce", ["remove-noops", "remove-dead"], "Remove dead nodes, no-ops and unused constants")
# Zero pads into convs and BN folding first (they leave plain convs for the others), scalar Muls
# into the layer they feed next (GELU's 0.5), summed parallel convs (RepVGG) next, branch pairs
# before horizontal fusion (which would take their first convs into a Split), horizontal fusion
# after them (it can leave single-input Concats behind), the conv+activation units last (they
# hide the Conv from the others). Horizontal fusion only where no Split is needed: TensorRT fuses
# same-input layers itself, and a Split costs a copy kernel per branch (ResNet-50 58 -> 59 engine
# layers, YOLO11n 127 -> 130); `fuse-horizontal{split=true}` or `optgraph tune` asks for it.
# Chains of data-movement ops (Reshape/Transpose, Slice of Slice) are fused into one op first:
# they stand between the layers the other fusions match (GPT-2's Reshape -> Gemm -> Reshape).
LAYOUT = ["simplify-layout", "merge-slices"]
FUSE = [*LAYOUT, "fuse-pad-conv", "fuse-conv-bn", "fuse-input-scale", "fuse-conv-sum", "fuse-branch-pairs",
        "fuse-horizontal{split=false}", "eliminate-concat", "fuse-conv-act"]
register_group("fuse", FUSE, "Fuse layers: reshape/slice chains, conv+bn+activation, parallel branches, concats")
# The order and why: docs/pipeline.md. Shapes first (the others read them), folding before the
# no-op checks (they need constant operands), CSE after both (they expose duplicates), layout and
# TensorRT rewrites on the simplified graph, then fusion, dead code last; repeated until an
# iteration changes nothing. Conv+activation units are made once, after the loop: they hide the
# Conv from every rewrite that could still apply to it.
register_group("simplify", ["infer-shapes", "fold-constants", "remove-noops", "cse", *LAYOUT, "tensorrt-ready",
                            *[p for p in FUSE if p not in LAYOUT and p != "fuse-conv-act"], "remove-dead"],
               "Fold, clean up and fuse until nothing changes (default without the conv+activation units)",
               fixed_point=True)
register_group("default", ["simplify", "fuse-conv-act", "remove-dead"],
               "The standard optimization pipeline: the smallest equivalent graph, for TensorRT")
