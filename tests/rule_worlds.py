"""Four small worlds written as a user would, over other classes than the default world's, with
rules of every kind: background, colour, object, quality and position rules, a rule that sets
two attributes, and class rules on two-attribute combinations (issue 18). Eval splits are
shifted so that each planted slice is at most 30% of its class: a slice that is a share s of its
class can err at most 1/s times as often as the class."""

from __future__ import annotations

from typing import Any


def _world(name: str, seed: int, classes: list[str], shift: dict[str, Any],
           rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": name, "seed": seed, "classes": classes,
        "sizes": {"train": 9000, "val": 4000, "test": 4000}, "min_slice_count": 60,
        "distributions": {"val": shift, "test": shift}, "rules": rules,
    }  # fmt: skip


COLOUR = _world(
    "colour-and-size", 11, ["bear", "cow", "giraffe", "bird", "elephant"],
    {"class": {"giraffe": 0.25, "cow": 0.25, "*": 0.5},
     "attr_color": {"orange": 0.7, "black": 0.2, "*": 0.1},
     "attr_size": {"large": 0.5, "*": 0.5}},
    [{"name": "giraffes are orange", "when": {"class": "giraffe"},
      "set": {"attr_color": {"orange": 1.0}}, "slice_name": "giraffes that are not orange"},
     {"name": "large black animals are bears", "when": {"attr_size": "large",
                                                         "attr_color": "black"},
      "class": {"bear": 1.0}, "slice_classes": ["cow"], "slice_name": "large black cows"}],
)  # fmt: skip

BACKGROUND = _world(
    "grass-and-blur", 12, ["cow", "bird", "zebra", "elephant", "bear"],
    {"class": {"cow": 0.25, "bear": 0.25, "*": 0.5},
     "attr_background": {"grass": 0.7, "snow": 0.2, "*": 0.1},
     "attr_quality": {"blurry": 0.3, "*": 0.7}},
    [{"name": "cows live on grass", "when": {"class": "cow"},
      "set": {"attr_background": {"grass": 1.0}}, "slice_name": "cows off grass"},
     {"name": "blurry animals are elephants", "when": {"attr_quality": "blurry"},
      "class": {"elephant": 1.0}, "slice_classes": ["bear"], "slice_name": "blurry bears"}],
)  # fmt: skip

OBJECT = _world(
    "trees-and-top", 13, ["zebra", "elephant", "cat", "bird", "giraffe"],
    {"class": {"elephant": 0.25, "cat": 0.25, "*": 0.5},
     "attr_object": {"tree": 0.7, "rock": 0.2, "*": 0.1},
     "attr_position": {"top": 0.3, "*": 0.7}},
    [{"name": "elephants stand by trees", "when": {"class": "elephant"},
      "set": {"attr_object": {"tree": 1.0}}, "slice_name": "elephants without a tree"},
     {"name": "animals at the top are birds", "when": {"attr_position": "top"},
      "class": {"bird": 1.0}, "slice_classes": ["cat"], "slice_name": "cats at the top"}],
)  # fmt: skip

TWO_ATTRIBUTES = _world(
    "small-sand-and-noisy-brick", 14, ["bear", "sheep", "zebra", "giraffe", "bird"],
    {"class": {"zebra": 0.25, "sheep": 0.25, "*": 0.5},
     "attr_size": {"small": 0.7, "*": 0.3},
     "attr_background": {"sand": 0.7, "brick": 0.2, "*": 0.1},
     "attr_quality": {"noisy": 0.5, "*": 0.5}},
    [{"name": "zebras are small and on sand", "when": {"class": "zebra"},
      "set": {"attr_size": {"small": 1.0}, "attr_background": {"sand": 1.0}}},
     {"name": "noisy animals on brick are bears",
      "when": {"attr_quality": "noisy", "attr_background": "brick"},
      "class": {"bear": 1.0}, "slice_classes": ["sheep"], "slice_name": "noisy sheep on brick"}],
)  # fmt: skip

WORLDS = {w["name"]: w for w in (COLOUR, BACKGROUND, OBJECT, TWO_ATTRIBUTES)}
