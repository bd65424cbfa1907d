"""Soak test of ``featgs serve``: valid and hostile clients at once, for a fixed time.

    python benchmarks/soak_serve.py [RUN] [--clients 16] [--seconds 60] [--request-timeout 5]

Starts ``featgs serve RUN --port 0 --quiet`` in its own process (as benchmarks/http_load.py
does; without RUN it first trains the small tabletop run of benchmarks/viewer_load.py, about a
minute) and runs ``--clients`` threads until ``--seconds`` have passed. Each thread draws, from
its own seeded generator, request after request from this mix (weights in MIX):

- valid: ``POST /query`` (the run's label names and synonyms), ``POST /render`` of one of the
  run's views (small), ``GET /health``, ``POST /segment`` of a view. Each must answer 200.
- hostile, each with the answer it must get:
  malformed JSON (a truncated body: 400), a wrong Content-Type (text/plain: 415), a foreign
  Origin (403), an oversized body (a Content-Length past the 8 MiB cap, answered before the
  body is sent: 413), a slowly trickled body (a byte every 0.2 s: 408 after the server's
  ``--request-timeout``), a half-open connection (part of a request head, then silence: the
  server must close it, after its 5 s keep-alive), huge render sizes (4096 px to 10^13 px
  cameras: 400, refused before any work).

Every request has a timeout and is only started before the deadline: the run is bounded.
Reports the latency of the valid requests (p50/p99 per kind and overall), the answers by
status code for each kind (and the unexpected ones: anything else, 5xx, failed connections),
the server's resident memory and thread count (``/proc/PID/status`` VmRSS and Threads) after
warm-up (every text queried, every view segmented and rendered in each mode once: the text
encoder and the allocator's pools are loaded by then), at its peak and at the end, whether it
logged a traceback, and whether it still answers /health and is alive afterwards. The server
answers one field operation at a time, so latency under many clients is mostly queueing.
Writes benchmarks/results/soak-serve-<cpu|cuda>.{txt,json}; exits 1 if the server died, answered
a 5xx or dropped a connection.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import platform
import random
import select
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import print_table, save_results, start_server  # noqa: E402

TIMEOUT = 120.0  # seconds any one request may take
TEXTS = ["table", "floor", "wall", "red mug", "cup", "green apple", "fruit", "lamp", "white plate", "book"]
# kind -> weight; the valid kinds come first
MIX = {"query": 30, "render": 12, "health": 12, "segment": 10,
       "malformed JSON": 6, "wrong content type": 5, "foreign Origin": 5, "oversized body": 4,
       "trickled body": 2, "half-open": 3, "huge render": 5}
VALID = ("query", "render", "health", "segment")
RENDER_MODES = ("rgb", "features", "segmentation")
EXPECTED = {"query": 200, "render": 200, "health": 200, "segment": 200, "malformed JSON": 400,
            "wrong content type": 415, "foreign Origin": 403, "oversized body": 413, "trickled body": 408,
            "half-open": "closed", "huge render": 400}




def count_test_views(host: str, port: int) -> int:
    """How many test views the served run has (at least one, or exit)."""
    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    conn.request("GET", "/views")
    views = json.loads(conn.getresponse().read())
    conn.close()
    if not views.get("test"):
        raise SystemExit("the run has no test views to render")
    return len(views["test"])


def proc_status(pid: int) -> dict:
    """VmRSS (MiB) and Threads of a process, from /proc/PID/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                out["rss_mib"] = round(int(line.split()[1]) / 1024.0, 1)
            elif line.startswith("Threads:"):
                out["threads"] = int(line.split()[1])
    return out


def request(host: str, port: int, method: str, path: str, data: bytes | None, headers: dict) -> int:
    """The status of one request on its own connection, or -1 when the connection failed."""
    try:
        conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        resp.read()
        conn.close()
        return resp.status
    except (OSError, http.client.HTTPException):
        return -1


def _status_of(answer: bytes) -> int | str:
    if answer.startswith(b"HTTP/1.1 ") and answer[9:12].isdigit():
        return int(answer[9:12])
    return "closed" if answer == b"" else -1


def oversized(host: str, port: int) -> int | str:
    """A head announcing a body past the cap; the answer must come before any body is sent."""
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        sock.sendall(b"POST /query HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % (host.encode(), 64 << 20))
        return _status_of(sock.recv(4096))


def trickled(host: str, port: int, limit: float) -> int | str:
    """A body sent a byte every 0.2 s until the server answers (or ``limit`` seconds pass)."""
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        sock.sendall(b"POST /query HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{" % host.encode())
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if select.select([sock], [], [], 0.2)[0]:
                return _status_of(sock.recv(4096))
            try:
                sock.sendall(b" ")
            except OSError:
                break
        return "held"


def half_open(host: str, port: int, limit: float, rng: random.Random) -> str:
    """Part of a request head (or nothing), then silence: "closed" when the server hangs up
    within ``limit`` seconds, "answered" if it answers, "held" if it keeps the connection."""
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        sock.sendall(rng.choice([b"", b"GET /health HTTP/1.1\r\nHo", b"POST /query HTTP/1.1\r\n"]))
        if not select.select([sock], [], [], limit)[0]:
            return "held"
        try:
            return "closed" if sock.recv(4096) == b"" else "answered"
        except ConnectionResetError:
            return "closed"


HUGE_CAMERAS = [{"width": 4096, "height": 64}, {"width": 64, "height": 10**6}, {"width": 10**13, "height": 10**13}]


def one(kind: str, rng: random.Random, host: str, port: int, views: int, request_timeout: float) -> int | str:
    """Send one request of ``kind``; its status (or "closed", "held", -1)."""
    json_type = {"Content-Type": "application/json"}
    if kind == "query":
        return request(host, port, "POST", "/query", json.dumps({"text": rng.choice(TEXTS)}).encode(), json_type)
    if kind == "render":
        body = {"camera": {"view": rng.randrange(views)}, "mode": rng.choice(RENDER_MODES)}
        return request(host, port, "POST", "/render", json.dumps(body).encode(), json_type)
    if kind == "health":
        return request(host, port, "GET", "/health", None, {})
    if kind == "segment":
        body = {"camera": {"view": rng.randrange(views)}}
        return request(host, port, "POST", "/segment", json.dumps(body).encode(), json_type)
    if kind == "malformed JSON":
        text = json.dumps({"text": rng.choice(TEXTS), "clean": False})
        return request(host, port, "POST", "/query", text[: rng.randrange(1, len(text) - 1)].encode(), json_type)
    if kind == "wrong content type":
        return request(host, port, "POST", "/query", b'{"text": "table"}', {"Content-Type": "text/plain"})
    if kind == "foreign Origin":
        return request(host, port, "POST", "/query", b'{"text": "table"}', {**json_type, "Origin": "http://evil.example"})
    if kind == "oversized body":
        return oversized(host, port)
    if kind == "trickled body":
        return trickled(host, port, request_timeout + 10)
    if kind == "half-open":
        return half_open(host, port, 15.0, rng)
    assert kind == "huge render", kind
    cam = {**rng.choice(HUGE_CAMERAS), "K": [[50.0, 0, 32.0], [0, 50.0, 32.0], [0, 0, 1]], "camtoworld": np.eye(4).tolist()}
    return request(host, port, "POST", "/render", json.dumps({"camera": cam}).encode(), json_type)


def client(index: int, host: str, port: int, deadline: float, views: int, request_timeout: float,
           record) -> None:
    """Requests of kinds drawn from MIX until ``deadline``, each passed to ``record``."""
    rng = random.Random(1000 + index)
    kinds, weights = list(MIX), list(MIX.values())
    while time.monotonic() < deadline:
        kind = rng.choices(kinds, weights)[0]
        t0 = time.perf_counter()
        try:
            status = one(kind, rng, host, port, views, request_timeout)
        except OSError:  # a raw connection refused or reset
            status = -1
        record(kind, status, time.perf_counter() - t0)


def small_run(folder: Path) -> Path:
    from viewer_load import small_run as train_small_run  # the viewer benchmark's run

    return train_small_run(folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?", type=Path, help="run folder to serve (default: train a small one first)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--request-timeout", type=float, default=5.0,
                    help="featgs serve --request-timeout: how long a trickled body is held (default: %(default)g s)")
    args = ap.parse_args()
    if not 1 <= args.clients <= 256 or not 1 <= args.seconds <= 3600:
        ap.error("--clients must be in 1..256 and --seconds in 1..3600")
    tmp = tempfile.TemporaryDirectory(prefix="featgs-soak-")
    run = args.run
    if run is None:
        print("training a small run first (about a minute) ...", flush=True)
        run = small_run(Path(tmp.name))
    proc, host, port = start_server(run, "--request-timeout", str(args.request_timeout))
    errors: list = []
    threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True).start()  # drain: never block the server
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()

    lock = threading.Lock()
    outcomes = collections.defaultdict(collections.Counter)
    latencies = collections.defaultdict(list)

    def record(kind, status, seconds):
        with lock:
            outcomes[kind][status] += 1
            if kind in VALID and status == 200:
                latencies[kind].append(seconds)

    try:
        views = count_test_views(host, port)
        for text in TEXTS:  # warm up: texts embedded once, as on a server that has been up a while
            request(host, port, "POST", "/query", json.dumps({"text": text}).encode(),
                    {"Content-Type": "application/json"})
        for v in range(views):  # and every view rendered each way (the allocator's pools grow to size)
            request(host, port, "POST", "/segment", json.dumps({"camera": {"view": v}}).encode(),
                    {"Content-Type": "application/json"})
            for mode in RENDER_MODES:
                request(host, port, "POST", "/render", json.dumps({"camera": {"view": v}, "mode": mode}).encode(),
                        {"Content-Type": "application/json"})
        start = proc_status(proc.pid)
        deadline = time.monotonic() + args.seconds
        peak = [start["rss_mib"]]

        def sample():
            while time.monotonic() < deadline:
                try:
                    peak[0] = max(peak[0], proc_status(proc.pid)["rss_mib"])
                except (OSError, KeyError):
                    return
                time.sleep(0.5)

        threading.Thread(target=sample, daemon=True).start()
        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i, host, port, deadline, views, args.request_timeout,
                                                         record)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        time.sleep(6.0)  # the keep-alive timeout: connections the clients left are closed by now
        end = proc_status(proc.pid)
        alive = request(host, port, "GET", "/health", None, {}) == 200 and proc.poll() is None
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except Exception:  # noqa: BLE001 - a server that does not stop is killed
                proc.kill()
        tmp.cleanup()
    tracebacks = sum("Traceback" in line for line in errors)

    rows, per_kind = summarise(outcomes, latencies)
    valid = np.concatenate([np.array(latencies.get(k, [])) for k in VALID]) * 1000
    total = sum(sum(c.values()) for c in outcomes.values())
    unexpected = sum(k["unexpected"] for k in per_kind.values())
    server_errors = sum(n for c in outcomes.values() for s, n in c.items() if isinstance(s, int) and s >= 500)
    failed = sum(c.get(-1, 0) for c in outcomes.values())
    rows.append(["all valid", sum(per_kind[k]["requests"] for k in VALID), 200, "",
                 sum(per_kind[k]["unexpected"] for k in VALID), f"{np.percentile(valid, 50):.0f}",
                 f"{np.percentile(valid, 99):.0f}"])
    device_kind = "cuda" if torch.cuda.is_available() else "cpu"  # where the server's field lives
    where = (torch.cuda.get_device_name() if device_kind == "cuda"
             else f"{platform.processor() or platform.machine()} CPU")
    header = (f"featgs serve {run}: {args.clients} clients x {wall:.0f} s on loopback, valid and hostile mixed; "
              f"server on {where}, {os.cpu_count()} CPUs, 1-min load average {os.getloadavg()[0]:.1f}; "
              f"--request-timeout {args.request_timeout:g}")
    print(header)
    table = print_table(["kind", "requests", "expected", "answers", "unexpected", "p50 ms", "p99 ms"], rows)
    summary = (f"{total} requests ({total / wall:.1f}/s); unexpected answers: {unexpected}; 5xx: {server_errors}; "
               f"failed connections: {failed}\n"
               f"server RSS {start['rss_mib']} MiB -> {end['rss_mib']} MiB (peak {peak[0]} MiB), "
               f"threads {start['threads']} -> {end['threads']}; tracebacks logged: {tracebacks}; "
               f"alive afterwards: {alive}")
    print(summary)
    save_results("soak-serve", {
        "device_kind": device_kind, "run": str(run) if args.run else "small tabletop run (benchmarks/viewer_load.py)",
        "clients": args.clients, "seconds": round(wall, 1), "request_timeout": args.request_timeout,
        "mix": MIX, "kinds": per_kind, "requests": total, "unexpected": unexpected, "server_errors": server_errors,
        "failed_connections": failed,
        "valid_latency_ms": {"p50": round(float(np.percentile(valid, 50)), 1),
                             "p99": round(float(np.percentile(valid, 99)), 1)},
        "server": {"start": start, "end": end, "peak_rss_mib": peak[0]}, "tracebacks": tracebacks,
        "alive_after": alive, "cpus": os.cpu_count(),
    }, header + "\n\n" + table + "\n" + summary)
    if not alive or server_errors or failed:
        sys.exit(1)


def summarise(outcomes: dict, latencies: dict) -> tuple[list, dict]:
    """Table rows and a JSON record per kind: answers by status, unexpected ones, p50/p99 ms."""
    rows, per_kind = [], {}
    for kind in MIX:
        counts = outcomes.get(kind, collections.Counter())
        total = sum(counts.values())
        unexpected = total - counts.get(EXPECTED[kind], 0)
        lat = np.array(latencies.get(kind, [])) * 1000
        p50, p99 = (float(np.percentile(lat, q)) for q in (50, 99)) if len(lat) else (None, None)
        answers = ", ".join(f"{s}: {n}" for s, n in sorted(counts.items(), key=lambda kv: str(kv[0])))
        rows.append([kind, total, EXPECTED[kind], answers, unexpected, "" if p50 is None else f"{p50:.0f}",
                     "" if p99 is None else f"{p99:.0f}"])
        per_kind[kind] = {"requests": total, "expected": EXPECTED[kind], "unexpected": unexpected,
                          "answers": {str(s): n for s, n in counts.items()}}
        if p50 is not None:
            per_kind[kind].update(p50_ms=round(p50, 1), p99_ms=round(p99, 1))
    return rows, per_kind


if __name__ == "__main__":
    main()
