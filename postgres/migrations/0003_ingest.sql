-- Schema ingest: the pipeline's own records. Runs as tillflow_owner.
--
--   uploads    one row per file load or API upload (a reload is a new row)
--   rejects    records that broke a rule, raw as received, with every reason
--   conflicts  an id seen again with different content: both versions
--
-- The consumer may read the same Kafka message twice after a crash (it commits
-- offsets after the database), so rejects and conflicts are unique on their
-- Kafka position and the consumer inserts them ON CONFLICT DO NOTHING. The
-- position includes the topic: a record rejected while reading
-- tillflow.transactions must not collide with one read from tillflow.rejects
-- at the same partition and offset. A row has all three of topic, partition
-- and offset, or none (a row that did not come through Kafka).

CREATE SCHEMA ingest AUTHORIZATION tillflow_owner;
REVOKE ALL ON SCHEMA ingest FROM PUBLIC;

ALTER DEFAULT PRIVILEGES FOR ROLE tillflow_owner IN SCHEMA ingest
    GRANT SELECT, INSERT ON TABLES TO tillflow_writer;

CREATE TABLE ingest.uploads (
    -- Client-generated when the loader wants to stamp its Kafka messages with it
    -- before the row exists; the database draws one otherwise.
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    file_name     text        NOT NULL,
    sha256        text        NOT NULL,
    size_bytes    bigint      NOT NULL,
    source        text        NOT NULL,
    store_id      text        NOT NULL DEFAULT 'main',
    rows_read     integer,
    rows_accepted integer,
    rows_rejected integer,
    status        text        NOT NULL DEFAULT 'started',
    created_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,

    CONSTRAINT uploads_sha256_check CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    CONSTRAINT uploads_size_check CHECK (size_bytes >= 0),
    CONSTRAINT uploads_rows_check CHECK (rows_read >= 0 AND rows_accepted >= 0 AND rows_rejected >= 0),
    -- started: being read; published: every row acknowledged by Kafka; failed: stopped.
    CONSTRAINT uploads_status_check CHECK (status IN ('started', 'published', 'failed'))
);
COMMENT ON TABLE ingest.uploads IS
    'One row per load of a file or upload; loading the same file again adds a row (no unique on sha256).';
-- "Was this exact file loaded before, and when?"
CREATE INDEX uploads_sha256_idx ON ingest.uploads (sha256, created_at);

CREATE TABLE ingest.rejects (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- As received: it may not even be a UUID.
    transaction_id  text,
    raw             jsonb       NOT NULL,
    reasons         jsonb       NOT NULL,
    source          text,
    source_ref      text,
    source_line     integer,
    kafka_topic     text,
    kafka_partition integer,
    kafka_offset    bigint,
    received_at     timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT rejects_kafka_position_check CHECK (
        num_nulls(kafka_topic, kafka_partition, kafka_offset) IN (0, 3)
        AND kafka_partition >= 0 AND kafka_offset >= 0
    ),
    CONSTRAINT rejects_kafka_position_key UNIQUE (kafka_topic, kafka_partition, kafka_offset)
);
CREATE INDEX rejects_received_at_idx ON ingest.rejects (received_at);

CREATE TABLE ingest.conflicts (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id  uuid        NOT NULL,
    stored          jsonb       NOT NULL,  -- the version kept in sales.transactions
    incoming        jsonb       NOT NULL,  -- the version refused
    source          text,
    source_ref      text,
    source_line     integer,
    kafka_topic     text,
    kafka_partition integer,
    kafka_offset    bigint,
    detected_at     timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT conflicts_kafka_position_check CHECK (
        num_nulls(kafka_topic, kafka_partition, kafka_offset) IN (0, 3)
        AND kafka_partition >= 0 AND kafka_offset >= 0
    ),
    CONSTRAINT conflicts_kafka_position_key UNIQUE (kafka_topic, kafka_partition, kafka_offset)
);
CREATE INDEX conflicts_transaction_id_idx ON ingest.conflicts (transaction_id);
CREATE INDEX conflicts_detected_at_idx ON ingest.conflicts (detected_at);

-- The writer fills rejects and conflicts (insert-only, read back to dedupe) and
-- records uploads; it may complete an upload's counts and status, nothing else.
-- Identity columns draw from their sequences without a USAGE grant.
GRANT USAGE ON SCHEMA ingest TO tillflow_writer;
GRANT SELECT, INSERT ON ingest.uploads, ingest.rejects, ingest.conflicts TO tillflow_writer;
GRANT UPDATE (rows_read, rows_accepted, rows_rejected, status, finished_at) ON ingest.uploads TO tillflow_writer;
