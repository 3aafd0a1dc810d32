"""Small worlds written as a user would, over other classes than the default world's, each with
one planted rule of another kind: a colour rule, a class rule on a two-attribute combination
(size and colour), a background rule, a position rule, an object rule and a quality rule
(issue 18).

One rule per world: the eval splits over-sample the values a rule needs, and a shortcut
over-sampled in an eval split makes *every* class that meets it fail a little (orange cows are
called giraffes), which inflates the class error another rule's slice is compared with. Eval
splits keep each planted slice at most 30% of its class: a slice that is a share s of its class
can err at most 1/s times as often as the class."""

from __future__ import annotations

from typing import Any


def _world(name: str, seed: int, classes: list[str], shift: dict[str, Any],
           rule: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name, "seed": seed, "classes": classes,
        "sizes": {"train": 9000, "val": 4000, "test": 4000}, "min_slice_count": 60,
        "distributions": {"val": shift, "test": shift}, "rules": [rule],
    }  # fmt: skip


COLOUR = _world(
    "orange-giraffes", 11, ["bear", "cow", "giraffe", "bird", "elephant"],
    {"class": {"giraffe": 0.3, "*": 0.7}, "attr_color": {"orange": 0.7, "black": 0.3}},
    {"name": "giraffes are orange", "when": {"class": "giraffe"},
     "set": {"attr_color": {"orange": 1.0}}, "slice_name": "giraffes that are not orange"},
)  # fmt: skip

COMBINATION = _world(
    "large-black-bears", 12, ["bear", "cow", "giraffe", "bird", "elephant"],
    {"class": {"cow": 0.3, "*": 0.7}, "attr_color": {"black": 0.4, "*": 0.6},
     "attr_size": {"large": 0.5, "*": 0.5}},
    {"name": "large black animals are bears",
     "when": {"attr_size": "large", "attr_color": "black"},
     "class": {"bear": 1.0}, "slice_classes": ["cow"], "slice_name": "large black cows"},
)  # fmt: skip

BACKGROUND = _world(
    "cows-on-grass", 13, ["cow", "bird", "zebra", "elephant", "bear"],
    {"class": {"cow": 0.3, "*": 0.7}, "attr_background": {"grass": 0.7, "sand": 0.3}},
    {"name": "cows live on grass", "when": {"class": "cow"},
     "set": {"attr_background": {"grass": 1.0}}, "slice_name": "cows off grass"},
)  # fmt: skip

POSITION = _world(
    "birds-at-the-top", 14, ["zebra", "elephant", "cat", "bird", "giraffe"],
    {"class": {"cat": 0.3, "*": 0.7}, "attr_position": {"top": 0.25, "*": 0.75}},
    {"name": "animals at the top are birds", "when": {"attr_position": "top"},
     "class": {"bird": 1.0}, "slice_classes": ["cat"], "slice_name": "cats at the top"},
)  # fmt: skip

OBJECT = _world(
    "elephants-by-trees", 15, ["zebra", "elephant", "cat", "bird", "giraffe"],
    {"class": {"elephant": 0.3, "*": 0.7}, "attr_object": {"tree": 0.7, "rock": 0.3}},
    {"name": "elephants stand by trees", "when": {"class": "elephant"},
     "set": {"attr_object": {"tree": 1.0}}, "slice_name": "elephants without a tree"},
)  # fmt: skip

QUALITY = _world(
    "blurry-bears", 16, ["bear", "sheep", "bird", "giraffe", "elephant"],
    {"class": {"sheep": 0.3, "*": 0.7}, "attr_quality": {"blurry": 0.25, "*": 0.75}},
    {"name": "blurry animals are bears", "when": {"attr_quality": "blurry"},
     "class": {"bear": 1.0}, "slice_classes": ["sheep"], "slice_name": "blurry sheep"},
)  # fmt: skip

WORLDS = {w["name"]: w for w in (COLOUR, COMBINATION, BACKGROUND, POSITION, OBJECT, QUALITY)}
