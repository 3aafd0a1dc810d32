"""Benchmark of ``failstore publish`` (and a look at ``failstore export``).

    .venv/bin/python benchmarks/bench_publish.py                 # 1,000,000 rows x 25 columns
    .venv/bin/python benchmarks/bench_publish.py --rows 200000 --repeat 1
    .venv/bin/python benchmarks/bench_publish.py --url postgresql://u@host/db   # your server

Without ``--url`` it starts a throwaway PostgreSQL server (tests/pg_server.py). The store holds
one table of N rows x 25 columns (8 text, 6 bigint, 6 double precision, 2 boolean, 1
timestamptz, 2 text[]), the shape of ``images`` + ``predictions`` without vectors. Timed,
each --repeat times, interleaved, median printed:

* **bare**: ``adbc_ingest`` of the same rows as one in-memory Arrow table, read from the Lance
  dataset beforehand (not timed), in one transaction: the floor;
* **publish**: ``failstore publish --full`` of the store, in a child process (its wall time,
  start-up excluded, and its peak RSS; the RSS of the same process after opening the store and
  importing everything is printed beside it);
* **publish, unchanged**: a second publish with nothing changed (target < 1 s);
* **psycopg COPY** (if psycopg is installed): the same Arrow table as CSV text
  (``pyarrow.csv``) through ``COPY ... FROM STDIN``, the other driver the issue names.

It prints the ratio publish / bare (target <= 1.5) and writes nothing but temporary files.
Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def make_table(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i:03d}" for i in range(300)])
    cols: dict[str, pa.Array] = {"image_id": pa.array([f"{i:064x}" for i in range(n)])}
    for i in range(7):
        cols[f"text_{i}"] = pa.array(words[rng.integers(0, len(words), n)])
    for i in range(6):
        cols[f"int_{i}"] = pa.array(rng.integers(0, 1 << 40, n))
    for i in range(6):
        cols[f"float_{i}"] = pa.array(rng.random(n))
    for i in range(2):
        cols[f"flag_{i}"] = pa.array(rng.random(n) < 0.5)
    cols["at"] = pa.array(
        np.datetime64("2026-01-01") + rng.integers(0, 10**12, n).astype("timedelta64[us]"),
        pa.timestamp("us", tz="UTC"),
    )
    offsets = np.arange(0, 2 * n + 1, 2, dtype=np.int32)
    for i in range(2):
        values = pa.array(words[rng.integers(0, len(words), 2 * n)])
        cols[f"tags_{i}"] = pa.ListArray.from_arrays(pa.array(offsets), values)
    return pa.table(cols)


def make_store(n: int, folder: Path):
    from failstore.store import Store

    store = Store.init(folder / "store")
    table = make_table(n)
    step = 200_000
    for i in range(0, n, step):
        store.append("bench_rows", table.slice(i, step))
    return store


def bare_ingest(url: str, table: pa.Table) -> float:
    import adbc_driver_postgresql.dbapi as pg

    with pg.connect(url) as con, con.cursor() as cur:
        cur.execute("CREATE SCHEMA IF NOT EXISTS bench_bare")
        t0 = time.perf_counter()
        cur.adbc_ingest("rows", table, mode="replace", db_schema_name="bench_bare")
        con.commit()
        return time.perf_counter() - t0


def psycopg_copy(url: str, table: pa.Table) -> float | None:
    try:
        import psycopg
    except ImportError:
        return None
    import io

    import pyarrow.csv as pacsv

    t0 = time.perf_counter()
    with psycopg.connect(url) as con, con.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS bench_bare.rows_psycopg")
        cur.execute("CREATE TABLE bench_bare.rows_psycopg (LIKE bench_bare.rows)")
        # lists as PostgreSQL array literals: {a,b}
        cols = []
        for name in table.column_names:
            col = table[name]
            if pa.types.is_list(col.type):
                import pyarrow.compute as pc

                joined = pc.binary_join(col, ",")
                col = pc.binary_join_element_wise("{", joined, "}", "")
            cols.append(col)
        csv_table = pa.table(cols, names=table.column_names)
        with cur.copy("COPY bench_bare.rows_psycopg FROM STDIN (FORMAT csv)") as copy:
            for batch in csv_table.to_batches(65536):
                buf = io.BytesIO()
                pacsv.write_csv(
                    pa.Table.from_batches([batch]),
                    buf,
                    pacsv.WriteOptions(include_header=False),
                )
                copy.write(buf.getvalue())
        con.commit()
    return time.perf_counter() - t0


CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
from failstore.store import Store
from failstore.feeds.publish import publish
import adbc_driver_postgresql.dbapi, duckdb, lance  # noqa: F401 - imported before the baseline
store = Store({store!r})
store.versions()
def hwm():  # peak RSS of this process (VmHWM starts afresh at exec; ru_maxrss would not)
    line = [x for x in open("/proc/self/status") if x.startswith("VmHWM")][0]
    return int(line.split()[1]) / 1024
base = hwm()
t0 = time.perf_counter()
summary = publish(store, {url!r}, schema="bench_failstore", full={full!r}, batch_rows={batch!r})
seconds = time.perf_counter() - t0
peak = hwm()
print(json.dumps({{"seconds": seconds, "base_mib": base, "peak_mib": peak,
                  "published": len(summary.published)}}))
"""


def publish_child(url: str, store_path: Path, full: bool, batch: int) -> dict:
    code = CHILD.format(root=str(ROOT), store=str(store_path), url=url, full=full, batch=batch)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=65536, help="rows per streamed batch")
    ap.add_argument("--url", help="a PostgreSQL URL (default: a throwaway server)")
    args = ap.parse_args()

    server = None
    url = args.url
    if url is None:
        import pg_server

        server = pg_server.start()
        url = server.url
    try:
        with tempfile.TemporaryDirectory(prefix="bench_publish_") as tmp:
            store = make_store(args.rows, Path(tmp))
            table = store.read("bench_rows")
            mib = table.nbytes / 2**20
            print(f"{args.rows:,} rows x {table.num_columns} columns ({mib:,.0f} MiB in Arrow)")
            bare, full, unchanged, pg3 = [], [], [], []
            for r in range(args.repeat):
                bare.append(bare_ingest(url, table))
                run = publish_child(url, store.path, True, args.batch)
                full.append(run["seconds"])
                same = publish_child(url, store.path, False, args.batch)
                unchanged.append(same["seconds"])
                p = psycopg_copy(url, table)
                if p is not None:
                    pg3.append(p)
                print(
                    f"  run {r + 1}: bare {bare[-1]:.2f} s, publish {full[-1]:.2f} s "
                    f"(RSS {run['base_mib']:.0f} -> {run['peak_mib']:.0f} MiB), unchanged "
                    f"{unchanged[-1]:.2f} s ({same['published']} copied)"
                    + (f", psycopg COPY {p:.2f} s" if p is not None else "")
                )
            b, f, u = median(bare), median(full), median(unchanged)
            print(f"bare ADBC ingest   {b:.2f} s")
            print(f"failstore publish  {f:.2f} s   ratio {f / b:.2f} (target <= 1.5)")
            print(f"publish, unchanged {u:.2f} s   (target < 1 s)")
            if pg3:
                print(f"psycopg CSV COPY   {median(pg3):.2f} s   ratio {median(pg3) / b:.2f}")
            print(f"peak RSS of the publishing process: {run['peak_mib']:.0f} MiB "
                  f"(after opening the store: {run['base_mib']:.0f} MiB)")  # fmt: skip
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
