"""Benchmarks of hf_metric: each module is one measurement, run from the repository root as
`python -m bench.NAME` (e.g. `python -m bench.quality --help`); results and their commands go to
docs/benchmarks.md."""
