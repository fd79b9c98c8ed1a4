"""A front process: `python -m inferd.api.fronts FD CONTROL SERVER LOG_LEVEL`.

FD is the server's listening socket, inherited; CONTROL and SERVER its Unix sockets for slots
and for the requests passed on; INFERD_FRONT_SETTINGS holds the server's settings as JSON."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys

import uvicorn

from inferd.api.fronts.app import create_front_app
from inferd.api.fronts.processes import SETTINGS_VARIABLE
from inferd.settings import Settings


def main(argv: list[str]) -> None:
    fd, control, server, log_level = argv
    settings = Settings(**json.loads(os.environ[SETTINGS_VARIABLE]))
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    listening = socket.socket(fileno=int(fd))  # the family and type are read from the socket
    config = uvicorn.Config(
        create_front_app(settings, control, server),
        log_level=log_level.lower(),
        timeout_graceful_shutdown=int(settings.terminate_timeout),
    )
    uvicorn.Server(config).run(sockets=[listening])


if __name__ == "__main__":
    main(sys.argv[1:])
