"""The `demo` report and command, and `init`, through the CLI entry point in this process.

`failstore demo` itself trains models for minutes (test_demo_acceptance.py and
test_demo_custom_world.py run it); here ``run_demo`` is replaced by a canned result so the
command's wiring (options passed on, the report, ``--format json``) is checked exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from failstore.cli.app import main
from failstore.cli.commands_demo import print_report
from failstore.demo.barlow_findings import LeafFinding
from failstore.demo.ces_findings import CesFinding
from failstore.demo.findings import Finding
from failstore.demo.planted_modes import PlantedMode
from failstore.demo.run import DemoResult, dumps
from failstore.store import MARKER

DOG_SQL = (
    "SELECT uri, prediction FROM samples WHERE split = 'test' AND label = 'dog' "
    "AND list_contains(tags, 'snow')"
)


def finding(planted: str, cls: str, rank: int | None, tags: list[str], **kw: Any) -> Finding:
    values: dict[str, Any] = {"size": 40, "error_rate": None, "class_error_rate": None,
                              "holds": None, "eval_error_rate": None, "sql": DOG_SQL}  # fmt: skip
    return Finding(planted, cls, rank is not None, rank, tags, **{**values, **kw})


DOGS_CLIP = finding("dogs on snow", "dog", 1, ["small", "snow"], error_rate=0.625,
                    class_error_rate=0.2, holds=True, eval_error_rate=0.6, covered=30,
                    planted_size=48, covered_errors=21, planted_errors=28)  # fmt: skip
BIRDS_CLIP = finding("birds on sand", "bird", None, [], size=None, class_error_rate=0.1,
                     sql="SELECT 1", planted_size=90, planted_errors=9)  # fmt: skip
DOGS_BARLOW = LeafFinding(
    "dogs on snow", "dog", True, 2, "feature 3 > 0.5", "snow, small", 0.75, 0.5, 0.9, 0.6,
    True, "SELECT 1",
)  # fmt: skip
BIRDS_BARLOW = LeafFinding("birds on sand", "bird", False, None, None, None, None, None, None,
                           None, False, None)  # fmt: skip
DOGS_ATTR = finding("dogs on snow", "dog", 2, ["attr_size=small"], error_rate=0.5,
                    class_error_rate=0.2, holds=False, eval_error_rate=0.25)  # fmt: skip
DOGS_RULE = "small animals on snow are cats (train): when attr_size = small, set class = cat 1"
BIRDS_RULE = "birds live on sand (train): when class = bird, set attr_background = sand 1"
MODES = [
    PlantedMode("dogs on snow", 1, DOGS_RULE, "dog", "val", 48, 28, 28 / 48, 0.44, 0.71, 300,
                0.2, 28 / 48 / 0.2, True),
    PlantedMode("dogs on snow", 1, DOGS_RULE, "dog", "test", 50, 31, 0.62, 0.48, 0.74, 310,
                0.21, 0.62 / 0.21, True),
    PlantedMode("birds on sand", 0, BIRDS_RULE, "bird", "val", 90, 9, 0.1, 0.05, 0.18, 200, 0.1,
                1.0, False),
    PlantedMode("birds on sand", 0, BIRDS_RULE, "bird", "test", 88, 8, 8 / 88, 0.05, 0.17, 210,
                0.08, 8 / 88 / 0.08, False),
]
BROKEN = (
    "warning: rule 0 (birds live on sand (train): when class = bird, set attr_background = sand "
    "1) did not take: 'birds on sand' errs at 0.09 (95 % CI 0.05..0.17, 88 images) against the "
    "class's 0.08 (ratio 1.1x) on test; the world promises >= 2x the class's error rate and "
    ">= 0.3\n"
)


def canned(store: Path = Path("/stores/demo")) -> DemoResult:
    # Metric names as the demo trainers write them (train_target.py, train_robust.py).
    return DemoResult(
        store=store,
        spec_name="default",
        spec_hash="0123456789abcdef0123",
        world_dir=Path("/cache/demo/0123456789abcdef0123/world"),
        ingest_args=["--target", "/m/target.pt", "--robust", "/m/robust.pt"],
        metrics={
            "target": {
                "train_accuracy": 0.9512,
                "val_accuracy": 0.9,
                "test_accuracy": 0.8734,
                "config": {"lr": 0.1},
            },
            "robust": {
                "train_accuracy": 0.85,
                "test_accuracy": 0.8123,
                "clean_accuracy": 0.8123,
                "adv_accuracy": 0.4567,
                "adv_eval_images": 256,
            },
            "clip": {"seconds": 12.5},
            "seconds": 99.0,
        },
        findings=[DOGS_CLIP, BIRDS_CLIP],
        findings_attr=[DOGS_ATTR],
        tag_macro_f1=0.71234,
        seconds={"total": 1.0},
        barlow=[DOGS_BARLOW, BIRDS_BARLOW],
        ces=[CesFinding("dogs on snow", 12, 0.9166, 1.0, 2, 0.25)],
        planted_modes=MODES,
        report=Path("/stores/demo-report/index.html"),
    )


TEXT_LINES = [
    "failstore demo: world 'default' (0123456789ab), store /stores/demo",
    "models: target accuracy train 0.951 / test 0.873; robust clean 0.812 / adversarial 0.457; "
    "tagger macro-F1 on test 0.712",
    "ingest specs: failstore ingest WORLD/manifest.parquet --target /m/target.pt "
    "--robust /m/robust.pt",
    "planted failure modes vs. slices found (CLIP tags; searched on val, checked on test)",
    "planted failure modes vs. slices found (attribute columns; searched on val, checked on test)",
    "planted failure modes: did each rule take? (>= 2x class error, >= 0.30)",
    "planted failure modes: outcomes",
    "found: the rule took and a slice names it (its rank in the class); missed: the rule took "
    "but no slice names it (an analysis miss);",
    "not learned: the target does not fail there as promised (a world miss)",
    "planted failure modes vs. Barlow leaves (robust features, val, depth 2)",
    "purity: share of the leaf's failures in the mode; recall: share of the mode's failures in "
    "the leaf; explains: purity >= 0.6 and the description names the cause",
    "planted failure modes vs. concept explanations (CES, test mistakes)",
    "see the images:",
    f'  failstore --store /stores/demo sql "{DOG_SQL}"',
    '  failstore --store /stores/demo sql "SELECT 1"',
    "next: failstore --store /stores/demo slices --split val --eval-split test",
    "browse: failstore --store /stores/demo serve",
    "report: file:///stores/demo-report/index.html",
]
HEADER = ["planted mode", "slice found", "rank", "error rate", "class error rate", "holds on test",
          "covers (of planted)", "covers (of its errors)"]
TABLE_ROWS = [
    HEADER,
    ["dogs on snow", "dog: small + snow", "1", "0.62", "0.20", "yes", "30/48 (62%)",
     "21/28 (75%)"],
    ["birds on sand", "not found", "-", "-", "0.10", "-", "-", "-"],
    HEADER,
    ["dogs on snow", "dog: attr_size=small", "2", "0.50", "0.20", "no", "-", "-"],
    ["planted mode", "split", "images", "error rate", "95 % interval", "class error rate",
     "ratio", "took"],
    ["dogs on snow", "val", "48", "0.58", "0.44 .. 0.71", "0.20", "2.9x", "yes"],
    ["dogs on snow", "test", "50", "0.62", "0.48 .. 0.74", "0.21", "3.0x", "yes"],
    ["birds on sand", "val", "90", "0.10", "0.05 .. 0.18", "0.10", "1.0x", "no"],
    ["birds on sand", "test", "88", "0.09", "0.05 .. 0.17", "0.08", "1.1x", "no"],
    ["planted mode", "with CLIP tags", "with attribute columns"],
    ["dogs on snow", "found (rank 1)", "found (rank 2)"],
    ["birds on sand", "not learned", "not learned"],
    ["planted mode", "best valid leaf", "ER", "EC", "description", "purity", "recall", "explains"],
    ["dogs on snow", "dog: feature 3 > 0.5", "0.75", "0.50", "snow, small", "0.90", "0.60", "yes"],
    ["birds on sand", "no valid leaf", "-", "-", "-", "-", "-", "no"],
    ["planted mode", "mistakes", "top 3 name the cause", "sets of 5", "random concepts"],
    ["dogs on snow", "12", "0.92", "1.00", "0.25"],
]


@pytest.fixture(autouse=True)
def wide_plain_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps at the terminal width
    for var in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(var, raising=False)


def split_report(text: str) -> tuple[list[str], list[list[str]]]:
    """The report's text lines (table titles stripped of centring) and its table rows."""
    lines, rows = [], []
    for line in text.splitlines():
        if line.startswith(("┃", "│")):
            rows.append([cell.strip() for cell in line.strip("┃│").replace("┃", "│").split("│")])
        elif line and line[0] not in "┏┡└":
            lines.append(line.strip() if "planted failure modes" in line else line)
    return lines, rows


def test_print_report_golden(capsys: pytest.CaptureFixture[str]) -> None:
    print_report(canned())
    out = capsys.readouterr().out
    assert "\x1b[" not in out
    assert split_report(out) == (TEXT_LINES, TABLE_ROWS)


def test_print_report_without_metrics_shows_dashes(capsys: pytest.CaptureFixture[str]) -> None:
    result = canned()
    result.metrics = {"target": {"train_accuracy": True}, "robust": "not a dict"}
    print_report(result)
    lines, _ = split_report(capsys.readouterr().out)
    assert lines[1] == (
        "models: target accuracy train - / test -; robust clean - / adversarial -; "
        "tagger macro-F1 on test 0.712"
    )


def call(*args: str) -> int:
    try:
        main(list(args))
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@pytest.fixture
def fake_run_demo(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def run_demo(store_path: Any = None, **kwargs: Any) -> DemoResult:
        kwargs["log"]("world: reusing /cache/demo/x/world")
        calls.append({"store_path": store_path, **kwargs})
        return canned()

    monkeypatch.setattr("failstore.demo.run.run_demo", run_demo)
    return calls


def test_demo_command_prints_the_report(
    fake_run_demo: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world = tmp_path / "w.yaml"
    code = call("--store", str(tmp_path / "s"), "demo", "--world", str(world), "--quick",
                "--workers", "0")  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0  # a rule that did not take is a warning, at the end, without --strict
    assert err == "world: reusing /cache/demo/x/world\n" + BROKEN  # progress goes to stderr
    assert split_report(out) == (TEXT_LINES, TABLE_ROWS)
    (kwargs,) = fake_run_demo
    assert kwargs["store_path"] == tmp_path / "s"
    assert (kwargs["world"], kwargs["quick"], kwargs["workers"]) == (world, True, 0)
    assert kwargs["progress"] is False  # stderr is not a terminal here
    assert kwargs["report_dir"] == ""  # the default: STORE-report beside the store


def test_demo_command_json(
    fake_run_demo: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert call("demo", "--format", "json") == 0
    out, err = capsys.readouterr()
    assert out == dumps(canned()) + "\n"
    assert err == "world: reusing /cache/demo/x/world\n" + BROKEN
    data = json.loads(out)
    assert data["metrics"]["robust"]["adv_accuracy"] == 0.4567
    assert [f["planted"] for f in data["findings"]] == ["dogs on snow", "birds on sand"]
    assert data["findings_attributes"][0]["tags"] == ["attr_size=small"]
    (kwargs,) = fake_run_demo
    assert (kwargs["store_path"], kwargs["world"], kwargs["quick"]) == (None, None, False)
    assert kwargs["workers"] is None
    assert data["report"] == "/stores/demo-report/index.html"


def test_demo_strict_exits_1_when_a_rule_did_not_take(
    fake_run_demo: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert call("demo", "--format", "json", "--strict") == 1
    out, err = capsys.readouterr()
    assert err == ("world: reusing /cache/demo/x/world\n" + BROKEN
                   + "error: 1 planted rule(s) did not take (--strict)\n")
    data = json.loads(out)
    assert data["outcomes"] == [
        {"planted": "dogs on snow", "learned": True, "clip_tags": "found (rank 1)",
         "attributes": "found (rank 2)"},
        {"planted": "birds on sand", "learned": False, "clip_tags": "not learned",
         "attributes": "not learned"},
    ]
    assert data["broken_promises"] == [BROKEN[len("warning: "):-1]]
    assert [m["split"] for m in data["planted_modes"]] == ["val", "test", "val", "test"]


def test_demo_strict_exits_0_when_every_rule_took(
    fake_run_demo: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(f"{__name__}.MODES", MODES[:2])
    assert call("demo", "--format", "json", "--strict") == 0
    assert capsys.readouterr().err == "world: reusing /cache/demo/x/world\n"


@pytest.mark.parametrize(
    ("args", "report_dir"),
    [(["--report", "out/rep"], Path("out/rep")), (["--no-report"], None), ([], "")],
)
def test_demo_report_options(fake_run_demo: list[dict[str, Any]], args, report_dir) -> None:
    assert call("demo", "--format", "json", *args) == 0
    (kwargs,) = fake_run_demo
    assert kwargs["report_dir"] == report_dir


# ----------------------------------------------------------------------------- init


def test_init_creates_the_store_and_a_second_init_finds_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "new" / "store"
    assert call("init", str(path)) == 0
    assert capsys.readouterr() == (f"store ready at {path}\n", "")
    marker = json.loads((path / MARKER).read_text())
    assert marker["format"] == 1 and set(marker) == {"format", "created"}
    assert sorted(p.name for p in path.iterdir()) == [MARKER]
    before = (path / MARKER).read_text()
    assert call("init", str(path)) == 0
    assert capsys.readouterr() == (f"store ready at {path}\n", "")
    assert (path / MARKER).read_text() == before  # not recreated


def test_init_uses_the_global_store_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert call("--store", str(tmp_path / "g"), "init") == 0
    assert capsys.readouterr().out == f"store ready at {tmp_path / 'g'}\n"
    assert (tmp_path / "g" / MARKER).is_file()


@pytest.mark.parametrize("where", ["a_file", "a_file/sub"])
def test_init_on_a_bad_path_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    (tmp_path / "a_file").write_text("not a directory")
    assert call("init", str(tmp_path / where)) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1
    assert str(tmp_path / "a_file") in err and "Traceback" not in err
    assert (tmp_path / "a_file").read_text() == "not a directory"
    if where == "a_file":
        assert err == (
            f"error: {tmp_path / 'a_file'} is a file, not a store directory; "
            "pass --store with a directory (new, empty, or an existing store)\n"
        )
    else:
        assert err == (
            f"error: cannot create the store directory {tmp_path / where} (Not a directory); "
            "pass --store with a path whose parent is a writable directory\n"
        )


def test_init_refuses_a_non_empty_directory_that_is_not_a_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
    assert call("init", str(tmp_path / "photos")) == 1
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'photos'} is not a failstore store (no failstore.json) and is not "
        "empty; pass --store with a new or empty directory, or an existing store\n"
    )
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["cat.jpg"]
