"""The API on a socket: uvicorn serving :func:`~featgs.server.app.create_app`, in a thread or in
the foreground (``featgs serve``)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
import time
from typing import Iterable, Optional, Tuple

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from featgs import __version__
from featgs.query import FeatureField
from featgs.server.app import BODY_TIMEOUT, MAX_BODY, create_app
from featgs.server.guard import LOOPBACK_NAMES

MAX_CONNECTIONS = 32
KEEP_ALIVE = 5.0  # seconds an idle connection stays open, also before its first request


class FieldServer:
    """Serves one field over HTTP. ``FieldServer(field, ("127.0.0.1", 0))`` binds a free port at
    once (see ``url``); :meth:`start` serves in a thread, :meth:`serve_forever` in this one.

    Args:
        field: what is served; never modified (edits make new fields).
        address: (host, port) to bind; an IPv6 host such as ``::1`` binds IPv6.
        quiet: no request log.
        allow_hosts: Host header names accepted besides this machine's loopback names and the
            bound host; ``*`` accepts any. A wildcard bind (0.0.0.0, ::) accepts any anyway.
        allow_origins: browser origins (``http://host:port``) allowed besides the server's own.
        max_connections: connections at once; a request beyond them gets 503.
        request_timeout: seconds a client has for a request body.
        keep_alive: seconds a connection may sit idle, before its first request or between
            requests, and may take to send a request's head.

    Raises:
        OSError: the address cannot be bound.
    """

    def __init__(self, field: FeatureField, address: Tuple[str, int] = ("127.0.0.1", 8000), *, quiet: bool = False,
                 allow_hosts: Iterable[str] = (), allow_origins: Iterable[str] = (),
                 max_connections: int = MAX_CONNECTIONS, request_timeout: float = BODY_TIMEOUT,
                 keep_alive: float = KEEP_ALIVE):
        host, port = address
        self.app = create_app(field, hosts=_hosts(host, allow_hosts), origins=allow_origins, max_body=MAX_BODY,
                              body_timeout=request_timeout)
        config = uvicorn.Config(
            self.app, http=_Protocol, ws="none", lifespan="off", interface="asgi3",
            log_config=None,  # a library leaves logging alone; `featgs serve` sets it up
            access_log=not quiet,  # (False also detaches uvicorn.access's handlers: uvicorn's way)
            proxy_headers=False, server_header=False,
            headers=[("server", f"featgs/{__version__}")],
            limit_concurrency=max_connections, timeout_keep_alive=keep_alive,  # type: ignore[arg-type]
            timeout_graceful_shutdown=5)  # then requests still running are cancelled
        self._server = uvicorn.Server(config)
        self._thread: Optional[threading.Thread] = None
        self.socket = _listen(host, port)  # bound now: the port is known, and taken, from here on
        self.server_address: Tuple[str, int] = self.socket.getsockname()[:2]

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown` or, in the main thread, SIGINT/SIGTERM: uvicorn then
        finishes the requests in flight and raises the signal again once its own handlers are
        gone, so Ctrl-C ends with the KeyboardInterrupt of Python's default SIGINT handler."""
        self._server.run(sockets=[self.socket])

    def start(self, timeout: float = 30.0) -> "FieldServer":
        """Serve in a daemon thread, once it has started (within ``timeout`` seconds); returns
        self, for ``with FieldServer(...).start() as server:``."""
        self._thread = threading.Thread(target=self.serve_forever, name=f"featgs-server-{self.server_address[1]}",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._server.started:
            self.close()
            raise RuntimeError(f"the server on {self.url} did not start within {timeout:g} s")
        return self

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop serving (from another thread) and wait up to ``timeout`` seconds for it."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def close(self) -> None:
        self.shutdown()
        self.socket.close()

    def __enter__(self) -> "FieldServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for the request head.

    uvicorn starts its idle timer only after a response and stops it at any byte received, so a
    connection that never sends a request, or sends its head a byte at a time, is held open for
    ever (and counts against ``limit_concurrency``, so a few dozen of them make every request a
    503). Here the timer also runs from the connection's start and stops only once a whole
    request head is in (uvicorn stops it then); the body has its own deadline (Guard)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self.handle_events()


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port), IPv6 if the host is."""
    family, kind, proto, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    return socket.create_server(sockaddr[:2], family=family, backlog=2048)


def _hosts(host: str, allow_hosts: Iterable[str]) -> Optional[frozenset]:
    """Host header names to accept: None (any) for a wildcard bind or ``*``."""
    extra = {h.lower().strip("[]") for h in allow_hosts}
    if "*" in extra or _is_wildcard(host):
        return None
    return frozenset(LOOPBACK_NAMES | {host.lower().strip("[]")} | extra)


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return host == ""
