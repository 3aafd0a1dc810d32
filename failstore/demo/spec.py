"""World specs for the demo: dataclasses, parsing and validation of JSON/YAML, hashing.

A spec names the classes, the attribute distributions per split, the planted rules and the split
sizes. Every mistake is an ``InputError`` whose one line names the file and the key path, e.g.
``world.yaml: rules[1].when.attr_size: unknown value 'tiny'; known: small, medium, large``.
The format is documented in ``docs/demo-world.md``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from failstore.demo.silhouettes import CLASSES as ALL_CLASSES
from failstore.demo.silhouettes import silhouette_source
from failstore.errors import InputError

GENERATOR_VERSION = "demo-world-5"  # 5: eval pools dealt by typicality; 4: rules strengthened
WILDCARD = "*"
MARGIN_SD = 3.0  # a planted slice's expected count must exceed the minimum by 3 sd
MAX_SHARE = 0.45  # a planted slice's share of its class in an eval split (2x needs < 0.5)

# Attribute name -> its values (the renderer knows how to draw each of them).
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "attr_background": ("water", "grass", "sand", "snow", "sky", "gravel", "brick"),
    "attr_color": ("brown", "black", "white", "gray", "orange"),
    "attr_size": ("small", "medium", "large"),
    "attr_position": ("center", "left", "right", "top", "bottom"),
    "attr_object": ("none", "ball", "tree", "rock"),
    "attr_quality": ("clean", "blurry", "grayscale", "noisy"),
}
SILHOUETTE_MODES = ("auto", "animal-mnist", "procedural")
TOP_KEYS = (
    "name", "seed", "image_size", "classes", "sizes", "eval_splits", "min_slice_count",
    "silhouettes", "distributions", "rules",
)  # fmt: skip
RULE_KEYS = ("name", "split", "when", "set", "class", "slice_name", "slice_classes",
             "looks_like")

Dist = dict[str, float]


@dataclass(frozen=True)
class Rule:
    """One planted rule: ``set`` (attributes given conditions) or ``class`` (class given them)."""

    index: int
    name: str
    splits: tuple[str, ...]
    when: dict[str, tuple[str, ...]]  # "class" or attr_* -> accepted values
    set: dict[str, Dist] = field(default_factory=dict)  # attr_* -> raw distribution
    class_dist: Dist | None = None  # raw class distribution (may hold "*")
    slice_name: str | None = None
    slice_classes: tuple[str, ...] | None = None
    looks_like: tuple[str, ...] | None = None  # class rules: draw silhouettes resembling these

    @property
    def kind(self) -> str:
        return "class" if self.class_dist is not None else "set"


@dataclass(frozen=True)
class WorldSpec:
    name: str
    seed: int
    image_size: int
    classes: tuple[str, ...]
    sizes: dict[str, int]
    eval_splits: tuple[str, ...]
    min_slice_count: int
    silhouettes: str
    distributions: dict[str, dict[str, Dist]]  # split -> "class"/attr_* -> full distribution
    rules: tuple[Rule, ...]
    source: str = field(default="spec", compare=False)

    def values(self, key: str) -> tuple[str, ...]:
        return self.classes if key == "class" else ATTRIBUTES[key]

    def probs(self, split: str, key: str) -> np.ndarray:
        dist = self.distributions[split][key]
        return np.array([dist[v] for v in self.values(key)], dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        """The normalised spec (every distribution resolved); ``load_spec`` accepts it back."""
        rules = []
        for r in self.rules:
            d: dict[str, Any] = {"name": r.name, "split": list(r.splits),
                                 "when": {k: list(v) for k, v in r.when.items()}}
            if r.kind == "set":
                d["set"] = {k: dict(v) for k, v in r.set.items()}
            else:
                d["class"] = dict(r.class_dist or {})
            if r.slice_name is not None:
                d["slice_name"] = r.slice_name
            if r.slice_classes is not None:
                d["slice_classes"] = list(r.slice_classes)
            if r.looks_like is not None:
                d["looks_like"] = list(r.looks_like)
            rules.append(d)
        return {
            "name": self.name, "seed": self.seed, "image_size": self.image_size,
            "classes": list(self.classes), "sizes": dict(self.sizes),
            "eval_splits": list(self.eval_splits), "min_slice_count": self.min_slice_count,
            "silhouettes": self.silhouettes,
            "distributions": {s: {k: dict(d) for k, d in kd.items()}
                              for s, kd in self.distributions.items()},
            "rules": rules,
        }


@dataclass(frozen=True)
class PlantedSlice:
    """The images on which a planted rule should make a model fail at test time."""

    name: str
    rule: int
    classes: tuple[str, ...]
    conditions: tuple[tuple[str, str, tuple[str, ...]], ...]  # (attr, "in" | "not in", values)

    def mask(self, labels: np.ndarray, attributes: Mapping[str, np.ndarray]) -> np.ndarray:
        """Boolean mask over images given class names and attribute arrays (strings)."""
        m = np.isin(np.asarray(labels), self.classes)
        for attr, op, values in self.conditions:
            hit = np.isin(np.asarray(attributes[attr]), values)
            m &= hit if op == "in" else ~hit
        return m

    def where(self, label_column: str = "label") -> str:
        """The slice as a SQL predicate over the manifest/store columns."""

        def lst(vs: tuple[str, ...]) -> str:
            return ", ".join("'" + v.replace("'", "''") + "'" for v in vs)

        parts = [f"{label_column} IN ({lst(self.classes)})"]
        parts += [f"{a} {op.upper()} ({lst(vs)})" for a, op, vs in self.conditions]
        return " AND ".join(parts)

    def describe(self) -> str:
        conds = [f"{a} {'=' if op == 'in' else '!='} {'|'.join(vs)}"
                 for a, op, vs in self.conditions]
        return " & ".join([f"class = {'|'.join(self.classes)}", *conds])


# ---------------------------------------------------------------- distributions


def _fail(source: str, path: str, msg: str) -> InputError:
    return InputError(f"{source}: {path}: {msg}")


def _known(values: tuple[str, ...]) -> str:
    return ", ".join(values)


def parse_dist(raw: Any, values: tuple[str, ...], base: Dist | None, src: str, path: str) -> Dist:
    """``uniform``, a list of values or a mapping value -> probability (``*`` = the rest).

    ``*`` spreads its mass over the unlisted values in proportion to ``base`` (uniform if None).
    """
    if raw == "uniform":
        raw = list(values)
    if isinstance(raw, list):
        if not raw:
            raise _fail(src, path, "empty list of values")
        raw = {v: 1.0 / len(raw) for v in raw}
    if not isinstance(raw, Mapping) or not raw:
        raise _fail(src, path, "expected 'uniform', a list of values or a mapping value -> "
                    f"probability, got {raw!r}")
    listed: Dist = {}
    star = 0.0
    for key, p in raw.items():
        key = str(key)
        if key != WILDCARD and key not in values:
            raise _fail(src, f"{path}.{key}" if path else key,
                        f"unknown value {key!r}; known: {_known(values)}")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise _fail(src, f"{path}.{key}", f"probability must be a number in [0, 1], got {p!r}")
        if key == WILDCARD:
            star = float(p)
        else:
            listed[key] = float(p)
    total = sum(listed.values()) + star
    if abs(total - 1.0) > 1e-6:
        raise _fail(src, path, f"probabilities sum to {total:g}, they must sum to 1 "
                    f"(use '{WILDCARD}' for the rest)")
    rest = [v for v in values if v not in listed]
    if star > 0 and not rest:
        raise _fail(src, f"{path}.{WILDCARD}", "every value is listed, nothing left for '*'")
    weights = np.array([(base or {}).get(v, 1.0) if base is not None else 1.0 for v in rest])
    if star > 0 and weights.sum() <= 0:
        weights = np.ones(len(rest))
    out = {v: listed.get(v, 0.0) for v in values}
    for v, w in zip(rest, weights, strict=True):
        out[v] = star * float(w / weights.sum()) if star > 0 else 0.0
    return out


# ---------------------------------------------------------------- parsing


def _read(path_or_dict: Any) -> tuple[dict[str, Any], str]:
    if isinstance(path_or_dict, WorldSpec):
        return path_or_dict.to_dict(), path_or_dict.source
    if isinstance(path_or_dict, Mapping):
        return copy.deepcopy(dict(path_or_dict)), "spec"
    path = Path(path_or_dict)
    src = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{src}: cannot read the spec file: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first = " ".join(str(exc).split())
        raise InputError(f"{src}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                         f"{first}") from None
    if not isinstance(data, dict):
        raise InputError(f"{src}: the spec must be a mapping of keys, got {type(data).__name__}")
    return data, src


def _str_list(raw: Any, src: str, path: str, known: tuple[str, ...] | None = None,
              what: str = "value") -> list[str]:
    items = raw if isinstance(raw, list) else [raw]
    if not items or not all(isinstance(x, str) for x in items):
        raise _fail(src, path, f"expected a string or a list of strings, got {raw!r}")
    for v in items:
        if known is not None and v not in known:
            raise _fail(src, path, f"unknown {what} {v!r}; known: {_known(known)}")
    return list(items)


def _opt_str(raw: Mapping[str, Any], key: str, default: str | None, src: str,
             path: str) -> str | None:
    value = raw.get(key, default)
    if value is not None and not isinstance(value, str):
        raise _fail(src, path, f"expected a string, got {value!r}")
    return value


def _raw_dist(d: Any, values: tuple[str, ...], base: Dist, src: str, path: str) -> Dist:
    """Validate a rule's distribution; keep ``*`` unresolved (it depends on the split)."""
    full = parse_dist(d, values, base, src, path)
    return {str(k): float(v) for k, v in d.items()} if isinstance(d, Mapping) else full


def _int(raw: Any, src: str, path: str, lo: int, hi: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not lo <= raw <= hi:
        raise _fail(src, path, f"expected an integer in [{lo}, {hi}], got {raw!r}")
    return raw


def _check_keys(d: Any, allowed: tuple[str, ...], src: str, path: str) -> None:
    if not isinstance(d, Mapping):
        raise _fail(src, path or "spec", f"expected a mapping, got {d!r}")
    for key in d:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise _fail(src, where, f"unknown key; known: {_known(allowed)}")


def _parse_rule(i: int, raw: Any, spec_parts: dict[str, Any], src: str) -> Rule:
    path = f"rules[{i}]"
    _check_keys(raw, RULE_KEYS, src, path)
    classes, sizes = spec_parts["classes"], spec_parts["sizes"]
    splits = tuple(_str_list(raw.get("split", "train"), src, f"{path}.split", tuple(sizes),
                             "split"))
    for sp in splits:
        if sp in spec_parts["eval_splits"]:
            raise _fail(src, f"{path}.split", f"{sp!r} is an evaluation split (eval_splits), "
                        "where the planted rules must not hold")
    if ("set" in raw) == ("class" in raw):
        raise _fail(src, path, "a rule needs exactly one of 'set' (attributes given 'when') or "
                    "'class' (class given 'when')")
    when_raw = raw.get("when", {})
    _check_keys(when_raw, ("class", *ATTRIBUTES), src, f"{path}.when")
    when = {key: tuple(_str_list(val, src, f"{path}.when.{key}",
                                 classes if key == "class" else ATTRIBUTES[key]))
            for key, val in when_raw.items()}
    base = spec_parts["distributions"][splits[0]]
    name = _opt_str(raw, "name", f"rule {i}", src, f"{path}.name") or ""
    sets: dict[str, Dist] = {}
    class_dist = None
    if "set" in raw:
        _check_keys(raw["set"], tuple(ATTRIBUTES), src, f"{path}.set")
        if not raw["set"]:
            raise _fail(src, f"{path}.set", "names no attribute")
        sets = {attr: _raw_dist(d, ATTRIBUTES[attr], base[attr], src, f"{path}.set.{attr}")
                for attr, d in raw["set"].items()}
    else:
        if "class" in when:
            raise _fail(src, f"{path}.when.class", "a 'class' rule decides the class; its 'when' "
                        "may only name attributes")
        class_dist = _raw_dist(raw["class"], classes, base["class"], src, f"{path}.class")
    slice_classes = None
    if "slice_classes" in raw:
        slice_classes = tuple(_str_list(raw["slice_classes"], src, f"{path}.slice_classes",
                                        classes))
    slice_name = _opt_str(raw, "slice_name", None, src, f"{path}.slice_name")
    looks_like = None
    if "looks_like" in raw:
        if class_dist is None:
            raise _fail(src, f"{path}.looks_like", "only a 'class' rule can say what the animals "
                        "it assigns look like")
        looks_like = tuple(_str_list(raw["looks_like"], src, f"{path}.looks_like", classes))
    return Rule(i, name, splits, when, sets, class_dist, slice_name, slice_classes, looks_like)


def load_spec(path_or_dict: Any) -> WorldSpec:
    """Parse and validate a spec from a JSON/YAML file, a dict or a ``WorldSpec``."""
    data, src = _read(path_or_dict)
    _check_keys(data, TOP_KEYS, src, "")
    for key in ("classes", "sizes"):
        if key not in data:
            raise _fail(src, key, "missing (required)")
    classes = tuple(_str_list(data["classes"], src, "classes", ALL_CLASSES, "class"))
    if len(set(classes)) != len(classes) or len(classes) < 2:
        raise _fail(src, "classes", "need at least 2 distinct classes")
    sizes_raw = data["sizes"]
    if not isinstance(sizes_raw, Mapping) or not sizes_raw:
        raise _fail(src, "sizes", f"expected a mapping split -> images, got {sizes_raw!r}")
    sizes = {str(s): _int(n, src, f"sizes.{s}", 1, 10_000_000) for s, n in sizes_raw.items()}
    eval_splits = tuple(_str_list(data.get("eval_splits", ["val", "test"]), src, "eval_splits",
                                  tuple(sizes), "split"))
    silhouettes = data.get("silhouettes", "auto")
    if silhouettes not in SILHOUETTE_MODES:
        raise _fail(src, "silhouettes", f"unknown value {silhouettes!r}; known: "
                    f"{_known(SILHOUETTE_MODES)}")
    name = _opt_str(data, "name", "world", src, "name") or "world"
    dists_raw = data.get("distributions", {})
    _check_keys(dists_raw, ("default", *sizes), src, "distributions")
    keys = ("class", *ATTRIBUTES)
    default_raw = dists_raw.get("default") or {}
    _check_keys(default_raw, keys, src, "distributions.default")
    default = {k: parse_dist(default_raw.get(k, "uniform"), classes if k == "class"
                             else ATTRIBUTES[k], None, src, f"distributions.default.{k}")
               for k in keys}
    distributions: dict[str, dict[str, Dist]] = {}
    for split in sizes:
        raw = dists_raw.get(split) or {}
        _check_keys(raw, keys, src, f"distributions.{split}")
        distributions[split] = {
            k: parse_dist(raw[k], classes if k == "class" else ATTRIBUTES[k], default[k], src,
                          f"distributions.{split}.{k}") if k in raw else dict(default[k])
            for k in keys
        }
    parts = {"classes": classes, "sizes": sizes, "eval_splits": eval_splits,
             "distributions": distributions}
    rules_raw = data.get("rules", [])
    if not isinstance(rules_raw, list):
        raise _fail(src, "rules", f"expected a list of rules, got {rules_raw!r}")
    rules = tuple(_parse_rule(i, r, parts, src) for i, r in enumerate(rules_raw))
    spec = WorldSpec(
        name=name,
        seed=_int(data.get("seed", 0), src, "seed", 0, 2**63 - 1),
        image_size=_int(data.get("image_size", 64), src, "image_size", 32, 256),
        classes=classes, sizes=sizes, eval_splits=eval_splits,
        min_slice_count=_int(data.get("min_slice_count", 60), src, "min_slice_count", 0, 10**7),
        silhouettes=silhouettes, distributions=distributions, rules=rules, source=src,
    )
    check_slice_counts(spec)
    return spec


# ---------------------------------------------------------------- planted slices


def resolve_rule_dist(spec: WorldSpec, rule: Rule, split: str, key: str) -> Dist:
    """A rule's distribution for ``key`` with ``*`` resolved against ``split``'s distribution."""
    raw = rule.class_dist if key == "class" else rule.set[key]
    return parse_dist(raw, spec.values(key), spec.distributions[split][key], spec.source,
                      f"rules[{rule.index}]")


def victims(spec: WorldSpec, rule: Rule) -> tuple[str, ...]:
    """A ``class`` rule's victims: ``slice_classes``, else the classes it gives probability 0."""
    dist = resolve_rule_dist(spec, rule, rule.splits[0], "class")
    return rule.slice_classes or tuple(c for c in spec.classes if dist[c] == 0)


def planted_slices(spec: WorldSpec) -> list[PlantedSlice]:
    """For each rule, the slice of evaluation images on which it should cause failures."""
    out: list[PlantedSlice] = []
    for rule in spec.rules:
        split = rule.splits[0]
        conds = tuple((a, "in", vs) for a, vs in rule.when.items() if a != "class")
        if rule.kind == "class":
            hit = victims(spec, rule)
            if hit and conds:
                name = rule.slice_name or f"{'/'.join(hit)} with " + " & ".join(
                    f"{a}={'|'.join(vs)}" for a, _, vs in conds)
                out.append(PlantedSlice(name, rule.index, hit, conds))
            continue
        if "class" not in rule.when:
            continue  # shapes a distribution without tying it to a class: no failure planted
        for attr in rule.set:
            dist = resolve_rule_dist(spec, rule, split, attr)
            base = spec.distributions[split][attr]
            over = tuple(v for v in ATTRIBUTES[attr] if dist[v] > base[v] + 1e-12)
            if not over or len(over) == len(ATTRIBUTES[attr]):
                continue
            name = rule.slice_name if rule.slice_name and len(rule.set) == 1 else (
                f"{'/'.join(rule.when['class'])} with {attr} not {'|'.join(over)}")
            out.append(PlantedSlice(name, rule.index, rule.when["class"],
                                    (*conds, (attr, "not in", over))))
    return out


def slice_probability(spec: WorldSpec, sl: PlantedSlice, split: str) -> float:
    """P(image in slice) in a split without rules (class and attributes independent)."""
    d = spec.distributions[split]
    p = sum(d["class"][c] for c in sl.classes)
    for attr, op, values in sl.conditions:
        q = sum(d[attr][v] for v in values)
        p *= q if op == "in" else 1.0 - q
    return p


ABSENT = frozenset({"none"})  # values that get no CLIP tag: a search cannot name them


def nameable_part(spec: WorldSpec, sl: PlantedSlice, split: str) -> tuple[str, float]:
    """The largest part of a planted slice that a slice search can name, and its probability.

    A search names one class and single positive values (tags), so a "not in" condition, or an
    "in" condition with several values, is found through one of its values at a time: the part
    is the most probable class with, per condition, its most probable value that has a tag.
    A slice that is found must have at least one such part of ``min_size`` images."""
    d = spec.distributions[split]
    cls = max(sl.classes, key=lambda c: d["class"][c])
    p, parts = d["class"][cls], [f"class = {cls}"]
    for attr, op, values in sl.conditions:
        allowed = [v for v in ATTRIBUTES[attr] if (v in values) == (op == "in")]
        named = [v for v in allowed if v not in ABSENT] or allowed
        best = max(named, key=lambda v: d[attr][v])
        p *= d[attr][best]
        parts.append(f"{attr} = {best}")
    return " & ".join(parts), p


def min_expected(min_count: int) -> float:
    """Smallest expected count e with e - MARGIN_SD * sqrt(e) >= min_count."""
    root = (MARGIN_SD + math.sqrt(MARGIN_SD**2 + 4 * min_count)) / 2
    return root * root


def check_slice_counts(spec: WorldSpec) -> None:
    """Every planted slice must expect enough images in every evaluation split (0: no check)."""
    if spec.min_slice_count <= 0:
        return
    need = min_expected(spec.min_slice_count)
    for sl in planted_slices(spec):
        for split in spec.eval_splits:
            p = slice_probability(spec, sl, split)
            n = spec.sizes[split]
            if n * p + 1e-9 < need:
                raise _too_few(spec, sl, split, need, p, "expects", "the slice's values",
                               "the slice")
            part, q = nameable_part(spec, sl, split)
            if n * q + 1e-9 < need:
                raise _too_few(spec, sl, split, need, q,
                               "can only be found through single values, and its largest such "
                               f"part ({part}) expects", "these values", "that value")
            share = p / sum(spec.distributions[split]["class"][c] for c in sl.classes)
            if share > MAX_SHARE + 1e-9:
                raise InputError(
                    f"{spec.source}: distributions.{split}: planted slice '{sl.name}' "
                    f"(rules[{sl.rule}]) is {share:.0%} of its class in split {split!r}; a slice "
                    f"can only err at 2x its class's rate if it is a small part of it (at most "
                    f"{MAX_SHARE:.0%}): in distributions.{split}, give the values outside the "
                    "slice more probability")


def _too_few(spec: WorldSpec, sl: PlantedSlice, split: str, need: float, p: float,
             expects: str, values: str, oversample: str) -> InputError:
    """The refusal of a (part of a) planted slice that expects too few images in ``split``."""
    n = spec.sizes[split]
    fix = f"raise sizes.{split} to >= {math.ceil(need / p)}" if p > 0 else \
        f"give {values} non-zero probability in distributions.{split}"
    return InputError(
        f"{spec.source}: sizes.{split}: planted slice '{sl.name}' (rules[{sl.rule}]) "
        f"{expects} {n * p:.1f} images in split {split!r} ({n} x p={p:.4f}); need >= "
        f"{spec.min_slice_count} with a {MARGIN_SD:g}-sd margin (expected >= "
        f"{need:.1f}): {fix} or over-sample {oversample} in distributions.{split}")


# ---------------------------------------------------------------- hashing


def spec_hash(spec: WorldSpec) -> str:
    """Stable sha256 (hex) of the normalised spec, the generator version and silhouette source."""
    payload = {"generator": GENERATOR_VERSION, "spec": spec.to_dict(),
               "silhouettes": silhouette_source(spec.silhouettes)}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
