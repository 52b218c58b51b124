"""Running a model on images: batching, devices, precision."""

from .aligner import Aligner, load

__all__ = ["Aligner", "load"]
