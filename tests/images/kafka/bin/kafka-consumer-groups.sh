#!/usr/bin/env bash
# List and describe consumer groups, reset offsets.
exec "$(dirname "$0")/kafka-run-class.sh" org.apache.kafka.tools.consumer.group.ConsumerGroupCommand "$@"
