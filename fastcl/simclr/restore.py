"""A SimCLR run read back: its checkpoint checked (a file, torch.save's, plain data only, with a
SimCLR model and config in it; errors name the file), and its model rebuilt from the run's config,
with the checkpoint's weights or the run's seeded random initialisation. Every command on a SimCLR
run (knn, linear-probe, neighbours, label-efficiency, embed) reads it through here."""

from __future__ import annotations

import os

import torch

from ..engine import checkpoint
from . import data, models

MODEL_KEYS = ("arch", "cifar_stem", "proj_hidden", "proj_dim", "seed")  # what build_model reads


def load_run(path: str) -> dict:
    """A SimCLR checkpoint's state (loaded with weights_only=True), with a clear error for anything else."""
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a folder, not a SimCLR checkpoint (a run's last.pt; a SimCSE model "
                         "folder goes to --model of embed or sts-eval)")
    state = checkpoint.load(path)
    if not isinstance(state, dict) or "model" not in state or "arch" not in state.get("config", {}):
        raise ValueError(f"{path!r} is not a SimCLR checkpoint (no model and SimCLR config in it)")
    missing = [key for key in MODEL_KEYS if key not in state["config"]]
    if missing:
        raise ValueError(f"{path!r}: its SimCLR config lacks {', '.join(missing)}")
    return state


def load_run_data(path: str, spec: str | None = None) -> tuple[dict, data.ImageData, data.ImageData]:
    """(checkpoint state, training split, held-out split) of a SimCLR run, on `spec` or its own dataset."""
    state = load_run(path)
    config = state["config"]
    spec = spec or config["data"]
    return state, data.load(spec, True, config["size"]), data.load(spec, False, config["size"])


def build_model(config: dict, state: dict | None = None, in_channels: int = 3) -> models.SimCLRModel:
    """The run's SimCLR model: its weights, or (state None) a random initialisation seeded by the
    run. The global random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config["seed"])
        model = models.simclr_model(config["arch"], config["cifar_stem"], config["proj_hidden"], config["proj_dim"],
                                    in_channels=in_channels)
    if state is not None:
        model.load_state_dict(state["model"])
    return model
