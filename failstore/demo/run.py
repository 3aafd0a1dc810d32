"""``failstore demo``: build (or reuse) the world, train (or reuse) the models, ingest, analyse,
and report which planted failure modes were found.

Caches live under ``failstore.config.cache_dir() / "demo" / <spec hash>``: ``world/`` (PNG files,
masks, ``manifest.parquet``) and ``models/`` (checkpoints, vocabulary, metrics). A second run with
the same spec reuses both and finds the store already complete, so it only re-runs the analyses.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from failstore import config
from failstore.store import Store, equals

Log = Callable[[str], None]
DEFAULT_STORE = "failstore-demo"  # the default world; other worlds get a suffix
EVAL_SPLIT = "val"  # slices are searched here ...
HOLDOUT_SPLIT = "test"  # ... and must hold here


@dataclass
class DemoResult:
    store: Path
    spec_name: str
    spec_hash: str
    world_dir: Path
    ingest_args: list[str]
    metrics: dict[str, Any]
    findings: list[Any]
    findings_attr: list[Any]
    tag_macro_f1: float
    barlow: list[Any] = field(default_factory=list)
    ces: list[Any] = field(default_factory=list)
    coverage: list[Any] = field(default_factory=list)
    coverage_checks: list[Any] = field(default_factory=list)
    sanity: list[Any] = field(default_factory=list)
    planted_modes: list[Any] = field(default_factory=list)  # planted_modes.PlantedMode rows
    seconds: dict[str, float] = field(default_factory=dict)
    report: Path | None = None  # index.html of the static report (failstore report)

    def to_json(self) -> dict[str, Any]:
        return {
            "store": str(self.store),
            "world": self.spec_name,
            "spec_hash": self.spec_hash,
            "world_dir": str(self.world_dir),
            "ingest_args": self.ingest_args,
            "metrics": self.metrics,
            "tag_macro_f1": self.tag_macro_f1,
            "findings": [f.row() for f in self.findings],
            "findings_attributes": [f.row() for f in self.findings_attr],
            "barlow": [f.row() for f in self.barlow],
            "ces": [f.row() for f in self.ces],
            "coverage": [f.row() for f in self.coverage],
            "coverage_checks": [c.row() for c in self.coverage_checks],
            "sanity": [f.row() for f in self.sanity],
            "planted_modes": [m.row() for m in self.planted_modes],
            "outcomes": self.outcomes(),
            "broken_promises": self.broken_promises(),
            "seconds": self.seconds,
            "report": None if self.report is None else str(self.report),
        }

    def outcomes(self) -> list[dict[str, Any]]:
        """Per planted mode: learned or not, and the outcome with CLIP tags and with attribute
        columns (``found (rank r)``, ``missed``, ``not learned``; see planted_modes.py)."""
        from failstore.demo.planted_modes import learned, outcome

        ok = learned(self.planted_modes)
        clip = {f.planted: f for f in self.findings}
        attr = {f.planted: f for f in self.findings_attr}
        return [{"planted": name, "learned": took,
                 "clip_tags": outcome(took, clip.get(name)),
                 "attributes": outcome(took, attr.get(name))}
                for name, took in ok.items()]  # fmt: skip

    def broken_promises(self) -> list[str]:
        """One warning per planted rule that did not take (empty: the world kept its promise)."""
        from failstore.demo.planted_modes import broken_promises

        return broken_promises(self.planted_modes)


def _world_dir(spec: Any, log: Log) -> tuple[Path, Any]:
    """The world's files, written once per spec hash (atomically: tmp dir, then rename)."""
    from failstore.demo.spec import spec_hash
    from failstore.demo.world import generate, write_world

    base = config.cache_dir() / "demo" / spec_hash(spec)
    world_dir = base / "world"
    if (world_dir / "manifest.parquet").is_file():
        log(f"world: reusing {world_dir}")
        return world_dir, None
    t0 = time.perf_counter()
    world = generate(spec)
    tmp = base / "world.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    write_world(world, tmp)
    shutil.rmtree(world_dir, ignore_errors=True)
    tmp.rename(world_dir)
    log(f"world: {len(world)} images generated in {time.perf_counter() - t0:.1f} s")
    return world_dir, world


def run_demo(
    store_path: str | Path | None = None,
    world: str | Path | None = None,
    quick: bool = False,
    log: Log = print,
    progress: bool = False,
    workers: int | None = None,
    configs: dict[str, Any] | None = None,
    report_dir: str | Path | None = "",
) -> DemoResult:
    """Run the demo; ``configs`` overrides the trainers' configs (keys target, robust, clip).
    ``report_dir``: where to write the static report of the store (``failstore report``);
    "" (default): ``<store>-report`` beside the store; None: no report."""
    from failstore.demo.models import train_all
    from failstore.demo.spec import load_spec, planted_slices, spec_hash
    from failstore.demo.world import default_spec, generate, quick_spec
    from failstore.ingest.pipeline import IngestOptions, ingest

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    if world is not None:
        spec = load_spec(Path(world))
        spec = quick_spec(spec) if quick else spec
    else:
        spec = default_spec(quick=quick)
    h = spec_hash(spec)
    if not store_path:  # one store per world: their models share names (target, robust, clip)
        suffix = "" if spec.name == "default" else f"-{spec.name}"
        store_path = Path(DEFAULT_STORE + suffix)
    store_path = Path(store_path)
    world_dir, generated = _world_dir(spec, log)
    seconds["world"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    cache = config.cache_dir() / "demo" / h / "models"
    # Deterministic: the same arrays as the files on disk; train_all fingerprints them to decide
    # whether its cached models still fit.
    w = generated if generated is not None else generate(spec)
    trained = train_all(
        w.images,
        w.labels,
        w.class_names,
        w.split,
        w.attributes,
        w.captions,
        cache_dir=cache,
        quick=quick,
        seed=spec.seed,
        log=log,
        configs=configs,
    )
    del w, generated
    seconds["models"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    specs = trained["specs"]
    opts = IngestOptions(
        source=world_dir / "manifest.parquet",
        target=specs["target"],
        robust=specs["robust"],
        clip=specs["clip"],
        tags=specs["tags"],
        workers=config.default_workers() if workers is None else workers,
    )
    _drop_stale_demo_store(store_path, specs, log)
    report = ingest(store_path, opts, warn=lambda m: log(f"warning: {m}"), progress=progress)
    log(f"ingest: {report.summary()}")
    seconds["ingest"] = time.perf_counter() - t2

    t3 = time.perf_counter()
    store = Store(store_path)
    macro = _write_demo_tables(store, trained["metrics"], log)
    planted = planted_slices(spec)
    modes = _planted_modes(store, spec, planted, log)
    findings = _slices_findings(store, planted, tags_from=None)
    attrs = sorted({a for p in planted for a, _, _ in p.conditions})
    findings_attr = _slices_findings(store, planted, tags_from=attrs)
    _add_coverage(store, planted, findings + findings_attr)
    barlow = _barlow_findings(store, planted)
    ces = _ces_findings(store, planted)
    t4 = time.perf_counter()
    coverage, coverage_checks = _coverage_findings(store, planted, log)
    seconds["saliency"] = time.perf_counter() - t4
    t5 = time.perf_counter()
    sanity = _sanity_findings(store, planted, log)
    seconds["sanity"] = time.perf_counter() - t5
    seconds["analyses"] = time.perf_counter() - t3
    index = None
    if report_dir is not None:
        from failstore.serve.report import write_report

        t6 = time.perf_counter()
        out = Path(report_dir) if report_dir else default_report_dir(store_path)
        written = write_report(store, out)
        index = out.resolve() / "index.html"
        log(f"report: {written.pages} pages and {written.images} images in {out}")
        seconds["report"] = time.perf_counter() - t6
    seconds["total"] = time.perf_counter() - t0
    return DemoResult(
        store=store.path,
        spec_name=spec.name,
        spec_hash=h,
        world_dir=world_dir,
        ingest_args=trained["ingest_args"],
        metrics=trained["metrics"],
        findings=findings,
        findings_attr=findings_attr,
        tag_macro_f1=macro,
        seconds=seconds,
        barlow=barlow,
        ces=ces,
        coverage=coverage,
        coverage_checks=coverage_checks,
        sanity=sanity,
        planted_modes=modes,
        report=index,
    )


def default_report_dir(store_path: Path) -> Path:
    """``failstore-demo`` -> ``failstore-demo-report`` (beside the store, not in it)."""
    return store_path.parent / f"{store_path.name}-report"


def _write_demo_tables(store: Store, metrics: dict[str, Any], log: Log) -> float:
    """``model_metrics`` (model, metric, value) and ``tagger_audit`` computed from the store:
    the ingested ``tags`` of test images against their ``attr_*`` ground truth."""
    from failstore.demo.calibrate import TagSpec, macro_f1, tagger_audit
    from failstore.demo.spec import ATTRIBUTES

    rows = []
    for model, m in metrics.items():
        if isinstance(m, dict):
            for k, v in m.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    rows.append({"model": model, "metric": k, "value": float(v)})
    _write_demo_table(
        store, "model_metrics", pa.Table.from_pylist(rows, schema=MODEL_METRICS_SCHEMA),
        params={"metrics": rows}, reads=("models",),
    )  # fmt: skip
    vocab = store.read("models", ["tags"], filter="role = 'clip'").column("tags")[0].as_py()
    cols = [a for a in ATTRIBUTES if a in store.schema("images").names]
    data = store.read("images", ["tags", *cols], filter=equals("split", HOLDOUT_SPLIT))
    tags_of = data.column("tags").to_pylist()
    pred = np.array([[t in (ts or []) for t in vocab] for ts in tags_of], dtype=bool)
    truth = np.zeros_like(pred)
    attr_of: list[str] = []
    for j, tag in enumerate(vocab):
        attr = next((a for a in cols if tag in ATTRIBUTES[a]), "")
        attr_of.append(attr)
        if attr:
            truth[:, j] = np.asarray(data.column(attr).to_pylist(), dtype=object) == tag
    specs = [
        TagSpec(name=t, attribute=a, value=t, prompts=())
        for t, a in zip(vocab, attr_of, strict=True)
    ]
    audit = tagger_audit(pred, truth, specs)
    _write_demo_table(
        store, "tagger_audit", audit, params={"split": HOLDOUT_SPLIT}, reads=("images", "models")
    )
    macro = float(macro_f1(audit))
    log(f"tagger audit on {HOLDOUT_SPLIT}: macro-F1 {macro:.3f} over {len(vocab)} tags")
    return macro


def _drop_stale_demo_store(store_path: Path, specs: dict[str, str], log: Log) -> None:
    """A store that an earlier demo filled with other demo models (older trainer, other
    weights) cannot take the new ones under the same names: it is removed and rebuilt. Only a
    store whose every model came from the demo cache is touched; anything else is left alone
    (the ingest then says which model differs)."""
    from failstore.models import resolve
    from failstore.models.weights import sha256_files

    if not (store_path / "failstore.json").is_file() or not (store_path / "models.lance").is_dir():
        return
    rows = Store(store_path).read("models", ["name", "role", "spec", "checkpoint_sha256"])
    demo_cache = str(config.cache_dir() / "demo")
    rows_list = rows.to_pylist()
    if not rows_list or not all(demo_cache in str(r["spec"]) for r in rows_list):
        return
    want = {}
    for role in ("target", "robust", "clip"):
        adapter: Any = resolve(role, specs[role])  # type: ignore[arg-type]
        files = adapter.checkpoint_files() if role == "clip" else adapter.source.files()
        want[role] = (specs[role], sha256_files(files))
    stale = [
        r["name"] for r in rows_list if (r["spec"], r["checkpoint_sha256"]) != want.get(r["role"])
    ]
    if stale:
        log(f"store: {store_path} holds older demo models ({', '.join(stale)}); rebuilding it")
        shutil.rmtree(store_path)


MODEL_METRICS_SCHEMA = pa.schema(
    [("model", pa.string()), ("metric", pa.string()), ("value", pa.float64())]
)


def _write_demo_table(
    store: Store, table: str, rows: pa.Table, params: dict[str, Any], reads: tuple[str, ...]
) -> None:
    """A demo table written as an analysis run would be: rows stamped with ``run_id`` and
    appended, the run recorded in ``analysis_runs``; the same inputs again write nothing."""
    from failstore.queries.framework.analysis import has_run, run_identity, write_run

    versions = store.versions(list(reads))
    name = f"demo.{table}"
    run_id = run_identity(name, params, versions)
    if has_run(store, run_id, table):
        return
    write_run(
        store, analysis=name, result_table=table, result=rows, schema=rows.schema,
        params=params, run_key={}, versions=versions, seconds=0.0, run_id=run_id,
    )  # fmt: skip


def _planted_modes(store: Store, spec: Any, planted: list[Any], log: Log) -> list[Any]:
    """Measure each planted slice on every evaluation split (did the rule take?) and write the
    ``planted_modes`` table, stamped like an analysis run."""
    from failstore.demo.planted_modes import measure_store, modes_table
    from failstore.demo.spec import spec_hash

    modes = measure_store(store, spec, planted)
    _write_demo_table(
        store, "planted_modes", modes_table(modes),
        params={"spec_hash": spec_hash(spec)}, reads=("images", "predictions"),
    )  # fmt: skip
    for m in modes:
        log(f"planted: '{m.planted}' {m.figures()}: {'took' if m.learned else 'did not take'}")
    return modes


def _add_coverage(store: Store, planted: list[Any], findings: list[Any]) -> None:
    """How much of its planted slice each found slice covers (on the searched split)."""
    from failstore.demo.findings import add_coverage

    add_coverage(findings, planted, store, EVAL_SPLIT)


def _slices_findings(store: Store, planted: list[Any], tags_from: list[str] | None) -> list[Any]:
    from failstore.demo.findings import find
    from failstore.queries.slices.estimator import Slices

    est = Slices(split=EVAL_SPLIT, eval_split=HOLDOUT_SPLIT, tags_from=tags_from).fit(store)
    return find(planted, est.results_)


def _barlow_findings(store: Store, planted: list[Any]) -> list[Any]:
    """Barlow on the same split as slices (grouping by label, the paper's defaults)."""
    from failstore.demo.barlow_findings import barlow_findings

    return barlow_findings(store, planted, EVAL_SPLIT)


def _ces_findings(store: Store, planted: list[Any]) -> list[Any]:
    """CES of the test split's mistakes with the tagger's concept bank (docs/explain.md)."""
    from failstore.demo.ces_findings import ces_findings

    return ces_findings(store, planted, HOLDOUT_SPLIT)


def _coverage_findings(store: Store, planted: list[Any], log: Log) -> tuple[list, list]:
    """Saliency maps of the test split (two methods) and their Shared-Interest coverage."""
    from failstore.demo.coverage_findings import coverage_findings

    return coverage_findings(store, planted, HOLDOUT_SPLIT, log=log)


def _sanity_findings(store: Store, planted: list[Any], log: Log) -> list[Any]:
    """Explanation debugging tests of three methods on the test split (docs/sanity.md)."""
    from failstore.demo.sanity_findings import sanity_findings

    return sanity_findings(store, planted, HOLDOUT_SPLIT, log=log)


def dumps(result: DemoResult) -> str:
    return json.dumps(result.to_json(), default=str)
