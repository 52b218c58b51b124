"""The SPIGA network: pure torch, shapes in docstrings."""

from .config import MODEL_SIZES, ModelConfig
from .spiga import SPIGA

__all__ = ["MODEL_SIZES", "ModelConfig", "SPIGA"]
