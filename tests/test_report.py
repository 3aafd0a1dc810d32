"""`failstore report OUT_DIR`: the pages of `failstore serve` as static files whose every link
resolves to a file of the report; the command loads neither torch nor the analysis framework."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest
from serve_server import ROOT, planted_with_slices

from failstore.queries.sql.session import run_sql
from failstore.serve.report import write_report

LINK = re.compile(r'(?:href|src)="([^"]*)"')


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from failstore.queries.barlow.estimator import Barlow

    store = planted_with_slices(tmp_path_factory.mktemp("report") / "s", n=200)
    Barlow(max_depth=2).fit(store)
    return store


PROBE = """
import sys
from failstore.cli.app import main
try:
    main({argv!r})
except SystemExit as e:
    assert not e.code, e.code
HEAVY = ('torch', 'torchvision', 'open_clip', 'timm', 'captum')
print('HEAVY=' + ','.join(sorted(m for m in HEAVY if m in sys.modules)))
"""


def test_report_command_writes_every_page_without_torch(store, tmp_path):
    out = tmp_path / "report"
    argv = ["--store", str(store.path), "report", str(out)]
    r = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True,
                       text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": ""})  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "HEAVY=\n" in r.stdout or r.stdout.strip().endswith("HEAVY="), r.stdout
    assert re.search(r"wrote \d+ pages and \d+ images to", r.stdout)
    pages = {p.name for p in out.glob("*.html")}
    assert "index.html" in pages
    for kind in ("class-", "slice-", "leaf-", "image-"):
        assert any(p.startswith(kind) for p in pages), kind


def test_every_link_resolves_to_a_file(store, tmp_path):
    out = tmp_path / "r"
    written = write_report(store, out)
    html_files = sorted(out.glob("*.html"))
    assert written.pages == len(html_files) and written.images > 0
    checked = 0
    for page in html_files:
        for link in LINK.findall(page.read_text()):
            assert not link.startswith(("/", "http:", "https:")), (page.name, link)
            target = out / unquote(link.split("#")[0])
            assert target.is_file(), (page.name, link)
            checked += 1
    assert checked > 100
    # thumbnails are real PNGs, full images are copies of the stored files
    row = store.read("images", ["image_id", "uri"]).to_pylist()
    copied = {p.stem: p for p in (out / "images").iterdir()}
    assert copied
    for r in row:
        if r["image_id"] in copied:
            assert copied[r["image_id"]].read_bytes() == Path(r["uri"]).read_bytes()
    for thumb in (out / "thumbs").iterdir():
        assert thumb.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_slice_page_shows_the_slice(store, tmp_path):
    out = tmp_path / "r"
    write_report(store, out)
    sql = ("SELECT image_id FROM samples WHERE model = 'm' AND label = 'dog' AND "
           "list_has_all(tags, ['small', 'snow'])")  # fmt: skip
    want = run_sql(store, sql).column("image_id").to_pylist()
    shown = None
    for page in out.glob("slice-*.html"):
        text = page.read_text()
        if "Slice small + snow" in text:
            shown = re.findall(r'href="image-([0-9a-f]{64})\.html"', text)
    assert shown is not None and sorted(shown) == sorted(want)


def test_lookup_many_answers_as_lookup_does(tmp_path, monkeypatch):
    """The report reads a gallery's images in one query (``lookup_many``); each answer is what
    ``lookup`` gives for that id: the ref, or the same error (bad id, unknown id, file gone)."""
    from failstore.errors import FailstoreError
    from failstore.serve import images

    s = planted_with_slices(tmp_path / "s", n=60)
    rows = s.read("images", ["image_id", "uri"]).to_pylist()[:3]
    Path(rows[2]["uri"]).unlink()
    ids = [r["image_id"] for r in rows] + ["0" * 64, "nope"]
    monkeypatch.setattr(images, "LOOKUP_BATCH", 2)  # four valid ids: two queries
    many = images.lookup_many(s, ids)
    assert sorted(many) == sorted(ids)
    for i in ids:
        try:
            want: object = images.lookup(s, i)
        except FailstoreError as e:
            want = e.one_line()
        got = many[i]
        assert (got.one_line() if isinstance(got, FailstoreError) else got) == want, i
    assert isinstance(many[ids[0]], images.ImageRef)
    assert "is gone" in many[ids[2]].one_line()  # type: ignore[union-attr]
    # the report still writes: a gone file's thumbnail is the grey placeholder
    write_report(s, tmp_path / "r")
