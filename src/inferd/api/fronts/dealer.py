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
import logging
import socket

log = logging.getLogger("inferd.fronts")

_RETRY = 0.05  # seconds before dealing again after a connection could not be dealt


class Dealer:
    def __init__(self, listening: socket.socket, count: int):
        """`listening`: the port's socket; `count`: the fronts there will be."""
        self.listening = listening
        listening.setblocking(False)  # accepted until none is left at each wake
        self._channels: list[socket.socket | None] = [None] * count
        self._ready = [False] * count  # the front said it takes connections
        self._next = 0
        self._reading = False

    def channel(self, index: int) -> socket.socket:
        """A new socket pair for front `index` (started, or started again): the server keeps
        one end, to deal connections on once the front says it is ready; the other is for the
        front (this process closes it once the front has started)."""
        self._drop(index)
        # Not marked inheritable: `pass_fds` gives it to the front alone, where uvloop would
        # also leave an inheritable descriptor to every process started meanwhile (a model's,
        # another front's), and a front that dies would then never be heard to close its end.
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setblocking(False)
        self._channels[index] = ours
        asyncio.get_running_loop().add_reader(ours.fileno(), self._heard, index)
        return theirs

    def gone(self, index: int) -> None:
        """Front `index` exited: nothing more is dealt to it until it is started again."""
        self._drop(index)

    def stop(self) -> None:
        """No more dealing: every front's channel closes (the last leaves the port unread)."""
        for index in range(len(self._channels)):
            self._drop(index)

    def _heard(self, index: int) -> None:
        """Front `index` said it is ready, or its end closed (it exited)."""
        channel = self._channels[index]
        if channel is None:
            return
        try:
            said = channel.recv(16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            said = b""
        if not said:
            self._drop(index)
            return
        self._ready[index] = True
        self._resume()  # connections waiting for a front to be ready

    def _drop(self, index: int) -> None:
        channel, self._channels[index] = self._channels[index], None
        self._ready[index] = False
        if channel is not None:
            asyncio.get_running_loop().remove_reader(channel.fileno())
            channel.close()
        if not any(self._ready):
            self._pause()  # connections wait in the port's queue until a front is back

    def _pause(self) -> None:
        if self._reading:
            asyncio.get_running_loop().remove_reader(self.listening.fileno())
            self._reading = False

    def _deal(self) -> None:
        while self._reading:
            try:
                connection, _ = self.listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors, say
                log.warning("accepting a connection failed: %s", exc)
                self._later()
                return
            with connection:  # the front has its own copy once it is sent
                if not self._hand(connection):
                    # Every front's queue is full (none is reading): this client is refused,
                    # the next ones wait in the port's queue a moment rather than be refused.
                    log.warning("no API process could take a connection; it was closed")
                    self._later()
                    return

    def _later(self) -> None:
        """Deal again in a moment (the port's queue holds what comes meanwhile), not at the
        next wake, which comes at once while connections wait."""
        self._pause()
        asyncio.get_running_loop().call_later(_RETRY, self._resume)

    def _resume(self) -> None:
        if not self._reading and any(self._ready):
            asyncio.get_running_loop().add_reader(self.listening.fileno(), self._deal)
            self._reading = True

    def _hand(self, connection: socket.socket) -> bool:
        count = len(self._channels)
        for step in range(count):
            index = (self._next + step) % count
            channel = self._channels[index]
            if channel is None or not self._ready[index]:
                continue
            try:
                socket.send_fds(channel, [b"c"], [connection.fileno()])
            except (BlockingIOError, InterruptedError):
                continue  # that front is not reading: the next one
            except OSError:  # that front is gone; its keeper starts it again
                self._drop(index)
                continue
            self._next = index + 1
            return True
        return False
