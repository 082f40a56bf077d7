"""Recover the recipe's training-stage outputs from a packaged default model.

The shipped file holds the self-supervised encoder (``wav2vec2.*``, the last pretraining
iteration's), the speaker head trained on it, and the CTC head with the encoder weights CTC
changed (``ctc_encoder.*``). So a later session can rerun one stage without the hours the
others take (in fp16-rounded weights):

    python experiments/recover_stages.py --out runs/default                      # pretrain(2), speaker
    speechssl recipe configs/recipes/default.yaml          # runs data, ctc, evaluate, package

    python experiments/recover_stages.py --out runs/s13 --stages pretrain pretrain2 ctc
    speechssl recipe configs/recipes/default.yaml out_dir=runs/s13 --stage speaker --stage evaluate --stage package

The recovered stages are marked done in ``out/stages.json`` with the seconds and figures the
packaged model's own run recorded for them, and ``recovered_from`` naming the file. The file
holds only the last pretraining iteration's encoder, so a recovered ``pretrain`` holds that
one too (only ``pretrain2`` reads it, and it is recovered with it).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from speechssl.checkpoint import CTC_ENCODER_PREFIX, HEAD_PREFIXES, Checkpoint, load_checkpoint, save_checkpoint

STAGES = ("pretrain", "pretrain2", "ctc", "speaker")


def stage_checkpoints(ckpt: Checkpoint, source: str) -> dict[str, Checkpoint]:
    """Each training stage's best checkpoint as the packaged file still holds it."""
    state, meta = {k: v.float() for k, v in ckpt.state_dict.items()}, ckpt.metadata
    encoder = {k: v for k, v in state.items() if k.startswith("wav2vec2.")}
    heads = {name: {k: v for k, v in state.items() if k.startswith(prefix)} for name, prefix in HEAD_PREFIXES.items()}
    # CTC's encoder: the self-supervised one with every weight fine-tuning changed put back.
    tuned = {**encoder, **{"wav2vec2." + k[len(CTC_ENCODER_PREFIX):]: v for k, v in state.items()
                           if k.startswith(CTC_ENCODER_PREFIX)}}
    pretrain = Checkpoint(encoder, ckpt.model_config, {"kind": "pretrain", "recovered_from": source})
    speaker_meta = {k: meta[k] for k in ("init_from", "speaker_head", "speaker_threshold", "speaker_classes", "step")}
    ctc_meta = {**meta.get("ctc", {}), "kind": "ctc", "vocab": meta["vocab"], "blank_id": meta.get("blank_id", 0)}
    return {"pretrain": pretrain, "pretrain2": pretrain,
            "speaker": Checkpoint({**encoder, **heads["speaker"]}, ckpt.model_config,
                                  {"kind": "speaker", **speaker_meta, "recovered_from": source}),
            "ctc": Checkpoint({**tuned, **heads["ctc"]}, ckpt.model_config, {**ctc_meta, "recovered_from": source})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="speechssl/assets/default.safetensors", help="a packaged default model")
    parser.add_argument("--out", default="runs/default", help="the recipe's out_dir")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=None,
                        help="stages to recover (default: pretrain, pretrain2 where the model had one, speaker)")
    args = parser.parse_args()
    ckpt = load_checkpoint(args.model)
    meta = ckpt.metadata
    if meta.get("kind") != "default" or "speaker_head" not in meta:
        raise SystemExit(f"{args.model}: not a packaged default model (kind {meta.get('kind')!r})")
    stages = args.stages or ["pretrain", *(["pretrain2"] if "pretraining_iteration2" in meta else []), "speaker"]
    out = Path(args.out)
    checkpoints = stage_checkpoints(ckpt, args.model)
    state_path = out / "stages.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    seconds = meta.get("stage_seconds", {})
    # What the packaged run recorded of each stage travels on into the next package.
    recorded = {"pretrain": meta.get("pretraining", {}), "pretrain2": meta.get("pretraining_iteration2", {}),
                "ctc": meta.get("ctc", {}), "speaker": {"step": meta.get("step")}}
    for stage in stages:
        (out / stage).mkdir(parents=True, exist_ok=True)
        save_checkpoint(out / stage / "best.safetensors", checkpoints[stage])
        figures = {k: v for k, v in recorded[stage].items() if k in ("step", "validation")}
        if isinstance(recorded[stage].get("best"), dict):  # older packages kept the figures under "best"
            figures.setdefault("validation", recorded[stage]["best"])
        state[stage] = {**figures, "seconds": seconds.get(stage, recorded[stage].get("seconds", 0.0)),
                        "recovered_from": args.model, "best": str(out / stage / "best.safetensors")}
        print(f"recovered {stage} ({len(checkpoints[stage].state_dict)} tensors) into {out / stage}")
    state_path.write_text(json.dumps(state, indent=2))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
