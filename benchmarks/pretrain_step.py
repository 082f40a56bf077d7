"""One pretraining step, speechssl vs transformers' ``Wav2Vec2ForPreTraining``, same weights and batch.

A step is what a training loop does per update: span mask + distractor sampling, forward
(contrastive + diversity + feature-penalty loss), backward, gradient clipping and an AdamW
update, with the models in train mode (dropout on). speechssl runs ``Wav2Vec2ForPretraining``
as ``speechssl pretrain`` does (``feature_grad_mult`` 0.1, its own masking and sampling);
transformers runs the recipe of its docstring and pretraining example
(``_compute_mask_indices`` / ``_sample_negative_indices``, ``loss / num masked``).
Both get the same AdamW and clip settings as ``speechssl/train/loop.py``. LayerDrop is off
for both so that every step does the same work. Timed interleaved, median over repeats.

    python benchmarks/pretrain_step.py                       # BASE and small, CPU
    python benchmarks/pretrain_step.py --device cuda --bf16  # on a GPU
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import interleaved, load_average, machine, table, uptime, write_json  # noqa: E402

from speechssl.config import base, small  # noqa: E402
from speechssl.interop.hf import hf_config_from_model_config, hf_state_dict  # noqa: E402
from speechssl.models.wav2vec2 import Wav2Vec2ForPretraining  # noqa: E402

PRESETS = {"base": base, "small": small}
LR, BETAS, EPS, WEIGHT_DECAY, CLIP = 5e-4, (0.9, 0.98), 1e-6, 0.01, 5.0  # speechssl's OptimConfig defaults


def build(preset: str, device: torch.device):
    import transformers

    cfg = dataclasses.replace(PRESETS[preset](), layer_drop=0.0)
    torch.manual_seed(0)
    ours = Wav2Vec2ForPretraining(cfg).to(device).train()
    ours.wav2vec2.feature_extractor.grad_scale = 0.1  # speechssl pretrain's feature_grad_mult
    ours.quantizer.temperature = 2.0
    hf_cfg = hf_config_from_model_config(cfg)
    hf_cfg._attn_implementation = "sdpa"
    hf = transformers.Wav2Vec2ForPreTraining(hf_cfg)
    hf.load_state_dict(hf_state_dict(ours.state_dict(), "pretraining"), strict=True)
    hf = hf.to(device).train()
    hf.set_gumbel_temperature(2.0)
    return cfg, ours, hf


def optimizer(model: torch.nn.Module, fused: bool | None = None) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY, fused=fused)


def ours_step(model, opt, waves, lengths, seed: list[int], autocast):
    seed[0] += 1
    generator = torch.Generator().manual_seed(seed[0])
    opt.zero_grad(set_to_none=True)
    with autocast():
        out = model(waves, lengths, num_negatives=100, generator=generator)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    opt.step()
    return out


def hf_step(model, opt, waves, cfg, autocast):
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

    b = waves.shape[0]
    frames = int(model._get_feat_extract_output_lengths(waves.shape[1]))
    mask = _compute_mask_indices((b, frames), mask_prob=cfg.mask_prob, mask_length=cfg.mask_length,
                                 min_masks=cfg.min_masks)
    negatives = _sample_negative_indices((b, frames), num_negatives=100, mask_time_indices=mask)
    mask = torch.tensor(mask, device=waves.device, dtype=torch.long)
    negatives = torch.tensor(negatives, device=waves.device, dtype=torch.long)
    opt.zero_grad(set_to_none=True)
    with autocast():
        out = model(waves, mask_time_indices=mask, sampled_negative_indices=negatives)
    loss = out.loss / mask.sum()  # transformers' example: the summed loss over masked frames
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    opt.step()
    return out


def run(preset: str, args, device: torch.device) -> dict:
    cfg, ours, hf = build(preset, device)
    batch, seconds = args.batch or {"base": 4, "small": 8}[preset], args.seconds
    gen = torch.Generator().manual_seed(1)
    waves = (torch.randn(batch, int(seconds * 16000), generator=gen) * 0.1).to(device)
    lengths = torch.full((batch,), waves.shape[1], dtype=torch.long, device=device)
    if cfg.normalize_waveform:  # transformers' feature extractor normalises on the data side; ours in the model
        waves_hf = (waves - waves.mean(1, keepdim=True)) / torch.sqrt(waves.var(1, keepdim=True, unbiased=False) + 1e-7)
    else:
        waves_hf = waves
    use_bf16 = args.bf16 and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else (lambda: torch.autocast(device.type, enabled=False))
    opt_ours, opt_hf = optimizer(ours), optimizer(hf)
    seed = [0]
    print(f"{preset}: batch {batch} x {seconds:g} s, device {device}{', bf16 autocast' if use_bf16 else ', fp32'}", flush=True)
    systems = {
        "speechssl": lambda: ours_step(ours, opt_ours, waves, lengths, seed, autocast),
        "transformers": lambda: hf_step(hf, opt_hf, waves_hf, cfg, autocast),
    }
    if args.fused_adamw:  # what speechssl's loop would gain from AdamW(fused=True)
        twin = copy.deepcopy(ours)
        opt_twin = optimizer(twin, fused=True)
        systems["speechssl, fused AdamW"] = lambda: ours_step(twin, opt_twin, waves, lengths, seed, autocast)
    timings = interleaved(systems, repeats=args.repeats, device=device, warmup=1)
    rows = []
    for name, t in timings.items():
        rows.append({"preset": preset, "system": name, "batch": f"{batch} x {seconds:g} s",
                     "step_s": t["median_s"], "min_s": t["min_s"],
                     "speedup": timings["transformers"]["median_s"] / t["median_s"], "times_s": t["times_s"]})
    return {"preset": preset, "batch": batch, "seconds": seconds, "precision": "bf16" if use_bf16 else "fp32", "rows": rows}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="base,small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (all systems alike)")
    parser.add_argument("--batch", type=int, default=None, help="clips per batch (default: base 4, small 8)")
    parser.add_argument("--seconds", type=float, default=4.0, help="clip length (speechssl's default crop)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    parser.add_argument("--no-fused-adamw", dest="fused_adamw", action="store_false",
                        help="skip the extra speechssl row with AdamW(fused=True)")
    parser.add_argument("--out", default="runs/benchmarks/pretrain_step.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    load_before = uptime()
    results = [run(p, args, device) for p in args.presets.split(",")]
    rows = [r for res in results for r in res["rows"]]
    print()
    print(table(rows, [("preset", "preset", ""), ("system", "system", ""), ("batch", "batch", ""),
                       ("step_s", "step (s, median)", ".3f"), ("speedup", "vs transformers", ".2f")]))
    report = {"benchmark": "pretrain_step", "device": str(device), "machine": machine(device),
              "uptime_before": load_before, "uptime_after": uptime(), "load_after": load_average(),
              "results": results}
    write_json(args.out, report)
    print(f"\nwrote {args.out}")
    return report


if __name__ == "__main__":
    main()
