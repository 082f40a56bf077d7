"""The Debian speech synthesizers as speakers: which are installed, the voice settings each
offers, and rendering a speaker's sentences to trimmed 16 kHz mono wavs.

``speechssl.data.synth`` plans a corpus over these speakers; this module only knows the
engines. Rendering runs in worker processes, so it returns results instead of raising.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from speechssl.audio import SAMPLE_RATE, AudioError, load_audio
from speechssl.errors import SpeechSSLError

log = logging.getLogger("speechssl.data.synth")
ALL_ENGINES = ("espeak", "flite", "festival")


class SynthError(SpeechSSLError, RuntimeError):
    """No usable speech synthesizer is installed."""


BINARIES = {"espeak": ("espeak-ng", "espeak-ng"), "flite": ("flite", "flite"),
            "festival": ("festival", "festival")}  # engine -> (binary, apt package)
FESTIVAL_VOICES = {"kal_diphone": "festvox-kallpc16k", "ked_diphone": "festvox-kdlpc16k",
                   "cmu_us_slt_arctic_hts": "festvox-us-slt-hts"}
FESTIVAL_VOICE_DIR = Path("/usr/share/festival/voices")
ESPEAK_VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp",
                 "en-gb-x-gbcwmd", "en-029", "en-us-nyc")  # the mbrola ones need mbrola
ESPEAK_VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
                   "klatt", "klatt2", "klatt3")
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
# The same recorded talent behind two engines: held out together.
FAMILY = {"kal16": "kal", "kal_diphone": "kal", "cmu_us_slt_arctic_hts": "slt"}
ENGINE_SHARE = {"espeak": 0.7, "flite": 0.2, "festival": 0.1}  # of the chosen speakers
# CPU time per audio second relative to espeak (~120x real time per core, measured with
# the post-processing): slow voices read fewer sentences and are scheduled first.
VOICE_COST = {"cmu_us_slt_arctic_hts": 7.0, "slt": 2.5, "awb": 2.5, "rms": 2.5}


@dataclass(frozen=True, order=True)
class Speaker:
    engine: str
    voice: str   # espeak "en-us+f3", flite "slt", festival "kal_diphone"
    pitch: int   # espeak -p (0-99); flite f0 mean in Hz (0 = the voice's own); festival 0
    rate: int    # espeak words per minute; flite/festival percent of normal speed

    @property
    def id(self) -> str:
        return f"{self.engine}-{self.voice}-p{self.pitch}-s{self.rate}"

    @property
    def family(self) -> str:
        """Speakers that share a voice (differ only in pitch/rate) share a split."""
        return f"espeak-{self.voice}" if self.engine == "espeak" else FAMILY.get(self.voice, self.voice)

    @property
    def cost(self) -> float:
        return VOICE_COST.get(self.voice, 1.0)

    def estimate_seconds(self, text: str) -> float:
        """Audio length after trimming, fitted on a 0.3 h corpus (within ~5% in total)."""
        if self.engine == "espeak":
            return 0.3 + 0.83 * len(text.split()) * 60.0 / self.rate
        return 0.5 + 0.8 * len(text.split()) * 60.0 / (1.8 * self.rate)

    def command(self, text: str, wav: Path) -> list[str]:
        if self.engine == "espeak":
            return ["espeak-ng", "-v", self.voice, "-p", str(self.pitch), "-s", str(self.rate),
                    "-w", str(wav), text]
        pitch = ["--setf", f"int_f0_target_mean={self.pitch}"] if self.pitch else []
        return ["flite", "-voice", self.voice, "--setf", f"duration_stretch={100 / self.rate:.3f}",
                *pitch, "-t", text, "-o", str(wav)]


def _festival_voices(warn: bool) -> list[str]:
    found = []
    for voice, package in FESTIVAL_VOICES.items():
        if any(FESTIVAL_VOICE_DIR.glob(f"*/{voice}")):
            found.append(voice)
        elif warn:
            warnings.warn(f"festival voice {voice} not found: apt-get install {package}", stacklevel=3)
    return found


def available_engines(engines: tuple[str, ...] = ALL_ENGINES) -> list[str]:
    """The requested engines whose binary (and, for festival, a voice) is installed."""
    usable = []
    for engine in engines:
        binary, package = BINARIES[engine]
        if shutil.which(binary) is None:
            warnings.warn(f"{binary} not found: apt-get install {package}", stacklevel=2)
        elif engine != "festival" or _festival_voices(warn=True):
            usable.append(engine)
    return usable


def catalogue(engine: str) -> list[Speaker]:
    """Every speaker setting an engine offers (espeak ~1,150, flite 60, festival 9)."""
    if engine == "espeak":
        return [Speaker("espeak", v + (f"+{var}" if var else ""), p, r) for v in ESPEAK_VOICES
                for var in ESPEAK_VARIANTS for p in (35, 50, 65) for r in (140, 165, 190)]
    if engine == "flite":
        return [Speaker("flite", v, p, r) for v in FLITE_VOICES
                for p in (0, 100, 140, 190) for r in (85, 100, 115)]
    return [Speaker("festival", v, 0, r) for v in _festival_voices(warn=False) for r in (85, 100, 115)]


# ---------------------------------------------------------------- rendering (in workers)
def _existing_seconds(path: Path) -> float | None:
    """Duration of a finished file, or None if it is missing or unreadable."""
    try:
        info = sf.info(str(path))
    except (RuntimeError, OSError):  # soundfile raises LibsndfileError(RuntimeError)
        return None
    ok = info.frames > 0 and info.samplerate == SAMPLE_RATE and info.channels == 1
    return info.frames / SAMPLE_RATE if ok else None


def _call(cmd: list[str], timeout: float) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        log.warning("synth: timed out: %s", " ".join(cmd[:4]))
        return
    if proc.returncode != 0:  # failed items are reported per file, not raised
        log.warning("synth: %s exited %d: %s", cmd[0], proc.returncode, proc.stderr.strip()[-300:])


def _festival_batch(speaker: Speaker, texts: list[str], raws: list[Path], tmp: Path) -> None:
    """One festival process for many sentences: its start-up (~0.5 s) dominates otherwise."""
    lines = [f"(voice_{speaker.voice})", f"(Parameter.set 'Duration_Stretch {100 / speaker.rate:.3f})"]
    # Normalised text holds only [a-z' ], so it is safe inside a Scheme string.
    lines += [f'(utt.save.wave (utt.synth (Utterance Text "{t}")) "{r}" \'riff)' for t, r in zip(texts, raws)]
    script = tmp / "batch.scm"
    script.write_text("\n".join(lines) + "\n")
    _call(["festival", "--batch", str(script)], timeout=60 + 10 * len(texts))


def _trim(audio: np.ndarray, floor_db: float = -45.0, pad: float = 0.1) -> np.ndarray:
    """Cut leading/trailing silence (synthesizers add up to ~0.5 s), keeping `pad` s."""
    hop = SAMPLE_RATE // 100
    n = len(audio) // hop
    if n == 0:
        return audio
    rms = np.sqrt(np.mean(audio[: n * hop].reshape(n, hop) ** 2, axis=1))  # (frames,)
    loud = np.flatnonzero(rms > rms.max() * 10 ** (floor_db / 20))
    start = max(0, loud[0] * hop - int(pad * SAMPLE_RATE))
    stop = min(len(audio), (loud[-1] + 1) * hop + int(pad * SAMPLE_RATE))
    return audio[start:stop]


def _finish(raw: Path, dest: Path) -> float | None:
    """Resample to 16 kHz mono, trim, normalise the peak, write 16-bit wav atomically."""
    try:
        audio = _trim(load_audio(raw))
    except (AudioError, OSError, RuntimeError) as err:
        log.warning("synth: unusable output for %s: %s", dest.name, err)
        return None
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak < 1e-4:
        return None
    audio = audio * min(0.8 / peak, 10.0)  # light: peaks to about -2 dBFS, never boost noise >20 dB
    tmp = dest.with_name(dest.stem + ".partial.wav")
    sf.write(str(tmp), audio, SAMPLE_RATE, subtype="PCM_16")
    os.replace(tmp, dest)  # a kill never leaves a half-written target
    return len(audio) / SAMPLE_RATE


Rendered = tuple[str, float | None, bool]  # (rel_path, seconds or None if failed, skipped)


def render(out_dir: Path, speaker: Speaker, items: list[tuple[str, str]]) -> list[Rendered]:
    """Synthesise (rel_path, text) items; returns (rel_path, seconds or None, skipped)."""
    results, todo = [], []
    for rel, text in items:
        seconds = _existing_seconds(out_dir / rel)
        if seconds is None:
            todo.append((rel, text))
        else:
            results.append((rel, seconds, True))
    if not todo:
        return results
    (out_dir / "wav" / speaker.id).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="speechssl-synth-") as tmp_name:
        tmp = Path(tmp_name)
        raws = [tmp / f"{i}.wav" for i in range(len(todo))]
        if speaker.engine == "festival":
            _festival_batch(speaker, [t for _, t in todo], raws, tmp)
        else:
            for (_, text), raw in zip(todo, raws):
                _call(speaker.command(text, raw), timeout=60)
        results += [(rel, _finish(raw, out_dir / rel), False) for (rel, _), raw in zip(todo, raws)]
    return results
