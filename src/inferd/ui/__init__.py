"""The web UI: static pages served by the API server itself at `/`, talking to the same HTTP API
as every other client. Plain HTML, CSS and JavaScript modules, so nothing is built and nothing
is fetched from a CDN: it works offline and ships inside the Python package."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"


def mount(app: FastAPI) -> None:
    app.mount("/ui", StaticFiles(directory=STATIC), name="ui")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})
