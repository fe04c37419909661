"""Reduced-precision passes: precision written into the graph, where TensorRT (strongly typed
since TensorRT 11) and other runtimes read it."""
