"""Speech-to-text fine-tuning: a CTC character head on the (pretrained) encoder.

The wav2vec 2.0 recipe: the conv feature encoder stays frozen, only the head trains for
the first ``freeze_transformer_steps`` updates, time and channel masking act as
augmentation, and the learning rate follows the tri-stage schedule. ``init_from: null``
trains the same architecture from random weights, for the label-efficiency comparison.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from speechssl.checkpoint import HEAD_PREFIXES, Checkpoint
from speechssl.config import ConfigError, build_model_config, load_config
from speechssl.data.augment import copy_of
from speechssl.data.dataset import Batch
from speechssl.data.manifest import Utterance, normalize_text, read_manifest
from speechssl.decode.ctc import encode_text, greedy_decode
from speechssl.metrics import error_rates
from speechssl.models import build
from speechssl.models.ctc import CtcModel
from speechssl.models.heads import CHAR_VOCAB
from speechssl.train.loop import StepResult, TrainSummary, train
from speechssl.train.settings import DataConfig, OptimConfig, RunConfig

log = logging.getLogger("speechssl.ctc")

# Fine-tuning settings that override the pretrained model's (masking as augmentation).
FINETUNE_MODEL_KEYS = ("mask_prob", "mask_length", "mask_channel_prob", "mask_channel_length", "dropout",
                       "attention_dropout", "activation_dropout", "layer_drop", "feature_dropout")


@dataclass
class CtcConfig:
    init_from: str | None = None  # pretrained checkpoint; None: random init from `model`
    from_scratch: bool = False  # take init_from's architecture but not its weights (the baseline)
    # Also start the CTC head from init_from's (a CTC checkpoint): fine-tuning goes on from an
    # earlier run's result with new data or settings, rather than from a pretrained encoder.
    init_head: bool = False
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "small"})
    data: DataConfig = field(default_factory=lambda: DataConfig(crop_seconds=None, max_batch_seconds=60.0))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(schedule="tri_stage", lr=1e-4))
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/ctc"))
    labeled_hours: float | None = None  # use only this much of the train manifests (seeded draw)
    freeze_feature_encoder: bool = True
    freeze_transformer_steps: int = 0
    head_dropout: float = 0.1
    # The encoder's learning rate as a fraction of the head's: a small pretrained encoder keeps
    # what it learned while a new head catches up (1.0: one rate for all).
    encoder_lr_scale: float = 1.0
    # Keep the front end and the first N transformer layers as init_from has them (they never
    # train): less to overfit on minutes of labels, and layers 0..N stay self-supervised, so a
    # speaker head trained on them later reads the pretrained representation.
    frozen_layers: int = 0
    # A frozen-encoder probe instead of fine-tuning: the encoder never learns; a weighted sum
    # of its layers feeds a small BiLSTM CTC head (speechssl/models/probe.py). Experiments only:
    # the server and `speechssl.load` serve fine-tuned checkpoints, not probes.
    probe: bool = False

    def validate(self) -> None:
        self.data.copies_are_perturbed()
        unknown = set(self.model) - {"preset", *FINETUNE_MODEL_KEYS} if self.init_from else set()
        if unknown:
            raise ConfigError(f"model: with init_from only fine-tuning keys may be set ({', '.join(FINETUNE_MODEL_KEYS)}); "
                              f"got {', '.join(sorted(unknown))}")
        if not self.data.train:
            raise ConfigError("data.train: give at least one transcribed training manifest")
        if self.data.crop_seconds is not None:
            raise ConfigError("data.crop_seconds must be null for CTC: a crop would cut the transcript")
        if self.labeled_hours is not None and self.labeled_hours <= 0:
            raise ConfigError("labeled_hours must be positive")
        if self.freeze_transformer_steps < 0:
            raise ConfigError("freeze_transformer_steps must be >= 0")
        if not 0 < self.encoder_lr_scale <= 1:
            raise ConfigError("encoder_lr_scale must be in (0, 1]")
        if self.frozen_layers < 0:
            raise ConfigError("frozen_layers must be >= 0")
        if self.init_head and (not self.init_from or self.from_scratch or self.probe):
            raise ConfigError("init_head needs init_from (a CTC checkpoint) with from_scratch: false, and no probe")
        if self.frozen_layers and (not self.init_from or self.from_scratch):
            raise ConfigError("frozen_layers needs pretrained weights (init_from, from_scratch: false)")


def labeled_subset(utterances: list[Utterance], hours: float | None, seed: int = 0) -> list[Utterance]:
    """A seeded draw of ``hours`` of audio; a smaller draw is a prefix of a larger one."""
    usable = [u for u in utterances if u.text]
    if hours is None:
        return usable
    order = sorted(usable, key=lambda u: u.id)
    random.Random(seed).shuffle(order)
    kept, total = [], 0.0
    for utt in order:
        if total >= hours * 3600:
            break
        kept.append(utt)
        total += utt.duration
    return kept


def training_utterances(config: CtcConfig) -> tuple[list[Utterance], list[Utterance]]:
    """(the labelled draw, its augmented copies): manifest i's utterances are read
    ``data.train_repeats[i]`` times per epoch, every read after the first a copy that
    ``data.augment`` perturbs. The copies come after the draw, so that without repeats the
    list, and every earlier run's batches, stay as they were."""
    manifests = [read_manifest(p) for p in config.data.train]
    labeled = labeled_subset([u for m in manifests for u in m], config.labeled_hours, config.run.seed)
    reads = {id(u): count for m, count in zip(manifests, config.data.train_repeats or [1] * len(manifests)) for u in m}
    copies = [copy_of(u, n) for n in range(2, max(reads.values(), default=1) + 1) for u in labeled if reads[id(u)] >= n]
    if config.data.augment is not None and config.data.augment.mean_pad_seconds:
        # The sampler bounds a batch by these durations: count the silence the copies gain.
        copies = [dataclasses.replace(u, duration=u.duration + config.data.augment.mean_pad_seconds) for u in copies]
    return labeled, copies


class CtcTask:
    selection_metric = "cer"

    def __init__(self, config: CtcConfig):
        self.config = config
        self.vocab = CHAR_VOCAB
        if config.init_from:
            overrides = {k: v for k, v in config.model.items() if k != "preset"}
            source = build.read(config.init_from)  # read once: the encoder and, with init_head, the head
            encoder = build.encoder(source, overrides, weights=not config.from_scratch)
            self.module = CtcModel(encoder.config, len(self.vocab), config.head_dropout, config.probe, encoder)
            if config.init_head:
                self.load_head(source)
        else:
            self.module = CtcModel(build_model_config(config.model), len(self.vocab), config.head_dropout, config.probe)
        if config.freeze_feature_encoder:
            self.module.wav2vec2.feature_extractor.requires_grad_(False)
        if config.frozen_layers:
            try:
                self.module.wav2vec2.freeze_bottom(config.frozen_layers)
            except ValueError as exc:
                raise ConfigError(f"frozen_layers: {exc}") from None
        self.step = 0

    def load_head(self, source: Checkpoint) -> None:
        if "ctc" not in source.heads:
            raise ConfigError(f"init_head: {source.source} holds no CTC head")
        if source.metadata.get("vocab", self.vocab) != self.vocab:
            raise ConfigError(f"init_head: {source.source} has another vocabulary than this CTC head's")
        build.load_weights(self.module.ctc_head, source, prefix=HEAD_PREFIXES["ctc"])

    def before_step(self, step: int) -> None:
        self.step = step

    def param_groups(self) -> list[dict]:
        head = [p for name, p in self.module.named_parameters() if not name.startswith("wav2vec2.")]
        return [{"params": head, "lr_scale": 1.0},
                {"params": list(self.module.wav2vec2.parameters()), "lr_scale": self.config.encoder_lr_scale}]

    def train_step(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> StepResult:
        module = self.module
        frames = module.wav2vec2.frame_lengths(batch.lengths)
        time_mask = module.wav2vec2.time_mask(frames, generator) if module.config.mask_prob > 0 else None
        frozen = self.step < self.config.freeze_transformer_steps
        log_probs, frames = model(batch.waves, batch.lengths, time_mask, freeze_encoder=frozen)
        targets = [torch.tensor(encode_text(normalize_text(t or ""), self.vocab)) for t in batch.texts]
        target_lengths = torch.tensor([len(t) for t in targets])
        loss = F.ctc_loss(log_probs.transpose(0, 1), torch.cat(targets).to(log_probs.device), frames,
                          target_lengths, blank=0, reduction="sum", zero_infinity=True)
        # Per target character, so the loss scale does not follow the batch's length.
        loss = loss / target_lengths.sum().clamp(min=1)
        blank_ratio = float((log_probs.argmax(-1) == 0).float().mean())
        return StepResult(loss, {"blank_ratio": blank_ratio, "frozen": float(frozen)})

    def evaluate(self, loader: DataLoader) -> dict[str, float]:
        """Greedy-decoded WER and CER on the validation manifest."""
        self.module.eval()
        scores = score(self.module, loader, self.vocab)
        self.module.train()
        return scores

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(self.module.state_dict(), self.module.config,
                          {"kind": "ctc-probe" if self.config.probe else "ctc", "vocab": self.vocab, "blank_id": 0, "init_from": self.config.init_from, "frozen_layers": self.config.frozen_layers,
                           "from_scratch": self.config.from_scratch})


@torch.no_grad()
def score(module: CtcModel, loader: DataLoader, vocab: list[str]) -> dict[str, float]:
    """Greedy-decoded corpus WER and CER of ``module`` (in eval mode) over ``loader``."""
    device = next(module.parameters()).device
    refs, hyps = [], []
    for batch in loader:
        batch = batch.to(device)
        log_probs, frames = module(batch.waves, batch.lengths, freeze_encoder=True)
        for row, text in enumerate(batch.texts):
            hyps.append(greedy_decode(log_probs[row, : int(frames[row])].cpu(), vocab))
            refs.append(normalize_text(text or ""))
    return error_rates(refs, hyps)


def run_finetune_ctc(config_path: str | None, overrides: list[str], resume: bool = False) -> TrainSummary:
    config = load_config(CtcConfig, config_path, overrides)
    labeled, copies = training_utterances(config)
    train_utts = labeled + copies
    valid_utts = [u for p in config.data.valid for u in read_manifest(p) if u.text]
    log.info("fine-tuning on %d utterances (%.2f h of labels), %d augmented copies", len(labeled),
             sum(u.duration for u in labeled) / 3600, len(copies))
    torch.manual_seed(config.run.seed)
    task = CtcTask(config)
    return train(task, config, config.data, config.optim, config.run, train_utts, valid_utts, resume=resume)
