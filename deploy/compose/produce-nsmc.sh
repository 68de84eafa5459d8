#!/usr/bin/env bash
# Demo producer: streams NSMC reviews from a TSV into the input topic as JSON, key = review id.
# Runs in the apache/kafka image as the `producer` service (compose profile `demo`).
# Env: BOOTSTRAP_SERVERS (kafka:9092), INPUT_TOPIC (comments), NSMC_TSV (/data/nsmc_sample.tsv),
#      RATE records/s (50; 0 = unthrottled), LOOPS passes over the file (1; 0 = forever).
set -euo pipefail
BOOTSTRAP="${BOOTSTRAP_SERVERS:-kafka:9092}"
TOPIC="${INPUT_TOPIC:-comments}"
TSV="${NSMC_TSV:-/data/nsmc_sample.tsv}"
RATE="${RATE:-50}"
LOOPS="${LOOPS:-1}"
HERE="$(cd "$(dirname "$0")" && pwd)"

[ -r "$TSV" ] || { echo "cannot read $TSV" >&2; exit 1; }
pass=0
while [ "$LOOPS" -eq 0 ] || [ "$pass" -lt "$LOOPS" ]; do
  pass=$((pass + 1))
  echo "pass $pass: $TSV -> $TOPIC at ${RATE}/s via $BOOTSTRAP"
  LC_ALL=C awk -v rate="$RATE" -f "$HERE/tsv-to-json.awk" "$TSV" \
    | /opt/kafka/bin/kafka-console-producer.sh --bootstrap-server "$BOOTSTRAP" --topic "$TOPIC" \
        --property parse.key=true --property "key.separator=$(printf '\t')"
done
echo "done: $pass pass(es)"
