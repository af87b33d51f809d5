"""The loop pieces every fastcl trainer stands on (solo-learn's base method, without a framework):
the process's rank and device, seeding, the output folder and its metrics log, DDP around the
model, autocast and the fp16 gradient scaler, the optimiser-step tail (unscale, clip, step,
update, schedule), the divergence stop and the summary file. A method's trainer subclasses
`Trainer` and adds its data, model, loss and loop."""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from typing import Callable, Iterable, Optional

import torch

from .. import distributed
from . import amp as amp_lib
from . import checkpoint, files, resume, runtime
from .grad_cache import GradCache, call_forward
from .metrics import MetricsLog, write_summary


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint is kept."""


class Trainer:
    """Shared set-up: call `super().__init__` where the trainer would seed its run, so that
    what it draws afterwards (initial weights, data order) depends on `seed` alone.

    The subclass calls `start_or_resume(config)` at the end of its set-up (and defines
    `_restore(state)`): only then is a previous run's metrics.jsonl removed or trimmed, so a run
    that fails to start leaves it in place. A folder that holds a run is continued (resume) or
    replaced (overwrite, or resume "no") only when asked; unasked, the trainer refuses to start.

    `kind` names the trainer in its checkpoints ("simclr", "simcse"); `run_files` are the files
    whose presence in OUT means it holds a run."""

    kind = "trainer"
    run_files = ("last.pt", "metrics.jsonl", "summary.json")
    data_fingerprint: dict = {}  # what the run trains on (set by the trainer before start_or_resume)

    def __init__(self, *, out: str, device: str, seed: int, amp: str):
        amp_lib.check(amp)
        self.rank, self.world = distributed.rank_world()
        self.is_main = self.rank == 0
        self.device = runtime.device(device)
        torch.manual_seed(seed)
        self.amp = amp
        self.scaler = amp_lib.grad_scaler(self.device, amp)
        self.out = out
        files.make_folder(out)
        self.metrics = MetricsLog(out, enabled=self.is_main)

    def start_or_resume(self, config, may_differ=resume.NOT_RUN_DEFINING) -> None:
        """The end of a trainer's set-up. Where and when this run saves (OUT/last.pt, at the steps or
        minutes `config` asks for, the last `keep_checkpoints` kept under OUT/checkpoints); then
        the saved state it continues from (config.resume: auto, yes or no), given to the trainer's
        `_restore`, or a fresh start. A checkpoint whose settings differ outside `may_differ`, or
        that was trained on other data (`data_fingerprint`), is refused, saying what differs."""
        self.checkpoint_path = os.path.join(config.out, "last.pt")
        self.schedule = resume.SaveSchedule(config.save_every_steps, config.save_every_minutes)
        self.keep = config.keep_checkpoints
        resume.refuse_overwrite(config.out, config.resume, config.overwrite, self.run_files)
        path = resume.starting_point(config.out, resume.start_mode(config.resume, config.overwrite))
        if path is not None:
            state = checkpoint.load(path, map_location=self.device)
            resume.check_trainer(path, state, self.kind)
            defaults = {f.name: f.default for f in dataclasses.fields(config)}
            resume.check_compatible(path, state["config"], dataclasses.asdict(config), defaults, may_differ)
            resume.check_data(path, state.get("data"), self.data_fingerprint)
            self._restore(state)
            if self.is_main:
                print(f"resumed from step {self.global_step} (epoch {self.epoch}) of {path}", file=sys.stderr)
        self.ready(resumed=path is not None)

    def restore_rng(self, state: dict) -> None:
        """Every rank's random state as saved. A checkpoint written by another number of processes
        (or on Ctrl-C under torchrun) gives every rank rank 0's state: the run continues close to,
        not exactly as, it would have, and says so."""
        saved = state.get("rng") or ([state["torch_rng"]] if "torch_rng" in state else [])  # older: rank 0's CPU only
        if saved and resume.set_rng_state(saved, self.rank, self.world):
            return
        if saved:
            resume.set_rng_state(saved[:1], 0, 1)
        warnings.warn(f"the checkpoint holds the random state of {len(saved)} process(es), this run has {self.world}: "
                      "it continues, but not bit for bit as it would have", stacklevel=2)

    def training_state(self, **extra) -> dict:
        """What every trainer saves: model, optimiser, schedule, AMP scaler, its data/augmentation
        generator, config, kind and data fingerprint, plus the trainer's own `extra` entries."""
        return dict(model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                    scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(),
                    generator=self.generator.get_state(), config=dataclasses.asdict(self.cfg),
                    trainer=self.kind, data=self.data_fingerprint, **extra)

    def load_training_state(self, state: dict) -> None:
        """The inverse of training_state for its common entries, and every rank's random state."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"].cpu())
        self.restore_rng(state)

    def save_state(self, make_state: Callable[[], dict], step: int, collective: bool = True) -> None:
        """Rank 0 writes make_state() and every rank's random state (gathered: all ranks call this
        together, unless collective=False, as on Ctrl-C) to OUT/last.pt atomically, and keeps it
        as a step checkpoint."""
        rng = resume.rng_states() if collective else [resume.local_rng_state()]
        if self.is_main:  # the ranks hold identical models and optimiser states
            state = make_state()
            state["rng"] = rng
            checkpoint.save_atomic(state, self.checkpoint_path)
            resume.keep_history(self.checkpoint_path, step, self.keep)
        self.schedule.saved()

    def ready(self, resumed: bool = False) -> None:
        """Set-up succeeded: a fresh run starts its metrics log, checkpoints and summary over (a
        resumed one trimmed its log)."""
        if not resumed:
            self.metrics.start_fresh()
            if self.is_main:
                resume.clear_history(self.out)
                for name in ("last.pt", "summary.json"):  # a crash before its first save must not leave them
                    if os.path.exists(os.path.join(self.out, name)):
                        os.remove(os.path.join(self.out, name))

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """What the training step calls: the model itself, or DDP around it under torchrun."""
        if self.world == 1:
            return model
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def autocast(self):
        return amp_lib.autocast(self.device, self.amp)

    def mean_loss(self, loss: torch.Tensor, diverged: Callable[[float], str]) -> float:
        """The loss averaged over ranks (what is logged); raises TrainingDiverged with the message
        `diverged(value)` when it is not finite, before any parameter changes."""
        value = distributed.mean_over_ranks(loss)
        if not torch.isfinite(value):
            raise TrainingDiverged(diverged(float(value)))
        return float(value)

    def chunking(self, chunk_size: Optional[int], rows: int) -> Optional[int]:
        """The chunk size a step uses: None (one shot) when unset or when one chunk holds all
        `rows` encoder inputs of this process's step, which is said once."""
        if chunk_size is not None and chunk_size >= rows:
            warnings.warn(f"chunk_size {chunk_size} >= the {rows} encoder inputs of a step on this process: every "
                          "step runs in one shot (no gradient caching)", stacklevel=3)
            return None
        return chunk_size

    def embed_and_loss(self, inputs, forward: Callable, loss_fn: Callable[[torch.Tensor], torch.Tensor],
                       chunk_size: Optional[int]) -> tuple[torch.Tensor, Optional[GradCache]]:
        """(loss, cache): loss_fn of the embeddings of `inputs` under autocast. With chunk_size,
        the encoder runs in chunks without a graph (GradCache) and `cache` does the backward;
        without, the loss holds the graph and cache is None."""
        if chunk_size is None:
            with self.autocast():
                z = call_forward(forward, inputs)
            return loss_fn(z), None
        cache = GradCache(self.net, chunk_size, forward=forward, autocast=self.autocast)
        return loss_fn(cache.embed(inputs)), cache

    def optimizer_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, scheduler,
                       clip: Optional[Iterable[torch.nn.Parameter]] = None, max_grad_norm: float = 0.0,
                       cache: Optional[GradCache] = None) -> None:
        """Backward through the scaler (chunk by chunk when `cache` embedded the batch), optional
        gradient clipping of `clip` to `max_grad_norm`, the optimiser step and one scheduler step."""
        optimizer.zero_grad(set_to_none=True)
        if cache is not None:
            cache.backward(loss, scaler=self.scaler)
        else:
            self.scaler.scale(loss).backward()
        if clip is not None and max_grad_norm > 0:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(clip, max_grad_norm)
        self.scaler.step(optimizer)
        self.scaler.update()
        scheduler.step()

    def write_summary(self, summary: dict) -> dict:
        write_summary(self.out, summary, self.is_main)
        return summary
