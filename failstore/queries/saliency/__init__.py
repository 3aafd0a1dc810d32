"""Saliency maps: attribution methods (``methods``, through Captum) and map geometry."""
