"""``Sanity``: can each attribution method be trusted on this model? (Adebayo et al.)

Three tests, one per run (``test``):

* ``cascading`` / ``independent`` model randomisation: the target is reloaded (``load_model``),
  its blocks re-initialised from the logits down, cumulatively or one at a time
  (:mod:`~failstore.queries.sanity.randomise`), and every method's maps of the same images
  recomputed and compared with the trained model's
  (:func:`~failstore.queries.sanity.similarity.compare`);
* ``spurious``: the maps of a suspected shortcut's images (a slice, or SQL) against the ideal
  "background only" map, beside a control set of the same classes outside it;
* ``reference``: the same images' maps under another target model of the store.

A run writes one row per (method, step, image) to ``sanity_scores`` and one verdict per method
to ``sanity_verdicts`` (:mod:`~failstore.queries.sanity.verdicts`). See docs/sanity.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

from failstore.errors import ConfigError
from failstore.queries.framework.analysis import Analysis
from failstore.queries.framework.frames import check_known, default_model
from failstore.queries.framework.params import Param
from failstore.queries.saliency.compute import class_names
from failstore.queries.saliency.methods import METHODS
from failstore.queries.sanity.selection import TESTS, chosen_images, load_pixels, method_settings
from failstore.queries.sanity.similarity import METRICS
from failstore.queries.sanity.verdicts import SCORES_SCHEMA, VERDICTS_SCHEMA, score_rows, verdicts
from failstore.store import Store

if TYPE_CHECKING:  # pragma: no cover
    from failstore.queries.sanity.runner import Clock

SPURIOUS_METRICS = ("rank_abs", "ssim", "ssim_range1")


class Sanity(Analysis):
    """Explanation debugging tests; parameters mirror `failstore sanity`."""

    name = "sanity"
    result_table = "sanity_verdicts"
    result_schema = VERDICTS_SCHEMA
    extra_tables: ClassVar[dict[str, pa.Schema]] = {"sanity_scores": SCORES_SCHEMA}
    reads = ("images", "predictions", "models")
    params = (
        Param("model", None, "Target model (default: the last ingested).", optional=True),
        Param(
            "methods",
            None,
            "Attribution methods to test (default: all seven).",
            optional=True,
            many=True,
            csv=True,
            choices=tuple(METHODS),
        ),
        Param(
            "test",
            "cascading",
            "cascading or independent model randomisation, spurious (a shortcut's images "
            "against the background map) or reference (against --reference-model).",
            choices=TESTS,
        ),
        Param(
            "images",
            100,
            "Images compared (per group for spurious).",
            kind=int,
            low=2,
            high=100_000,
        ),
        Param(
            "split",
            None,
            "Images of this split (default: test when the store has it).",
            optional=True,
        ),
        Param(
            "classes",
            None,
            "Only images of this class (repeatable).",
            optional=True,
            many=True,
            flag="--class",
        ),
        Param(
            "slice_tags",
            None,
            "Images of this slice of the latest `failstore slices` run "
            "(its tags, comma-separated).",
            optional=True,
            many=True,
            csv=True,
            flag="--slice",
        ),
        Param(
            "where", None, "Images whose `samples` row matches this SQL condition.", optional=True
        ),
        Param(
            "reference_model", None, "With --test reference: the other target model.", optional=True
        ),
        Param(
            "explain",
            "prediction",
            "Explain the top class of the model being explained "
            "(recomputed after each randomisation, as the reference) or the label.",
            choices=("prediction", "label"),
        ),
        Param(
            "metric",
            None,
            "The figure a verdict is decided on (default: ssim for spurious, rank_abs otherwise).",
            optional=True,
            choices=METRICS,
        ),
        Param(
            "threshold",
            0.5,
            "Randomisation: a method fails when the mean figure after the "
            "whole model is randomised is at or above this; reference: the models are told "
            "apart below it.",
            kind=float,
            low=-1,
            high=1,
        ),
        Param(
            "verdict_step",
            None,
            "Cascading: decide on the figure after this many blocks from the top are "
            "randomised (default: all of them, the whole model).",
            optional=True,
            kind=int,
            low=1,
        ),
        Param(
            "layers",
            None,
            "Randomise these blocks (bottom-up, comma-separated) instead of the model's own.",
            optional=True,
            many=True,
            csv=True,
        ),
        Param("seed", 0, "Seed of the re-initialisation.", kind=int, low=0),
        Param("batch_size", 16, "Images attributed at a time.", kind=int, low=1),
        Param("device", "cpu", "Torch device."),
    )
    view_params = ("batch_size", "device")
    run_key = ("model", "test")

    def __init__(
        self,
        model: str | None = None,
        methods: Sequence[str] | None = None,
        test: str = "cascading",
        images: int = 100,
        split: str | None = None,
        classes: Sequence[str] | None = None,
        slice_tags: Sequence[str] | None = None,
        where: str | None = None,
        reference_model: str | None = None,
        explain: str = "prediction",
        metric: str | None = None,
        threshold: float = 0.5,
        verdict_step: int | None = None,
        layers: Sequence[str] | None = None,
        seed: int = 0,
        batch_size: int = 16,
        device: str = "cpu",
    ) -> None:
        self.model = model
        self.methods = methods
        self.test = test
        self.images = images
        self.split = split
        self.classes = classes
        self.slice_tags = slice_tags
        self.where = where
        self.reference_model = reference_model
        self.explain = explain
        self.metric = metric
        self.threshold = threshold
        self.verdict_step = verdict_step
        self.layers = layers
        self.seed = seed
        self.batch_size = batch_size
        self.device = device

    def _resolve(self, store: Store, params: dict[str, Any]) -> dict[str, Any]:
        params["model"] = params["model"] or default_model(store)
        params["methods"] = params["methods"] or list(METHODS)
        if params["split"] is None:
            splits = set(store.read("images", ["split"])["split"].to_pylist())
            params["split"] = "test" if "test" in splits else None
        else:
            check_known(store, "split", [params["split"]], "split")
        if params["classes"]:
            check_known(store, "label", list(params["classes"]), "classes")
        test = params["test"]
        if test == "reference":
            if not params["reference_model"]:
                raise ConfigError(
                    "test 'reference' needs --reference-model (another target model of the store)"
                )
            if params["reference_model"] == params["model"]:
                raise ConfigError("--reference-model is the model under test; name another one")
        elif params["reference_model"]:
            raise ConfigError(f"--reference-model applies to --test reference, not {test!r}")
        if test == "spurious" and not (params["slice_tags"] or params["where"]):
            raise ConfigError(
                "test 'spurious' needs the suspected shortcut's images: --slice TAGS or --where SQL"
            )
        if params["verdict_step"] is not None and test != "cascading":
            raise ConfigError(f"--verdict-step applies to --test cascading, not {test!r}")
        if params["layers"] and test not in ("cascading", "independent"):
            raise ConfigError(f"--layers applies to the randomisation tests, not {test!r}")
        params["metric"] = params["metric"] or ("ssim" if test == "spurious" else "rank_abs")
        if test == "spurious" and params["metric"] not in SPURIOUS_METRICS:
            raise ConfigError(
                f"test 'spurious' compares maps with the background by "
                f"{', '.join(SPURIOUS_METRICS)}; --metric {params['metric']} "
                "is not one of them"
            )
        # what changes a map is part of the run: each method's parameters as used
        params["settings"] = method_settings(params["methods"])
        return params

    derived_params = ("settings",)

    clock_: Clock  # runner.Clock of the latest fit (zero passes when it reused a stored run)

    def fit(self, store: Store, *, reuse: bool = True) -> Sanity:
        """As ``Analysis.fit``; also sets ``clock_``, where this fit's time went: a fit that
        reuses a stored run computes nothing, so its clock has no attribution passes."""
        from failstore.queries.sanity import runner

        self.clock_ = runner.Clock()
        super().fit(store, reuse=reuse)
        return self

    def _compute(self, store: Store, params: dict[str, Any]) -> dict[str, pa.Table]:
        from failstore.models.loading import load_model
        from failstore.queries.sanity import runner

        adapter: Any = load_model(store, params["model"], self.device)
        module = adapter.module
        methods = {m: params["settings"][m] for m in params["methods"]}
        clock = runner.Clock()
        groups = chosen_images(store, params)
        batch = int(self.batch_size)
        explain = params["explain"]
        steps: list[tuple[str | None, Any, list[runner.StepFigures]]] = []
        skipped: list[tuple[str, str]] = []  # (image_id, why): chosen but not compared
        if params["test"] in ("cascading", "independent"):
            px = load_pixels(store, adapter, groups[None], self.device)
            layers = _schedule(module, px.x, params["layers"])
            found = list(
                runner.randomisation(
                    module,
                    px.x,
                    px.label_index,
                    methods,
                    schedule=params["test"],
                    layers=layers,
                    seed=int(params["seed"]),
                    explain=explain,
                    pixel_stats=px.stats,
                    batch_size=batch,
                    clock=clock,
                )
            )
            steps.append((None, px, found))
        elif params["test"] == "spurious":
            for group in ("slice", "control"):
                px = load_pixels(store, adapter, groups[group], self.device, truth=True)
                assert px.background is not None
                found = list(
                    runner.background_likeness(
                        module,
                        px.x,
                        px.label_index,
                        px.background,
                        methods,
                        explain=explain,
                        pixel_stats=px.stats,
                        batch_size=batch,
                        clock=clock,
                    )
                )
                steps.append((group, px, found))
        else:
            other: Any = load_model(store, params["reference_model"], self.device)
            px = load_pixels(store, adapter, groups[None], self.device)
            px2 = load_pixels(store, other, groups[None], self.device)
            skipped += px2.skipped  # the same files as px's: counted once by verdicts
            if px.x.shape != px2.x.shape:
                raise ConfigError(
                    f"'{params['model']}' takes {tuple(px.x.shape[2:])} pixels and "
                    f"'{params['reference_model']}' {tuple(px2.x.shape[2:])}: maps are compared "
                    "pixel by pixel, so the two models need the same input size"
                )
            found = list(
                runner.model_vs_model(
                    module,
                    px.x,
                    px.label_index,
                    other.module,
                    px2.x,
                    px2.label_index,
                    methods,
                    explain=explain,
                    stats=(px.stats, px2.stats),
                    batch_size=batch,
                    clock=clock,
                )
            )
            steps.append((None, px, found))
        self.clock_ = clock
        scores = score_rows(params, steps, class_names(store, params["model"]))
        skipped = [s for _, p, _ in steps for s in p.skipped] + skipped
        return {"sanity_verdicts": verdicts(params, scores, skipped), "sanity_scores": scores}


def _schedule(module: Any, x: Any, layers: Sequence[str] | None) -> list[str]:
    from failstore.queries.sanity.randomise import blocks, check_layers

    if layers:
        return check_layers(module, list(layers))
    return blocks(module, x[:1])


__all__ = ["Sanity"]
