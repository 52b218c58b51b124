"""spiga: face alignment (2D landmarks) and head pose estimation with SPIGA."""

from .errors import CheckpointError, DatasetError, ImageError, InputError, ModelNotFound, SpigaError

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "DatasetError", "ImageError", "InputError", "ModelNotFound", "SpigaError",
]
