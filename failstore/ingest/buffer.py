"""What an ingest holds between its commits: the store's known image ids (``Known``) and the
rows waiting for the next commit group (``Buffer``), flushed as keyed upserts."""

from __future__ import annotations

import pyarrow as pa

from failstore import schemas
from failstore.ingest import rows
from failstore.store import Store, equals, literal, utcnow


class Known:
    """What the store holds already, as in-memory sets of image ids."""

    def __init__(self, store: Store, target: str | None) -> None:
        self.images: set[str] = set()
        self.with_clip: set[str] = set()
        self.with_robust: set[str] = set()
        self.predicted: set[str] = set()
        self.errors: dict[str, str] = {}  # uri -> reason recorded in ingest_errors
        if store.has_table("ingest_errors"):
            t = store.read("ingest_errors", ["uri", "reason"])
            self.errors = dict(zip(t["uri"].to_pylist(), t["reason"].to_pylist(), strict=True))
        if store.has_table("images"):
            names = store.schema("images").names
            cols = ["image_id"] + [c for c in ("clip_model", "robust_model") if c in names]
            t = store.read("images", cols)
            ids = t.column("image_id").to_pylist()
            self.images = set(ids)
            if "clip_model" in cols:
                mask = t.column("clip_model").is_valid().to_numpy(zero_copy_only=False)
                self.with_clip = {i for i, m in zip(ids, mask, strict=True) if m}
            if "robust_model" in cols:
                mask = t.column("robust_model").is_valid().to_numpy(zero_copy_only=False)
                self.with_robust = {i for i, m in zip(ids, mask, strict=True) if m}
        if target and store.has_table("predictions"):
            t = store.read("predictions", ["image_id"], filter=equals("model", target))
            self.predicted = set(t.column("image_id").to_pylist())


class Buffer:
    """Rows waiting for the next commit."""

    def __init__(self) -> None:
        self.new_images: list[pa.Table] = []
        self.image_updates: list[pa.Table] = []
        self.predictions: list[pa.Table] = []
        self.errors: list[tuple[str, str]] = []
        self.ok_uris: list[str] = []
        self.stats: list[tuple[str, int, int]] = []  # (image_id, size, mtime_ns) of old rows

    @property
    def pending(self) -> int:
        return (
            sum(t.num_rows for t in self.new_images + self.image_updates + self.predictions)
            + len(self.errors)
            + len(self.stats)
        )

    def flush(self, store: Store, image_schema: pa.Schema, known: Known) -> None:
        if self.new_images:
            data = pa.concat_tables(self.new_images)
            store.upsert("images", data.cast(_project(image_schema, data)), schema=image_schema)
        by_columns: dict[tuple[str, ...], list[pa.Table]] = {}
        for upd in self.image_updates:  # one merge per set of columns, not per batch
            by_columns.setdefault(tuple(upd.column_names), []).append(upd)
        for tables in by_columns.values():
            store.upsert("images", pa.concat_tables(tables), insert=False)
        if self.stats:  # files touched since, or rows from before the stat columns
            ids, sizes, mtimes = zip(*self.stats, strict=True)
            stats = {"image_id": pa.array(ids, pa.string())}
            stats["stat_size"] = pa.array(sizes, pa.int64())
            stats["stat_mtime_ns"] = pa.array(mtimes, pa.int64())
            store.upsert("images", pa.table(stats), insert=False)
        if self.predictions:
            store.upsert(
                "predictions", pa.concat_tables(self.predictions), schema=schemas.PREDICTIONS_SCHEMA
            )
        errors = [e for e in self.errors if known.errors.get(e[0]) != e[1]]  # reruns: nothing new
        if errors:
            store.upsert(
                "ingest_errors",
                rows.error_table(errors, utcnow()),
                schema=schemas.INGEST_ERRORS_SCHEMA,
            )
            known.errors.update(errors)
        gone = [u for u in self.ok_uris if u in known.errors]  # they decode now: not errors
        if gone:
            for u in gone:
                del known.errors[u]
            quoted = ", ".join(literal(u) for u in gone)
            store.delete("ingest_errors", f"uri IN ({quoted})")
        self.__init__()  # type: ignore[misc]


def _project(schema: pa.Schema, data: pa.Table) -> pa.Schema:
    return pa.schema([schema.field(n) for n in data.column_names])
