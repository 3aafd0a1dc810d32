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
    mode_slices = [
        _matching_slice(r.get("slice_tags"), r.get("slice_tag_source"), slice_keys)
        for r in modes.rows
    ]
    return "class.html", {
        "model": model, "cls": cls, "rates": rates, "mode_slices": mode_slices,
        "confusions": confusions, "slices": slices, "slice_keys": slice_keys,
        "leaves": leaves, "ces": ces, "coverage": coverage, "modes": modes,
    }  # fmt: skip


def _matching_slice(tags: Any, tag_source: Any, keys: list[SliceKey]) -> SliceKey | None:
    """The slice a `failure_modes` row names (its ``slice_tags`` and ``slice_tag_source``),
    among the class's slices."""
    if not tags:
        return None
    want = sorted(str(t) for t in tags)
    return next(
        (
            k
            for k in keys
            if sorted(k.tags) == want and (tag_source is None or k.tag_source == tag_source)
        ),
        None,
    )


def gallery(
    store: Store,
    title: str,
    sql: str,
    params: dict[str, str],
    model: str,
    cls: str,
    page: int = 0,
    page_url: Callable[[int], str] | None = None,
    per_page: int = PER_PAGE,
) -> tuple[str, dict[str, Any]]:
    """Thumbnails of a slice's or a leaf's images (``sql``: one row per image with image_id,
    label, prediction, confidence, correct, tags), failing and not failing side by side, one
    page of each read in SQL (a large slice is never read whole)."""
    counts = data.rows(
        store, "SELECT count(*) FILTER (WHERE correct IS NOT TRUE) AS failing, "
        f"count(*) FILTER (WHERE correct IS TRUE) AS passing FROM ({sql}) AS g", params,
    )  # fmt: skip
    n_failing = counts.rows[0]["failing"] if counts.rows else 0
    n_passing = counts.rows[0]["passing"] if counts.rows else 0
    pages = max(1, -(-max(n_failing, n_passing) // per_page))
    page = min(max(page, 0), pages - 1)

    def side(cond: str) -> list[dict[str, Any]]:
        if not counts.ok:
            return []
        return data.rows(
            store, f"SELECT * FROM ({sql}) AS g WHERE {cond} ORDER BY image_id "
            f"LIMIT {int(per_page)} OFFSET {int(page * per_page)}", params,
        ).rows  # fmt: skip

    return "gallery.html", {
        "title": title, "model": model, "cls": cls, "res": counts, "sql": sql, "params": params,
        "failing": side("correct IS NOT TRUE"), "passing": side("correct IS TRUE"),
        "n_failing": n_failing, "n_passing": n_passing, "page": page, "pages": pages,
        "page_url": page_url,
    }  # fmt: skip


IMAGE_BATCH = 50  # image ids per query when the report reads many image pages' facts


def _by_image(res: Result, ids: list[str]) -> dict[str, Result]:
    """One Result per image id (the rows of that image, without the image_id column unless it
    is the only key), or the same message for every id."""
    out = {i: Result([], res.columns, res.missing) for i in ids}
    for r in res.rows:
        if r["image_id"] in out:
            out[r["image_id"]].rows.append(r)
    return out


def image_facts(store: Store, ids: list[str]) -> dict[str, dict[str, Any]]:
    """What an image page shows, for many images at once (a few queries per IMAGE_BATCH ids):
    by id, its ``image`` row, ``tags``, ``predictions`` of every model, ``saliency`` maps,
    ``coverage`` rows (case, sanity verdict) and ``ces`` top concepts."""
    for i in ids:
        data.check_id(i)
    facts: dict[str, dict[str, Any]] = {i: {} for i in ids}
    has_tags = "tags" in store.schema("images").names if store.has_table("images") else False
    for start in range(0, len(ids), IMAGE_BATCH):
        chunk = ids[start : start + IMAGE_BATCH]
        p = {f"i{k}": v for k, v in enumerate(chunk)}
        among = f"image_id IN ({', '.join(f'${k}' for k in p)})"
        parts = {
            "image": _by_image(data.rows(store, "SELECT image_id, uri, split, label, width, "
                               f"height{', tags' if has_tags else ''} FROM images WHERE {among}",
                               p), chunk),
            "predictions": _by_image(data.rows(store, "SELECT * FROM samples WHERE "
                                     f"{among} ORDER BY model", p), chunk),
            "coverage": _by_image(data.rows(store, 'SELECT image_id, model, method, "explain", '
                                  '"case", iou, gtc, sc, soft_sc, sanity, sanity_reason FROM '
                                  f"coverage WHERE {among}", p), chunk),
        }  # fmt: skip
        if store.has_table("saliency_maps"):
            parts["saliency"] = _by_image(data.rows(
                store, 'SELECT image_id, model, method, "explain", "class", height, width, '
                f'"map", x0, y0, x1, y1 FROM saliency_maps WHERE {among} '
                'ORDER BY model, method, "explain"', p), chunk)  # fmt: skip
        if store.has_table("ces_images"):
            parts["ces"] = _by_image(data.rows(
                store, "SELECT image_id, model, label, prediction, concept, score, rank "
                f"FROM ces_images WHERE {among} AND rank <= 5 ORDER BY model, rank", p,
            ), chunk)  # fmt: skip
        for i in chunk:
            for name, per_id in parts.items():
                facts[i][name] = per_id[i]
    return facts


def image_page(
    store: Store, image_id: str, facts: dict[str, Any] | None = None
) -> tuple[str, dict[str, Any]]:
    """An image: its row, tags, every model's prediction, saliency overlays with coverage case
    and sanity verdict, CES top concepts (``facts``: from image_facts, read here if None)."""
    f = facts if facts is not None else image_facts(store, [image_id])[image_id]
    image = f["image"]
    tags = list(image.rows[0].get("tags") or []) if image.rows else []
    no_ces = Result(missing="no `explain` run yet: run `failstore explain` to see concepts")
    saliency = f.get("saliency", Result()).rows
    return "image.html", {
        "image_id": image_id, "image": image, "predictions": f["predictions"], "tags": tags,
        "saliency": saliency, "coverage": f["coverage"], "ces": f.get("ces", no_ces),
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
