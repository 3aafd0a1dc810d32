"""PRIME failure slices: ``search`` (the pure algorithm and its brute-force oracle), ``stats``
(the statistics of a slice), ``estimator`` (``Slices`` over the store) and ``slices.sql`` (the
stored query showing the latest run per model, grouping and tag source)."""

from failstore.queries.slices.estimator import Slices

__all__ = ["Slices"]
