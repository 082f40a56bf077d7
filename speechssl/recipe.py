"""The recipe that makes the shipped default model from nothing, stage by stage.

``speechssl recipe configs/recipes/default.yaml`` runs data -> pretrain -> ctc -> speaker
-> evaluate -> package. Each stage calls the same library function as its own CLI
command, with the recipe's paths and settings as overrides; a finished stage is
recorded in ``out_dir/stages.json`` and skipped on the next run, and an unfinished
training stage resumes from its ``resume.pt``. So after a kill the same command goes on
where it stopped, losing at most one checkpoint interval.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from speechssl.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from speechssl.config import ConfigError, load_config, to_dict

log = logging.getLogger("speechssl.recipe")

STAGES = ("data", "pretrain", "ctc", "speaker", "evaluate", "package")


@dataclass
class StageConfig:
    config: str  # the stage's own YAML (configs/pretrain/..., configs/ctc/..., configs/speaker/...)
    set: dict[str, Any] = field(default_factory=dict)  # dotted key -> value, on top of it
    gpu_set: dict[str, Any] = field(default_factory=dict)  # more of the same, used when a GPU is found


@dataclass
class DataSources:
    corpus_hours: float = 10.0  # synthetic speech, all splits
    gpu_corpus_hours: float = 50.0
    corpus_seed: int = 0
    # Where the real audio is on this machine, and which FSDD voice to hold out: the recipe's
    # YAML says (configs/recipes/default.yaml); no default here, as no path fits every machine.
    librispeech: str | None = None  # a folder of real unlabeled audio (e.g. LibriSpeech clips)
    fsdd: str | None = None  # the Free Spoken Digit Dataset's recordings folder
    fsdd_test_speaker: str | None = None  # held out of every stage, for the digit WER on an unseen voice
    # More synthetic training voices for the speaker stage only (`speechssl data voices`): new
    # pitch/rate settings of the corpus's training voice families; 0 adds none.
    voices: int = 400
    voices_per_speaker: int = 24

    def validate(self) -> None:
        for name in ("librispeech", "fsdd", "fsdd_test_speaker"):
            if not getattr(self, name):
                raise ConfigError(f"data.{name}: not set; the recipe YAML names it (see configs/recipes/default.yaml)")
        if self.voices < 0 or self.voices_per_speaker < 1:
            raise ConfigError("data.voices must be >= 0 and data.voices_per_speaker >= 1")


@dataclass
class EvaluateConfig:
    speaker_per_speaker: int = 40  # test-split utterances per voice in the EER trials
    lm_order: int = 3  # beam search with a word n-gram of the train transcripts; 0 skips it


@dataclass
class RecipeConfig:
    pretrain: StageConfig
    ctc: StageConfig
    speaker: StageConfig
    out_dir: str = "runs/default"
    data: DataSources = field(default_factory=DataSources)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    ship_to: str = "speechssl/assets/default.safetensors"
    ship_dtype: str = "float16"  # weights on disk; the model computes in fp32 on CPU

    def validate(self) -> None:
        for name in ("pretrain", "ctc", "speaker"):
            if not Path(getattr(self, name).config).is_file():
                raise ConfigError(f"{name}.config: file not found: {getattr(self, name).config}")
        if self.ship_dtype not in ("float16", "float32"):
            raise ConfigError("ship_dtype must be float16 or float32")


class Recipe:
    def __init__(self, config: RecipeConfig, gpu: bool):
        self.config = config
        self.gpu = gpu
        self.out = Path(config.out_dir)
        self.state_path = self.out / "stages.json"
        self.state: dict[str, Any] = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}

    # ---------------------------------------------------------------- paths the stages share
    @property
    def corpus(self) -> Path:
        return self.out / "corpus"

    @property
    def voices(self) -> Path:
        return self.out / "voices"

    def manifest(self, name: str) -> str:
        return str(self.out / "manifests" / f"{name}.jsonl")

    def best(self, stage: str) -> str:
        return str(self.out / stage / "best.safetensors")

    def started(self, stage: str) -> bool:
        """An earlier, interrupted run of this training stage left a resume point."""
        return (self.out / stage / "resume.pt").exists()

    # ---------------------------------------------------------------- running
    def run(self, only: list[str] | None = None) -> dict[str, Any]:
        for stage in STAGES:
            if only and stage not in only:
                continue
            if stage in self.state and not only:
                log.info("stage %s: done earlier (%.0f s), skipped", stage, self.state[stage]["seconds"])
                continue
            log.info("stage %s: starting", stage)
            start = time.monotonic()
            result = getattr(self, f"stage_{stage}")()
            self.state[stage] = {"seconds": round(time.monotonic() - start, 1), **(result or {})}
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write(self.state_path, lambda tmp: Path(tmp).write_text(json.dumps(self.state, indent=2)))
            log.info("stage %s: done in %.0f s", stage, self.state[stage]["seconds"])
        return self.state

    def stage_overrides(self, stage: StageConfig, paths: dict[str, Any]) -> list[str]:
        settings = {**stage.set, **(stage.gpu_set if self.gpu else {}), **paths}
        return [f"{key}={json.dumps(value)}" for key, value in settings.items()]

    def stage_data(self) -> dict[str, Any]:
        from speechssl.data.manifest import build_manifest, write_manifest
        from speechssl.data.synth import synthesize, synthesize_voices

        src = self.config.data
        hours = src.gpu_corpus_hours if self.gpu else src.corpus_hours
        log.info("%s", synthesize(self.corpus, hours, seed=src.corpus_seed).summary())
        if src.voices:
            log.info("%s", synthesize_voices(self.voices, self.corpus, src.voices, src.voices_per_speaker).summary())
        librispeech = build_manifest(src.librispeech, "folder")
        write_manifest(librispeech, self.manifest("librispeech"))
        fsdd = build_manifest(src.fsdd, "fsdd")
        held_out = [u for u in fsdd if u.speaker == src.fsdd_test_speaker]
        if not held_out:
            raise ConfigError(f"data.fsdd_test_speaker: no FSDD recordings of {src.fsdd_test_speaker!r}")
        write_manifest([u for u in fsdd if u.speaker != src.fsdd_test_speaker], self.manifest("fsdd-train"))
        write_manifest(held_out, self.manifest("fsdd-test"))
        return {"corpus_hours": hours, "librispeech_utterances": len(librispeech), "fsdd_utterances": len(fsdd),
                "voices": src.voices}

    def train_stage(self, name: str, run, paths: dict[str, Any]) -> dict[str, Any]:
        """A training command (``run``: run_pretrain, run_finetune_ctc, ...) on the recipe's paths."""
        stage: StageConfig = getattr(self.config, name)
        summary = run(stage.config, self.stage_overrides(stage, paths), resume=self.started(name))
        return {"step": summary.step, "best": summary.best}

    def stage_pretrain(self) -> dict[str, Any]:
        from speechssl.train.pretrain import run_pretrain

        return self.train_stage("pretrain", run_pretrain, {
            "data.train": [str(self.corpus / "train.jsonl"), self.manifest("librispeech")],
            "data.valid": [str(self.corpus / "valid.jsonl")], "run.out_dir": str(self.out / "pretrain")})

    def stage_ctc(self) -> dict[str, Any]:
        from speechssl.train.ctc import run_finetune_ctc

        return self.train_stage("ctc", run_finetune_ctc, {
            "init_from": self.best("pretrain"),
            "data.train": [str(self.corpus / "train.jsonl"), self.manifest("fsdd-train")],
            "data.valid": [str(self.corpus / "valid.jsonl")], "run.out_dir": str(self.out / "ctc")})

    def stage_speaker(self) -> dict[str, Any]:
        from speechssl.train.speaker import run_train_speaker

        # On the fine-tuned encoder, so one encoder serves both heads; LibriSpeech rows name
        # their speaker only in the file name.
        train = [str(self.corpus / "train.jsonl"), self.manifest("librispeech"), self.manifest("fsdd-train")]
        if self.config.data.voices:
            train.append(str(self.voices / "train.jsonl"))
        return self.train_stage("speaker", run_train_speaker, {
            "init_from": self.best("ctc"),
            "data.train": train,
            "data.valid": [str(self.corpus / "valid.jsonl")], "speaker_id_pattern": "^([0-9]+)-",
            "run.out_dir": str(self.out / "speaker")})

    def stage_evaluate(self) -> dict[str, Any]:
        import speechssl
        from speechssl.data.manifest import read_manifest
        from speechssl.decode.ctc import BeamDecoder, BeamSettings
        from speechssl.decode.ngram import write_arpa
        from speechssl.evaluation import evaluate_asr
        from speechssl.data.selection import per_speaker_subset
        from speechssl.verification import evaluate_speaker

        model = speechssl.load(self.best("speaker"))
        test = read_manifest(self.corpus / "test.jsonl")
        results: dict[str, Any] = {"asr_test_greedy": evaluate_asr(model, test)}
        if self.config.evaluate.lm_order > 0:
            arpa = self.out / f"lm-{self.config.evaluate.lm_order}gram.arpa"
            write_arpa([u.text for u in read_manifest(self.corpus / "train.jsonl") if u.text], arpa,
                       order=self.config.evaluate.lm_order)
            decoder = BeamDecoder(model.vocab, BeamSettings(lm=str(arpa)))
            results["asr_test_beam_lm"] = evaluate_asr(model, test, decoder)
        results["digits_held_out_speaker"] = evaluate_asr(model, read_manifest(self.manifest("fsdd-test")))
        speakers = per_speaker_subset(test, self.config.evaluate.speaker_per_speaker, seed=0)
        results["speaker_test"] = evaluate_speaker(model, speakers)
        atomic_write(self.out / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2)))
        for name, figures in results.items():
            log.info("%s: %s", name, {k: v for k, v in figures.items() if k in ("wer", "cer", "eer", "min_dcf")})
        return {"results": str(self.out / "results.json")}

    def stage_package(self) -> dict[str, Any]:
        ckpt = load_checkpoint(self.best("speaker"))
        results = json.loads((self.out / "results.json").read_text())
        ckpt.metadata.update({
            "kind": "default", "recipe": to_dict(self.config), "gpu": self.gpu,
            "stage_seconds": {name: s["seconds"] for name, s in self.state.items()},
            "results": {name: {k: v for k, v in figures.items() if not isinstance(v, (dict, list))}
                        for name, figures in results.items()},
        })
        dtype = torch.float16 if self.config.ship_dtype == "float16" else torch.float32
        ship = Path(self.config.ship_to)
        ship.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(ship, ckpt, dtype=dtype)
        log.info("wrote %s (%.1f MB)", ship, ship.stat().st_size / 1e6)
        return {"shipped": str(ship), "megabytes": round(ship.stat().st_size / 1e6, 1)}


def run_recipe(config_path: str, overrides: list[str], only: list[str] | None = None) -> dict[str, Any]:
    config = load_config(RecipeConfig, config_path, overrides)
    unknown = sorted(set(only or []) - set(STAGES))
    if unknown:
        raise ConfigError(f"unknown stage {unknown[0]!r}; stages: {', '.join(STAGES)}")
    gpu = torch.cuda.is_available()
    log.info("recipe %s on %s", config_path, "GPU" if gpu else "CPU")
    return Recipe(config, gpu).run(only)
