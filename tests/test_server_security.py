"""The HTTP API's defences, each against a real server on loopback: cross-site writes and DNS
rebinding (Content-Type, Origin, Host), bounded connections and deadlines, IPv6, strict JSON
out. Every loop here is bounded in time."""

from __future__ import annotations

import http.client
import json
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from featgs.cli import main
from featgs.query import FeatureField
from featgs.server import FieldServer
from builders import copy_run, has_ipv6

EDIT = {"selection": {"ids": [0, 1, 2]}, "op": "delete", "name": "csrf"}


@pytest.fixture(scope="module")
def run(tabletop_run, tmp_path_factory) -> Path:
    return copy_run(tabletop_run, tmp_path_factory.mktemp("server-security") / "run")


@pytest.fixture(scope="module")
def field(run) -> FeatureField:
    return FeatureField.load(run)


def request(server: FieldServer, method: str, path: str, body=None, headers=None, host: str = "127.0.0.1"):
    """(status, headers, payload: parsed JSON or bytes); ``headers`` replace the defaults."""
    conn = http.client.HTTPConnection(host, server.server_address[1], timeout=30)
    data = None if body is None else json.dumps(body).encode()
    sent = {"Content-Type": "application/json"} if data is not None else {}
    sent.update(headers or {})
    conn.putrequest(method, path, skip_host="Host" in sent)
    for name, value in sent.items():
        conn.putheader(name, value)
    if data is not None:
        conn.putheader("Content-Length", str(len(data)))
    conn.endheaders(data)
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    is_json = (resp.getheader("Content-Type") or "").startswith("application/json")
    return resp.status, resp.headers, json.loads(payload) if is_json else payload


def test_cross_site_writes_and_foreign_hosts_are_refused(field, run):
    with FieldServer(field, ("127.0.0.1", 0), quiet=True).start() as srv:
        port = srv.server_address[1]
        # what a <form> or a no-preflight fetch from any page can send: text/plain
        status, _, out = request(srv, "POST", "/edit", EDIT, {"Content-Type": "text/plain"})
        assert status == 415 and "application/json" in out["error"]
        assert request(srv, "POST", "/query", {"text": "wall"}, {"Content-Type": ""})[0] == 415
        # JSON, but from another site's page
        status, _, out = request(srv, "POST", "/edit", EDIT, {"Origin": "http://evil.example"})
        assert status == 403 and "--allow-origin" in out["error"]
        assert request(srv, "POST", "/edit", EDIT, {"Origin": "null"})[0] == 403
        assert request(srv, "GET", "/health", headers={"Origin": "http://evil.example"})[0] == 403
        assert not (run / "edits" / "csrf.ply").exists()
        # DNS rebinding: the page's own origin, but a foreign Host
        rebound = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
        status, _, out = request(srv, "POST", "/query", {"text": "wall"}, rebound)
        assert status == 403 and "--allow-host" in out["error"]
        assert request(srv, "GET", "/health", headers={"Host": "127.0.0.1@evil.example"})[0] == 403
        assert not (run / "edits" / "csrf.ply").exists()
        # this server's own pages (/docs), other names of this machine, programs without Origin
        assert request(srv, "POST", "/query", {"text": "wall"}, {"Origin": f"http://127.0.0.1:{port}"})[0] == 200
        assert request(srv, "GET", "/health", headers={"Host": f"localhost:{port}"})[0] == 200
        assert request(srv, "GET", "/health", headers={"Host": f"[::1]:{port}"})[0] == 200
        status, _, page = request(srv, "GET", "/docs")
        assert status == 200 and b"/openapi.json" in page

    app, named = "http://app.example:5173", {"Host": f"field.example:{port}"}
    with FieldServer(field, ("127.0.0.1", 0), quiet=True, allow_origins=[app], allow_hosts=["field.example"]).start() as srv:
        port = srv.server_address[1]
        status, headers, out = request(srv, "POST", "/query", {"text": "wall"}, {"Origin": app})
        assert status == 200 and headers["Access-Control-Allow-Origin"] == app and out["num_selected"] > 0
        status, headers, _ = request(srv, "OPTIONS", "/query", headers={  # the browser's preflight
            "Origin": app, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
        assert status == 200 and headers["Access-Control-Allow-Origin"] == app
        assert request(srv, "GET", "/health", headers={"Host": f"field.example:{port}"})[0] == 200
        assert request(srv, "GET", "/health", headers={**named, "Origin": "http://evil.example"})[0] == 403
        assert request(srv, "GET", "/health", headers={"Host": "evil.example"})[0] == 403


def test_idle_connections_neither_pile_up_threads_nor_lock_others_out(field):
    with FieldServer(field, ("127.0.0.1", 0), quiet=True, max_connections=8, keep_alive=2).start() as srv:
        assert request(srv, "GET", "/health")[0] == 200  # the server's threads are up
        threads = threading.active_count()
        idle = [socket.create_connection(srv.server_address, timeout=10) for _ in range(50)]
        try:
            statuses, start = [], time.monotonic()
            while time.monotonic() - start < 20 and (not statuses or statuses[-1] != 200):
                statuses.append(request(srv, "GET", "/health")[0])
                time.sleep(0.2)
            # beyond max_connections a request gets 503, until the idle ones are closed
            assert statuses[0] == 503 and statuses[-1] == 200 and set(statuses) == {503, 200}, statuses
            assert time.monotonic() - start < 10
            assert threading.active_count() <= threads + 2  # no thread per connection
            for sock in idle[:5]:  # the server closed them: the client reads end-of-stream
                assert sock.recv(100) == b""
        finally:
            for sock in idle:
                sock.close()
        # nor does a request head sent a byte at a time hold a connection
        with closing(socket.create_connection(srv.server_address, timeout=10)) as sock:
            start = time.monotonic()
            sock.sendall(b"GET /health HTTP/1.1\r\n")
            assert _trickle(sock, b"X-Slow: " + b"a" * 100, every=0.25, limit=10) == b""
            assert time.monotonic() - start < 6


def test_a_trickled_body_is_cut_off_at_the_deadline(field):
    with FieldServer(field, ("127.0.0.1", 0), quiet=True, request_timeout=2).start() as srv:
        with closing(socket.create_connection(srv.server_address, timeout=10)) as sock:
            start = time.monotonic()
            sock.sendall(b"POST /query HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n")
            answer = _trickle(sock, b'{"text": "' + b"a" * 80, every=0.25, limit=10)
            elapsed = time.monotonic() - start
        status = int(answer.split(b" ", 2)[1])
        body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert status == 408 and "within 2 s" in body["error"] and b"connection: close" in answer.lower()
        assert 1.5 < elapsed < 6
        assert request(srv, "GET", "/health")[0] == 200


def _trickle(sock: socket.socket, data: bytes, every: float, limit: float) -> bytes:
    """Send ``data`` a byte per ``every`` seconds until the server answers or closes (for at
    most ``limit`` seconds); what it sent until it closed."""
    received, deadline = b"", time.monotonic() + limit
    for byte in data:
        if select.select([sock], [], [], every)[0]:
            break
        try:
            sock.sendall(bytes([byte]))
        except OSError:  # closed under us
            break
        assert time.monotonic() < deadline, "the server kept a trickling client"
    sock.settimeout(max(0.1, deadline - time.monotonic()))
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


@pytest.mark.skipif(not has_ipv6(), reason="no IPv6 loopback here")
def test_ipv6_loopback(field):
    with FieldServer(field, ("::1", 0), quiet=True).start() as srv:
        assert re.fullmatch(r"http://\[::1\]:\d+", srv.url)
        status, _, health = request(srv, "GET", "/health", host="::1")
        assert status == 200 and health["status"] == "ok"


class _OddField:
    """Just enough of a FeatureField for /query: answers "nan" with a NaN, "bug" with a crash."""

    def query(self, text, negatives=None, *, config=None):
        if text == "bug":
            raise RuntimeError("a bug")
        return None

    def describe(self, selection, *, with_ids=False):
        return {"num_selected": 0, "threshold": float("nan")}


def test_a_non_finite_answer_or_a_bug_is_a_json_error_and_the_server_lives_on():
    with FieldServer(_OddField(), ("127.0.0.1", 0), quiet=True).start() as srv:
        for text, status, message in (("nan", 422, "NaN"), ("bug", 500, "internal error (RuntimeError)"),
                                      ("nan", 422, "NaN")):
            conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=30)
            conn.request("POST", "/query", body=json.dumps({"text": text}), headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            out = json.loads(resp.read(), parse_constant=lambda name: pytest.fail(f"{name} in the answer"))
            conn.close()
            assert resp.status == status and message in out["error"], out


@pytest.mark.skipif(not has_ipv6(), reason="no IPv6 loopback here")
def test_serve_command_on_ipv6_with_options_logs_and_stops_on_ctrl_c(run, capsys):
    proc = subprocess.Popen([sys.executable, "-m", "featgs", "serve", str(run), "--host", "::1", "--port", "0",
                             "--allow-origin", "http://app.example:5173/", "--max-connections", "4",
                             "--request-timeout", "5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://\[(::1)\]:(\d+)", line)
        assert url and f"{url.group(0)}/openapi.json" in line, line
        conn = http.client.HTTPConnection("::1", int(url.group(2)), timeout=120)
        conn.request("GET", "/health", headers={"Origin": "http://app.example:5173"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Access-Control-Allow-Origin") == "http://app.example:5173"
        conn.close()
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert '"GET /health HTTP/1.1" 200' in err and err.rstrip().endswith("featgs: interrupted"), err
    assert main(["serve", str(run), "--allow-origin", "evil.example"]) == 2
    assert main(["serve", str(run), "--max-connections", "0"]) == 2
    assert main(["serve", str(run), "--request-timeout", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(e.startswith("featgs: error:") for e in err), err
