"""The store: one LanceDB directory holding every table failstore writes.

Every write is one atomic Lance commit. Upserts are keyed (see ``schemas.KEYS``), so repeating a
write adds nothing. Reads go through ``lance.dataset`` so that DuckDB and Arrow scanners push
projections and filters down; nothing here reads a whole table unless asked to.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa

from failstore import config, schemas
from failstore.errors import StoreError

if TYPE_CHECKING:  # pragma: no cover
    import lance

MARKER = "failstore.json"
FORMAT_VERSION = 1
LOCK_FILE = ".writer.lock"  # one writer at a time per store (see Store.writing)


def _say_waiting(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)


F = TypeVar("F", bound=Callable[..., Any])


def _locked(method: F) -> F:
    """Run a write method while holding the store's writer lock."""

    @functools.wraps(method)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
        with self.writing():
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def literal(value: str) -> str:
    """A string as a quoted literal for Lance filters (and SQL): quotes doubled. Every filter
    built from a name (model, class, split, run id) goes through this."""
    return "'" + str(value).replace("'", "''") + "'"


def equals(column: str, value: str) -> str:
    """The Lance filter ``column = 'value'``, quoted safely."""
    return f"{column} = {literal(value)}"


U64_MAX = 2**64 - 1


def manifest_version(table_dir: Path) -> int | None:
    """The latest version of the Lance dataset at ``table_dir`` from its manifest names: Lance's
    v2 naming stores version N as ``{2**64 - 1 - N:020d}.manifest`` (so that the latest sorts
    first), v1 as ``{N}.manifest``; other files (temporary, ``_latest.manifest``) are ignored."""
    try:
        names = os.listdir(table_dir / "_versions")
    except FileNotFoundError:
        return None
    best = None
    for name in names:
        stem = name[: -len(".manifest")] if name.endswith(".manifest") else ""
        if not stem.isdigit():
            continue
        version = U64_MAX - int(stem) if len(stem) == 20 else int(stem)
        if best is None or version > best:
            best = version
    return best


def manifest_stamp(table_dir: Path, version: int) -> str | None:
    """Size and modification time of version ``version``'s manifest, or None if it is gone:
    tells a version of a table from the same version number of a table deleted and created
    again (Lance numbers a new table's versions from 1)."""
    for name in (f"{U64_MAX - version:020d}.manifest", f"{version}.manifest"):
        try:
            st = os.stat(table_dir / "_versions" / name)
        except FileNotFoundError:
            continue
        return f"{st.st_size}:{st.st_mtime_ns}"
    return None


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Store:
    """A failstore directory. ``Store(path)`` opens an existing store; ``Store.init(path)``
    creates one (or opens it if it already exists)."""

    def __init__(self, path: str | Path | None = None, *, create: bool = False) -> None:
        self.path = config.store_path(path)
        marker = self.path / MARKER
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(
                f"{self.path} is a file, not a store directory",
                hint="pass --store with a directory (new, empty, or an existing store)",
            )
        if not marker.exists():
            if self.path.exists() and any(self.path.iterdir()):
                raise StoreError(
                    f"{self.path} is not a failstore store (no {MARKER}) and is not empty",
                    hint="pass --store with a new or empty directory, or an existing store",
                )
            if not create:
                raise StoreError(
                    f"no store at {self.path}",
                    hint="run `failstore init` or `failstore ingest` first, or pass --store PATH",
                )
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(
                    f"cannot create the store directory {self.path} ({e.strerror})",
                    hint="pass --store with a path whose parent is a writable directory",
                ) from e
            marker.write_text(
                json.dumps({"format": FORMAT_VERSION, "created": utcnow().isoformat()})
            )
        self._db: Any = None
        self._lock: Any = None
        self.on_wait: Callable[[str], None] = _say_waiting

    # ------------------------------------------------------------------ the writer lock
    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the store's writer lock (re-entrant). Every write method takes it for its
        commit, so writers in other processes never interleave inside a keyed commit: an upsert
        always sees the rows the previous writer committed and a key is never inserted twice.
        A writer that has to wait says so once through ``on_wait`` (stderr by default)."""
        from filelock import FileLock, Timeout

        if self._lock is None:
            self._lock = FileLock(str(self.path / LOCK_FILE), thread_local=False)
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            self.on_wait(
                f"waiting for another failstore process writing to {self.path} "
                f"(lock file {self.path / LOCK_FILE})"
            )
            self._lock.acquire()
        try:
            yield
        finally:
            self._lock.release()

    @classmethod
    def init(cls, path: str | Path | None = None) -> Store:
        return cls(path, create=True)

    # ------------------------------------------------------------------ tables
    @property
    def db(self) -> Any:
        if self._db is None:
            import lancedb

            self._db = lancedb.connect(str(self.path), read_consistency_interval=timedelta(0))
        return self._db

    def table_names(self) -> list[str]:
        """Tables in the store, sorted (found from the directory: no lancedb import needed)."""
        return sorted(p.name[: -len(".lance")] for p in self.path.glob("*.lance") if p.is_dir())

    def has_table(self, name: str) -> bool:
        return (self.path / f"{name}.lance").is_dir()

    def dataset(self, name: str, version: int | None = None) -> lance.LanceDataset:
        """The Lance dataset of a table at its latest (or a given) version."""
        import lance

        if not self.has_table(name):
            raise StoreError(
                f"table '{name}' does not exist in {self.path}",
                hint=f"tables: {', '.join(self.table_names()) or '(none)'}",
            )
        return lance.dataset(str(self.path / f"{name}.lance"), version=version)

    def manifest_version(self, name: str) -> int | None:
        """The latest committed version of a table, read from the names of its manifests
        (``_versions/``) without importing Lance; None when the table does not exist. Lance
        commits a version by creating its manifest file atomically, so a listed manifest is a
        committed version. Tested against ``dataset(name).version``."""
        return manifest_version(self.path / f"{name}.lance")

    def manifest_stamp(self, name: str, version: int) -> str | None:
        return manifest_stamp(self.path / f"{name}.lance", version)

    def schema(self, name: str) -> pa.Schema:
        return self.dataset(name).schema

    def version(self, name: str) -> int:
        return int(self.dataset(name).version)

    def versions(self, names: Sequence[str] | None = None) -> dict[str, int]:
        return {n: self.version(n) for n in (names or self.table_names()) if self.has_table(n)}

    def count(self, name: str, filter: str | None = None) -> int:
        if not self.has_table(name):
            return 0
        return int(self.dataset(name).count_rows(filter=filter))

    def read(
        self, name: str, columns: Sequence[str] | None = None, filter: str | None = None
    ) -> pa.Table:
        """Read only ``columns`` (and rows matching the Lance ``filter``) of a table."""
        if not self.has_table(name):
            return pa.table({})
        return self.dataset(name).to_table(
            columns=list(columns) if columns is not None else None, filter=filter
        )

    def _table(self, name: str, schema: pa.Schema) -> Any:
        if self.has_table(name):
            return self.db.open_table(name)
        return self.db.create_table(name, schema=schema, exist_ok=True)

    def type_conflicts(
        self, name: str, fields: Sequence[pa.Field]
    ) -> list[tuple[pa.Field, pa.DataType]]:
        """The ``fields`` that the table has under another type, with the table's type (no
        write: callers check before writing anything)."""
        if not self.has_table(name):
            return []
        have = self.schema(name)
        return [
            (f, have.field(f.name).type)
            for f in fields
            if f.name in have.names and have.field(f.name).type != f.type
        ]

    @_locked
    def ensure_columns(self, name: str, fields: Sequence[pa.Field]) -> None:
        """Add missing columns (all null) to an existing table, in one commit."""
        if not self.has_table(name):
            return
        for f, had in self.type_conflicts(name, fields):
            raise StoreError(
                f"table '{name}' column '{f.name}' has type {had}, this write needs {f.type}",
                hint="the store was filled by a different model; use a new --store",
            )
        have = self.schema(name)
        missing = [f for f in fields if f.name not in have.names]
        if missing:
            self.db.open_table(name).add_columns(missing)

    @_locked
    def upsert(
        self, name: str, data: pa.Table, *, schema: pa.Schema | None = None, insert: bool = True
    ) -> int:
        """Insert rows, updating those whose key already exists; one commit. ``data`` may hold
        a subset of the table's columns (the others keep their values, or stay null on insert).
        With ``insert=False`` only existing keys are updated. Returns the new version."""
        if data.num_rows == 0:
            return self.version(name) if self.has_table(name) else 0
        keys = schemas.KEYS[name]
        table = self._table(name, schema or data.schema)
        target = table.schema
        unknown = [c for c in data.column_names if c not in target.names]
        if unknown:
            raise StoreError(f"table '{name}' has no column(s) {unknown}")
        data = data.cast(pa.schema([target.field(c) for c in data.column_names]))
        merge = table.merge_insert(keys).when_matched_update_all()
        if insert:
            merge = merge.when_not_matched_insert_all()
        merge.execute(data)
        return self.version(name)

    @_locked
    def append(self, name: str, data: pa.Table, *, schema: pa.Schema | None = None) -> int:
        """Append rows in one commit; returns the new version. The table is created with
        ``schema`` (or the data's) if missing. Columns the table lacks are added first (all
        null for the rows already there); columns the data lacks are null in the new rows, so
        rows of different shapes (e.g. runs of an analysis with and without an option) share
        one table and no existing row is rewritten."""
        if not self.has_table(name):
            self._table(name, schema or data.schema)
        have = self.schema(name)
        wanted = list(schema) if schema is not None else []
        named = {f.name for f in wanted}
        wanted += [data.schema.field(c) for c in data.column_names if c not in named]
        self.ensure_columns(
            name, [f.with_nullable(True) for f in wanted if f.name not in have.names]
        )
        target = self.schema(name)
        columns = []
        for f in target:
            if f.name in data.column_names:
                col = data.column(f.name)
                if col.type != f.type:
                    try:
                        col = col.cast(f.type)
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                        raise StoreError(
                            f"table '{name}' column '{f.name}' has type {f.type}, "
                            f"this write has {col.type}",
                            hint="write to a new table or drop the old rows",
                        ) from e
                columns.append(col)
            elif not f.nullable:
                raise StoreError(f"table '{name}': this write has no value for column '{f.name}'")
            else:
                columns.append(pa.nulls(data.num_rows, f.type))
        if data.num_rows:
            self.db.open_table(name).add(pa.Table.from_arrays(columns, schema=target))
        return self.version(name)

    @_locked
    def delete(self, name: str, where: str) -> None:
        if self.has_table(name):
            self.db.open_table(name).delete(where)

    @_locked
    def replace(
        self, name: str, data: pa.Table, *, metadata: Mapping[str, str] | None = None
    ) -> int:
        """Overwrite a whole (result) table in one commit; returns the new version."""
        import lance

        if metadata:
            merged = dict(data.schema.metadata or {})
            merged.update({k.encode(): v.encode() for k, v in metadata.items()})
            data = data.replace_schema_metadata(merged)
        mode = "overwrite" if self.has_table(name) else "create"
        ds = lance.write_dataset(data, str(self.path / f"{name}.lance"), mode=mode)
        return int(ds.version)

    def table_metadata(self, name: str) -> dict[str, str]:
        meta = self.schema(name).metadata or {}
        return {k.decode(): v.decode() for k, v in meta.items()}

    @_locked
    def compact(self, older_than: timedelta = timedelta(days=7)) -> list[dict[str, Any]]:
        """Merge small fragments (and rows deleted by upserts / dropped runs) of every table,
        then remove the files of versions older than ``older_than`` that the latest version no
        longer needs. Time travel to the removed versions is lost; the latest version of every
        table is unchanged in content. Returns one summary per table."""
        out = []
        for name in self.table_names():
            ds = self.dataset(name)
            before = int(ds.version)
            metrics = ds.optimize.compact_files()
            ds = self.dataset(name)
            stats = ds.cleanup_old_versions(older_than=older_than)
            out.append(
                {
                    "table": name,
                    "version_before": before,
                    "version": int(ds.version),
                    "fragments_removed": int(metrics.fragments_removed),
                    "fragments_added": int(metrics.fragments_added),
                    "versions_removed": int(stats.old_versions),
                    "bytes_removed": int(stats.bytes_removed),
                }
            )
        return out

    # ------------------------------------------------------------------ models
    def models(self) -> pa.Table:
        if not self.has_table("models"):
            return schemas.MODELS_SCHEMA.empty_table()
        return self.read("models")

    def model_names(self, role: str | None = None) -> list[str]:
        if not self.has_table("models"):
            return []
        flt = equals("role", role) if role else None
        t = self.read("models", ["name", "registered_at"], filter=flt).sort_by("registered_at")
        return t.column("name").to_pylist()

    # ------------------------------------------------------------------ info
    def info(self) -> dict[str, Any]:
        tables = []
        for name in self.table_names():
            ds = self.dataset(name)
            tables.append(
                {
                    "table": name,
                    "rows": ds.count_rows(),
                    "version": int(ds.version),
                    "columns": len(ds.schema),
                }
            )
        models = []
        if self.has_table("models"):
            cols = ["name", "role", "spec", "checkpoint_sha256", "embedding_dim", "layer"]
            models = self.read("models", cols).to_pylist()
        return {"store": str(self.path), "tables": tables, "models": models}
