"""The model object users hold: ``speechssl.load(...)`` and its ``embed`` method.

Audio is a path, bytes, or a 1-D array (with ``sample_rate``); a list of them gives a
list of results, computed in length-sorted, padding-aware batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence, Union

import numpy as np
import torch

from speechssl.audio import SAMPLE_RATE, load_audio
from speechssl.checkpoint import CheckpointError, load_checkpoint, load_into
from speechssl.data.sampler import SecondsBatchSampler
from speechssl.models.wav2vec2 import Wav2Vec2Model
from speechssl.train.loop import resolve_device

AudioInput = Union[str, Path, bytes, np.ndarray, torch.Tensor]

DEFAULT_CHECKPOINT = Path(__file__).parent / "assets" / "default.safetensors"


class SpeechModel:
    """An encoder (and the heads its checkpoint holds) on one device, ready for inference."""

    def __init__(self, encoder: Wav2Vec2Model, metadata: dict, device: torch.device, name: str,
                 max_batch_seconds: float = 60.0):
        self.encoder = encoder.to(device).eval()
        self.encoder.encoder.pos_conv_embed.fold_weight_norm()
        self.metadata = metadata
        self.device = device
        self.name = name
        self.max_batch_seconds = max_batch_seconds

    @property
    def hidden_size(self) -> int:
        return self.encoder.config.hidden_size

    @property
    def heads(self) -> list[str]:
        """What this checkpoint can do beyond embeddings (later: "ctc", "speaker")."""
        return ["embeddings"]

    @property
    def num_layers(self) -> int:
        return self.encoder.config.num_layers

    def embed(self, audio: AudioInput | Sequence[AudioInput], sample_rate: int | None = None,
              layer: int | None = None, pooling: Literal["mean", "none"] = "mean"):
        """(dim,) mean-pooled vector, or (frames, dim) with pooling="none", per input.

        ``layer`` picks a transformer layer (0 = its input, N = last); the encoder stops there.
        """
        if pooling not in ("mean", "none"):
            raise ValueError(f"pooling must be 'mean' or 'none', got {pooling!r}")
        if layer is not None and not 0 <= layer <= self.num_layers:
            raise ValueError(f"layer must be between 0 and {self.num_layers}, got {layer}")
        single = not isinstance(audio, (list, tuple))
        waves = [load_audio(a, sample_rate) for a in ([audio] if single else audio)]
        frames = self.encode(waves, layer)
        out = [f.mean(0) if pooling == "mean" else f for f in frames]
        return out[0] if single else out

    @torch.inference_mode()
    def encode(self, waves: list[np.ndarray], layer: int | None = None) -> list[np.ndarray]:
        """Frame features (T_i, dim) of one layer for each waveform, batched by length."""
        results: list[np.ndarray | None] = [None] * len(waves)
        # The training sampler, unshuffled: length-sorted batches bounded by padded seconds.
        sampler = SecondsBatchSampler([len(w) / SAMPLE_RATE for w in waves], self.max_batch_seconds, shuffle=False)
        for batch in sampler:
            longest = max(len(waves[i]) for i in batch)
            padded = torch.zeros(len(batch), longest)
            for row, i in enumerate(batch):
                padded[row, : len(waves[i])] = torch.from_numpy(waves[i])
            lengths = torch.tensor([len(waves[i]) for i in batch])
            out = self.encoder(padded.to(self.device), lengths.to(self.device), num_layers=layer)
            hidden = out.hidden_states[-1].float().cpu()
            for row, i in enumerate(batch):
                results[i] = hidden[row, : int(out.lengths[row])].numpy()
        return results  # type: ignore[return-value]


def load(path: str | Path | None = None, device: str = "auto") -> SpeechModel:
    """Load a speechssl checkpoint (the shipped default model when ``path`` is None)."""
    if path is None:
        if not DEFAULT_CHECKPOINT.is_file():
            raise CheckpointError(
                "no default model ships with this version of speechssl yet; pass a checkpoint path "
                "(e.g. runs/pretrain/checkpoint.safetensors)"
            )
        path = DEFAULT_CHECKPOINT
    ckpt = load_checkpoint(path)
    encoder = Wav2Vec2Model(ckpt.model_config)
    load_into(encoder, ckpt.state_dict, prefix="wav2vec2.", path=str(path))
    return SpeechModel(encoder, ckpt.metadata, resolve_device(device), Path(path).stem)
