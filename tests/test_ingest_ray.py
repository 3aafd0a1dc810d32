"""`failstore ingest --engine ray` on a local Ray cluster started by the tests: the same rows
as the local engine (floats bit for bit on CPU), reruns add nothing, a killed run resumes
without duplicates, and a Ray writer beside a local writer lands every key once."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import ray
from conftest import write_colour_folder

from failstore.ingest.pipeline import IngestOptions, ingest
from failstore.ingest.ray_engine import RayOptions
from failstore.store import Store

ROOT = Path(__file__).resolve().parents[1]
# 2 CPUs: three model actors and the decode tasks share them (fractions are Ray's bookkeeping)
SMALL = RayOptions(actors=1, cpus=0.5, decode_cpus=0.25)
MANY = RayOptions(actors=2, cpus=0.25, decode_cpus=0.25)  # six model actors on two cores


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster (2 CPUs) for this module; its address for CLI subprocesses."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """The demo's formats, tiny: target and robust state-dict dirs, an open_clip dir, tags."""
    import torch
    from test_models_clip import TAGS, write_tiny_clip

    from failstore.demo.nets import BottleneckCNN, PooledCNN, export_model
    from failstore.models import write_vocab

    root = tmp_path_factory.mktemp("ray_models")
    torch.manual_seed(11)
    names, mean, std = ["red", "green", "blue"], [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    kw = {"num_classes": 3, "widths": [8, 8, 16, 16], "bottleneck": 10}
    export_model(BottleneckCNN(**kw), root / "target", "failstore.demo.nets:BottleneckCNN", kw,
                 names, mean, std, {}, size=32)  # fmt: skip
    rkw = {"num_classes": 3, "widths": [8, 8, 8, 12]}
    export_model(PooledCNN(**rkw), root / "robust", "failstore.demo.nets:PooledCNN", rkw,
                 names, mean, std, {}, size=32)  # fmt: skip
    clip = write_tiny_clip(root / "tiny-clip")
    vocab = write_vocab(root / "tags.txt", TAGS, [0.1, None, -0.05], ["a photo of {}."],
                        [None, None, None])  # fmt: skip
    return {"target": str(root / "target"), "robust": str(root / "robust"),
            "clip": f"local-dir:{clip}", "tags": str(vocab)}  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """45 images of three colours, one broken file, one exact copy under another label."""
    root = write_colour_folder(tmp_path_factory.mktemp("ray_imgs") / "imgs", 15, (40, 34), seed=3)
    (root / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 40)
    shutil.copy(root / "green" / "3.png", root / "blue" / "copy-of-green-3.png")
    return settled(root)


def settled(root: Path) -> Path:
    """Files last modified an hour ago: an ingest records the size and mtime only of files
    older than a few seconds (decode.RACY_SECONDS), which would make two ingests of fresh
    files differ by when they ran, not by engine."""
    old = time.time() - 3600
    for f in root.rglob("*.png"):
        os.utime(f, (old, old))
    return root


def opts(folder: Path, models: dict[str, str], **kw) -> IngestOptions:
    base = dict(source=folder, workers=0, batch_size=8, commit_every=16, **models)
    return IngestOptions(**{**base, **kw})


def rows(store: Store, table: str, *keys: str) -> list[dict]:
    t = store.read(table)
    t = t.select([c for c in t.column_names if not c.endswith("_at") and c != "time"])  # when
    return sorted(t.to_pylist(), key=lambda r: tuple(str(r[k]) for k in keys))


def same_rows(a: Store, b: Store) -> None:
    for table, keys in (("images", ["image_id"]), ("predictions", ["model", "image_id"]),
                        ("ingest_errors", ["uri"])):  # fmt: skip
        ra, rb = rows(a, table, *keys), rows(b, table, *keys)
        assert len(ra) == len(rb), table
        for x, y in zip(ra, rb, strict=True):
            assert x == y, (table, {k: (x[k], y[k]) for k in x if x[k] != y[k]})


def test_ray_ingest_writes_the_local_engines_rows_bit_for_bit(cluster, models, folder, tmp_path):
    local = ingest(tmp_path / "local", opts(folder, models))
    # two actors per model: blocks finish out of order, the driver still sees input order
    remote = ingest(tmp_path / "ray", opts(folder, models, engine="ray", ray=MANY))
    assert remote.summary().split(" in ")[0] == local.summary().split(" in ")[0]
    assert (remote.new_images, remote.errors, remote.label_conflicts) == (45, 1, 1)
    a, b = Store(tmp_path / "local"), Store(tmp_path / "ray")
    same_rows(a, b)  # == on lists of float32 values: the same bits
    emb = np.asarray(b.read("predictions", ["embedding"])["embedding"].to_pylist(), np.float32)
    assert emb.shape == (45, 10) and np.abs(emb).sum() > 0

    before = b.versions()
    again = ingest(tmp_path / "ray", opts(folder, models, engine="ray", ray=SMALL))
    assert (again.new_images, again.predictions, again.updated_images) == (0, 0, 0)
    assert b.versions() == before  # a rerun writes nothing


def test_models_added_on_ray_run_only_where_missing(cluster, models, folder, tmp_path):
    """A store ingested with the target only, then on Ray with all three: the robust and CLIP
    columns are added to every image, no prediction is made again (the target actor is given
    the ids that have one), and the store equals one ingest of all three."""
    ingest(tmp_path / "s", opts(folder, {"target": models["target"]}))
    first = rows(Store(tmp_path / "s"), "predictions", "image_id")
    more = ingest(tmp_path / "s", opts(folder, models, engine="ray", ray=SMALL))
    assert (more.new_images, more.updated_images, more.predictions) == (0, 45, 0)
    ingest(tmp_path / "all", opts(folder, models))
    same_rows(Store(tmp_path / "s"), Store(tmp_path / "all"))
    assert rows(Store(tmp_path / "s"), "predictions", "image_id") == first


def _cli(store: Path, folder: Path, models: dict[str, str], *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "failstore.cli.app", "--store", str(store), "ingest",
            str(folder), "--target", models["target"], "--robust", models["robust"],
            "--clip", models["clip"], "--tags", models["tags"], "--batch-size", "8",
            "--workers", "0", "--no-progress", *extra]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def _ray_args(address: str) -> list[str]:
    return ["--engine", "ray", "--address", address, "--ray-cpus", "0.5",
            "--ray-decode-cpus", "0.25"]  # fmt: skip


def test_a_killed_ray_ingest_resumes_without_duplicates(cluster, models, tmp_path):
    folder = settled(write_colour_folder(tmp_path / "imgs", 100, (40, 34), seed=4))  # 300
    store = tmp_path / "s"
    p = _cli(store, folder, models, "--commit-every", "8", *_ray_args(cluster))
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and p.poll() is None:
            if (store / "predictions.lance").exists() and Store(store).count("predictions"):
                break  # a first commit landed
            time.sleep(0.05)
        assert p.poll() is None, p.communicate()
        p.send_signal(signal.SIGKILL)
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
    partial = Store(store).count("predictions")
    assert 0 < partial < 300
    again = _cli(store, folder, models, *_ray_args(cluster))
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    ingest(tmp_path / "local", opts(folder, models))
    same_rows(Store(store), Store(tmp_path / "local"))


def test_a_ray_writer_beside_a_local_writer_lands_every_key_once(cluster, models, tmp_path):
    a = write_colour_folder(tmp_path / "a", 12, (30, 30), seed=7)
    more = write_colour_folder(tmp_path / "more", 20, (30, 30), seed=8)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    for f in more.rglob("*.png"):  # b: a's 36 images and 60 more
        shutil.copy(f, b / f.parent.name / f"more-{f.name}")
    store = tmp_path / "s"
    ps = [_cli(store, a, models, *_ray_args(cluster)), _cli(store, b, models)]
    for p in ps:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    s = Store(store)
    ids = s.read("images", ["image_id"])["image_id"].to_pylist()
    keys = s.read("predictions", ["model", "image_id"]).to_pylist()
    assert len(ids) == len(set(ids)) == 96
    assert len(keys) == len({(k["model"], k["image_id"]) for k in keys}) == 96
    assert pa.compute.all(s.read("images", ["clip_model"])["clip_model"].is_valid()).as_py()


def test_an_unreachable_cluster_is_one_line_and_writes_nothing(models, folder, tmp_path):
    import socket

    with socket.socket() as s:  # a port no one listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = tmp_path / "s"
    p = _cli(store, folder, models, "--engine", "ray", "--address", f"127.0.0.1:{port}")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 1
    assert err.splitlines()[-1] == (
        f"error: cannot reach a Ray cluster at 127.0.0.1:{port}: Connection refused; nothing "
        "was written; is a Ray head node running there? check --address"
    )
    assert not store.exists()


def test_without_ray_installed_the_error_says_how_to_install_it(monkeypatch):
    from failstore.errors import ConfigError
    from failstore.ingest.ray_engine import start

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ConfigError) as exc:
        start(None)
    assert exc.value.one_line() == (
        "--engine ray needs Ray, which is not installed; pip install 'failstore[ray]' (or leave "
        "--engine out to ingest on this machine)"
    )
