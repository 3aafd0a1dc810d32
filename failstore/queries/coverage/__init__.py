"""Shared Interest coverage (Boggust et al.): how a saliency region covers the ground truth."""
