"""The default-model recipe: its config, its stage overrides, and (slow) a whole tiny run."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from speechssl.config import ConfigError, load_config
from speechssl.recipe import STAGES, Recipe, RecipeConfig, run_recipe
from tests.conftest import require_fsdd

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "configs" / "recipes" / "default.yaml"


@pytest.fixture(autouse=True)
def at_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)  # the recipe names configs/... relative to the repo


def test_the_shipped_recipe_config_is_valid(tmp_path):
    config = load_config(RecipeConfig, DEFAULT, [f"out_dir={tmp_path}"])
    assert config.ship_to == "speechssl/assets/default.safetensors" and config.ship_dtype == "float16"
    assert config.data.fsdd_test_speaker == "yweweler"
    # Every stage's config, `set` and the recipe's paths load together: a typo or a
    # data.train_repeats that does not match the recipe's manifests would only fail mid-recipe.
    from speechssl.train.ctc import CtcConfig
    from speechssl.train.pretrain import PretrainConfig
    from speechssl.train.speaker import SpeakerConfig

    # Without the optional last manifests (Kokoro for ctc, the extra voices for speaker) their
    # counts are dropped from data.train_repeats.
    without = load_config(RecipeConfig, DEFAULT, [f"out_dir={tmp_path}", "data.voices=0", "data.kokoro_hours=0"])
    for config, gpu in ((config, False), (config, True), (without, False)):
        recipe = Recipe(config, gpu=gpu)
        assert recipe.stage_paths("ctc")["init_from"] == recipe.stage_paths("speaker")["init_from"] \
            == recipe.best("pretrain2")  # every head reads the second iteration's encoder
        assert recipe.stage_paths("pretrain2")["objective.label_from"] == recipe.best("pretrain")
        for stage, cls in (("pretrain", PretrainConfig), ("pretrain2", PretrainConfig), ("ctc", CtcConfig),
                           ("speaker", SpeakerConfig)):
            paths = {**recipe.stage_paths(stage), **({"init_from": str(DEFAULT)} if stage != "pretrain" else {})}
            load_config(cls, getattr(config, stage).config, recipe.stage_overrides(getattr(config, stage), paths))


def test_gpu_settings_only_on_a_gpu(tmp_path):
    config = load_config(RecipeConfig, DEFAULT, [f"out_dir={tmp_path}"])
    cpu, gpu = Recipe(config, gpu=False), Recipe(config, gpu=True)
    paths = {"run.out_dir": "x"}
    assert "optim.max_steps=9000" in cpu.stage_overrides(config.pretrain, paths)
    assert "optim.max_steps=20000" in gpu.stage_overrides(config.pretrain, paths)
    assert 'model.preset="base"' in gpu.stage_overrides(config.pretrain, paths)
    assert not any(o.startswith("model.preset") for o in cpu.stage_overrides(config.pretrain, paths))
    assert cpu.stage_overrides(config.pretrain, paths)[-1] == 'run.out_dir="x"'  # the recipe's paths win


def test_training_stages_get_the_recipe_precision_unless_their_set_names_one(tmp_path):
    paths = {"run.out_dir": "x"}
    for precision in ("fp32", "bf16"):
        config = load_config(RecipeConfig, DEFAULT, [f"out_dir={tmp_path}", f"precision={precision}"])
        recipe = Recipe(config, gpu=False)
        assert f'run.precision="{precision}"' in recipe.stage_overrides(config.ctc, paths)
        config.ctc.set["run.precision"] = "fp32"  # a stage's own setting wins
        assert recipe.stage_overrides(config.ctc, paths).count('run.precision="fp32"') == 1
    config = load_config(RecipeConfig, DEFAULT, [f"out_dir={tmp_path}"])
    assert Recipe(config, gpu=True).precision == "bf16"
    with pytest.raises(ConfigError, match="precision must be auto, fp32 or bf16"):
        load_config(RecipeConfig, DEFAULT, [f"out_dir={tmp_path}", "precision=fp16"])


def test_without_a_second_iteration_the_heads_read_the_first(tmp_path):
    config = load_config(RecipeConfig, DEFAULT, [f"out_dir={tmp_path}", "pretrain2=null"])
    recipe = Recipe(config, gpu=False)
    assert recipe.stage_paths("ctc")["init_from"] == recipe.stage_paths("speaker")["init_from"] \
        == str(tmp_path / "pretrain" / "best.safetensors")
    with pytest.raises(ConfigError, match="pretrain2.config: file not found"):
        load_config(RecipeConfig, DEFAULT, ["pretrain2.config=configs/pretrain/nope.yaml"])


def test_two_stage_runs_at_once_keep_each_others_records(tmp_path, monkeypatch):
    """`--stage speaker` and `--stage ctc` in two processes: each read stages.json when it
    started, and the one that finishes last must not drop the other's entry."""
    config = load_config(RecipeConfig, DEFAULT, [f"out_dir={tmp_path}"])
    first, second = Recipe(config, gpu=False), Recipe(config, gpu=False)
    monkeypatch.setattr(Recipe, "stage_speaker", lambda self: {"best": "speaker.safetensors"})
    monkeypatch.setattr(Recipe, "stage_ctc", lambda self: {"best": "ctc.safetensors"})
    first.run(only=["speaker"])
    second.run(only=["ctc"])
    state = json.loads((tmp_path / "stages.json").read_text())
    assert state["speaker"]["best"] == "speaker.safetensors" and state["ctc"]["best"] == "ctc.safetensors"


@pytest.mark.parametrize("overrides, message", [
    (["pretrain.config=configs/pretrain/nope.yaml"], "pretrain.config: file not found: configs/pretrain/nope.yaml"),
    (["ship_dtype=int8"], "ship_dtype must be float16 or float32"),
    (["ctc.sett={a: 1}"], "unknown config key ctc.sett"),
    (["data.corpus_hours=lots"], "data.corpus_hours: expected float"),
    (["data.voices=-1"], "data.voices must be >= 0"),
    (["data.kokoro_hours=1", "data.kokoro_voices=null"], "data.kokoro_voices must name the kokoro-js tarball"),
    (["evaluate.lm_background_weight=0"], "evaluate.lm_background_words must be >= 0 .* both set or both 0"),
    (["evaluate.lm_background_weight=1.0"], "evaluate.lm_background_weight in"),
])
def test_bad_recipe_configs_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RecipeConfig, DEFAULT, overrides)


def test_unknown_stage_and_missing_stage_config(tmp_path):
    with pytest.raises(ConfigError, match="unknown stage 'finetune'; stages: data, pretrain, pretrain2, ctc"):
        run_recipe(str(DEFAULT), [f"out_dir={tmp_path}"], only=["finetune"])
    bad = tmp_path / "recipe.yaml"
    bad.write_text("out_dir: x\npretrain: {config: configs/pretrain/small.yaml}\n")
    with pytest.raises(ConfigError, match="missing config key ctc"):
        load_config(RecipeConfig, bad)


@pytest.mark.slow
def test_a_tiny_recipe_end_to_end_and_resumed(tmp_path):
    """data -> pretrain -> pretrain2 -> ctc -> speaker -> evaluate -> package on a 0.2 h corpus (0.1 h gives one
    validation utterance per voice: no same-speaker trial), a few steps each;
    the packaged file holds both heads in fp16 and loads; a second run skips every stage."""
    if not shutil.which("espeak-ng"):
        pytest.skip("espeak-ng is not installed (make test installs it)")
    require_fsdd()
    import speechssl
    from speechssl.checkpoint import COHORT_KEY, LM_KEY, load_checkpoint, read_header
    from safetensors import safe_open

    out, ship = tmp_path / "recipe", tmp_path / "default.safetensors"
    tiny = "run.valid_every: 2, run.progress: false"
    overrides = [
        f"out_dir={out}", f"ship_to={ship}", "data.corpus_hours=0.2", "evaluate.speaker_per_speaker=3",
        "evaluate.lm_order=2", "data.voices=3", "data.voices_per_speaker=2",
        "data.kokoro_hours=0",  # the Kokoro extra is optional (and 15 min of synthesis): CI has none
        f"pretrain.set={{optim.max_steps: 3, data.max_valid_utterances: 4, {tiny}}}",
        f"pretrain2.set={{optim.max_steps: 3, data.max_valid_utterances: 4, objective.kmeans_utterances: 20, "
        f"{tiny}}}",
        f"ctc.set={{optim.max_steps: 3, optim.warmup_steps: 1, optim.hold_steps: 1, data.max_valid_utterances: 4, "
        f"{tiny}}}",
        # Valid utterances interleave speaker by speaker: 4 synthetic + 6 AN4 speakers need 20 for same-speaker trials.
        f"speaker.set={{optim.max_steps: 3, per_speaker: 2, valid_per_speaker: 4, data.max_valid_utterances: 24, "
        f"{tiny}}}",
    ]
    state = run_recipe(str(DEFAULT), overrides)
    assert list(state) == list(STAGES)
    assert {state[name]["step"] for name in ("pretrain", "pretrain2", "ctc", "speaker")} == {3}
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {f"asr_{name}_{how}" for name in ("synthetic", "an4", "lj", "fsdd")
                            for how in ("greedy", "beam_lm")} | {"speaker_synthetic", "speaker_an4"}
    assert results["asr_fsdd_greedy"]["utterances"] == 500  # one FSDD speaker, never trained on
    assert results["asr_an4_greedy"]["utterances"] == 162 and results["asr_lj_greedy"]["utterances"] == 60
    assert results["speaker_an4"]["trials"] > 0
    speaker_test = results["speaker_synthetic"]
    assert speaker_test["trials"] == speaker_test["target_trials"] + speaker_test["nontarget_trials"] > 0
    assert "baselines" in speaker_test
    fsdd_train = [json.loads(line) for line in (out / "real" / "fsdd-train.jsonl").read_text().splitlines()]
    assert len(fsdd_train) == 1500 and "yweweler" not in {r["speaker"] for r in fsdd_train}
    held_out = {json.loads(line)["speaker"] for line in (out / "real" / "an4-test.jsonl").read_text().splitlines()}
    pretrain_config = json.loads((out / "pretrain" / "config.json").read_text())
    seen = {json.loads(line).get("speaker") for path in pretrain_config["data"]["train"]
            for line in Path(path).read_text().splitlines()}
    assert len(held_out) == 13 and not held_out & seen
    voices = (out / "voices" / "train.jsonl").read_text().splitlines()
    assert len(voices) == 6  # 3 extra training voices, 2 utterances each, for the speaker stage
    speaker_config = json.loads((out / "speaker" / "config.json").read_text())
    assert str(out / "voices" / "train.jsonl") in speaker_config["data"]["train"]

    with safe_open(str(ship), framework="pt") as f:
        dtypes = {k: str(f.get_tensor(k).dtype) for k in f.keys()}
    assert dtypes.pop(LM_KEY) == "torch.uint8"  # the word n-gram, gzip'd, inside the file
    assert set(dtypes.values()) == {"torch.float16"}
    assert any(k.startswith("ctc_encoder.") for k in dtypes)  # the weights CTC changed, beside the encoder
    assert COHORT_KEY in dtypes  # verify's AS-norm cohort, and the trials scored with it
    assert results["speaker_an4"]["scoring"].startswith("as-norm (top 200") and "eer" in results["speaker_an4"]["cosine"]
    assert json.loads(read_header(ship)["metadata"])["results"]["asr_fsdd_greedy"]["utterances"] == 500
    model = speechssl.load(ship, device="cpu")
    assert model.heads == ["embeddings", "ctc", "speaker"]
    assert model.score_norm is not None and model.score_norm.threshold is not None
    # Embeddings come from the second iteration's encoder; CTC reads its fine-tuned copy.
    assert json.loads((out / "pretrain2" / "config.json").read_text())["objective"]["label_from"] \
        == str(out / "pretrain" / "best.safetensors")
    pretrained = speechssl.load(out / "pretrain2" / "best.safetensors", device="cpu")
    wave = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    assert np.allclose(model.embed(wave, 16000), pretrained.embed(wave, 16000), atol=2e-2)  # fp16 weights
    assert model.ctc_encoder is not model.encoder and model.lm is not None
    assert model.metadata["lm"]["order"] == 2
    # The packaged cosine threshold is the one the speaker stage found; the test figures were taken
    # at verify's threshold, the normalised score's, which the evaluate stage found.
    assert model.speaker_threshold == pytest.approx(load_checkpoint(out / "speaker" / "best.safetensors").metadata[
        "speaker_threshold"])
    assert speaker_test["threshold"] == pytest.approx(model.verify_threshold)
    assert set(speaker_test["at_threshold"]) == {"miss", "false_alarm"}

    again = run_recipe(str(DEFAULT), overrides)  # all done: every stage is skipped
    assert again == state
    ship.unlink()
    run_recipe(str(DEFAULT), overrides, only=["package"])
    assert ship.is_file()
