import json
import os
from pathlib import Path

import pytest
import soundfile as sf

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FSDD = SHARED / "data" / "fsdd" / "recordings"

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
