"""Tillflow's exceptions.

Errors of the libraries underneath (psycopg2, kafka-python, sqlite3, OS) are
translated at one boundary into these, keeping the cause. The CLI prints
``str(error)`` as one line and exits non-zero; a user never sees a traceback
for bad input or an unreachable service.

    TillflowError
     ├── ConfigError        a missing or malformed setting
     ├── InputError         a file or request that cannot be read at all
     ├── PublishError       Kafka did not acknowledge
     ├── SinkError          PostgreSQL refused or was unreachable
     └── MigrationError     a schema migration failed
"""


class TillflowError(Exception):
    """Base of every error Tillflow raises on purpose."""


class ConfigError(TillflowError):
    """A setting is missing or malformed."""


class InputError(TillflowError):
    """An input (file, database, request) cannot be read at all."""


class PublishError(TillflowError):
    """Kafka did not acknowledge a record."""


class SinkError(TillflowError):
    """PostgreSQL refused a write or could not be reached."""


class MigrationError(TillflowError):
    """A schema migration failed."""
