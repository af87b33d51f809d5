"""SimCLR (Chen et al. 2020) on fastcl's fused NT-Xent loss and GPU batch augmentation: encoders
and projection head (models), LARS and schedules (optim), datasets incl. the built-in digits
(data, digits, image_cache), the labelled part of semi-supervised runs (labelled: K per class;
labels_file: a CSV naming them), the trainer, kNN / linear-probe evaluation and the demo.

    from fastcl.simclr import SimCLRTrainer, config_for
    summary = SimCLRTrainer(config_for("digits", epochs=5)).train()
"""

from .config import RECIPES, SimCLRConfig, config_for
from .evaluate import evaluate_checkpoint, knn_accuracy, linear_probe, load_encoder
from .retrieval import embed, embed_checkpoint, precision_at_k
from .trainer import SimCLRTrainer

__all__ = ["RECIPES", "SimCLRConfig", "SimCLRTrainer", "config_for", "evaluate_checkpoint", "knn_accuracy",
           "embed", "embed_checkpoint", "linear_probe", "load_encoder", "precision_at_k"]
