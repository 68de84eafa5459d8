"""The wire format: what the worker reads from Kafka and writes back. No I/O, no settings, no Kafka client.

- :mod:`~worker.wire.types`: the shapes of a record (InputRecord, Comment, Rejection, Prediction,
  Rendered) and the dead-letter reasons.
- :mod:`~worker.wire.decoding`: strict decoding of an input record; never raises.
- :mod:`~worker.wire.sizes`: record sizes as librdkafka counts them; safe header names and values.
- :mod:`~worker.wire.results`: the result record and its fields.
- :mod:`~worker.wire.dead_letters`: the dead-letter record and its ``worker.*`` headers.
- :mod:`~worker.wire.routing`: moderation routes, the extra topics a result is copied to.
"""
