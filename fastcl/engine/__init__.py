"""The training engine both trainers (fastcl.simclr, fastcl.simcse) stand on: set-up, AMP, DDP,
the optimiser step, gradient caching, metrics and summary files, atomic and safe checkpoints, run plots."""

from .amp import AMP_DTYPES
from .checkpoint import UnsafeCheckpoint
from .grad_cache import GradCache, grad_cache
from .metrics import MetricsLog, progress_bar
from .trainer import Trainer, TrainingDiverged

__all__ = ["AMP_DTYPES", "GradCache", "MetricsLog", "Trainer", "TrainingDiverged", "UnsafeCheckpoint", "grad_cache",
           "progress_bar"]
