"""Do the six rule worlds' rules take at full size, not only on quick (issue 18)?

    .venv/bin/python benchmarks/measure_rule_worlds.py           # full size: ~2 min per world
    .venv/bin/python benchmarks/measure_rule_worlds.py --quick   # the worlds the test checks
    .venv/bin/python benchmarks/measure_rule_worlds.py --only cows-on-grass,blurry-bears

Each world of ``tests/rule_worlds.py`` (written as a user would) is generated and its target
trained as ``failstore demo`` does (``--quick``: as ``failstore demo --quick`` does), with the
same trainer, config and seed; only the target is trained (the robust model and the tagger do not
change what the target learns). Prints, per planted slice and evaluation split, the slice's and
its class's error rates and their ratio, and whether the rule took (on test: >= 2x and >= 0.3).
Figures, not assertions: the quick worlds are asserted by the test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from rule_worlds import WORLDS  # noqa: E402

from failstore.demo.planted_modes import PlantedMode, learned  # noqa: E402
from failstore.demo.spec import load_spec  # noqa: E402
from failstore.demo.target_check import target_only_modes  # noqa: E402
from failstore.demo.train_target import TargetConfig  # noqa: E402
from failstore.demo.world import quick_spec  # noqa: E402


def measure_world(name: str, quick: bool) -> tuple[list[PlantedMode], float]:
    spec = load_spec(WORLDS[name])
    t0 = time.perf_counter()
    if quick:
        modes = target_only_modes(quick_spec(spec), TargetConfig.quick())
    else:
        modes = target_only_modes(spec, TargetConfig())
    return modes, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the quick worlds (the test's)")
    ap.add_argument("--only", default="", help="comma-separated world names")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or list(WORLDS)
    size = "quick" if args.quick else "full"
    for name in names:
        modes, seconds = measure_world(name, args.quick)
        took = learned(modes)
        for m in modes:
            print(f"{name} ({size}, {seconds:.0f} s): '{m.planted}' on {m.split}: "
                  f"{m.error_rate:.2f} vs {m.class_error_rate:.2f} ({m.ratio:.2f}x, "
                  f"{m.size} images); took: {took[m.planted]}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
