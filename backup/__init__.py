"""Backups you can trust: ``tillflow backup run|list|verify|restore|schedule``.

A backup is a set of files in ``BACKUP_DIR`` sharing one name,
``<database>-<YYYYmmddTHHMMSSZ>``:

``.dump``           ``pg_dump -Fc`` of the database
``.globals.sql``    ``pg_dumpall --globals-only --no-role-passwords``: the roles
``.sha256``         both files' sha256, in ``sha256sum -c`` format
``.manifest.json``  when, sizes, server version, database properties, and the row
                    count and content checksum of ``sales.transactions`` taken in
                    the dump's own snapshot; written last: no manifest, no backup
``.verify.json``    the verifications this backup passed or failed

Modules: ``store`` (the directory), ``manifest``, ``database`` (the snapshot
and the checksum), ``dump`` (run), ``retention``, ``verify``, ``restore``,
``schedule``, ``metrics``, ``tools`` (the PostgreSQL client programs), ``cli``.

Errors::

    TillflowError
     └── BackupError        a backup step failed: says which, and why
          ├── VerifyError   a backup is corrupt or does not restore to its manifest
          └── RestoreError  a restore failed; the live database was left as it was
"""
