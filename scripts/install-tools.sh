#!/usr/bin/env bash
# System tools the tests talk to: kcat (a Kafka client we did not write), promtool/prometheus,
# docker-compose (to validate the compose file), Java 17 and Maven (to fetch and run Apache Kafka).
set -euo pipefail
need=()
command -v kcat >/dev/null || need+=(kcat)
command -v promtool >/dev/null || need+=(prometheus)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
