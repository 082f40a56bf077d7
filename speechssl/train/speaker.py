"""Speaker vectors: a SpeakerHead on the frozen pretrained encoder, trained with AAM softmax.

The encoder is frozen, so its per-layer frame outputs for each training utterance
(one augmented copy: speed, noise, gain) are computed once and kept in a feature
bank (cached on disk next to the run, so a resumed or repeated run skips it). Each
step then draws random 2-4 s crops of those frames, which costs the head alone.
With ``finetune_top_layers`` > 0 the bank holds the input of the top layers too and
those layers run (and learn) live from step ``finetune_after_steps`` on.

Speed perturbation changes pitch as well as tempo; with ``augment.speed_as_new_speaker``
a perturbed copy counts as a new speaker (as Kaldi and WeSpeaker recipes do), so the
head does not learn to ignore the pitch differences that tell voices apart.

Here: the settings, the choice of training and validation utterances, and the task the
loop runs. The bank and its crops are in ``speechssl.train.feature_bank``; the module
(encoder + head + AAM) is ``speechssl.models.speaker.SpeakerModel``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from speechssl.checkpoint import Checkpoint, atomic_write, load_checkpoint
from speechssl.config import ConfigError, load_config
from speechssl.data.augment import AugmentConfig, mixed_manifests
from speechssl.data.dataset import Batch
from speechssl.data.selection import per_speaker_subset, with_speakers
from speechssl.data.manifest import Utterance, read_manifest
from speechssl.metrics import eer, min_dcf
from speechssl.models import build
from speechssl.models.heads import SpeakerHeadConfig
from speechssl.models.speaker import SpeakerModel
from speechssl.models.wav2vec2 import Wav2Vec2Model
from speechssl.device import resolve_device
from speechssl.train.feature_bank import CropStream, FeatureBank, FeatureBatch, bank_key, build_bank
from speechssl.train.loop import StepResult, TrainSummary, train
from speechssl.train.settings import DataConfig, OptimConfig, RunConfig
from speechssl.verification import TrialError, cosine_scores, make_trials

__all__ = ["CropStream", "FeatureBank", "FeatureBatch", "HeadConfig", "SpeakerConfig", "SpeakerModel", "SpeakerTask",
           "build_bank", "run_train_speaker"]
log = logging.getLogger("speechssl.speaker")

@dataclass
class HeadConfig(SpeakerHeadConfig):
    """The head's shape (SpeakerHeadConfig: dim, num_layers, channels, ...) and its training loss."""

    margin: float = 0.2  # AAM softmax
    scale: float = 30.0
    margin_warmup_steps: int = 200  # the margin grows from 0 over these updates

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.margin < 1.5 or self.scale <= 0:
            raise ConfigError("head.margin must be in [0, 1.5) radians and head.scale > 0")


@dataclass
class SpeakerConfig:
    init_from: str = "runs/pretrain-small/best.safetensors"  # the pretrained encoder
    head: HeadConfig = field(default_factory=HeadConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # data.valid: speakers never seen in training, for the EER (best.safetensors) and the stored threshold.
    data: DataConfig = field(default_factory=lambda: DataConfig(crop_seconds=None, max_valid_utterances=240))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-3, warmup_steps=100, max_steps=1500))
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/speaker", valid_every=250))
    per_speaker: int | None = 12  # training utterances per speaker (seeded draw); None: all
    valid_per_speaker: int = 40
    max_utterance_seconds: float = 8.0  # a longer utterance is cut to one random window this long
    # Up to this many windows of a long utterance, one per equal part, each an item of its own:
    # a speaker with one long recording (the LibriSpeech clips) then shows the head how it varies.
    windows_per_utterance: int = 1
    crop_seconds: list[float] = field(default_factory=lambda: [2.0, 4.0])  # training crop length range
    batch_size: int = 64  # crops per update
    speaker_id_pattern: str | None = None  # regex whose group 1 is the speaker, for rows without one
    finetune_top_layers: int = 0
    finetune_after_steps: int = 0

    def validate(self) -> None:
        if not self.init_from:
            raise ConfigError("init_from: give the pretrained checkpoint the head is trained on")
        if not self.data.train:
            raise ConfigError("data.train: give at least one training manifest with speaker labels")
        if len(self.crop_seconds) != 2 or not 0 < self.crop_seconds[0] <= self.crop_seconds[1]:
            raise ConfigError("crop_seconds: give [shortest, longest] with 0 < shortest <= longest")
        if self.batch_size < 2:
            raise ConfigError("batch_size must be >= 2")
        if self.windows_per_utterance < 1:
            raise ConfigError("windows_per_utterance must be >= 1")
        if self.per_speaker is not None and self.per_speaker < 1:
            raise ConfigError("per_speaker must be >= 1 or null")
        if self.speaker_id_pattern is not None:
            try:
                if re.compile(self.speaker_id_pattern).groups < 1:
                    raise ConfigError("speaker_id_pattern needs a group, e.g. '^([0-9]+)-'")
            except re.error as exc:
                raise ConfigError(f"speaker_id_pattern: not a regular expression ({exc})") from None


# --- task -------------------------------------------------------------------------------


class SpeakerTask:
    selection_metric = "eer"

    def __init__(self, config: SpeakerConfig, train_utts: list[Utterance]):
        self.config = config
        self.source = ckpt = load_checkpoint(config.init_from)
        num_layers = config.head.layers(ckpt.model_config.num_layers)
        if not 0 <= config.finetune_top_layers <= num_layers:
            raise ConfigError(f"finetune_top_layers must be between 0 and the head's {num_layers} layers")
        encoder = build.encoder(ckpt)
        self.bank = self.load_or_build_bank(encoder, train_utts, num_layers + 1)
        self.labels, self.classes = self.bank.labels(config.augment.speed_as_new_speaker)
        log.info("speaker head on %d training items of %d classes (%.1f min of frames)", len(self.bank),
                 len(self.classes), len(self.bank.frames) / ckpt.model_config.frames_per_second / 60)
        self.module = SpeakerModel(encoder, config.head, len(self.classes), margin=config.head.margin,
                                   scale=config.head.scale)
        encoder.requires_grad_(False)
        for layer in encoder.encoder.layers[num_layers - config.finetune_top_layers : num_layers]:
            layer.requires_grad_(config.finetune_top_layers > 0)
        self.valid_states: dict[str, Tensor] = {}  # frozen encoder: validation frames computed once
        self.threshold: float | None = None

    def load_or_build_bank(self, encoder: Wav2Vec2Model, utterances: list[Utterance], num_states: int) -> FeatureBank:
        path = Path(self.config.run.out_dir) / f"bank-{bank_key(self.config, utterances, num_states)}.pt"
        if path.is_file():
            log.info("feature bank from %s", path)
            # Memory-mapped: a bank of many GB is paged in as crops are read, not copied into RAM.
            return FeatureBank(**torch.load(path, weights_only=True, mmap=True))  # tensors, str, float: no pickled code
        device = resolve_device(self.config.run.device)
        bank = build_bank(encoder.to(device), utterances, self.config, num_states, device,
                          raw=self.config.finetune_top_layers > 0, progress=self.config.run.progress)
        encoder.cpu()
        path.parent.mkdir(parents=True, exist_ok=True)
        # vars(), not dataclasses.asdict: asdict deep-copies, a second bank in memory while saving.
        atomic_write(path, lambda tmp: torch.save(dict(vars(bank)), tmp))
        log.info("feature bank cached at %s", path)
        return bank

    def make_stream(self, rank: int, world: int) -> CropStream:
        c = self.config
        return CropStream(self.bank, self.labels, c.batch_size, c.crop_seconds, c.run.seed, rank, world,
                          frames_per_second=self.module.config.frames_per_second)

    def before_step(self, step: int) -> None:
        c = self.config
        warm = c.head.margin_warmup_steps
        self.module.aam.margin = c.head.margin * (1.0 if warm == 0 else min(1.0, step / warm))
        self.module.live_layers = c.finetune_top_layers if step >= c.finetune_after_steps else 0

    def train_step(self, model: nn.Module, batch: FeatureBatch, generator: torch.Generator) -> StepResult:
        loss, accuracy = model(batch.states, batch.lengths, batch.labels, batch.normalized, batch.mel)
        weights = self.module.speaker_head.layer_weights.detach()
        return StepResult(loss, {"accuracy": float(accuracy), "margin": self.module.aam.margin,
                                 "top_layer_weight": float(weights.max()), "top_layer": float(weights.argmax())})

    @torch.no_grad()
    def evaluate(self, loader: DataLoader) -> dict[str, float]:
        """EER and minDCF on validation trials (all same-speaker pairs + as many others); the
        EER threshold becomes the checkpoint's speaker_threshold."""
        module = self.module
        module.eval()
        device = next(module.speaker_head.parameters()).device
        vectors, speakers = [], []
        for batch in loader:
            batch: Batch = batch.to(device)
            states, lengths = self.valid_encoding(batch)
            states = module.run_live_layers(states, lengths)
            mel = module.speaker_head.mel_input(batch.waves, states.shape[1])
            vectors.append(module.speaker_head(states, lengths, mel=mel).float().cpu())
            speakers.extend(batch.speakers)
        module.train()
        trials = make_trials(speakers, seed=0)
        scores = cosine_scores(torch.cat(vectors).numpy(), trials)
        rate, self.threshold = eer(scores, trials[:, 2])
        return {"eer": rate, "min_dcf": min_dcf(scores, trials[:, 2]), "threshold": self.threshold}

    def valid_encoding(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """(B, T, L+1, C) states and (B,) frames of a validation batch, cached while the encoder is frozen."""
        key = "\n".join(batch.ids)
        cached = self.valid_states.get(key)
        if cached is None:
            encoder = self.module.wav2vec2
            out = encoder(batch.waves, batch.lengths, num_layers=self.module.speaker_head.num_layers)
            cached = (torch.stack(out.hidden_states, dim=2).half(), out.lengths)
            if self.config.finetune_top_layers == 0:
                self.valid_states[key] = cached
        return cached[0].float(), cached[1]

    def checkpoint(self) -> Checkpoint:
        """Encoder and speaker head (not the AAM class centres), the head's settings and the threshold;
        a CTC head in init_from is kept when the encoder was not fine-tuned."""
        state = {k: v for k, v in self.module.state_dict().items() if not k.startswith("aam.")}
        metadata = {"kind": "speaker", "init_from": self.config.init_from,
                    "speaker_head": self.module.speaker_head.config(), "speaker_threshold": self.threshold,
                    "speaker_classes": len(self.classes)}
        if self.config.finetune_top_layers == 0 and "vocab" in self.source.metadata:
            state.update({k: v for k, v in self.source.state_dict.items() if k.startswith("ctc_head.")})
            metadata.update({k: self.source.metadata[k] for k in ("vocab", "blank_id") if k in self.source.metadata})
        return Checkpoint(state, self.module.config, metadata)


def load_speaker_data(config: SpeakerConfig) -> tuple[list[Utterance], list[Utterance]]:
    pattern, seed = config.speaker_id_pattern, config.run.seed
    # data.train_repeats: a manifest read N times gives N bank items of each utterance, each
    # with its own window and perturbation (build_bank), up to per_speaker.
    train_utts = with_speakers(mixed_manifests(config.data.train, config.data.train_repeats), pattern)
    valid_utts = with_speakers([u for p in config.data.valid for u in read_manifest(p)], pattern)
    overlap = {u.speaker for u in train_utts} & {u.speaker for u in valid_utts}
    if overlap:
        log.warning("%d validation speakers are also training speakers (e.g. %s): the EER will flatter",
                    len(overlap), sorted(overlap)[0])
    return (per_speaker_subset(train_utts, config.per_speaker, seed),
            per_speaker_subset(valid_utts, config.valid_per_speaker, seed))


def run_train_speaker(config_path: str | None, overrides: list[str], resume: bool = False) -> TrainSummary:
    config = load_config(SpeakerConfig, config_path, overrides)
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    train_utts, valid_utts = load_speaker_data(config)
    try:  # fail now, not at the first validation after minutes of training
        make_trials([u.speaker for u in valid_utts[: config.data.max_valid_utterances]])
    except TrialError as err:
        raise ConfigError(f"the validation utterances kept (data.max_valid_utterances="
                          f"{config.data.max_valid_utterances}, valid_per_speaker={config.valid_per_speaker}) "
                          f"cannot make speaker trials: {err}") from None
    log.info("training on %d utterances of %d speakers; validating on %d of %d", len(train_utts),
             len({u.speaker for u in train_utts}), len(valid_utts), len({u.speaker for u in valid_utts}))
    torch.manual_seed(config.run.seed)
    task = SpeakerTask(config, train_utts)
    return train(task, config, config.data, config.optim, config.run, train_utts, valid_utts, resume=resume,
                 make_stream=task.make_stream)
