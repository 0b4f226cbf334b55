"""gradpack.bench: benchmarks of the kernels and end-to-end runs, with results files."""
