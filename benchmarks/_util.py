"""Shared helpers for the benchmark scripts: timing, peak memory, tables, result files."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, List, Sequence

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict]:
    """Peak memory above the level at entry, in bytes, written to ``result["peak"]``.

    CUDA: the allocator's own peak. CPU: resident set size sampled every millisecond by a
    thread (the allocator keeps no statistics there), so very short spikes can be missed.
    """
    result = {"peak": 0}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result["peak"] = torch.cuda.max_memory_allocated(device) - base
        return
    base = _rss_bytes()
    stop = threading.Event()
    peak = [base]

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        yield result
    finally:
        stop.set()
        th.join()
        peak[0] = max(peak[0], _rss_bytes())
        result["peak"] = peak[0] - base


def time_it(fn: Callable[[], object], device: torch.device, *, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def print_table(headers: Sequence[str], rows: List[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def save_results(name: str, payload: dict, table: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{payload['device_kind']}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"{stem}.txt").write_text(table + "\n")
    return RESULTS / f"{stem}.json"


def start_server(run: Path, *extra: str) -> "tuple[subprocess.Popen, str, int]":
    """``featgs serve RUN --port 0 --quiet EXTRA`` in its own process: (process, host, port),
    once it prints the address it listens on."""
    proc = subprocess.Popen([sys.executable, "-m", "featgs", "serve", str(run), "--port", "0", "--quiet", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    found = re.search(r"http://([\d.]+):(\d+)", line)
    if not found:
        proc.kill()
        raise SystemExit(f"featgs serve did not start: {line}{proc.stderr.read()}")
    return proc, found.group(1), int(found.group(2))
