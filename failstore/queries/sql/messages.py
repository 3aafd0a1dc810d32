"""One-line messages for SQL that sqlglot cannot read, and sqlglot's log kept off stderr.

sqlglot raises ``ParseError`` (with structured ``errors``: description, line, col, highlight),
``TokenError`` (an unterminated string, quoted name or comment; the cause names the missing
delimiter and its offset), ``UnsupportedError`` (a construct with no faithful DuckDB form) and,
on deeply nested input, ``RecursionError``. ``refusal()`` turns each into a ``SqlRefused``
whose message is one line in the user's terms: where, what, and how to fix it.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlglot.errors import ParseError, TokenError, UnsupportedError

from failstore.errors import SqlRefused

TOO_DEEP = (
    "the query is nested too deeply to check (parentheses, subqueries or CASE inside each "
    "other); flatten it, e.g. move subqueries into WITH"
)
MAX_SHOWN = 40  # characters of a quoted token shown in a message

# sqlglot's tokenizer error names the missing delimiter and the offset where it was opened.
_AT_OFFSET = re.compile(r"(?:Missing (\S+)|Numeric string .*) from \d+:(\d+)")
_DELIMITED = {
    "'": "string",
    "$$": "dollar-quoted string",
    "*/": "comment",
    '"': "quoted name",
    "`": "quoted name",
    "]": "name",
}

# Statements that are never a query: a query starting with one is refused as that statement
# even when sqlglot cannot parse the rest (EXPORT DATABASE, IMPORT DATABASE...).
STATEMENT_KEYWORDS = frozenset(
    {
        "ALTER", "ATTACH", "BEGIN", "CALL", "CHECKPOINT", "COMMIT", "COPY", "CREATE",
        "DEALLOCATE", "DECLARE", "DELETE", "DETACH", "DROP", "EXEC", "EXECUTE", "EXPORT", "GRANT",
        "IMPORT", "INSERT", "INSTALL", "LOAD", "MERGE", "PRAGMA", "PREPARE", "RESET", "REVOKE",
        "ROLLBACK", "SET", "TRUNCATE", "UPDATE", "USE", "VACUUM",
    }
)  # fmt: skip
_FIRST_WORD = re.compile(r"(?:\s+|--[^\n]*|/\*.*?\*/)*([A-Za-z_]+)", re.DOTALL)

# ----------------------------------------------------------------------------- sqlglot's log

_quiet = threading.local()


class _QuietFilter(logging.Filter):
    """Drops sqlglot's warnings (Command fallbacks, unsupported syntax) logged by the thread
    that is inside ``quiet_sqlglot()``: the guard reports what matters as one refusal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_quiet, "depth", 0)


_FILTER = _QuietFilter()
logging.getLogger("sqlglot").addFilter(_FILTER)


@contextmanager
def quiet_sqlglot() -> Iterator[None]:
    """Keep sqlglot's log quiet in this thread (other threads and callers are unaffected)."""
    _quiet.depth = getattr(_quiet, "depth", 0) + 1
    try:
        yield
    finally:
        _quiet.depth -= 1


# ----------------------------------------------------------------------------- messages


def _shown(text: str) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "…")


def _position(sql: str, offset: int) -> str:
    """``line L, column C`` (1-based) of a 0-based offset in ``sql``."""
    line = sql.count("\n", 0, offset) + 1
    column = offset - (sql.rfind("\n", 0, offset) + 1) + 1
    return f"line {line}, column {column}"


def _detail(description: str) -> str:
    """sqlglot's description in user terms, or "" when it says nothing more than the place."""
    text = description.strip().rstrip(".")
    if text.startswith("Required keyword"):  # "Required keyword: 'this' missing for <class ..>"
        return "something is missing after it"
    if text == "Invalid expression / Unexpected token":
        return ""
    text = text.split(" but got ", 1)[0]  # "Expected table name but got <Token ...>"
    if "<" in text or not text:
        return ""
    return text[0].lower() + text[1:]


def parse_message(error: ParseError) -> str:
    """``syntax error near 'WHERE' at line 1, column 15: expected table name``, from the
    first of sqlglot's structured errors."""
    info: dict[str, Any] = error.errors[0] if error.errors else {}
    line, col = info.get("line"), info.get("col")
    highlight = str(info.get("highlight") or "")
    if not isinstance(line, int) or not isinstance(col, int):
        detail = _detail(str(error).splitlines()[0] if str(error) else "")
        return f"syntax error{': ' + detail if detail else ''}"
    if highlight and "\n" not in highlight:
        col = col - len(highlight) + 1  # sqlglot gives the column where the token ends
    near = f" near {_shown(highlight)}" if highlight.strip() else ""
    detail = _detail(str(info.get("description") or ""))
    if highlight in ("$", "@", ":") and not detail:  # ${var}, @{var}...
        detail = "write a parameter as $name"
    return f"syntax error{near} at line {line}, column {col}" + (f": {detail}" if detail else "")


def token_message(error: TokenError, sql: str) -> str:
    """An unterminated string, quoted name or comment, with where it starts."""
    cause = str(error.__cause__ if isinstance(error.__cause__, TokenError) else error)
    m = _AT_OFFSET.search(cause)
    if m and cause.startswith("Missing "):
        delimiter, offset = m.group(1), int(m.group(2))
        kind = _DELIMITED.get(delimiter, "quoted text")
        return (
            f"unterminated {kind} starting at {_position(sql, offset)}: close it with {delimiter}"
        )
    if m and cause.startswith("Numeric string"):
        return f"a number with invalid digits at {_position(sql, int(m.group(2)))}"
    # Otherwise the tokenizer failed at an offset 50 characters inside its context window.
    if error.end is not None and error.end < len(sql) - 1:
        offset = max(error.end - 50, 0)
        return (
            f"cannot read the query at {_position(sql, offset)}, near "
            f"{_shown(sql[offset : offset + 20])}: look for an unclosed quote or comment"
        )
    return "the query ends inside a string, quoted name or comment: close it"


def statement_keyword(sql: str) -> str | None:
    """The query's first word (after comments) when it starts a statement that is not a query."""
    m = _FIRST_WORD.match(sql)
    word = m.group(1).upper() if m else ""
    return word if word in STATEMENT_KEYWORDS else None


def refusal(error: BaseException, sql: str, read: str) -> SqlRefused:
    """The one-line ``SqlRefused`` for an error sqlglot raised while reading ``sql``."""
    if isinstance(error, RecursionError):
        return SqlRefused(TOO_DEEP)
    if isinstance(error, UnsupportedError):
        what = " ".join(str(error).split()).rstrip(".")
        return SqlRefused(
            f"the query cannot be translated from {read} to DuckDB SQL faithfully ({what})",
            hint="write that part in DuckDB SQL",
        )
    if isinstance(error, ParseError):
        text = parse_message(error)
    elif isinstance(error, TokenError):
        text = token_message(error, sql)
    else:  # sqlglot failed on input it does not expect (a bug in sqlglot; still refused)
        text = f"sqlglot cannot read it ({type(error).__name__}: {' '.join(str(error).split())})"
    dialect = "" if read == "duckdb" else f" (read as {read} SQL)"
    return SqlRefused(f"{text}{dialect}")
