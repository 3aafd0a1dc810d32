"""Saliency maps (not an analysis: maps are keyed rows, computed once): ``methods`` (attribution
methods through Captum), ``geometry`` (a map's frame in its image; boxes and masks in it) and
``compute`` (``compute_saliency``: maps of the target model's images into ``saliency_maps``).
See docs/coverage.md."""
