"""Settings are read once from the environment and fail with a sentence naming
the variable."""
from __future__ import annotations

from decimal import Decimal

import pytest

from tillflow.config import Settings
from tillflow.errors import ConfigError


def test_defaults():
    s = Settings.from_env({})
    assert s.tax_rate == Decimal("0.20") and s.store_id == "main"
    assert s.topic_transactions == "tillflow.transactions" and s.consumer_group == "tillflow-writer"
    assert s.consumer_session_timeout_ms == 30_000


@pytest.mark.parametrize(
    ("env", "needs", "names"),
    [
        ({}, {"need_database": True}, "DATABASE_URL"),
        ({}, {"need_kafka": True}, "KAFKA_BOOTSTRAP_SERVERS"),
        ({}, {"need_inbox": True}, "INBOX_DIR"),
        ({"DATABASE_URL": "mysql://x"}, {}, "DATABASE_URL"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "localhost"}, {}, "KAFKA_BOOTSTRAP_SERVERS"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "a:1,b:99999"}, {}, "KAFKA_BOOTSTRAP_SERVERS"),
        ({"TAX_RATE": "twenty"}, {}, "TAX_RATE"),
        ({"TAX_RATE": "1.5"}, {}, "TAX_RATE"),
        ({"TAX_RATE": "NaN"}, {}, "TAX_RATE"),
        ({"CONSUMER_BATCH_SIZE": "0"}, {}, "CONSUMER_BATCH_SIZE"),
        ({"CONSUMER_BATCH_SIZE": "lots"}, {}, "CONSUMER_BATCH_SIZE"),
        ({"CONSUMER_SESSION_TIMEOUT_MS": "5999"}, {}, "CONSUMER_SESSION_TIMEOUT_MS"),
        ({"LOG_LEVEL": "chatty"}, {}, "LOG_LEVEL"),
        ({"TILLFLOW_WRITER_PASSWORD": "changeme"}, {}, "TILLFLOW_WRITER_PASSWORD"),
        ({"DATABASE_PASSWORD_FILE": "/nonexistent/secret", "DATABASE_URL": "postgresql://u@h/d"}, {},
         "DATABASE_PASSWORD_FILE"),
    ],
)
def test_a_missing_or_malformed_variable_is_named(env, needs, names):
    with pytest.raises(ConfigError, match=names):
        Settings.from_env(env, **needs)


def test_placeholder_passwords_are_allowed_in_development():
    s = Settings.from_env({"TILLFLOW_ENV": "development", "TILLFLOW_WRITER_PASSWORD": "changeme"})
    assert s.role_passwords["writer"] == "changeme"


def test_the_password_file_is_spliced_into_the_url_quoted(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("p@ss:w/rd\n")
    s = Settings.from_env({"DATABASE_URL": "postgresql://tillflow_writer@db:5432/tillflow",
                           "DATABASE_PASSWORD_FILE": str(secret)})
    assert s.database_url == "postgresql://tillflow_writer:p%40ss%3Aw%2Frd@db:5432/tillflow"


def test_inbox_siblings_default_next_to_the_inbox(tmp_path):
    s = Settings.from_env({"INBOX_DIR": str(tmp_path / "inbox")})
    assert s.archive_dir == tmp_path / "archive" and s.failed_dir == tmp_path / "failed"


def test_settings_are_frozen():
    s = Settings.from_env({})
    with pytest.raises(AttributeError):
        s.tax_rate = Decimal("0.5")  # type: ignore[misc]
