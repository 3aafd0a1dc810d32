"""Reading while a writer commits (issue 9: 2 of 55 `failstore sql` processes run during an
ingest died with SIGABRT at exit, "terminate called after throwing an instance of ...").

A real `failstore ingest` process loops over fresh folders while `failstore sql` processes and
in-process sessions read the store. Every read must succeed, see only whole commits (the image
count is the first ingest's plus a whole number of folders) and never go back in time; no
process may die at exit. The session closes DuckDB in an exit hook (`close_sessions`), before
the interpreter tears its modules down; a test checks that it does.

Budget: a `failstore sql` process costs ~1.5-1.8 s of CPU here (1.3 s of imports), so 200 of
them take ~8 minutes on 2 cores beside the ingest. The suite runs 15 processes (3 at a time)
and 200 in-process queries, each on a fresh session closed after it (36 s in all on 2 idle
cores, ~85 s under a load average of 5-8);
FAILSTORE_TEST_SQL_PROCESSES=200 runs the full loop of processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from test_concurrent_writers import FACTORY, _ingest

from failstore.queries.sql.session import SqlSession, make_user_query, session
from failstore.store import Store

PER_FOLDER = 150  # images per ingest: under commit_every, so one commit per table
FOLDERS = 40
PROCESSES = int(os.environ.get("FAILSTORE_TEST_SQL_PROCESSES", "15"))
IN_PROCESS = 200
QUERIES = {
    "images": "SELECT count(*) AS n FROM images",
    "join": "SELECT count(*) AS n FROM predictions AS p JOIN images AS i USING (image_id)",
    "stored": "SELECT count(*) AS n FROM wrong",  # a saved query over the stored `samples`
}
DIED = ("terminate called", "Fatal Python error", "Aborted", "Segmentation fault")


def _folder(root: Path, k: int) -> Path:
    """root/f<k>/<label>/<i>.png: PER_FOLDER images no other folder holds."""
    from PIL import Image

    rng = np.random.default_rng(1000 + k)
    labels = ["red", "green", "blue"]
    folder = root / f"f{k}"
    for i in range(PER_FOLDER):
        d = folder / labels[i % 3]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return folder


class Writer:
    """`failstore ingest` of one fresh folder after another; stopping kills the running one
    (a killed ingest leaves whole commits only, see docs/store-schema.md)."""

    def __init__(self, store: Path, root: Path, env: dict[str, str]) -> None:
        self.store, self.root, self.env = store, root, env
        self.stop = threading.Event()
        self.ingests = 0  # finished ones
        self.failures: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for k in range(1, FOLDERS):
            folder = _folder(self.root, k)
            if self.stop.is_set():
                return
            self.proc = _ingest(self.store, folder, self.env)
            _out, err = self.proc.communicate(timeout=600)
            if self.stop.is_set():
                return
            if self.proc.returncode != 0:
                self.failures.append(f"ingest rc {self.proc.returncode}: {err[-2000:]}")
                return
            self.ingests += 1

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self.thread.join(timeout=600)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    mod = tmp_path_factory.mktemp("factory")
    (mod / "fs_conc_factory.py").write_text(FACTORY)
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(mod), e.get("PYTHONPATH", "")])
    e["PYTHONFAULTHANDLER"] = "1"  # a crash prints every thread's Python stack
    return e


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Path:
    """A store with the first folder ingested (by a real process) and a saved query."""
    path = tmp_path_factory.mktemp("sql_beside_ingest") / "store"
    first = _ingest(path, _folder(path.parent / "images", 0), env)
    _out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    wrong = make_user_query("wrong", "SELECT * FROM samples WHERE NOT correct")
    session(Store(path)).save_query(wrong)
    return path


def _check(reads: list[tuple[str, float, float, int]], final: dict[str, int]) -> None:
    """Whole commits only, and never back in time: a read that began after another ended
    sees at least as many rows."""
    for name, _t0, _t1, n in reads:
        assert 0 <= n <= final[name], (name, n, final)
        if name != "stored":
            assert n >= PER_FOLDER and n % PER_FOLDER == 0, (name, n)
    for name in QUERIES:
        mine = sorted((r for r in reads if r[0] == name), key=lambda r: r[1])
        for a in mine:
            for b in mine:
                if a[2] < b[1]:
                    assert a[3] <= b[3], f"{name}: {a[3]} rows, then {b[3]} in a later read"


def _in_process(store: Path, name: str) -> int:
    """One query on a fresh session, closed after it: the teardown the exit hook runs."""
    own = SqlSession(Store(store))
    try:
        return int(own.execute(QUERIES[name]).column("n")[0].as_py())
    finally:
        own.close()


@pytest.mark.slow
def test_sql_beside_an_ingest(store, env):
    """`failstore sql` processes (3 at a time) and in-process sessions beside a real ingest
    loop: all succeed, no process dies at exit, every count is whole commits and monotone."""
    names = list(QUERIES)
    reads: list[tuple[str, float, float, int]] = []  # in-process
    done = threading.Event()

    def process(k: int) -> tuple[str, float, float, subprocess.CompletedProcess[str]]:
        name = names[k % len(names)]
        args = [sys.executable, "-m", "failstore.cli.app", "--store", str(store)]
        t0 = time.monotonic()
        proc = subprocess.run(
            [*args, "sql", QUERIES[name], "-f", "csv"],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        return name, t0, time.monotonic(), proc

    def in_process(writer: Writer) -> None:
        """200 reads, and on until an ingest has committed and the processes are done."""
        while len(reads) < IN_PROCESS or not (writer.ingests or done.is_set()):
            name = names[len(reads) % len(names)]
            t0 = time.monotonic()
            n = _in_process(store, name)
            reads.append((name, t0, time.monotonic(), n))
            time.sleep(0.02)  # leave the processes the CPU

    with Writer(store, store.parent / "images", env) as writer, ThreadPoolExecutor(4) as pool:
        local = pool.submit(in_process, writer)
        runs = list(pool.map(process, range(PROCESSES)))
        done.set()
        local.result()
    assert not writer.failures, writer.failures
    assert writer.ingests >= 1  # the reads overlapped at least one commit
    died = [(name, p.returncode, p.stderr[-3000:]) for name, _, _, p in runs if p.returncode]
    assert not died, f"{len(died)} of {len(runs)} runs failed: {died[:3]}"
    for _name, _t0, _t1, p in runs:
        assert not any(word in p.stderr for word in DIED), p.stderr[-3000:]
        assert p.stdout.splitlines()[0] == "n", p.stdout
    final = {name: _in_process(store, name) for name in QUERIES}
    _check([(name, t0, t1, int(p.stdout.splitlines()[1])) for name, t0, t1, p in runs], final)
    _check(reads, final)
    assert len(reads) >= IN_PROCESS


def test_the_exit_hook_closes_duckdb_before_the_interpreter_tears_down(store):
    """Without the hook, the session's DuckDB connection outlived the program and was
    destroyed while the interpreter tore its modules down (gdb: ~DuckDBPyConnection inside
    finalize_modules). The check registers its own hook first, so it runs after the
    session's."""
    code = (
        "import atexit, sys\n"
        "from failstore.queries.sql import session as S\n"
        "from failstore.store import Store\n"
        "atexit.register(lambda: print('open at exit:', len(S._OPEN)))\n"
        "print(S.run_sql(Store(sys.argv[1]), 'SELECT count(*) AS n FROM images').to_pylist())\n"
        "print('open before exit:', len(S._OPEN))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(store)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1:] == ["open before exit: 1", "open at exit: 0"]


def test_close_closes_every_threads_cursor_and_the_session_reopens(store):
    import duckdb

    own = SqlSession(Store(store))
    cursors = []

    def run() -> None:
        own.execute(QUERIES["join"])
        cursors.append(own._connection())

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run()
    parent = own._con
    own.close()
    own.close()  # idempotent
    for con in [*cursors, parent]:
        with pytest.raises(duckdb.ConnectionException):
            con.execute("SELECT 1")
    assert own.execute(QUERIES["images"]).num_rows == 1  # a new connection
    assert own._connection() not in cursors
    own.close()
