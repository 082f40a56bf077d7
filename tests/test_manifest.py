"""Manifests: each importer on small trees of the committed fixtures (and the shared LibriSpeech
clips), validation that names the bad line, and write/read round trips."""

import json
import os
import shutil
from pathlib import Path

import pytest

from speechssl.data.manifest import (
    ManifestError, Utterance, build_manifest, from_csv, from_folder, from_fsdd, from_librispeech, normalize_text,
    read_manifest, write_manifest,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LIBRI_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "librispeech-clips" / "test-clean"


def copy(name: str, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURES / name, dest)
    return dest


@pytest.fixture()
def tree(tmp_path) -> Path:
    """Two speakers in subfolders: alice has a wav and an mp3, bob a flac (0.5 s stereo for variety)."""
    root = tmp_path / "tree"
    copy("speech.wav", root / "alice" / "a1.wav")
    copy("speech.mp3", root / "alice" / "a2.mp3")
    copy("stereo_48k.wav", root / "bob" / "b1.wav")
    return root


def test_normalize_text():
    assert normalize_text("Hello, World!  It\u2019s 'quoted'.") == "hello world it's quoted"
    assert normalize_text("  A-B  c3d ") == "a b c d"
    assert normalize_text("Café,naïve \u201csmart\u201d quotes") == "cafe naive smart quotes"
    assert normalize_text("the students' books, 'tis") == "the students books tis"
    assert normalize_text("TAB\tand\nnewline") == "tab and newline"
    assert normalize_text("?!") == ""


def test_folder_importer_with_sidecars(tree):
    (tree / "alice" / "a1.txt").write_text("Hello, WORLD!\n")
    (tree / "bob" / "b1.lab").write_text("bob's line")
    rows = {r.id: r for r in from_folder(tree)}
    assert set(rows) == {"alice/a1", "alice/a2", "bob/b1"}
    assert rows["alice/a1"].text == "hello world" and rows["bob/b1"].text == "bob's line"
    assert rows["alice/a2"].text is None
    assert {r.id: r.speaker for r in rows.values()} == {"alice/a1": "alice", "alice/a2": "alice", "bob/b1": "bob"}
    assert rows["alice/a1"].duration == pytest.approx(1.0) and rows["bob/b1"].duration == pytest.approx(0.5)
    assert rows["alice/a2"].duration == pytest.approx(1.0, rel=0.01)  # mp3
    assert rows["alice/a1"].path == str(tree / "alice" / "a1.wav")


def test_folder_importer_flat_has_no_speakers(tmp_path):
    for name, dest in [("speech.wav", "one.wav"), ("speech.flac", "two.FLAC"), ("speech.ogg", "three.ogg")]:
        copy(name, tmp_path / "flat" / dest)
    (tmp_path / "flat" / "notes.md").write_text("not audio")
    rows = from_folder(tmp_path / "flat")
    assert [r.id for r in rows] == ["one", "three", "two"]  # sorted by path; extensions in any case
    assert all(r.speaker is None for r in rows)


def test_folder_importer_errors(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ManifestError, match="no audio files .* under .*nothing"):
        from_folder(tmp_path / "nothing")
    with pytest.raises(ManifestError, match="not a folder: .*missing"):
        from_folder(tmp_path / "missing")
    copy("speech.wav", tmp_path / "dup" / "a.wav")
    copy("speech.flac", tmp_path / "dup" / "a.flac")
    with pytest.raises(ManifestError, match="duplicate id 'a': .*a.flac and .*a.wav"):
        from_folder(tmp_path / "dup")


def test_librispeech_importer_on_a_small_tree(tmp_path):
    chapter = tmp_path / "LibriSpeech" / "19" / "198"
    copy("speech.flac", chapter / "19-198-0000.flac")
    copy("speech_8k.wav", chapter / "19-198-0001.flac.wav")  # not .flac: ignored
    copy("speech.flac", chapter / "19-198-0001.flac")
    (chapter / "19-198.trans.txt").write_text("19-198-0000 HELLO WORLD\n19-198-0001 IT'S ME\n\n")
    rows = from_librispeech(tmp_path / "LibriSpeech")
    assert [(r.id, r.text, r.speaker) for r in rows] == [
        ("19-198-0000", "hello world", "19"), ("19-198-0001", "it's me", "19")]
    assert rows[0].duration == pytest.approx(1.0) and rows[0].path == str(chapter / "19-198-0000.flac")


def test_librispeech_importer_on_the_shared_clips():
    if not LIBRI_TEST.is_dir():
        pytest.skip(f"shared LibriSpeech clips not found at {LIBRI_TEST}")
    rows = build_manifest(LIBRI_TEST, "librispeech")
    assert len(rows) == 4 and {r.speaker for r in rows} == {"1089"}
    assert sorted(r.id for r in rows) == ["1089-134686-0000", "1089-134686-0001", "1089-134691-0000",
                                          "1089-134691-0001"]
    assert all(r.text and r.text == normalize_text(r.text) and r.duration > 1 for r in rows)
    assert all(r.path.endswith(".flac") and Path(r.path).is_file() for r in rows)


def test_librispeech_errors_are_named(tmp_path):
    chapter = tmp_path / "19" / "198"
    chapter.mkdir(parents=True)
    (chapter / "19-198.trans.txt").write_text("19-198-0000 HELLO THERE\n")
    with pytest.raises(ManifestError, match=r"19-198.trans.txt:1: audio 19-198-0000.flac not found"):
        from_librispeech(tmp_path)
    with pytest.raises(ManifestError, match="not a LibriSpeech tree"):
        from_librispeech(tmp_path / "nowhere")


def test_csv_importer(tmp_path, tree):
    csv_path = tmp_path / "list.csv"
    csv_path.write_text(
        "\ufeffpath, id ,text,speaker,duration\n"  # a spreadsheet's byte-order mark and padded names
        "tree/alice/a1.wav,u1,\"Hello, world\",s1,\n"
        f"{tree / 'bob' / 'b1.wav'},u2,,,0.25\n"
        "tree/alice/a2.mp3,,,s1,\n"
    )
    rows = from_csv(csv_path)
    assert [(r.id, r.text, r.speaker) for r in rows] == [("u1", "hello world", "s1"), ("u2", None, None),
                                                         ("a2", None, "s1")]
    assert rows[0].path == str(tmp_path / "tree" / "alice" / "a1.wav")  # relative to the CSV's folder
    assert rows[0].duration == pytest.approx(1.0) and rows[1].duration == 0.25  # a given duration is kept


@pytest.mark.parametrize("body, message", [
    ("file,text\nx.wav,hi\n", "must name a 'path' column"),
    ("", "must name a 'path' column"),
    ("path\ntree/alice/a1.wav\nnope.wav\n", r"bad.csv:3: audio file not found: .*nope.wav"),
    ("path,duration\ntree/alice/a1.wav,long\n", r"bad.csv:2: duration 'long' is not a number"),
    ("path,duration\ntree/alice/a1.wav,0\n", r"bad.csv:2: duration must be positive"),
    ("path,id\ntree/alice/a1.wav,x\ntree/alice/a2.mp3,x\n", "duplicate id 'x'"),
])
def test_csv_errors_are_named(tmp_path, tree, body, message):
    bad = tmp_path / "bad.csv"
    bad.write_text(body)
    with pytest.raises(ManifestError, match=message):
        from_csv(bad)


def test_round_trip_with_relative_paths(tmp_path, tree):
    rows = build_manifest(tree, "folder")
    out = tree / "manifest.jsonl"
    write_manifest(rows, out)
    stored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [s["path"] for s in stored] == ["alice/a1.wav", "alice/a2.mp3", "bob/b1.wav"]
    assert "text" not in stored[0]  # None values are left out
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".manifest")]  # no temp file left
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not mkstemp's private one
    moved = tmp_path / "moved"
    shutil.move(tree, moved)
    again = read_manifest(moved / "manifest.jsonl")
    assert [(r.id, r.duration, r.text, r.speaker) for r in again] == [
        (r.id, round(r.duration, 4), r.text, r.speaker) for r in rows]
    assert [r.path for r in again] == [str(moved / s["path"]) for s in stored]


def test_paths_outside_the_manifest_folder_stay_absolute(tmp_path, tree):
    out = tmp_path / "manifests" / "all.jsonl"  # the folder is made
    write_manifest([Utterance("x", str(tree / "alice" / "a1.wav"), 1.0, "hi", "alice")], out)
    assert json.loads(out.read_text())["path"] == str((tree / "alice" / "a1.wav").resolve())
    assert read_manifest(out)[0] == Utterance("x", str((tree / "alice" / "a1.wav").resolve()), 1.0, "hi", "alice")


def test_a_working_directory_relative_path_outside_is_stored_absolute(tmp_path, tree, monkeypatch):
    # ../shared/data/... given from the repo root must not be read relative to runs/manifests/.
    monkeypatch.chdir(tree / "alice")
    out = tmp_path / "runs" / "manifests" / "m.jsonl"
    write_manifest([Utterance("x", "../bob/b1.wav", 0.5)], out)
    monkeypatch.chdir(tmp_path)
    assert Path(read_manifest(out)[0].path) == (tree / "bob" / "b1.wav").resolve()
    assert Path(read_manifest(out)[0].path).is_file()


def test_fsdd_importer(tmp_path):
    root = tmp_path / "recordings"
    copy("speech_8k.wav", root / "7_alice_0.wav")
    copy("speech_8k.wav", root / "0_bob_12.wav")
    rows = from_fsdd(root)
    assert [(r.id, r.text, r.speaker) for r in rows] == [("0_bob_12", "zero", "bob"), ("7_alice_0", "seven", "alice")]
    assert rows[0].duration > 0 and build_manifest(root, "fsdd") == rows
    copy("speech_8k.wav", root / "seven_alice_1.wav")
    with pytest.raises(ManifestError, match=r"seven_alice_1.wav: not an FSDD file name"):
        from_fsdd(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no FSDD wavs under"):
        from_fsdd(tmp_path / "empty")
    with pytest.raises(ManifestError, match="not a folder"):
        from_fsdd(tmp_path / "missing")


def test_write_refuses_what_read_would_reject(tmp_path):
    out = tmp_path / "m.jsonl"
    with pytest.raises(ManifestError, match="duplicate id 'a': /x.wav and /y.wav"):
        write_manifest([Utterance("a", "/x.wav", 1.0), Utterance("a", "/y.wav", 1.0)], out)
    with pytest.raises(ManifestError, match="a: duration must be a positive number of seconds, got 0"):
        write_manifest([Utterance("a", "/x.wav", 0)], out)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_write_replaces_atomically(tmp_path):
    out = tmp_path / "m.jsonl"
    write_manifest([Utterance("a", "/x.wav", 1.0)], out)
    inode = os.stat(out).st_ino
    write_manifest([Utterance("b", "/y.wav", 2.0)], out)
    assert [r.id for r in read_manifest(out)] == ["b"] and os.stat(out).st_ino != inode


@pytest.mark.parametrize("line, message", [
    ("{not json", r"m.jsonl:2: not valid JSON"),
    ('["a", "b"]', r"m.jsonl:2: each line must be a JSON object"),
    ('{"id": "x", "path": "a.wav"}', r"m.jsonl:2: missing required key 'duration'"),
    ('{"id": "x", "duration": 1}', r"m.jsonl:2: missing required key 'path'"),
    ('{"id": 5, "path": "a.wav", "duration": 1}', r"m.jsonl:2: 'id' must be a non-empty string"),
    ('{"id": "x", "path": "", "duration": 1}', r"m.jsonl:2: 'path' must be a non-empty string"),
    ('{"id": "x", "path": "a.wav", "duration": -1}', r"m.jsonl:2: 'duration' must be a positive number"),
    ('{"id": "x", "path": "a.wav", "duration": "1"}', r"m.jsonl:2: 'duration' must be a positive number"),
    ('{"id": "x", "path": "a.wav", "duration": Infinity}', r"m.jsonl:2: 'duration' must be a positive number"),
    ('{"id": "x", "path": "a.wav", "duration": true}', r"m.jsonl:2: 'duration' must be a positive number"),
    ('{"id": "x", "path": "a.wav", "duration": 1, "text": 5}', r"m.jsonl:2: 'text' must be a string"),
    ('{"id": "x", "path": "a.wav", "duration": 1, "speeker": "a"}', r"m.jsonl:2: unknown key 'speeker'"),
    ('{"id": "a", "path": "a.wav", "duration": 1}', r"m.jsonl:2: duplicate id 'a'"),
])
def test_malformed_lines_are_named(tmp_path, line, message):
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "a", "path": "a.wav", "duration": 1.5}\n' + line + "\n")
    with pytest.raises(ManifestError, match=message):
        read_manifest(path)


def test_blank_lines_count_towards_line_numbers(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "a", "path": "a.wav", "duration": 1.5}\n\n\n{"id": "b"}\n')
    with pytest.raises(ManifestError, match=r"m.jsonl:4: missing required key"):
        read_manifest(path)


def test_unknown_format_and_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="unknown manifest format 'kaldi'; choose folder, librispeech, csv, fsdd, an4, ljspeech"):
        build_manifest(tmp_path, "kaldi")
    with pytest.raises(ManifestError, match="manifest not found: .*none.jsonl"):
        read_manifest(tmp_path / "none.jsonl")
    assert issubclass(ManifestError, ValueError)


def test_utterance_is_frozen_plain_data():
    u = Utterance("a", "/x.wav", 1.0)
    assert u.text is None and u.speaker is None
    with pytest.raises(AttributeError):
        u.id = "b"  # type: ignore[misc]


def test_an4_and_ljspeech_importers_read_the_shared_corpora():
    root = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (root / "an4").is_dir() or not (root / "ljspeech").is_dir():
        pytest.skip("../shared/data has no AN4 / LJ Speech")
    an4 = build_manifest(root / "an4", "an4")
    assert len(an4) == 948 and len({u.speaker for u in an4}) == 74
    first = next(u for u in an4 if u.id == "an251-fash-b")
    assert first.text == "yes" and first.speaker == "fash" and first.duration > 0
    assert all(u.text == u.text.lower() and "<s>" not in u.text for u in an4)
    lj = build_manifest(root / "ljspeech", "ljspeech")
    assert len(lj) == 390 and {u.speaker for u in lj} == {"LJ"}
    assert next(u for u in lj if u.id == "LJ001-0002").text == "in being comparatively modern"
