"""HTTP round trips of ``featgs serve`` under concurrent clients, on loopback.

    python benchmarks/http_load.py [RUN] [--clients 16] [--seconds 30]

Starts ``featgs serve RUN --port 0`` in its own process and, per phase, runs ``--clients``
threads that each send requests back to back on their own keep-alive-free connections
until ``--seconds`` have passed (a request is only started before the deadline, and every
request has a timeout: the loop is bounded). The texts cycle through the run's object names
and some synonyms. Phases:

- query, repeated texts: ``POST /query {"text": ...}`` as a user sends it (the selection
  cleaned of floaters and hidden Gaussians), texts the server has answered before (a field
  keeps the selections of the texts it was asked, so these are mostly HTTP and JSON);
- query, new texts: every request a text the server has not seen ("the red mug", "where
  is the lamp?", ...): embedding, threshold and cleaning each time;
- query, new texts, raw threshold: the same with ``"clean": false``;
- health: ``GET /health``, the server's own floor.

The server answers one field operation at a time (a lock), so latency under 16 clients is
mostly queueing: p50 ~ clients x service time. Reports p50/p90/p99/max latency,
requests/s, and the count of non-200 answers and failed connections (must be 0).
Writes benchmarks/results/http-<cpu|cuda>.{txt,json}.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import print_table, save_results, start_server  # noqa: E402

TEMPLATES = ["the {}", "a {}", "where is the {}?", "find the {}", "{} on the table", "show me the {}",
             "my {}", "that {}"]
TEXTS = ["red mug", "cup", "green apple", "fruit", "table", "blue book", "novel", "lamp", "light", "tomato",
         "white plate", "dish", "yellow banana"]


def new_text(i: int, tag: str) -> str:
    """The i-th text of a phase, never one asked before (``tag`` tells phases apart)."""
    n = len(TEXTS)
    text = TEMPLATES[(i // n) % len(TEMPLATES)].format(TEXTS[i % n])
    return f"{text} ({tag} {i})" if i >= n * len(TEMPLATES) or tag else text




def one_request(host: str, port: int, method: str, path: str, body: dict | None) -> tuple[int, float]:
    """(status or -1 on a connection error, seconds)."""
    t0 = time.perf_counter()
    try:
        conn = http.client.HTTPConnection(host, port, timeout=120)
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        resp = conn.getresponse()
        resp.read()
        status = resp.status
        conn.close()
    except OSError:
        status = -1
    return status, time.perf_counter() - t0


def phase(host: str, port: int, clients: int, seconds: float, make_request) -> dict:
    """Run ``clients`` threads for ``seconds``; ``make_request(i)`` -> (method, path, body)."""
    counter = itertools.count()
    lock = threading.Lock()
    latencies, statuses = [], []
    deadline = time.perf_counter() + seconds

    def client():
        while time.perf_counter() < deadline:
            with lock:
                i = next(counter)
            status, dt = one_request(host, port, *make_request(i))
            with lock:
                latencies.append(dt)
                statuses.append(status)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return dict(requests=len(lat), wall_seconds=wall, per_second=len(lat) / wall,
                p50=float(np.percentile(lat, 50)), p90=float(np.percentile(lat, 90)),
                p99=float(np.percentile(lat, 99)), max=float(lat.max()),
                non_200=int(sum(s not in (200, -1) for s in statuses)), failed=int(sum(s == -1 for s in statuses)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?", type=Path, default=Path("/tmp/q/demo/run"))
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    proc, host, port = start_server(args.run)
    try:
        status, _ = one_request(host, port, "GET", "/health", None)
        if status != 200:
            raise SystemExit(f"/health answered {status}")
        for text in TEXTS:  # embed every text once, as a server that has been up a while would have
            one_request(host, port, "POST", "/query", {"text": text})
        phases = {
            "query, repeated texts": lambda i: ("POST", "/query", {"text": TEXTS[i % len(TEXTS)]}),
            "query, new texts": lambda i: ("POST", "/query", {"text": new_text(i, "")}),
            "query, new texts, raw threshold": lambda i: ("POST", "/query", {"text": new_text(i, "raw"),
                                                                              "clean": False}),
            "health": lambda i: ("GET", "/health", None),
        }
        results, rows = {}, []
        for name, make in phases.items():
            r = phase(host, port, args.clients, args.seconds, make)
            results[name] = r
            rows.append([name, r["requests"], f"{r['per_second']:.1f}", f"{r['p50']:.0f}", f"{r['p90']:.0f}",
                         f"{r['p99']:.0f}", f"{r['max']:.0f}", r["non_200"], r["failed"]])
            print(f"  {name}: done", flush=True)
        alive, _ = one_request(host, port, "GET", "/health", None)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    kind = "cuda" if torch.cuda.is_available() else "cpu"  # where the server's field lives
    where = torch.cuda.get_device_name() if kind == "cuda" else f"{platform.processor() or platform.machine()} CPU"
    header = (f"featgs serve {args.run}: {args.clients} concurrent clients x {args.seconds:.0f} s per phase on "
              f"loopback; server on {where}; server alive afterwards: {alive == 200}")
    print(header)
    table = print_table(["phase", "requests", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "non-200", "failed"],
                        rows)
    save_results("http", {"device_kind": kind, "run": str(args.run), "clients": args.clients,
                          "seconds": args.seconds, "phases": results, "alive_after": alive == 200},
                 header + "\n\n" + table)


if __name__ == "__main__":
    main()
