"""The checks every request passes before a route sees it, as ASGI middleware.

The API has no authentication and is meant for this machine, so what it must refuse is what a
web page on another site can make a browser send to it:

- a cross-site write: a page may POST to any address without asking first, as long as the
  Content-Type is text/plain, a form or multipart. The API takes only application/json bodies
  (415 otherwise), which a browser sends cross-site only after a CORS preflight this server
  does not grant; and a request whose ``Origin`` is neither this server's own nor one the user
  allowed is refused outright (403).
- DNS rebinding: a page on evil.example whose name is made to resolve to 127.0.0.1 is
  same-origin with itself, but its requests carry ``Host: evil.example``. Only the names of
  this server are accepted (403 otherwise).

and what would tie the server up: a body must come with a Content-Length of at most
``max_body`` bytes (411, 413), and all of it within ``body_timeout`` seconds of the request's
head (408). Refusals are featgs's JSON error and end the connection; a refused POST's body
(up to ``DRAIN_BYTES``, for at most ``DRAIN_SECONDS``) is read and dropped first, because a
client that sends its whole body before reading (most do) would otherwise see the connection
reset, not the answer.
"""

from __future__ import annotations

import asyncio
import re
from typing import Iterable, List, Optional

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from featgs.server.responses import error_response

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

# A refused body is read and dropped up to this size and for this long before the answer.
DRAIN_BYTES = 64 << 20
DRAIN_SECONDS = 5.0

# host[:port] or [v6]:port; no user info, path or spaces (which urlsplit would tolerate)
_HOST = re.compile(r"\[(?P<v6>[0-9a-fA-F:.]+)\](?::\d+)?|(?P<name>[^:\[\]@/\s]+)(?::\d+)?")


class Guard:
    """ASGI middleware in front of the app (see the module docstring).

    Args:
        app: what requests go to once they pass.
        hosts: accepted Host names (lower case, without port); None accepts any.
        origins: accepted Origins besides the server's own (``scheme://host[:port]``).
        max_body: bytes a request body may have.
        body_timeout: seconds from the request's head to the body's last byte.
    """

    def __init__(self, app: ASGIApp, *, hosts: Optional[Iterable[str]], origins: Iterable[str] = (),
                 max_body: int, body_timeout: float):
        self.app = app
        self.hosts = None if hosts is None else frozenset(h.lower() for h in hosts)
        self.origins = frozenset(o.lower() for o in origins)
        self.max_body = max_body
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            self._check_host_and_origin(scope, headers)
            if scope["method"] == "POST":
                body = await self._read_body(headers, receive)
                if body is None:
                    return  # the client left: nobody to answer
                receive = _replay(body, receive)
        except HTTPException as e:
            if scope["method"] == "POST" and e.status_code != 408:  # 408: its time is up already
                await _drain(headers, receive)
            await error_response(e.status_code, e.detail, close=True)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _check_host_and_origin(self, scope: Scope, headers: Headers) -> None:
        host = headers.get("host")
        if host is not None and self.hosts is not None:
            match = _HOST.fullmatch(host)
            name = match and (match["v6"] or match["name"]).lower()
            if name not in self.hosts:
                raise HTTPException(403, f"Host {host[:100]!r} is not a name of this server (a guard against DNS "
                                         f"rebinding); start it with --allow-host NAME to accept another name")
        origin = headers.get("origin")
        if origin is not None:
            own = f"{scope['scheme']}://{host}".lower() if host else None
            if origin.lower() != own and origin.lower() not in self.origins:
                raise HTTPException(403, f"cross-origin request from {origin[:100]!r} refused; start the server with "
                                         f"--allow-origin {origin[:100]} to allow that site")

    async def _read_body(self, headers: Headers, receive: Receive) -> Optional[bytes]:
        """The whole body, checked first for length and type; None if the client went away."""
        length = headers.get("content-length")
        if length is None:  # also a chunked body: its size is not known up front
            raise HTTPException(411, "a JSON body with a Content-Length header is required")
        n = int(length)  # h11 has refused any Content-Length that is not digits
        if n > self.max_body:
            raise HTTPException(413, f"request body of {n} bytes exceeds the limit of {self.max_body}")
        kind = headers.get("content-type", "")
        if kind.split(";", 1)[0].strip().lower() != "application/json":
            raise HTTPException(415, f"a POST body must be JSON sent as Content-Type: application/json, "
                                     f"got {kind[:60]!r}")
        try:
            # One deadline for the whole body: a per-read timeout lets a byte every few seconds
            # hold the connection (and the memory of a partial body) forever.
            return await asyncio.wait_for(_receive_all(receive), self.body_timeout)
        except asyncio.TimeoutError:
            raise HTTPException(408, f"the request body did not arrive within {self.body_timeout:g} s") from None


async def _receive_all(receive: Receive) -> Optional[bytes]:
    chunks: List[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _drain(headers: Headers, receive: Receive) -> None:
    """Read and drop what the client sends of its body, if it said it is at most
    :data:`DRAIN_BYTES`, for at most :data:`DRAIN_SECONDS`."""
    length = headers.get("content-length")
    if length is None or int(length) > DRAIN_BYTES:
        return

    async def discard() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                return

    try:
        await asyncio.wait_for(discard(), DRAIN_SECONDS)
    except asyncio.TimeoutError:
        pass


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body already read, then passes on to the client's."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay
