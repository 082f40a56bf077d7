"""Waveform augmentation: speed perturbation, narrowband (8 kHz) sound, white noise at a
random SNR, and gain.

Used by the speaker head's feature bank and by the training datasets (augmented copies of
a manifest, ``data.train_repeats``). Every draw comes from the caller's generator, so an
augmented copy is a pure function of its seed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
import torchaudio

from speechssl.config import ConfigError
from speechssl.data.manifest import Utterance, read_manifest

# Marks the augmented copies of an utterance: "<id>#copy2" is its second copy.
COPY_MARK = "#copy"


@dataclass
class AugmentConfig:
    speeds: list[float] = field(default_factory=lambda: [0.9, 1.0, 1.1])  # one drawn per utterance
    speed_as_new_speaker: bool = True
    noise_prob: float = 0.5  # white noise at a random SNR
    snr_db: list[float] = field(default_factory=lambda: [5.0, 20.0])
    gain_db: list[float] = field(default_factory=lambda: [-6.0, 6.0])
    # Through 8 kHz sampling and back, as telephone audio and FSDD's recordings are: nothing above
    # 4 kHz, where most of the energy of s, f and th is; the model must find them below it.
    narrowband_prob: float = 0.0

    def validate(self) -> None:
        if not self.speeds or any(s <= 0 for s in self.speeds):
            raise ConfigError("augment.speeds: give one or more positive factors (1.0 = unchanged)")
        if len(self.snr_db) != 2 or len(self.gain_db) != 2:
            raise ConfigError("augment.snr_db and augment.gain_db are [low, high] ranges")
        if not 0 <= self.noise_prob <= 1 or not 0 <= self.narrowband_prob <= 1:
            raise ConfigError("augment.noise_prob and augment.narrowband_prob must be in [0, 1]")


def augment(wave: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> tuple[np.ndarray, float]:
    """(speed-perturbed, noisy, scaled wave, the speed factor)."""
    speed = float(config.speeds[int(rng.integers(len(config.speeds)))])
    if speed != 1.0:
        # Played `speed` times faster: resample 16 kHz to 16/speed kHz and read it as 16 kHz.
        wave = torchaudio.functional.resample(torch.from_numpy(wave), orig_freq=round(100 * speed), new_freq=100).numpy()
    # Drawn only when asked for, so configs without it keep their exact draws.
    if config.narrowband_prob and rng.random() < config.narrowband_prob:
        narrow = torchaudio.functional.resample(torch.from_numpy(wave), orig_freq=2, new_freq=1)
        wave = torchaudio.functional.resample(narrow, orig_freq=1, new_freq=2).numpy()[: len(wave)]
    if rng.random() < config.noise_prob:
        snr = rng.uniform(*config.snr_db)
        power = float(np.mean(wave**2)) + 1e-10
        wave = wave + rng.standard_normal(len(wave)).astype(np.float32) * np.sqrt(power / 10 ** (snr / 10))
    wave = wave * np.float32(10 ** (rng.uniform(*config.gain_db) / 20))
    return wave.astype(np.float32), speed


def mixed_manifests(paths: list[str], repeats: list[int] | None = None) -> list[Utterance]:
    """The utterances of ``paths``, each manifest's ``repeats[i]`` times: the first time as it is,
    the others as copies (``COPY_MARK`` in the id) that a dataset with an augment config perturbs."""
    repeats = repeats or [1] * len(paths)
    if len(repeats) != len(paths):
        raise ConfigError(f"data.train_repeats has {len(repeats)} entries for {len(paths)} manifests")
    rows = []
    for path, count in zip(paths, repeats):
        utts = read_manifest(path)
        rows += utts
        for copy in range(2, count + 1):
            rows += [copy_of(u, copy) for u in utts]
    return rows


def copy_of(utterance: Utterance, number: int) -> Utterance:
    """The ``number``-th read of ``utterance`` (2, 3, ...): the same audio and text, marked as a
    copy so that a dataset with an augment config perturbs it."""
    return dataclasses.replace(utterance, id=f"{utterance.id}{COPY_MARK}{number}")


def is_copy(utterance: Utterance) -> bool:
    return COPY_MARK in utterance.id
