"""Benchmarks of taskledger against baselines measured in the same run (`python -m bench.run`)."""
