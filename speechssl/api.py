"""The model object users hold: ``speechssl.load(...)`` and its ``embed`` method.

Audio is a path, bytes, or a 1-D array (with ``sample_rate``); a list of them gives a
list of results, computed in length-sorted, padding-aware batches.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import Literal, Sequence, Union

import numpy as np
import torch

from speechssl.audio import SAMPLE_RATE, load_audio
from speechssl.checkpoint import Checkpoint, CheckpointError, CheckpointInfo
from speechssl.metrics import ScoreNorm
from speechssl.data.sampler import SecondsBatchSampler
from speechssl.device import resolve_device
from speechssl.errors import SpeechSSLError
from speechssl.decode.align import word_timestamps
from speechssl.decode.chunks import Window, windows
from speechssl.decode.ctc import BeamDecoder, greedy_decode, lm_decoder
from speechssl.models import build
from speechssl.models.heads import CtcHead, SpeakerHead
from speechssl.transcript import Transcript, Verification
from speechssl.models.wav2vec2 import Wav2Vec2Model

AudioInput = Union[str, Path, bytes, np.ndarray, torch.Tensor]

DEFAULT_CHECKPOINT = Path(__file__).parent / "assets" / "default.safetensors"
# How transcribe decodes: "auto" is beam search with the checkpoint's word n-gram when it
# carries one (the shipped model does), else greedy.
DECODINGS = ("auto", "greedy", "beam_lm")


class HeadMissingError(SpeechSSLError, ValueError):
    """The loaded checkpoint lacks the head a method needs (e.g. transcribe without CTC)."""


class SpeechModel:
    """An encoder (and the heads its checkpoint holds) on one device, ready for inference."""

    def __init__(self, encoder: Wav2Vec2Model, metadata: dict, device: torch.device, name: str,
                 max_batch_seconds: float = 60.0, ctc_head: CtcHead | None = None,
                 speaker_head: torch.nn.Module | None = None, quantize: str | None = None,
                 precision: str = "auto", ctc_encoder: Wav2Vec2Model | None = None,
                 lm: bytes | None = None, score_norm: ScoreNorm | None = None):
        if quantize is not None and device.type != "cpu":
            raise ValueError(f"quantize={quantize!r} is a CPU path; got device {device}")
        if precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
        # Fused q/k/v, folded weight norm, int8 weights if asked: built once here (see models/inference.py).
        self.encoder = encoder.to(device).prepare_for_inference(quantize)
        # What the CTC head reads: the self-supervised encoder, or its copy with fine-tuned top layers.
        self.ctc_encoder = self.encoder if ctc_encoder is None else ctc_encoder.to(device).prepare_for_inference(quantize)
        # bf16 autocast on GPU by default (design: "bf16 autocast on GPU"); fp32 on CPU.
        self.bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
        self.ctc_head = ctc_head.to(device).eval() if ctc_head is not None else None
        self.speaker_head = speaker_head.to(device).eval() if speaker_head is not None else None
        self.score_norm = score_norm  # verify's cohort normalisation (AS-norm), or None: plain cosine
        self.metadata = metadata
        self.lm = lm  # the checkpoint's word n-gram (gzip'd ARPA), or None
        self._lm_decoder: BeamDecoder | None = None
        self._lm_lock = threading.Lock()
        self.device = device
        self.name = name
        self.max_batch_seconds = max_batch_seconds
        # On a CPU a padded frame costs as much as a real one and a batch buys little, so a batch
        # of mixed lengths is split where padding would pass 10% (docs/benchmarks-serving.md);
        # a GPU computes the padding in parallel and pays per kernel launch instead.
        self.max_padding: float | None = 0.1 if device.type == "cpu" else None
        self.chunk_seconds = 30.0  # longer audio is transcribed in overlapping windows
        self.chunk_context = 3.0  # seconds on each side of a window's kept core

    @property
    def info(self) -> CheckpointInfo:
        """The metadata fields inference reads, typed (``self.metadata`` is the whole dict)."""
        return CheckpointInfo.parse(self.metadata, self.name)

    @property
    def vocab(self) -> list[str]:
        """The CTC head's output tokens (the vocabulary a BeamDecoder needs)."""
        self.require("ctc")
        return self.info.vocab  # type: ignore[return-value]  # a CTC head is only built with one

    @property
    def hidden_size(self) -> int:
        return self.encoder.config.hidden_size

    @property
    def precision(self) -> str:
        """The encoder's compute as resolved from ``precision``: "bf16" (autocast) or "fp32"."""
        return "bf16" if self.bf16 else "fp32"

    @property
    def heads(self) -> list[str]:
        """What this checkpoint can do: "embeddings" always, "ctc" and "speaker" when it holds those heads."""
        return ["embeddings"] + ["ctc"] * (self.ctc_head is not None) + ["speaker"] * (self.speaker_head is not None)

    def require(self, head: str) -> None:
        """Raise HeadMissingError unless this checkpoint holds ``head``."""
        if head not in self.heads:
            what = {"ctc": "CTC (speech-to-text) head", "speaker": "speaker head"}[head]
            raise HeadMissingError(f"checkpoint {self.name!r} has no {what}; it holds: {', '.join(self.heads)}")

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

    def run_encoder(self, padded: torch.Tensor, lengths: torch.Tensor, num_layers: int | None = None,
                    encoder: Wav2Vec2Model | None = None):
        """``encoder`` (by default the self-supervised one) on one padded batch, under bf16 autocast when ``self.bf16``."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return (encoder or self.encoder)(padded, lengths, num_layers=num_layers)

    def windows(self, num_samples: int) -> list[Window]:
        """How audio of ``num_samples`` is cut for the encoder: one window when it fits in
        ``chunk_seconds``, else windows with ``chunk_context`` seconds on each side of a kept core."""
        total = self.encoder.frame_lengths(num_samples)
        return windows(num_samples, total, int(self.chunk_seconds * SAMPLE_RATE), int(self.chunk_context * SAMPLE_RATE),
                       self.encoder.config.frame_stride)

    def chunked(self, waves: list[np.ndarray], run):
        """``run`` (a list of pieces -> an output (frames, ...) per piece) over the windows of
        every waveform, stitched back into one output per waveform (see ``stitch``)."""
        plans = [self.windows(len(wave)) for wave in waves]
        outputs = iter(run([wave[w.start : w.end] for wave, plan in zip(waves, plans) for w in plan]))
        return [stitch(plan, [next(outputs) for _ in plan]) for plan in plans]

    def encode(self, waves: list[np.ndarray], layer: int | None = None) -> list[np.ndarray]:
        """Frame features (T_i, dim) of one layer for each waveform, batched by length.

        Audio up to ``chunk_seconds`` is encoded whole, as before chunking existed; longer
        audio in windows whose cores tile it, so time and memory grow linearly with length
        and pooling="mean" averages every frame exactly once.
        """
        return self.chunked(waves, lambda pieces: self.encode_pieces(pieces, layer))

    @torch.inference_mode()
    def encode_pieces(self, pieces: list[np.ndarray], layer: int | None = None) -> list[np.ndarray]:
        """Frame features (T_i, dim) of each piece, encoded whole (no chunking)."""
        results: list[np.ndarray | None] = [None] * len(pieces)
        for batch, padded, lengths in self.batches(pieces):
            out = self.run_encoder(padded, lengths, num_layers=layer)
            hidden = out.hidden_states[-1].float().cpu()
            for row, i in enumerate(batch):
                results[i] = hidden[row, : int(out.lengths[row])].numpy()
        return results  # type: ignore[return-value]

    def batches(self, waves: list[np.ndarray]):
        """(indices, padded waves, lengths) on the device, in length-sorted batches bounded by
        padded seconds: the training sampler, unshuffled."""
        sampler = SecondsBatchSampler([len(w) / SAMPLE_RATE for w in waves], self.max_batch_seconds, shuffle=False,
                                      max_padding=self.max_padding)
        for batch in sampler:
            longest = max(len(waves[i]) for i in batch)
            padded = torch.zeros(len(batch), longest)
            for row, i in enumerate(batch):
                padded[row, : len(waves[i])] = torch.from_numpy(waves[i])
            lengths = torch.tensor([len(waves[i]) for i in batch])
            yield batch, padded.to(self.device), lengths.to(self.device)

    # --- speech-to-text -------------------------------------------------------------

    def decoder(self, decoding: str = "auto") -> BeamDecoder | None:
        """What ``decoding`` (DECODINGS) decodes with: None for greedy ("greedy", or "auto" on a
        checkpoint without a language model), else the beam search with the checkpoint's word
        n-gram, built on first use (KenLM loads it in about a second) and kept."""
        if decoding not in DECODINGS:
            raise ValueError(f"decoding must be one of {', '.join(DECODINGS)}; got {decoding!r}")
        if decoding == "greedy" or (decoding == "auto" and self.lm is None):
            return None
        if self.lm is None:
            raise HeadMissingError(f"checkpoint {self.name!r} carries no language model; use decoding='greedy'")
        with self._lm_lock:
            if self._lm_decoder is None:
                self._lm_decoder = lm_decoder(self.vocab, self.lm, self.metadata.get("lm"))
        return self._lm_decoder

    def transcribe(self, audio: AudioInput | Sequence[AudioInput], sample_rate: int | None = None,
                   decoder: BeamDecoder | None = None, timestamps: bool = True, decoding: str = "auto",
                   vad: "VadSettings | None" = None):
        """Transcript(text, words, duration) per input, decoded with ``decoder`` if given, else as
        ``decoding`` says (see ``decoder``: by default beam + LM when the checkpoint carries one).
        ``vad`` (``speechssl.vad.VadSettings``): transcribe only the voiced segments, each alone.

        Audio of any length: long inputs are encoded in overlapping chunks (see ``emissions``).
        """
        self.require("ctc")
        decoder = decoder if decoder is not None else self.decoder(decoding)
        single = not isinstance(audio, (list, tuple))
        waves = [load_audio(a, sample_rate) for a in ([audio] if single else audio)]
        if vad is not None:  # each voiced segment on its own; the pauses are never encoded
            from speechssl.vad import speech_segments, voiced_pieces

            out = [Transcript.join([(start / SAMPLE_RATE, self.transcribe(piece, SAMPLE_RATE, decoder, timestamps))
                                    for start, piece in voiced_pieces(wave, speech_segments(wave, vad))],
                                   round(len(wave) / SAMPLE_RATE, 3))
                   for wave in waves]
        else:
            out = [self.transcript(emissions, len(wave), decoder, timestamps)
                   for wave, emissions in zip(waves, self.emissions(waves))]
        return out[0] if single else out

    def transcribe_live(self, chunks, sample_rate: int = SAMPLE_RATE, decoding: str = "auto"):
        """Events (``speechssl.live``) for 16-bit PCM ``chunks`` as they arrive: word previews as
        ``transcript.text.delta``, then ``transcript.text.done`` with the offline transcript."""
        from speechssl.live import LivePreviews, delta_event, done_event

        self.require("ctc")
        previews, sent = LivePreviews(self, sample_rate), []
        for chunk in itertools.chain(chunks, [None]):  # lazily: the chunks may be a live capture
            pcm = np.zeros(0, np.int16) if chunk is None else np.asarray(chunk, dtype=np.int16)
            sent.append(pcm)
            for window, piece in previews.push(pcm, final=chunk is None):
                if delta := previews.feed(window, self.emission_pieces([piece])[0]):
                    yield delta_event(delta)
        transcript = self.transcribe(np.concatenate(sent), sample_rate=sample_rate, decoding=decoding)
        if rest := previews.finish():
            yield delta_event(rest)
        yield done_event(transcript.text, transcript.duration)

    def transcript(self, emissions: torch.Tensor, num_samples: int, decoder: BeamDecoder | None = None,
                   timestamps: bool = True) -> Transcript:
        """Decode one waveform's CTC log-probabilities (frames, vocab) into a Transcript."""
        info = self.info
        vocab, blank = self.vocab, info.blank_id
        text = decoder(emissions) if decoder is not None else greedy_decode(emissions, vocab, blank, info.silent_ids())
        seconds = self.encoder.config.frame_seconds
        words = word_timestamps(emissions, text, vocab, blank, frame_seconds=seconds) if timestamps and text else []
        return Transcript(text, words, round(num_samples / SAMPLE_RATE, 3))

    def emissions(self, waves: list[np.ndarray]) -> list[torch.Tensor]:
        """CTC log-probabilities (frames, vocab) per waveform, on the CPU.

        A waveform longer than ``chunk_seconds`` is cut into windows that each keep a core
        of frames plus ``chunk_context`` seconds of audio on either side; only the cores
        are kept, and they tile the utterance exactly, so no frame is dropped or doubled
        and memory stays bounded by the batch, whatever the length.
        """
        self.require("ctc")
        return self.chunked(waves, self.emission_pieces)

    @torch.inference_mode()
    def emission_pieces(self, pieces: list[np.ndarray]) -> list[torch.Tensor]:
        """CTC log-probabilities (frames, vocab) of each piece, encoded whole."""
        log_probs: list[torch.Tensor | None] = [None] * len(pieces)
        for batch, padded, lengths in self.batches(pieces):
            out = self.run_encoder(padded, lengths, encoder=self.ctc_encoder)
            scores = self.ctc_head(out.last).float().cpu()
            for row, j in enumerate(batch):
                log_probs[j] = scores[row, : int(out.lengths[row])]
        return log_probs  # type: ignore[return-value]

    # --- speaker vectors and verification ------------------------------------------

    @property
    def speaker_threshold(self) -> float | None:
        """Cosine threshold: the validation split's EER point, stored at training (diarization's
        clustering threshold; ``verify``'s too when the checkpoint carries no cohort)."""
        return self.info.speaker_threshold

    @property
    def verify_threshold(self) -> float | None:
        """What ``verify`` compares its score with: the cohort-normalised score's threshold when the
        checkpoint carries a cohort, else the cosine one; None when the checkpoint stores neither."""
        return self.speaker_threshold if self.score_norm is None else self.score_norm.threshold

    def speaker_vector(self, audio: AudioInput | Sequence[AudioInput], sample_rate: int | None = None):
        """(dim,) float32 unit-length speaker vector per input (cosine = dot product)."""
        self.require("speaker")
        single = not isinstance(audio, (list, tuple))
        waves = [load_audio(a, sample_rate) for a in ([audio] if single else audio)]
        vectors, _ = self.speaker_outputs(waves)
        return vectors[0] if single else vectors

    def verify(self, a: AudioInput, b: AudioInput, sample_rate: int | None = None,
               threshold: float | None = None) -> Verification:
        """Whether two recordings are of the same speaker: the score of their speaker vectors
        (``verification``) against ``threshold``, by default the checkpoint's stored one."""
        self.require("speaker")
        first, second = self.speaker_vector([a, b], sample_rate)
        return self.verification(first, second, threshold)

    def verification(self, first: np.ndarray, second: np.ndarray, threshold: float | None = None) -> Verification:
        """Two unit speaker vectors' score against ``threshold`` (default ``verify_threshold``): their
        cosine normalised against the checkpoint's cohort (AS-norm) when it carries one, else the cosine."""
        threshold = self.verify_threshold if threshold is None else float(threshold)
        if threshold is None:
            raise HeadMissingError(f"checkpoint {self.name!r} has a speaker head but no speaker_threshold in its "
                                   "metadata; evaluate it and store one, or compare speaker_vector()s yourself")
        if self.score_norm is None:
            score, scoring = float(np.dot(first, second)), "cosine"
        else:
            score, scoring = self.score_norm.score(first, second), "as-norm"
        return Verification(score, threshold, score >= threshold, scoring)

    def speaker_pieces(self, wave: np.ndarray) -> list[np.ndarray]:
        """Equal pieces of at most ``chunk_seconds``: what one speaker vector is averaged over."""
        return np.array_split(wave, -(-len(wave) // int(self.chunk_seconds * SAMPLE_RATE)))

    @torch.inference_mode()
    def speaker_outputs(self, waves: list[np.ndarray], layer_means: bool = False):
        """(unit speaker vectors (dim,), per-layer mean-pooled features (L+1, C) or None) per waveform.

        Audio longer than ``chunk_seconds`` is cut into equal pieces; their vectors (and
        means) are averaged, weighted by frames. ``layer_means`` runs every layer (the
        evaluation's head-less baseline) even when the head uses fewer.
        """
        self.require("speaker")
        head: SpeakerHead = self.speaker_head  # type: ignore[assignment]
        pieces, owner = [], []
        for i, wave in enumerate(waves):
            for part in self.speaker_pieces(wave):
                pieces.append(part)
                owner.append(i)
        depth = None if layer_means else head.num_layers
        sums = [[0.0, 0.0, 0] for _ in waves]  # vector sum, layer-mean sum, frames
        for batch, padded, lengths in self.batches(pieces):
            out = self.run_encoder(padded, lengths, num_layers=depth)
            mel = head.mel_input(padded, out.hidden_states[0].shape[1])
            vectors = head(out.hidden_states, out.lengths, mel=mel).float().cpu()
            means = None
            if layer_means:
                states = torch.stack(out.hidden_states, dim=2).float()  # (B, T, L+1, C)
                valid = out.valid.unsqueeze(-1).unsqueeze(-1)
                means = ((states * valid).sum(1) / out.lengths.clamp(min=1)[:, None, None]).cpu()  # (B, L+1, C)
            for row, j in enumerate(batch):
                frames = int(out.lengths[row])
                total = sums[owner[j]]
                total[0] = total[0] + frames * torch.nn.functional.normalize(vectors[row], dim=0)
                if means is not None:
                    total[1] = total[1] + frames * means[row]
                total[2] += frames
        unit = [torch.nn.functional.normalize(v / f, dim=0).numpy() for v, _, f in sums]
        return unit, [(m / f).numpy() if layer_means else None for _, m, f in sums]


def stitch(plan: list[Window], outputs: list):
    """One waveform's output from its windows' outputs (frames first): each window's kept core,
    in order. The cores tile the frames, so a single window's output comes back whole."""
    parts = [out[w.keep_from : w.keep_from + w.keep] for w, out in zip(plan, outputs)]
    if len(parts) == 1:
        return parts[0]
    return torch.cat(parts) if isinstance(parts[0], torch.Tensor) else np.concatenate(parts)


def load(path: str | Path | Checkpoint | None = None, device: str = "auto", quantize: str | None = None,
         precision: str = "auto") -> SpeechModel:
    """Load a speechssl checkpoint (a file, or a Checkpoint already in memory; the shipped
    default model when ``path`` is None).

    ``quantize="int8"``: int8 weights for the encoder's matmuls (CPU; faster, slightly less
    accurate: see docs/benchmarks.md). ``precision``: "auto" (bf16 autocast on GPU, fp32 on
    CPU), "fp32" or "bf16".
    """
    if path is None:
        if not DEFAULT_CHECKPOINT.is_file():
            raise CheckpointError(
                "no default model ships with this version of speechssl yet; pass a checkpoint path "
                "(e.g. runs/pretrain/checkpoint.safetensors)"
            )
        path = DEFAULT_CHECKPOINT
    built = build.from_checkpoint(path)
    name = Path(path.source if isinstance(path, Checkpoint) else path).stem
    return SpeechModel(built.encoder, built.checkpoint.metadata, resolve_device(device), name,
                       ctc_head=built.ctc_head, speaker_head=built.speaker_head, quantize=quantize, precision=precision,
                       ctc_encoder=built.ctc_encoder, lm=built.lm, score_norm=built.score_norm)
