"""SimCSE quality on the built-in data: the built-in benchmarks (Spearman x 100) of a model before
and after unsupervised SimCSE on the built-in corpus.

    python benchmarks/simcse_quality.py                       # tiny and minilm, the README numbers
    python benchmarks/simcse_quality.py --model minilm --temperature 0.05 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from fastcl.simcse import SimCSE, SimCSEConfig, SimCSETrainer, sts

# What each model is trained with here: the trainer's defaults for MiniLM (the paper's, with its
# recipe's temperature); a randomly initialised model needs a far larger learning rate and a few
# epochs to move at all.
RUNS = {
    "tiny": dict(pooler="avg", lr=5e-4, epochs=5),
    "minilm": dict(),
}
SHOWN = ("temperature", "lr", "epochs", "batch_size", "seed")


def measure(model: str, **overrides) -> dict:
    with tempfile.TemporaryDirectory() as out:
        config = SimCSEConfig(model=model, train_file="builtin", out=out, progress=False, **overrides)
        trainer = SimCSETrainer(config)
        pooler = trainer.model.pooler
        before = sts.builtin(SimCSE.from_pretrained(model, pooler=pooler, mlp_only_train=True, seed=config.seed))
        summary = trainer.train()
        after = sts.builtin(SimCSE.from_pretrained(out))
    return dict(model=model, pooler=pooler, overrides=overrides, seconds=summary["seconds"], steps=summary["steps"],
                settings={k: summary["config"][k] for k in SHOWN},
                before={k: v["spearman"] for k, v in before.items()},
                after={k: v["spearman"] for k, v in after.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(RUNS), action="append")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--pooler")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    given = dict(lr=args.lr, epochs=args.epochs, pooler=args.pooler, temperature=args.temperature, seed=args.seed)
    given = {k: v for k, v in given.items() if v is not None}
    results = [measure(m, **{**RUNS[m], **given}) for m in (args.model or list(RUNS))]
    print("| model | pooler | settings | steps | train time | Lee | SimLex-999 | WordSim-353 |")
    print("|---|---|---|---:|---:|---|---|---|")
    for r in results:
        cells = [f"{r['before'][k]:.2f} -> {r['after'][k]:.2f}" for k in ("lee", "simlex", "wordsim")]
        settings = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in r["settings"].items())
        print(f"| {r['model']} | {r['pooler']} | {settings} | {r['steps']} | {r['seconds']:.0f} s | "
              + " | ".join(cells) + " |")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
