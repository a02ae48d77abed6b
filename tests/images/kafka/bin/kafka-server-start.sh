#!/usr/bin/env bash
# kafka-server-start.sh of the kafka stand-in, as Kafka's own: the broker's
# logging config, a 1 GB heap unless KAFKA_HEAP_OPTS says otherwise, and
# EXTRA_ARGS for kafka-run-class.sh (default "-name kafkaServer -loggc").
set -euo pipefail
if [[ $# -lt 1 ]]; then
    echo "USAGE: $0 server.properties [--override property=value]*" >&2
    exit 1
fi
base_dir="$(cd "$(dirname "$0")/.." && pwd)"
export KAFKA_LOG4J_OPTS="${KAFKA_LOG4J_OPTS:--Dlog4j2.configurationFile=$base_dir/config/log4j2.yaml}"
export KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx1G -Xms1G}"
extra_args="${EXTRA_ARGS--name kafkaServer -loggc}"
# shellcheck disable=SC2086
exec "$base_dir/bin/kafka-run-class.sh" $extra_args kafka.Kafka "$@"
