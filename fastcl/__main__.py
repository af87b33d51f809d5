"""Command line: `python -m fastcl info | demo | speed | simclr | knn | linear-probe | label-efficiency |
neighbours | embed | plot | simcse | sts-eval`."""

from __future__ import annotations

import argparse
import json
import sys


def _info(_args) -> int:
    import torch

    import fastcl

    info = fastcl.build_info()
    lines = [
        ("fastcl", info["version"]),
        ("torch", torch.__version__),
        ("torch CUDA", torch.version.cuda or "none"),
        ("GPU", torch.cuda.get_device_name() if torch.cuda.is_available() else "none visible"),
        ("kernels from", {"aot": "fastcl._C (ahead-of-time build)", "jit": "JIT build cache",
                          "python": "pure-PyTorch fallback (no compiled kernels)"}[info["source"]]),
        ("backends", ", ".join(info.get("backends", [])) or "none"),
        ("CUDA arch list", info.get("cuda_arch_list") or "-"),
        ("CPU vector ISA", info.get("cpu_isa", "-")),
        ("debug build", str(info.get("debug", False))),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {value}")
    return 0


def _speed(args) -> int:
    from .bench.speed import run

    return run(sizes=args.sizes, dim=args.dim, repeats=args.repeats)


def _demo(args) -> int:
    from .simclr.demo import run

    return run(out=args.out, epochs=args.epochs, seed=args.seed, device=args.device, label_steps=args.label_steps)


def _train(make_config, config_class, make_trainer, args) -> int:
    """Build the config from the options given, join torchrun's process group if there is one,
    train, and print the summary once (rank 0)."""
    from .distributed import rank_world
    from .engine import TrainingDiverged, runtime
    from .engine.options import given

    config = make_config(**given(args, config_class))
    runtime.init_from_env()
    rank, finished = rank_world()[0], False
    try:
        summary = make_trainer(config).train()
        finished = True
    except TrainingDiverged as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        runtime.leave(wait=finished)  # after a failure the others may be gone: no barrier
    summary.pop("config", None)
    if rank == 0:
        print(json.dumps(summary, indent=2))
    return 0


def _simclr(args) -> int:
    from .simclr import SimCLRConfig, SimCLRTrainer, config_for

    return _train(config_for, SimCLRConfig, SimCLRTrainer, args)


def _evaluate(method):
    def run(args) -> int:
        from .engine.progress import heartbeat
        from .simclr import evaluate_checkpoint, retrieval

        if method == "linear":
            with heartbeat(args.command, args.progress):
                top1 = evaluate_checkpoint(args.checkpoint, args.data, method=method, device=args.device)
            print(f"linear probe top-1: {100 * top1:.2f}%")
        else:  # kNN and retrieval from one encoding of the splits
            with heartbeat(args.command, args.progress):
                report = retrieval.retrieval_report(args.checkpoint, args.data, device=args.device)
            print(f"kNN top-1: {100 * report['knn_top1']:.2f}%")
            print("retrieval, held-out queries against the training images, precision@k of same-class neighbours:")
            for name, label in (("random_init", "random-init"), ("trained", "trained")):
                cells = "  ".join(f"@{k} {100 * p:.2f}%" for k, p in report[name].items())
                print(f"  {label:12s} {cells}")
        return 0
    return run


def _embed(args) -> int:
    import os

    from .engine.export import check_output, write_embeddings

    check_output(args.out)
    if (args.checkpoint is None) == (args.model is None):
        raise ValueError("give --checkpoint (a SimCLR run's last.pt) or --model (a SimCSE model), not both or neither")
    if args.checkpoint is not None:
        from .simclr import retrieval

        if args.text_file is not None:
            raise ValueError("--text-file goes with --model (SimCSE); a SimCLR checkpoint embeds --data")
        z, images = retrieval.embed_checkpoint(args.checkpoint, args.data, args.split, args.space, args.device,
                                               progress=args.progress)
        ids = [{"id": i, "label": int(y)} for i, y in enumerate(images.labels.tolist())]
    else:
        if args.text_file is None:
            raise ValueError("--model (SimCSE) embeds the lines of --text-file")
        if os.path.isfile(args.model):
            raise ValueError(f"{args.model!r} is a file, not a SimCSE model folder (a SimCLR checkpoint? use "
                             "--checkpoint)")
        z, lines = _embed_text(args)
        ids = [{"id": i, "text": s} for i, s in enumerate(lines)]
    paths = write_embeddings(args.out, z, ids)
    print(f"wrote {paths[0]} ({z.shape[0]} x {z.shape[1]} float32, L2-normalised) and {paths[1]}")
    return 0


def _embed_text(args) -> tuple:
    import torch

    from .engine import runtime
    from .engine.metrics import progress_bar
    from .simcse import SimCSE

    from .engine.files import read_text

    lines = [line for line in read_text(args.text_file, "--text-file").split("\n") if line.strip()]
    if not lines:
        raise ValueError(f"--text-file {args.text_file!r} has no non-empty lines")
    model = SimCSE.from_pretrained(args.model).to(runtime.device(args.device))
    if model.head_at_inference and not model.head_trained:
        raise ValueError(f"{args.model!r} has no trained SimCSE MLP for its cls pooler")
    parts = []
    with progress_bar(-(-len(lines) // args.batch_size), args.progress, desc="embedding") as bar:
        for start in range(0, len(lines), args.batch_size):
            parts.append(model.encode(lines[start:start + args.batch_size], batch_size=args.batch_size,
                                      normalize=True))
            bar.update()
    return torch.cat(parts), lines


def _label_efficiency(args) -> int:
    from .engine.progress import heartbeat
    from .simclr import label_efficiency as le

    print(le.header(le.methods_of(args.semi_supervised)))
    with heartbeat(args.command, args.progress):
        budgets = None if args.labels_per_class is None else le.parse_budgets(args.labels_per_class)
        result = le.run(args.checkpoint, budgets, args.draws, args.steps, args.data, args.device, args.out,
                        echo=lambda line: print(line, flush=True), semi=args.semi_supervised, labels=args.labels)
    print(f"wrote {result['path']} (fastcl plot RUN draws it)")
    return 0


def _neighbours(args) -> int:
    from .engine.progress import heartbeat
    from .simclr.neighbours import write_neighbours

    with heartbeat(args.command, args.progress):
        path = write_neighbours(args.checkpoint, args.out, spec=args.data, device=args.device)
    print(f"wrote {path}")
    return 0


def _simcse(args) -> int:
    from .simcse import SimCSEConfig, SimCSETrainer

    return _train(SimCSEConfig, SimCSEConfig, SimCSETrainer, args)


def _sts_eval(args) -> int:
    from .engine.progress import heartbeat

    with heartbeat(args.command, args.progress):
        results = _sts_results(args)
    for name, r in results.items():
        print(f"{name}: Spearman {r['spearman']:.2f}  Pearson {r['pearson']:.2f}  ({r['pairs']} pairs)")
    return 0


def _sts_results(args) -> dict:
    """{benchmark or file: {spearman, pearson, pairs}} of --model on --sts-file or the built-in sets."""
    from .engine import runtime
    from .engine.progress import note
    from .simcse import SimCSE, sts

    note(f"loading {args.model}")
    model = SimCSE.from_pretrained(args.model, pooler=args.pooler, encode_max_length=args.max_length)
    if model.head_at_inference and not model.head_trained:
        raise ValueError(f"pooler 'cls' embeds through the MLP that SimCSE training learns, and {args.model!r} "
                         "has none; use --pooler cls_before_pooler (the CLS vector) or avg")
    model.to(runtime.device(args.device))
    return {args.sts_file: sts.evaluate_file(model, args.sts_file)} if args.sts_file else sts.builtin(model)


def _add_simcse(sub) -> None:
    from .engine.options import add_options
    from .simcse import POOLERS, SimCSEConfig

    p = sub.add_parser("simcse", help="SimCSE sentence-embedding training (fastcl.simcse.SimCSEConfig)",
                       description="SimCSE sentence-embedding training. Every option is a field of "
                       "fastcl.simcse.SimCSEConfig; unset ones take the paper's value for the data.")
    add_options(p, SimCSEConfig)
    p.set_defaults(func=_simcse)
    e = sub.add_parser("sts-eval", help="Spearman/Pearson x 100 of a sentence encoder on an STS file or the "
                                        "built-in Lee, SimLex-999 and WordSim-353 benchmarks")
    e.add_argument("--model", required=True)
    e.add_argument("--sts-file", dest="sts_file", help="STS-B / SICK / sentence1<TAB>sentence2<TAB>score; "
                                                     "default: the built-in benchmarks")
    e.add_argument("--pooler", choices=POOLERS)
    e.add_argument("--max-length", dest="max_length", type=int,
                   help="tokens per sentence, the model's encode_max_length (default: the most the model takes; "
                   "Lee documents: 256)")
    e.add_argument("--device", default="auto")
    _progress_option(e)
    e.set_defaults(func=_sts_eval)


def _plot(args) -> int:
    from .engine.plot import plot_run

    print(f"wrote {plot_run(args.run, args.output)}")
    return 0


def _checkpoint_options(parser) -> None:
    """--checkpoint, --data and --device: what every command on a SimCLR run takes."""
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", help="default: the dataset the checkpoint was trained on")
    parser.add_argument("--device", default="auto")
    _progress_option(parser)


def _progress_option(parser) -> None:
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress line on stderr every few seconds")


def _add_simclr(sub) -> None:
    from .engine.options import add_options, at_least
    from .simclr import SimCLRConfig

    p = sub.add_parser("simclr", help="SimCLR pre-training (fastcl.simclr.SimCLRConfig)",
                       description="SimCLR pre-training. Every option is a field of fastcl.simclr.SimCLRConfig; "
                       "unset ones take the dataset's recipe (fastcl.simclr.RECIPES), then the CIFAR defaults "
                       "shown.")
    add_options(p, SimCLRConfig)
    p.set_defaults(func=_simclr)
    for name, method in (("knn", "knn"), ("linear-probe", "linear")):
        e = sub.add_parser(name, help=f"{name} top-1 of a SimCLR checkpoint's frozen encoder")
        _checkpoint_options(e)
        e.set_defaults(func=_evaluate(method))
    le = sub.add_parser("label-efficiency", help="held-out accuracy per label budget: supervised from scratch vs "
                                                 "linear probe vs fine-tuned SimCLR encoder")
    _checkpoint_options(le)
    le.add_argument("--labels-per-class", dest="labels_per_class",
                    help="comma-separated budgets, 'all' for the whole training split (default: 1,5,10,all)")
    le.add_argument("--labels", metavar="FILE",
                    help="your own labels instead of budgets (--data folder:DIR): a CSV with the header path,label "
                    "and a line per labelled image (its path relative to DIR/train, its class folder's name); one "
                    "row, 'file'")
    le.add_argument("--draws", type=at_least(int, 1), default=3,
                    help="random draws of the labelled subset per budget")
    le.add_argument("--steps", type=at_least(int, 1), default=1000,
                    help="the fewest training steps of the supervised and "
                    "fine-tuned models (and at least 30 epochs of the labelled images); early stopping picks the point")
    le.add_argument("--out", help="JSON path (default: label_efficiency.json next to the checkpoint; with another "
                                   "--data, label_efficiency-<data name>.json)")
    le.add_argument("--semi-supervised", dest="semi_supervised", action="store_true",
                    help="also the semi-supervised column: the run's pre-training again with each budget's labels in "
                    "its loss (--labelled-per-class; one run per budget and draw, into RUN/semi-K-drawD), then a "
                    "linear probe with those labels")
    le.set_defaults(func=_label_efficiency)
    n = sub.add_parser("neighbours", help="picture: held-out images and their nearest training images under the "
                                          "random-init and the trained encoder")
    _checkpoint_options(n)
    n.add_argument("--out", help="PNG path (default: neighbours.png next to the checkpoint; with another --data, "
                                  "neighbours-<data name>.png)")
    n.set_defaults(func=_neighbours)
    emb = sub.add_parser("embed", help="embeddings of a dataset (SimCLR checkpoint) or a text file (SimCSE model) "
                                       "to a float32 .npy and an ids .jsonl, for any vector index")
    emb.add_argument("--checkpoint", help="a SimCLR run's last.pt")
    emb.add_argument("--model", help="a SimCSE model (folder, minilm, a hub name)")
    emb.add_argument("--data", help="SimCLR: dataset spec (default: the run's)")
    emb.add_argument("--split", choices=("train", "test"), default="test", help="SimCLR: which split")
    emb.add_argument("--space", choices=("encoder", "projection"), default="encoder",
                     help="SimCLR: the encoder's representation (default) or the projection the loss saw")
    emb.add_argument("--text-file", dest="text_file", help="SimCSE: one sentence per line")
    emb.add_argument("--out", required=True, help="the .npy to write; ids go to the .ids.jsonl beside it")
    emb.add_argument("--batch-size", dest="batch_size", type=at_least(int, 1), default=256)
    emb.add_argument("--device", default="auto")
    emb.add_argument("--no-progress", dest="progress", action="store_false")
    emb.set_defaults(func=_embed)
    plot = sub.add_parser("plot", help="loss and kNN curves of a run (RUN/curves.png)")
    plot.add_argument("run", help="the --out folder of a training run")
    plot.add_argument("--output", help="image path (default RUN/curves.png)")
    plot.set_defaults(func=_plot)


def main(argv=None) -> int:
    from .engine.options import at_least

    parser = argparse.ArgumentParser(prog="fastcl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print versions, compiled backends and build settings").set_defaults(func=_info)
    demo = sub.add_parser("demo", help="SimCLR on the built-in digits: kNN of raw pixels, random-init and trained, "
                                        "the neighbours picture and the 10-labels table")
    demo.add_argument("--out", default="runs/digits-demo")
    demo.add_argument("--epochs", type=at_least(int, 1), default=30)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default="auto", help="auto (CUDA when visible), cpu or cuda")
    demo.add_argument("--label-steps", dest="label_steps", type=at_least(int, 1), default=1000,
                      help="training steps of the supervised and fine-tuned models in the 10-labels table")
    demo.set_defaults(func=_demo)
    speed = sub.add_parser("speed", help="fastcl vs the pure-PyTorch NT-Xent loss: time, memory, difference")
    speed.add_argument("--sizes", type=at_least(int, 2), nargs="+", default=[1024, 4096, 8192],
                       help="values of 2N")
    speed.add_argument("--dim", type=at_least(int, 1), default=128)
    speed.add_argument("--repeats", type=at_least(int, 1), default=3)
    speed.set_defaults(func=_speed)
    _add_simclr(sub)
    _add_simcse(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, ImportError) as exc:  # bad arguments or data: a message, not a traceback
        print(f"fastcl {args.command}: error: {exc}", file=sys.stderr)  # an OSError says its file
        return 2
    except RuntimeError as exc:  # a full disk: one message, not the chained tracebacks of the writer
        from .engine.files import WriteFailed

        if not isinstance(exc, WriteFailed):
            raise
        print(f"fastcl {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
