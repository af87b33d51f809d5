"""SimCLR pre-training: uint8 batches to the device, two views from fastcl.augment there, the
fused NT-Xent loss, LARS with warm-up and cosine decay, a kNN monitor every epoch, metrics in
metrics.jsonl, atomic checkpoints and exact resume. The loop pieces come from fastcl.engine."""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Optional

import torch

from .. import distributed
from ..engine import Trainer, TrainingDiverged, progress_bar, runtime
from ..losses import NTXentLoss
from ..queue import MemoryQueue
from . import data, evaluate, models, optim
from .config import SimCLRConfig, augmentation


class SimCLRTrainer(Trainer):
    """Trains an encoder and projection head with SimCLR on `config.data`.

    Under torchrun each process takes an equal share of the global batch, the loss sees every
    rank's embeddings as negatives (`gather_distributed`), and each sample gets the views it would
    get in a one-process run. `train()` returns the summary (also written to OUT/summary.json);
    OUT/last.pt is saved each epoch, every `save_every_steps` steps or `save_every_minutes`
    minutes, at `max_steps` and on Ctrl-C; `resume="yes"` continues from it exactly, and
    `resume="auto"` (the default under torchrun) does when it exists, so a group that torchrun
    restarts after a failure goes on from the last save.

    Example::

        trainer = SimCLRTrainer(config_for("digits", epochs=5, out="runs/digits"))
        summary = trainer.train()          # {'epochs': 5, 'knn_top1': ..., ...}
        trainer.model.encoder              # the trained encoder
    """

    kind = "simclr"

    def __init__(self, config: SimCLRConfig):
        config.validate()
        self.cfg = cfg = config
        super().__init__(out=cfg.out, device=cfg.device, seed=cfg.seed, amp=cfg.amp)
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size {cfg.batch_size} (the global batch) must divide evenly over "
                             f"{self.world} processes")
        self.train_data = data.load(cfg.data, train=True, size=cfg.size)
        self.test_data = data.load(cfg.data, train=False, size=cfg.size)
        self.data_fingerprint = dict(source=f"--data {cfg.data}", **self.train_data.fingerprint)
        if len(self.train_data) < cfg.batch_size:
            raise ValueError(f"batch_size {cfg.batch_size} is larger than the {len(self.train_data)} training images")
        self.model = models.simclr_model(cfg.arch, cfg.cifar_stem, cfg.proj_hidden, cfg.proj_dim,
                                         in_channels=self.train_data.images.shape[1])
        if self.world > 1 and cfg.sync_bn:
            self.model = runtime.to_global_batch_norm(self.model, cuda=self.device.type == "cuda")
        self.model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.net = self.wrap(self.model)
        self.chunk_size = self.chunking(cfg.chunk_size, 2 * cfg.batch_size // self.world)
        self.augment = augmentation(dataclasses.asdict(cfg), cfg.channels_last)
        queue = MemoryQueue(cfg.queue_size, cfg.proj_dim, device=self.device) if cfg.queue_size else None
        self.criterion = NTXentLoss(temperature=cfg.temperature, gather_distributed=self.world > 1, queue=queue)
        self.steps_per_epoch = len(self.train_data) // cfg.batch_size
        total = cfg.epochs * self.steps_per_epoch
        lr = cfg.lr if cfg.lr is not None else optim.scaled_learning_rate(cfg.batch_size, cfg.lr_scaling)
        self.optimizer = optim.build_optimizer(cfg.optimizer, self.model, lr, cfg.weight_decay)
        self.scheduler = optim.warmup_cosine(self.optimizer, int(cfg.warmup() * self.steps_per_epoch), total)
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.epoch = self.step_in_epoch = self.global_step = 0
        self.start_or_resume(cfg)

    # -- state --------------------------------------------------------------------------------
    def _state(self) -> dict:
        return self.training_state(epoch=self.epoch, step_in_epoch=self.step_in_epoch, global_step=self.global_step,
                                   criterion=self.criterion.state_dict())

    def save(self, collective: bool = True) -> None:
        """All ranks call this together (it gathers their random states), except on Ctrl-C."""
        self.save_state(self._state, self.global_step, collective)

    def _restore(self, state: dict) -> None:
        self.load_training_state(state)
        if "criterion" in state:  # the memory bank; older checkpoints have none
            self.criterion.load_state_dict(state["criterion"])
        self.epoch, self.step_in_epoch, self.global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        self.metrics.keep_only(self._before_checkpoint)

    def _before_checkpoint(self, record: dict) -> bool:
        if record["kind"] == "step":
            return record["step"] <= self.global_step
        return record["epoch"] < self.epoch

    # -- training -----------------------------------------------------------------------------
    def _views(self, images: torch.Tensor) -> tuple:
        """Two views of this rank's images; under torch.distributed each sample gets the views it
        would get in a one-process run (see SimCLRAugment's shard)."""
        shard = None if self.world == 1 else (self.rank * images.shape[0], self.cfg.batch_size)
        return self.augment(images, views=2, generator=self.generator, shard=shard)

    def _step(self, images: torch.Tensor, ids: torch.Tensor) -> float:
        images = images.to(self.device, non_blocking=True)
        ids = ids.to(self.device) if self.cfg.mask_duplicates else None
        v1, v2 = self._views(images)
        n = images.shape[0]
        loss, cache = self.embed_and_loss(torch.cat([v1, v2]), self.net,
                                          lambda z: self.criterion(z[:n], z[n:], sample_ids=ids), self.chunk_size)
        value = self.mean_loss(loss, lambda bad: (
            f"the loss became {bad} at step {self.global_step + 1} (epoch {self.epoch}); training stopped and the "
            f"last good checkpoint {self.checkpoint_path} is kept. Lower the learning rate or use bf16 instead "
            "of fp16."))
        self.optimizer_step(loss, self.optimizer, self.scheduler, cache=cache)
        return value

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        """Encoder features of all `images`; under torch.distributed each rank encodes a slice
        and the slices are gathered, so every rank holds them all."""
        if self.world == 1:
            return evaluate.encode(self.model.encoder, images, self.device)
        counts = [len(part) for part in torch.arange(images.shape[0]).tensor_split(self.world)]
        start = sum(counts[:self.rank])
        mine = images[start:start + counts[self.rank]]
        feats = evaluate.encode(self.model.encoder, mine, self.device) if len(mine) else \
            torch.empty(0, self.model.encoder.out_dim)
        return distributed.gather(feats.to(self.device), counts).cpu()

    def knn_accuracy(self) -> float:
        bank, test = self._features(self.train_data.images), self._features(self.test_data.images)
        return evaluate.knn_accuracy(bank, self.train_data.labels, test, self.test_data.labels, self.cfg.knn_k,
                                     self.cfg.knn_t)

    def train(self) -> dict:
        """Runs to `epochs` (or `max_steps`) and returns the summary."""
        start, losses, knn = time.perf_counter(), [], None
        if self.epoch >= self.cfg.epochs:  # resumed a finished run: nothing to train
            return self._finish(start, losses, self.knn_accuracy())
        if self.cfg.max_steps is not None and self.global_step >= self.cfg.max_steps:
            return self._finish(start, losses, None)  # resumed where max_steps stopped it
        try:
            while self.epoch < self.cfg.epochs:
                knn = self._epoch(losses)
                if knn is None:  # max_steps reached mid-epoch
                    return self._finish(start, losses, None)
                self.metrics.log(kind="epoch", epoch=self.epoch - 1, loss=losses[-1] if losses else None,
                                 knn_top1=knn)
                self.save()
        except KeyboardInterrupt:
            self.save(collective=False)  # between steps, so the state is consistent and resumable
            print(f"\ninterrupted: checkpoint saved to {self.checkpoint_path}; continue with --resume",
                  file=sys.stderr)
            raise
        return self._finish(start, losses, knn)

    def _epoch(self, losses: list) -> Optional[float]:
        """One epoch from where the run stands, then the kNN monitor's accuracy; None when
        max_steps stopped it (with a checkpoint saved)."""
        cfg = self.cfg
        tick, seen = time.perf_counter(), 0
        with progress_bar(self.steps_per_epoch, cfg.progress and self.is_main, initial=self.step_in_epoch,
                          desc=f"epoch {self.epoch + 1}/{cfg.epochs}") as bar:
            for i, (images, _, ids) in enumerate(data.batches(self.train_data, cfg.batch_size, cfg.seed, self.epoch,
                                                         shard=(self.rank, self.world))):
                if i < self.step_in_epoch:
                    continue  # resumed mid-epoch: this batch was trained on before the checkpoint
                loss = self._step(images, ids)
                losses.append(loss)
                self.step_in_epoch, self.global_step = i + 1, self.global_step + 1
                seen += images.shape[0] * self.world
                rate = seen / max(time.perf_counter() - tick, 1e-9)
                lr = self.optimizer.param_groups[0]["lr"]
                bar.set_postfix_str(f"loss {loss:.4f} lr {lr:.3g} {rate:,.0f} img/s", refresh=False)
                bar.update()
                stopping = cfg.max_steps is not None and self.global_step >= cfg.max_steps
                if self.global_step % cfg.log_every == 0 or self.step_in_epoch == self.steps_per_epoch or stopping:
                    self.metrics.log(kind="step", step=self.global_step, epoch=self.epoch, loss=loss, lr=lr,
                                     images_per_s=rate)
                if stopping:
                    self.save()
                    return None
                if self.schedule.due(self.global_step) and self.step_in_epoch < self.steps_per_epoch:
                    self.save()  # (the epoch's end saves after the kNN monitor)
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
            knn = self.knn_accuracy()
            last = f"loss {losses[-1]:.4f} " if losses else ""
            bar.set_postfix_str(f"{last}kNN top-1 {100 * knn:.2f}%", refresh=False)
        return knn

    def _finish(self, start: float, losses: list, knn: Optional[float]) -> dict:
        return self.write_summary(dict(
            epochs=self.epoch, steps=self.global_step, final_loss=losses[-1] if losses else None, knn_top1=knn,
            seconds=time.perf_counter() - start, checkpoint=self.checkpoint_path, world_size=self.world))


__all__ = ["SimCLRTrainer", "TrainingDiverged"]
