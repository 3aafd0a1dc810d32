"""Image folders and CSV/Parquet manifests: items, layouts, boxes, metadata types, errors."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from failstore.errors import InputError
from failstore.ingest.sources import ImageFolder, Manifest, SourceItem, open_source


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path, **kw: object) -> str:
    with pytest.raises(InputError) as info:
        open_source(path, **kw)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
    return str(info.value)


# --------------------------------------------------------------------------- image folders


def test_class_layout_sorted_labels_and_skipped_files(tmp_path: Path) -> None:
    root = tmp_path / "data"
    touch(root / "dog" / "b.PNG")
    touch(root / "dog" / "a.jpg")
    touch(root / "dog" / "notes.txt")
    touch(root / "dog" / "sub" / "c.JPEG")
    touch(root / "cat" / "z.webp")
    touch(root / "readme.md")
    touch(root / ".hidden" / "x.jpg")
    src = open_source(root)
    assert isinstance(src, ImageFolder)
    assert not src.split_layout
    got = [(os.path.relpath(i.uri, root), i.label, i.split, i.row) for i in src]
    assert got == [
        ("cat/z.webp", "cat", None, None),
        ("dog/a.jpg", "dog", None, None),
        ("dog/b.PNG", "dog", None, None),
        ("dog/sub/c.JPEG", "dog", None, None),
    ]
    assert all(os.path.isabs(i.uri) for i in src)
    assert len(src) == 4
    assert [os.path.relpath(p, root) for p in src.skipped] == ["readme.md", "dog/notes.txt"]
    assert src.metadata_schema == pa.schema([])
    assert src.description == (
        f"image folder {root} (class layout, 2 labels, 4 images, 2 other files skipped)"
    )
    assert {i.split for i in open_source(root, split="test")} == {"test"}


def test_split_layout(tmp_path: Path) -> None:
    root = tmp_path / "data"
    touch(root / "train" / "cat" / "1.jpg")
    touch(root / "train" / "dog" / "2.png")
    touch(root / "Val" / "cat" / "3.bmp")
    touch(root / "train" / "loose.jpg")  # not in a class folder
    src = open_source(root, split="ignored-when-the-layout-has-splits")
    assert isinstance(src, ImageFolder) and src.split_layout
    got = [(os.path.relpath(i.uri, root), i.label, i.split) for i in src]
    assert got == [
        ("Val/cat/3.bmp", "cat", "Val"),
        ("train/cat/1.jpg", "cat", "train"),
        ("train/dog/2.png", "dog", "train"),
    ]
    assert [os.path.relpath(p, root) for p in src.skipped] == ["train/loose.jpg"]


def test_split_named_class_folders_without_subfolders_are_classes(tmp_path: Path) -> None:
    root = tmp_path / "data"
    touch(root / "train" / "1.jpg")
    touch(root / "test" / "2.jpg")
    src = open_source(root)
    assert not src.split_layout  # type: ignore[attr-defined]
    assert [(i.label, i.split) for i in src] == [("test", None), ("train", None)]


def test_folder_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    touch(empty / "loose.jpg")
    assert error_of(empty) == (
        f"image folder {empty} has no class sub-folders; "
        "expected root/<label>/<image> or root/<split>/<label>/<image>"
    )
    noimg = tmp_path / "noimg"
    touch(noimg / "cat" / "a.txt")
    assert error_of(noimg) == (
        f"image folder {noimg} has no images (.bmp .gif .jpeg .jpg .png .tif .tiff .webp) in "
        "its class folders; expected root/<label>/<image> or root/<split>/<label>/<image>"
    )
    assert error_of(tmp_path / "nope") == (
        f"{tmp_path / 'nope'} does not exist; pass an image folder or a .csv/.parquet manifest"
    )
    txt = touch(tmp_path / "list.txt")
    assert error_of(txt) == (
        f"{txt} is neither a folder nor a manifest; pass an image folder or a .csv/.parquet file"
    )


# --------------------------------------------------------------------------- manifests


def test_csv_manifest_paths_labels_metadata_types(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    m = write(
        tmp_path / "m.csv",
        "path,label,split,n,score,flag,note,empty,mask_path\n"
        "imgs/a.jpg,0,train,1,0.5,true,hello,,masks/a.png\n"
        f"{tmp_path}/abs.png,1,,2,,false,,,\n"
        "../up/missing.jpg,,val,3,1.5,true,x y,,\n",
    )
    src = open_source(m, split="default")
    assert isinstance(src, Manifest)
    assert src.metadata_schema == pa.schema(
        [
            ("n", pa.int64()),
            ("score", pa.float64()),
            ("flag", pa.bool_()),
            ("note", pa.string()),
            ("empty", pa.string()),
        ]
    )
    items = list(src)
    assert items[0] == SourceItem(
        uri=str(tmp_path / "imgs" / "a.jpg"),
        label="0",  # numeric-looking labels stay text
        split="train",
        boxes=None,
        mask_path=str(tmp_path / "masks" / "a.png"),
        metadata={"n": 1, "score": 0.5, "flag": True, "note": "hello", "empty": None},
        row=1,
    )
    assert (items[1].uri, items[1].label, items[1].split, items[1].mask_path) == (
        str(tmp_path / "abs.png"),
        "1",
        "default",
        None,
    )
    assert items[1].metadata == {"n": 2, "score": None, "flag": False, "note": None, "empty": None}
    assert (items[2].uri, items[2].label, items[2].split, items[2].row) == (
        str(tmp_path.parent / "up" / "missing.jpg"),  # missing files are not a manifest error
        None,
        "val",
        3,
    )
    assert src.description == f"manifest {m} (3 images from 3 rows, masks)"


def test_custom_column_names(tmp_path: Path) -> None:
    m = write(tmp_path / "m.csv", "file,class,label_source\na.jpg,cat,human\n")
    (item,) = open_source(m, path_column="file", label_column="class")
    assert (item.label, dict(item.metadata)) == ("cat", {"label_source": "human"})


def test_box_columns_merge_rows_of_one_image(tmp_path: Path) -> None:
    m = write(
        tmp_path / "m.csv",
        "path,label,x0,y0,x1,y1,box_label,site\n"
        "a.jpg,cat,1,2,3,4,eye,A\n"
        "b.jpg,dog,,,,,,B\n"
        "a.jpg,cat,10.5,20,30,40.25,,A\n"
        "./a.jpg,cat, 0 ,0,5,5,nose,A\n",
    )
    src = open_source(m)
    a, b = list(src)
    assert a.boxes == (
        ("eye", 1.0, 2.0, 3.0, 4.0),
        (None, 10.5, 20.0, 30.0, 40.25),
        ("nose", 0.0, 0.0, 5.0, 5.0),
    )
    assert (a.row, dict(a.metadata)) == (1, {"site": "A"})
    assert b.boxes == ()  # annotated, no objects
    assert len(src) == 2
    assert src.metadata_schema == pa.schema([("site", pa.string())])
    assert src.description == f"manifest {m} (2 images from 4 rows, boxes)"


def test_json_boxes(tmp_path: Path) -> None:
    m = write(
        tmp_path / "m.csv",
        "path,label,boxes\n"
        'a.jpg,cat,"[[1, 2, 3, 4], '
        '{""x0"": 0, ""y0"": 1, ""x1"": 2.5, ""y1"": 3, ""label"": ""ear""}]"\n'
        "b.jpg,dog,[]\n"
        "c.jpg,dog,\n",
    )
    a, b, c = open_source(m)
    assert a.boxes == ((None, 1.0, 2.0, 3.0, 4.0), ("ear", 0.0, 1.0, 2.5, 3.0))
    assert b.boxes == ()
    assert c.boxes is None


def test_parquet_manifest_types_and_native_boxes(tmp_path: Path) -> None:
    box = pa.struct([("x0", pa.float64()), ("y0", pa.float64()), ("x1", pa.float64()),
                     ("y1", pa.float64()), ("label", pa.string())])  # fmt: skip
    table = pa.table(
        {
            "path": pa.array(["a.jpg", "b.jpg"], pa.large_string()),
            "label": pa.array([3, 4], pa.int32()),
            "boxes": pa.array(
                [[{"x0": 0, "y0": 0, "x1": 1, "y1": 2, "label": "t"}], None], pa.list_(box)
            ),
            "note": pa.array(["x", None], pa.large_string()),
            "count": pa.array([1, 2], pa.int16()),
            "weight": pa.array([0.25, 0.5], pa.float32()),
            "cat": pa.array(["u", "v"]).dictionary_encode(),
        }
    )
    pq.write_table(table, tmp_path / "m.parquet")
    src = open_source(tmp_path / "m.parquet")
    assert src.metadata_schema == pa.schema(
        [
            ("note", pa.string()),
            ("count", pa.int64()),
            ("weight", pa.float64()),
            ("cat", pa.string()),
        ]
    )
    a, b = src
    assert (a.label, a.boxes, b.boxes) == ("3", (("t", 0.0, 0.0, 1.0, 2.0),), None)
    assert dict(a.metadata) == {"note": "x", "count": 1, "weight": 0.25, "cat": "u"}


MANIFEST_ERRORS = [
    ("path,x\na.jpg,1\n", {},
     "manifest m.csv has no 'label' column; add it or pass --label-column NAME"),
    ("file,label\na.jpg,1\n", {},
     "manifest m.csv has no 'path' column; add it or pass --path-column NAME"),
    ("path,label\na.jpg,1\n", {"label_column": "class"},
     "manifest m.csv has no 'class' column; add it or pass --label-column NAME"),
    ("path,label\na.jpg,cat\n,dog\n", {},
     "manifest m.csv row 2: empty 'path' cell; every row needs an image path"),
    ("path,label,x0,y0\na.jpg,cat,1,2\n", {},
     "manifest m.csv has box columns x0, y0 but not x1, y1; give all four of x0, y0, x1, y1"),
    ("path,label,x0,y0,x1,y1,boxes\na.jpg,cat,1,2,3,4,[]\n", {},
     "manifest m.csv has both x0, y0, x1, y1 columns and a 'boxes' column; use one"),
    ("path,label,box_label\na.jpg,cat,eye\n", {},
     "manifest m.csv has a 'box_label' column but no x0, y0, x1, y1 columns; add them or drop "
     "'box_label'"),
    ("path,label,x0,y0,x1,y1\na.jpg,cat,1,2,3,4\nb.jpg,cat,1,2,abc,4\n", {},
     "manifest m.csv row 2 column 'x1': 'abc' is not a number"),
    ("path,label,x0,y0,x1,y1\na.jpg,cat,1,2,3,inf\n", {},
     "manifest m.csv row 1 column 'y1': 'inf' is not finite"),
    ("path,label,x0,y0,x1,y1\na.jpg,cat,5,2,5,4\n", {},
     "manifest m.csv row 1 column 'x1': x1 (5) must be greater than x0 (5)"),
    ("path,label,x0,y0,x1,y1\na.jpg,cat,1,9,5,4\n", {},
     "manifest m.csv row 1 column 'y1': y1 (4) must be greater than y0 (9)"),
    ("path,label,x0,y0,x1,y1\na.jpg,cat,1,,5,4\n", {},
     "manifest m.csv row 1 column 'y0': empty; give all four of x0, y0, x1, y1 or none"),
    ('path,label,boxes\na.jpg,cat,"[[1,2,3,4]"\n', {},
     "manifest m.csv row 1 column 'boxes': invalid JSON (Expecting ',' delimiter: line 1 "
     "column 11 (char 10))"),
    ("path,label,boxes\na.jpg,cat,{}\n", {},
     "manifest m.csv row 1 column 'boxes': expected a JSON list of boxes, got dict"),
    ('path,label,boxes\na.jpg,cat,"[[1,2,3,4],[1,2,3]]"\n', {},
     "manifest m.csv row 1 column 'boxes': box 2 must be [x0, y0, x1, y1] or an object with "
     "keys x0, y0, x1, y1 and optional label"),
    ('path,label,boxes\na.jpg,cat,"[{""x0"":1,""y0"":2,""x1"":3,""y2"":4}]"\n', {},
     "manifest m.csv row 1 column 'boxes': box 1 must be [x0, y0, x1, y1] or an object with "
     "keys x0, y0, x1, y1 and optional label"),
    ('path,label,boxes\na.jpg,cat,"[[1,2,3,4],[3,2,1,4]]"\n', {},
     "manifest m.csv row 1 column 'boxes' box 2: x1 (1) must be greater than x0 (3)"),
    ('path,label,boxes\na.jpg,cat,"[[1,2,""three"",4]]"\n', {},
     "manifest m.csv row 1 column 'boxes': 'three' is not a number"),
    ("path,label,width\na.jpg,cat,3\n", {},
     "manifest m.csv column 'width' clashes with the image column 'width'; rename it (e.g. to "
     "'meta_width')"),
    ("path,label,Tags\na.jpg,cat,3\n", {},
     "manifest m.csv column 'Tags' clashes with the image column 'tags'; rename it (e.g. to "
     "'meta_Tags')"),
    ("path,class,label\na.jpg,cat,3\n", {"label_column": "class"},
     "manifest m.csv column 'label' clashes with the image column 'label'; rename it (e.g. to "
     "'meta_label')"),
    ("path,label,Note,note\na.jpg,cat,1,2\n", {},
     "manifest m.csv columns 'Note' and 'note' differ only in case; rename one (SQL column "
     "names are case-insensitive)"),
    ("path,label,note,note\na.jpg,cat,1,2\n", {},
     "manifest m.csv has two columns named 'note'; rename one"),
    (",path,label\n0,a.jpg,cat\n", {},
     "manifest m.csv column 1 has no name; name it or drop it"),
    ("path,label\n", {}, "manifest m.csv has no rows; add one row per image"),
    ("path,label\na.jpg,cat,extra\n", {},
     "manifest m.csv could not be read: CSV parse error: Expected 2 columns, got 3: "
     "a.jpg,cat,extra"),
    ("path,label\na.jpg,cat\nb.jpg,cat\n./a.jpg,dog\n", {},
     "manifest m.csv row 3: './a.jpg' is also on row 1; list each image once (or use x0, y0, "
     "x1, y1 columns with one box per row)"),
    ("path,label,x0,y0,x1,y1\na.jpg,cat,1,2,3,4\na.jpg,dog,1,2,3,4\n", {},
     "manifest m.csv row 2: 'a.jpg' is also on row 1 with a different 'label' ('cat' vs "
     "'dog'); rows of one image must agree on everything but the box columns"),
    ("path,label,x0,y0,x1,y1,site\na.jpg,cat,1,2,3,4,1\na.jpg,cat,1,2,3,4,2\n", {},
     "manifest m.csv row 2: 'a.jpg' is also on row 1 with a different 'site' (1 vs 2); rows of "
     "one image must agree on everything but the box columns"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "kw", "message"), MANIFEST_ERRORS)
def test_manifest_errors_are_exact_one_liners(
    tmp_path: Path, text: str, kw: dict[str, str], message: str
) -> None:
    assert error_of(write(tmp_path / "m.csv", text), **kw) == message


def test_broken_last_row_fails_before_any_item_is_yielded(tmp_path: Path) -> None:
    rows = "".join(f"{i}.jpg,cat,1,1,2,2\n" for i in range(500))
    m = write(tmp_path / "m.csv", "path,label,x0,y0,x1,y1\n" + rows + "z.jpg,cat,1,1,0,2\n")
    with pytest.raises(InputError, match=r"^manifest m\.csv row 501 column 'x1'"):
        open_source(m)


def test_uint64_metadata_that_does_not_fit_int64(tmp_path: Path) -> None:
    table = pa.table({"path": ["a.jpg"], "label": ["x"], "big": pa.array([2**63], pa.uint64())})
    pq.write_table(table, tmp_path / "m.parquet")
    msg = error_of(tmp_path / "m.parquet")
    assert msg.startswith("manifest m.parquet column 'big' cannot be stored as int64: ")
