"""Pretraining throughput: audio-seconds of training data per wall-second, per configuration.

One step is what ``speechssl pretrain`` does per update: masking (and distractors or
labels), forward, backward, gradient clipping and an AdamW update, in train mode. The
masked-prediction rows include computing the labels (log-mel/MFCC features and the
nearest k-means centre) from the batch. Data loading is not timed (a worker does it
beside the step). Configurations are timed interleaved, median over rounds.

    python benchmarks/pretrain_throughput.py                  # the table in docs/pretraining.md
    python benchmarks/pretrain_throughput.py --repeats 1 --only today   # a quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import interleaved, machine, table, write_json  # noqa: E402

from speechssl.config import build_model_config  # noqa: E402
from speechssl.models.masked_prediction import Wav2Vec2ForMaskedPrediction  # noqa: E402
from speechssl.models.targets import FrameFeatures, KMeansLabeler  # noqa: E402
from speechssl.models.wav2vec2 import Wav2Vec2ForPretraining  # noqa: E402

WIDE = {"preset": "fast", "hidden_size": 384, "num_layers": 8, "num_heads": 6, "ffn_dim": 1536}  # configs/pretrain/wide.yaml

# name: (model overrides, objective, batch items, crop seconds, bf16 autocast)
CONFIGS = {
    "today": ({"preset": "small"}, "contrastive", 6, 4.0, False),
    "conv + hubert": ({"preset": "small"}, "hubert", 6, 4.0, False),
    "log-mel + contrastive": ({"preset": "small", "front_end": "log_mel"}, "contrastive", 6, 4.0, False),
    "log-mel + hubert": ({"preset": "small", "front_end": "log_mel"}, "hubert", 6, 4.0, False),
    "log-mel + hubert, 12 x 4 s": ({"preset": "small", "front_end": "log_mel"}, "hubert", 12, 4.0, False),
    "log-mel + hubert, bf16": ({"preset": "small", "front_end": "log_mel"}, "hubert", 6, 4.0, True),
    "log-mel + hubert, 4 x 256": ({"preset": "fast", "num_layers": 4}, "hubert", 6, 4.0, False),
    "fast preset (6 x 256) + hubert": ({"preset": "fast"}, "hubert", 6, 4.0, False),
    "fast preset + hubert, 8 x 4 s": ({"preset": "fast"}, "hubert", 8, 4.0, False),
    # bf16 autocast pays only where the processor has bf16 matmul units (AMX, avx512_bf16).
    "fast preset + hubert, 8 x 4 s, bf16": ({"preset": "fast"}, "hubert", 8, 4.0, True),
    "8 x 384 log-mel + hubert, 8 x 4 s": (WIDE, "hubert", 8, 4.0, False),
    "8 x 384 log-mel + hubert, 8 x 4 s, bf16": (WIDE, "hubert", 8, 4.0, True),
}


def make_step(name: str):
    overrides, objective, items, seconds, bf16 = CONFIGS[name]
    cfg = dataclasses.replace(build_model_config(overrides), layer_drop=0.0)  # every step does the same work
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    waves = torch.randn(items, int(seconds * 16000), generator=gen) * 0.1
    lengths = torch.full((items,), waves.shape[1], dtype=torch.long)
    if objective == "contrastive":
        model = Wav2Vec2ForPretraining(cfg).train()
        model.wav2vec2.feature_extractor.grad_scale = 0.1
        model.quantizer.temperature = 2.0
        features = labeler = None
    else:
        features = FrameFeatures(cfg, "mfcc")
        labeler = KMeansLabeler(torch.randn(100, features.dim, generator=gen))
        model = Wav2Vec2ForMaskedPrediction(cfg, labeler.num_classes).train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    seed = [0]

    def step():
        seed[0] += 1
        generator = torch.Generator().manual_seed(seed[0])
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if objective == "contrastive":
                out = model(waves, lengths, num_negatives=100, generator=generator)
            else:
                labels = labeler(features(waves, lengths)[0])
                out = model(waves, lengths, labels, generator=generator)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    params = sum(p.numel() for p in model.parameters())
    return step, items * seconds, params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", choices=list(CONFIGS), help="configurations to time (default: all)")
    parser.add_argument("--out", default="runs/benchmarks/pretrain_throughput.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.only or list(CONFIGS)
    steps = {n: make_step(n) for n in names}
    timings = interleaved({n: s[0] for n, s in steps.items()}, repeats=args.repeats, device=torch.device("cpu"))
    base = steps["today"][1] / timings["today"]["median_s"] if "today" in timings else None
    rows = []
    for n in names:
        audio = steps[n][1]
        rate = audio / timings[n]["median_s"]
        rows.append({"configuration": n, "params_M": round(steps[n][2] / 1e6, 1), "audio_s_per_step": audio,
                     "step_s": round(timings[n]["median_s"], 3), "audio_s_per_wall_s": round(rate, 1),
                     "vs_today": round(rate / base, 2) if base else None})
    print(table(rows, [("configuration", "configuration", ""), ("params_M", "params (M)", ".1f"),
                       ("audio_s_per_step", "audio s / step", ".0f"), ("step_s", "step (s)", ".3f"),
                       ("audio_s_per_wall_s", "audio s / wall s", ".1f"), ("vs_today", "x today", ".2f")]))
    write_json(args.out, {"machine": machine(torch.device("cpu")), "threads": args.threads, "repeats": args.repeats, "rows": rows})


if __name__ == "__main__":
    main()
