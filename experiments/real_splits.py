"""Speaker- and sentence-disjoint splits of the real speech in ../shared/data, as manifests.

    python experiments/real_splits.py --out runs/real

The splits are speechssl.data.real's (the default-model recipe makes the same ones in its
data stage): 13 held-out AN4 test speakers and 6 validation speakers, the last 60 LJ Speech
sentences as test and the 30 before them as validation, FSDD speaker yweweler as test, and
the LibriSpeech clips unlabeled. Writes an4-{train,valid,test}, lj-{train,valid,test},
fsdd-{train,test}, librispeech and unlabeled-real (every file pretraining may read) .jsonl.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speechssl.data.real import write_real_splits  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data", help="the shared real-speech folder")
    parser.add_argument("--out", default="runs/real")
    args = parser.parse_args()
    print(json.dumps(write_real_splits(args.data, args.out), indent=2))


if __name__ == "__main__":
    main()
