"""Shared Interest coverage (Boggust et al.): how a saliency region covers the ground truth.
``scores`` (regions, IoU / GTC / SC / soft SC, the eight cases, bootstrap intervals: pure numpy),
``estimator`` (``Coverage`` over the stored saliency maps) and the stored queries ``coverage``,
``coverage_cases`` and ``coverage_lowest``. See docs/coverage.md."""

from failstore.queries.coverage.estimator import Coverage

__all__ = ["Coverage"]
