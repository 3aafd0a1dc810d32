"""Reruns do not read files unchanged since their ingest (same path, size and mtime), unless a
requested model lacks their image; touched, resized, failed and racy files are read again."""

from __future__ import annotations

import os
import shutil
import time

import pytest
from conftest import write_colour_folder
from fakes import FakeClip, FakeRobust, FakeTarget

from failstore.ingest import decode_pool, preflight
from failstore.ingest.pipeline import IngestOptions, ingest
from failstore.store import Store

HOUR_AGO = time.time_ns() - 3600 * 10**9


@pytest.fixture
def fakes(monkeypatch):
    made: dict[str, object] = {}

    def resolve(opts):
        out = {}
        if opts.target:
            out["target"] = made.setdefault(opts.target, FakeTarget(opts.target))
        if opts.robust:
            out["robust"] = made.setdefault(opts.robust, FakeRobust(opts.robust))
        if opts.clip:
            out["clip"] = made.setdefault(opts.clip, FakeClip(opts.clip, dim=3))
        return out

    monkeypatch.setattr(preflight, "resolve_models", resolve)
    return made


@pytest.fixture
def reads(monkeypatch):
    """The uri of every file given to the decoder, in order (workers=0: in this process).
    ``decode_one`` is the only way the pipeline opens, hashes or decodes an image file."""
    opened: list[str] = []
    real = decode_pool.decode_one

    def decode_one(item, *a, **kw):
        opened.append(item.uri)
        return real(item, *a, **kw)

    monkeypatch.setattr(decode_pool, "decode_one", decode_one)
    return opened


def _age(path, when_ns=HOUR_AGO):
    """Files written a moment ago are 'racy' (read again); these tests want settled files."""
    files = [path] if os.path.isfile(path) else [
        os.path.join(d, f) for d, _, names in os.walk(path) for f in names
    ]  # fmt: skip
    for f in files:
        os.utime(f, ns=(when_ns, when_ns))
    return path


@pytest.fixture
def folder(tmp_path):
    return _age(write_colour_folder(tmp_path / "images"))


def _opts(src, **kw):
    base = dict(source=src, target="t1", workers=0, batch_size=5, commit_every=4)
    base.update(kw)
    return IngestOptions(**base)


def _stats(store):
    t = store.read("images", ["uri", "stat_size", "stat_mtime_ns"]).to_pylist()
    return {r["uri"]: (r["stat_size"], r["stat_mtime_ns"]) for r in t}


def test_an_unchanged_rerun_opens_no_file(tmp_path, folder, fakes, reads):
    ingest(tmp_path / "s", _opts(folder, robust="r", clip="c"))
    assert len(reads) == 12
    store = Store(tmp_path / "s")
    before, encoded = store.versions(), {k: v.encoded for k, v in fakes.items()}
    reads.clear()
    report = ingest(tmp_path / "s", _opts(folder, robust="r", clip="c"))
    assert reads == []  # not decoded, not hashed, not even opened
    assert (report.seen, report.skipped, report.unchanged, report.new_images) == (12, 12, 12, 0)
    assert store.versions() == before and {k: v.encoded for k, v in fakes.items()} == encoded
    assert "12 files unchanged since the last ingest, not read again" in report.summary()
    st = (folder / "red" / "0.png").stat()
    assert _stats(store)[str(folder / "red" / "0.png")] == (st.st_size, st.st_mtime_ns)


def test_touched_and_resized_files_are_read_again(tmp_path, folder, fakes, reads):
    ingest(tmp_path / "s", _opts(folder))
    touched, resized = folder / "red" / "0.png", folder / "green" / "1.png"
    _age(touched, HOUR_AGO + 60 * 10**9)  # same bytes, other mtime
    old_mtime = resized.stat().st_mtime_ns
    shutil.copyfile(folder / "blue" / "2.png", resized)  # other bytes and size...
    with open(resized, "ab") as f:
        f.write(b"\0" * 7)
    _age(resized, old_mtime)  # ...but the recorded mtime
    reads.clear()
    report = ingest(tmp_path / "s", _opts(folder))
    assert sorted(reads) == sorted([str(touched), str(resized)])
    assert (report.skipped, report.new_images, report.predictions) == (10, 1, 1)
    stats = _stats(Store(tmp_path / "s"))
    assert stats[str(touched)] == (touched.stat().st_size, touched.stat().st_mtime_ns)
    reads.clear()
    assert ingest(tmp_path / "s", _opts(folder)).skipped == 12 and reads == []


@pytest.mark.parametrize("added", [{"robust": "r"}, {"clip": "c"}, {"target": "t2"}])
def test_a_model_new_to_the_store_reads_and_embeds_the_old_images(
    tmp_path, folder, fakes, reads, added
):
    ingest(tmp_path / "s", _opts(folder))
    reads.clear()
    report = ingest(tmp_path / "s", _opts(folder, **added))
    assert len(reads) == 12 and report.skipped == 0
    model = fakes[next(iter(added.values()))]
    assert model.encoded == 12
    store = Store(tmp_path / "s")
    if "target" in added:
        assert store.count("predictions", "model = 't2'") == 12
    else:
        column = f"{next(iter(added))}_model"
        assert store.count("images", f"{column} IS NOT NULL") == 12
    reads.clear()
    assert ingest(tmp_path / "s", _opts(folder, **added)).skipped == 12 and reads == []


def test_files_in_ingest_errors_are_read_again(tmp_path, folder, fakes, reads):
    bad = folder / "red" / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    _age(bad)
    ingest(tmp_path / "s", _opts(folder))
    reads.clear()
    report = ingest(tmp_path / "s", _opts(folder))
    assert reads == [str(bad)] and (report.skipped, report.errors) == (12, 1)
    store = Store(tmp_path / "s")
    assert store.read("ingest_errors", ["uri"]).column("uri").to_pylist() == [str(bad)]
    shutil.copyfile(folder / "red" / "1.png", bad)  # fixed: now it reads, and the row goes
    with open(bad, "ab") as f:
        f.write(b"\0")
    _age(bad)
    report = ingest(tmp_path / "s", _opts(folder))
    assert (report.new_images, report.errors, store.count("ingest_errors")) == (1, 0, 0)


def test_a_label_conflict_is_found_again_when_the_first_file_is_skipped(
    tmp_path, folder, fakes, reads
):
    shutil.copyfile(folder / "red" / "0.png", folder / "green" / "dup.png")  # green < red
    _age(folder)
    first = ingest(tmp_path / "s", _opts(folder))
    assert first.label_conflicts == 1
    reads.clear()
    again = ingest(tmp_path / "s", _opts(folder))
    assert reads == [str(folder / "red" / "0.png")]  # the conflicting file has no row of its own
    assert (again.skipped, again.label_conflicts, again.duplicates) == (12, 1, 1)
    errors = Store(tmp_path / "s").read("ingest_errors").to_pylist()
    assert [e["uri"] for e in errors] == [str(folder / "red" / "0.png")]
    assert "which is labelled 'green'" in errors[0]["reason"]


def test_files_modified_just_before_their_read_are_not_recorded(tmp_path, fakes, reads):
    folder = write_colour_folder(tmp_path / "images")  # mtimes: now
    ingest(tmp_path / "s", _opts(folder))
    store = Store(tmp_path / "s")
    assert set(_stats(store).values()) == {(None, None)}  # too recent to trust
    reads.clear()
    assert ingest(tmp_path / "s", _opts(folder)).skipped == 0 and len(reads) == 12
    _age(folder)
    ingest(tmp_path / "s", _opts(folder))  # read again: settled now, so recorded
    assert None not in {v[0] for v in _stats(store).values()}
    reads.clear()
    assert ingest(tmp_path / "s", _opts(folder)).skipped == 12 and reads == []


def test_a_store_from_before_the_stat_columns_keeps_working(tmp_path, folder, fakes, reads):
    ingest(tmp_path / "s", _opts(folder))
    store = Store(tmp_path / "s")
    store.dataset("images").drop_columns(["stat_size", "stat_mtime_ns"])
    assert "stat_size" not in store.schema("images").names
    reads.clear()
    report = ingest(tmp_path / "s", _opts(folder))
    assert len(reads) == 12 and (report.skipped, report.new_images) == (0, 0)
    assert None not in {v[0] for v in _stats(store).values()}  # filled while re-read
    reads.clear()
    assert ingest(tmp_path / "s", _opts(folder)).skipped == 12 and reads == []


def test_reread_reads_every_file(tmp_path, folder, fakes, reads):
    ingest(tmp_path / "s", _opts(folder))
    reads.clear()
    report = ingest(tmp_path / "s", _opts(folder, reread=True))
    assert len(reads) == 12 and (report.skipped, report.unchanged) == (0, 12)


def test_manifest_reruns_skip_too(tmp_path, folder, fakes, reads):
    m = tmp_path / "m.csv"
    m.write_text("path,label\n" + "".join(f"images/red/{i}.png,red\n" for i in range(4)))
    ingest(tmp_path / "s", _opts(m))
    reads.clear()
    assert ingest(tmp_path / "s", _opts(m)).skipped == 4 and reads == []
