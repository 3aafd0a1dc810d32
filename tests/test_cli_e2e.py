"""The spine end to end through the CLI, with the real EfficientNet-Lite0 ImageNet model.

Hostile SQL through the CLI is in test_cli_commands.py (tests/fixtures/hostile_sql.sql)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import write_colour_folder

from failstore.store import Store


def run(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", "from failstore.cli.app import main; main()", *args]
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    images = write_colour_folder(root / "imgs", per_class=2, size=(72, 64))
    (images / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"x" * 40)
    store = root / "S"
    first = run("--store", str(store), "ingest", str(images), "--target", "efficientnet_lite0",
                "--workers", "1")
    return store, images, first


def test_ingest_keeps_good_images_and_records_the_bad_one(ingested):
    store, _, first = ingested
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("ingested 7 images in ")
    assert "6 new, 0 updated, 0 unchanged, 0 duplicates, 6 predictions, 1 errors" in first.stdout
    assert "3 dataset labels are not among efficientnet_lite0's classes" in first.stderr
    errors = Store(store).read("ingest_errors", ["uri"]).column("uri").to_pylist()
    assert [e.rsplit("/", 2)[-2:] for e in errors] == [["red", "broken.jpg"]]


def test_rerun_changes_nothing(ingested):
    store, images, _ = ingested
    before = Store(store).versions()
    again = run("--store", str(store), "ingest", str(images), "--target", "efficientnet_lite0")
    assert again.returncode == 0, again.stderr
    assert "0 new, 0 updated, 6 unchanged" in again.stdout
    assert Store(store).versions() == before


def test_sql_count_as_json(ingested):
    store, _, _ = ingested
    r = run("--store", str(store), "sql", "SELECT count(*) AS n FROM images", "--format", "json")
    assert (r.returncode, r.stdout) == (0, '[{"n": 6}]\n')
