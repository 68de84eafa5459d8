# A stand-in for apache/kafka where Docker Hub cannot be reached: the same Kafka (4.1.1) from the jars
# deploy/kafka/ fetches from Maven Central, on the Debian base deploy/image/run.sh makes, with the
# paths and environment contract docker-compose.yml relies on:
#   /opt/kafka/bin/kafka-topics.sh, kafka-console-producer.sh, kafka-broker-api-versions.sh
#   KAFKA_<PROPERTY> variables become server.properties (KAFKA_NODE_ID -> node.id), CLUSTER_ID formats the storage.
# Build context: libs/ (the jars), bin/ (deploy/image/kafka/), log4j2.yaml (deploy/kafka/).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 1000 appuser \
 && useradd --system --uid 1000 --gid appuser --home-dir /opt/kafka --shell /usr/sbin/nologin appuser \
 && mkdir -p /var/lib/kafka/data /opt/kafka/config \
 && chown appuser:appuser /var/lib/kafka/data /opt/kafka/config
COPY libs/ /opt/kafka/libs/
COPY bin/ /opt/kafka/bin/
COPY log4j2.yaml /opt/kafka/config/log4j2.yaml
USER appuser
WORKDIR /opt/kafka
ENTRYPOINT ["/opt/kafka/bin/run"]
