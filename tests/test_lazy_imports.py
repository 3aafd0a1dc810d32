"""`failstore --help` and the SQL path must not import torch (nor scipy.stats: ~0.6 s); the SQL
path does not build the analysis commands either (failstore.queries.framework)."""

from __future__ import annotations

import subprocess
import sys

import pyarrow as pa

from failstore import schemas
from failstore.store import Store

PROBE = """
import sys
from failstore.cli.app import main
try:
    main({argv!r})
except SystemExit as e:
    code = e.code
else:
    code = 0
HEAVY = ('torch', 'open_clip', 'torchvision', 'timm', 'scipy.stats', 'failstore.queries.framework')
heavy = sorted(m for m in HEAVY if m in sys.modules)
print('HEAVY=' + ','.join(heavy), file=sys.stderr)
"""


def _heavy(argv: list[str]) -> str:
    r = subprocess.run(
        [sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True
    )
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("HEAVY=")]
    assert line, r.stderr
    return line[-1][len("HEAVY=") :]


def test_help_does_not_import_torch():
    assert _heavy(["--help"]) == "failstore.queries.framework"  # --help lists the analyses


def test_sql_does_not_import_torch(tmp_path):
    store = Store.init(tmp_path / "s")
    store.upsert(
        "ingest_errors",
        pa.table(
            {"uri": ["a"], "reason": ["x"], "time": [None]}, schema=schemas.INGEST_ERRORS_SCHEMA
        ),
    )
    assert (
        _heavy(["--store", str(store.path), "sql", "SELECT count(*) AS n FROM ingest_errors"]) == ""
    )


def test_serve_does_not_import_torch():
    """`failstore serve` and the whole serve package (app, API, pages, report) stay light."""
    assert _heavy(["serve", "--help"]) == ""
    probe = (
        "import sys\n"
        "import failstore.serve.app, failstore.serve.report, failstore.cli.commands_serve\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'open_clip', 'timm', 'captum') "
        "if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr
