"""The base every fastcl trainer stands on (solo-learn's base method, without a framework): the
process's rank and device, seeding, the output folder and its metrics log, DDP around the model,
autocast and the fp16 gradient scaler, and the loop itself: epochs and steps, the progress bar
and rate, the metrics log, max_steps, the save schedule, the mid-epoch resume, the divergence
stop and the summary. A method's trainer subclasses `Trainer`, builds its data, model and
optimiser, and fills in the named hooks the loop calls (see `Trainer`)."""

from __future__ import annotations

import dataclasses
import itertools
import os
import sys
import time
import warnings
from typing import Any, Iterable, Optional

import torch

from .. import distributed
from . import amp as amp_lib
from . import checkpoint, files, resume, runtime
from .grad_cache import GradCache, call_forward
from .metrics import MetricsLog, progress_bar, write_summary


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint is kept."""


class Trainer:
    """Set-up, state and the loop. Call `super().__init__` where the trainer would seed its run, so
    that what it draws afterwards (initial weights, data order) depends on `seed` alone; end the
    set-up with `start_or_resume(config)`: only then is a previous run's metrics.jsonl removed or
    trimmed, so a run that fails to start leaves it in place. A folder that holds a run is
    continued (resume) or replaced (overwrite, or resume "no") only when asked.

    The set-up provides `cfg` (epochs, max_steps, log_every, progress and the save options),
    `steps_per_epoch`, `model` (and `net`, the model or DDP around it: `wrap`), `optimizer`,
    `scheduler`, `generator` (saved and restored with the run), `chunk_size` (`chunking`). `train()`
    then calls the hooks, in this order for each step:

    - `batches()`: the current epoch's (`self.epoch`) batches, in order; called again for the same
      epoch it yields the same batches, which is how a run resumed mid-epoch skips those done;
    - `prepare(batch)`: (encoder inputs on the device, what the loss needs besides embeddings);
    - `loss(embeddings, target)`: the step's loss (a tensor that the update backpropagates);
    - `samples(batch)`: the samples of the global batch, for the rate;
    - `end_of_step()`, `end_of_epoch()` (the epoch record's metrics, or None), `end_of_training()`;
    - `summary(final_loss, seconds)`, `divergence_message(value)`, and `extra_state()` /
      `restore_extra(state)` for what the method saves besides the common training state.

    `kind` names the trainer in its checkpoints ("simclr", "simcse"); `run_files` are the files
    whose presence in OUT means it holds a run; `rate_unit` is the rate's unit on the bar and its
    name in metrics.jsonl; `always_saves`: OUT/last.pt is written at each epoch's end, at the run's
    and on Ctrl-C (else only when save_every_steps / save_every_minutes ask, and then at the end)."""

    kind = "trainer"
    run_files = ("last.pt", "metrics.jsonl", "summary.json")
    data_fingerprint: dict = {}  # what the run trains on (set by the trainer before start_or_resume)
    rate_unit = ("samples", "samples_per_s")
    always_saves = True
    max_grad_norm = 0.0  # clip the gradients' norm to this (0: no clipping)

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
        self.epoch = self.step_in_epoch = self.global_step = 0
        self.saved_step: Optional[int] = None  # the step of the last save (or of the checkpoint resumed)

    def start_or_resume(self, config, may_differ=resume.NOT_RUN_DEFINING) -> None:
        """The end of a trainer's set-up. Where and when this run saves (OUT/last.pt, at the steps or
        minutes `config` asks for, the last `keep_checkpoints` kept under OUT/checkpoints); then
        the saved state it continues from (config.resume: auto, yes or no), given to the trainer's
        `restore`, or a fresh start. A checkpoint whose settings differ outside `may_differ`, or
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
            self.restore(state)
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

    def state(self) -> dict:
        """What a checkpoint holds: model, optimiser, schedule, AMP scaler, the trainer's generator,
        where the run stands (epoch, step_in_epoch, global_step), config, kind and data fingerprint,
        plus the method's `extra_state()`."""
        return dict(model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                    scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(),
                    generator=self.generator.get_state(), epoch=self.epoch, step_in_epoch=self.step_in_epoch,
                    global_step=self.global_step, config=dataclasses.asdict(self.cfg), trainer=self.kind,
                    data=self.data_fingerprint, **self.extra_state())

    def restore(self, state: dict) -> None:
        """The inverse of `state`, every rank's random state, and the metrics log cut back to what
        the checkpoint had seen (what was logged after it belongs to a run that did not save it)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"].cpu())
        self.restore_rng(state)
        self.epoch, self.step_in_epoch, self.global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        self.saved_step = self.global_step
        self.restore_extra(state)
        self.metrics.keep_only(self._before_checkpoint)

    def _before_checkpoint(self, record: dict) -> bool:
        if "step" in record:
            return record["step"] <= self.global_step
        return record.get("epoch", -1) < self.epoch  # an epoch record: logged once the epoch was done

    def extra_state(self) -> dict:
        return {}

    def restore_extra(self, state: dict) -> None:
        pass

    def save(self, collective: bool = True) -> None:
        """Rank 0 writes `state()` and every rank's random state (gathered: all ranks call this
        together, unless collective=False, as on Ctrl-C) to OUT/last.pt atomically, and keeps it
        as a step checkpoint."""
        rng = resume.rng_states() if collective else [resume.local_rng_state()]
        if self.is_main:  # the ranks hold identical models and optimiser states
            state = self.state()
            state["rng"] = rng
            checkpoint.save_atomic(state, self.checkpoint_path)
            resume.keep_history(self.checkpoint_path, self.global_step, self.keep)
        self.schedule.saved()
        self.saved_step = self.global_step

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

    def mean_loss(self, loss: torch.Tensor) -> float:
        """The loss averaged over ranks (what is logged); raises TrainingDiverged with the method's
        `divergence_message` when it is not finite, before any parameter changes."""
        value = distributed.mean_over_ranks(loss)
        if not torch.isfinite(value):
            raise TrainingDiverged(self.divergence_message(float(value)))
        return float(value)

    def chunking(self, chunk_size: Optional[int], rows: int) -> Optional[int]:
        """The chunk size a step uses: None (one shot) when unset or when one chunk holds all
        `rows` encoder inputs of this process's step, which is said once."""
        if chunk_size is not None and chunk_size >= rows:
            warnings.warn(f"chunk_size {chunk_size} >= the {rows} encoder inputs of a step on this process: every "
                          "step runs in one shot (no gradient caching)", stacklevel=3)
            return None
        return chunk_size

    def embed(self, inputs) -> tuple[torch.Tensor, Optional[GradCache]]:
        """(embeddings, cache) of a step's encoder inputs under autocast. With chunk_size, the
        encoder runs in chunks without a graph (GradCache) and `cache` does the backward; without,
        the embeddings hold the graph and cache is None."""
        if self.chunk_size is None:
            with self.autocast():
                return call_forward(self.net, inputs), None
        cache = GradCache(self.net, self.chunk_size, autocast=self.autocast)
        return cache.embed(inputs), cache

    def optimizer_step(self, loss: torch.Tensor, cache: Optional[GradCache] = None) -> None:
        """Backward through the scaler (chunk by chunk when `cache` embedded the batch), gradient
        clipping to `max_grad_norm` when set, the optimiser step and one scheduler step."""
        self.optimizer.zero_grad(set_to_none=True)
        if cache is not None:
            cache.backward(loss, scaler=self.scaler)
        else:
            self.scaler.scale(loss).backward()
        if self.max_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    def write_summary(self, summary: dict) -> dict:
        write_summary(self.out, summary, self.is_main)
        return summary

    # -- what a method fills in ------------------------------------------------------------------
    def batches(self) -> Iterable:
        raise NotImplementedError

    def prepare(self, batch) -> tuple[Any, Any]:
        raise NotImplementedError

    def loss(self, embeddings: torch.Tensor, target) -> torch.Tensor:
        raise NotImplementedError

    def samples(self, batch) -> int:
        raise NotImplementedError

    def divergence_message(self, value: float) -> str:
        return f"the loss became {value} at step {self.global_step + 1}; training stopped"

    def summary(self, final_loss: Optional[float], seconds: float) -> dict:
        return dict(steps=self.global_step, final_loss=final_loss, seconds=seconds, world_size=self.world)

    def end_of_step(self) -> None:
        pass

    def end_of_epoch(self) -> Optional[dict]:
        return None

    def end_of_training(self) -> None:
        pass

    # -- the loop -------------------------------------------------------------------------------
    def train(self) -> dict:
        """Runs from where the run stands to `epochs` (or `max_steps`): every epoch's `batches()`
        (a resumed run skips those its checkpoint had done), a `train_step` each, the metrics log,
        the save schedule; then `end_of_training()` and the summary (also OUT/summary.json)."""
        start, self.losses, self.last_evaluation = time.perf_counter(), [], None
        try:
            while self.epoch < self.cfg.epochs and self.global_step < self.final_step():
                if not self.run_epoch():
                    break
        except KeyboardInterrupt:
            if self.always_saves:
                self.save(collective=False)  # between steps, so the state is consistent and resumable
                print(f"\ninterrupted: checkpoint saved to {self.checkpoint_path}; continue with --resume",
                      file=sys.stderr)
            raise
        self.end_of_training()
        if (self.always_saves or self.schedule.periodic) and self.saved_step != self.global_step:
            self.save()  # a restart of a finished run then finds it finished
        final_loss = self.losses[-1] if self.losses else None
        return self.write_summary(self.summary(final_loss, time.perf_counter() - start))

    def final_step(self) -> int:
        """The run's last step: the end of its last epoch, or max_steps when that comes first."""
        steps = self.cfg.epochs * self.steps_per_epoch
        return steps if self.cfg.max_steps is None else min(steps, self.cfg.max_steps)

    def run_epoch(self) -> bool:
        """The rest of the current epoch; False when max_steps stopped it before its end. Its
        batches are drawn again as they were (they depend on the seed and the epoch alone), and
        the `step_in_epoch` done before a resume are skipped."""
        tick, seen = time.perf_counter(), 0
        with progress_bar(self.steps_per_epoch, self.cfg.progress and self.is_main, initial=self.step_in_epoch,
                          desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}") as bar:
            for batch in itertools.islice(self.batches(), self.step_in_epoch, None):
                loss = self.train_step(batch)
                self.losses.append(loss)
                self.step_in_epoch, self.global_step = self.step_in_epoch + 1, self.global_step + 1
                seen += self.samples(batch)
                rate = seen / max(time.perf_counter() - tick, 1e-9)
                lr = self.optimizer.param_groups[0]["lr"]
                bar.set_postfix_str(f"loss {loss:.4f} lr {lr:.3g} {rate:,.0f} {self.rate_unit[0]}/s", refresh=False)
                bar.update()
                if not self.after_step(loss, lr, rate):
                    return False
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
            record = self.end_of_epoch()
            if record is not None:
                bar.set_postfix_str(" ".join(f"{k} {v:.4g}" for k, v in record.items()), refresh=False)
        if record is not None:
            self.last_evaluation = record
            self.metrics.log(kind="epoch", epoch=self.epoch - 1, loss=self.losses[-1] if self.losses else None,
                             **record)
        if self.always_saves:
            self.save()
        return True

    def after_step(self, loss: float, lr: float, rate: float) -> bool:
        """The step's record (every log_every steps, at an epoch's end and at the run's), the
        method's `end_of_step`, and a scheduled save; False when max_steps stops the run here."""
        epoch_over, last = self.step_in_epoch == self.steps_per_epoch, self.global_step >= self.final_step()
        if self.global_step % self.cfg.log_every == 0 or epoch_over or last:
            self.metrics.log(kind="step", step=self.global_step, epoch=self.epoch, loss=loss, lr=lr,
                             **{self.rate_unit[1]: rate})
        self.end_of_step()
        if self.cfg.max_steps is not None and self.global_step >= self.cfg.max_steps:
            return False
        # An epoch's end saves after its evaluation; the run's end saves after end_of_training.
        if not last and self.schedule.due(self.global_step) and not (epoch_over and self.always_saves):
            self.save()
        return True

    def train_step(self, batch) -> float:
        """One optimiser step on `batch`: the method's encoder inputs and loss target for it
        (`prepare`), their embeddings (`embed`), the method's `loss`, the update; returns the loss
        averaged over ranks."""
        inputs, target = self.prepare(batch)
        embeddings, cache = self.embed(inputs)
        loss = self.loss(embeddings, target)
        value = self.mean_loss(loss)
        self.optimizer_step(loss, cache)
        return value
