"""Concepts (Abid & Zou, "Meaningfully Explaining a Model's Mistakes"): ``cav`` (concept
activation vectors: linear SVMs in the target model's bottleneck), ``examples`` (a concept's
positives and negatives from tags), ``ces`` (conceptual explanation scores through the linear
head), ``bank`` (``ConceptBank`` over the store), ``explain`` (``Explain``: CES of mistakes over
the store) and the stored queries ``concept_bank`` and ``ces``. See
docs/concepts.md."""

from failstore.queries.concepts.bank import ConceptBank
from failstore.queries.concepts.explain import Explain

__all__ = ["ConceptBank", "Explain"]
