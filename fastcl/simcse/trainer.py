"""SimCSE training (Gao, Yao and Chen 2021) with fastcl.InfoNCELoss, on fastcl.engine.

Unsupervised: each batch of sentences runs through the encoder twice in one forward (the batch
duplicated), so dropout is the only augmentation; the two passes are positives, the rest of the
batch negatives. Supervised: (sent0, sent1[, hard_neg]) rows; the hard negatives are appended to
the keys, with `hard_negative_weight` added to each anchor's own hard-negative logit."""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch

from ..engine import Trainer, TrainingDiverged, resume
from ..losses import InfoNCELoss
from . import data, duplicates, sts
from .config import SimCSEConfig
from .model import CONFIG_NAME, SimCSE, native_pooler


class SimCSETrainer(Trainer):
    """Trains a Hugging Face encoder with SimCSE on `config.train_file`.

    With a dev file the model is evaluated every `eval_steps` and the best one (by dev Spearman)
    is saved to OUT; without, the latest. Under torchrun each process takes a share of the global
    batch and the loss sees every rank's embeddings (`gather_distributed`). `train()` returns the
    summary (also OUT/summary.json). The training state (OUT/last.pt: weights, optimiser, schedule,
    data order, every rank's random state) is saved every `save_every_steps` steps or
    `save_every_minutes` minutes (and then at the end); `resume` continues it exactly (auto under
    torchrun).

    Example::

        trainer = SimCSETrainer(SimCSEConfig(model="minilm", out="runs/minilm", max_steps=100))
        trainer.train()
        fastcl.SimCSE.from_pretrained("runs/minilm").encode(["A sentence."])
    """

    kind = "simcse"
    rate_unit = ("sent", "sentences_per_s")
    always_saves = False  # the product is the model folder; OUT/last.pt only when save_every_* asks
    run_files = Trainer.run_files + (CONFIG_NAME,)

    def __init__(self, config: SimCSEConfig):
        config.validate()
        self.data = data.load_train_file(config.train_file)
        self.data_fingerprint = data.fingerprint(config.train_file)
        # Read now: a bad dev file should stop the run before training, not at the first evaluation.
        self.dev = sts.load_sts(config.dev_file) if config.dev_file is not None else None
        self.cfg = cfg = config.resolved(self.data.supervised)
        if len(self.data) < 2:
            raise ValueError(f"train file {cfg.train_file!r} has {len(self.data)} row; need at least 2")
        self.batch_size = min(cfg.batch_size, len(self.data))
        super().__init__(out=cfg.out, device=cfg.device, seed=cfg.seed, amp=cfg.amp)
        pooler = cfg.pooler or native_pooler(cfg.model) or "cls"
        mlp_only_train = (not self.data.supervised) if cfg.mlp_only_train is None else cfg.mlp_only_train
        self.model = SimCSE.from_pretrained(cfg.model, pooler=pooler, mlp_only_train=mlp_only_train,
                                            max_length=cfg.max_length, seed=cfg.seed).to(self.device)
        self.net = self.wrap(self.model)
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
        self.optimizer, self.scheduler = self._optimizer()
        groups = 3 if self.data.hard_negatives is not None else 2  # encoder inputs per row of a batch
        self.chunk_size = self.chunking(cfg.chunk_size, groups * -(-self.batch_size // self.world))
        self.max_grad_norm = cfg.max_grad_norm
        self.best, self.saved_at = None, -1
        self.generator = torch.Generator().manual_seed(cfg.seed)  # the data order's
        # max_steps sets the length of the learning-rate schedule here, so it defines the run
        self.start_or_resume(cfg, resume.NOT_RUN_DEFINING - {"max_steps"})

    # -- state --------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        return dict(best=self.best, saved_at=self.saved_at)

    def restore_extra(self, state: dict) -> None:
        self.best, self.saved_at = state["best"], state["saved_at"]

    def _optimizer(self) -> tuple:
        """AdamW without decay on biases and LayerNorm, linear warm-up then linear decay to 0 (the
        transformers Trainer's schedule, which the SimCSE code uses)."""
        cfg = self.cfg
        named = list(self.model.named_parameters())
        no_decay = [n.endswith("bias") or "LayerNorm" in n for n, _ in named]
        optimizer = torch.optim.AdamW(
            [dict(params=[p for (_, p), skip in zip(named, no_decay) if not skip], weight_decay=cfg.weight_decay),
             dict(params=[p for (_, p), skip in zip(named, no_decay) if skip], weight_decay=0.0)], lr=cfg.lr)
        warmup, total = int(cfg.warmup_ratio * self.total_steps), self.total_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: (step + 1) / max(1, warmup) if step < warmup
            else max(0.0, (total - step) / max(1, total - warmup)))
        return optimizer, scheduler

    def _tokens(self, rows: list) -> dict:
        """Tokenised sentences of a batch (on the CPU): anchors twice (unsupervised) or anchors,
        positives and hard negatives, stacked so that one forward embeds them all."""
        d = self.data
        groups = [[d.anchors[i] for i in rows]]
        groups.append([d.positives[i] for i in rows] if d.supervised else groups[0])
        if d.hard_negatives is not None:
            groups.append([d.hard_negatives[i] for i in rows])
        return self.model.tokenize([s for group in groups for s in group])

    def _sample_ids(self, batch: list, start: int, stop: int, tokens: dict) -> tuple:
        """(pair ids, hard-negative ids) of this rank's rows batch[start:stop] for duplicate masking,
        derived from the token ids of the whole global batch, so that every rank agrees (None, None
        with mask_duplicates off)."""
        if not self.cfg.mask_duplicates:
            return None, None
        if stop - start != len(batch):  # under torchrun: every rank tokenises the global batch for its ids
            tokens = self._tokens(batch)
        keys, n = duplicates.token_keys(tokens["input_ids"], tokens["attention_mask"]), len(batch)
        pair_ids, negative_ids = duplicates.duplicate_ids(*(keys[g * n:(g + 1) * n] for g in range(len(keys) // n)))
        pair_ids = pair_ids[start:stop].to(self.device)
        return pair_ids, None if negative_ids is None else negative_ids[start:stop].to(self.device)

    # -- what the engine's loop calls ---------------------------------------------------------
    def batches(self):
        """(the global batch's rows, this rank's share [start, stop) of them) of each step of the
        epoch, in the order a one-process run sees them. The epoch's permutation is the
        (epoch + 1)-th that the order generator draws from the seed: it depends on the seed and
        the epoch alone, so a resumed run draws it again and skips the batches done."""
        self.generator.manual_seed(self.cfg.seed)
        for _ in range(self.epoch + 1):
            order = torch.randperm(len(self.data), generator=self.generator).tolist()
        batches = [order[first:first + self.batch_size] for first in range(0, len(order), self.batch_size)]
        for batch in batches:
            if len(batch) >= self.smallest_batch:
                sizes = [len(part) for part in torch.tensor(batch).tensor_split(self.world)]
                start = sum(sizes[:self.rank])
                yield batch, start, start + sizes[self.rank]

    def samples(self, batch) -> int:
        return len(batch[0])

    def prepare(self, batch) -> tuple:
        """The tokens of this rank's rows (anchors, positives, hard negatives: one forward embeds
        them all) and the loss's target: (rows, pair ids, hard-negative ids)."""
        rows, start, stop = batch
        tokens = self._tokens(rows[start:stop])
        ids, negative_ids = self._sample_ids(rows, start, stop, tokens)
        inputs = {k: v.to(self.device, non_blocking=True) for k, v in tokens.items()}
        return inputs, (stop - start, ids, negative_ids)

    def loss(self, embeddings: torch.Tensor, target: tuple) -> torch.Tensor:
        n, ids, negative_ids = target
        z = embeddings.float()
        return self.criterion(z[:n], z[n:2 * n], negative_keys=z[2 * n:] if z.shape[0] > 2 * n else None,
                              sample_ids=ids, negative_ids=negative_ids)

    def divergence_message(self, value: float) -> str:
        return (f"the SimCSE loss became {value} at step {self.global_step + 1}; lower the learning rate or use bf16 "
                f"instead of fp16; the last saved model in {self.cfg.out} (if any) is kept")

    def end_of_step(self) -> None:
        if self.global_step % self.cfg.eval_steps == 0:
            self.keep_model()

    def end_of_training(self) -> None:
        self.keep_model()

    def summary(self, final_loss: Optional[float], seconds: float) -> dict:
        return dict(steps=self.global_step, final_loss=final_loss, best_dev_spearman=self.best, seconds=seconds,
                    model=self.cfg.out, supervised=self.data.supervised, pooler=self.model.pooler,
                    world_size=self.world, config=dataclasses.asdict(self.cfg))

    def train(self) -> dict:
        """Runs to `epochs` (or `max_steps`), saves, and returns the summary."""
        self.model.train()
        self.model.head_trained = True
        return super().train()

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate_dev(self) -> Optional[float]:
        if self.dev is None:
            return None
        return sts.evaluate_pairs(self.model, self.dev)["spearman"]

    def keep_model(self) -> None:
        """With a dev set, keep the best model by dev Spearman; without, the latest. Rank 0 only:
        the ranks hold identical models."""
        if not self.is_main or self.saved_at == self.global_step:
            return
        self.saved_at = self.global_step
        score = self.evaluate_dev()
        if score is not None:
            self.metrics.log(kind="eval", step=self.global_step, dev_spearman=score)
            if not math.isfinite(score) or (self.best is not None and score <= self.best):
                return  # a NaN score (constant embeddings) never replaces a real best
            self.best = score
        self.model.save_pretrained(self.cfg.out)


__all__ = ["SimCSETrainer", "TrainingDiverged"]
