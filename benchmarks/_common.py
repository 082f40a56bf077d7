"""Shared pieces of the benchmarks: interleaved timing, the matmul peak, machine facts, output.

Timings on a shared machine drift with other people's load, so every comparison runs
its systems *interleaved*: round r times system A, then B, then C (the order rotating
each round), and each system's figure is the median over rounds. Ratios taken from one
run therefore see the same load.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    return timed_both(fn, device)[0]


def timed_both(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds, all threads) of one call."""
    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - start, time.process_time() - cpu


def interleaved(systems: dict[str, Callable[[], object]], repeats: int, device: torch.device,
                warmup: int = 1, log: Callable[[str], None] = print) -> dict[str, dict]:
    """{name: {"median_s", "min_s", "times_s"}}: each system run ``repeats`` times, interleaved."""
    names = list(systems)
    for _ in range(warmup):
        for name in names:
            systems[name]()
    sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]  # rotate who goes first
        for name in order:
            wall, used = timed_both(systems[name], device)
            times[name].append(wall)
            cpu[name].append(used)
        log(f"  round {r + 1}/{repeats}: " + "  ".join(f"{n} {times[n][-1]:.3f}s" for n in names))
    return {n: {"median_s": statistics.median(t), "min_s": min(t), "times_s": t,
                "cpu_median_s": statistics.median(cpu[n])} for n, t in times.items()}


def matmul_peak(device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of a square matmul on ``device`` (the ceiling the models are held against)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    best = min(timed(lambda: a @ b, device) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def load_average() -> list[float]:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def machine(device: torch.device) -> dict:
    info = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_1_5_15min": load_average(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    for package in ("transformers", "torchaudio"):
        try:
            info[package] = __import__(package).__version__
        except Exception:  # noqa: BLE001 - reported, not needed
            info[package] = None
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:  # noqa: BLE001
        return ""


def write_json(path: str | Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Markdown table; columns are (key, header, format)."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = []
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            value = row.get(key)
            cells.append("" if value is None else format(value, fmt) if fmt else str(value))
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *body])
