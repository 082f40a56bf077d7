import numpy as np
import pytest
import torch

import speechssl
from speechssl.audio import AudioError
from speechssl.checkpoint import CheckpointError
from speechssl.config import tiny
from tests.conftest import require_fsdd


@pytest.fixture(scope="module")
def model_path(tiny_checkpoint):
    return tiny_checkpoint


def test_embed_path_bytes_and_array_agree(model_path):
    clip = sorted(require_fsdd().glob("*.wav"))[0]
    model = speechssl.load(model_path, device="cpu")
    from_path = model.embed(str(clip))
    from_bytes = model.embed(clip.read_bytes())
    import soundfile as sf

    wave, rate = sf.read(clip, dtype="float32")
    from_array = model.embed(wave, sample_rate=rate)
    assert from_path.shape == (tiny().hidden_size,) and from_path.dtype == np.float32
    np.testing.assert_allclose(from_path, from_bytes, atol=1e-6)
    np.testing.assert_allclose(from_path, from_array, atol=1e-6)


def test_frames_layers_and_lists(model_path):
    model = speechssl.load(model_path, device="cpu")
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 8000, 24000)]
    frames = model.embed(waves, sample_rate=16000, pooling="none")
    assert [f.shape[0] for f in frames] == [49, 24, 74]
    alone = model.embed(waves[1], sample_rate=16000, pooling="none")
    # On a CPU these lengths are too far apart to share a batch (padding over 10%); one padded
    # batch of all three gives the same frames: neither batching nor padding changes results.
    assert model.max_padding == 0.1
    model.max_padding = None
    padded = model.embed(waves, sample_rate=16000, pooling="none")
    for a, b in ((frames[1], alone), (padded[1], alone), (padded[2], frames[2])):
        np.testing.assert_allclose(a, b, atol=1e-5)
    first = model.embed(waves[0], sample_rate=16000, layer=1)
    full = model.encoder(torch.from_numpy(waves[0])[None], num_layers=None).hidden_states[1]
    np.testing.assert_allclose(first, full[0].mean(0).detach().numpy(), atol=1e-5)


def test_bad_arguments_and_audio(model_path):
    model = speechssl.load(model_path, device="cpu")
    with pytest.raises(ValueError, match="layer must be between 0 and 2"):
        model.embed(np.zeros(16000, np.float32), sample_rate=16000, layer=7)
    with pytest.raises(ValueError, match="pooling must be 'mean' or 'none'"):
        model.embed(np.zeros(16000, np.float32), sample_rate=16000, pooling="max")
    with pytest.raises(AudioError):
        model.embed(b"not audio at all")


def test_missing_checkpoint_is_clear(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        speechssl.load(tmp_path / "nope.safetensors")
