"""The store: one LanceDB directory holding every table failstore writes.

Every write is one atomic Lance commit. Upserts are keyed (see ``schemas.KEYS``), so repeating a
write adds nothing. Reads go through ``lance.dataset`` so that DuckDB and Arrow scanners push
projections and filters down; nothing here reads a whole table unless asked to.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from failstore import config, schemas
from failstore.errors import SqlRefused, StoreError

if TYPE_CHECKING:  # pragma: no cover
    import lance
    import polars as pl

    from failstore.queries.sql.stored import StoredQuery

MARKER = "failstore.json"
FORMAT_VERSION = 1


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Store:
    """A failstore directory. ``Store(path)`` opens an existing store; ``Store.init(path)``
    creates one (or opens it if it already exists)."""

    def __init__(self, path: str | Path | None = None, *, create: bool = False) -> None:
        self.path = config.store_path(path)
        marker = self.path / MARKER
        if not marker.exists():
            if not create:
                if self.path.exists() and any(self.path.iterdir()):
                    raise StoreError(
                        f"{self.path} is not a failstore store (no {MARKER})",
                        hint="pass --store with a store directory, or run `failstore init PATH`",
                    )
                raise StoreError(
                    f"no store at {self.path}",
                    hint="run `failstore init` or `failstore ingest` first, or pass --store PATH",
                )
            self.path.mkdir(parents=True, exist_ok=True)
            marker.write_text(
                json.dumps({"format": FORMAT_VERSION, "created": utcnow().isoformat()})
            )
        self._db: Any = None
        self._con: Any = None  # one locked-down DuckDB connection, reused by sql()

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

    def ensure_columns(self, name: str, fields: Sequence[pa.Field]) -> None:
        """Add missing columns (all null) to an existing table, in one commit."""
        if not self.has_table(name):
            return
        have = self.schema(name)
        missing = [f for f in fields if f.name not in have.names]
        for f in fields:
            if f.name in have.names and have.field(f.name).type != f.type:
                raise StoreError(
                    f"table '{name}' column '{f.name}' has type {have.field(f.name).type}, "
                    f"this write needs {f.type}",
                    hint="the store was filled by a different model; use a new --store",
                )
        if missing:
            self.db.open_table(name).add_columns(missing)

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

    def delete(self, name: str, where: str) -> None:
        if self.has_table(name):
            self.db.open_table(name).delete(where)

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

    # ------------------------------------------------------------------ models
    def models(self) -> pa.Table:
        if not self.has_table("models"):
            return schemas.MODELS_SCHEMA.empty_table()
        return self.read("models")

    def model_names(self, role: str | None = None) -> list[str]:
        if not self.has_table("models"):
            return []
        flt = f"role = '{role}'" if role else None
        t = self.read("models", ["name", "registered_at"], filter=flt).sort_by("registered_at")
        return t.column("name").to_pylist()

    # ------------------------------------------------------------------ SQL
    def stored_queries(self) -> dict[str, StoredQuery]:
        from failstore.queries.sql.stored import StoredQuery, builtin_queries

        queries = builtin_queries()
        if self.has_table("saved_queries"):
            for row in self.read("saved_queries").to_pylist():
                q = StoredQuery.from_row(row)
                queries[q.name] = q
        return queries

    def sql(
        self,
        query: str,
        *,
        params: Mapping[str, str] | None = None,
        dialect: str | None = None,
        timeout_s: float = config.DEFAULT_SQL_TIMEOUT_S,
    ) -> pa.Table:
        """Run one read-only query over every table and stored query; returns Arrow."""
        from failstore.queries.sql.engine import SqlEngine, locked_connection

        if self._con is None:
            self._con = locked_connection()
        names = self.table_names()
        engine = SqlEngine(
            datasets={n: self._opener(n) for n in names},
            schemas={n: self.schema(n) for n in names},
            stored=self.stored_queries(),
            timeout_s=timeout_s,
            connection=self._con,
        )
        return engine.execute(query, params=params, dialect=dialect)

    def _opener(self, name: str) -> Callable[[], Any]:
        return lambda: self.dataset(name)

    def sql_polars(self, query: str, **kwargs: Any) -> pl.DataFrame:
        import polars as pl

        return pl.from_arrow(self.sql(query, **kwargs))  # type: ignore[return-value]

    # ------------------------------------------------------------------ saved queries
    def save_query(self, query: StoredQuery) -> None:
        from failstore.queries.sql.guard import guard

        names = self.table_names()
        if query.name.lower() in {n.lower() for n in names}:
            raise SqlRefused(f"query name {query.name!r} is a table name; choose another name")
        stored = self.stored_queries()
        stored.pop(query.name, None)
        placeholders = {p.name: p.default or "NULL" for p in query.parameters}
        # Refuse before writing: the query must pass the guard against this store.
        guard(
            query.sql,
            tables={n: self.schema(n) for n in names},
            stored=stored,
            params=placeholders,
        )
        row = query.to_row()
        row["saved_at"] = utcnow()
        self.upsert(
            "saved_queries",
            pa.Table.from_pylist([row], schema=schemas.SAVED_QUERIES_SCHEMA),
            schema=schemas.SAVED_QUERIES_SCHEMA,
        )

    def drop_query(self, name: str) -> None:
        saved = self.saved_query_names()
        if name not in saved:
            raise StoreError(
                f"no saved query '{name}'",
                hint=f"saved queries: {', '.join(saved) or '(none)'}; built-ins cannot be dropped",
            )
        self.delete("saved_queries", f"name = '{name}'")

    def saved_query_names(self) -> list[str]:
        if not self.has_table("saved_queries"):
            return []
        return sorted(self.read("saved_queries", ["name"]).column("name").to_pylist())

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
