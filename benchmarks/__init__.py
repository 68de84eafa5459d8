"""The benchmarks: bench.py (every part, one report), soak.py (memory over a long run), engine_run.py (one engine
in its own process). The parts live in parts/, one module each; broker, processes and statistics in harness/."""
