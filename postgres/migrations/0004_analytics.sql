-- Schema analytics: the stable interface for Grafana, analysts and
-- `tillflow report`. Runs as tillflow_owner.
--
-- Views run with their owner's privileges, so tillflow_reader needs nothing on
-- sales or ingest: SELECT on these views is all it has. Amounts are numeric
-- with two decimals (sums of numeric(12,2), never float); counts are bigint.
-- A column is renamed or removed only by adding a new view, never in place.

CREATE SCHEMA analytics AUTHORIZATION tillflow_owner;
REVOKE ALL ON SCHEMA analytics FROM PUBLIC;
GRANT USAGE ON SCHEMA analytics TO tillflow_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE tillflow_owner IN SCHEMA analytics
    GRANT SELECT ON TABLES TO tillflow_reader;

-- One row per date that has at least one transaction.
CREATE VIEW analytics.daily_transactions AS
SELECT transaction_date,
       count(*) AS transactions,
       coalesce(sum(amount_inc_tax) FILTER (WHERE category = 'SELL'), 0.00) AS sell_amount_inc_tax,
       coalesce(sum(amount_inc_tax) FILTER (WHERE category = 'BUY'), 0.00) AS buy_amount_inc_tax
FROM sales.transactions
GROUP BY transaction_date;

-- Always one row for SELL and one for BUY (zeros before the first sale), so a
-- dashboard shows 0 rather than "no data".
CREATE VIEW analytics.category_totals AS
SELECT c.category,
       coalesce(t.transactions, 0) AS transactions,
       coalesce(t.amount_excl_tax, 0.00) AS amount_excl_tax,
       coalesce(t.amount_inc_tax, 0.00) AS amount_inc_tax
FROM (VALUES ('SELL'::text), ('BUY'::text)) AS c (category)
LEFT JOIN (
    SELECT category,
           count(*) AS transactions,
           sum(amount_excl_tax) AS amount_excl_tax,
           sum(amount_inc_tax) AS amount_inc_tax
    FROM sales.transactions
    GROUP BY category
) AS t USING (category);

-- Per product and date it was traded: SELL minus BUY (amounts including tax)
-- and its running total over the product's dates. A filter on name is pushed
-- below the window (name is its partition), so one product reads only its rows
-- through transactions_name_date_idx; a filter on date is not, because the
-- running total needs the earlier dates.
CREATE VIEW analytics.product_daily_balance AS
SELECT name,
       transaction_date,
       sell_amount_inc_tax,
       buy_amount_inc_tax,
       sell_amount_inc_tax - buy_amount_inc_tax AS balance,
       sum(sell_amount_inc_tax - buy_amount_inc_tax) OVER (
           PARTITION BY name ORDER BY transaction_date
           ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
       ) AS cumulative_balance
FROM (
    SELECT name,
           transaction_date,
           coalesce(sum(amount_inc_tax) FILTER (WHERE category = 'SELL'), 0.00) AS sell_amount_inc_tax,
           coalesce(sum(amount_inc_tax) FILTER (WHERE category = 'BUY'), 0.00) AS buy_amount_inc_tax
    FROM sales.transactions
    GROUP BY name, transaction_date
) AS per_day;

-- The shop has several locations: daily_transactions split by store.
CREATE VIEW analytics.store_daily_transactions AS
SELECT store_id,
       transaction_date,
       count(*) AS transactions,
       coalesce(sum(amount_inc_tax) FILTER (WHERE category = 'SELL'), 0.00) AS sell_amount_inc_tax,
       coalesce(sum(amount_inc_tax) FILTER (WHERE category = 'BUY'), 0.00) AS buy_amount_inc_tax
FROM sales.transactions
GROUP BY store_id, transaction_date;

-- Pipeline dashboard: one row; a null time means "never".
CREATE VIEW analytics.pipeline_freshness AS
SELECT (SELECT max(ingested_at) FROM sales.transactions) AS last_ingested_at,
       (SELECT max(transaction_date) FROM sales.transactions) AS last_transaction_date,
       (SELECT count(*) FROM sales.transactions) AS transactions,
       (SELECT max(received_at) FROM ingest.rejects) AS last_reject_at,
       (SELECT count(*) FROM ingest.rejects) AS rejects,
       (SELECT max(detected_at) FROM ingest.conflicts) AS last_conflict_at,
       (SELECT count(*) FROM ingest.conflicts) AS conflicts,
       (SELECT max(created_at) FROM ingest.uploads) AS last_upload_at;

-- What was refused and why; Grafana orders by received_at and limits.
CREATE VIEW analytics.rejects AS
SELECT received_at, transaction_id, reasons, raw, source, source_ref, source_line
FROM ingest.rejects;

CREATE VIEW analytics.conflicts AS
SELECT detected_at, transaction_id, stored, incoming, source, source_ref, source_line
FROM ingest.conflicts;

CREATE VIEW analytics.uploads AS
SELECT created_at, finished_at, status, file_name, sha256, size_bytes, source, store_id,
       rows_read, rows_accepted, rows_rejected
FROM ingest.uploads;

-- Explicit as well as by default privilege, so the grant is visible in \dp.
GRANT SELECT ON ALL TABLES IN SCHEMA analytics TO tillflow_reader;
