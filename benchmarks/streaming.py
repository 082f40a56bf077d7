"""Time to the first streamed text, over real HTTP: server-sent events and the live WebSocket.

    python benchmarks/streaming.py --json docs/results/streaming.json

A server with the shipped model (``--checkpoint`` another) on a loopback port, one request
at a time, ``--repeats`` times each:
- **SSE**: ``POST /v1/audio/transcriptions stream=true`` of a ``--seconds`` long file (real
  speech clips joined): seconds from sending the request to the first
  ``transcript.text.delta``, to ``done``, and the same file without ``stream`` for scale.
- **WebSocket**: the same audio sent in 0.1 s messages at real-time pace, as a microphone
  would: how long after the audio of a preview's core was sent its delta arrives (the
  preview lag), the time to the first delta, and from ``end`` to ``done``.
Run it on an idle machine; it reports medians.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from speechssl.audio import SAMPLE_RATE, load_audio  # noqa: E402
from speechssl.live import CONTEXT_SECONDS, CORE_SECONDS  # noqa: E402

CLIPS = sorted((ROOT / "tests/fixtures/real").glob("*.flac"))


def audio_of(seconds: float) -> np.ndarray:
    waves = [load_audio(p) for p in CLIPS]
    out = np.concatenate([np.concatenate([w, np.zeros(4000, np.float32)]) for w in waves])
    return np.resize(out, int(seconds * SAMPLE_RATE))


def sse(url: str, wav: bytes) -> dict:
    start = time.perf_counter()
    first = None
    with httpx.stream("POST", url + "/v1/audio/transcriptions", files={"file": ("a.wav", wav)},
                      data={"stream": "true"}, timeout=300) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and '"transcript.text.delta"' in line and first is None:
                first = time.perf_counter() - start
    done = time.perf_counter() - start
    start = time.perf_counter()
    httpx.post(url + "/v1/audio/transcriptions", files={"file": ("a.wav", wav)}, timeout=300).raise_for_status()
    return {"first_delta_s": first, "done_s": done, "offline_s": time.perf_counter() - start}


def websocket(url: str, pcm: np.ndarray) -> dict:
    from websockets.sync.client import connect

    chunk = SAMPLE_RATE // 10
    sent_at: list[float] = []  # when the audio up to (i+1)*chunk samples had been sent
    arrivals: list[float] = []
    with connect(url.replace("http://", "ws://") + "/v1/audio/transcriptions/live", max_size=None) as ws:
        start = time.perf_counter()

        def send():
            for i, begin in enumerate(range(0, len(pcm), chunk)):
                time.sleep(max(0.0, start + i * 0.1 - time.perf_counter()))  # real-time pace
                ws.send(pcm[begin:begin + chunk].tobytes())
                sent_at.append(time.perf_counter())
            ws.send(json.dumps({"type": "end"}))
            sent_at.append(time.perf_counter())

        sender = threading.Thread(target=send)
        sender.start()
        done = None
        while True:
            event = json.loads(ws.recv(timeout=300))
            if event["type"] == "transcript.text.delta":
                arrivals.append(time.perf_counter())
            elif event["type"] == "transcript.text.done":
                done = time.perf_counter() - sent_at[-1]
                break
        sender.join()
    # Preview k needs audio up to (k+1)*core + context; a delta comes from some preview: the lag
    # of the first delta after each needed point is an upper bound on that preview's delay.
    needs = [((k + 1) * CORE_SECONDS + CONTEXT_SECONDS) for k in range(int(len(pcm) / SAMPLE_RATE / CORE_SECONDS))]
    lags = []
    for need in needs:
        index = min(len(sent_at) - 2, int(round(need * 10)) - 1)
        ready = sent_at[index]
        later = [a - ready for a in arrivals if a >= ready]
        if later and later[0] < CORE_SECONDS:
            lags.append(later[0])
    return {"first_delta_s": arrivals[0] - start if arrivals else None,
            "preview_lag_median_s": statistics.median(lags) if lags else None, "end_to_done_s": done}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="default: the shipped model")
    parser.add_argument("--seconds", type=float, default=60.0, help="audio per request (default 60)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from server.settings import Settings
    from tests.test_server import LiveServer

    pcm = np.round(np.clip(audio_of(args.seconds), -1, 32767 / 32768) * 32768).astype(np.int16)
    buffer = io.BytesIO()
    sf.write(buffer, pcm, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    with LiveServer(Settings(checkpoint=args.checkpoint, device="cpu", max_audio_seconds=max(600, args.seconds))) as server:
        runs = {"sse": [sse(server.url, buffer.getvalue()) for _ in range(args.repeats)],
                "websocket": [websocket(server.url, pcm) for _ in range(args.repeats)]}
    report = {kind: {key: round(statistics.median(r[key] for r in rows if r[key] is not None), 3) for key in rows[0]}
              for kind, rows in runs.items()}
    report["audio_seconds"] = args.seconds
    report["command"] = "python benchmarks/streaming.py " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items() if v is not None and k != "json")
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
