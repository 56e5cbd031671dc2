"""The playground: one static page at GET / on the HTTP port (index.html beside this file, read
from the package's data). Type text, pick a voice or speaker and a format, hear it stream and
download it. The page calls this server's own POST /v1/audio/speech, so it needs no token to load
(it is the same for everyone) but sends the bearer token typed into it with every API call."""

from __future__ import annotations

from functools import cache
from importlib import resources

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

PATH = "/"


@cache
def page() -> str:
    return resources.files(__name__).joinpath("index.html").read_text(encoding="utf-8")


async def _index(request: Request) -> Response:
    # The page loads nothing from elsewhere; the policy keeps it that way in the browser too.
    headers = {"content-security-policy": "default-src 'self'; script-src 'unsafe-inline'; "
                                          "style-src 'unsafe-inline'; media-src 'self' blob:; connect-src 'self' blob:",
               "cache-control": "no-cache"}
    return HTMLResponse(page(), headers=headers)


def routes() -> list[Route]:
    return [Route(PATH, _index, methods=["GET"])]
