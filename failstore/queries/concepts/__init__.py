"""Concepts (Abid & Zou, "Meaningfully Explaining a Model's Mistakes"): a bank of concept
activation vectors trained on a target model's bottleneck embeddings (``cav.py``), and the
conceptual explanation scores of misclassified images against it (``ces.py``)."""
