"""Inference-time weight transforms that leave the parameters (and checkpoints) alone.

Fused q/k/v projections, the folded weight norm of the positional conv and the conv
weights laid out for matmuls are *derived* tensors: computed from the parameters once,
reused while those parameters are unchanged, and never saved. Training never sees
them: a derived tensor is only used when no gradient can flow into its sources, so
``module.train()`` with autograd runs the plain, differentiable path every step.

A cache entry is stamped with each source's storage pointer and version counter, so an
optimizer step, ``load_state_dict`` (both in-place) or ``.to(device)`` (new storage)
rebuilds it on the next call. ``quantize_int8`` swaps the derived matmul weights for
int8 ones (dynamic quantization of the activations, per-output-channel weights).
"""

from __future__ import annotations

import math
import threading
import warnings
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

_CACHE = "_derived_weights"


def needs_grad(sources: tuple[Tensor, ...]) -> bool:
    """True when autograd would track a gradient into any of ``sources`` right now."""
    return torch.is_grad_enabled() and any(s.requires_grad for s in sources)


def _stamp(sources: tuple[Tensor, ...]) -> tuple:
    stamp = []
    for s in sources:
        try:
            version = s._version
        except RuntimeError:  # an inference tensor keeps no version counter; it cannot change in place
            version = -1
        stamp.append((s.data_ptr(), version, s.dtype, s.device))
    return tuple(stamp)


def derived(owner: nn.Module, key: str, sources: tuple[Tensor, ...], build: Callable[[], object]):
    """``build()`` once per state of ``sources``; call only when ``needs_grad(sources)`` is False."""
    if torch.compiler.is_compiling():  # traced into the graph (and folded by freezing) instead
        return build()
    cache = owner.__dict__.setdefault(_CACHE, {})
    stamp = _stamp(sources)
    entry = cache.get(key)
    if entry is None or entry[0] != stamp:
        with torch.inference_mode(False), torch.no_grad():  # a normal tensor, usable outside inference mode too
            entry = (stamp, build())
        cache[key] = entry
    return entry[1]


# --------------------------------------------------------------------------- matmuls


def int8_enabled(owner: nn.Module) -> bool:
    return getattr(owner, "int8", False)


def pack_int8(weight: Tensor, bias: Tensor | None):
    """(N, K) fp32 weight -> fbgemm packed int8 weight, one scale per output channel."""
    weight = weight.detach().float().contiguous()
    scale = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0
    zero = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # quantized tensor creation is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        qweight = torch.quantize_per_channel(weight, scale.double(), zero, axis=0, dtype=torch.qint8)
    return torch.ops.quantized.linear_prepack(qweight, None if bias is None else bias.detach().float())


def linear(owner: nn.Module, key: str, x: Tensor, sources: tuple[Tensor, ...],
           weight: Callable[[], Tensor], bias: Callable[[], Tensor | None]) -> Tensor:
    """``F.linear(x, weight(), bias())`` with the weight built once (int8-packed, or in the
    autocast dtype under autocast) when no gradient is needed; ``weight``/``bias`` build the
    (N, K) weight and (N,) bias."""
    if needs_grad(sources):
        return F.linear(x, weight(), bias())
    if int8_enabled(owner) and x.device.type == "cpu" and x.dtype == torch.float32:
        packed = derived(owner, key + ".int8", sources, lambda: pack_int8(weight(), bias()))
        # reduce_range: 7-bit activations, which x86 (fbgemm) needs to avoid int16 overflow.
        return torch.ops.quantized.linear_dynamic(x.contiguous(), packed, True)
    if torch.is_autocast_enabled(x.device.type):
        # A copy in the autocast dtype, made once: autocast would cast the weight on every call
        # (the same rounding, so the same result).
        dtype = torch.get_autocast_dtype(x.device.type)
        w, b = derived(owner, f"{key}.{dtype}", sources,
                       lambda: tuple(None if t is None else t.to(dtype).contiguous() for t in (weight(), bias())))
        return F.linear(x, w, b)
    w, b = derived(owner, key, sources, lambda: (weight().contiguous(), bias()))
    return F.linear(x, w, b)


def quantize_int8(model: nn.Module) -> nn.Module:
    """Mark the transformer's matmuls of ``model`` for int8 weights (CPU, fp32 activations, no grad).

    The q/k/v, output and feed-forward projections (~57% of BASE's FLOPs) run through
    fbgemm's dynamic quantization: int8 weights per output channel, activations quantized
    per call (7-bit range, as x86 without VNNI needs). The conv feature encoder stays fp32:
    its activations are heavy-tailed over time, and per-tensor int8 there cost 15% of the
    frame-level CTC decisions for a few % of speed (docs/benchmarks.md). The parameters are
    untouched: ``module.int8 = False`` undoes it.
    """
    if "fbgemm" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "fbgemm"
    for module in model.modules():
        if hasattr(module, "int8"):
            module.int8 = True
    return model


# --------------------------------------------------------------------------- workspace


class Workspace:
    """Reusable CPU scratch buffers for the large activations of one forward pass.

    A fresh tensor above glibc's mmap threshold (32 MB) is mapped anew on every call and
    page-faulted in on first touch, which costs as much as a small matmul; the feature
    encoder's early layers (262 MB for 4 x 10 s at layer 1) hit that on every pass.
    One buffer per slot and thread, grown to the largest request and then reused; only
    used where no gradient is recorded, and never for tensors handed back to callers.
    """

    def __init__(self):
        self.local = threading.local()

    def take(self, slot: int, shape: tuple[int, ...], like: Tensor, dtype: torch.dtype | None = None) -> Tensor | None:
        """A (shape) view of slot's buffer, in ``dtype`` (default: ``like``'s), on ``like``'s device."""
        if like.device.type != "cpu":
            return None  # the CUDA caching allocator already reuses memory
        dtype = dtype or like.dtype
        buffers = self.local.__dict__.setdefault("buffers", {})
        numel = math.prod(shape)
        buf = buffers.get(slot)
        if buf is None or buf.numel() < numel or buf.dtype != dtype:
            with torch.inference_mode(False):
                buf = torch.empty(numel, dtype=dtype)
            buffers[slot] = buf
        return buf[:numel].view(shape)

    def clear(self) -> None:
        self.local.__dict__.pop("buffers", None)

    def __getstate__(self):  # copy.deepcopy / pickle: start empty
        return {}

    def __setstate__(self, state):
        self.local = threading.local()
