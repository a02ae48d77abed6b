"""Tillflow's exceptions.

Errors of the libraries underneath are translated into these, keeping the
cause, at one boundary: psycopg2's in ``tillflow.pg`` (every package connects
and runs its statements through it), confluent-kafka's where each package
produces or administers (``etl.api.publish``, ``tillflow.kafka_admin``), sqlite3's
and the file system's in the source that reads them. The CLI prints
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


def first_line(exc: BaseException, *, detail: bool = False) -> str:
    """What went wrong, in one line, for a message that wraps ``exc``.

    A PostgreSQL error gives its primary message and SQLSTATE (and, with
    ``detail``, the server's detail); anything else the first line of its text,
    or its type when it has none. Never a traceback, never several lines.
    """
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None)
    if primary:
        extra = f" ({diag.message_detail})" if detail and diag.message_detail else ""
        return f"{primary}{extra} [SQLSTATE {exc.pgcode}]"
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
