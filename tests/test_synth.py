"""Synthetic corpus: audio format, held-out splits, determinism, resuming, text source."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import soundfile as sf

from speechssl.data import synth, voices
from speechssl.data.manifest import read_manifest
from speechssl.data.text import grammar_sentences, number_to_words, sentence_pool

pytestmark = [
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed"),
    # A machine without flite only warns; test_missing_synthesizer_messages checks that.
    pytest.mark.filterwarnings("ignore:flite not found"),
]

# A few voices, a few dozen sentences, ~45 s of audio: a couple of seconds on 2 cores.
SMALL = dict(hours=0.0125, seed=3, max_speakers=7, max_sentences=48, engines=("espeak", "flite"))


def _run(out: Path, jobs: int = 2, **overrides) -> synth.SynthReport:
    return synth.synthesize(out, jobs=jobs, **{**SMALL, **overrides})


def _rows(out: Path) -> dict[str, list[tuple]]:
    """Manifest rows with paths made relative, so two folders can be compared."""
    return {split: [(u.id, Path(u.path).relative_to(out.resolve()).as_posix(), u.duration, u.text, u.speaker)
                    for u in read_manifest(out / f"{split}.jsonl")]
            for split in synth.SPLITS}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, synth.SynthReport]:
    out = tmp_path_factory.mktemp("corpus")
    return out, _run(out)


def test_report_and_files(corpus):
    out, report = corpus
    assert report.files > 5 and report.failed == 0 and report.synthesized == report.files
    assert report.audio_seconds > 0.5 * SMALL["hours"] * 3600
    assert set(report.speakers) == set(synth.SPLITS) and report.speakers["train"] >= 2
    assert (out / "synth.json").is_file()
    for split in synth.SPLITS:
        for utt in read_manifest(out / f"{split}.jsonl"):
            info = sf.info(utt.path)
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert utt.duration == pytest.approx(info.frames / 16000, abs=1e-3)
            assert utt.text and utt.speaker and Path(utt.path).parent.name == utt.speaker
    assert not list(out.rglob("*.partial.wav"))


def test_speakers_and_sentences_are_held_out(corpus):
    out, _ = corpus
    rows = {split: read_manifest(out / f"{split}.jsonl") for split in synth.SPLITS}
    assert rows["train"] and rows["test"]
    speakers = {split: {u.speaker for u in r} for split, r in rows.items()}
    texts = {split: {u.text for u in r} for split, r in rows.items()}
    assert not speakers["test"] & speakers["train"] and not speakers["valid"] & speakers["train"]
    assert not texts["test"] & texts["train"] and not texts["valid"] & texts["train"]


def test_same_seed_same_corpus(corpus, tmp_path):
    out, _ = corpus
    again = tmp_path / "again"
    _run(again, jobs=1)  # serial and parallel must agree too
    assert _rows(again) == _rows(out)
    other = _run(tmp_path / "other", seed=SMALL["seed"] + 1)
    assert other.files > 0 and _rows(tmp_path / "other") != _rows(out)


def test_resume_skips_existing_files(corpus, tmp_path):
    out, first = corpus
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    wavs = sorted(copy.rglob("*.wav"))
    wavs[0].unlink()                          # lost file: made again
    wavs[1].write_bytes(b"RIFF not really")   # half-written file: made again
    report = _run(copy)
    assert (report.synthesized, report.skipped) == (2, first.files - 2)
    assert _rows(copy) == _rows(out)
    assert _run(copy).skipped == first.files


def test_extra_voices_come_from_training_families_and_sentences(corpus, tmp_path):
    out, _ = corpus
    rows = {split: read_manifest(out / f"{split}.jsonl") for split in synth.SPLITS}
    report = synth.synthesize_voices(tmp_path / "voices", out, speakers=4, per_speaker=3)
    voices = read_manifest(tmp_path / "voices" / "train.jsonl")
    assert report.failed == 0 and len(voices) == 12 and len({u.speaker for u in voices}) == 4
    assert not (tmp_path / "voices" / "test.jsonl").exists()  # training voices only
    by_id = {s.id: s for e in synth.ALL_ENGINES for s in synth.catalogue(e)}
    family = {split: {by_id[u.speaker].family for u in r} for split, r in rows.items()}
    for utt in voices:
        assert by_id[utt.speaker].family in family["train"] - family["valid"] - family["test"]
        assert utt.speaker not in {u.speaker for r in rows.values() for u in r}  # a new setting
        assert sf.info(utt.path).samplerate == 16000 and utt.text
    held_out_texts = {u.text for split in ("valid", "test") for u in rows[split]}
    assert not {u.text for u in voices} & held_out_texts
    again = synth.synthesize_voices(tmp_path / "voices", out, speakers=4, per_speaker=3)
    assert again.skipped == 12 and read_manifest(tmp_path / "voices" / "train.jsonl") == voices
    with pytest.raises(synth.SynthError, match="not a corpus made by"):
        synth.synthesize_voices(tmp_path / "v2", tmp_path / "voices" / "wav", speakers=1, per_speaker=1)


def test_voices_command_refuses_bad_arguments(corpus, tmp_path, capsys):
    from speechssl.cli import main

    out, _ = corpus
    assert main(["data", "voices", "--corpus", str(tmp_path), "--out", str(tmp_path / "v")]) == 2
    assert "not a corpus made by `speechssl data synth`" in capsys.readouterr().err
    assert main(["data", "voices", "--corpus", str(out), "--out", str(tmp_path / "v"), "--speakers", "0"]) == 2
    assert "--speakers and --per-speaker must be >= 1" in capsys.readouterr().err


def test_missing_synthesizer_messages(monkeypatch, tmp_path):
    real_which = shutil.which
    monkeypatch.setattr(voices.shutil, "which", lambda b: None if b == "flite" else real_which(b))
    with pytest.warns(UserWarning, match="flite not found: apt-get install flite"):
        assert synth.available_engines(("espeak", "flite")) == ["espeak"]
    monkeypatch.setattr(voices.shutil, "which", lambda b: None)
    missing = pytest.raises(synth.SynthError, match="apt-get install espeak-ng flite festival")
    with pytest.warns(UserWarning), missing:
        synth.synthesize(tmp_path, 0.01)


def test_speaker_catalogue():
    speakers = [s for e in synth.ALL_ENGINES for s in synth.catalogue(e)]
    assert len({s.id for s in speakers}) == len(speakers) >= 60
    assert synth.Speaker("espeak", "en-us+f3", 60, 160).id == "espeak-en-us+f3-p60-s160"
    # The same recorded voice through two engines is one family (held out together).
    assert synth.Speaker("flite", "kal16", 0, 100).family == synth.Speaker("festival", "kal_diphone", 0, 85).family


def test_text_source():
    pool = sentence_pool(0)
    assert len(pool) == len(set(pool)) >= 20_000
    assert pool == sentence_pool(0) and pool[:50] != sentence_pool(1)[:50]
    for s in pool[:2000]:
        assert set(s) <= set("abcdefghijklmnopqrstuvwxyz' ") and 3 <= len(s.split()) <= 20
    grammar = grammar_sentences(20_000, seed=0)
    assert len(set(grammar)) == 20_000  # enough on its own when Debian text is absent
    assert len({w for s in grammar for w in s.split()}) >= 400
    assert number_to_words(342) == "three hundred forty two"
    assert number_to_words(1_000_019) == "one million nineteen"
