"""What a request costs the device, in pieces: the cut, the per-piece work, the stitch.

Every operation cuts its audio the way ``SpeechModel`` does (``model.windows`` for
embeddings and transcription, ``model.speaker_pieces`` for speaker vectors), so a result
through the server equals the Python API's; the batcher only reorders the pieces.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable

import numpy as np
import torch

from speechssl.api import SpeechModel, stitch
from speechssl.audio import SAMPLE_RATE
from speechssl.errors import SpeechSSLError

Plan = tuple[list[np.ndarray], Callable[[list[Any]], Any]]  # (pieces, finish(outputs) -> result)


def plan(model: SpeechModel, op: Hashable, wave: np.ndarray) -> Plan:
    kind = op[0]
    if kind in ("embed", "transcribe"):
        windows = model.windows(len(wave))
        pieces = [wave[w.start : w.end] for w in windows]
        if kind == "embed":  # (T, dim) frames: the windows' cores, in order
            return pieces, lambda outputs: stitch(windows, outputs)
        decoder = model.decoder(op[1]) if len(op) > 1 else None  # ("transcribe", decoding); streaming: greedy
        return pieces, lambda outputs: model.transcript(stitch(windows, outputs), len(wave), decoder)
    if kind == "speaker":
        return model.speaker_pieces(wave), speaker_vector
    raise ValueError(f"unknown operation {op!r}")


def speaker_vector(outputs: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """Unit vector of one recording from its pieces' (unit vector, frames): the frame-weighted
    mean, as ``SpeechModel.speaker_outputs`` averages the pieces of long audio."""
    total = sum(frames * vector.astype(np.float64) for vector, frames in outputs)
    return (total / max(np.linalg.norm(total), 1e-12)).astype(np.float32)


def run_batch(model: SpeechModel) -> Callable[[Hashable, list[np.ndarray]], list[Any]]:
    """The device work of one batch of pieces, by operation; runs in the model thread."""

    def run(op: Hashable, pieces: list[np.ndarray]) -> list[Any]:
        kind, *args = op
        if kind == "embed":
            return finite(model.encode_pieces(pieces, layer=args[0]))
        if kind == "transcribe":
            return finite(model.emission_pieces(pieces))
        if kind == "speaker":
            vectors, _ = model.speaker_outputs(pieces)
            frames = model.encoder.frame_lengths(torch.tensor([len(p) for p in pieces])).tolist()
            return list(zip(finite(vectors), frames))
        raise ValueError(f"unknown operation {op!r}")

    return run


class NonFiniteOutput(SpeechSSLError, ValueError):
    """The model produced NaN or infinite values for this audio."""


def finite(outputs: list) -> list:
    """The outputs, each as an exception if it holds NaN or inf: a request gets a refusal,
    never a 200 with nulls in it."""
    checked = []
    for out in outputs:
        values = out.numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
        checked.append(out if np.isfinite(values).all() else
                       NonFiniteOutput("the model produced non-finite values for this audio"))
    return checked


def warm_up(model: SpeechModel) -> None:
    """The first forward pass allocates and picks kernels: run each head once before reporting ready."""
    silence = [np.zeros(SAMPLE_RATE, np.float32)]
    model.encode(silence)
    if "ctc" in model.heads:
        model.transcribe(silence, sample_rate=SAMPLE_RATE)
    if "speaker" in model.heads:
        model.speaker_vector(silence, sample_rate=SAMPLE_RATE)
