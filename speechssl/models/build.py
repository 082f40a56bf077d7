"""Models from checkpoints: the one place that turns a checkpoint into modules.

Every reader of a checkpoint builds through here: ``speechssl.load`` (the encoder and the
heads the file holds), fine-tuning and pretraining from ``init_from``, the HuBERT labeler's
encoder, the speaker task's frozen encoder, and scoring a CTC checkpoint. Which heads exist
comes from ``Checkpoint.heads``; what rebuilds them from ``Checkpoint.info``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from speechssl.checkpoint import HEAD_PREFIXES, Checkpoint, CheckpointError, load_checkpoint, load_into
from speechssl.config import build_model_config
from speechssl.models.ctc import CtcModel
from speechssl.models.heads import CHAR_VOCAB, CtcHead, SpeakerHead
from speechssl.models.wav2vec2 import Wav2Vec2Model

Source = str | Path | Checkpoint


def read(source: Source) -> Checkpoint:
    """``source`` itself when it is a Checkpoint already, else the file it names."""
    return source if isinstance(source, Checkpoint) else load_checkpoint(source)


def load_weights(module: nn.Module, source: Source, prefix: str = "") -> Checkpoint:
    """Load the ``prefix``-ed weights of ``source`` into an already built ``module``; returns the checkpoint."""
    ckpt = read(source)
    load_into(module, ckpt.state_dict, prefix=prefix, path=ckpt.source)
    return ckpt


def encoder(source: Source, overrides: dict[str, Any] | None = None, weights: bool = True) -> Wav2Vec2Model:
    """The checkpoint's encoder: its architecture with ``overrides`` (e.g. fine-tuning dropout
    and masking), with its weights unless ``weights`` is false (the same model from scratch)."""
    ckpt = read(source)
    config = ckpt.model_config
    if overrides:
        config = build_model_config({**dataclasses.asdict(config), **overrides})
    module = Wav2Vec2Model(config)
    if weights:
        load_into(module, ckpt.state_dict, prefix="wav2vec2.", path=ckpt.source)
    return module


def ctc_head(source: Source) -> CtcHead | None:
    """The checkpoint's CTC head, or None when it holds none."""
    ckpt = read(source)
    if "ctc" not in ckpt.heads:
        return None
    vocab = ckpt.info.vocab
    if not vocab:
        raise CheckpointError(f"{ckpt.source}: a CTC head without a vocabulary in its metadata")
    head = CtcHead(ckpt.model_config.hidden_size, len(vocab))
    load_into(head, ckpt.state_dict, prefix=HEAD_PREFIXES["ctc"], path=ckpt.source)
    return head


def speaker_head(source: Source) -> SpeakerHead | None:
    """The checkpoint's speaker head, or None when it holds none."""
    ckpt = read(source)
    if "speaker" not in ckpt.heads:
        return None
    settings = ckpt.info.speaker_head
    if settings is None:
        raise CheckpointError(f"{ckpt.source}: a speaker head without its settings (metadata['speaker_head'])")
    try:
        head = SpeakerHead(**settings)
    except TypeError as exc:
        raise CheckpointError(f"{ckpt.source}: bad speaker head settings {settings}: {exc}") from None
    load_into(head, ckpt.state_dict, prefix=HEAD_PREFIXES["speaker"], path=ckpt.source)
    return head


@dataclass
class Built:
    """An encoder and the heads its checkpoint holds (None for the others), with the checkpoint."""

    encoder: Wav2Vec2Model
    ctc_head: CtcHead | None
    speaker_head: SpeakerHead | None
    checkpoint: Checkpoint


def from_checkpoint(source: Source) -> Built:
    """Encoder and every head of a checkpoint, for inference (``speechssl.load``)."""
    ckpt = read(source)
    return Built(encoder(ckpt), ctc_head(ckpt), speaker_head(ckpt), ckpt)


def load_ctc_model(path: Source) -> tuple[CtcModel, list[str]]:
    """A fine-tuned (or probe) checkpoint as the CtcModel that trained it, in eval mode, and its vocabulary."""
    ckpt = read(path)
    vocab = ckpt.info.vocab or CHAR_VOCAB
    module = CtcModel(ckpt.model_config, len(vocab), probe=ckpt.info.kind == "ctc-probe")
    load_into(module, ckpt.state_dict, path=ckpt.source)
    return module.eval(), vocab
