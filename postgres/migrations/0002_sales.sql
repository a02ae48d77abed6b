-- Schema sales: the stored transactions, one row per id, never updated or deleted
-- by the pipeline. Runs as tillflow_owner.
--
-- The consumer COPYs batches straight into sales.transactions, so the table has
-- no triggers and no foreign keys; the CHECKs repeat the record's rules so that
-- a row the validator let through by mistake is refused here, not stored.

CREATE SCHEMA sales AUTHORIZATION tillflow_owner;
REVOKE ALL ON SCHEMA sales FROM PUBLIC;

-- Future tables in sales get the same privileges as the ones below.
ALTER DEFAULT PRIVILEGES FOR ROLE tillflow_owner IN SCHEMA sales
    GRANT SELECT, INSERT ON TABLES TO tillflow_writer;
-- PostgreSQL lets everyone execute a new function; the owner's need a grant.
ALTER DEFAULT PRIVILEGES FOR ROLE tillflow_owner
    REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

CREATE TABLE sales.transactions (
    id               uuid          PRIMARY KEY,
    transaction_date date          NOT NULL,
    category         text          NOT NULL,
    name             text          NOT NULL,
    quantity         integer       NOT NULL,
    amount_excl_tax  numeric(12,2) NOT NULL,
    amount_inc_tax   numeric(12,2) NOT NULL,
    -- The rate the row was validated under: TAX_RATE is configurable and may
    -- change, and a stored row must keep satisfying its own tax rule.
    tax_rate         numeric(5,4)  NOT NULL DEFAULT 0.20,
    store_id         text          NOT NULL DEFAULT 'main',
    ingested_at      timestamptz   NOT NULL DEFAULT now(),
    -- Where the row came from: source is csv, api, stream, sqlite...; source_ref
    -- the file name or upload id; source_line the line (or row) in it.
    source           text,
    source_ref       text,
    source_line      integer,
    kafka_partition  integer,
    kafka_offset     bigint,

    CONSTRAINT transactions_category_check CHECK (category IN ('SELL', 'BUY')),
    CONSTRAINT transactions_name_check CHECK (btrim(name) <> '' AND length(name) <= 200),
    CONSTRAINT transactions_quantity_check CHECK (quantity >= 1),
    CONSTRAINT transactions_amount_excl_tax_check CHECK (amount_excl_tax > 0),
    CONSTRAINT transactions_amount_inc_tax_check CHECK (amount_inc_tax > 0),
    CONSTRAINT transactions_tax_rate_check CHECK (tax_rate >= 0 AND tax_rate < 1),
    CONSTRAINT transactions_tax_rule_check
        CHECK (abs(round(amount_excl_tax * (1 + tax_rate), 2) - amount_inc_tax) <= 0.01),
    CONSTRAINT transactions_store_id_check CHECK (store_id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    CONSTRAINT transactions_source_line_check CHECK (source_line >= 1),
    CONSTRAINT transactions_kafka_position_check CHECK (kafka_partition >= 0 AND kafka_offset >= 0)
);

COMMENT ON TABLE sales.transactions IS
    'One row per transaction id, first version kept; written only by the consumer (tillflow_writer, insert-only).';
COMMENT ON COLUMN sales.transactions.tax_rate IS
    'TAX_RATE the row was validated under; amount_inc_tax = round(amount_excl_tax * (1 + tax_rate), 2) +/- 0.01.';

-- The INCLUDE columns let the analytics views aggregate from index-only scans
-- (the table is insert-only, so autovacuum keeps the visibility map current).
CREATE INDEX transactions_date_idx ON sales.transactions (transaction_date)
    INCLUDE (category, amount_excl_tax, amount_inc_tax);
CREATE INDEX transactions_name_date_idx ON sales.transactions (name, transaction_date)
    INCLUDE (category, amount_inc_tax);
-- Pipeline freshness (max(ingested_at)); appends at the right edge, cheap on COPY.
CREATE INDEX transactions_ingested_at_idx ON sales.transactions (ingested_at);

-- The writer inserts and reads back (duplicate and conflict detection); it may
-- not update, delete or truncate: financial rows are never rewritten.
GRANT USAGE ON SCHEMA sales TO tillflow_writer;
GRANT SELECT, INSERT ON sales.transactions TO tillflow_writer;
