"""Recover the recipe's pretrain and speaker stage outputs from a packaged default model.

The shipped file holds the self-supervised encoder (``wav2vec2.*``) and the speaker head
trained on it, so a later session can rerun only the CTC and evaluation stages (with the
same encoder and speaker head, in fp16-rounded weights) without the 80 minutes the other
two take:

    python experiments/recover_stages.py --model speechssl/assets/default.safetensors --out runs/default
    speechssl recipe configs/recipes/default.yaml          # runs data, ctc, evaluate, package

The recovered stages are marked done in ``out/stages.json`` with the seconds the packaged
model's own run spent on them, and ``recovered_from`` naming the file.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from speechssl.checkpoint import Checkpoint, load_checkpoint, save_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="speechssl/assets/default.safetensors", help="a packaged default model")
    parser.add_argument("--out", default="runs/default", help="the recipe's out_dir")
    args = parser.parse_args()
    ckpt = load_checkpoint(args.model)
    meta = ckpt.metadata
    if meta.get("kind") != "default" or "speaker_head" not in meta:
        raise SystemExit(f"{args.model}: not a packaged default model (kind {meta.get('kind')!r})")
    out = Path(args.out)
    encoder = {k: v.float() for k, v in ckpt.state_dict.items() if k.startswith("wav2vec2.")}
    speaker = {**encoder, **{k: v.float() for k, v in ckpt.state_dict.items() if k.startswith("speaker_head.")}}
    (out / "pretrain").mkdir(parents=True, exist_ok=True)
    (out / "speaker").mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "pretrain" / "best.safetensors",
                    Checkpoint(encoder, ckpt.model_config, {"kind": "pretrain", "recovered_from": args.model}))
    speaker_meta = {k: meta[k] for k in ("init_from", "speaker_head", "speaker_threshold", "speaker_classes", "step")}
    save_checkpoint(out / "speaker" / "best.safetensors",
                    Checkpoint(speaker, ckpt.model_config, {"kind": "speaker", **speaker_meta, "recovered_from": args.model}))
    state_path = out / "stages.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    seconds = meta.get("stage_seconds", {})
    for stage in ("pretrain", "speaker"):
        state[stage] = {"seconds": seconds.get(stage, 0.0), "recovered_from": args.model,
                        "best": str(out / stage / "best.safetensors")}
    # The pretraining run's step and validation figures travel on into the next package.
    pretraining = meta.get("pretraining", {})
    state["pretrain"].update(step=pretraining.get("step"), validation=pretraining.get("validation", pretraining.get("best")))
    state_path.write_text(json.dumps(state, indent=2))
    print(f"recovered pretrain ({len(encoder)} tensors) and speaker ({len(speaker)} tensors) into {out}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
