"""``edgedfa bench``: training speed of the engine against PyTorch float32 (when installed),
the integer GEMM against onnxruntime, the emulator against the engine and the cold start,
measured in one run (docs/benchmarks.md holds its tables)."""
