"""Connecting to PostgreSQL through ADBC's PostgreSQL driver (libpq underneath).

Credentials come from the URL, else from libpq's own sources (``PGPASSWORD``, ``~/.pgpass``,
``PGUSER``...); they are never printed: messages name the host, port and database only, and
any password that libpq would echo is masked.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from failstore.errors import ConfigError, PublishError

SCHEMES = ("postgresql", "postgres")


@dataclass(frozen=True)
class Target:
    """Where a publish goes (no password: that stays in the URL given to libpq)."""

    url: str
    host: str
    port: int
    database: str
    user: str | None

    def where(self) -> str:
        return f"{self.host}:{self.port}, database {self.database}"


def parse_url(url: str) -> Target:
    """Check a ``postgresql://[user[:password]@]host[:port][/database][?k=v]`` URL."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        shown = url.split("://", 1)[0] if "://" in url else "(no scheme)"
        raise ConfigError(
            f"not a PostgreSQL URL: scheme {shown!r}",
            hint="write postgresql://USER@HOST:PORT/DATABASE (password from PGPASSWORD or "
            "~/.pgpass)",
        )
    query = parse_qs(parts.query)
    try:
        port = parts.port or int(query.get("port", [os.environ.get("PGPORT", "5432")])[0])
    except ValueError as e:
        raise ConfigError("the URL's port is not a number", hint="e.g. :5432") from e
    host = unquote(parts.hostname or "") or query.get("host", [""])[0]
    host = host or os.environ.get("PGHOST", "localhost")
    user = unquote(parts.username) if parts.username else os.environ.get("PGUSER")
    database = unquote(parts.path.lstrip("/")) or query.get("dbname", [""])[0]
    database = database or os.environ.get("PGDATABASE", user or "postgres")
    return Target(url=url, host=host, port=port, database=database, user=user)


def mask(text: str, url: str) -> str:
    """``text`` with the URL's password (and the URL itself) replaced."""
    password = urlsplit(url).password
    text = text.replace(url, "postgresql://...")
    if password:
        text = text.replace(password, "***").replace(unquote(password), "***")
    return text


def server_reason(error: BaseException, url: str) -> str:
    """libpq's reason, on one line: ``FATAL: database "x" does not exist``."""
    text = mask(str(error), url)
    text = re.sub(r"^\w+: \[libpq\] ", "", text.strip())
    text = re.sub(r"^Failed to connect: ", "", text)
    text = re.sub(r'^connection to server at "[^"]*"(, port \d+)? failed: ', "", text)
    text = re.sub(r"^FATAL:\s+", "", text)
    # a refused statement: the server's ERROR and DETAIL, not the statement (it may be long)
    found = re.search(r"\bERROR:\s.*", text, flags=re.S)
    if found:
        text = found.group(0)
    text = " ".join(text.split())
    return text if len(text) <= 400 else text[:397] + "..."


def connect(target: Target) -> Any:
    """An ADBC DB-API connection (autocommit off: everything until ``commit`` is one
    transaction). A failure is one line: host, port, database and the server's reason."""
    import adbc_driver_postgresql.dbapi as pg

    try:
        return pg.connect(target.url)
    except Exception as e:  # adbc_driver_manager.Error and kin
        raise PublishError(
            f"cannot connect to PostgreSQL at {target.where()}: {server_reason(e, target.url)}"
        ) from None


def ident(name: str) -> str:
    """A quoted PostgreSQL identifier."""
    return '"' + name.replace('"', '""') + '"'
