"""The manifest and verification records (backup.manifest), and the roles script a
restore runs (backup.restore.filter_globals)."""
from __future__ import annotations

import json

import pytest

from backup.errors import VerifyError
from backup.manifest import (
    Content,
    DatabaseProperties,
    FileInfo,
    Manifest,
    Verification,
    verifications_from_json,
    verifications_to_json,
)
from backup.restore import filter_globals


def manifest(**changes) -> Manifest:
    fields = dict(
        name="tillflow-20260105T120000Z",
        created_at="2026-01-05T12:00:00Z",
        finished_at="2026-01-05T12:00:09Z",
        duration_seconds=9.5,
        server_version="15.18",
        server_version_num=150018,
        pg_dump_version="pg_dump (PostgreSQL) 15.18",
        taken_by="tillflow_backup",
        dump=FileInfo("tillflow-20260105T120000Z.dump", 1000, "a" * 64),
        globals=FileInfo("tillflow-20260105T120000Z.globals.sql", 24, "b" * 64),
        database=DatabaseProperties(
            "tillflow", "postgres", "UTF8", "c", "C.UTF-8", "C.UTF-8", None,
            [["PUBLIC", "CONNECT", False], ["tillflow_writer", "TEMPORARY", False]],
            [[None, ["work_mem=8MB"]]],
        ),
        transactions=Content("sales.transactions", 3, "0" * 16, "md5-sum64/v1"),
    )
    return Manifest(**{**fields, **changes})


def test_a_manifest_survives_json():
    original = manifest()
    again = Manifest.from_json(original.to_json(), source="m.json")
    assert again == original
    assert again.size_bytes == 1024
    assert again.created.isoformat() == "2026-01-05T12:00:00+00:00"


@pytest.mark.parametrize(
    "text, complaint",
    [
        ("not json", "not a Tillflow backup manifest"),
        ('{"format": 99}', "manifest format 99"),
        ('{"format": 1, "name": "x"}', "not a Tillflow backup manifest"),
        ("[]", "not a Tillflow backup manifest"),
    ],
)
def test_a_broken_manifest_is_refused_with_its_source(text, complaint):
    with pytest.raises(VerifyError, match=complaint) as caught:
        Manifest.from_json(text, source="/backups/x.manifest.json")
    assert "/backups/x.manifest.json" in str(caught.value)


def test_verification_records_round_trip_and_garbage_means_unverified():
    records = {"quick": Verification("quick", "2026-01-05T12:00:10Z", True, "ok", 0.5)}
    assert verifications_from_json(verifications_to_json(records)) == records
    assert verifications_from_json("{broken") == {}
    assert verifications_from_json(json.dumps({"quick": {"ok": True}})) == {}


GLOBALS = '''--
-- PostgreSQL database cluster dump
--

SET default_transaction_read_only = off;

CREATE ROLE postgres;
ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS;
CREATE ROLE tillflow_owner;
ALTER ROLE tillflow_owner WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS;
CREATE ROLE "Odd ""Name""";
ALTER ROLE "Odd ""Name""" WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB NOLOGIN NOREPLICATION NOBYPASSRLS;
ALTER ROLE tillflow_reader SET statement_timeout TO '60s';
GRANT pg_read_all_data TO tillflow_backup GRANTED BY postgres;

--
-- PostgreSQL database cluster dump complete
--
'''


def test_roles_script_skips_existing_roles_and_leaves_the_restoring_superuser_alone():
    script, created = filter_globals(GLOBALS, existing={"postgres", "tillflow_reader"}, me="postgres")
    lines = script.splitlines()
    assert "-- exists already: CREATE ROLE postgres;" in lines
    assert not any(line.startswith("ALTER ROLE postgres WITH") for line in lines)
    assert "CREATE ROLE tillflow_owner;" in lines
    assert 'CREATE ROLE "Odd ""Name""";' in lines
    assert created == ["tillflow_owner", 'Odd "Name"']
    # Attributes, settings and memberships of every other role are restored as dumped.
    assert any(line.startswith("ALTER ROLE tillflow_owner WITH") for line in lines)
    assert "ALTER ROLE tillflow_reader SET statement_timeout TO '60s';" in lines
    assert "GRANT pg_read_all_data TO tillflow_backup GRANTED BY postgres;" in lines


def test_roles_script_on_a_server_with_another_superuser_creates_the_dumped_one():
    script, created = filter_globals(GLOBALS, existing={"admin"}, me="admin")
    assert "CREATE ROLE postgres;" in script.splitlines()
    assert created[0] == "postgres"
