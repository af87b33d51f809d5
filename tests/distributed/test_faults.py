"""Faults under torchrun (gloo on the CPU; the same code runs NCCL on GPUs): a worker killed or
hung mid-run, torchrun restarting the group (--max-restarts), and the run continuing from its last
step checkpoint as if nothing had happened."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from filelock import FileLock

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads worker processes from /proc")

SIMCLR = ["simclr", "--data", "digits", "--arch", "small_cnn", "--epochs", "1", "--batch-size", "256",
          "--proj-hidden", "64", "--save-every-steps", "5", "--log-every", "1", "--no-progress", "--device", "cpu"]
SIMCSE = ["simcse", "--model", "tiny", "--batch-size", "16", "--lr", "3e-4", "--epochs", "2", "--save-every-steps",
          "3", "--log-every", "1", "--no-progress", "--device", "cpu"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list, out, restarts: int = 1, env: dict = None, nnodes: str = "1", nproc: int = 2,
             endpoint: str = None, prefix: list = (), launcher: list = ()) -> subprocess.Popen:
    cmd = [*prefix, sys.executable, "-m", "torch.distributed.run", "--nnodes", nnodes, "--nproc-per-node", str(nproc),
           "--max-restarts", str(restarts), "--monitor-interval", "0.5", "--rdzv-backend", "c10d", "--rdzv-endpoint",
           endpoint or f"127.0.0.1:{free_port()}", *launcher, "-m", "fastcl", *args, "--out", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "FASTCL_DIST_TIMEOUT": "20", **(env or {})})


def records(out) -> list:
    try:
        with open(out / "metrics.jsonl") as f:
            return [json.loads(line) for line in f if line.endswith("\n")]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def step_losses(out) -> dict:
    return {r["step"]: r["loss"] for r in records(out) if r["kind"] == "step"}


def worker(agent: subprocess.Popen, local_rank: int) -> int:
    """The pid of the worker process torchrun started for `local_rank`."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != agent.pid:
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except (OSError, ValueError, IndexError):
            continue
        if env.get(b"LOCAL_RANK") == str(local_rank).encode():
            return int(pid)
    raise AssertionError("worker process not found")


def wait_for_step(out, step: int, agent: subprocess.Popen, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while max(step_losses(out), default=0) < step:
        assert agent.poll() is None, agent.communicate()[1][-3000:]
        assert time.monotonic() < end, "the run did not reach step {step}"
        time.sleep(0.05)


def finish(agent: subprocess.Popen, timeout: float = 600) -> str:
    stdout, stderr = agent.communicate(timeout=timeout)
    assert agent.returncode == 0, stderr[-4000:]
    return stderr


def summary(out) -> dict:
    with open(out / "summary.json") as f:
        return json.load(f)


@pytest.fixture(scope="session")
def whole_simclr(tmp_path_factory):
    """The uninterrupted 2-process SIMCLR run, done once for the session (three tests compare with
    it) and shared with the other pytest-xdist workers through the run's folder, under a lock."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # this session's folder, above each worker's own
    out = root / "simclr-whole"
    with FileLock(str(root / "simclr-whole.lock")):
        if not (out / "summary.json").exists():
            finish(torchrun(SIMCLR, out, restarts=0))
    return out


def _interrupted_run(args, tmp_path, name, fault, after_step, ckpt_step, whole=None):
    """The uninterrupted run (or `whole`, its folder if done already) and one where `fault` hits
    rank 1 once the log reaches `after_step` (checkpoints every `ckpt_step` steps); returns both
    runs' per-step losses, summaries, the seconds from the fault to the first new step, and
    torchrun's stderr."""
    if whole is None:
        whole = tmp_path / f"{name}-whole"
        finish(torchrun(args, whole, restarts=0))
    cut = tmp_path / f"{name}-cut"
    agent = torchrun(args, cut)
    wait_for_step(cut, after_step, agent)
    os.kill(worker(agent, 1), fault)
    hit = time.time()
    stderr = finish(agent)
    # The restart continues from the last step checkpoint before the fault. The step in flight when
    # the signal landed may still finish (and save) where its collectives were done: steps take tens
    # of milliseconds here, so that checkpoint can be one step past the last step logged before it.
    killed = max(r["step"] for r in records(cut) if r["kind"] == "step" and r["time"] <= hit)
    resumed = [int(n) for n in re.findall(r"resumed from step (\d+)", stderr)]
    assert resumed and resumed[-1] % ckpt_step == 0 and killed - ckpt_step < resumed[-1] <= killed + 1, \
        f"the run did not resume from the last step checkpoint at the kill (step {killed}): {resumed}"
    redone = [r for r in records(cut) if r["kind"] == "step" and r["time"] > hit and r["step"] == resumed[-1] + 1]
    return step_losses(whole), step_losses(cut), summary(whole), summary(cut), redone[0]["time"] - hit, stderr


def test_a_killed_simclr_worker_costs_a_restart_not_the_run(tmp_path, whole_simclr):
    whole, cut, s_whole, s_cut, lost, _ = _interrupted_run(SIMCLR, tmp_path, "simclr", signal.SIGKILL, 8, 5,
                                                           whole_simclr)
    assert sorted(cut) == sorted(whole) == list(range(1, 20))
    for step in whole:
        assert cut[step] == pytest.approx(whole[step], rel=1e-6), step
    assert s_cut["knn_top1"] == s_whole["knn_top1"] and s_cut["steps"] == 19
    print(f"\nsimclr: {lost:.1f} s from the kill to the first step after the restart")
    history = sorted(os.listdir(tmp_path / "simclr-cut" / "checkpoints"))
    assert history == ["step-00000015.pt", "step-00000019.pt"]  # the last two saves (keep_checkpoints 2)


def test_a_killed_simcse_worker_costs_a_restart_not_the_run(tmp_path):
    pytest.importorskip("transformers")
    train = tmp_path / "train.txt"
    train.write_text("\n".join(f"sentence {j} is about topic {j % 5} and thing {j * 7 % 11}" for j in range(64)))
    args = [*SIMCSE, "--train-file", str(train)]
    whole, cut, s_whole, s_cut, _, _ = _interrupted_run(args, tmp_path, "simcse", signal.SIGKILL, 5, 3)
    assert sorted(cut) == sorted(whole) == list(range(1, 9))
    for step in whole:  # dropout included: every rank's random state is restored
        assert cut[step] == pytest.approx(whole[step], rel=1e-6), step
    assert s_cut["final_loss"] == s_whole["final_loss"]


def test_a_hung_worker_times_out_and_the_group_restarts(tmp_path, whole_simclr):
    """SIGSTOP: rank 1 stops answering; rank 0 leaves its collective with the timeout error after
    FASTCL_DIST_TIMEOUT (20 s here) instead of hanging, torchrun restarts the group, and the run
    finishes from its step checkpoint."""
    whole, cut, s_whole, s_cut, lost, stderr = _interrupted_run(SIMCLR, tmp_path, "hang", signal.SIGSTOP, 8, 5,
                                                                     whole_simclr)
    assert "timed out" in stderr.lower() or "timeout" in stderr.lower(), stderr[-3000:]
    for step in whole:
        assert cut[step] == pytest.approx(whole[step], rel=1e-6), step
    assert s_cut["knn_top1"] == s_whole["knn_top1"]
    assert lost < 120


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def two_hosts():
    """Two network namespaces joined by a veth pair: (namespace, interface, address) of each
    "host"; processes started in them reach each other over the veth only."""
    if os.geteuid() != 0 or subprocess.run(["which", "ip"], capture_output=True).returncode != 0:
        pytest.skip("creating network namespaces needs root and iproute2 (ip)")
    tag = f"fcl{os.getpid() % 100000}"
    hosts = [(f"{tag}a", f"{tag}va", "10.213.0.1"), (f"{tag}b", f"{tag}vb", "10.213.0.2")]
    try:
        for ns, _, _ in hosts:
            _ip("netns", "add", ns)
        _ip("link", "add", hosts[0][1], "type", "veth", "peer", "name", hosts[1][1])
        for ns, dev, addr in hosts:
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
    except subprocess.CalledProcessError as exc:
        for ns, _, _ in hosts:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        pytest.skip(f"cannot create network namespaces here: {exc.stderr.strip()}")
    yield hosts
    for ns, _, _ in hosts:  # deleting a namespace removes its end of the veth, and so the pair
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_two_hosts_over_a_veth_pair_match_one_host(tmp_path, two_hosts):
    """One torchrun per namespace (--nnodes 2, c10d rendezvous on the first host's veth address):
    the loss curve equals the 2-process run on one host."""
    args = [*SIMCLR, "--max-steps", "6"]
    one = tmp_path / "one-host"
    finish(torchrun(args, one, restarts=0))
    two = tmp_path / "two-hosts"
    endpoint = f"{two_hosts[0][2]}:{free_port()}"
    # The first host serves the rendezvous store (its hostname does not resolve to the veth address,
    # so torchrun cannot tell by itself); each host names its own address.
    agents = [torchrun([*args, "--resume", "no"], two, restarts=0, nnodes="2", nproc=1, endpoint=endpoint,
                       env={"GLOO_SOCKET_IFNAME": dev}, prefix=["ip", "netns", "exec", ns],
                       launcher=["--rdzv-conf", f"is_host={int(i == 0)}", "--local-addr", addr])
              for i, (ns, dev, addr) in enumerate(two_hosts)]
    for agent in agents:
        finish(agent)
    assert step_losses(two) == pytest.approx(step_losses(one), rel=1e-6)
    assert sorted(step_losses(two)) == list(range(1, 7))


def test_two_hosts_survive_a_killed_worker(tmp_path, two_hosts, whole_simclr):
    """The same over two namespaces, with the second host's worker killed at step 8: both agents
    restart their workers (torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, so each attempt meets
    in a new store) and the run's losses equal the one-host run's."""
    one = whole_simclr
    two = tmp_path / "two-hosts"
    endpoint = f"{two_hosts[0][2]}:{free_port()}"
    agents = [torchrun([*SIMCLR, "--resume", "auto"], two, restarts=1, nnodes="2", nproc=1, endpoint=endpoint,
                       env={"GLOO_SOCKET_IFNAME": dev, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"},
                       prefix=["ip", "netns", "exec", ns],
                       launcher=["--rdzv-conf", f"is_host={int(i == 0)}", "--local-addr", addr])
              for i, (ns, dev, addr) in enumerate(two_hosts)]
    wait_for_step(two, 8, agents[0])
    os.kill(worker(agents[1], 0), signal.SIGKILL)
    hit = time.time()
    for agent in agents:
        finish(agent)
    redone = [r for r in records(two) if r["kind"] == "step" and r["time"] > hit]
    assert redone and (redone[0]["step"] - 1) % 5 == 0, redone[:1]
    assert step_losses(two) == pytest.approx(step_losses(one), rel=1e-6)
    assert summary(two)["knn_top1"] == summary(one)["knn_top1"]
