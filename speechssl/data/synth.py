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
import random
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from speechssl.data.manifest import Utterance, write_manifest
from speechssl.data.text import sentence_pool
from speechssl.data.voices import (ALL_ENGINES, ENGINE_SHARE, Rendered, Speaker, SynthError, available_engines,
                                   catalogue, render)

__all__ = ["ALL_ENGINES", "SPLITS", "Speaker", "SynthError", "SynthReport", "available_engines", "catalogue",
           "render", "synthesize", "synthesize_voices"]
log = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")
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

    def summary(self) -> str:
        """One line for a person: files, hours, speed and speakers per split."""
        return (f"synth: {self.files} files ({self.synthesized} new, {self.skipped} kept, "
                f"{self.failed} failed), {self.audio_seconds / 3600:.2f} h audio in "
                f"{self.wall_seconds:.0f} s ({self.speed:.1f}x real time); speakers "
                + ", ".join(f"{k}={v}" for k, v in self.speakers.items()))


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
