#!/usr/bin/env bash
# The KRaft quorum's state and replication.
exec "$(dirname "$0")/kafka-run-class.sh" org.apache.kafka.tools.MetadataQuorumCommand "$@"
