#!/usr/bin/env bash
# Creates the worker's topics (idempotent). Runs in the apache/kafka image as the `kafka-init` service.
set -euo pipefail
BOOTSTRAP="${BOOTSTRAP_SERVERS:-kafka:9092}"
TOPICS="/opt/kafka/bin/kafka-topics.sh"

create() {  # name partitions
  "$TOPICS" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists \
    --topic "$1" --partitions "$2" --replication-factor 1
}

create "${INPUT_TOPIC:-comments}" "${INPUT_PARTITIONS:-6}"
create "${OUTPUT_TOPIC:-comments-classified}" "${OUTPUT_PARTITIONS:-6}"
create "${DLQ_TOPIC:-comments-dlq}" "${DLQ_PARTITIONS:-1}"
"$TOPICS" --bootstrap-server "$BOOTSTRAP" --describe \
  --topic "${INPUT_TOPIC:-comments}"
echo "topics ready"
