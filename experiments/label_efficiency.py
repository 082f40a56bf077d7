"""Label efficiency: CTC fine-tuning of a pretrained encoder vs the same architecture from random
weights, on 10 minutes and 1 hour of transcripts, on synthetic and on real speech.

    python experiments/label_efficiency.py --pretrained runs/pretrain-fast/best.safetensors --parallel 2

Conditions (``--conditions``):
- ``synthetic``: labels drawn from runs/corpus/train, scored on its test split (held-out
  voices and sentences);
- ``real``: labels drawn from AN4's training speakers and LJ Speech's training sentences
  (runs/real, made by experiments/real_splits.py), scored on 13 held-out AN4 speakers and
  60 held-out LJ sentences, neither seen in pretraining, fine-tuning or validation.

For each init, the 10-minute runs of ``--sweep-conditions`` sweep ``--lrs`` (and, for the
pretrained init, ``--pretrained-variants``: e.g. how many bottom layers stay frozen);
validation CER picks the best, and every other run of that init uses it. The same update budget
(``--steps``) everywhere. A frozen-encoder probe (``probe=true``: weighted layer sum + BiLSTM
CTC head) on 10 minutes for each condition. Every run is ``speechssl finetune-ctc ...
--resume``, so a re-started script picks up where it stopped. ``--reuse-scratch FILE`` takes
the scratch rows from an earlier run's label-efficiency.json instead of training them again:
they do not depend on the pretrained encoder, and the settings they ran with must match. Writes
label-efficiency.{md,png,json} to --results.
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
sys.path.insert(0, str(ROOT))

CONDITIONS = {
    "synthetic": {"train": ["runs/corpus/train.jsonl"], "valid": ["runs/corpus/valid.jsonl"],
                  "test": {"synthetic test": "runs/corpus/test.jsonl"}},
    "real": {"train": ["runs/real/an4-train.jsonl", "runs/real/lj-train.jsonl"],
             "valid": ["runs/real/an4-valid.jsonl", "runs/real/lj-valid.jsonl"],
             "test": {"AN4 held-out speakers": "runs/real/an4-test.jsonl",
                      "LJ held-out sentences": "runs/real/lj-test.jsonl"}},
}


# The settings a reused scratch row must share with this run.
SCRATCH_SETTINGS = ("config", "steps", "overrides", "test_limit")


def finetune(name: str, args: argparse.Namespace, cond: str, minutes: int, init: str, lr: float,
             variant: str = "") -> dict:
    """Train (or resume) one run; returns its record with validation and test figures."""
    if init == "scratch" and name in args.reused:
        return args.reused[name]
    out_dir = Path(args.out_dir) / name
    c = CONDITIONS[cond]
    overrides = [f"init_from={args.pretrained}", f"labeled_hours={minutes / 60}", f"data.train=[{','.join(c['train'])}]",
                 f"data.valid=[{','.join(c['valid'])}]", f"optim.max_steps={args.steps}", f"optim.lr={lr}",
                 f"optim.warmup_steps={args.steps // 10}", f"optim.hold_steps={args.steps * 4 // 10}",
                 f"data.max_batch_seconds={args.batch_seconds[minutes]}", f"run.out_dir={out_dir}",
                 "run.progress=false", f"run.threads={args.threads}", *args.overrides]
    if init == "pretrained":
        overrides += args.pretrained_overrides + variant.split()
    if init == "scratch":
        overrides += ["from_scratch=true", "freeze_feature_encoder=false"]
    if init == "probe":
        overrides += ["probe=true", *args.probe_overrides]
    start = time.time()
    done = (out_dir / "result.json")
    if not done.is_file():
        with open(Path(args.out_dir) / f"{name}.log", "a") as log:
            cmd = [sys.executable, "-m", "speechssl.cli", "finetune-ctc", args.config, *overrides, "--resume"]
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        record = {"run": name, "condition": cond, "labeled_minutes": minutes, "init": init, "lr": lr,
                  "variant": variant, "wall_seconds": round(time.time() - start),
                  **test_scores(out_dir / "best.safetensors", c["test"], args.test_limit)}
        valid = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
        valid = [v for v in valid if v.get("split") == "valid"]
        record["valid_cer"] = min(v["cer"] for v in valid)
        record["steps"] = max(v["step"] for v in valid)
        done.write_text(json.dumps(record, indent=2))
    record = json.loads(done.read_text())
    print(json.dumps(record), flush=True)
    return record


def reused_scratch(path: str | None, args: argparse.Namespace) -> dict[str, dict]:
    """Run name -> scratch record of an earlier run with the same settings (see --reuse-scratch)."""
    if not path:
        return {}
    earlier = json.loads(Path(path).read_text())
    for key in SCRATCH_SETTINGS:
        if earlier["args"].get(key) != vars(args)[key]:
            raise SystemExit(f"--reuse-scratch {path}: its {key} was {earlier['args'].get(key)!r}, "
                             f"this run's is {vars(args)[key]!r}")
    if {int(k): v for k, v in earlier["batch_seconds"].items()} != args.batch_seconds:
        raise SystemExit(f"--reuse-scratch {path}: its batch_seconds differ from this run's")
    return {r["run"]: {**r, "reused_from": path} for r in earlier["runs"] if r["init"] == "scratch"}


def test_scores(checkpoint: Path, tests: dict[str, str], limit: int | None) -> dict:
    import torch

    from speechssl.data.manifest import read_manifest
    from speechssl.models.build import load_ctc_model
    from speechssl.train.ctc import score
    from speechssl.train.batches import valid_loader
    from speechssl.train.settings import DataConfig

    torch.set_num_threads(1)
    module, vocab = load_ctc_model(str(checkpoint))
    data = DataConfig(crop_seconds=None, max_batch_seconds=60.0, max_valid_utterances=100_000, min_seconds=0.0)
    return {"test": {name: score(module, valid_loader(read_manifest(path)[:limit], data), vocab)
                     for name, path in tests.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", required=True, help="pretrained checkpoint (its architecture is used for all)")
    parser.add_argument("--config", default="configs/ctc/fast.yaml")
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    parser.add_argument("--lrs", type=float, nargs="+", default=[5e-4, 1e-3], help="swept at 10 minutes per init")
    parser.add_argument("--sweep-conditions", nargs="+", default=["synthetic"],
                        help="conditions whose 10-minute runs sweep --lrs (the others use the winners)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-seconds", type=float, nargs=2, default=[20, 40], metavar=("TEN_MIN", "ONE_HOUR"),
                        help="padded seconds per update at 10 minutes and at 1 hour of labels")
    parser.add_argument("--pretrained-set", dest="pretrained_overrides", action="append", default=[], metavar="key=value",
                        help="a finetune-ctc setting for the pretrained runs only (repeatable; e.g. encoder_lr_scale=0.5)")
    parser.add_argument("--pretrained-variants", nargs="+", default=[""], metavar="'key=value ...'",
                        help="settings swept with --lrs for the pretrained init, one quoted group each "
                             "(e.g. 'frozen_layers=0' 'frozen_layers=3'); the winner is used everywhere")
    parser.add_argument("--reuse-scratch", metavar="JSON", default=None,
                        help="an earlier label-efficiency.json whose scratch rows to reuse (same settings)")
    parser.add_argument("--inits", nargs="+", default=["pretrained", "scratch"], choices=["pretrained", "scratch"],
                        help="train only these (e.g. the scratch rows while the encoder still pretrains: they need "
                             "only its architecture, so --pretrained may be its first checkpoint); tables need both")
    parser.add_argument("--probe-lr", type=float, default=1e-3)
    parser.add_argument("--probe-set", dest="probe_overrides", action="append", default=[], metavar="key=value",
                        help="a finetune-ctc setting for the probes only (repeatable)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: 2 // parallel)")
    parser.add_argument("--test-limit", type=int, default=None, help="score only the first N of each test set (smoke runs)")
    parser.add_argument("--no-probe", action="store_true", help="skip the frozen-encoder probes")
    parser.add_argument("--out-dir", default="runs/label-efficiency")
    parser.add_argument("--results", default="docs/results")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="passed to every finetune-ctc run")
    args = parser.parse_args()
    args.threads = args.threads or max(1, 2 // args.parallel)
    args.batch_seconds = {10: args.batch_seconds[0], 60: args.batch_seconds[1]}
    args.reused = reused_scratch(args.reuse_scratch, args)
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    start = time.time()
    swept = [c for c in args.conditions if c in args.sweep_conditions] or args.conditions[:1]
    variants = {"pretrained": args.pretrained_variants, "scratch": [""]}
    sweep = [(run_name(cond, init, 10, lr, variant), cond, 10, init, lr, variant)
             for cond in swept for init in args.inits for lr in args.lrs for variant in variants[init]]
    if not args.no_probe:
        sweep += [(f"{cond}-probe-10min-lr{args.probe_lr:g}", cond, 10, "probe", args.probe_lr) for cond in args.conditions]
    with ThreadPoolExecutor(args.parallel) as pool:
        rows = list(pool.map(lambda r: finetune(*r[:1], args, *r[1:]), sweep))
        best = pick_best(rows)
        # Conditions not swept take the learning rate (and variant) that won, per init, where the sweep ran.
        win = {init: (best[(swept[0], init)]["lr"], best[(swept[0], init)].get("variant", ""))
               for init in args.inits}
        rest = [(run_name(cond, init, m, *win[init]), cond, m, init, *win[init])
                for m in (10, 60) for cond in args.conditions for init in args.inits
                if m == 60 or cond not in swept]
        rows += list(pool.map(lambda r: finetune(*r[:1], args, *r[1:]), rest))
    if set(args.inits) != {"pretrained", "scratch"}:
        print(f"trained the {' and '.join(args.inits)} rows only; run again with both inits for the tables")
        return
    best = pick_best(rows)
    write_results(rows, best, Path(args.results), args, time.time() - start)


def run_name(cond: str, init: str, minutes: int, lr: float, variant: str = "") -> str:
    """e.g. synthetic-pretrained-10min-lr0.002, or ...-lr0.002-frozen_layers3 with a variant."""
    suffix = "".join(f"-{part.replace('=', '')}" for part in variant.split())
    return f"{cond}-{init}-{minutes}min-lr{lr:g}{suffix}"


def pick_best(rows: list[dict]) -> dict:
    """(condition, init) -> its 10-minute run with the lowest validation CER."""
    best = {}
    for r in rows:
        key = (r["condition"], r["init"])
        if r["init"] != "probe" and r["labeled_minutes"] == 10 and (key not in best or r["valid_cer"] < best[key]["valid_cer"]):
            best[key] = r
    return best


def ratio_lines(rows: list[dict], best: dict) -> list[str]:
    lines = []
    for cond in CONDITIONS:
        for minutes in (10, 60):
            pick = {init: next((r for r in rows if r["condition"] == cond and r["labeled_minutes"] == minutes
                                and r["init"] == init and (minutes == 60 or r is best.get((cond, init)))), None)
                    for init in ("pretrained", "scratch")}
            if None in pick.values():
                continue
            for test in pick["pretrained"]["test"]:
                p, s = pick["pretrained"]["test"][test]["cer"], pick["scratch"]["test"][test]["cer"]
                lines.append(f"- {cond}, {minutes} min, {test}: pretrained CER {p:.3f} / scratch {s:.3f} = **{p / max(s, 1e-9):.2f}**")
    return lines


def write_results(rows: list[dict], best: dict, results: Path, args: argparse.Namespace, wall: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results.mkdir(parents=True, exist_ok=True)
    summary = {"runs": rows, "best_lr": {f"{c}/{i}": r["lr"] for (c, i), r in best.items()},
               "args": {k: v for k, v in vars(args).items() if k not in ("batch_seconds", "reused")},
               "batch_seconds": args.batch_seconds, "wall_seconds": round(wall)}
    (results / "label-efficiency.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = ["| condition | labels | init | lr | updates | valid CER | test set | test CER | test WER | wall (min) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for test, s in r["test"].items():
            chosen = "" if r["init"] == "probe" or r["labeled_minutes"] == 60 or r is best.get((r["condition"], r["init"])) else " (not best)"
            init = r["init"] + (f" {r['variant']}" if r.get("variant") else "") + (" (reused)" if r.get("reused_from") else "")
            lines.append(f"| {r['condition']} | {r['labeled_minutes']} min | {init}{chosen} | {r['lr']:g} | "
                         f"{r['steps']} | {r['valid_cer']:.3f} | {test} | {s['cer']:.3f} | {s['wer']:.3f} | "
                         f"{r['wall_seconds'] / 60:.1f} |")
    (results / "label-efficiency-table.md").write_text(
        "# Label efficiency (written by experiments/label_efficiency.py)\n\n" + "\n".join(lines) + "\n\n"
        + "\n".join(ratio_lines(rows, best)) + f"\n\nWall time: {wall / 60:.1f} min.\n")
    tests = [(c, t) for c in args.conditions for t in CONDITIONS[c]["test"]]
    fig, axes = plt.subplots(1, len(tests), figsize=(4 * len(tests), 3.5), squeeze=False)
    for ax, (cond, test) in zip(axes[0], tests):
        for init, marker in (("pretrained", "o"), ("scratch", "s")):
            sel = sorted([r for r in rows if r["condition"] == cond and r["init"] == init
                          and (r["labeled_minutes"] == 60 or r is best.get((cond, init)))], key=lambda r: r["labeled_minutes"])
            ax.plot([r["labeled_minutes"] for r in sel], [r["test"][test]["cer"] for r in sel], marker=marker, label=init)
        probe = [r for r in rows if r["condition"] == cond and r["init"] == "probe"]
        if probe:
            ax.plot([10], [probe[0]["test"][test]["cer"]], marker="^", linestyle="", label="frozen probe")
        ax.set_xscale("log")
        ax.set_xticks([10, 60], ["10 min", "1 h"])
        ax.minorticks_off()  # the log axis would label 20, 30, 40 min as 2x10^1 ...
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("labeled audio")
        ax.set_ylabel("test CER (greedy)")
        ax.set_title(test, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("CTC fine-tuning: pretrained vs from scratch")
    fig.tight_layout()
    fig.savefig(results / "label-efficiency.png", dpi=120)


if __name__ == "__main__":
    main()
