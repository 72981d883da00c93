"""Datasets: annotations, the three feature layouts, training samplers, synthetic data."""

from wtal.data.annotations import Annotations, Video

__all__ = ["Annotations", "Video"]
