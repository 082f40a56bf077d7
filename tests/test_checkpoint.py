import pytest
import torch

from speechssl.checkpoint import Checkpoint, CheckpointError, load_checkpoint, load_into, save_checkpoint
from speechssl.config import tiny
from speechssl.models.wav2vec2 import Wav2Vec2ForPretraining, Wav2Vec2Model


@pytest.fixture()
def saved(tmp_path):
    model = Wav2Vec2ForPretraining(tiny())
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, Checkpoint(model.state_dict(), model.config, {"kind": "pretrain", "vocab": ["a"]}))
    return model, path


def test_round_trip(saved):
    model, path = saved
    ckpt = load_checkpoint(path)
    assert ckpt.model_config == model.config
    assert ckpt.metadata == {"kind": "pretrain", "vocab": ["a"]}
    encoder = Wav2Vec2Model(ckpt.model_config)
    load_into(encoder, ckpt.state_dict, prefix="wav2vec2.")
    for name, tensor in model.wav2vec2.state_dict().items():
        assert torch.equal(tensor, encoder.state_dict()[name])
    assert not list(path.parent.glob(".*.tmp")), "atomic write left a temp file"


def test_fp16_storage_loads_as_fp32(saved, tmp_path):
    model, _ = saved
    path = tmp_path / "half.safetensors"
    save_checkpoint(path, Checkpoint(model.state_dict(), model.config), dtype=torch.float16)
    ckpt = load_checkpoint(path)
    assert all(t.dtype == torch.float32 for t in ckpt.state_dict.values() if t.is_floating_point())


def test_truncated_checkpoint_is_a_clear_error(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated|not a readable safetensors"):
        load_checkpoint(cut)


def test_garbage_and_missing_files(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"hello world, not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(junk)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_shape_mismatch_is_named(saved):
    _, path = saved
    ckpt = load_checkpoint(path)
    other = Wav2Vec2Model(tiny().__class__(**{**tiny().__dict__, "ffn_dim": 64}))
    with pytest.raises(CheckpointError, match=r"intermediate_dense.weight has shape \(192, 96\), the config needs \(64, 96\)"):
        load_into(other, ckpt.state_dict, prefix="wav2vec2.")


def test_missing_weights_are_named(saved):
    _, path = saved
    ckpt = load_checkpoint(path)
    state = {k: v for k, v in ckpt.state_dict.items() if "masked_spec_embed" not in k}
    with pytest.raises(CheckpointError, match="missing weight wav2vec2.masked_spec_embed"):
        load_into(Wav2Vec2Model(tiny()), state, prefix="wav2vec2.")
