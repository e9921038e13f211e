"""Benchmarks printing JSON (bench/README.md); a package so that tests import its bookkeeping
(``from bench import protocol, spread``). Imports nothing: the PyTorch peer's interpreter loads parts of it."""
