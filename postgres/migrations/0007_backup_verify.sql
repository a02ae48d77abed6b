-- tillflow: run-as migrator
--
-- The backup role may create databases: `tillflow backup verify --full` (the
-- backup service, on BACKUP_VERIFY_SCHEDULE) restores the newest backup into a
-- scratch database it creates, compares it with the backup's manifest, and
-- drops it. A backup is only real once it has been restored.
--
-- Why CREATEDB and nothing more: the role already reads every row
-- (pg_read_all_data) and writes none. CREATEDB adds databases it owns, and
-- nothing in the live one: no CREATE, INSERT or DDL there, no other role's
-- privileges. The scratch restore runs --no-owner --no-acl, so the role needs
-- no membership in tillflow_owner. The alternative, a superuser credential in
-- the backup container, is what this avoids. Restoring over the live database
-- (`tillflow backup restore --replace`) still takes the migrate job's superuser.
--
-- Roles are cluster-wide while this file runs once per database: checked first,
-- so a concurrent migrator of another database finds nothing left to do.

DO $backup$
BEGIN
    IF NOT (SELECT rolcreatedb FROM pg_catalog.pg_roles WHERE rolname = 'tillflow_backup') THEN
        ALTER ROLE tillflow_backup CREATEDB;
    END IF;
END
$backup$;
