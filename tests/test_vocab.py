"""Tag vocabulary and class-name files (pure Python, no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from failstore.errors import InputError
from failstore.models import read_class_names, read_vocab, tags_from_scores, write_vocab

VOCAB = """\
# outdoor scenes
template: a photo of {}.
template: a blurry photo of {}.

snow | 0.3
grass
night | | a photo taken at night ; a dark photo ;
  dog | 0.125 | a dog
"""


def write(tmp_path: Path, text: str | bytes, name: str = "vocab.txt") -> Path:
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return p


def test_parse_known_answer(tmp_path: Path) -> None:
    v = read_vocab(write(tmp_path, VOCAB))
    assert v.tags == ["snow", "grass", "night", "dog"]
    assert v.thresholds == [0.3, None, None, 0.125]
    assert v.templates == ["a photo of {}.", "a blurry photo of {}."]
    assert v.prompts() == [
        ["a photo of snow.", "a blurry photo of snow."],
        ["a photo of grass.", "a blurry photo of grass."],
        ["a photo taken at night", "a dark photo"],
        ["a dog"],
    ]
    assert v.resolved_thresholds(0.25) == [0.3, 0.25, 0.25, 0.125]


def test_default_template(tmp_path: Path) -> None:
    v = read_vocab(write(tmp_path, "cat\nsnowy street\n"))
    assert v.prompts() == [["a photo of cat."], ["a photo of snowy street."]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dog\ncat\ndog | 0.2\n", "line 3: duplicate tag 'dog' (first on line 1)"),
        (
            "dog | high\n",
            "line 1: threshold 'high' is not a number; write TAG | 0.25 or leave it empty",
        ),
        (
            "# x\n\ndog | 1.5\n",
            "line 3: threshold '1.5' is outside [-1, 1] (tag scores are cosine similarities)",
        ),
        ("dog | nan\n", "line 1: threshold 'nan' is outside [-1, 1]"),
        ("dog\n | 0.2\n", "line 2: empty tag before '|'"),
        ("dog | 0.2 | a | b\n", "line 1: too many '|' fields"),
        ("template: a photo\ndog\n", "line 1: template 'a photo' has no {} for the tag"),
    ],
)
def test_errors_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(InputError) as exc:
        read_vocab(p)
    assert str(exc.value).startswith(f"{p} {message}")
    assert "\n" not in str(exc.value)


def test_empty_missing_and_non_utf8(tmp_path: Path) -> None:
    p = write(tmp_path, "# nothing\n\ntemplate: a {}\n")
    with pytest.raises(InputError, match="the vocabulary has no tags"):
        read_vocab(p)
    with pytest.raises(InputError, match=r"vocabulary file not found: .*nope\.txt"):
        read_vocab(tmp_path / "nope.txt")
    with pytest.raises(InputError, match="vocabulary file is not UTF-8"):
        read_vocab(write(tmp_path, b"caf\xe9\n"))


def test_write_roundtrip(tmp_path: Path) -> None:
    tags = ["snow", "tall grass", "night", "dog"]
    thresholds = [0.3, None, 0.1 + 0.2, None]
    prompts = [None, ["a lawn", "grass field"], None, ["a dog"]]
    p = write_vocab(tmp_path / "v.txt", tags, thresholds, ["a photo of {}.", "art of {}"], prompts)
    v = read_vocab(p)
    assert v.tags == tags
    assert v.thresholds == thresholds  # exact float round trip (0.30000000000000004)
    assert v.templates == ["a photo of {}.", "art of {}"]
    assert v.explicit_prompts == prompts
    assert "dog | | a dog" in p.read_text()
    # defaults: no thresholds, no templates -> default template
    v2 = read_vocab(write_vocab(tmp_path / "w.txt", ["a", "b"]))
    assert v2.thresholds == [None, None] and v2.templates == ["a photo of {}."]


def test_write_rejects_unparseable_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"tag 'a\|b' cannot be written"):
        write_vocab(tmp_path / "v.txt", ["a|b"])
    with pytest.raises(ValueError, match="prompt 'x; y' cannot be written"):
        write_vocab(tmp_path / "v.txt", ["a"], prompts=[["x; y"]])
    with pytest.raises(ValueError, match="2 thresholds for 1 tags"):
        write_vocab(tmp_path / "v.txt", ["a"], [0.1, 0.2])


def test_tags_from_scores_vectorised() -> None:
    scores = np.array([[0.30, 0.10, 0.26], [0.29, 0.50, 0.00], [0.0, 0.0, 0.0]], np.float32)
    thresholds = np.array([0.3, 0.2, 0.25], np.float32)
    got = tags_from_scores(scores, ["a", "b", "c"], thresholds)
    assert got == [["a", "c"], ["b"], []]
    assert tags_from_scores(np.zeros((2, 0), np.float32), [], np.zeros(0)) == [[], []]
    with pytest.raises(ValueError, match=r"scores of shape \(3, 3\) for 2 tags"):
        tags_from_scores(scores, ["a", "b"], thresholds[:2])


def test_class_names(tmp_path: Path) -> None:
    p = write(tmp_path, "cat\n  dog \nbig bird\n\n\n", "names.txt")
    assert read_class_names(p) == ["cat", "dog", "big bird"]
    p = write(tmp_path, "cat\n\ndog\n", "gap.txt")
    with pytest.raises(InputError, match=r"gap.txt line 2: empty class name"):
        read_class_names(p)
    p = write(tmp_path, "cat\ndog\ncat\n", "dup.txt")
    with pytest.raises(
        InputError, match=r"dup.txt line 3: duplicate class name 'cat' \(first on line 1\)"
    ):
        read_class_names(p)
    assert json.loads(json.dumps(read_class_names(write(tmp_path, "é\n", "u.txt")))) == ["é"]
