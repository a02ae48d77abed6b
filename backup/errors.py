"""The backup package's exceptions (the hierarchy is drawn in ``backup/__init__.py``)."""
from __future__ import annotations

from tillflow.errors import TillflowError


class BackupError(TillflowError):
    """A backup step failed; earlier backups are untouched."""


class VerifyError(BackupError):
    """A backup is corrupt, or does not restore to what its manifest says."""


class RestoreError(BackupError):
    """A restore failed; the live database was left as it was."""


class Cancelled(BackupError):
    """The job was stopped (SIGTERM) before it finished; nothing was kept."""
