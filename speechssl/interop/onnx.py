"""ONNX export of a checkpoint's self-supervised encoder (``speechssl export-onnx``), for
runtimes without torch (onnxruntime). onnx, onnxscript and onnxruntime are a dev/benchmark
dependency only: ``pip install onnx onnxscript onnxruntime``.

The file takes ``waves`` (B, N) float32 at 16 kHz, zero-padded, and ``lengths`` (B,) int64
samples, both axes dynamic (N at least one receptive field: 400 samples for the conv front
end), and gives ``hidden`` (B, T, C), the last hidden state, and ``frames`` (B,) int64, each
item's valid frames. As in ``SpeechModel.encode``, an item's valid frames equal what it gives
alone: the group norm and the attention see valid frames only (tests/test_onnx.py, 1e-4).

The graph comes from ``torch.export`` (``torch.onnx.export(dynamo=True)``), and differs from
eager inference in two ways, both because eager inference is tuned for torch on a CPU:

- It is traced on the training path (autograd on, dropout off). Without autograd the encoder
  takes its CPU fast path: the positional conv by FFT from a cached complex spectrum,
  scratch buffers reused across calls and written with ``out=``, weights derived once and
  cached by storage pointer (``speechssl.models.inference``). Traced, that path gives a file
  that onnxruntime rejects on its first call (a broadcast of 48 against 49 frames). The
  training path computes everything from the parameters; constant folding after the export
  turns the derived weights (the folded weight norm, the fused q/k/v) into initializers, so
  int8 quantization finds the matmul weights.
- ``TransformerEncoder.forward`` skips the padding mask when ``bool(valid.all())``, a Python
  branch on tensor values that torch.export cannot trace; under ``torch.compiler.is_exporting()``
  it always takes the masked branch, which is exact on an unpadded batch too.

WavLM layouts (``rel_pos_bias``) are refused: their attention adds a float bias computed from
the parameters, and torch 2.14's exporter fails on scaled_dot_product_attention with a float
mask that requires gradients ("Cannot view a tensor ..." in its decomposition step; a bool mask,
or a float one without gradients, exports), which the training path cannot avoid.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import re
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

import speechssl
from speechssl.errors import SpeechSSLError
from speechssl.models.wav2vec2 import Wav2Vec2Model

PACKAGES = ("onnx", "onnxscript", "onnxruntime")
INSTALL = "pip install onnx onnxscript onnxruntime"
# Constant folding's limits (elements): above the exporter's defaults, so that BASE's fused
# q/k/v weight (3 x 768 x 768) and folded positional-conv weight become initializers.
FOLD_LIMIT = 1 << 26
# Nodes of the transformer layers, by the module path the exporter records on each node
# (speechssl's ``encoder.layers.N`` and transformers' alike).
LAYER_SCOPE = re.compile(r"(^|[./])layers\.\d+[.:/]")


class OnnxExportError(SpeechSSLError, RuntimeError):
    """The ONNX export cannot run here (its packages are missing) or failed."""


def require_packages() -> None:
    """Raise OnnxExportError naming the pip command unless onnx, onnxscript and onnxruntime import."""
    missing = [name for name in PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise OnnxExportError(f"ONNX export needs {', '.join(missing)} (a dev/benchmark dependency, not installed "
                              f"with speechssl): {INSTALL}")


class PaddedEncoder(nn.Module):
    """waves (B, N), lengths (B,) samples -> hidden (B, T, C), the last hidden state, and frames (B,)."""

    def __init__(self, encoder: Wav2Vec2Model):
        super().__init__()
        self.encoder = encoder

    def forward(self, waves: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        out = self.encoder(waves, lengths)
        return out.last, out.lengths


@contextlib.contextmanager
def quiet_exporter():
    """The exporter's notes that say nothing about this model (torchvision's ops not registered,
    one axis name shared by two inputs), kept out of the command's output."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"# The axis name")
            yield
    finally:
        registration.setLevel(level)


def export_module(module: nn.Module, example: tuple[Tensor, ...], dynamic_shapes: dict, out: Path,
                  input_names: list[str], output_names: list[str]) -> None:
    """``module`` (eval mode, autograd on: see the module docstring) to ``out`` with torch.export,
    constants folded up to FOLD_LIMIT. Shared with benchmarks/encoder.py's transformers export."""
    import onnxscript.optimizer

    module.eval()
    with quiet_exporter(), torch.enable_grad():
        program = torch.onnx.export(module, example, dynamo=True, dynamic_shapes=dynamic_shapes,
                                    input_names=input_names, output_names=output_names, verbose=False)
    onnxscript.optimizer.optimize(program.model, input_size_limit=FOLD_LIMIT, output_size_limit=FOLD_LIMIT)
    out.parent.mkdir(parents=True, exist_ok=True)
    program.save(out)


def export_encoder(encoder: Wav2Vec2Model, out: str | Path) -> Path:
    """Write ``encoder`` (fp32, CPU; its parameters are set to require gradients) as ONNX at ``out``."""
    cfg = encoder.config
    if cfg.rel_pos_bias:
        raise OnnxExportError("export-onnx does not export WavLM layouts (rel_pos_bias) yet: torch's ONNX exporter "
                              "fails on their attention bias (see speechssl/interop/onnx.py)")
    require_packages()
    encoder = encoder.float().cpu().requires_grad_(True)
    # A padded example (the second item shorter), so the trace meets the lengths as data.
    samples = max(2 * cfg.receptive_field, 16000)
    example = (torch.randn(2, samples, generator=torch.Generator().manual_seed(0)) * 0.1,
               torch.tensor([samples, samples * 3 // 4]))
    batch, length = torch.export.Dim("batch"), torch.export.Dim("samples", min=cfg.receptive_field)
    out = Path(out)
    export_module(PaddedEncoder(encoder), example, {"waves": {0: batch, 1: length}, "lengths": {0: batch}}, out,
                  ["waves", "lengths"], ["hidden", "frames"])
    return out


def layer_matmuls(path: Path) -> list[str]:
    """The MatMul nodes inside the transformer layers whose weight is a constant."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    constants = {init.name for init in model.graph.initializer}
    return [node.name for node in model.graph.node
            if node.op_type == "MatMul" and node.input[1] in constants
            and any(p.key == "namespace" and LAYER_SCOPE.search(p.value) for p in node.metadata_props)]


def quantize_int8(src: str | Path, dst: str | Path) -> Path:
    """onnxruntime's dynamic int8 quantization of ``src`` into ``dst``: int8 weights per output
    channel and activations quantized per call, for the transformer layers' matmuls only, the
    scope of speechssl's own int8 path (``speechssl.load(..., quantize="int8")``). The conv
    front end stays fp32: its activations are heavy-tailed over time (docs/benchmarks.md)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    nodes = layer_matmuls(src)
    if not nodes:
        raise OnnxExportError(f"{src}: no MatMul of a transformer layer found to quantize")
    with quiet_quantizer():
        quantize_dynamic(src, dst, op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes, per_channel=True,
                         weight_type=QuantType.QInt8)
    return dst


class _NoPreprocessingAdvice(logging.Filter):
    """onnxruntime's quantizer advises its pre-processing (shape inference, constant folding) on
    every call; the export has folded the constants already."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def quiet_quantizer():
    root, advice = logging.getLogger(), _NoPreprocessingAdvice()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


def export_onnx(checkpoint: str | Path | None, out: str | Path, int8: bool = False) -> dict:
    """The self-supervised encoder of ``checkpoint`` (default: the shipped model) as ONNX at
    ``out``; ``int8``: quantized by ``quantize_int8``. Returns what was written and how long it took."""
    require_packages()
    out = Path(out)
    model = speechssl.load(checkpoint, device="cpu", precision="fp32")
    start = time.perf_counter()
    if not int8:
        export_encoder(model.encoder, out)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            quantize_int8(export_encoder(model.encoder, Path(tmp) / "fp32.onnx"), out)
    return {"checkpoint": model.name, "out": str(out), "int8": int8, "hidden_size": model.hidden_size,
            "export_s": round(time.perf_counter() - start, 1)}
