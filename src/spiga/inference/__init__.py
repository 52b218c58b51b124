"""Running a model on images: batching, devices, precision.

`Aligner` and `load` are imported on first use, so that the light modules of this package
(`spiga.inference.cpu`, which the face detector uses too) come without the aligner's."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .aligner import Aligner, load

__all__ = ["Aligner", "load"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import aligner

        return getattr(aligner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
