"""The speaker task's training data: a feature bank of frozen-encoder frames, cached on disk,
and the stream of random crops each update reads from it.

The encoder is frozen, so the per-layer frames of each training utterance (one augmented
copy) are computed once (``build_bank``) and saved under a key of everything they depend on
(``bank_key``); each step then draws 2-4 s crops of them (``CropStream``), which costs the
head alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from speechssl.audio import SAMPLE_RATE, load_audio
from speechssl.config import ConfigError
from speechssl.data.augment import augment
from speechssl.data.manifest import Utterance
from speechssl.data.sampler import SecondsBatchSampler
from speechssl.models.heads import SpeakerHead, frame_spectra
from speechssl.models.wav2vec2 import Wav2Vec2Model

if TYPE_CHECKING:
    from speechssl.train.speaker import SpeakerConfig

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
    ``config.head.mel_bins`` the log-mel spectra (and pitch track, ``head.pitch``) of the same
    augmented audio are kept beside them."""
    encoder.eval()
    window = int(config.max_utterance_seconds * SAMPLE_RATE)
    slots = bank_items(utterances, config)
    waves_durations = [min(utterances[u].duration, config.max_utterance_seconds) for u, _, _ in slots]
    sampler = SecondsBatchSampler(waves_durations, config.data.max_batch_seconds, shuffle=False)
    items: list[Tensor | None] = [None] * len(slots)
    mels: list[Tensor | None] = [None] * len(slots)
    bins = config.head.mel_bins
    speeds = [1.0] * len(slots)
    for batch in tqdm(list(sampler), desc="encoding training audio", disable=not progress, dynamic_ncols=True):
        waves = []
        for i in batch:
            rng = np.random.default_rng((config.run.seed, i))
            u, part, parts = slots[i]
            wave = load_audio(utterances[u].path)
            if len(wave) > window:  # a random window inside this item's part of the utterance
                lo, hi = len(wave) * part // parts, len(wave) * (part + 1) // parts
                lo, hi = (lo, hi - window) if hi - lo >= window else (0, len(wave) - window)
                start = int(rng.integers(lo, hi + 1))
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
        mel = frame_spectra(padded, states.shape[1], bins, config.head.pitch).half() if bins else None
        for row, i in enumerate(batch):
            items[i] = states[row, : int(out.lengths[row])].clone()
            if mel is not None:
                mels[i] = mel[row, : int(out.lengths[row])].clone()
    offsets = torch.tensor([0] + [len(t) for t in items]).cumsum(0)  # type: ignore[arg-type]
    speakers = [utterances[u].speaker for u, _, _ in slots]
    return FeatureBank(torch.cat(items), offsets, speakers, speeds,  # type: ignore[arg-type,misc]
                       normalized=not raw, mel=torch.cat(mels) if bins else None)  # type: ignore[arg-type]


def bank_items(utterances: list[Utterance], config: SpeakerConfig) -> list[tuple[int, int, int]]:
    """(utterance index, part, parts) per bank item: an utterance yields one item per
    ``max_utterance_seconds`` it holds, at most ``windows_per_utterance``."""
    items = []
    for u, utt in enumerate(utterances):
        parts = max(1, min(config.windows_per_utterance, int(utt.duration // config.max_utterance_seconds)))
        items += [(u, part, parts) for part in range(parts)]
    return items


def bank_key(config: SpeakerConfig, utterances: list[Utterance], num_states: int) -> str:
    """What the bank depends on: the encoder file, the items, the augmentation, the seed."""
    stat = os.stat(config.init_from)
    what = {"init_from": [os.path.abspath(config.init_from), stat.st_size, stat.st_mtime_ns],
            "items": [(u.id, u.path, u.speaker) for u in utterances],
            "augment": {k: v for k, v in dataclasses.asdict(config.augment).items() if k != "speed_as_new_speaker"},
            "max_utterance_seconds": config.max_utterance_seconds, "seed": config.run.seed, "states": num_states,
            # Only when set, so the banks cached before heads read spectra keep their keys.
            "raw": config.finetune_top_layers > 0, **({"mel_bins": config.head.mel_bins} if config.head.mel_bins else {}),
            **({"windows": config.windows_per_utterance} if config.windows_per_utterance > 1 else {}),
            **({"pitch": True} if config.head.pitch else {})}
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
                 rank: int = 0, world: int = 1, *, frames_per_second: float):
        self.bank, self.labels, self.batch_size = bank, labels, batch_size
        self.seed, self.rank, self.world = seed, rank, world
        self.crop_frames = [max(1, round(s * frames_per_second)) for s in crop_seconds]
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
