"""Config sections shared by every training command."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from speechssl.config import ConfigError
from speechssl.data.augment import AugmentConfig


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=list)  # manifest paths (JSONL)
    valid: list[str] = field(default_factory=list)
    max_batch_seconds: float = 60.0  # padded audio seconds per batch, not a batch size
    crop_seconds: float | None = 4.0  # random crop per utterance; None keeps whole files
    min_seconds: float = 0.5
    num_workers: int = 1
    max_valid_utterances: int = 200
    # The data mix: data.train[i] is read train_repeats[i] times per epoch (default once);
    # every read after the first is a copy perturbed by `augment` (speed, noise, gain).
    train_repeats: list[int] = field(default_factory=list)
    augment: AugmentConfig | None = None

    def copies_are_perturbed(self) -> None:
        """For the tasks whose copies ``augment`` perturbs (CTC, pretraining); the speaker task
        perturbs every bank item with its own ``augment`` and does not need it."""
        if self.augment is None and any(r > 1 for r in self.train_repeats):
            raise ConfigError("data.train_repeats > 1 makes augmented copies: set data.augment too")

    def validate(self) -> None:
        if self.train_repeats and (len(self.train_repeats) != len(self.train) or min(self.train_repeats) < 1):
            raise ConfigError("data.train_repeats: one count >= 1 per data.train manifest")
        if self.max_batch_seconds <= 0:
            raise ConfigError("data.max_batch_seconds must be > 0")
        if self.crop_seconds is not None and self.crop_seconds > self.max_batch_seconds:
            raise ConfigError("data.crop_seconds must not exceed data.max_batch_seconds")


@dataclass
class OptimConfig:
    lr: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    weight_decay: float = 0.01
    schedule: Literal["linear", "tri_stage"] = "linear"
    warmup_steps: int = 500
    hold_steps: int = 0  # tri_stage only: steps at peak before the decay
    final_lr_scale: float = 0.05
    max_steps: int = 10_000
    clip_norm: float = 5.0
    grad_accum: int = 1

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError("optim.lr must be > 0")
        if self.max_steps < 1:
            raise ConfigError("optim.max_steps must be >= 1")
        if self.grad_accum < 1:
            raise ConfigError("optim.grad_accum must be >= 1")
        if len(self.betas) != 2:
            raise ConfigError("optim.betas must be two numbers")


@dataclass
class RunConfig:
    out_dir: str = "runs/pretrain"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    log_every: int = 10
    valid_every: int = 250
    checkpoint_every: int = 250
    max_minutes: float | None = None  # stop cleanly (with a checkpoint) after this wall time
    threads: int | None = None  # torch intra-op threads; None leaves torch's default
    # Training matmuls: auto is bf16 autocast on a GPU and fp32 on a CPU; bf16 on a CPU pays only
    # where it has bf16 matmul units (AMX: 1.5-1.8x, docs/pretraining.md) and is ~8x slower on AVX2.
    precision: str = "auto"  # auto | fp32 | bf16
    progress: bool = True

    def validate(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"run.precision must be auto, fp32 or bf16, not {self.precision!r}")
        if self.checkpoint_every < 1 or self.valid_every < 1 or self.log_every < 1:
            raise ConfigError("run.log_every, run.valid_every and run.checkpoint_every must be >= 1")
