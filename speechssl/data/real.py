"""Speaker- and sentence-disjoint splits of the real recorded speech (``../shared/data``).

- AN4: every 6th speaker (sorted names, 13 of 74) is the test set, and every 12th from
  the 4th (6 others) the validation set; both are left out of pretraining too.
- LJ Speech (one speaker): the last 60 sentence ids are the test set, the 30 before
  them the validation set; both are left out of pretraining.
- FSDD: one speaker (``fsdd_test_speaker``) is the test set, left out of pretraining.
- LibriSpeech train-clean-100 clips (no transcripts): unlabeled, pretraining and speakers only.

``unlabeled-real`` is every file pretraining may read. The label-efficiency experiment and
the default-model recipe both read these splits, so their held-out speakers are the same.
"""

from __future__ import annotations

import json
from pathlib import Path

from speechssl.data.manifest import Utterance, build_manifest, write_manifest

AN4_TEST_EVERY, AN4_VALID_FROM, AN4_VALID_EVERY = 6, 3, 12
LJ_TEST, LJ_VALID = 60, 30
FSDD_TEST_SPEAKER = "yweweler"
SPLITS = ("an4-train", "an4-valid", "an4-test", "lj-train", "lj-valid", "lj-test", "fsdd-train", "fsdd-test",
          "librispeech", "unlabeled-real")


def real_splits(data: str | Path, fsdd_test_speaker: str = FSDD_TEST_SPEAKER) -> dict[str, list[Utterance]]:
    """Split name (SPLITS) -> its utterances, from the shared data folder ``data``."""
    data = Path(data)
    if not data.is_dir():
        raise FileNotFoundError(f"real speech folder not found: {data}")
    an4 = build_manifest(data / "an4", "an4")
    speakers = sorted({u.speaker for u in an4})
    test_spk = set(speakers[::AN4_TEST_EVERY])
    valid_spk = set(speakers[AN4_VALID_FROM::AN4_VALID_EVERY]) - test_spk
    lj = sorted(build_manifest(data / "ljspeech", "ljspeech"), key=lambda u: u.id)
    fsdd = build_manifest(data / "fsdd" / "recordings", "fsdd")
    if not any(u.speaker == fsdd_test_speaker for u in fsdd):
        raise ValueError(f"no FSDD recordings of speaker {fsdd_test_speaker!r}")
    splits = {
        "an4-train": [u for u in an4 if u.speaker not in test_spk | valid_spk],
        "an4-valid": [u for u in an4 if u.speaker in valid_spk],
        "an4-test": [u for u in an4 if u.speaker in test_spk],
        "lj-train": lj[: -(LJ_TEST + LJ_VALID)],
        "lj-valid": lj[-(LJ_TEST + LJ_VALID): -LJ_TEST],
        "lj-test": lj[-LJ_TEST:],
        "fsdd-train": [u for u in fsdd if u.speaker != fsdd_test_speaker],
        "fsdd-test": [u for u in fsdd if u.speaker == fsdd_test_speaker],
        "librispeech": build_manifest(data / "librispeech-clips" / "train-clean-100", "folder"),
    }
    splits["unlabeled-real"] = splits["an4-train"] + splits["lj-train"] + splits["fsdd-train"] + splits["librispeech"]
    return splits


def write_real_splits(data: str | Path, out: str | Path, fsdd_test_speaker: str = FSDD_TEST_SPEAKER) -> dict:
    """Write ``out/<split>.jsonl`` for every split and ``out/splits.json`` (sizes, held-out speakers)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    splits = real_splits(data, fsdd_test_speaker)
    summary: dict = {}
    for name, rows in splits.items():
        write_manifest(rows, out / f"{name}.jsonl")
        summary[name] = {"utterances": len(rows), "minutes": round(sum(u.duration for u in rows) / 60, 1),
                         "speakers": len({u.speaker for u in rows})}
    summary["an4_test_speakers"] = sorted({u.speaker for u in splits["an4-test"]})
    summary["an4_valid_speakers"] = sorted({u.speaker for u in splits["an4-valid"]})
    summary["fsdd_test_speaker"] = fsdd_test_speaker
    (out / "splits.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
