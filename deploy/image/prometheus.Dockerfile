# A stand-in for prom/prometheus where Docker Hub cannot be reached: Debian bookworm's prometheus
# package (2.42) on the base deploy/image/run.sh makes, with prom/prometheus's contract: the binary as
# entrypoint (docker-compose.yml gives the flags), /prometheus writable by the user it runs as.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /prometheus && chown nobody:nogroup /prometheus
USER nobody
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
