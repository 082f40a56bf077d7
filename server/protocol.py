"""uvicorn's h11 protocol with the two connection limits it lacks.

uvicorn arms its keep-alive timer only after a response, so a connection that never sends
a request, or sends half its headers, stays open forever: 200 idle connections were never
closed and 20,200 exhausted the file descriptors. Here a connection that has no complete
request line and headers within ``header_timeout_s`` (counted from the connection or the
previous response, not reset by trickled bytes) is closed, as is any connection beyond
``max_connections``, on arrival, so the process keeps descriptors for real work. A
connection upgraded to a WebSocket leaves the timer behind.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol


class LimitedH11Protocol(H11Protocol):
    header_timeout_s = 10.0  # set per server by server.main.uvicorn_config
    max_connections = 1000

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.close()  # before any bytes are read: costs one accept, holds no descriptor
            return
        # Idle from the start: the keep-alive timeout applies before the first request too.
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)
        self.arm_header_timer()

    def arm_header_timer(self) -> None:
        self.cancel_header_timer()
        self.header_timer = self.loop.call_later(self.header_timeout_s, self.header_timeout)

    def cancel_header_timer(self) -> None:
        timer = getattr(self, "header_timer", None)
        if timer is not None:
            timer.cancel()
        self.header_timer = None

    def header_timeout(self) -> None:
        self.header_timer = None
        waiting_for_headers = self.cycle is None or self.cycle.response_complete
        if waiting_for_headers and not self.transport.is_closing():
            self.transport.close()

    def handle_websocket_upgrade(self, event) -> None:
        # The WebSocket protocol owns the transport from here (the route's idle timeout and
        # pings govern it): a header timer left armed would cut every session at its deadline.
        self.cancel_header_timer()
        super().handle_websocket_upgrade(event)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self.arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_header_timer()
        super().connection_lost(exc)
