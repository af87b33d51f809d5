"""SimCLRConfig: every setting of a SimCLR run, with its default and command-line help (the
options of `fastcl simclr` are generated from it), and the per-dataset recipes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..augment import SimCLRAugment
from ..engine import amp
from ..engine.options import check_ranges, option
from ..engine.resume import RESUME_CHOICES, check_save_options, start_mode
from .data import DATASETS
from .models import ARCHS


@dataclass
class SimCLRConfig:
    """Settings of a SimCLR pre-training run (Chen et al. 2020).

    Defaults are SimCLR's CIFAR-10 settings; `config_for(data, ...)` starts from them, applies the
    dataset's recipe (RECIPES) and then your overrides. `fastcl simclr --help` lists every field.

    Example::

        from fastcl.simclr import SimCLRTrainer, config_for
        summary = SimCLRTrainer(config_for("cifar10:/data", arch="resnet18", epochs=800)).train()
    """

    data: str = option("fake", f"dataset: {' | '.join(DATASETS)}; unset options take the dataset's recipe "
                       "(fastcl.simclr.RECIPES), then these CIFAR defaults")
    out: str = option("runs/simclr", "output folder: last.pt, metrics.jsonl, summary.json")
    arch: str = option("small_cnn", "encoder", choices=ARCHS)
    cifar_stem: bool = option(True, "ResNet with a 3x3 stride-1 stem and no max-pool (for 32 px images)")
    size: int = option(32, "side of the augmented views in pixels", above=0)
    batch_size: int = option(256, "global batch (over all processes); 2 x batch views per step", minimum=2,
                            why="a batch of one has no negatives")
    epochs: int = option(30, "training epochs", minimum=1)
    optimizer: str = option("lars", "optimiser", choices=("lars", "sgd", "adamw"))
    lr: Optional[float] = option(None, "peak learning rate; unset: 0.3 x B/256 (linear) or 0.075 x sqrt(B) (sqrt)")
    lr_scaling: str = option("linear", "how the default learning rate scales with the batch",
                             choices=("linear", "sqrt"))
    weight_decay: float = option(1e-6, "weight decay (not on biases and norm weights)")
    warmup_epochs: Optional[float] = option(None, "linear warm-up before cosine decay; unset: 10 epochs, or a "
                                            "tenth of a shorter run")
    temperature: float = option(0.5, "NT-Xent temperature", above=0)
    proj_hidden: int = option(2048, "hidden width of the projection head", minimum=1)
    proj_dim: int = option(128, "output width of the projection head (the loss's D)", minimum=1)
    strength: float = option(0.5, "colour-jitter strength: 0.5 for CIFAR, 1.0 for ImageNet")
    crop_min: float = option(0.08, "smallest crop area fraction of the random resized crop", above=0, maximum=1)
    flip_p: float = option(0.5, "horizontal flip probability", minimum=0, maximum=1)
    blur_p: float = option(0.0, "Gaussian blur probability (ImageNet recipe: 1.0 / 0.1 per view)", minimum=0,
                           maximum=1)
    rotate_p: float = option(0.0, "random rotation probability per view (after crop and flip, bilinear, black "
                             "corners); hurts where orientation is the label (digits: a turned 6 is a 9)", minimum=0,
                             maximum=1)
    degrees: float = option(30.0, "rotation angles are uniform in [-degrees, degrees]", minimum=0, maximum=180,
                            why="angles in [-degrees, degrees]")
    amp: str = option("none", "mixed precision of the forward", choices=tuple(amp.AMP_DTYPES))
    channels_last: bool = option(False, "channels-last views and model (faster convolutions on GPUs)")
    seed: int = option(0, "seed of weights, data order and augmentation")
    knn_k: int = option(200, "neighbours of the kNN monitor", minimum=1)
    knn_t: float = option(0.1, "temperature of the kNN monitor's vote weights", above=0)
    log_every: int = option(10, "steps between metrics.jsonl records", minimum=1)
    progress: bool = option(True, "progress bar on stderr")
    max_steps: Optional[int] = option(None, "stop (with a checkpoint) after this many steps in all",
                                      minimum=1)
    device: str = option("auto", "auto (CUDA when visible), cpu, cuda or cuda:N")
    resume: Optional[str] = option(None, "continue from OUT/last.pt: yes (--resume), no (--no-resume: start over), or "
                                   "auto (when OUT holds a checkpoint; one of other settings is refused); unset: "
                                   "auto under torchrun, else no", choices=RESUME_CHOICES, flag_value="yes")
    overwrite: bool = option(False, "start over in an OUT that holds a run (without it, fastcl refuses to "
                             "replace one: give --resume or --overwrite)")
    save_every_steps: Optional[int] = option(None, "also save OUT/last.pt every N steps (epoch ends always "
                                             "save)", minimum=1)
    save_every_minutes: Optional[float] = option(None, "also save every M minutes")
    keep_checkpoints: int = option(2, "saves kept as OUT/checkpoints/step-N.pt (hard links of last.pt)",
                                   minimum=1)
    sync_bn: bool = option(False, "under torchrun: batch-norm statistics over the global batch (global BN)")
    mask_duplicates: bool = option(True, "an image stored twice (byte-identical) is not its own negative when a "
                                   "batch holds both copies")
    queue_size: int = option(0, "a memory bank of this many past keys as the negatives (lightly's NTXentLoss with "
                             "memory_bank_size: view 1 against its view 2 and the bank, no in-batch negatives); 0: "
                             "none", minimum=0, why="0: no memory bank")
    labelled_per_class: int = option(0, "semi-supervised: this many images per class keep their label (drawn as "
                                     "`fastcl label-efficiency` draws them) and take every view of their class's "
                                     "labelled images as positives too (SupCon), in the same fused NT-Xent call as "
                                     "the unlabelled rest; 0: self-supervised only", minimum=0)
    labels: Optional[str] = option(None, "semi-supervised on your own images (--data folder:DIR): a CSV with the "
                                   "header path,label and a line per labelled image (its path relative to "
                                   "DIR/train, its class folder's name); those images take SupCon positives as "
                                   "with labelled_per_class, every other image is unlabelled")
    labelled_draw: int = option(0, "which draw (0-based, label-efficiency's numbering) of the labelled images",
                                minimum=0)
    chunk_size: Optional[int] = option(None, "gradient caching: encode at most this many views at a time, any "
                                       "batch size in fixed activation memory (batch norm then normalises per "
                                       "chunk); unset: the whole batch at once", minimum=1,
                                       why="views per encoder call")

    def validate(self) -> None:
        """The ranges of the fields (their options' metadata), then what involves several fields."""
        check_ranges(self)
        amp.check(self.amp)
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        start_mode(self.resume, self.overwrite)
        check_save_options(self.save_every_steps, self.save_every_minutes, self.keep_checkpoints)
        self._check_labels()
        if (self.labelled_per_class or self.labels is not None) and self.queue_size:
            which = "labels" if self.labels is not None else "labelled_per_class"
            raise ValueError(f"{which} (semi-supervised) and queue_size (a memory bank) do not combine: the bank's "
                             "keys carry no labels")
        if self.warmup_epochs is not None and not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs], got {self.warmup_epochs}")

    def _check_labels(self) -> None:
        """A labels file goes with a folder, and is the one way of this run to pick labelled images."""
        if self.labels is None:
            return
        if self.labelled_per_class:
            raise ValueError(f"labels (--labels {self.labels}) and labelled_per_class (--labelled-per-class "
                             f"{self.labelled_per_class}) both pick the labelled images: give the file or K per "
                             "class, not both")
        if self.labelled_draw:
            raise ValueError("labelled_draw picks a draw of labelled_per_class; with labels (a file) the labelled "
                             "images are the file's: leave it out")
        if not self.data.startswith("folder:"):
            raise ValueError(f"labels (--labels {self.labels}) names images of a folder by their paths: it needs "
                             f"--data folder:DIR, got --data {self.data}")

    def warmup(self) -> float:
        return self.warmup_epochs if self.warmup_epochs is not None else min(10.0, self.epochs / 10)


# Where a dataset trains better away from the CIFAR defaults (benchmarks/RESULTS.md has the runs).
# digits: small batches for more steps in a CPU-sized run, AdamW, a lower temperature, large crops
# (a small crop of a 12-24 px digit in a 32 px scene often misses it) and no flips (a mirrored 2 is a 5).
RECIPES = {
    "digits": dict(batch_size=128, optimizer="adamw", lr=3e-3, temperature=0.2, proj_hidden=512, crop_min=0.6,
                   flip_p=0.0),
}


def augmentation(config: dict, channels_last: bool = False) -> SimCLRAugment:
    """The views' augmentation of a run from its config (a checkpoint's dict; runs saved before
    rotation existed have none)."""
    return SimCLRAugment(config["size"], scale=(config["crop_min"], 1.0), flip_p=config["flip_p"],
                         strength=config["strength"], blur_p=config["blur_p"], rotate_p=config.get("rotate_p", 0.0),
                         degrees=config.get("degrees", 30.0), channels_last=channels_last)


def config_for(data: str = SimCLRConfig.data, **overrides) -> SimCLRConfig:
    """The SimCLRConfig for a dataset spec: SimCLRConfig's defaults, then the dataset's entry in
    RECIPES, then `overrides`."""
    recipe = RECIPES.get(data.partition(":")[0], {})
    return SimCLRConfig(**{**recipe, **overrides, "data": data})
