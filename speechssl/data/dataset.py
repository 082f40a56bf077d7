"""Load, crop and collate utterances into typed batches.

The dataset only loads and collates; which utterances share a batch is the
sampler's decision (`SecondsBatchSampler`). Random crops are a pure function of
(seed, epoch, index), so DataLoader workers and resumed runs reproduce them exactly.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from speechssl.audio import SAMPLE_RATE, AudioError, load_audio
from speechssl.data.augment import AugmentConfig, augment, is_copy
from speechssl.data.manifest import Utterance
from speechssl.data.sampler import SecondsBatchSampler

log = logging.getLogger(__name__)


@dataclass
class AudioItem:
    """One loaded (and possibly cropped) utterance, before collation."""

    wave: Tensor  # (T,) float32, 16 kHz mono
    id: str
    text: str | None
    speaker: str | None


@dataclass
class Batch:
    waves: Tensor  # (B, T) float32, zero-padded after each utterance's end
    lengths: Tensor  # (B,) int64, valid samples per row
    ids: list[str]
    texts: list[str | None]
    speakers: list[str | None]

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return dataclasses.replace(self, waves=self.waves.to(device, non_blocking=non_blocking),
                                   lengths=self.lengths.to(device, non_blocking=non_blocking))


def collate(items: Sequence[AudioItem]) -> Batch:
    """Stack items into a zero-padded (B, T) batch; T is the longest item."""
    if not items:
        raise ValueError("collate needs at least one item")
    lengths = torch.tensor([item.wave.numel() for item in items], dtype=torch.int64)
    waves = torch.zeros(len(items), int(lengths.max()), dtype=torch.float32)  # (B, T)
    for row, item in enumerate(items):
        waves[row, : item.wave.numel()] = item.wave
    return Batch(waves, lengths, [i.id for i in items], [i.text for i in items], [i.speaker for i in items])


class AudioDataset(Dataset[AudioItem]):
    """Map-style dataset over utterances; `__getitem__` loads (and validates) one file.

    `utterances` after construction holds only those at least `min_seconds` long (by
    manifest duration); sampler indices refer to this filtered list. With
    `crop_seconds`, longer files are cut to a random window of that length; shorter
    ones are kept whole. Call `set_epoch` before creating the DataLoader iterator for
    each epoch (workers copy the dataset when they start, so do not combine this with
    `persistent_workers=True`).
    """

    def __init__(self, utterances: Sequence[Utterance], *, crop_seconds: float | None = None,
                 min_seconds: float | None = None, seed: int = 0, augment: AugmentConfig | None = None):
        if crop_seconds is not None and crop_seconds <= 0:
            raise ValueError(f"crop_seconds must be > 0 or None, got {crop_seconds}")
        kept = [u for u in utterances if min_seconds is None or u.duration >= min_seconds]
        if len(kept) < len(utterances):
            log.info("dropped %d of %d utterances shorter than min_seconds=%.2f",
                     len(utterances) - len(kept), len(utterances), min_seconds)
        self.utterances = kept
        self.crop_samples = None if crop_seconds is None else max(1, round(crop_seconds * SAMPLE_RATE))
        self.seed = seed
        self.epoch = 0
        self.augment = augment  # applied to the copies (``is_copy``) only; originals stay clean

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> AudioItem:
        utt = self.utterances[index]
        try:
            wave = load_audio(utt.path)
        except AudioError as err:
            # The loader's message says what is wrong; say which manifest row it was.
            err.add_note(f"while loading utterance {utt.id!r} from {utt.path}")
            raise
        if self.augment is not None and is_copy(utt):
            wave, _ = augment(wave, np.random.default_rng((self.seed, self.epoch, index, 1)), self.augment)
        wave = self._crop(wave, index)
        return AudioItem(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)), utt.id, utt.text, utt.speaker)

    def crop_offset(self, num_samples: int, index: int) -> int:
        """Start sample of the crop for item `index` in the current epoch (0 if no crop)."""
        if self.crop_samples is None or num_samples <= self.crop_samples:
            return 0
        rng = np.random.default_rng((self.seed, self.epoch, index))
        return int(rng.integers(0, num_samples - self.crop_samples + 1))

    def _crop(self, wave: np.ndarray, index: int) -> np.ndarray:
        if self.crop_samples is None:
            return wave
        start = self.crop_offset(len(wave), index)
        return wave[start : start + self.crop_samples]


def make_loader(utterances: Sequence[Utterance], max_batch_seconds: float, *, crop_seconds: float | None = None,
                min_seconds: float | None = None, shuffle: bool = True, seed: int = 0, num_workers: int = 0,
                rank: int = 0, world_size: int = 1) -> DataLoader:
    """A DataLoader yielding `Batch`es bounded by padded seconds, sharded for DDP.

    For later epochs call `loader.batch_sampler.set_epoch(e)` and
    `loader.dataset.set_epoch(e)` before iterating.
    """
    dataset = AudioDataset(utterances, crop_seconds=crop_seconds, min_seconds=min_seconds, seed=seed)
    sampler = SecondsBatchSampler([u.duration for u in dataset.utterances], max_batch_seconds, shuffle=shuffle,
                                  seed=seed, num_replicas=world_size, rank=rank, crop_seconds=crop_seconds)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers)
