"""SimCLR pre-training: uint8 batches to the device, two views from fastcl.augment there, the
fused NT-Xent loss, LARS with warm-up and cosine decay, a kNN monitor every epoch, metrics in
metrics.jsonl, atomic checkpoints and exact resume.

    from fastcl.train import SimCLRConfig, SimCLRTrainer
    summary = SimCLRTrainer(SimCLRConfig(data="cifar10:/data", arch="resnet18", epochs=800)).train()
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

import torch

from . import checkpoint, data, distributed, evaluate, models, optim
from .augment import SimCLRAugment
from .losses import NTXentLoss

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def progress_bar(total: int, enabled: bool, **kwargs):
    """A tqdm bar on stderr: redrawn in place on a terminal, one line every 30 s in a log file
    (CI, nohup)."""
    from tqdm import tqdm

    return tqdm(total=total, unit="step", leave=True, dynamic_ncols=True, disable=not enabled,
                mininterval=0.2 if sys.stderr.isatty() else 30, **kwargs)


@dataclass
class SimCLRConfig:
    data: str = "fake"
    out: str = "runs/simclr"
    arch: str = "small_cnn"
    cifar_stem: bool = True
    size: int = 32
    batch_size: int = 256
    epochs: int = 30
    optimizer: str = "lars"
    lr: Optional[float] = None  # None: scaled from the batch size (lr_scaling)
    lr_scaling: str = "linear"
    weight_decay: float = 1e-6
    warmup_epochs: Optional[float] = None  # None: 10 epochs, or a tenth of a shorter run
    temperature: float = 0.5
    proj_hidden: int = 2048
    proj_dim: int = 128
    strength: float = 0.5  # colour-jitter strength: 0.5 for CIFAR, 1.0 for ImageNet
    crop_min: float = 0.08  # smallest crop area fraction of the random resized crop
    flip_p: float = 0.5
    blur_p: float = 0.0
    amp: str = "none"
    channels_last: bool = False
    seed: int = 0
    knn_k: int = 200
    knn_t: float = 0.1
    log_every: int = 10  # steps between metrics.jsonl records
    progress: bool = True  # the progress bar (on stderr)
    max_steps: Optional[int] = None  # stop (with a checkpoint) after this many steps in all
    device: str = "auto"
    resume: bool = False
    sync_bn: bool = False  # under torch.distributed: batch norm statistics over the global batch

    def validate(self) -> None:
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (a batch of one has no negatives), got {self.batch_size}")
        if self.size <= 0:
            raise ValueError(f"size must be > 0, got {self.size}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {tuple(AMP_DTYPES)}, got {self.amp!r}")
        if self.arch not in models.ARCHS:
            raise ValueError(f"arch must be one of {models.ARCHS}, got {self.arch!r}")
        if not 0 < self.crop_min <= 1:
            raise ValueError(f"crop_min must be in (0, 1], got {self.crop_min}")
        if not 0 <= self.flip_p <= 1:
            raise ValueError(f"flip_p must be in [0, 1], got {self.flip_p}")
        if self.warmup_epochs is not None and not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs], got {self.warmup_epochs}")

    def warmup(self) -> float:
        return self.warmup_epochs if self.warmup_epochs is not None else min(10.0, self.epochs / 10)


# Where a dataset trains better away from the CIFAR defaults. digits: small batches for more steps
# in a CPU-sized run, AdamW, a lower temperature, large crops (a small crop of a 12-24 px digit in
# a 32 px scene often misses it) and no flips (a mirrored 2 is a 5).
RECIPES = {
    "digits": dict(batch_size=128, optimizer="adamw", lr=3e-3, temperature=0.2, proj_hidden=512, crop_min=0.6,
                   flip_p=0.0),
}


def config_for(data: str, **overrides) -> SimCLRConfig:
    """The SimCLRConfig for a dataset spec: SimCLRConfig's defaults, then the dataset's entry in
    RECIPES, then `overrides`."""
    recipe = RECIPES.get(data.partition(":")[0], {})
    return SimCLRConfig(**{**recipe, **overrides, "data": data})


@torch.no_grad()
def encode(encoder: torch.nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """Encoder features of uint8 images scaled to [0, 1], in eval mode."""
    was_training = encoder.training
    encoder.eval()
    feats = [encoder(images[i:i + batch_size].to(device).float().div_(255)).float().cpu()
             for i in range(0, images.shape[0], batch_size)]
    encoder.train(was_training)
    return torch.cat(feats)


class SimCLRTrainer:
    def __init__(self, config: SimCLRConfig):
        config.validate()
        self.cfg = cfg = config
        self.rank, self.world = distributed.rank_world()
        self.is_main = self.rank == 0
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size {cfg.batch_size} (the global batch) must divide evenly over "
                             f"{self.world} processes")
        self.device = distributed.device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.train_data = data.load(cfg.data, train=True, size=cfg.size)
        self.test_data = data.load(cfg.data, train=False, size=cfg.size)
        if len(self.train_data) < cfg.batch_size:
            raise ValueError(f"batch_size {cfg.batch_size} is larger than the {len(self.train_data)} training images")
        encoder = models.encoder(cfg.arch, cifar_stem=cfg.cifar_stem, in_channels=self.train_data.images.shape[1])
        self.model = models.SimCLRModel(encoder, models.ProjectionHead(encoder.out_dim, cfg.proj_hidden, cfg.proj_dim))
        if self.world > 1 and cfg.sync_bn:
            self.model = distributed.to_global_batch_norm(self.model, cuda=self.device.type == "cuda")
        self.model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.net = self.model  # what the training step calls: the model, or DDP around it
        if self.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.augment = SimCLRAugment(cfg.size, scale=(cfg.crop_min, 1.0), flip_p=cfg.flip_p,
                                     strength=cfg.strength, blur_p=cfg.blur_p, channels_last=cfg.channels_last)
        self.criterion = NTXentLoss(temperature=cfg.temperature, gather_distributed=self.world > 1)
        self.steps_per_epoch = len(self.train_data) // cfg.batch_size
        total = cfg.epochs * self.steps_per_epoch
        lr = cfg.lr if cfg.lr is not None else optim.scaled_learning_rate(cfg.batch_size, cfg.lr_scaling)
        self.optimizer = optim.build_optimizer(cfg.optimizer, self.model, lr, cfg.weight_decay)
        self.scheduler = optim.warmup_cosine(self.optimizer, int(cfg.warmup() * self.steps_per_epoch), total)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.epoch = self.step_in_epoch = self.global_step = 0
        os.makedirs(cfg.out, exist_ok=True)
        self.checkpoint_path = os.path.join(cfg.out, "last.pt")
        self.metrics_path = os.path.join(cfg.out, "metrics.jsonl")
        if cfg.resume:
            self._restore()
        elif os.path.exists(self.metrics_path) and self.is_main:
            os.remove(self.metrics_path)

    # -- state --------------------------------------------------------------------------------
    def _state(self) -> dict:
        return dict(model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                    scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(),
                    generator=self.generator.get_state(), torch_rng=torch.get_rng_state(), epoch=self.epoch,
                    step_in_epoch=self.step_in_epoch, global_step=self.global_step,
                    config=dataclasses.asdict(self.cfg))

    def save(self) -> None:
        if self.is_main:  # the ranks hold identical states
            checkpoint.save_atomic(self._state(), self.checkpoint_path)

    def _restore(self) -> None:
        state = checkpoint.load(self.checkpoint_path, map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        self.epoch, self.step_in_epoch, self.global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        # Metrics written after the checkpoint belong to a run that did not get to save them.
        if os.path.exists(self.metrics_path) and self.is_main:
            with open(self.metrics_path) as f:
                kept = [line for line in f if self._before_checkpoint(json.loads(line))]
            with open(self.metrics_path, "w") as f:
                f.writelines(kept)

    def _before_checkpoint(self, record: dict) -> bool:
        if record["kind"] == "step":
            return record["step"] <= self.global_step
        return record["epoch"] < self.epoch

    def _log(self, **record) -> None:
        if not self.is_main:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    # -- training -----------------------------------------------------------------------------
    def _views(self, images: torch.Tensor) -> tuple:
        """Two views of this rank's images; under torch.distributed each sample gets the views it
        would get in a one-process run (see SimCLRAugment's shard)."""
        shard = None if self.world == 1 else (self.rank * images.shape[0], self.cfg.batch_size)
        return self.augment(images, views=2, generator=self.generator, shard=shard)

    def _step(self, images: torch.Tensor) -> float:
        cfg = self.cfg
        images = images.to(self.device, non_blocking=True)
        v1, v2 = self._views(images)
        amp = AMP_DTYPES[cfg.amp]
        with torch.autocast(self.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            z = self.net(torch.cat([v1, v2]))
        loss = self.criterion(z[:images.shape[0]], z[images.shape[0]:])
        value = distributed.mean_over_ranks(loss)
        if not torch.isfinite(value):
            raise TrainingDiverged(
                f"the loss became {float(value)} at step {self.global_step + 1} (epoch {self.epoch}); training "
                f"stopped and the last good checkpoint {self.checkpoint_path} is kept. Lower the learning rate "
                "or use bf16 instead of fp16.")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return float(value)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        """Encoder features of all `images`; under torch.distributed each rank encodes a slice
        and the slices are gathered, so every rank holds them all."""
        if self.world == 1:
            return encode(self.model.encoder, images, self.device)
        counts = [len(part) for part in torch.arange(images.shape[0]).tensor_split(self.world)]
        start = sum(counts[:self.rank])
        mine = images[start:start + counts[self.rank]]
        feats = encode(self.model.encoder, mine, self.device) if len(mine) else \
            torch.empty(0, self.model.encoder.out_dim)
        return distributed.gather(feats.to(self.device), counts).cpu()

    def knn_accuracy(self) -> float:
        bank, test = self._features(self.train_data.images), self._features(self.test_data.images)
        return evaluate.knn_accuracy(bank, self.train_data.labels, test, self.test_data.labels, self.cfg.knn_k,
                                     self.cfg.knn_t)

    def train(self) -> dict:
        cfg = self.cfg
        start, losses, knn = time.perf_counter(), [], None
        try:
            while self.epoch < cfg.epochs:
                tick, seen = time.perf_counter(), 0
                with progress_bar(self.steps_per_epoch, self.cfg.progress and self.is_main, initial=self.step_in_epoch,
                                  desc=f"epoch {self.epoch + 1}/{cfg.epochs}") as bar:
                    for i, (images, _) in enumerate(data.batches(self.train_data, cfg.batch_size, cfg.seed,
                                                                 self.epoch, shard=(self.rank, self.world))):
                        if i < self.step_in_epoch:
                            continue  # resumed mid-epoch: this batch was trained on before the checkpoint
                        loss = self._step(images)
                        losses.append(loss)
                        self.step_in_epoch, self.global_step = i + 1, self.global_step + 1
                        seen += images.shape[0] * self.world
                        rate = seen / max(time.perf_counter() - tick, 1e-9)
                        lr = self.optimizer.param_groups[0]["lr"]
                        bar.set_postfix_str(f"loss {loss:.4f} lr {lr:.3g} {rate:,.0f} img/s", refresh=False)
                        bar.update()
                        stopping = cfg.max_steps is not None and self.global_step >= cfg.max_steps
                        if (self.global_step % cfg.log_every == 0 or self.step_in_epoch == self.steps_per_epoch
                                or stopping):
                            self._log(kind="step", step=self.global_step, epoch=self.epoch, loss=loss, lr=lr,
                                      images_per_s=rate)
                        if stopping:
                            self.save()
                            return self._finish(start, losses, None)
                    self.epoch, self.step_in_epoch = self.epoch + 1, 0
                    knn = self.knn_accuracy()
                    last = f"loss {losses[-1]:.4f} " if losses else ""
                    bar.set_postfix_str(f"{last}kNN top-1 {100 * knn:.2f}%", refresh=False)
                self._log(kind="epoch", epoch=self.epoch - 1, loss=losses[-1] if losses else None, knn_top1=knn)
                self.save()
        except KeyboardInterrupt:
            self.save()  # between steps, so the state is consistent and resumable
            print(f"\ninterrupted: checkpoint saved to {self.checkpoint_path}; continue with --resume",
                  file=sys.stderr)
            raise
        return self._finish(start, losses, knn)

    def _finish(self, start: float, losses: list, knn: Optional[float]) -> dict:
        summary = dict(epochs=self.epoch, steps=self.global_step, final_loss=losses[-1] if losses else None,
                       knn_top1=knn, seconds=time.perf_counter() - start, checkpoint=self.checkpoint_path,
                       world_size=self.world)
        if self.is_main:
            with open(os.path.join(self.cfg.out, "summary.json"), "w") as f:
                json.dump(summary, f, indent=2)
        return summary


def load_encoder(path: str, device: str = "auto") -> tuple[torch.nn.Module, dict]:
    """The encoder of a SimCLR checkpoint, for evaluation."""
    state = checkpoint.load(path)
    cfg = SimCLRConfig(**state["config"])
    enc = models.encoder(cfg.arch, cifar_stem=cfg.cifar_stem)
    model = models.SimCLRModel(enc, models.ProjectionHead(enc.out_dim, cfg.proj_hidden, cfg.proj_dim))
    model.load_state_dict(state["model"])
    return model.encoder.to(distributed.device(device)), state["config"]


def evaluate_checkpoint(path: str, spec: Optional[str] = None, method: str = "knn", device: str = "auto") -> float:
    """kNN (k=200, t=0.1) or linear-probe top-1 of a checkpoint's frozen encoder."""
    encoder, config = load_encoder(path, device)
    spec = spec or config["data"]
    train, test = data.load(spec, True, config["size"]), data.load(spec, False, config["size"])
    dev = next(encoder.parameters()).device
    f_train, f_test = encode(encoder, train.images, dev), encode(encoder, test.images, dev)
    if method == "knn":
        return evaluate.knn_accuracy(f_train, train.labels, f_test, test.labels, config["knn_k"], config["knn_t"])
    if method == "linear":
        return evaluate.linear_probe(f_train, train.labels, f_test, test.labels)
    raise ValueError(f"method must be 'knn' or 'linear', got {method!r}")

