"""Did a world keep its promise? The planted-mode figures on hand-built arrays (known answers),
the warning's text, the three outcomes and the share of a planted slice a found slice covers."""

from __future__ import annotations

import numpy as np
import pytest

from failstore.demo.findings import Finding, in_found_slice
from failstore.demo.planted_modes import (
    broken_promises,
    learned,
    measure,
    outcome,
    wilson,
)
from failstore.demo.spec import load_spec, planted_slices

SPEC = load_spec({
    "name": "cows", "classes": ["cow", "sheep"], "sizes": {"train": 10, "val": 10, "test": 10},
    "min_slice_count": 0,
    "rules": [{"name": "cows are black", "when": {"class": "cow"},
               "set": {"attr_color": {"black": 1.0}}, "slice_name": "cows that are not black"}],
})  # fmt: skip


def arrays(split: str, cows_black: tuple[int, int], cows_other: tuple[int, int]) -> dict:
    """(images, errors) of black and non-black cows in one split, plus 10 correct sheep."""
    labels, colour, wrong = [], [], []
    for col, (n, k) in (("black", cows_black), ("white", cows_other)):
        labels += ["cow"] * n
        colour += [col] * n
        wrong += [True] * k + [False] * (n - k)
    labels += ["sheep"] * 10
    colour += ["black"] * 10
    wrong += [False] * 10
    return {"labels": labels, "colour": colour, "wrong": wrong, "split": [split] * len(labels)}


def build(val: dict, test: dict) -> list:
    a = {k: np.asarray(val[k] + test[k], dtype=object) for k in val}
    attrs = {"attr_color": a["colour"]}
    return measure(a["labels"], attrs, a["split"], ~a["wrong"].astype(bool), SPEC,
                   planted_slices(SPEC))


def test_figures_per_split_are_counted_exactly():
    # val: 20 black cows (2 wrong), 40 white cows (24 wrong): slice 24/40 = 0.6, class 26/60
    # test: 30 black cows (3 wrong), 30 white cows (21 wrong): slice 0.7, class 0.4
    modes = build(arrays("val", (20, 2), (40, 24)), arrays("test", (30, 3), (30, 21)))
    assert [(m.split, m.size, m.errors, m.class_size) for m in modes] == [
        ("val", 40, 24, 60), ("test", 30, 21, 60)]
    val, test = modes
    assert val.error_rate == pytest.approx(0.6) and val.class_error_rate == pytest.approx(26 / 60)
    assert val.ratio == pytest.approx(0.6 / (26 / 60))  # 1.38x: short of 2x
    assert not val.learned
    assert test.ratio == pytest.approx(0.7 / 0.4) and not test.learned  # 1.75x
    assert broken_promises(modes)[0].endswith("(ratio 1.7x) on test; the world promises >= 2x "
                                              "the class's error rate and >= 0.3")
    assert (val.ci_low, val.ci_high) == pytest.approx(wilson(24, 40))
    assert val.rule_text == ("cows are black (train): when class = cow, set attr_color = black 1")
    assert learned(modes) == {"cows that are not black": False}


def test_a_rule_takes_at_2x_and_0_3_on_every_split():
    # val: slice 24/30 = 0.8, class (24 + 1) / 60 = 0.417 -> 1.9x ; test: 0.8 vs 0.4 -> 2x
    took = build(arrays("val", (30, 0), (30, 24)), arrays("test", (30, 0), (30, 24)))
    assert [m.learned for m in took] == [True, True]  # 0.8 vs 0.4: exactly 2x takes
    assert broken_promises(took) == []
    low = build(arrays("val", (90, 0), (10, 2)), arrays("test", (90, 0), (10, 2)))
    assert low[0].ratio == pytest.approx(10.0) and not low[0].learned  # 10x, but 0.2 < 0.3
    # the promise is judged on test; val is measured and shown, not judged
    one = build(arrays("val", (30, 1), (30, 24)), arrays("test", (30, 0), (30, 24)))
    assert [m.learned for m in one] == [False, True]  # val: 0.8 vs 25/60 = 1.92x
    assert learned(one) == {"cows that are not black": True} and broken_promises(one) == []
    two = build(arrays("val", (30, 0), (30, 24)), arrays("test", (30, 1), (30, 24)))
    assert learned(two) == {"cows that are not black": False}
    assert learned(two, split="val") == {"cows that are not black": True}
    (msg,) = broken_promises(two)
    assert msg == (
        "rule 0 (cows are black (train): when class = cow, set attr_color = black 1) did not "
        "take: 'cows that are not black' errs at 0.80 (95 % CI 0.63..0.90, 30 images) against "
        "the class's 0.42 (ratio 1.9x) on test; the world promises >= 2x the class's error rate "
        "and >= 0.3")


def test_wilson_interval_known_values():
    lo, hi = wilson(24, 40)
    # by hand: centre (0.6 + z²/80) / (1 + z²/40) = 0.5912, half-width 0.1453
    assert (round(lo, 4), round(hi, 4)) == (0.446, 0.7365)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == pytest.approx(1.0)


def test_three_outcomes():
    found = Finding("m", "cow", True, 2, ["white"], 40, 0.6, 0.4, True, 0.6, "")
    missed = Finding("m", "cow", False, None, [], None, None, None, None, None, "")
    assert outcome(True, found) == "found (rank 2)"
    assert outcome(True, missed) == "missed"
    assert outcome(False, missed) == "not learned"
    assert outcome(False, found) == "not learned (found, rank 2)"


def test_found_slice_membership_and_coverage_share():
    labels = np.array(["cow"] * 5 + ["sheep"], dtype=object)
    tags = [["white", "snow"], ["white"], ["gray"], [], None, ["white"]]
    attrs = {"attr_color": np.array(["white", "white", "gray", "brown", "white", "white"])}
    assert in_found_slice(labels, tags, attrs, "cow", ["white"]).tolist() == [
        True, True, False, False, False, False]
    assert in_found_slice(labels, tags, attrs, "cow", ["attr_color=white"]).tolist() == [
        True, True, False, False, True, False]
    f = Finding("m", "cow", True, 1, ["white"], 40, 0.6, 0.4, True, 0.6, "", covered=44,
                planted_size=279, covered_errors=30, planted_errors=120)
    assert f.share == pytest.approx(44 / 279) and f.error_share == pytest.approx(0.25)
    assert f.row()["covered"] == 44 and f.row()["planted_size"] == 279
