"""Logging that one failure mode cannot flood.

Out of file descriptors, the accept loop reported every failed accept with a traceback:
575k of them wrote 245 MB of log in 40 s. The same message (by logger and format string)
is logged at most ``burst`` times per ``window_s``; the rest are counted, and the next one
let through says how many were suppressed. Tracebacks repeat only with the message.
"""

from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger("speechssl.server")


class RateLimit(logging.Filter):
    def __init__(self, burst: int = 5, window_s: float = 10.0):
        super().__init__()
        self.burst, self.window_s = burst, window_s
        self.seen: dict[tuple[str, str], list[float]] = {}  # key -> [window start, count, suppressed]

    def allow(self, key: tuple[str, str]) -> tuple[bool, int]:
        """(log this one?, how many were suppressed before it)."""
        now = time.monotonic()
        if len(self.seen) > 1000:  # keys are format strings, but bound the table anyway
            self.seen.clear()
        entry = self.seen.setdefault(key, [now, 0, 0])
        if now - entry[0] > self.window_s:
            suppressed = int(entry[2])
            entry[:] = [now, 1, 0]
            return True, suppressed
        entry[1] += 1
        if entry[1] <= self.burst:
            return True, 0
        entry[2] += 1
        return False, 0

    def filter(self, record: logging.LogRecord) -> bool:
        ok, suppressed = self.allow((record.name, str(record.msg)))
        if ok and suppressed:
            record.msg = f"{record.msg} [{suppressed} more like this suppressed in the last {self.window_s:g} s]"
        return ok


def install_filters(limit: RateLimit) -> None:
    """On the loggers that report per-connection or per-request failures."""
    for name in ("uvicorn.error", "asyncio"):  # not the request log: one line per request is its job
        logger = logging.getLogger(name)
        if limit not in logger.filters:
            logger.addFilter(limit)


def loop_exception_handler(limit: RateLimit):
    """For ``loop.set_exception_handler``: the loop's own errors (failed accepts, ...) rate-limited."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        message = context.get("message", "unhandled exception in event loop")
        ok, suppressed = limit.allow(("loop", message))
        if not ok:
            return
        exc = context.get("exception")
        more = f" [{suppressed} more like this suppressed]" if suppressed else ""
        logging.getLogger("speechssl.server.loop").error("%s: %r%s", message, exc, more)

    return handle
