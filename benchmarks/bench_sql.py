"""SQL overhead: `class_error_rates` through `failstore sql` vs DuckDB over Parquet.

Builds a store with N images and N predictions (default 1M), then times
  A. `run_sql(store, "SELECT * FROM class_error_rates")` in-process, against
  B. plain DuckDB over Parquet files holding only the columns the query needs, in-process;
  C. `failstore sql "SELECT * FROM class_error_rates"` as a new process, against
  D. a new Python process running the same plain DuckDB query over the Parquet files,
and prints A/B and C/D (target <= 1.5): each pair pays the same start-up costs. It also checks
that `failstore --help` and a small `failstore sql` do not import torch.

Usage: .venv/bin/python benchmarks/bench_sql.py [--rows 1000000] [--dir benchmarks/out/sql]
"""

from __future__ import annotations

import argparse
import shutil
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
from failstore.queries.sql.session import run_sql  # noqa: E402
from failstore.store import Store  # noqa: E402

BASELINE = """
SELECT p.model, 'label' AS grouping, i.label AS class, count(*) AS n,
       sum(CASE WHEN p.correct THEN 0 ELSE 1 END) AS errors,
       sum(CASE WHEN p.correct THEN 0 ELSE 1 END) / count(*) AS error_rate
FROM read_parquet('{images}') i JOIN read_parquet('{preds}') p USING (image_id)
GROUP BY p.model, i.label ORDER BY p.model, error_rate DESC
"""


def build(path: Path, n: int, classes: int = 1000, chunk: int = 250_000) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    store = Store.init(path)
    img_schema = pa.schema(schemas.IMAGE_BASE_FIELDS + schemas.robust_fields(32))
    names = np.array([f"class_{i:04d}" for i in range(classes)], dtype=object)
    pq_i, pq_p = path.parent / "images.parquet", path.parent / "predictions.parquet"
    wi = wp = None
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        ids = np.array([f"{i:064x}" for i in range(start, start + m)], dtype=object)
        lab = names[rng.integers(0, classes, m)]
        pred = np.where(rng.random(m) < 0.8, lab, names[rng.integers(0, classes, m)])
        feats = rng.standard_normal((m, 32), dtype=np.float32)
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
                "robust_model": ["r"] * m,
                "robust_features": pa.FixedSizeListArray.from_arrays(pa.array(feats.ravel()), 32),
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
        # Bulk load: plain appends (the ingest path upserts; that is not what is measured here).
        for name, t, sch in (
            ("images", images, img_schema),
            ("predictions", preds, schemas.PREDICTIONS_SCHEMA),
        ):
            tbl = store._table(name, sch)
            tbl.add(t)
        if wi is None:
            wi = pq.ParquetWriter(
                pq_i, pa.schema([("image_id", pa.string()), ("label", pa.string())])
            )
            wp = pq.ParquetWriter(
                pq_p,
                pa.schema(
                    [("model", pa.string()), ("image_id", pa.string()), ("correct", pa.bool_())]
                ),
            )
        wi.write_table(images.select(["image_id", "label"]).cast(wi.schema))
        wp.write_table(preds.select(["model", "image_id", "correct"]).cast(wp.schema))
    wi.close()
    wp.close()
    for name in ("images", "predictions"):
        store.db.open_table(name).optimize()
    return pq_i, pq_p


def best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dir", type=Path, default=ROOT / "benchmarks" / "out" / "sql")
    args = ap.parse_args()
    if args.dir.exists():
        shutil.rmtree(args.dir)
    args.dir.mkdir(parents=True)
    t0 = time.perf_counter()
    pq_i, pq_p = build(args.dir / "store", args.rows)
    print(f"built {args.rows} images + predictions in {time.perf_counter() - t0:.1f} s")
    store = Store(args.dir / "store")
    cli = [
        str(ROOT / ".venv" / "bin" / "failstore"),
        "--store",
        str(store.path),
        "sql",
        "SELECT * FROM class_error_rates",
        "--format",
        "csv",
    ]

    import duckdb

    con = duckdb.connect()
    sql = BASELINE.format(images=pq_i, preds=pq_p)
    base = best(lambda: con.sql(sql).to_arrow_table())
    lib = best(lambda: run_sql(store, "SELECT * FROM class_error_rates"))
    cmd = best(lambda: subprocess.run(cli, check=True, capture_output=True))
    plain = [
        sys.executable,
        "-c",
        f"import duckdb, sys; duckdb.sql({sql!r}).write_csv('/dev/stdout')",
    ]
    plain_cmd = best(lambda: subprocess.run(plain, check=True, capture_output=True))
    ours = run_sql(store, "SELECT * FROM class_error_rates")
    theirs = con.sql(sql).to_arrow_table()
    assert ours.num_rows == theirs.num_rows, (ours.num_rows, theirs.num_rows)
    print(f"B duckdb over parquet, in-process : {base * 1000:7.0f} ms")
    print(f"A run_sql, in-process             : {lib * 1000:7.0f} ms   A/B {lib / base:.2f}")
    print(f"D python -c duckdb over parquet   : {plain_cmd * 1000:7.0f} ms")
    print(
        f"C failstore sql (CLI process)     : {cmd * 1000:7.0f} ms   C/D {cmd / plain_cmd:.2f}"
        "  (target <= 1.5)"
    )

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
