"""Render benchmark: forward and forward+backward time and peak memory per backend.

    python benchmarks/render.py            # the full grid on every device present
    python benchmarks/render.py --quick    # the two target configurations only

Grid: N in {10k, 100k} Gaussians, {128^2, 256^2} pixels, feature dim d in {0, 16, 64, 256}.
The scene is random Gaussians in a unit ball seen from distance 3 (50 deg FoV), so the
pixel x Gaussian work grows with N roughly as in a real scene. The backward pass takes the
gradient of rgb.sum() + features.sum() + depth.sum() with respect to every parameter.
Peak memory is measured per case in a fresh process: on CPU the growth of the resident set
(ru_maxrss) over the level after the scene is built, on CUDA the allocator's peak.
Writes benchmarks/results/render-<cpu|cuda>.{txt,json}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import _rss_bytes, device_name, peak_memory, print_table, save_results, time_it  # noqa: E402

from featgs.gaussians.random import orbit_camera, random_gaussians  # noqa: E402
from featgs.render import render  # noqa: E402


def run_case(n: int, res: int, d: int, device: torch.device, backend: str) -> dict:
    g = random_gaussians(n, feature_dim=d, seed=0, device=device)
    g = g.map(lambda t: t.requires_grad_(True))
    cam = orbit_camera(res, res)

    def forward():
        with torch.no_grad():
            render(g, cam, backend=backend)

    def forward_backward():
        out = render(g, cam, backend=backend)
        loss = out.rgb.sum() + out.depth.sum()
        if out.features is not None:
            loss = loss + out.features.sum()
        loss.backward()
        for t in g.params().values():
            t.grad = None
        return out.info["num_pairs"]

    base = _rss_bytes()
    with peak_memory(device) as mem:
        pairs = forward_backward()
    if device.type == "cpu":  # a fresh process: the high-water mark is this render's
        mem["peak"] = max(mem["peak"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base)
    fwd = time_it(forward, device)
    fb = time_it(forward_backward, device)
    return {"n": n, "res": res, "d": d, "backend": backend, "device": device.type, "pairs": pairs,
            "forward_ms": fwd * 1e3, "forward_backward_ms": fb * 1e3, "peak_mb": mem["peak"] / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="only 128^2/10k/d=16 and 256^2/100k/d=64")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--case", nargs=4, metavar=("N", "RES", "D", "DEVICE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.case:  # one measurement, in this (fresh) process
        n, res, d, dev = args.case
        print(json.dumps(run_case(int(n), int(res), int(d), torch.device(dev), "torch")))
        return
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    cases = [(10_000, 128, 16), (100_000, 256, 64)] if args.quick else list(
        itertools.product([10_000, 100_000], [128, 256], [0, 16, 64, 256]))
    for device in devices:
        rows, records = [], []
        for n, res, d in cases:
            cmd = [sys.executable, __file__, "--case", str(n), str(res), str(d), device.type]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
            records.append(r)
            rows.append([f"{n // 1000}k", f"{res}^2", d, r["backend"], r["pairs"], f"{r['forward_ms']:.1f}",
                         f"{r['forward_backward_ms']:.1f}", f"{r['peak_mb']:.0f}"])
            print(f"  {rows[-1]}", file=sys.stderr, flush=True)
        print(f"\nrender benchmark on {device_name(device)} (torch {torch.__version__})")
        table = print_table(["N", "pixels", "d", "backend", "pairs", "fwd ms", "fwd+bwd ms", "peak MB"], rows)
        if not args.quick:
            save_results("render", {"device_kind": device.type, "device": device_name(device),
                                    "torch": torch.__version__, "cases": records}, table)


if __name__ == "__main__":
    main()
