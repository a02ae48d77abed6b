#!/usr/bin/env bash
# Format a KRaft log directory, or make a cluster id (random-uuid).
exec "$(dirname "$0")/kafka-run-class.sh" kafka.tools.StorageTool "$@"
