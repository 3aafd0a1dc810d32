"""Barlow (Singla et al.): failure explanations from robust features with mutual-information
feature selection and shallow decision trees. ``mutual_info`` (the vectorised kNN estimator),
``tree`` (the scikit-learn tree, its rules and leaf metrics), ``explain`` (one class group,
parameters), ``describe`` (leaves in words: over-represented tags), ``pictures`` (most-activating
images, heatmaps, feature attacks), ``estimator`` (``Barlow`` over the store) and the stored
queries ``barlow_leaves``, ``barlow_members``, ``barlow_classes``. See docs/barlow.md."""

from failstore.queries.barlow.estimator import Barlow

__all__ = ["Barlow"]
