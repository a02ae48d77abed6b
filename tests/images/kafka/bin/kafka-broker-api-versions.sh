#!/usr/bin/env bash
# The API versions each broker supports (the compose healthcheck).
exec "$(dirname "$0")/kafka-run-class.sh" org.apache.kafka.tools.BrokerApiVersionsCommand "$@"
