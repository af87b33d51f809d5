"""fastcl: fused contrastive losses (NT-Xent, SupCon, InfoNCE) for PyTorch, CPU and CUDA."""

from . import augment, functional, ops, reference
from ._extension import build_info, has_cuda_ops, has_ops
from .losses import InfoNCELoss, NTXentLoss
from .simcse import SimCSE  # transformers is imported only when a model loads
from .version import __version__

__all__ = ["NTXentLoss", "InfoNCELoss", "SimCSE", "augment", "functional", "ops", "reference", "build_info", "has_ops",
           "has_cuda_ops", "__version__"]
