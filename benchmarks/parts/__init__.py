"""The parts of ``make bench``, one module each (numbered as in benchmarks/README.md)."""
