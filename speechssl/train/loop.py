"""The one training loop every command uses, readable top to bottom.

A task supplies the module, the loss of one batch and an evaluation; the loop owns
the optimizer, schedule, gradient accumulation and clipping, DDP, logging,
checkpoints and resume. Every step reseeds torch from (seed, step) and the data
order is a function of (seed, epoch, position), so a resumed run follows exactly
the trajectory of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import pickle
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from speechssl.checkpoint import Checkpoint, CheckpointError, atomic_write, remove_stale_temps, save_checkpoint
from speechssl.device import resolve_device
from speechssl.data.dataset import Batch
from speechssl.data.manifest import Utterance
from speechssl.train.batches import BatchStream, valid_loader
from speechssl.train.plots import plot_curves
from speechssl.train.settings import DataConfig, OptimConfig, RunConfig

log = logging.getLogger("speechssl.train")


@dataclass
class StepResult:
    loss: Tensor  # scalar to backpropagate
    metrics: dict[str, float] = field(default_factory=dict)  # logged as train/<name>


class Task(Protocol):
    module: nn.Module
    selection_metric: str  # valid metric that picks best.safetensors (lower is better)

    def before_step(self, step: int) -> None: ...  # schedules inside the task (e.g. Gumbel tau)
    def train_step(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> StepResult: ...
    def evaluate(self, loader: DataLoader) -> dict[str, float]: ...
    def checkpoint(self) -> Checkpoint: ...
    # Optional: ``param_groups() -> [{"params": [...], "lr_scale": float}, ...]``, the first
    # group at the full rate (its lr is the one logged); without it every parameter is one group.


@dataclass
class TrainSummary:
    step: int
    wall_seconds: float
    best: dict[str, float]
    out_dir: Path


def lr_factor(step: int, optim: OptimConfig) -> float:
    """Linear warmup, then linear decay ("linear") or hold + exponential decay ("tri_stage")."""
    if step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "linear":
        rest = max(1, optim.max_steps - optim.warmup_steps)
        return max(optim.final_lr_scale, 1.0 - (step - optim.warmup_steps) / rest)
    if step < optim.warmup_steps + optim.hold_steps:
        return 1.0
    decay_steps = max(1, optim.max_steps - optim.warmup_steps - optim.hold_steps)
    progress = min(1.0, (step - optim.warmup_steps - optim.hold_steps) / decay_steps)
    return math.exp(math.log(optim.final_lr_scale) * progress)


class MetricsLog:
    """metrics.jsonl (the record the plots read) + TensorBoard; rank 0 only."""

    def __init__(self, out_dir: Path, resume_step: int):
        self.path = out_dir / "metrics.jsonl"
        kept = []
        if self.path.exists():  # drop what was logged after the checkpoint we resume from
            kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= resume_step]
        self.path.write_text("".join(line + "\n" for line in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_step + 1)
        except ImportError:  # tensorboard is optional at run time
            self.tb = None

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(f"{split}/{key}", value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def setup_distributed(device: torch.device) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def train(task: Task, config: Any, data: DataConfig, optim: OptimConfig, run: RunConfig,
          train_utts: list[Utterance], valid_utts: list[Utterance], resume: bool = False,
          make_stream: Callable[[int, int], Any] | None = None) -> TrainSummary:
    """Run ``task`` to ``optim.max_steps`` (or ``run.max_minutes``); write checkpoints, logs and plots.

    ``make_stream(rank, world)`` replaces the stream of audio crops of ``train_utts`` with the
    task's own (e.g. cached encoder features); it needs ``next()``, ``state()`` and ``restore()``.
    """
    if run.threads:
        torch.set_num_threads(run.threads)
    device = resolve_device(run.device)
    rank, world = setup_distributed(device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    out_dir = Path(run.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        for stale in remove_stale_temps(out_dir):  # a kill during an earlier run's checkpoint write
            log.info("removed %s, left by an interrupted write", stale)
    module = task.module.to(device)
    model: nn.Module = module
    if world > 1:
        # Layer drop leaves some layers out of a step's graph; DDP must then look for them.
        model = nn.parallel.DistributedDataParallel(module, find_unused_parameters=getattr(module.config, "layer_drop", 0) > 0)
    params = [p for p in module.parameters() if p.requires_grad]
    groups = task.param_groups() if hasattr(task, "param_groups") else [{"params": params}]
    groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in groups]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]],
                                  lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                                  weight_decay=optim.weight_decay)
    stream = make_stream(rank, world) if make_stream else BatchStream(train_utts, data, run.seed, rank, world)
    valid = valid_loader(valid_utts, data) if rank == 0 else None
    step, best, elapsed = 0, {}, 0.0
    resume_path = out_dir / "resume.pt"
    if resume and resume_path.exists():
        step, best, elapsed = load_resume(resume_path, module, optimizer, stream)
        log.info("resumed from %s at step %d", resume_path, step)
    elif resume:
        log.warning("--resume given but %s does not exist; starting from step 0", resume_path)
    if rank == 0:
        (out_dir / "config.json").write_text(json.dumps(config_dict(config), indent=2))
    metrics = MetricsLog(out_dir, step) if rank == 0 else None
    bar = tqdm(total=optim.max_steps, initial=step, disable=rank != 0 or not run.progress, dynamic_ncols=True)
    start = time.monotonic() - elapsed
    bf16 = run.precision == "bf16" or (run.precision == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    window: dict[str, list[float]] = {}
    while step < optim.max_steps:
        torch.manual_seed(run.seed * 1_000_003 + step * world + rank)  # dropout, layer drop
        generator = torch.Generator().manual_seed(run.seed * 7_919 + step * world + rank)  # masks, noise
        task.before_step(step)
        for group in optimizer.param_groups:
            group["lr"] = optim.lr * lr_factor(step, optim) * group.get("lr_scale", 1.0)
        module.train()
        optimizer.zero_grad(set_to_none=True)
        for micro in range(optim.grad_accum):
            batch = stream.next().to(device)
            sync_ok = world == 1 or micro == optim.grad_accum - 1
            with (model.no_sync() if not sync_ok else contextlib.nullcontext()), autocast:
                result = task.train_step(model, batch, generator)
                (result.loss / optim.grad_accum).backward()
            for key, value in {"loss": result.loss.item(), **result.metrics}.items():
                window.setdefault(key, []).append(value)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, optim.clip_norm)
        if torch.isfinite(grad_norm):
            optimizer.step()
        else:
            log.warning("step %d: non-finite gradient norm, update skipped", step)
        step += 1
        bar.update(1)
        if rank == 0 and step % run.log_every == 0:
            means = {k: sum(v) / len(v) for k, v in window.items()}
            means.update(lr=optimizer.param_groups[0]["lr"], grad_norm=float(grad_norm))
            metrics.write(step, "train", means)
            bar.set_postfix({k: f"{v:.3g}" for k, v in means.items() if k in PROGRESS_KEYS})
            window.clear()
        out_of_time = run.max_minutes is not None and time.monotonic() - start > run.max_minutes * 60
        last = step == optim.max_steps or out_of_time
        if rank == 0 and valid is not None and (step % run.valid_every == 0 or last):
            scores = task.evaluate(valid)
            metrics.write(step, "valid", scores)
            bar.write(f"step {step}: valid " + " ".join(f"{k}={v:.4g}" for k, v in scores.items()), file=sys.stderr)
            key = task.selection_metric
            if key in scores and (not best or scores[key] < best[key]):
                best = {**scores, "step": step}
                save_checkpoint(out_dir / "best.safetensors", with_step(task.checkpoint(), step))
        if rank == 0 and (step % run.checkpoint_every == 0 or last):
            save_checkpoint(out_dir / "checkpoint.safetensors", with_step(task.checkpoint(), step))
            save_resume(resume_path, module, optimizer, stream, step, best, time.monotonic() - start)
        if world > 1:
            dist.barrier()
        if out_of_time:
            bar.write(f"stopping at step {step}: run.max_minutes={run.max_minutes} reached (resume with --resume)", file=sys.stderr)
            break
    bar.close()
    wall = time.monotonic() - start
    if rank == 0:
        metrics.close()
        plot_curves(out_dir / "metrics.jsonl", out_dir / "curves.png")
    if world > 1:
        dist.barrier()
    return TrainSummary(step, wall, best, out_dir)


PROGRESS_KEYS = ("loss", "accuracy", "perplexity", "temperature", "wer", "cer", "eer", "lr")


def with_step(checkpoint: Checkpoint, step: int) -> Checkpoint:
    checkpoint.metadata = {**checkpoint.metadata, "step": step}
    return checkpoint


def config_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)


def save_resume(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer, stream: BatchStream,
                step: int, best: dict[str, float], elapsed: float) -> None:
    state = {"model": module.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
             "data": stream.state(), "best": best, "elapsed": elapsed}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_resume(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer,
                stream: BatchStream) -> tuple[int, dict[str, float], float]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except pickle.UnpicklingError:  # its message is 29 lines and suggests weights_only=False
        raise CheckpointError(f"{path}: holds pickled objects beyond tensors, which are not loaded (unsafe); "
                              "remove it to start over") from None
    except (RuntimeError, KeyError, EOFError, ValueError, OSError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: cannot resume from this file ({reason}); remove it to start over") from None
    stream.restore(state["data"])
    return int(state["step"]), dict(state.get("best", {})), float(state.get("elapsed", 0.0))
