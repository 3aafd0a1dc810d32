"""Did the world keep its promise? Each planted slice measured on the trained target.

After training and ingest, every planted slice is measured on every evaluation split from the
store (the target's ``correct`` column against the images' label and ``attr_*`` columns): its
size and error rate (with a Wilson 95 % interval), its class's error rate, and their ratio. A
rule *took* (the mode was learned) when on the holdout split (``test``, where the demo checks
the slices it finds) the slice errs at least ``RATIO_BAR`` times as often as its whole class and
at least ``ERROR_BAR`` of the time; the other evaluation splits are measured and shown too.

The report then tells three outcomes apart per mode (``outcome``):

* ``found``: learned, and a slice search named it (with its rank);
* ``missed``: learned, but no slice named it: an analysis miss;
* ``not learned``: the target does not fail there as promised: a world miss, with the figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from failstore.demo.spec import PlantedSlice, Rule, WorldSpec
from failstore.store import Store, equals

RATIO_BAR = 2.0  # the slice errs >= 2x as often as its whole class ...
ERROR_BAR = 0.3  # ... and at least this often
Z95 = 1.959963984540054

PLANTED_MODES_SCHEMA = pa.schema(
    [
        ("planted", pa.string()),
        ("rule", pa.int32()),
        ("rule_text", pa.string()),
        ("classes", pa.string()),
        ("split", pa.string()),
        ("size", pa.int64()),
        ("errors", pa.int64()),
        ("error_rate", pa.float64()),
        ("ci_low", pa.float64()),
        ("ci_high", pa.float64()),
        ("class_size", pa.int64()),
        ("class_error_rate", pa.float64()),
        ("ratio", pa.float64()),
        ("learned", pa.bool_()),
    ]
)


@dataclass
class PlantedMode:
    """One planted slice on one evaluation split."""

    planted: str
    rule: int
    rule_text: str
    classes: str
    split: str
    size: int
    errors: int
    error_rate: float | None
    ci_low: float | None
    ci_high: float | None
    class_size: int
    class_error_rate: float | None
    ratio: float | None
    learned: bool

    def row(self) -> dict[str, Any]:
        return asdict(self)

    def figures(self) -> str:
        """E.g. 'errs at 0.07 (95 % CI 0.04..0.12, 120 images) against the class's 0.04
        (ratio 1.8x) on test'."""
        if self.error_rate is None:
            return f"has no images on {self.split}"
        ratio = "-" if self.ratio is None else f"{self.ratio:.1f}x"
        cls = "-" if self.class_error_rate is None else f"{self.class_error_rate:.2f}"
        return (f"errs at {self.error_rate:.2f} (95 % CI {self.ci_low:.2f}..{self.ci_high:.2f}, "
                f"{self.size} images) against the class's {cls} (ratio {ratio}) on {self.split}")


def wilson(errors: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``errors / n`` (n > 0)."""
    p = errors / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def takes(error_rate: float | None, class_error_rate: float | None) -> bool:
    """The promise: >= ERROR_BAR and >= RATIO_BAR x the class's error rate."""
    if error_rate is None or class_error_rate is None:
        return False
    return error_rate >= ERROR_BAR and error_rate >= RATIO_BAR * class_error_rate


def rule_text(rule: Rule) -> str:
    """The spec's rule in one line, e.g. ``birds live on water (train): when class = bird,
    set attr_background = water 0.95, * 0.05``."""

    def dist(d: Mapping[str, float]) -> str:
        return ", ".join(f"{k} {v:g}" for k, v in d.items() if v > 0)

    when = ", ".join(f"{k} = {'|'.join(v)}" for k, v in rule.when.items()) or "always"
    if rule.kind == "class":
        what = f"class = {dist(rule.class_dist or {})}"
    else:
        what = "; ".join(f"{a} = {dist(d)}" for a, d in rule.set.items())
    return f"{rule.name} ({'|'.join(rule.splits)}): when {when}, set {what}"


def measure(
    labels: np.ndarray,
    attributes: Mapping[str, np.ndarray],
    split: np.ndarray,
    correct: np.ndarray,
    spec: WorldSpec,
    planted: Sequence[PlantedSlice],
) -> list[PlantedMode]:
    """Every planted slice on every evaluation split of ``spec`` (arrays index the same
    images; ``labels`` are class names). ``learned`` is per split here; see ``learned``."""
    labels = np.asarray(labels, dtype=object)
    split = np.asarray(split, dtype=object)
    wrong = ~np.asarray(correct, dtype=bool)
    out = []
    for p in planted:
        in_slice = p.mask(labels, attributes)
        in_class = np.isin(labels, p.classes)
        text = rule_text(spec.rules[p.rule])
        for s in spec.eval_splits:
            here = split == s
            n, k = int((in_slice & here).sum()), int((in_slice & here & wrong).sum())
            nc, kc = int((in_class & here).sum()), int((in_class & here & wrong).sum())
            rate = k / n if n else None
            crate = kc / nc if nc else None
            lo, hi = wilson(k, n) if n else (None, None)
            ratio = rate / crate if rate is not None and crate else None
            out.append(PlantedMode(p.name, p.rule, text, "|".join(p.classes), s, n, k, rate, lo,
                                   hi, nc, crate, ratio, takes(rate, crate)))  # fmt: skip
    return out


HOLDOUT = "test"  # the promise is judged here (the split the demo checks slices on)


def judged(modes: Sequence[PlantedMode], split: str = HOLDOUT) -> list[PlantedMode]:
    """The rows the promise is judged on: those of ``split`` (all rows if it has none)."""
    here = [m for m in modes if m.split == split]
    return here or list(modes)


def learned(modes: Sequence[PlantedMode], split: str = HOLDOUT) -> dict[str, bool]:
    """Planted slice name -> the rule took on ``split`` (the other splits are for reading)."""
    out: dict[str, bool] = {m.planted: True for m in modes}
    for m in judged(modes, split):
        out[m.planted] = out[m.planted] and m.learned
    return out


def measure_store(store: Store, spec: WorldSpec, planted: Sequence[PlantedSlice]) -> list[
        PlantedMode]:
    """``measure`` on the store: images of the evaluation splits and the target's
    predictions."""
    from failstore.demo.spec import ATTRIBUTES

    cols = [a for a in ATTRIBUTES if a in store.schema("images").names]
    images = store.read("images", ["image_id", "label", "split", *cols])
    correct_of = target_correct(store)
    ids = images["image_id"].to_pylist()
    keep = np.asarray([i in correct_of for i in ids], dtype=bool)
    correct = np.asarray([bool(correct_of.get(i)) for i in ids], dtype=bool)
    attrs = {a: np.asarray(images[a].to_pylist(), dtype=object)[keep] for a in cols}
    return measure(np.asarray(images["label"].to_pylist(), dtype=object)[keep], attrs,
                   np.asarray(images["split"].to_pylist(), dtype=object)[keep], correct[keep],
                   spec, planted)


def target_model(store: Store) -> str:
    """The name of the store's target model (the demo ingests one)."""
    models = store.read("models", ["name"], filter=equals("role", "target")).column("name")
    return str(models[0].as_py())


def target_correct(store: Store) -> dict[str, bool | None]:
    """Image id -> the target's ``correct`` (images it did not predict are absent)."""
    preds = store.read("predictions", ["image_id", "correct"],
                       filter=equals("model", target_model(store)))
    return dict(zip(preds["image_id"].to_pylist(), preds["correct"].to_pylist(), strict=True))


def modes_table(modes: Sequence[PlantedMode]) -> pa.Table:
    return pa.Table.from_pylist([m.row() for m in modes], schema=PLANTED_MODES_SCHEMA)


def outcome(is_learned: bool, finding: Any | None) -> str:
    """``found (rank r)``, ``missed`` or ``not learned`` (a found slice of a mode that was not
    learned reads ``not learned (found, rank r)``)."""
    rank = finding.rank if finding is not None and finding.found else None
    if not is_learned:
        return "not learned" if rank is None else f"not learned (found, rank {rank})"
    return "missed" if rank is None else f"found (rank {rank})"


def broken_promises(modes: Sequence[PlantedMode], split: str = HOLDOUT) -> list[str]:
    """One warning per planted mode whose rule did not take on ``split``, naming the rule and
    the figures."""
    ok = learned(modes, split)
    out = []
    for name in ok:
        if ok[name]:
            continue
        short = [m for m in judged(modes, split) if m.planted == name and not m.learned]
        first = short[0]
        figures = "; ".join(m.figures() for m in short)
        out.append(
            f"rule {first.rule} ({first.rule_text}) did not take: '{name}' {figures}; the world "
            f"promises >= {RATIO_BAR:g}x the class's error rate and >= {ERROR_BAR:g}"
        )
    return out
