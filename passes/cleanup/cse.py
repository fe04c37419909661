"""Common-subexpression elimination: identical nodes and equal constants become one.

Two nodes are the same computation when they have the same op (domain, type, overload), the same
inputs (in any order for commutative ops), the same attributes and the same outputs present. One
forward sweep in topological order merges every duplicate into its first occurrence: merging
rewires the duplicate's consumers, which come later in the sweep and so already see the merged
inputs when they are looked at. Random ops, ops of unknown domains (they may keep state) and
nodes holding subgraphs are never merged.

Initializers with the same dtype, shape and bytes merge the same way (contents are compared only
when two of them share a dtype and shape: small ones by their bytes, large ones by a hash of
sampled blocks, then of all bytes where samples collide, that equal bytes then confirm; large
data is read in chunks, so external weights are never loaded).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from optgraph import ir
from optgraph.ir.opset import COMMUTATIVE, RANDOM_OPS
from optgraph.passes.base import Pass, PassContext, PassResult, counter
from optgraph.passes.registry import register
from optgraph.passes.shapes import ShapeInference

_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})


def _hashable(value: Any) -> Any:
    """An attribute value as something hashable that is equal exactly when the values are."""
    if isinstance(value, ir.Tensor):
        return ("tensor", value.dtype, value.shape, value.numpy().tobytes())
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, float):
        return ("float", value.hex())  # -0.0 and 0.0 differ; NaN equals itself only by bits
    if hasattr(value, "SerializeToString"):
        return value.SerializeToString(deterministic=True)
    return value


def attr_key(node: ir.Node) -> tuple[Any, ...]:
    """The node's attributes in a comparable form (decoded only when a candidate match exists)."""
    return tuple(sorted((a.name, a.type, a.ref, _hashable(a.value)) for a in node.attrs.values()))


def _mergeable(node: ir.Node) -> bool:
    return node.domain in _DOMAINS and node.op_type not in RANDOM_OPS and not node.subgraphs()


def content(t: ir.Tensor) -> bytes:
    """What equal constants must share (the loaded raw data when there is one: no decoding)."""
    return t.tobytes()


_SMALL = 1024  # bytes


class _Digests:
    """Content hashes of constants, kept across a pipeline's iterations (the pass object lives
    that long); each entry holds its tensor so the id cannot be reused by another object.

    A sampled digest (a few KiB read) separates nearly all distinct weights; the full digest (read
    in chunks, never held) is computed only for those whose samples collide.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[int, bool], tuple[ir.Tensor, bytes]] = {}

    def of(self, t: ir.Tensor, *, full: bool) -> bytes:
        hit = self._cache.get((id(t), full))
        if hit is None:
            hit = (t, t.digest() if full else t.sampled_digest())
            self._cache[(id(t), full)] = hit
        return hit[1]

    def keys(self, tensors: list[ir.Tensor]) -> list[bytes]:
        sampled = [self.of(t, full=False) for t in tensors]
        seen = Counter(sampled)
        return [s if seen[s] == 1 else s + self.of(t, full=True) for s, t in zip(sampled, tensors)]


@register
class CommonSubexpressionElimination(Pass):
    name = "cse"
    description = "Merge nodes with the same op, attributes and inputs, and initializers with equal contents"
    preserves = frozenset({ShapeInference})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._digests = _Digests()

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        stats = counter()
        root = ir.Rewriter(model.graph)
        for graph in model.all_graphs():
            stats["initializers_merged"] += self._merge_initializers(root.on(graph))
            stats["nodes_merged"] += self._merge_nodes(root.on(graph))
        stats = +stats
        return PassResult(root.changed, stats)

    def _merge_initializers(self, rw: ir.Rewriter) -> int:
        graph = rw.graph
        by_type: dict[tuple[int, tuple[int, ...]], list[ir.Value]] = {}
        for v in graph.initializers.values():
            if not v.is_graph_input and v.const is not None:
                by_type.setdefault((v.const.dtype, v.const.shape), []).append(v)
        merged = 0
        for group in by_type.values():
            if len(group) < 2:
                continue
            # Small constants (most of them: biases, scales, shape vectors) are grouped by their
            # bytes, cheaper than a digest; large ones by cached digests, so their bytes are not
            # all held at once (nor read at all when a sample tells them apart).
            small = group[0].const.nbytes <= _SMALL  # type: ignore[union-attr]
            keys = [content(v.const) for v in group] if small else \
                self._digests.keys([v.const for v in group])  # type: ignore[misc]
            firsts: dict[bytes, list[ir.Value]] = {}
            for v, key in zip(group, keys):
                assert v.const is not None
                same = firsts.setdefault(key, [])
                kept = None
                if same and not v.is_graph_output:
                    kept = next((k for k in same if v.const.same_contents(k.const)), None)  # type: ignore[arg-type]
                if kept is None:
                    same.append(v)
                    continue
                rw.replace(v, kept)
                rw.remove_initializer(v)
                merged += 1
        return merged

    def _merge_nodes(self, rw: ir.Rewriter) -> int:
        seen: dict[tuple[Any, ...], list[ir.Node]] = {}
        merged = 0
        for node in rw.graph:
            if not _mergeable(node):
                continue
            inputs = [id(v) if v is not None else 0 for v in node.inputs]
            if node.op_type in COMMUTATIVE:
                inputs.sort()
            key = (node.domain, node.op_type, node.overload, tuple(inputs),
                   tuple(v is not None for v in node.outputs))
            bucket = seen.setdefault(key, [])
            kept = None
            if bucket:
                attrs = attr_key(node)
                kept = next((k for k in bucket if attr_key(k) == attrs), None)
            if kept is None or not _rewire(rw, node, kept):
                bucket.append(node)
                continue
            rw.remove(node)
            merged += 1
        return merged


def _rewire(rw: ir.Rewriter, dup: ir.Node, kept: ir.Node) -> bool:
    """Point ``dup``'s consumers at ``kept``'s outputs, unless a graph output would need an Identity."""
    pairs = [(d, k) for d, k in zip(dup.outputs, kept.outputs) if d is not None and k is not None]
    if not all(rw.is_free(d, k) for d, k in pairs):
        return False
    for d, k in pairs:
        rw.replace(d, k)
    return True
