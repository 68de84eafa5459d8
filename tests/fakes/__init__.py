"""In-memory stand-ins of the worker's packages, one module per package faked (kafka_io.py fakes worker.kafka_io)."""
