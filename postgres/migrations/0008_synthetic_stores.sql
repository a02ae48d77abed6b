-- Stores whose rows are not business: `tillflow smoke` proves every deploy by
-- posting a real transaction (a BUY of one "tillflow smoke canary" at 0.01) in
-- store SMOKE_STORE_ID, 'smoke' by default, and financial rows are never
-- deleted. The business answers (the analytics views below) leave the stores
-- listed here out; analytics.pipeline_freshness still counts them, since a
-- canary arriving is exactly what it shows. A different SMOKE_STORE_ID must be
-- added here first (`tillflow smoke` says so when it is not).

CREATE TABLE sales.synthetic_stores (
    store_id text PRIMARY KEY,
    why text NOT NULL
);
-- Only the owner (migrations) lists a store: the default privileges of sales
-- would let the writer insert here, and so hide rows from the answers.
REVOKE ALL ON sales.synthetic_stores FROM tillflow_writer;
INSERT INTO sales.synthetic_stores (store_id, why)
VALUES ('smoke', 'tillflow smoke: one 0.01 canary per deploy');

-- Same columns, same order: only the rows they read change.
CREATE OR REPLACE VIEW analytics.daily_transactions AS
SELECT transaction_date,
       count(*) AS transactions,
       coalesce(sum(amount_inc_tax) FILTER (WHERE category = 'SELL'), 0.00) AS sell_amount_inc_tax,
       coalesce(sum(amount_inc_tax) FILTER (WHERE category = 'BUY'), 0.00) AS buy_amount_inc_tax
FROM sales.transactions AS t
WHERE NOT EXISTS (SELECT 1 FROM sales.synthetic_stores AS s WHERE s.store_id = t.store_id)
GROUP BY transaction_date;

CREATE OR REPLACE VIEW analytics.category_totals AS
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
    FROM sales.transactions AS t
    WHERE NOT EXISTS (SELECT 1 FROM sales.synthetic_stores AS s WHERE s.store_id = t.store_id)
    GROUP BY category
) AS t USING (category);

CREATE OR REPLACE VIEW analytics.product_daily_balance AS
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
    FROM sales.transactions AS t
    WHERE NOT EXISTS (SELECT 1 FROM sales.synthetic_stores AS s WHERE s.store_id = t.store_id)
    GROUP BY name, transaction_date
) AS per_day;

CREATE OR REPLACE VIEW analytics.store_daily_transactions AS
SELECT store_id,
       transaction_date,
       count(*) AS transactions,
       coalesce(sum(amount_inc_tax) FILTER (WHERE category = 'SELL'), 0.00) AS sell_amount_inc_tax,
       coalesce(sum(amount_inc_tax) FILTER (WHERE category = 'BUY'), 0.00) AS buy_amount_inc_tax
FROM sales.transactions AS t
WHERE NOT EXISTS (SELECT 1 FROM sales.synthetic_stores AS s WHERE s.store_id = t.store_id)
GROUP BY store_id, transaction_date;
