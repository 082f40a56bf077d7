"""Score fusion of speaker heads: is the average of several heads' scores better than one head?

Each checkpoint's unit speaker vectors are concatenated (divided by sqrt(n), so the cosine of
two fused vectors is the mean of the heads' cosines) for every combination of the checkpoints,
then scored as the recipe's evaluate stage does: the validation and test trials (40 utterances
per speaker), raw cosine and AS-norm (top 200) against the recipe's cohort (``Recipe.cohort_utterances``).

    python experiments/speaker_fusion.py runs/sD/speaker/best.safetensors runs/sF/speaker/best.safetensors \\
        --run runs/v13 --json docs/results/speaker-fusion.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import speechssl  # noqa: E402
from speechssl.data.manifest import read_manifest  # noqa: E402
from speechssl.config import load_config  # noqa: E402
from speechssl.data.selection import per_speaker_subset  # noqa: E402
from speechssl.metrics import ScoreNorm, cosine_scores  # noqa: E402
from speechssl.recipe import Recipe, RecipeConfig  # noqa: E402
from speechssl.verification import cohort_vectors, error_figures, make_trials  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="checkpoints with a speaker head")
    parser.add_argument("--run", default="runs/default", help="a recipe out_dir after its data stage")
    parser.add_argument("--recipe", default="configs/recipes/default.yaml", help="the recipe whose cohort draw is used")
    parser.add_argument("--top-k", type=int, default=200, help="AS-norm's cohort scores per side")
    parser.add_argument("--json", type=Path, help="write the EERs here")
    args = parser.parse_args(argv)

    run, real = Path(args.run), Path(args.run) / "real"
    cohort = Recipe(load_config(RecipeConfig, args.recipe, [f"out_dir={args.run}"]), gpu=False).cohort_utterances()
    sets = {name: per_speaker_subset(read_manifest(path), 40, seed=0) for name, path in {
        "valid_synthetic": run / "corpus" / "valid.jsonl", "valid_an4": real / "an4-valid.jsonl",
        "test_synthetic": run / "corpus" / "test.jsonl", "test_an4": real / "an4-test.jsonl"}.items()}
    trials = {name: make_trials([u.speaker for u in utts], seed=0) for name, utts in sets.items()}
    vectors = {}
    for path in args.checkpoints:
        model = speechssl.load(path)
        vectors[path] = {"cohort": cohort_vectors(model, cohort), **{k: cohort_vectors(model, v) for k, v in sets.items()}}

    rows = []
    for size in range(1, len(args.checkpoints) + 1):
        for combo in itertools.combinations(args.checkpoints, size):
            def fused(key: str) -> np.ndarray:
                return np.concatenate([vectors[c][key] for c in combo], 1) / np.sqrt(len(combo))

            norm = ScoreNorm(fused("cohort"), args.top_k)
            row = {"checkpoints": list(combo)}
            for name, t in trials.items():
                v = fused(name)
                row[name] = {"cosine": error_figures(cosine_scores(v, t), t[:, 2])["eer"],
                             "as_norm": error_figures(norm.trial_scores(v, t), t[:, 2])["eer"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"run": args.run, "top_k": args.top_k, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
