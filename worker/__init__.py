"""Real-time Korean comment classification: a Kafka stream-processing worker running KoELECTRA."""

__version__ = "0.1.0"
