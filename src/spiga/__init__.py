"""spiga: face alignment (2D landmarks) and head pose estimation with SPIGA.

    import spiga
    model = spiga.load("wflw")                       # or a checkpoint path
    faces = model.align("photo.jpg")                 # faces found by the built-in detector
    faces[0].landmarks, faces[0].headpose.yaw

Importing `spiga` is cheap and leaves the process alone: PyTorch and NumPy are imported
when `load`, `Aligner`, `Face` or `HeadPose` is first used, and the check that the original
SPIGA package does not share this environment runs in the command line and on the first
`spiga.load` (`spiga.about.check_installation`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .about import __version__
from .errors import CheckpointError, DatasetError, ImageError, InputError, ModelNotFound, SpigaError

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers and the API reference
    from .face import Face, HeadPose
    from .inference import Aligner, load

#: name -> the module that defines it, imported on first use (`__getattr__`)
_LAZY = {"load": ".inference.aligner", "Aligner": ".inference.aligner", "Face": ".face", "HeadPose": ".face"}

__all__ = [
    "load", "Aligner", "Face", "HeadPose", "__version__",
    "SpigaError", "CheckpointError", "DatasetError", "ImageError", "InputError", "ModelNotFound",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module, __name__), name)
    globals()[name] = value  # the next look-up is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
