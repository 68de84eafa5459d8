"""One harness for the tests, the benchmarks and the demo: a local broker, topics and offsets, test
clients, worker processes, HTTP probes, one percentile, tiny models. No pytest here (the benchmarks use it)."""
