"""`fastcl demo` (and `make demo`): SimCLR on the built-in digits with the small CNN, on the CPU
in minutes, and what shows it learned something: the kNN top-1 of raw pixels, of the encoder at
random initialisation and of the trained encoder; the nearest training images of held-out
queries before and after (neighbours.png); and the accuracy from 10 labels per class of a
supervised model trained from scratch, a linear probe and a fine-tuned SimCLR encoder."""

from __future__ import annotations

import json
import os
import time

import torch

from . import evaluate
from .config import config_for
from .trainer import SimCLRTrainer


def raw_pixel_knn(trainer: SimCLRTrainer) -> float:
    train, test = trainer.train_data, trainer.test_data
    return evaluate.knn_accuracy(train.images.flatten(1).float(), train.labels, test.images.flatten(1).float(),
                                 test.labels, trainer.cfg.knn_k, trainer.cfg.knn_t)


def run(out: str = "runs/digits-demo", epochs: int = 30, seed: int = 0, label_steps: int = 1000, **overrides) -> int:
    # the demo is re-made whole each time: a run already in OUT is replaced
    cfg = config_for("digits", out=out, epochs=epochs, seed=seed, **{"overwrite": True, **overrides})
    trainer = SimCLRTrainer(cfg)
    print(f"SimCLR on the built-in digits ({len(trainer.train_data)} training scenes, {len(trainer.test_data)} "
          f"test scenes of held-out digits), {cfg.arch}, batch {cfg.batch_size}, {cfg.epochs} epochs on "
          f"{trainer.device.type} ({torch.get_num_threads()} threads); writing {cfg.out}")
    raw, random_init = raw_pixel_knn(trainer), trainer.knn_accuracy()
    start = time.perf_counter()
    summary = trainer.train()
    minutes = (time.perf_counter() - start) / 60
    result = dict(raw_pixels=raw, random_init=random_init, trained=summary["knn_top1"], train_minutes=minutes)
    with open(os.path.join(cfg.out, "demo.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nkNN top-1 on held-out digits (k={cfg.knn_k}, t={cfg.knn_t}):")
    print(f"  raw pixels            {100 * raw:6.2f}%")
    print(f"  random-init encoder   {100 * random_init:6.2f}%")
    print(f"  SimCLR-trained        {100 * summary['knn_top1']:6.2f}%   ({minutes:.1f} min of training)")
    from .neighbours import write_neighbours

    picture = write_neighbours(trainer.checkpoint_path, os.path.join(cfg.out, "neighbours.png"),
                               device=str(trainer.device))
    print(f"nearest training images of held-out queries, before and after: {picture}")
    from . import label_efficiency as le

    print("\nlearning from scarce labels: held-out accuracy with 10 labels per class (one draw; `fastcl "
          "label-efficiency --draws 3` gives the spread)")
    print(le.header())
    scarce = le.run(trainer.checkpoint_path, [10], draws=1, steps=label_steps, device=str(trainer.device),
                    out=os.path.join(cfg.out, "label_efficiency.json"), echo=lambda line: print(line, flush=True))
    result["label_efficiency_10"] = {m: scarce["rows"][0][m] for m in le.METHODS}
    with open(os.path.join(cfg.out, "demo.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"curves: python -m fastcl plot {cfg.out}")
    return 0
