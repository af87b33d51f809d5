"""fastcl: fused contrastive losses (NT-Xent, SupCon, InfoNCE, SigLIP) and GPU batch augmentation for
PyTorch, CPU and CUDA, with SimCLR and SimCSE trainers built on them.

    import fastcl
    loss = fastcl.NTXentLoss(temperature=0.5)(z1, z2)          # drop-in, never builds the 2N x 2N matrix
    v1, v2 = fastcl.SimCLRAugment(size=32)(images, views=2)     # the SimCLR recipe on a whole batch
    fastcl.SimCLRTrainer(fastcl.simclr.config_for("digits")).train()
"""

from . import augment, functional, ops
from ._extension import build_info, has_cuda_ops, has_ops
from .augment import AugmentParams, SimCLRAugment
from .engine.grad_cache import GradCache, grad_cache
from .functional import info_nce, nt_xent, siglip
from .losses import InfoNCELoss, NTXentLoss, SigLIPLoss
from .queue import MemoryQueue
from .simclr import SimCLRConfig, SimCLRTrainer
from .simcse import SimCSE, SimCSEConfig, SimCSETrainer  # transformers is imported only when a model loads
from .version import __version__

__all__ = ["AugmentParams", "GradCache", "InfoNCELoss", "MemoryQueue", "NTXentLoss", "SigLIPLoss", "SimCLRAugment",
           "SimCLRConfig", "SimCLRTrainer", "SimCSE", "SimCSEConfig", "SimCSETrainer", "augment", "build_info",
           "functional", "grad_cache", "has_cuda_ops", "has_ops", "info_nce", "nt_xent", "ops", "siglip", "__version__"]
