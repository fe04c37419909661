"""Cleanup passes: dead code, no-ops, common subexpressions, constant folding, layout chains and
the rewrites TensorRT needs before it imports a graph."""
