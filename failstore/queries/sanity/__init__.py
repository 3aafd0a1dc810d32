"""Explanation debugging tests (Adebayo et al.): can an attribution method be trusted on this
model? ``similarity`` (the reference's normalisations, Spearman, SSIM, HOG: pure numpy),
``randomise`` (cascading / independent re-initialisation of the target's layers), ``estimator``
(``Sanity`` over the store) and its stored queries. See docs/sanity.md."""

from failstore.queries.sanity.estimator import Sanity

__all__ = ["Sanity"]
