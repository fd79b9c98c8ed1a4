"""A front process: `python -m inferd.api.fronts FD CONTROL SERVER LOG_LEVEL`.

FD is its end of a Unix socket pair on which the server hands it connections to serve
(`dealer`); CONTROL and SERVER the server's Unix sockets for slots and for the requests passed
on; INFERD_FRONT_SETTINGS holds the server's settings as JSON."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys

import uvicorn

from inferd.api.fronts.app import create_front_app
from inferd.api.fronts.processes import SETTINGS_VARIABLE
from inferd.api.fronts.taken import TakingServer
from inferd.api.uvicorn_options import uvicorn_options
from inferd.settings import Settings


def main(argv: list[str]) -> None:
    fd, control, server, log_level = argv
    settings = Settings(**json.loads(os.environ[SETTINGS_VARIABLE]))
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    channel = socket.socket(fileno=int(fd))  # the family and type are read from the socket
    config = uvicorn.Config(
        create_front_app(settings, control, server), **uvicorn_options(settings, log_level)
    )
    TakingServer(config, channel).run(sockets=[])


if __name__ == "__main__":
    main(sys.argv[1:])
