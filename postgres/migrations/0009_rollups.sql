-- Rollups: the business answers kept up to date as rows arrive, so that the
-- dashboards and `tillflow report` read thousands of rows instead of scanning
-- sales.transactions (issue 13: 29 s for one panel at 10M rows). Runs as
-- tillflow_owner.
--
--   sales.daily_store_totals    one row per (date, store): SELL and BUY counts,
--                               quantities and both amounts. Every store,
--                               synthetic ones too: the views leave those out,
--                               and the pipeline's own count includes them.
--   sales.daily_product_totals  one row per (date, product), the same columns,
--                               for the business stores only (the stores in
--                               sales.synthetic_stores when the row was stored
--                               are left out, as the views always did).
--   sales.products              every product traded in a business store, once.
--
-- Exactly once: a statement-level trigger on sales.transactions adds the rows
-- a statement really inserted (its transition table), in that statement's
-- transaction. A duplicate is never inserted, a conflict keeps the stored
-- version, a reject goes elsewhere, and a refused or retried batch rolls back
-- its rollup update with its rows: nothing counts twice or is missed, whoever
-- writes (the consumer's COPY, a test's COPY, a single INSERT).
--
-- Concurrent writers (consumer replicas): each statement adds one row per key,
-- aggregated first, in key order, so two transactions take the rollups' row
-- locks in the same order and cannot deadlock; ON CONFLICT DO UPDATE waits for
-- the other's row, then adds to the committed value: no update is lost.
--
-- Amounts are numeric(20,2): exact, and the same two decimals the raw rows
-- have, so a sum over the rollups prints byte for byte as the sum over the raw
-- rows did. Counts are integer per day (their sums are bigint, as count(*) is).

-- The rows stored before this migration are rolled up below; no writer may add
-- one between that and the trigger taking over (released at commit).
LOCK TABLE sales.transactions IN SHARE MODE;

CREATE TABLE sales.daily_store_totals (
    transaction_date     date          NOT NULL,
    store_id             text          NOT NULL,
    sell_transactions    integer       NOT NULL DEFAULT 0,
    sell_quantity        bigint        NOT NULL DEFAULT 0,
    sell_amount_excl_tax numeric(20,2) NOT NULL DEFAULT 0,
    sell_amount_inc_tax  numeric(20,2) NOT NULL DEFAULT 0,
    buy_transactions     integer       NOT NULL DEFAULT 0,
    buy_quantity         bigint        NOT NULL DEFAULT 0,
    buy_amount_excl_tax  numeric(20,2) NOT NULL DEFAULT 0,
    buy_amount_inc_tax   numeric(20,2) NOT NULL DEFAULT 0,
    PRIMARY KEY (transaction_date, store_id)
) WITH (fillfactor = 80);  -- room for HOT updates: only aggregates change, never a key

CREATE TABLE sales.daily_product_totals (
    transaction_date     date          NOT NULL,
    name                 text          NOT NULL,
    sell_transactions    integer       NOT NULL DEFAULT 0,
    sell_quantity        bigint        NOT NULL DEFAULT 0,
    sell_amount_excl_tax numeric(20,2) NOT NULL DEFAULT 0,
    sell_amount_inc_tax  numeric(20,2) NOT NULL DEFAULT 0,
    buy_transactions     integer       NOT NULL DEFAULT 0,
    buy_quantity         bigint        NOT NULL DEFAULT 0,
    buy_amount_excl_tax  numeric(20,2) NOT NULL DEFAULT 0,
    buy_amount_inc_tax   numeric(20,2) NOT NULL DEFAULT 0,
    PRIMARY KEY (transaction_date, name)
) WITH (fillfactor = 80);
-- One product's days: its balance and running total.
CREATE INDEX daily_product_totals_name_idx ON sales.daily_product_totals (name, transaction_date);

-- Every product ever traded in a business store, once: the dashboard's product
-- list (a DISTINCT over the daily rollup read 2M rows at 10M transactions; a
-- loose index scan over it still took 130 ms for 5,000 products).
CREATE TABLE sales.products (
    name text PRIMARY KEY
);

COMMENT ON TABLE sales.daily_store_totals IS
    'Rollup of sales.transactions per (date, store), kept by trigger in the inserting transaction; tillflow reconcile checks it.';
COMMENT ON TABLE sales.daily_product_totals IS
    'Rollup of sales.transactions per (date, product), business stores only; kept by trigger; tillflow reconcile checks it.';

-- Only the trigger writes them (as their owner): the writer role cannot fake a
-- total, and the default privileges of sales gave it INSERT.
REVOKE ALL ON sales.daily_store_totals, sales.daily_product_totals, sales.products FROM tillflow_writer;

-- The statements that add a set of rows (a table, or the trigger's
-- transition table) to the rollups: written once, used by the trigger and by
-- the build below. Transition tables are visible only to statements the
-- trigger function itself runs, hence statements rather than a function that
-- runs them.
CREATE FUNCTION sales.rollup_statements(source text) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    per_category CONSTANT text :=
        'count(*) FILTER (WHERE category = ''SELL'')::integer,'
        ' coalesce(sum(quantity) FILTER (WHERE category = ''SELL''), 0),'
        ' coalesce(sum(amount_excl_tax) FILTER (WHERE category = ''SELL''), 0),'
        ' coalesce(sum(amount_inc_tax) FILTER (WHERE category = ''SELL''), 0),'
        ' count(*) FILTER (WHERE category = ''BUY'')::integer,'
        ' coalesce(sum(quantity) FILTER (WHERE category = ''BUY''), 0),'
        ' coalesce(sum(amount_excl_tax) FILTER (WHERE category = ''BUY''), 0),'
        ' coalesce(sum(amount_inc_tax) FILTER (WHERE category = ''BUY''), 0)';
    additions CONSTANT text :=
        'sell_transactions = r.sell_transactions + excluded.sell_transactions,'
        ' sell_quantity = r.sell_quantity + excluded.sell_quantity,'
        ' sell_amount_excl_tax = r.sell_amount_excl_tax + excluded.sell_amount_excl_tax,'
        ' sell_amount_inc_tax = r.sell_amount_inc_tax + excluded.sell_amount_inc_tax,'
        ' buy_transactions = r.buy_transactions + excluded.buy_transactions,'
        ' buy_quantity = r.buy_quantity + excluded.buy_quantity,'
        ' buy_amount_excl_tax = r.buy_amount_excl_tax + excluded.buy_amount_excl_tax,'
        ' buy_amount_inc_tax = r.buy_amount_inc_tax + excluded.buy_amount_inc_tax';
BEGIN
    RETURN ARRAY[
        format('INSERT INTO sales.daily_store_totals AS r SELECT transaction_date, store_id, %s FROM %s'
               ' GROUP BY transaction_date, store_id ORDER BY transaction_date, store_id'
               ' ON CONFLICT (transaction_date, store_id) DO UPDATE SET %s',
               per_category, source, additions),
        format('INSERT INTO sales.daily_product_totals AS r SELECT transaction_date, name, %s FROM %s AS t'
               ' WHERE NOT EXISTS (SELECT 1 FROM sales.synthetic_stores AS s WHERE s.store_id = t.store_id)'
               ' GROUP BY transaction_date, name ORDER BY transaction_date, name'
               ' ON CONFLICT (transaction_date, name) DO UPDATE SET %s',
               per_category, source, additions),
        format('INSERT INTO sales.products SELECT DISTINCT name FROM %s AS t'
               ' WHERE NOT EXISTS (SELECT 1 FROM sales.synthetic_stores AS s WHERE s.store_id = t.store_id)'
               ' ORDER BY name ON CONFLICT (name) DO NOTHING',
               source)
    ];
END
$$;

-- Runs as the owner: the writer may insert rows, not totals.
CREATE FUNCTION sales.roll_up_inserted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    statement text;
BEGIN
    FOREACH statement IN ARRAY sales.rollup_statements('inserted') LOOP
        EXECUTE statement;
    END LOOP;
    RETURN NULL;
END
$$;

DO $build$
DECLARE
    statement text;
BEGIN
    FOREACH statement IN ARRAY sales.rollup_statements('sales.transactions') LOOP
        EXECUTE statement;
    END LOOP;
END
$build$;

CREATE TRIGGER transactions_roll_up
    AFTER INSERT ON sales.transactions
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION sales.roll_up_inserted();

-- ---------------------------------------------------------------------------
-- Per-file control totals (`tillflow reconcile`): what a load published, and
-- every place its rows end up. A row of a file is stored, or a duplicate of a
-- stored row, or a conflict, or a reject; the first three were missing only
-- the duplicates.

ALTER TABLE ingest.uploads
    ADD COLUMN amount_excl_tax_accepted numeric(20,2),
    ADD COLUMN amount_inc_tax_accepted numeric(20,2);
COMMENT ON COLUMN ingest.uploads.amount_inc_tax_accepted IS
    'Sum of amount_inc_tax over the rows the load published as transactions (null: loaded before 0009).';
GRANT UPDATE (amount_excl_tax_accepted, amount_inc_tax_accepted) ON ingest.uploads TO tillflow_writer;

-- A record whose id was already stored (by another record) with the same
-- content: nothing is written to sales, but the file it came from is told.
-- Unique on the record's Kafka position, so a replayed batch records it once.
CREATE TABLE ingest.duplicates (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id  uuid        NOT NULL,
    source          text,
    source_ref      text,
    source_line     integer,
    kafka_topic     text,
    kafka_partition integer,
    kafka_offset    bigint,
    detected_at     timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT duplicates_kafka_position_check CHECK (
        num_nulls(kafka_topic, kafka_partition, kafka_offset) IN (0, 3)
        AND kafka_partition >= 0 AND kafka_offset >= 0
    ),
    CONSTRAINT duplicates_kafka_position_key UNIQUE (kafka_topic, kafka_partition, kafka_offset)
);
CREATE INDEX duplicates_source_ref_idx ON ingest.duplicates (source_ref);
-- The control totals group the stored rows, conflicts and rejects by file too.
CREATE INDEX transactions_source_ref_idx ON sales.transactions (source_ref)
    INCLUDE (amount_excl_tax, amount_inc_tax);
CREATE INDEX conflicts_source_ref_idx ON ingest.conflicts (source_ref);
CREATE INDEX rejects_source_ref_idx ON ingest.rejects (source_ref);
GRANT SELECT, INSERT ON ingest.duplicates TO tillflow_writer;

-- ---------------------------------------------------------------------------
-- The analytics views read the rollups. Same columns, same types, same
-- answers, byte for byte (tests/integration/test_analytics.py and
-- test_dashboards.py compare them with answers computed in Python).

CREATE OR REPLACE VIEW analytics.daily_transactions AS
SELECT transaction_date,
       sum(sell_transactions + buy_transactions)::bigint AS transactions,
       sum(sell_amount_inc_tax)::numeric AS sell_amount_inc_tax,
       sum(buy_amount_inc_tax)::numeric AS buy_amount_inc_tax
FROM sales.daily_store_totals AS t
WHERE NOT EXISTS (SELECT 1 FROM sales.synthetic_stores AS s WHERE s.store_id = t.store_id)
GROUP BY transaction_date;

CREATE OR REPLACE VIEW analytics.category_totals AS
SELECT c.category,
       coalesce(CASE c.category WHEN 'SELL' THEN t.sell_transactions ELSE t.buy_transactions END, 0) AS transactions,
       coalesce(CASE c.category WHEN 'SELL' THEN t.sell_amount_excl_tax ELSE t.buy_amount_excl_tax END, 0.00)
           AS amount_excl_tax,
       coalesce(CASE c.category WHEN 'SELL' THEN t.sell_amount_inc_tax ELSE t.buy_amount_inc_tax END, 0.00)
           AS amount_inc_tax
FROM (VALUES ('SELL'::text), ('BUY'::text)) AS c (category)
CROSS JOIN (
    SELECT sum(sell_transactions)::bigint AS sell_transactions,
           sum(sell_amount_excl_tax)::numeric AS sell_amount_excl_tax,
           sum(sell_amount_inc_tax)::numeric AS sell_amount_inc_tax,
           sum(buy_transactions)::bigint AS buy_transactions,
           sum(buy_amount_excl_tax)::numeric AS buy_amount_excl_tax,
           sum(buy_amount_inc_tax)::numeric AS buy_amount_inc_tax
    FROM sales.daily_store_totals AS t
    WHERE NOT EXISTS (SELECT 1 FROM sales.synthetic_stores AS s WHERE s.store_id = t.store_id)
) AS t;

-- A rollup row exists only where the product traded, so each is one of the
-- old view's (product, date) groups.
CREATE OR REPLACE VIEW analytics.product_daily_balance AS
SELECT name,
       transaction_date,
       sell_amount_inc_tax::numeric AS sell_amount_inc_tax,
       buy_amount_inc_tax::numeric AS buy_amount_inc_tax,
       (sell_amount_inc_tax - buy_amount_inc_tax)::numeric AS balance,
       sum(sell_amount_inc_tax - buy_amount_inc_tax) OVER (
           PARTITION BY name ORDER BY transaction_date
           ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
       ) AS cumulative_balance
FROM sales.daily_product_totals;

CREATE OR REPLACE VIEW analytics.store_daily_transactions AS
SELECT store_id,
       transaction_date,
       (sell_transactions + buy_transactions)::bigint AS transactions,
       sell_amount_inc_tax::numeric AS sell_amount_inc_tax,
       buy_amount_inc_tax::numeric AS buy_amount_inc_tax
FROM sales.daily_store_totals AS t
WHERE NOT EXISTS (SELECT 1 FROM sales.synthetic_stores AS s WHERE s.store_id = t.store_id);

CREATE OR REPLACE VIEW analytics.pipeline_freshness AS
SELECT (SELECT max(ingested_at) FROM sales.transactions) AS last_ingested_at,
       (SELECT max(transaction_date) FROM sales.transactions) AS last_transaction_date,
       (SELECT coalesce(sum(sell_transactions + buy_transactions), 0)::bigint
          FROM sales.daily_store_totals) AS transactions,
       (SELECT max(received_at) FROM ingest.rejects) AS last_reject_at,
       (SELECT count(*) FROM ingest.rejects) AS rejects,
       (SELECT max(detected_at) FROM ingest.conflicts) AS last_conflict_at,
       (SELECT count(*) FROM ingest.conflicts) AS conflicts,
       (SELECT max(created_at) FROM ingest.uploads) AS last_upload_at;

-- New: a product's day without the running total, so that a filter on the
-- date reaches the rollup's primary key (product_daily_balance's window needs
-- every earlier date, so a date filter stays above it).
CREATE VIEW analytics.product_daily_totals AS
SELECT name,
       transaction_date,
       (sell_transactions + buy_transactions)::bigint AS transactions,
       sell_amount_inc_tax::numeric AS sell_amount_inc_tax,
       buy_amount_inc_tax::numeric AS buy_amount_inc_tax,
       (sell_amount_inc_tax - buy_amount_inc_tax)::numeric AS balance
FROM sales.daily_product_totals;

-- New: every product once (sales.products, kept by the same trigger).
CREATE VIEW analytics.products AS
SELECT name FROM sales.products;

GRANT SELECT ON analytics.product_daily_totals, analytics.products TO tillflow_reader;
