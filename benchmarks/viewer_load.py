"""Viewer load test: N headless browsers orbiting one `featgs view` server for a fixed time.

    python benchmarks/viewer_load.py [--run RUN] [--clients 8] [--seconds 60]

Starts `featgs view RUN` on the loopback interface (127.0.0.1, a free port), opens N pages in
headless Debian chromium (Playwright), waits until each shows its first frame, then keeps every
page's mouse dragging (an orbit back and forth) for --seconds, round-robin from one thread.
It reads each page's frame counter from the viewer's status line before and after, and samples
the server's resident memory once a second. Without --run it first trains a small tabletop run
(about a minute). Bounded: everything stops after --seconds plus start-up and a fixed grace
period, the server is stopped with Ctrl-C (SIGINT) and must exit 0.

Prints frames per second per client (moving and still frames together; the status line also
gives the last render's size and time) and the server's memory at start, end and peak.
Writes benchmarks/results/viewer-load-cpu.{txt,json}.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import print_table, save_results  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
FRAME = re.compile(r"frame (\d+) · (\d+)×(\d+) (moving|still) · render (\d+) ms")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def small_run(folder: Path) -> Path:
    from featgs.data.procedural import MakeConfig, make_scene, resolve_scene
    from featgs.train import TrainConfig
    from featgs.train.run import train_run

    import torch

    torch.set_num_threads(1)  # as `featgs view` does: robust when other programs share the cores
    spec = resolve_scene("tabletop")
    make_scene(spec.read_text(), str(spec), folder / "data", MakeConfig(size=64, views=24, test_views=2))
    train_run(folder / "data", folder / "run", TrainConfig(iters=400, feature_dim=16, refine_start=50, refine_every=50,
                                                           checkpoint_every=10_000), progress=False)
    return folder / "run"


def status(page) -> tuple:
    loc = page.locator("text=/frame \\d+ ·/").first
    m = FRAME.search(loc.inner_text()) if loc.count() else None
    return (int(m.group(1)), f"{m.group(2)}x{m.group(3)}", m.group(4), int(m.group(5))) if m else (0, "", "", 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, help="run folder to serve (default: train a small one first)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--still-size", type=int, default=256)
    ap.add_argument("--moving-size", type=int, default=128)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    if not 1 <= args.clients <= 32 or not 1 <= args.seconds <= 600:
        ap.error("--clients must be in 1..32 and --seconds in 1..600")
    from playwright.sync_api import sync_playwright

    tmp = tempfile.TemporaryDirectory(prefix="featgs-viewer-load-")
    run = args.run or small_run(Path(tmp.name))
    cmd = [sys.executable, "-m", "featgs", "view", str(run), "--host", "127.0.0.1", "--port", "0",
           "--still-size", str(args.still_size), "--moving-size", str(args.moving_size)]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    errors: list = []
    threading.Thread(target=lambda: errors.extend(server.stderr), daemon=True).start()
    url = None
    deadline = time.time() + 120
    while url is None and time.time() < deadline:
        line = server.stdout.readline()
        if not line:
            break
        m = re.search(r"at (http://127\.0\.0\.1:\d+)", line)
        url = m.group(1) if m else None
    if url is None:
        server.kill()
        print("featgs view did not start:\n" + "".join(errors), file=sys.stderr)
        return 1
    threading.Thread(target=lambda: [None for _ in server.stdout], daemon=True).start()

    samples = []
    stop_sampling = threading.Event()

    def sample():
        while not stop_sampling.is_set():
            try:
                samples.append((time.time(), rss_mib(server.pid)))
            except OSError:
                return
            stop_sampling.wait(1.0)

    rows, payload = [], {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            pages = []
            for i in range(args.clients):
                page = browser.new_context(viewport={"width": 480, "height": 320}).new_page()
                page.goto(url)
                pages.append(page)
            for page in pages:
                page.wait_for_selector("text=/frame \\d+ ·/", timeout=120_000)
            time.sleep(2.0)
            rss_start = rss_mib(server.pid)
            load_start = os.getloadavg()[0]
            threading.Thread(target=sample, daemon=True).start()
            start = [status(p)[0] for p in pages]
            for p in pages:
                p.mouse.move(120, 200)
                p.mouse.down()
            t0 = time.time()
            tick = 0
            while time.time() - t0 < args.seconds:  # bounded by --seconds
                tick += 1
                x = 120 + 100 * math.sin(tick / 6.0)
                for k, p in enumerate(pages):
                    p.mouse.move(x + 3 * k, 200 + 20 * math.sin(tick / 9.0 + k))
            elapsed = time.time() - t0
            for p in pages:
                p.mouse.up()
            end = [status(p) for p in pages]
            rss_end = rss_mib(server.pid)
            load_end = os.getloadavg()[0]
            stop_sampling.set()
            browser.close()
        rates = []
        for k, (s, e) in enumerate(zip(start, end)):
            rate = (e[0] - s) / elapsed
            rates.append(rate)
            rows.append([k, e[0] - s, f"{rate:.2f}", e[1], e[2], e[3]])
        peak = max([r for _, r in samples] + [rss_end])
        rows.append(["all", sum(e[0] - s for s, e in zip(start, end)), f"{sum(rates):.2f}", "", "", ""])
        payload = {
            "device_kind": "cpu", "clients": args.clients, "seconds": round(elapsed, 1),
            "still_size": args.still_size, "moving_size": args.moving_size,
            "frames_per_second": [round(r, 3) for r in rates],
            "server_rss_mib": {"start": round(rss_start, 1), "end": round(rss_end, 1), "peak": round(peak, 1),
                               "growth": round(rss_end - rss_start, 1)},
            "cpus": os.cpu_count(), "load_average_1min": [round(load_start, 2), round(load_end, 2)],
        }
    finally:
        stop_sampling.set()
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                code = server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                code = "killed"
        else:
            code = server.returncode
        tmp.cleanup()
    if not rows:
        return 1
    print(f"{args.clients} clients orbiting for {payload['seconds']} s; {args.moving_size}px moving / "
          f"{args.still_size}px still; {os.cpu_count()} CPUs; 1-min load average {payload['load_average_1min'][0]} -> "
          f"{payload['load_average_1min'][1]} (the browsers run on the same machine)")
    table = print_table(["client", "frames", "frames/s", "last size", "last kind", "last render ms"], rows)
    mem = payload["server_rss_mib"]
    line = (f"server RSS: {mem['start']} MiB after connect, {mem['end']} MiB at the end (growth {mem['growth']} MiB), "
            f"peak {mem['peak']} MiB; server exit code on SIGINT: {code}")
    print(line)
    payload["server_exit_code"] = code
    save_results("viewer-load", payload, table + "\n" + line)
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
