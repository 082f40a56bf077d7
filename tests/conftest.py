import json
import os
from pathlib import Path

import pytest
import soundfile as sf

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FSDD = SHARED / "data" / "fsdd" / "recordings"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

os.environ.setdefault("OMP_NUM_THREADS", "2")


def require_fsdd() -> Path:
    if not FSDD.is_dir():
        pytest.skip(f"shared data not found at {FSDD}")
    return FSDD


@pytest.fixture(scope="session")
def fsdd_manifest(tmp_path_factory) -> Path:
    """A JSONL manifest of 24 real spoken-digit clips (8 kHz wavs, resampled on load)."""
    root = require_fsdd()
    out = tmp_path_factory.mktemp("fsdd") / "fsdd.jsonl"
    rows = []
    for path in sorted(root.glob("*.wav"))[:24]:
        digit, speaker, _ = path.stem.split("_")
        rows.append({"id": path.stem, "path": str(path), "duration": sf.info(path).duration,
                     "text": digit, "speaker": speaker})
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised `tiny` pretraining checkpoint (seeded), for API and server tests."""
    import torch

    from speechssl.checkpoint import Checkpoint, save_checkpoint
    from speechssl.config import tiny
    from speechssl.models.wav2vec2 import Wav2Vec2ForPretraining

    torch.manual_seed(0)
    module = Wav2Vec2ForPretraining(tiny())
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(path, Checkpoint(module.state_dict(), module.config, {"kind": "pretrain"}))
    return path
