"""Training: losses, the staged recipe, the loop, distributed training."""

from .config import TrainConfig, read_config
from .loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "read_config", "train"]
