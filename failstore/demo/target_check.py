"""Did a world's rules take, measured with the target alone (no robust model, no tagger, no
store): generate the world, train its target as ``failstore demo`` does (same trainer, config
and seed) and measure every planted slice (``planted_modes.measure``). Used by
tests/test_demo_rules_take.py and benchmarks/measure_rule_worlds.py; the demo itself measures
from the store after ingest."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from failstore.demo.planted_modes import PlantedMode, measure
from failstore.demo.spec import WorldSpec, planted_slices

if TYPE_CHECKING:
    from failstore.demo.train_target import TargetConfig


def target_only_modes(spec: WorldSpec, config: TargetConfig | None = None) -> list[PlantedMode]:
    """Planted modes of ``spec``'s world under its trained target (``config``: a
    ``TargetConfig``, default the full one; pass ``TargetConfig.quick()`` with a
    ``quick_spec``)."""
    from failstore.demo import nets
    from failstore.demo.train_target import TargetConfig, train_target
    from failstore.demo.world import generate

    cfg = config or TargetConfig()
    w = generate(spec)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "target"
        train_target(w.images, w.labels, w.class_names, w.split, out, cfg, seed=spec.seed)
        model, meta = nets.load_exported(out)
    norm = nets.Normalizer(meta["preprocess"]["mean"], meta["preprocess"]["std"])
    pred = nets.predict_logits(model, nets.to_tensor(w.images), norm).argmax(1).numpy()
    return measure(w.label_names, w.attributes, w.split, pred == np.asarray(w.labels), spec,
                   planted_slices(spec))  # fmt: skip
