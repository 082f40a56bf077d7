"""The ``speechssl`` command line: the parser, and a table from each command to its handler
in ``speechssl.commands`` (a thin call into the library, then the printing)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from speechssl import commands

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

EXPORT_ONNX = """\
Export the self-supervised encoder of a speechssl checkpoint to ONNX.

inputs:   waves (batch, samples) float32 at 16 kHz, zero-padded
          lengths (batch,) int64, each item's samples
outputs:  hidden (batch, frames, hidden size), the last hidden state
          frames (batch,) int64, each item's valid frames: they equal what the item gives alone
Batch and samples are dynamic. WavLM layouts are refused.

Needs onnx, onnxscript and onnxruntime, which speechssl does not install:
  pip install onnx onnxscript onnxruntime
"""

EXPORT_ONNX_EXAMPLE = """\
example:
  speechssl export-onnx runs/pretrain/best.safetensors --out encoder.onnx
  and in Python:
    session = onnxruntime.InferenceSession("encoder.onnx")
    hidden, frames = session.run(None, {"waves": waves, "lengths": lengths})
"""


def add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override config values, e.g. optim.lr=1e-4 model.num_layers=4")
    parser.add_argument("--resume", action="store_true",
                        help="continue from run.out_dir/resume.pt if it exists (after a crash or kill)")


def add_decoder_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--decoding", choices=["auto", "greedy", "beam_lm"], default="auto",
                        help="auto (default): beam search with the checkpoint's own word n-gram when it carries "
                             "one (the shipped model does), else greedy; --beam or --lm decode as they say instead")
    parser.add_argument("--beam", action="store_true", help="beam search instead of greedy decoding")
    parser.add_argument("--beam-size", type=int, default=50, help="hypotheses kept (default 50)")
    parser.add_argument("--lm", default=None, help="KenLM n-gram (ARPA or binary) for beam search; implies --beam")
    parser.add_argument("--lexicon", default=None, help="lexicon file (word, then its letters and |); "
                        "default: lexicon-free")
    parser.add_argument("--lm-weight", type=float, default=0.5, help="LM weight (default 0.5)")
    parser.add_argument("--word-score", type=float, default=0.0, help="score added per word (default 0)")


def add_model_options(parser: argparse.ArgumentParser, checkpoint_help: str) -> None:
    """--checkpoint and --device, for the commands that load a model."""
    parser.add_argument("--checkpoint", default=None, help=checkpoint_help)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")


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

    kokoro = data_sub.add_parser("kokoro", help="synthesise natural-sounding training speech with Kokoro-82M (optional extra)",
                                 description="Render real training transcripts and a corpus's train sentences in Kokoro-82M's "
                                             "24 train voices and mixes of them (4 more voices read a test split). Needs "
                                             "pip install -e '.[tts]' and the kokoro-js voices: npm pack kokoro-js@1.2.1.")
    kokoro.add_argument("--corpus", required=True, type=Path, help="a corpus made by `data synth` (its train/test sentences)")
    kokoro.add_argument("--out", required=True, type=Path, help="output folder")
    kokoro.add_argument("--hours", type=float, default=1.0, help="hours of train audio (default 1)")
    kokoro.add_argument("--test-hours", type=float, default=0.1, help="hours of test audio, held-out voices (default 0.1)")
    kokoro.add_argument("--real", nargs="*", type=Path, default=[], help="manifests whose transcripts the train split reads too")
    kokoro.add_argument("--voices-tarball", required=True, type=Path, help="kokoro-js-1.2.1.tgz")
    kokoro.add_argument("--cache", type=Path, default=Path("runs/kokoro"), help="where the model and voices are assembled")
    kokoro.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
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

    recipe = sub.add_parser("recipe", help="make a model from nothing: data, pretrain(2), ctc, speaker, evaluate, package",
                            description="Run a recipe (configs/recipes/default.yaml makes the shipped default "
                            "model) stage by stage: data -> pretrain -> pretrain2 -> ctc -> speaker -> evaluate -> "
                            "package (pretrain2, a second HuBERT iteration, only where the recipe has one). "
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
                                "overlapping chunks). Beam search with the checkpoint's word n-gram when it carries one, "
                                "else greedy (see --decoding).")
    transcribe.add_argument("files", nargs="+", type=Path, help="audio files (wav, flac, ogg, mp3, ...); "
                            "with --stream one file, or - for raw 16-bit mono PCM on stdin")
    add_model_options(transcribe, "checkpoint with a CTC head (default: the shipped model)")
    transcribe.add_argument("--format", choices=["text", "json", "srt", "vtt"], default="text",
                            help="text: one line per file; json: text, duration and words with start/end seconds "
                            "(with --stream: every event as a JSON line)")
    add_decoder_options(transcribe)
    live = transcribe.add_argument_group("live (--stream)", "word previews as the audio is read, on stderr; the "
                                         "final transcript on stdout. E.g. arecord -q -f S16_LE -r 16000 -c 1 -t raw | "
                                         "speechssl transcribe --stream -")
    live.add_argument("--stream", action="store_true", help="transcribe as the audio arrives")
    live.add_argument("--server", metavar="URL", help="use a speechssl server's WebSocket route (e.g. "
                      "http://127.0.0.1:8000) instead of loading a model here")
    live.add_argument("--api-key", default=os.environ.get("SPEECHSSL_API_KEY"),
                      help="the server's key (default: $SPEECHSSL_API_KEY)")
    live.add_argument("--sample-rate", type=int, default=16000, help="of the raw PCM on stdin (default 16000)")

    make_lm = sub.add_parser("make-lm", help="build a word n-gram LM (ARPA) from text for beam search",
                             description="Count word n-grams in text files (one sentence per line) and/or the "
                             "transcripts of manifests, normalized like the CTC alphabet, and write an ARPA "
                             "file (interpolated absolute discounting) that --lm accepts.")
    make_lm.add_argument("--text", nargs="*", default=[], type=Path, help="text files, one sentence per line")
    make_lm.add_argument("--manifest", nargs="*", default=[], type=Path, help="manifests whose text fields to use")
    make_lm.add_argument("--order", type=int, default=3, help="n-gram order (default 3)")
    make_lm.add_argument("--background-words", type=int, default=0, metavar="N",
                         help="mix in the unigrams of the N most frequent general English words, so words the "
                         "text never used can be decoded (needs the `lm` extra: pip install -e '.[lm]'; default 0)")
    make_lm.add_argument("--background-weight", type=float, default=0.3, metavar="W",
                         help="their share of the unigram mass, in (0, 1) (default 0.3, with --background-words)")
    make_lm.add_argument("--out", required=True, type=Path, help="ARPA file to write")

    evaluate = sub.add_parser("evaluate", help="score a checkpoint on a manifest (WER/CER, EER) as JSON",
                              description="Evaluate a checkpoint on a labeled manifest and print JSON.")
    eval_sub = evaluate.add_subparsers(dest="evaluate_command", metavar="TASK", required=True)
    eval_asr = eval_sub.add_parser("asr", help="WER, CER and real-time factor on a transcribed manifest",
                                   description="Transcribe every utterance of a manifest with text and print "
                                   "JSON: wer, cer (jiwer), utterances, audio_seconds, real_time_factor.")
    add_model_options(eval_asr, "checkpoint with a CTC head (default: the shipped model)")
    eval_asr.add_argument("--manifest", required=True, type=Path, help="JSONL manifest with text")
    add_decoder_options(eval_asr)

    eval_speaker = eval_sub.add_parser(
        "speaker", help="speaker verification EER and minDCF, with MFCC and mean-pooled baselines",
        description="Score verification trials by the cosine of speaker vectors and print JSON: eer, min_dcf "
        "(p_target 0.01), eer_threshold, trial counts, the miss and false-alarm rates at the checkpoint's stored "
        "threshold, and the same figures on the same trials for two baselines (mean-pooled encoder features "
        "without the head; mean MFCCs). Trials: every same-speaker pair of the manifest and as many "
        "different-speaker pairs (seeded), or --trials.")
    add_model_options(eval_speaker, "checkpoint with a speaker head (default: the shipped model)")
    eval_speaker.add_argument("--manifest", required=True, type=Path, help="JSONL manifest with speaker labels")
    eval_speaker.add_argument("--trials", type=Path, default=None,
                              help="trial file, one 'LABEL A B' per line (LABEL 1/0; A, B manifest ids or paths)")
    eval_speaker.add_argument("--per-speaker", type=int, default=None,
                              help="use at most this many utterances per speaker (seeded draw; default all)")
    eval_speaker.add_argument("--speaker-id-pattern", default=None,
                              help="regex whose group 1 is the speaker, for rows without one, e.g. '^([0-9]+)-'")
    eval_speaker.add_argument("--seed", type=int, default=0, help="seed of the trial draw (default 0)")
    eval_speaker.add_argument("--no-baselines", action="store_true", help="score the speaker head only")

    speaker_vector = sub.add_parser("speaker-vector", help="print unit-length speaker vectors of audio files as JSON lines",
                                    description="One JSON line per file: {file, dim, embedding}; the cosine of two "
                                    "vectors (their dot product) scores whether they are the same speaker.")
    speaker_vector.add_argument("files", nargs="+", type=Path, help="audio files (wav, flac, ogg, mp3, ...)")
    add_model_options(speaker_vector, "checkpoint with a speaker head (default: the shipped model)")

    verify = sub.add_parser("verify", help="are two recordings the same speaker? prints JSON",
                            description="Print JSON {score, threshold, same_speaker, scoring}: the cosine of the two "
                            "speaker vectors, normalised against the checkpoint's cohort of training speakers when it "
                            "carries one (scoring \"as-norm\"), against the checkpoint's stored threshold (the EER "
                            "point on its validation speakers) or --threshold.")
    verify.add_argument("a", type=Path, help="first audio file")
    verify.add_argument("b", type=Path, help="second audio file")
    add_model_options(verify, "checkpoint with a speaker head (default: the shipped model)")
    verify.add_argument("--threshold", type=float, default=None,
                        help="threshold instead of the stored one, on the checkpoint's scoring")

    embed = sub.add_parser("embed", help="print embeddings of audio files as JSON lines",
                           description="Encode audio files; one JSON line per file with its embedding.")
    embed.add_argument("files", nargs="+", type=Path, help="audio files (wav, flac, ogg, mp3, ...)")
    add_model_options(embed, "a speechssl checkpoint (default: the shipped model)")
    embed.add_argument("--layer", type=int, default=None, help="transformer layer (default: last)")
    embed.add_argument("--pooling", choices=["mean", "none"], default="mean",
                       help="mean: one vector per file (default); none: one vector per 20 ms frame")

    imp = sub.add_parser("import-hf", help="convert a transformers Wav2Vec2, HuBERT, Data2Vec-Audio or WavLM folder to a speechssl checkpoint",
                         description="Read config.json + weights of a Wav2Vec2Model / Wav2Vec2ForPreTraining / "
                         "Wav2Vec2ForCTC / HubertModel / HubertForCTC / Data2VecAudioModel / Data2VecAudioForCTC / "
                         "WavLMModel / WavLMForCTC folder and write one speechssl .safetensors file.")
    imp.add_argument("hf_dir", type=Path, help="folder with config.json and model.safetensors or pytorch_model.bin, "
                     "or a transformers cache entry as it sits on disk (~/.cache/huggingface/hub/models--org--name)")
    imp.add_argument("out", type=Path, help="checkpoint to write (.safetensors)")

    exp = sub.add_parser("export-hf", help="write a speechssl checkpoint as a transformers Wav2Vec2 folder",
                         description="Write config.json, model.safetensors and preprocessor_config.json that "
                         "transformers' from_pretrained() loads.")
    exp.add_argument("checkpoint", type=Path, help="speechssl checkpoint (.safetensors)")
    exp.add_argument("out_dir", type=Path, help="folder to write")

    exp_onnx = sub.add_parser("export-onnx", help="write a checkpoint's encoder as an ONNX file (onnxruntime and others)",
                          description=EXPORT_ONNX, epilog=EXPORT_ONNX_EXAMPLE,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    exp_onnx.add_argument("checkpoint", type=Path, help="speechssl checkpoint (.safetensors)")
    exp_onnx.add_argument("--out", required=True, type=Path, help="ONNX file to write")
    exp_onnx.add_argument("--int8", action="store_true",
                      help="onnxruntime's dynamic int8 quantization of the transformer layers' matmuls (int8 "
                      "weights per output channel); the conv front end stays fp32")
    serve = sub.add_parser("serve", help="serve a checkpoint over HTTP (FastAPI + uvicorn)",
                           description="Serve embeddings, transcripts and speaker vectors over HTTP (the heads the checkpoint holds). Every flag can also be set with a "
                           "SPEECHSSL_<NAME> environment variable (e.g. SPEECHSSL_API_KEY).")
    serve.add_argument("--checkpoint", default=None, help="checkpoint to serve (default: the shipped model); a "
                       "transformers Wav2Vec2 folder or cache entry is imported in memory")
    serve.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8000)")
    serve.add_argument("--device", default=None, help="auto, cpu, cuda (default auto)")
    serve.add_argument("--workers", type=int, default=None,
                       help="uvicorn worker processes, each with its own model copy (default 1)")
    serve.add_argument("--max-batch", dest="max_batch_items", type=int, default=None,
                       help="most requests per device batch; 1 disables batching")
    serve.add_argument("--int8", dest="quantize", action="store_const", const="int8", default=None,
                       help="int8 weights for the encoder's matmuls (CPU only): ~1.4x faster, CER +0.05 points "
                       "on the shipped model's test split (docs/benchmarks.md)")
    serve.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                       help="bf16: bfloat16 autocast, for a GPU or a CPU with native bf16 (avx512_bf16, AMX); "
                       "auto (default): bf16 on a GPU and on a CPU with native bf16 (about 3x fp32 there on BASE, CER "
                       "+0.02 points at most on the shipped model), else fp32")
    return parser


COMMANDS = {
    "data synth": commands.data_synth,
    "data voices": commands.data_voices,
    "data kokoro": commands.data_kokoro,
    "data manifest": commands.data_manifest,
    "pretrain": commands.pretrain,
    "finetune-ctc": commands.finetune_ctc,
    "train-speaker": commands.train_speaker,
    "recipe": commands.recipe,
    "transcribe": commands.transcribe,
    "make-lm": commands.make_lm,
    "evaluate asr": commands.evaluate_asr,
    "evaluate speaker": commands.evaluate_speaker,
    "speaker-vector": commands.speaker_vector,
    "verify": commands.verify,
    "embed": commands.embed,
    "serve": commands.serve,
    "import-hf": commands.import_hf,
    "export-hf": commands.export_hf,
    "export-onnx": commands.export_onnx,
}


def run(args: argparse.Namespace) -> int:
    """Call the handler of the parsed command ("data synth", "embed", ...)."""
    action = getattr(args, "data_command", None) or getattr(args, "evaluate_command", None)
    COMMANDS[f"{args.command} {action}" if action else args.command](args)
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
