"""Importers for the real transcribed corpora in ``../shared/data``: CMU AN4 and LJ Speech.

Both normalise their transcripts to the CTC alphabet (``normalize_text``): AN4's upper-case
words and spelled letters ("R O B E R T") become lower case; LJ Speech uses its
*normalised* column, where numbers and abbreviations are already written as words.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from speechssl.data.manifest import ManifestError, Utterance, _check_unique, _duration, normalize_text

AN4_LINE = re.compile(r"<s>(.*)</s>\s*\(([^)]+)\)\s*")


def from_an4(root: str | Path) -> list[Utterance]:
    """AN4 (Sphinx layout): ``etc/an4_train.transcription`` + ``wav/an4_clstk/SPEAKER/UTT.flac``."""
    root = Path(root)
    listing = root / "etc" / "an4_train.transcription"
    if not listing.is_file():
        raise ManifestError(f"{listing} not found: not an AN4 tree")
    rows = []
    for number, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        match = AN4_LINE.fullmatch(line.strip())
        if match is None:
            raise ManifestError(f"{listing}:{number}: not '<s> WORDS </s> (utterance-id)'")
        text, utt_id = match.group(1), match.group(2)
        speaker = utt_id.split("-")[1]
        audio = root / "wav" / "an4_clstk" / speaker / f"{utt_id}.flac"
        if not audio.is_file():
            raise ManifestError(f"{listing}:{number}: audio {audio} not found")
        rows.append(Utterance(utt_id, str(audio), _duration(audio), normalize_text(text), speaker))
    _check_unique(rows)
    return rows


def from_ljspeech(root: str | Path) -> list[Utterance]:
    """LJ Speech: ``metadata.csv`` (``ID|text|normalised text``); rows whose audio is absent are skipped."""
    root = Path(root)
    listing = root / "metadata.csv"
    if not listing.is_file():
        raise ManifestError(f"{listing} not found: not an LJ Speech tree")
    rows = []
    with listing.open(encoding="utf-8", newline="") as f:
        for number, record in enumerate(csv.reader(f, delimiter="|", quoting=csv.QUOTE_NONE), start=1):
            if len(record) != 3:
                raise ManifestError(f"{listing}:{number}: expected ID|text|normalised text")
            audio = next((root / "wavs" / f"{record[0]}{ext}" for ext in (".flac", ".wav")
                          if (root / "wavs" / f"{record[0]}{ext}").is_file()), None)
            if audio is not None:  # the shipped subset holds 390 of the 13,100 rows
                rows.append(Utterance(record[0], str(audio), _duration(audio), normalize_text(record[2]), "LJ"))
    if not rows:
        raise ManifestError(f"no LJ Speech audio under {root / 'wavs'}")
    return rows
