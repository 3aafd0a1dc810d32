"""One conformance test over every analysis class, in the spirit of scikit-learn's estimator
checks. A new analysis (registered by subclassing ``Analysis`` in a package under
failstore/queries) is picked up automatically and fails here until it is complete: its
parameters declared and matching ``__init__`` and its CLI options, runs kept and reused, its
results schema declared and documented, its stored query reading the latest run."""

from __future__ import annotations

import inspect
import math

import pyarrow as pa
import pytest
import typer
from planted_store import build

from failstore.cli.analysis_options import cli_default
from failstore.cli.app import app
from failstore.queries.framework import registry
from failstore.queries.framework.analysis import Analysis
from failstore.queries.framework.params import Param, ParamError
from failstore.queries.sql.session import run_sql
from failstore.queries.sql.stored import builtin_queries

ANALYSES = registry.analyses()
# The tests that fit run each analysis on a lighter configuration where its defaults cost
# minutes (sanity: 100 images x 7 attribution methods x every layer, ~2 min per fit here);
# the checks are about the framework's conventions, which hold for any parameters.
LIGHT: dict[str, dict[str, object]] = {"sanity": {"images": 6, "methods": ["gradient", "grad_cam"]}}


def _make(cls: type[Analysis], **params: object) -> Analysis:
    return cls(**{**LIGHT.get(cls.name, {}), **params})


def test_the_analyses_are_found():
    assert "slices" in ANALYSES
    for name, cls in ANALYSES.items():
        assert issubclass(cls, Analysis) and cls.name == name


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    # with a real (untrained) target and image files: some analyses run the model again
    return build(tmp_path_factory.mktemp("conformance") / "s", with_model=True)


@pytest.fixture(params=sorted(ANALYSES))
def cls(request) -> type[Analysis]:
    return ANALYSES[request.param]


def test_declaration_is_complete(cls):
    assert cls.result_table and cls.result_schema.names, "declare result_table, result_schema"
    for table, schema in cls.tables().items():
        assert "run_id" not in schema.names, f"{table}: run_id is added by the framework"
    names = [p.name for p in cls.params]
    assert len(set(names)) == len(names)
    assert set(cls.view_params) <= set(names)
    assert set(cls.exec_params) <= set(names)
    assert not set(cls.exec_params) & (set(cls.run_key) | set(cls.view_params))
    assert set(cls.run_key) <= set(names) | set(cls.derived_params)
    sig = inspect.signature(cls.__init__)
    init = [p for p in sig.parameters.values() if p.name != "self"]
    assert [p.name for p in init] == names, "__init__ takes exactly the declared parameters"
    for p in init:
        assert p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        assert p.default == cls.param(p.name).default, f"{p.name}: __init__ and Param disagree"


def test_init_stores_parameters_only_and_params_round_trip(cls):
    est = cls()
    assert vars(est) == {p.name: p.default for p in cls.params}
    params = est.get_params()
    clone = cls(**params)
    assert clone.get_params() == params
    first = cls.params[0]
    assert est.set_params(**{first.name: first.default}) is est
    with pytest.raises(ValueError, match="has no parameter 'no_such_parameter'"):
        est.set_params(no_such_parameter=1)
    assert repr(est).startswith(f"{cls.__name__}(")


def _bad_values(p: Param) -> list[object]:
    bad: list[object] = []
    if not p.optional:
        bad.append(None)
    if p.choices is not None:
        bad.append("__not_a_choice__")
    if p.kind is int:
        bad.append(1.5)
    if p.kind in (int, float):
        bad.append("x")
        if p.low is not None:
            bad.append(p.low - 1)
        if p.high is not None:
            bad.append(p.high + 1)
    if p.kind is float:
        bad.append(math.nan)
    if p.many:
        bad.append("not-a-list")
    return bad


def test_bad_parameters_give_library_errors(cls, planted):
    checked = 0
    for p in cls.params:
        for value in _bad_values(p):
            value = [value] if p.many and value != "not-a-list" and value is not None else value
            with pytest.raises(ParamError) as info:
                cls(**{p.name: value}).fit(planted)
            assert info.value.one_line().startswith(f"{p.name} "), info.value.one_line()
            assert info.value.for_cli().one_line().startswith(f"{p.cli_flag} ")
            checked += 1
    assert checked >= len(cls.params)  # every parameter has at least one bad value


def test_fit_returns_self_reuses_and_keeps_every_run(cls, planted):
    est = _make(cls)
    assert est.fit(planted) is est
    assert est.results_.schema == cls.result_schema
    stored = planted.schema(cls.result_table)
    assert stored.names == [*cls.result_schema.names, "run_id"]
    again = _make(cls).fit(planted)
    assert again.reused_ and again.run_id_ == est.run_id_
    assert again.results_.equals(est.results_)
    rows = planted.count(cls.result_table)
    # a store change makes a new run, and the old run's rows stay
    planted.upsert("predictions", planted.read("predictions").slice(0, 1))
    new = _make(cls).fit(planted)
    assert not new.reused_ and new.run_id_ != est.run_id_
    assert planted.count(cls.result_table, f"run_id = '{est.run_id_}'") == est.results_.num_rows
    assert planted.count(cls.result_table) == rows + new.results_.num_rows
    runs = planted.read("analysis_runs", ["run_id"], filter=f"analysis = '{cls.name}'")
    assert {est.run_id_, new.run_id_} <= set(runs.column("run_id").to_pylist())


def test_stored_query_reads_the_latest_run(cls, planted):
    assert cls.query in builtin_queries(), f"ship failstore/queries/<pkg>/{cls.query}.sql"
    latest = _make(cls).fit(planted)
    got = run_sql(planted, f'SELECT DISTINCT run_id FROM "{cls.query}"')
    assert got.column("run_id").to_pylist() == [latest.run_id_]
    shown = run_sql(planted, f'SELECT * FROM "{cls.query}"')
    assert shown.num_rows == latest.results_.num_rows
    assert set(cls.result_schema.names) <= set(shown.column_names)


def _command(name: str) -> typer.models.CommandInfo:
    for c in app.registered_commands:
        if c.name == name:
            return c
    raise AssertionError(f"no `failstore {name}` command")


def test_cli_options_are_the_declared_parameters(cls):
    command = typer.main.get_command(app)
    click_cmd = command.commands[cls.command]  # type: ignore[attr-defined]
    options = {p.name: p for p in click_cmd.params}
    for p in cls.params:
        assert p.name in options, f"{cls.command}: no option for {p.name}"
        opt = options[p.name]
        assert p.cli_flag in opt.opts, (p.name, opt.opts)
        assert opt.help.startswith(p.help)
        want = cli_default(p)
        assert opt.default == want or (opt.default in ((), None) and want is None), p.name
    assert _command(cls.command).callback is not None


def test_stored_rows_have_exactly_the_declared_types(cls, planted):
    _make(cls).fit(planted)
    for table, schema in cls.tables().items():
        stored = planted.read(table)
        want = pa.schema([*schema, pa.field("run_id", pa.string())])
        assert [(f.name, f.type) for f in stored.schema] == [(f.name, f.type) for f in want]


def test_dropping_a_run_drops_its_rows_in_every_table(cls, tmp_path):
    from failstore.queries.framework.runs import drop_runs

    store = build(tmp_path / "s", n=400, with_model=True)
    est = _make(cls).fit(store)
    kept = _make(cls, **{**est.get_params(), **_another_run(cls)}).fit(store)
    assert kept.run_id_ != est.run_id_
    before = {t: store.count(t, f"run_id = '{kept.run_id_}'") for t in cls.tables()}
    assert drop_runs(store, [est.run_id_]) == [est.run_id_]
    for table in cls.tables():
        assert store.count(table, f"run_id = '{est.run_id_}'") == 0, table
        assert store.count(table, f"run_id = '{kept.run_id_}'") == before[table], table
    assert store.count("analysis_runs", f"run_id = '{est.run_id_}'") == 0


def _another_run(cls: type[Analysis]) -> dict[str, object]:
    """A parameter change that makes a different run: a numeric parameter moved off its
    default inside its limits."""
    for p in cls.params:
        if p.kind in (int, float) and not p.optional and p.name not in cls.view_params:
            default = p.default
            step = 1 if p.kind is int else 0.05
            value = default + step if p.high is None or default + step <= p.high else default - step
            return {p.name: value}
    raise AssertionError(f"{cls.__name__} has no numeric parameter to vary")
