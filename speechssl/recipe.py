"""The recipe that makes the shipped default model from nothing, stage by stage.

``speechssl recipe configs/recipes/default.yaml`` runs data -> pretrain [-> pretrain2] -> ctc
-> speaker -> evaluate -> package. Each stage calls the same library function as its own CLI
command, with the recipe's paths and settings as overrides; a finished stage is
recorded in ``out_dir/stages.json`` and skipped on the next run, and an unfinished
training stage resumes from its ``resume.pt``. So after a kill the same command goes on
where it stopped, losing at most one checkpoint interval.

Every head is trained from the self-supervised encoder the pretraining makes (HuBERT's
second iteration, ``pretrain2``, when the recipe has one: labels from a layer of the first
iteration's encoder, starting from its weights), on
synthetic and real speech (``speechssl.data.real``'s splits; their held-out speakers are
in no stage but evaluate). The speaker head reads that encoder's frozen layers; CTC
fine-tunes a copy, and the packaged file holds the encoder once plus the weights CTC
changed (``speechssl.models.build.with_ctc_encoder``), so embeddings stay self-supervised.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from speechssl.checkpoint import COHORT_KEY, LM_KEY, Checkpoint, atomic_write, load_checkpoint, save_checkpoint
from speechssl.config import ConfigError, load_config, to_dict
from speechssl.data.real import FSDD_TEST_SPEAKER
from speechssl.device import native_bf16

log = logging.getLogger("speechssl.recipe")

STAGES = ("data", "pretrain", "pretrain2", "ctc", "speaker", "evaluate", "package")


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
    # The real recorded speech (AN4, LJ Speech, FSDD, LibriSpeech clips; ../shared/data here):
    # the recipe's YAML names it, as no path fits every machine.
    real: str | None = None
    fsdd_test_speaker: str = FSDD_TEST_SPEAKER  # held out of every stage, for the digit WER on an unseen voice
    # More synthetic training voices for the speaker stage only (`speechssl data voices`): new
    # pitch/rate settings of the corpus's training voice families; 0 adds none.
    voices: int = 400
    voices_per_speaker: int = 24
    # Kokoro-82M speech (`speechssl data kokoro`, the optional `tts` extra) in the CTC stage:
    # hours of its train split (0: none) and the kokoro-js tarball holding its voices.
    kokoro_hours: float = 0.0
    kokoro_voices: str | None = None

    def validate(self) -> None:
        if self.kokoro_hours < 0 or (self.kokoro_hours and not self.kokoro_voices):
            raise ConfigError("data.kokoro_hours must be >= 0, and data.kokoro_voices must name the kokoro-js "
                              "tarball (npm pack kokoro-js@1.2.1) when it is above 0")
        if not self.real:
            raise ConfigError("data.real: not set; the recipe YAML names the real-speech folder "
                              "(see configs/recipes/default.yaml)")
        if self.voices < 0 or self.voices_per_speaker < 1:
            raise ConfigError("data.voices must be >= 0 and data.voices_per_speaker >= 1")


@dataclass
class EvaluateConfig:
    speaker_per_speaker: int = 40  # test-split utterances per voice in the EER trials
    lm_order: int = 3  # beam search with a word n-gram of the train transcripts; 0 skips it
    # Unigrams of general English (speechssl.decode.ngram.english_words, the `lm` extra) mixed
    # into the n-gram with this weight, so words the transcripts never used can be decoded.
    lm_background_words: int = 0
    lm_background_weight: float = 0.0
    # The beam search's LM weight and word insertion score the package carries; pick them on
    # validation speech with experiments/lm_sweep.py, never on a test set.
    lm_weight: float = 0.5
    word_score: float = 0.0
    # verify's AS-norm cohort (speechssl.metrics.ScoreNorm): this many utterances of each
    # training speaker but the extra synthetic voices, scored against the top score_norm_top_k;
    # its threshold is the EER point of the AN4 validation speakers. 0: plain cosine.
    score_norm_top_k: int = 0
    cohort_per_speaker: int = 4

    def validate(self) -> None:
        if self.lm_background_words < 0 or not 0 <= self.lm_background_weight < 1 or (
                self.lm_background_weight > 0) != (self.lm_background_words > 0):
            raise ConfigError("evaluate.lm_background_words must be >= 0 and evaluate.lm_background_weight in "
                              "[0, 1), both set or both 0")
        if self.score_norm_top_k < 0 or self.cohort_per_speaker < 1:
            raise ConfigError("evaluate.score_norm_top_k must be >= 0 and evaluate.cohort_per_speaker >= 1")


@dataclass
class RecipeConfig:
    pretrain: StageConfig
    ctc: StageConfig
    speaker: StageConfig
    # HuBERT's second iteration on the first one's encoder; null: the heads read the first.
    pretrain2: StageConfig | None = None
    out_dir: str = "runs/default"
    data: DataSources = field(default_factory=DataSources)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    ship_to: str = "speechssl/assets/default.safetensors"
    ship_dtype: str = "float16"  # weights on disk; the model computes in fp32 on CPU
    # Every training stage's run.precision unless its `set` names one. auto: bf16 autocast on a
    # GPU or a CPU that computes bf16 natively (AVX512-BF16 / AMX: faster there, and the log-mel
    # energies and k-means targets stay fp32), fp32 elsewhere (emulated bf16 is ~8x slower on AVX2).
    precision: str = "auto"  # auto | fp32 | bf16

    def validate(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision must be auto, fp32 or bf16, not {self.precision!r}")
        for name in ("pretrain", "pretrain2", "ctc", "speaker"):
            if getattr(self, name) is not None and not Path(getattr(self, name).config).is_file():
                raise ConfigError(f"{name}.config: file not found: {getattr(self, name).config}")
        if self.ship_dtype not in ("float16", "float32"):
            raise ConfigError("ship_dtype must be float16 or float32")


def lm_sentences(out_dir: str | Path) -> list[str]:
    """The word n-gram's text: every training transcript of a recipe run (AN4, LJ Speech, FSDD
    training splits and the synthetic train split)."""
    from speechssl.data.manifest import read_manifest

    out = Path(out_dir)
    manifests = [out / "real" / f"{name}.jsonl" for name in ("an4-train", "lj-train", "fsdd-train")]
    return [u.text for path in [*manifests, out / "corpus" / "train.jsonl"] for u in read_manifest(path) if u.text]


class Recipe:
    def __init__(self, config: RecipeConfig, gpu: bool):
        self.config = config
        self.gpu = gpu
        self.out = Path(config.out_dir)
        self.state_path = self.out / "stages.json"
        self.state = self.read_state()

    def read_state(self) -> dict[str, Any]:
        return json.loads(self.state_path.read_text()) if self.state_path.exists() else {}

    # ---------------------------------------------------------------- paths the stages share
    @property
    def corpus(self) -> Path:
        return self.out / "corpus"

    @property
    def voices(self) -> Path:
        return self.out / "voices"

    @property
    def kokoro(self) -> Path:
        return self.out / "kokoro"

    def real(self, split: str) -> str:
        """A manifest of speechssl.data.real's splits (an4-train, lj-test, fsdd-test, ...)."""
        return str(self.out / "real" / f"{split}.jsonl")

    @property
    def model_path(self) -> Path:
        """The evaluated model, in fp32: the speaker checkpoint with the CTC fine-tune packed in."""
        return self.out / "model.safetensors"

    def best(self, stage: str) -> str:
        return str(self.out / stage / "best.safetensors")

    @property
    def encoder(self) -> str:
        """The self-supervised encoder every head is trained from: the last pretraining iteration's."""
        return self.best("pretrain2" if self.config.pretrain2 else "pretrain")

    def started(self, stage: str) -> bool:
        """An earlier, interrupted run of this training stage left a resume point."""
        return (self.out / stage / "resume.pt").exists()

    # ---------------------------------------------------------------- running
    def run(self, only: list[str] | None = None) -> dict[str, Any]:
        for stage in STAGES:
            if (only and stage not in only) or (stage == "pretrain2" and not self.config.pretrain2):
                continue
            if stage in self.state and not only:
                log.info("stage %s: done earlier (%.0f s), skipped", stage, self.state[stage]["seconds"])
                continue
            log.info("stage %s: starting", stage)
            start = time.monotonic()
            result = getattr(self, f"stage_{stage}")()
            # Re-read first: another process may have finished a stage meanwhile (`--stage`).
            finished = {"seconds": round(time.monotonic() - start, 1), **(result or {})}
            self.state = {**self.read_state(), stage: finished}
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write(self.state_path, lambda tmp: Path(tmp).write_text(json.dumps(self.state, indent=2)))
            log.info("stage %s: done in %.0f s", stage, self.state[stage]["seconds"])
        return self.state

    @property
    def precision(self) -> str:
        """The run.precision the training stages get (auto resolved for this machine)."""
        if self.config.precision != "auto":
            return self.config.precision
        return "bf16" if self.gpu or native_bf16() else "fp32"

    def stage_overrides(self, stage: StageConfig, paths: dict[str, Any]) -> list[str]:
        settings = {"run.precision": self.precision, **stage.set, **(stage.gpu_set if self.gpu else {}), **paths}
        return [f"{key}={json.dumps(value)}" for key, value in settings.items()]

    def stage_data(self) -> dict[str, Any]:
        from speechssl.data.real import write_real_splits
        from speechssl.data.synth import synthesize, synthesize_voices

        src = self.config.data
        hours = src.gpu_corpus_hours if self.gpu else src.corpus_hours
        log.info("%s", synthesize(self.corpus, hours, seed=src.corpus_seed).summary())
        if src.voices:
            log.info("%s", synthesize_voices(self.voices, self.corpus, src.voices, src.voices_per_speaker).summary())
        try:
            real = write_real_splits(src.real, self.out / "real", src.fsdd_test_speaker)
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(f"data.real: {exc}") from None
        kokoro = None
        if src.kokoro_hours:
            from speechssl.data.kokoro import make_kokoro_corpus

            kokoro = make_kokoro_corpus(self.kokoro, self.corpus, [self.real("an4-train"), self.real("lj-train")],
                                        src.kokoro_hours, 0.0, self.out / "kokoro-model", src.kokoro_voices)
        return {"corpus_hours": hours, "voices": src.voices, "kokoro": kokoro,
                "real": {name: split["utterances"] for name, split in real.items() if isinstance(split, dict)}}

    def train_stage(self, name: str, run) -> dict[str, Any]:
        """A training command (``run``: run_pretrain, run_finetune_ctc, ...) on the recipe's paths."""
        stage: StageConfig = getattr(self.config, name)
        summary = run(stage.config, self.stage_overrides(stage, self.stage_paths(name)), resume=self.started(name))
        return {"step": summary.step, "best": summary.best}

    def stage_paths(self, name: str) -> dict[str, Any]:
        """The paths a training stage gets from the recipe, on top of its own config and ``set``."""
        corpus = str(self.corpus / "train.jsonl")
        if name in ("pretrain", "pretrain2"):  # synthetic train split + every real file no evaluation holds out
            paths = {"data.train": [corpus, self.real("unlabeled-real")],
                     "data.valid": [str(self.corpus / "valid.jsonl")], "run.out_dir": str(self.out / name)}
            if name == "pretrain2":  # targets from the first iteration's layers, and its weights as the start
                paths.update({"init_from": self.best("pretrain"), "objective.label_from": self.best("pretrain")})
            return paths
        if name == "ctc":  # in this order (the YAML's data.train_repeats follow it): synthetic, AN4, LJ, FSDD[, Kokoro]
            train = [corpus, self.real("an4-train"), self.real("lj-train"), self.real("fsdd-train")]
            if self.config.data.kokoro_hours:
                train.append(str(self.kokoro / "train.jsonl"))
            return {"init_from": self.encoder, "data.train": train, **self.counts_without_last(self.config.ctc, train),
                    # Real first: validation reads a prefix (data.max_valid_utterances).
                    "data.valid": [self.real("an4-valid"), self.real("lj-valid"), str(self.corpus / "valid.jsonl")],
                    "run.out_dir": str(self.out / "ctc")}
        # speaker: on the self-supervised encoder (frozen), not the CTC-tuned copy. LibriSpeech
        # rows name their speaker only in the file name. In this order (data.train_repeats follow
        # it): synthetic, LibriSpeech, FSDD, AN4[, the extra voices].
        train = [corpus, self.real("librispeech"), self.real("fsdd-train"), self.real("an4-train")]
        if self.config.data.voices:
            train.append(str(self.voices / "train.jsonl"))
        return {"init_from": self.encoder, "finetune_top_layers": 0, "data.train": train,
                **self.counts_without_last(self.config.speaker, train),
                "data.valid": [str(self.corpus / "valid.jsonl"), self.real("an4-valid")],
                "speaker_id_pattern": "^([0-9]+)-", "run.out_dir": str(self.out / "speaker")}

    @staticmethod
    def counts_without_last(stage: StageConfig, train: list[str]) -> dict[str, Any]:
        """The YAML's data.train_repeats count the optional last manifest too (Kokoro speech, the
        extra voices); when it is not made, its count has nothing to count and is dropped."""
        counts = stage.set.get("data.train_repeats") or []
        return {"data.train_repeats": counts[:-1]} if len(counts) == len(train) + 1 else {}

    def stage_pretrain(self) -> dict[str, Any]:
        from speechssl.train.pretrain import run_pretrain

        return self.train_stage("pretrain", run_pretrain)

    def stage_pretrain2(self) -> dict[str, Any]:
        from speechssl.train.pretrain import run_pretrain

        return self.train_stage("pretrain2", run_pretrain)

    def stage_ctc(self) -> dict[str, Any]:
        from speechssl.train.ctc import run_finetune_ctc

        return self.train_stage("ctc", run_finetune_ctc)

    def stage_speaker(self) -> dict[str, Any]:
        from speechssl.train.speaker import run_train_speaker

        return self.train_stage("speaker", run_train_speaker)

    def stage_evaluate(self) -> dict[str, Any]:
        import speechssl
        from speechssl.data.manifest import read_manifest
        from speechssl.decode.ngram import english_words, write_arpa
        from speechssl.evaluation import evaluate_asr
        from speechssl.data.selection import per_speaker_subset
        from speechssl.verification import evaluate_speaker

        lm = None
        chosen = self.config.evaluate
        if chosen.lm_order > 0:  # a word n-gram of every training transcript
            arpa = self.out / f"lm-{chosen.lm_order}gram.arpa"
            background = english_words(chosen.lm_background_words) if chosen.lm_background_words else None
            write_arpa(lm_sentences(self.out), arpa, order=chosen.lm_order, background=background,
                       background_weight=chosen.lm_background_weight)
            lm = arpa.read_bytes()
        self.combine(lm)
        if self.config.evaluate.score_norm_top_k:
            self.add_cohort()
        model = speechssl.load(self.model_path)
        tests = {"synthetic": read_manifest(self.corpus / "test.jsonl"), "an4": read_manifest(self.real("an4-test")),
                 "lj": read_manifest(self.real("lj-test")), "fsdd": read_manifest(self.real("fsdd-test"))}
        decodings = ["greedy", "beam_lm"] if lm else ["greedy"]
        results: dict[str, Any] = {f"asr_{name}_{how}": evaluate_asr(model, utts, decoding=how)
                                   for name, utts in tests.items() for how in decodings}
        for name in ("synthetic", "an4"):
            speakers = per_speaker_subset(tests[name], self.config.evaluate.speaker_per_speaker, seed=0)
            results[f"speaker_{name}"] = evaluate_speaker(model, speakers)
        atomic_write(self.out / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2)))
        for name, figures in results.items():
            log.info("%s: %s", name, {k: v for k, v in figures.items() if k in ("wer", "cer", "eer", "min_dcf")})
        return {"results": str(self.out / "results.json"), "model": str(self.model_path)}

    def combine(self, lm: bytes | None) -> None:
        """model.safetensors: the speaker checkpoint (self-supervised encoder + speaker head), the
        CTC head and the encoder weights CTC changed, and the word n-gram ``lm`` (ARPA text)."""
        import gzip

        from speechssl.decode.ctc import BeamSettings
        from speechssl.models.build import with_ctc_encoder

        speaker, ctc = load_checkpoint(self.best("speaker")), load_checkpoint(self.best("ctc"))
        state = with_ctc_encoder(speaker, ctc)
        metadata = {**speaker.metadata, **{k: ctc.metadata[k] for k in ("vocab", "blank_id") if k in ctc.metadata},
                    "ctc": {k: ctc.metadata.get(k) for k in ("step", "frozen_layers", "init_from")}}
        if lm is not None:
            state[LM_KEY] = torch.frombuffer(bytearray(gzip.compress(lm, mtime=0)), dtype=torch.uint8)
            settings, chosen = BeamSettings(), self.config.evaluate
            metadata["lm"] = {"order": chosen.lm_order, "beam_size": settings.beam_size,
                              "lm_weight": chosen.lm_weight, "word_score": chosen.word_score,
                              "text": "the training transcripts (synthetic train split, AN4, LJ Speech, FSDD)"
                              + (f", mixed with the unigrams of {chosen.lm_background_words} general English words "
                                 f"(wordfreq, CC BY-SA 4.0) at weight {chosen.lm_background_weight}"
                                 if chosen.lm_background_words else "")}
        save_checkpoint(self.model_path, Checkpoint(state, ctc.model_config, metadata))

    def speaker_rows(self, manifests: list[str]) -> list:
        """The rows of ``manifests`` with their speakers, as the speaker stage labels them."""
        from speechssl.data.manifest import read_manifest
        from speechssl.data.selection import with_speakers

        pattern = self.stage_paths("speaker")["speaker_id_pattern"]
        return with_speakers([u for p in manifests for u in read_manifest(p)], pattern)

    def cohort_utterances(self) -> list:
        """The utterances whose speaker vectors are verify's AS-norm cohort: ``evaluate.cohort_per_speaker``
        of each training speaker of the speaker stage, not the extra synthetic voices (with them in
        the cohort the validation EER rose, docs/results/score-norm.md)."""
        from speechssl.data.selection import per_speaker_subset

        train = [p for p in self.stage_paths("speaker")["data.train"] if p != str(self.voices / "train.jsonl")]
        return per_speaker_subset(self.speaker_rows(train), self.config.evaluate.cohort_per_speaker, seed=1)

    def add_cohort(self) -> None:
        """model.safetensors gains verify's AS-norm cohort: speaker vectors of the speaker stage's
        training speakers, and the normalised score's threshold at the EER point of the real
        validation speakers (AN4's): the voices the service is for. The synthetic validation
        voices' point sits far higher and rejected 60% of real same-speaker pairs."""
        import speechssl
        from speechssl.data.selection import per_speaker_subset
        from speechssl.verification import cohort_vectors, norm_threshold

        chosen = self.config.evaluate
        model = speechssl.load(self.model_path)
        cohort = cohort_vectors(model, self.cohort_utterances())
        valid = per_speaker_subset(self.speaker_rows([self.real("an4-valid")]), 40, seed=0)
        norm, figures = norm_threshold(model, cohort, chosen.score_norm_top_k, valid)
        ckpt = load_checkpoint(self.model_path)
        ckpt.state_dict[COHORT_KEY] = torch.from_numpy(norm.cohort)
        ckpt.metadata["speaker_norm"] = {"top_k": norm.top_k, "threshold": norm.threshold, "validation": figures,
                                         "cohort": f"{len(cohort)} utterances, {chosen.cohort_per_speaker} per "
                                                   "training speaker of the speaker stage (not data.voices)"}
        save_checkpoint(self.model_path, ckpt)
        log.info("cohort: %d vectors, top %d; validation EER %.4f (cosine %.4f)", len(cohort), norm.top_k,
                 figures["eer"], figures["cosine_eer"])

    def stage_package(self) -> dict[str, Any]:
        ckpt = load_checkpoint(self.model_path)
        results = json.loads((self.out / "results.json").read_text())
        ckpt.metadata.update({
            "kind": "default", "recipe": to_dict(self.config), "gpu": self.gpu,
            "stage_seconds": {name: s["seconds"] for name, s in self.state.items()},
            "pretraining": self.state.get("pretrain", {}),
            **({"pretraining_iteration2": self.state["pretrain2"]} if "pretrain2" in self.state else {}),
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
