"""Benchmarks: ``python -m benchmarks [NAME...]`` (``make bench``).

Each ``benchmarks/bench_*.py`` module has ``main()``; it measures a figure and
a baseline in the same run and prints both with their ratio, so the numbers
hold on a noisy, shared machine where absolute times do not.
"""
