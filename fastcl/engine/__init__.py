"""The training engine both trainers (fastcl.simclr, fastcl.simcse) stand on: set-up, AMP, DDP,
the optimiser step, metrics and summary files, atomic and safe checkpoints, run plots."""

from .amp import AMP_DTYPES
from .checkpoint import UnsafeCheckpoint
from .metrics import MetricsLog, progress_bar
from .trainer import Trainer, TrainingDiverged

__all__ = ["AMP_DTYPES", "MetricsLog", "Trainer", "TrainingDiverged", "UnsafeCheckpoint", "progress_bar"]
