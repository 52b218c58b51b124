"""spiga: face alignment (2D landmarks) and head pose estimation with SPIGA.

    import spiga
    model = spiga.load("wflw")                       # or a checkpoint path
    faces = model.align("photo.jpg", boxes=[(x, y, w, h)])
    faces[0].landmarks, faces[0].headpose.yaw
"""

from .errors import CheckpointError, DatasetError, ImageError, InputError, ModelNotFound, SpigaError
from .face import Face, HeadPose
from .inference import Aligner, load

__version__ = "0.1.0"

__all__ = [
    "load", "Aligner", "Face", "HeadPose",
    "SpigaError", "CheckpointError", "DatasetError", "ImageError", "InputError", "ModelNotFound",
]
