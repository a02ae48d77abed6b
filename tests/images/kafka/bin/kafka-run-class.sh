#!/usr/bin/env bash
# kafka-run-class.sh of the kafka stand-in: runs a Java class with Kafka's
# classpath and JVM settings, reading the variables Kafka's own script reads.
#
#   kafka-run-class.sh [-name NAME] [-loggc] CLASS [ARGS ...]
#
#   KAFKA_HEAP_OPTS             default -Xmx256M
#   KAFKA_JVM_PERFORMANCE_OPTS  default Kafka's G1 settings
#   KAFKA_LOG4J_OPTS            default the tools' logging (warnings on stderr)
#   KAFKA_GC_LOG_OPTS           with -loggc; default a GC log in LOG_DIR
#   KAFKA_JMX_OPTS, JMX_PORT    JMX only when set (Kafka's script enables it always)
#   KAFKA_OPTS                  anything else
#   LOG_DIR                     default /opt/kafka/logs
#   CLASSPATH                   put before /opt/kafka/libs/*
#
# Not supported: -daemon (containers run in the foreground).
set -euo pipefail
base_dir="$(cd "$(dirname "$0")/.." && pwd)"

daemon_name=""
gc_log=false
while [[ $# -gt 0 ]]; do
    case "$1" in
        -name) daemon_name="$2"; shift 2 ;;
        -loggc) gc_log=true; shift ;;
        -daemon) echo "kafka-run-class.sh: -daemon is not supported in this image" >&2; exit 2 ;;
        *) break ;;
    esac
done
if [[ $# -lt 1 ]]; then
    echo "USAGE: $0 [-name NAME] [-loggc] CLASS [ARGS ...]" >&2
    exit 1
fi

LOG_DIR="${LOG_DIR:-$base_dir/logs}"
mkdir -p "$LOG_DIR"

heap_opts="${KAFKA_HEAP_OPTS:--Xmx256M}"
performance_opts="${KAFKA_JVM_PERFORMANCE_OPTS:--server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true}"
log4j_opts="${KAFKA_LOG4J_OPTS:--Dlog4j2.configurationFile=$base_dir/config/tools-log4j2.yaml}"
gc_opts=""
if $gc_log && [[ -n "$daemon_name" ]]; then
    gc_opts="${KAFKA_GC_LOG_OPTS:--Xlog:gc*:file=$LOG_DIR/$daemon_name-gc.log:time,tags:filecount=10,filesize=100M}"
fi
jmx_opts="${KAFKA_JMX_OPTS:-}"
if [[ -n "${JMX_PORT:-}" ]]; then
    jmx_opts="${jmx_opts:--Dcom.sun.management.jmxremote -Dcom.sun.management.jmxremote.authenticate=false -Dcom.sun.management.jmxremote.ssl=false} -Dcom.sun.management.jmxremote.port=$JMX_PORT"
fi
java="${JAVA_HOME:+$JAVA_HOME/bin/}java"

# The *_opts hold several options each: word splitting is intended.
# shellcheck disable=SC2086
exec "$java" $heap_opts $performance_opts $gc_opts $jmx_opts $log4j_opts "-Dkafka.logs.dir=$LOG_DIR" \
    ${KAFKA_OPTS:-} -cp "${CLASSPATH:+$CLASSPATH:}$base_dir/libs/*" "$@"
