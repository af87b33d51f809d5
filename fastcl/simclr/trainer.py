"""SimCLR pre-training: uint8 batches to the device, two views from fastcl.augment there, the
fused NT-Xent loss, LARS with warm-up and cosine decay, a kNN monitor every epoch, metrics in
metrics.jsonl, atomic checkpoints and exact resume. fastcl.engine.Trainer runs the loop; this
module supplies the batches, the views, the loss and the kNN monitor."""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from .. import distributed
from ..engine import Trainer, TrainingDiverged, runtime
from ..losses import NTXentLoss
from ..queue import MemoryQueue
from . import data, evaluate, labelled, labels_file, models, optim
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
    rate_unit = ("img", "images_per_s")

    def __init__(self, config: SimCLRConfig):
        config.validate()
        self.cfg = cfg = config
        super().__init__(out=cfg.out, device=cfg.device, seed=cfg.seed, amp=cfg.amp)
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size {cfg.batch_size} (the global batch) must divide evenly over "
                             f"{self.world} processes")
        self.train_data = data.load(cfg.data, train=True, size=cfg.size)
        self.loss_labels = self._loss_labels()  # before the held-out split: a bad labels file is refused sooner
        self.test_data = data.load(cfg.data, train=False, size=cfg.size)
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
        self.start_or_resume(cfg)

    def _loss_labels(self) -> Optional[torch.Tensor]:
        """Semi-supervised: the loss's labels, with the labelled images drawn K per class or named by a
        labels file (None: self-supervised; fastcl.simclr.labelled); and the data fingerprint resume
        checks, which covers the labels file's content too (a changed file is other training data)."""
        cfg = self.cfg
        source = f"--data {cfg.data}" + (f" --labels {cfg.labels}" if cfg.labels is not None else "")
        self.data_fingerprint = dict(source=source, **self.train_data.fingerprint)
        if cfg.labels is not None:
            named = labels_file.read(cfg.labels, self.train_data)
            self.data_fingerprint.update(named.fingerprint())
            return named.loss_labels(self.train_data)
        if cfg.labelled_per_class:
            return labelled.semi_supervised_labels(self.train_data.labels, cfg.labelled_per_class, cfg.labelled_draw)
        return None

    # -- what the engine's loop calls ---------------------------------------------------------
    def extra_state(self) -> dict:
        return dict(criterion=self.criterion.state_dict())

    def restore_extra(self, state: dict) -> None:
        if "criterion" in state:  # the memory bank; older checkpoints have none
            self.criterion.load_state_dict(state["criterion"])

    def batches(self):
        """This rank's share of each batch of the epoch: (uint8 images, labels, sample ids), in an
        order that depends on the seed and the epoch alone; the labels are the loss's (semi-supervised
        runs), else the dataset's (unused)."""
        source = self.train_data
        if self.loss_labels is not None:
            source = dataclasses.replace(source, labels=self.loss_labels)
        return data.batches(source, self.cfg.batch_size, self.cfg.seed, self.epoch, shard=(self.rank, self.world))

    def samples(self, batch) -> int:
        return batch[0].shape[0] * self.world

    def prepare(self, batch) -> tuple:
        """Two views of each image, stacked (the encoder's inputs), and the loss's target: the labels
        of a semi-supervised run (None otherwise) and the sample ids that keep an image stored twice
        from being its own negative (None with mask_duplicates off)."""
        images, labels, ids = batch
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device) if self.loss_labels is not None else None
        ids = ids.to(self.device) if self.cfg.mask_duplicates else None
        v1, v2 = self._views(images)
        return torch.cat([v1, v2]), (labels, ids)

    def loss(self, embeddings: torch.Tensor, target: tuple) -> torch.Tensor:
        labels, ids = target
        n = embeddings.shape[0] // 2
        return self.criterion(embeddings[:n], embeddings[n:], labels=labels, sample_ids=ids)

    def _views(self, images: torch.Tensor) -> tuple:
        """Two views of this rank's images; under torch.distributed each sample gets the views it
        would get in a one-process run (see SimCLRAugment's shard)."""
        shard = None if self.world == 1 else (self.rank * images.shape[0], self.cfg.batch_size)
        return self.augment(images, views=2, generator=self.generator, shard=shard)

    def divergence_message(self, value: float) -> str:
        return (f"the loss became {value} at step {self.global_step + 1} (epoch {self.epoch}); training stopped and "
                f"the last good checkpoint {self.checkpoint_path} is kept. Lower the learning rate or use bf16 "
                "instead of fp16.")

    def end_of_epoch(self) -> dict:
        return dict(knn_top1=self.knn_accuracy())

    def summary(self, final_loss: Optional[float], seconds: float) -> dict:
        """The summary; kNN accuracy only for a run that trained all its epochs (taken now when the
        run was finished before this call trained anything)."""
        knn = None
        if self.epoch >= self.cfg.epochs:
            knn = self.last_evaluation["knn_top1"] if self.last_evaluation else self.knn_accuracy()
        return dict(epochs=self.epoch, steps=self.global_step, final_loss=final_loss, knn_top1=knn, seconds=seconds,
                    checkpoint=self.checkpoint_path, world_size=self.world)

    # -- evaluation ---------------------------------------------------------------------------
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


__all__ = ["SimCLRTrainer", "TrainingDiverged"]
