"""Self-training on top of pretraining: a fine-tuned model transcribes the unlabeled audio, and
a student fine-tunes from the same pretrained encoder on those pseudo-labels plus the true ones.

    python experiments/self_training.py --teacher runs/le-st/synthetic-pretrained-10min-lr0.002/best.safetensors \\
        --pretrained speechssl/assets/default.safetensors --condition synthetic --minutes 10

The unlabeled audio is the condition's train split (`label_efficiency.CONDITIONS`): the same
audio the encoder was pretrained on, whose transcripts the experiment otherwise never reads.
The labeled draw (the seeded ``labeled_hours`` draw of ``label_efficiency.py``) keeps its
true transcripts; every other utterance takes the teacher's greedy transcript, with the least
confident ``1 - --keep`` of them left out (confidence: the mean probability of the words the
teacher emits). No LM: an LM built on the train split's text would read the transcripts the
experiment treats as unknown. ``--rounds 2`` makes the first student the next teacher.

Each round writes ``pseudo.jsonl`` (paths absolute) and trains ``speechssl finetune-ctc ...
--resume`` in ``--out-dir/round-N``, so a re-started script picks up where it stopped; the
records (validation CER, test CER and WER, wall time, pseudo-label CER against the hidden
transcripts) go to ``--out-dir/self-training.json``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from label_efficiency import CONDITIONS, test_scores  # noqa: E402


def pseudo_label(teacher: Path, train: list[str], minutes: float, seed: int, keep: float, out: Path,
                 threads: int) -> dict:
    """Write the round's manifest; return how many rows it kept and the pseudo-labels' CER."""
    import torch

    import speechssl
    from speechssl.data.manifest import normalize_text, read_manifest
    from speechssl.metrics import error_rates
    from speechssl.train.ctc import labeled_subset

    torch.set_num_threads(threads)
    utterances = [u for path in train for u in read_manifest(path)]
    labeled = {u.id for u in labeled_subset(utterances, minutes / 60, seed)}
    rest = [u for u in utterances if u.id not in labeled]
    model = speechssl.load(str(teacher), device="cpu")
    guesses = []
    for i in range(0, len(rest), 64):
        chunk = rest[i : i + 64]
        for utt, t in zip(chunk, model.transcribe([u.path for u in chunk], decoding="greedy")):
            confidence = sum(w.probability for w in t.words) / len(t.words) if t.words else 0.0
            guesses.append((confidence, utt, t.text))
    guesses = [g for g in guesses if g[2]]
    guesses.sort(key=lambda g: -g[0])
    kept = guesses[: round(len(guesses) * keep)]
    refs = [normalize_text(u.text or "") for _, u, _ in kept]
    quality = error_rates(refs, [text for _, _, text in kept]) if kept else {}
    rows = [{"id": u.id, "path": str(Path(u.path).resolve()), "duration": u.duration, "text": u.text,
             "speaker": u.speaker} for u in utterances if u.id in labeled]
    rows += [{"id": u.id, "path": str(Path(u.path).resolve()), "duration": u.duration, "text": text,
              "speaker": u.speaker} for _, u, text in kept]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"labeled": len(labeled), "pseudo_labeled": len(kept), "left_out": len(rest) - len(kept),
            "pseudo_label_cer": round(quality.get("cer", 1.0), 4), "pseudo_label_wer": round(quality.get("wer", 1.0), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="a fine-tuned CTC checkpoint (round 1's teacher)")
    parser.add_argument("--pretrained", required=True, help="the encoder every student starts from")
    parser.add_argument("--condition", choices=list(CONDITIONS), default="synthetic")
    parser.add_argument("--minutes", type=int, choices=[10, 60], default=10, help="the labeled draw that keeps its transcripts")
    parser.add_argument("--keep", type=float, default=1.0, help="fraction of the pseudo-labels kept, most confident first")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--config", default="configs/ctc/fast.yaml")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-seconds", type=float, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="the labeled draw's seed (finetune-ctc's run.seed)")
    parser.add_argument("--out-dir", default="runs/self-training")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="passed to every finetune-ctc run")
    args = parser.parse_args()
    if not 0 < args.keep <= 1:
        raise SystemExit("--keep must be in (0, 1]")
    out_dir = Path(args.out_dir)
    cond = CONDITIONS[args.condition]
    summary_path = out_dir / "self-training.json"
    records = json.loads(summary_path.read_text())["rounds"] if summary_path.is_file() else []
    teacher = Path(args.teacher)
    for n in range(1, args.rounds + 1):
        run_dir = out_dir / f"round-{n}"
        if n <= len(records):
            teacher = run_dir / "best.safetensors"
            continue
        start = time.time()
        manifest = run_dir / "pseudo.jsonl"
        labels = pseudo_label(teacher, cond["train"], args.minutes, args.seed, args.keep, manifest, args.threads)
        print(json.dumps({"round": n, **labels}), flush=True)
        overrides = [f"init_from={args.pretrained}", "labeled_hours=null", f"data.train=[{manifest}]",
                     f"data.valid=[{','.join(cond['valid'])}]", f"optim.max_steps={args.steps}", f"optim.lr={args.lr}",
                     f"optim.warmup_steps={args.steps // 10}", f"optim.hold_steps={args.steps * 4 // 10}",
                     f"data.max_batch_seconds={args.batch_seconds}", f"run.out_dir={run_dir}", "run.progress=false",
                     f"run.threads={args.threads}", f"run.seed={args.seed}", *args.overrides]
        cmd = [sys.executable, "-m", "speechssl.cli", "finetune-ctc", args.config, *overrides, "--resume"]
        print(" ".join(cmd), flush=True)
        with open(out_dir / f"round-{n}.log", "a") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        valid = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        valid = [v for v in valid if v.get("split") == "valid"]
        record = {"round": n, "teacher": str(teacher), "condition": args.condition, "labeled_minutes": args.minutes,
                  **labels, "valid_cer": min(v["cer"] for v in valid), "steps": max(v["step"] for v in valid),
                  "wall_seconds": round(time.time() - start),
                  **test_scores(run_dir / "best.safetensors", cond["test"], None)}
        records.append(record)
        summary_path.write_text(json.dumps({"args": vars(args), "rounds": records}, indent=2) + "\n")
        print(json.dumps(record), flush=True)
        teacher = run_dir / "best.safetensors"


if __name__ == "__main__":
    main()
