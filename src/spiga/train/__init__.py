"""Training: losses, the staged recipe, the loop, distributed training."""

from .config import TrainConfig, read_config
from .loop import TrainingDiverged, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "TrainingDiverged", "read_config", "train"]
