"""What every analysis shares: estimator conventions, declared parameters, and runs kept.

An analysis is a small class in the scikit-learn style: parameters are ``__init__`` keyword
arguments stored under the same names (declared once in ``params``), ``fit(store)`` computes,
and learned state ends in ``_`` (``results_``, ``run_id_``, ``source_versions_``, ``reused_``).

Every run appends its rows, stamped with ``run_id``, to the analysis's ``result_table`` and is
recorded in ``analysis_runs`` (parameters, the Lance versions of the tables it read, rows,
seconds). Runs are never rewritten: other runs' rows stay whatever their parameters. Fitting
again with the same parameters on an unchanged store reuses the stored rows. The analysis's
stored query (``<name>.sql`` beside it) shows the latest run per ``run_key``: the parameters
that tell runs apart to a reader (e.g. the tag source of slices).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any, ClassVar, TypeAlias

import pyarrow as pa

from failstore.queries.framework.params import Param, check_params
from failstore.schemas import ANALYSIS_RUNS_SCHEMA
from failstore.store import Store, equals, utcnow

# Every Analysis subclass with a name, by name (see registry.analyses() for the complete list).
REGISTERED: dict[str, type[Analysis]] = {}

# What ``_compute`` returns: the result table's rows, or every table's rows by table name (for
# an analysis with ``extra_tables``).
Computed: TypeAlias = "pa.Table | Mapping[str, pa.Table]"


def _register(cls: type[Analysis]) -> None:
    """Names and result tables must be unique across analyses."""
    for other in REGISTERED.values():
        if other.__module__ == cls.__module__ and other.__qualname__ == cls.__qualname__:
            continue  # the same class, its module imported again
        if other.name == cls.name:
            raise TypeError(f"two analyses named {cls.name!r}: {other} and {cls}")
        clash = set(other.tables()) & set(cls.tables())
        if clash:
            raise TypeError(f"{other} and {cls} both write {sorted(clash)}")
    REGISTERED[cls.name] = cls


class Analysis:
    """Base class. Subclasses set ``name`` (also the CLI command and the stored query),
    ``result_table``, ``result_schema`` (the columns of a run's rows; ``run_id`` is added),
    ``reads`` (tables whose versions stamp a run), ``params`` and implement
    ``_compute(store, params)``. An analysis that writes more than one table declares the
    others in ``extra_tables`` (name -> schema) and returns every table's rows by name."""

    name: ClassVar[str] = ""  # the analysis (in analysis_runs), the CLI command, the query
    result_table: ClassVar[str] = ""
    result_schema: ClassVar[pa.Schema] = pa.schema([])
    # More tables a run writes (e.g. which leaf each image fell in), stamped with run_id too.
    extra_tables: ClassVar[dict[str, pa.Schema]] = {}
    reads: ClassVar[tuple[str, ...]] = ("images", "predictions", "models")
    params: ClassVar[tuple[Param, ...]] = ()
    # Parameters that only filter what ``fit`` returns; they are not part of a run.
    view_params: ClassVar[tuple[str, ...]] = ()
    # Parameters that say how to compute, not what (e.g. ``engine``): not part of a run either,
    # so a run computed on Ray and one computed here are the same run.
    exec_params: ClassVar[tuple[str, ...]] = ()
    # Values ``_resolve`` adds to the parameters (e.g. a digest of the input files): they are part
    # of the run's identity and its recorded params, and may be named in ``run_key``.
    derived_params: ClassVar[tuple[str, ...]] = ()
    # Parameters that tell runs apart to a reader: the stored query shows the latest run of each.
    run_key: ClassVar[tuple[str, ...]] = ()
    # The CLI command (``failstore <command>``); the name unless set.
    command: ClassVar[str] = ""
    # The stored query that shows the latest run's result rows; the name unless set.
    query: ClassVar[str] = ""

    results_: pa.Table
    run_id_: str
    source_versions_: dict[str, int]
    reused_: bool

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            if not cls.__dict__.get("command"):
                cls.command = cls.name
            if not cls.__dict__.get("query"):
                cls.query = cls.name
            _register(cls)

    @classmethod
    def tables(cls) -> dict[str, pa.Schema]:
        """Every table a run writes, the result table first."""
        return {cls.result_table: cls.result_schema, **cls.extra_tables}

    # -- estimator conventions -------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        return [p.name for p in cls.params]

    @classmethod
    def param(cls, name: str) -> Param:
        for p in cls.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._param_names()}

    def set_params(self, **params: Any) -> Analysis:
        names = set(self._param_names())
        for k, v in params.items():
            if k not in names:
                known = ", ".join(sorted(names))
                raise ValueError(f"{type(self).__name__} has no parameter '{k}' (it has {known})")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- running ------------------------------------------------------------------
    def resolved_params(self, store: Store) -> dict[str, Any]:
        """The run's parameters: checked, view-only ones removed, store defaults filled in."""
        checked = check_params(self.params, self.get_params())
        for name in (*self.view_params, *self.exec_params):
            checked.pop(name)
        return self._resolve(store, checked)

    def _resolve(self, store: Store, params: dict[str, Any]) -> dict[str, Any]:
        """Fill in defaults that depend on the store (e.g. the last target model)."""
        return params

    def _compute(self, store: Store, params: dict[str, Any]) -> Computed:
        raise NotImplementedError  # pragma: no cover - abstract

    def fit(self, store: Store, *, reuse: bool = True) -> Analysis:
        params = self.resolved_params(store)
        versions = store.versions([t for t in self.reads if store.has_table(t)])
        run_id = run_identity(self.name, params, versions)
        self.source_versions_ = versions
        self.run_id_ = run_id
        if reuse and has_run(store, run_id, self.result_table):
            self.results_ = self._load(store, run_id)
            self.reused_ = True
            touch_run(store, run_id)
            return self
        start = time.perf_counter()
        got = self._compute(store, params)
        who = type(self).__name__
        computed = {self.result_table: got} if isinstance(got, pa.Table) else dict(got)
        if set(computed) != set(self.tables()):
            raise TypeError(
                f"{who} returned tables {sorted(computed)}, not {sorted(self.tables())}"
            )
        result = conform(computed[self.result_table], self.result_schema, who)
        extra = {
            name: (conform(computed[name], schema, who), schema)
            for name, schema in self.extra_tables.items()
        }
        write_run(
            store,
            analysis=self.name,
            result_table=self.result_table,
            result=result,
            schema=self.result_schema,
            extra=extra,
            params=params,
            run_key={k: params.get(k) for k in self.run_key},
            versions=versions,
            seconds=time.perf_counter() - start,
            run_id=run_id,
        )
        self.results_ = result
        self.reused_ = False
        return self

    def _load(self, store: Store, run_id: str) -> pa.Table:
        t = store.read(self.result_table, self.result_schema.names, filter=equals("run_id", run_id))
        return conform(t, self.result_schema, type(self).__name__)

    def read_table(self, store: Store, table: str, columns: list[str] | None = None) -> pa.Table:
        """The fitted run's rows of one of its tables (e.g. an extra table), ``columns`` only."""
        schema = self.tables()[table]
        names = columns or schema.names
        if not store.has_table(table):
            return pa.schema([schema.field(c) for c in names]).empty_table()
        return store.read(table, names, filter=equals("run_id", self.run_id_))


def conform(table: pa.Table, schema: pa.Schema, who: str) -> pa.Table:
    """``table`` with exactly ``schema``'s columns, in order: declared columns it lacks are null
    (e.g. the eval columns of a run without an eval split); an undeclared column is a bug."""
    extra = [c for c in table.column_names if c not in schema.names]
    if extra:
        raise TypeError(f"{who} returned undeclared columns {extra}")
    columns = [
        table.column(f.name).cast(f.type)
        if f.name in table.column_names
        else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def run_identity(name: str, params: Mapping[str, Any], versions: Mapping[str, int]) -> str:
    """A run's id: a hash of the analysis, its parameters and the versions it read."""
    blob = _dumps({"a": name, "p": params, "v": versions})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def has_run(store: Store, run_id: str, table: str) -> bool:
    """The run is recorded and its rows are there (or it had none)."""
    if not store.has_table("analysis_runs"):
        return False
    runs = store.read("analysis_runs", ["rows"], filter=equals("run_id", run_id))
    if runs.num_rows == 0:
        return False
    if runs.column("rows")[0].as_py() == 0:
        return True
    return store.has_table(table) and store.count(table, filter=equals("run_id", run_id)) > 0


def touch_run(store: Store, run_id: str) -> None:
    """Mark a reused run as the latest used (the stored queries show the latest)."""
    fields = [ANALYSIS_RUNS_SCHEMA.field("run_id"), ANALYSIS_RUNS_SCHEMA.field("used_at")]
    touch = pa.table({"run_id": [run_id], "used_at": [utcnow()]}, schema=pa.schema(fields))
    store.upsert("analysis_runs", touch, insert=False)


def write_run(
    store: Store,
    *,
    analysis: str,
    result_table: str,
    result: pa.Table,
    schema: pa.Schema,
    params: Mapping[str, Any],
    run_key: Mapping[str, Any],
    versions: Mapping[str, int],
    seconds: float,
    run_id: str | None = None,
    extra: Mapping[str, tuple[pa.Table, pa.Schema]] | None = None,
) -> str:
    """Append one run's rows (stamped with ``run_id``) to ``result_table`` (and each ``extra``
    table) and record the run.

    Other runs' rows are never touched. The rows land before the ``analysis_runs`` record, so a
    crash in between leaves a run that ``has_run`` does not count and a rerun completes."""
    run_id = run_id or run_identity(analysis, params, versions)
    with store.writing():
        for name, (rows, rows_schema) in sorted((extra or {}).items()):
            _append_stamped(store, name, rows, rows_schema, run_id)
        _append_stamped(store, result_table, result, schema, run_id)
        _record_run(
            store, analysis, result_table, result, params, run_key, versions, seconds, run_id
        )
    return run_id


def _append_stamped(
    store: Store, table: str, rows: pa.Table, schema: pa.Schema, run_id: str
) -> None:
    full = pa.schema([*schema, pa.field("run_id", pa.string(), nullable=False)])
    stamped = rows.append_column("run_id", pa.array([run_id] * rows.num_rows, pa.string()))
    if store.has_table(table) and store.count(table, equals("run_id", run_id)):
        store.delete(table, equals("run_id", run_id))  # a forced recompute of this run
    if rows.num_rows or not store.has_table(table):
        store.append(table, stamped, schema=full)


def _record_run(
    store: Store,
    analysis: str,
    result_table: str,
    result: pa.Table,
    params: Mapping[str, Any],
    run_key: Mapping[str, Any],
    versions: Mapping[str, int],
    seconds: float,
    run_id: str,
) -> None:
    now = utcnow()
    row = {
        "run_id": run_id,
        "analysis": analysis,
        "result_table": result_table,
        "params": _dumps(params),
        "run_key": _dumps(run_key),
        "source_versions": _dumps(versions),
        "rows": result.num_rows,
        "seconds": float(seconds),
        "created_at": now,
        "used_at": now,
    }
    if store.has_table("analysis_runs"):
        store.ensure_columns("analysis_runs", [ANALYSIS_RUNS_SCHEMA.field("run_key")])
    store.upsert(
        "analysis_runs",
        pa.Table.from_pylist([row], schema=ANALYSIS_RUNS_SCHEMA),
        schema=ANALYSIS_RUNS_SCHEMA,
    )
