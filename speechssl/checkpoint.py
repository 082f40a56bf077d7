"""One-file checkpoints: safetensors weights + JSON metadata (config, vocabulary, heads).

Writes are atomic (temp file + rename) so a kill never leaves half a checkpoint.
Loading validates the format version, the config and the tensor shapes, and says
what is wrong in words.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from speechssl.config import ConfigError, ModelConfig, build
from speechssl.errors import SpeechSSLError

FORMAT_VERSION = 1


class CheckpointError(SpeechSSLError, ValueError):
    """A checkpoint file that cannot be used; the message says why."""


# Which heads a checkpoint holds: the prefix of each head's weights beside the encoder's ``wav2vec2.*``.
HEAD_PREFIXES = {"ctc": "ctc_head.", "speaker": "speaker_head."}
# The CTC head's own encoder weights, where they differ from the self-supervised ``wav2vec2.*``:
# the top layers that fine-tuning trained while the rest stayed frozen (finetune-ctc
# frozen_layers). Embeddings and speaker vectors read ``wav2vec2.*``; the CTC head reads
# ``wav2vec2.*`` with these in place.
CTC_ENCODER_PREFIX = "ctc_encoder."
# A word n-gram for beam search, inside the file: the ARPA text, gzip-compressed, as a uint8
# tensor; ``metadata["lm"]`` holds its decoding settings (BeamSettings fields).
LM_KEY = "lm.arpa_gzip"
# Speaker-score normalisation, inside the file: speaker vectors (N, dim) of training speakers that
# verify scores each trial against (adaptive s-norm); ``metadata["speaker_norm"]`` holds its
# top_k and threshold (speechssl.metrics.ScoreNorm).
COHORT_KEY = "speaker_cohort"


@dataclass(frozen=True)
class CheckpointInfo:
    """The metadata fields speechssl reads, typed and checked (``Checkpoint.info``); the rest
    (training step, results, init_from, ...) stays in ``Checkpoint.metadata`` as it was written.

    The file format is unchanged: metadata is still one JSON object, so old checkpoints load.
    """

    kind: str | None = None  # "pretrain", "ctc", "ctc-probe", "speaker", ...
    vocab: list[str] | None = None  # CTC output tokens
    blank_id: int = 0
    speaker_head: dict[str, Any] | None = None  # SpeakerHead(**speaker_head) rebuilds the head
    speaker_threshold: float | None = None  # cosine threshold (verify without a cohort, diarization): the validation EER point
    # With a cohort (COHORT_KEY): {"top_k": int, "threshold": float}, verify's normalised-score
    # settings; speaker_threshold stays the cosine one (diarization clusters on cosines).
    speaker_norm: dict[str, Any] | None = None
    # Tokens never emitted as text besides the blank (an imported tokenizer's <s>, </s>, <unk>);
    # None (checkpoints from before it was written): every "<...>" token of the vocabulary.
    special_tokens: list[str] | None = None

    def silent_ids(self) -> set[int]:
        """Ids greedy decoding drops after merging repeats: the blank and the special tokens."""
        vocab = self.vocab or []
        if self.special_tokens is None:
            special = {t for t in vocab if len(t) > 2 and t.startswith("<") and t.endswith(">")}
        else:
            special = set(self.special_tokens)
        return {self.blank_id} | {i for i, t in enumerate(vocab) if t in special}

    @classmethod
    def parse(cls, metadata: dict[str, Any], where: str | Path) -> CheckpointInfo:
        """The typed fields of ``metadata``; CheckpointError naming ``where`` when one has the wrong type."""
        threshold = metadata.get("speaker_threshold")
        if threshold is not None and not finite_number(threshold):
            raise CheckpointError(f"{where}: speaker_threshold must be a finite number, got {threshold!r}")
        vocab = metadata.get("vocab")
        if vocab is not None and not (isinstance(vocab, list) and all(isinstance(t, str) for t in vocab)):
            raise CheckpointError(f"{where}: vocab must be a list of strings")
        try:
            blank_id = int(metadata.get("blank_id", 0))
        except (TypeError, ValueError):
            raise CheckpointError(f"{where}: blank_id must be a whole number, got {metadata['blank_id']!r}") from None
        special = metadata.get("special_tokens")
        if special is not None and not (isinstance(special, list) and all(isinstance(t, str) for t in special)):
            raise CheckpointError(f"{where}: special_tokens must be a list of strings")
        norm = metadata.get("speaker_norm")
        if norm is not None and not (isinstance(norm, dict) and finite_number(norm.get("top_k"), whole=True)
                                     and norm["top_k"] > 0 and finite_number(norm.get("threshold"))):
            raise CheckpointError(f"{where}: speaker_norm must be {{'top_k': a positive whole number, "
                                  f"'threshold': a finite number}}, got {norm!r}")
        kind, head = metadata.get("kind"), metadata.get("speaker_head")
        return cls(kind=kind if isinstance(kind, str) else None, vocab=vocab, blank_id=blank_id,
                   speaker_head=head if isinstance(head, dict) else None,
                   speaker_threshold=None if threshold is None else float(threshold), special_tokens=special,
                   speaker_norm=norm)


def finite_number(value: Any, whole: bool = False) -> bool:
    """A JSON number (not a bool), finite; a whole one when ``whole``."""
    kinds = (int,) if whole else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class Checkpoint:
    """Weights of the encoder (``wav2vec2.*``) and any heads, plus what is needed to rebuild them."""

    state_dict: dict[str, torch.Tensor]
    model_config: ModelConfig
    metadata: dict[str, Any] = field(default_factory=dict)  # vocabulary, speaker threshold, training info
    source: str = "checkpoint"  # where it was read from, for messages (not saved)

    @property
    def info(self) -> CheckpointInfo:
        return CheckpointInfo.parse(self.metadata, self.source)

    @property
    def ctc_encoder_weights(self) -> dict[str, torch.Tensor]:
        """The ``ctc_encoder.*`` weights, prefix removed (empty: the CTC head reads ``wav2vec2.*``)."""
        n = len(CTC_ENCODER_PREFIX)
        return {k[n:]: v for k, v in self.state_dict.items() if k.startswith(CTC_ENCODER_PREFIX)}

    @property
    def heads(self) -> list[str]:
        """The heads whose weights this checkpoint holds ("ctc", "speaker"), in HEAD_PREFIXES order."""
        return [head for head, prefix in HEAD_PREFIXES.items() if any(k.startswith(prefix) for k in self.state_dict)]


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``; the temp file lives beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it owner-only; a checkpoint is ordinary data
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_stale_temps(directory: str | Path) -> list[Path]:
    """Delete the temp files a write killed mid-way left in ``directory`` (``.<name>.<random>.tmp``
    from ``atomic_write``); call it before a run writes there again."""
    stale = [p for p in Path(directory).glob(".*.tmp") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def save_checkpoint(path: str | Path, checkpoint: Checkpoint, dtype: torch.dtype | None = None) -> None:
    """Write weights (optionally cast, e.g. fp16 to ship) and metadata atomically."""
    tensors = {}
    for name, tensor in checkpoint.state_dict.items():
        tensor = tensor.detach().cpu()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[name] = tensor.contiguous()
    header = {
        "format": "speechssl",
        "format_version": str(FORMAT_VERSION),
        "model_config": json.dumps(dataclasses.asdict(checkpoint.model_config)),
        "metadata": json.dumps(checkpoint.metadata),
    }
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def read_header(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    header = read_header(path)
    if header.get("format") != "speechssl":
        raise CheckpointError(f"{path}: not a speechssl checkpoint (no speechssl metadata); use import-hf for transformers weights")
    try:
        version = int(header.get("format_version", "0"))
    except ValueError:
        raise CheckpointError(f"{path}: format_version {header['format_version']!r} is not a whole number") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {version} is newer than this speechssl understands ({FORMAT_VERSION})")
    try:
        fields = json.loads(header["model_config"])
        if not isinstance(fields, dict):
            raise ConfigError(f"expected a JSON object, got {type(fields).__name__}")
        config = build(ModelConfig, fields, prefix="model_config.")
    except (KeyError, json.JSONDecodeError, ConfigError) as exc:
        raise CheckpointError(f"{path}: bad model config in metadata: {exc}") from None
    metadata = check_metadata(path, header.get("metadata", "{}"))
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: weights are unreadable, the file may be truncated ({exc})") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    for name, tensor in state.items():  # NaN weights would load, report ready and serve nulls
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: weight {name} holds NaN or infinite values")
    return Checkpoint(state, config, metadata, source=str(path))


def check_metadata(path: Path, text: str) -> dict[str, Any]:
    """The metadata JSON as a dict, its typed fields checked (CheckpointInfo.parse)."""
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: metadata is not valid JSON ({exc})") from None
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: metadata must be a JSON object, got {type(metadata).__name__}")
    CheckpointInfo.parse(metadata, path)
    return metadata


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], prefix: str = "", path: str = "checkpoint") -> None:
    """Load the ``prefix``-ed subset of ``state`` into ``module``, naming missing keys and shape mismatches."""
    own = module.state_dict()
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing = sorted(set(own) - set(sub))
    if missing:
        raise CheckpointError(f"{path}: missing weights {prefix}{missing[0]} (and {len(missing) - 1} more)" if len(missing) > 1 else f"{path}: missing weight {prefix}{missing[0]}")
    for name, tensor in own.items():
        if sub[name].shape != tensor.shape:
            raise CheckpointError(
                f"{path}: weight {prefix}{name} has shape {tuple(sub[name].shape)}, the config needs {tuple(tensor.shape)}"
            )
    module.load_state_dict({k: sub[k] for k in own}, strict=True)
