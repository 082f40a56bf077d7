"""HuggingFace transformers interop: ``Wav2Vec2Model`` / ``Wav2Vec2ForPreTraining`` /
``Wav2Vec2ForCTC`` folders <-> speechssl checkpoints; ``HubertModel`` / ``HubertForCTC``,
``Data2VecAudioModel`` / ``Data2VecAudioForCTC`` and ``WavLMModel`` / ``WavLMForCTC`` folders
import too (under ``hubert.`` / ``data2vec_audio.`` / ``wavlm.``; Data2Vec's stacked positional
convs are ``ModelConfig.pos_conv_stack``, WavLM's gated relative position bias
``ModelConfig.rel_pos_bias``, under transformers' own parameter names).

Our parameter names are transformers' own, so the mapping is a few renames:

    speechssl                                    transformers
    wav2vec2.<encoder>                           wav2vec2.<encoder> (no prefix in a bare Wav2Vec2Model)
    ...pos_conv_embed.conv.weight_g (1, 1, K)    ...pos_conv_embed.conv.parametrizations.weight.original0
    ...pos_conv_embed.conv.weight_v              ...pos_conv_embed.conv.parametrizations.weight.original1
    quantizer.*, project_hid.*, project_q.*      the same
    ctc_head.proj.*                              lm_head.*

Both use weight norm over the kernel axis (transformers' ``dim=2``: one g per tap).
transformers 5 writes the ``parametrizations`` names; older files hold ``weight_g`` /
``weight_v``, which are read as well.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Literal

import torch

from speechssl.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from speechssl.config import SAMPLE_RATE, ModelConfig
from speechssl.interop.hf_config import HfInteropError, hf_config_from_model_config, model_config_from_hf
from speechssl.interop.hf_tokenizer import read_vocabulary, write_vocabulary
from speechssl.models.wav2vec2 import Wav2Vec2ForPretraining, Wav2Vec2Model

Layout = Literal["auto", "model", "pretraining", "ctc"]

# (speechssl, transformers): key substrings, renamed the same way in both directions.
_RENAMES = (
    ("pos_conv_embed.conv.weight_g", "pos_conv_embed.conv.parametrizations.weight.original0"),
    ("pos_conv_embed.conv.weight_v", "pos_conv_embed.conv.parametrizations.weight.original1"),
    ("ctc_head.proj.", "lm_head."),
)
_PRETRAIN_PREFIXES = ("quantizer.", "project_hid.", "project_q.")
_ENCODER_PARTS = ("feature_extractor.", "feature_projection.", "encoder.", "masked_spec_embed")
_CTC_KEYS = ("ctc_head.proj.weight", "ctc_head.proj.bias")


def rename_key(key: str, to_hf: bool) -> str:
    """One parameter name, speechssl -> transformers (``to_hf``) or back."""
    for ours, theirs in _RENAMES:
        src, dst = (ours, theirs) if to_hf else (theirs, ours)
        if src in key:
            return key.replace(src, dst, 1)
    return key


# --------------------------------------------------------------------------- import


def _read_hf_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, pytorch_model.bin, or their sharded ``*.index.json`` forms."""
    from safetensors.torch import load_file

    def read(path: Path) -> dict[str, torch.Tensor]:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)

    for name in ("model.safetensors", "pytorch_model.bin"):
        if (hf_dir / name).is_file():
            return read(hf_dir / name)
        index = hf_dir / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return {k: v for shard in shards for k, v in read(hf_dir / shard).items()}
    raise HfInteropError(f"{hf_dir}: no model.safetensors or pytorch_model.bin (or their .index.json)")


def _expected_shapes(cfg: ModelConfig, pretraining: bool) -> dict[str, torch.Size]:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = Wav2Vec2ForPretraining(cfg) if pretraining else Wav2Vec2Model(cfg)
    prefix = "" if pretraining else "wav2vec2."
    return {prefix + k: v.shape for k, v in model.state_dict().items()}


def _some(keys: list[str], shown: int = 5) -> str:
    """'a, b, c (and 7 more)' in transformers' names."""
    text = ", ".join(rename_key(k, to_hf=True) for k in keys[:shown])
    return text + (f" (and {len(keys) - shown} more)" if len(keys) > shown else "")


def _check_weights(state: dict[str, torch.Tensor], cfg: ModelConfig, hf_dir: Path) -> None:
    """Every encoder weight present with the config's shape; heads complete or absent; nothing unknown."""
    pretraining = any(k.startswith(_PRETRAIN_PREFIXES) for k in state)
    expected = _expected_shapes(cfg, pretraining)
    if any(k in state for k in _CTC_KEYS):  # lm_head: (vocabulary size, hidden size)
        rows = next(state[k].shape[0] for k in _CTC_KEYS if k in state)
        expected["ctc_head.proj.weight"] = torch.Size([rows, cfg.hidden_size])
        expected["ctc_head.proj.bias"] = torch.Size([rows])
    unknown = sorted(set(state) - set(expected))
    if unknown:
        raise HfInteropError(f"{hf_dir}: weights speechssl has no place for: {_some(unknown)}")
    missing = sorted(set(expected) - set(state))
    if missing:
        raise HfInteropError(f"{hf_dir}: missing weights {_some(missing)}")
    for key, shape in expected.items():
        if state[key].shape != shape:
            raise HfInteropError(f"{hf_dir}: weight {rename_key(key, True)} has shape {tuple(state[key].shape)}, "
                                 f"config.json implies {tuple(shape)}")


def resolve_hf_dir(path: str | Path) -> Path:
    """The model folder ``path`` names: a folder with config.json as it is, or a transformers
    cache entry as it sits on disk (``models--org--name``: its ``refs/main`` snapshot, or its
    only snapshot)."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    snapshots = path / "snapshots"
    if snapshots.is_dir():
        ref = path / "refs" / "main"
        if ref.is_file() and (snapshots / ref.read_text().strip() / "config.json").is_file():
            return snapshots / ref.read_text().strip()
        found = sorted(d for d in snapshots.iterdir() if (d / "config.json").is_file())
        if len(found) == 1:
            return found[0]
        if found:
            raise HfInteropError(f"{path}: {len(found)} snapshots and no refs/main to choose one; "
                                 f"pass one of {', '.join(str(d) for d in found)}")
    raise HfInteropError(f"{path}: no config.json; expected a transformers Wav2Vec2 folder "
                         "or a cache entry (models--org--name) holding one")


def import_hf(hf_dir: str | Path, out_path: str | Path) -> Checkpoint:
    """Convert a transformers Wav2Vec2 folder (or cache entry) into one speechssl checkpoint at ``out_path``."""
    checkpoint = checkpoint_from_hf(hf_dir)
    save_checkpoint(out_path, checkpoint)
    return checkpoint


def checkpoint_from_hf(hf_dir: str | Path) -> Checkpoint:
    """A transformers Wav2Vec2 folder (or cache entry) as a speechssl Checkpoint, in memory."""
    from transformers import AutoConfig

    hf_dir = resolve_hf_dir(hf_dir)
    hf_cfg = AutoConfig.from_pretrained(str(hf_dir))
    family = getattr(hf_cfg, "model_type", "wav2vec2")
    # transformers' feature extractor normalises by default when a folder has no preprocessor config.
    preprocessor = hf_dir / "preprocessor_config.json"
    normalize = json.loads(preprocessor.read_text()).get("do_normalize", True) if preprocessor.is_file() else True
    cfg = model_config_from_hf(hf_cfg, normalize_waveform=bool(normalize))

    state = {}
    for key, tensor in _read_hf_weights(hf_dir).items():
        if key.startswith(_ENCODER_PARTS):
            key = "wav2vec2." + key  # a bare Wav2Vec2Model / HubertModel has no prefix
        elif key.startswith(prefix := family.replace("-", "_") + "."):
            key = "wav2vec2." + key.removeprefix(prefix)  # HubertForCTC: hubert.*, WavLMForCTC: wavlm.* ...
        state[rename_key(key, to_hf=False)] = tensor
    if "wav2vec2.masked_spec_embed" not in state:
        # transformers leaves it out when masking is off; any value will do until masking is on.
        generator = torch.Generator().manual_seed(0)
        state["wav2vec2.masked_spec_embed"] = torch.rand(cfg.hidden_size, generator=generator)
    _check_weights(state, cfg, hf_dir)

    metadata: dict = {"source": {"format": "transformers", "path": str(hf_dir), "family": family,
                                 "architectures": list(hf_cfg.architectures or [])}}
    if "ctc_head.proj.weight" in state:
        vocab = read_vocabulary(hf_dir, state["ctc_head.proj.weight"].shape[0], hf_cfg.pad_token_id)
        if vocab is not None:
            metadata.update(vocab=vocab.tokens, blank_id=vocab.blank_id, special_tokens=vocab.special_tokens)
        else:
            metadata["blank_id"] = int(hf_cfg.pad_token_id if hf_cfg.pad_token_id is not None else 0)
    return Checkpoint(state, cfg, metadata, source=str(hf_dir))


# --------------------------------------------------------------------------- export


def _pick_layout(state: dict[str, torch.Tensor], layout: Layout) -> str:
    has_ctc = all(k in state for k in _CTC_KEYS)
    has_quantizer = any(k.startswith(_PRETRAIN_PREFIXES) for k in state)
    if layout == "auto":
        return "ctc" if has_ctc else "pretraining" if has_quantizer else "model"
    if layout == "ctc" and not has_ctc:
        raise HfInteropError("layout 'ctc' needs a checkpoint with a CTC head (ctc_head.proj.*)")
    if layout == "pretraining" and not has_quantizer:
        raise HfInteropError("layout 'pretraining' needs a checkpoint with quantizer.* and project_* weights")
    if layout not in ("model", "pretraining", "ctc"):
        raise HfInteropError(f"unknown layout {layout!r}; choose auto, model, pretraining or ctc")
    return layout


def hf_state_dict(state: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """Our weights -> the state dict of transformers' class for ``layout``; other heads are left out."""
    keep = ("wav2vec2.",) + (_PRETRAIN_PREFIXES if layout == "pretraining" else ()) + (
        ("ctc_head.proj.",) if layout == "ctc" else ())
    dropped = sorted({k.split(".")[0] for k in state if not k.startswith(keep)})
    if dropped:
        warnings.warn(f"not exported (no place in transformers' {layout} layout): {', '.join(dropped)}", stacklevel=3)
    out = {}
    for key, tensor in state.items():
        if key.startswith(keep):
            key = rename_key(key, to_hf=True)
            out[key.removeprefix("wav2vec2.") if layout == "model" else key] = tensor
    return out


def _blank_id(metadata: dict, vocab: list[str] | None) -> int:
    if "blank_id" in metadata:
        return int(metadata["blank_id"])
    return vocab.index("<pad>") if vocab and "<pad>" in vocab else 0


def export_hf(ckpt_path: str | Path, out_dir: str | Path, layout: Layout = "auto") -> Path:
    """Write ``out_dir`` with config.json, model.safetensors, preprocessor_config.json
    (and, for CTC, vocab.json and the tokenizer files) that transformers' ``from_pretrained`` loads.

    layout: ``model`` (Wav2Vec2Model), ``pretraining`` (Wav2Vec2ForPreTraining),
    ``ctc`` (Wav2Vec2ForCTC), or ``auto``: CTC if the checkpoint has a CTC head,
    else pretraining if it has a quantizer, else the bare encoder.
    """
    import transformers

    checkpoint = load_checkpoint(ckpt_path)
    cfg, metadata = checkpoint.model_config, checkpoint.metadata
    if cfg.front_end != "conv":
        raise HfInteropError(f"{ckpt_path}: a model with the {cfg.front_end} front end has no transformers "
                             "counterpart (Wav2Vec2 reads raw waveforms); only front_end: conv models export")
    if cfg.pos_conv_stack:
        raise HfInteropError(f"{ckpt_path}: export-hf writes wav2vec 2.0 folders, and this model's stacked "
                             "positional convs (pos_conv_stack) are Data2Vec-Audio's")
    if cfg.rel_pos_bias:
        raise HfInteropError(f"{ckpt_path}: export-hf writes wav2vec 2.0 folders, and this model's gated "
                             "relative position bias (rel_pos_bias) is WavLM's")
    layout = _pick_layout(checkpoint.state_dict, layout)
    extra = {}
    vocab = metadata.get("vocab")
    if layout == "ctc":
        num_outputs = checkpoint.state_dict["ctc_head.proj.weight"].shape[0]
        if vocab is not None and len(vocab) != num_outputs:
            raise HfInteropError(f"{ckpt_path}: vocabulary has {len(vocab)} tokens, the CTC head {num_outputs} outputs")
        extra = {"vocab_size": num_outputs, "pad_token_id": _blank_id(metadata, vocab)}
    model_class = {"model": transformers.Wav2Vec2Model, "pretraining": transformers.Wav2Vec2ForPreTraining,
                   "ctc": transformers.Wav2Vec2ForCTC}[layout]
    model = model_class(hf_config_from_model_config(cfg, **extra))

    state = hf_state_dict(checkpoint.state_dict, layout)
    hf_keys = set(model.state_dict())
    # transformers builds no masked_spec_embed when masking is off in the config.
    state = {k: v for k, v in state.items() if k in hf_keys or not k.endswith("masked_spec_embed")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise HfInteropError(f"{ckpt_path}: weights do not fit transformers' {model_class.__name__}: {exc}") from None

    out_dir = Path(out_dir)
    model.save_pretrained(str(out_dir))
    transformers.Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0, do_normalize=cfg.normalize_waveform,
        # transformers' convention: pass an attention mask to layer-norm models only.
        return_attention_mask=cfg.conv_norm == "layer",
    ).save_pretrained(str(out_dir))
    if layout == "ctc" and vocab is not None:
        write_vocabulary(out_dir, vocab, _blank_id(metadata, vocab))
    return out_dir
