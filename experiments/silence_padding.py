"""Does a transcript survive silence around the speech? WER/CER of each manifest as it is and
with ``--pad`` seconds of silence (digital zeros, or white noise at ``--levels``) before and after.

A user who records one word leaves a pause on each side; FSDD's digits are trimmed to the word,
so a model fine-tuned on them can learn that a clip's edges are the word's.

    python experiments/silence_padding.py --checkpoint runs/v15/model.safetensors \\
        runs/default/real/an4-test.jsonl runs/default/real/fsdd-test.jsonl --json runs/padding.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import speechssl  # noqa: E402
from speechssl.audio import load_audio  # noqa: E402
from speechssl.config import SAMPLE_RATE  # noqa: E402
from speechssl.data.manifest import normalize_text, read_manifest  # noqa: E402
from speechssl.metrics import error_rates  # noqa: E402


def padded(wave: np.ndarray, samples: int, level: float, rng: np.random.Generator) -> np.ndarray:
    side = lambda: (level * rng.standard_normal(samples)).astype(np.float32)  # noqa: E731
    return np.concatenate([side(), wave, side()])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("manifests", nargs="+", help="transcribed manifests (JSONL)")
    parser.add_argument("--checkpoint", default=None, help="a CTC checkpoint; default: the shipped model")
    parser.add_argument("--pad", type=float, default=0.3, help="seconds of silence on each side")
    parser.add_argument("--levels", type=float, nargs="+", default=[0.0, 1e-4, 1e-3],
                        help="amplitude (standard deviation) of the pads' noise; 0 is digital silence")
    parser.add_argument("--decoding", default="auto", help="as `transcribe` takes it: auto (beam + LM) or greedy")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)

    model = speechssl.load(args.checkpoint)
    rows = []
    for path in args.manifests:
        utts = [u for u in read_manifest(path) if u.text]
        refs = [normalize_text(u.text) for u in utts]
        waves = [load_audio(u.path) for u in utts]
        for pad, level in [(0.0, 0.0)] + [(args.pad, level) for level in args.levels]:
            rng = np.random.default_rng(0)
            inputs = [padded(w, int(pad * SAMPLE_RATE), level, rng) for w in waves] if pad else waves
            hyps = [t.text for t in model.transcribe(inputs, SAMPLE_RATE, decoding=args.decoding, timestamps=False)]
            rows.append({"manifest": path, "pad_seconds": pad, "noise_level": level, "utterances": len(utts),
                         **{k: round(v, 4) for k, v in error_rates(refs, hyps).items()}})
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"checkpoint": args.checkpoint or "shipped", "decoding": args.decoding,
                                         "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
