"""Waveform augmentation: speed perturbation, narrowband (8 kHz) sound, silence around the
speech, white noise at a random SNR, and gain.

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

from speechssl.config import SAMPLE_RATE, ConfigError
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
    # Silence of 0..pad_seconds before and after (each drawn): tightly trimmed clips (FSDD's
    # digits) otherwise teach that a clip's edges are the word's, and the same digit with a
    # pause around it, as a user records it, decodes to nothing. Noise, if drawn, covers it too.
    pad_prob: float = 0.0
    pad_seconds: float = 0.5

    @property
    def mean_pad_seconds(self) -> float:
        """Seconds of silence a copy gains on average: what a batch sampler adds to its length."""
        return self.pad_prob * self.pad_seconds  # two sides, each uniform in [0, pad_seconds]

    def validate(self) -> None:
        if not self.speeds or any(s <= 0 for s in self.speeds):
            raise ConfigError("augment.speeds: give one or more positive factors (1.0 = unchanged)")
        if len(self.snr_db) != 2 or len(self.gain_db) != 2:
            raise ConfigError("augment.snr_db and augment.gain_db are [low, high] ranges")
        if not all(0 <= p <= 1 for p in (self.noise_prob, self.narrowband_prob, self.pad_prob)):
            raise ConfigError("augment.noise_prob, augment.narrowband_prob and augment.pad_prob must be in [0, 1]")
        if self.pad_seconds < 0:
            raise ConfigError(f"augment.pad_seconds must be >= 0, got {self.pad_seconds}")


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
    power = float(np.mean(wave**2)) + 1e-10  # of the speech: the SNR is not lowered by the pads
    if config.pad_prob and rng.random() < config.pad_prob:
        before, after = (rng.uniform(0, config.pad_seconds, size=2) * SAMPLE_RATE).astype(int)
        wave = np.pad(wave, (before, after))
    if rng.random() < config.noise_prob:
        snr = rng.uniform(*config.snr_db)
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
