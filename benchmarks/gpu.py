"""GPU benchmark: gsplat against our cuda backend, forward and forward+backward, and memory.

    python benchmarks/gpu.py [--quick]

Grid: N in {100k, 1M} random Gaussians (unit ball, seen from distance 3), 1920x1080 pixels,
feature dimension D in {16, 64, 128, 256, 512}. The backward takes the gradient of
rgb.sum() + depth.sum() + features.sum() with respect to every parameter (joint training).
Both backends render features from the same Gaussians; ours gathers them from each pixel's
top-32 blend weights. Writes benchmarks/results/gpu-cuda.{txt,json} with the device name.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import device_name, peak_memory, print_table, save_results, time_it  # noqa: E402

from featgs.gaussians.random import orbit_camera, random_gaussians  # noqa: E402
from featgs.render import render  # noqa: E402


def measure(g, cam, backend: str, device) -> dict:
    params = g.map(lambda t: t.detach().requires_grad_(True))

    def fwd():
        with torch.no_grad():
            render(params, cam, backend=backend)

    def fwd_bwd():
        out = render(params, cam, backend=backend)
        (out.rgb.sum() + out.depth.sum() + out.features.float().sum()).backward()
        for t in params.params().values():
            t.grad = None

    with peak_memory(device) as mem:
        fwd_bwd()
    return {"forward_ms": 1e3 * time_it(fwd, device, repeats=5), "forward_backward_ms": 1e3 * time_it(fwd_bwd, device, repeats=5),
            "peak_mb": mem["peak"] / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N = 100k, D in {16, 128} only")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA GPU")
    device = torch.device("cuda")
    ns = [100_000] if args.quick else [100_000, 1_000_000]
    ds = [16, 128] if args.quick else [16, 64, 128, 256, 512]
    cam = orbit_camera(1920, 1080, distance=3.0)
    rows, records = [], []
    for n, d in itertools.product(ns, ds):
        g = random_gaussians(n, feature_dim=d, seed=0, scale_range=(0.003, 0.03), device=device)
        res = {b: measure(g, cam, b, device) for b in ("gsplat", "cuda")}
        speed_f = res["gsplat"]["forward_ms"] / res["cuda"]["forward_ms"]
        speed_fb = res["gsplat"]["forward_backward_ms"] / res["cuda"]["forward_backward_ms"]
        records.append({"n": n, "d": d, **{f"{b}_{k}": v for b, r in res.items() for k, v in r.items()},
                        "speedup_forward": speed_f, "speedup_forward_backward": speed_fb})
        rows.append([f"{n // 1000}k", d] + [f"{res[b][k]:.1f}" for b in ("gsplat", "cuda")
                                           for k in ("forward_ms", "forward_backward_ms", "peak_mb")]
                    + [f"{speed_f:.2f}x", f"{speed_fb:.2f}x"])
        print(rows[-1], file=sys.stderr, flush=True)
        del g
        torch.cuda.empty_cache()
    title = f"1920x1080 on {device_name(device)} (torch {torch.__version__})"
    print(title)
    table = print_table(["N", "D", "gsplat fwd ms", "gsplat f+b ms", "gsplat MB", "ours fwd ms", "ours f+b ms",
                         "ours MB", "fwd speed-up", "f+b speed-up"], rows)
    save_results("gpu", {"device_kind": "cuda", "device": device_name(device), "torch": torch.__version__,
                         "cases": records}, title + "\n" + table)


if __name__ == "__main__":
    main()
