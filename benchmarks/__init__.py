"""``make bench``: side-by-side measurements, written to benchmarks/results/."""
