"""What each ``speechssl`` command does, once its flags are parsed: a thin call into the
library, then the printing. The parser and the table that picks one of these are in cli.py.

Every handler takes the parsed ``argparse.Namespace``; imports are inside the handlers so
that ``speechssl --help`` and light commands never load torch or the training code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def print_json(value, indent: int | None = 2) -> None:
    print(json.dumps(value, indent=indent))


def print_summary(summary) -> None:
    """A training run's outcome (pretrain, finetune-ctc, train-speaker), as JSON."""
    print_json({"step": summary.step, "wall_seconds": round(summary.wall_seconds, 1),
                "best": summary.best, "out_dir": str(summary.out_dir)})


def load_model(args: argparse.Namespace, head: str | None = None):
    """The checkpoint of ``--checkpoint`` (default: the shipped model) on ``--device``,
    refused up front when it lacks ``head`` ("ctc", "speaker")."""
    import speechssl

    model = speechssl.load(args.checkpoint, device=args.device)
    if head is not None:
        model.require(head)
    return model


def make_decoder(args: argparse.Namespace, model):
    """A beam decoder of the flags' own with --beam or --lm; None leaves decoding to the
    model's --decoding (its LM's beam search, or greedy)."""
    if not (args.beam or args.lm):
        return None
    from speechssl.decode.ctc import BeamDecoder, BeamSettings

    vocab = model.vocab
    return BeamDecoder(vocab, BeamSettings(beam_size=args.beam_size, lm=args.lm, lexicon=args.lexicon,
                                           lm_weight=args.lm_weight, word_score=args.word_score))


# --- data ------------------------------------------------------------------------------

def data_synth(args: argparse.Namespace) -> None:
    from speechssl.data.synth import synthesize

    print(synthesize(args.out, args.hours, seed=args.seed, jobs=args.jobs).summary())


def data_voices(args: argparse.Namespace) -> None:
    from speechssl.config import ConfigError
    from speechssl.data.synth import synthesize_voices

    if args.speakers < 1 or args.per_speaker < 1:
        raise ConfigError("--speakers and --per-speaker must be >= 1")
    print(synthesize_voices(args.out, args.corpus, args.speakers, args.per_speaker, jobs=args.jobs).summary())


def data_kokoro(args: argparse.Namespace) -> None:
    from speechssl.data.kokoro import make_kokoro_corpus

    print(make_kokoro_corpus(args.out, args.corpus, args.real, args.hours, args.test_hours, args.cache,
                             args.voices_tarball, seed=args.seed))


def data_manifest(args: argparse.Namespace) -> None:
    from speechssl.data.manifest import build_manifest, write_manifest

    rows = build_manifest(args.src, args.format)
    write_manifest(rows, args.out)
    hours = sum(r.duration for r in rows) / 3600
    print(f"wrote {len(rows)} utterances ({hours:.2f} h) to {args.out}")


def make_lm(args: argparse.Namespace) -> None:
    from speechssl.config import ConfigError
    from speechssl.data.manifest import read_manifest
    from speechssl.decode.ngram import english_words, write_arpa

    if args.background_words < 0 or not 0 < args.background_weight < 1:
        raise ConfigError("make-lm: --background-words must be >= 0 and --background-weight in (0, 1)")
    sentences = [line for path in args.text for line in path.read_text(encoding="utf-8").splitlines()]
    sentences += [u.text for path in args.manifest for u in read_manifest(path) if u.text]
    if not sentences:
        raise ConfigError("make-lm: give --text files or --manifest files with transcripts")
    background = english_words(args.background_words) if args.background_words else None
    write_arpa(sentences, args.out, order=args.order, background=background,
               background_weight=args.background_weight if background else 0.0)
    mixed = f" and {len(background)} general English words" if background else ""
    print(f"wrote a {args.order}-gram LM from {len(sentences)} sentences{mixed} to {args.out}")


# --- training --------------------------------------------------------------------------

def pretrain(args: argparse.Namespace) -> None:
    from speechssl.train.pretrain import run_pretrain

    print_summary(run_pretrain(args.config, args.overrides, resume=args.resume))


def finetune_ctc(args: argparse.Namespace) -> None:
    from speechssl.train.ctc import run_finetune_ctc

    print_summary(run_finetune_ctc(args.config, args.overrides, resume=args.resume))


def train_speaker(args: argparse.Namespace) -> None:
    from speechssl.train.speaker import run_train_speaker

    print_summary(run_train_speaker(args.config, args.overrides, resume=args.resume))


def recipe(args: argparse.Namespace) -> None:
    from speechssl.recipe import run_recipe

    print_json(run_recipe(args.config, args.overrides, only=args.stage))


# --- inference and evaluation ----------------------------------------------------------

def transcribe(args: argparse.Namespace) -> None:
    from speechssl.transcript import to_srt, to_vtt

    from speechssl.config import ConfigError

    if args.stream:
        return transcribe_stream(args)
    if args.server:
        raise ConfigError("--server needs --stream (files are transcribed here otherwise)")
    model = load_model(args, "ctc")
    decoder = make_decoder(args, model)
    for path in args.files:
        transcript = model.transcribe(str(path), decoder=decoder, timestamps=args.format != "text",
                                      decoding=args.decoding)
        if args.format == "text":
            print(transcript.text)
        elif args.format == "json":
            print_json({"file": str(path), **transcript.to_dict()}, indent=None)
        else:
            print((to_srt if args.format == "srt" else to_vtt)(transcript))


def transcribe_stream(args: argparse.Namespace) -> None:
    """One source, read as it comes: previews on stderr, the done text on stdout."""
    from speechssl.client import live_transcribe, pcm_chunks
    from speechssl.config import ConfigError

    if len(args.files) != 1:
        raise ConfigError("--stream reads one source: a file, or - for raw PCM on stdin")
    if args.format in ("srt", "vtt"):
        raise ConfigError("--stream gives text events; use --format text or json")
    source = sys.stdin.buffer if str(args.files[0]) == "-" else args.files[0]
    rate = args.sample_rate if source is sys.stdin.buffer else 16000  # files are decoded to 16 kHz first
    chunks = pcm_chunks(source, rate)
    if args.server:
        events = live_transcribe(args.server, chunks, sample_rate=rate, decoding=args.decoding, api_key=args.api_key)
    else:
        events = load_model(args, "ctc").transcribe_live(chunks, sample_rate=rate, decoding=args.decoding)
    for event in events:
        if args.format == "json":
            print(json.dumps(event), flush=True)
        elif event["type"] == "transcript.text.delta":
            print(event["delta"], end="", file=sys.stderr, flush=True)
        elif event["type"] == "transcript.text.done":
            print(file=sys.stderr)
            print(event["text"], flush=True)


def evaluate_asr(args: argparse.Namespace) -> None:
    from speechssl.data.manifest import read_manifest
    from speechssl.evaluation import evaluate_asr as evaluate

    model = load_model(args, "ctc")
    decoder = make_decoder(args, model)
    name = "beam" if decoder is not None else "beam_lm" if model.decoder(args.decoding) is not None else "greedy"
    scores = evaluate(model, read_manifest(args.manifest), decoder, decoding=args.decoding)
    print_json({"checkpoint": model.name, "manifest": str(args.manifest), "decoder": name, **scores})


def evaluate_speaker(args: argparse.Namespace) -> None:
    from speechssl.data.manifest import read_manifest
    from speechssl.data.selection import per_speaker_subset, with_speakers
    from speechssl.verification import evaluate_speaker as evaluate, read_trials

    model = load_model(args, "speaker")
    utterances = read_manifest(args.manifest)
    trials = None
    if args.trials is not None:
        trials = read_trials(args.trials, utterances)
    else:
        utterances = with_speakers(utterances, args.speaker_id_pattern)
        if args.per_speaker is not None:
            utterances = per_speaker_subset(utterances, args.per_speaker, args.seed)
    scores = evaluate(model, utterances, trials, seed=args.seed, baselines=not args.no_baselines)
    print_json({"manifest": str(args.manifest), **scores})


def speaker_vector(args: argparse.Namespace) -> None:
    model = load_model(args, "speaker")
    for path in args.files:
        vector = model.speaker_vector(str(path))
        print_json({"file": str(path), "dim": int(vector.shape[0]), "embedding": vector.tolist()}, indent=None)


def verify(args: argparse.Namespace) -> None:
    model = load_model(args)
    print_json(model.verify(str(args.a), str(args.b), threshold=args.threshold).to_dict(), indent=None)


def embed(args: argparse.Namespace) -> None:
    model = load_model(args)
    for path in args.files:
        vector = model.embed(str(path), layer=args.layer, pooling=args.pooling)
        print_json({"file": str(path), "shape": list(vector.shape), "embedding": vector.tolist()}, indent=None)


# --- serving and conversion ------------------------------------------------------------

def serve(args: argparse.Namespace) -> None:
    from server.main import serve as run_server

    flags = {k: getattr(args, k) for k in ("checkpoint", "host", "port", "device", "max_batch_items", "quantize",
                                         "precision")}
    from speechssl.config_files import ConfigError

    workers = args.workers
    if workers is None:  # like every other flag, settable from the environment
        raw = os.environ.get("SPEECHSSL_WORKERS", "1")
        if not raw.strip().isdigit():
            raise ConfigError(f"SPEECHSSL_WORKERS must be a whole number >= 1, got {raw!r}")
        workers = int(raw)
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    run_server({k: v for k, v in flags.items() if v is not None}, workers=workers)


def import_hf(args: argparse.Namespace) -> None:
    from speechssl.interop.hf import import_hf as convert

    convert(args.hf_dir, args.out)
    print(f"wrote {args.out}")


def export_hf(args: argparse.Namespace) -> None:
    from speechssl.interop.hf import export_hf as convert

    convert(args.checkpoint, args.out_dir)
    print(f"wrote {args.out_dir}")


def export_onnx(args: argparse.Namespace) -> None:
    from speechssl.interop.onnx import export_onnx as convert

    done = convert(args.checkpoint, args.out, int8=args.int8)
    print(f"wrote {done['out']} ({'int8' if done['int8'] else 'fp32'}, exported in {done['export_s']:g} s)")
