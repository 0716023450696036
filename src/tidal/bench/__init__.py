"""tidal.bench: the benchmarks behind `tidal bench ...` (print figures; never asserted by tests)."""
