"""Wrong API keys by client: one that sent too many within a minute is refused for a while,
whatever it sends, so keys cannot be guessed at the speed of the network.

With API processes (`--api-processes`) a client's connections land on any of them, so each
keeps its own count (it works alone if the server is unreachable) and reports every wrong key
to the server, which counts them all and tells every process whom to refuse, and for how long.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

ALLOWED = 10  # wrong keys from one client within the window before it is refused
WINDOW = 60.0  # seconds


class WrongKeys:
    def __init__(self, allowed: int = ALLOWED, window: float = WINDOW):
        self.allowed, self.window = allowed, window
        self._times: dict[str, deque[float]] = {}  # client -> when its recent wrong keys came
        self._refused: dict[str, float] = {}  # client -> until when, as another process said
        # A front reports each wrong key to the server; the server tells the fronts whom to
        # refuse (seconds from now).
        self.on_wrong: Callable[[str], None] | None = None
        self.on_refused: Callable[[str, float], None] | None = None

    def retry_after(self, client: str) -> int | None:
        """Whole seconds until `client` may try again; None: it may now."""
        now = time.monotonic()
        until = self._refused.get(client)
        if until is not None and until <= now:
            del self._refused[client]
            until = None
        times = self._recent(client, now)
        if len(times) >= self.allowed:
            until = max(until or 0.0, times[0] + self.window)
        return None if until is None else int(until - now) + 1

    def record(self, client: str) -> None:
        """A wrong key from `client`, here or in an API process."""
        now = time.monotonic()
        times = self._recent(client, now)
        times.append(now)
        self._times[client] = times
        if self.on_wrong is not None:
            self.on_wrong(client)
        if len(times) == self.allowed and self.on_refused is not None:
            self.on_refused(client, times[0] + self.window - now)

    def refused(self) -> dict[str, float]:
        """The clients refused now, from their own wrong keys here, and for how many seconds
        more: what a front that (re)connects is told."""
        now = time.monotonic()
        found = {}
        for client in list(self._times):
            times = self._recent(client, now)
            if len(times) >= self.allowed:
                found[client] = times[0] + self.window - now
        return found

    def refuse(self, client: str, seconds: float) -> None:
        """Refuse `client` for `seconds`, as the process that counted its wrong keys said."""
        until = time.monotonic() + seconds
        self._refused[client] = max(self._refused.get(client, until), until)

    def _recent(self, client: str, now: float) -> deque[float]:
        """`client`'s wrong keys within the window; one with none is forgotten."""
        times = self._times.get(client)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._times[client]
        return times
