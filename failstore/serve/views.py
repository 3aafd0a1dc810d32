"""The pages' contents, shared by the server (pages.py) and the static report (report.py):
each function reads the store through guarded SQL and returns (template, context). Links are
made by a ``links`` object (server URLs, or the report's relative file names), so the same
templates serve both."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from failstore.errors import FailstoreError
from failstore.serve import data
from failstore.serve.data import Result, SliceKey
from failstore.store import Store

PER_PAGE = 48  # thumbnails per side (failing / not failing) of a gallery page
RUN_HINTS = {
    "slices": "run `failstore slices` to see failure slices",
    "barlow_leaves": "run `failstore barlow` to see leaves",
    "ces": "run `failstore explain` to see concepts",
    "coverage_cases": "run `failstore saliency` then `failstore coverage` to see coverage cases",
}


class Links(Protocol):
    def home(self) -> str: ...
    def class_(self, model: str, cls: str) -> str: ...
    def slice_(self, key: SliceKey) -> str: ...
    def leaf(self, model: str, cls: str, leaf: Any) -> str: ...
    def image(self, image_id: str) -> str: ...
    def thumb(self, image_id: str) -> str: ...
    def full(self, image_id: str) -> str: ...
    def saliency(self, image_id: str, model: str, method: str) -> str: ...
    def sql(self, q: str = "") -> str: ...
    def api(self, q: str, fmt: str, params: dict[str, str] | None = None) -> str | None: ...


def only(res: Result, **where: Any) -> Result:
    """The rows of ``res`` whose columns equal the given values (column ``cls`` is "class")."""
    want = {("class" if k == "cls" else k): v for k, v in where.items()}
    kept = [r for r in res.rows if all(r.get(k) == v for k, v in want.items())]
    return Result(kept, res.columns, res.missing)


def hinted(res: Result, name: str) -> Result:
    if res.missing and name in RUN_HINTS and "run `failstore" not in res.missing:
        res.missing = f"{res.missing} ({RUN_HINTS[name]})"
    return res


def home(store: Store) -> tuple[str, dict[str, Any]]:
    models = data.rows(store, "SELECT name, role, embedding_dim FROM models ORDER BY role, name")
    splits = data.rows(
        store, "SELECT split, count(*) AS images FROM images GROUP BY split ORDER BY split"
    )
    rates = data.stored(store, "class_error_rates")
    return "home.html", {"models": models, "splits": splits, "rates": rates}


def class_page(store: Store, model: str, cls: str) -> tuple[str, dict[str, Any]]:
    p = {"model": model}
    rates = only(data.stored(store, "class_error_rates", p), cls=cls)
    confusions = data.stored(store, "confusions", p)
    confusions = Result(
        [r for r in confusions.rows if cls in (r["label"], r["prediction"])],
        confusions.columns, confusions.missing,
    )  # fmt: skip
    slices = hinted(only(data.stored(store, "slices", p), cls=cls), "slices")
    leaves = hinted(only(data.stored(store, "barlow_leaves", p), cls=cls), "barlow_leaves")
    ces = hinted(only(data.stored(store, "ces", p), label=cls), "ces")
    coverage = hinted(only(data.stored(store, "coverage_cases", p), label=cls), "coverage_cases")
    modes = data.stored(store, "failure_modes", {"model": model, "class": cls})
    slice_keys = [
        SliceKey(model, r["class"], r["grouping"], r["tag_source"], tuple(sorted(r["tags"])))
        for r in slices.rows
    ]
    return "class.html", {
        "model": model, "cls": cls, "rates": rates, "confusions": confusions,
        "slices": slices, "slice_keys": slice_keys, "leaves": leaves, "ces": ces,
        "coverage": coverage, "modes": modes,
    }  # fmt: skip


def gallery(
    store: Store,
    title: str,
    sql: str,
    params: dict[str, str],
    model: str,
    cls: str,
    page: int = 0,
    page_url: Callable[[int], str] | None = None,
    per_page: int | None = PER_PAGE,
) -> tuple[str, dict[str, Any]]:
    """Thumbnails of a slice's or a leaf's images, failing and not failing side by side."""
    res = data.rows(store, sql, params)
    failing = [r for r in res.rows if r["correct"] is not True]
    passing = [r for r in res.rows if r["correct"] is True]
    pages = 1
    if per_page:
        pages = max(1, -(-max(len(failing), len(passing)) // per_page))
        page = min(max(page, 0), pages - 1)
        cut = slice(page * per_page, (page + 1) * per_page)
        failing_shown, passing_shown = failing[cut], passing[cut]
    else:
        failing_shown, passing_shown = failing, passing
    return "gallery.html", {
        "title": title, "model": model, "cls": cls, "res": res, "sql": sql, "params": params,
        "failing": failing_shown, "passing": passing_shown, "n_failing": len(failing),
        "n_passing": len(passing), "page": page, "pages": pages, "page_url": page_url,
    }  # fmt: skip


def image_page(store: Store, image_id: str) -> tuple[str, dict[str, Any]]:
    data.check_id(image_id)
    p = {"id": image_id}
    info = data.rows(store, "SELECT * EXCLUDE (image_id) FROM samples WHERE image_id = $id "
                     "ORDER BY model", p)  # fmt: skip
    image = data.rows(store, "SELECT image_id, uri, split, label, width, height FROM images "
                      "WHERE image_id = $id", p)  # fmt: skip
    tags = data.rows(store, "SELECT * FROM images WHERE image_id = $id", p)
    tag_list = []
    if tags.rows:
        tag_list = list(tags.rows[0].get("tags") or [])
    saliency: list[dict[str, Any]] = []
    if store.has_table("saliency_maps"):
        saliency = data.rows(
            store, 'SELECT DISTINCT model, method, "explain", "class" FROM saliency_maps '
            'WHERE image_id = $id ORDER BY model, method, "explain"', p,
        ).rows  # fmt: skip
    coverage = data.rows(
        store, 'SELECT model, method, "explain", "case", iou, gtc, sc, soft_sc, sanity, '
        "sanity_reason FROM coverage WHERE image_id = $id", p,
    )  # fmt: skip
    ces = Result(missing="no `explain` run yet: run `failstore explain` to see concepts")
    if store.has_table("ces_images"):
        ces = data.rows(store, "SELECT model, label, prediction, concept, score, rank "
                        "FROM ces_images WHERE image_id = $id AND rank <= 5 "
                        "ORDER BY model, rank", p)  # fmt: skip
    return "image.html", {
        "image_id": image_id, "image": image, "predictions": info, "tags": tag_list,
        "saliency": saliency, "coverage": coverage, "ces": ces,
    }  # fmt: skip


def sql_page(store: Store, q: str, limit: int = 100) -> tuple[str, dict[str, Any]]:
    res = Result()
    if q.strip():
        try:
            table = data.page(store, q, None, limit)
            res = Result(table.to_pylist(), table.column_names)
        except FailstoreError as e:
            res = Result(missing=e.one_line())
    return "sql.html", {"q": q, "res": res, "limit": limit}
