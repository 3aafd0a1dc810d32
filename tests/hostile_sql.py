"""The hostile SQL cases of ``tests/fixtures/hostile_sql.sql`` and what the three levels that
refuse them (guard, SQL session, CLI) need: the cases, a small real store, a snapshot of its
tables and a batch driver that runs many ``failstore sql`` calls in one subprocess.

The fixture's format is described in its header.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from failstore.queries.sql.stored import builtin_queries
from failstore.schemas import IMAGE_BASE_FIELDS, MODELS_SCHEMA, PREDICTIONS_SCHEMA, clip_fields

FIXTURE = Path(__file__).parent / "fixtures" / "hostile_sql.sql"

# The tables of the store every case runs against (and that {KNOWN} lists).
IMAGES_SCHEMA = pa.schema(
    [*IMAGE_BASE_FIELDS, *clip_fields(4, 3), pa.field("attr_background", pa.string())]
)
SCHEMAS = {"images": IMAGES_SCHEMA, "models": MODELS_SCHEMA, "predictions": PREDICTIONS_SCHEMA}


@dataclass(frozen=True)
class Case:
    sql: str
    message: str  # the exact one-line refusal; the CLI prints "error: " + message
    line: int  # where the case starts in the fixture
    section: str

    @property
    def id(self) -> str:
        return " ".join(self.sql.split()) or repr(self.sql)


def known_text(tables: list[str] | None = None) -> str:
    """What the guard appends to an unknown-table refusal for the test store."""
    names = ", ".join(sorted(tables if tables is not None else SCHEMAS))
    return f"Known tables: {names}; stored queries: {', '.join(sorted(builtin_queries()))}"


def parse(text: str, known: str) -> list[Case]:
    """The cases of a fixture text (see the fixture's header for the format)."""
    defines: dict[str, str] = {"KNOWN": known}
    cases: list[Case] = []
    section = ""
    block: list[tuple[int, str]] = []

    def close() -> None:
        if not block:
            return
        first = block[0][0]
        *sql_lines, (last_no, last) = block
        if not last.startswith("error: ") or not sql_lines:
            raise ValueError(f"{FIXTURE.name}:{first}: a case is SQL lines then 'error: <message>'")
        template = last[len("error: ") :]
        names = re.findall(r"\{([A-Z_]+)\}", template)
        unknown = [n for n in names if n not in defines]
        if unknown:
            raise ValueError(f"{FIXTURE.name}:{last_no}: undefined {unknown}")
        message = re.sub(r"\{([A-Z_]+)\}", lambda m: defines[m.group(1)], template)
        cases.append(Case("\n".join(s for _, s in sql_lines), message, first, section))
        block.clear()

    for no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            close()
        elif line.startswith("## "):
            close()
            section = line[3:].strip()
        elif line.startswith("#"):
            continue
        elif line.startswith("@define "):
            close()
            name, sep, value = line[len("@define ") :].partition(" = ")
            if not sep or not re.fullmatch(r"[A-Z_]+", name):
                raise ValueError(f"{FIXTURE.name}:{no}: bad @define")
            defines[name] = value
        else:
            block.append((no, line))
    close()
    seen: set[str] = set()
    for c in cases:
        if c.sql in seen:
            raise ValueError(f"{FIXTURE.name}:{c.line}: duplicate case {c.sql!r}")
        seen.add(c.sql)
    return cases


def load_cases() -> list[Case]:
    return parse(FIXTURE.read_text(encoding="utf-8"), known_text())


CASES = load_cases()


# ----------------------------------------------------------------------------- a real store


def make_store(path: Path) -> Any:
    """A small real store holding exactly the tables images, models and predictions."""
    from failstore.store import Store

    store = Store.init(path)
    n = 4
    store.upsert(
        "images",
        pa.Table.from_pylist(
            [
                {
                    "image_id": f"id{i}",
                    "uri": f"/data/{i}.png",
                    "split": "test",
                    "label": ["cat", "dog"][i % 2],
                    "width": 32,
                    "height": 24,
                    "clip_model": "tiny-clip",
                    "clip_embedding": [float(i == j) for j in range(4)],
                    "tag_scores": [0.1, 0.2, 0.3],
                    "tags": [["grass"], ["snow"]][i % 2],
                    "attr_background": ["grass", "snow"][i % 2],
                }
                for i in range(n)
            ],
            schema=IMAGES_SCHEMA,
        ),
        schema=IMAGES_SCHEMA,
    )
    store.upsert(
        "predictions",
        pa.Table.from_pylist(
            [
                {
                    "model": "m1",
                    "image_id": f"id{i}",
                    "target": ["cat", "dog"][i % 2],
                    "prediction": "cat",
                    "prediction_index": 0,
                    "confidence": 0.5 + 0.1 * i,
                    "correct": i % 2 == 0,
                    "probabilities": [0.6, 0.4],
                    "embedding": [0.0, 1.0],
                }
                for i in range(n)
            ],
            schema=PREDICTIONS_SCHEMA,
        ),
        schema=PREDICTIONS_SCHEMA,
    )
    store.upsert(
        "models",
        pa.Table.from_pylist(
            [{"name": "m1", "role": "target", "class_names": ["cat", "dog"]}],
            schema=MODELS_SCHEMA,
        ),
        schema=MODELS_SCHEMA,
    )
    assert store.table_names() == sorted(SCHEMAS)
    return store


def snapshot(path: Path) -> dict[str, tuple[int, list[dict[str, Any]]]]:
    """Every table's Lance version and rows, read afresh from disk."""
    from failstore.store import Store

    store = Store(path)
    return {n: (store.version(n), store.read(n).to_pylist()) for n in store.table_names()}


# ----------------------------------------------------------------------------- the CLI in batches

# Runs `failstore --store S sql QUERY` for each query of a JSON list on stdin, in this one
# process, through the CLI's entry point; prints [{"code", "stdout", "stderr", "versions"}, ...]
# as JSON, with every table's Lance version read from disk after each query.
_DRIVER = """
import contextlib, io, json, sys
from failstore.cli.app import main
from failstore.store import Store
from hostile_sql import sql_args
store, queries = sys.argv[1], json.load(sys.stdin)
results = []
for q in queries:
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(["--store", store, "sql", *sql_args(q)])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    versions = Store(store).versions()
    results.append(
        {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue(), "versions": versions}
    )
sys.__stdout__.write(json.dumps(results))
"""


def sql_args(query: str) -> list[str]:
    """The arguments after ``sql``: a query starting with "-" (a comment) follows "--", as it
    must on any command line, or it would be read as an option."""
    return ["--", query] if query.startswith("-") else [query]


def run_cli_batch(store: Path, queries: list[str]) -> list[dict[str, Any]]:
    """Exit code, stdout, stderr and the table versions after ``failstore --store STORE sql Q``
    for each query, all run in one subprocess (one ~1 s interpreter start, not one per query)."""
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(store)],
        input=json.dumps(queries),
        cwd=Path(__file__).parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    results: list[dict[str, Any]] = json.loads(proc.stdout)
    assert len(results) == len(queries)
    return results


def failstore_command() -> list[str]:
    """The installed ``failstore`` script next to this interpreter (or the entry point)."""
    script = Path(sys.executable).parent / "failstore"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from failstore.cli.app import main; main()"]
