#!/usr/bin/env bash
# Builds the worker image from the project's Dockerfile and runs it for real, on a machine with no
# access to public image registries (Debian packages and PyPI only): `make image-run`.
#
#   deploy/image/run.sh [all]    tools, engine, base image, images, worker checks, compose stack, clean up
#   deploy/image/run.sh worker   ... the worker checks only (no compose stack)
#   deploy/image/run.sh compose  ... the compose stack only
#   deploy/image/run.sh stop     stop whatever a killed run left (containers, engine, broker, host worker)
#
# What it does (docs/container.md says why and shows the last run's figures):
#  1. installs docker.io, debootstrap and docker-compose with apt-get where missing;
#  2. starts its own dockerd (--iptables=false --ip6tables=false --bridge=none, vfs storage) with its
#     data-root, exec-root, socket and pid file under $IMAGE_WORK_DIR: it touches no other engine,
#     network setting or file of the machine, and it is stopped at the end;
#  3. makes a base image: `debootstrap --variant=minbase bookworm` (python3.11 + venv) plus the host's
#     CA bundle, `docker import`ed as $BASE_IMAGE;
#  4. builds the Dockerfile on it (PYTHON_IMAGE=$BASE_IMAGE, TORCH_INDEX_URL=$IMAGE_TORCH_INDEX_URL,
#     PRELOAD_MODEL=dir with $IMAGE_MODEL_DIR baked in at /opt/model);
#  5. runs the checks of deploy/image/check_worker.py against a broker on the host (deploy/kafka/kafka.sh);
#  6. builds Kafka and Prometheus images on the same base and runs docker-compose.yml with
#     docker-compose.local.yml over it (check_compose.py);
#  7. removes the containers, stops the engine, the broker and the host worker, and deletes the engine's
#     data (IMAGE_KEEP=1 keeps it: a second run then reuses the image layers).
#
# Environment (defaults in brackets):
#   IMAGE_WORK_DIR        [$HOME/.cache/koelectra-worker/image]  engine data, base rootfs, logs, results
#   IMAGE_KEEP            [0]  1: keep the engine's data-root (images, ~25 GB with vfs) after the run
#   IMAGE_STORAGE_DRIVER  [auto]  overlay2 where an overlay mount works here, else vfs (every layer and
#                         every container a full copy: ~40 GB of disk and minutes per container start/removal)
#   IMAGE_TORCH_INDEX_URL [https://pypi.org/simple]  the Dockerfile's default (the CPU wheel index) may be unreachable
#   IMAGE_MODEL_DIR       [../shared/models/koelectra-small-v3-nsmc-scratch]  the local model baked in
#   IMAGE_RECORDS         [2000]  NSMC reviews per classified stream
#   KAFKA_PORT, KAFKA_CONTROLLER_PORT, KAFKA_DATA_DIR  the host broker ([29192], [29193], [$IMAGE_WORK_DIR/kafka])
#   PYTHON                [.venv/bin/python]  the host worker's interpreter (make setup)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="${ROOT}/deploy/image"
WORK="${IMAGE_WORK_DIR:-${HOME:-/root}/.cache/koelectra-worker/image}"
KEEP="${IMAGE_KEEP:-0}"
STORAGE_DRIVER="${IMAGE_STORAGE_DRIVER:-auto}"
TORCH_INDEX_URL="${IMAGE_TORCH_INDEX_URL:-https://pypi.org/simple}"
MODEL_DIR="${IMAGE_MODEL_DIR:-${ROOT}/../shared/models/koelectra-small-v3-nsmc-scratch}"
PYTHON="${PYTHON:-${ROOT}/.venv/bin/python}"
BASE_IMAGE="koelectra-local/python:3.11-bookworm"
WORKER_IMAGE="koelectra-worker:local"
KAFKA_IMAGE="koelectra-local/kafka:4.1.1"
PROMETHEUS_IMAGE="koelectra-local/prometheus:bookworm"
export KAFKA_PORT="${KAFKA_PORT:-29192}"
export KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-29193}"
export KAFKA_DATA_DIR="${KAFKA_DATA_DIR:-${WORK}/kafka}"

DATA_ROOT="${WORK}/docker"
# exec-root holds containerd's sockets, whose paths must stay under 108 bytes: keep it short.
EXEC_ROOT="/tmp/kw-docker-$(printf '%s' "$WORK" | md5sum | cut -c1-8)"
RUN_DIR="${WORK}/run"
LOGS="${WORK}/logs"
RESULTS="${WORK}/results"
export DOCKER_HOST="unix://${RUN_DIR}/docker.sock"
# Debian's client (20.10) matches Debian's engine; a newer client elsewhere on PATH needs buildx for BuildKit.
DOCKER="$(command -v /usr/bin/docker || command -v docker || echo docker)"
COMPOSE_PROJECT="koelectra-local"

log() { printf '[image %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
docker() { "$DOCKER" "$@"; }

# ----------------------------------------------------------------------------- tools
ensure_tools() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    [[ -x /usr/bin/docker ]] || missing+=(docker.io)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v docker-compose >/dev/null || missing+=(docker-compose)
    command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
    command -v mvn >/dev/null || missing+=(maven)
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    fi
    DOCKER=/usr/bin/docker
    [[ -x "$PYTHON" ]] || die "no host worker at $PYTHON: run 'make setup' first (make image-run does)"
    [[ -f "${MODEL_DIR}/config.json" ]] || die "IMAGE_MODEL_DIR=${MODEL_DIR} is not a model directory (config.json missing)"
}

# ----------------------------------------------------------------------------- engine
# overlay2 needs the kernel's overlay filesystem on the data-root's filesystem: try one mount.
pick_storage_driver() {
    [[ "$STORAGE_DRIVER" == auto ]] || return 0
    local probe
    probe="$(mktemp -d "${WORK}/.overlay-probe.XXXXXX")"
    mkdir -p "${probe}"/{lower,upper,work,merged}
    if mount -t overlay overlay -o "lowerdir=${probe}/lower,upperdir=${probe}/upper,workdir=${probe}/work" "${probe}/merged" 2>/dev/null; then
        umount "${probe}/merged"
        STORAGE_DRIVER=overlay2
    else
        STORAGE_DRIVER=vfs
    fi
    rm -rf "$probe"
}

engine_start() {
    mkdir -p "$DATA_ROOT" "$RUN_DIR" "$LOGS" "$RESULTS"
    pick_storage_driver
    if docker info >/dev/null 2>&1; then log "engine already running ($DOCKER_HOST)"; return 0; fi
    log "starting dockerd (storage ${STORAGE_DRIVER}, no bridge, no iptables) at ${DOCKER_HOST}"
    setsid dockerd --host "$DOCKER_HOST" --data-root "$DATA_ROOT" --exec-root "$EXEC_ROOT" \
        --pidfile "${RUN_DIR}/docker.pid" --iptables=false --ip6tables=false --bridge=none \
        --storage-driver="$STORAGE_DRIVER" --log-level=warn \
        >> "${LOGS}/dockerd.log" 2>&1 < /dev/null &
    local deadline=$((SECONDS + 60))
    until docker info >/dev/null 2>&1; do
        ((SECONDS < deadline)) || { tail -20 "${LOGS}/dockerd.log" >&2; die "dockerd did not answer within 60 s"; }
        sleep 1
    done
    log "engine $(docker version -f '{{.Server.Version}}') up"
}

engine_stop() {
    local pid
    pid="$(cat "${RUN_DIR}/docker.pid" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 0
    log "stopping dockerd (pid ${pid})"
    kill -TERM "$pid"
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    # dockerd's own containerd (a child it supervises) goes with it. A daemon stopped in the middle of
    # removing a container can leave its network namespace file mounted: unmount what is left.
    local _
    for _ in 1 2 3 4 5; do
        grep -oE " (${EXEC_ROOT}|${DATA_ROOT})/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
        rm -rf "$EXEC_ROOT" 2>/dev/null && break
        sleep 2
    done
}

# ----------------------------------------------------------------------------- base image
base_image() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then return 0; fi
    local rootfs="${WORK}/rootfs" t0=$SECONDS
    if [[ ! -f "${rootfs}/.complete" ]]; then
        rm -rf "$rootfs"
        log "debootstrap --variant=minbase bookworm (python3, venv, CA certificates) into ${rootfs}"
        debootstrap --variant=minbase --include=ca-certificates,python3,python3-venv,python-is-python3 \
            bookworm "$rootfs" http://deb.debian.org/debian > "${LOGS}/debootstrap.log" 2>&1 \
            || { tail -20 "${LOGS}/debootstrap.log" >&2; die "debootstrap failed"; }
        chroot "$rootfs" apt-get clean
        rm -rf "${rootfs}"/var/lib/apt/lists/* "${rootfs}"/var/cache/apt/*.bin
        touch "${rootfs}/.complete"
    fi
    # Installs inside builds (pip, apt) must trust what the host trusts: the host's CA bundle.
    cp /etc/ssl/certs/ca-certificates.crt "${rootfs}/etc/ssl/certs/ca-certificates.crt"
    # apt's date checks as on the host (its mirrors may serve a snapshot).
    cp /etc/apt/apt.conf.d/99artifact-registry "${rootfs}/etc/apt/apt.conf.d/" 2>/dev/null || true
    log "docker import ${BASE_IMAGE}"
    tar -C "$rootfs" --exclude=./.complete --exclude=./proc/* --exclude=./sys/* --exclude=./dev/* -c . \
        | docker import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV LANG=C.UTF-8' \
            --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
            --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
            --change 'ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt' \
            --change 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
    log "base image ready in $((SECONDS - t0)) s: $(docker image inspect -f '{{.Size}}' "$BASE_IMAGE" | numfmt --to=iec)"
}

# ----------------------------------------------------------------------------- worker image
build_worker() {
    local ctx="${WORK}/context" t0=$SECONDS
    # The build context is the repository's allow-list (.dockerignore) plus the model as ./model/.
    rm -rf "$ctx" && mkdir -p "$ctx"
    cp -a "${ROOT}/Dockerfile" "${ROOT}/.dockerignore" "${ROOT}/pyproject.toml" "${ROOT}/README.md" "${ROOT}/worker" "$ctx/"
    cp -a "$MODEL_DIR" "${ctx}/model"
    log "building ${WORKER_IMAGE} (PRELOAD_MODEL=dir, torch from ${TORCH_INDEX_URL}); log: ${LOGS}/build-worker.log"
    if ! DOCKER_BUILDKIT=1 docker build --progress=plain --network=host \
            --build-arg PYTHON_IMAGE="$BASE_IMAGE" \
            --build-arg TORCH_INDEX_URL="$TORCH_INDEX_URL" \
            --build-arg PRELOAD_MODEL=dir \
            -t "$WORKER_IMAGE" "$ctx" > "${LOGS}/build-worker.log" 2>&1; then
        tail -40 "${LOGS}/build-worker.log" >&2
        die "worker image build failed"
    fi
    local took=$((SECONDS - t0)) size
    size="$(docker image inspect -f '{{.Size}}' "$WORKER_IMAGE")"
    grep -E "^#[0-9]+ .*torch [0-9]" "${LOGS}/build-worker.log" | tail -1 | sed 's/^#[0-9]* [0-9.]* //' > "${RESULTS}/versions.txt" || true
    printf '{"build_s": %d, "image_bytes": %s, "base_bytes": %s}\n' "$took" "$size" \
        "$(docker image inspect -f '{{.Size}}' "$BASE_IMAGE")" > "${RESULTS}/build.json"
    log "worker image built in ${took} s: $(numfmt --to=iec "$size") ($(cat "${RESULTS}/versions.txt"))"
    docker history --no-trunc --format '{{.Size}}\t{{.CreatedBy}}' "$WORKER_IMAGE" | cut -c1-160 > "${RESULTS}/history.txt"
}

# ----------------------------------------------------------------------------- Kafka and Prometheus images
build_stack_images() {
    bash "${ROOT}/deploy/kafka/kafka.sh" fetch
    local kafka_home="${KAFKA_HOME_CACHE:-${HOME:-/tmp}/.cache/koelectra-worker/kafka-4.1.1}"
    local ctx="${WORK}/kafka-context" t0=$SECONDS
    rm -rf "$ctx" && mkdir -p "$ctx"
    cp -a "$kafka_home" "${ctx}/libs"
    cp -a "${HERE}/kafka" "${ctx}/bin"
    cp -a "${ROOT}/deploy/kafka/log4j2.yaml" "${ctx}/log4j2.yaml"
    log "building ${KAFKA_IMAGE} from the Maven Central jars; log: ${LOGS}/build-kafka.log"
    DOCKER_BUILDKIT=1 docker build --progress=plain --network=host --build-arg BASE_IMAGE="$BASE_IMAGE" \
        -f "${HERE}/kafka.Dockerfile" -t "$KAFKA_IMAGE" "$ctx" > "${LOGS}/build-kafka.log" 2>&1 \
        || { tail -30 "${LOGS}/build-kafka.log" >&2; die "kafka image build failed"; }
    log "building ${PROMETHEUS_IMAGE} from Debian's package; log: ${LOGS}/build-prometheus.log"
    DOCKER_BUILDKIT=1 docker build --progress=plain --network=host --build-arg BASE_IMAGE="$BASE_IMAGE" \
        -f "${HERE}/prometheus.Dockerfile" -t "$PROMETHEUS_IMAGE" "${HERE}" > "${LOGS}/build-prometheus.log" 2>&1 \
        || { tail -30 "${LOGS}/build-prometheus.log" >&2; die "prometheus image build failed"; }
    log "stack images built in $((SECONDS - t0)) s: kafka $(docker image inspect -f '{{.Size}}' "$KAFKA_IMAGE" | numfmt --to=iec), prometheus $(docker image inspect -f '{{.Size}}' "$PROMETHEUS_IMAGE" | numfmt --to=iec)"
}

# ----------------------------------------------------------------------------- checks
check_worker() {
    local rc
    log "host broker on 127.0.0.1:${KAFKA_PORT} (data ${KAFKA_DATA_DIR})"
    bash "${ROOT}/deploy/kafka/kafka.sh" start >/dev/null
    PYTHONPATH="$ROOT" "$PYTHON" "${HERE}/check_worker.py" --image "$WORKER_IMAGE" --docker "$DOCKER" \
        --bootstrap "127.0.0.1:${KAFKA_PORT}" --model "$MODEL_DIR" --records "${IMAGE_RECORDS:-2000}" \
        --data "${IMAGE_NSMC:-${ROOT}/../shared/data/ratings_test.txt}" \
        --results "${RESULTS}/worker.json" --logs "$LOGS" || rc=$?
    bash "${ROOT}/deploy/kafka/kafka.sh" stop --wipe >/dev/null
    return "${rc:-0}"
}

compose_files() {
    echo -p "$COMPOSE_PROJECT" -f "${ROOT}/docker-compose.yml" -f "${ROOT}/docker-compose.local.yml"
}

check_compose() {
    # The local variant's Prometheus reads the real configuration, its targets moved to the local ports.
    local prom="${WORK}/compose/prometheus"
    rm -rf "$prom" && mkdir -p "$prom"
    cp "${ROOT}/deploy/prometheus/alerts.yml" "$prom/"
    sed -e 's/worker:8000/worker:29180/' -e 's/localhost:9090/localhost:29190/' \
        "${ROOT}/deploy/prometheus/prometheus.yml" > "${prom}/prometheus.yml"
    export LOCAL_PROMETHEUS_CONFIG="$prom" KAFKA_IMAGE WORKER_IMAGE PROMETHEUS_IMAGE
    PYTHONPATH="$ROOT" "$PYTHON" "${HERE}/check_compose.py" --docker "$DOCKER" \
        --compose "$(command -v docker-compose)" $(compose_files) \
        --records "${IMAGE_RECORDS:-2000}" --model "$MODEL_DIR" \
        --results "${RESULTS}/compose.json" --logs "$LOGS"
}

# ----------------------------------------------------------------------------- clean-up
cleanup() {
    local rc=$?
    set +e
    if docker info >/dev/null 2>&1; then
        LOCAL_PROMETHEUS_CONFIG="${WORK}/compose/prometheus" docker-compose $(compose_files) --profile demo down -v --remove-orphans >/dev/null 2>&1
        local ids
        ids="$(docker ps -aq)"
        [[ -n "$ids" ]] && docker rm -f $ids >/dev/null
    fi
    engine_stop
    bash "${ROOT}/deploy/kafka/kafka.sh" stop --wipe >/dev/null 2>&1
    if [[ "$KEEP" != 1 ]]; then
        log "deleting the engine's data (${DATA_ROOT}); IMAGE_KEEP=1 keeps it"
        rm -rf "$DATA_ROOT" "${WORK}/context" "${WORK}/kafka-context"
    fi
    exit "$rc"
}

main() {
    local what="${1:-all}" t0=$SECONDS
    case "$what" in
        stop) cleanup; return ;;
        all|worker|compose) ;;
        *) die "usage: $0 [all|worker|compose|stop]" ;;
    esac
    ensure_tools
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    engine_start
    base_image
    docker image inspect "$WORKER_IMAGE" >/dev/null 2>&1 && [[ "${IMAGE_REBUILD:-1}" != 1 ]] || build_worker
    # A failed check does not stop the next one: one run reports everything it found.
    local failed=()
    if [[ "$what" != compose ]]; then check_worker || failed+=(worker); fi
    if [[ "$what" != worker ]]; then build_stack_images; check_compose || failed+=(compose); fi
    log "done in $((SECONDS - t0)) s; results in ${RESULTS}${failed[*]:+; FAILED: ${failed[*]}}"
    ((${#failed[@]} == 0))
}

main "$@"
