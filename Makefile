# Two commands for a fresh machine:  `make run` (the worker) and `make test` (every test).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAND_IN := ../shared/models/koelectra-small-v3-nsmc-scratch

.PHONY: setup tools test unit run demo bench latency soak chaos broker-start broker-stop image-run image-stop clean

$(BIN)/worker: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $@

setup: $(BIN)/worker

tools:
	bash scripts/install-tools.sh
	bash deploy/kafka/kafka.sh fetch

# Every test: unit, deploy-file checks and integration tests against a real Apache Kafka
# (started by tests/conftest.py from deploy/kafka/, or $KAFKA_BOOTSTRAP_SERVERS if set).
test: setup tools
	$(BIN)/python -m pytest -v --durations=15 $(PYTEST_ARGS)

unit: setup
	$(BIN)/python -m pytest -q tests/unit $(PYTEST_ARGS)

# The worker itself. Without WORKER_BOOTSTRAP_SERVERS a local broker is started first; without
# WORKER_MODEL, machines that have the stand-in model beside the checkout use it, others the hub default.
run: setup tools
	@if [ -z "$$WORKER_BOOTSTRAP_SERVERS" ]; then \
	   bash deploy/kafka/kafka.sh start && \
	   bash deploy/kafka/kafka.sh topics-create "$${WORKER_INPUT_TOPIC:-comments}" 3 && \
	   bash deploy/kafka/kafka.sh topics-create "$${WORKER_OUTPUT_TOPIC:-comments-classified}" 3 && \
	   bash deploy/kafka/kafka.sh topics-create "$${WORKER_DLQ_TOPIC:-comments-dlq}" 1; fi
	@if [ -z "$$WORKER_MODEL" ] && [ -d "$(STAND_IN)" ]; then export WORKER_MODEL="$(STAND_IN)"; fi; \
	 exec $(BIN)/python -m worker.supervise   # worker-supervised: restarts `worker run` after exit 4 or a crash

demo: setup tools
	$(BIN)/python scripts/demo.py $(DEMO_ARGS)

bench: setup tools
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

# The worker alone through Kafka (about 6 min on 2 vCPUs): full load, then 5 runs of 40 s at a steady
# 100 messages/s on 3 partitions, each after 5 s without traffic; every run's p50/p95/p99/max.
latency: setup tools
	$(BIN)/python benchmarks/bench.py --only-worker --output benchmarks/results/latency.json $(BENCH_ARGS)

# Memory over a long run: RSS from 100,000 to 1,000,000 messages through Kafka (about 30 min on 2 vCPUs).
soak: setup tools
	$(BIN)/python benchmarks/soak.py $(SOAK_ARGS)

# Random faults (workers and brokers killed, stopped, frozen, joining) against a 3-node KRaft cluster and
# three workers while a producer writes; checks each mode's guarantee from the topics (docs/testing.md).
# CHAOS_ARGS: --records N --faults N --rate N --batch N --mode at_least_once|exactly_once|both --seed N (repeats a run).
chaos: setup tools
	$(BIN)/python -m benchmarks.chaos $(CHAOS_ARGS)

# The container image built from the Dockerfile and run for real: its own Docker engine, a Debian base
# image, the worker checked against the host worker, the compose stack (docs/container.md). About
# 30 min on 2 vCPUs and ~25 GB of disk while it runs; not part of `make test`. IMAGE_ARGS: worker|compose.
image-run: setup tools
	PYTHON="$(abspath $(BIN))/python" bash deploy/image/run.sh $(IMAGE_ARGS)

# Stops what an interrupted image-run left running (containers, its engine, its broker).
image-stop:
	bash deploy/image/run.sh stop

broker-start:
	bash deploy/kafka/kafka.sh start

broker-stop:
	bash deploy/kafka/kafka.sh stop

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info
