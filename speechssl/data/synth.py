"""Synthetic multi-speaker English corpus from Debian speech synthesizers.

Each (engine, voice, pitch, rate) setting is one "speaker". Speakers and sentences are
both held out: whole voice families go to test/valid only, and the sentence pool is cut
into train/valid/test parts, so no test text or voice is seen in training.

Everything is decided up front by a seeded RNG (speakers, splits, which sentence each
speaker reads); the worker processes only render the plan. A file that already exists
and is readable is kept, so a killed run resumes where it stopped.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from speechssl.audio import SAMPLE_RATE, AudioError, load_audio
from speechssl.data.manifest import Utterance, write_manifest
from speechssl.data.text import sentence_pool
from speechssl.errors import SpeechSSLError

log = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")
ALL_ENGINES = ("espeak", "flite", "festival")
CHUNK = 24  # utterances per worker task: festival starts once per task


@dataclass
class SynthReport:
    files: int = 0                # utterances in the manifests
    synthesized: int = 0          # rendered in this run
    skipped: int = 0              # already on disk (resumed)
    failed: int = 0               # synthesizer errors, left out of the manifests
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    speakers: dict[str, int] = field(default_factory=dict)    # split -> distinct speakers
    utterances: dict[str, int] = field(default_factory=dict)  # split -> files
    seconds: dict[str, float] = field(default_factory=dict)   # split -> audio seconds
    sentences: int = 0            # distinct sentences in the pool used

    @property
    def speed(self) -> float:
        """Audio seconds made per wall-clock second."""
        return self.audio_seconds / max(self.wall_seconds, 1e-9)


# ---------------------------------------------------------------- engines and speakers
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


@dataclass(frozen=True)
class PlannedUtterance:
    id: str
    split: str
    speaker: Speaker
    sentence_index: int
    text: str

    @property
    def rel_path(self) -> str:
        return f"wav/{self.speaker.id}/{self.id}.wav"


# ---------------------------------------------------------------- planning
def choose_speakers(engines: list[str], max_speakers: int, rng: random.Random) -> list[Speaker]:
    """Up to `max_speakers` settings, shared between engines by `ENGINE_SHARE`."""
    pools = {e: catalogue(e) for e in engines}
    total = sum(ENGINE_SHARE[e] for e in engines)
    chosen: list[Speaker] = []
    for e in engines:
        k = min(len(pools[e]), max(1, round(max_speakers * ENGINE_SHARE[e] / total)))
        chosen += rng.sample(pools[e], k)
    return sorted(chosen[:max_speakers], key=lambda s: s.id)


def split_speakers(speakers: list[Speaker], rng: random.Random,
                   test_frac: float, valid_frac: float) -> dict[Speaker, str]:
    """Assign whole voice families to test, then valid, then train.

    When there are three or more non-espeak families, one of them is put first, so the
    test split also holds a voice from an engine other than espeak.
    """
    families = sorted({s.family for s in speakers})
    rng.shuffle(families)
    others = [f for f in families if not f.startswith("espeak-")]
    if len(others) >= 3:
        families.remove(others[0])
        families.insert(0, others[0])
    counts = {f: sum(s.family == f for s in speakers) for f in families}
    split_of: dict[str, str] = {}
    n_test = n_valid = 0
    for f in families:
        left = len(families) - len(split_of)
        if (n_test < test_frac * len(speakers) or n_test == 0) and left > 2:
            split_of[f], n_test = "test", n_test + counts[f]
        elif (n_valid < valid_frac * len(speakers) or n_valid == 0) and left > 1:
            split_of[f], n_valid = "valid", n_valid + counts[f]
        else:
            split_of[f] = "train"
    return {s: split_of[s.family] for s in speakers}


def sentence_splits(n: int, test_frac: float, valid_frac: float) -> dict[str, range]:
    """Which sentence indices each split reads: test first, then valid, the rest train."""
    n_test = max(1, round(n * test_frac))
    n_valid = max(1, round(n * valid_frac))
    return {"test": range(0, n_test), "valid": range(n_test, n_test + n_valid), "train": range(n_test + n_valid, n)}


def plan(sentences: list[str], speakers: dict[Speaker, str], hours: float, seed: int,
         test_frac: float, valid_frac: float) -> list[PlannedUtterance]:
    """Pick (speaker, sentence) pairs until the estimated audio reaches `hours`."""
    rng = random.Random(f"plan-{seed}")
    pools = sentence_splits(len(sentences), test_frac, valid_frac)
    cursor = {split: 0 for split in SPLITS}
    order = list(speakers)
    weights = [1.0 / s.cost ** 0.5 for s in order]
    used: set[tuple[str, int]] = set()
    out: list[PlannedUtterance] = []
    budget, misses = hours * 3600.0, 0
    while budget > 0 and misses < 1000:
        spk = rng.choices(order, weights)[0]
        split = speakers[spk]
        pool = pools[split]
        for _ in range(len(pool)):  # next sentence this speaker has not read yet
            idx = pool[cursor[split] % len(pool)]
            cursor[split] += 1
            if (spk.id, idx) not in used:
                break
        else:
            misses += 1
            continue
        used.add((spk.id, idx))
        text = sentences[idx]
        out.append(PlannedUtterance(f"{spk.id}-{idx:06d}", split, spk, idx, text))
        budget -= spk.estimate_seconds(text)
    return out


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


# ---------------------------------------------------------------- running
def _tasks(items: list[PlannedUtterance]) -> list[tuple[Speaker, list[tuple[str, str]]]]:
    """Group by speaker into chunks; costly engines first so workers finish together."""
    by_speaker: dict[Speaker, list[tuple[str, str]]] = {}
    for u in items:
        by_speaker.setdefault(u.speaker, []).append((u.rel_path, u.text))
    tasks = [(spk, jobs[i:i + CHUNK]) for spk, jobs in by_speaker.items()
             for i in range(0, len(jobs), CHUNK)]
    return sorted(tasks, key=lambda t: -t[0].cost * len(t[1]))


def _run_task(args: tuple[str, Speaker, list[tuple[str, str]]]) -> list[Rendered]:
    out_dir, speaker, jobs = args
    return render(Path(out_dir), speaker, jobs)


def synthesize(out_dir: str | Path, hours: float, seed: int = 0, jobs: int = 2, *,
               max_speakers: int = 120, max_sentences: int | None = None,
               engines: tuple[str, ...] = ALL_ENGINES,
               test_frac: float = 0.10, valid_frac: float = 0.05) -> SynthReport:
    """Write `out_dir/wav/<speaker>/<id>.wav` and `out_dir/{train,valid,test}.jsonl`.

    `hours` is the target audio length (estimated from word counts while planning; the
    report gives the real one). Same arguments -> same files and manifests.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    usable = available_engines(engines)
    if not usable:
        raise SynthError("no speech synthesizer found: apt-get install espeak-ng flite festival "
                         "festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts")
    rng = random.Random(f"speakers-{seed}")
    speakers = split_speakers(choose_speakers(usable, max_speakers, rng), rng, test_frac, valid_frac)
    sentences = sentence_pool(seed)[:max_sentences]
    items = plan(sentences, speakers, hours, seed, test_frac, valid_frac)
    report = _write_outputs(out, items, _render_all(out, items, jobs, start), len(sentences))
    report.wall_seconds = time.perf_counter() - start
    _write_summary(out, report, speakers, seed=seed, hours=hours, engines=usable, max_sentences=max_sentences,
                   test_frac=test_frac, valid_frac=valid_frac)
    return report


def _render_all(out: Path, items: list[PlannedUtterance], jobs: int,
                start: float) -> dict[str, tuple[float | None, bool]]:
    """Render every planned utterance (``jobs`` processes); rel_path -> (seconds or None, skipped)."""
    tasks = [(str(out), spk, batch) for spk, batch in _tasks(items)]
    log.info("synth: %d utterances, %d speakers, %d tasks, %d jobs",
             len(items), len({u.speaker for u in items}), len(tasks), jobs)
    results: dict[str, tuple[float | None, bool]] = {}
    if jobs <= 1:
        done = map(_run_task, tasks)
    else:
        pool = ProcessPoolExecutor(max_workers=jobs)
        done = pool.map(_run_task, tasks)
    try:
        for i, batch in enumerate(done, 1):
            results.update((path, (dur, skipped)) for path, dur, skipped in batch)
            if i % 20 == 0 or i == len(tasks):
                log.info("synth: %d/%d tasks, %.0f s elapsed", i, len(tasks), time.perf_counter() - start)
    finally:
        if jobs > 1:
            pool.shutdown(cancel_futures=True)
    return results


def synthesize_voices(out_dir: str | Path, corpus: str | Path, speakers: int, per_speaker: int,
                      jobs: int = 2) -> SynthReport:
    """More training voices for a corpus made by ``synthesize``: ``out_dir/train.jsonl``.

    Speaker verification learns from many voices, and from the same voice at another pitch
    or rate counted as another speaker, which a corpus sized for speech-to-text has few of.
    The new settings come only from voice families of the corpus's train split (never one
    of its valid or test voices) and read only its train sentences, so the corpus's
    held-out splits stay held out. Same arguments -> same files.
    """
    start = time.perf_counter()
    out, corpus = Path(out_dir), Path(corpus)
    try:
        summary = json.loads((corpus / "synth.json").read_text())
    except (OSError, ValueError) as err:
        raise SynthError(f"{corpus}: not a corpus made by `speechssl data synth` (synth.json: {err})") from None
    used = {sid for ids in summary["speakers"].values() for sid in ids}
    usable = [e for e in summary["engines"] if e in available_engines(tuple(summary["engines"]))]
    settings = [s for e in usable for s in catalogue(e)]
    held_out = {s.family for s in settings if s.id in set(summary["speakers"]["valid"]) | set(summary["speakers"]["test"])}
    train_families = {s.family for s in settings if s.id in set(summary["speakers"]["train"])}
    candidates = sorted(s for s in settings if s.family in train_families - held_out and s.id not in used)
    rng = random.Random(f"voices-{summary['seed']}")
    chosen = rng.sample(candidates, min(speakers, len(candidates)))
    if len(chosen) < speakers:
        log.warning("synth: only %d new voice settings in the train families, not %d", len(chosen), speakers)
    # The corpus's own sentence cut (synth.json holds it; these defaults are synthesize's).
    sentences = sentence_pool(summary["seed"])[:summary.get("max_sentences")]
    pool = list(sentence_splits(len(sentences), summary.get("test_frac", 0.10), summary.get("valid_frac", 0.05))["train"])
    items = [PlannedUtterance(f"{spk.id}-{idx:06d}", "train", spk, idx, sentences[idx])
             for spk in sorted(chosen) for idx in rng.sample(pool, min(per_speaker, len(pool)))]
    report = _write_outputs(out, items, _render_all(out, items, jobs, start), len(sentences))
    report.wall_seconds = time.perf_counter() - start
    _write_summary(out, report, {s: "train" for s in chosen}, corpus=str(corpus), new_voices=speakers,
                   per_speaker=per_speaker, engines=usable)
    return report


def _write_outputs(out: Path, items: list[PlannedUtterance],
                   results: dict[str, tuple[float | None, bool]], n_sentences: int) -> SynthReport:
    report = SynthReport(sentences=n_sentences)
    rows: dict[str, list[Utterance]] = {s: [] for s in SPLITS}
    for u in items:
        duration, skipped = results[u.rel_path]
        if duration is None:
            report.failed += 1
            continue
        report.skipped += skipped
        report.synthesized += not skipped
        # Absolute here; write_manifest stores it relative to the manifest's folder.
        path = str(out.resolve() / u.rel_path)
        rows[u.split].append(Utterance(u.id, path, round(duration, 4), u.text, u.speaker.id))
    for split, split_rows in rows.items():
        if not any(u.split == split for u in items):  # an extra-voices set has no valid/test part
            continue
        split_rows.sort(key=lambda r: r.id)
        write_manifest(split_rows, out / f"{split}.jsonl")
        report.utterances[split] = len(split_rows)
        report.speakers[split] = len({r.speaker for r in split_rows})
        report.seconds[split] = round(sum(r.duration for r in split_rows), 2)
    report.files = sum(report.utterances.values())
    report.audio_seconds = round(sum(report.seconds.values()), 2)
    return report


def _write_summary(out: Path, report: SynthReport, speakers: dict[Speaker, str], **params) -> None:
    summary = {**params, "report": {**asdict(report), "speed": round(report.speed, 2)},
               "speakers": {split: sorted(s.id for s, sp in speakers.items() if sp == split)
                            for split in SPLITS}}
    tmp = out / "synth.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(out / "synth.json")


def main_synth(out: str | Path, hours: float, seed: int = 0, jobs: int = 2) -> SynthReport:
    """Entry point for `speechssl data synth`: run, then print a one-line summary."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    return _print_report(synthesize(out, hours, seed=seed, jobs=jobs))


def main_voices(out: str | Path, corpus: str | Path, speakers: int, per_speaker: int, jobs: int = 2) -> SynthReport:
    """Entry point for `speechssl data voices`: run, then print a one-line summary."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    return _print_report(synthesize_voices(out, corpus, speakers, per_speaker, jobs))


def _print_report(report: SynthReport) -> SynthReport:
    print(f"synth: {report.files} files ({report.synthesized} new, {report.skipped} kept, "
          f"{report.failed} failed), {report.audio_seconds / 3600:.2f} h audio in "
          f"{report.wall_seconds:.0f} s ({report.speed:.1f}x real time); speakers "
          + ", ".join(f"{k}={v}" for k, v in report.speakers.items()))
    return report
