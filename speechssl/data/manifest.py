"""Manifests: JSONL rows ``{id, path, duration, text?, speaker?}``, and importers that make them.

Reading validates every row and names the file and line of the first bad one.
Relative paths are relative to the manifest's folder, so a corpus can move.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import tempfile
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path

from speechssl.errors import SpeechSSLError

MANIFEST_FORMATS = ("folder", "librispeech", "csv", "fsdd", "an4", "ljspeech")
AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus"}


class ManifestError(SpeechSSLError, ValueError):
    """A manifest or source tree that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class Utterance:
    id: str
    path: str
    duration: float  # seconds
    text: str | None = None
    speaker: str | None = None


def normalize_text(text: str) -> str:
    """Lower-case a-z, apostrophe and single spaces: the CTC alphabet.

    Accents are folded (cafe for café) rather than dropped; an apostrophe survives only
    inside a word (don't), since at a word's edge it is a quotation mark.
    """
    text = unicodedata.normalize("NFKD", text.replace("\u2019", "'")).lower()
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = re.sub(r"[^a-z' ]+", " ", text)
    text = re.sub(r"(?<![a-z])'+|'+(?![a-z])", " ", text)
    return re.sub(r" +", " ", text).strip()


def read_manifest(path: str | Path) -> list[Utterance]:
    """Every row, validated; relative audio paths are joined to the manifest's folder."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    rows: list[Utterance] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            row = _parse_row(line, f"{path}:{number}")
            if row.id in seen:
                raise ManifestError(f"{path}:{number}: duplicate id {row.id!r}")
            seen.add(row.id)
            audio = Path(row.path)
            if not audio.is_absolute():
                audio = path.parent / audio
            rows.append(Utterance(row.id, str(audio), row.duration, row.text, row.speaker))
    return rows


def _parse_row(line: str, where: str) -> Utterance:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: each line must be a JSON object")
    for key in ("id", "path", "duration"):
        if key not in obj:
            raise ManifestError(f"{where}: missing required key {key!r}")
    unknown = set(obj) - {"id", "path", "duration", "text", "speaker"}
    if unknown:
        raise ManifestError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    if not isinstance(obj["id"], str) or not obj["id"]:
        raise ManifestError(f"{where}: 'id' must be a non-empty string")
    if not isinstance(obj["path"], str) or not obj["path"]:
        raise ManifestError(f"{where}: 'path' must be a non-empty string")
    duration = obj["duration"]
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not 0 < duration < math.inf:
        raise ManifestError(f"{where}: 'duration' must be a positive number of seconds, got {duration!r}")
    for key in ("text", "speaker"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise ManifestError(f"{where}: {key!r} must be a string")
    return Utterance(obj["id"], obj["path"], float(duration), obj.get("text"), obj.get("speaker"))


def write_manifest(rows: list[Utterance], path: str | Path) -> None:
    """Write atomically; paths under the manifest's folder are stored relative to it, others absolute.

    Rows are checked first, so a manifest that was written can always be read back.
    """
    path = Path(path)
    _check_unique(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent.resolve()
    lines = []
    for row in rows:
        if not 0 < row.duration < math.inf:
            raise ManifestError(f"{row.id}: duration must be a positive number of seconds, got {row.duration!r}")
        obj = {k: v for k, v in asdict(row).items() if v is not None}
        audio = Path(row.path).resolve()
        # A path relative to the working directory would be read relative to the manifest.
        obj["path"] = audio.relative_to(base).as_posix() if audio.is_relative_to(base) else audio.as_posix()
        obj["duration"] = round(row.duration, 4) or row.duration  # never round a tiny clip to 0
        lines.append(json.dumps(obj, ensure_ascii=False) + "\n")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(lines)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a manifest is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_unique(rows: list[Utterance]) -> None:
    seen: dict[str, str] = {}
    for row in rows:
        if row.id in seen:
            raise ManifestError(f"duplicate id {row.id!r}: {seen[row.id]} and {row.path}")
        seen[row.id] = row.path


# --------------------------------------------------------------------------- importers


def _duration(path: Path) -> float:
    from speechssl.audio import audio_duration  # here, so reading a manifest needs no audio stack

    seconds = audio_duration(path)
    if not seconds > 0:
        raise ManifestError(f"{path}: the audio holds no samples")
    return seconds


def from_folder(root: str | Path) -> list[Utterance]:
    """Audio files under ``root`` (recursively); a ``.txt``/``.lab`` beside a file is its transcript.

    Files in subfolders take the first subfolder's name as their speaker.
    """
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"not a folder: {root}")
    rows = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()):
        text = None
        for ext in (".txt", ".lab"):
            sidecar = path.with_suffix(ext)
            if sidecar.is_file():
                text = normalize_text(sidecar.read_text(encoding="utf-8"))
                break
        relative = path.relative_to(root)
        speaker = relative.parts[0] if len(relative.parts) > 1 else None
        rows.append(Utterance(str(relative.with_suffix("")).replace(os.sep, "/"), str(path), _duration(path), text, speaker))
    if not rows:
        raise ManifestError(f"no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) under {root}")
    _check_unique(rows)  # a.wav beside a.flac
    return rows


def from_librispeech(root: str | Path) -> list[Utterance]:
    """LibriSpeech layout: ``SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac`` + ``SPEAKER-CHAPTER.trans.txt``."""
    root = Path(root)
    transcripts = sorted(root.rglob("*.trans.txt"))
    if not transcripts:
        raise ManifestError(f"no *.trans.txt files under {root}: not a LibriSpeech tree")
    rows = []
    for trans in transcripts:
        for number, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            utt_id, _, text = line.partition(" ")
            audio = trans.parent / f"{utt_id}.flac"
            if not audio.is_file():
                raise ManifestError(f"{trans}:{number}: audio {audio.name} not found")
            rows.append(Utterance(utt_id, str(audio), _duration(audio), normalize_text(text), utt_id.split("-")[0]))
    _check_unique(rows)
    return rows


def from_csv(path: str | Path) -> list[Utterance]:
    """A CSV with a header holding at least ``path``; optional ``id, text, speaker, duration``."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"CSV not found: {path}")
    rows = []
    # utf-8-sig: spreadsheets often start a CSV with a byte-order mark.
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames:
            reader.fieldnames = [name.strip() for name in reader.fieldnames]
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise ManifestError(f"{path}: the header must name a 'path' column")
        for record in reader:
            rows.append(_csv_row(record, path, reader.line_num))
    _check_unique(rows)
    return rows


def _csv_row(record: dict, csv_path: Path, number: int) -> Utterance:
    audio = Path((record.get("path") or "").strip())
    if not audio.is_absolute():
        audio = csv_path.parent / audio
    if not audio.is_file():
        raise ManifestError(f"{csv_path}:{number}: audio file not found: {audio}")
    if record.get("duration"):
        try:
            duration = float(record["duration"])
        except ValueError:
            raise ManifestError(f"{csv_path}:{number}: duration {record['duration']!r} is not a number") from None
        if not 0 < duration < math.inf:
            raise ManifestError(f"{csv_path}:{number}: duration must be positive, got {record['duration']!r}")
    else:
        duration = _duration(audio)
    text = record.get("text")
    return Utterance(record.get("id") or audio.stem, str(audio), duration,
                     normalize_text(text) if text else None, record.get("speaker") or None)


DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def from_fsdd(root: str | Path) -> list[Utterance]:
    """Free Spoken Digit Dataset: ``{digit}_{speaker}_{take}.wav``; the text is the digit's word."""
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"not a folder: {root}")
    rows = []
    for path in sorted(root.rglob("*.wav")):
        match = re.fullmatch(r"([0-9])_([A-Za-z0-9]+)_([0-9]+)", path.stem)
        if match is None:
            raise ManifestError(f"{path}: not an FSDD file name ({{digit}}_{{speaker}}_{{take}}.wav)")
        digit, speaker, _ = match.groups()
        rows.append(Utterance(path.stem, str(path), _duration(path), DIGIT_WORDS[int(digit)], speaker))
    if not rows:
        raise ManifestError(f"no FSDD wavs under {root}")
    return rows


def build_manifest(src: str | Path, fmt: str) -> list[Utterance]:
    """Rows from ``src`` in the layout ``fmt`` names: folder, librispeech, csv, fsdd, an4 or ljspeech."""
    if fmt == "folder":
        return from_folder(src)
    if fmt == "librispeech":
        return from_librispeech(src)
    if fmt == "csv":
        return from_csv(src)
    if fmt == "fsdd":
        return from_fsdd(src)
    if fmt in ("an4", "ljspeech"):
        from speechssl.data import corpora  # it builds on this module's helpers

        return corpora.from_an4(src) if fmt == "an4" else corpora.from_ljspeech(src)
    raise ManifestError(f"unknown manifest format {fmt!r}; choose {', '.join(MANIFEST_FORMATS)}")
