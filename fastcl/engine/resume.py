"""Continuing runs: which checkpoint a trainer starts from (resume auto / yes / no), whether a saved
run's settings match this one's, checkpoints every N steps or M minutes with the last K kept, and
every rank's random state, so that a run killed and restarted (by `torchrun --max-restarts` or by
hand) goes on as if it had never stopped."""

from __future__ import annotations

import glob
import os
import re
import time
from typing import Iterable, Optional

import torch
import torch.distributed as dist

from .. import distributed

RESUME_CHOICES = ("auto", "yes", "no")
HISTORY = "checkpoints"  # OUT/checkpoints/step-00000123.pt: the last K step checkpoints
# Settings that may differ between a run and its continuation: where and how it reports, when it
# stops, saves and gives up on a collective. Every other field defines the run.
NOT_RUN_DEFINING = frozenset({"out", "resume", "overwrite", "progress", "device", "max_steps", "log_every",
                              "save_every_steps", "save_every_minutes", "keep_checkpoints", "knn_k", "knn_t",
                              "eval_steps"})


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def resume_mode(value) -> str:
    """"auto", "yes" or "no" from a config's resume field (True / False from older callers); unset
    means auto under torchrun (a restarted group must continue) and no otherwise."""
    if value is None:
        return "auto" if under_torchrun() else "no"
    if value is True or value is False:
        return "yes" if value else "no"
    if value not in RESUME_CHOICES:
        raise ValueError(f"resume must be one of {RESUME_CHOICES} (or True / False), got {value!r}")
    return value


def start_mode(value, overwrite: bool) -> str:
    """resume_mode(value), with --overwrite (a fresh start) refused beside --resume yes / auto."""
    mode = resume_mode(value)
    if overwrite and value not in (None, "no", False):
        raise ValueError(f"overwrite (start over) and resume={value!r} (continue) exclude each other")
    return "no" if overwrite else mode


def refuse_overwrite(out: str, value, overwrite: bool, run_files: Iterable[str]) -> None:
    """A run started in a folder that holds one (any of `run_files`) without being told what to do
    with it, --resume, --overwrite or --no-resume, is refused: re-running a command must not wipe
    its run. Under torchrun the unset mode is auto, and a restarted group goes on."""
    if overwrite or value is not None or resume_mode(value) != "no":
        return
    found = [name for name in run_files if os.path.exists(os.path.join(out, name))]
    if found:
        raise ValueError(f"--out {out!r} already holds a run ({', '.join(found)}): continue it with "
                         "--resume, replace it with --overwrite, or give another --out")


def trainer_of(state: dict) -> Optional[str]:
    """Which trainer wrote a checkpoint: its "trainer" entry, or for older ones its config's fields."""
    config = state.get("config") or {}
    if "trainer" in state:
        return state["trainer"]
    return "simcse" if "train_file" in config else "simclr" if "arch" in config else None


def check_trainer(path: str, state, kind: str) -> None:
    """A ValueError when `path` holds no training state, or one of another trainer than `kind`."""
    if not isinstance(state, dict) or "config" not in state:
        raise ValueError(f"{path} is not a fastcl training checkpoint (no config in it)")
    saved = trainer_of(state)
    if saved is not None and saved != kind:
        raise ValueError(f"{path} is a checkpoint of the {saved} trainer (fastcl {saved}), not of {kind}: "
                         f"continue it with `fastcl {saved} --resume`, or give this run another --out")


def check_data(path: str, saved: Optional[dict], current: dict) -> None:
    """A ValueError, saying what changed, when the checkpoint at `path` was trained on other data than
    this run's (fingerprints: a "source" description and the entries compared: size, sha256, file
    count, version, ...). A checkpoint from before fingerprints were saved is not checked."""
    if not saved or not current:
        return
    keys = [k for k in dict.fromkeys([*current, *saved]) if k != "source" and saved.get(k) != current.get(k)]
    if not keys:
        return

    def shown(key, value):
        if value is None:
            return "none"
        if key == "sha256":
            return value[:12] + "..."
        return f"{value:,}" if isinstance(value, int) else repr(value)

    what = "; ".join(f"{k} {shown(k, saved.get(k))} then, {shown(k, current.get(k))} now" for k in keys)
    raise ValueError(f"{path} was trained on other data than {current.get('source', 'this run')} has now "
                     f"({what}): continue it on the data it was trained on, or start over with --overwrite "
                     "or another --out")


def check_save_options(every_steps: Optional[int], every_minutes: Optional[float], keep: int) -> None:
    if every_steps is not None and every_steps < 1:
        raise ValueError(f"save_every_steps must be >= 1 (unset: at epoch ends only), got {every_steps}")
    if every_minutes is not None and not every_minutes > 0:
        raise ValueError(f"save_every_minutes must be > 0 (unset: no timed saves), got {every_minutes}")
    if keep < 1:
        raise ValueError(f"keep_checkpoints must be >= 1, got {keep}")


def differing_fields(saved: dict, current: dict, defaults: dict, may_differ=NOT_RUN_DEFINING) -> list[str]:
    """The run-defining fields (all but `may_differ`) whose values differ; a field the saved config
    lacks (a checkpoint from before it existed) counts as its default."""
    return sorted(k for k, v in current.items() if k not in may_differ and saved.get(k, defaults.get(k)) != v)


def check_compatible(path: str, saved: dict, current: dict, defaults: dict, may_differ=NOT_RUN_DEFINING) -> None:
    diff = differing_fields(saved, current, defaults, may_differ)
    if diff:
        what = "; ".join(f"{k}: {saved.get(k, defaults.get(k))!r} there, {current[k]!r} here" for k in diff)
        raise ValueError(f"{path} is a checkpoint of a run with other settings ({what}); continue it with the same "
                         "settings, or start over with --no-resume (it will be overwritten) or another --out")


def starting_point(out: str, mode: str) -> Optional[str]:
    """The checkpoint a trainer resumes from: OUT/last.pt when resuming (required for "yes"),
    None for a fresh start. Leftover temporary files of a save that was killed are removed."""
    for tmp in glob.glob(os.path.join(out, ".tmp-*.pt")):
        try:
            os.remove(tmp)
        except OSError:
            pass  # another process of this run removed it first
    path = os.path.join(out, "last.pt")
    if mode == "no":
        return None
    if not os.path.exists(path):
        if mode == "yes":
            raise FileNotFoundError(f"resume: no checkpoint at {path!r} to continue from")
        return None
    return path


class SaveSchedule:
    """When to save besides epoch ends: every `every_steps` steps and every `every_minutes` minutes.
    The clock is rank 0's and its decision is broadcast, so all ranks save at the same step."""

    def __init__(self, every_steps: Optional[int], every_minutes: Optional[float]):
        self.every_steps, self.every_minutes = every_steps, every_minutes
        self.last = time.monotonic()

    @property
    def periodic(self) -> bool:
        """Whether the run asked for saves during training (steps or minutes)."""
        return self.every_steps is not None or self.every_minutes is not None

    def due(self, step: int) -> bool:
        due = self.every_steps is not None and step % self.every_steps == 0
        if self.every_minutes is not None:
            timed = torch.tensor([int(time.monotonic() - self.last >= 60 * self.every_minutes)])
            if distributed.active():
                timed = timed.to(_comm_device())
                dist.broadcast(timed, 0)
            due = due or bool(timed.item())
        return due

    def saved(self) -> None:
        self.last = time.monotonic()


def keep_history(path: str, step: int, keep: int) -> None:
    """A hard link of the checkpoint just written as OUT/checkpoints/step-N.pt (no second write),
    then all but the newest `keep` of those removed."""
    folder = os.path.join(os.path.dirname(path), HISTORY)
    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, f"step-{step:08d}.pt")
    if os.path.exists(target):
        os.remove(target)
    try:
        os.link(path, target)
    except OSError:  # a file system without hard links
        import shutil
        shutil.copyfile(path, target)
    steps = _step_files(folder)
    later = [p for p in steps if p > os.path.basename(target)]  # an abandoned run's, past this one
    steps = [p for p in steps if p not in later]
    for old in later + steps[:-keep]:
        os.remove(os.path.join(folder, old))


def _step_files(folder: str) -> list[str]:
    """The step checkpoints in `folder`, oldest first (their zero-padded names sort by step)."""
    if not os.path.isdir(folder):
        return []
    return sorted(p for p in os.listdir(folder) if re.fullmatch(r"step-\d+\.pt", p))


def clear_history(out: str) -> None:
    """A fresh run in a folder that held another: that run's step checkpoints go."""
    folder = os.path.join(out, HISTORY)
    for name in _step_files(folder):
        os.remove(os.path.join(folder, name))


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def local_rng_state() -> torch.Tensor:
    """This process's random state: the CPU generator's, then the current GPU's where CUDA is used."""
    mine = [torch.get_rng_state()]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        mine.append(torch.cuda.get_rng_state())
    return torch.cat(mine)


def rng_states() -> list[torch.Tensor]:
    """Every rank's random state (local_rng_state), in rank order: a collective."""
    mine = local_rng_state()
    if not distributed.active():
        return [mine]
    parts = [torch.empty_like(mine, device=_comm_device()) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, mine.to(_comm_device()))
    return [p.cpu() for p in parts]


def set_rng_state(states: Iterable[torch.Tensor], rank: int, world: int) -> bool:
    """This rank's random state from `rng_states()` of the saved run; False (and nothing set)
    when that run had another number of processes."""
    states = list(states)
    if len(states) != world:
        return False
    state = states[rank].cpu()
    cpu_bytes = torch.get_rng_state().numel()
    torch.set_rng_state(state[:cpu_bytes].clone())  # own storage: states saved as views of one tensor crashed here
    if state.numel() > cpu_bytes and torch.cuda.is_available():
        torch.cuda.set_rng_state(state[cpu_bytes:])
    return True
