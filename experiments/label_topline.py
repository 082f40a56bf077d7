"""The label-efficiency runs' topline: every transcript of a condition's train split.

``experiments/label_efficiency.py`` fine-tunes on 10 minutes and 1 hour of labels. This trains
the same two models (the pretrained encoder and the same architecture from random weights)
with the same update budget, batch, learning rate schedule and test scoring, on *all* the
labelled audio of the condition (``--minutes``, default more than there is). It tells how
low the test CER can go at this budget: a pretrained-to-scratch ratio at 10 minutes cannot
reach a target below what all the labels give.

    python experiments/label_topline.py --pretrained runs/v8/pretrain2/best.safetensors \\
        --parallel 2 --threads 1 --steps 1000 --batch-seconds 20 --lr 2e-3 \\
        --out-dir runs/le-topline --json docs/results/label-topline.json \\
        run.valid_every=100 run.checkpoint_every=100 run.precision=bf16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from label_efficiency import CONDITIONS, finetune  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", required=True, help="pretrained checkpoint (its architecture is used for both)")
    parser.add_argument("--config", default="configs/ctc/fast.yaml")
    parser.add_argument("--condition", default="synthetic", choices=list(CONDITIONS))
    parser.add_argument("--minutes", type=int, default=100_000, help="labelled minutes drawn (default: all there are)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-seconds", type=float, default=20.0, help="padded seconds per update")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--parallel", type=int, default=2, help="runs at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--test-limit", type=int, default=None, help="score only the first N of each test set")
    parser.add_argument("--out-dir", default="runs/le-topline")
    parser.add_argument("--json", type=Path, help="write both runs' records here")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="passed to both finetune-ctc runs")
    args = parser.parse_args()
    # The fields label_efficiency.finetune reads.
    args.batch_seconds = {args.minutes: args.batch_seconds}
    args.reused, args.pretrained_overrides, args.probe_overrides = {}, [], []
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    start = time.time()
    runs = [(f"{args.condition}-{init}-all-lr{args.lr:g}", init) for init in ("pretrained", "scratch")]
    with ThreadPoolExecutor(args.parallel) as pool:
        rows = list(pool.map(lambda r: finetune(r[0], args, args.condition, args.minutes, r[1], args.lr), runs))
    by_init = {r["init"]: r for r in rows}
    for test in by_init["scratch"]["test"]:
        p, s = by_init["pretrained"]["test"][test]["cer"], by_init["scratch"]["test"][test]["cer"]
        print(f"{args.condition}, all labels, {test}: pretrained CER {p:.3f} / scratch {s:.3f} = {p / max(s, 1e-9):.2f}")
    if args.json:
        report = {"args": {k: v for k, v in vars(args).items() if k not in ("reused", "json")},
                  "runs": rows, "wall_seconds": round(time.time() - start)}
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
