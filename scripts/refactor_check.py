"""Refactor check: the shipped default model's outputs on tests/fixtures/, saved or compared.

    python scripts/refactor_check.py save /tmp/refactor-before.pt      # at the base commit
    python scripts/refactor_check.py compare /tmp/refactor-before.pt   # after the change: exit 1 on any difference

Embeddings (mean and per-frame, last layer and layer 2), CTC emissions, transcripts (text and
word timestamps), speaker vectors and the verify score of every fixture must be bit-identical.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

import speechssl
from speechssl.audio import load_audio

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def outputs() -> dict:
    torch.manual_seed(0)
    model = speechssl.load(device="cpu")
    files = sorted(str(p) for p in FIXTURES.iterdir() if p.suffix in (".wav", ".flac", ".ogg", ".mp3"))
    out: dict = {"heads": model.heads, "files": [Path(f).name for f in files]}
    out["embed_mean"] = [torch.from_numpy(np.asarray(v)) for v in model.embed(files)]
    out["embed_frames_l2"] = [torch.from_numpy(np.asarray(v)) for v in model.embed(files, layer=2, pooling="none")]
    waves = [load_audio(f) for f in files]
    out["emissions"] = model.emissions(waves)
    out["transcripts"] = [t.to_dict() for t in model.transcribe(files)]
    out["speaker_vectors"] = [torch.from_numpy(np.asarray(v)) for v in model.speaker_vector(files)]
    out["verify"] = model.verify(files[0], files[1]).to_dict()
    return out


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def main(argv: list[str]) -> int:
    action, path = argv
    now = outputs()
    if action == "save":
        torch.save(now, path)
        print(f"saved {len(now['files'])} fixtures' outputs to {path}")
        return 0
    before = torch.load(path, weights_only=False)
    bad = [k for k in before if not same(before[k], now.get(k))]
    print("identical" if not bad else f"DIFFERENT: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
