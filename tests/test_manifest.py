"""Manifests: each importer on real audio trees, validation that names the bad line, round trips."""

import json
import shutil

import pytest

from speechssl.data.manifest import (
    ManifestError, Utterance, build_manifest, from_csv, from_folder, from_librispeech, normalize_text, read_manifest,
    write_manifest,
)
from tests.conftest import SHARED, require_fsdd

LIBRI_TEST = SHARED / "data" / "librispeech-clips" / "test-clean"


@pytest.fixture()
def clips(tmp_path):
    """Three real digit recordings copied into a speaker-per-folder tree."""
    src = sorted(require_fsdd().glob("*_george_*.wav"))[:2] + sorted(require_fsdd().glob("*_jackson_*.wav"))[:1]
    root = tmp_path / "tree"
    for path in src:
        digit, speaker, take = path.stem.split("_")
        (root / speaker).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / speaker / path.name)
    return root


def test_normalize_text():
    assert normalize_text("Hello, World!  It\u2019s 'quoted'.") == "hello world it's quoted"
    assert normalize_text("  A-B  c3d ") == "a b c d"


def test_folder_importer_with_sidecars(clips):
    first = sorted(clips.rglob("*.wav"))[0]
    first.with_suffix(".txt").write_text("Zero, ZERO!\n")
    other = sorted(clips.rglob("*.wav"))[1]
    other.with_suffix(".lab").write_text("one")
    rows = from_folder(clips)
    assert len(rows) == 3
    by_path = {r.path: r for r in rows}
    assert by_path[str(first)].text == "zero zero" and by_path[str(other)].text == "one"
    assert {r.speaker for r in rows} == {"george", "jackson"}
    assert all(0.1 < r.duration < 2 for r in rows)
    assert len({r.id for r in rows}) == 3


def test_folder_importer_flat_and_empty(tmp_path, clips):
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in clips.rglob("*.wav"):
        shutil.copy(path, flat / path.name)
    assert all(r.speaker is None for r in from_folder(flat))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ManifestError, match="no audio files"):
        from_folder(tmp_path / "nothing")


def test_librispeech_importer_on_real_tree():
    if not LIBRI_TEST.is_dir():
        pytest.skip("shared LibriSpeech clips missing")
    rows = from_librispeech(LIBRI_TEST)
    assert len(rows) == 4 and {r.speaker for r in rows} == {"1089"}
    assert all(r.text and r.text == r.text.lower() and r.duration > 1 for r in rows)
    assert all(r.path.endswith(".flac") for r in rows)


def test_librispeech_missing_audio_is_named(tmp_path):
    chapter = tmp_path / "19" / "198"
    chapter.mkdir(parents=True)
    (chapter / "19-198.trans.txt").write_text("19-198-0000 HELLO THERE\n")
    with pytest.raises(ManifestError, match=r"19-198.trans.txt:1: audio 19-198-0000.flac not found"):
        from_librispeech(tmp_path)
    with pytest.raises(ManifestError, match="not a LibriSpeech tree"):
        from_librispeech(tmp_path / "nowhere")


def test_csv_importer(tmp_path, clips):
    wavs = sorted(clips.rglob("*.wav"))
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("path,text,speaker\n" + "".join(f"{w.relative_to(tmp_path)},Digit {i},s{i}\n" for i, w in enumerate(wavs)))
    rows = from_csv(csv_path)
    assert [r.text for r in rows] == ["digit", "digit", "digit"] and rows[2].speaker == "s2"
    bad = tmp_path / "bad.csv"
    bad.write_text("file,text\nx.wav,hi\n")
    with pytest.raises(ManifestError, match="must name a 'path' column"):
        from_csv(bad)
    missing = tmp_path / "missing.csv"
    missing.write_text("path\nnope.wav\n")
    with pytest.raises(ManifestError, match=r"missing.csv:2: audio file not found"):
        from_csv(missing)


def test_round_trip_with_relative_paths(tmp_path, clips):
    rows = build_manifest(clips, "folder")
    out = clips / "manifest.jsonl"
    write_manifest(rows, out)
    stored = [json.loads(line) for line in out.read_text().splitlines()]
    assert not stored[0]["path"].startswith("/")  # relative to the manifest's folder
    moved = tmp_path / "moved"
    shutil.move(clips, moved)
    again = read_manifest(moved / "manifest.jsonl")
    assert [r.id for r in again] == [r.id for r in rows]
    assert all((moved / r.path).exists() or r.path.startswith(str(moved)) for r in again)


@pytest.mark.parametrize("line, message", [
    ("{not json", "line 2|:2: not valid JSON"),
    ('["a", "b"]', ":2: each line must be a JSON object"),
    ('{"id": "x", "path": "a.wav"}', ":2: missing required key 'duration'"),
    ('{"id": "x", "path": "a.wav", "duration": -1}', ":2: 'duration' must be a positive number"),
    ('{"id": "x", "path": "a.wav", "duration": 1, "text": 5}', ":2: 'text' must be a string"),
    ('{"id": "x", "path": "a.wav", "duration": 1, "speeker": "a"}', ":2: unknown key 'speeker'"),
    ('{"id": "a", "path": "a.wav", "duration": 1}', ":2: duplicate id 'a'"),
])
def test_malformed_lines_are_named(tmp_path, line, message):
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "a", "path": "a.wav", "duration": 1.5}\n' + line + "\n")
    with pytest.raises(ManifestError, match=message):
        read_manifest(path)


def test_unknown_format_and_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="unknown manifest format 'kaldi'"):
        build_manifest(tmp_path, "kaldi")
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "none.jsonl")


def test_utterance_is_plain_data():
    u = Utterance("a", "/x.wav", 1.0, "hi", "s")
    assert u.text == "hi" and u.speaker == "s"
