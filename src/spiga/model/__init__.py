"""The SPIGA network: pure torch, shapes in docstrings."""

from .config import MODEL_SIZES, ModelConfig
from .layout import official_to_own, own_to_official
from .spiga import SPIGA

__all__ = ["MODEL_SIZES", "ModelConfig", "SPIGA", "official_to_own", "own_to_official"]
