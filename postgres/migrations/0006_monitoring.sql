-- tillflow: run-as migrator
--
-- The monitoring role: the PostgreSQL exporter that Prometheus scrapes
-- (docker-compose.yml, postgres-exporter) connects as it.
--
--   tillflow_monitor  pg_monitor: the server's statistics views and functions
--                     (pg_stat_*, database sizes, WAL and lock counts); CONNECT
--                     to this database; no schema, table or view of Tillflow's.
--
-- Like 0001, roles are cluster-wide while this file runs once per database:
-- every cluster-wide change is checked first and tolerates a concurrent
-- migrator of another database doing the same.

DO $monitor$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'tillflow_monitor') THEN
        BEGIN
            -- A few connections are all an exporter needs; a runaway one
            -- cannot take the server's connection slots.
            CREATE ROLE tillflow_monitor NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
                CONNECTION LIMIT 3;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL;
        END;
    END IF;

    IF NOT pg_catalog.pg_has_role('tillflow_monitor', 'pg_monitor', 'MEMBER') THEN
        BEGIN
            GRANT pg_monitor TO tillflow_monitor;
        EXCEPTION WHEN unique_violation THEN NULL;
        END;
    END IF;

    -- Read-only sessions, and no statistics query may hold a scrape up for long.
    IF NOT EXISTS (
        SELECT FROM pg_catalog.pg_db_role_setting s
        JOIN pg_catalog.pg_roles r ON r.oid = s.setrole
        WHERE r.rolname = 'tillflow_monitor' AND s.setdatabase = 0
          AND s.setconfig @> ARRAY['default_transaction_read_only=on', 'statement_timeout=10s']
    ) THEN
        ALTER ROLE tillflow_monitor SET default_transaction_read_only = on;
        ALTER ROLE tillflow_monitor SET statement_timeout = '10s';
    END IF;

    EXECUTE format('GRANT CONNECT ON DATABASE %I TO tillflow_monitor', current_database());
END
$monitor$;
