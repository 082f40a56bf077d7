"""Masked-prediction pretraining (``objective.kind: hubert`` or ``best_rq``): the task for the loop.

``hubert`` fits k-means (scikit-learn MiniBatchKMeans, seeded) on the training audio's frame
features before the first update: MFCCs with deltas for a first iteration, or layer
``objective.label_layer`` of the model in ``objective.label_from`` for a second. ``best_rq``
needs no fitting. The labeler is saved as ``labeler.safetensors`` in the run folder and
read back on ``--resume``, so a resumed run scores against the same labels.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader

from speechssl.checkpoint import Checkpoint, atomic_write
from speechssl.data.dataset import AudioDataset, Batch, collate
from speechssl.data.manifest import Utterance
from speechssl.models import build
from speechssl.models.masked_prediction import Wav2Vec2ForMaskedPrediction
from speechssl.models.targets import FrameFeatures, KMeansLabeler, RandomProjectionLabeler, normalize_frames
from speechssl.train.loop import StepResult

log = logging.getLogger("speechssl.pretrain")

BEST_RQ_STACK = 4  # 10 ms log-mel frames per BEST-RQ input (the paper stacks to 40 ms)
BEST_RQ_DIM = 16


class LayerFeatures(nn.Module):
    """Layer ``layer`` of a trained encoder as frame features (HuBERT's second iteration)."""

    def __init__(self, path: str, layer: int):
        super().__init__()
        self.encoder = build.encoder(path)
        self.encoder.eval().requires_grad_(False)
        self.layer = layer

    @torch.no_grad()
    def forward(self, waves: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        out = self.encoder(waves, lengths, num_layers=self.layer)
        return normalize_frames(out.hidden_states[self.layer].float(), out.lengths, True), out.lengths


class MaskedPredictionTask:
    selection_metric = "loss"

    def __init__(self, config, train_utts: list[Utterance]):
        self.config = config
        o = config.objective
        model_config = config.model_config()
        if o.kind == "best_rq":
            self.features = FrameFeatures(model_config, "log_mel", BEST_RQ_STACK)
        elif o.label_from:
            self.features = LayerFeatures(o.label_from, o.label_layer)
        else:
            self.features = FrameFeatures(model_config, "mfcc")
        self.labeler = self.make_labeler(Path(config.run.out_dir) / "labeler.safetensors", train_utts)
        self.module = Wav2Vec2ForMaskedPrediction(model_config, self.labeler.num_classes)
        if config.init_from:
            build.load_weights(self.module.wav2vec2, config.init_from, prefix="wav2vec2.")

    def make_labeler(self, path: Path, train_utts: list[Utterance]) -> nn.Module:
        o = self.config.objective
        if o.kind == "best_rq":
            return RandomProjectionLabeler(self.features.dim, o.num_targets, BEST_RQ_DIM, self.config.run.seed)
        if path.is_file():
            log.info("labels: k-means centres from %s", path)
            return KMeansLabeler(load_file(path)["centers"])
        sample = self.fit_features(train_utts)
        log.info("fitting k-means (%d clusters) on %d frames", o.num_targets, len(sample))
        labeler = KMeansLabeler.fit(sample, o.num_targets, self.config.run.seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: save_file({"centers": labeler.centers.contiguous()}, str(tmp)))
        return labeler

    def fit_features(self, train_utts: list[Utterance]) -> np.ndarray:
        """Frame features of a seeded draw of training utterances (whole files, a frame cap)."""
        o = self.config.objective
        rng = np.random.default_rng(self.config.run.seed)
        chosen = [train_utts[i] for i in rng.permutation(len(train_utts))[: o.kmeans_utterances]]
        dataset = AudioDataset(chosen, crop_seconds=self.config.data.crop_seconds, seed=self.config.run.seed)
        loader = DataLoader(dataset, batch_size=16, collate_fn=collate)
        rows = []
        for batch in loader:
            feats, frames = self.features(batch.waves, batch.lengths)
            rows += [feats[i, : int(n)] for i, n in enumerate(frames)]
        frames = torch.cat(rows).numpy()
        if len(frames) > o.kmeans_frames:
            frames = frames[rng.choice(len(frames), o.kmeans_frames, replace=False)]
        return frames

    def labels(self, batch: Batch) -> Tensor:
        self.features.to(batch.waves.device)
        self.labeler.to(batch.waves.device)
        with torch.autocast(batch.waves.device.type, enabled=False):  # the targets never depend on precision
            feats, _ = self.features(batch.waves, batch.lengths)
            return self.labeler(feats)

    def before_step(self, step: int) -> None:
        pass

    def train_step(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> StepResult:
        labels = self.labels(batch)  # from the audio as it is
        warp = None
        if self.config.objective.student_warp:  # ContentVec's idea: the student hears another voice
            low, high = self.config.objective.student_warp
            warp = low + (high - low) * torch.rand(len(batch.waves), generator=generator)
        out = model(batch.waves, batch.lengths, labels, generator=generator, warp=warp)
        return StepResult(out.loss, {"accuracy": float(out.accuracy)})

    @torch.no_grad()
    def evaluate(self, loader: DataLoader) -> dict[str, float]:
        """Validation cross-entropy and accuracy with fixed (seeded) masks."""
        self.module.eval()
        device = next(self.module.parameters()).device
        generator = torch.Generator().manual_seed(0)
        loss = accuracy = 0.0
        frames = 0
        for batch in loader:
            batch = batch.to(device)
            out = self.module(batch.waves, batch.lengths, self.labels(batch), generator=generator)
            loss += float(out.loss) * out.num_masked
            accuracy += float(out.accuracy) * out.num_masked
            frames += out.num_masked
        self.module.train()
        return {"loss": loss / max(frames, 1), "accuracy": accuracy / max(frames, 1)}

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(self.module.state_dict(), self.module.config,
                          {"kind": "pretrain", "objective": self.config.objective.kind})
