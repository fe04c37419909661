"""What pass authors test with: random-graph strategies, model builders and the equivalence oracle."""
