"""`failstore serve`'s pages through a real server process: home, class, slice and leaf
galleries (exactly the images the equivalent SQL returns, paged), image, SQL, and the messages
shown before an analysis has run."""

from __future__ import annotations

import html
import re
from urllib.parse import urlencode

import pytest
from serve_server import planted_with_slices, running

from failstore.queries.sql.session import run_sql

IMAGE_LINK = re.compile(r'href="/image/([0-9a-f]{64})"')


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from failstore.queries.slices.estimator import Slices

    store = planted_with_slices(tmp_path_factory.mktemp("pages") / "s", n=360)
    Slices(min_size=10, tags_from=["attr_background", "attr_size"]).fit(store)
    with running(store) as server:
        yield store, server


def page(server, path: str) -> str:
    status, headers, body = server.get(path)
    assert status == 200, (path, status, body[:300])
    assert headers["content-type"].startswith("text/html")
    return body.decode()


def gallery_ids(server, path: str) -> tuple[list[str], list[str]]:
    """The image ids on every page of a gallery: (failing, not failing)."""
    failing: list[str] = []
    passing: list[str] = []
    n = 0
    while True:
        text = page(server, f"{path}&page={n}")
        fail_part, _, pass_part = text.partition('id="passing"')
        failing += IMAGE_LINK.findall(fail_part.partition('id="failing"')[2])
        passing += IMAGE_LINK.findall(pass_part)
        if "next</a>" not in text:
            return failing, passing
        n += 1


def test_home_lists_models_splits_and_classes(served):
    _, server = served
    text = page(server, "/")
    assert "Models" in text and ">m<" in text and ">val<" in text and ">test<" in text
    assert 'href="/class/m/dog"' in text and 'href="/class/m/cat"' in text


def test_class_page_sections_and_degradation(served):
    _, server = served
    text = html.unescape(page(server, "/class/m/dog"))
    for section in ("Error rate", "Confusions", "Slices", "Barlow leaves", "CES concepts",
                    "Coverage cases", "Failure modes"):  # fmt: skip
        assert f"<h2>{section}</h2>" in text
    assert "run `failstore barlow`" in text and "run `failstore explain`" in text
    assert "run `failstore coverage`" in text
    assert "/slice?" in text


def test_failure_modes_section_shows_the_stored_query(served):
    store, server = served
    rows = run_sql(store, "SELECT * FROM failure_modes", params={"class": "dog"}).to_pylist()
    causes = {r["cause"] for r in rows}
    assert {"snow", "small"} <= causes  # the planted mode, named by slices
    text = html.unescape(page(server, "/class/m/dog"))
    section = text.partition("<h2>Failure modes</h2>")[2].partition("<h2>")[0]
    for r in rows:
        assert r["cause"] in section
    # each row links to the images of the slice that names it
    assert "/slice?" in section and "tags=" in section


@pytest.mark.parametrize(
    ("tag_source", "tags"),
    [("tags", "small,snow"), ("attr_background,attr_size", "attr_background=snow,attr_size=small")],
)
def test_slice_gallery_holds_exactly_the_slice(served, tag_source, tags):
    store, server = served
    rows = run_sql(store, "SELECT class, grouping, tag_source, tags FROM slices").to_pylist()
    wanted = sorted(tags.split(","))
    assert any(sorted(r["tags"]) == wanted and r["tag_source"] == tag_source for r in rows)
    q = {"model": "m", "class": "dog", "grouping": "label", "tag_source": tag_source, "tags": tags}
    failing, passing = gallery_ids(server, "/slice?" + urlencode(q))
    if tag_source == "tags":
        cond = "list_has_all(tags, ['small', 'snow'])"
    else:
        cond = "attr_background = 'snow' AND attr_size = 'small'"
    sql = f"SELECT image_id, correct FROM samples WHERE model = 'm' AND label = 'dog' AND {cond}"
    want = run_sql(store, sql).to_pylist()
    assert sorted(failing) == sorted(r["image_id"] for r in want if not r["correct"])
    assert sorted(passing) == sorted(r["image_id"] for r in want if r["correct"])
    assert len(set(failing)) == len(failing) and failing


def test_gallery_pages(served):
    store, server = served
    q = {"model": "m", "class": "dog", "grouping": "label", "tag_source": "tags", "tags": "snow"}
    q["per_page"] = "10"
    text = page(server, "/slice?" + urlencode(q))
    n = run_sql(store, "SELECT count(*) AS n FROM samples WHERE label = 'dog' AND correct "
                "AND list_has_all(tags, ['snow'])").column("n")[0].as_py()  # fmt: skip
    assert n > 20 and f"page 1 of {-(-n // 10)}" in text and "next</a>" in text
    _, passing = gallery_ids(server, "/slice?" + urlencode(q))
    assert len(passing) == n and len(set(passing)) == n


def test_leaf_gallery_before_and_after_barlow(served):
    store, server = served
    text = page(server, "/leaf?model=m&class=dog&leaf=1")
    assert "run `failstore barlow`" in html.unescape(text)
    from failstore.queries.barlow.estimator import Barlow

    Barlow(max_depth=2).fit(store)
    leaves = run_sql(store, "SELECT leaf FROM barlow_leaves WHERE class = 'dog' "
                     "AND leaf IS NOT NULL").column("leaf").to_pylist()  # fmt: skip
    assert leaves
    assert "/leaf?" in page(server, "/class/m/dog")
    modes = html.unescape(page(server, "/class/m/dog")).partition("<h2>Failure modes</h2>")[2]
    assert "leaf images" in modes.partition("<h2>")[0]  # failure modes link their leaves
    for leaf in leaves:
        failing, passing = gallery_ids(server, f"/leaf?model=m&class=dog&leaf={leaf}")
        sql = f"SELECT image_id FROM barlow_members WHERE class = 'dog' AND leaf = {leaf}"
        want = run_sql(store, sql).column("image_id").to_pylist()
        assert sorted(failing + passing) == sorted(want)


def test_image_page(served):
    store, server = served
    image_id = run_sql(store, "SELECT image_id FROM samples WHERE NOT correct ORDER BY image_id "
                       "LIMIT 1").column("image_id")[0].as_py()  # fmt: skip
    text = html.unescape(page(server, f"/image/{image_id}"))
    for part in ("Predictions", "Tags", "Saliency", "CES top concepts"):
        assert part in text
    assert f"/api/images/{image_id}/thumb" in text
    assert f"/api/images/{image_id}/saliency?model=m&amp;method=gradient" in page(
        server, f"/image/{image_id}"
    )
    assert "run `failstore coverage`" in text and "run `failstore explain`" in text
    status, _, body = server.get("/image/not-an-id")
    assert status == 400 and b"bad image id" in body


def test_sql_page(served):
    _, server = served
    text = page(server, "/sql?" + urlencode({"q": "SELECT image_id, label FROM images LIMIT 3"}))
    assert text.count('href="/image/') == 3 and "/api/sql?" in text
    text = html.unescape(page(server, "/sql?" + urlencode({"q": "DROP TABLE images"})))
    assert "DROP TABLE is not allowed" in text
