"""Errors failstore raises on purpose.

Every error a user can cause is a ``FailstoreError``: its message is one line that names the
file, row, column or option at fault and says how to fix it. The CLI prints that line to stderr
and exits non-zero; a traceback is shown only with ``--debug``.
"""

from __future__ import annotations


class FailstoreError(Exception):
    """Base class: a user-facing, one-line error."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = self.message if not self.hint else f"{self.message}; {self.hint}"
        return " ".join(text.split())


class ConfigError(FailstoreError):
    """A bad option, environment variable or config value."""


class StoreError(FailstoreError):
    """The store is missing, unreadable or does not hold what was asked for."""


class InputError(FailstoreError):
    """A broken manifest, image folder, label map or vocabulary file."""


class ModelSpecError(FailstoreError):
    """A model spec that cannot be resolved (unknown name, bad path, bad format)."""


class WeightsNotFoundError(ModelSpecError):
    """Weights for a model are not on this machine (failstore never downloads)."""


class SqlError(FailstoreError):
    """A query that is refused by the guard or fails in the engine."""


class SqlRefused(SqlError):
    """The guard refused a query (not read-only, unknown table, forbidden function...)."""


class SqlTimeout(SqlError):
    """A query ran past the time limit."""


class SqlTooLarge(SqlError):
    """A query result past the row or byte cap."""


class IngestError(FailstoreError):
    """An ingest that cannot proceed (nothing ingested, or --strict and some images failed)."""


class ClusterError(FailstoreError):
    """A Ray cluster that cannot be started or reached (``--engine ray``)."""


class PublishError(FailstoreError):
    """PostgreSQL refused a connection or a publish (the previous published state is intact)."""

    exit_code = 3
