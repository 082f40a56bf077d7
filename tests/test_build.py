"""speechssl.models.build: every model made from a checkpoint, and the typed metadata it reads."""

from __future__ import annotations

import pytest
import torch

from speechssl.api import DEFAULT_CHECKPOINT
from speechssl.checkpoint import Checkpoint, CheckpointError, CheckpointInfo, load_checkpoint, save_checkpoint
from speechssl.models import build
from speechssl.models.wav2vec2 import Wav2Vec2ForPretraining


def test_the_shipped_model_builds_with_both_heads():
    ckpt = load_checkpoint(DEFAULT_CHECKPOINT)
    assert ckpt.heads == ["ctc", "speaker"] and ckpt.source == str(DEFAULT_CHECKPOINT)
    info = ckpt.info
    assert info.vocab == ckpt.metadata["vocab"] and info.blank_id == 0
    assert info.speaker_threshold == ckpt.metadata["speaker_threshold"] and info.speaker_head is not None
    built = build.from_checkpoint(ckpt)
    assert built.ctc_head.proj.out_features == len(info.vocab)
    assert built.speaker_head.config() == info.speaker_head  # rebuilt from its stored settings, key for key
    for name, tensor in built.encoder.state_dict().items():
        assert torch.equal(tensor, ckpt.state_dict[f"wav2vec2.{name}"])


def test_encoder_overrides_and_scratch(tiny_checkpoint):
    ckpt = load_checkpoint(tiny_checkpoint)
    assert ckpt.heads == [] and build.from_checkpoint(ckpt).ctc_head is None
    tuned = build.encoder(tiny_checkpoint, {"dropout": 0.3})
    assert tuned.config.dropout == 0.3 and tuned.config.hidden_size == ckpt.model_config.hidden_size
    torch.manual_seed(1)
    scratch = build.encoder(ckpt, weights=False)
    name = "encoder.layers.0.feed_forward.output_dense.weight"
    assert not torch.equal(scratch.state_dict()[name], ckpt.state_dict[f"wav2vec2.{name}"])
    whole = Wav2Vec2ForPretraining(ckpt.model_config)
    build.load_weights(whole, tiny_checkpoint)  # every key, the quantizer's too
    assert torch.equal(whole.quantizer.state_dict()["codevectors"], ckpt.state_dict["quantizer.codevectors"])


def test_metadata_is_typed_and_checked(tmp_path, tiny_checkpoint):
    assert CheckpointInfo.parse({}, "x") == CheckpointInfo()
    assert CheckpointInfo.parse({"speaker_threshold": 1, "kind": "ctc", "other": [1]}, "x").speaker_threshold == 1.0
    for bad, words in [({"speaker_threshold": "high"}, "speaker_threshold must be a finite number"),
                       ({"vocab": "abc"}, "vocab must be a list of strings"),
                       ({"blank_id": "first"}, "blank_id must be a whole number")]:
        with pytest.raises(CheckpointError, match=words):
            CheckpointInfo.parse(bad, "x")
    ckpt = load_checkpoint(tiny_checkpoint)
    path = tmp_path / "bad.safetensors"
    save_checkpoint(path, Checkpoint(ckpt.state_dict, ckpt.model_config, {"blank_id": None}))
    with pytest.raises(CheckpointError, match=rf"{path.name}: blank_id must be a whole number"):
        load_checkpoint(path)
