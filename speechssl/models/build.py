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

import torch
from torch import nn

from speechssl.checkpoint import (COHORT_KEY, CTC_ENCODER_PREFIX, HEAD_PREFIXES, LM_KEY, Checkpoint, CheckpointError,
                                  load_checkpoint, load_into)
from speechssl.config import build_model_config
from speechssl.metrics import ScoreNorm
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


def ctc_encoder(source: Source) -> Wav2Vec2Model | None:
    """The encoder the CTC head reads when it is not the self-supervised one: ``wav2vec2.*``
    with the checkpoint's ``ctc_encoder.*`` weights in place. None when it holds none."""
    ckpt = read(source)
    branch = ckpt.ctc_encoder_weights
    if not branch:
        return None
    module = Wav2Vec2Model(ckpt.model_config)
    own = module.state_dict()
    unknown = sorted(set(branch) - set(own))
    if unknown:
        raise CheckpointError(f"{ckpt.source}: unknown weight {CTC_ENCODER_PREFIX}{unknown[0]}")
    state = {k[len("wav2vec2."):]: v for k, v in ckpt.state_dict.items() if k.startswith("wav2vec2.")}
    load_into(module, {**state, **branch}, path=ckpt.source)
    return module


def with_ctc_encoder(ssl: Checkpoint, tuned: Checkpoint) -> dict:
    """One state dict from a self-supervised encoder and a CTC fine-tune of it: ``ssl``'s
    ``wav2vec2.*`` and heads as they are, ``tuned``'s heads, and each ``tuned`` encoder weight
    that fine-tuning changed as ``ctc_encoder.*`` (with frozen_layers only the top layers differ)."""
    keep = ("wav2vec2.", *HEAD_PREFIXES.values(), LM_KEY, COHORT_KEY)  # not a pretraining checkpoint's quantizer or label head
    state = {k: v for k, v in ssl.state_dict.items() if k.startswith(keep)}
    for key, value in tuned.state_dict.items():
        if not key.startswith("wav2vec2."):
            state[key] = value
        elif key not in state or state[key].shape != value.shape:
            raise CheckpointError(f"{tuned.source} is not a fine-tune of {ssl.source}: weight {key} differs in shape or is missing")
        elif not torch.equal(state[key], value):
            state[CTC_ENCODER_PREFIX + key[len("wav2vec2."):]] = value
    return state


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
    ctc_encoder: Wav2Vec2Model | None = None  # what the CTC head reads, when not ``encoder``
    lm: bytes | None = None  # a word n-gram for beam search (gzip'd ARPA), when the checkpoint carries one
    score_norm: ScoreNorm | None = None  # verify's cohort normalisation, when the checkpoint carries one


def from_checkpoint(source: Source) -> Built:
    """Encoder and every head of a checkpoint, for inference (``speechssl.load``)."""
    ckpt = read(source)
    lm = ckpt.state_dict.get(LM_KEY)
    head = speaker_head(ckpt)
    return Built(encoder(ckpt), ctc_head(ckpt), head, ckpt, ctc_encoder(ckpt),
                 None if lm is None else lm.numpy().tobytes(), score_norm(ckpt, head))


def score_norm(ckpt: Checkpoint, head: SpeakerHead | None) -> ScoreNorm | None:
    """The checkpoint's speaker cohort and its settings, or None when it carries none."""
    cohort, settings = ckpt.state_dict.get(COHORT_KEY), ckpt.info.speaker_norm
    if cohort is None and settings is None:
        return None
    if cohort is None or settings is None or head is None:
        raise CheckpointError(f"{ckpt.source}: a speaker cohort needs its settings (metadata['speaker_norm']) "
                              f"and a speaker head; this file has only part of them")
    if cohort.ndim != 2 or cohort.shape[0] == 0 or cohort.shape[1] != head.dim:
        raise CheckpointError(f"{ckpt.source}: {COHORT_KEY} must be (N, {head.dim}) speaker vectors, "
                              f"got shape {tuple(cohort.shape)}")
    return ScoreNorm(cohort.float().numpy(), settings["top_k"], float(settings["threshold"]))


def load_ctc_model(path: Source) -> tuple[CtcModel, list[str]]:
    """A fine-tuned (or probe) checkpoint as the CtcModel that trained it, in eval mode, and its vocabulary."""
    ckpt = read(path)
    vocab = ckpt.info.vocab or CHAR_VOCAB
    module = CtcModel(ckpt.model_config, len(vocab), probe=ckpt.info.kind == "ctc-probe")
    branch = {"wav2vec2." + k: v for k, v in ckpt.ctc_encoder_weights.items()}
    load_into(module, {**ckpt.state_dict, **branch}, path=ckpt.source)
    return module.eval(), vocab
