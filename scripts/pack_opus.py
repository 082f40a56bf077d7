"""Re-encode manifests' audio as Ogg/Opus so a corpus fits a small transfer (the GPU machine).

    python scripts/pack_opus.py --out .gpu/corpus --hours 4 runs/corpus/train.jsonl ...

Each input manifest becomes OUT/<name>.jsonl (same ids, texts, speakers and durations)
over OUT/<name>/*.ogg. Utterances are taken in a seeded shuffle until --hours is reached,
so a subset still spans the manifest's speakers. Opus is lossy: use it for pretraining
data moved to another machine, not for evaluation sets.
"""
from __future__ import annotations

import argparse
import dataclasses
import random
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import soundfile as sf

from speechssl.audio import load_audio, SAMPLE_RATE
from speechssl.data.manifest import read_manifest, write_manifest


def _encode(job: tuple[str, str, float]) -> None:
    source, target, level = job
    audio = load_audio(source)
    sf.write(target, audio, SAMPLE_RATE, format="OGG", subtype="OPUS", compression_level=level)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifests", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--hours", type=float, default=None, help="per manifest; default: all of it")
    parser.add_argument("--level", type=float, default=0.9, help="Opus compression level 0-1 (higher = smaller)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    out = Path(args.out)
    for manifest in args.manifests:
        rows = read_manifest(manifest)
        random.Random(args.seed).shuffle(rows)
        if args.hours is not None:
            budget, kept = args.hours * 3600, []
            for row in rows:
                if budget <= 0:
                    break
                kept.append(row)
                budget -= row.duration
            rows = kept
        name = Path(manifest).stem
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        packed = [dataclasses.replace(r, path=str((folder / f"{r.id}.ogg").resolve())) for r in rows]
        with ProcessPoolExecutor(args.jobs) as pool:
            list(pool.map(_encode, [(r.path, p.path, args.level) for r, p in zip(rows, packed)], chunksize=32))
        write_manifest(packed, out / f"{name}.jsonl")
        print(f"{manifest}: {len(rows)} utterances, {sum(r.duration for r in rows) / 3600:.2f} h -> {folder}")


if __name__ == "__main__":
    main()
