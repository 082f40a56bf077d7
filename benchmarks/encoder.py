"""Encoder inference speed: speechssl vs transformers' ``Wav2Vec2Model`` (sdpa) vs torchaudio's
``wav2vec2_base``, all three holding the same BASE weights.

The weights are a transformers ``Wav2Vec2Model`` at its own random init (nothing can be
downloaded here), saved with ``save_pretrained``, imported into speechssl with ``import_hf``
(what ``speechssl import-hf`` runs) and into torchaudio with its ``import_huggingface_model``.
speechssl runs through its public API (``speechssl.load(...).encode``: numpy in, numpy out,
length-sorted batches); the peers get tensors and return the last hidden state.

Two workloads, each timed interleaved (round-robin, rotating order), median over repeats:

(a) fixed batch: N clips x S seconds in one batch (default 4 x 10 s). No padding, so all
    three must agree to float rounding; the max abs difference is printed.
(b) stream: M clips of 1-20 s (seeded uniform) in arrival order. The peers take batches of
    8 in that order, zero-padded to the longest (transformers without an attention mask, as
    its BASE recipe says; torchaudio with lengths). speechssl gets the whole list, as its
    ``embed([...])`` and its server do, and batches it sorted by length. The BASE group norm
    of transformers and torchaudio mixes padding into the statistics (speechssl's uses valid
    frames only), so outputs are compared per item, against each peer run on the item alone.

(c) families: HuBERT, Data2Vec-Audio and WavLM at their transformers BASE layouts (random
    init, imported like (a)), speechssl fp32 vs transformers on the fixed batch, one family's
    rounds after another.

On CPU the bf16 paths (autocast; ``--no-bf16`` skips them) and int8 + bf16 are timed too.

ONNX Runtime peers (CPU; ``--no-onnx`` skips them): transformers' model and speechssl's encoder,
each exported from the same weights with torch.export (``speechssl.interop.onnx``; the legacy
TorchScript exporter gives wrong outputs for transformers' model), run in an ``InferenceSession``
with ``--threads`` intra-op threads, fp32 and onnxruntime's dynamic int8 of the transformer
layers' matmuls (``quantize_int8``, the scope of speechssl's own int8). In (a) they take the
batch, in (b) the peers' padded batches of 8; speechssl's file takes the lengths too, so its
items equal transformers run on each alone. Needs ``pip install onnx onnxscript onnxruntime``.

Achieved GFLOP/s count the useful work (each clip's own frames; no padding) with a direct
convolution's FLOPs, and are shown as a fraction of this machine's fp32 (or bf16) matmul peak,
measured inside the same rounds. On CPU the int8 path (``quantize="int8"``) is timed too.

    python benchmarks/encoder.py                                   # CPU, the issue's settings
    python benchmarks/encoder.py --stream 16 --repeats 2 --stream-repeats 1   # quick
    python benchmarks/encoder.py --device cuda --fixed-batch 64 --stream 512 --max-batch-seconds 600
    python benchmarks/encoder.py --cer-only --cer-checkpoint speechssl/assets/default.safetensors \
        --cer-manifest runs/default/corpus/test.jsonl runs/default/real/an4-test.jsonl --cer-limit 400
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import interleaved, load_average, machine, table, uptime, write_json  # noqa: E402

from speechssl.config import ModelConfig  # noqa: E402

RATE = 16000


# --------------------------------------------------------------------------- FLOPs


def encoder_gflop(cfg: ModelConfig, samples: int) -> float:
    """Forward FLOPs (2 per multiply-add) of one unpadded clip, direct convolutions."""
    flops, length, in_dim = 0, samples, 1
    for dim, kernel, stride in zip(cfg.conv_dims, cfg.conv_kernels, cfg.conv_strides):
        length = max(0, (length - kernel) // stride + 1)
        flops += 2 * length * dim * in_dim * kernel
        in_dim = dim
    t, c = length, cfg.hidden_size
    flops += 2 * t * in_dim * c  # feature projection
    flops += 2 * t * c * (c // cfg.pos_conv_groups) * cfg.pos_conv_kernel  # positional conv
    per_layer = 2 * t * c * (4 * c + 2 * cfg.ffn_dim) + 4 * t * t * c  # projections, FFN, attention
    return (flops + cfg.num_layers * per_layer) / 1e9


# --------------------------------------------------------------------------- models


def save_and_import(hf, folder: Path) -> Path:
    """A transformers model saved as a folder and imported as ``import-hf`` does: the checkpoint path."""
    import transformers

    from speechssl.interop.hf import import_hf

    hf.save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(folder)
    import_hf(folder, folder.with_suffix(".safetensors"))
    return folder.with_suffix(".safetensors")


def random_clips(size: int, seconds: float) -> list[np.ndarray]:
    """The fixed batch's clips: ``size`` seeded noise clips of ``seconds``."""
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(int(seconds * RATE), generator=gen) * 0.1).numpy() for _ in range(size)]


def build_models(device: torch.device, workdir: Path, want_torchaudio: bool, int8: bool, max_batch_seconds: float,
                 bf16: bool = True, onnx_threads: int | None = None, onnx_arena: bool = True):
    import transformers

    import speechssl

    torch.manual_seed(0)
    config = transformers.Wav2Vec2Config()  # transformers' BASE (wav2vec2-base) layout
    config._attn_implementation = "sdpa"
    hf = transformers.Wav2Vec2Model(config).eval()
    start = time.perf_counter()
    save_and_import(hf, workdir / "base")
    models = {"hf": hf.to(device)}
    models["speechssl"] = speechssl.load(workdir / "base.safetensors", device=str(device), precision="fp32")
    models["load_s"] = time.perf_counter() - start
    if int8 and device.type == "cpu":
        models["speechssl int8"] = speechssl.load(workdir / "base.safetensors", device="cpu", quantize="int8")
    if bf16 or device.type == "cuda":
        models["speechssl bf16"] = speechssl.load(workdir / "base.safetensors", device=str(device), precision="bf16")
    if bf16 and int8 and device.type == "cpu":
        models["speechssl int8+bf16"] = speechssl.load(workdir / "base.safetensors", device="cpu", quantize="int8",
                                                       precision="bf16")
    for name in [k for k in models if k.startswith("speechssl")]:
        models[name].max_batch_seconds = max_batch_seconds
    if want_torchaudio:
        from torchaudio.models.wav2vec2.utils import import_huggingface_model

        models["torchaudio"] = import_huggingface_model(hf.cpu()).eval().to(device)
        hf.to(device)
    if onnx_threads and device.type == "cpu":
        models.update(onnx_sessions(models["hf"], workdir, onnx_threads, int8, onnx_arena))
    return models


# --------------------------------------------------------------------------- onnxruntime peers

ONNX_SYSTEMS = ("onnxruntime (transformers)", "onnxruntime (transformers) int8", "onnxruntime (speechssl)",
                "onnxruntime (speechssl) int8")


class LastHidden(torch.nn.Module):
    """transformers' model with one tensor out, its last hidden state, as the exporter wants."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        return self.model(waves).last_hidden_state


def export_hf_onnx(hf, out: Path) -> Path:
    """transformers' model as ONNX, batch and samples dynamic, with torch.export (``dynamo=True``):
    the legacy TorchScript exporter's file is wrong (4.7 max abs even at the traced shape)."""
    from speechssl.interop.onnx import export_module

    batch, samples = torch.export.Dim("batch"), torch.export.Dim("samples", min=400)
    example = (torch.randn(2, 2 * RATE, generator=torch.Generator().manual_seed(0)) * 0.1,)
    export_module(LastHidden(hf), example, {"waves": {0: batch, 1: samples}}, out, ["waves"], ["hidden"])
    return out


def onnx_sessions(hf, workdir: Path, threads: int, int8: bool, arena: bool = True) -> dict:
    """{system: InferenceSession} for ONNX_SYSTEMS (the int8 ones only with ``int8``), and
    "onnx_export_s": the seconds each export took."""
    import onnxruntime as ort

    import speechssl
    from speechssl.interop.onnx import export_encoder, quantize_int8

    files, seconds = {}, {}
    start = time.perf_counter()
    files["onnxruntime (transformers)"] = export_hf_onnx(hf, workdir / "transformers.onnx")
    seconds["transformers"] = time.perf_counter() - start
    start = time.perf_counter()
    # Its own copy of the encoder: the export sets the parameters to require gradients.
    encoder = speechssl.load(workdir / "base.safetensors", device="cpu", precision="fp32").encoder
    files["onnxruntime (speechssl)"] = export_encoder(encoder, workdir / "speechssl.onnx")
    seconds["speechssl"] = time.perf_counter() - start
    print("ONNX export: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()), flush=True)
    if int8:
        for name, path in list(files.items()):
            files[f"{name} int8"] = quantize_int8(path, path.with_suffix(".int8.onnx"))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # the torch systems' thread count
    options.inter_op_num_threads = 1
    if not arena:  # the arena keeps each session's peak: 4 sessions over the stream's batches exhausted 23 GB
        options.enable_cpu_mem_arena = False
    sessions = {name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                for name, path in files.items()}
    return {**sessions, "onnx_export_s": seconds}


# --------------------------------------------------------------------------- runners


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def hf_run(hf, waves: torch.Tensor, bf16: bool) -> torch.Tensor:
    with torch.inference_mode(), autocast(waves.device, bf16):
        return hf(waves).last_hidden_state.float().cpu()


def torchaudio_run(model, waves: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    with torch.inference_mode():
        return model(waves, lengths)[0].float().cpu()


def onnx_run(session, waves: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """One batch through an onnxruntime session: its first output, the last hidden state."""
    feed = {"waves": waves.cpu().numpy()}
    if lengths is not None:
        feed["lengths"] = lengths.cpu().numpy()
    return torch.from_numpy(session.run(None, feed)[0])


def onnx_batch(models, name: str):
    """run_batch(waves, lengths) of an ONNX system: speechssl's file takes the lengths,
    transformers' does not (its torch model gets none either)."""
    session, lengths = models[name], "(speechssl)" in name
    return lambda waves, n: onnx_run(session, waves, n if lengths else None)


def peer_stream(run_batch, clips: list[np.ndarray], batch: int, device: torch.device) -> list[torch.Tensor]:
    """Arrival order, ``batch`` clips at a time, zero-padded to the longest; per clip its valid frames."""
    out = []
    for i in range(0, len(clips), batch):
        group = clips[i : i + batch]
        longest = max(len(c) for c in group)
        padded = torch.zeros(len(group), longest)
        for row, clip in enumerate(group):
            padded[row, : len(clip)] = torch.from_numpy(clip)
        lengths = torch.tensor([len(c) for c in group])
        hidden = run_batch(padded.to(device), lengths.to(device))
        frames = (lengths - 400) // 320 + 1
        out.extend(hidden[row, : int(frames[row])] for row in range(len(group)))
    return out


def in_its_batch(run_batch, clips: list[np.ndarray], i: int, batch: int, device: torch.device) -> torch.Tensor:
    """Clip i's frames as ``peer_stream`` gives them (padded within its arrival-order batch),
    running that batch only."""
    start = i // batch * batch
    return peer_stream(run_batch, clips[start : start + batch], batch, device)[i - start]


def min_cosine(a, b) -> float:
    """The lowest cosine over frames of two (..., T, C) outputs."""
    a, b = torch.as_tensor(np.asarray(a)).float(), torch.as_tensor(np.asarray(b)).float()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min())


def max_diff(a, b) -> float:
    a, b = torch.as_tensor(np.asarray(a)).float(), torch.as_tensor(np.asarray(b)).float()
    return float((a - b).abs().max())


def peak_probe(device: torch.device, dtype: torch.dtype, size: int):
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    return (lambda: a @ b), 2 * size**3 / 1e9


# --------------------------------------------------------------------------- workloads


def fixed_batch(models, args, device, cfg: ModelConfig, size: int) -> dict:
    clips = random_clips(size, args.fixed_seconds)
    waves = torch.from_numpy(np.stack(clips)).to(device)
    audio_s = size * args.fixed_seconds
    gflop = size * encoder_gflop(cfg, len(clips[0]))
    ours = models["speechssl"]
    ref = hf_run(models["hf"], waves, bf16=False)
    agree = {"speechssl vs transformers": max(max_diff(f, ref[i]) for i, f in enumerate(ours.encode(clips)))}
    systems = {"speechssl": lambda: ours.encode(clips)}
    if "speechssl int8" in models:
        q = models["speechssl int8"].encode(clips)
        agree["speechssl int8 vs transformers fp32 (max abs)"] = max(max_diff(f, ref[i]) for i, f in enumerate(q))
        agree["speechssl int8 vs transformers fp32 (min frame cosine)"] = min(min_cosine(f, ref[i]) for i, f in enumerate(q))
        systems["speechssl int8"] = lambda: models["speechssl int8"].encode(clips)
    if "speechssl bf16" in models:
        b16 = models["speechssl bf16"].encode(clips)
        agree["speechssl bf16 vs transformers fp32"] = max(max_diff(f, ref[i]) for i, f in enumerate(b16))
        systems["speechssl bf16"] = lambda: models["speechssl bf16"].encode(clips)
    if "speechssl int8+bf16" in models:
        both = models["speechssl int8+bf16"].encode(clips)
        agree["speechssl int8+bf16 vs transformers fp32"] = max(max_diff(f, ref[i]) for i, f in enumerate(both))
        systems["speechssl int8+bf16"] = lambda: models["speechssl int8+bf16"].encode(clips)
    systems["transformers"] = lambda: hf_run(models["hf"], waves, bf16=False)
    if device.type == "cuda":
        agree["transformers bf16 vs fp32"] = max_diff(hf_run(models["hf"], waves, bf16=True), ref)
        systems["transformers bf16"] = lambda: hf_run(models["hf"], waves, bf16=True)
    if "torchaudio" in models:
        agree["torchaudio vs transformers"] = max_diff(torchaudio_run(models["torchaudio"], waves, None), ref)
        systems["torchaudio"] = lambda: torchaudio_run(models["torchaudio"], waves, None)
    full = torch.full((size,), waves.shape[1])
    for name in (n for n in ONNX_SYSTEMS if n in models):
        run = onnx_batch(models, name)
        out = run(waves, full)
        agree[f"{name} vs transformers"] = max_diff(out, ref)
        if name.endswith("int8"):
            agree[f"{name} vs transformers (min frame cosine)"] = min_cosine(out, ref)
        systems[name] = lambda run=run: run(waves, full)
    if args.compile:
        systems.update(compiled_systems(models, clips, agree, ref))
    peaks = {"fp32": peak_probe(device, torch.float32, 2048 if device.type == "cpu" else 8192)}
    if "speechssl bf16" in models:
        peaks["bf16"] = peak_probe(device, torch.bfloat16, 2048 if device.type == "cpu" else 8192)
    for name, (fn, _) in peaks.items():
        systems[f"peak {name}"] = fn
    print(f"(a) fixed batch: {size} x {args.fixed_seconds:g} s, {gflop:.0f} GFLOP", flush=True)
    for k, v in agree.items():
        print(f"  {k}: {v:.3g}")
    timings = interleaved(systems, args.repeats, device)
    peak = {name: flop / timings[f"peak {name}"]["median_s"] for name, (_, flop) in peaks.items()}
    return summarize(f"fixed {size}x{args.fixed_seconds:g}s", timings, audio_s, gflop, peak, agree)


def compiled_systems(models, clips, agree: dict, ref) -> dict:
    """speechssl with ``torch.compile`` on its encoder (fixed shapes); the compile time is the first call's."""
    out = {}
    for name in ("speechssl bf16", "speechssl"):
        if name not in models:
            continue
        compiled = copy.copy(models[name])  # the same weights; only this copy's encoder is compiled
        compiled.encoder = torch.compile(models[name].encoder, dynamic=False)
        start = time.perf_counter()
        first = compiled.encode(clips)
        agree[f"{name} compiled: compile + first call (s)"] = time.perf_counter() - start
        agree[f"{name} compiled vs transformers fp32"] = max(max_diff(f, ref[i]) for i, f in enumerate(first))
        out[f"{name} compiled"] = lambda c=compiled: c.encode(clips)
        break  # the fastest precision only: compiling costs minutes on a CPU
    return out


def stream(models, args, device, cfg: ModelConfig) -> dict:
    rng = np.random.default_rng(1)
    seconds = rng.uniform(1.0, 20.0, args.stream)
    clips = [(rng.standard_normal(int(s * RATE)) * 0.1).astype(np.float32) for s in seconds]
    audio_s = float(seconds.sum())
    gflop = sum(encoder_gflop(cfg, len(c)) for c in clips)
    padded_s = sum(max(seconds[i : i + args.peer_batch]) * len(seconds[i : i + args.peer_batch])
                   for i in range(0, len(seconds), args.peer_batch))
    hf, ours = models["hf"], models["speechssl"]

    def hf_batch(w, n, bf16=False):
        return hf_run(hf, w, bf16)

    systems = {"speechssl": lambda: ours.encode(clips)}
    if "speechssl int8" in models:
        systems["speechssl int8"] = lambda: models["speechssl int8"].encode(clips)
    if "speechssl bf16" in models:
        systems["speechssl bf16"] = lambda: models["speechssl bf16"].encode(clips)
    if "speechssl int8+bf16" in models:
        systems["speechssl int8+bf16"] = lambda: models["speechssl int8+bf16"].encode(clips)
    systems["transformers"] = lambda: peer_stream(hf_batch, clips, args.peer_batch, device)
    if device.type == "cuda":
        systems["transformers bf16"] = lambda: peer_stream(lambda w, n: hf_batch(w, n, True), clips, args.peer_batch, device)
    if "torchaudio" in models:
        ta = models["torchaudio"]
        systems["torchaudio"] = lambda: peer_stream(lambda w, n: torchaudio_run(ta, w, n), clips, args.peer_batch, device)
    onnx_names = [n for n in ONNX_SYSTEMS if n in models]
    for name in onnx_names:
        systems[name] = lambda run=onnx_batch(models, name): peer_stream(run, clips, args.peer_batch, device)
    # Agreement per item: speechssl's stream output vs each peer on the item alone (no padding).
    order = np.argsort(seconds)
    picks = [int(order[0]), int(order[len(order) // 2]), int(order[-1])]
    ours_out = ours.encode(clips)
    hf_stream = peer_stream(hf_batch, clips, args.peer_batch, device)
    agree = {"speechssl stream vs transformers alone": 0.0, "transformers padded batch vs alone": 0.0}
    for i in picks:
        alone = hf_run(hf, torch.from_numpy(clips[i])[None].to(device), False)[0]
        agree["speechssl stream vs transformers alone"] = max(agree["speechssl stream vs transformers alone"], max_diff(ours_out[i], alone))
        agree["transformers padded batch vs alone"] = max(agree["transformers padded batch vs alone"], max_diff(hf_stream[i], alone))
        for name in onnx_names:
            key = f"{name} padded batch vs transformers alone"
            got = in_its_batch(onnx_batch(models, name), clips, i, args.peer_batch, device)
            agree[key] = max(agree.get(key, 0.0), max_diff(got, alone))
    print(f"(b) stream: {args.stream} clips, {audio_s:.0f} s of audio ({padded_s:.0f} s once padded in batches of "
          f"{args.peer_batch}), {gflop:.0f} GFLOP", flush=True)
    for k, v in agree.items():
        print(f"  {k}: {v:.3g} (items {picks})")
    timings = interleaved(systems, args.stream_repeats, device, warmup=0 if device.type == "cpu" else 1)
    result = summarize("stream", timings, audio_s, gflop, None, agree)
    result["padded_audio_s_peers"] = padded_s
    return result


FAMILIES = {"hubert": ("HubertConfig", "HubertModel"), "data2vec-audio": ("Data2VecAudioConfig", "Data2VecAudioModel"),
            "wavlm": ("WavLMConfig", "WavLMModel")}


def families(args, device, workdir: Path) -> list[dict]:
    """The other imported families at their transformers BASE layout, fp32: speechssl vs
    transformers on the fixed batch, each family in its own interleaved rounds."""
    import transformers

    import speechssl

    clips = random_clips(4, args.fixed_seconds)
    waves = torch.from_numpy(np.stack(clips)).to(device)
    out = []
    for family in args.families:
        config_cls, model_cls = (getattr(transformers, name) for name in FAMILIES[family])
        torch.manual_seed(0)
        hf = model_cls(config_cls()).eval()
        ours = speechssl.load(save_and_import(hf, workdir / family), device=str(device), precision="fp32")
        hf = hf.to(device)
        ref = hf_run(hf, waves, bf16=False)
        agree = {"speechssl vs transformers": max(max_diff(f, ref[i]) for i, f in enumerate(ours.encode(clips)))}
        print(f"(c) {family}: 4 x {args.fixed_seconds:g} s, speechssl vs transformers {agree['speechssl vs transformers']:.3g}",
              flush=True)
        timings = interleaved({"speechssl": lambda: ours.encode(clips), "transformers": lambda: hf_run(hf, waves, False)},
                              args.repeats, device)
        cfg = ours.encoder.config
        out.append(summarize(f"{family} 4x{args.fixed_seconds:g}s", timings, 4 * args.fixed_seconds,
                             4 * encoder_gflop(cfg, len(clips[0])), None, agree))
    return out


def summarize(workload: str, timings: dict, audio_s: float, gflop: float, peak: dict | None, agree: dict) -> dict:
    rows = []
    base = timings["transformers"]["median_s"]
    for name, t in timings.items():
        if name.startswith("peak"):
            continue
        row = {"workload": workload, "system": name, "median_s": t["median_s"], "cpu_median_s": t["cpu_median_s"],
               "times_s": t["times_s"], "vs_transformers": base / t["median_s"], "realtime_x": audio_s / t["median_s"],
               "gflop_per_s": gflop / t["median_s"]}
        if peak:
            kind = "bf16" if "bf16" in name and "bf16" in peak else "fp32"
            row["peak_fraction"] = row["gflop_per_s"] / peak[kind]
            row["peak_kind"] = kind
        rows.append(row)
    return {"workload": workload, "audio_s": audio_s, "gflop": gflop, "peak_gflop_per_s": peak, "agreement": agree,
            "rows": rows}


# --------------------------------------------------------------------------- accuracy of the fast paths

PATHS = {"fp32": (None, "fp32"), "bf16": (None, "bf16"), "int8": ("int8", "fp32"), "int8+bf16": ("int8", "bf16")}


def cer_check(args) -> dict:
    """CER/WER of each CPU path on each manifest (a CTC checkpoint), and the change from fp32 in points."""
    import speechssl
    from speechssl.data.manifest import read_manifest
    from speechssl.evaluation import evaluate_asr

    out = {"checkpoint": args.cer_checkpoint, "decoding": args.cer_decoding, "manifests": {}}
    for manifest in args.cer_manifest:
        utterances = [u for u in read_manifest(manifest) if u.text][: args.cer_limit]
        rows = out["manifests"][manifest] = {"utterances": len(utterances)}
        for name, (quantize, precision) in PATHS.items():
            model = speechssl.load(args.cer_checkpoint, device="cpu", quantize=quantize, precision=precision)
            start = time.perf_counter()
            rows[name] = evaluate_asr(model, utterances, decoding=args.cer_decoding)
            rows[name]["wall_s"] = time.perf_counter() - start
            if name != "fp32":
                rows[name]["cer_change_points"] = 100 * (rows[name]["cer"] - rows["fp32"]["cer"])
                rows[name]["wer_change_points"] = 100 * (rows[name]["wer"] - rows["fp32"]["wer"])
            print(f"  {manifest} {name}: {rows[name]}", flush=True)
    return out


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch CPU threads and onnxruntime's intra-op threads (all systems alike)")
    parser.add_argument("--fixed-batch", default="4", help="clips in (a); a comma list runs several sizes")
    parser.add_argument("--fixed-seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=5, help="rounds for (a)")
    parser.add_argument("--stream", type=int, default=64, help="clips in (b); 0 skips it")
    parser.add_argument("--stream-repeats", type=int, default=3)
    parser.add_argument("--peer-batch", type=int, default=8)
    parser.add_argument("--max-batch-seconds", type=float, default=None,
                        help="speechssl's padded seconds per batch (default: 60 on CPU, 600 on GPU)")
    parser.add_argument("--no-torchaudio", action="store_true")
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--onnx-no-arena", action="store_true",
                        help="onnxruntime without its CPU memory arena (which keeps each session's peak): "
                        "the stream with every ONNX peer needs it on a 23 GB machine")
    parser.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime peers (CPU only; exporting BASE "
                        "twice takes ~40 s, and needs pip install onnx onnxscript onnxruntime)")
    parser.add_argument("--compile", action="store_true", help="also time speechssl under torch.compile in (a)")
    parser.add_argument("--no-bf16", action="store_true", help="skip bf16 autocast on the CPU (it is slow without "
                        "native bf16: avx512_bf16 or AMX)")
    parser.add_argument("--families", default="hubert,data2vec-audio,wavlm",
                        help="(c): other families' BASE layouts, speechssl vs transformers on 4 x --fixed-seconds "
                             "(comma list; 'none' skips)")
    parser.add_argument("--cer-checkpoint", default=None,
                        help="a CTC checkpoint: CER of fp32, bf16, int8 and int8+bf16 on each --cer-manifest")
    parser.add_argument("--cer-manifest", nargs="+", default=[], help="manifests with text (several: one row each)")
    parser.add_argument("--cer-limit", type=int, default=None, help="first N utterances of each manifest")
    parser.add_argument("--cer-decoding", default="greedy", choices=("greedy", "auto"),
                        help="greedy isolates the encoder's change; auto adds the checkpoint's LM")
    parser.add_argument("--cer-only", action="store_true", help="only the CER check (skips (a) and (b))")
    parser.add_argument("--out", default="runs/benchmarks/encoder.json")
    args = parser.parse_args(argv)
    args.families = [] if args.families == "none" else args.families.split(",")
    if unknown := set(args.families) - set(FAMILIES):
        parser.error(f"--families: unknown {sorted(unknown)}; choose from {', '.join(FAMILIES)}")
    device = torch.device(args.device)
    want_onnx = not args.no_onnx and not args.cer_only and device.type == "cpu"
    if want_onnx:
        from speechssl.interop.onnx import OnnxExportError, require_packages

        try:
            require_packages()
        except OnnxExportError as exc:
            parser.error(f"{exc}; or skip those peers with --no-onnx")
    torch.set_num_threads(args.threads)
    max_batch = args.max_batch_seconds or (600.0 if device.type == "cuda" else 60.0)
    report = {"benchmark": "encoder", "device": str(device), "machine": machine(device), "uptime_before": uptime(),
              "settings": {k: v for k, v in vars(args).items()}}
    print(report["uptime_before"])
    if args.cer_only:
        report["accuracy"] = cer_check(args)
        write_json(args.out, report)
        print(f"wrote {args.out}")
        return report
    with tempfile.TemporaryDirectory() as tmp:
        models = build_models(device, Path(tmp), not args.no_torchaudio, not args.no_int8, max_batch, not args.no_bf16,
                              onnx_threads=args.threads if want_onnx else None, onnx_arena=not args.onnx_no_arena)
    cfg = models["speechssl"].encoder.config
    report["import_and_load_s"] = models.pop("load_s")
    report["onnx_export_s"] = models.pop("onnx_export_s", None)
    report["workloads"] = [fixed_batch(models, args, device, cfg, int(n)) for n in str(args.fixed_batch).split(",")]
    if args.stream:
        report["workloads"].append(stream(models, args, device, cfg))
    if args.families:
        with tempfile.TemporaryDirectory() as tmp:
            report["workloads"].extend(families(args, device, Path(tmp)))
    if args.cer_checkpoint:
        print("CER of each path:", flush=True)
        report["accuracy"] = cer_check(args)
    report["uptime_after"], report["load_after"] = uptime(), load_average()
    rows = [r for w in report["workloads"] for r in w["rows"]]
    print()
    print(table(rows, [("workload", "workload", ""), ("system", "system", ""), ("median_s", "wall s (median)", ".3f"),
                       ("cpu_median_s", "CPU s", ".2f"), ("vs_transformers", "vs transformers", ".2f"),
                       ("realtime_x", "x real time", ".1f"), ("gflop_per_s", "GFLOP/s", ".0f"),
                       ("peak_fraction", "of matmul peak", ".0%")]))
    for w in report["workloads"]:
        if w["peak_gflop_per_s"]:
            print(f"matmul peak ({w['workload']}): " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in w["peak_gflop_per_s"].items()))
    print(report["uptime_after"])
    write_json(args.out, report)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
