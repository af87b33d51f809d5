"""SimCSE training (Gao, Yao and Chen 2021) with fastcl.InfoNCELoss.

Unsupervised: each batch of sentences runs through the encoder twice in one forward (the batch
duplicated), so dropout is the only augmentation; the two passes are positives, the rest of the
batch negatives. Supervised: (sent0, sent1[, hard_neg]) rows; the hard negatives are appended to
the keys, with `hard_negative_weight` added to each anchor's own hard-negative logit.

    from fastcl.train_simcse import SimCSEConfig, SimCSETrainer
    SimCSETrainer(SimCSEConfig(model="minilm", train_file="builtin", out="runs/demo")).train()
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Optional

import torch

from . import distributed, sts, text_data
from .losses import InfoNCELoss
from .simcse import POOLERS, SimCSE, native_pooler
from .train import TrainingDiverged, progress_bar

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# The paper's settings for BERT-base.
UNSUPERVISED_DEFAULTS = dict(batch_size=64, lr=3e-5, epochs=1, temperature=0.05)
SUPERVISED_DEFAULTS = dict(batch_size=512, lr=5e-5, epochs=3, temperature=0.05)
# Where a built-in model trains better away from the paper's unsupervised settings (measured by
# benchmarks/simcse_quality.py). minilm is already a contrastively trained sentence encoder: at
# temperature 0.05 its two dropout passes are so much closer than any two sentences that the loss
# starts at 1e-3 and its gradient comes only from each sentence's nearest in-batch neighbours, so
# training pushes topically close sentences apart (the Lee documents lose 18 points in one epoch);
# at 1.0 the gradient is spread over the whole batch and the benchmarks keep or gain.
UNSUPERVISED_RECIPES = {
    "minilm": dict(temperature=1.0),
}


@dataclass
class SimCSEConfig:
    model: str = "tiny"
    train_file: str = "builtin"
    out: str = "runs/simcse"
    pooler: Optional[str] = None  # None: the checkpoint's own (sentence-transformers), else cls
    mlp_only_train: Optional[bool] = None  # None: True for unsupervised cls, as the paper
    temperature: Optional[float] = None  # None: the model's recipe (UNSUPERVISED_RECIPES), else 0.05
    max_length: int = 32
    batch_size: Optional[int] = None  # None: 64 unsupervised, 512 supervised
    lr: Optional[float] = None  # None: 3e-5 unsupervised, 5e-5 supervised
    epochs: Optional[int] = None  # None: 1 unsupervised, 3 supervised
    hard_negative_weight: float = 0.0
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0  # then linear decay to 0 (the transformers Trainer schedule)
    max_grad_norm: float = 1.0
    amp: str = "none"
    dev_file: Optional[str] = None  # an STS file: evaluate every eval_steps, keep the best model
    eval_steps: int = 125
    seed: int = 42
    device: str = "auto"
    log_every: int = 10
    max_steps: Optional[int] = None
    progress: bool = True

    def validate(self) -> None:
        if self.pooler is not None and self.pooler not in POOLERS:
            raise ValueError(f"pooler must be one of {POOLERS}, got {self.pooler!r}")
        if self.max_length <= 0:
            raise ValueError(f"max_length must be > 0, got {self.max_length}")
        if self.temperature is not None and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.batch_size is not None and self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (a batch of one has no negatives), got {self.batch_size}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {tuple(AMP_DTYPES)}, got {self.amp!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.eval_steps < 1:
            raise ValueError(f"eval_steps must be >= 1, got {self.eval_steps}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")


class SimCSETrainer:
    def __init__(self, config: SimCSEConfig):
        config.validate()
        self.data = text_data.load_train_file(config.train_file)
        # Read now: a bad dev file should stop the run before training, not at the first evaluation.
        self.dev = sts.load_sts(config.dev_file) if config.dev_file is not None else None
        defaults = SUPERVISED_DEFAULTS if self.data.supervised else {
            **UNSUPERVISED_DEFAULTS, **UNSUPERVISED_RECIPES.get(config.model, {})}
        self.cfg = cfg = dataclasses.replace(config, **{k: v for k, v in defaults.items()
                                                        if getattr(config, k) is None})
        if len(self.data) < 2:
            raise ValueError(f"train file {cfg.train_file!r} has {len(self.data)} row; need at least 2")
        self.batch_size = min(cfg.batch_size, len(self.data))
        self.rank, self.world = distributed.rank_world()
        self.is_main = self.rank == 0
        self.device = distributed.device(cfg.device)
        torch.manual_seed(cfg.seed)
        pooler = cfg.pooler or native_pooler(cfg.model) or "cls"
        mlp_only_train = (not self.data.supervised) if cfg.mlp_only_train is None else cfg.mlp_only_train
        self.model = SimCSE.from_pretrained(cfg.model, pooler=pooler, mlp_only_train=mlp_only_train,
                                            max_length=cfg.max_length, seed=cfg.seed).to(self.device)
        self.net = self.model  # what the training step calls: the model, or DDP around it
        if self.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.criterion = InfoNCELoss(temperature=cfg.temperature, hard_negative_weight=cfg.hard_negative_weight,
                                     gather_distributed=self.world > 1)
        self.smallest_batch = max(2, self.world)  # one row has no negatives; every rank needs a row
        if self.batch_size < self.smallest_batch:
            raise ValueError(f"batch_size {self.batch_size} is below {self.smallest_batch}: each of the "
                             f"{self.world} processes needs a row and the batch needs a negative")
        full, rest = divmod(len(self.data), self.batch_size)
        self.steps_per_epoch = full + (rest >= self.smallest_batch)  # a smaller last batch is skipped
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        decay = [p for n, p in self.model.named_parameters() if not n.endswith("bias") and "LayerNorm" not in n]
        no_decay = [p for n, p in self.model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
        self.optimizer = torch.optim.AdamW([dict(params=decay, weight_decay=cfg.weight_decay),
                                            dict(params=no_decay, weight_decay=0.0)], lr=cfg.lr)
        warmup = int(cfg.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: (step + 1) / max(1, warmup) if step < warmup
            else max(0.0, (self.total_steps - step) / max(1, self.total_steps - warmup)))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        os.makedirs(cfg.out, exist_ok=True)
        self.metrics_path = os.path.join(cfg.out, "metrics.jsonl")
        if os.path.exists(self.metrics_path) and self.is_main:
            os.remove(self.metrics_path)
        self.global_step, self.best, self.saved_at = 0, None, -1

    def _log(self, **record) -> None:
        if not self.is_main:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _batch(self, rows: list) -> dict:
        """Tokenised sentences of a batch: anchors twice (unsupervised) or anchors, positives and
        hard negatives, stacked so that one forward embeds them all."""
        d = self.data
        groups = [[d.anchors[i] for i in rows]]
        groups.append([d.positives[i] for i in rows] if d.supervised else groups[0])
        if d.hard_negatives is not None:
            groups.append([d.hard_negatives[i] for i in rows])
        tokens = self.model.tokenize([s for group in groups for s in group])
        return {k: v.to(self.device, non_blocking=True) for k, v in tokens.items()}

    def _step(self, rows: list) -> float:
        cfg, n = self.cfg, len(rows)
        batch = self._batch(rows)
        amp = AMP_DTYPES[cfg.amp]
        with torch.autocast(self.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            z = self.net(**batch)
        z = z.float()
        negatives = z[2 * n:] if z.shape[0] > 2 * n else None
        loss = self.criterion(z[:n], z[n:2 * n], negative_keys=negatives)
        value = distributed.mean_over_ranks(loss)
        if not torch.isfinite(value):
            raise TrainingDiverged(f"the SimCSE loss became {float(value)} at step {self.global_step + 1}; "
                                   "lower the learning rate or use bf16 instead of fp16; the last saved model in "
                                   f"{self.cfg.out} (if any) is kept")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.max_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return float(value)

    def evaluate_dev(self) -> Optional[float]:
        if self.dev is None:
            return None
        return sts.evaluate_pairs(self.model, self.dev)["spearman"]

    def _checkpoint(self) -> None:
        """With a dev set, keep the best model by dev Spearman; without, the latest. Rank 0 only:
        the ranks hold identical models."""
        if not self.is_main:
            return
        if self.saved_at == self.global_step:
            return
        self.saved_at = self.global_step
        score = self.evaluate_dev()
        if score is not None:
            self._log(kind="eval", step=self.global_step, dev_spearman=score)
            if not math.isfinite(score) or (self.best is not None and score <= self.best):
                return  # a NaN score (constant embeddings) never replaces a real best
            self.best = score
        self.model.save_pretrained(self.cfg.out)

    def train(self) -> dict:
        cfg, start, losses = self.cfg, time.perf_counter(), []
        generator = torch.Generator().manual_seed(cfg.seed)
        bar = progress_bar(self.total_steps, cfg.progress and self.is_main)
        tick, seen = time.perf_counter(), 0
        self.model.train()
        self.model.head_trained = True
        with bar:
            for epoch in range(cfg.epochs):
                order = torch.randperm(len(self.data), generator=generator).tolist()
                for first in range(0, len(order), self.batch_size):
                    batch = order[first:first + self.batch_size]
                    if len(batch) < self.smallest_batch:
                        continue
                    loss = self._step(torch.tensor(batch).tensor_split(self.world)[self.rank].tolist())
                    losses.append(loss)
                    self.global_step += 1
                    seen += len(batch)
                    rate = seen / max(time.perf_counter() - tick, 1e-9)
                    lr = self.scheduler.get_last_lr()[0]
                    bar.set_postfix_str(f"epoch {epoch + 1} loss {loss:.4f} lr {lr:.3g} {rate:,.0f} sent/s",
                                        refresh=False)
                    bar.update()
                    if self.global_step % cfg.log_every == 0:
                        self._log(kind="step", step=self.global_step, epoch=epoch, loss=loss, lr=lr,
                                  sentences_per_s=rate)
                    if self.global_step % cfg.eval_steps == 0:
                        self._checkpoint()
                    if self.global_step >= self.total_steps:
                        break
                if self.global_step >= self.total_steps:
                    break
        self._checkpoint()
        summary = dict(steps=self.global_step, final_loss=losses[-1] if losses else None, best_dev_spearman=self.best,
                       seconds=time.perf_counter() - start, model=cfg.out, supervised=self.data.supervised,
                       pooler=self.model.pooler, world_size=self.world, config=dataclasses.asdict(cfg))
        if self.is_main:
            with open(os.path.join(cfg.out, "summary.json"), "w") as f:
                json.dump(summary, f, indent=2)
        return summary
