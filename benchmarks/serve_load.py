"""Load test of the HTTP service: dynamic batching against no batching, and against offline batches.

    python benchmarks/serve_load.py --checkpoint runs/pretrain-small/best.safetensors \\
        --route embeddings --clients 16 --seconds 20 --json runs/serve_load.json

It starts two servers (uvicorn on free loopback ports, one worker each): the default batcher
and ``max_batch_items=1``. ``--clients`` concurrent clients post real audio round-robin to
each for ``--seconds`` in all, the configurations (and the offline run) taking turns over
``--rounds``; it reports requests/s, audio-seconds/s, latency percentiles, errors, mean batch
size and the server's peak RSS. The offline run puts the same clips through the model
in-process (``SpeechModel.embed`` / ``transcribe`` in batches); the batched server's
audio-seconds/s is reported as a fraction of it.

``--url`` targets a running server instead (one configuration; no RSS). The load side needs
only httpx and the standard library (clips are WAV files); the servers it starts and the
offline measurement need what the server needs (torch, fastapi, uvicorn, speechssl).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import wave
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 16000

ROUTES = {"embeddings": "/v1/embeddings", "transcriptions": "/v1/audio/transcriptions"}
DEFAULT_AUDIO = [ROOT / "runs/corpus/test.jsonl", ROOT.parent / "shared/data/fsdd/recordings"]


def find_clips(source: Path | None, count: int) -> list[tuple[Path, float]]:
    """(audio file, seconds) from a JSONL manifest (paths relative to it) or a folder of wavs."""
    source = source or next((p for p in DEFAULT_AUDIO if p.exists()), None)
    if source is None:
        sys.exit("no audio: pass --audio MANIFEST.jsonl or a folder of wavs")
    if source.suffix == ".jsonl":  # any format the server decodes; the manifest knows durations
        rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
        return [(source.parent / row["path"], float(row["duration"])) for row in rows][:count]
    return [(path, wav_seconds(path)) for path in sorted(source.glob("*.wav"))[:count]]


def wav_seconds(path: Path) -> float:
    with wave.open(str(path)) as f:
        return f.getnframes() / f.getframerate()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``speechssl serve`` in a child process (uvicorn, one worker), configured by SPEECHSSL_* variables."""

    def __init__(self, checkpoint: str, device: str, max_batch_items: int | None, api_key: str | None,
                 extra_env: dict[str, str] | None = None):
        self.port = free_port()
        env = {**os.environ, "SPEECHSSL_CHECKPOINT": checkpoint, "SPEECHSSL_DEVICE": device,
               "SPEECHSSL_PORT": str(self.port), "SPEECHSSL_LOG_LEVEL": "warning", "PYTHONPATH": str(ROOT),
               **(extra_env or {})}
        if max_batch_items is not None:
            env["SPEECHSSL_MAX_BATCH_ITEMS"] = str(max_batch_items)
        if api_key:
            env["SPEECHSSL_API_KEY"] = api_key
        # `speechssl serve` itself, with its protocol and connection limits, not a bare uvicorn.
        self.proc = subprocess.Popen([sys.executable, "-m", "speechssl.cli", "serve", "--host", "127.0.0.1"], env=env, cwd=ROOT)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"the server exited with status {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        sys.exit("the server did not become ready")

    def peak_rss_mb(self) -> float | None:
        try:  # VmHWM: the resident set's high-water mark (Linux)
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def cpu_seconds(self) -> float:
        """User + system CPU of the server and its worker processes so far (Linux /proc; 0 where unreadable)."""
        total, todo = 0.0, [self.proc.pid]
        while todo:
            pid = todo.pop()
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                todo += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def parse_env(variant: str) -> dict[str, str]:
    pairs = [item.partition("=") for item in variant.split(",")]
    if any(not key or not sep for key, sep, _ in pairs):
        sys.exit(f"--variant {variant!r}: expected KEY=VALUE[,KEY=VALUE]")
    return {key: value for key, _, value in pairs}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class Tally:
    """What one configuration did, summed over its rounds."""

    def __init__(self):
        self.latencies: list[float] = []
        self.audio_seconds = self.elapsed = self.client_cpu = self.server_cpu = 0.0
        self.statuses: dict[str, int] = {}

    def summary(self) -> dict:
        ok, elapsed = len(self.latencies), max(self.elapsed, 1e-9)
        ms = {f"p{q}_ms": None if not ok else round(1000 * percentile(self.latencies, q), 1) for q in (50, 95, 99)}
        return {"requests": ok, "errors": sum(n for s, n in self.statuses.items() if s != "200"),
                "statuses": self.statuses, "seconds": round(self.elapsed, 2), "requests_per_s": round(ok / elapsed, 2),
                "audio_s_per_s": round(self.audio_seconds / elapsed, 2), **ms,
                # CPU seconds per wall second (2.0 = two cores busy): what the load side and the server took
                "client_cpu_cores": round(self.client_cpu / elapsed, 2), "server_cpu_cores": round(self.server_cpu / elapsed, 2)}


def multipart_request(url: str, route: str, name: str, data: bytes, api_key: str | None) -> bytes:
    """One complete HTTP/1.1 POST of ``data`` as the ``file`` part, built once per clip: the raw
    client then spends no CPU per request on encoding, so it takes less of the server's cores."""
    host = url.split("://", 1)[1]
    boundary = "speechsslbenchmarkboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            "Content-Type: audio/wav\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
    head = (f"POST {route} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def raw_post(connection: list, url: str, request: bytes) -> str:
    """Send one pre-built request on a kept-alive connection (opened on first use) and read the
    answer's status and Content-Length body; the status as text."""
    if not connection:
        host, port = url.split("://", 1)[1].rsplit(":", 1)
        connection.extend(await asyncio.open_connection(host, int(port)))
    reader, writer = connection
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next((int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")), 0)
    await reader.readexactly(length)
    if any(line.lower() == "connection: close" for line in lines):
        writer.close()
        connection.clear()
    return lines[0].split()[1]


async def load(url: str, route: str, clips: list[tuple[str, bytes, float]], clients: int, seconds: float,
               api_key: str | None, tally: Tally, raw: bool = True) -> None:
    """``clients`` loops that each post the next clip as soon as their last answer came; what is
    answered within ``seconds`` counts. ``raw``: pre-built requests on plain asyncio streams
    (a cheap load generator, as wrk would be); else httpx, what a Python client would use."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    requests = [multipart_request(url, route, name, data, api_key) for name, data, _ in clips]
    position = 0

    async def client(http: httpx.AsyncClient, stop_at: float) -> None:
        nonlocal position
        connection: list = []
        while time.monotonic() < stop_at:
            index = position % len(clips)
            name, data, duration = clips[index]
            position += 1
            started = time.monotonic()
            try:
                if raw:
                    status = await raw_post(connection, url, requests[index])
                else:
                    status = str((await http.post(route, files={"file": (name, data, "audio/wav")})).status_code)
            except (httpx.HTTPError, OSError, asyncio.IncompleteReadError) as exc:
                status = type(exc).__name__
                connection.clear()
            finished = time.monotonic()
            if finished > stop_at:
                break  # answered after the window: waited for (so it does not spill into the next run), not counted
            tally.statuses[status] = tally.statuses.get(status, 0) + 1
            if status == "200":
                tally.latencies.append(finished - started)
                tally.audio_seconds += duration
        if connection:
            connection[1].close()

    cpu = time.process_time()
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300, limits=limits) as http:
        stop_at = time.monotonic() + seconds
        await asyncio.gather(*[client(http, stop_at) for _ in range(clients)])
    tally.elapsed += seconds
    tally.client_cpu += time.process_time() - cpu


def batch_sizes(url: str) -> float | None:
    """Mean requests per device batch, from the server's /metrics."""
    text = httpx.get(url + "/metrics").text
    values = dict(line.split()[:2] for line in text.splitlines() if line.startswith("speechssl_batch_size_"))
    count = float(values.get("speechssl_batch_size_count", 0))
    return round(float(values["speechssl_batch_size_sum"]) / count, 2) if count else None


class Offline:
    """The same clips through the model in-process, in length-sorted batches bounded as the server
    bounds them: the throughput the server is measured against."""

    def __init__(self, checkpoint: str, device: str, route: str, paths: list[Path]):
        sys.path.insert(0, str(ROOT))
        import speechssl
        from server.app import serving_precision
        from server.settings import Settings
        from speechssl.audio import load_audio

        # The precision the servers compute in (serve's auto: bf16 on a CPU with native bf16).
        self.model = speechssl.load(checkpoint, device, precision=serving_precision(Settings(device=device)))
        self.model.max_batch_seconds = Settings().batch_seconds(self.model.device.type)  # as the server does
        self.waves = [load_audio(p) for p in paths]
        self.method = self.model.embed if route == "embeddings" else self.model.transcribe
        self.method(self.waves[:4], sample_rate=SAMPLE_RATE)  # warm-up
        self.tally = Tally()

    def run(self, seconds: float) -> None:
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            self.method(self.waves, sample_rate=SAMPLE_RATE)
            self.tally.audio_seconds += sum(len(w) for w in self.waves) / SAMPLE_RATE
        self.tally.elapsed += time.monotonic() - started

    def summary(self) -> dict:
        return {"seconds": round(self.tally.elapsed, 2),
                "audio_s_per_s": round(self.tally.audio_seconds / self.tally.elapsed, 2),
                "max_batch_seconds": self.model.max_batch_seconds, "max_padding": self.model.max_padding}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="checkpoint to serve (required unless --url)")
    parser.add_argument("--url", help="target a running server instead of starting one")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--route", choices=sorted(ROUTES), default="embeddings")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0, help="load per configuration, over all rounds")
    parser.add_argument("--rounds", type=int, default=2, help="configurations take turns this many times, so "
                        "that drifting load from other processes hits each alike")
    parser.add_argument("--audio", type=Path, default=None, help="JSONL manifest or folder of wavs "
                        "(default: runs/corpus/test.jsonl, else ../shared/data/fsdd/recordings)")
    parser.add_argument("--clips", type=int, default=64, help="how many clips to cycle through")
    parser.add_argument("--no-baseline", action="store_true", help="skip the max_batch_items=1 server")
    parser.add_argument("--no-offline", action="store_true", help="skip the in-process batch throughput")
    parser.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                        help="one more batched server with these environment variables (repeatable), "
                        "e.g. OMP_WAIT_POLICY=PASSIVE or SPEECHSSL_MAX_WAIT_MS=0: a before/after in one run")
    parser.add_argument("--load-client", choices=["raw", "httpx"], default="raw",
                        help="raw: pre-built requests on asyncio streams (cheap, leaves the cores to the server); "
                        "httpx: a Python client's cost per request")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if not (args.url or args.checkpoint):
        parser.error("pass --checkpoint (or --url of a running server)")

    found = find_clips(args.audio, args.clips)
    clips = [(p.name, p.read_bytes(), seconds) for p, seconds in found]
    route = ROUTES[args.route]
    report = {"route": route, "load_client": args.load_client, "clients": args.clients, "seconds": args.seconds,
              "rounds": args.rounds,
              "device": args.device, "checkpoint": args.checkpoint, "clips": len(clips),
              "mean_clip_seconds": round(sum(c[2] for c in clips) / len(clips), 2), "runs": {}}
    print(f"{len(clips)} clips, mean {report['mean_clip_seconds']} s; {args.clients} clients x {args.seconds:g} s "
          f"in {args.rounds} rounds on {route}", flush=True)

    servers: dict[str, Server | None] = {"url": None} if args.url else {
        "batched": Server(args.checkpoint, args.device, None, args.api_key),
        **({} if args.no_baseline else {"max_batch_1": Server(args.checkpoint, args.device, 1, args.api_key)}),
        **{variant: Server(args.checkpoint, args.device, None, args.api_key, parse_env(variant))
           for variant in args.variant}}
    try:
        for server in servers.values():
            if server:
                server.wait_ready()
        offline = None if args.no_offline or not args.checkpoint else Offline(args.checkpoint, args.device, args.route,
                                                                                   [p for p, _ in found])
        tallies = {label: Tally() for label in servers}
        for _ in range(args.rounds):
            for label, server in servers.items():
                before = server.cpu_seconds() if server else 0.0
                asyncio.run(load(args.url or server.url, route, clips, args.clients, args.seconds / args.rounds,
                                 args.api_key, tallies[label], raw=args.load_client == "raw"))
                tallies[label].server_cpu += (server.cpu_seconds() - before) if server else 0.0
            if offline:
                offline.run(args.seconds / args.rounds)
        for label, server in servers.items():
            url = args.url or server.url
            report["runs"][label] = result = {**tallies[label].summary(), "mean_batch_size": batch_sizes(url),
                                              "server_peak_rss_mb": server and server.peak_rss_mb()}
            print(f"{label:>12}: {result['requests_per_s']:7.2f} req/s  {result['audio_s_per_s']:7.2f} audio-s/s  "
                  f"p50 {result['p50_ms']} ms  p95 {result['p95_ms']} ms  p99 {result['p99_ms']} ms  "
                  f"errors {result['errors']}  batch {result['mean_batch_size']}  "
                  f"cpu: client {result['client_cpu_cores']} server {result['server_cpu_cores']} cores  "
                  f"peak RSS {result['server_peak_rss_mb'] and round(result['server_peak_rss_mb'])} MB", flush=True)
    finally:
        for server in servers.values():
            if server:
                server.stop()
    runs = report["runs"]
    if "max_batch_1" in runs and runs["max_batch_1"]["requests_per_s"]:
        report["batching_speedup"] = round(runs["batched"]["requests_per_s"] / runs["max_batch_1"]["requests_per_s"], 2)
        print(f"batching speed-up (req/s, batched / max-batch 1): {report['batching_speedup']}x")
    if offline:
        report["offline"] = offline.summary()
        served = runs.get("batched", runs.get("url"))["audio_s_per_s"]
        report["server_fraction_of_offline"] = round(served / report["offline"]["audio_s_per_s"], 3)
        print(f"     offline: {report['offline']['audio_s_per_s']:7.2f} audio-s/s (in-process batches); the batched "
              f"server reaches {report['server_fraction_of_offline']:.0%} of it")
        for variant in args.variant:
            runs[variant]["server_fraction_of_offline"] = round(
                runs[variant]["audio_s_per_s"] / report["offline"]["audio_s_per_s"], 3)
            print(f"     {variant}: {runs[variant]['server_fraction_of_offline']:.0%} of offline")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
