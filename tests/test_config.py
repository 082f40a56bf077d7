import dataclasses

import pytest

from speechssl.config import ConfigError, ModelConfig, base, build_model_config, large, load_config, small, tiny
from speechssl.train.pretrain import PretrainConfig


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_presets_build_on_each_other():
    assert base().num_layers == 12 and base().hidden_size == 768 and base().conv_norm == "group"
    assert large().hidden_size == 1024 and large().layer_norm_first and large().conv_norm == "layer"
    assert small().conv_strides == base().conv_strides  # still 50 frames per second
    assert tiny().mask_prob == small().mask_prob
    assert base().receptive_field == 400 and base().frame_stride == 320


def test_yaml_and_overrides(tmp_path):
    path = write(tmp_path, "model: {preset: tiny}\ndata: {train: [a.jsonl]}\noptim: {lr: 1e-3}\n")
    config = load_config(PretrainConfig, path, ["optim.max_steps=7", "model.num_layers=3", "run.max_minutes=1.5"])
    assert config.optim.lr == pytest.approx(1e-3)
    assert config.optim.max_steps == 7 and config.run.max_minutes == 1.5
    model = config.model_config()
    assert model.num_layers == 3 and model.hidden_size == tiny().hidden_size


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("data: {train: [a]}\noptim: {lrr: 1}\n", [], "unknown config key optim.lrr"),
        ("data: {train: [a]}\n", ["optim.max_steps=ten"], "optim.max_steps: expected int, got 'ten'"),
        ("data: {train: [a]}\n", ["model.num_layerz=2"], "unknown config key model.num_layerz"),
        ("data: {train: [a]}\n", ["model.preset=huge"], "unknown model preset 'huge'"),
        ("data: {train: [a]}\n", ["model.conv_norm=batch"], "model.conv_norm: must be one of 'group', 'layer'"),
        ("data: {train: [a]}\n", ["model.hidden_size=100"], "divisible by model.num_heads"),
        ("data: {train: [a]}\n", ["model.rel_pos_bias=true", "model.rel_pos_buckets=3"],
         "model.rel_pos_buckets must be >= 4, got 3"),
        ("data: {train: [a]}\n", ["model.rel_pos_bias=true", "model.rel_pos_max_distance=80"],
         "model.rel_pos_max_distance (80) must exceed a quarter of model.rel_pos_buckets (80)"),
        ("data: {train: a.jsonl}\n", [], "data.train: expected a list"),
        ("data: [1, 2]\n", [], "data: expected a mapping"),
        ("- just\n- a list\n", [], "top level must be a mapping"),
        ("a: [unclosed\n", [], "not valid YAML"),
        ("optim: {lr: 1}\n", [], "data.train: give at least one training manifest"),
        ("data: {train: [a]}\n", ["noequals"], "is not key=value"),
    ],
)
def test_config_errors_name_the_key(tmp_path, text, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_config(PretrainConfig, write(tmp_path, text), overrides)


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(PretrainConfig, "/nonexistent/x.yaml")


def test_model_config_round_trips_through_dict():
    cfg = build_model_config({"preset": "small", "num_layers": 4})
    assert build_model_config({"preset": "base", **dataclasses.asdict(cfg)}) == cfg
    assert isinstance(cfg, ModelConfig)


def test_frame_spacing_follows_the_front_end():
    from speechssl.config import SAMPLE_RATE, PRESETS, ModelConfig

    for name, preset in PRESETS.items():
        config = preset()
        assert config.frame_stride == 320 and config.frame_seconds == 0.02 and config.frames_per_second == 50, name
    slower = ModelConfig(front_end="log_mel", mel_frame_stride=4)
    assert slower.frame_stride == 640 and slower.frame_seconds == 640 / SAMPLE_RATE == 0.04
