"""What pass authors test with: random-graph strategies, model builders and the equivalence oracle.

    from hypothesis import given
    from optgraph.passes.testing import check_pass, models

    @given(models())
    def test_my_pass_keeps_results(model):
        check_pass("my-pass", model)
"""

from optgraph.passes.testing.check import check_pass
from optgraph.passes.testing.mutants import assert_idempotent, assert_mutant_caught
from optgraph.passes.testing.strategies import MOTIFS, OPS, GraphBuilder, NotApplicable, models
from optgraph.passes.testing.oracle import Comparison, assert_equivalent, compare, random_inputs

__all__ = [
    "MOTIFS", "OPS", "Comparison", "GraphBuilder", "NotApplicable", "assert_equivalent", "assert_idempotent",
    "assert_mutant_caught", "check_pass", "compare", "models", "random_inputs",
]
