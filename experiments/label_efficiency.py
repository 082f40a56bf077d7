"""Label efficiency: CTC fine-tuning of the pretrained encoder vs the same architecture from
random weights, on 10 minutes and on 1 hour of transcribed audio, scored on the test split.

    python experiments/label_efficiency.py --pretrained runs/pretrain-small/best.safetensors

Each run is `speechssl finetune-ctc` with the same config, step budget and labeled subset;
the from-scratch runs also train the conv feature encoder and skip the frozen-transformer
phase, since freezing random weights would only handicap them. Runs resume if re-started.
Writes label-efficiency.{md,png,json} to --results.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def finetune_and_evaluate(name: str, args: argparse.Namespace, hours: float, scratch: bool) -> dict:
    out_dir = finetune(name, args, hours, scratch)
    steps = max(json.loads(line)["step"] for line in (out_dir / "metrics.jsonl").read_text().splitlines())
    row = {"run": name, "labeled_minutes": round(hours * 60), "init": "scratch" if scratch else "pretrained",
           "steps": steps, "test_greedy": evaluate(out_dir / "best.safetensors", args.test, beam=False),
           "test_beam": evaluate(out_dir / "best.safetensors", args.test, beam=True)}
    print(json.dumps(row), flush=True)
    return row


def finetune(name: str, args: argparse.Namespace, hours: float, scratch: bool) -> Path:
    out_dir = Path(args.out_dir) / name
    overrides = [f"init_from={args.pretrained}", f"labeled_hours={hours}", f"data.train=[{args.train}]",
                 f"data.valid=[{args.valid}]", f"optim.max_steps={args.steps}", f"run.out_dir={out_dir}",
                 "run.progress=false", *args.overrides]
    if scratch:
        overrides += ["from_scratch=true", "freeze_feature_encoder=false", "freeze_transformer_steps=0"]
    log = open(Path(args.out_dir) / f"{name}.log", "a")
    cmd = [sys.executable, "-m", "speechssl.cli", "finetune-ctc", args.config, *overrides, "--resume"]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    return out_dir


def evaluate(checkpoint: Path, manifest: str, beam: bool) -> dict:
    cmd = [sys.executable, "-m", "speechssl.cli", "evaluate", "asr", "--checkpoint", str(checkpoint),
           "--manifest", manifest] + (["--beam"] if beam else [])
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", required=True, help="pretrained checkpoint (its architecture is used for both)")
    parser.add_argument("--config", default="configs/ctc/small.yaml")
    parser.add_argument("--train", default="runs/corpus/train.jsonl", help="the labeled subsets are drawn from it")
    parser.add_argument("--valid", default="runs/corpus/valid.jsonl")
    parser.add_argument("--test", default="runs/corpus/test.jsonl")
    parser.add_argument("--hours", type=float, nargs="+", default=[1 / 6, 1.0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--parallel", type=int, default=1, help="runs at once (a GPU has room for several)")
    parser.add_argument("--out-dir", default="runs/label-efficiency")
    parser.add_argument("--results", default="docs/results")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="passed to every finetune-ctc run")
    args = parser.parse_args()
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    runs = [(f"{'scratch' if scratch else 'pretrained'}-{round(h * 60)}min", h, scratch)
            for h in args.hours for scratch in (False, True)]
    start = time.time()
    with ThreadPoolExecutor(args.parallel) as pool:
        rows = list(pool.map(lambda r: finetune_and_evaluate(r[0], args, r[1], r[2]), runs))
    write_results(rows, Path(args.results), args, time.time() - start)


def write_results(rows: list[dict], results: Path, args: argparse.Namespace, wall: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results.mkdir(parents=True, exist_ok=True)
    (results / "label-efficiency.json").write_text(json.dumps({"runs": rows, "args": vars(args), "wall_seconds": round(wall)}, indent=2))
    lines = ["| labeled audio | init | steps | test CER (greedy) | test WER (greedy) | test CER (beam) | test WER (beam) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        g, b = r["test_greedy"], r["test_beam"]
        lines.append(f"| {r['labeled_minutes']} min | {r['init']} | {r['steps']} | {g['cer']:.3f} | {g['wer']:.3f} | "
                     f"{b['cer']:.3f} | {b['wer']:.3f} |")
    ratios = []
    for minutes in sorted({r["labeled_minutes"] for r in rows}):
        pre = next(r for r in rows if r["labeled_minutes"] == minutes and r["init"] == "pretrained")
        scr = next(r for r in rows if r["labeled_minutes"] == minutes and r["init"] == "scratch")
        ratio = pre["test_greedy"]["cer"] / max(scr["test_greedy"]["cer"], 1e-9)
        ratios.append(f"- {minutes} min: pretrained CER / scratch CER = {ratio:.2f} (greedy)")
    (results / "label-efficiency.md").write_text(
        "# Label efficiency (written by experiments/label_efficiency.py)\n\n" + "\n".join(lines) + "\n\n"
        + "\n".join(ratios) + f"\n\nTest split: {args.test}. Wall time: {wall / 60:.1f} min.\n")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for init, marker in (("pretrained", "o"), ("scratch", "s")):
        sel = [r for r in rows if r["init"] == init]
        ax.plot([r["labeled_minutes"] for r in sel], [r["test_greedy"]["cer"] for r in sel], marker=marker, label=init)
    ax.set_xscale("log")
    ax.set_xlabel("labeled audio (minutes)")
    ax.set_ylabel("test CER (greedy)")
    ax.set_ylim(0, max(1.0, max(r["test_greedy"]["cer"] for r in rows)))
    ax.set_title("CTC fine-tuning: pretrained vs from scratch")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(results / "label-efficiency.png", dpi=120)


if __name__ == "__main__":
    main()
