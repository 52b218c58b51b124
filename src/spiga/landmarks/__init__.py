"""Landmark layouts and 3D mean faces."""

from .set_files import BUILTIN_SETS, read_landmark_set, resolve_landmark_set
from .mean_face import mean_face_to_world, read_mean_face
from .sets import DATASET_LANDMARKS, IBUG_68, WFLW_98, LandmarkSet, landmark_set_for

__all__ = [
    "DATASET_LANDMARKS", "IBUG_68", "WFLW_98", "LandmarkSet", "landmark_set_for",
    "read_mean_face", "mean_face_to_world",
    "BUILTIN_SETS", "read_landmark_set", "resolve_landmark_set",
]
