"""Soak: N clients for M minutes against a real `speechssl serve` process (issue 16).

Mixed routes and lengths (1-8 s clips, a share of 60-300 s files), a share of bad inputs
(1 Hz headers, huge samples, junk, chunked over-limit bodies) and abandoned requests
(the client hangs up after 1 s). Reports 5xx (must be 0), lost requests (no answer at all;
must be 0), the server's RSS after warm-up and at the end, and p50/p99 of short requests.

    .venv/bin/python benchmarks/soak.py --clients 16 --minutes 10 [--checkpoint C] [--out result.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT / "tests" / "fixtures" / "speech.wav"


def wav(seconds: float) -> bytes:
    clip, _ = sf.read(SPEECH, dtype="float32")
    buf = io.BytesIO()
    sf.write(buf, np.resize(clip, int(seconds * 16000)), 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def raw_wav(rate: int, data: bytes, fmt: int = 1, bits: int = 16) -> bytes:
    block = bits // 8
    head = struct.pack("<IHHIIHH", 16, fmt, 1, rate, rate * block, block, bits)
    return b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + head + b"data" + struct.pack("<I", len(data)) + data


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Soak:
    def __init__(self, url: str, seconds: float, seed: int):
        self.url, self.end = url, time.monotonic() + seconds
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.statuses: dict[str, int] = {}
        self.short_latency: list[float] = []
        self.lost = 0  # a request that got no HTTP answer although the client waited
        self.abandoned = 0
        self.short = [wav(s) for s in (1, 2, 4, 8)]
        self.long = [wav(s) for s in (60, 300)]
        self.bad = [raw_wav(1, bytes(1200)), raw_wav(16000, np.full(16000, 1e38, "<f4").tobytes(), 3, 32), b"junk" * 100]

    def count(self, key: str) -> None:
        with self.lock:
            self.statuses[key] = self.statuses.get(key, 0) + 1

    def one(self, client: httpx.Client) -> None:
        roll = self.rng.random()
        route = self.rng.choice(["/v1/embeddings", "/v1/audio/transcriptions", "/v1/speakers/embed"])
        if roll < 0.10:
            audio, kind, timeout = self.rng.choice(self.bad), "bad", 60.0
        elif roll < 0.15:
            audio, kind, timeout = self.rng.choice(self.long), "abandoned", 1.0
        elif roll < 0.20:
            audio, kind, timeout = self.rng.choice(self.long), "long", 300.0
        else:
            audio, kind, timeout = self.rng.choice(self.short), "short", 300.0
        started = time.monotonic()
        try:
            reply = client.post(self.url + route, files={"file": ("a.wav", audio)}, timeout=timeout)
        except httpx.TimeoutException:
            if kind == "abandoned":
                with self.lock:
                    self.abandoned += 1
                return
            with self.lock:
                self.lost += 1
            return
        except httpx.TransportError:
            with self.lock:
                self.lost += 1
            return
        self.count(str(reply.status_code))
        if kind == "short" and reply.status_code == 200:
            with self.lock:
                self.short_latency.append(time.monotonic() - started)

    def client(self) -> None:
        with httpx.Client() as client:
            while time.monotonic() < self.end:
                self.one(client)


def start_server(args) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "speechssl.cli", "serve", "--device", "cpu", "--port", str(port)]
    if args.checkpoint:
        command += ["--checkpoint", args.checkpoint]
    env = {**os.environ, "SPEECHSSL_LOG_LEVEL": "warning", "SPEECHSSL_MAX_UPLOAD_BYTES": str(12 << 20)}
    proc = subprocess.Popen(command, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/ready").status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--checkpoint", default=None, help="default: the shipped model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    proc, url = start_server(args)
    try:
        soak = Soak(url, args.minutes * 60, args.seed)
        threads = [threading.Thread(target=soak.client, daemon=True) for _ in range(args.clients)]
        for t in threads:
            t.start()
        warm = args.minutes * 60 * 0.2  # RSS after the first fifth is the baseline
        time.sleep(warm)
        rss_warm, peak = rss_mb(proc.pid), 0.0
        while any(t.is_alive() for t in threads):
            peak = max(peak, rss_mb(proc.pid))
            time.sleep(1)
        latency = sorted(soak.short_latency)
        result = {
            "clients": args.clients, "minutes": args.minutes, "statuses": soak.statuses,
            "5xx": sum(n for code, n in soak.statuses.items() if code.startswith("5")),
            "lost": soak.lost, "abandoned": soak.abandoned,
            "rss_mb_after_warmup": round(rss_warm, 1), "rss_mb_peak_after_warmup": round(peak, 1),
            "rss_mb_end": round(rss_mb(proc.pid), 1),
            "short_requests": len(latency),
            "short_p50_s": round(latency[len(latency) // 2], 3) if latency else None,
            "short_p99_s": round(latency[min(len(latency) - 1, int(len(latency) * 0.99))], 3) if latency else None,
            "health_ms_at_end": round(1000 * timed(lambda: httpx.get(url + "/health")), 1),
        }
    finally:
        proc.terminate()
        proc.wait(60)
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


def timed(fn) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


if __name__ == "__main__":
    main()
