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

    manifest = data_sub.add_parser("manifest", help="write a JSONL manifest for a folder, LibriSpeech tree or CSV",
                                   description="Scan audio and write JSONL rows {id, path, duration, text?, speaker?}.")
    manifest.add_argument("src", type=Path, help="folder or CSV file")
    manifest.add_argument("--out", required=True, type=Path, help="manifest to write (.jsonl)")
    manifest.add_argument("--format", required=True, choices=["folder", "librispeech", "csv"],
                          help="folder: audio + .txt/.lab sidecars; librispeech: SPEAKER/CHAPTER/*.flac + "
                          "*.trans.txt; csv: a header with at least 'path'")

    pretrain = sub.add_parser("pretrain", help="self-supervised wav2vec 2.0 pretraining on unlabeled audio",
                              description="Pretrain with the contrastive + diversity objective. Writes "
                              "checkpoint.safetensors, best.safetensors, resume.pt, metrics.jsonl, "
                              "tensorboard/ and curves.png to run.out_dir. Run under torchrun for DDP.")
    add_overrides(pretrain)

    embed = sub.add_parser("embed", help="print embeddings of audio files as JSON lines",
                           description="Encode audio files; one JSON line per file with its embedding.")
    embed.add_argument("files", nargs="+", type=Path, help="audio files (wav, flac, ogg, mp3, ...)")
    embed.add_argument("--checkpoint", required=True, help="a speechssl checkpoint (.safetensors)")
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
                           description="Serve embeddings over HTTP. Every flag can also be set with a "
                           "SPEECHSSL_<NAME> environment variable (e.g. SPEECHSSL_API_KEY).")
    serve.add_argument("--checkpoint", default=None, help="checkpoint to serve (default: the shipped model)")
    serve.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8000)")
    serve.add_argument("--device", default=None, help="auto, cpu, cuda (default auto)")
    serve.add_argument("--workers", type=int, default=1,
                       help="uvicorn worker processes, each with its own model copy (default 1)")
    serve.add_argument("--max-batch", dest="max_batch_items", type=int, default=None,
                       help="most requests per device batch; 1 disables batching")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.command == "data" and args.data_command == "synth":
        from speechssl.data.synth import main_synth

        main_synth(args.out, args.hours, seed=args.seed, jobs=args.jobs)
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
    elif args.command == "embed":
        import speechssl

        model = speechssl.load(args.checkpoint, device=args.device)
        for path in args.files:
            vector = model.embed(str(path), layer=args.layer, pooling=args.pooling)
            print(json.dumps({"file": str(path), "shape": list(vector.shape), "embedding": vector.tolist()}))
    elif args.command == "serve":
        from server.main import serve

        flags = {k: getattr(args, k) for k in ("checkpoint", "host", "port", "device", "max_batch_items")}
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
    from speechssl.audio import AudioError
    from speechssl.checkpoint import CheckpointError
    from speechssl.config import ConfigError
    from speechssl.data.manifest import ManifestError
    from speechssl.data.synth import SynthError

    try:
        return run(args)
    except (ConfigError, CheckpointError, AudioError, ManifestError, SynthError, FileNotFoundError) as exc:
        print(f"speechssl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
