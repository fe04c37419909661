"""Running models: the command line, the onnxruntime equivalence oracle, the TensorRT builder and
the memory-plan executor."""
