"""uvicorn's HTTP/1.1 protocol with a deadline on request heads.

uvicorn closes a keep-alive connection that stays idle after a response, but a connection that sends part of a
request line or of its headers and then nothing is held forever (200 of them were held open against the router).
Here every connection must send a whole request head within ``HEADER_TIMEOUT_S`` of connecting, and again of each
response; the body and the response take as long as they take (the servers bound the body's size themselves).

    uvicorn.Config(app, http=HeaderDeadline, ...)
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_S = 10.0


class HeaderDeadline(H11Protocol):
    _deadline: asyncio.TimerHandle | None = None
    _waiting_after: object = None  # the request cycle current when the deadline was set

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def handle_events(self) -> None:
        super().handle_events()
        if self._deadline is not None and self.cycle is not self._waiting_after:  # a whole request head came
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self._waiting_after = self.cycle
            self._deadline = self.loop.call_later(HEADER_TIMEOUT_S, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        in_flight = self.cycle is not None and not self.cycle.response_complete
        if self.cycle is self._waiting_after and not in_flight and not self.transport.is_closing():
            self.transport.close()
