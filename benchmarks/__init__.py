"""Benchmarks for imserver: ``python -m benchmarks SCENARIO [options]``.

See ``benchmarks/README.md`` for the scenarios, how to reproduce the numbers
and the latest measured results.
"""
