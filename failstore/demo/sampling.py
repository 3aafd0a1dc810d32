"""Sampling a split of the demo world: class and attributes per image, then the planted rules.

Per split (see docs/demo-world.md): class and attributes are drawn independently from the
split's distributions; a ``set`` rule that names a class and whose attributes the spec leaves
uniform in the split is *strengthened*: its values are made rare outside its class
(``exclusive_rate``) and its animals marked for look-alike silhouettes (``"alike"``; the renderer
uses them for shape-distinct classes only); every ``set`` rule, in order, re-draws its attributes
on the images matching its ``when``; then every ``class`` rule, in order, re-draws the class of
the images matching its ``when`` and, for images whose class changed, re-draws the attributes
the rule does not pin. A ``class`` rule without ``looks_like`` relabels: its animals keep the
shape of the class they had (``"shape"``).
"""

from __future__ import annotations

import numpy as np

from failstore.demo.spec import ATTRIBUTES, Rule, WorldSpec, resolve_rule_dist, victims


def _draw(rng: np.random.Generator, p: np.ndarray, n: int) -> np.ndarray:
    cum = np.cumsum(p)
    return np.searchsorted(cum / cum[-1], rng.random(n), side="right").astype(np.int64)


def _codes(values: tuple[str, ...], wanted: tuple[str, ...]) -> np.ndarray:
    return np.array([values.index(v) for v in wanted], dtype=np.int64)


def _matching(spec: WorldSpec, rule: Rule, codes: dict[str, np.ndarray],
              idx: np.ndarray) -> np.ndarray:
    keep = np.ones(idx.shape[0], dtype=bool)
    for key, wanted in rule.when.items():
        keep &= np.isin(codes[key][idx], _codes(spec.values(key), wanted))
    return idx[keep]


def _apply_set_rules(spec: WorldSpec, rules: list[Rule], split: str,
                     codes: dict[str, np.ndarray], idx: np.ndarray,
                     rng: np.random.Generator, pinned: frozenset[str] = frozenset()) -> None:
    for rule in rules:
        sel = _matching(spec, rule, codes, idx)
        for attr in rule.set:
            if attr in pinned or not sel.size:
                continue
            dist = resolve_rule_dist(spec, rule, split, attr)
            p = np.array([dist[v] for v in ATTRIBUTES[attr]])
            codes[attr][sel] = _draw(rng, p, sel.size)


VICTIM_SHARE = 0.0  # share of a class rule's animals drawn as its victims (else as they were)
EXCLUSIVE = 0.75  # a set rule's values are made rare enough outside its class: P(class | value)


def strengthened(spec: WorldSpec, rule: Rule, split: str) -> bool:
    """A ``set`` rule that names a class is strengthened in ``split`` (its values made rare
    outside the class, its animals drawn with look-alike silhouettes) unless the spec shapes the
    distribution of one of its attributes in ``split`` itself (anything but uniform): such a
    spec is taken at its word."""
    dists = spec.distributions[split]
    return "class" in rule.when and all(len(set(dists[a].values())) == 1 for a in rule.set)


def exclusive_rate(spec: WorldSpec, rule: Rule, split: str, attr: str) -> float | None:
    """The probability of a ``set`` rule's over-represented values for the *other* classes
    that makes P(rule's class | those values) = ``EXCLUSIVE`` in ``split``, or None when the
    rule is not ``strengthened`` or the values are already that rare."""
    d = spec.distributions[split][attr]
    if not strengthened(spec, rule, split):
        return None
    dist = resolve_rule_dist(spec, rule, split, attr)
    over = [v for v in ATTRIBUTES[attr] if dist[v] > d[v] + 1e-12]
    p_cls = sum(spec.distributions[split]["class"][c] for c in rule.when["class"])
    if not over or p_cls >= 1.0:
        return None
    p_in = sum(dist[v] for v in over)  # P(values | class), as the rule sets them
    p_out = sum(d[v] for v in over)  # P(values | another class), as drawn
    q = p_cls * p_in * (1 - EXCLUSIVE) / (EXCLUSIVE * (1 - p_cls))
    return q if q < p_out else None


def _make_exclusive(spec: WorldSpec, rules: list[Rule], split: str, codes: dict[str, np.ndarray],
                    rng: np.random.Generator) -> None:
    """Other classes' images holding a set rule's values keep them with probability
    ``exclusive_rate / P(values)``, else re-draw the attribute among the other values."""
    for rule in rules:
        for attr in rule.set:
            q = exclusive_rate(spec, rule, split, attr)
            if q is None:
                continue
            d = spec.probs(split, attr)
            dist = resolve_rule_dist(spec, rule, split, attr)
            over = np.array([dist[v] > d[k] + 1e-12 for k, v in enumerate(ATTRIBUTES[attr])])
            others = ~np.isin(codes["class"], _codes(spec.classes, rule.when["class"]))
            hit = np.flatnonzero(others & over[codes[attr]])
            move = hit[rng.random(hit.size) >= q / float(d[over].sum())]
            rest = np.where(over, 0.0, d)
            codes[attr][move] = _draw(rng, rest, move.size)


def sample_split(spec: WorldSpec, split: str, n: int,
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Codes (indices into the values) of "class" and every attribute for ``n`` images,
    ``"look"``: the index of the ``looks_like`` class rule that assigned the class, else -1, and
    ``"shape"``: the class whose silhouette an animal relabelled by a class rule (without
    ``looks_like``) is drawn with, else -1, and ``"alike"``: the index of the strengthened set
    rule (see ``exclusive_rate``) whose animals are drawn with the silhouettes of their class
    that look most like the nearest other class, else -1."""
    codes = {k: _draw(rng, spec.probs(split, k), n) for k in ("class", *ATTRIBUTES)}
    codes["look"] = np.full(n, -1, dtype=np.int64)
    codes["shape"] = np.full(n, -1, dtype=np.int64)
    rules = [r for r in spec.rules if split in r.splits]
    set_rules = [r for r in rules if r.kind == "set"]
    _make_exclusive(spec, set_rules, split, codes, rng)
    _apply_set_rules(spec, set_rules, split, codes, np.arange(n), rng)
    for rule in (r for r in rules if r.kind == "class"):
        sel = _matching(spec, rule, codes, np.arange(n))
        if not sel.size:
            continue
        dist = resolve_rule_dist(spec, rule, split, "class")
        new = _draw(rng, np.array([dist[c] for c in spec.classes]), sel.size)
        before = codes["class"][sel].copy()
        changed = sel[new != before]
        codes["class"][sel] = new
        hit = victims(spec, rule)
        if rule.looks_like:
            codes["look"][sel] = rule.index
        elif hit:  # relabelled: drawn as the animal it was, or as a victim (VICTIM_SHARE)
            pick = rng.random(sel.size) < VICTIM_SHARE
            as_victim = _codes(spec.classes, hit)[rng.integers(0, len(hit), sel.size)]
            codes["shape"][sel] = np.where(pick, as_victim, before)
        pinned = frozenset(rule.when)
        for attr in ATTRIBUTES:
            if attr not in pinned:
                codes[attr][changed] = _draw(rng, spec.probs(split, attr), changed.size)
        _apply_set_rules(spec, set_rules, split, codes, changed, rng, pinned)
    codes["alike"] = np.full(n, -1, dtype=np.int64)
    for rule in set_rules:
        if strengthened(spec, rule, split):
            codes["alike"][_matching(spec, rule, codes, np.arange(n))] = rule.index
    return codes
