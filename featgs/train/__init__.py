"""Training: 3DGS geometry and colour, and feature distillation (joint, or by the sparse solve)."""

from featgs.train.config import TrainConfig
from featgs.train.solve import SolveConfig

__all__ = ["SolveConfig", "TrainConfig"]
