"""SimCSE (Gao, Yao and Chen 2021) on fastcl's fused InfoNCE loss and Hugging Face encoders: the
model and its poolers (model), encoders found offline (backbones), training data (data), STS
evaluation incl. the built-in benchmarks (sts) and the trainer.

    from fastcl.simcse import SimCSE, SimCSEConfig, SimCSETrainer
    SimCSETrainer(SimCSEConfig(model="minilm", out="runs/minilm")).train()
    SimCSE.from_pretrained("runs/minilm").encode(["A man is playing a guitar."])
"""

from .config import SUPERVISED_DEFAULTS, UNSUPERVISED_DEFAULTS, UNSUPERVISED_RECIPES, SimCSEConfig
from .model import POOLERS, SimCSE
from .trainer import SimCSETrainer

__all__ = ["POOLERS", "SUPERVISED_DEFAULTS", "SimCSE", "SimCSEConfig", "SimCSETrainer", "UNSUPERVISED_DEFAULTS",
           "UNSUPERVISED_RECIPES"]
