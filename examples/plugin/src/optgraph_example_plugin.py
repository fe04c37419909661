"""An optgraph plugin with one pass. Install it (pip install .) and `optgraph list` shows it."""

from __future__ import annotations

from optgraph import ir
from optgraph.passes import Pass, PassContext, PassResult, counter


class StripDocStrings(Pass):
    name = "strip-doc-strings"
    description = "Remove node doc_strings (exporters put Python stack traces there)"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        stats = counter()
        rw = ir.Rewriter(model.graph)  # every edit goes through a rewriter, which records it
        for graph in model.all_graphs():
            for node in graph:
                if node.doc_string:
                    rw.on(graph).set_doc_string(node, "")
                    stats["doc_strings_removed"] += 1
        return PassResult(rw.changed, stats)
