"""The server's side of the port with API processes: it accepts each connection and hands it
to the fronts in turn, over a Unix socket pair per front (the descriptor itself travels,
SCM_RIGHTS), so a client's pool of connections spreads evenly over them.

When the fronts accepted on the shared socket themselves, the first to wake took every
connection waiting (asyncio and libuv both accept until none is left): 32 connections opened
at once landed 32-0-0-0 or 17-11-3-1 over four fronts, and one front did the work of all of
them. The server accepts and passes a connection on in a few microseconds; the connection's
requests then go to its front alone, as before."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

log = logging.getLogger("inferd.fronts")


class Dealer:
    def __init__(self, listening: socket.socket, count: int):
        """`listening`: the port's socket; `count`: the fronts there will be."""
        self.listening = listening
        self._channels: list[socket.socket | None] = [None] * count
        self._next = 0
        self._reading = False

    def channel(self, index: int) -> socket.socket:
        """A new socket pair for front `index` (started, or started again): the server keeps
        one end, to deal connections on; the other is for the front, which inherits it and
        which this process closes once the front has started."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        old, self._channels[index] = self._channels[index], ours
        if old is not None:
            old.close()
        theirs.set_inheritable(True)
        self._resume()  # connections that waited for a front to take them
        return theirs

    def start(self) -> None:
        self.listening.setblocking(False)
        self._resume()

    def stop(self) -> None:
        self._pause()
        for i, channel in enumerate(self._channels):
            if channel is not None:
                channel.close()
                self._channels[i] = None

    def _resume(self) -> None:
        if not self._reading and any(c is not None for c in self._channels):
            asyncio.get_running_loop().add_reader(self.listening.fileno(), self._deal)
            self._reading = True

    def _pause(self) -> None:
        if self._reading:
            asyncio.get_running_loop().remove_reader(self.listening.fileno())
            self._reading = False

    def _deal(self) -> None:
        while True:
            try:
                connection, _ = self.listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors, say: the next wake tries again
                log.warning("accepting a connection failed: %s", exc)
                return
            with connection:  # the front has its own copy once it is sent
                if not self._hand(connection):
                    # No front can take it (all starting again): the client is refused, and
                    # the port's queue keeps the rest until one can.
                    log.warning("no API process could take a connection; it was closed")
                    self._pause()
                    return

    def _hand(self, connection: socket.socket) -> bool:
        count = len(self._channels)
        for step in range(count):
            index = (self._next + step) % count
            channel = self._channels[index]
            if channel is None:
                continue
            try:
                socket.send_fds(channel, [b"c"], [connection.fileno()])
            except (BlockingIOError, InterruptedError):
                continue  # that front is not reading: the next one
            except OSError:  # that front is gone; its keeper starts it again
                with contextlib.suppress(OSError):
                    channel.close()
                self._channels[index] = None
                continue
            self._next = index + 1
            return True
        return False
