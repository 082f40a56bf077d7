"""Where speechssl's encoder time goes: each inference change next to the plain op it replaced.

BASE shapes for a batch of 4 x 10 s, timed interleaved (median of rounds), CPU.

    python benchmarks/components.py [--repeats 7] [--out runs/benchmarks/components.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import interleaved, machine, table, uptime, write_json  # noqa: E402

from speechssl.config import base  # noqa: E402
from speechssl.models.feature_encoder import MaskedGroupNorm, normed_conv, strided_conv  # noqa: E402
from speechssl.models.transformer import Attention, PositionalConv  # noqa: E402


def pairs(batch: int, seconds: float) -> dict[str, dict]:
    """{change: {"before": fn, "after": fn}} on BASE shapes."""
    cfg = base()
    torch.manual_seed(0)
    samples = int(seconds * 16000)
    frames1 = (samples - 10) // 5 + 1
    waves = torch.randn(batch, samples) * 0.1
    w1 = torch.randn(512, 1, 10) * 0.3
    norm = MaskedGroupNorm(512)
    lengths1 = torch.full((batch,), frames1)
    x2 = torch.randn(batch, frames1, 512)  # layer 2 input, channels-last
    x2_cf = x2.transpose(1, 2).contiguous()  # the same, channels-first for conv1d
    w2 = torch.randn(512, 512, 3) * 0.02
    taps2 = w2.permute(2, 1, 0).reshape(-1, 512).contiguous()
    t = (samples - 400) // 320 + 1
    pos = PositionalConv(cfg)
    h = torch.randn(batch, t, 768)
    attention = Attention(cfg).eval()
    big = 64 * 2**20 // 4  # a 64 MB activation
    buffer = torch.empty(big)
    return {
        "conv layer 2 (512->512, k3 s2)": {
            "before": lambda: F.conv1d(x2_cf, w2, stride=2),  # oneDNN, as transformers/torchaudio run it
            "after": lambda: strided_conv(x2, taps2, 3, 2),  # matmuls over strided views
        },
        "conv layer 1 + group norm + GELU": {
            "before": lambda: F.gelu(F.group_norm(F.conv1d(waves[:, None], w1, stride=5), 512, norm.weight, norm.bias)),
            "after": lambda: torch.ops.aten.gelu_(normed_conv(waves.unsqueeze(-1), lengths1, w1.view(512, 10).t(), norm, 10, 5)),
        },
        "positional conv (768 ch, 16 groups, k128)": {
            "before": lambda: F.conv1d(h.transpose(1, 2), pos.weight().detach(), None, padding=64, groups=16),
            "after": lambda: pos.fft_conv(h.transpose(1, 2)),
        },
        "q/k/v projections": {
            "before": lambda: [p(h) for p in (attention.q_proj, attention.k_proj, attention.v_proj)],
            "after": lambda: attention.qkv(h),
        },
        "64 MB activation: fresh tensor vs reused buffer": {
            "before": lambda: torch.empty(big).fill_(1.0),
            "after": lambda: buffer.fill_(1.0),
        },
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default="runs/benchmarks/components.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    report = {"benchmark": "components", "machine": machine(device), "uptime_before": uptime(), "rows": []}
    with torch.inference_mode():
        for name, fns in pairs(args.batch, args.seconds).items():
            print(name, flush=True)
            t = interleaved(fns, args.repeats, device)
            before, after = t["before"]["median_s"], t["after"]["median_s"]
            report["rows"].append({"change": name, "before_ms": 1000 * before, "after_ms": 1000 * after,
                                   "speedup": before / after})
    report["uptime_after"] = uptime()
    print()
    print(table(report["rows"], [("change", "change", ""), ("before_ms", "before (ms)", ".1f"),
                                 ("after_ms", "after (ms)", ".1f"), ("speedup", "speedup", ".2f")]))
    print(report["uptime_after"])
    write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
