"""The pages in a real browser: headless Chromium (tests/browser.py) opens the class and slice
pages of a served planted store; the gallery Chromium shows holds exactly the images the
equivalent SQL returns, and the screenshots are kept as test artefacts."""

from __future__ import annotations

import re
from urllib.parse import urlencode

import pytest
from browser import dom, screenshot
from serve_server import planted_with_slices, running

from failstore.queries.sql.session import run_sql

IMAGE_LINK = re.compile(r'href="/image/([0-9a-f]{64})"')
THUMB = re.compile(r'src="/api/images/([0-9a-f]{64})/thumb')


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from failstore.queries.slices.estimator import Slices

    store = planted_with_slices(tmp_path_factory.mktemp("browser") / "s", n=240)
    Slices(min_size=10).fit(store)
    with running(store) as server:
        yield store, f"http://127.0.0.1:{server.port}"


def test_the_class_page_in_chromium(served):
    store, base = served
    text = dom(f"{base}/class/m/dog")
    for section in ("Error rate", "Slices", "Failure modes", "Barlow leaves"):
        assert f"<h2>{section}</h2>" in text
    modes = run_sql(store, "SELECT cause FROM failure_modes", params={"class": "dog"})
    section = text.partition("<h2>Failure modes</h2>")[2].partition("<h2>")[0]
    assert all(c in section for c in modes["cause"].to_pylist())
    shot = screenshot(f"{base}/class/m/dog", "class-dog")
    assert shot.stat().st_size > 10_000


def test_the_slice_gallery_in_chromium_shows_exactly_the_slice(served):
    store, base = served
    q = {"model": "m", "class": "dog", "grouping": "label", "tag_source": "tags",
         "tags": "small,snow", "per_page": "500"}  # fmt: skip
    url = f"{base}/slice?{urlencode(q)}"
    text = dom(url)
    failing_part, _, passing_part = text.partition('id="passing"')
    failing = IMAGE_LINK.findall(failing_part.partition('id="failing"')[2])
    passing = IMAGE_LINK.findall(passing_part)
    sql = (
        "SELECT image_id, correct FROM samples WHERE model = 'm' AND label = 'dog' "
        "AND list_has_all(tags, ['small', 'snow'])"
    )
    want = run_sql(store, sql).to_pylist()
    assert sorted(set(failing)) == sorted(r["image_id"] for r in want if not r["correct"])
    assert sorted(set(passing)) == sorted(r["image_id"] for r in want if r["correct"])
    assert failing
    # every image shown as a thumbnail is one of them
    assert set(THUMB.findall(text)) == {r["image_id"] for r in want}
    screenshot(url, "slice-dog-small-snow")
