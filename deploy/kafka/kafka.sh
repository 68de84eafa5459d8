#!/usr/bin/env bash
# Local single-node Apache Kafka 4.x broker (KRaft, no ZooKeeper) for dev/tests.
# The broker is fetched as jars from Maven Central via Maven (see pom.xml).
#
# Usage: deploy/kafka/kafka.sh <command> [args]
#   fetch                         download broker jars into the cache (idempotent)
#   start                         fetch if needed, format storage once, start, wait until ready
#   stop [--wipe]                 SIGTERM (graceful), SIGKILL after $KAFKA_STOP_TIMEOUT s
#   kill                          SIGKILL the broker (fault injection); data is kept
#   restart                       stop + start, keeping data
#   wipe                          stop, then delete $KAFKA_DATA_DIR
#   status                        exit 0 iff running AND ready
#   bootstrap                     print the bootstrap address
#   topics-create NAME [PARTITIONS]   create a topic (idempotent, --if-not-exists)
#   topics-delete NAME            delete a topic (idempotent, --if-exists)
#   topics-list                   list topics
#   tool CLASS [ARGS...]          run any class on the Kafka classpath
#   logs                          tail the broker log
#
# Environment (defaults in brackets):
#   KAFKA_VERSION         [4.1.1]
#   KAFKA_HOME_CACHE      [$HOME/.cache/koelectra-worker/kafka-$KAFKA_VERSION]  jar cache
#   KAFKA_DATA_DIR        [/tmp/koelectra-kafka]  config, storage, logs, pid file
#   KAFKA_HOST            [127.0.0.1]
#   KAFKA_PORT            [9092]
#   KAFKA_CONTROLLER_PORT [9093]
#   KAFKA_HEAP_OPTS       [-Xms256m -Xmx512m]
#   KAFKA_JVM_OPTS        [] extra JVM flags for the broker
#   KAFKA_START_TIMEOUT   [60]  seconds to wait for readiness
#   KAFKA_STOP_TIMEOUT    [30]  seconds to wait after SIGTERM before SIGKILL
#   KAFKA_CLUSTER_ID      [random] used only when formatting fresh storage
#   JAVA_HOME / JAVA      Java 17+ (JAVA wins, then $JAVA_HOME/bin/java, then PATH)
#   MVN                   [mvn]
#   KAFKA_MVN_ARGS        [] extra Maven args for fetch (e.g. "-o" or "-s settings.xml")
#
# Optional broker variants (all off by default; the default broker is the template as is):
#   KAFKA_AUTO_CREATE_TOPICS [true]  false: producing to / fetching metadata of a missing topic fails
#   KAFKA_SASL_PORT       [] adds a SASL_PLAINTEXT listener (mechanism PLAIN) on this port; the
#                         PLAINTEXT listener on KAFKA_PORT stays (principal User:ANONYMOUS)
#   KAFKA_SASL_PLAIN_USERS [] with KAFKA_SASL_PORT: "user:password,user:password" (letters, digits, . _ -)
#   KAFKA_ACLS            [false]  true: ACL authorization (StandardAuthorizer); what no ACL allows is denied
#   KAFKA_SUPER_USERS     [User:ANONYMOUS;User:admin]  with KAFKA_ACLS: principals every ACL check lets through
#
# One node of a multi-node cluster (harness/cluster.py starts three; every node has its own ports and data dir):
#   KAFKA_NODE_ID         [1]
#   KAFKA_QUORUM_VOTERS   [] "1@host:cport,2@host:cport,..." a static controller quorum (every node a voter);
#                         empty: the single-node dynamic quorum
#   KAFKA_REPLICATION     [1] replication factor of new and internal topics; min.insync.replicas is
#                         2 where it is 2 or more
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
KAFKA_HOME_CACHE="${KAFKA_HOME_CACHE:-${HOME:-/tmp}/.cache/koelectra-worker/kafka-${KAFKA_VERSION}}"
KAFKA_DATA_DIR="${KAFKA_DATA_DIR:-/tmp/koelectra-kafka}"
KAFKA_HOST="${KAFKA_HOST:-127.0.0.1}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
KAFKA_JVM_OPTS="${KAFKA_JVM_OPTS:-}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-60}"
KAFKA_STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
KAFKA_MVN_ARGS="${KAFKA_MVN_ARGS:-}"
KAFKA_AUTO_CREATE_TOPICS="${KAFKA_AUTO_CREATE_TOPICS:-true}"
KAFKA_SASL_PORT="${KAFKA_SASL_PORT:-}"
KAFKA_SASL_PLAIN_USERS="${KAFKA_SASL_PLAIN_USERS:-}"
KAFKA_ACLS="${KAFKA_ACLS:-false}"
KAFKA_SUPER_USERS="${KAFKA_SUPER_USERS:-User:ANONYMOUS;User:admin}"
KAFKA_NODE_ID="${KAFKA_NODE_ID:-1}"
KAFKA_QUORUM_VOTERS="${KAFKA_QUORUM_VOTERS:-}"
KAFKA_REPLICATION="${KAFKA_REPLICATION:-1}"
MVN="${MVN:-mvn}"

BOOTSTRAP="${KAFKA_HOST}:${KAFKA_PORT}"
PID_FILE="${KAFKA_DATA_DIR}/kafka.pid"
PROPS_FILE="${KAFKA_DATA_DIR}/server.properties"
LOG_DIR="${KAFKA_DATA_DIR}/logs"          # log4j output + kafka.out
STORAGE_DIR="${KAFKA_DATA_DIR}/kraft-data" # Kafka log.dirs (topic data + metadata)
FORMAT_MARKER="${KAFKA_DATA_DIR}/.formatted"
CACHE_MARKER="${KAFKA_HOME_CACHE}/.complete"

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { printf 'kafka.sh: error: %s\n' "$*" >&2; exit 1; }

# ----------------------------------------------------------------------------- java

find_java() {
    local j
    if [[ -n "${JAVA:-}" ]]; then
        j="$JAVA"
    elif [[ -n "${JAVA_HOME:-}" && -x "${JAVA_HOME}/bin/java" ]]; then
        j="${JAVA_HOME}/bin/java"
    else
        j="$(command -v java || true)"
    fi
    [[ -n "$j" && -x "$(command -v "$j" || true)" ]] || die "java not found${j:+ (no executable '$j')}: install a JDK/JRE 17+ (e.g. apt-get install openjdk-17-jre-headless) or set JAVA_HOME"
    local ver major
    ver="$("$j" -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')"
    major="${ver%%.*}"
    [[ "$major" == "1" ]] && major="$(echo "$ver" | cut -d. -f2)"
    [[ "$major" =~ ^[0-9]+$ ]] || die "could not determine version of $j (got '$ver')"
    (( major >= 17 )) || die "Kafka ${KAFKA_VERSION} needs Java 17+, but $j is Java $ver; set JAVA_HOME"
    JAVA_BIN="$j"
}

# JVM flags for short-lived Kafka CLI tools (fast start, quiet logging).
tool_jvm_args() {
    mkdir -p "$LOG_DIR"
    TOOL_ARGS=(-Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto
        -Dlog4j2.configurationFile="${SCRIPT_DIR}/log4j2.yaml"
        -Dkafka.logs.dir="$LOG_DIR" -Dkafka.log.file=tools.log -Dkafka.root.level=WARN
        -cp "${KAFKA_HOME_CACHE}/*")
}

# Run a Kafka CLI class: run_tool CLASS [ARGS...]
run_tool() {
    tool_jvm_args
    "$JAVA_BIN" "${TOOL_ARGS[@]}" "$@"
}

# ----------------------------------------------------------------------------- fetch

cmd_fetch() {
    if [[ -f "$CACHE_MARKER" ]] && [[ -f "${KAFKA_HOME_CACHE}/kafka_2.13-${KAFKA_VERSION}.jar" ]]; then
        return 0
    fi
    command -v "$MVN" >/dev/null 2>&1 || die "maven ('$MVN') not found: install it (apt-get install maven) or set MVN"
    log "fetching Apache Kafka ${KAFKA_VERSION} jars from Maven Central into ${KAFKA_HOME_CACHE} ..."
    local parent tmp
    parent="$(dirname "$KAFKA_HOME_CACHE")"
    mkdir -p "$parent"
    tmp="$(mktemp -d "${parent}/.kafka-fetch.XXXXXX")"
    # shellcheck disable=SC2086
    if ! "$MVN" -q -B -Dstyle.color=never -f "${SCRIPT_DIR}/pom.xml" $KAFKA_MVN_ARGS \
            org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
            -Dkafka.version="$KAFKA_VERSION" \
            -DincludeScope=runtime \
            -DoutputDirectory="$tmp" >&2; then
        rm -rf "$tmp"
        die "maven failed to fetch org.apache.kafka:kafka_2.13:${KAFKA_VERSION} (network/registry problem, or version does not exist)"
    fi
    [[ -f "${tmp}/kafka_2.13-${KAFKA_VERSION}.jar" ]] || { rm -rf "$tmp"; die "fetch finished but kafka_2.13-${KAFKA_VERSION}.jar is missing"; }
    echo "$KAFKA_VERSION" > "${tmp}/.complete"
    chmod 755 "$tmp"   # mktemp -d creates it 0700
    # Atomic-ish publish: never leave a half-filled cache dir behind.
    rm -rf "$KAFKA_HOME_CACHE"
    mv "$tmp" "$KAFKA_HOME_CACHE"
    log "fetched $(ls "$KAFKA_HOME_CACHE" | wc -l) jars"
}

# ----------------------------------------------------------------------------- process state

# Prints the broker pid iff the pid file points at a live kafka.Kafka process.
broker_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # Guard against pid reuse: must be our broker.
    if [[ -r "/proc/${pid}/cmdline" ]]; then
        tr '\0' ' ' < "/proc/${pid}/cmdline" | grep -q 'kafka\.Kafka' || return 1
    fi
    echo "$pid"
}

port_open() {
    (exec 3<>"/dev/tcp/${KAFKA_HOST}/${KAFKA_PORT}") 2>/dev/null
}

# Ready = broker answers a metadata request and reports itself as a live broker.
broker_ready() {
    port_open || return 1
    if command -v kcat >/dev/null 2>&1; then
        kcat -b "$BOOTSTRAP" -L -m 5 2>/dev/null | grep -q "broker ${KAFKA_NODE_ID} at" && return 0
        return 1
    fi
    tool_jvm_args
    timeout 30 "$JAVA_BIN" "${TOOL_ARGS[@]}" org.apache.kafka.tools.BrokerApiVersionsCommand \
        --bootstrap-server "$BOOTSTRAP" 2>/dev/null | grep -q "(id: ${KAFKA_NODE_ID} "
}

# ----------------------------------------------------------------------------- start

write_props() {
    mkdir -p "$KAFKA_DATA_DIR" "$LOG_DIR" "$STORAGE_DIR"
    sed -e "s|@HOST@|${KAFKA_HOST}|g" \
        -e "s|@PORT@|${KAFKA_PORT}|g" \
        -e "s|@CONTROLLER_PORT@|${KAFKA_CONTROLLER_PORT}|g" \
        -e "s|@LOG_DIR@|${STORAGE_DIR}|g" \
        "${SCRIPT_DIR}/server.properties" > "${PROPS_FILE}.tmp"
    write_variants "${PROPS_FILE}.tmp"
    mv "${PROPS_FILE}.tmp" "$PROPS_FILE"
}

# set_prop FILE KEY VALUE: replace KEY's line (or append it), so each key appears once.
set_prop() {
    local file="$1" key="$2" value="$3"
    grep -v "^${key//./\\.}=" "$file" > "${file}.set" || true
    printf '%s=%s\n' "$key" "$value" >> "${file}.set"
    mv "${file}.set" "$file"
}

# The optional variants (see the header). Nothing is written when none is asked for.
write_variants() {
    local file="$1"
    case "$KAFKA_AUTO_CREATE_TOPICS" in
        true) ;;
        false) set_prop "$file" auto.create.topics.enable false ;;
        *) die "KAFKA_AUTO_CREATE_TOPICS must be true or false (got '${KAFKA_AUTO_CREATE_TOPICS}')" ;;
    esac
    if [[ -n "$KAFKA_SASL_PORT" ]]; then
        [[ "$KAFKA_SASL_PORT" =~ ^[0-9]+$ ]] || die "KAFKA_SASL_PORT must be a port number (got '${KAFKA_SASL_PORT}')"
        [[ -n "$KAFKA_SASL_PLAIN_USERS" ]] || die "KAFKA_SASL_PORT needs KAFKA_SASL_PLAIN_USERS=\"user:password,...\""
        local entry jaas="org.apache.kafka.common.security.plain.PlainLoginModule required"
        local -a entries
        IFS=',' read -r -a entries <<< "$KAFKA_SASL_PLAIN_USERS"
        for entry in "${entries[@]}"; do
            [[ "$entry" =~ ^([A-Za-z0-9._-]+):([A-Za-z0-9._-]+)$ ]] \
                || die "KAFKA_SASL_PLAIN_USERS: '${entry%%:*}:...' is not user:password (letters, digits, . _ -)"
            jaas+=" user_${BASH_REMATCH[1]}=\"${BASH_REMATCH[2]}\""
        done
        local sasl="SASL_PLAINTEXT://${KAFKA_HOST}:${KAFKA_SASL_PORT}"
        # Broker-to-broker and controller traffic stay on the PLAINTEXT and CONTROLLER listeners
        # (principal User:ANONYMOUS), so the broker itself needs no SASL credentials.
        set_prop "$file" listeners "PLAINTEXT://${KAFKA_HOST}:${KAFKA_PORT},CONTROLLER://${KAFKA_HOST}:${KAFKA_CONTROLLER_PORT},${sasl}"
        set_prop "$file" advertised.listeners "PLAINTEXT://${KAFKA_HOST}:${KAFKA_PORT},CONTROLLER://${KAFKA_HOST}:${KAFKA_CONTROLLER_PORT},${sasl}"
        set_prop "$file" listener.security.protocol.map "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT"
        set_prop "$file" sasl.enabled.mechanisms PLAIN
        set_prop "$file" listener.name.sasl_plaintext.plain.sasl.jaas.config "${jaas};"
    fi
    case "$KAFKA_ACLS" in
        false) ;;
        true)
            set_prop "$file" authorizer.class.name org.apache.kafka.metadata.authorizer.StandardAuthorizer
            # The PLAINTEXT and CONTROLLER listeners authenticate nobody (User:ANONYMOUS): as a
            # super user it keeps the broker, its controller and the tests' admin clients working.
            set_prop "$file" super.users "$KAFKA_SUPER_USERS"
            set_prop "$file" allow.everyone.if.no.acl.found false
            ;;
        *) die "KAFKA_ACLS must be true or false (got '${KAFKA_ACLS}')" ;;
    esac
    [[ "$KAFKA_NODE_ID" =~ ^[0-9]+$ ]] || die "KAFKA_NODE_ID must be a number (got '${KAFKA_NODE_ID}')"
    [[ "$KAFKA_NODE_ID" == 1 ]] || set_prop "$file" node.id "$KAFKA_NODE_ID"
    if [[ -n "$KAFKA_QUORUM_VOTERS" ]]; then
        grep -v '^controller\.quorum\.bootstrap\.servers=' "$file" > "${file}.set" || true
        mv "${file}.set" "$file"
        set_prop "$file" controller.quorum.voters "$KAFKA_QUORUM_VOTERS"
    fi
    [[ "$KAFKA_REPLICATION" =~ ^[1-9][0-9]*$ ]] || die "KAFKA_REPLICATION must be a positive number (got '${KAFKA_REPLICATION}')"
    if (( KAFKA_REPLICATION > 1 )); then
        local isr=2
        local key
        for key in default.replication.factor offsets.topic.replication.factor \
                transaction.state.log.replication.factor share.coordinator.state.topic.replication.factor; do
            set_prop "$file" "$key" "$KAFKA_REPLICATION"
        done
        for key in min.insync.replicas transaction.state.log.min.isr share.coordinator.state.topic.min.isr; do
            set_prop "$file" "$key" "$isr"
        done
    fi
}

format_storage() {
    if [[ -f "$FORMAT_MARKER" && -f "${STORAGE_DIR}/meta.properties" ]]; then
        local fmt_ctrl
        fmt_ctrl="$(sed -n 's/^controller_port=//p' "$FORMAT_MARKER")"
        if [[ -n "$fmt_ctrl" && "$fmt_ctrl" != "$KAFKA_CONTROLLER_PORT" ]]; then
            die "storage in ${KAFKA_DATA_DIR} was formatted with controller port ${fmt_ctrl}, not ${KAFKA_CONTROLLER_PORT}; use the same KAFKA_CONTROLLER_PORT or run '$0 wipe'"
        fi
        return 0
    fi
    if [[ -f "${STORAGE_DIR}/meta.properties" ]]; then
        # Formatted by an older run that died before writing the marker.
        log "storage already formatted (meta.properties present)"
    else
        local cid="${KAFKA_CLUSTER_ID:-}"
        [[ -n "$cid" ]] || cid="$(run_tool kafka.tools.StorageTool random-uuid | tail -n1 | tr -d '[:space:]')"
        [[ -n "$cid" ]] || die "could not generate a cluster id"
        log "formatting KRaft storage in ${STORAGE_DIR} (cluster id ${cid})"
        local -a quorum=(--standalone)
        [[ -n "$KAFKA_QUORUM_VOTERS" ]] && quorum=()  # a static quorum: the voters are in the properties
        run_tool kafka.tools.StorageTool format -t "$cid" -c "$PROPS_FILE" "${quorum[@]}" >&2 \
            || die "storage format failed (see ${LOG_DIR}/tools.log)"
    fi
    printf 'version=%s\ncontroller_port=%s\n' "$KAFKA_VERSION" "$KAFKA_CONTROLLER_PORT" > "$FORMAT_MARKER"
}

cmd_start() {
    find_java
    local pid
    if pid="$(broker_pid)"; then
        log "broker already running (pid ${pid}); waiting for readiness"
        wait_ready "$pid"
        echo "$BOOTSTRAP"
        return 0
    fi
    rm -f "$PID_FILE"
    if port_open; then
        die "${BOOTSTRAP} is already in use by another process (not managed via ${PID_FILE}); stop it or set KAFKA_PORT"
    fi
    cmd_fetch
    write_props
    format_storage

    local t0=$SECONDS
    # shellcheck disable=SC2086
    setsid nohup "$JAVA_BIN" -server $KAFKA_HEAP_OPTS \
        -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
        -XX:+ExplicitGCInvokesConcurrent -XX:ActiveProcessorCount=2 \
        -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="${SCRIPT_DIR}/log4j2.yaml" \
        -Dkafka.logs.dir="$LOG_DIR" \
        $KAFKA_JVM_OPTS \
        -cp "${KAFKA_HOME_CACHE}/*" kafka.Kafka "$PROPS_FILE" \
        >> "${LOG_DIR}/kafka.out" 2>&1 < /dev/null 9>&- &
    pid=$!
    echo "$pid" > "$PID_FILE"
    log "started broker pid ${pid}; waiting up to ${KAFKA_START_TIMEOUT}s for ${BOOTSTRAP}"
    wait_ready "$pid"
    log "broker ready after $((SECONDS - t0))s"
    echo "$BOOTSTRAP"
}

wait_ready() {
    local pid="$1" deadline=$((SECONDS + KAFKA_START_TIMEOUT))
    while (( SECONDS < deadline )); do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PID_FILE"
            log "broker process ${pid} exited during startup; last log lines:"
            tail -n 40 "${LOG_DIR}/kafka.out" "${LOG_DIR}/server.log" >&2 2>/dev/null || true
            die "broker failed to start"
        fi
        broker_ready && return 0
        sleep 0.5
    done
    log "last log lines:"
    tail -n 40 "${LOG_DIR}/server.log" >&2 2>/dev/null || true
    die "broker (pid ${pid}) not ready within ${KAFKA_START_TIMEOUT}s (it is left running; '$0 stop' to stop it)"
}

# ----------------------------------------------------------------------------- stop / kill / wipe

cmd_stop() {
    local wipe=0
    [[ "${1:-}" == "--wipe" ]] && wipe=1
    local pid
    if pid="$(broker_pid)"; then
        log "stopping broker pid ${pid} (SIGTERM)"
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + KAFKA_STOP_TIMEOUT))
        while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do
            sleep 0.3
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "broker did not stop within ${KAFKA_STOP_TIMEOUT}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
        fi
        log "broker stopped"
    else
        log "broker not running"
    fi
    rm -f "$PID_FILE"
    (( wipe )) && cmd_wipe_data
    return 0
}

cmd_kill() {
    local pid
    if pid="$(broker_pid)"; then
        log "killing broker pid ${pid} (SIGKILL)"
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    else
        log "broker not running"
    fi
    rm -f "$PID_FILE"
}

cmd_wipe_data() {
    case "$KAFKA_DATA_DIR" in
        ""|"/"|"$HOME"|"$HOME/") die "refusing to delete KAFKA_DATA_DIR='${KAFKA_DATA_DIR}'" ;;
    esac
    if [[ -d "$KAFKA_DATA_DIR" ]]; then
        log "deleting ${KAFKA_DATA_DIR}"
        rm -rf "$KAFKA_DATA_DIR"
    fi
}

# ----------------------------------------------------------------------------- status / topics

cmd_status() {
    find_java
    local pid
    if ! pid="$(broker_pid)"; then
        echo "stopped"
        return 3
    fi
    if broker_ready; then
        echo "running pid=${pid} bootstrap=${BOOTSTRAP}"
        return 0
    fi
    echo "starting pid=${pid} (not ready)"
    return 1
}

require_cache() {
    find_java
    [[ -f "$CACHE_MARKER" ]] || die "Kafka jars not fetched; run '$0 fetch' (or '$0 start')"
}

cmd_topics_create() {
    local name="${1:-}" parts="${2:-1}"
    [[ -n "$name" ]] || die "usage: $0 topics-create NAME [PARTITIONS]"
    [[ "$parts" =~ ^[0-9]+$ ]] || die "PARTITIONS must be a positive integer (got '${parts}')"
    require_cache
    run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" \
        --create --if-not-exists --topic "$name" --partitions "$parts" --replication-factor 1
}

cmd_topics_delete() {
    local name="${1:-}"
    [[ -n "$name" ]] || die "usage: $0 topics-delete NAME"
    require_cache
    run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" \
        --delete --if-exists --topic "$name"
}

cmd_topics_list() {
    require_cache
    run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" --list
}

# Serialise start/stop/kill/wipe on the same data dir (concurrent test runners).
take_lock() {
    command -v flock >/dev/null 2>&1 || return 0
    mkdir -p "$KAFKA_DATA_DIR"
    exec 9>"${KAFKA_DATA_DIR}/.lock"
    flock -w 180 9 || die "timed out waiting for lock ${KAFKA_DATA_DIR}/.lock"
}

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

main() {
    local cmd="${1:-}"
    [[ $# -gt 0 ]] && shift
    case "$cmd" in
        fetch)          cmd_fetch ;;
        start)          take_lock; cmd_start ;;
        stop)           take_lock; cmd_stop "$@" ;;
        kill)           take_lock; cmd_kill ;;
        restart|restart-keep-data) take_lock; cmd_stop; cmd_start ;;
        wipe)           take_lock; cmd_stop; cmd_wipe_data ;;
        status)         cmd_status ;;
        bootstrap)      echo "$BOOTSTRAP" ;;
        topics-create)  cmd_topics_create "$@" ;;
        topics-delete)  cmd_topics_delete "$@" ;;
        topics-list)    cmd_topics_list ;;
        tool)           [[ $# -ge 1 ]] || die "usage: $0 tool CLASS [ARGS...]"; require_cache; run_tool "$@" ;;
        logs)           tail -n "${LINES:-100}" -F "${LOG_DIR}/server.log" ;;
        -h|--help|help) usage ;;
        "")             usage >&2; exit 2 ;;
        *)              die "unknown command '${cmd}' (try '$0 help')" ;;
    esac
}

main "$@"
