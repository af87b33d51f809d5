"""SimCSEConfig: every setting of a SimCSE run, with its default and command-line help (the
options of `fastcl simcse` are generated from it), and the paper's defaults per setting."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from ..engine import amp
from ..engine.options import check_ranges, option
from ..engine.resume import RESUME_CHOICES, check_save_options, start_mode
from .model import POOLERS

# The paper's settings for BERT-base.
UNSUPERVISED_DEFAULTS = dict(batch_size=64, lr=3e-5, epochs=1, temperature=0.05)
SUPERVISED_DEFAULTS = dict(batch_size=512, lr=5e-5, epochs=3, temperature=0.05)
# Where a built-in model trains better away from the paper's unsupervised settings (measured by
# benchmarks/simcse_quality.py; the runs and why: benchmarks/RESULTS.md, "Training quality").
UNSUPERVISED_RECIPES = {
    "minilm": dict(temperature=1.0),
}


@dataclass
class SimCSEConfig:
    """Settings of a SimCSE run (Gao, Yao and Chen 2021).

    Fields left unset (None) take the paper's value for the kind of data: unsupervised
    (sentences) or supervised (sent0, sent1[, hard_neg] rows); see `resolved`.
    `fastcl simcse --help` lists every field.

    Example::

        from fastcl.simcse import SimCSEConfig, SimCSETrainer
        SimCSETrainer(SimCSEConfig(model="minilm", train_file="builtin", out="runs/minilm")).train()
    """

    model: str = option("tiny", "minilm | tiny | a local folder | a hub name", required=True)
    train_file: str = option("builtin", "builtin | sentences.txt (unsupervised) | pairs.csv with "
                             "sent0,sent1[,hard_neg]", required=True)
    out: str = option("runs/simcse", "output folder: the model (transformers and sentence-transformers "
                      "loadable), metrics.jsonl, summary.json", required=True)
    pooler: Optional[str] = option(None, "sentence embedding; unset: the checkpoint's own (sentence-transformers), "
                                   "else cls", choices=POOLERS)
    mlp_only_train: Optional[bool] = option(None, "cls pooler: use the MLP only in training; unset: on for "
                                            "unsupervised, off for supervised")
    temperature: Optional[float] = option(None, "InfoNCE temperature; unset: 0.05 (the paper), unsupervised from "
                                          "minilm 1.0 (fastcl.simcse.UNSUPERVISED_RECIPES)", above=0)
    max_length: int = option(32, "tokens per training sentence", above=0)
    batch_size: Optional[int] = option(None, "global batch of sentences (pairs); unset: 64 unsupervised, "
                                       "512 supervised", minimum=2, why="a batch of one has no negatives")
    lr: Optional[float] = option(None, "peak learning rate; unset: 3e-5 unsupervised, 5e-5 supervised", above=0)
    epochs: Optional[int] = option(None, "training epochs; unset: 1 unsupervised, 3 supervised", minimum=1)
    hard_negative_weight: float = option(0.0, "added to each sentence's own hard-negative logit")
    weight_decay: float = option(0.0, "AdamW weight decay (not on biases and LayerNorm)")
    warmup_ratio: float = option(0.0, "fraction of steps of linear warm-up, then linear decay to 0", minimum=0,
                                below=1)
    max_grad_norm: float = option(1.0, "gradient clipping norm (0: none)")
    amp: str = option("none", "mixed precision of the forward", choices=tuple(amp.AMP_DTYPES))
    dev_file: Optional[str] = option(None, "an STS file: evaluate every eval_steps and keep the best model")
    eval_steps: int = option(125, "steps between dev evaluations (and saves)", minimum=1)
    seed: int = option(42, "seed of the MLP, data order and dropout")
    device: str = option("auto", "auto (CUDA when visible), cpu, cuda or cuda:N")
    log_every: int = option(10, "steps between metrics.jsonl records", minimum=1)
    max_steps: Optional[int] = option(None, "stop after this many steps in all", minimum=1)
    progress: bool = option(True, "progress bar on stderr")
    mask_duplicates: bool = option(True, "a sentence twice in a batch (same token ids) is not its own negative; "
                                   "supervised: rows sharing a sentence are one sample, and a hard negative equal "
                                   "to a row's sentence is not that row's negative")
    chunk_size: Optional[int] = option(None, "gradient caching: encode at most this many sentences at a time, any "
                                       "batch size in fixed activation memory; unset: the whole batch at "
                                       "once", minimum=1, why="sentences per encoder call")
    resume: Optional[str] = option(None, "continue the training state in OUT/last.pt: yes (--resume), no "
                                   "(--no-resume: start over), or auto (when OUT holds one; one of other settings is "
                                   "refused); unset: auto under torchrun, else no", choices=RESUME_CHOICES,
                                   flag_value="yes")
    overwrite: bool = option(False, "start over in an OUT that holds a run (without it, fastcl refuses to "
                             "replace one: give --resume or --overwrite)")
    save_every_steps: Optional[int] = option(None, "save the training state (OUT/last.pt) every N steps; it is also "
                                             "saved at the end", minimum=1)
    save_every_minutes: Optional[float] = option(None, "also save it every M minutes")
    keep_checkpoints: int = option(2, "saves kept as OUT/checkpoints/step-N.pt (hard links of last.pt)",
                                    minimum=1)

    def validate(self) -> None:
        """The ranges of the fields (their options' metadata), then the rest."""
        check_ranges(self)
        if self.pooler is not None and self.pooler not in POOLERS:
            raise ValueError(f"pooler must be one of {POOLERS}, got {self.pooler!r}")
        amp.check(self.amp)
        start_mode(self.resume, self.overwrite)
        check_save_options(self.save_every_steps, self.save_every_minutes, self.keep_checkpoints)

    def resolved(self, supervised: bool) -> "SimCSEConfig":
        """This config with its unset fields filled: the paper's defaults for the kind of data,
        and for unsupervised runs the model's recipe."""
        defaults = SUPERVISED_DEFAULTS if supervised else {**UNSUPERVISED_DEFAULTS,
                                                           **UNSUPERVISED_RECIPES.get(self.model, {})}
        return dataclasses.replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})
