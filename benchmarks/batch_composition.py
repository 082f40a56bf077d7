"""How much of the offline batch throughput a server can reach, before any HTTP: batch composition.

An offline run sees every clip at once and batches them sorted by length. A server sees only
the requests in flight (``--in-flight``, one per client) and must batch from those. This
replays a stream of clips in-process, the model alone, batched four ways, interleaved:

- offline: the whole list, sorted by length (what ``serve_load.py`` compares the server with);
- similar: the server's batcher, the oldest waiting clip plus the waiting ones nearest its length
  (``server.batcher.similar_lengths``), a finished clip's place taken by the next one;
- fifo: the waiting clips in arrival order until the padded bound (the batcher before 2026-12-01);
- single: one clip at a time (``--max-batch 1``).

    python benchmarks/batch_composition.py --checkpoint speechssl/assets/default.safetensors \\
        --audio runs/default/corpus/test.jsonl --out runs/benchmarks/batch_composition.json
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import interleaved, machine, table, write_json  # noqa: E402

import speechssl  # noqa: E402
from server.app import serving_precision  # noqa: E402
from server.batcher import similar_lengths  # noqa: E402
from server.settings import Settings  # noqa: E402
from speechssl.audio import SAMPLE_RATE, load_audio  # noqa: E402
from speechssl.data.manifest import read_manifest  # noqa: E402

Picker = Callable[[list[float], float], list[int]]


def fifo(seconds: list[float], bound: float) -> list[int]:
    picked, longest = [0], seconds[0]
    for k in range(1, len(seconds)):
        if max(longest, seconds[k]) * (len(picked) + 1) > bound:
            break
        picked.append(k)
        longest = max(longest, seconds[k])
    return picked


def replay(encode: Callable[[list], object], waves: list, in_flight: int, bound: float, pick: Picker) -> None:
    """Clips arrive in a seeded random order; ``in_flight`` wait at a time; each batch is ``pick``'s."""
    arrival = list(range(len(waves)))
    random.Random(0).shuffle(arrival)
    waiting, upcoming = arrival[:in_flight], arrival[in_flight:]
    while waiting:
        chosen = [waiting[k] for k in pick([len(waves[i]) / SAMPLE_RATE for i in waiting], bound)]
        encode([waves[i] for i in chosen])
        waiting = [i for i in waiting if i not in chosen] + upcoming[: len(chosen)]
        upcoming = upcoming[len(chosen):]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="default: the shipped model")
    parser.add_argument("--audio", type=Path, required=True, help="JSONL manifest")
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--in-flight", type=int, default=16, help="requests waiting at a time (the load's clients)")
    parser.add_argument("--max-batch-seconds", type=float, default=32.0, help="padded bound (the CPU server's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="auto: what the CPU server computes in (bf16 where the CPU has native bf16)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    waves = [load_audio(u.path) for u in read_manifest(args.audio)[: args.clips]]
    model = speechssl.load(args.checkpoint, "cpu", precision=serving_precision(Settings(device="cpu", precision=args.precision)))
    model.max_batch_seconds = args.max_batch_seconds
    audio_s = sum(len(w) for w in waves) / SAMPLE_RATE
    bound, n, items = args.max_batch_seconds, args.in_flight, Settings().max_batch_items
    systems = {
        "offline": lambda: model.encode(waves),
        "similar": lambda: replay(model.encode, waves, n, bound, lambda s, b: similar_lengths(s, b, items)),
        "fifo": lambda: replay(model.encode, waves, n, bound, fifo),
        "single": lambda: replay(model.encode, waves, n, bound, lambda s, b: [0]),
    }
    print(f"{len(waves)} clips, {audio_s:.0f} s of audio; {n} in flight; batches <= {bound:g} padded s")
    timings = interleaved(systems, args.repeats, torch.device("cpu"))
    offline = audio_s / timings["offline"]["median_s"]
    results = [{"batching": name, "audio_s_per_s": audio_s / t["median_s"],
                "of_offline": audio_s / t["median_s"] / offline} for name, t in timings.items()]
    print(table(results, [("batching", "batching", ""), ("audio_s_per_s", "audio-s/s", ".1f"),
                          ("of_offline", "of offline", ".0%")]))
    if args.out:
        write_json(args.out, {"benchmark": "batch_composition", "machine": machine(torch.device("cpu")),
                              "settings": {k: str(v) for k, v in vars(args).items()}, "results": results,
                              "timings": timings})
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
