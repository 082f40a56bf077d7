"""Real pretraining steps: the loop, kill -9 and resume, DDP with two CPU processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from speechssl.checkpoint import load_checkpoint
from speechssl.train.pretrain import run_pretrain

REPO = Path(__file__).resolve().parents[1]


def overrides(manifest: Path, out_dir: Path, steps: int) -> list[str]:
    return [
        "model.preset=tiny", "model.layer_drop=0.0", f"data.train=[{manifest}]", f"data.valid=[{manifest}]",
        "data.max_batch_seconds=4", "data.crop_seconds=0.5", "data.min_seconds=0.3", "data.num_workers=0",
        "optim.warmup_steps=2", f"optim.max_steps={steps}", "run.log_every=1", "run.checkpoint_every=2",
        "run.valid_every=4", "run.progress=false", f"run.out_dir={out_dir}", "objective.num_negatives=10",
    ]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def empty_config(tmp_path: Path) -> str:
    path = tmp_path / "empty.yaml"
    path.write_text("# everything comes from the overrides\n")
    return str(path)


def kill_at_first_resume_file(tmp_path: Path, run_overrides: list[str], out_dir: Path) -> int:
    """Start `speechssl pretrain` in a subprocess, kill -9 it once resume.pt exists; the step it holds."""
    cmd = [sys.executable, "-m", "speechssl.cli", "pretrain", empty_config(tmp_path), *run_overrides]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out_dir / "resume.pt").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return torch.load(out_dir / "resume.pt", weights_only=True)["step"]


def train_losses(out_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def test_pretrain_writes_checkpoints_logs_and_plot(fsdd_manifest, tmp_path):
    summary = run_pretrain(None, overrides(fsdd_manifest, tmp_path, 4))
    assert summary.step == 4
    for name in ("checkpoint.safetensors", "best.safetensors", "resume.pt", "metrics.jsonl", "curves.png", "config.json"):
        assert (tmp_path / name).is_file(), name
    assert list((tmp_path / "tensorboard").iterdir())
    ckpt = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert ckpt.metadata["step"] == 4 and ckpt.metadata["kind"] == "pretrain"
    losses = train_losses(tmp_path)
    assert sorted(losses) == [1, 2, 3, 4] and all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in rows if r["split"] == "valid"]
    assert valid and {"loss", "accuracy", "perplexity"} <= set(valid[0])


def test_kill_and_resume_follows_the_same_trajectory(fsdd_manifest, tmp_path):
    steps = 8
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_pretrain(None, overrides(fsdd_manifest, straight, steps))

    interrupted_at = kill_at_first_resume_file(tmp_path, overrides(fsdd_manifest, killed, steps), killed)
    assert interrupted_at < steps, "the run finished before it could be killed"

    summary = run_pretrain(None, overrides(fsdd_manifest, killed, steps), resume=True)
    assert summary.step == steps
    expected, resumed = train_losses(straight), train_losses(killed)
    assert sorted(resumed) == list(range(1, steps + 1))
    for step in expected:
        assert resumed[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), f"step {step}"


# Runs `speechssl pretrain` as the CLI does, then saves this rank's weights: DDP must leave both alike.
DDP_WORKER = """
import os, sys, torch
from speechssl import cli
from speechssl.train import pretrain
modules, init = [], pretrain.PretrainTask.__init__
def keep(self, *args, **kwargs):
    init(self, *args, **kwargs)
    modules.append(self.module)
pretrain.PretrainTask.__init__ = keep
assert cli.main(["pretrain", *sys.argv[2:]]) == 0
torch.save(modules[0].state_dict(), os.path.join(sys.argv[1], "rank" + os.environ["RANK"] + ".pt"))
"""


def test_two_process_gloo_ddp_takes_steps(fsdd_manifest, tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(DDP_WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           str(worker), str(tmp_path), empty_config(tmp_path), *overrides(fsdd_manifest, tmp_path / "run", 3)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(train_losses(tmp_path / "run")) == [1, 2, 3]
    saved = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    assert saved.metadata["step"] == 3
    first, second = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert first.keys() == second.keys() and len(first) > 10
    different = [name for name in first if not torch.equal(first[name], second[name])]
    assert not different, f"the ranks' weights differ after 3 steps: {different[:5]}"
    assert all(torch.equal(saved.state_dict[name], first[name].float()) for name in saved.state_dict)
