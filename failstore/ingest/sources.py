"""Where images come from: an image folder or a CSV/Parquet manifest.

``open_source(path)`` returns a :class:`Source`: an ordered, re-iterable collection of
:class:`SourceItem` with a description and the Arrow schema of the extra (metadata) columns.
A manifest is read and validated completely inside ``open_source``, so a broken manifest fails
before anything is written. Missing image files are not a manifest error: they become per-image
ingest errors when the image is decoded. See ``docs/ingest-sources.md``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from failstore.errors import InputError

Box = tuple[str | None, float, float, float, float]  # (label, x0, y0, x1, y1), pixels

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
SPLIT_NAMES = frozenset({"train", "val", "valid", "validation", "test", "dev"})
RESERVED_COLUMNS = frozenset(
    {
        *("image_id", "uri", "split", "label", "width", "height", "boxes", "mask", "ingested_at"),
        *("clip_model", "clip_embedding", "tag_scores", "tags", "robust_model", "robust_features"),
        *("stat_size", "stat_mtime_ns"),
    }
)
BOX_COLUMNS = ("x0", "y0", "x1", "y1")
_LAYOUT = "expected root/<label>/<image> or root/<split>/<label>/<image>"


@dataclass(frozen=True)
class SourceItem:
    uri: str  # absolute path of the image file
    label: str | None
    split: str | None
    boxes: tuple[Box, ...] | None
    mask_path: str | None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    row: int | None = None  # 1-based manifest data row; None for folders
    error: str | None = None  # known unreadable before decoding (e.g. a non-UTF-8 file name)


class Source(Protocol):
    description: str
    metadata_schema: pa.Schema

    def __iter__(self) -> Iterator[SourceItem]: ...

    def __len__(self) -> int: ...


class _ListSource:
    def __init__(self, items: list[SourceItem], description: str, schema: pa.Schema) -> None:
        self.items = items
        self.description = description
        self.metadata_schema = schema

    def __iter__(self) -> Iterator[SourceItem]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"


def open_source(
    path: str | Path,
    *,
    split: str | None = None,
    label_column: str = "label",
    path_column: str = "path",
) -> Source:
    """A directory is an :class:`ImageFolder`; a ``.csv``/``.parquet`` file is a
    :class:`Manifest`. ``split`` fills in the split of items that have none."""
    p = Path(path).expanduser()
    if p.is_dir():
        return ImageFolder(p, split=split)
    if not p.exists():
        raise InputError(f"{path} does not exist; pass an image folder or a .csv/.parquet manifest")
    if p.suffix.lower() in (".csv", ".parquet", ".pq"):
        return Manifest(p, split=split, label_column=label_column, path_column=path_column)
    raise InputError(
        f"{path} is neither a folder nor a manifest; pass an image folder or a .csv/.parquet file"
    )


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _subdirs(p: Path) -> list[Path]:
    return sorted(
        (c for c in p.iterdir() if c.is_dir() and not c.name.startswith(".")), key=lambda c: c.name
    )


class ImageFolder(_ListSource):
    """``root/<label>/...`` or ``root/<split>/<label>/...``; images in sub-folders of a class
    folder belong to that class. Non-image files are listed in ``skipped``."""

    def __init__(self, root: str | Path, *, split: str | None = None) -> None:
        self.root = Path(os.path.abspath(Path(root).expanduser()))
        self.skipped: list[str] = []
        tops = _subdirs(self.root)
        self.split_layout = (
            bool(tops)
            and all(d.name.lower() in SPLIT_NAMES for d in tops)
            and any(_subdirs(d) for d in tops)
        )
        groups = [(d.name, _subdirs(d)) for d in tops] if self.split_layout else [(None, tops)]
        items: list[SourceItem] = []
        self._skip_loose(self.root)
        for split_name, class_dirs in groups:
            if split_name is not None:
                self._skip_loose(self.root / split_name)
            for class_dir in class_dirs:
                for file in self._walk(class_dir):
                    uri, error = storable_path(file)
                    item = SourceItem(uri, class_dir.name, split_name or split, None, None)
                    items.append(replace(item, error=error) if error else item)
        if not tops or not any(classes for _, classes in groups):
            raise InputError(f"image folder {self.root} has no class sub-folders; {_LAYOUT}")
        if not items:
            exts = " ".join(sorted(IMAGE_EXTENSIONS))
            raise InputError(
                f"image folder {self.root} has no images ({exts}) in its class folders; {_LAYOUT}"
            )
        n_splits = len({i.split for i in items}) if self.split_layout else 0
        layout = f"split layout, {n_splits} splits" if self.split_layout else "class layout"
        labels = len({i.label for i in items})
        desc = f"image folder {self.root} ({layout}, {labels} labels, {len(items)} images"
        desc += f", {len(self.skipped)} other files skipped)" if self.skipped else ")"
        super().__init__(items, desc, pa.schema([]))

    def _skip_loose(self, folder: Path) -> None:
        self.skipped += sorted(str(c) for c in folder.iterdir() if not c.is_dir())

    def _walk(self, folder: Path) -> list[str]:
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                (found if is_image_name(name) else self.skipped).append(full)
        return found


def storable_path(path: str) -> tuple[str, str | None]:
    """A path the store can hold (UTF-8 text). A name with bytes that are not UTF-8 (Python
    holds them as lone surrogates) gets an escaped URI and an error for ``ingest_errors``."""
    try:
        path.encode("utf-8")
        return path, None
    except UnicodeEncodeError:
        escaped = os.fsencode(path).decode("utf-8", "backslashreplace")
        return escaped, "file name is not valid UTF-8; rename the file (e.g. with convmv)"


# --------------------------------------------------------------------------- manifests


def _norm_type(t: pa.DataType) -> pa.DataType:
    if pa.types.is_null(t) or pa.types.is_string(t) or pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_dictionary(t):
        return _norm_type(t.value_type)
    if pa.types.is_integer(t):
        return pa.int64()
    if pa.types.is_floating(t):
        return pa.float64()
    if pa.types.is_large_binary(t):
        return pa.binary()
    if pa.types.is_large_list(t) or pa.types.is_list(t):
        return pa.list_(_norm_type(t.value_type))
    return t


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


def _same(a: Any, b: Any) -> bool:
    both_nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    return both_nan or a == b


def _text(v: Any) -> str | None:
    return None if _blank(v) else str(v).strip()


class Manifest(_ListSource):
    """A CSV or Parquet table, one row per image (or per box with ``x0,y0,x1,y1`` columns)."""

    def __init__(
        self,
        path: str | Path,
        *,
        split: str | None = None,
        label_column: str = "label",
        path_column: str = "path",
    ) -> None:
        self.path = Path(os.path.abspath(Path(path).expanduser()))
        self.name = self.path.name
        self._where = f"manifest {self.name}"
        table = self._read(
            {path_column, label_column, "split", "mask_path", "box_label", "boxes", *BOX_COLUMNS}
        )
        names = table.column_names
        for need, flag in ((path_column, "--path-column"), (label_column, "--label-column")):
            if need not in names:
                raise InputError(
                    f"{self._where} has no '{need}' column; add it or pass {flag} NAME"
                )
        box_cols = [c for c in BOX_COLUMNS if c in names]
        if box_cols and len(box_cols) < 4:
            missing = ", ".join(c for c in BOX_COLUMNS if c not in names)
            raise InputError(
                f"{self._where} has box columns {', '.join(box_cols)} but not {missing}; "
                "give all four of x0, y0, x1, y1"
            )
        if box_cols and "boxes" in names:
            raise InputError(
                f"{self._where} has both x0, y0, x1, y1 columns and a 'boxes' column; use one"
            )
        if "box_label" in names and not box_cols:
            raise InputError(
                f"{self._where} has a 'box_label' column but no x0, y0, x1, y1 columns; "
                "add them or drop 'box_label'"
            )
        used = {path_column, label_column, "split", "mask_path", "boxes", *box_cols}
        if box_cols:
            used.add("box_label")
        meta_cols = [c for c in names if c not in used]
        self._check_metadata_names(names, meta_cols)
        fields: list[pa.Field] = []
        meta_values: dict[str, list[Any]] = {}
        for c in meta_cols:
            t = _norm_type(table.schema.field(c).type)
            try:
                meta_values[c] = table.column(c).cast(t).to_pylist()
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise InputError(f"{self._where} column '{c}' cannot be stored as {t}: {e}") from e
            fields.append(pa.field(c, t))
        col = {c: table.column(c).to_pylist() for c in used if c in names}
        items = self._build(col, meta_values, path_column, label_column, split, bool(box_cols))
        extras = [
            x
            for x, on in (("boxes", box_cols or "boxes" in names), ("masks", "mask_path" in names))
            if on
        ]
        desc = f"manifest {self.path} ({len(items)} images from {table.num_rows} rows"
        desc += "".join(f", {x}" for x in extras) + ")"
        super().__init__(items, desc, pa.schema(fields))

    def _read(self, text_columns: set[str]) -> pa.Table:
        try:
            if self.path.suffix.lower() == ".csv":
                import pyarrow.csv as pcsv

                opts = pcsv.ConvertOptions(
                    column_types={c: pa.string() for c in text_columns}, strings_can_be_null=True
                )
                table = pcsv.read_csv(self.path, convert_options=opts)
            else:
                import pyarrow.parquet as pq

                table = pq.read_table(self.path)
        except (pa.ArrowException, OSError) as e:
            raise InputError(f"{self._where} could not be read: {e}") from e
        if table.num_rows == 0:
            raise InputError(f"{self._where} has no rows; add one row per image")
        return table

    def _check_metadata_names(self, names: list[str], meta_cols: list[str]) -> None:
        seen: dict[str, str] = {}
        for i, c in enumerate(names, start=1):
            if not c.strip():
                raise InputError(f"{self._where} column {i} has no name; name it or drop it")
            if c in seen.values():
                raise InputError(f"{self._where} has two columns named '{c}'; rename one")
            seen.setdefault(c.lower(), c)
        lowered: dict[str, str] = {}
        for c in meta_cols:
            if c.lower() in RESERVED_COLUMNS:
                raise InputError(
                    f"{self._where} column '{c}' clashes with the image column "
                    f"'{c.lower()}'; rename it (e.g. to 'meta_{c}')"
                )
            if c.lower() in lowered:
                raise InputError(
                    f"{self._where} columns '{lowered[c.lower()]}' and '{c}' differ only in case; "
                    "rename one (SQL column names are case-insensitive)"
                )
            lowered[c.lower()] = c

    def _build(
        self,
        col: dict[str, list[Any]],
        meta: dict[str, list[Any]],
        path_column: str,
        label_column: str,
        default_split: str | None,
        box_columns: bool,
    ) -> list[SourceItem]:
        base = self.path.parent
        by_uri: dict[str, int] = {}
        rows: list[dict[str, Any]] = []
        n = len(col[path_column])
        for i in range(n):
            r = i + 1
            p = _text(col[path_column][i])
            if p is None:
                raise InputError(
                    f"{self._where} row {r}: empty '{path_column}' cell; every row needs an image "
                    "path"
                )
            uri = os.path.abspath(os.path.join(base, os.path.expanduser(p)))
            mask = _text(col["mask_path"][i]) if "mask_path" in col else None
            fields = {
                label_column: _text(col[label_column][i]),
                "split": (_text(col["split"][i]) if "split" in col else None) or default_split,
                "mask_path": os.path.abspath(os.path.join(base, mask)) if mask else None,
                **{c: v[i] for c, v in meta.items()},
            }
            boxes: list[Box] | None = None
            if box_columns:
                boxes = self._column_box(col, i)
            elif "boxes" in col:
                boxes = self._json_boxes(col["boxes"][i], r)
            if uri in by_uri:
                first = rows[by_uri[uri]]
                if not box_columns:
                    raise InputError(
                        f"{self._where} row {r}: '{p}' is also on row {first['row']}; list each "
                        "image once (or use x0, y0, x1, y1 columns with one box per row)"
                    )
                for k, v in fields.items():
                    if not _same(first["fields"][k], v):
                        raise InputError(
                            f"{self._where} row {r}: '{p}' is also on row {first['row']} with a "
                            f"different '{k}' ({first['fields'][k]!r} vs {v!r}); rows of one "
                            "image must agree on everything but the box columns"
                        )
                first["boxes"].extend(boxes or [])
                continue
            by_uri[uri] = len(rows)
            rows.append({"uri": uri, "row": r, "fields": fields, "boxes": boxes})
        items = []
        for d in rows:
            f = d["fields"]
            metadata = {c: f[c] for c in meta}
            boxes = d["boxes"]
            items.append(
                SourceItem(
                    uri=d["uri"],
                    label=f[label_column],
                    split=f["split"],
                    boxes=None if boxes is None else tuple(boxes),
                    mask_path=f["mask_path"],
                    metadata=metadata,
                    row=d["row"],
                )
            )
        return items

    def _number(self, v: Any, r: int, column: str) -> float:
        try:
            if isinstance(v, bool):
                raise ValueError
            x = float(v.strip() if isinstance(v, str) else v)
        except (TypeError, ValueError):
            raise InputError(
                f"{self._where} row {r} column '{column}': {v!r} is not a number"
            ) from None
        if not math.isfinite(x):
            raise InputError(f"{self._where} row {r} column '{column}': {v!r} is not finite")
        return x

    @staticmethod
    def _check_box(where: str, label: str | None, xs: Sequence[float]) -> Box:
        x0, y0, x1, y1 = xs
        for a, b, lo, hi in (("x0", "x1", x0, x1), ("y0", "y1", y0, y1)):
            if hi <= lo:
                raise InputError(f"{where}: {b} ({hi:g}) must be greater than {a} ({lo:g})")
        return (label, x0, y0, x1, y1)

    def _column_box(self, col: dict[str, list[Any]], i: int) -> list[Box]:
        r = i + 1
        cells = [col[c][i] for c in BOX_COLUMNS]
        if all(_blank(v) for v in cells):
            return []
        xs = []
        for c, v in zip(BOX_COLUMNS, cells, strict=True):
            if _blank(v):
                raise InputError(
                    f"{self._where} row {r} column '{c}': empty; give all four of x0, y0, x1, y1 "
                    "or none"
                )
            xs.append(self._number(v, r, c))
        label = _text(col["box_label"][i]) if "box_label" in col else None
        column = "x1" if xs[2] <= xs[0] else "y1"
        return [self._check_box(f"{self._where} row {r} column '{column}'", label, xs)]

    def _json_boxes(self, cell: Any, r: int) -> list[Box] | None:
        if _blank(cell):
            return None
        where = f"{self._where} row {r} column 'boxes'"
        value = cell
        if isinstance(cell, str):
            try:
                value = json.loads(cell)
            except json.JSONDecodeError as e:
                raise InputError(f"{where}: invalid JSON ({e})") from None
        if not isinstance(value, list):
            raise InputError(f"{where}: expected a JSON list of boxes, got {type(value).__name__}")
        out: list[Box] = []
        for k, b in enumerate(value, start=1):
            shape_error = InputError(
                f"{where}: box {k} must be [x0, y0, x1, y1] or an object with keys x0, y0, x1, y1 "
                "and optional label"
            )
            label = None
            if isinstance(b, dict):
                if not set(BOX_COLUMNS) <= set(b) or set(b) - {*BOX_COLUMNS, "label"}:
                    raise shape_error
                coords = [b[c] for c in BOX_COLUMNS]
                label = None if b.get("label") is None else str(b["label"])
            elif isinstance(b, list) and len(b) == 4:
                coords = b
            else:
                raise shape_error
            xs = [self._number(v, r, "boxes") for v in coords]
            out.append(self._check_box(f"{where} box {k}", label, xs))
        return out
