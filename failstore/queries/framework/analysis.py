"""What every analysis shares: estimator conventions, provenance and reuse of results.

An analysis is a small class in the scikit-learn style: parameters are ``__init__`` keyword
arguments stored under the same names, ``fit(store)`` computes, and learned state ends in ``_``
(``results_``, ``run_id_``, ``source_versions_``, ``reused_``). Results are Arrow tables written
to the store in ``result_table``, one set of rows per run (column ``run_id``), and each run is
recorded in the ``analysis_runs`` table with its parameters and the Lance versions of the tables
it read. Fitting again with the same parameters on an unchanged store reuses the stored rows.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from failstore.store import Store, utcnow

RUNS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("analysis", pa.string()),
        pa.field("result_table", pa.string()),
        pa.field("params", pa.string()),  # JSON
        pa.field("source_versions", pa.string()),  # JSON {table: version}
        pa.field("rows", pa.int64()),
        pa.field("seconds", pa.float64()),
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
        pa.field("used_at", pa.timestamp("us", tz="UTC")),  # last fit that computed or reused it
    ]
)


class Analysis:
    """Base class; subclasses set ``name``, ``result_table``, ``reads`` and implement
    ``_compute(store) -> pa.Table``."""

    name: ClassVar[str] = ""
    result_table: ClassVar[str] = ""
    reads: ClassVar[tuple[str, ...]] = ("images", "predictions", "models")

    results_: pa.Table
    run_id_: str
    source_versions_: dict[str, int]
    reused_: bool

    # -- estimator conventions -------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._param_names()}

    def set_params(self, **params: Any) -> Analysis:
        names = set(self._param_names())
        for k, v in params.items():
            if k not in names:
                raise ValueError(f"{type(self).__name__} has no parameter '{k}'")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- running ------------------------------------------------------------------
    def resolved_params(self, store: Store) -> dict[str, Any]:
        """Parameters with defaults that depend on the store filled in (e.g. the model)."""
        return self.get_params()

    def _compute(self, store: Store, params: dict[str, Any]) -> pa.Table:
        raise NotImplementedError  # pragma: no cover - abstract

    def fit(self, store: Store, *, reuse: bool = True) -> Analysis:
        import time

        params = self.resolved_params(store)
        versions = store.versions([t for t in self.reads if store.has_table(t)])
        run_id = _run_id(self.name, params, versions)
        self.source_versions_ = versions
        self.run_id_ = run_id
        if reuse and _has_run(store, run_id, self.result_table):
            self.results_ = self._load(store, run_id)
            self.reused_ = True
            touch = pa.table(
                {"run_id": [run_id], "used_at": [utcnow()]},
                schema=pa.schema([RUNS_SCHEMA.field("run_id"), RUNS_SCHEMA.field("used_at")]),
            )
            store.upsert("analysis_runs", touch, insert=False)
            return self
        start = time.perf_counter()
        result = self._compute(store, params)
        seconds = time.perf_counter() - start
        self._save(store, run_id, params, versions, result, seconds)
        self.results_ = result
        self.reused_ = False
        return self

    def _save(
        self,
        store: Store,
        run_id: str,
        params: dict[str, Any],
        versions: dict[str, int],
        result: pa.Table,
        seconds: float,
    ) -> None:
        stamped = result.append_column("run_id", pa.array([run_id] * result.num_rows, pa.string()))
        meta = {
            "failstore.analysis": self.name,
            "failstore.run_id": run_id,
            "failstore.params": json.dumps(params, sort_keys=True, default=str),
            "failstore.source_versions": json.dumps(versions, sort_keys=True),
        }
        if store.has_table(self.result_table):
            old = store.read(self.result_table)
            if old.schema.remove_metadata() == stamped.schema.remove_metadata():
                keep = old.filter(pc.not_equal(old.column("run_id"), run_id))
                stamped = pa.concat_tables([keep, stamped.cast(keep.schema)])
        # Result tables are small: rewrite with all runs in one atomic commit.
        store.replace(self.result_table, stamped, metadata=meta)
        row = {
            "run_id": run_id,
            "analysis": self.name,
            "result_table": self.result_table,
            "params": meta["failstore.params"],
            "source_versions": meta["failstore.source_versions"],
            "rows": result.num_rows,
            "seconds": seconds,
            "created_at": utcnow(),
            "used_at": utcnow(),
        }
        store.upsert(
            "analysis_runs", pa.Table.from_pylist([row], schema=RUNS_SCHEMA), schema=RUNS_SCHEMA
        )

    def _load(self, store: Store, run_id: str) -> pa.Table:
        t = store.read(self.result_table, filter=f"run_id = '{run_id}'")
        return t.drop_columns(["run_id"]).replace_schema_metadata(None)


def _run_id(name: str, params: dict[str, Any], versions: dict[str, int]) -> str:
    blob = json.dumps({"a": name, "p": params, "v": versions}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _has_run(store: Store, run_id: str, table: str) -> bool:
    if not store.has_table("analysis_runs") or not store.has_table(table):
        return False
    return store.count("analysis_runs", filter=f"run_id = '{run_id}'") > 0 and (
        store.count(table, filter=f"run_id = '{run_id}'") > 0
        or store.count("analysis_runs", filter=f"run_id = '{run_id}' AND rows = 0") > 0
    )
