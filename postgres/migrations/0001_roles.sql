-- tillflow: run-as migrator
--
-- Roles and database-level privileges. This is the only migration that runs as
-- the migrator (a superuser, or a CREATEROLE role that owns the database);
-- every later file runs as tillflow_owner, so what it creates is owned by it.
--
-- Roles are cluster-wide while this file runs once per database, and several
-- Tillflow databases may share a cluster (tests do): every cluster-wide change
-- is checked before it is made and tolerates a concurrent migrator doing the
-- same thing in another database. The roles start NOLOGIN; tillflow.migrate
-- gives LOGIN and a password to those it is given a password for.
--
--   tillflow_owner   owns the schemas, tables and views; runs the migrations
--   tillflow_writer  the consumer (and loaders): insert-only on sales
--   tillflow_reader  Grafana and analysts: SELECT on the analytics views only
--   tillflow_backup  pg_dump: reads everything (pg_read_all_data), writes nothing

DO $roles$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['tillflow_owner', 'tillflow_writer', 'tillflow_reader', 'tillflow_backup']
    LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS', role_name);
            EXCEPTION
                -- Another database's migrator created it between our check and our CREATE.
                WHEN duplicate_object OR unique_violation THEN NULL;
            END;
        END IF;
    END LOOP;

    -- pg_dump needs SELECT on every table and sequence, including ones a later
    -- migration (or a human) adds; the predefined role covers them all.
    IF NOT pg_catalog.pg_has_role('tillflow_backup', 'pg_read_all_data', 'MEMBER') THEN
        BEGIN
            GRANT pg_read_all_data TO tillflow_backup;
        EXCEPTION WHEN unique_violation THEN NULL;
        END;
    END IF;

    -- The migrator must be able to SET ROLE tillflow_owner for the later files.
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)
       AND NOT pg_catalog.pg_has_role(current_user, 'tillflow_owner', 'MEMBER') THEN
        EXECUTE format('GRANT tillflow_owner TO %I', current_user);
    END IF;

    -- Grafana and analysts: read-only sessions and no runaway dashboard query.
    -- Both are defaults a session may change; the privileges below are the boundary.
    IF NOT EXISTS (
        SELECT FROM pg_catalog.pg_db_role_setting s
        JOIN pg_catalog.pg_roles r ON r.oid = s.setrole
        WHERE r.rolname = 'tillflow_reader' AND s.setdatabase = 0
          AND s.setconfig @> ARRAY['default_transaction_read_only=on', 'statement_timeout=60s']
    ) THEN
        ALTER ROLE tillflow_reader SET default_transaction_read_only = on;
        ALTER ROLE tillflow_reader SET statement_timeout = '60s';
    END IF;
END
$roles$;

-- This database only: nobody connects unless named here, and nobody creates
-- objects in the public schema (already the default since PostgreSQL 15).
DO $database$
BEGIN
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT, TEMPORARY, CREATE ON DATABASE %I TO tillflow_owner', current_database());
    -- TEMPORARY: the consumer may COPY a batch into a temporary table to dedupe it.
    EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO tillflow_writer', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO tillflow_reader, tillflow_backup', current_database());
END
$database$;

REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- The owner may read which migrations are applied; only the migrator records them.
GRANT USAGE ON SCHEMA tillflow_meta TO tillflow_owner;
GRANT SELECT ON tillflow_meta.schema_migrations TO tillflow_owner;
