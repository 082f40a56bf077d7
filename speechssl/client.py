"""A client for a speechssl server's live transcription WebSocket.

    from speechssl.client import live_transcribe, pcm_chunks
    for event in live_transcribe("http://127.0.0.1:8000", pcm_chunks("talk.wav")):
        print(event)

``live_transcribe`` sends the chunks as they come (a microphone's, or a file's) while it
receives, and yields the server's events (``speechssl.live``) as they arrive.
"""

from __future__ import annotations

import json
import queue
import threading
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator
from urllib.parse import urlencode

import numpy as np

from speechssl.audio import SAMPLE_RATE, load_audio
from speechssl.errors import SpeechSSLError

CHUNK_SECONDS = 0.1


class LiveSessionError(SpeechSSLError, RuntimeError):
    """The server ended the session with an error event (``code`` says which)."""

    def __init__(self, message: str, code: str | None):
        super().__init__(f"{message} ({code})" if code else message)
        self.code = code


def pcm_chunks(source: str | Path | BinaryIO, sample_rate: int = SAMPLE_RATE,
               seconds: float = CHUNK_SECONDS) -> Iterator[np.ndarray]:
    """16-bit PCM in pieces of ``seconds``: an audio file decoded to 16 kHz, or raw
    little-endian 16-bit mono PCM at ``sample_rate`` read from a binary stream (stdin)."""
    if isinstance(source, (str, Path)):
        wave = load_audio(source)
        pcm = np.round(np.clip(wave, -1.0, 32767 / 32768) * 32768).astype(np.int16)
        step = int(seconds * SAMPLE_RATE)
        for start in range(0, len(pcm), step):
            yield pcm[start:start + step]
        return
    size = max(2, int(seconds * sample_rate) * 2)
    left = b""
    while data := source.read(size):
        data = left + data
        cut = len(data) // 2 * 2
        left = data[cut:]
        if cut:
            yield np.frombuffer(data[:cut], dtype="<i2")


def live_transcribe(url: str, chunks: Iterable[np.ndarray], *, sample_rate: int = SAMPLE_RATE,
                    decoding: str = "auto", api_key: str | None = None, timeout: float = 120.0) -> Iterator[dict]:
    """The server's events for ``chunks`` (int16 arrays at ``sample_rate``), sent from a
    thread so that previews arrive while audio is still going out."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    base = url.rstrip("/").replace("https://", "wss://").replace("http://", "ws://")
    address = f"{base}/v1/audio/transcriptions/live?{urlencode({'sample_rate': sample_rate, 'decoding': decoding})}"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with connect(address, additional_headers=headers, max_size=None, open_timeout=timeout) as ws:
        failed: queue.Queue = queue.Queue()

        def send() -> None:
            try:
                for chunk in chunks:
                    ws.send(np.asarray(chunk, dtype="<i2").tobytes())
                ws.send(json.dumps({"type": "end"}))
            except ConnectionClosed:
                pass  # the server ended the session: its error event says why
            except Exception as exc:  # the audio source failed: end the session, report it
                failed.put(exc)
                ws.close()

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        try:
            while True:
                try:
                    event = json.loads(ws.recv(timeout=timeout))
                except ConnectionClosed:
                    break
                if event.get("type") == "error":
                    error = event.get("error", {})
                    raise LiveSessionError(error.get("message", "live session failed"), error.get("code"))
                yield event
                if event.get("type") == "transcript.text.done":
                    break
        finally:
            sender.join(timeout=5)
        if not failed.empty():
            raise failed.get()
