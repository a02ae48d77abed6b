#!/usr/bin/env bash
# Create, list, describe, alter and delete topics.
exec "$(dirname "$0")/kafka-run-class.sh" org.apache.kafka.tools.TopicCommand "$@"
