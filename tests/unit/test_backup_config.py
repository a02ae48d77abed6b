"""The backup's settings (tillflow.config): defaults, and a sentence naming the variable."""
from __future__ import annotations

from pathlib import Path

import pytest

from backup.context import Context
from tillflow.config import Settings
from tillflow.errors import ConfigError


def test_defaults():
    settings = Settings.from_env({})
    assert settings.backup_dir is None
    assert settings.backup_schedule == "0 */6 * * *"
    assert settings.backup_verify_schedule == "30 3 * * *"
    assert (settings.backup_keep_daily, settings.backup_keep_weekly) == (7, 4)
    assert settings.backup_restore_jobs == 2
    assert settings.pg_bindir is None


def test_values_are_read(tmp_path):
    settings = Settings.from_env({
        "BACKUP_DIR": str(tmp_path), "BACKUP_SCHEDULE": "  15   2  * * 1-5 ", "BACKUP_VERIFY_SCHEDULE": "@daily",
        "BACKUP_KEEP_DAILY": "0", "BACKUP_KEEP_WEEKLY": "12", "BACKUP_RESTORE_JOBS": "4", "PG_BINDIR": str(tmp_path),
    })
    assert settings.backup_dir == tmp_path
    assert settings.backup_schedule == "15 2 * * 1-5"
    assert settings.backup_verify_schedule == "@daily"
    assert (settings.backup_keep_daily, settings.backup_keep_weekly, settings.backup_restore_jobs) == (0, 12, 4)
    assert settings.pg_bindir == tmp_path


@pytest.mark.parametrize(
    "env, variable",
    [
        ({"BACKUP_SCHEDULE": "0 */6 * *"}, "BACKUP_SCHEDULE"),
        ({"BACKUP_SCHEDULE": "61 * * * *"}, "BACKUP_SCHEDULE"),
        ({"BACKUP_SCHEDULE": "every six hours"}, "BACKUP_SCHEDULE"),
        ({"BACKUP_SCHEDULE": "0 0 */6 * * *"}, "BACKUP_SCHEDULE"),  # croniter's seconds field: refused
        ({"BACKUP_VERIFY_SCHEDULE": "30 3 * * 8"}, "BACKUP_VERIFY_SCHEDULE"),
        ({"BACKUP_KEEP_DAILY": "-1"}, "BACKUP_KEEP_DAILY"),
        ({"BACKUP_KEEP_WEEKLY": "four"}, "BACKUP_KEEP_WEEKLY"),
        ({"BACKUP_RESTORE_JOBS": "0"}, "BACKUP_RESTORE_JOBS"),
        ({"PG_BINDIR": "/no/such/dir"}, "PG_BINDIR"),
    ],
)
def test_a_malformed_value_is_refused_naming_the_variable(env, variable):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert str(caught.value).startswith(f"{variable}=")


def test_a_cron_message_says_what_a_cron_expression_is():
    with pytest.raises(ConfigError, match=r"minute hour day-of-month month day-of-week \(UTC\), such as '0 \*/6 \* \* \*'"):
        Settings.from_env({"BACKUP_SCHEDULE": "hourly"})


def test_backup_commands_need_backup_dir():
    with pytest.raises(ConfigError, match="^BACKUP_DIR is not set"):
        Context.from_settings(Settings.from_env({}))


def test_a_bindir_without_the_client_programs_is_refused(tmp_path):
    from backup.errors import BackupError

    with pytest.raises(BackupError, match=f"PG_BINDIR={tmp_path} holds no pg_dump"):
        Context.from_settings(Settings.from_env({"BACKUP_DIR": str(tmp_path), "PG_BINDIR": str(tmp_path)}))


def test_env_example_documents_every_backup_variable():
    text = (Path(__file__).resolve().parents[2] / ".env.example").read_text(encoding="utf-8")
    for name in ("BACKUP_DIR", "BACKUP_SCHEDULE", "BACKUP_VERIFY_SCHEDULE", "BACKUP_KEEP_DAILY",
                 "BACKUP_KEEP_WEEKLY", "BACKUP_RESTORE_JOBS", "PG_BINDIR", "RECONCILE_SCHEDULE"):
        assert f"\n{name}=" in text or f"\n# {name}=" in text, f".env.example does not document {name}"
