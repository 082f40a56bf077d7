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
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from speechssl.audio import SAMPLE_RATE, load_audio
from speechssl.checkpoint import Checkpoint, atomic_write, load_checkpoint, load_into
from speechssl.config import ConfigError, ModelConfig, load_config
from speechssl.data.augment import AugmentConfig, augment
from speechssl.data.dataset import Batch
from speechssl.data.selection import per_speaker_subset, with_speakers
from speechssl.data.manifest import Utterance, read_manifest
from speechssl.data.sampler import SecondsBatchSampler
from speechssl.metrics import eer, min_dcf
from speechssl.models.heads import AamSoftmax, SpeakerHead, log_mel_frames
from speechssl.models.wav2vec2 import Wav2Vec2Model
from speechssl.device import resolve_device
from speechssl.train.loop import StepResult, TrainSummary, train
from speechssl.train.settings import DataConfig, OptimConfig, RunConfig
from speechssl.verification import TrialError, cosine_scores, make_trials

log = logging.getLogger("speechssl.speaker")

FRAMES_PER_SECOND = 50  # the feature encoder's 320-sample stride at 16 kHz


@dataclass
class HeadConfig:
    dim: int = 192
    num_layers: int | None = None  # weight the transformer input and the first N layers; None: all
    channels: int = 256  # frame-wise linear layer before pooling; 0 skips it
    attention_dim: int = 128
    context: list[int] = field(default_factory=list)  # dilations of residual time convolutions, e.g. [1, 2, 3]
    mel_bins: int = 0  # also read each frame's log-mel spectrum (e.g. 80); 0: the encoder's frames alone
    margin: float = 0.2  # AAM softmax
    scale: float = 30.0
    margin_warmup_steps: int = 200  # the margin grows from 0 over these updates

    def validate(self) -> None:
        if self.dim < 1 or self.channels < 0 or self.attention_dim < 1:
            raise ConfigError("head.dim and head.attention_dim must be >= 1, head.channels >= 0")
        if any(d < 1 for d in self.context):
            raise ConfigError("head.context: dilations must be >= 1")
        if self.mel_bins < 0 or (self.mel_bins and not self.channels):
            raise ConfigError("head.mel_bins must be >= 0, and needs head.channels > 0")
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
        if self.per_speaker is not None and self.per_speaker < 1:
            raise ConfigError("per_speaker must be >= 1 or null")
        if self.speaker_id_pattern is not None:
            try:
                if re.compile(self.speaker_id_pattern).groups < 1:
                    raise ConfigError("speaker_id_pattern needs a group, e.g. '^([0-9]+)-'")
            except re.error as exc:
                raise ConfigError(f"speaker_id_pattern: not a regular expression ({exc})") from None


# --- data -----------------------------------------------------------------------------


@dataclass
class FeatureBank:
    """Per-layer encoder frames of every training item, concatenated: item i is
    frames[offsets[i]:offsets[i+1]], shape (T_i, L+1, C), float16; ``normalized`` when they
    are already layer-normed as the head's input (``SpeakerHead.normalize_states``)."""

    frames: Tensor
    offsets: Tensor  # (N + 1,) int64
    speakers: list[str]  # (N,) the speaker of each item
    speeds: list[float]  # (N,) its speed perturbation (1.0 = none)
    normalized: bool = True
    mel: Tensor | None = None  # (frames, bins) float16 log-mel spectra beside ``frames``, when the head reads them

    def __len__(self) -> int:
        return len(self.speakers)

    def labels(self, speed_as_new_speaker: bool) -> tuple[Tensor, list[str]]:
        """((N,) class index per item, class names); a perturbed speed is a class of its own when asked."""
        names = [s + (f"@x{v:g}" if v != 1.0 and speed_as_new_speaker else "") for s, v in zip(self.speakers, self.speeds)]
        classes = sorted(set(names))
        index = {name: k for k, name in enumerate(classes)}
        return torch.tensor([index[n] for n in names]), classes


@torch.inference_mode()
def build_bank(encoder: Wav2Vec2Model, utterances: list[Utterance], config: SpeakerConfig, num_states: int,
               device: torch.device, raw: bool = False, progress: bool = True) -> FeatureBank:
    """Window, augment and encode every utterance once (seeded per utterance); ``raw`` keeps the
    states as the encoder gives them (the top layers' input when they are fine-tuned). With
    ``config.head.mel_bins`` the log-mel spectra of the same augmented audio are kept beside them."""
    encoder.eval()
    window = int(config.max_utterance_seconds * SAMPLE_RATE)
    waves_durations = [min(u.duration, config.max_utterance_seconds) for u in utterances]
    sampler = SecondsBatchSampler(waves_durations, config.data.max_batch_seconds, shuffle=False)
    items: list[Tensor | None] = [None] * len(utterances)
    mels: list[Tensor | None] = [None] * len(utterances)
    bins = config.head.mel_bins
    speeds = [1.0] * len(utterances)
    for batch in tqdm(list(sampler), desc="encoding training audio", disable=not progress, dynamic_ncols=True):
        waves = []
        for i in batch:
            rng = np.random.default_rng((config.run.seed, i))
            wave = load_audio(utterances[i].path)
            if len(wave) > window:
                start = int(rng.integers(0, len(wave) - window + 1))
                wave = wave[start : start + window]
            wave, speeds[i] = augment(wave, rng, config.augment)
            waves.append(wave)
        lengths = torch.tensor([len(w) for w in waves])
        padded = torch.zeros(len(waves), int(lengths.max()))
        for row, wave in enumerate(waves):
            padded[row, : len(wave)] = torch.from_numpy(wave)
        out = encoder(padded.to(device), lengths.to(device), num_layers=num_states - 1)
        states = torch.stack(out.hidden_states, dim=2)  # (B, T, L+1, C)
        states = (states if raw else SpeakerHead.normalize_states(states)).half().cpu()
        mel = log_mel_frames(padded, states.shape[1], bins).half() if bins else None
        for row, i in enumerate(batch):
            items[i] = states[row, : int(out.lengths[row])].clone()
            if mel is not None:
                mels[i] = mel[row, : int(out.lengths[row])].clone()
    offsets = torch.tensor([0] + [len(t) for t in items]).cumsum(0)  # type: ignore[arg-type]
    return FeatureBank(torch.cat(items), offsets, [u.speaker for u in utterances], speeds,  # type: ignore[arg-type,misc]
                       normalized=not raw, mel=torch.cat(mels) if bins else None)  # type: ignore[arg-type]


def bank_key(config: SpeakerConfig, utterances: list[Utterance], num_states: int) -> str:
    """What the bank depends on: the encoder file, the items, the augmentation, the seed."""
    stat = os.stat(config.init_from)
    what = {"init_from": [os.path.abspath(config.init_from), stat.st_size, stat.st_mtime_ns],
            "items": [(u.id, u.path, u.speaker) for u in utterances],
            "augment": {k: v for k, v in dataclasses.asdict(config.augment).items() if k != "speed_as_new_speaker"},
            "max_utterance_seconds": config.max_utterance_seconds, "seed": config.run.seed, "states": num_states,
            # Only when set, so the banks cached before heads read spectra keep their keys.
            "raw": config.finetune_top_layers > 0, **({"mel_bins": config.head.mel_bins} if config.head.mel_bins else {})}
    return hashlib.sha1(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class FeatureBatch:
    states: Tensor  # (B, T, L+1, C) float16, zero after each item's frames
    lengths: Tensor  # (B,) frames
    labels: Tensor  # (B,) class index
    normalized: bool  # states already layer-normed as the head's input
    mel: Tensor | None = None  # (B, T, bins) float16 log-mel spectra, zero after each item's frames

    def to(self, device: torch.device | str) -> FeatureBatch:
        mel = None if self.mel is None else self.mel.to(device)
        return FeatureBatch(self.states.to(device), self.lengths.to(device), self.labels.to(device), self.normalized, mel)


class CropStream:
    """Endless batches of random crops from the bank; each batch has one crop length.

    The order and the crops are functions of (seed, epoch, position), the stream's whole
    resumable state, as for the loop's own BatchStream. DDP ranks take strided shares.
    """

    def __init__(self, bank: FeatureBank, labels: Tensor, batch_size: int, crop_seconds: list[float], seed: int,
                 rank: int = 0, world: int = 1):
        self.bank, self.labels, self.batch_size = bank, labels, batch_size
        self.seed, self.rank, self.world = seed, rank, world
        self.crop_frames = [max(1, round(s * FRAMES_PER_SECOND)) for s in crop_seconds]
        self.epoch, self.position = 0, 0
        if len(bank) // world < batch_size:
            raise ConfigError(f"batch_size {batch_size} is more than the {len(bank) // world} training items per process")

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def restore(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]

    def next(self) -> FeatureBatch:
        order = np.random.default_rng((self.seed, self.epoch)).permutation(len(self.bank))[self.rank :: self.world]
        if (self.position + 1) * self.batch_size > len(order):  # drop the last partial batch
            self.epoch, self.position = self.epoch + 1, 0
            return self.next()
        chosen = order[self.position * self.batch_size : (self.position + 1) * self.batch_size]
        rng = np.random.default_rng((self.seed, self.epoch, self.position, self.rank))
        self.position += 1
        length = int(rng.integers(self.crop_frames[0], self.crop_frames[1] + 1))
        offsets = self.bank.offsets
        frames = [int(offsets[i + 1] - offsets[i]) for i in chosen]
        take = [min(length, n) for n in frames]
        states = torch.zeros(len(chosen), max(take), *self.bank.frames.shape[1:], dtype=self.bank.frames.dtype)
        bank_mel = self.bank.mel
        mel = None if bank_mel is None else torch.zeros(len(chosen), max(take), bank_mel.shape[1], dtype=bank_mel.dtype)
        for row, (i, n, t) in enumerate(zip(chosen, frames, take)):
            start = int(offsets[i]) + int(rng.integers(0, n - t + 1))
            states[row, :t] = self.bank.frames[start : start + t]
            if mel is not None:
                mel[row, :t] = bank_mel[start : start + t]  # type: ignore[index]
        return FeatureBatch(states, torch.tensor(take), self.labels[torch.from_numpy(chosen)], self.bank.normalized,
                            mel)


# --- model and task -------------------------------------------------------------------


def head_layers(config: ModelConfig, head: HeadConfig) -> int:
    if head.num_layers is None:
        return config.num_layers
    if not 0 <= head.num_layers <= config.num_layers:
        raise ConfigError(f"head.num_layers must be between 0 and the encoder's {config.num_layers}")
    return head.num_layers


class SpeakerModel(nn.Module):
    """Encoder + SpeakerHead + AAM classifier; keys ``wav2vec2.*``, ``speaker_head.*``, ``aam.*``."""

    def __init__(self, encoder: Wav2Vec2Model, head: HeadConfig, num_classes: int):
        super().__init__()
        self.config = config = encoder.config
        self.wav2vec2 = encoder
        self.speaker_head = SpeakerHead(config.hidden_size, head_layers(config, head), head.dim, head.channels,
                                        head.attention_dim, head.context, head.mel_bins)
        self.aam = AamSoftmax(head.dim, num_classes, head.margin, head.scale)
        self.live_layers = 0  # top transformer layers run from the bank's states (fine-tuning)

    def forward(self, states: Tensor, lengths: Tensor, labels: Tensor, normalized: bool = False,
                mel: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Bank states (B, T, L+1, C) and log-mel (B, T, bins) -> (AAM loss, accuracy of the nearest class centre)."""
        states = self.run_live_layers(states.float(), lengths)
        vectors = self.speaker_head(states, lengths, normalized=normalized, mel=mel)
        accuracy = (self.aam.cosine(vectors).argmax(-1) == labels).float().mean()
        return self.aam(vectors, labels), accuracy.detach()

    def run_live_layers(self, states: Tensor, lengths: Tensor) -> Tensor:
        """Recompute the top ``live_layers`` states from the bank's (raw) state below them, so those layers learn."""
        if not self.live_layers:
            return states
        top = self.speaker_head.num_layers
        valid = torch.arange(states.shape[1], device=states.device)[None, :] < lengths[:, None]
        mask = None if bool(valid.all()) else valid[:, None, None, :]
        x, outputs = states[:, :, top - self.live_layers], []
        transformer = self.wav2vec2.encoder
        for layer in transformer.layers[top - self.live_layers : top]:
            x = layer(x, mask)
            outputs.append(x)
        if transformer.pre_ln and top == len(transformer.layers):  # as TransformerEncoder ends
            outputs[-1] = transformer.layer_norm(outputs[-1])
        return torch.cat([states[:, :, : top + 1 - self.live_layers], torch.stack(outputs, dim=2)], dim=2)


class SpeakerTask:
    selection_metric = "eer"

    def __init__(self, config: SpeakerConfig, train_utts: list[Utterance]):
        self.config = config
        self.source = ckpt = load_checkpoint(config.init_from)
        num_layers = head_layers(ckpt.model_config, config.head)
        if not 0 <= config.finetune_top_layers <= num_layers:
            raise ConfigError(f"finetune_top_layers must be between 0 and the head's {num_layers} layers")
        encoder = Wav2Vec2Model(ckpt.model_config)
        load_into(encoder, ckpt.state_dict, prefix="wav2vec2.", path=config.init_from)
        self.bank = self.load_or_build_bank(encoder, train_utts, num_layers + 1)
        self.labels, self.classes = self.bank.labels(config.augment.speed_as_new_speaker)
        log.info("speaker head on %d training items of %d classes (%.1f min of frames)", len(self.bank),
                 len(self.classes), len(self.bank.frames) / FRAMES_PER_SECOND / 60)
        self.module = SpeakerModel(encoder, config.head, len(self.classes))
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
        return CropStream(self.bank, self.labels, c.batch_size, c.crop_seconds, c.run.seed, rank, world)

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
    train_utts = with_speakers([u for p in config.data.train for u in read_manifest(p)], pattern)
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
