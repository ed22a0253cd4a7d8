"""CUDA micro-benchmarks of the custom ops; run as python -m benchmarks.bench_<op>."""
