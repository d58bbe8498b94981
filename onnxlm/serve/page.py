"""The chat page: ``GET /`` answers ``static/index.html`` and ``/static/...`` its script and style sheet (files in
the package, no build step). The page itself needs no API key (it holds no data); the API calls it makes carry the
key the user types in. A Content-Security-Policy lets the page run only its own script and talk only to this
server, so nothing a model writes can run even if it reached the DOM as markup (the script shows it as text)."""
from __future__ import annotations

from pathlib import Path

from starlette.responses import FileResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).with_name("static")

#: the page loads only its own files, fetches only this server, and cannot be framed
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


async def index(request):
    return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": CSP,
                                                         "X-Content-Type-Options": "nosniff",
                                                         "Cache-Control": "no-cache"})


def page_routes() -> list:
    """The routes of the chat page: ``/`` and ``/static``."""
    return [Route("/", index, methods=["GET"]), Mount("/static", StaticFiles(directory=STATIC), name="static")]
