"""A front's side of the dealing (`dealer`): uvicorn's server, serving the connections the
server hands it rather than a listening socket of its own."""

from __future__ import annotations

import asyncio
import logging
import socket

import uvicorn

log = logging.getLogger("inferd.fronts")


class TakingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, channel: socket.socket):
        """`channel`: this front's end of its socket pair with the server."""
        super().__init__(config)
        self.channel = channel
        self._opening: set[asyncio.Task[object]] = set()
        self._taking = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])  # the app's lifespan first, as with a socket
        if self.should_exit:
            return
        self.channel.setblocking(False)
        asyncio.get_running_loop().add_reader(self.channel.fileno(), self._take)
        self._taking = True
        self.channel.send(b"r")  # ready: the server deals this front connections from now on

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._stop_taking()  # connections dealt from now on go to the other fronts
        await super().shutdown(sockets=sockets)

    def _stop_taking(self) -> None:
        if self._taking:
            asyncio.get_running_loop().remove_reader(self.channel.fileno())
            self._taking = False

    def _take(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(self.channel, 16, 16)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("the server's connections stopped coming: %s", exc)
                self._stop_taking()
                return
            if not message and not fds:  # the server closed its end: it is stopping
                self._stop_taking()
                return
            for fd in fds:
                connection = socket.socket(fileno=fd)
                connection.setblocking(False)
                opening = loop.create_task(loop.connect_accepted_socket(self._protocol, connection))
                self._opening.add(opening)
                opening.add_done_callback(self._opened)

    def _opened(self, opening: asyncio.Task[object]) -> None:
        self._opening.discard(opening)
        if not opening.cancelled() and opening.exception() is not None:
            log.debug("a connection could not be opened: %r", opening.exception())

    def _protocol(self) -> asyncio.Protocol:
        """What uvicorn makes for each connection it accepts itself."""
        protocol: asyncio.Protocol = self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config, server_state=self.server_state, app_state=self.lifespan.state
        )
        return protocol
