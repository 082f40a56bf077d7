"""Training curves as a PNG, drawn from metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

SKIP = {"step", "split", "grad_norm"}


def plot_curves(metrics_path: str | Path, png_path: str | Path, title: str | None = None) -> Path | None:
    """One panel per metric; train and valid share a panel when both have it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    if not rows:
        return None
    series: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for row in rows:
        for key, value in row.items():
            if key in SKIP or not isinstance(value, (int, float)):
                continue
            steps, values = series.setdefault(key, {}).setdefault(row["split"], ([], []))
            steps.append(row["step"])
            values.append(value)
    names = sorted(series)
    cols = min(3, len(names))
    nrows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.2 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for split, (steps, values) in sorted(series[name].items()):
            ax.plot(steps, values, label=split, marker="o" if split == "valid" else None, markersize=3)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if name in ("loss", "lr", "contrastive"):
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title or Path(metrics_path).parent.name)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return Path(png_path)
