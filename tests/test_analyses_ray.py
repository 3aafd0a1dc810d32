"""Slices and Barlow trees with ``engine="ray"``: one Ray task per class (Barlow's tasks read
their class's rows from the store themselves), results committed once, equal to the local
engine's; the engine is not part of a run's identity."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import ray
from planted_store import build

from failstore.errors import ConfigError
from failstore.queries.barlow.estimator import Barlow
from failstore.queries.slices.estimator import Slices
from failstore.store import Store

ATTRS = ["attr_background", "attr_size"]  # the planted store's categorical columns


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Store:
    return build(tmp_path_factory.mktemp("planted") / "s")


def _copy(store: Store, to) -> Store:
    return Store(shutil.copytree(store.path, to))


@pytest.mark.parametrize(
    "make",
    [
        lambda engine: Slices(min_size=10, split="val", eval_split="test", engine=engine),
        lambda engine: Slices(min_size=10, tags_from=ATTRS, engine=engine),
        lambda engine: Barlow(max_depth=2, tags_from=ATTRS, engine=engine),
        lambda engine: Barlow(by="prediction", max_depth=1, engine=engine),
    ],
    ids=["slices-clip-eval", "slices-attributes", "barlow-attributes", "barlow-prediction"],
)
def test_ray_gives_the_local_rows(cluster, planted, tmp_path, make):
    here, there = _copy(planted, tmp_path / "here"), _copy(planted, tmp_path / "there")
    local, remote = make("local").fit(here), make("ray").fit(there)
    assert not local.reused_ and not remote.reused_
    assert remote.run_id_ == local.run_id_  # the engine is not part of the run
    assert remote.results_.num_rows > 0
    assert remote.results_.equals(local.results_)
    for table in local.tables():
        a = local.read_table(here, table).to_pylist()
        b = remote.read_table(there, table).to_pylist()
        assert a == b, table
    again = make("ray").fit(there)  # a run computed on Ray is reused like any other
    assert again.reused_ and again.results_.equals(remote.results_)


def test_engine_is_checked_and_on_the_cli(planted):
    with pytest.raises(ConfigError) as exc:
        Slices(engine="spark").fit(planted)
    assert str(exc.value) == "engine must be one of 'local', 'ray', got 'spark'"
    for command in ("slices", "barlow"):
        out = subprocess.run(
            [sys.executable, "-m", "failstore.cli.app", command, "--help"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert "--engine" in out and "--address" in out
