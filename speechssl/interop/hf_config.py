"""transformers ``Wav2Vec2Config`` <-> our ModelConfig: one table of field names both directions
read, and the transformers settings speechssl has no layout for (refused in words)."""

from __future__ import annotations

from speechssl.checkpoint import CheckpointError
from speechssl.config import ConfigError, ModelConfig


class HfInteropError(CheckpointError):
    """A transformers folder or config that speechssl cannot convert; the message says why."""


# (our ModelConfig field, transformers Wav2Vec2Config field): the one table both directions read.
CONFIG_FIELDS = (
    ("conv_dims", "conv_dim"), ("conv_kernels", "conv_kernel"), ("conv_strides", "conv_stride"),
    ("conv_norm", "feat_extract_norm"), ("conv_bias", "conv_bias"), ("hidden_size", "hidden_size"),
    ("num_layers", "num_hidden_layers"), ("num_heads", "num_attention_heads"), ("ffn_dim", "intermediate_size"),
    ("layer_norm_first", "do_stable_layer_norm"), ("pos_conv_kernel", "num_conv_pos_embeddings"),
    ("pos_conv_groups", "num_conv_pos_embedding_groups"), ("layer_norm_eps", "layer_norm_eps"),
    ("dropout", "hidden_dropout"), ("attention_dropout", "attention_dropout"),
    ("activation_dropout", "activation_dropout"), ("feature_dropout", "feat_proj_dropout"),
    ("layer_drop", "layerdrop"), ("mask_prob", "mask_time_prob"), ("mask_length", "mask_time_length"),
    ("min_masks", "mask_time_min_masks"), ("mask_channel_prob", "mask_feature_prob"),
    ("mask_channel_length", "mask_feature_length"), ("num_codevector_groups", "num_codevector_groups"),
    ("num_codevectors", "num_codevectors_per_group"), ("codevector_dim", "codevector_dim"),
    ("proj_codevector_dim", "proj_codevector_dim"),
)
LIST_FIELDS = {"conv_dims", "conv_kernels", "conv_strides"}
# transformers model types with our encoder's layout; HuBERT is wav2vec 2.0's encoder without
# the quantizer (its config has no codevector fields: ours keep their defaults); Data2Vec-Audio
# has layer-norm convs, a post-LN transformer and a stack of positional convs; WavLM adds a gated
# relative position bias to wav2vec 2.0's attention (ModelConfig.rel_pos_bias).
FAMILIES = ("wav2vec2", "hubert", "data2vec-audio", "wavlm")


def hf_config_from_model_config(cfg: ModelConfig, **extra):
    """Our ModelConfig -> ``transformers.Wav2Vec2Config``; ``extra`` sets other fields (vocab_size ...)."""
    from transformers import Wav2Vec2Config

    fields = {hf: getattr(cfg, ours) for ours, hf in CONFIG_FIELDS}
    return Wav2Vec2Config(**fields, feat_extract_activation="gelu", hidden_act="gelu", apply_spec_augment=True, **extra)


def _check_supported(hf_cfg) -> None:
    def unsupported(what: str) -> HfInteropError:
        return HfInteropError(f"unsupported transformers config: {what}")

    model_type = getattr(hf_cfg, "model_type", "wav2vec2")
    if model_type not in FAMILIES:
        raise unsupported(f"model_type={model_type!r} (speechssl has the layout of {', '.join(FAMILIES)})")
    if model_type == "hubert":
        if not getattr(hf_cfg, "feat_proj_layer_norm", True):
            raise unsupported("feat_proj_layer_norm=False (HuBERT without the projection's layer norm)")
        if getattr(hf_cfg, "conv_pos_batch_norm", False):
            raise unsupported("conv_pos_batch_norm=True (batch norm in the positional convolution)")
    for name in ("feat_extract_activation", "hidden_act"):
        if getattr(hf_cfg, name) != "gelu":
            raise unsupported(f"{name}={getattr(hf_cfg, name)!r} (speechssl uses exact 'gelu' only)")
    if getattr(hf_cfg, "feat_extract_norm", "layer") not in ("group", "layer"):
        raise unsupported(f"feat_extract_norm={hf_cfg.feat_extract_norm!r} (use 'group' or 'layer')")
    if getattr(hf_cfg, "add_adapter", False):
        raise unsupported("add_adapter=True (the output adapter after the encoder is not implemented)")
    if getattr(hf_cfg, "adapter_attn_dim", None) is not None:
        raise unsupported("adapter_attn_dim is set (per-layer attention adapters, as in MMS, are not implemented)")
    if len(hf_cfg.conv_dim) != getattr(hf_cfg, "num_feat_extract_layers", len(hf_cfg.conv_dim)):
        raise unsupported(
            f"num_feat_extract_layers={hf_cfg.num_feat_extract_layers} but conv_dim has {len(hf_cfg.conv_dim)} entries"
        )


def model_config_from_hf(hf_cfg, normalize_waveform: bool = False) -> ModelConfig:
    """``transformers.Wav2Vec2Config`` (or ``HubertConfig``, ``Data2VecAudioConfig``, ``WavLMConfig``)
    -> our ModelConfig; unsupported settings raise HfInteropError.

    Training-only settings we have no field for (``final_dropout``,
    ``feat_quantizer_dropout``, loss weights) are dropped: they change no weight
    and no inference output. ``apply_spec_augment=False`` becomes masking off.
    """
    _check_supported(hf_cfg)
    fields = {ours: getattr(hf_cfg, hf) for ours, hf in CONFIG_FIELDS if hasattr(hf_cfg, hf)}
    if hf_cfg.model_type == "data2vec-audio":
        fields.update(pos_conv_kernel=hf_cfg.conv_pos_kernel_size, pos_conv_stack=hf_cfg.num_conv_pos_embeddings,
                      conv_norm="layer", layer_norm_first=False)
    if hf_cfg.model_type == "wavlm":
        fields.update(rel_pos_bias=True, rel_pos_buckets=hf_cfg.num_buckets,
                      rel_pos_max_distance=hf_cfg.max_bucket_distance)
    fields.update({name: list(fields[name]) for name in LIST_FIELDS})
    if not getattr(hf_cfg, "apply_spec_augment", True):
        fields.update(mask_prob=0.0, mask_channel_prob=0.0)
    cfg = ModelConfig(**fields, normalize_waveform=normalize_waveform)
    try:
        cfg.validate()
    except ConfigError as exc:
        raise HfInteropError(f"transformers config gives an invalid speechssl config: {exc}") from None
    return cfg
