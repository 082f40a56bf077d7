"""Speech-to-text evaluation of a checkpoint on a transcribed manifest."""

from __future__ import annotations

import time

from speechssl.api import SpeechModel
from speechssl.data.manifest import Utterance, normalize_text
from speechssl.decode.ctc import BeamDecoder
from speechssl.metrics import error_rates


def evaluate_asr(model: SpeechModel, utterances: list[Utterance], decoder: BeamDecoder | None = None,
                 batch_files: int = 64, decoding: str = "auto") -> dict[str, float]:
    """WER and CER (jiwer, corpus level), utterances, audio seconds and real-time factor,
    decoded with ``decoder`` if given, else as ``decoding`` says (SpeechModel.decoder).

    The real-time factor counts decoding and audio loading: wall seconds per audio second.
    """
    utterances = [u for u in utterances if u.text]
    refs, hyps = [], []
    start = time.perf_counter()
    for i in range(0, len(utterances), batch_files):
        chunk = utterances[i : i + batch_files]
        for utt, transcript in zip(chunk, model.transcribe([u.path for u in chunk], decoder=decoder, timestamps=False,
                                                                 decoding=decoding)):
            refs.append(normalize_text(utt.text))
            hyps.append(transcript.text)
    wall = time.perf_counter() - start
    audio = sum(u.duration for u in utterances)
    return {**error_rates(refs, hyps), "utterances": len(utterances), "audio_seconds": round(audio, 1),
            "real_time_factor": round(wall / audio, 4) if audio else 0.0}
