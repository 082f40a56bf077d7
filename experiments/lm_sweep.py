"""Pick the beam search's LM weight and word score on validation speech, never on a test set.

The emissions of every validation utterance are computed once; each (lm_weight,
word_score) pair then only decodes. The pick minimises the mean, over the validation sets
given (by default the recipe's: AN4 and LJ Speech validation speakers/sentences and the
synthetic valid split), of each set's error rate named by ``--objective`` (by default the
measure the default model's targets use: WER on AN4, CER on LJ Speech and synthetic
speech), so no held-out test speaker shapes the decoder.

    python experiments/lm_sweep.py --checkpoint runs/default/model.safetensors \\
        --json runs/default/lm-sweep.json
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import speechssl  # noqa: E402
from speechssl.audio import load_audio  # noqa: E402
from speechssl.data.manifest import normalize_text, read_manifest  # noqa: E402
from speechssl.decode.ctc import lm_decoder  # noqa: E402
from speechssl.decode.ngram import build_arpa, english_words  # noqa: E402
from speechssl.recipe import lm_sentences  # noqa: E402
from speechssl.metrics import error_rates  # noqa: E402

DEFAULT_SETS = {"an4": "runs/default/real/an4-valid.jsonl", "lj": "runs/default/real/lj-valid.jsonl",
                "synthetic": "runs/default/corpus/valid.jsonl"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/default/model.safetensors",
                        help="a CTC checkpoint that carries a word n-gram (the recipe's model.safetensors)")
    parser.add_argument("--sets", nargs="+", default=[f"{k}={v}" for k, v in DEFAULT_SETS.items()],
                        metavar="NAME=MANIFEST", help="validation manifests (transcribed)")
    parser.add_argument("--max-utterances", type=int, default=150, help="per set, the first N")
    parser.add_argument("--lm-weights", type=float, nargs="+", default=[0.3, 0.5, 0.8, 1.1, 1.5])
    parser.add_argument("--word-scores", type=float, nargs="+", default=[-1.0, 0.0, 1.0, 2.0])
    parser.add_argument("--objective", nargs="+", default=["an4=wer", "lj=cer", "synthetic=cer"],
                        metavar="NAME=wer|cer", help="the error rate each set adds to the mean (default: wer)")
    parser.add_argument("--backgrounds", nargs="+", default=None, metavar="WORDS:WEIGHT",
                        help="rebuild the LM from --run's training transcripts with this many general English "
                        "words mixed in at this weight (0:0 for none) and sweep each; default: the checkpoint's LM")
    parser.add_argument("--run", default="runs/default", help="the recipe run whose transcripts --backgrounds rebuilds from")
    parser.add_argument("--json", type=Path, help="write every pair's figures and the pick here")
    args = parser.parse_args(argv)

    objective = dict(item.partition("=")[::2] for item in args.objective)
    if set(objective.values()) - {"wer", "cer"}:
        parser.error("--objective values are wer or cer")
    model = speechssl.load(args.checkpoint)
    if model.lm is None:
        parser.error(f"{args.checkpoint} carries no language model")
    sets = {}
    for spec in args.sets:
        name, _, path = spec.partition("=")
        utts = [u for u in read_manifest(path) if u.text][: args.max_utterances]
        waves = [load_audio(u.path) for u in utts]
        sets[name] = ([normalize_text(u.text) for u in utts], model.emissions(waves), [len(w) for w in waves])
    base = dict(model.metadata.get("lm") or {})
    lms = {"checkpoint": model.lm}
    if args.backgrounds:
        sentences, lms = lm_sentences(args.run), {}
        for spec in args.backgrounds:
            words, _, weight = spec.partition(":")
            background = english_words(int(words)) if int(words) else None
            arpa = build_arpa(sentences, int(base.get("order", 3)), background=background,
                              background_weight=float(weight or 0))
            lms[spec] = gzip.compress(arpa.encode())
    rows = []
    for (lm_name, lm), weight, score in itertools.product(lms.items(), args.lm_weights, args.word_scores):
        start = time.perf_counter()
        decoder = lm_decoder(model.vocab, lm, {**base, "lm_weight": weight, "word_score": score})
        row = {"lm": lm_name, "lm_weight": weight, "word_score": score}
        for name, (refs, emissions, lengths) in sets.items():
            hyps = [model.transcript(e, n, decoder, timestamps=False).text for e, n in zip(emissions, lengths)]
            row[name] = error_rates(refs, hyps)
        row["objective"] = round(sum(row[name][objective.get(name, "wer")] for name in sets) / len(sets), 4)
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        print(f"lm {lm_name} lm_weight={weight:<4g} word_score={score:<4g} objective {row['objective']:.4f}  "
              + "  ".join(f"{n} WER {row[n]['wer']:.3f} CER {row[n]['cer']:.3f}" for n in sets), flush=True)
    best = min(rows, key=lambda r: r["objective"])
    print(f"best: lm {best['lm']} lm_weight={best['lm_weight']} word_score={best['word_score']} objective {best['objective']} "
          f"(the checkpoint's: lm_weight={base.get('lm_weight')} word_score={base.get('word_score')})")
    if args.json:
        args.json.write_text(json.dumps({"checkpoint": args.checkpoint, "sets": args.sets, "objective": objective, "rows": rows,
                                         "best": {k: best[k] for k in ("lm", "lm_weight", "word_score")}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
