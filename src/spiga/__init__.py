"""spiga: face alignment (2D landmarks) and head pose estimation with SPIGA.

    import spiga
    model = spiga.load("wflw")                       # or a checkpoint path
    faces = model.align("photo.jpg")                 # faces found by the built-in detector
    faces[0].landmarks, faces[0].headpose.yaw
"""

from .about import __version__, check_installation

check_installation()

from .errors import (CheckpointError, DatasetError, ImageError, InputError, ModelNotFound,  # noqa: E402
                     SpigaError)
from .face import Face, HeadPose  # noqa: E402
from .inference import Aligner, load  # noqa: E402

__all__ = [
    "load", "Aligner", "Face", "HeadPose", "__version__",
    "SpigaError", "CheckpointError", "DatasetError", "ImageError", "InputError", "ModelNotFound",
]
