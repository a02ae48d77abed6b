-- Where the database is in the Kafka log. Runs as tillflow_owner.
--
--   ingest.kafka_positions  one row per topic and partition: the offset after
--                           the last record the consumer stored from it.
--
-- The consumer writes it in the same database transaction as each batch, so a
-- backup (one snapshot) holds exactly the rows up to these offsets, and a
-- restore of that backup knows where in Kafka to replay from: `tillflow backup
-- restore --replace` sets the consumer group's offsets to these positions and
-- the consumer re-reads everything after them. Rows from before them may be
-- read again (a rebalance, a replay); storing is idempotent, so that is
-- harmless. The position only moves forward (GREATEST): a replica replaying an
-- older batch never moves it back over rows another stored.
--
-- A partition missing here had nothing stored from it yet: a replay reads it
-- from the start of the log.

CREATE TABLE ingest.kafka_positions (
    topic        text        NOT NULL,
    "partition"  integer     NOT NULL,
    next_offset  bigint      NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),

    PRIMARY KEY (topic, "partition"),
    CONSTRAINT kafka_positions_partition_check CHECK ("partition" >= 0),
    CONSTRAINT kafka_positions_offset_check CHECK (next_offset >= 0)
);
COMMENT ON TABLE ingest.kafka_positions IS
    'Per topic and partition, the Kafka offset after the last record stored; written with each batch, read by a restore to replay the rest.';

GRANT SELECT, INSERT ON ingest.kafka_positions TO tillflow_writer;
GRANT UPDATE (next_offset, updated_at) ON ingest.kafka_positions TO tillflow_writer;
