"""The SQL read cache: a derived copy of a table's scalar columns, as a Parquet file per Lance
version, that DuckDB reads with its native Parquet reader.

Lance stays the source of truth. A cache file is named by the Lance version it was copied
from (``<store>/_sql_cache/<table>/v<version>.f<FORMAT>.parquet``, with a ``.json`` beside it
listing its columns), and the engine uses it only for a query that reads that exact version
and none of the columns it leaves out (vectors, binary, numeric lists). Every other query, and
every table without a file for its version, is read from Lance as before: a cache can be
missing or late, never stale.

Files are written under a temporary name and renamed (the ``.json`` last), so a reader never
sees half a file; two processes building the same version write the same content. Files of
older versions are removed once a newer one exists and they are ``KEEP_S`` old (a reader
pinned at an old version, e.g. a publish, keeps finding its file meanwhile; if one is gone the
engine reads Lance instead).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from failstore.errors import ConfigError
from failstore.store import manifest_stamp

CACHE_ENV = "FAILSTORE_SQL_CACHE"  # 0 / off: no read cache and no plans on disk
CACHE_DIR = "_sql_cache"
FORMAT = 3  # bump when the choice of columns or the file layout changes
MIN_ROWS_ENV = "FAILSTORE_SQL_CACHE_MIN_ROWS"
DEFAULT_MIN_ROWS = 100_000  # smaller tables scan from Lance in a few milliseconds
ROW_GROUP_ROWS = 122_880  # DuckDB's own row-group size: its parallel scan unit
KEEP_S = 3600.0


@dataclass(frozen=True)
class CacheEntry:
    table: str
    version: int
    path: Path | None  # the Parquet file; None: the table is too small to cache
    columns: tuple[str, ...]  # the columns it holds, in the table's order
    skipped: frozenset[str]  # the table's columns it leaves out, lower case
    rows: int

    def serves(self, columns: frozenset[str] | None) -> bool:
        """Whether a query reading ``columns`` (None: unknown) can read this file instead of
        Lance: it must read none of the columns left out."""
        return self.path is not None and columns is not None and not (columns & self.skipped)


def cacheable(field: pa.Field) -> bool:
    """Scalar columns, strings and lists of strings, structs and lists of structs: what
    dashboards filter, group and join on. Vectors, binary and numeric lists stay in Lance."""
    t = field.type
    if pa.types.is_fixed_size_list(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return False
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        value = t.value_type
        return bool(pa.types.is_string(value) or pa.types.is_struct(value))
    return True


def enabled() -> bool:
    return os.environ.get(CACHE_ENV, "1").strip().lower() not in {"0", "off", "false", "no"}


def min_rows() -> int:
    raw = os.environ.get(MIN_ROWS_ENV)
    if raw is None or raw == "":
        return DEFAULT_MIN_ROWS
    if not raw.strip().isdigit():
        raise ConfigError(
            f"{MIN_ROWS_ENV}={raw!r} is not a whole number of rows",
            hint="e.g. 100000; a table smaller than this is read from Lance only",
        )
    return int(raw)


class ReadCache:
    """The read cache of the store at ``store_path``."""

    def __init__(self, store_path: Path) -> None:
        self.root = Path(store_path) / CACHE_DIR

    def _stamp(self, table: str, version: int) -> str | None:
        return manifest_stamp(self.root.parent / f"{table}.lance", version)

    def _file(self, table: str, version: int, suffix: str) -> Path:
        return self.root / table / f"v{version}.f{FORMAT}.{suffix}"

    def entry(self, table: str, version: int) -> CacheEntry | None:
        """The cache file of ``table`` at ``version``, or None (also when it was copied from
        another table of the same name: one deleted and created again)."""
        try:
            meta = json.loads(self._file(table, version, "json").read_text())
        except (OSError, ValueError):
            return None
        if meta.get("manifest") != self._stamp(table, version):
            return None
        path: Path | None = self._file(table, version, "parquet")
        if meta.get("small"):
            path = None
        elif not path.is_file():  # type: ignore[union-attr]
            return None
        return CacheEntry(
            table,
            version,
            path,
            tuple(meta["columns"]),
            frozenset(c.lower() for c in meta["skipped"]),
            int(meta["rows"]),
        )

    def build(
        self, table: str, dataset: Any, *, least_rows: int | None = None
    ) -> CacheEntry | None:
        """Write the cache file of ``table`` at the version of the Lance ``dataset`` (if it
        has at least ``least_rows`` rows, default ``min_rows()``) and remove older versions'
        files; returns the entry (an existing one as is). A table with fewer rows gets only a
        note saying so (an entry without a file), so that it is not counted again."""
        version = int(dataset.version)
        found = self.entry(table, version)
        if found is not None:
            return found
        rows = int(dataset.count_rows())
        small = rows < (min_rows() if least_rows is None else least_rows)
        fields = list(dataset.schema)
        columns = [f.name for f in fields if cacheable(f)]
        skipped = [f.name for f in fields if not cacheable(f)]
        final = self._file(table, version, "parquet")
        final.parent.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex[:12]
        tmp = final.parent / f".{final.name}.{token}.tmp"
        meta_tmp = final.parent / f".{final.name}.{token}.json.tmp"
        try:
            if not small:
                _copy(dataset, columns, tmp)
                os.replace(tmp, final)
            meta = {
                "columns": columns,
                "skipped": skipped,
                "rows": rows,
                "lance_version": version,
                "manifest": self._stamp(table, version),
                "small": small,
            }
            meta_tmp.write_text(json.dumps(meta))
            os.replace(meta_tmp, self._file(table, version, "json"))
        finally:
            for left in (tmp, meta_tmp):
                with contextlib.suppress(FileNotFoundError):
                    left.unlink()
        self.prune(table, version)
        return self.entry(table, version)

    def prune(self, table: str, newest: int, keep_s: float = KEEP_S) -> None:
        """Remove the files of ``table``'s versions older than ``newest`` that are older than
        ``keep_s``, and temporary files left by killed builds."""
        folder = self.root / table
        now = time.time()
        with contextlib.suppress(FileNotFoundError):
            for path in folder.iterdir():
                name = path.name
                try:
                    age = now - path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if name.endswith(".tmp"):
                    stale = age > keep_s
                else:
                    version = _version_of(name)
                    stale = version is not None and version < newest and age > keep_s
                    stale = stale or (version is not None and f".f{FORMAT}." not in name)
                if stale:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()


def _version_of(name: str) -> int | None:
    if not name.startswith("v"):
        return None
    head = name[1:].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def _copy(dataset: Any, columns: list[str], out: Path) -> None:
    """Copy ``columns`` of the Lance ``dataset`` into a Parquet file, in row groups of
    ``ROW_GROUP_ROWS`` (DuckDB's parallel scan unit; min/max statistics let it skip them).
    pyarrow's writer, not DuckDB's: DuckDB scanned its own files 20-35 % slower on filters and
    top-k (it writes unique strings such as ``image_id`` without a dictionary; measured in
    docs/performance.md)."""
    import pyarrow.parquet as pq

    schema = pa.schema([dataset.schema.field(c) for c in columns])
    pending: list[pa.RecordBatch] = []
    rows = 0
    with pq.ParquetWriter(out, schema, compression="snappy") as writer:
        for batch in dataset.to_batches(columns=columns, batch_size=ROW_GROUP_ROWS):
            pending.append(batch)
            rows += batch.num_rows
            if rows >= ROW_GROUP_ROWS:
                table = pa.Table.from_batches(pending, schema=schema)
                cut = rows - rows % ROW_GROUP_ROWS
                writer.write_table(table.slice(0, cut), row_group_size=ROW_GROUP_ROWS)
                rest = table.slice(cut)
                pending, rows = rest.to_batches(), rest.num_rows
        if rows:
            writer.write_table(pa.Table.from_batches(pending, schema=schema))
