"""Self-supervised pretraining: the wav2vec 2.0 contrastive task on unlabeled audio."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader

from speechssl.checkpoint import Checkpoint
from speechssl.config import ConfigError, ModelConfig, build_model_config, load_config
from speechssl.data.dataset import Batch
from speechssl.data.augment import mixed_manifests
from speechssl.data.manifest import read_manifest
from speechssl.models import build
from speechssl.models.wav2vec2 import Wav2Vec2ForPretraining
from speechssl.train.loop import StepResult, TrainSummary, train
from speechssl.train.settings import DataConfig, OptimConfig, RunConfig

log = logging.getLogger("speechssl.pretrain")


@dataclass
class ObjectiveConfig:
    # contrastive: wav2vec 2.0 (Gumbel quantizer, distractors, diversity loss).
    # hubert: cross-entropy on masked frames against k-means labels; best_rq: against a
    # frozen random-projection quantizer (speechssl/train/masked_prediction.py).
    kind: Literal["contrastive", "hubert", "best_rq"] = "contrastive"
    num_targets: int = 100  # hubert: k-means clusters; best_rq: codebook entries
    kmeans_utterances: int = 1000  # utterances (cropped as data.crop_seconds) whose frames fit k-means
    kmeans_frames: int = 200_000  # at most this many of their frames
    label_from: str | None = None  # hubert second iteration: labels from a layer of this checkpoint
    label_layer: int = 4
    # [low, high]: masked prediction with the student's log-mel input frequency-warped (VTLP, a
    # factor drawn uniformly per utterance) while its labels come from the unwarped audio
    # (ContentVec's idea), so the layers learn what stays when the voice changes. null: none.
    student_warp: list[float] | None = None
    num_negatives: int = 100
    logit_temperature: float = 0.1
    diversity_weight: float = 0.1
    # Short CPU runs: hold the diversity loss at 0 for this many updates, then ramp it to
    # diversity_weight over as many again. With it on from step 0 a small model sits at
    # chance (loss ln(K+1)) for longer than a CPU hour; 0 keeps the paper's behaviour.
    diversity_warmup_steps: int = 0
    feature_penalty_weight: float = 10.0
    gumbel_start: float = 2.0
    gumbel_end: float = 0.5
    gumbel_decay: float = 0.999995  # per update
    feature_grad_mult: float = 0.1  # the conv encoder learns this much slower
    collapse_perplexity: float = 8.0  # warn when codebook use falls below this

    def validate(self) -> None:
        if self.num_negatives < 1:
            raise ConfigError("objective.num_negatives must be >= 1")
        if not 0 < self.gumbel_decay <= 1:
            raise ConfigError("objective.gumbel_decay must be in (0, 1]")
        if self.num_targets < 2:
            raise ConfigError("objective.num_targets must be >= 2")
        if self.label_from and self.kind != "hubert":
            raise ConfigError("objective.label_from is for objective.kind: hubert")
        if self.student_warp is not None:
            if self.kind == "contrastive":
                raise ConfigError("objective.student_warp is for the masked-prediction kinds (hubert, best_rq)")
            if len(self.student_warp) != 2 or not 0.5 <= self.student_warp[0] <= self.student_warp[1] <= 2.0:
                raise ConfigError("objective.student_warp must be [low, high] with 0.5 <= low <= high <= 2")


@dataclass
class PretrainConfig:
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "small"})
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    run: RunConfig = field(default_factory=RunConfig)
    init_from: str | None = None  # continue from a checkpoint's weights (not its optimizer)

    def validate(self) -> None:
        self.data.copies_are_perturbed()
        model_config = self.model_config()  # unknown model keys fail here, with their names
        if self.objective.student_warp and model_config.front_end != "log_mel":
            raise ConfigError("objective.student_warp needs model.front_end: log_mel (it warps the spectrum)")
        if not self.data.train:
            raise ConfigError("data.train: give at least one training manifest")

    def model_config(self) -> ModelConfig:
        return build_model_config(self.model)


class PretrainTask:
    selection_metric = "loss"

    def __init__(self, config: PretrainConfig):
        self.config = config
        self.objective = config.objective
        self.module = Wav2Vec2ForPretraining(config.model_config())
        self.module.wav2vec2.feature_extractor.grad_scale = self.objective.feature_grad_mult
        if config.init_from:
            build.load_weights(self.module, config.init_from)
        self.warned = False
        self.diversity_weight = config.objective.diversity_weight

    def before_step(self, step: int) -> None:
        o = self.objective
        self.module.quantizer.temperature = max(o.gumbel_end, o.gumbel_start * o.gumbel_decay**step)
        warm = o.diversity_warmup_steps
        ramp = 1.0 if warm == 0 else min(1.0, max(0.0, (step - warm) / warm))
        self.diversity_weight = o.diversity_weight * ramp

    def loss(self, model: nn.Module, batch: Batch, generator: torch.Generator, diversity_weight: float):
        o = self.objective
        return model(
            batch.waves, batch.lengths, num_negatives=o.num_negatives, logit_temperature=o.logit_temperature,
            diversity_weight=diversity_weight, feature_penalty_weight=o.feature_penalty_weight, generator=generator,
        )

    def train_step(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> StepResult:
        out = self.loss(model, batch, generator, self.diversity_weight)
        perplexity = float(out.perplexity)
        diversity_on = self.diversity_weight >= self.objective.diversity_weight
        if diversity_on and perplexity < self.objective.collapse_perplexity and not self.warned:
            log.warning("codebook perplexity %.1f < %.1f: the quantizer is collapsing", perplexity,
                        self.objective.collapse_perplexity)
            self.warned = True
        return StepResult(out.loss, {
            "contrastive": out.contrastive.item(), "diversity": out.diversity.item(),
            "feature_penalty": out.feature_penalty.item(), "accuracy": float(out.accuracy),
            "perplexity": perplexity, "temperature": self.module.quantizer.temperature,
            "diversity_weight": self.diversity_weight,
        })

    @torch.no_grad()
    def evaluate(self, loader: DataLoader) -> dict[str, float]:
        """Validation loss with fixed masks and distractors (seeded), quantizer in eval mode."""
        self.module.eval()
        device = next(self.module.parameters()).device
        generator = torch.Generator().manual_seed(0)
        totals = {"loss": 0.0, "contrastive": 0.0, "accuracy": 0.0, "perplexity": 0.0}
        frames = 0
        for batch in loader:
            # The full diversity weight, so validation losses compare across the warm-up.
            out = self.loss(self.module, batch.to(device), generator, self.objective.diversity_weight)
            for key in totals:
                totals[key] += float(getattr(out, key)) * out.num_masked
            frames += out.num_masked
        self.module.train()
        return {k: v / max(frames, 1) for k, v in totals.items()}

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(self.module.state_dict(), self.module.config, {"kind": "pretrain"})


def run_pretrain(config_path: str | None, overrides: list[str], resume: bool = False) -> TrainSummary:
    config = load_config(PretrainConfig, config_path, overrides)
    train_utts = mixed_manifests(config.data.train, config.data.train_repeats)
    valid_utts = [u for path in config.data.valid for u in read_manifest(path)]
    torch.manual_seed(config.run.seed)  # the initial weights, so a run is reproducible from its config
    if config.objective.kind == "contrastive":
        task = PretrainTask(config)
    else:
        from speechssl.train.masked_prediction import MaskedPredictionTask

        task = MaskedPredictionTask(config, train_utts)
    return train(task, config, config.data, config.optim, config.run, train_utts, valid_utts, resume=resume)
