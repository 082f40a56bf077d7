"""``speechssl export-onnx``: the encoder in onnxruntime gives each item of a padded batch what
``SpeechModel.encode`` gives it (valid frames, 1e-4), and its int8 file stays close.

The export tests skip when onnx, onnxscript or onnxruntime are missing (a dev dependency);
the tests of what is refused run without them.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import speechssl
from speechssl import cli
from speechssl.checkpoint import Checkpoint, save_checkpoint
from speechssl.config import tiny
from speechssl.interop import onnx as onnx_export
from speechssl.models.wav2vec2 import Wav2Vec2ForPretraining, Wav2Vec2Model

LENGTHS = [16000, 11000, 6400, 2000]
TOL = 1e-4


def require_onnx():
    for name in onnx_export.PACKAGES:
        pytest.importorskip(name)


def session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the tests share the machine
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def padded(clips: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    waves = np.zeros((len(clips), max(len(c) for c in clips)), np.float32)
    for row, clip in enumerate(clips):
        waves[row, : len(clip)] = clip
    return waves, np.array([len(c) for c in clips], np.int64)


def clips() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in LENGTHS]


@pytest.fixture(scope="module")
def log_mel_checkpoint(tmp_path_factory) -> Path:
    """The shipped model's layout at tiny size: log-mel front end, pre-LN transformer."""
    torch.manual_seed(1)
    module = Wav2Vec2ForPretraining(dataclasses.replace(tiny(), front_end="log_mel", layer_norm_first=True))
    path = tmp_path_factory.mktemp("ckpt") / "log_mel.safetensors"
    save_checkpoint(path, Checkpoint(module.state_dict(), module.config, {"kind": "pretrain"}))
    return path


@pytest.fixture(scope="module", params=["conv", "log_mel"])
def exported(request, tiny_checkpoint, tmp_path_factory):
    """(checkpoint, its ONNX file), written by ``speechssl export-onnx``."""
    require_onnx()
    checkpoint = tiny_checkpoint if request.param == "conv" else request.getfixturevalue("log_mel_checkpoint")
    out = tmp_path_factory.mktemp("onnx") / "encoder.onnx"
    assert cli.main(["export-onnx", str(checkpoint), "--out", str(out)]) == 0
    return checkpoint, out


def test_onnx_matches_encode_per_item_on_a_padded_batch(exported, capsys):
    checkpoint, path = exported
    expected = speechssl.load(checkpoint, device="cpu").encode(clips())
    waves, lengths = padded(clips())
    hidden, frames = session(path).run(None, {"waves": waves, "lengths": lengths})
    assert [int(f) for f in frames] == [len(e) for e in expected]
    for row, want in enumerate(expected):
        np.testing.assert_allclose(hidden[row, : frames[row]], want, atol=TOL, rtol=0)
    # the batch axis is dynamic too: one item alone
    alone, _ = session(path).run(None, {"waves": clips()[1][None], "lengths": lengths[1:2]})
    np.testing.assert_allclose(alone[0], expected[1], atol=TOL, rtol=0)


def test_int8_file_runs_and_stays_close(exported, tmp_path):
    checkpoint, path = exported
    quantized = onnx_export.quantize_int8(path, tmp_path / "int8.onnx")
    assert quantized.stat().st_size < path.stat().st_size
    expected = speechssl.load(checkpoint, device="cpu").encode(clips())
    hidden, frames = session(quantized).run(None, dict(zip(("waves", "lengths"), padded(clips()))))
    for row, want in enumerate(expected):
        got = torch.from_numpy(hidden[row, : frames[row]])
        assert torch.nn.functional.cosine_similarity(got, torch.from_numpy(want), dim=-1).min() > 0.98


def test_export_onnx_int8_flag_writes_the_quantized_file(exported, tmp_path, monkeypatch, capsys):
    """--int8 quantizes what the export wrote (the export itself is the fixture's, copied)."""
    import onnx

    checkpoint, path = exported
    monkeypatch.setattr(onnx_export, "export_encoder", lambda encoder, out: Path(shutil.copy(path, out)))
    out = tmp_path / "int8.onnx"
    assert cli.main(["export-onnx", str(checkpoint), "--out", str(out), "--int8"]) == 0
    assert "(int8," in capsys.readouterr().out
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops


def test_missing_packages_are_named_with_the_pip_command(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    real = onnx_export.importlib.util.find_spec
    monkeypatch.setattr(onnx_export.importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxscript" else real(name, *a))
    assert cli.main(["export-onnx", str(tiny_checkpoint), "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert "onnxscript" in err and "pip install onnx onnxscript onnxruntime" in err
    assert not (tmp_path / "x.onnx").exists()


def test_wavlm_layouts_are_refused_by_name(tmp_path):
    encoder = Wav2Vec2Model(dataclasses.replace(tiny(), rel_pos_bias=True, rel_pos_buckets=32, rel_pos_max_distance=64))
    with pytest.raises(onnx_export.OnnxExportError, match="WavLM"):
        onnx_export.export_encoder(encoder, tmp_path / "x.onnx")
