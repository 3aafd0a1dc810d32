"""``write_report(store, out_dir)``: the pages of ``failstore serve`` as static HTML.

Every page is a file in ``out_dir`` (flat, so links are plain relative file names): index.html,
class-*.html, slice-*.html, leaf-*.html, image-<id>.html, with thumbnails in thumbs/, image
files in images/ and saliency overlays in saliency/. Pages are written as links to them are
made, starting from the home page, so every link of the report resolves to a file. Galleries
show the first REPORT_PER_SIDE failing and not-failing images (the server pages through all).
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from failstore.errors import FailstoreError
from failstore.serve import data, images, views
from failstore.serve.data import SliceKey
from failstore.serve.render import render
from failstore.store import Store

REPORT_PER_SIDE = 60


def _slug(*parts: Any) -> str:
    text = "-".join(str(p) for p in parts)
    short = re.sub(r"[^A-Za-z0-9_]+", "_", text)[:40].strip("_")
    return f"{short}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


@dataclass
class Written:
    pages: int = 0
    images: int = 0


class ReportLinks:
    """Links of the static report: relative file names; each link queues what it points to."""

    def __init__(self, store: Store, out: Path) -> None:
        self.store, self.out = store, out
        self.queue: deque[tuple[str, str, tuple[Any, ...]]] = deque()
        self.seen: set[str] = set()
        self.files: set[str] = set()
        self.maps: dict[tuple[str, str, str], dict[str, Any]] = {}  # saliency rows read
        self.refs: dict[str, images.ImageRef | FailstoreError] = {}

    def ref(self, image_id: str) -> images.ImageRef:
        """The stored image (looked up once per report)."""
        if image_id not in self.refs:
            try:
                self.refs[image_id] = images.lookup(self.store, image_id)
            except FailstoreError as e:
                self.refs[image_id] = e
        found = self.refs[image_id]
        if isinstance(found, FailstoreError):
            raise found
        return found

    def prefetch(self, ids: list[str]) -> None:
        """Look up many images in one query (a gallery's, a batch of image pages'): one query
        per image cost 9 s of the quick demo's 29 s report."""
        todo = [i for i in dict.fromkeys(ids) if i not in self.refs]
        if todo:
            self.refs.update(images.lookup_many(self.store, todo))

    def _page(self, name: str, kind: str, *args: Any) -> str:
        if name not in self.seen:
            self.seen.add(name)
            self.queue.append((name, kind, args))
        return name

    def home(self) -> str:
        return "index.html"

    def class_(self, model: str, cls: str) -> str:
        return self._page(f"class-{_slug(model, cls)}.html", "class", model, cls)

    def slice_(self, key: SliceKey) -> str:
        name = f"slice-{_slug(key.model, key.cls, key.grouping, key.tag_source, *key.tags)}.html"
        return self._page(name, "slice", key)

    def leaf(self, model: str, cls: str, leaf: Any) -> str:
        return self._page(f"leaf-{_slug(model, cls, leaf)}.html", "leaf", model, cls, str(leaf))

    def image(self, image_id: str) -> str:
        return self._page(f"image-{image_id}.html", "image", image_id)

    def thumb(self, image_id: str) -> str:
        name = f"thumbs/{image_id}.png"
        if name not in self.files:
            self.files.add(name)
            self._write(name, lambda ref: images.thumbnail(self.store, ref, 128).read_bytes(),
                        image_id)  # fmt: skip
        return name

    def full(self, image_id: str) -> str:
        try:
            ref = self.ref(image_id)
        except FailstoreError:
            return self.thumb(image_id)
        name = f"images/{image_id}{ref.path.suffix.lower() or '.img'}"
        if name not in self.files:
            self.files.add(name)
            (self.out / "images").mkdir(exist_ok=True)
            shutil.copyfile(ref.path, self.out / name)
        return name

    def saliency(self, image_id: str, model: str, method: str) -> str:
        from failstore.serve.api import saliency_maps

        name = f"saliency/{image_id}-{_slug(model, method)}.png"
        if name not in self.files:
            self.files.add(name)

            def draw(ref: images.ImageRef) -> bytes:
                row = self.maps.get((image_id, model, method))
                if row is None:
                    row = saliency_maps(self.store, image_id, model, method)[0]
                return images.overlay(self.store, ref, row, 256)

            self._write(name, draw, image_id)
        return name

    def sql(self, q: str = "") -> str:
        return self._page("sql.html", "sql")

    def api(self, q: str, fmt: str, params: dict[str, str] | None = None) -> str | None:
        return None  # no API in a static report

    def _write(self, name: str, draw, image_id: str) -> None:
        path = self.out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.write_bytes(draw(self.ref(image_id)))
        except (FailstoreError, OSError, ValueError):
            path.write_bytes(_PLACEHOLDER)  # the file is gone: a grey square, the link holds


def _placeholder() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 200, 200)).save(buf, "PNG")
    return buf.getvalue()


_PLACEHOLDER = _placeholder()


def _render(
    store: Store,
    links: ReportLinks,
    kind: str,
    args: tuple[Any, ...],
    facts: dict[str, dict[str, Any]] | None = None,
) -> str:
    if kind == "class":
        template, ctx = views.class_page(store, *args)
    elif kind == "slice":
        (key,) = args
        sql, params = data.slice_sql(key)
        template, ctx = views.gallery(store, f"Slice {' + '.join(key.tags)}", sql, params,
                                      key.model, key.cls, per_page=REPORT_PER_SIDE)  # fmt: skip
        links.prefetch([r["image_id"] for r in (*ctx["failing"], *ctx["passing"])])
    elif kind == "leaf":
        model, cls, leaf = args
        sql, params = data.leaf_sql(model, cls, leaf)
        template, ctx = views.gallery(store, f"Barlow leaf {leaf}", sql, params, model, cls,
                                      per_page=REPORT_PER_SIDE)  # fmt: skip
        links.prefetch([r["image_id"] for r in (*ctx["failing"], *ctx["passing"])])
    elif kind == "image":
        (image_id,) = args
        template, ctx = views.image_page(store, image_id, facts.get(image_id) if facts else None)
    elif kind == "sql":
        template, ctx = (
            "error.html",
            {
                "status": "SQL",
                "message": "this is a static report: run `failstore serve` to query the store",
            },
        )
    else:  # pragma: no cover
        raise ValueError(kind)
    return render(template, {**ctx, "links": links})


def write_report(store: Store, out_dir: Path | str) -> Written:
    """Render every page reachable from the home page into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    links = ReportLinks(store, out)
    written = Written()
    template, ctx = views.home(store)
    (out / "index.html").write_text(render(template, {**ctx, "links": links}), encoding="utf-8")
    written.pages += 1
    while links.queue:
        # Other pages first; then every image page queued so far, their facts read in batches.
        batch = [links.queue.popleft() for _ in range(len(links.queue))]
        later = [item for item in batch if item[1] == "image"]
        for name, kind, args in (item for item in batch if item[1] != "image"):
            (out / name).write_text(_render(store, links, kind, args), encoding="utf-8")
            written.pages += 1
        if not later:
            continue
        if links.queue:  # non-image pages queued more pages: render those before the images
            links.queue.extend(later)
            continue
        links.prefetch([args[0] for _, _, args in later])
        facts = views.image_facts(store, [args[0] for _, _, args in later])
        for f in facts.values():
            for row in f.get("saliency", views.Result()).rows:
                links.maps[(row["image_id"], row["model"], row["method"])] = row
        for name, kind, args in later:
            (out / name).write_text(_render(store, links, kind, args, facts), encoding="utf-8")
            written.pages += 1
    written.images = len(links.files)
    return written
