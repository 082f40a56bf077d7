"""Kokoro training speech: the held-out voices, the voice mixes, and assembling its files.

Rendering needs the optional `tts` extra and the model files; the parts below do not, and the
recipe's use of a real Kokoro corpus is measured in docs/results/kokoro.md.
"""
from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from speechssl.data import kokoro


def _styles() -> dict[str, np.ndarray]:
    names = [f"af_{i}" for i in range(10)] + [f"am_{i}" for i in range(8)] + [f"bf_{i}" for i in range(3)] + \
            [f"bm_{i}" for i in range(3)] + list(kokoro.TEST_VOICES)
    return {n: np.full((4, 1, 256), i, dtype=np.float32) for i, n in enumerate(names)}


def test_test_voices_never_read_train_and_mixes_are_seeded():
    voices = kokoro.voice_set(_styles(), mixes=5, seed=0)
    train_names = {v.name for v in voices["train"]}
    assert {v.name for v in voices["test"]} == set(kokoro.TEST_VOICES)
    assert not any(t in name for t in kokoro.TEST_VOICES for name in train_names)
    assert len(voices["train"]) == 24 + 5
    mixes = [v for v in voices["train"] if "+" in v.name]
    again = [v for v in kokoro.voice_set(_styles(), mixes=5, seed=0)["train"] if "+" in v.name]
    assert [v.name for v in mixes] == [v.name for v in again]
    other = [v.name for v in kokoro.voice_set(_styles(), mixes=5, seed=1)["train"] if "+" in v.name]
    assert other != [v.name for v in mixes]
    # A mix lies between its two voices' style vectors, and speaks the first one's accent.
    mix = mixes[0]
    a, b = mix.name.split("@")[0].split("+")
    lo, hi = sorted((_styles()[a][0, 0, 0], _styles()[b][0, 0, 0]))
    assert lo < mix.style[0, 0, 0] < hi
    assert mix.lang == ("en-gb" if a.startswith("b") else "en-us")


def _tarball(path, names, frames=3) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name in names:
            data = np.zeros(frames * 256, dtype=np.float32).tobytes()
            info = tarfile.TarInfo(f"package/voices/{name}.bin")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_missing_model_parts_and_bad_tarball_are_named(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "kokoro-v1.0.int8.onnx").write_bytes(b"assembled earlier")  # the voices step alone
    _tarball(tmp_path / "few.tgz", ["af_a", "am_b", "ef_dora"])
    with pytest.raises(kokoro.KokoroError, match="2 English voices, expected 28"):
        kokoro.prepare_kokoro(cache, tmp_path / "few.tgz")
    (tmp_path / "junk.tgz").write_bytes(b"not a tarball")
    with pytest.raises(kokoro.KokoroError, match="not the kokoro-js tarball"):
        kokoro.prepare_kokoro(cache, tmp_path / "junk.tgz")
    english = list(_styles())
    _tarball(tmp_path / "ok.tgz", english + ["jf_alpha"])
    model, voices = kokoro.prepare_kokoro(cache, tmp_path / "ok.tgz")
    styles = np.load(voices)
    assert sorted(styles.files) == sorted(english) and styles[english[0]].shape == (3, 1, 256)
    monkeypatch.setattr(kokoro, "MODEL_PARTS", ["speechssl_no_such_part"])
    with pytest.raises(kokoro.KokoroError, match="speechssl_no_such_part is not installed"):
        kokoro.prepare_kokoro(tmp_path / "fresh", tmp_path / "ok.tgz")
    assert not (tmp_path / "fresh" / "kokoro-v1.0.int8.onnx").exists()
