"""The ``speechssl`` command line: thin wrappers over the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

DESCRIPTION = """\
speechssl: self-supervised speech representations (wav2vec 2.0).

Make a corpus, pretrain on unlabeled audio, and embed audio with the result.
Every training command takes a YAML config (see configs/) and key=value
overrides, e.g.  speechssl pretrain configs/pretrain/small.yaml optim.lr=3e-4
"""

EPILOG = """\
examples:
  speechssl data synth --out runs/corpus --hours 1
  speechssl pretrain configs/pretrain/small.yaml run.max_minutes=60
  speechssl pretrain configs/pretrain/small.yaml --resume
  speechssl embed --checkpoint runs/pretrain/checkpoint.safetensors a.wav
"""


def add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override config values, e.g. optim.lr=1e-4 model.num_layers=4")
    parser.add_argument("--resume", action="store_true",
                        help="continue from run.out_dir/resume.pt if it exists (after a crash or kill)")


def add_decoder_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--beam", action="store_true", help="beam search instead of greedy decoding")
    parser.add_argument("--beam-size", type=int, default=50, help="hypotheses kept (default 50)")
    parser.add_argument("--lm", default=None, help="KenLM n-gram (ARPA or binary) for beam search; implies --beam")
    parser.add_argument("--lexicon", default=None, help="lexicon file (word, then its letters and |); "
                        "default: lexicon-free")
    parser.add_argument("--lm-weight", type=float, default=0.5, help="LM weight (default 0.5)")
    parser.add_argument("--word-score", type=float, default=0.0, help="score added per word (default 0)")


def make_decoder(args: argparse.Namespace, vocab: list[str]):
    if not (args.beam or args.lm):
        return None
    from speechssl.decode.ctc import BeamDecoder, BeamSettings

    return BeamDecoder(vocab, BeamSettings(beam_size=args.beam_size, lm=args.lm, lexicon=args.lexicon,
                                           lm_weight=args.lm_weight, word_score=args.word_score))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="speechssl", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data = sub.add_parser("data", help="make a synthetic corpus or a manifest of existing audio",
                          description="Make training data.")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    synth = data_sub.add_parser("synth", help="synthesise a multi-speaker English corpus with espeak-ng/flite/festival",
                                description="Synthesise speech with the Debian synthesizers into 16 kHz wavs and "
                                "train/valid/test manifests that hold out speakers and sentences. Re-running "
                                "skips files that already exist.")
    synth.add_argument("--out", required=True, type=Path, help="output folder")
    synth.add_argument("--hours", required=True, type=float, help="hours of audio to make (all splits)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0): same seed, same corpus")
    synth.add_argument("--jobs", type=int, default=2, help="parallel synthesizer processes (default 2)")

    voices = data_sub.add_parser("voices", help="synthesise more training voices for speaker verification",
                                 description="Add voices to a corpus made by `data synth`, for train-speaker: "
                                 "new pitch/rate settings of its training voice families (never a valid or test "
                                 "voice), reading its training sentences. Writes OUT/train.jsonl; re-running skips "
                                 "files that already exist.")
    voices.add_argument("--corpus", required=True, type=Path, help="the corpus folder (with its synth.json)")
    voices.add_argument("--out", required=True, type=Path, help="output folder")
    voices.add_argument("--speakers", type=int, default=400, help="new voice settings (default 400)")
    voices.add_argument("--per-speaker", type=int, default=24, help="utterances per voice (default 24)")
    voices.add_argument("--jobs", type=int, default=2, help="parallel synthesizer processes (default 2)")

    manifest = data_sub.add_parser("manifest", help="write a JSONL manifest for a folder, LibriSpeech tree or CSV",
                                   description="Scan audio and write JSONL rows {id, path, duration, text?, speaker?}.")
    manifest.add_argument("src", type=Path, help="folder or CSV file")
    manifest.add_argument("--out", required=True, type=Path, help="manifest to write (.jsonl)")
    manifest.add_argument("--format", required=True, choices=["folder", "librispeech", "csv", "fsdd", "an4", "ljspeech"],
                          help="folder: audio + .txt/.lab sidecars; librispeech: SPEAKER/CHAPTER/*.flac + "
                          "*.trans.txt; csv: a header with at least 'path'; fsdd: the Free Spoken Digit "
                          "Dataset's {digit}_{speaker}_{take}.wav (text: the digit's word); an4: CMU AN4's "
                          "etc/ and wav/ folders; ljspeech: metadata.csv + wavs/ (the normalised text)")

    pretrain = sub.add_parser("pretrain", help="self-supervised wav2vec 2.0 pretraining on unlabeled audio",
                              description="Pretrain with the wav2vec 2.0 contrastive + diversity objective, or "
                              "masked prediction (objective.kind=hubert|best_rq). Writes "
                              "checkpoint.safetensors, best.safetensors, resume.pt, metrics.jsonl, "
                              "tensorboard/ and curves.png to run.out_dir. Run under torchrun for DDP.")
    add_overrides(pretrain)

    finetune = sub.add_parser("finetune-ctc", help="fine-tune for speech-to-text with a CTC character head",
                              description="Fine-tune a pretrained checkpoint (init_from) or train the same "
                              "architecture from scratch (init_from=null) with CTC on transcribed audio. Writes "
                              "best.safetensors (lowest validation CER), checkpoint.safetensors, resume.pt, "
                              "metrics.jsonl, tensorboard/ and curves.png to run.out_dir.")
    add_overrides(finetune)

    train_speaker = sub.add_parser("train-speaker", help="train a speaker-vector head (AAM softmax) on the pretrained encoder",
                                   description="Train a SpeakerHead (weighted layer sum, attentive statistics "
                                   "pooling, projection) on the frozen encoder of init_from with AAM softmax over "
                                   "the speaker labels of data.train. The encoder's frames of each training "
                                   "utterance are computed once and cached in run.out_dir. Writes best.safetensors "
                                   "(lowest validation EER; its EER threshold is stored for verify), "
                                   "checkpoint.safetensors, resume.pt, metrics.jsonl, tensorboard/ and curves.png.")
    add_overrides(train_speaker)

    recipe = sub.add_parser("recipe", help="make a model from nothing: data, pretrain, ctc, speaker, evaluate, package",
                            description="Run a recipe (configs/recipes/default.yaml makes the shipped default "
                            "model) stage by stage: data -> pretrain -> ctc -> speaker -> evaluate -> package. "
                            "Finished stages are recorded in out_dir/stages.json and skipped; an interrupted "
                            "training stage resumes from its last checkpoint, so after a kill run the same "
                            "command again.")
    recipe.add_argument("config", help="recipe YAML (e.g. configs/recipes/default.yaml)")
    recipe.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override recipe values, e.g. out_dir=runs/try2 ctc.set={optim.max_steps: 100}")
    recipe.add_argument("--stage", action="append", default=None, metavar="NAME",
                        help="run only this stage, even if it finished before (repeatable)")

    transcribe = sub.add_parser("transcribe", help="speech-to-text with word timestamps",
                                description="Transcribe audio files of any length (long files are decoded in "
                                "overlapping chunks). Greedy decoding unless --beam is given.")
    transcribe.add_argument("files", nargs="+", type=Path, help="audio files (wav, flac, ogg, mp3, ...)")
    transcribe.add_argument("--checkpoint", default=None, help="checkpoint with a CTC head (default: the shipped model)")
    transcribe.add_argument("--format", choices=["text", "json", "srt", "vtt"], default="text",
                            help="text: one line per file; json: text, duration and words with start/end seconds")
    add_decoder_options(transcribe)
    transcribe.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")

    make_lm = sub.add_parser("make-lm", help="build a word n-gram LM (ARPA) from text for beam search",
                             description="Count word n-grams in text files (one sentence per line) and/or the "
                             "transcripts of manifests, normalized like the CTC alphabet, and write an ARPA "
                             "file (interpolated absolute discounting) that --lm accepts.")
    make_lm.add_argument("--text", nargs="*", default=[], type=Path, help="text files, one sentence per line")
    make_lm.add_argument("--manifest", nargs="*", default=[], type=Path, help="manifests whose text fields to use")
    make_lm.add_argument("--order", type=int, default=3, help="n-gram order (default 3)")
    make_lm.add_argument("--out", required=True, type=Path, help="ARPA file to write")

    evaluate = sub.add_parser("evaluate", help="score a checkpoint on a manifest (WER/CER, EER) as JSON",
                              description="Evaluate a checkpoint on a labeled manifest and print JSON.")
    eval_sub = evaluate.add_subparsers(dest="evaluate_command", metavar="TASK", required=True)
    eval_asr = eval_sub.add_parser("asr", help="WER, CER and real-time factor on a transcribed manifest",
                                   description="Transcribe every utterance of a manifest with text and print "
                                   "JSON: wer, cer (jiwer), utterances, audio_seconds, real_time_factor.")
    eval_asr.add_argument("--checkpoint", default=None, help="checkpoint with a CTC head (default: the shipped model)")
    eval_asr.add_argument("--manifest", required=True, type=Path, help="JSONL manifest with text")
    add_decoder_options(eval_asr)
    eval_asr.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")

    eval_speaker = eval_sub.add_parser(
        "speaker", help="speaker verification EER and minDCF, with MFCC and mean-pooled baselines",
        description="Score verification trials by the cosine of speaker vectors and print JSON: eer, min_dcf "
        "(p_target 0.01), eer_threshold, trial counts, the miss and false-alarm rates at the checkpoint's stored "
        "threshold, and the same figures on the same trials for two baselines (mean-pooled encoder features "
        "without the head; mean MFCCs). Trials: every same-speaker pair of the manifest and as many "
        "different-speaker pairs (seeded), or --trials.")
    eval_speaker.add_argument("--checkpoint", default=None, help="checkpoint with a speaker head (default: the shipped model)")
    eval_speaker.add_argument("--manifest", required=True, type=Path, help="JSONL manifest with speaker labels")
    eval_speaker.add_argument("--trials", type=Path, default=None,
                              help="trial file, one 'LABEL A B' per line (LABEL 1/0; A, B manifest ids or paths)")
    eval_speaker.add_argument("--per-speaker", type=int, default=None,
                              help="use at most this many utterances per speaker (seeded draw; default all)")
    eval_speaker.add_argument("--speaker-id-pattern", default=None,
                              help="regex whose group 1 is the speaker, for rows without one, e.g. '^([0-9]+)-'")
    eval_speaker.add_argument("--seed", type=int, default=0, help="seed of the trial draw (default 0)")
    eval_speaker.add_argument("--no-baselines", action="store_true", help="score the speaker head only")
    eval_speaker.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")

    speaker_vector = sub.add_parser("speaker-vector", help="print unit-length speaker vectors of audio files as JSON lines",
                                    description="One JSON line per file: {file, dim, embedding}; the cosine of two "
                                    "vectors (their dot product) scores whether they are the same speaker.")
    speaker_vector.add_argument("files", nargs="+", type=Path, help="audio files (wav, flac, ogg, mp3, ...)")
    speaker_vector.add_argument("--checkpoint", default=None, help="checkpoint with a speaker head (default: the shipped model)")
    speaker_vector.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")

    verify = sub.add_parser("verify", help="are two recordings the same speaker? prints JSON",
                            description="Print JSON {score, threshold, same_speaker}: the cosine of the two speaker "
                            "vectors against the checkpoint's stored threshold (the EER point on its validation "
                            "speakers) or --threshold.")
    verify.add_argument("a", type=Path, help="first audio file")
    verify.add_argument("b", type=Path, help="second audio file")
    verify.add_argument("--checkpoint", default=None, help="checkpoint with a speaker head (default: the shipped model)")
    verify.add_argument("--threshold", type=float, default=None, help="cosine threshold instead of the stored one")
    verify.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")

    embed = sub.add_parser("embed", help="print embeddings of audio files as JSON lines",
                           description="Encode audio files; one JSON line per file with its embedding.")
    embed.add_argument("files", nargs="+", type=Path, help="audio files (wav, flac, ogg, mp3, ...)")
    embed.add_argument("--checkpoint", default=None, help="a speechssl checkpoint (default: the shipped model)")
    embed.add_argument("--layer", type=int, default=None, help="transformer layer (default: last)")
    embed.add_argument("--pooling", choices=["mean", "none"], default="mean",
                       help="mean: one vector per file (default); none: one vector per 20 ms frame")
    embed.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")

    imp = sub.add_parser("import-hf", help="convert a transformers Wav2Vec2 folder to a speechssl checkpoint",
                         description="Read config.json + weights of a Wav2Vec2Model / Wav2Vec2ForPreTraining / "
                         "Wav2Vec2ForCTC folder and write one speechssl .safetensors file.")
    imp.add_argument("hf_dir", type=Path, help="folder with config.json and model.safetensors or pytorch_model.bin")
    imp.add_argument("out", type=Path, help="checkpoint to write (.safetensors)")

    exp = sub.add_parser("export-hf", help="write a speechssl checkpoint as a transformers Wav2Vec2 folder",
                         description="Write config.json, model.safetensors and preprocessor_config.json that "
                         "transformers' from_pretrained() loads.")
    exp.add_argument("checkpoint", type=Path, help="speechssl checkpoint (.safetensors)")
    exp.add_argument("out_dir", type=Path, help="folder to write")
    serve = sub.add_parser("serve", help="serve a checkpoint over HTTP (FastAPI + uvicorn)",
                           description="Serve embeddings, transcripts and speaker vectors over HTTP (the heads the checkpoint holds). Every flag can also be set with a "
                           "SPEECHSSL_<NAME> environment variable (e.g. SPEECHSSL_API_KEY).")
    serve.add_argument("--checkpoint", default=None, help="checkpoint to serve (default: the shipped model)")
    serve.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8000)")
    serve.add_argument("--device", default=None, help="auto, cpu, cuda (default auto)")
    serve.add_argument("--workers", type=int, default=1,
                       help="uvicorn worker processes, each with its own model copy (default 1)")
    serve.add_argument("--max-batch", dest="max_batch_items", type=int, default=None,
                       help="most requests per device batch; 1 disables batching")
    serve.add_argument("--int8", dest="quantize", action="store_const", const="int8", default=None,
                       help="int8 weights for the encoder's matmuls (CPU only): ~1.4x faster, CER +0.05 points "
                       "on the shipped model's test split (docs/benchmarks.md)")
    return parser


def run(args: argparse.Namespace) -> int:
    from speechssl.config import ConfigError

    if args.command == "data" and args.data_command == "synth":
        from speechssl.data.synth import main_synth

        main_synth(args.out, args.hours, seed=args.seed, jobs=args.jobs)
    elif args.command == "data" and args.data_command == "voices":
        from speechssl.data.synth import main_voices

        if args.speakers < 1 or args.per_speaker < 1:
            raise ConfigError("--speakers and --per-speaker must be >= 1")
        main_voices(args.out, args.corpus, args.speakers, args.per_speaker, jobs=args.jobs)
    elif args.command == "data" and args.data_command == "manifest":
        from speechssl.data.manifest import build_manifest, write_manifest

        rows = build_manifest(args.src, args.format)
        write_manifest(rows, args.out)
        hours = sum(r.duration for r in rows) / 3600
        print(f"wrote {len(rows)} utterances ({hours:.2f} h) to {args.out}")
    elif args.command == "pretrain":
        from speechssl.train.pretrain import run_pretrain

        summary = run_pretrain(args.config, args.overrides, resume=args.resume)
        print(json.dumps({"step": summary.step, "wall_seconds": round(summary.wall_seconds, 1),
                          "best": summary.best, "out_dir": str(summary.out_dir)}, indent=2))
    elif args.command == "finetune-ctc":
        from speechssl.train.ctc import run_finetune_ctc

        summary = run_finetune_ctc(args.config, args.overrides, resume=args.resume)
        print(json.dumps({"step": summary.step, "wall_seconds": round(summary.wall_seconds, 1),
                          "best": summary.best, "out_dir": str(summary.out_dir)}, indent=2))
    elif args.command == "recipe":
        from speechssl.recipe import run_recipe

        print(json.dumps(run_recipe(args.config, args.overrides, only=args.stage), indent=2))
    elif args.command == "transcribe":
        import speechssl
        from speechssl.transcript import to_srt, to_vtt

        model = speechssl.load(args.checkpoint, device=args.device)
        model.require("ctc")
        decoder = make_decoder(args, model.metadata["vocab"])
        for path in args.files:
            transcript = model.transcribe(str(path), decoder=decoder, timestamps=args.format != "text")
            if args.format == "text":
                print(transcript.text)
            elif args.format == "json":
                print(json.dumps({"file": str(path), **transcript.to_dict()}))
            else:
                print((to_srt if args.format == "srt" else to_vtt)(transcript))
    elif args.command == "make-lm":
        from speechssl.data.manifest import read_manifest
        from speechssl.decode.ngram import write_arpa

        sentences = [line for path in args.text for line in path.read_text(encoding="utf-8").splitlines()]
        sentences += [u.text for path in args.manifest for u in read_manifest(path) if u.text]
        if not sentences:
            raise ConfigError("make-lm: give --text files or --manifest files with transcripts")
        write_arpa(sentences, args.out, order=args.order)
        print(f"wrote a {args.order}-gram LM from {len(sentences)} sentences to {args.out}")
    elif args.command == "evaluate" and args.evaluate_command == "asr":
        import speechssl
        from speechssl.data.manifest import read_manifest
        from speechssl.evaluation import evaluate_asr

        model = speechssl.load(args.checkpoint, device=args.device)
        model.require("ctc")
        scores = evaluate_asr(model, read_manifest(args.manifest), make_decoder(args, model.metadata["vocab"]))
        print(json.dumps({"checkpoint": model.name, "manifest": str(args.manifest),
                          "decoder": "beam" if (args.beam or args.lm) else "greedy", **scores}, indent=2))
    elif args.command == "train-speaker":
        from speechssl.train.speaker import run_train_speaker

        summary = run_train_speaker(args.config, args.overrides, resume=args.resume)
        print(json.dumps({"step": summary.step, "wall_seconds": round(summary.wall_seconds, 1),
                          "best": summary.best, "out_dir": str(summary.out_dir)}, indent=2))
    elif args.command == "evaluate" and args.evaluate_command == "speaker":
        import speechssl
        from speechssl.data.manifest import read_manifest
        from speechssl.data.selection import per_speaker_subset, with_speakers
        from speechssl.verification import evaluate_speaker, read_trials

        model = speechssl.load(args.checkpoint, device=args.device)
        model.require("speaker")
        utterances = read_manifest(args.manifest)
        if args.trials is not None:
            trials = read_trials(args.trials, utterances)
        else:
            utterances = with_speakers(utterances, args.speaker_id_pattern)
            if args.per_speaker is not None:
                utterances = per_speaker_subset(utterances, args.per_speaker, args.seed)
            trials = None
        scores = evaluate_speaker(model, utterances, trials, seed=args.seed, baselines=not args.no_baselines)
        print(json.dumps({"manifest": str(args.manifest), **scores}, indent=2))
    elif args.command == "speaker-vector":
        import speechssl

        model = speechssl.load(args.checkpoint, device=args.device)
        model.require("speaker")
        for path in args.files:
            vector = model.speaker_vector(str(path))
            print(json.dumps({"file": str(path), "dim": int(vector.shape[0]), "embedding": vector.tolist()}))
    elif args.command == "verify":
        import speechssl

        model = speechssl.load(args.checkpoint, device=args.device)
        if args.threshold is not None:
            model.metadata["speaker_threshold"] = args.threshold
        print(json.dumps(model.verify(str(args.a), str(args.b)).to_dict()))
    elif args.command == "embed":
        import speechssl

        model = speechssl.load(args.checkpoint, device=args.device)
        for path in args.files:
            vector = model.embed(str(path), layer=args.layer, pooling=args.pooling)
            print(json.dumps({"file": str(path), "shape": list(vector.shape), "embedding": vector.tolist()}))
    elif args.command == "serve":
        from server.main import serve

        flags = {k: getattr(args, k) for k in ("checkpoint", "host", "port", "device", "max_batch_items", "quantize")}
        serve({k: v for k, v in flags.items() if v is not None}, workers=args.workers)
    elif args.command == "import-hf":
        from speechssl.interop.hf import import_hf

        import_hf(args.hf_dir, args.out)
        print(f"wrote {args.out}")
    elif args.command == "export-hf":
        from speechssl.interop.hf import export_hf

        export_hf(args.checkpoint, args.out_dir)
        print(f"wrote {args.out_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from speechssl.errors import SpeechSSLError

    try:
        return run(args)
    except (SpeechSSLError, FileNotFoundError) as exc:  # the reason in one line, not a traceback
        print(f"speechssl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
