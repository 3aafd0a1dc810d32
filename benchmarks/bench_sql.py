"""SQL at DuckDB speed: failstore's SQL against DuckDB over Parquet, six query shapes.

Builds a store with N images (CLIP columns: a 512-d embedding, 32 tag scores, tags) and N
predictions (default 1M), and Parquet files holding the same columns. For each shape it times,
interleaved (A B A B ...), so that both sides see the same machine load:
  A. ``run_sql(store, query)`` in-process, against
  B. plain DuckDB over the Parquet files, in-process, the same SQL;
  C. ``failstore sql QUERY --format csv`` as a new process, against
  D. a new Python process running the same plain DuckDB query (``python -c``),
checks that A and B return the same rows, and prints the medians and A/B and C/D (goal:
<= 1.2 in-process, <= 1.5 as processes; never slower on vectors than before). It also checks
that `failstore --help` and `failstore sql` do not import torch.

The store's SQL read cache is built first, as `failstore ingest` does; run it again with
FAILSTORE_SQL_CACHE=0 for the figures without the cache and without remembered plans (every
table scanned from Lance, every query guarded).

Usage: .venv/bin/python benchmarks/bench_sql.py [--rows 1000000] [--dir benchmarks/out/sql]
       [--pairs 7] [--process-pairs 5] [--reuse] [--only filter,join]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from failstore import schemas  # noqa: E402
from failstore.queries.sql.builds import refresh  # noqa: E402
from failstore.queries.sql.readcache import CACHE_ENV, enabled  # noqa: E402
from failstore.queries.sql.session import run_sql, session  # noqa: E402
from failstore.store import Store  # noqa: E402

DIM, TAGS, CLASSES = 512, 32, 1000
QUERY_ID = f"{123_456:064x}"  # the image whose neighbours the vector query finds

# name -> (failstore SQL, DuckDB SQL over Parquet); {i} / {p} are the Parquet files.
SHAPES: dict[str, tuple[str, str]] = {
    "group_by": (
        "SELECT * FROM class_error_rates",
        """SELECT p.model, 'label' AS "grouping", i.label AS "class", count(*) AS n,
       count(*) FILTER (WHERE p.correct IS NOT TRUE) AS errors,
       CAST(count(*) FILTER (WHERE p.correct IS NOT TRUE) AS DOUBLE) / count(*) AS error_rate
FROM read_parquet('{p}') AS p JOIN read_parquet('{i}') AS i ON i.image_id = p.image_id
GROUP BY 1, 2, 3 ORDER BY model, error_rate DESC, "class" NULLS LAST""",
    ),
    "filter": (
        "SELECT image_id, prediction, confidence FROM predictions "
        "WHERE target = 'class_0007' AND NOT correct AND confidence > 0.5 ORDER BY image_id",
        "SELECT image_id, prediction, confidence FROM read_parquet('{p}') "
        "WHERE target = 'class_0007' AND NOT correct AND confidence > 0.5 ORDER BY image_id",
    ),
    "top_k": (
        "SELECT image_id, target, prediction, confidence FROM predictions "
        "WHERE NOT correct ORDER BY confidence DESC, image_id LIMIT 20",
        "SELECT image_id, target, prediction, confidence FROM read_parquet('{p}') "
        "WHERE NOT correct ORDER BY confidence DESC, image_id LIMIT 20",
    ),
    "join": (
        "SELECT i.image_id, i.uri, p.prediction, p.confidence FROM images AS i "
        "JOIN predictions AS p ON p.image_id = i.image_id "
        "WHERE i.label < 'class_0020' AND i.split = 'test' ORDER BY i.image_id",
        "SELECT i.image_id, i.uri, p.prediction, p.confidence FROM read_parquet('{i}') AS i "
        "JOIN read_parquet('{p}') AS p ON p.image_id = i.image_id "
        "WHERE i.label < 'class_0020' AND i.split = 'test' ORDER BY i.image_id",
    ),
    "unnest": (
        "SELECT t.tag, count(*) AS n, avg(CASE WHEN p.correct THEN 0.0 ELSE 1.0 END) AS err "
        "FROM images AS i JOIN predictions AS p ON p.image_id = i.image_id, "
        "UNNEST(i.tags) AS t(tag) GROUP BY t.tag ORDER BY t.tag",
        "SELECT t.tag, count(*) AS n, avg(CASE WHEN p.correct THEN 0.0 ELSE 1.0 END) AS err "
        "FROM read_parquet('{i}') AS i JOIN read_parquet('{p}') AS p ON p.image_id = i.image_id, "
        "UNNEST(i.tags) AS t(tag) GROUP BY t.tag ORDER BY t.tag",
    ),
    "vector": (
        "WITH q AS (SELECT clip_embedding AS v FROM images WHERE image_id = '{q}') "
        "SELECT i.image_id, array_cosine_similarity(i.clip_embedding, q.v) AS s "
        "FROM images AS i, q ORDER BY s DESC, i.image_id LIMIT 10",
        "WITH q AS (SELECT clip_embedding AS v FROM read_parquet('{i}') "
        "WHERE image_id = '{q}') "
        "SELECT i.image_id, array_cosine_similarity(i.clip_embedding::FLOAT[512], q.v::FLOAT[512]) "
        "AS s FROM read_parquet('{i}') AS i, q ORDER BY s DESC, i.image_id LIMIT 10",
    ),
}

PARQUET_IMAGES = ["image_id", "uri", "split", "label", "tags", "clip_embedding"]
PARQUET_PREDS = ["model", "image_id", "target", "prediction", "confidence", "correct"]


def build(path: Path, n: int, chunk: int = 200_000) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    store = Store.init(path)
    img_schema = pa.schema(schemas.IMAGE_BASE_FIELDS + schemas.clip_fields(DIM, TAGS))
    names = np.array([f"class_{i:04d}" for i in range(CLASSES)], dtype=object)
    tag_names = np.array([f"tag_{i:02d}" for i in range(TAGS)], dtype=object)
    pq_i, pq_p = path.parent / "images.parquet", path.parent / "predictions.parquet"
    writers: dict[str, pq.ParquetWriter] = {}
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        ids = np.array([f"{i:064x}" for i in range(start, start + m)], dtype=object)
        lab = names[rng.integers(0, CLASSES, m)]
        pred = np.where(rng.random(m) < 0.8, lab, names[rng.integers(0, CLASSES, m)])
        emb = rng.standard_normal((m, DIM), dtype=np.float32)
        scores = rng.random((m, TAGS), dtype=np.float32)
        tag_lists = [list(tag_names[np.flatnonzero(s > 0.9)]) for s in scores]
        images = pa.table(
            {
                "image_id": ids,
                "uri": [f"/data/{i}.png" for i in range(start, start + m)],
                "split": np.where(rng.random(m) < 0.5, "val", "test"),
                "label": lab,
                "width": np.full(m, 64, np.int32),
                "height": np.full(m, 64, np.int32),
                "boxes": pa.nulls(m, pa.list_(schemas.BOX_TYPE)),
                "mask": pa.nulls(m, pa.binary()),
                "ingested_at": pa.nulls(m, pa.timestamp("us", tz="UTC")),
                "clip_model": ["clip"] * m,
                "clip_embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), DIM),
                "tag_scores": pa.FixedSizeListArray.from_arrays(pa.array(scores.ravel()), TAGS),
                "tags": pa.array(tag_lists, pa.list_(pa.string())),
            },
            schema=img_schema,
        )
        probs = rng.random((m, 10), dtype=np.float32)
        preds = pa.table(
            {
                "model": ["m"] * m,
                "image_id": ids,
                "target": lab,
                "prediction": pred,
                "prediction_index": np.zeros(m, np.int32),
                "confidence": rng.random(m, dtype=np.float32),
                "correct": pred == lab,
                "probabilities": pa.ListArray.from_arrays(
                    pa.array(np.arange(0, 10 * m + 1, 10, dtype=np.int32)), pa.array(probs.ravel())
                ),
                "embedding": pa.nulls(m, pa.list_(pa.float32())),
                "predicted_at": pa.nulls(m, pa.timestamp("us", tz="UTC")),
            },
            schema=schemas.PREDICTIONS_SCHEMA,
        )
        # Bulk load with plain appends (the ingest path upserts; that is not measured here).
        store._table("images", img_schema).add(images)
        store._table("predictions", schemas.PREDICTIONS_SCHEMA).add(preds)
        for key, table, cols, out in (
            ("i", images, PARQUET_IMAGES, pq_i),
            ("p", preds, PARQUET_PREDS, pq_p),
        ):
            part = table.select(cols)
            if key not in writers:
                writers[key] = pq.ParquetWriter(out, part.schema)
            writers[key].write_table(part, row_group_size=122_880)
    for w in writers.values():
        w.close()
    for name in ("images", "predictions"):
        store.db.open_table(name).optimize()
    return pq_i, pq_p


def interleaved(a, b, pairs: int) -> tuple[float, float]:
    """Median seconds of ``a`` and of ``b``, run alternately after one warm-up each."""
    a(), b()
    ta, tb = [], []
    for _ in range(pairs):
        for fn, out in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def same_rows(ours: pa.Table, theirs: pa.Table, name: str) -> None:
    if ours.num_rows != theirs.num_rows:
        raise SystemExit(f"{name}: {ours.num_rows} rows against {theirs.num_rows}")
    for col in ours.column_names:
        a, b = ours[col].to_pylist(), theirs[col].to_pylist()
        if a != b and not (
            isinstance(a[0], float) and np.allclose(np.array(a, float), np.array(b, float))
        ):
            raise SystemExit(f"{name}: column {col} differs")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dir", type=Path, default=ROOT / "benchmarks" / "out" / "sql")
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--process-pairs", type=int, default=5, help="0: in-process only")
    ap.add_argument("--reuse", action="store_true", help="reuse the store built by a last run")
    ap.add_argument("--only", default="", help="comma-separated shapes (default: all)")
    args = ap.parse_args()
    pq_i, pq_p = args.dir / "images.parquet", args.dir / "predictions.parquet"
    if not (args.reuse and pq_p.exists()):
        if args.dir.exists():
            shutil.rmtree(args.dir)
        args.dir.mkdir(parents=True)
        t0 = time.perf_counter()
        build(args.dir / "store", args.rows)
        print(f"built {args.rows:,} images + predictions in {time.perf_counter() - t0:.0f} s")
    store = Store(args.dir / "store")
    t0 = time.perf_counter()
    refresh(store)  # what `failstore ingest` does at its end (a no-op when the files exist)
    print(f"read cache ready in {time.perf_counter() - t0:.1f} s ({CACHE_ENV}={enabled()})")

    import duckdb

    con = duckdb.connect()
    failstore = str(ROOT / ".venv" / "bin" / "failstore")
    shapes = [s for s in SHAPES if not args.only or s in args.only.split(",")]
    print(
        f"{'shape':9} {'B duckdb':>9} {'A failstore':>12} {'A/B':>5}   "
        f"{'D python -c':>12} {'C failstore sql':>16} {'C/D':>5}"
    )
    for name in shapes:
        ours_sql, base_sql = SHAPES[name]
        ours_sql = ours_sql.format(q=QUERY_ID)
        base_sql = base_sql.format(i=pq_i, p=pq_p, q=QUERY_ID)
        same_rows(run_sql(store, ours_sql), con.sql(base_sql).to_arrow_table(), name)
        a, b = interleaved(
            lambda s=ours_sql: run_sql(store, s),
            lambda s=base_sql: con.sql(s).to_arrow_table(),
            args.pairs,
        )
        c = d = float("nan")
        if args.process_pairs:
            cli = [failstore, "--store", str(store.path), "sql", ours_sql, "--format", "csv"]
            plain = [
                sys.executable,
                "-c",
                f"import duckdb; duckdb.sql({base_sql!r}).write_csv('/dev/stdout')",
            ]
            c, d = interleaved(
                lambda c=cli: subprocess.run(c, check=True, capture_output=True),
                lambda p=plain: subprocess.run(p, check=True, capture_output=True),
                args.process_pairs,
            )
        print(
            f"{name:9} {b * 1000:7.0f}ms {a * 1000:10.0f}ms {a / b:5.2f}   "
            f"{d * 1000:10.0f}ms {c * 1000:14.0f}ms {c / d:5.2f}",
            flush=True,
        )
    session(store).close()

    probe = (
        "import sys; from failstore.cli.app import main\n"
        "try: main(sys.argv[1:])\nexcept SystemExit: pass\n"
        "print('torch' in sys.modules, file=sys.stderr)"
    )
    for argv in (["--help"], ["--store", str(store.path), "sql", "SELECT 1 AS x"]):
        r = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True)
        print(f"imports torch for {' '.join(argv[-2:])!r}: {r.stderr.strip().splitlines()[-1]}")


if __name__ == "__main__":
    main()
