"""Exact PRIME-style failure-slice search over one group (one class under one grouping).

A slice is a non-empty tag set T (|T| <= max_tags); S_T is the images of the group carrying
every tag of T. T is a failure slice when |S_T| >= min_size, acc(G) - acc(S_T) >= min_drop and,
for |T| >= 2, removing any one tag raises the accuracy by at least min_gain. See docs/slices.md.

``find_slices`` is the pruned, vectorised search (Apriori level by level; level 2 by a matrix
product, deeper levels by packed bitsets); ``brute_force_slices`` is the plain oracle that
enumerates every combination. Both return the same table.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pyarrow as pa

from failstore.errors import InputError
from failstore.queries.framework.params import Param, check_params
from failstore.queries.slices.stats import (
    TOLERANCE,
    at_least,
    bh_qvalues,
    describe,
    fisher_greater,
    slice_records,
)

SLICE_FIELDS: list[pa.Field] = [
    pa.field("tags", pa.list_(pa.string())),
    pa.field("size", pa.int64()),
    pa.field("errors", pa.int64()),
    pa.field("error_rate", pa.float64()),
    pa.field("base_error_rate", pa.float64()),
    pa.field("accuracy_drop", pa.float64()),
    pa.field("error_coverage", pa.float64()),
    pa.field("importance", pa.float64()),
    pa.field("p_value", pa.float64()),
    pa.field("q_value", pa.float64()),
    pa.field("description", pa.string()),
]
EVAL_FIELDS: list[pa.Field] = [
    pa.field("eval_size", pa.int64()),
    pa.field("eval_error_rate", pa.float64()),
    pa.field("eval_accuracy_drop", pa.float64()),
    pa.field("holds", pa.bool_()),
]

_MATMUL_ROWS = 1 << 16  # row chunk of the level-2 product: counts stay exact in float32
_BITSET_WORDS = 1 << 21  # uint64 words per chunk of bitset intersections (16 MiB)


def slice_schema(with_eval: bool = False) -> pa.Schema:
    return pa.schema(SLICE_FIELDS + (EVAL_FIELDS if with_eval else []))


# The search's parameters, declared once: SliceParams and the Slices analysis (and so the CLI's
# options) check them with these limits and messages.
SEARCH_PARAMS: tuple[Param, ...] = (
    Param("max_tags", 3, "L: at most this many tags per slice.", kind=int, low=1, high=5),
    Param("min_size", 30, "s: at least this many images.", kind=int, low=1),
    Param("min_drop", 0.2, "a: accuracy drop vs the class.", kind=float, low=0, high=1),
    Param(
        "min_gain",
        0.1,
        "b: accuracy drop vs every subset with one tag less.",
        kind=float,
        low=0,
        high=1,
    ),
)


@dataclass(frozen=True)
class SliceParams:
    max_tags: int = 3
    min_size: int = 30
    min_drop: float = 0.2
    min_gain: float = 0.1

    def __post_init__(self) -> None:
        check_params(SEARCH_PARAMS, {p.name: getattr(self, p.name) for p in SEARCH_PARAMS})


@dataclass
class _Group:
    tags: np.ndarray  # (N, T) bool
    err: np.ndarray  # (N,) bool: True where the prediction is wrong

    @property
    def size(self) -> int:
        return int(self.tags.shape[0])

    @property
    def errors(self) -> int:
        return int(np.count_nonzero(self.err))


def _check(tags: np.ndarray, correct: np.ndarray, n_tags: int | None, what: str = "tags") -> _Group:
    x = np.asarray(tags)
    ok = np.asarray(correct)
    if x.ndim != 2:
        raise InputError(f"{what} must be a 2-D (images x tags) boolean matrix, got {x.shape}")
    if ok.shape != (x.shape[0],):
        raise InputError(f"{what}: correct has shape {ok.shape}, expected ({x.shape[0]},)")
    if n_tags is not None and x.shape[1] != n_tags:
        raise InputError(f"{what} has {x.shape[1]} columns but there are {n_tags} tag names")
    return _Group(x.astype(bool, copy=False), ~ok.astype(bool, copy=False))


def _prepare(tags, correct, tag_names, eval_tags, eval_correct):
    names = [str(n) for n in tag_names]
    if len(set(names)) != len(names):
        raise InputError("tag_names has duplicates; give each tag column a unique name")
    group = _check(tags, correct, len(names))
    if (eval_tags is None) != (eval_correct is None):
        raise InputError("pass both eval_tags and eval_correct, or neither")
    ev = None if eval_tags is None else _check(eval_tags, eval_correct, len(names), "eval_tags")
    return names, group, ev


# ----------------------------------------------------------------------------- pruned search


def _pack(columns: np.ndarray) -> np.ndarray:
    """(N, K) bool -> (K, W) uint64 bitsets along N (zero padded)."""
    n, k = columns.shape
    words = max(1, -(-n // 64))
    out = np.zeros((k, words * 8), dtype=np.uint8)
    for start in range(0, k, 64):
        block = np.packbits(columns[:, start : start + 64].T, axis=1)
        out[start : start + block.shape[0], : block.shape[1]] = block
    return out.view(np.uint64)


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount_rows(words: np.ndarray) -> np.ndarray:
    """Set bits per row of a (K, W) uint64 array (lookup table when numpy < 2 lacks it)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words).sum(axis=1, dtype=np.int64)
    return _POPCOUNT8[words.view(np.uint8)].sum(axis=1, dtype=np.int64)  # pragma: no cover


def _count_sets(bits: np.ndarray, err_bits: np.ndarray, rows: np.ndarray):
    """Sizes and error counts of the intersections of the bitset rows listed in ``rows``."""
    sizes = np.zeros(len(rows), dtype=np.int64)
    errors = np.zeros(len(rows), dtype=np.int64)
    step = max(1, _BITSET_WORDS // bits.shape[1])
    for start in range(0, len(rows), step):
        r = rows[start : start + step]
        acc = bits[r[:, 0]]
        for j in range(1, r.shape[1]):
            acc &= bits[r[:, j]]
        sizes[start : start + step] = _popcount_rows(acc)
        acc &= err_bits
        errors[start : start + step] = _popcount_rows(acc)
    return sizes, errors


def _pair_counts(x: np.ndarray, err: np.ndarray):
    """(F, F) co-occurrence counts and error co-occurrence counts by a chunked matrix product."""
    f = x.shape[1]
    both = np.zeros((f, f), dtype=np.int64)
    both_err = np.zeros((f, f), dtype=np.int64)
    for start in range(0, x.shape[0], _MATMUL_ROWS):
        xb = x[start : start + _MATMUL_ROWS].astype(np.float32)
        both += np.rint(xb.T @ xb).astype(np.int64)
        xe = xb[err[start : start + _MATMUL_ROWS]]
        both_err += np.rint(xe.T @ xe).astype(np.int64)
    return both, both_err


def _encode(rows: np.ndarray, radix: int, wide: bool) -> np.ndarray:
    """Mixed-radix keys of sorted index rows; lexicographic row order == key order."""
    keys = np.zeros(len(rows), dtype=object if wide else np.int64)
    for j in range(rows.shape[1]):
        col = rows[:, j].astype(object) if wide else rows[:, j].astype(np.int64)
        keys = keys * radix + col
    return keys


def _lookup(keys: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``query`` in the sorted ``keys`` and whether each was found."""
    pos = np.searchsorted(keys, query)
    safe = np.minimum(pos, len(keys) - 1)
    return safe, (pos < len(keys)) & (keys[safe] == query)


def _join(prev: np.ndarray) -> np.ndarray:
    """Apriori join: k-sets from pairs of sorted (k-1)-sets sharing their first k-2 items."""
    m, width = prev.shape
    if m < 2:
        return np.zeros((0, width + 1), dtype=prev.dtype)
    same = np.all(prev[1:, : width - 1] == prev[:-1, : width - 1], axis=1)
    gid = np.concatenate(([0], np.cumsum(~same)))
    ends = np.append(np.flatnonzero(np.diff(gid)) + 1, m)[gid]
    partners = ends - np.arange(m) - 1
    a = np.repeat(np.arange(m), partners)
    offset = np.arange(len(a)) - np.repeat(np.cumsum(partners) - partners, partners)
    b = a + 1 + offset
    return np.hstack([prev[a], prev[b, -1:]])


@dataclass
class _Levels:
    """Every supported set (|S_T| >= min_size), level by level, as frequent-tag positions."""

    rows: list[np.ndarray]
    sizes: list[np.ndarray]
    errors: list[np.ndarray]
    minimal: list[np.ndarray]  # rule 3 (True on level 1)
    candidates: int = 0  # sets whose support was counted (for tests and benchmarks)


def _search(group: _Group, params: SliceParams) -> tuple[np.ndarray, _Levels]:
    x, err = group.tags, group.err
    s = params.min_size
    n1 = np.count_nonzero(x, axis=0).astype(np.int64)
    e1 = np.count_nonzero(x[err], axis=0).astype(np.int64)
    freq = np.flatnonzero(n1 >= s)
    f = len(freq)
    lv = _Levels([np.arange(f)[:, None]], [n1[freq]], [e1[freq]], [])
    lv.minimal.append(np.ones(f, dtype=bool))
    lv.candidates = x.shape[1]
    if params.max_tags < 2 or f < 2:
        return freq, lv
    wide = f**params.max_tags >= 2**62
    xf = x[:, freq]
    both, both_err = _pair_counts(xf, err)
    iu = np.triu_indices(f, 1)
    lv.candidates += len(iu[0])
    keep = both[iu] >= s
    rows = np.stack(iu, axis=1)[keep]
    sizes, errors = both[iu][keep], both_err[iu][keep]
    bits = err_bits = None
    for k in range(2, params.max_tags + 1):
        if k > 2:
            cand = _join(lv.rows[-1])
            prev_keys = _encode(lv.rows[-1], f, wide)
            ok = np.ones(len(cand), dtype=bool)
            for j in range(k - 2):  # dropping either of the last two items gives a joined parent
                ok &= _lookup(prev_keys, _encode(np.delete(cand, j, axis=1), f, wide))[1]
            cand = cand[ok]
            lv.candidates += len(cand)
            if bits is None:
                bits = _pack(xf)
                err_bits = _pack(err[:, None])[0]
            assert bits is not None and err_bits is not None
            sizes, errors = _count_sets(bits, err_bits, cand)
            keep = sizes >= s
            rows, sizes, errors = cand[keep], sizes[keep], errors[keep]
        if len(rows) == 0:
            break
        acc = (sizes - errors) / sizes
        prev_keys = _encode(lv.rows[-1], f, wide)
        prev_acc = (lv.sizes[-1] - lv.errors[-1]) / lv.sizes[-1]
        minimal = np.ones(len(rows), dtype=bool)
        for j in range(k):
            pos, found = _lookup(prev_keys, _encode(np.delete(rows, j, axis=1), f, wide))
            assert found.all(), "a subset of a supported set is supported"
            minimal &= at_least(prev_acc[pos] - acc, params.min_gain)
        lv.rows.append(rows)
        lv.sizes.append(sizes)
        lv.errors.append(errors)
        lv.minimal.append(minimal)
    return freq, lv


def find_slices(
    tags: np.ndarray,
    correct: np.ndarray,
    tag_names: Sequence[str],
    params: SliceParams = SliceParams(),
    *,
    eval_tags: np.ndarray | None = None,
    eval_correct: np.ndarray | None = None,
    class_name: str = "",
) -> pa.Table:
    """The failure slices of one group, most important first (pruned exact search)."""
    names, group, ev = _prepare(tags, correct, tag_names, eval_tags, eval_correct)
    if group.size == 0 or len(names) == 0:
        return slice_schema(ev is not None).empty_table()
    n_all, e_all = group.size, group.errors
    freq, lv = _search(group, params)
    sizes = np.concatenate(lv.sizes)
    errors = np.concatenate(lv.errors)
    p = fisher_greater(sizes, errors, n_all, e_all)
    q = bh_qvalues(p)
    drop = (n_all - e_all) / n_all - (sizes - errors) / sizes
    chosen = np.flatnonzero(at_least(drop, params.min_drop) & np.concatenate(lv.minimal))
    starts = np.cumsum([0] + [len(rows) for rows in lv.rows])
    level = np.searchsorted(starts, chosen, side="right") - 1
    chosen_rows = [
        tuple(freq[lv.rows[k][i - starts[k]]].tolist()) for i, k in zip(chosen, level, strict=True)
    ]
    tag_lists = [sorted(names[t] for t in r) for r in chosen_rows]
    rank_key = (errors[chosen] * errors[chosen]) / sizes[chosen]  # exact ties of importance
    order = sorted(
        range(len(chosen)), key=lambda i: (-rank_key[i], -sizes[chosen[i]], tag_lists[i])
    )
    sel = chosen[order]
    records = slice_records(
        [tag_lists[i] for i in order],
        sizes[sel],
        errors[sel],
        p[sel],
        q[sel],
        n_all,
        e_all,
        class_name,
    )
    if ev is not None:
        _add_eval(records, [chosen_rows[i] for i in order], ev, params)
    return pa.Table.from_pylist(records, schema=slice_schema(ev is not None))


def _add_eval(records: list[dict], rows: list[tuple], ev: _Group, params: SliceParams) -> None:
    sizes = np.zeros(len(rows), dtype=np.int64)
    errors = np.zeros(len(rows), dtype=np.int64)
    if ev.size and rows:
        used = sorted({t for r in rows for t in r})
        where = {t: i for i, t in enumerate(used)}
        bits, err_bits = _pack(ev.tags[:, used]), _pack(ev.err[:, None])[0]
        for k in sorted({len(r) for r in rows}):
            idx = [i for i, r in enumerate(rows) if len(r) == k]
            local = np.array([[where[t] for t in rows[i]] for i in idx], dtype=np.int64)
            sizes[idx], errors[idx] = _count_sets(bits, err_bits, local)
    base_acc = (ev.size - ev.errors) / ev.size if ev.size else None
    for rec, n, e in zip(records, sizes.tolist(), errors.tolist(), strict=True):
        drop = None if n == 0 or base_acc is None else base_acc - (n - e) / n
        rec["eval_size"] = n
        rec["eval_error_rate"] = None if n == 0 else e / n
        rec["eval_accuracy_drop"] = drop
        rec["holds"] = bool(drop is not None and at_least(drop, params.min_drop))


# ----------------------------------------------------------------------------- oracle


def brute_force_slices(
    tags: np.ndarray,
    correct: np.ndarray,
    tag_names: Sequence[str],
    params: SliceParams = SliceParams(),
    *,
    eval_tags: np.ndarray | None = None,
    eval_correct: np.ndarray | None = None,
    class_name: str = "",
) -> pa.Table:
    """The plain oracle: every combination with itertools, no pruning, scipy per set."""
    from scipy.stats import fisher_exact  # scipy.stats takes ~0.6 s to import: only when used

    names, group, ev = _prepare(tags, correct, tag_names, eval_tags, eval_correct)
    if group.size == 0 or len(names) == 0:
        return slice_schema(ev is not None).empty_table()
    cols = [np.ascontiguousarray(group.tags[:, t]) for t in range(len(names))]
    err = group.err
    n_all, e_all = group.size, group.errors
    supported: dict[tuple[int, ...], tuple[int, int]] = {}
    for k in range(1, params.max_tags + 1):
        for combo in itertools.combinations(range(len(names)), k):
            mask = cols[combo[0]].copy()
            for t in combo[1:]:
                mask &= cols[t]
            n = int(np.count_nonzero(mask))
            if n >= params.min_size:
                supported[combo] = (n, int(np.count_nonzero(mask & err)))
    pvals = {}
    for combo, (n, e) in supported.items():
        table = [[e, n - e], [e_all - e, (n_all - n) - (e_all - e)]]
        pvals[combo] = float(fisher_exact(table, alternative="greater").pvalue)
    ranked = sorted(supported, key=lambda c: pvals[c])
    m = len(ranked)
    qvals: dict[tuple[int, ...], float] = {}
    running = math.inf
    for i in range(m, 0, -1):
        running = min(running, pvals[ranked[i - 1]] * m / i)
        qvals[ranked[i - 1]] = min(running, 1.0)

    def acc(c: tuple[int, ...]) -> float:
        n, e = supported[c]
        return (n - e) / n

    base_acc = (n_all - e_all) / n_all
    found = []
    for combo, (n, e) in supported.items():
        if base_acc - acc(combo) < params.min_drop - TOLERANCE:
            continue
        subs = itertools.combinations(combo, len(combo) - 1) if len(combo) > 1 else ()
        if all(acc(sub) - acc(combo) >= params.min_gain - TOLERANCE for sub in subs):
            found.append((Fraction(-e * e, n), -n, sorted(names[t] for t in combo), combo))
    found.sort(key=lambda item: item[:3])
    records = []
    for _, _, tag_list, combo in found:
        n, e = supported[combo]
        rate, base = e / n, e_all / n_all
        coverage = e / e_all if e_all else 0.0
        records.append(
            {
                "tags": tag_list, "size": n, "errors": e, "error_rate": rate,
                "base_error_rate": base, "accuracy_drop": base_acc - (n - e) / n,
                "error_coverage": coverage, "importance": rate * coverage,
                "p_value": pvals[combo], "q_value": qvals[combo],
                "description": describe(tag_list, n, rate, base, class_name),
            }
        )  # fmt: skip
        if ev is not None:
            mask = np.all(ev.tags[:, list(combo)], axis=1)
            en, ee = int(np.count_nonzero(mask)), int(np.count_nonzero(mask & ev.err))
            drop = None if en == 0 else (ev.size - ev.errors) / ev.size - (en - ee) / en
            records[-1].update(
                eval_size=en,
                eval_error_rate=None if en == 0 else ee / en,
                eval_accuracy_drop=drop,
                holds=drop is not None and drop >= params.min_drop - TOLERANCE,
            )
    return pa.Table.from_pylist(records, schema=slice_schema(ev is not None))
