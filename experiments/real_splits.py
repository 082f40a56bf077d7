"""Speaker- and sentence-disjoint splits of the real speech in ../shared/data, as manifests.

    python experiments/real_splits.py --out runs/real

- AN4: every 6th speaker (sorted names, 13 of 74) is the test set, and every 12th from
  the 4th (6 others) the validation set; both are left out of pretraining too.
- LJ Speech (one speaker): the last 60 sentence ids are the test set, the 30 before
  them the validation set; both are left out of pretraining.
- FSDD: speaker yweweler is the test set (as the recipe's), left out of pretraining.
- LibriSpeech train-clean-100 clips (no transcripts): unlabeled, pretraining only.

Writes an4-{train,valid,test}, lj-{train,valid,test}, fsdd-{train,test}, librispeech and
unlabeled-real (every file pretraining may read) .jsonl to --out.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from speechssl.data.manifest import build_manifest, write_manifest

AN4_TEST_EVERY, AN4_VALID_FROM, AN4_VALID_EVERY = 6, 3, 12
LJ_TEST, LJ_VALID = 60, 30
FSDD_TEST_SPEAKER = "yweweler"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data", help="the shared real-speech folder")
    parser.add_argument("--out", default="runs/real")
    args = parser.parse_args()
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    an4 = build_manifest(data / "an4", "an4")
    speakers = sorted({u.speaker for u in an4})
    test_spk = set(speakers[::AN4_TEST_EVERY])
    valid_spk = set(speakers[AN4_VALID_FROM::AN4_VALID_EVERY]) - test_spk
    lj = sorted(build_manifest(data / "ljspeech", "ljspeech"), key=lambda u: u.id)
    fsdd = build_manifest(data / "fsdd" / "recordings", "fsdd")
    libri = build_manifest(data / "librispeech-clips" / "train-clean-100", "folder")
    splits = {
        "an4-train": [u for u in an4 if u.speaker not in test_spk | valid_spk],
        "an4-valid": [u for u in an4 if u.speaker in valid_spk],
        "an4-test": [u for u in an4 if u.speaker in test_spk],
        "lj-train": lj[: -(LJ_TEST + LJ_VALID)],
        "lj-valid": lj[-(LJ_TEST + LJ_VALID): -LJ_TEST],
        "lj-test": lj[-LJ_TEST:],
        "fsdd-train": [u for u in fsdd if u.speaker != FSDD_TEST_SPEAKER],
        "fsdd-test": [u for u in fsdd if u.speaker == FSDD_TEST_SPEAKER],
        "librispeech": libri,
    }
    splits["unlabeled-real"] = splits["an4-train"] + splits["lj-train"] + splits["fsdd-train"] + libri
    summary = {}
    for name, rows in splits.items():
        write_manifest(rows, out / f"{name}.jsonl")
        summary[name] = {"utterances": len(rows), "minutes": round(sum(u.duration for u in rows) / 60, 1),
                         "speakers": len({u.speaker for u in rows})}
    summary["an4_test_speakers"], summary["an4_valid_speakers"] = sorted(test_spk), sorted(valid_spk)
    (out / "splits.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
